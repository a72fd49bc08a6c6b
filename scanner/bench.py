"""`imgscan bench`: each stage of a scan measured in steady state, and a real scan, in one run.

Every rate is a steady state: a stage first runs once untimed (a decoder child starting, a runtime compiling, the
page cache filling), then is timed over whole passes of the images for at least MIN_STEADY_S. Start-up is
reported apart (`decoder_startup_s`, `scan_startup_s`). Next to each rate, the CPU time the stage spends per image
(`*_cpu_ms`, every thread of the process and of the decoder's child process): on a machine of N cores a scan
cannot go faster than N / (sum of its stages' CPU per image), and the stage with the largest share is the one that
bounds it (`cpu_bound_ips`).

pillow_ips        baseline: Pillow, one thread, each image's bytes to an RGB array (no views, no isolation)
read_ips          read + hash (scanner.read) of the files, page cache warm
decode_ips        the scan's decode stage on bytes in memory: header sniff, DALI/Pillow decode, views, and on the
                  CPU the isolated child process and its shared memory (provenance apart, below)
provenance_ips    reading provenance (C2PA sniff, XMP, PNG text, EXIF) from the bytes, one thread
embed_ips         the embedder alone on ready uint8 views, same batch size
detail_ips        pixel detail (scanner/detail.py) of decoded views
query_ips         HNSW k-NN search + verdict over a support index of `support` synthetic vectors
end_to_end_ips    a real scan (walk -> Parquet) of the same files, rows after its first batch over the time they took
dataloader_ips    baseline: the pipeline a user would write, Pillow decoding the same views in a
                  torch.utils.data.DataLoader worker (as many as the scan's decoder threads) feeding the same embedder
decode_per_core_vs_pillow  pillow_cpu_ms / decode_cpu_ms: the decode stage's rate per core against Pillow's
end_to_end_vs_embed        end_to_end_ips / embed_ips: how close a scan comes to its embedder's speed

Images are generated (smooth random fields with sensor-like noise; JPEG q95 or PNG, `size` px square, the model's
input size by default) unless a directory is given; a directory of shards (scanner.shards) is measured on their
members, read from the shards, and the scan is given the shards. Figures depend on the machine and its load: record the
command, `lscpu` flags and date with them (docs/benchmarks.md).
"""

from __future__ import annotations

import io
import os
import resource
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from scanner.read import DEFAULT_MAX_BYTES
from scanner.shards import is_shard, read_shard
from scanner.threads import thread_budget, usable_cpus

MIN_STEADY_S = 2.0  # each stage is timed over whole passes of the images for at least this long
SETTING_KEYS = ("runtime", "precision", "device", "views", "mirror", "batch_size", "cpus", "threads", "images",
                "megapixels")
STARTUP_KEYS = ("decoder_startup_s", "scan_startup_s")
RATE_KEYS = ("pillow_ips", "read_ips", "decode_ips", "provenance_ips", "embed_ips", "detail_ips", "query_ips",
             "end_to_end_ips", "dataloader_ips")
CPU_KEYS = ("pillow_cpu_ms", "read_cpu_ms", "decode_cpu_ms", "provenance_cpu_ms", "embed_cpu_ms", "detail_cpu_ms",
            "query_cpu_ms")
DERIVED_KEYS = ("cpu_bound_ips", "decode_per_core_vs_pillow", "end_to_end_vs_embed", "peak_rss_mb")
BENCH_KEYS = SETTING_KEYS + STARTUP_KEYS + RATE_KEYS + CPU_KEYS + DERIVED_KEYS
IMAGE_FORMATS = ("jpeg", "png")


