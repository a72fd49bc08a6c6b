"""What moving the `is_ai` threshold would buy: the proxies' figures at several ai_score thresholds.

    python benchmarks/operating_points.py runs/proxies/default

reads the predictions.parquet files that `benchmarks/embedder_proxies.py --out DIR` left in DIR (kit-unknown,
kit-enrolled, unseen-source) and prints, per threshold: P1 kit detection accuracy, balanced accuracy, AI recall
and real photos called AI; P2 the unseen real source's photos called AI; P3 the held-out generators' detection
accuracy once enrolled; P4 the re-posted kit detection accuracy and unseen real photos called AI. The product
decides at 0.5 (scanner/verdict.py); this shows why another operating point is not a substitute for a better
embedding. Nothing is re-embedded: it re-thresholds the stored ai_score.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from imgscan_core.labels import REAL_LABEL, UNKNOWN_LABEL
from scanner.evaluation import metrics as M
from embedder_proxies import held_source as result_held_source, photos_manifest, photos_relative

HERE = Path(__file__).resolve().parent
PHOTOS = HERE.parent.parent / "shared" / "data" / "photos"
HELD_GENERATORS = ("glid-3", "gaugan")


def _queries(path: Path):
    t = pq.read_table(path, columns=["method", "role", "path", "class", "true_label", "is_ai_true", "label",
                                     "ai_score"]).to_pandas()
    return t[(t.role == "query") & t.label.notna()]


def pair_scores(ai: np.ndarray, cls: np.ndarray, truth: np.ndarray, generator: str) -> tuple[float, float]:
    """Real vs one generator, over the queries of those two classes, as `imgscan eval` detection counts them:
    (accuracy, balanced accuracy)."""
    m = (cls == generator) | (cls == REAL_LABEL)
    return M.accuracy(truth[m], ai[m]), M.balanced_accuracy_binary(truth[m], ai[m])


def detection(t, tau: float) -> dict:
    """Mean over enrolled generators of real-vs-generator accuracy (as `imgscan eval`), and its parts."""
    ai = t.ai_score.to_numpy() > tau
    cls, truth = t["class"].to_numpy(), t.is_ai_true.to_numpy()
    enrolled = t.true_label.to_numpy() != UNKNOWN_LABEL
    generators = [g for g in sorted(set(cls[truth])) if enrolled[cls == g].all()]
    acc, bal = zip(*(pair_scores(ai, cls, truth, g) for g in generators))
    return {"det_acc": float(np.mean(acc)), "bal_acc": float(np.mean(bal)),
            "ai_recall": float(np.mean([np.mean(ai[cls == g]) for g in generators])),
            "real_called_ai": float(np.mean(ai[cls == REAL_LABEL]))}


def held_source_scores(t, sources: dict[str, str], held_source: str) -> np.ndarray:
    """ai_score of the held-out source's real photos among the queries t (paths mapped once, not per threshold)."""
    held = t.path.map(lambda p: sources.get(photos_relative(p)) == held_source).to_numpy() & (t["class"] == REAL_LABEL).to_numpy()
    return t.ai_score.to_numpy()[held]


def table(run: Path, thresholds: list[float], photos: Path = PHOTOS) -> list[dict]:
    sources = {path: r["source"] for path, r in photos_manifest(photos).items()}
    kit_open, kit_enrolled = _queries(run / "kit-unknown" / "predictions.parquet"), _queries(run / "kit-enrolled" / "predictions.parquet")
    unseen = _queries(run / "unseen-source" / "predictions.parquet")
    proxies = run / "proxies.json"
    held_source = result_held_source(json.loads(proxies.read_text()) if proxies.is_file() else {})
    degraded = next(m for m in kit_open.method.unique() if m != "imgscan")
    unseen_clean = held_source_scores(unseen[unseen.method == "imgscan"], sources, held_source)
    unseen_degraded = held_source_scores(unseen[unseen.method == degraded], sources, held_source)
    rows = []
    for tau in thresholds:
        p1 = detection(kit_open[kit_open.method == "imgscan"], tau)
        enrolled = kit_enrolled[kit_enrolled.method == "imgscan"]
        ai, cls, truth = enrolled.ai_score.to_numpy() > tau, enrolled["class"].to_numpy(), enrolled.is_ai_true.to_numpy()
        p3 = [pair_scores(ai, cls, truth, g)[0] for g in HELD_GENERATORS]
        rows.append({"threshold": tau, **{f"p1_{k}": v for k, v in p1.items()},
                     "p2_unseen_real_called_ai": float(np.mean(unseen_clean > tau)),
                     "p3_det_acc_enrolled": float(np.mean(p3)),
                     "p3_recall_enrolled": float(np.mean([np.mean(ai[cls == g]) for g in HELD_GENERATORS])),
                     "p4_det_acc": detection(kit_open[kit_open.method == degraded], tau)["det_acc"],
                     "p4_unseen_real_called_ai": float(np.mean(unseen_degraded > tau))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="an embedder_proxies.py --out directory")
    ap.add_argument("--thresholds", default="0.5,0.6,0.7,0.8,0.9")
    args = ap.parse_args()
    rows = table(args.run, [float(x) for x in args.thresholds.split(",")])
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---:|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
