"""Open-set AUROC of other scores computed from the same k neighbours as `open_set_score`, on eval predictions.

    python benchmarks/open_set_scores.py REPORT_DIR/predictions.parquet [...]

For each method (clean and re-posted queries) of an `imgscan eval --unknown ...` run: the AUROC of unknown vs
known queries for the verdict's own score (1 - mean similarity to the given class) and for 1 - nearest
similarity, 1 - mean similarity over all k, 1 - k-th similarity, 1 - mean similarity to the nearest neighbour's
class, 1 - neighbour purity; and the verdict's score among AI queries alone. Reads predictions only; judges
nothing itself.
"""

from __future__ import annotations

import sys

import numpy as np


def scores(path: str) -> list[tuple[str, dict[str, float]]]:
    import polars as pl

    from scanner.evaluation.metrics import auroc

    d = pl.read_parquet(path)
    out = []
    for method in sorted(set(d["method"])):
        rows = d.filter((pl.col("role") == "query") & (pl.col("method") == method)).drop_nulls("open_set_score")
        enrolled = set(d.filter((pl.col("role") == "support") & (pl.col("method") == method))["class"])
        unknown = ~np.array([c in enrolled for c in rows["class"]])
        if not unknown.any():
            continue
        neighbours = rows["neighbors"].to_list()
        labels = np.array([[n["label"] for n in r] for r in neighbours])
        sims = np.array([[n["similarity"] for n in r] for r in neighbours])
        same = labels == labels[:, :1]
        purity = np.array([np.unique(r, return_counts=True)[1].max() for r in labels]) / labels.shape[1]
        given = np.array(rows["open_set_score"])
        ai = np.array(rows["is_ai_true"])
        out.append((method, {
            "verdict score": auroc(unknown, given),
            "1 - nearest": auroc(unknown, 1 - sims[:, 0]),
            "1 - mean of k": auroc(unknown, 1 - sims.mean(axis=1)),
            "1 - k-th": auroc(unknown, 1 - sims[:, -1]),
            "1 - mean, nearest's class": auroc(unknown, 1 - (sims * same).sum(axis=1) / same.sum(axis=1)),
            "1 - purity": auroc(unknown, 1 - purity),
            "verdict score, AI queries only": auroc(unknown[ai], given[ai]),
        }))
    return out


def main(argv: list[str]) -> None:
    for path in argv:
        for method, figures in scores(path):
            print(f"{path} {method}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
