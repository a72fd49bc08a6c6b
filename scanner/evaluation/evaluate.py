"""`imgscan eval`: features once per method, then for every shots value (and fold) a split, a real support
index built with `scanner.enroll.enroll_embeddings`, k-NN search and `scanner.verdict.decide` - the very code `scan`
judges images with - and the metrics of `metrics.py`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scanner.evaluation import metrics as M
from scanner.dataset import Dataset
from scanner.evaluation.protocol import QUERY, SUPPORT, Split, check_split, make_split
from scanner.detail import DEFAULT_MIN_DETAIL
from scanner.verdict import REAL_LABEL, UNKNOWN_LABEL, VerdictRule, calibrate, decide

MAIN_METHOD = "imgscan"


@dataclass
class Method:
    name: str
    features: np.ndarray  # [n, d]
    kind: str  # "cosine" (HNSW support index) or "euclidean" (brute force)
    model_id: str
    model_sha256: str = ""
    description: str = ""
    feature_seconds: float = 0.0
    # Where support rows come from, when not `features`: degraded queries are judged against clean enrollments.
    support_features: np.ndarray | None = None
    # Pixel detail of the images this method judges (scanner/detail.py), when not the clean images' (degraded copies)
    detail: np.ndarray | None = None

    def support(self, idx: np.ndarray) -> np.ndarray:
        return (self.features if self.support_features is None else self.support_features)[idx]

    def judged_detail(self, feats: "Features") -> np.ndarray | None:
        """Pixel detail of the images this method judges: its own (degraded copies), else the clean images'."""
        return self.detail if self.detail is not None else feats.detail


@dataclass
class Judged:
    """Predictions for the queries of one split (arrays indexed like `query_idx`)."""

    method: str
    split: Split
    query_idx: np.ndarray
    label: np.ndarray
    closed_set_label: np.ndarray
    is_ai: np.ndarray
    ai_score: np.ndarray
    open_set_score: np.ndarray
    threshold: float
    neighbor_labels: np.ndarray
    neighbor_ids: np.ndarray
    neighbor_sims: np.ndarray
    metrics: dict = field(default_factory=dict)


@dataclass
class Features:
    """Everything read from the images once: which decoded, their sha, and the imgscan embeddings."""

    ok: np.ndarray
    sha: np.ndarray
    errors: dict[str, str]
    embeddings: np.ndarray
    duplicates: dict[str, str] = field(default_factory=dict)  # path -> path of the first byte-identical file
    detail: np.ndarray | None = None  # float32 [n], pixel detail of each image's views; None: not measured (no floor)


def drop_duplicates(ds: Dataset, feats: Features) -> None:
    """Byte-identical files (same sha) are one image: keep the first, leave the others out of both sides.
    Otherwise a copy could be a query while its twin is enrolled (an exact match across the split, possibly
    across groups), or count twice among the queries."""
    first: dict[str, int] = {}
    for i in np.flatnonzero(feats.ok):
        j = first.setdefault(feats.sha[i], int(i))
        if j != i:
            feats.ok[i] = False
            feats.duplicates[ds.paths[i]] = ds.paths[j]


def _load_cache(cache: Path | None, model_sha256: str, numerics: str, views: str) -> dict[str, tuple[np.ndarray, float]]:
    if cache is None or not cache.is_file():
        return {}
    try:
        with np.load(cache, allow_pickle=False) as z:
            # bf16 and fp32 (torch or OpenVINO) embeddings of one model differ slightly: a cache serves one kind
            cached = str(z["precision"]) if "precision" in z.files else "fp32"  # older caches: fp32 torch
            cached_views = str(z["views"]) if "views" in z.files else ""
            if str(z["model_sha256"]) != model_sha256 or cached != numerics or cached_views != views:
                return {}  # another model, numerics or view rule (or a cache older than these fields): embed again
            return dict(zip(z["sha"].tolist(), zip(z["embedding"], z["detail"].tolist())))
    except (OSError, KeyError, ValueError):
        return {}  # unreadable or foreign cache: embed again and overwrite it


