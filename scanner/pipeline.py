"""The scan flow, one way through small stages, overlapped by threads joined with bounded queues:

    walk (1 thread) -> read + hash (N threads) -> batch + decode (1 thread) -> embed -> search -> verdict
    -> journal (main thread) -> Parquet (at the end)

Bounded queues keep memory flat however large the crawl; DALI, torch and hnswlib release the GIL, so decoding
the next batch overlaps embedding this one. A per-file failure becomes a row with `error`; anything else (a
bug, a full disk) stops the run with the journal intact, ready to resume.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from scanner.decode import DEFAULT_MAX_PIXELS, DecodedBatch, ImageDecoder, ViewSpec
from scanner.decode_isolated import DEFAULT_TIMEOUT_S, IsolatedImageDecoder
from scanner.embed import Embedder
from scanner.errors import UsageError
from scanner.read import DEFAULT_MAX_BYTES, ReadResult, read_file
from scanner.schema import VERDICT_SCHEMA, display_path
from scanner.verdict import decide
from scanner.walk import walk_files
from scanner.writer import ScanJournal, path_key

_END = object()


@dataclass
class ScanOptions:
    roots: list[bytes]
    out: Path
    k: int = 11
    batch_size: int = 64
    skip_known: list[Path] = field(default_factory=list)
    all_files: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    readers: int = 4
    queue_batches: int = 4  # bounded prefetch, in batches, between stages
    isolate_decode: bool = True
    decode_timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass
class ScanSummary:
    out: Path
    rows: int = 0
    scanned_this_run: int = 0
    resumed_rows: int = 0
    skipped_known: int = 0
    labels: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0


def scan_fingerprint(roots: list[bytes], model_id: str, k: int, all_files: bool, skip_known: list[Path],
                     views: int = 1) -> dict:
    """What makes two scans the same scan: an unfinished output is only resumed by a run with this unchanged."""
    return {
        "roots": [os.fsdecode(os.path.abspath(r)) for r in roots], "model": model_id, "k": k,
        "all_files": all_files, "skip_known": sorted(str(p) for p in skip_known), "views": views,
    }


def scan_metadata(card, support, k: int, precision: str | None, runtime: str, view_spec: ViewSpec) -> dict[str, str]:
    """The `imgscan` key-value metadata of a verdict file: model card, index, threshold, k, the embedder's
    runtime and precision, and how images became model input (resize rule, views)."""
    from scanner import __version__

    return {"imgscan": json.dumps({
        "version": __version__, "model": card.model_id, "model_card": json.loads(card.to_json()),
        "index": support.name, "index_counts": support.manifest.counts,
        "open_set_threshold": support.threshold, "k": k, "precision": precision, "runtime": runtime,
        "resize": view_spec.resize, "views": view_spec.views,
    })}


def load_known_shas(files: list[Path]) -> np.ndarray:
    """Sorted uint64 prefixes of the `sha` column of earlier verdict files (64 bits is plenty to skip by)."""
    import pyarrow.parquet as pq

    parts = []
    for f in files:
        try:
            col = pq.read_table(f, columns=["sha"]).column("sha")
        except (OSError, pa.ArrowException, KeyError) as exc:
            raise UsageError(f"--skip-known {f}: not a readable verdict file ({str(exc).splitlines()[0]})") from None
        shas = [s for s in col.to_pylist() if s]
        parts.append(np.array([int(s[:16], 16) for s in shas], dtype=np.uint64))
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)


def _contains(sorted_keys: np.ndarray, key: int) -> bool:
    if sorted_keys.size == 0:
        return False
    i = np.searchsorted(sorted_keys, np.uint64(key))
    return bool(i < sorted_keys.size and sorted_keys[i] == key)


class _Stages:
    """Runs the threaded front of the pipeline (walk, read, decode) and hands decoded batches to the caller."""

    def __init__(self, opts: ScanOptions, done: np.ndarray, known: np.ndarray, decoder: ImageDecoder):
        self.opts, self.done, self.known, self.decoder = opts, done, known, decoder
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self.paths_q: queue.Queue = queue.Queue(maxsize=opts.batch_size * opts.queue_batches)
        self.read_q: queue.Queue = queue.Queue(maxsize=opts.batch_size * opts.queue_batches)
        self.decoded_q: queue.Queue = queue.Queue(maxsize=opts.queue_batches)
        self.skipped_known = 0
        self.threads: list[threading.Thread] = []

    def _put(self, q: queue.Queue, item) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _guard(self, fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # surfaced by the main thread; never swallowed
                self.failure = self.failure or exc
                self.stop.set()
        return run

    def start(self) -> None:
        specs = [("imgscan-walk", self._walk)] + [(f"imgscan-read-{i}", self._read) for i in range(self.opts.readers)]
        specs.append(("imgscan-decode", self._decode))
        for name, fn in specs:
            t = threading.Thread(target=self._guard(fn), name=name, daemon=True)
            t.start()
            self.threads.append(t)

    def _walk(self) -> None:
        try:
            for raw in walk_files(self.opts.roots, self.opts.all_files):
                if _contains(self.done, path_key(raw)):
                    continue  # finished by an earlier, interrupted run of the same scan
                if not self._put(self.paths_q, raw):
                    return
        finally:
            for _ in range(self.opts.readers):
                self._put(self.paths_q, _END)

    def _read(self) -> None:
        try:
            while not self.stop.is_set():
                raw = self.paths_q.get()
                if raw is _END:
                    return
                if not self._put(self.read_q, read_file(raw, self.opts.max_bytes)):
                    return
        finally:
            self._put(self.read_q, _END)

    def _decode(self) -> None:
        readers_left = self.opts.readers
        batch: list[ReadResult] = []
        while readers_left and not self.stop.is_set():
            item = self.read_q.get()
            if item is _END:
                readers_left -= 1
            elif item.sha is not None and _contains(self.known, int(item.sha[:16], 16)):
                self.skipped_known += 1
            else:
                batch.append(item)
            if len(batch) >= self.opts.batch_size or (batch and not readers_left):
                decoded = self.decoder.decode([r.data for r in batch])
                for r in batch:
                    r.data = None  # the bytes are no longer needed: keep memory flat
                if not self._put(self.decoded_q, (batch, decoded)):
                    return
                batch = []
        self._put(self.decoded_q, _END)

    def batches(self):
        while True:
            try:
                item = self.decoded_q.get(timeout=0.2)
            except queue.Empty:
                if self.failure is not None:
                    raise self.failure
                continue
            if item is _END:
                if self.failure is not None:
                    raise self.failure
                return
            yield item

    def shutdown(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)
        close = getattr(self.decoder, "close", None)
        if close is not None:
            close()


def _record_batch(reads: list[ReadResult], decoded: DecodedBatch, embeddings: np.ndarray, index, k: int,
                  model_id: str) -> pa.RecordBatch:
    ok_rows = [i for i, r in enumerate(reads) if r.error is None and decoded.errors[i] is None]
    neighbors = index.search(embeddings, k)
    verdicts = decide(neighbors.labels, neighbors.sims)
    labels = verdicts.labels(index.threshold)
    n = len(reads)
    col = {name: [None] * n for name in VERDICT_SCHEMA.names}
    now = datetime.now(timezone.utc)
    for i, r in enumerate(reads):
        col["path"][i], col["path_bytes"][i] = display_path(r.path)
        col["sha"][i], col["bytes"][i] = r.sha, r.nbytes
        col["error"][i] = r.error or decoded.errors[i]
        col["model"][i], col["index"][i], col["scanned_at"][i] = model_id, index.name, now
        if decoded.sizes[i] is not None:
            col["width"][i], col["height"][i] = decoded.sizes[i]
    for row, i in enumerate(ok_rows):
        col["label"][i] = labels[row]
        col["closed_set_label"][i] = verdicts.closed_set_label[row]
        col["is_ai"][i] = bool(verdicts.is_ai[row])
        col["ai_score"][i] = float(verdicts.ai_score[row])
        col["open_set_score"][i] = float(verdicts.open_set_score[row])
        col["open_set_threshold"][i] = float(index.threshold)
        col["neighbors"][i] = [
            {"label": lab, "support_id": sid, "similarity": float(s)}
            for lab, sid, s in zip(neighbors.labels[row], neighbors.support_ids[row], neighbors.sims[row])
        ]
    arrays = [pa.array(col[f.name], type=f.type) for f in VERDICT_SCHEMA]
    return pa.RecordBatch.from_arrays(arrays, schema=VERDICT_SCHEMA)


def make_decoder(spec: ViewSpec, batch_size: int, device: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                 isolate: bool = True, timeout_s: float = DEFAULT_TIMEOUT_S):
    """The decode stage: in a child process on CPU (a crashing or hanging decoder costs one row), in-process
    on CUDA (nvJPEG needs this process's CUDA context) or when isolation is turned off."""
    if isolate and device != "cuda":
        return IsolatedImageDecoder(spec, batch_size, max_pixels=max_pixels, timeout_s=timeout_s)
    return ImageDecoder(spec, batch_size, device=device, max_pixels=max_pixels)


def embedded_batches(roots: list[bytes], embedder: Embedder, *, all_files: bool = False, batch_size: int = 64,
                     readers: int = 4, queue_batches: int = 4, max_bytes: int = DEFAULT_MAX_BYTES,
                     max_pixels: int = DEFAULT_MAX_PIXELS, isolate_decode: bool = True,
                     decode_timeout_s: float = DEFAULT_TIMEOUT_S, done_paths: np.ndarray | None = None,
                     known_shas: np.ndarray | None = None, stats: dict | None = None):
    """Walk, read, decode and embed: yield (reads, decoded, embeddings) per batch. Shared by scan, enroll and
    eval so they all see images through the same stages. Rows of `embeddings` follow the items of `reads`
    whose read and decode succeeded. `stats["skipped_known"]` counts files skipped by `known_shas`."""
    opts = ScanOptions(roots=roots, out=Path(), batch_size=batch_size,
                       all_files=all_files, max_pixels=max_pixels, max_bytes=max_bytes, readers=readers,
                       queue_batches=queue_batches)
    empty = np.zeros(0, dtype=np.uint64)
    decoder = make_decoder(embedder.view_spec, batch_size, embedder.device, max_pixels, isolate_decode,
                           decode_timeout_s)
    stages = _Stages(opts, empty if done_paths is None else done_paths, empty if known_shas is None else known_shas, decoder)
    stages.start()
    try:
        for reads, decoded in stages.batches():
            yield reads, decoded, embedder.embed_batch(decoded)
    finally:
        stages.shutdown()
        if stats is not None:
            stats["skipped_known"] = stages.skipped_known


def run_scan(opts: ScanOptions, embedder: Embedder, index, progress, fingerprint: dict, metadata: dict[str, str]) -> ScanSummary:
    """Scan into the journal, then merge it into opts.out. Raises KeyboardInterrupt (journal kept) when stopped."""
    started = time.monotonic()
    summary = ScanSummary(out=opts.out)
    journal = ScanJournal(opts.out, fingerprint, metadata)
    done = journal.open()
    summary.resumed_rows = int(done.size)
    progress.set_already_done(summary.resumed_rows)
    stats: dict = {}
    try:
        for reads, decoded, embeddings in embedded_batches(
            opts.roots, embedder, all_files=opts.all_files, batch_size=opts.batch_size, readers=opts.readers,
            queue_batches=opts.queue_batches, max_bytes=opts.max_bytes, max_pixels=opts.max_pixels,
            isolate_decode=opts.isolate_decode, decode_timeout_s=opts.decode_timeout_s, done_paths=done, known_shas=load_known_shas(opts.skip_known), stats=stats,
        ):
            batch = _record_batch(reads, decoded, embeddings, index, opts.k, embedder.model_id)
            journal.append(batch)
            summary.scanned_this_run += batch.num_rows
            progress.advance(batch.num_rows, batch.num_rows - batch.column("error").null_count)
    finally:
        journal.close()
    summary.skipped_known = stats.get("skipped_known", 0)
    summary.rows = journal.finish()
    summary.labels, summary.errors = summarize(opts.out)
    summary.elapsed_s = time.monotonic() - started
    return summary


def summarize(*files: Path) -> tuple[Counter, Counter]:
    """Counts per label, and per kind of error (the message up to its details in parentheses), over verdict
    files (one file, or an engine's parts)."""
    import pyarrow.parquet as pq

    labels, errors = Counter(), Counter()
    for f in files:
        table = pq.read_table(f, columns=["label", "error"])
        for lab, err in zip(table.column("label").to_pylist(), table.column("error").to_pylist()):
            if err is None:
                labels[lab] += 1
            else:
                errors[err.split(" (")[0]] += 1
    return labels, errors


def count_files(roots: list[bytes], all_files: bool, stop: threading.Event, on_total) -> None:
    """Background count for the progress bar's total and ETA (a stat-only walk, much cheaper than a scan)."""
    n = 0
    for _ in walk_files(roots, all_files):
        if stop.is_set():
            return
        n += 1
    on_total(n)
