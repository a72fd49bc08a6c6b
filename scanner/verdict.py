"""Verdict stage: from the k nearest support items of each image to its label and scores.

The rules (documented in the README, shared by `scan`, `eval` and index calibration so they cannot drift):

- weight of a neighbour   w = max(similarity, 0)  (cosine similarity of L2-normalised embeddings)
- closed_set_label        the class with the largest sum of weights among the k neighbours (ties: the class
                          holding the nearest neighbour)
- ai_score                sum of weights of neighbours not labelled `real` / sum of all weights, in [0, 1]
                          (0.5 when every weight is 0: no evidence either way)
- is_ai                   ai_score >= 0.5
- open_set_score          1 - mean similarity of the neighbours that voted for closed_set_label: how far the
                          image lies from the class it would be given. Higher = more likely a source nobody
                          enrolled. Range [0, 2].
- label                   `unknown` when open_set_score > the index's threshold, else closed_set_label. The
                          threshold is calibrated at enrollment (leave-one-out over the support set, so that a
                          target share, 95 % by default, of known support images is accepted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REAL_LABEL = "real"
UNKNOWN_LABEL = "unknown"


@dataclass
class Verdicts:
    closed_set_label: np.ndarray  # object array of str, [n]
    ai_score: np.ndarray  # float32 [n]
    open_set_score: np.ndarray  # float32 [n]

    def labels(self, threshold: float) -> np.ndarray:
        """Final labels: closed-set label, or `unknown` above the open-set threshold."""
        out = self.closed_set_label.copy()
        out[self.open_set_score > threshold] = UNKNOWN_LABEL
        return out

    @property
    def is_ai(self) -> np.ndarray:
        return self.ai_score >= 0.5


def decide(neighbor_labels: np.ndarray, neighbor_sims: np.ndarray) -> Verdicts:
    """neighbor_labels: str array [n, k] sorted nearest first; neighbor_sims: float [n, k] cosine similarity.

    Rows may be padded with label "" (fewer than k neighbours): padding carries no weight and no vote.
    """
    labels = np.asarray(neighbor_labels, dtype=object)
    sims = np.asarray(neighbor_sims, dtype=np.float64)
    n = labels.shape[0]
    closed = np.empty(n, dtype=object)
    ai = np.empty(n, dtype=np.float32)
    open_score = np.empty(n, dtype=np.float32)
    valid = labels != ""
    weights = np.where(valid, np.maximum(sims, 0.0), 0.0)
    for i in range(n):
        row_labels = labels[i][valid[i]]
        if row_labels.size == 0:
            closed[i], ai[i], open_score[i] = UNKNOWN_LABEL, 0.5, 2.0
            continue
        row_w = weights[i][valid[i]]
        row_s = sims[i][valid[i]]
        classes, inverse = np.unique(row_labels, return_inverse=True)
        votes = np.bincount(inverse, weights=row_w, minlength=len(classes))
        best = votes.max()
        tied = np.flatnonzero(votes >= best - 1e-12)
        if len(tied) == 1:
            winner = tied[0]
        else:  # neighbours are sorted nearest first: the first neighbour of a tied class wins
            winner = next(inverse[j] for j in range(len(inverse)) if inverse[j] in tied)
        closed[i] = classes[winner]
        total = row_w.sum()
        ai[i] = row_w[row_labels != REAL_LABEL].sum() / total if total > 0 else 0.5
        open_score[i] = 1.0 - row_s[inverse == winner].mean()
    return Verdicts(closed_set_label=closed, ai_score=ai, open_set_score=open_score)
