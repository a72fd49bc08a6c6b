"""Open-set threshold calibration on the support set itself (leave-one-out).

Each sampled support item is queried against the index with itself left out; the verdict rule's open-set
score of those neighbours (passed in by the caller: the rule belongs to the scan flow, scanner.verdict) is what
a new image of a known class would score. The threshold is the `target_accept` quantile of those scores, so
that share of known images is accepted and anything farther out is reported `unknown`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# (neighbour labels [n, k] object, neighbour similarities [n, k] float) -> open-set scores [n]
OpenSetScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]

# Calibration needs a quantile, not every neighbour exactly: a 2,000-item sample (the 95th percentile's rank
# is then known to about +-0.5 %) searched at a modest breadth keeps enrollment fast on large indexes.
MAX_CALIBRATION_ITEMS = 2000
CALIBRATION_EF = 128


def leave_one_out_neighbours(hnsw, labels: np.ndarray, k: int, rng_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and similarities of the k nearest other support items of (a sample of) the support items."""
    n = len(labels)
    if n < 2:
        return np.zeros((0, 0), dtype=object), np.zeros((0, 0), dtype=np.float32)
    ids = np.arange(n)
    if n > MAX_CALIBRATION_ITEMS:
        ids = np.sort(np.random.default_rng(rng_seed).choice(n, MAX_CALIBRATION_ITEMS, replace=False))
    kq = min(k + 1, n)
    vectors = np.asarray(hnsw.get_items(ids), dtype=np.float32)
    hnsw.set_ef(max(CALIBRATION_EF, 2 * kq))
    found, dist = hnsw.knn_query(vectors, k=kq)
    keep = found != ids[:, None]  # drop the item itself
    # keep exactly kq-1 neighbours per row (if the item was not among its own results, drop the farthest)
    rows_labels = np.full((len(ids), kq - 1), "", dtype=object)
    rows_sims = np.zeros((len(ids), kq - 1), dtype=np.float32)
    for r in range(len(ids)):
        sel = np.flatnonzero(keep[r])[: kq - 1]
        rows_labels[r, : len(sel)] = labels[found[r, sel]]
        rows_sims[r, : len(sel)] = 1.0 - dist[r, sel]
    return rows_labels, rows_sims


def threshold_from_scores(scores: np.ndarray, target_accept: float) -> float:
    if scores.size == 0:
        return 2.0  # nothing to calibrate on: reject nothing
    return float(np.quantile(scores, target_accept))
