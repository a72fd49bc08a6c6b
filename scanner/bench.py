"""`imgscan bench`: throughput of each stage and of a real scan, measured in one run.

decode_ips      read + hash + decode + resize (the threaded front of the scan pipeline, no model; includes
                starting the isolated decoder process, as a scan does)
embed_ips       the embedder alone on ready uint8 tensors, same batch size
query_ips       HNSW k-NN search + verdict, over a support index of `support` synthetic vectors
end_to_end_ips  a real scan (walk -> Parquet) of the same images, through run_scan
peak_rss_mb     peak resident memory of this process

Images are generated (smooth random fields with noise, saved as JPEG q95 at the model's input size) unless a
directory is given. Figures depend on the machine and its load: record the command and machine with them.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

BENCH_KEYS = ("decode_ips", "embed_ips", "query_ips", "end_to_end_ips", "peak_rss_mb")


def make_jpegs(directory: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """Photo-like test images: a low-frequency colour field plus sensor-like noise."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.int16)
        arr = np.clip(field + rng.integers(-20, 21, field.shape), 0, 255).astype(np.uint8)
        path = directory / f"bench_{i:06d}.jpg"
        Image.fromarray(arr).save(path, "JPEG", quality=95)
        paths.append(path)
    return paths


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def run_bench(embedder, images_dir: Path | None = None, n_images: int = 256, batch_size: int = 32,
              support: int = 2000, k: int = 11, repeats: int = 3) -> dict[str, float]:
    from indexes import SupportIndex, enroll_embeddings
    from scanner.pipeline import ScanOptions, _Stages, make_decoder, run_scan
    from scanner.progress import ScanProgress
    from scanner.verdict import decide

    import torch

    with tempfile.TemporaryDirectory(prefix="imgscan-bench-") as tmp:
        tmp = Path(tmp)
        root = images_dir or tmp / "images"
        if images_dir is None:
            make_jpegs(root, n_images, embedder.size)
        roots = [os.fsencode(root)]

        # decode: the scan's own front stages (walk, readers, DALI/Pillow decode), no model
        opts = ScanOptions(roots=roots, out=tmp / "unused", batch_size=batch_size)
        empty = np.zeros(0, dtype=np.uint64)
        decoder = make_decoder(embedder.view_spec, batch_size, embedder.device)
        stages = _Stages(opts, empty, empty, decoder)
        start = time.perf_counter()
        stages.start()
        decoded_n, sample = 0, None
        for reads, decoded in stages.batches():
            decoded_n += len(reads)
            if sample is None and sum(e is None for e in decoded.errors) == batch_size:
                sample = decoded  # a full batch of files (with --views, more rows than files)
        stages.shutdown()
        decode_ips = decoded_n / (time.perf_counter() - start)
        if sample is None:
            raise ValueError(f"bench needs at least {batch_size} decodable images")

        # embed: the model alone on a ready batch
        embedder.embed_batch(sample)  # warm-up (TorchScript profiling runs, allocator)
        start = time.perf_counter()
        for _ in range(repeats):
            embedder.embed_batch(sample)
        if embedder.device == "cuda":
            torch.cuda.synchronize()
        embed_ips = repeats * batch_size / (time.perf_counter() - start)  # files per second, views included

        # query: a support index of synthetic unit vectors over 16 classes, searched with real embeddings
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(support, embedder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        labels = np.array(["real"] + [f"gen_{i:02d}" for i in range(15)])[rng.integers(0, 16, support)]
        index_dir = tmp / "index"
        for lab in np.unique(labels):
            sel = np.flatnonzero(labels == lab)
            enroll_embeddings(index_dir, str(lab), vectors[sel], [f"{i:032x}" for i in sel], ["bench"] * len(sel),
                              embedder.model_id, embedder.card.weights_sha256)
        index = SupportIndex.open(index_dir)
        queries = np.repeat(embedder.embed_batch(sample), max(1, 2048 // batch_size), axis=0)
        start = time.perf_counter()
        found = index.search(queries, k)
        decide(found.labels, found.sims).labels(index.threshold)
        query_ips = len(queries) / (time.perf_counter() - start)

        # end to end: a real scan, Parquet and all
        out = tmp / "verdicts.parquet"
        scan_opts = ScanOptions(roots=roots, out=out, k=k, batch_size=batch_size)
        with ScanProgress("bench scan", force_plain=True, log_every_s=1e9) as progress:
            start = time.perf_counter()
            summary = run_scan(scan_opts, embedder, index, progress, {"bench": True}, {})
            end_to_end_ips = summary.rows / (time.perf_counter() - start)

    return {
        "decode_ips": round(decode_ips, 1),
        "embed_ips": round(embed_ips, 1),
        "query_ips": round(query_ips, 1),
        "end_to_end_ips": round(end_to_end_ips, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }
