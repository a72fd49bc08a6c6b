"""`imgscan bench`: throughput of each stage and of a real scan, measured in one run.

decode_ips      read + hash + decode + resize (the threaded front of the scan pipeline, no model; includes
                starting the isolated decoder process, as a scan does)
provenance_ips  reading provenance (C2PA sniff, XMP, PNG text, EXIF) from the files' bytes, one thread; part of
                decode_ips and end_to_end_ips, which run with provenance on as a scan does by default
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

from scanner.threads import usable_cpus

BENCH_KEYS = ("decode_ips", "provenance_ips", "embed_ips", "query_ips", "end_to_end_ips", "peak_rss_mb")
# What was measured, next to the figures: the embedder's runtime and precision (as `auto` resolved them here),
# device, views, batch size, and the CPU threads each stage was given.
SETTING_KEYS = ("runtime", "precision", "device", "views", "batch_size", "cpus", "threads")


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
    with tempfile.TemporaryDirectory(prefix="imgscan-bench-") as tmp:
        tmp = Path(tmp)
        root = images_dir or tmp / "images"
        if images_dir is None:
            make_jpegs(root, n_images, embedder.size)
        roots = [os.fsencode(root)]
        decode_ips, sample = _bench_decode(embedder, roots, batch_size)
        provenance_ips = _bench_provenance(root)
        embed_ips = _bench_embed(embedder, sample, batch_size, repeats)
        detail_ips = _bench_detail(sample, batch_size, repeats)
        index = _synthetic_index(tmp / "index", embedder, support)
        query_ips = _bench_query(embedder, index, sample, batch_size, k)
        end_to_end_ips = _bench_scan(embedder, index, roots, tmp / "verdicts.parquet", batch_size, k)
    return {
        "runtime": embedder.runtime, "precision": embedder.precision, "device": embedder.device,
        "views": embedder.view_spec.views, "mirror": embedder.view_spec.mirror, "batch_size": batch_size,
        "cpus": usable_cpus(),
        "threads": embedder.threads,
        "decode_ips": round(decode_ips, 1),
        "provenance_ips": round(provenance_ips, 1),
        "embed_ips": round(embed_ips, 1),
        "detail_ips": round(detail_ips, 1),
        "query_ips": round(query_ips, 1),
        "end_to_end_ips": round(end_to_end_ips, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def _bench_decode(embedder, roots: list[bytes], batch_size: int):
    """The scan's own front stages (walk, readers, DALI/Pillow decode), no model."""
    from scanner.config import DecodeConfig, ReadConfig
    from scanner.feed import LocalFeeder
    from scanner.judge import BatchEmbedder

    decoded_n, sample = 0, None
    start = time.perf_counter()
    with BatchEmbedder(embedder, DecodeConfig(), batch_size) as stages:
        for batch in LocalFeeder(roots, ReadConfig(), batch_size, stages.decode):
            decoded_n += len(batch.reads)
            if sample is None and len(batch.ok_rows()) == batch_size:
                sample = batch.decoded  # a full batch of files (with --views, more rows than files)
    decode_ips = decoded_n / (time.perf_counter() - start)
    if sample is None:
        raise ValueError(f"bench needs at least {batch_size} decodable images")
    return decode_ips, sample


def _bench_provenance(root: Path, limit: int = 512) -> float:
    """scanner.provenance on bytes already in memory (as the scan calls it), files per second."""
    from scanner.provenance import read_provenance

    datas = [p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()][:limit]
    if not datas:
        return float("nan")
    start = time.perf_counter()
    for data in datas:
        read_provenance(data)
    return len(datas) / (time.perf_counter() - start)


def _bench_embed(embedder, sample, batch_size: int, repeats: int) -> float:
    """The model alone on a ready batch; files per second, views included."""
    import torch

    embedder.embed_batch(sample)  # warm-up (TorchScript profiling runs, allocator)
    start = time.perf_counter()
    for _ in range(repeats):
        embedder.embed_batch(sample)
    if embedder.device == "cuda":
        torch.cuda.synchronize()
    return repeats * batch_size / (time.perf_counter() - start)


def _bench_detail(sample, batch_size: int, repeats: int) -> float:
    """Pixel detail (scanner/detail.py) of a decoded batch, as the verdict stage measures it; files per second."""
    from scanner.detail import item_detail

    start = time.perf_counter()
    for _ in range(repeats):
        item_detail(sample)
    return repeats * batch_size / (time.perf_counter() - start)


def _synthetic_index(index_dir: Path, embedder, support: int):
    """A support index of synthetic unit vectors over 16 classes."""
    from indexes import SupportIndex
    from scanner.enroll import enroll_embeddings

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(support, embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.array(["real"] + [f"gen_{i:02d}" for i in range(15)])[rng.integers(0, 16, support)]
    for lab in np.unique(labels):
        sel = np.flatnonzero(labels == lab)
        enroll_embeddings(index_dir, str(lab), vectors[sel], [f"{i:032x}" for i in sel], ["bench"] * len(sel),
                          embedder.model_id, embedder.card.weights_sha256)
    return SupportIndex.open(index_dir)


def _bench_query(embedder, index, sample, batch_size: int, k: int) -> float:
    """HNSW search + verdict with real embeddings as queries."""
    from scanner.verdict import VerdictRule, decide

    queries = np.repeat(embedder.embed_batch(sample), max(1, 2048 // batch_size), axis=0)
    start = time.perf_counter()
    found = index.search(queries, k)
    decide(found.labels, found.sims, VerdictRule.of(index))
    return len(queries) / (time.perf_counter() - start)


def _bench_scan(embedder, index, roots: list[bytes], out: Path, batch_size: int, k: int) -> float:
    """A real scan with the local engine, Parquet and all (the model already loaded)."""
    from scanner.config import EmbedConfig, ScanConfig
    from scanner.engines import ScanJob
    from scanner.engines.local import LocalEngine
    from scanner.keys import KeySet
    from scanner.progress import ScanProgress
    from scanner.writer import JournalOutput

    config = ScanConfig(roots=roots, out=out, k=k, embed=EmbedConfig(batch_size=batch_size))
    output = JournalOutput(out)
    with ScanProgress("bench scan", force_plain=True, log_every_s=1e9) as progress:
        start = time.perf_counter()
        job = ScanJob(config, None, index.directory, embedder.card, index, embedder.view_spec,
                      output.open({"bench": True}), KeySet())
        LocalEngine(config, embedder=embedder).run(job, output, progress)
        rows = output.finish()
        return rows / (time.perf_counter() - start)
