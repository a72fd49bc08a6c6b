"""`imgscan scan --engine ray`: the same scan on a Ray cluster, for crawls that need many GPUs and nodes.

One Ray Data pipeline, streamed (no stage ever holds the crawl):

    roots --list (one task per root: scanner.walk.walk_files, resumed paths skipped)
          --read (tasks: scanner.read.read_file, bytes + xxh3-128, --skip-known; a shard is one task that
                  streams its members, scanner.shards.read_shard, resumed members skipped)
          --verdict (a pool of stateful actors, one per worker: model + support index loaded once, on the GPU
                     when the worker has one; scanner.judge.BatchJudge, the local engine's own per-batch work)
          --> parts (scanner.writer.PartsOutput), written atomically by the actor that made them

Each actor call turns one bundle of `part_rows` files into one part; the driver only receives a one-row summary
per part. Output layout and resume: scanner.writer.PartsOutput and docs/ray.md.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from imgscan_core.errors import UsageError
from scanner.config import DecodeConfig, ScanConfig
from scanner.engines import EngineResult, ScanJob
from scanner.keys import KeySet, path_key, sha_key
from scanner.writer import PartsOutput

LIST_BLOCK_ROWS = 1024  # paths per block out of the listing tasks

# What flows from the read stage to the verdict actors.
READ_SCHEMA = pa.schema([
    ("path", pa.binary()), ("data", pa.binary()), ("sha", pa.string()), ("nbytes", pa.int64()),
    ("error", pa.string()), ("known", pa.bool_()), ("key", pa.string()), ("source_url", pa.string()),
])
SUMMARY_SCHEMA = pa.schema([
    ("part", pa.string()), ("rows", pa.int64()), ("errors", pa.int64()), ("skipped_known", pa.int64()),
    ("node", pa.string()), ("device", pa.string()),
])


# ------------------------------------------------------------------------------------------ stages (remote)

def _keys(refs) -> KeySet:
    import ray

    return KeySet(ray.get(refs[0])) if refs else KeySet()


def _list_roots(batch: pa.Table, done_ref, all_files: bool, include: list[str], exclude: list[str]):
    """Listing: one task per root, streaming blocks of paths in walk order; paths of finished parts skipped."""
    from scanner.walk import walk_files

    done = _keys(done_ref)
    for root in batch.column("root").to_pylist():
        chunk: list[bytes] = []
        for raw in walk_files([root], all_files, include, exclude):
            if path_key(raw) in done:
                continue
            chunk.append(raw)
            if len(chunk) >= LIST_BLOCK_ROWS:
                yield pa.table({"path": pa.array(chunk, pa.binary())})
                chunk = []
        if chunk:
            yield pa.table({"path": pa.array(chunk, pa.binary())})


def _read_files(batch: pa.Table, known_ref, done_ref, max_bytes: int, readers: int, all_files: bool,
                image_column: str, rows_per_table: int):
    """Reading: bytes + xxh3-128 per file (scanner.read.read_file: failures are error strings, never raises); a
    shard's members streamed (scanner.shards.read_shard), a table of `rows_per_table` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from scanner.read import read_file
    from scanner.shards import is_shard, read_shard

    known, done = _keys(known_ref), _keys(done_ref)
    paths = batch.column("path").to_pylist()
    files = [raw for raw in paths if not is_shard(raw)]
    with ThreadPoolExecutor(max_workers=max(1, readers)) as pool:
        results = list(pool.map(lambda raw: read_file(raw, max_bytes), files))
    if results:
        yield _read_table(results, known)
    for shard in (raw for raw in paths if is_shard(raw)):
        members = []
        for result in read_shard(shard, max_bytes, all_files, skip=lambda p: path_key(p) in done,
                                 image_column=image_column):
            members.append(result)
            if len(members) >= rows_per_table:
                yield _read_table(members, known)
                members = []
        if members:
            yield _read_table(members, known)


def _read_table(results: list, known: KeySet) -> pa.Table:
    is_known = [r.sha is not None and sha_key(r.sha) in known for r in results]
    return pa.table({
        "path": pa.array([r.path for r in results], pa.binary()),
        "data": pa.array([None if k else r.data for r, k in zip(results, is_known)], pa.binary()),
        "sha": pa.array([r.sha for r in results], pa.string()),
        "nbytes": pa.array([r.nbytes for r in results], pa.int64()),
        "error": pa.array([r.error for r in results], pa.string()),
        "known": pa.array(is_known, pa.bool_()),
        "key": pa.array([r.key for r in results], pa.string()),
        "source_url": pa.array([r.source_url for r in results], pa.string()),
    }, schema=READ_SCHEMA)


class VerdictWorker:
    """The stateful actor: loads the model and the support index once (both verified against their checksums,
    as the local engine does), then turns bundles of read results into parts with a BatchJudge."""

    def __init__(self, model_dir: str, index_dir: str, device: str, k: int, batch_size: int, decode: DecodeConfig,
                 output: PartsOutput, precision: str, runtime: str, views: int, min_detail: float):
        import socket

        import ray

        from indexes import SupportIndex
        from scanner.embed import Embedder, resolve_device
        from scanner.judge import BatchJudge

        # auto: CUDA only when Ray gave this worker a GPU (it sets CUDA_VISIBLE_DEVICES) and torch can use it.
        device = resolve_device(device, gpu_assigned=bool(ray.get_gpu_ids()))
        embedder = Embedder(model_dir, device=device, precision=precision, runtime=runtime, views=views)
        index = SupportIndex.open(index_dir)
        index.check_model(embedder.model_id, embedder.card.weights_sha256, embedder.dim)
        self.judge = BatchJudge(embedder, index, k, decode, batch_size, min_detail)
        self.batch_size, self.output = batch_size, output
        self.node = ray.get_runtime_context().get_node_id()
        self.device = embedder.device
        output.announce(f"{self.node[:16]}-{os.getpid()}", {
            "node": self.node, "host": socket.gethostname(), "pid": os.getpid(), "device": embedder.device,
            "precision": embedder.precision, "runtime": embedder.runtime, "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "started_at": datetime.now(timezone.utc).isoformat(),
        })

    def __del__(self):
        judge = getattr(self, "judge", None)
        if judge is not None:
            try:
                judge.close()
            except Exception:
                pass

    def __call__(self, batch: pa.Table) -> pa.Table:
        from scanner.read import ReadResult

        cols = {name: batch.column(name).to_pylist() for name in READ_SCHEMA.names}
        reads = [ReadResult(p, d, s, n, e, key, url) for p, d, s, n, e, known, key, url in zip(
            cols["path"], cols["data"], cols["sha"], cols["nbytes"], cols["error"], cols["known"], cols["key"],
            cols["source_url"]) if not known]
        out = [self.judge(reads[i:i + self.batch_size]) for i in range(0, len(reads), self.batch_size)]
        part = self.output.write(out) or ""
        rows = sum(b.num_rows for b in out)
        errors = sum(b.num_rows - b.column("error").null_count for b in out)
        return pa.table({
            "part": [part], "rows": [rows], "errors": [errors],
            "skipped_known": [len(cols["path"]) - len(reads)], "node": [self.node], "device": [self.device],
        }, schema=SUMMARY_SCHEMA)


# ------------------------------------------------------------------------------------------ driver

def _init_ray(address: str | None) -> bool:
    """Connect (or start a local Ray). Returns True when this call started Ray, so the caller shuts it down."""
    import ray

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