def embed_dataset(ds: Dataset, embedder, batch_size: int = 32, progress=None, cache: Path | None = None) -> Features:
    """Embed every image through `scanner.judge.embedded_batches` (scan's own read/decode/embed stages).

    `cache`: an .npz of embeddings (and pixel details) keyed by the file's xxh3-128 and tied to the model's
    weights sha256 and to the embedder's runtime and precision; files whose bytes are in it are not decoded or
    embedded again, and the cache is rewritten with this run's."""
    import xxhash

    from scanner.config import ReadConfig
    from scanner.detail import item_detail
    from scanner.judge import embedded_batches

    emb = np.zeros((len(ds), embedder.dim), dtype=np.float32)
    ok = np.zeros(len(ds), dtype=bool)
    detail = np.full(len(ds), np.nan, dtype=np.float32)
    sha = np.empty(len(ds), dtype=object)
    errors: dict[str, str] = {}
    numerics = embedder.precision if embedder.runtime == "torch" else f"{embedder.runtime}-{embedder.precision}"
    views = embedder.view_spec.describe()  # the same weights give other embeddings under another view rule
    cached = _load_cache(cache, embedder.card.weights_sha256, numerics, views)
    todo = list(range(len(ds)))
    if cached:
        todo = []
        for i, p in enumerate(ds.paths):
            try:
                h = xxhash.xxh3_128_hexdigest(Path(p).read_bytes())
            except OSError:
                h = None
            if h in cached:
                (emb[i], detail[i]), ok[i], sha[i] = cached[h], True, h
            else:
                todo.append(i)
        if progress is not None:
            progress(len(ds) - len(todo))
    pos = {os.fsencode(ds.paths[i]): i for i in todo}
    if todo:
        for reads, decoded, e in embedded_batches(list(pos), embedder, ReadConfig(readers=2), batch_size=batch_size):
            row, d = 0, item_detail(decoded)
            for i, r in enumerate(reads):
                j = pos[r.path]
                err = r.error or decoded.errors[i]
                if err is None:
                    emb[j], detail[j], ok[j], sha[j] = e[row], d[row], True, r.sha
                    row += 1
                else:
                    errors[ds.paths[j]] = err
            if progress is not None:
                progress(len(reads))
    if cache is not None:
        from imgscan_core.files import atomic_path

        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, model_sha256=np.array(embedder.card.weights_sha256), precision=np.array(numerics), views=np.array(views),
                     sha=np.array(sha[ok].tolist(), dtype=str), embedding=emb[ok], detail=detail[ok])
    feats = Features(ok=ok, sha=sha, errors=errors, embeddings=emb, detail=detail)
    drop_duplicates(ds, feats)
    return feats


def _judge_cosine(method: Method, ds: Dataset, feats: Features, split: Split, k: int, workdir: Path):
    from indexes import SupportIndex
    from scanner.enroll import enroll_embeddings

    index_dir = Path(tempfile.mkdtemp(prefix=f"{method.name}-", dir=workdir))
    for c in split.enrolled:
        idx = np.flatnonzero((split.role == SUPPORT) & (ds.labels == c) & feats.ok)
        if idx.size == 0:
            continue
        enroll_embeddings(index_dir, c, method.support(idx), feats.sha[idx].tolist(), ds.paths[idx].tolist(),
                          method.model_id, method.model_sha256 or method.model_id)
    index = SupportIndex.open(index_dir)
    q = np.flatnonzero((split.role == QUERY) & feats.ok)
    nb = index.search(method.features[q], k)
    return q, nb.labels, nb.support_ids, nb.sims, VerdictRule.of(index)


def _judge_euclidean(method: Method, ds: Dataset, feats: Features, split: Split, k: int):
    from indexes.manifest import OpenSetCalibration

    from scanner.evaluation.baselines import euclidean_knn

    s = np.flatnonzero((split.role == SUPPORT) & np.isin(ds.labels, split.enrolled) & feats.ok)
    q = np.flatnonzero((split.role == QUERY) & feats.ok)
    sup_labels = ds.labels[s]
    sup_ids = np.array([str(x) for x in feats.sha[s]], dtype=object)  # support ids are full shas, as in the index
    # leave-one-out calibration, as the support index does
    loo_idx, loo_sims = euclidean_knn(method.support(s), method.support(s), k, exclude_self=True)
    ai_cal, open_set = calibrate(sup_labels[loo_idx], loo_sims, sup_labels, OpenSetCalibration(k=k))
    idx, sims = euclidean_knn(method.support(s), method.features[q], k)
    return q, sup_labels[idx], sup_ids[idx], sims, VerdictRule(open_set.threshold, ai_cal)


