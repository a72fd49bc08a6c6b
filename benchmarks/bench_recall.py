"""Support-index benchmark: HNSW k-NN recall against exact search, and the cost of enrolling into a big index.

    python benchmarks/bench_recall.py --support 100000 --queries 2000 --k 11 --json

Vectors are synthetic 128-d unit vectors drawn around 16 class centres (like embeddings of 16 classes, with
a per-class spread), and, for the hardest case, uniformly on the sphere (`--uniform`). Recall@k = share of
the exact k nearest neighbours (brute-force cosine) that HNSW returns. `enroll_150_s` is the wall time of
`enroll_embeddings` adding 150 new vectors to the index (everything but the embedding itself: lock, load and
verify, HNSW insert, Parquet + HNSW write, leave-one-out recalibration, manifest swap).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from indexes import SupportIndex
from scanner.enroll import enroll_embeddings


def synthetic(n: int, dim: int, classes: int, uniform: bool, rng) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, classes, n)
    if uniform:
        v = rng.normal(size=(n, dim))
    else:
        centres = rng.normal(size=(classes, dim))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        v = centres[labels] + rng.normal(scale=0.6 / np.sqrt(dim), size=(n, dim)) * rng.uniform(0.5, 1.5, (n, 1)) * 4
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return v, labels


def run(support: int, queries: int, k: int, dim: int = 128, classes: int = 16, uniform: bool = False, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    vectors, labels = synthetic(support + queries + 150, dim, classes, uniform, rng)
    base, query, extra = vectors[:support], vectors[support:support + queries], vectors[support + queries:]
    base_labels = labels[:support]
    shas = [rng.bytes(16).hex() for _ in range(support)]  # stand-ins for the images' xxh3-128 hashes
    with tempfile.TemporaryDirectory(prefix="imgscan-index-bench-") as tmp:
        started = time.perf_counter()
        for c in range(classes):
            sel = np.flatnonzero(base_labels == c)
            enroll_embeddings(tmp, f"class_{c:02d}", base[sel], [shas[i] for i in sel], ["bench"] * len(sel), "bench", "bench")
        build_s = time.perf_counter() - started
        index = SupportIndex.open(tmp)
        t0 = time.perf_counter()
        found = index.search(query, k)
        query_s = time.perf_counter() - t0
        id_of = {sid: i for i, sid in enumerate(index.table.support_id)}
        got = np.vectorize(id_of.__getitem__)(found.support_ids)
        exact = np.argsort(-(query @ index.vectors().T), axis=1)[:, :k]
        recall = float(np.mean([len(set(g) & set(e)) / k for g, e in zip(got, exact)]))
        t0 = time.perf_counter()
        enroll_embeddings(tmp, "new_generator", extra, [rng.bytes(16).hex() for _ in range(150)], ["bench"] * 150, "bench", "bench")
        enroll_s = time.perf_counter() - t0
    return {
        "support": support, "queries": queries, "k": k, "uniform": uniform,
        f"recall_at_{k}": round(recall, 4), "query_ips": round(queries / query_s, 1),
        "build_s": round(build_s, 1), "enroll_150_s": round(enroll_s, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--support", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=11)
    ap.add_argument("--uniform", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = run(args.support, args.queries, args.k, uniform=args.uniform)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
