"""Baselines judged with the same protocol, split and verdict rules as the embedder:

- `spectral-knn`: the 2-D Fourier magnitude of a high-pass residual (grey image minus its 3x3 box blur), as a
  log spectrum pooled to 16x16 plus a 32-bin radial profile; standardised (mean and std over the whole data
  set, label-free), L2-normalised, then the same cosine k-NN support index as imgscan. Up-sampling and
  periodic generator artefacts show up here; content mostly does not.
- `metadata`: width, height, file format and byte count only, standardised, Euclidean k-NN (k=11) with
  similarity 1/(1+distance) fed to the same verdict rules. On a uniform kit (every image 256x256 JPEG q95)
  it must land near chance: if it does not, the data set leaks its labels through the file format.
- `ce`: a model directory trained with `imgscan train --loss ce` (cosine classifier), judged exactly as the
  main model (embed, enroll the support set, k-NN) - a different training loss, same evaluation.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

SPECTRAL_SIZE = 256
POOL = 16
RADIAL_BINS = 32
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")


def _load_grey(path: str, size: int = SPECTRAL_SIZE) -> np.ndarray:
    """Grey float image, centre SxS crop at native pixels (bilinear upscale only when smaller than S)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as im:
            im.seek(0)
            im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    if min(w, h) < size:
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32)
    return arr.mean(axis=2)


def _box3(x: np.ndarray) -> np.ndarray:
    p = np.pad(x, 1, mode="reflect")
    out = np.zeros_like(x)
    for dy in range(3):
        for dx in range(3):
            out += p[dy:dy + x.shape[0], dx:dx + x.shape[1]]
    return out / 9.0


def _radial_index(size: int, bins: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    c = size / 2.0
    r = np.sqrt((yy - c) ** 2 + (xx - c) ** 2) / (c * np.sqrt(2))
    return np.minimum((r * bins).astype(np.int64), bins - 1)


_RADIAL = None


def spectral_vector(grey: np.ndarray) -> np.ndarray:
    global _RADIAL
    size = grey.shape[0]
    residual = grey - _box3(grey)
    spec = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(residual))))
    pooled = spec.reshape(POOL, size // POOL, POOL, size // POOL).mean(axis=(1, 3)).reshape(-1)
    if _RADIAL is None or _RADIAL.shape[0] != size:
        _RADIAL = _radial_index(size, RADIAL_BINS)
    radial = np.bincount(_RADIAL.reshape(-1), weights=spec.reshape(-1), minlength=RADIAL_BINS)
    radial /= np.bincount(_RADIAL.reshape(-1), minlength=RADIAL_BINS)
    return np.concatenate([pooled, radial]).astype(np.float32)


def spectral_features(paths, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """(features [n, 288] raw, ok mask [n]). Unreadable images get a zero row and ok=False."""
    feats = np.zeros((len(paths), POOL * POOL + RADIAL_BINS), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    for i, p in enumerate(paths):
        try:
            feats[i] = spectral_vector(_load_grey(p))
            ok[i] = True
        except Exception:  # the embed pass reports decode errors; here the row is just left out
            pass
        if progress is not None:
            progress(1)
    return feats, ok


def metadata_features(paths) -> np.ndarray:
    """[n, 3 + len(FORMATS) + 1]: width, height, log2(bytes), one-hot format (last column: other)."""
    rows = []
    for p in paths:
        try:
            nbytes = os.stat(p).st_size
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(p) as im:
                    (w, h), fmt = im.size, im.format
        except Exception:
            nbytes, w, h, fmt = 0, 0, 0, None
        onehot = [1.0 if fmt == f else 0.0 for f in FORMATS] + [0.0 if fmt in FORMATS else 1.0]
        rows.append([float(w), float(h), float(np.log2(max(nbytes, 1)))] + onehot)
    return np.array(rows, dtype=np.float64)


def standardise(x: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=0, keepdims=True)
    sd = x.std(axis=0, keepdims=True)
    return (x - mu) / np.where(sd > 1e-12, sd, 1.0)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def euclidean_knn(support: np.ndarray, queries: np.ndarray, k: int, exclude_self: bool = False):
    """Brute-force k-NN: (indices [n, k], similarities 1/(1+d) [n, k]) nearest first."""
    d2 = (np.sum(queries ** 2, axis=1)[:, None] + np.sum(support ** 2, axis=1)[None, :]
          - 2.0 * queries @ support.T)
    d = np.sqrt(np.maximum(d2, 0.0))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    k = min(k, support.shape[0] - (1 if exclude_self else 0))
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, (1.0 / (1.0 + np.take_along_axis(d, idx, axis=1))).astype(np.float32)


def encode_thumbnail(path: str, side: int = 128) -> bytes | None:
    """A small JPEG of an image for reports (None when it cannot be read)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.seek(0)
                im = ImageOps.exif_transpose(im).convert("RGB")
                im.thumbnail((side, side))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=80)
                return buf.getvalue()
    except Exception:
        return None