def judge(method: Method, ds: Dataset, feats: Features, split: Split, k: int, workdir: Path,
          min_detail: float = DEFAULT_MIN_DETAIL) -> Judged:
    """The queries of one split judged as `scan` judges images, pixel-detail floor included (every method gets it,
    from the images it sees, so that they are compared on the same rule)."""
    if method.kind == "cosine":
        q, labs, ids, sims, rule = _judge_cosine(method, ds, feats, split, k, workdir)
    else:
        q, labs, ids, sims, rule = _judge_euclidean(method, ds, feats, split, k)
    detail = method.judged_detail(feats)
    v = decide(labs, sims, dataclasses.replace(rule, min_detail=min_detail), None if detail is None else detail[q])
    j = Judged(method=method.name, split=split, query_idx=q, label=v.label, closed_set_label=v.closed_set_label,
               is_ai=v.is_ai, ai_score=v.ai_score, open_set_score=v.open_set_score, threshold=rule.threshold,
               neighbor_labels=labs,
               neighbor_ids=ids, neighbor_sims=sims)
    j.metrics = compute_metrics(ds, j)
    return j


def compute_metrics(ds: Dataset, j: Judged) -> dict:
    """All metrics of one judged split. Unknown-class queries have true label `unknown`."""
    q = j.query_idx
    true = j.split.true_label[q]
    cls = ds.labels[q]
    ai_true = ds.is_ai[q]
    is_ai = j.is_ai
    known = true != UNKNOWN_LABEL
    # detection: real vs each generator, over the queries of those two classes
    per_gen = {}
    for g in sorted(set(ds.labels[ds.is_ai].tolist())):
        m = (cls == g) | (cls == REAL_LABEL)
        n_gen, n_real = int(np.sum(cls == g)), int(np.sum(cls == REAL_LABEL))
        if n_gen == 0:
            continue
        per_gen[g] = {
            "enrolled": g in j.split.enrolled, "n_real": n_real, "n_generated": n_gen,
            "accuracy": M.accuracy(ai_true[m], is_ai[m]),
            "balanced_accuracy": M.balanced_accuracy_binary(ai_true[m], is_ai[m]),
            "auc": M.auroc(ai_true[m], j.ai_score[m]),
            "recall_generated": float(np.mean(is_ai[cls == g])),
        }
    enrolled_gen = [g for g, v in per_gen.items() if v["enrolled"]]

    def mean_of(key, names):
        vals = [per_gen[g][key] for g in names if not np.isnan(per_gen[g][key])]
        return float(np.mean(vals)) if vals else float("nan")

    detection = {
        "per_generator": per_gen,
        "mean_accuracy": mean_of("accuracy", enrolled_gen), "mean_auc": mean_of("auc", enrolled_gen),
        "mean_balanced_accuracy": mean_of("balanced_accuracy", enrolled_gen),
        "mean_accuracy_all": mean_of("accuracy", list(per_gen)), "mean_auc_all": mean_of("auc", list(per_gen)),
        "pooled_auc": M.auroc(ai_true, j.ai_score), "pooled_accuracy": M.accuracy(ai_true, is_ai),
        # the error that accuses a person: real query photos whose ai_score says AI
        "real_called_ai": float(np.mean(is_ai[cls == REAL_LABEL])) if np.any(cls == REAL_LABEL) else float("nan"),
    }
    # is ai_score a probability? (the index calibrates it with real and AI weighted equally: `balanced` weighs
    # the queries the same way; `ece` takes them as they come)
    calibration = {"ece": M.expected_calibration_error(ai_true, j.ai_score),
                   "ece_balanced": M.expected_calibration_error(ai_true, j.ai_score, balanced=True),
                   "reliability": M.reliability_bins(ai_true, j.ai_score)}
    has_unknown = bool(np.any(~known))
    att_labels = list(j.split.enrolled) + ([UNKNOWN_LABEL] if has_unknown else [])
    attribution = M.precision_recall_f1(true, j.label, att_labels)
    attribution["accuracy"] = M.accuracy(true, j.label)
    attribution["macro_f1_known"] = float(np.mean([attribution["per_class"][c]["f1"] for c in j.split.enrolled]))
    closed = M.precision_recall_f1(true[known], j.closed_set_label[known], list(j.split.enrolled))
    closed["accuracy"] = M.accuracy(true[known], j.closed_set_label[known])
    rows = list(j.split.enrolled) + sorted(set(cls[~known].tolist()))
    cols = list(j.split.enrolled) + [UNKNOWN_LABEL]
    confusion = {"rows": rows, "columns": cols,
                 "matrix": M.confusion_matrix(cls, j.label, rows, cols).tolist()}
    held = {}
    for src in j.split.holdout_sources:
        m = ds.sources[q] == src
        real = m & (cls == REAL_LABEL)
        held[src] = {"n": int(m.sum()), "n_real": int(real.sum()),
                     "real_called_ai": float(np.mean(is_ai[real])) if real.any() else float("nan"),
                     "accuracy": M.accuracy(ai_true[m], is_ai[m]) if m.any() else float("nan")}
    real_held = np.isin(ds.sources[q], j.split.holdout_sources) & (cls == REAL_LABEL)
    holdout_sources = {"per_source": held,
                       "real_called_ai": float(np.mean(is_ai[real_held])) if real_held.any() else float("nan")}
    open_set = {"threshold": j.threshold, "known_accepted": float(np.mean(j.label[known] != UNKNOWN_LABEL)) if known.any() else float("nan")}
    if has_unknown:
        correct = j.closed_set_label[known] == true[known]
        open_set.update({
            "n_unknown": int(np.sum(~known)),
            "auroc": M.auroc(~known, j.open_set_score),
            "oscr": M.oscr(correct, -j.open_set_score[known], -j.open_set_score[~known]),
            "unknown_rejected": float(np.mean(j.label[~known] == UNKNOWN_LABEL)),
            # one never-enrolled generator against every known query: which new generator slips in
            "per_unknown_class": {c: {"n": int(np.sum(cls == c)),
                                      "auroc": M.auroc((cls == c)[known | (cls == c)],
                                                       j.open_set_score[known | (cls == c)]),
                                      "rejected": float(np.mean(j.label[cls == c] == UNKNOWN_LABEL)),
                                      "called_ai": float(np.mean(is_ai[cls == c]))}
                                  for c in sorted(set(cls[~known].tolist()))},
        })
    return {"n_queries": int(q.size), "detection": detection, "attribution": attribution,
            "closed_set_attribution": closed, "confusion": confusion, "open_set": open_set, "calibration": calibration,
            "holdout_sources": holdout_sources}


