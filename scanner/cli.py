"""The `imgscan` command line (Typer). Commands parse arguments, open the model and index, and hand over to
the stage modules. Commands raise imgscan_core.errors; scanner.cli_common.run_app turns them into one line and an
exit status."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from imgscan_core.errors import UsageError
from scanner import __version__
from scanner.cli_common import (BatchOpt, CommandBoundary, DeviceOpt, IndexOpt, KOpt, MinDetailOpt, ModelOpt, PrecisionOpt,
                                RuntimeOpt, ViewsOpt, LOG_FORMAT, YesOpt, confirm_on_terminal, err_console, out_console,
                                stop_on_signals)
from scanner.detail import DEFAULT_MIN_DETAIL
from scanner.paths import index_dir_for_reading, index_dir_for_writing, model_dir_or_default

MAX_LISTED = 20  # per-file lines of one kind an enroll prints before it only counts them

app = typer.Typer(
    name="imgscan",
    cls=CommandBoundary,
    help=(
        "Tell whether images are AI-generated and which generator made them.\n\n"
        "An embedder trained with supervised contrastive loss maps each image to a 128-d vector; the k nearest "
        "enrolled support images (k=11) vote for its class. A new generator is added by enrolling a few dozen "
        "of its images, with no retraining; images far from every enrolled class are labelled `unknown`.\n\n"
        "Typical use:\n\n"
        "  imgscan enroll real ./photos\n\n"
        "  imgscan enroll midjourney_v7 ./samples\n\n"
        "  imgscan scan ./crawl --out verdicts.parquet"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
index_app = typer.Typer(help="Inspect or edit the support index (what is enrolled).", no_args_is_help=True,
                        cls=CommandBoundary)
app.add_typer(index_app, name="index")

READ_PANEL = "Reading and decoding"


def _print_version(value: bool) -> None:
    if value:
        print(f"imgscan {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                   help="Print imgscan's version and exit.")] = False) -> None:
    """Options before any command."""
RAY_PANEL = "Ray engine (--engine ray, docs/ray.md)"


def _model_sha(model: Optional[Path]) -> str:
    """sha256 of the weights of the model in use (from its card), or "" when there is none."""
    from scanner.model import read_card

    try:
        return read_card(model_dir_or_default(model)).weights_sha256
    except UsageError:
        return ""


def _embedder(model: Optional[Path], device: str, precision: str = "auto", runtime: str = "auto",
              views: Optional[int] = None, threads: Optional[int] = None):
    from scanner.embed import Embedder, resolve_device

    return Embedder(model_dir_or_default(model), device=resolve_device(device), precision=precision,
                    runtime=runtime, views=views, threads=threads)


@app.command()
def scan(
    out: Annotated[Path, typer.Option("--out", "-o", help="Verdict Parquet file to write. Re-running the same command resumes an interrupted scan.")],
    paths: Annotated[Optional[list[str]], typer.Argument(help="Files or directories to scan (directories recursively), or shards: webdataset .tar, Parquet/Arrow files with an image column, local or at s3:// gs:// hf:// https:// URLs; brace ranges such as 'shards/{00000..00999}.tar' (quote them).", show_default=False)] = None,
    index: IndexOpt = None,
    k: KOpt = 11,
    min_detail: MinDetailOpt = DEFAULT_MIN_DETAIL,
    skip_known: Annotated[Optional[list[str]], typer.Option("--skip-known", help="Earlier verdict files, or a quoted pattern ('/verdicts/*.parquet'; none matching: nothing to skip): images whose sha is in them are skipped (no row). Repeatable; an unquoted pattern works too.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over: replace a finished --out, or drop an unfinished run's rows.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no log lines: only errors.")] = False,
    log_format: Annotated[str, typer.Option("--log-format", help="text (ISO-timestamped lines when not on a terminal) or json (one JSON object per log line and error, for log shippers).")] = "text",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout (out, rows, counts per label, errors, provenance disagreements, elapsed) instead of the table.")] = False,
    model: ModelOpt = None,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    runtime: RuntimeOpt = "auto",
    views: ViewsOpt = None,
    all_files: Annotated[bool, typer.Option("--all-files", rich_help_panel=READ_PANEL, help="Scan every file, not only image file extensions (.jpg .png .webp .gif ...).")] = False,
    files_from: Annotated[Optional[str], typer.Option("--files-from", rich_help_panel=READ_PANEL, help="Also scan the files listed in this file, one path per line ('-': standard input), e.g. a crawler's list. Read as a stream while the scan runs; a folder in the list is walked like a PATH.")] = None,
    null: Annotated[bool, typer.Option("--null", "-0", rich_help_panel=READ_PANEL, help="--files-from entries are separated by NUL bytes (find -print0), not newlines.")] = False,
    include: Annotated[Optional[list[str]], typer.Option("--include", rich_help_panel=READ_PANEL, help="Only files this glob matches, against the path under its root ('2026-11-*/*.jpg') or the name ('*.png'). Repeatable; quote it.")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", rich_help_panel=READ_PANEL, help="Leave out files this glob matches (as --include). Repeatable; quote it.")] = None,
    image_column: Annotated[str, typer.Option("--image-column", rich_help_panel=READ_PANEL, help="Parquet/Arrow shards: the column holding image bytes (img2dataset writes jpg; a struct with a bytes field, as Hugging Face datasets writes images, works too).")] = "jpg",
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, rich_help_panel=READ_PANEL, help="Refuse images larger than this (decompression bombs).")] = 100_000_000,
    readers: Annotated[int, typer.Option("--readers", min=1, max=64, rich_help_panel=READ_PANEL, help="Threads reading and hashing files.")] = 4,
    isolate_decode: Annotated[bool, typer.Option("--isolate-decode/--in-process-decode", rich_help_panel=READ_PANEL, help="On CPU, decode in a child process so a decoder crash or hang on a hostile file costs only that file's row.")] = True,
    decode_timeout: Annotated[float, typer.Option("--decode-timeout", min=0.1, rich_help_panel=READ_PANEL, help="Seconds one image may take to decode (isolated decoding) before it gets an error row.")] = 20.0,
    provenance: Annotated[bool, typer.Option("--provenance/--no-provenance", rich_help_panel=READ_PANEL, help="Read C2PA Content Credentials, XMP DigitalSourceType, PNG generation parameters and EXIF into the `provenance` column (evidence beside the verdict, never part of it). --no-provenance: faster, column null.")] = True,
    engine: Annotated[str, typer.Option("--engine", rich_help_panel=RAY_PANEL, help="local (this machine) or ray (a Ray cluster: pip install 'imgscan\\[ray]'; see docs/ray.md).")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", rich_help_panel=RAY_PANEL, help="--engine ray: auto (the cluster this machine belongs to) or ray://HOST:10001. Default: start a local Ray.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, rich_help_panel=RAY_PANEL, help="--engine ray: verdict actors, each loading the model and index once. Default: one per GPU; without GPUs, CPUs/2.")] = None,
    gpus_per_worker: Annotated[Optional[float], typer.Option("--gpus-per-worker", min=0.0, rich_help_panel=RAY_PANEL, help="--engine ray: GPUs per actor (fractions share a GPU). Default: 1 when the cluster has GPUs, else 0.")] = None,
) -> None:
    """Scan images into a Parquet file of verdicts: one row per file (or shard member), with label, scores,
    neighbours, errors.

    \b
    Columns: path, sha, bytes, width, height, label, closed_set_label, is_ai, ai_score (calibrated P(AI)),
    open_set_score, neighbors, match (exact / near copy of an enrolled image), provenance (C2PA, XMP,
    PNG text, EXIF), error, model, index, scanned_at, key and source_url (shard members) (see README). A file that cannot be read or decoded gets a
    row with `error` set; the run goes on and exits 0. Kill it at any time: running the same command again
    continues where it stopped.

    \b
    Examples:
      imgscan scan ./crawl --out verdicts.parquet
      imgscan scan ./crawl/2026-11-22 --out night.parquet --skip-known night-*.parquet
      imgscan scan 'shards/{00000..00099}.tar' --out shards.parquet
      imgscan scan 's3://bucket/laion/{00000..00999}.tar' data/part-*.parquet --out crawl.parquet
    """
    from scanner.config import DecodeConfig, EmbedConfig, RayConfig, ReadConfig, ScanConfig
    from scanner.keys import is_verdict_file, skip_known_files
    from scanner.progress import ScanProgress
    from scanner.scan import run_scan
    from scanner.shards import expand_braces
    from scanner.walk import check_roots

    stop_on_signals()
    if log_format not in ("text", "json"):
        raise UsageError(f"--log-format {log_format}: expected text or json")
    LOG_FORMAT["format"] = log_format
    out = out.expanduser()
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: directory {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"--out {out}: directory {out.parent} is not writable")
    if engine == "local" and (address is not None or workers is not None or gpus_per_worker is not None):
        raise UsageError("--address, --workers and --gpus-per-worker need --engine ray")
    paths = paths or []
    if not paths and files_from is None:
        raise UsageError("nothing to scan: give folders or images, or --files-from LIST")
    if files_from is not None and engine != "local":
        raise UsageError("--files-from works with the local engine (list folders as roots for --engine ray)")
    switch_values = [str(p) for p in paths if str(p).lower() in ("true", "false", "yes", "no") and not Path(p).exists()]
    if switch_values:
        raise UsageError(f"{switch_values[0]!r} is not a folder or image: switches such as --overwrite and --all-files "
                         "take no value (write `--overwrite`, not `--overwrite true`)")
    known_files = skip_known_files(skip_known or [])
    if skip_known:
        # `--skip-known /verdicts/*.parquet` unquoted: the shell gave the flag the first file and made the others
        # arguments. Verdict files are never images: they are files to skip by, not roots.
        verdict_files = [p for p in paths if is_verdict_file(p)]
        known_files += [Path(p) for p in verdict_files if Path(p) not in known_files]
        paths = [p for p in paths if p not in verdict_files]
        if not paths and files_from is None:
            raise UsageError("no folder or image to scan: every argument is a verdict file (--skip-known)")
    roots = check_roots([spec for p in paths for spec in expand_braces(str(p))], all_files)
    listed = _file_list(files_from, null) if files_from is not None else None
    config = ScanConfig(
        roots=roots, out=out, index_dir=index, k=k, min_detail=min_detail, overwrite=overwrite, engine=engine,
        read=ReadConfig(all_files=all_files, readers=readers, skip_known=known_files, include=include or [],
                        exclude=exclude or [], listed=listed, image_column=image_column),
        decode=DecodeConfig(max_pixels=max_pixels, isolate=isolate_decode, timeout_s=decode_timeout,
                            provenance=provenance),
        embed=EmbedConfig(model_dir=model, device=device, precision=precision, runtime=runtime, views=views,
                          batch_size=batch_size),
        ray=RayConfig(address=address, workers=workers, gpus_per_worker=gpus_per_worker),
    )
    with ScanProgress("scanning" if engine == "local" else f"scanning ({engine})", quiet=quiet,
                      log_format=log_format) as progress:
        summary = run_scan(config, progress)
    if as_json:
        typer.echo(json.dumps(_summary_json(out, summary)))  # one line: jq, python -c, a log shipper
        return
    if quiet or log_format == "json":
        return
    if summary is None:
        err_console.print(f"imgscan: {out} is already complete; nothing to do (pass --overwrite to scan again)")
    else:
        _print_summary(summary)


def _file_list(source: str, nul_separated: bool):
    """--files-from as a stream (scanner.walk.FileList); a file that cannot be opened is a usage error now, not
    halfway through the scan."""
    from scanner.walk import FileList

    if source != "-":
        try:
            with open(source, "rb"):
                pass
        except OSError as exc:
            raise UsageError(f"--files-from {source}: cannot read ({exc.strerror or exc})") from None
    return FileList(source, nul_separated)


def _summary_json(out: Path, summary) -> dict:
    """What scripts read from `imgscan scan --json` (as ffprobe / exiftool users script against their JSON)."""
    if summary is None:
        return {"out": str(out), "already_complete": True}
    return {"out": str(summary.out), "already_complete": False, "rows": summary.rows,
            "scanned_this_run": summary.scanned_this_run, "resumed_rows": summary.resumed_rows,
            "skipped_known": summary.skipped_known, "labels": dict(summary.labels),
            "errors": dict(summary.errors), "error_rows": sum(summary.errors.values()),
            "provenance_disagreements": dict(summary.provenance_disagreements),
            "elapsed_s": round(summary.elapsed_s, 3)}


def _print_summary(summary) -> None:
    table = Table(title=f"{summary.out}: {summary.rows} rows", show_edge=False)
    table.add_column("label")
    table.add_column("files", justify="right")
    for lab, n in sorted(summary.labels.items(), key=lambda kv: -kv[1]):
        table.add_row(lab, str(n))
    for err, n in sorted(summary.errors.items(), key=lambda kv: -kv[1]):
        table.add_row(f"[red]error[/] {err}", str(n))
    err_console.print(table)
    extra = []
    if summary.resumed_rows:
        extra.append(f"{summary.resumed_rows} rows kept from an interrupted run")
    if summary.skipped_known:
        extra.append(f"{summary.skipped_known} files skipped (sha in --skip-known)")
    for what, n in summary.provenance_disagreements.items():
        if n:
            extra.append(f"{n} files where {what} (review them: imgscan report)")
    rate = summary.scanned_this_run / max(summary.elapsed_s, 1e-9)
    extra.append(f"{summary.scanned_this_run} files in {summary.elapsed_s:.1f} s ({rate:.1f} img/s)")
    err_console.print("; ".join(extra), highlight=False)


@app.command()
def enroll(
    name: Annotated[str, typer.Argument(help="Class to enroll the images as, e.g. real, midjourney_v7.", show_default=False)],
    paths: Annotated[list[Path], typer.Argument(help="Image files or directories (recursive).", show_default=False)],
    index: IndexOpt = None,
    model: ModelOpt = None,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    runtime: RuntimeOpt = "auto",
    views: ViewsOpt = None,
) -> None:
    """Add images to the support index as class NAME; nothing is retrained.

    \b
    50-150 images per class is enough. `real` is a class like any other. An image already enrolled
    (same sha) is skipped. Files that cannot be decoded are reported and left out. The open-set
    threshold is recalibrated after every enrollment.

    \b
    Example:
      imgscan enroll midjourney_v7 ./samples --index ./my-index
    """
    from imgscan_core.labels import check_label
    from scanner.enroll import enroll_files, enrollment_report
    from scanner.progress import ScanProgress
    from scanner.walk import check_roots

    check_label(name)
    roots = check_roots(paths)
    embedder = _embedder(model, device, precision, runtime, views)
    index_dir = index_dir_for_writing(index, embedder.card.weights_sha256)
    with ScanProgress(f"embedding {name}") as progress:
        result, found = enroll_files(index_dir, name, roots, embedder, batch_size, progress)
    for path, err in found.failed[:MAX_LISTED]:
        err_console.print(f"unreadable, skipped {path}: {err}", highlight=False)
    for path, label in result.duplicates[:MAX_LISTED]:
        err_console.print(f"already enrolled as {label}: {path}", highlight=False)
    for what, items in (("unreadable", found.failed), ("already enrolled", result.duplicates)):
        if len(items) > MAX_LISTED:
            err_console.print(f"... and {len(items) - MAX_LISTED} more {what}", highlight=False)
    line, warnings = enrollment_report(result, found, name, result.manifest.open_set.k)
    err_console.print(line, highlight=False)
    for warning in warnings:
        err_console.print(f"warning: {warning}", highlight=False)


@index_app.command("show")
def index_show(
    index: IndexOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Show the index: model, classes and counts, open-set threshold, ai_score calibration, files (all verified)."""
    from indexes import SupportIndex

    index_dir = index_dir_for_reading(index, _model_sha(None))
    support = SupportIndex.open(index_dir)
    m = support.manifest
    if as_json:
        out_console.print_json(m.to_json())
        return
    table = Table(title=f"{index_dir} (generation {m.generation})", show_edge=False)
    table.add_column("class")
    table.add_column("support images", justify="right")
    for lab, n in sorted(m.counts.items()):
        table.add_row(lab, str(n))
    out_console.print(table)
    out_console.print(f"model: {m.model_id}\ndim: {m.dim}, space: {m.space}, total: {m.total}", highlight=False)
    os_ = m.open_set
    out_console.print(
        f"open-set threshold: {os_.threshold:.4f} ({os_.method}, k={os_.k}, accepts {os_.target_accept:.0%} of "
        f"{os_.calibrated_on} AI support images)", highlight=False, soft_wrap=True,
    )
    cal = m.ai_score
    out_console.print(
        f"ai_score calibration: {cal.method}"
        + (f" ({len(cal.evidence)} knots, {cal.prior} prior, {cal.calibrated_on} support images left out in turn)"
           if cal.method == "isotonic" else " (an index from before calibration: ai_score = (evidence + 1) / 2; "
           "enroll into it, or rebuild it, to calibrate)"), highlight=False, soft_wrap=True,
    )


