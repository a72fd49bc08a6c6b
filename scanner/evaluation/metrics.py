"""Evaluation metrics as pure numpy functions (no scikit-learn), each small enough to check by hand.

Conventions
- Scores: higher = more of the positive class (AI for detection, unknown for open-set AUROC, "known" for OSCR).
- AUROC is the Mann-Whitney rank statistic with average ranks for ties: P(score_pos > score_neg) + 0.5 P(=).
  It is NaN when either class is empty (undefined, never silently 0.5).
- Division by zero in precision / recall / F1 gives 0 (a class never predicted has precision 0), the usual
  convention; `support` says how many true items a class had so such rows can be read correctly.
- OSCR is computed from the real curve: thresholds sweep every distinct score; at each one the correct
  classification rate CCR = (known queries accepted AND correctly classified) / (all known queries) and the
  false-positive rate FPR = (unknown queries accepted) / (all unknown queries). The curve runs from (0, 0)
  (threshold above every score) to (1, closed-set accuracy) (every query accepted); its area is taken with
  the trapezoidal rule, ties moving both rates at once. Nothing forces CCR = 1 at FPR = 1 (a widely copied
  implementation does, which inflates the area of a weak classifier).
"""

from __future__ import annotations

import math

import numpy as np


def _as_bool(y) -> np.ndarray:
    return np.asarray(y).astype(bool).reshape(-1)


def _as_float(s) -> np.ndarray:
    return np.asarray(s, dtype=np.float64).reshape(-1)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    values = _as_float(values)
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0  # mean of ranks s+1 .. e
    return ranks


def auroc(y_true, scores) -> float:
    """Area under the ROC curve of `scores` for positives `y_true` (bool), by the rank statistic with ties."""
    y = _as_bool(y_true)
    s = _as_float(scores)
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} items, scores {s.size}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, from (0, 0) at threshold +inf to (1, 1).

    A point means "positive when score >= threshold". Its trapezoidal area equals `auroc`."""
    y = _as_bool(y_true)
    s = _as_float(scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_run = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp = np.cumsum(y_sorted)[last_of_run]
    fp = np.cumsum(~y_sorted)[last_of_run]
    thresholds = np.r_[np.inf, s_sorted[last_of_run]]
    tpr = np.r_[0.0, tp / n_pos] if n_pos else np.full(len(thresholds), np.nan)
    fpr = np.r_[0.0, fp / n_neg] if n_neg else np.full(len(thresholds), np.nan)
    return fpr, tpr, thresholds


def trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    x, y = _as_float(x), _as_float(y)
    if x.size < 2:
        return 0.0
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def accuracy(y_true, y_pred) -> float:
    t, p = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if t.size == 0:
        return float("nan")
    return float(np.mean(t == p))


def balanced_accuracy_binary(y_true, y_pred) -> float:
    """Mean of the recall of positives and the recall of negatives (NaN when a side is empty)."""
    t, p = _as_bool(y_true), _as_bool(y_pred)
    if t.all() or (~t).all():
        return float("nan")
    return float((np.mean(p[t]) + np.mean(~p[~t])) / 2.0)


def confusion_matrix(y_true, y_pred, row_labels, col_labels=None) -> np.ndarray:
    """Counts [len(row_labels), len(col_labels)]: row = true label, column = predicted label.

    Items whose true or predicted label is not listed are not counted."""
    col_labels = list(row_labels) if col_labels is None else list(col_labels)
    r_index = {lab: i for i, lab in enumerate(row_labels)}
    c_index = {lab: i for i, lab in enumerate(col_labels)}
    m = np.zeros((len(r_index), len(c_index)), dtype=np.int64)
    for t, p in zip(np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)):
        if t in r_index and p in c_index:
            m[r_index[t], c_index[p]] += 1
    return m


def precision_recall_f1(y_true, y_pred, labels) -> dict:
    """Per-label precision, recall, F1 and support, and their unweighted (macro) means over `labels`.

    Predictions of a label outside `labels` count as misses for the true label (they lower recall) and are
    false positives of nobody listed."""
    t = np.asarray(y_true, dtype=object).reshape(-1)
    p = np.asarray(y_pred, dtype=object).reshape(-1)
    per = {}
    for lab in labels:
        tp = int(np.sum((t == lab) & (p == lab)))
        fp = int(np.sum((t != lab) & (p == lab)))
        fn = int(np.sum((t == lab) & (p != lab)))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[lab] = {"precision": prec, "recall": rec, "f1": f1, "support": tp + fn}
    n = len(per)
    return {
        "per_class": per,
        "macro_precision": sum(v["precision"] for v in per.values()) / n if n else float("nan"),
        "macro_recall": sum(v["recall"] for v in per.values()) / n if n else float("nan"),
        "macro_f1": sum(v["f1"] for v in per.values()) / n if n else float("nan"),
    }


def oscr_curve(known_correct, known_scores, unknown_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, ccr, thresholds) of the open-set classification rate curve; a query is accepted when its
    score >= threshold (score: higher = more confidently known, e.g. minus the open-set score).

    Points: (0, 0) at threshold +inf, then one per distinct score over known and unknown queries together,
    ending at (1, fraction of known queries correctly classified). No point is invented."""
    correct = _as_bool(known_correct)
    ks, us = _as_float(known_scores), _as_float(unknown_scores)
    if correct.shape != ks.shape:
        raise ValueError("known_correct and known_scores differ in length")
    n_known, n_unknown = ks.size, us.size
    if n_known == 0 or n_unknown == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    scores = np.r_[ks, us]
    is_known_correct = np.r_[correct, np.zeros(n_unknown, dtype=bool)]
    is_unknown = np.r_[np.zeros(n_known, dtype=bool), np.ones(n_unknown, dtype=bool)]
    order = np.argsort(-scores, kind="mergesort")
    s_sorted = scores[order]
    last_of_run = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    ccr = np.cumsum(is_known_correct[order])[last_of_run] / n_known
    fpr = np.cumsum(is_unknown[order])[last_of_run] / n_unknown
    return np.r_[0.0, fpr], np.r_[0.0, ccr], np.r_[np.inf, s_sorted[last_of_run]]


