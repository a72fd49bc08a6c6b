"""Embed stage: uint8 NHWC batches -> L2-normalised float32 embeddings, with the model's TorchScript module.

fp16 autocast on CUDA; on a CPU, bf16 autocast where the CPU computes bf16 natively, fp32 elsewhere; see
Embedder for why autocast, docs/benchmarks.md for the measurements behind the CPU default.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from scanner.decode import DecodedBatch, view_spec_for
from imgscan_core.errors import UsageError
from scanner.model import load_model, verify_int8


def resolve_device(device: str, gpu_assigned: bool = True) -> str:
    """auto, cpu or cuda -> cpu or cuda: the one device rule of scan, enroll, eval, train and the Ray workers.
    `gpu_assigned` False (a Ray worker given no GPU) makes auto mean the CPU."""
    import torch

    if device == "auto":
        return "cuda" if gpu_assigned and torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch (use --device cpu or auto)")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: expected auto, cpu or cuda")
    return device


PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
RUNTIMES = ("auto", "torch", "openvino")


def openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def resolve_runtime(runtime: str, device: str) -> str:
    """auto: OpenVINO on a CPU (3-5x torch fp32 eager on AVX2, about 2x torch bf16 on AVX-512 BF16:
    docs/benchmarks.md), torch on CUDA or where OpenVINO is not installed."""
    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime {runtime}: expected one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "openvino" if device == "cpu" and openvino_installed() else "torch"
    if runtime == "openvino" and device != "cpu":
        raise UsageError("--runtime openvino runs on the CPU (use --device cpu, or --runtime torch on CUDA)")
    return runtime


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 instructions (AVX512_BF16 or AMX): there bf16 autocast ran the default
    model 2.6x faster than fp32 with the same kit accuracy; without them oneDNN emulates bf16 and it is slower.
    Read from /proc/cpuinfo (Linux); elsewhere False, i.e. fp32."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device == "cuda":
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device != "cuda":
        raise UsageError("--precision fp16 needs --device cuda (on CPU use bf16 or fp32)")
    if precision == "int8" and device != "cpu":
        raise UsageError("--precision int8 runs on the CPU, with OpenVINO (use --device cpu)")
    return precision


def mirrored(pixels_nhwc):
    """uint8 [n, H, W, 3] flipped left to right, contiguous (numpy on CPU, torch on CUDA)."""
    if isinstance(pixels_nhwc, np.ndarray):
        return np.ascontiguousarray(pixels_nhwc[:, :, ::-1])
    return pixels_nhwc.flip(2)


def probe_batch(size: int, n: int = 2, seed: int = 0) -> np.ndarray:
    """Fixed photo-like uint8 NHWC images (smooth colour fields plus noise): the load-time probe of a model and
    the ONNX export check."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 4, 4, 3)).astype(np.float32)
    reps = -(-size // 4)
    smooth = np.repeat(np.repeat(coarse, reps, axis=1), reps, axis=2)[:, :size, :size]
    return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)


