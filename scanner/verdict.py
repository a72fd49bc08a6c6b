"""Verdict stage: from the k nearest support items of each image to one decision, shown two ways.

The rule (the README's "How a verdict is made"; shared by scan, enroll's calibration, eval, explain and the
Ray engine, so they cannot drift). First real vs AI, then, for AI only, which generator:

- weight of a neighbour   w = max(similarity, 0)  (cosine similarity of L2-normalised embeddings)
- ai_evidence             (sum of w of neighbours from generated classes - sum of w of `real` neighbours) / k,
                          in [-1, 1]. Unlike a vote share it keeps resolution when all k neighbours agree (11
                          AI neighbours at similarity 0.6 are weaker evidence than 11 at 0.95).
- ai_score                the index's calibration of ai_evidence (`AiScoreCalibration` in the manifest): a
                          probability of "AI-generated", fitted at enrollment leave-one-out on the support set
                          with real and AI weighted equally (isotonic), or to the share of AI images the index's
                          prior names ("ai-share 0.1": a crawl where one image in ten is generated; `imgscan index
                          calibrate --ai-share`). Old uncalibrated indexes: (e + 1) / 2.
- pixel detail floor      an image whose views hold almost no pixel-level detail (scanner/detail.py: detail <
                          min_detail, default 2.0; `--min-detail 0` turns it off) is never accused: its ai_score is
                          capped at 0.5. The embedder reads generator traces from neighbouring pixels; on flat
                          views (night sky, fog, a wall) its "AI" is a guess that falls on real photos far more
                          often than on textured ones. The image's detail is written beside the verdict.
- is_ai                   ai_score > 0.5 (no evidence either way, 0.5, accuses nobody)
- closed_set_label        `real` when not is_ai; else the generated class with the largest sum of weights among
                          the neighbours (ties: the class holding the nearest neighbour); `unknown` when no
                          neighbour is from a generated class.
- open_set_score          1 - mean similarity of the neighbours of closed_set_label: how far the image lies from
                          the class it is given. Higher = more likely a source nobody enrolled. Range [0, 2].
- label                   `unknown` when is_ai and open_set_score > the index's threshold (calibrated at
                          enrollment over the AI support items, left out in turn, so that 95 % of them are
                          accepted), else closed_set_label. `real` is never replaced by `unknown`: an image
                          only becomes an unknown *generator* once it is judged AI.

So `is_ai` is False exactly when `label == "real"`, by construction.

Matches (`find_matches` / `apply_matches`) come last: a file whose sha equals an enrolled item's (exact), or
whose perceptual hash is within NEAR_DUPLICATE_BITS of one (near, scanner/near_duplicate.py), takes that
item's class; its ai_score is then 1 or 0 (the enrolled label is known, not estimated). A near match stands only
where the embedding agrees that the file is that item: the item is at least as similar to it as its k-th nearest
neighbour. The perceptual hash reads the low frequencies and the embedding the pixel-level traces, so a file can
wear one image's hash over another's traces (an enrolled real photo's blur plus a generated image's detail);
there the match is kept as evidence (`near-disputed`) and the neighbours decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from imgscan_core.labels import REAL_LABEL, UNKNOWN_LABEL
from indexes.manifest import AiScoreCalibration, OpenSetCalibration, prior_for
from scanner.detail import DEFAULT_MIN_DETAIL
from scanner.near_duplicate import NEAR_DUPLICATE_BITS


@dataclass(frozen=True)
class VerdictRule:
    """What an index calibrated: the open-set threshold and the ai_score map."""

    threshold: float = 2.0
    ai_calibration: AiScoreCalibration = field(default_factory=AiScoreCalibration)
    min_detail: float = DEFAULT_MIN_DETAIL  # applies where decide() is given the images' pixel detail

    @classmethod
    def of(cls, index, min_detail: float = DEFAULT_MIN_DETAIL) -> "VerdictRule":
        return cls(float(index.manifest.open_set.threshold), index.manifest.ai_score, float(min_detail))


@dataclass
class Verdicts:
    label: np.ndarray  # object array of str, [n]
    closed_set_label: np.ndarray  # object array of str, [n]
    is_ai: np.ndarray  # bool [n]
    ai_score: np.ndarray  # float32 [n]
    open_set_score: np.ndarray  # float32 [n]
    ai_evidence: np.ndarray  # float32 [n]


def _weights(labels: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(which neighbours are real entries, not padding; their weights max(similarity, 0), 0 for padding)."""
    valid = labels != ""
    return valid, np.where(valid, np.maximum(sims, 0.0), 0.0)


