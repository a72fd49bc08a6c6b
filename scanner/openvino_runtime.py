"""Optional CPU runtime: the model's TorchScript embedder run by OpenVINO (`--runtime openvino`).

On the development CPU (AVX-512 with BF16) OpenVINO ran the default model at 153 img/s in bf16 against 71 for
torch's bf16 autocast (docs/benchmarks.md). It is optional (`pip install 'imgscan[openvino]'`): torch alone
meets the throughput goal, and OpenVINO is another 60 MB.

The model directory stays the one contract (TorchScript + card). OpenVINO cannot convert timm's scripted code
directly, so the TorchScript module is exported to ONNX once per model and machine and cached under
$XDG_CACHE_HOME/imgscan/onnx/<weights sha256>.onnx; a sidecar holds the ONNX file's own sha256, checked before
OpenVINO reads it, so a damaged cache file is rebuilt rather than trusted.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from imgscan_core.errors import UsageError
from imgscan_core.files import atomic_path, atomic_write_text, sha256_file


def onnx_cache_dir() -> Path:
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache_home) / "imgscan" / "onnx"


def cached_onnx(module, weights_sha256: str, input_size: int) -> Path:
    """The ONNX export of `module` (TorchScript, uint8 NCHW in, embedding out), built once and cached."""
    import torch

    directory = onnx_cache_dir()
    path = directory / f"{weights_sha256}.onnx"
    sidecar = directory / f"{weights_sha256}.onnx.sha256"
    try:
        if path.is_file() and sidecar.read_text().strip() == sha256_file(path):
            return path
    except OSError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, input_size, input_size, dtype=torch.uint8)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation and tracer notes: not the user's concern
        torch.onnx.export(module.cpu().float().eval(), (example,), str(tmp), input_names=["pixels"],
                          output_names=["embedding"], dynamic_axes={"pixels": {0: "n"}, "embedding": {0: "n"}},
                          dynamo=False)
    atomic_write_text(sidecar, sha256_file(path) + "\n")
    return path


class OpenVinoEmbedder:
    """Compiled OpenVINO model: uint8 NHWC batches in, raw embeddings out (the caller re-normalises)."""

    def __init__(self, module, weights_sha256: str, input_size: int, precision: str):
        try:
            import openvino as ov
        except ImportError:
            raise UsageError("--runtime openvino needs OpenVINO: pip install 'imgscan[openvino]'") from None
        if precision not in ("fp32", "bf16"):
            raise UsageError(f"--runtime openvino runs fp32 or bf16, not {precision}")
        onnx_path = cached_onnx(module, weights_sha256, input_size)
        core = ov.Core()
        hint = "bf16" if precision == "bf16" else "f32"
        self._compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU",
                                            {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
        self._request = self._compiled.create_infer_request()
        self._output = self._compiled.output(0)

    def __call__(self, pixels_nhwc) -> np.ndarray:
        x = np.asarray(pixels_nhwc.cpu() if hasattr(pixels_nhwc, "cpu") else pixels_nhwc, dtype=np.uint8)
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return np.asarray(self._request.infer({0: x})[self._output], dtype=np.float32)
