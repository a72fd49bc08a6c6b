"""`imgscan scan`: resolve the model and the index, pick the engine and the output, run, summarise.

The engines (scanner/engines) only distribute the per-batch work (scanner.judge.BatchJudge); everything a scan
is besides that lives here, once: which output (scanner.writer), what makes two runs the same scan (the
fingerprint), what a verdict file records about how it was made (the metadata), what to skip.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from imgscan_core.errors import Interrupted, UsageError
from indexes import SupportIndex
from scanner.config import ENGINES, ReadConfig, ScanConfig
from scanner.decode import ViewSpec, view_spec_for
from scanner.engines import ScanJob
from scanner.keys import load_known_shas
from scanner.model import ModelCard
from scanner.paths import index_dir_for_reading, model_dir_or_default
from scanner.shards import count_members, is_shard
from scanner.walk import files_to_scan
from scanner.writer import ScanOutput, summarize


@dataclass
class ScanSummary:
    out: Path
    rows: int = 0
    scanned_this_run: int = 0
    resumed_rows: int = 0
    skipped_known: int = 0
    labels: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    provenance_disagreements: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0


def scan_fingerprint(config: ScanConfig, model_id: str, views: int, index_name: str) -> dict:
    """What makes two scans the same scan: an unfinished output is only resumed by a run with this unchanged.
    The index generation is part of it: rows judged before and after an enroll are never mixed in one file."""
    return {
        "roots": [os.fsdecode(os.path.abspath(r)) for r in config.roots], "model": model_id, "k": config.k,
        "min_detail": config.min_detail,
        "all_files": config.read.all_files, "include": config.read.include, "exclude": config.read.exclude,
        "skip_known": sorted(str(p) for p in config.read.skip_known),
        "views": views, "index": index_name, "provenance": config.decode.provenance,
        "listed": config.read.listed.fingerprint() if config.read.listed is not None else None,
    }


def scan_metadata(card, support, k: int, precision: str | None, runtime: str, view_spec: ViewSpec,
                  min_detail: float) -> dict[str, str]:
    """The `imgscan` key-value metadata of a verdict file: model card, index, threshold, k, the pixel-detail
    floor, the embedder's runtime and precision, and how images became model input (resize rule, views)."""
    from scanner import __version__

    return {"imgscan": json.dumps({
        "version": __version__, "model": card.model_id, "model_card": json.loads(card.to_json()),
        "index": support.name, "index_counts": support.manifest.counts,
        "open_set_threshold": support.threshold, "k": k, "min_detail": min_detail, "precision": precision, "runtime": runtime,
        "resize": view_spec.resize, "views": view_spec.views, "mirror": view_spec.mirror,
    })}


def engine_class(name: str):
    if name == "local":
        from scanner.engines.local import LocalEngine

        return LocalEngine
    if name == "ray":
        from scanner.engines.ray_engine import RayEngine

        return RayEngine
    raise UsageError(f"--engine {name}: expected {' or '.join(ENGINES)}")


def count_files(roots: list[bytes], read: ReadConfig, stop: threading.Event, on_total) -> None:
    """Background count for the progress bar's total and ETA (a stat-only walk, much cheaper than a scan). A list
    on standard input can be read once, by the scan itself: then there is no total."""
    if read.listed is not None and read.listed.source == "-":
        return
    n = 0
    for raw in files_to_scan(roots, read):
        if stop.is_set():
            return
        if is_shard(raw):
            members = count_members(raw, read.all_files, read.image_column)
            if members is None:
                return  # a shard at a URL would have to be downloaded to count: no total
            n += members
        else:
            n += 1
    on_total(n)


def open_support(config: ScanConfig, card: ModelCard) -> tuple[Path, SupportIndex]:
    index_dir = index_dir_for_reading(config.index_dir, card.weights_sha256)
    support = SupportIndex.open(index_dir)
    support.check_model(card.model_id, card.weights_sha256, card.embedding_dim)
    support.check_not_empty()
    return index_dir, support