def _evidence(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (weights * np.where(labels == REAL_LABEL, -1.0, 1.0)).sum(axis=1) / labels.shape[1]


def ai_evidence(neighbor_labels: np.ndarray, neighbor_sims: np.ndarray) -> np.ndarray:
    labels = np.asarray(neighbor_labels, dtype=object)
    sims = np.asarray(neighbor_sims, dtype=np.float64)
    if labels.ndim < 2 or labels.shape[1] == 0:
        return np.zeros(labels.shape[0] if labels.ndim else 0, dtype=np.float64)
    return _evidence(labels, _weights(labels, sims)[1])


def calibrated_ai_score(evidence: np.ndarray, calibration: AiScoreCalibration) -> np.ndarray:
    e = np.asarray(evidence, dtype=np.float64)
    if calibration.method == "isotonic" and len(calibration.evidence) >= 1:
        return np.interp(e, calibration.evidence, calibration.probability)
    return np.clip((e + 1.0) / 2.0, 0.0, 1.0)


def decide(neighbor_labels: np.ndarray, neighbor_sims: np.ndarray, rule: VerdictRule = VerdictRule(),
           detail: np.ndarray | None = None) -> Verdicts:
    """neighbor_labels: str array [n, k] sorted nearest first; neighbor_sims: float [n, k] cosine similarity;
    detail: float [n], each image's pixel detail (scanner/detail.py), or None where it is not known (support items
    at calibration): then no floor applies.

    Rows may be padded with label "" (fewer than k neighbours): padding carries no weight and no vote.
    """
    labels = np.asarray(neighbor_labels, dtype=object)
    sims = np.asarray(neighbor_sims, dtype=np.float64)
    n = labels.shape[0]
    if n == 0 or labels.ndim < 2 or labels.shape[1] == 0:
        return Verdicts(np.full(n, UNKNOWN_LABEL, dtype=object), np.full(n, UNKNOWN_LABEL, dtype=object),
                        np.zeros(n, dtype=bool), np.full(n, 0.5, dtype=np.float32), np.full(n, 2.0, dtype=np.float32),
                        np.zeros(n, dtype=np.float32))
    valid, weights = _weights(labels, sims)
    evidence = _evidence(labels, weights)
    # decided on the float32 value the row stores, so `is_ai == (ai_score > 0.5)` holds in the output too
    ai = calibrated_ai_score(evidence, rule.ai_calibration).astype(np.float32)
    if detail is not None and rule.min_detail > 0:
        ai = np.where(np.asarray(detail) < rule.min_detail, np.minimum(ai, np.float32(0.5)), ai).astype(np.float32)
    is_ai = ai > 0.5
    # Vectorised over rows: classes become integer codes once, votes are a [n, classes] matrix.
    classes, codes = np.unique(labels.astype(str), return_inverse=True)
    codes = codes.reshape(labels.shape)
    rows = np.repeat(np.arange(n), labels.shape[1]).reshape(labels.shape)
    votes = np.zeros((n, len(classes)), dtype=np.float64)
    np.add.at(votes, (rows[valid], codes[valid]), weights[valid])
    generated = (classes != "") & (classes != REAL_LABEL)
    votes[:, ~generated] = -1.0  # only generated classes compete for the generator
    best = votes.max(axis=1, keepdims=True)
    tied = votes >= best - 1e-12
    # neighbours are sorted nearest first: among tied classes, the one holding the nearest neighbour wins
    tied_here = tied[rows, codes] & valid & generated[codes]
    has_generated = tied_here.any(axis=1)
    winner = codes[np.arange(n), np.argmax(tied_here, axis=1)]
    closed = np.where(is_ai, np.where(has_generated, classes[winner].astype(object), UNKNOWN_LABEL), REAL_LABEL)
    closed = closed.astype(object)
    given = valid & (labels == closed[:, None])
    open_score = 1.0 - (sims * given).sum(axis=1) / np.maximum(given.sum(axis=1), 1)
    open_score = np.where(given.any(axis=1), open_score, 2.0)
    empty = ~valid.any(axis=1)
    closed[empty], ai[empty], open_score[empty], is_ai[empty] = UNKNOWN_LABEL, 0.5, 2.0, False
    final = closed.copy()
    final[is_ai & (open_score > rule.threshold)] = UNKNOWN_LABEL
    return Verdicts(label=final, closed_set_label=closed, is_ai=is_ai, ai_score=ai,
                    open_set_score=open_score.astype(np.float32), ai_evidence=evidence.astype(np.float32))


# ---- calibration at enrollment (called by indexes through scanner.enroll) --------------------------------------

def isotonic_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted pool-adjacent-violators: non-decreasing block means of y over x. Returns each block's centre x,
    mean y and total weight."""
    order = np.argsort(x, kind="stable")
    sums, weights, lo, hi = [], [], [], []
    for xi, yi, wi in zip(x[order], y[order].astype(np.float64), w[order]):
        sums.append(wi * yi)
        weights.append(wi)
        lo.append(xi)
        hi.append(xi)
        while len(sums) > 1 and sums[-2] / weights[-2] >= sums[-1] / weights[-1]:
            s, wt, h = sums.pop(), weights.pop(), hi.pop()
            lo.pop()
            sums[-1] += s
            weights[-1] += wt
            hi[-1] = h
    wsum = np.array(weights)
    return (np.array(lo) + np.array(hi)) / 2, np.array(sums) / wsum, wsum


def fit_ai_calibration(evidence: np.ndarray, is_ai: np.ndarray, ai_share: float = 0.5) -> AiScoreCalibration:
    """Isotonic map evidence -> P(AI), AI items weighted to a total share `ai_share` and real ones to the rest
    (0.5: equal totals); each block's mean is shrunk toward `ai_share` (what no evidence says) by one
    pseudo-observation, so a block of a few items never claims certainty (exactly 0 or 1)."""
    prior = prior_for(ai_share)
    y = np.asarray(is_ai, dtype=bool)
    if y.all() or not y.any():
        return AiScoreCalibration(method="none", prior=prior, calibrated_on=int(y.size))
    w = np.where(y, ai_share / y.sum(), (1.0 - ai_share) / (~y).sum()) * y.size
    xs, ys, ws = isotonic_fit(np.asarray(evidence, dtype=np.float64), y, w)
    # shrinking blocks of unequal weight can undo their order: keep the map non-decreasing
    ys = np.maximum.accumulate((ys * ws + ai_share) / (ws + 1.0))
    return AiScoreCalibration(method="isotonic", evidence=[round(float(v), 6) for v in xs],
                              probability=[round(float(v), 6) for v in ys], prior=prior, calibrated_on=int(y.size))


def calibrate(loo_labels: np.ndarray, loo_sims: np.ndarray, true_labels: np.ndarray,
              open_set: OpenSetCalibration,
              ai_score: AiScoreCalibration = AiScoreCalibration()) -> tuple[AiScoreCalibration, OpenSetCalibration]:
    """Both calibrations from leave-one-out neighbours of support items (`true_labels`: their own classes), with
    the settings of the current ones: the ai_score map's prior, the open-set `target_accept` and k.
    The open-set threshold is the `target_accept` quantile of the AI items' open-set scores (only AI verdicts
    can become `unknown`)."""
    true_labels = np.asarray(true_labels, dtype=object)
    ai_cal = fit_ai_calibration(ai_evidence(loo_labels, loo_sims), true_labels != REAL_LABEL, ai_score.ai_share)
    v = decide(loo_labels, loo_sims, VerdictRule(2.0, ai_cal))
    scores = v.open_set_score[true_labels != REAL_LABEL]
    threshold = 2.0 if scores.size == 0 else float(np.quantile(scores, open_set.target_accept))
    return ai_cal, OpenSetCalibration(threshold=threshold, method=open_set.method, target_accept=open_set.target_accept,
                                      k=open_set.k, calibrated_on=int(scores.size))


# ---- exact and near-duplicate matches ------------------------------------------------------------------------

@dataclass
class Matches:
    """Per image: the matched support row (-1: none), its kind ("exact" | "near" | "") and the cosine similarity
    of the image's embedding to that item."""

    rows: np.ndarray  # int64 [n]
    kinds: np.ndarray  # object [n]
    similarity: np.ndarray  # float32 [n]


