"""Measure CPU embedder variants against the issue's yardstick: eager fp32 timm efficientnet_b0, NCHW, batch 32.

    python benchmarks/cpu_embedder.py --model scanner/default_model --variants all --json

Each variant embeds the same uint8 batch (photo-like random fields at the model's input size) `--batches` times
after `--warmup` batches; img/s is the median over batches. `cos_min` is the smallest cosine between the
variant's embeddings and the shipped TorchScript module's fp32 embeddings of the same batch (1.0 = identical);
the baseline is a different network, so it has none. Runs one variant per process when given `--isolate`, so
that one variant's allocator state and thread pools cannot colour the next.

Variants (the names are what `--variants` takes):
  b0_nchw_fp32     the yardstick: timm efficientnet_b0, random weights, eager, NCHW, fp32
  ts_nchw_fp32     the shipped TorchScript module as exported, NCHW input
  ts_cl_fp32       the same with channels_last input and weights (the scanner's fp32 path)
  ts_cl_bf16       the same under CPU bf16 autocast (`--precision bf16`)
  ts_frozen_fp32   torch.jit.freeze + optimize_for_inference (conv-BN folding, oneDNN layouts)
  compile_fp32     the eager module rebuilt from the TorchScript weights, torch.compile (inductor, freezing)
  compile_bf16     the same under bf16 autocast
  ov_fp32          OpenVINO (if installed), inference precision f32
  ov_bf16          OpenVINO, inference precision bf16
  ort_fp32         ONNX Runtime (if installed), exported ONNX graph
  imgscan_default  scanner.embed.Embedder with its defaults (--runtime auto, --precision auto): what a scan runs
                   per view (the view and its mirror image where the card says `mirror`: two forwards)
  imgscan_fp32     the same with --precision fp32 (what `auto` picks on a CPU without native bf16)
  imgscan_int8     the same with --precision int8 (the model's NNCF int8 IR; `imgscan quantize` makes it)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = ("b0_nchw_fp32", "ts_nchw_fp32", "ts_cl_fp32", "ts_cl_bf16", "ts_frozen_fp32", "compile_fp32",
            "compile_bf16", "ov_fp32", "ov_bf16", "ort_fp32", "imgscan_default", "imgscan_fp32",
            "imgscan_int8")


def photo_like_batch(n: int, size: int, seed: int = 0) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.int16)
        out[i] = np.clip(field + rng.integers(-20, 21, field.shape), 0, 255).astype(np.uint8)
    return out


def _eager_from_torchscript(model_dir: Path):
    """The training-time module with the shipped TorchScript weights (for compilers that need eager code)."""
    from scanner.model import load_model
    from train.model import build_embedder

    card, scripted = load_model(model_dir, device="cpu")
    eager, _ = build_embedder(card.backbone.split()[0])  # the card's backbone field starts with the timm name
    eager.load_state_dict(scripted.state_dict())
    return eager.eval(), scripted


def _runner(variant: str, model_dir: Path, batch: np.ndarray):
    """Return (fn: uint8 NHWC numpy -> float32 [n, d] numpy or None for the baseline's features)."""
    import torch

    nchw = torch.from_numpy(batch).permute(0, 3, 1, 2)
    cl = nchw.contiguous(memory_format=torch.channels_last)
    nchw = nchw.contiguous()

    if variant in ("imgscan_default", "imgscan_fp32", "imgscan_int8"):
        from scanner.embed import Embedder

        precision = {"imgscan_default": "auto", "imgscan_fp32": "fp32", "imgscan_int8": "int8"}[variant]
        embedder = Embedder(model_dir, device="cpu", precision=precision)

        def run():
            return embedder.embed_views(batch)  # with the view's mirror image too, where the card asks for it
        return run

    if variant == "b0_nchw_fp32":
        import timm

        net = timm.create_model("efficientnet_b0", pretrained=False, num_classes=0).eval()
        x = nchw.float()

        def run():
            with torch.inference_mode():
                return net(x).numpy()
        return run

    from scanner.model import load_model

    _, scripted = load_model(model_dir, device="cpu")
    scripted = scripted.eval()
    if variant == "ts_nchw_fp32":
        def run():
            with torch.inference_mode():
                return scripted(nchw).numpy()
        return run
    if variant in ("ts_cl_fp32", "ts_cl_bf16"):
        module = scripted.to(memory_format=torch.channels_last)
        bf16 = variant.endswith("bf16")

        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return module(cl).float().numpy()
        return run
    if variant == "ts_frozen_fp32":
        module = torch.jit.optimize_for_inference(torch.jit.freeze(scripted.to(memory_format=torch.channels_last)))

        def run():
            with torch.inference_mode():
                return module(cl).numpy()
        return run
    eager, _ = _eager_from_torchscript(model_dir)
    if variant in ("compile_fp32", "compile_bf16"):
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # fold weights into the graph: the CPU inference setting
        module = torch.compile(eager.to(memory_format=torch.channels_last))
        bf16 = variant.endswith("bf16")

        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return module(cl).float().numpy()
        return run
    if variant in ("ov_fp32", "ov_bf16"):
        import openvino as ov

        from scanner.openvino_runtime import openvino_core

        core = openvino_core()
        ov_model = ov.convert_model(eager, example_input=nchw[:1])
        hint = "f32" if variant == "ov_fp32" else "bf16"
        compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                         "INFERENCE_NUM_THREADS": str(torch.get_num_threads()),
                                                         "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        x = nchw.numpy()

        def run():
            return np.asarray(request.infer({0: x})[compiled.output(0)])
        return run
    if variant == "ort_fp32":
        import onnxruntime as ort

        path = Path(tempfile.mkdtemp(prefix="imgscan-onnx-")) / "embedder.onnx"
        torch.onnx.export(eager, (nchw[:1],), str(path), input_names=["pixels"], output_names=["embedding"],
                          dynamic_axes={"pixels": {0: "n"}, "embedding": {0: "n"}}, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = nchw.numpy()

        def run():
            return session.run(None, {"pixels": x})[0]
        return run
    raise SystemExit(f"unknown variant {variant}; choose from {', '.join(VARIANTS)}")


def measure(variant: str, model_dir: Path, batch_size: int, size: int, warmup: int, batches: int) -> dict:
    import torch

    batch = photo_like_batch(batch_size, size)
    started = time.perf_counter()
    run = _runner(variant, model_dir, batch)
    for _ in range(warmup):
        out = run()
    setup_s = time.perf_counter() - started
    rates = []
    for _ in range(batches):
        t0 = time.perf_counter()
        out = run()
        rates.append(batch_size / (time.perf_counter() - t0))
    result = {"variant": variant, "img_per_s": round(statistics.median(rates), 2),
              "img_per_s_min": round(min(rates), 2), "setup_s": round(setup_s, 1),
              "threads": torch.get_num_threads(), "batch": batch_size, "size": size}
    if variant != "b0_nchw_fp32":
        from scanner.model import load_model

        card, ref = load_model(model_dir, device="cpu")
        flips = (False, True) if variant.startswith("imgscan_") and card.preprocessing.get("mirror") else (False,)
        b = 0
        for flip in flips:  # the imgscan_ variants average each view with its mirror image when the card says so
            x = torch.from_numpy(batch[:, :, ::-1].copy() if flip else batch).permute(0, 3, 1, 2).contiguous()
            with torch.inference_mode():
                ref_out = ref(x).numpy()
            b = b + ref_out / np.linalg.norm(ref_out, axis=1, keepdims=True)
        a = out / np.linalg.norm(out, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        result["cos_min"] = round(float((a * b).sum(axis=1).min()), 6)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the packaged one)")
    parser.add_argument("--variants", default="all", help="comma-separated variant names, or all")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--isolate", action="store_true", help="one process per variant")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    if args.model is None:
        from scanner.paths import PACKAGED_MODEL_DIR

        args.model = PACKAGED_MODEL_DIR
    names = VARIANTS if args.variants == "all" else tuple(v.strip() for v in args.variants.split(","))
    for name in names:
        if args.isolate and len(names) > 1:
            cmd = [sys.executable, __file__, "--model", str(args.model), "--variants", name,
                   "--batch-size", str(args.batch_size), "--size", str(args.size), "--warmup", str(args.warmup),
                   "--batches", str(args.batches), "--json"]
            done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            line = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else None
            result = json.loads(line) if line else {"variant": name, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            try:
                result = measure(name, args.model, args.batch_size, args.size, args.warmup, args.batches)
            except ImportError as exc:
                result = {"variant": name, "error": f"not installed: {exc.name}"}
        print(json.dumps(result) if args.json else "  ".join(f"{k}={v}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    main()