HEADLINE = [
    ("mean_det_acc", ("detection", "mean_accuracy")),
    ("mean_det_bal_acc", ("detection", "mean_balanced_accuracy")),
    ("mean_det_auc", ("detection", "mean_auc")),
    ("closed_macro_f1", ("closed_set_attribution", "macro_f1")),
    ("open_macro_f1", ("attribution", "macro_f1")),
    ("open_set_auroc", ("open_set", "auroc")),
    ("oscr", ("open_set", "oscr")),
    ("unseen_real_called_ai", ("holdout_sources", "real_called_ai")),
    ("ai_score_ece", ("calibration", "ece")),
    ("ai_score_ece_balanced", ("calibration", "ece_balanced")),
]


def headline(metrics: dict) -> dict[str, float]:
    out = {}
    for name, (a, b) in HEADLINE:
        v = metrics.get(a, {}).get(b, float("nan"))
        out[name] = float("nan") if v is None else float(v)
    return out


def mean_std(values: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, _ in HEADLINE:
        xs = np.array([v[name] for v in values], dtype=np.float64)
        xs = xs[~np.isnan(xs)]
        out[name] = {"mean": float(xs.mean()) if xs.size else float("nan"),
                     "std": float(xs.std()) if xs.size > 1 else 0.0 if xs.size else float("nan"), "n": int(xs.size)}
    return out


@dataclass
class EvalResult:
    judged: dict[tuple[str, int, int | None], Judged]  # (method, shots, fold) -> predictions
    methods: list[Method]
    shots: list[int]
    main_shots: int
    folds: list[int | None]
    seconds: dict[str, float]


def run_protocol(ds: Dataset, feats: Features, methods: list[Method], shots: list[int], unknown: list[str],
                 folds: list[int | None], seed: int, k: int, workdir: Path, on_step=None,
                 holdout_sources: list[str] | None = None, min_detail: float = DEFAULT_MIN_DETAIL,
                 unknown_every_fold: bool = False) -> EvalResult:
    judged = {}
    seconds = {m.name: 0.0 for m in methods}
    for n in shots:
        for f in folds:
            split = make_split(ds, n, unknown, seed=seed, fold=f, usable=feats.ok, holdout_sources=holdout_sources,
                               unknown_every_fold=unknown_every_fold)
            check_split(ds, split)
            for m in methods:
                t0 = time.monotonic()
                judged[(m.name, n, f)] = judge(m, ds, feats, split, k, workdir, min_detail)
                seconds[m.name] += time.monotonic() - t0
                if on_step is not None:
                    on_step(m.name, n, f)
    return EvalResult(judged=judged, methods=methods, shots=list(shots), main_shots=max(shots), folds=list(folds),
                      seconds=seconds)
