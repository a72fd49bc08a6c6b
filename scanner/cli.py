"""The `imgscan` command line (Typer). Commands parse arguments, open the model and index, and hand over to
the stage modules; every user-facing failure is a one-line `imgscan: error: ...` with exit status 2."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scanner import __version__
from scanner.errors import UsageError
from scanner.paths import INDEX_ENV, MODEL_ENV, default_model_dir, index_dir_for_reading, index_dir_for_writing

app = typer.Typer(
    name="imgscan",
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
index_app = typer.Typer(help="Inspect or edit the support index (what is enrolled).", no_args_is_help=True)
app.add_typer(index_app, name="index")

out_console = Console()
err_console = Console(stderr=True)

IndexOpt = Annotated[
    Optional[Path],
    typer.Option("--index", help=f"Support index directory. Default: ${INDEX_ENV}, else ~/.local/share/imgscan/index (XDG)."),
]
ModelOpt = Annotated[
    Optional[Path],
    typer.Option("--model", help=f"Model directory (embedder.pt + model_card.json). Default: ${MODEL_ENV}, else the model shipped with imgscan."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, max=4096, help="Images per decode/embed batch.")]
RuntimeOpt = Annotated[str, typer.Option("--runtime", help="torch, or openvino (CPU only, about 2x faster there; pip install 'imgscan\\[openvino]').")]
ViewsOpt = Annotated[Optional[int], typer.Option("--views", min=1, max=9, help="Native-pixel crops per image 1.5x the input size or larger, their embeddings averaged: more views read more of a large photo (cost: one embedding each). Default: the model card's (5 for the shipped model). Enroll and scan with the same value.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (fp16 on CUDA; on CPU bf16 where the CPU has native bf16, else fp32), fp32, fp16 (CUDA) or bf16 (CPU).")]


def _fail(message: str) -> None:
    # The message is plain text, never markup: paths and names like imgscan[ray] hold square brackets.
    err_console.print(f"[bold red]imgscan: error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _model_dir(model: Optional[Path]) -> Path:
    if model is not None:
        return model
    found = default_model_dir()
    if found is None:
        raise UsageError(
            "no model: this build ships no default model. Pass --model DIR (a directory with embedder.pt and "
            f"model_card.json, e.g. one made by `imgscan train`), or set ${MODEL_ENV}"
        )
    return found


def _model_sha(model: Optional[Path]) -> str:
    """sha256 of the weights of the model in use (from its card), or "" when there is none."""
    from scanner.model import read_card

    try:
        return read_card(_model_dir(model)).weights_sha256
    except UsageError:
        return ""


def _embedder(model: Optional[Path], device: str, precision: str = "auto", runtime: str = "torch",
              views: Optional[int] = None):
    from scanner.embed import Embedder, resolve_device

    return Embedder(_model_dir(model), device=resolve_device(device), precision=precision, runtime=runtime,
                    views=views)


def _handle_signals() -> None:
    """SIGTERM behaves like Ctrl-C: completed rows are kept and the run can be resumed."""
    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)


@app.command()
def scan(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories to scan (directories recursively).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Verdict Parquet file to write. Re-running the same command resumes an interrupted scan.")],
    index: IndexOpt = None,
    model: ModelOpt = None,
    k: Annotated[int, typer.Option("--k", min=1, max=256, help="Neighbours that vote.")] = 11,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    runtime: RuntimeOpt = "torch",
    views: ViewsOpt = None,
    skip_known: Annotated[Optional[list[Path]], typer.Option("--skip-known", help="Earlier verdict files: images whose sha is in them are skipped (no row). Repeatable.")] = None,
    all_files: Annotated[bool, typer.Option("--all-files", help="Scan every file, not only image file extensions (.jpg .png .webp .gif ...).")] = False,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, help="Refuse images larger than this (decompression bombs).")] = 100_000_000,
    readers: Annotated[int, typer.Option("--readers", min=1, max=64, help="Threads reading and hashing files.")] = 4,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing, finished --out file.")] = False,
    isolate_decode: Annotated[bool, typer.Option("--isolate-decode/--in-process-decode", help="On CPU, decode in a child process so a decoder crash or hang on a hostile file costs only that file's row.")] = True,
    decode_timeout: Annotated[float, typer.Option("--decode-timeout", min=0.1, help="Seconds one image may take to decode (isolated decoding) before it gets an error row.")] = 20.0,
    # --- engine options (issue 6; scanner/engines/ray_engine.py, docs/ray.md) ---
    engine: Annotated[str, typer.Option("--engine", help="local (this machine) or ray (a Ray cluster: pip install 'imgscan\\[ray]'; see docs/ray.md).")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", help="--engine ray: auto (the cluster this machine belongs to) or ray://HOST:10001. Default: start a local Ray.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="--engine ray: verdict actors, each loading the model and index once. Default: one per GPU; without GPUs, CPUs/2.")] = None,
    gpus_per_worker: Annotated[Optional[float], typer.Option("--gpus-per-worker", min=0.0, help="--engine ray: GPUs per actor (fractions share a GPU). Default: 1 when the cluster has GPUs, else 0.")] = None,
    # --- end engine options ---
) -> None:
    """Scan images into a Parquet file of verdicts: one row per file, with label, scores, neighbours, errors.

    \b
    Columns: path, sha, bytes, width, height, label, closed_set_label, is_ai, ai_score, open_set_score,
    neighbors, error, model, index, scanned_at (see README). A file that cannot be read or decoded gets a
    row with `error` set; the run goes on and exits 0. Kill it at any time: running the same command again
    continues where it stopped.

    \b
    Examples:
      imgscan scan ./crawl --out verdicts.parquet
      imgscan scan ./crawl/2026-11-22 --out night.parquet --skip-known night-*.parquet
    """
    from indexes import SupportIndex
    from scanner.pipeline import ScanOptions, count_files, run_scan, scan_fingerprint, scan_metadata
    from scanner.progress import ScanProgress
    from scanner.walk import check_roots

    _handle_signals()
    try:
        roots = check_roots(paths)
        out = out.expanduser()
        if not out.parent.is_dir():
            raise UsageError(f"--out {out}: directory {out.parent} does not exist")
        if not os.access(out.parent, os.W_OK):
            raise UsageError(f"--out {out}: directory {out.parent} is not writable")
        # --- --engine ray (issue 6; scanner/engines/ray_engine.py): everything below this block is the local engine ---
        if engine not in ("local", "ray"):
            raise UsageError(f"--engine {engine}: expected local or ray")
        if engine == "local" and (address is not None or workers is not None or gpus_per_worker is not None):
            raise UsageError("--address, --workers and --gpus-per-worker need --engine ray")
        if engine == "ray":
            from scanner.engines.ray_engine import RayScanOptions, interrupted_message, run_ray_scan

            ray_opts = RayScanOptions(
                roots=roots, out=out, model_dir=_model_dir(model), index_dir=index_dir_for_reading(index, _model_sha(model)), k=k,
                batch_size=batch_size, device=device, skip_known=list(skip_known or []), all_files=all_files,
                max_pixels=max_pixels, readers=readers, overwrite=overwrite, address=address, workers=workers,
                gpus_per_worker=gpus_per_worker, isolate_decode=isolate_decode, decode_timeout_s=decode_timeout,
                precision=precision, runtime=runtime, views=views,
            )
            try:
                with ScanProgress("scanning (ray)") as progress:
                    ray_summary = run_ray_scan(ray_opts, progress)
            except KeyboardInterrupt:
                err_console.print(interrupted_message(ray_opts))
                raise typer.Exit(130)
            if ray_summary is None:
                err_console.print(f"imgscan: {out} is already complete; nothing to do (pass --overwrite to scan again)")
            else:
                _print_summary(ray_summary)
            return
        # --- end --engine ray ---
        partial = out.with_name(out.name + ".partial")
        if out.exists() and not partial.exists():
            if not overwrite:
                err_console.print(f"imgscan: {out} is already complete; nothing to do (pass --overwrite to scan again)")
                return
            out.unlink()
        embedder = _embedder(model, device, precision, runtime, views)
        index_dir = index_dir_for_reading(index, embedder.card.weights_sha256)
        support = SupportIndex.open(index_dir)
        support.check_model(embedder.model_id, embedder.card.weights_sha256)
        support.check_not_empty()
        opts = ScanOptions(roots=roots, out=out, k=k, batch_size=batch_size, skip_known=list(skip_known or []),
                           all_files=all_files, max_pixels=max_pixels, readers=readers,
                           isolate_decode=isolate_decode, decode_timeout_s=decode_timeout)
        fingerprint = scan_fingerprint(roots, embedder.model_id, k, all_files, opts.skip_known,
                                       embedder.view_spec.views)
        metadata = scan_metadata(embedder.card, support, k, embedder.precision, embedder.runtime,
                                 embedder.view_spec)
        stop_count = threading.Event()
        with ScanProgress("scanning") as progress:
            threading.Thread(target=count_files, args=(roots, all_files, stop_count, progress.set_total), daemon=True).start()
            try:
                summary = run_scan(opts, embedder, support, progress, fingerprint, metadata)
            finally:
                stop_count.set()
    except UsageError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        err_console.print(f"imgscan: interrupted; completed rows are kept in {out}.partial; run the same command again to continue")
        raise typer.Exit(130)
    except OSError as exc:  # disk full, file size limit, output removed under us: the journal so far is intact
        _fail(f"writing {out}: {exc.strerror or exc}; rows completed so far are kept in {out}.partial; "
              "fix the cause and run the same command again to continue")
    _print_summary(summary)


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
    runtime: RuntimeOpt = "torch",
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
    from indexes import enroll_embeddings
    from indexes.support_index import check_label
    from scanner.pipeline import embedded_batches
    from scanner.progress import ScanProgress
    from scanner.schema import display_path
    from scanner.walk import check_roots

    import numpy as np

    try:
        check_label(name)
        roots = check_roots(paths)
        embedder = _embedder(model, device, precision, runtime, views)
        index_dir = index_dir_for_writing(index, embedder.card.weights_sha256)
        embeddings, shas, sources, failed = [], [], [], []
        with ScanProgress(f"embedding {name}") as progress:
            for reads, decoded, emb in embedded_batches(roots, embedder, batch_size=batch_size):
                ok = [i for i, r in enumerate(reads) if r.error is None and decoded.errors[i] is None]
                for i, r in enumerate(reads):
                    if i not in ok:
                        failed.append((display_path(r.path)[0], r.error or decoded.errors[i]))
                embeddings.append(emb)
                shas.extend(reads[i].sha for i in ok)
                sources.extend(display_path(reads[i].path)[0] for i in ok)
                progress.advance(len(reads), len(reads) - len(ok))
        if not shas:
            raise UsageError(f"no decodable image found under {', '.join(map(str, paths))}")
        result = enroll_embeddings(index_dir, name, np.concatenate(embeddings), shas, sources,
                                   embedder.model_id, embedder.card.weights_sha256)
    except UsageError as exc:
        _fail(str(exc))
    for path, err in failed:
        err_console.print(f"skipped {path}: {err}", highlight=False)
    for path, label in result.duplicates:
        err_console.print(f"already enrolled as {label}: {path}", highlight=False)
    m = result.manifest
    err_console.print(
        f"enrolled {result.added} image(s) as {name!r} into {index_dir} (generation {m.generation}; "
        f"{m.counts.get(name, 0)} in class, {m.total} in index; open-set threshold {m.open_set.threshold:.4f})",
        highlight=False,
    )


@index_app.command("show")
def index_show(
    index: IndexOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Show the index: model, classes and counts, open-set threshold, files (all verified)."""
    from indexes import SupportIndex

    index_dir = index_dir_for_reading(index, _model_sha(None))
    try:
        support = SupportIndex.open(index_dir)
    except UsageError as exc:
        _fail(str(exc))
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
        f"{os_.calibrated_on} support images)", highlight=False,
    )