def run_scan(config: ScanConfig, progress=None) -> ScanSummary | None:
    """Scan into config.out with config.engine; None when the output is already complete (and not
    --overwrite). Raises UsageError for unusable settings, Interrupted (work kept) when stopped.
    `progress`: a scanner.progress.ScanProgress (default: a silent one)."""
    from scanner.progress import ScanProgress

    progress = progress or ScanProgress(quiet=True)
    started = time.monotonic()
    engine_cls = engine_class(config.engine)
    output: ScanOutput = engine_cls.output_class(config.out)
    output.check_target()
    retry = 0  # rows of a finished output whose error was transient: this run reads those files again
    if output.is_complete():
        if config.overwrite:
            output.clear()
        else:
            retry = output.transient_rows()
            if not retry:
                return None
    elif config.overwrite:
        output.discard_unfinished()
    known = load_known_shas(config.read.skip_known)
    model_dir = model_dir_or_default(config.embed.model_dir)
    engine = engine_cls(config, model_dir)  # loads (local) or verifies (Ray driver) the model, once
    card = engine.card
    index_dir, support = open_support(config, card)
    view_spec = view_spec_for(card, config.embed.views)
    output.metadata = scan_metadata(card, support, config.k, engine.precision, engine.runtime, view_spec, config.min_detail)
    if retry:
        judged_by = output.judged_by()
        if (judged_by.get("model"), judged_by.get("index")) != (card.model_id, support.name):
            progress.log(f"{retry} rows of {config.out} carry a transient error, but the model or index changed "
                         "since it was written: pass --overwrite to scan again")
            return None
        progress.log(f"{config.out} is complete but {retry} rows carry a transient error: reading those files again")
    fingerprint = scan_fingerprint(config, card.model_id, view_spec.views, support.name)
    done = output.open(fingerprint, reopen=True) if retry else output.open(fingerprint)
    progress.set_already_done(len(done))
    listed = (f" and the files listed in {'standard input' if config.read.listed.source == '-' else config.read.listed.source}"
              if config.read.listed is not None else "")
    progress.log(f"start: roots {', '.join(os.fsdecode(r) for r in config.roots) or 'none'}{listed}; out {config.out}; model "
                 f"{card.model_id}; index {index_dir} ({support.name}, {len(support.manifest.counts)} classes, "
                 f"{support.manifest.total} images); engine {config.engine}; runtime {engine.runtime}, precision "
                 f"{engine.precision}; {view_spec.describe()}; resuming {len(done)} rows")
    if len(support.manifest.counts) == 1:
        progress.log(f"warning: the index holds one class ({next(iter(support.manifest.counts))}): every image "
                     "will be labelled that class or unknown; enroll real photos and generators to compare")
    job = ScanJob(config, model_dir, index_dir, card, support, view_spec, done, known)
    stop_count = threading.Event()
    threading.Thread(target=count_files, args=(config.roots, config.read, stop_count, progress.set_total),
                     daemon=True).start()
    try:
        result = engine.run(job, output, progress)
        rows = output.finish(result.run_info)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {output.resume_hint()}") from None
    except OSError as exc:  # disk full, file size limit, output removed under us: the staging so far is intact
        raise UsageError(f"writing {config.out}: {exc.strerror or exc}; {output.resume_hint()} after fixing "
                         "the cause") from None
    finally:
        stop_count.set()
        output.unlock()  # already released by finish(); here for runs that stop early
    labels, errors, disagreements = summarize(output.result_files())
    progress.log(f"done: {rows} rows in {config.out} ({result.scanned} scanned now, {len(done)} kept from an "
                 f"interrupted run, {result.skipped_known} skipped as known, {sum(errors.values())} error rows; "
                 + ", ".join(f"{n} {what}" for what, n in disagreements.items()) + ")")
    return ScanSummary(out=config.out, rows=rows, scanned_this_run=result.scanned, resumed_rows=len(done),
                       skipped_known=result.skipped_known, labels=labels, errors=errors,
                       provenance_disagreements=disagreements,
                       elapsed_s=time.monotonic() - started)
