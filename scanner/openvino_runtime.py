"""The CPU runtime: the model's TorchScript embedder run by OpenVINO (the default on CPU, `--runtime auto`).

On a 2-core AVX2-only CPU OpenVINO embedded the default model 3-5x faster than torch fp32 eager; on an AVX-512
BF16 CPU about 2x torch's bf16 autocast (docs/benchmarks.md).

The model directory stays the one contract (TorchScript + card). OpenVINO cannot convert timm's scripted code
directly, so the TorchScript module is exported to ONNX once per model and machine and cached under
$XDG_CACHE_HOME/imgscan/onnx/<weights sha256>.onnx. Before the export is cached it is checked against the
TorchScript module on a fixed batch (scanner.embed.probe_batch; cosine >= EXPORT_MIN_COSINE for every image, as timm's
`onnx_export(check_forward=True)` does) and refused otherwise. A JSON sidecar holds the ONNX file's own sha256
and the check's result; a file whose hash differs, or without a passed check, is rebuilt rather than trusted.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path

import numpy as np

from imgscan_core.errors import UsageError
from imgscan_core.files import atomic_path, atomic_write_json, sha256_file
from scanner.embed import probe_batch

EXPORT_MIN_COSINE = 0.999
SIDECAR_FORMAT = 1


def onnx_cache_dir() -> Path:
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache_home) / "imgscan" / "onnx"


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


@functools.cache
def openvino_core():
    """The process's one `openvino.Core`. Each Core's CPU plugin installs its own alternate signal stack on the
    thread that first compiles with it and, when destroyed, puts back the one it found. Cores destroyed out of that
    order left the main thread's alternate stack pointing at unmapped memory, and the next signal with a handler
    (a child's exit, SIGCHLD) killed the process with SIGSEGV (seen in the test suite; two Cores released first-in,
    first-out are enough). One Core that lives as long as the process installs one stack and never leaves a stale
    one."""
    try:
        import openvino as ov
    except ImportError:
        raise UsageError("--runtime openvino needs OpenVINO: pip install openvino") from None
    return ov.Core()


def _compile(core, model_path: Path, hint: str, threads: int | None):
    config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(core.read_model(str(model_path)), "CPU", config)


def _infer(compiled, pixels_nhwc: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(pixels_nhwc.transpose(0, 3, 1, 2))
    return np.asarray(compiled.create_infer_request().infer({0: x})[compiled.output(0)], dtype=np.float32)


def export_check(module, core, onnx_path: Path, input_size: int) -> float:
    """The smallest cosine between TorchScript (fp32) and the ONNX graph run by OpenVINO (f32) on check_batch."""
    import torch

    x = probe_batch(input_size, n=4)
    with torch.inference_mode():
        expected = module.cpu().float().eval()(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).float().numpy()
    got = _infer(_compile(core, onnx_path, "f32", None), x)
    return float(_cosines(expected, got).min())


def _valid_cache(path: Path, sidecar: Path) -> bool:
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        return (path.is_file() and meta.get("format") == SIDECAR_FORMAT and meta.get("onnx_sha256") == sha256_file(path)
                and float(meta.get("check_min_cosine", 0)) >= EXPORT_MIN_COSINE)
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def cached_onnx(module, weights_sha256: str, input_size: int, core) -> Path:
    """The checked ONNX export of `module` (TorchScript, uint8 NCHW in, embedding out), built once and cached."""
    import torch

    directory = onnx_cache_dir()
    path = directory / f"{weights_sha256}.onnx"
    sidecar = directory / f"{weights_sha256}.onnx.json"
    if _valid_cache(path, sidecar):
        return path
    directory.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, input_size, input_size, dtype=torch.uint8)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter deprecation and tracer notes: not the user's concern
            torch.onnx.export(module.cpu().float().eval(), (example,), str(tmp), input_names=["pixels"],
                              output_names=["embedding"], dynamic_axes={"pixels": {0: "n"}, "embedding": {0: "n"}},
                              dynamo=False)
        cosine = export_check(module, core, tmp, input_size)
        if not cosine >= EXPORT_MIN_COSINE:  # also refuses NaN
            raise UsageError(f"the ONNX export of model {weights_sha256[:12]} disagrees with its TorchScript module "
                             f"(cosine {cosine:.5f} < {EXPORT_MIN_COSINE} on a fixed batch); use --runtime torch")
    atomic_write_json(sidecar, {"format": SIDECAR_FORMAT, "onnx_sha256": sha256_file(path),
                                "check_min_cosine": round(cosine, 6), "check": "fixed batch of 4, fp32 vs f32"})
    return path


class OpenVinoEmbedder:
    """Compiled OpenVINO model: uint8 NHWC batches in, raw embeddings out (the caller re-normalises)."""

    def __init__(self, module, weights_sha256: str, input_size: int, precision: str, threads: int | None = None,
                 int8_xml: Path | None = None):
        """`int8_xml`: the model's verified int8 IR (scanner.model.verify_int8), run instead of the ONNX export."""
        if precision not in ("fp32", "bf16", "int8"):
            raise UsageError(f"--runtime openvino runs fp32, bf16 or int8, not {precision}")
        core = openvino_core()
        graph = int8_xml if precision == "int8" else cached_onnx(module, weights_sha256, input_size, core)
        # int8 layers run in int8 whatever the hint; f32 keeps its few float layers exact.
        self._compiled = _compile(core, graph, "bf16" if precision == "bf16" else "f32", threads)
        self._request = self._compiled.create_infer_request()
        self._output = self._compiled.output(0)

    def __call__(self, pixels_nhwc) -> np.ndarray:
        x = np.asarray(pixels_nhwc.cpu() if hasattr(pixels_nhwc, "cpu") else pixels_nhwc, dtype=np.uint8)
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return np.asarray(self._request.infer({0: x})[self._output], dtype=np.float32)
