"""Near-duplicate fingerprints: a 64-bit DCT perceptual hash of each image's first (centre) view.

Why not the embedding: the embedder is trained to put every image of one source close together, so two
*different* images of a class are often closer (kit: median nearest-distinct cosine 0.995) than an image and
its own re-encoded copy (JPEG q75 at 0.75x: 5 % of copies below 0.93). A content hash separates the two;
docs/evaluation.md has the measured Hamming distances.

The hash (pHash): the view in grey, averaged down to 32 x 32, a 2-D DCT, the 8 x 8 lowest frequencies without
the DC term compared with their median -> 63 bits (bit 63 is 0). Computed on the decoded view the model sees,
so scan and enroll hash exactly the same pixels and no extra decode is needed.
"""

from __future__ import annotations

import numpy as np

HASH_SIDE = 32
LOW = 8
# Images whose hashes differ in at most this many of 63 bits are near-duplicates. Measured on the kit
# (docs/evaluation.md): every re-posted copy (0.75x + JPEG q75, or JPEG q90) within 4 bits of its original;
# distinct images within 4 bits: 4 pairs of 2,572, three of them content-matched real/enhanced pairs.
NEAR_DUPLICATE_BITS = 4


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(HASH_SIDE)
_BIT_WEIGHTS = (np.uint64(1) << np.arange(LOW * LOW - 1, dtype=np.uint64))


def _grey_32(views) -> np.ndarray:
    """uint8 [n, S, S, 3] (numpy, or a torch tensor on any device) -> float64 [n, 32, 32]."""
    if not isinstance(views, np.ndarray):  # a torch tensor (CUDA decode): reduce on the device, move 4 KB each
        import torch

        grey = views.float() @ torch.tensor([0.299, 0.587, 0.114], device=views.device)
        small = torch.nn.functional.adaptive_avg_pool2d(grey[:, None], HASH_SIDE)[:, 0]
        return small.cpu().numpy().astype(np.float64)
    n, s = views.shape[0], views.shape[1]
    grey = views.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if s % HASH_SIDE == 0:
        f = s // HASH_SIDE
        return grey.reshape(n, HASH_SIDE, f, HASH_SIDE, f).mean(axis=(2, 4)).astype(np.float64)
    edges = np.linspace(0, s, HASH_SIDE + 1).astype(int)
    return np.stack([np.add.reduceat(np.add.reduceat(g, edges[:-1], axis=0), edges[:-1], axis=1)
                     / np.outer(np.diff(edges), np.diff(edges)) for g in grey]).astype(np.float64)


def perceptual_hashes(views) -> np.ndarray:
    """One uint64 hash per view: uint8 [n, S, S, 3] -> uint64 [n]."""
    if views.shape[0] == 0:
        return np.zeros(0, dtype=np.uint64)
    coeffs = _DCT @ _grey_32(views) @ _DCT.T
    low = coeffs[:, :LOW, :LOW].reshape(len(coeffs), -1)[:, 1:]  # drop DC: overall brightness
    bits = low > np.median(low, axis=1, keepdims=True)
    return (bits.astype(np.uint64) * _BIT_WEIGHTS).sum(axis=1, dtype=np.uint64)


def first_view_hashes(decoded) -> np.ndarray:
    """The hash of each decoded item's first (centre) view (a scanner.decode.DecodedBatch)."""
    starts = decoded.view_starts()
    return perceptual_hashes(decoded.pixels if starts is None else decoded.pixels[starts])
