"""Embed stage: uint8 NHWC batches -> L2-normalised float32 embeddings, with the model's TorchScript module.

fp16 on CUDA (the module is cast with .half(); its normalisation buffers follow), fp32 on CPU.
"""

from __future__ import annotations

import os

import numpy as np

from scanner.errors import UsageError
from scanner.model import load_model


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch (use --device cpu or auto)")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: expected auto, cpu or cuda")
    return device


class Embedder:
    def __init__(self, model_dir: str | os.PathLike, device: str = "cpu"):
        import torch

        self.device = device
        self.card, module = load_model(model_dir, device=device)
        self.half = device == "cuda"
        self.module = module.half() if self.half else module
        self.size = self.card.input_size
        self.dim = self.card.embedding_dim
        self._torch = torch

    @property
    def model_id(self) -> str:
        return self.card.model_id

    def embed(self, pixels_nhwc) -> np.ndarray:
        """pixels_nhwc: uint8 [n, S, S, 3], a numpy array or a torch tensor on any device.
        Returns float32 [n, dim], unit norm."""
        torch = self._torch
        if pixels_nhwc.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = torch.as_tensor(pixels_nhwc).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        # channels_last memory keeps the NHWC layout the decoder produced: no copy, and faster convs on CPU.
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.module(x)
        emb = out.float().cpu().numpy()
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise UsageError(f"model {self.model_id} returned shape {tuple(emb.shape)}, card says dim {self.dim}")
        # Re-normalise in fp32: fp16 outputs drift slightly off unit norm, and the index assumes cosine.
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norms, 1e-12)