class RayEngine:
    output_class = PartsOutput

    def __init__(self, config: ScanConfig, model_dir: Path):
        try:
            import ray  # noqa: F401
        except ModuleNotFoundError:
            raise UsageError("--engine ray needs Ray: pip install 'imgscan[ray]'") from None
        if config.embed.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device {config.embed.device}: expected auto, cpu or cuda")
        if config.ray.part_rows < 1:
            raise UsageError("part_rows must be at least 1")
        from scanner.model import verify_model_dir

        # The driver checks what every worker will load, so a bad model fails here, once, with exit 2.
        self.card = verify_model_dir(model_dir)
        # Each worker resolves `auto` on its own hardware (it announces what it used in the manifest).
        self.precision = config.embed.precision if config.embed.precision != "auto" else "auto (per worker)"
        self.runtime = config.embed.runtime if config.embed.runtime != "auto" else "auto (per worker)"

    def run(self, job: ScanJob, output: PartsOutput, progress) -> EngineResult:
        import ray

        config, rc = job.config, job.config.ray
        started_ray = _init_ray(rc.address)
        try:
            workers, gpus_per_worker = plan_workers(ray.cluster_resources(), rc.workers, rc.gpus_per_worker,
                                                    rc.cpus_per_worker)
            if config.embed.device == "cuda" and gpus_per_worker == 0:
                raise UsageError("--device cuda: the workers get no GPU (--gpus-per-worker 0, or a cluster without GPUs)")
            result = self._stream(job, output, progress, workers, gpus_per_worker)
        finally:
            if started_ray:
                ray.shutdown()
        result.run_info.update(workers=workers, gpus_per_worker=gpus_per_worker)
        return result

    def _stream(self, job: ScanJob, output: PartsOutput, progress, workers: int, gpus_per_worker: float) -> EngineResult:
        import ray

        config, rc = job.config, job.config.ray
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # imgscan's own progress (files, img/s) is on stderr
        ctx.wait_for_min_actors_s = rc.actor_start_timeout_s
        # The done / known keys (8 bytes a file) go to the object store once; tasks get a reference (inside a list,
        # so that it reaches the function as a reference and is fetched where it is used).
        done_ref = [ray.put(job.done.keys)] if len(job.done) else []
        known_ref = [ray.put(job.known.keys)] if len(job.known) else []
        ds = ray.data.from_items([{"root": r} for r in config.roots], override_num_blocks=len(config.roots))
        # Listing asks for a quarter CPU so Ray Data never fuses it with reading: one light task per root.
        # Reading runs as its own tasks when the actors ask for a GPU (different resources); with CPU-only actors
        # of one CPU, Ray Data fuses it into the actor, as the local engine reads in the scanning process.
        ds = ds.map_batches(_list_roots, batch_size=1, batch_format="pyarrow", num_cpus=0.25,
                            fn_kwargs={"done_ref": done_ref, "all_files": config.read.all_files,
                                       "include": config.read.include, "exclude": config.read.exclude})
        ds = ds.map_batches(_read_files, batch_size=config.embed.batch_size, batch_format="pyarrow", num_cpus=1,
                            fn_kwargs={"known_ref": known_ref, "done_ref": done_ref, "max_bytes": config.read.max_bytes,
                                       "readers": config.read.readers, "all_files": config.read.all_files,
                                       "image_column": config.read.image_column,
                                       "rows_per_table": config.embed.batch_size})
        ds = ds.map_batches(
            VerdictWorker, batch_size=rc.part_rows, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=gpus_per_worker or None,
            num_cpus=rc.cpus_per_worker,
            fn_constructor_kwargs={
                "model_dir": str(job.model_dir.resolve()), "index_dir": str(job.index_dir.resolve()),
                "device": config.embed.device, "k": config.k, "min_detail": config.min_detail, "batch_size": config.embed.batch_size,
                "decode": config.decode, "output": output, "precision": config.embed.precision,
                "runtime": config.embed.runtime, "views": job.view_spec.views,
            },
        )
        result, parts, nodes, devices = EngineResult(), 0, Counter(), Counter()
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                result.scanned += row["rows"]
                result.skipped_known += row["skipped_known"]
                if row["part"]:
                    parts += 1
                    nodes[row["node"]] += row["rows"]
                    devices[row["device"]] += row["rows"]
                progress.advance(row["rows"], row["errors"])
        result.run_info = {"rows": result.scanned, "parts": parts, "rows_per_node": dict(nodes),
                           "rows_per_device": dict(devices)}
        return result