@index_app.command("remove")
def index_remove(
    label: Annotated[str, typer.Argument(help="Class to remove, with all its support images.", show_default=False)],
    index: IndexOpt = None,
    yes: YesOpt = False,
) -> None:
    """Remove a class from the index (the HNSW graph is rebuilt, the threshold recalibrated).

    \b
    On a terminal it asks first; scripts (no terminal) and --yes do not.
    """
    from indexes import SupportIndex
    from scanner.enroll import remove_label

    index_dir = index_dir_for_writing(index, _model_sha(None))
    n = SupportIndex.open(index_dir).manifest.counts.get(label, 0)
    confirm_on_terminal(f"Remove the {n} support images of {label!r} from {index_dir}?", yes)
    removed, m = remove_label(index_dir, label)
    err_console.print(f"removed {removed} support image(s) of {label!r}; {m.total} left (generation {m.generation})")


@index_app.command("calibrate")
def index_calibrate(
    ai_share: Annotated[float, typer.Option(
        "--ai-share", min=0.01, max=0.99,
        help="The share of generated images the ai_score assumes. is_ai is ai_score > 0.5, so 0.5 accuses at even "
             "odds and 0.1 only where the evidence is 9 times likelier from a generated image than from a real "
             "photo: fewer real photos called AI, fewer AI images caught (docs/benchmarks.md measures both).",
        show_default=False)],
    index: IndexOpt = None,
) -> None:
    """Fit the ai_score calibration again for another share of generated images (new generation; nothing
    re-embedded). Later enrollments keep the share; `imgscan index show` prints it.

    \b
    imgscan index calibrate --ai-share 0.1    # a false "AI" costs 9 times a missed one
    imgscan index calibrate --ai-share 0.5    # back to balanced
    """
    from scanner.enroll import recalibrate

    index_dir = index_dir_for_writing(index, _model_sha(None))
    m = recalibrate(index_dir, ai_share)
    err_console.print(f"ai_score recalibrated ({m.ai_score.prior} prior, {len(m.ai_score.evidence)} knots, "
                      f"{m.ai_score.calibrated_on} support images left out in turn); generation {m.generation}")