class Embedder:
    """Runs a model directory's TorchScript embedder.

    Reduced precision comes from autocast, not from casting the module: an exported embedder casts its uint8
    input to float32 itself, so a module cast with .half() would meet float32 input and fail. Under autocast
    the convolutions run in fp16/bf16 and anything autocast cannot reach still runs, in fp32.
    precision: auto = fp16 on CUDA; on CPU bf16 where the hardware has it (cpu_has_native_bf16), else fp32.
    """

    MAX_ROWS = 64

    def __init__(self, model_dir: str | os.PathLike, device: str = "cpu", precision: str = "auto",
                 runtime: str = "auto", views: int | None = None, threads: int | None = None):
        """`threads`: CPU threads of the embedder (default: scanner.threads.thread_budget().embed)."""
        import torch

        from scanner.threads import thread_budget

        self.device = device
        self.runtime = resolve_runtime(runtime, device)
        self.precision = resolve_precision(precision, device)
        if self.precision == "int8" and self.runtime != "openvino":
            raise UsageError("--precision int8 runs with OpenVINO (--runtime auto or openvino)")
        self.card, module = load_model(model_dir, device=device)
        self._openvino = None
        self.threads = 0  # CUDA: the GPU's
        if self.runtime == "openvino":
            from scanner.openvino_runtime import OpenVinoEmbedder

            self.threads = threads or thread_budget().embed
            int8_xml = verify_int8(model_dir, self.card) if self.precision == "int8" else None
            self._openvino = OpenVinoEmbedder(module, self.card.weights_sha256, self.card.input_size, self.precision,
                                              self.threads, int8_xml)
            module = None  # OpenVINO runs its compiled copy; the TorchScript module is not used again
        elif device == "cpu":
            if threads:
                torch.set_num_threads(threads)
            self.threads = torch.get_num_threads()
            # Same layout as the NHWC batches the decoder produces: no transposing copy, faster oneDNN convs.
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.size = self.card.input_size
        self.dim = self.card.embedding_dim
        self.view_spec = view_spec_for(self.card, views)
        self._torch = torch
        self._probe()

    def _probe(self) -> None:
        """Run the model once at load on probe_batch: an embedder that fails at the card's input size, or
        returns the wrong shape, non-finite or non-unit vectors, is refused in one line before it judges
        anything (its verdicts would be NaN or nonsense, and an index calibrated with it unusable)."""
        try:
            raw = self._forward(probe_batch(self.size))
        except Exception as exc:  # TorchScript and OpenVINO raise many types with multi-line messages
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UsageError(f"model {self.model_id}: the embedder fails on a {self.size}x{self.size} input, the "
                             f"card's input_size ({first})") from None
        problem = None
        if raw.ndim != 2 or raw.shape != (2, self.dim):
            problem = f"shape {tuple(raw.shape)} where the card says (n, {self.dim})"
        elif not np.isfinite(raw).all():
            problem = "non-finite values (NaN or inf)"
        elif not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=0.05):
            problem = f"vectors of norm {np.linalg.norm(raw, axis=1).round(3).tolist()}, not unit vectors"
        if problem:
            raise UsageError(f"model {self.model_id}: the embedder returns {problem} on a probe batch; "
                             "refusing to judge with it")

    def _forward(self, pixels_nhwc) -> np.ndarray:
        """The model's raw output for a uint8 NHWC batch, as float32 numpy."""
        if self._openvino is not None:
            return self._openvino(pixels_nhwc)
        torch = self._torch
        x = torch.as_tensor(pixels_nhwc).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        # channels_last memory keeps the NHWC layout the decoder produced: no copy, and faster convs on CPU.
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            out = self.module(x)
        return out.float().cpu().numpy()

    def _autocast(self):
        torch = self._torch
        if self.precision == "fp16":
            return torch.autocast("cuda", dtype=torch.float16)
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def model_id(self) -> str:
        return self.card.model_id

    def embed_batch(self, decoded: DecodedBatch) -> np.ndarray:
        """One embedding per decoded item: the mean of its views' embeddings (and of their mirror images when the
        ViewSpec says `mirror`), re-normalised (views of one photo agree on its traces; averaging them steadies the
        vote more than any single crop)."""
        emb = self.embed_views(decoded.pixels)
        starts = decoded.view_starts()
        if starts is None:
            return emb  # one view per item
        counts = decoded.view_counts
        if sum(counts) != emb.shape[0]:
            raise ValueError(f"decoder returned {emb.shape[0]} views for view counts summing to {sum(counts)}")
        mean = np.add.reduceat(emb, starts, axis=0) / np.asarray(counts, dtype=np.float32)[:, None]
        return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)

    def embed_views(self, pixels_nhwc) -> np.ndarray:
        """One embedding per view: `embed`, averaged with the view's mirror image when the ViewSpec says so."""
        emb = self.embed(pixels_nhwc)
        if not self.view_spec.mirror or emb.shape[0] == 0:
            return emb
        mean = emb + self.embed(mirrored(pixels_nhwc))
        return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)

    def embed(self, pixels_nhwc) -> np.ndarray:
        """pixels_nhwc: uint8 [n, S, S, 3], a numpy array or a torch tensor on any device.
        Returns float32 [n, dim], unit norm. Runs at most MAX_ROWS rows at a time: with --views a batch of
        files holds several times as many crops, and activation memory grows with the rows of one forward."""
        if pixels_nhwc.shape[0] > self.MAX_ROWS:
            return np.concatenate([self.embed(pixels_nhwc[i:i + self.MAX_ROWS])
                                   for i in range(0, pixels_nhwc.shape[0], self.MAX_ROWS)])
        if pixels_nhwc.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self._forward(pixels_nhwc)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise UsageError(f"model {self.model_id} returned shape {tuple(emb.shape)}, card says dim {self.dim}")
        # Re-normalise in fp32: fp16 outputs drift slightly off unit norm, and the index assumes cosine.
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norms, 1e-12)
