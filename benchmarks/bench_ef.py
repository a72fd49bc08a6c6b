"""Recall@11 of one hnswlib graph at several search breadths (ef): the measurement behind ef_search_for().

    python benchmarks/bench_ef.py

100,000 base + 2,000 query vectors from bench_recall.synthetic (16 clustered classes, 128-d), graph
M=32, ef_construction=200 (the index's settings), exact neighbours by brute-force cosine.
"""

import time

import hnswlib
import numpy as np

from bench_recall import synthetic


def main() -> None:
    rng = np.random.default_rng(0)
    v, _ = synthetic(102000, 128, 16, False, rng)
    base, q = v[:100000], v[100000:]
    t = time.time()
    idx = hnswlib.Index(space="cosine", dim=128)
    idx.init_index(100000, M=32, ef_construction=200)
    idx.add_items(base, np.arange(100000))
    print("build", round(time.time() - t, 1), flush=True)
    exact = np.argsort(-(q @ base.T), axis=1)[:, :11]
    for ef in (128, 256, 512, 1024):
        idx.set_ef(ef)
        t = time.time()
        got, _ = idx.knn_query(q, k=11)
        dt = time.time() - t
        recall = np.mean([len(set(a) & set(b)) / 11 for a, b in zip(got, exact)])
        print(ef, "recall", round(recall, 4), "qps", round(2000 / dt), flush=True)


if __name__ == "__main__":
    main()