@index_app.command("history")
def index_history(index: IndexOpt = None) -> None:
    """List the kept generations of the index (the last 5): when, how many images, which classes."""
    from indexes.support_index import history_of
    from indexes.manifest import read_manifest

    index_dir = index_dir_for_reading(index, _model_sha(None))
    current = read_manifest(index_dir).generation
    table = Table(title=f"{index_dir}: generations kept", show_edge=False)
    for column in ("generation", "written (UTC)", "images", "classes", "note"):
        table.add_column(column, justify="right" if column in ("generation", "images") else "left")
    for m in history_of(index_dir):
        note = "current" if m.generation == current else ""
        if m.restores:
            note = (note + "; " if note else "") + f"restores g{m.restores}"
        table.add_row(str(m.generation), m.updated_at[:19], str(m.total), ", ".join(sorted(m.counts)), note)
    out_console.print(table, soft_wrap=True)


@index_app.command("rollback")
def index_rollback(
    generation: Annotated[int, typer.Argument(help="A kept generation (see `imgscan index history`).", show_default=False)],
    index: IndexOpt = None,
    yes: YesOpt = False,
) -> None:
    """Make a kept generation current again. It becomes a new generation, so nothing is lost: the one rolled
    back from stays in the history.

    \b
    Example:
      imgscan index history --index ./my-index
      imgscan index rollback 41 --index ./my-index
    """
    from indexes.support_index import rollback

    index_dir = index_dir_for_writing(index, _model_sha(None))
    confirm_on_terminal(f"Make generation {generation} of {index_dir} current?", yes)
    m = rollback(index_dir, generation)
    err_console.print(f"generation {m.generation} restores generation {generation}: {m.total} images in "
                      f"{len(m.counts)} classes", highlight=False)


