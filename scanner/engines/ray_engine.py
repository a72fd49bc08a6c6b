"""`imgscan scan --engine ray`: the same scan on a Ray cluster, for crawls that need many GPUs and nodes.

One Ray Data pipeline, streamed (no stage ever holds the crawl):

    roots --list (one task per root: scanner.walk.walk_files, resumed paths skipped)
          --read (tasks: scanner.read.read_file, bytes + xxh3-128, --skip-known)
          --verdict (a pool of stateful actors, one per worker: model + support index loaded once, on the GPU
                     when the worker has one; scanner.decode + scanner.embed + scanner.pipeline._record_batch)
          --> OUT/part-<16 hex>.parquet, written atomically by the actor that made it

so rows, errors and verdicts come from the very code the local engine runs. Each actor call turns one bundle of
`part_rows` files into one part; the driver only receives a one-row summary per part.

Output layout (docs/ray.md): `--out DIR` is a directory of parts; `--out FILE.parquet` stages the parts in
`FILE.parquet.parts/` and assembles them into one file at the end, as the local engine does. Parts are
VERDICT_SCHEMA with the same `imgscan` key-value metadata; `_run.json` holds the scan's settings and
`_manifest.json`, written last, lists the parts and marks the scan complete. Resume is by parts: a re-run reads
the paths of the finished parts and lists everything else again; a part being written when the run died was
never renamed into place and is simply redone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from scanner.decode import DEFAULT_MAX_PIXELS
from scanner.decode_isolated import DEFAULT_TIMEOUT_S
from scanner.errors import UsageError
from scanner.read import DEFAULT_MAX_BYTES
from scanner.schema import VERDICT_SCHEMA

LAYOUT = "imgscan-parts/1"
RUN_FILE = "_run.json"
MANIFEST_FILE = "_manifest.json"
PART_GLOB = "part-*.parquet"
WORKERS_DIR = "_workers"  # each actor announces itself here (node, device); folded into _manifest.json at the end
LIST_BLOCK_ROWS = 1024  # paths per block out of the listing tasks
DEFAULT_PART_ROWS = 1024  # files per part (and per actor call): the unit of resume

# What flows from the read stage to the verdict actors.
READ_SCHEMA = pa.schema([
    ("path", pa.binary()), ("data", pa.binary()), ("sha", pa.string()), ("nbytes", pa.int64()),
    ("error", pa.string()), ("known", pa.bool_()),
])
SUMMARY_SCHEMA = pa.schema([
    ("part", pa.string()), ("rows", pa.int64()), ("errors", pa.int64()), ("skipped_known", pa.int64()),
    ("node", pa.string()), ("device", pa.string()),
])


@dataclass
class RayScanOptions:
    roots: list[bytes]
    out: Path
    model_dir: Path
    index_dir: Path
    k: int = 11
    batch_size: int = 64
    device: str = "auto"  # per worker: auto = CUDA when Ray gave the worker a GPU that torch can see
    views: int | None = None  # crops per image (scanner.decode.ViewSpec); None = the model card's
    precision: str = "auto"  # per worker, resolved on the worker's own hardware (scanner.embed.resolve_precision)
    runtime: str = "torch"
    skip_known: list[Path] = field(default_factory=list)
    all_files: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    readers: int = 4  # threads per read task
    overwrite: bool = False
    address: str | None = None  # None: a new local Ray; "auto": the cluster this machine belongs to; ray://host:port
    workers: int | None = None  # verdict actors; None: one per GPU (gpus_per_worker), else CPUs // (cpus_per_worker + 1)
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_worker: float = 1.0  # CPUs each actor reserves (decode threads, torch on CPU)
    part_rows: int = DEFAULT_PART_ROWS
    isolate_decode: bool = True  # as `imgscan scan`: on CPU, decode in a child process of the actor
    decode_timeout_s: float = DEFAULT_TIMEOUT_S
    # All actors must be up (model and index loaded) within this time, else the run stops with an error instead
    # of waiting forever on a cluster that cannot place them. Covers an autoscaler bringing up GPU nodes.
    actor_start_timeout_s: int = 900


# ------------------------------------------------------------------------------------------ stages (remote)

def _list_roots(batch: pa.Table, done_ref, all_files: bool):
    """Listing: one task per root, streaming blocks of paths in walk order; paths of finished parts skipped."""
    import ray

    from scanner.pipeline import _contains
    from scanner.walk import walk_files
    from scanner.writer import path_key

    done = ray.get(done_ref[0]) if done_ref else np.zeros(0, dtype=np.uint64)
    for root in batch.column("root").to_pylist():
        chunk: list[bytes] = []
        for raw in walk_files([root], all_files):
            if _contains(done, path_key(raw)):
                continue
            chunk.append(raw)
            if len(chunk) >= LIST_BLOCK_ROWS:
                yield pa.table({"path": pa.array(chunk, pa.binary())})
                chunk = []
        if chunk:
            yield pa.table({"path": pa.array(chunk, pa.binary())})


def _read_files(batch: pa.Table, known_ref, max_bytes: int, readers: int) -> pa.Table:
    """Reading: bytes + xxh3-128 per file (scanner.read.read_file: failures are error strings, never raises)."""
    from concurrent.futures import ThreadPoolExecutor

    import ray

    from scanner.pipeline import _contains
    from scanner.read import read_file

    known = ray.get(known_ref[0]) if known_ref else np.zeros(0, dtype=np.uint64)
    paths = batch.column("path").to_pylist()
    with ThreadPoolExecutor(max_workers=max(1, readers)) as pool:
        results = list(pool.map(lambda raw: read_file(raw, max_bytes), paths))
    is_known = [r.sha is not None and _contains(known, int(r.sha[:16], 16)) for r in results]
    return pa.table({
        "path": pa.array([r.path for r in results], pa.binary()),
        "data": pa.array([None if k else r.data for r, k in zip(results, is_known)], pa.binary()),
        "sha": pa.array([r.sha for r in results], pa.string()),
        "nbytes": pa.array([r.nbytes for r in results], pa.int64()),
        "error": pa.array([r.error for r in results], pa.string()),
        "known": pa.array(is_known, pa.bool_()),
    }, schema=READ_SCHEMA)


def part_name(paths: list[bytes]) -> str:
    """Deterministic in the part's inputs: a retried actor call rewrites the same part instead of adding one."""
    h = xxhash.xxh3_64()
    for p in paths:
        h.update(p)
        h.update(b"\0")
    return f"part-{h.intdigest():016x}.parquet"