def find_matches(index, shas: list[str], hashes: np.ndarray | None, embeddings: np.ndarray) -> Matches:
    n = len(shas)
    rows = np.full(n, -1, dtype=np.int64)
    kinds = np.full(n, "", dtype=object)
    exact = index.rows_for_shas(shas)
    hit = exact >= 0
    rows[hit], kinds[hit] = exact[hit], "exact"
    if hashes is not None and n:
        near_rows, bits = index.nearest_by_hash(hashes)
        near = ~hit & (near_rows >= 0) & (bits <= NEAR_DUPLICATE_BITS)
        rows[near], kinds[near] = near_rows[near], "near"
    sims = np.zeros(n, dtype=np.float32)
    if (rows >= 0).any():
        m = rows >= 0
        sims[m] = np.einsum("ij,ij->i", embeddings[m], index.vectors(rows[m]))
    return Matches(rows, kinds, sims)


def apply_matches(verdicts: Verdicts, matches: Matches, support_labels: np.ndarray,
                  kth_similarity: np.ndarray) -> Verdicts:
    """A matched image takes the matched item's class; its label and is_ai follow from that class. A near match
    whose item is less similar to the image than its k-th nearest neighbour (`kth_similarity`, per image) is
    disputed: `matches.kinds` says `near-disputed` and the verdict stays the neighbours'."""
    disputed = (matches.kinds == "near") & (matches.similarity < np.asarray(kth_similarity, dtype=np.float32) - 1e-6)
    matches.kinds[disputed] = "near-disputed"
    m = (matches.rows >= 0) & ~disputed
    if not m.any():
        return verdicts
    labels = support_labels[matches.rows[m]].astype(object)
    ai = labels != REAL_LABEL
    for arr in (verdicts.label, verdicts.closed_set_label):
        arr[m] = labels
    verdicts.is_ai[m] = ai
    verdicts.ai_score[m] = ai.astype(np.float32)
    verdicts.open_set_score[m] = 1.0 - matches.similarity[m]
    return verdicts
