"""Leave-one-out neighbours of the support set: what the verdict rule calibrates on at every enrollment.

Each sampled support item is queried against the index with itself left out; its neighbours are what a new
image of a known class would see. The caller (scanner.enroll) turns them into the verdict rule's calibrations
(the open-set threshold and the ai_score map, scanner.verdict.calibrate): the rule belongs to the scan flow.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from indexes.manifest import AiScoreCalibration, OpenSetCalibration

# (neighbour labels [n, k], neighbour similarities [n, k], the items' own labels [n], the current open-set and
# ai_score calibrations, whose settings (target_accept, k, prior) the new ones keep) -> (ai_score calibration,
# open-set calibration)
Calibrator = Callable[[np.ndarray, np.ndarray, np.ndarray, OpenSetCalibration, AiScoreCalibration],
                      tuple[AiScoreCalibration, OpenSetCalibration]]

# Calibration needs quantiles and a monotone fit, not every neighbour exactly: a 2,000-item sample (the 95th
# percentile's rank is then known to about +-0.5 %) searched at a modest breadth keeps enrollment fast on large
# indexes.
MAX_CALIBRATION_ITEMS = 2000
CALIBRATION_EF = 128


def leave_one_out_neighbours(hnsw, labels: np.ndarray, k: int,
                             rng_seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the sampled items' table rows, labels [n, k] and similarities [n, k] of their k nearest *other* items)."""
    n = len(labels)
    if n < 2:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=object), np.zeros((0, 0), dtype=np.float32)
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
    return ids, rows_labels, rows_sims