def oscr(known_correct, known_scores, unknown_scores) -> float:
    """Area under the OSCR curve (see `oscr_curve`); NaN without known or without unknown queries."""
    fpr, ccr, _ = oscr_curve(known_correct, known_scores, unknown_scores)
    if fpr.size == 0:
        return float("nan")
    return trapezoid(fpr, ccr)


def nan_to_none(x):
    """JSON has no NaN: metrics that are undefined are written as null."""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [nan_to_none(v) for v in x]
    if isinstance(x, np.generic):
        return nan_to_none(x.item())
    return x


def reliability_bins(y_true: np.ndarray, score: np.ndarray, bins: int = 10, balanced: bool = False) -> list[dict]:
    """Equal-width bins of a predicted probability: per bin its count, mean prediction and observed rate of
    positives. `balanced`: positives and negatives weighted to equal totals."""
    y = np.asarray(y_true, dtype=bool)
    p = np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0)
    w = np.ones(y.size)
    if balanced and y.any() and (~y).any():
        w = np.where(y, 0.5 / y.sum(), 0.5 / (~y).sum()) * y.size
    # + 1e-6: a float32 score like 0.7 (0.69999999) belongs to the bin that starts at 0.7
    which = np.minimum(np.floor(p * bins + 1e-6).astype(int), bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        out.append({"lo": b / bins, "hi": (b + 1) / bins, "n": int(m.sum()), "weight": float(w[m].sum()),
                    "mean_predicted": float(np.average(p[m], weights=w[m])) if m.any() else float("nan"),
                    "observed": float(np.average(y[m], weights=w[m])) if m.any() else float("nan")})
    return out


def expected_calibration_error(y_true: np.ndarray, score: np.ndarray, bins: int = 10, balanced: bool = False) -> float:
    """ECE: the weight-averaged gap between mean predicted probability and observed rate over equal-width bins."""
    table = reliability_bins(y_true, score, bins, balanced)
    total = sum(b["weight"] for b in table)
    if total == 0:
        return float("nan")
    return float(sum(b["weight"] * abs(b["mean_predicted"] - b["observed"]) for b in table if b["n"]) / total)