@index_app.command("remove")
def index_remove(
    label: Annotated[str, typer.Argument(help="Class to remove, with all its support images.", show_default=False)],
    index: IndexOpt = None,
) -> None:
    """Remove a class from the index (the HNSW graph is rebuilt, the threshold recalibrated)."""
    from indexes import remove_label

    index_dir = index_dir_for_writing(index, _model_sha(None))
    try:
        removed, m = remove_label(index_dir, label)
    except UsageError as exc:
        _fail(str(exc))
    err_console.print(f"removed {removed} support image(s) of {label!r}; {m.total} left (generation {m.generation})")


@app.command()
def bench(
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    images: Annotated[int, typer.Option("--images", min=1, help="How many test JPEGs to generate (at the model's input size).")] = 256,
    images_dir: Annotated[Optional[Path], typer.Option("--images-dir", help="Benchmark on these images instead of generated ones.")] = None,
    batch_size: BatchOpt = 32,
    support: Annotated[int, typer.Option("--support", min=16, help="Synthetic support vectors in the benchmark index.")] = 2000,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="torch CPU threads (default: torch's choice).")] = None,
    precision: PrecisionOpt = "auto",
    runtime: RuntimeOpt = "torch",
    views: ViewsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly the measured keys as JSON.")] = False,
) -> None:
    """Measure throughput: decode_ips, embed_ips, query_ips, end_to_end_ips (a real scan) and peak_rss_mb.

    \b
    Example (record the machine and the command with the figures):
      imgscan bench --images 512 --batch-size 32 --json
    """
    from scanner.bench import run_bench

    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        embedder = _embedder(model, device, precision, runtime, views)
        if images_dir is not None and not images_dir.is_dir():
            raise UsageError(f"--images-dir {images_dir}: not a directory")
        result = run_bench(embedder, images_dir=images_dir, n_images=images, batch_size=batch_size, support=support)
    except (UsageError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"imgscan bench: {embedder.model_id} on {embedder.device}", show_edge=False)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:,.1f}")
    out_console.print(table)


@app.command()
def version() -> None:
    """Print imgscan's version."""
    out_console.print(__version__)


def _register_optional_commands() -> None:
    try:
        from train.cli import register as register_train
    except ModuleNotFoundError as exc:  # a build without the training package; any other import error is a bug
        if exc.name not in ("train", "train.cli"):
            raise
    else:
        register_train(app)
    # eval, report, explain (scanner/evaluation); matplotlib and umap are imported inside the commands
    from scanner.evaluation.cli import register as register_evaluation

    register_evaluation(app)


_register_optional_commands()


def main() -> None:
    try:
        app()
    except UsageError as exc:  # raised by commands registered from other packages
        err_console.print(f"[bold red]imgscan: error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