def write_part(directory: Path, name: str, batches: list[pa.RecordBatch], metadata: dict[str, str]) -> int:
    """Write one part atomically: a hidden temporary name (readers of the directory skip it), fsync, rename."""
    schema = VERDICT_SCHEMA.with_metadata({k: v.encode() for k, v in metadata.items()})
    table = pa.Table.from_batches(batches, VERDICT_SCHEMA).replace_schema_metadata(schema.metadata)
    tmp = directory / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        pq.write_table(table, str(tmp), compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return table.num_rows


class VerdictWorker:
    """The stateful actor: loads the model and the support index once (both verified against their checksums,
    as the local engine does), then turns bundles of read results into parts."""

    def __init__(self, model_dir: str, index_dir: str, device: str, k: int, batch_size: int, max_pixels: int,
                 isolate_decode: bool, decode_timeout_s: float, parts_dir: str, metadata: dict[str, str],
                 precision: str = "auto", runtime: str = "torch", views: int | None = None):
        import ray

        from indexes import SupportIndex
        from scanner.embed import Embedder, resolve_device
        from scanner.pipeline import make_decoder

        if device == "auto":
            # CUDA only when Ray gave this worker a GPU (it sets CUDA_VISIBLE_DEVICES) and torch can use it.
            device = resolve_device("auto") if ray.get_gpu_ids() else "cpu"
        self.embedder = Embedder(model_dir, device=resolve_device(device), precision=precision, runtime=runtime,
                                 views=views)
        self.index = SupportIndex.open(index_dir)
        self.index.check_model(self.embedder.model_id, self.embedder.card.weights_sha256)
        self.decoder = make_decoder(self.embedder.view_spec, batch_size, self.embedder.device, max_pixels,
                                    isolate_decode, decode_timeout_s)
        self.k, self.batch_size = k, batch_size
        self.parts_dir, self.metadata = Path(parts_dir), metadata
        self.node = ray.get_runtime_context().get_node_id()
        workers_dir = self.parts_dir / WORKERS_DIR
        workers_dir.mkdir(exist_ok=True)
        import socket

        _write_json_atomic(workers_dir / f"{self.node[:16]}-{os.getpid()}.json", {
            "node": self.node, "host": socket.gethostname(), "pid": os.getpid(), "device": self.embedder.device,
            "precision": self.embedder.precision,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "started_at": datetime.now(timezone.utc).isoformat(),
        })

    def __del__(self):
        close = getattr(getattr(self, "decoder", None), "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                pass

    def __call__(self, batch: pa.Table) -> pa.Table:
        from scanner.pipeline import _record_batch
        from scanner.read import ReadResult

        cols = {name: batch.column(name).to_pylist() for name in READ_SCHEMA.names}
        reads = [ReadResult(p, d, s, n, e) for p, d, s, n, e, known in zip(
            cols["path"], cols["data"], cols["sha"], cols["nbytes"], cols["error"], cols["known"]) if not known]
        skipped = len(cols["path"]) - len(reads)
        out: list[pa.RecordBatch] = []
        for start in range(0, len(reads), self.batch_size):
            chunk = reads[start:start + self.batch_size]
            decoded = self.decoder.decode([r.data for r in chunk])
            for r in chunk:
                r.data = None
            embeddings = self.embedder.embed_batch(decoded)
            out.append(_record_batch(chunk, decoded, embeddings, self.index, self.k, self.embedder.model_id))
        name, rows, errors = "", 0, 0
        if out:
            name = part_name(cols["path"])
            rows = write_part(self.parts_dir, name, out, self.metadata)
            errors = sum(b.num_rows - b.column("error").null_count for b in out)
        return pa.table({
            "part": [name], "rows": [rows], "errors": [errors], "skipped_known": [skipped],
            "node": [self.node], "device": [self.embedder.device],
        }, schema=SUMMARY_SCHEMA)


# ------------------------------------------------------------------------------------------ driver

@dataclass
class _Layout:
    parts_dir: Path
    single_file: Path | None  # --out FILE.parquet: assembled here at the end


def layout_for(out: Path) -> _Layout:
    if out.suffix == ".parquet" and not out.is_dir():
        return _Layout(out.with_name(out.name + ".parts"), out)
    return _Layout(out, None)


def is_complete(layout: _Layout) -> bool:
    if layout.single_file is not None:
        return layout.single_file.is_file() and not layout.parts_dir.exists()
    return (layout.parts_dir / MANIFEST_FILE).is_file()


def part_files(parts_dir: Path) -> list[Path]:
    return sorted(parts_dir.glob(PART_GLOB))


def done_path_keys(parts_dir: Path) -> tuple[np.ndarray, int]:
    """Path keys (scanner.writer.path_key) of every finished part, and their row count. Reads two columns."""
    from scanner.writer import batch_path_keys

    keys = []
    for f in part_files(parts_dir):
        try:
            table = pq.read_table(f, columns=["path", "path_bytes"])
        except (OSError, pa.ArrowException):
            f.unlink(missing_ok=True)  # unreadable (cannot happen with atomic renames, but never trust it): redo
            continue
        keys.extend(batch_path_keys(b) for b in table.to_batches())
    done = np.unique(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.uint64)
    return done, int(done.size)


def drop_duplicate_rows(parts_dir: Path, metadata: dict[str, str]) -> int:
    """Keep one row per path across the parts; returns how many rows were dropped.

    Duplicates cannot come from one run's listing, but they can come from a retried actor call that Ray Data
    bundled differently, or from actors of a killed driver that were still finishing parts while a re-run listed
    the same files. The oldest part keeps its row; a later part with duplicates is rewritten (atomically)
    without them, or removed when nothing is left. Memory: 16 bytes per row (path keys), like the done set."""
    from scanner.writer import batch_path_keys

    files = sorted(part_files(parts_dir), key=lambda f: (f.stat().st_mtime_ns, f.name))
    keys, owner = [], []
    for i, f in enumerate(files):
        table = pq.read_table(f, columns=["path", "path_bytes"])
        k = np.concatenate([batch_path_keys(b) for b in table.to_batches()]) if table.num_rows else np.zeros(0, np.uint64)
        keys.append(k)
        owner.append(np.full(k.size, i, dtype=np.int64))
    if not keys:
        return 0
    all_keys, all_owner = np.concatenate(keys), np.concatenate(owner)
    order = np.lexsort((all_owner, all_keys))  # by key, then oldest part first
    dup = np.zeros(all_keys.size, dtype=bool)
    dup[order[1:]] = all_keys[order[1:]] == all_keys[order[:-1]]
    if not dup.any():
        return 0
    offsets = np.cumsum([0] + [k.size for k in keys])
    for i in np.unique(all_owner[dup]):
        keep = ~dup[offsets[i]:offsets[i + 1]]
        f = files[i]
        if not keep.any():
            f.unlink()
            continue
        table = pq.read_table(f).filter(pa.array(keep))
        write_part(parts_dir, f.name, table.to_batches(), metadata)
    return int(dup.sum())


def _prepare_dir(layout: _Layout, fingerprint: dict, overwrite: bool) -> None:
    d = layout.parts_dir
    if layout.single_file is not None and overwrite and layout.single_file.exists() and not d.exists():
        layout.single_file.unlink()
    if layout.single_file is None and overwrite and (d / MANIFEST_FILE).is_file():
        _clear_parts(d)
    if d.is_dir() and (d / RUN_FILE).is_file():
        try:
            previous = json.loads((d / RUN_FILE).read_text(encoding="utf-8"))
        except ValueError:
            previous = None
        if previous != fingerprint:
            raise UsageError(
                f"{d} holds an unfinished scan with other settings (roots, model, k or file filter); "
                "re-run that command to finish it, or delete the directory to start over"
            )
        for stale in d.glob(".part-*.tmp-*"):
            stale.unlink(missing_ok=True)  # a part that was being written when an earlier run died
        shutil.rmtree(d / WORKERS_DIR, ignore_errors=True)  # actors of the earlier run
        return
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise UsageError(f"--out {d}: exists and is not an imgscan parts directory; choose another --out")
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(fingerprint, sort_keys=True), encoding="utf-8")
    os.replace(tmp, d / RUN_FILE)


def _clear_parts(d: Path) -> None:
    for f in [*part_files(d), d / MANIFEST_FILE, d / RUN_FILE, *d.glob(".part-*.tmp-*")]:
        f.unlink(missing_ok=True)
    shutil.rmtree(d / WORKERS_DIR, ignore_errors=True)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def assemble(parts_dir: Path, out: Path, metadata: dict[str, str]) -> int:
    """Merge the parts into one Parquet file, atomically, streaming row groups (memory stays flat)."""
    from scanner.writer import ROW_GROUP_ROWS

    schema = VERDICT_SCHEMA.with_metadata({k: v.encode() for k, v in metadata.items()})
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    rows = 0
    try:
        with pq.ParquetWriter(str(tmp), schema, compression="zstd") as pw:
            pending, pending_rows = [], 0
            for f in part_files(parts_dir):
                for batch in pq.ParquetFile(f).iter_batches(batch_size=ROW_GROUP_ROWS):
                    pending.append(batch)
                    pending_rows += batch.num_rows
                    if pending_rows >= ROW_GROUP_ROWS:
                        pw.write_table(pa.Table.from_batches(pending).cast(schema))
                        rows, pending, pending_rows = rows + pending_rows, [], 0
            if pending:
                pw.write_table(pa.Table.from_batches(pending).cast(schema))
                rows += pending_rows
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows


def summarize_parts(parts_dir: Path) -> tuple[Counter, Counter]:
    from scanner.pipeline import summarize

    return summarize(*part_files(parts_dir))


def _init_ray(address: str | None):
    """Connect (or start a local Ray). Returns True when this call started Ray, so the caller shuts it down."""
    import ray

    import signal
    import threading

    if ray.is_initialized():
        return False
    main_thread = threading.current_thread() is threading.main_thread()
    previous_term = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        # No --address: always a new local Ray (never silently joining a cluster someone `ray start`ed here).
        ray.init(address=address or "local", log_to_driver=False, include_dashboard=False if address is None else None)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray"
        raise UsageError(f"--address {where}: cannot start or reach Ray ({str(exc).splitlines()[0]})") from None
    finally:
        if main_thread and previous_term is not None:
            # ray.init installs its own SIGTERM handler (exit at once); keep the caller's, so that `imgscan scan`
            # stops on SIGTERM as on Ctrl-C: Ray shut down, finished parts kept, exit status 130.
            signal.signal(signal.SIGTERM, previous_term)
    return True


def plan_workers(resources: dict, workers: int | None, gpus_per_worker: float | None,
                 cpus_per_worker: float) -> tuple[int, float]:
    """How many verdict actors, and GPUs per actor, for the cluster's resources as they are now.

    With both --workers and --gpus-per-worker given, GPUs are not checked against what the cluster has now: an
    autoscaler may be about to add GPU nodes (actor_start_timeout_s bounds the wait). Actors without GPUs must
    leave at least one CPU free, or the listing and reading tasks could never be scheduled."""
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 0))
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus >= 1 else 0.0
    if workers is None:
        if gpus_per_worker > 0:
            workers = int(gpus // gpus_per_worker)
            if workers < 1:
                raise UsageError(f"--gpus-per-worker {gpus_per_worker:g}: the Ray cluster has {gpus:g} GPU(s) now "
                                 "(with an autoscaler, give --workers as well)")
        else:  # leave a CPU per actor for the listing and reading tasks
            workers = max(1, int(cpus // (cpus_per_worker + 1)))
    if gpus_per_worker == 0 and workers * cpus_per_worker > cpus - 1:
        raise UsageError(f"--workers {workers}: the Ray cluster has {cpus:g} CPU(s) and actors without GPUs take "
                         f"{cpus_per_worker:g} each; leave at least one for listing and reading "
                         f"(at most {max(0, int((cpus - 1) // cpus_per_worker))} workers)")
    return workers, gpus_per_worker


def interrupted_message(opts: RayScanOptions) -> str:
    where = layout_for(opts.out).parts_dir
    return f"imgscan: interrupted; finished parts are kept in {where}; run the same command again to continue"


def run_ray_scan(opts: RayScanOptions, progress=None):
    """Scan with Ray. Returns a scanner.pipeline.ScanSummary, or None when --out is already complete.
    Raises UsageError for unusable settings and KeyboardInterrupt (finished parts kept) when stopped."""
    try:
        import ray
    except ModuleNotFoundError:
        raise UsageError("--engine ray needs Ray: pip install 'imgscan[ray]'") from None
    from indexes import SupportIndex
    from scanner.model import verify_model_dir
    from scanner.pipeline import ScanSummary, load_known_shas, scan_fingerprint, scan_metadata

    started = time.monotonic()
    if opts.device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device {opts.device}: expected auto, cpu or cuda")
    if opts.part_rows < 1:
        raise UsageError("part_rows must be at least 1")
    layout = layout_for(opts.out)
    summary = ScanSummary(out=opts.out)
    if is_complete(layout) and not opts.overwrite:
        return None
    # The driver checks what every worker will load, so a bad model or index fails here, once, with exit 2.
    card = verify_model_dir(opts.model_dir)
    support = SupportIndex.open(opts.index_dir)
    support.check_model(card.model_id, card.weights_sha256)
    support.check_not_empty()
    known = load_known_shas(opts.skip_known)
    # Each worker resolves `auto` on its own hardware (it announces what it used in _workers/).
    from scanner.decode import view_spec_for

    view_spec = view_spec_for(card, opts.views)
    metadata = scan_metadata(card, support, opts.k, opts.precision if opts.precision != "auto" else "auto (per worker)",
                             opts.runtime, view_spec)
    fingerprint = {**scan_fingerprint(opts.roots, card.model_id, opts.k, opts.all_files, opts.skip_known,
                                      view_spec.views), "layout": LAYOUT}
    _prepare_dir(layout, fingerprint, opts.overwrite)
    done, summary.resumed_rows = done_path_keys(layout.parts_dir)
    if progress is not None:
        progress.set_already_done(summary.resumed_rows)

    started_ray = _init_ray(opts.address)
    try:
        workers, gpus_per_worker = plan_workers(ray.cluster_resources(), opts.workers, opts.gpus_per_worker,
                                                opts.cpus_per_worker)
        if opts.device == "cuda" and gpus_per_worker == 0:
            raise UsageError("--device cuda: the workers get no GPU (--gpus-per-worker 0, or a cluster without GPUs)")
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # imgscan's own progress (files, img/s) is on stderr
        ctx.wait_for_min_actors_s = opts.actor_start_timeout_s
        # The done / known key arrays (8 bytes a file) go to the object store once; tasks get a reference (inside
        # a list, so that it reaches the function as a reference and is fetched where it is used).
        done_ref = [ray.put(done)] if done.size else []
        known_ref = [ray.put(known)] if known.size else []
        roots = [{"root": r} for r in opts.roots]
        ds = ray.data.from_items(roots, override_num_blocks=len(roots))
        # Listing asks for a quarter CPU so Ray Data never fuses it with reading: one light task per root.
        # Reading runs as its own tasks when the actors ask for a GPU (different resources); with CPU-only actors
        # of one CPU, Ray Data fuses it into the actor, as the local engine reads in the scanning process.
        ds = ds.map_batches(_list_roots, batch_size=1, batch_format="pyarrow", num_cpus=0.25,
                            fn_kwargs={"done_ref": done_ref, "all_files": opts.all_files})
        ds = ds.map_batches(_read_files, batch_size=opts.batch_size, batch_format="pyarrow", num_cpus=1,
                            fn_kwargs={"known_ref": known_ref, "max_bytes": opts.max_bytes, "readers": opts.readers})
        ds = ds.map_batches(
            VerdictWorker, batch_size=opts.part_rows, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=gpus_per_worker or None,
            num_cpus=opts.cpus_per_worker,
            fn_constructor_kwargs={
                "model_dir": str(Path(opts.model_dir).resolve()), "index_dir": str(Path(opts.index_dir).resolve()),
                "device": opts.device, "k": opts.k, "batch_size": opts.batch_size, "max_pixels": opts.max_pixels,
                "isolate_decode": opts.isolate_decode, "decode_timeout_s": opts.decode_timeout_s,
                "parts_dir": str(layout.parts_dir.resolve()), "metadata": metadata, "precision": opts.precision,
                "runtime": opts.runtime, "views": view_spec.views,
            },
        )
        parts, nodes, devices = [], Counter(), Counter()
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                summary.scanned_this_run += row["rows"]
                summary.skipped_known += row["skipped_known"]
                if row["part"]:
                    parts.append(row["part"])
                    nodes[row["node"]] += row["rows"]
                    devices[row["device"]] += row["rows"]
                if progress is not None:
                    progress.advance(row["rows"], row["errors"])
    finally:
        if started_ray:
            ray.shutdown()

    duplicates = drop_duplicate_rows(layout.parts_dir, metadata)
    summary.labels, summary.errors = summarize_parts(layout.parts_dir)
    announced = []
    for f in sorted((layout.parts_dir / WORKERS_DIR).glob("*.json")):
        try:
            announced.append(json.loads(f.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            pass
    shutil.rmtree(layout.parts_dir / WORKERS_DIR, ignore_errors=True)
    all_parts = part_files(layout.parts_dir)
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in all_parts)
    _write_json_atomic(layout.parts_dir / MANIFEST_FILE, {
        "layout": LAYOUT, "complete": True, "rows": rows, "parts": [f.name for f in all_parts],
        "finished_at": datetime.now(timezone.utc).isoformat(), "fingerprint": fingerprint,
        "this_run": {"rows": summary.scanned_this_run, "parts": len(parts), "workers": workers,
                     "gpus_per_worker": gpus_per_worker, "rows_per_node": dict(nodes), "rows_per_device": dict(devices),
                     "actors": announced, "duplicate_rows_dropped": duplicates},
        "imgscan": json.loads(metadata["imgscan"]),
    })
    if layout.single_file is not None:
        summary.rows = assemble(layout.parts_dir, layout.single_file, metadata)
        shutil.rmtree(layout.parts_dir, ignore_errors=True)
    else:
        summary.rows = rows
    summary.elapsed_s = time.monotonic() - started
    return summary