@app.command()
def bench(
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    images: Annotated[int, typer.Option("--images", min=1, help="How many test images to generate.")] = 512,
    size: Annotated[Optional[int], typer.Option("--size", min=16, help="Side of the generated images in pixels (default: the model's input size); e.g. 1024 with --format png.")] = None,
    image_format: Annotated[str, typer.Option("--format", help="Generated images: jpeg (q95) or png.")] = "jpeg",
    images_dir: Annotated[Optional[Path], typer.Option("--images-dir", help="Benchmark on the files in this directory instead of generated ones (e.g. native-size camera photos).")] = None,
    batch_size: BatchOpt = 32,
    support: Annotated[int, typer.Option("--support", min=16, help="Synthetic support vectors in the benchmark index.")] = 2000,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="Embedder CPU threads (default: every usable core; scanner.threads).")] = None,
    precision: PrecisionOpt = "auto",
    runtime: RuntimeOpt = "auto",
    views: ViewsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly the measured keys as JSON.")] = False,
) -> None:
    """Measure each stage of a scan in steady state, and a real scan, in one run: images/s and CPU ms per image of
    read, decode, provenance, embed, detail and query; the scan end to end; Pillow alone and a Pillow + DataLoader
    pipeline with the same model as baselines; start-up apart. Each stage runs once untimed, then is timed over
    whole passes of the images for at least 2 s; the scan's rate counts the rows after its first batch, so give it
    at least 8 batches of images (the default 512 at batch size 32 gives 16). Key by key: scanner/bench.py.

    \b
    Examples (record the machine's `lscpu` flags, the command and the date with the figures):
      imgscan bench --json
      imgscan bench --images 64 --size 1024 --format png --json
      imgscan bench --images-dir ../photos/native --batch-size 8 --json
    """
    from scanner.bench import IMAGE_FORMATS, run_bench

    embedder = _embedder(model, device, precision, runtime, views, threads)
    if images_dir is not None and not images_dir.is_dir():
        raise UsageError(f"--images-dir {images_dir}: not a directory")
    if image_format not in IMAGE_FORMATS:
        raise UsageError(f"--format {image_format}: expected one of {', '.join(IMAGE_FORMATS)}")
    try:
        result = run_bench(embedder, images_dir=images_dir, n_images=images, batch_size=batch_size, support=support,
                           size=size, fmt=image_format)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"imgscan bench: {embedder.model_id} on {embedder.device}", show_edge=False)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:,.3g}" if isinstance(value, float) and abs(value) < 10 else
                      f"{value:,.1f}" if isinstance(value, float) else str(value))
    out_console.print(table)


@app.command()
def version() -> None:
    """Print imgscan's version."""
    out_console.print(__version__)


def _register_commands() -> None:
    """eval, report and explain (scanner.evaluation), and commands other installed packages provide through the
    `imgscan.commands` entry point (train: `pip install imgscan` installs it; a build without it has none)."""
    from importlib.metadata import entry_points

    from scanner.evaluation.cli import register as register_evaluation

    register_evaluation(app)
    for entry in entry_points(group="imgscan.commands"):
        entry.load()(app)


_register_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