def make_images(directory: Path, n: int, size: int, fmt: str = "jpeg", seed: int = 0) -> list[Path]:
    """Photo-like test images: a low-frequency colour field plus sensor-like noise, JPEG q95 or PNG."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(IMAGE_FORMATS)}")
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.int16)
        arr = np.clip(field + rng.integers(-20, 21, field.shape), 0, 255).astype(np.uint8)
        path = directory / f"bench_{i:06d}.{'jpg' if fmt == 'jpeg' else 'png'}"
        if fmt == "jpeg":
            Image.fromarray(arr).save(path, "JPEG", quality=95)
        else:
            Image.fromarray(arr).save(path, "PNG", compress_level=6)
        paths.append(path)
    return paths


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process so far (Linux /proc); NaN where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


class _Clock:
    """Wall and CPU time of a steady-state measurement: this process, plus a child process when given one."""

    def __init__(self, child_pid=None):
        self.child_pid = child_pid

    def now(self) -> tuple[float, float]:
        cpu = time.process_time()
        pid = self.child_pid() if self.child_pid else None
        if pid is not None:
            cpu += _process_cpu_s(pid)
        return time.perf_counter(), cpu


def _steady(one_pass, per_pass: int, clock: _Clock | None = None) -> tuple[float, float]:
    """(items per second, CPU ms per item) of `one_pass` (which handles `per_pass` items) after one untimed pass,
    over whole passes lasting at least MIN_STEADY_S."""
    clock = clock or _Clock()
    one_pass()
    passes = 0
    (wall0, cpu0) = clock.now()
    while True:
        one_pass()
        passes += 1
        wall, cpu = clock.now()
        if wall - wall0 >= MIN_STEADY_S:
            break
    n = passes * per_pass
    return n / (wall - wall0), 1000.0 * (cpu - cpu0) / n


def run_bench(embedder, images_dir: Path | None = None, n_images: int = 512, batch_size: int = 32,
              support: int = 2000, k: int = 11, size: int | None = None, fmt: str = "jpeg") -> dict:
    with tempfile.TemporaryDirectory(prefix="imgscan-bench-") as tmp:
        tmp = Path(tmp)
        root = images_dir or tmp / "images"
        if images_dir is None:
            make_images(root, n_images, size or embedder.size, fmt)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        shards = [os.fsencode(p) for p in files if is_shard(p.name)]
        if shards:  # a folder of shards: their members are the images, the shards the scan's roots
            datas = [r.data for shard in shards for r in read_shard(shard, DEFAULT_MAX_BYTES) if r.data is not None]
            read = _steady(lambda: [None for shard in shards for _ in read_shard(shard, DEFAULT_MAX_BYTES)], len(datas))
            scan_roots, items = shards, datas
        else:
            datas = [p.read_bytes() for p in files]
            read = _bench_read(files)
            scan_roots, items = [os.fsencode(root)], files
        out: dict = {}
        pillow = _bench_pillow(datas)
        decode, sample, startup, megapixels = _bench_decode(embedder, datas, batch_size)
        provenance = _bench_provenance(datas)
        embed = _bench_embed(embedder, sample, batch_size)
        detail = _steady(lambda: _detail(sample), batch_size)
        index = _synthetic_index(tmp / "index", embedder, support)
        query = _bench_query(embedder, index, sample, batch_size, k)
        end_to_end, scan_startup = _bench_scan(embedder, index, scan_roots, tmp / "verdicts.parquet", batch_size, k)
        dataloader = _bench_dataloader(embedder, items, batch_size)
    out.update({
        "runtime": embedder.runtime, "precision": embedder.precision, "device": embedder.device,
        "views": embedder.view_spec.views, "mirror": embedder.view_spec.mirror, "batch_size": batch_size,
        "cpus": usable_cpus(), "threads": embedder.threads, "images": len(datas),
        "megapixels": round(megapixels, 3),
        "decoder_startup_s": round(startup, 2), "scan_startup_s": round(scan_startup, 2),
    })
    stages = {"pillow": pillow, "read": read, "decode": decode, "provenance": provenance, "embed": embed,
              "detail": detail, "query": query}
    for name, (ips, cpu_ms) in stages.items():
        out[f"{name}_ips"] = round(ips, 1)
    out["end_to_end_ips"] = round(end_to_end, 1)
    out["dataloader_ips"] = round(dataloader, 1)
    for name, (_, cpu_ms) in stages.items():
        out[f"{name}_cpu_ms"] = round(cpu_ms, 3)
    scan_cpu_ms = sum(stages[s][1] for s in ("read", "decode", "provenance", "embed", "detail", "query"))
    out["cpu_bound_ips"] = round(1000.0 * usable_cpus() / scan_cpu_ms, 1)
    out["decode_per_core_vs_pillow"] = round(pillow[1] / decode[1], 3)
    out["end_to_end_vs_embed"] = round(end_to_end / embed[0], 3)
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return {key: out[key] for key in BENCH_KEYS}


def _bench_pillow(datas: list[bytes]) -> tuple[float, float]:
    def one_pass():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning on large photos
            for data in datas:
                with Image.open(io.BytesIO(data)) as im:
                    np.asarray(im.convert("RGB"))

    return _steady(one_pass, len(datas))


def _bench_read(files: list[Path]) -> tuple[float, float]:
    from scanner.read import read_file

    paths = [os.fsencode(p) for p in files]
    return _steady(lambda: [read_file(p) for p in paths], len(paths))


def _bench_decode(embedder, datas: list[bytes], batch_size: int):
    """The scan's decode stage (scanner.judge.make_decoder: the isolated child on CPU) on bytes in memory.
    Returns ((ips, cpu ms), a full decoded batch for the later stages, the decoder's start-up s, mean megapixels)."""
    from scanner.config import DecodeConfig
    from scanner.judge import make_decoder

    decoder = make_decoder(embedder.view_spec, batch_size, embedder.device, DecodeConfig())
    try:
        start = time.perf_counter()
        first = decoder.decode(datas[:1])  # starts the child (or builds the in-process pipeline)
        startup = time.perf_counter() - start
        batches = [datas[i:i + batch_size] for i in range(0, len(datas), batch_size)]
        sample = None
        for batch in batches:
            decoded = decoder.decode(batch)
            if len(batch) == batch_size and all(e is None for e in decoded.errors):
                sample = decoded
                break
        if sample is None:
            raise ValueError(f"bench needs at least {batch_size} decodable images")
        megapixels = float(np.mean([w * h for w, h in sample.sizes])) / 1e6
        del first
        clock = _Clock(getattr(decoder, "child_pid", None))
        rate = _steady(lambda: [decoder.decode(b) for b in batches], len(datas), clock)
    finally:
        close = getattr(decoder, "close", None)
        if close is not None:
            close()
    return rate, sample, startup, megapixels


def _bench_provenance(datas: list[bytes]) -> tuple[float, float]:
    """scanner.provenance on bytes already in memory (as the decoder child calls it), one thread."""
    from scanner.provenance import read_provenance

    return _steady(lambda: [read_provenance(d) for d in datas], len(datas))


def _bench_embed(embedder, sample, batch_size: int) -> tuple[float, float]:
    """The model alone on a ready batch; files per second, views included."""
    import torch

    def one_pass():
        embedder.embed_batch(sample)
        if embedder.device == "cuda":
            torch.cuda.synchronize()

    return _steady(one_pass, batch_size)


def _detail(sample) -> None:
    from scanner.detail import item_detail

    item_detail(sample)


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


def _bench_query(embedder, index, sample, batch_size: int, k: int) -> tuple[float, float]:
    """HNSW search + verdict with real embeddings as queries, a scan's batch at a time."""
    from scanner.verdict import VerdictRule, decide

    queries = embedder.embed_batch(sample)
    rule = VerdictRule.of(index)

    def one_pass():
        found = index.search(queries, k)
        decide(found.labels, found.sims, rule)

    return _steady(one_pass, len(queries))


class _RowTimes:
    """Stands in for the progress display: the time each batch of rows was written."""

    def __init__(self):
        self.marks: list[tuple[float, int]] = []

    def advance(self, rows: int, ok: int | None = None) -> None:
        self.marks.append((time.perf_counter(), rows))


def _bench_scan(embedder, index, roots: list[bytes], out: Path, batch_size: int, k: int) -> tuple[float, float]:
    """A real scan with the local engine, Parquet and all (the model already loaded). Returns (rows per second
    after the first batch, seconds until the first batch was written)."""
    from scanner.config import EmbedConfig, ScanConfig
    from scanner.engines import ScanJob
    from scanner.engines.local import LocalEngine
    from scanner.keys import KeySet
    from scanner.writer import JournalOutput

    config = ScanConfig(roots=roots, out=out, k=k, embed=EmbedConfig(batch_size=batch_size))
    output = JournalOutput(out)
    rows = _RowTimes()
    start = time.perf_counter()
    job = ScanJob(config, None, index.directory, embedder.card, index, embedder.view_spec,
                  output.open({"bench": True}), KeySet())
    LocalEngine(config, embedder=embedder).run(job, output, rows)
    output.finish()
    if len(rows.marks) < 2:
        raise ValueError(f"bench needs at least {2 * batch_size} images for a scan's steady state")
    (first_t, _), (last_t, _) = rows.marks[0], rows.marks[-1]
    return sum(n for _, n in rows.marks[1:]) / (last_t - first_t), first_t - start


class _PillowViews:
    """The baseline's dataset: a file's (or a shard member's bytes') views by the same rule
    (scanner.decode.pillow_decode), decoded by Pillow."""

    def __init__(self, items: list, spec):
        self.items, self.spec = items, spec

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from scanner.decode import pillow_decode

        item = self.items[i]
        return pillow_decode(item if isinstance(item, bytes) else item.read_bytes(), self.spec)[0]


def _collate_views(items):
    return np.concatenate(items), [len(v) for v in items]


def _bench_dataloader(embedder, items: list, batch_size: int) -> float:
    """Files per second of Pillow in DataLoader workers feeding the same embedder, after the first batch."""
    import torch.utils.data

    from scanner.decode import DecodedBatch

    loader = torch.utils.data.DataLoader(_PillowViews(items, embedder.view_spec), batch_size=batch_size,
                                         num_workers=thread_budget().decode, collate_fn=_collate_views)
    first_t, after_first = None, 0
    for pixels, counts in loader:
        embedder.embed_batch(DecodedBatch(pixels, [None] * len(counts), [None] * len(counts), counts))
        if first_t is None:
            first_t = time.perf_counter()
        else:
            after_first += len(counts)
    return after_first / (time.perf_counter() - first_t) if after_first else float("nan")
