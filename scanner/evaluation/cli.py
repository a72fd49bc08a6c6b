"""Typer commands `eval`, `report` and `explain`; `register(app)` adds them to imgscan's app.

Heavy imports (torch, matplotlib, umap) happen inside the commands so `imgscan --help` stays fast."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from imgscan_core.errors import UsageError
from scanner.cli_common import (BatchOpt, DeviceOpt, KOpt, MinDetailOpt, ModelOpt, PrecisionOpt, RuntimeOpt, ViewsOpt, err_console,
                                invocation)
from scanner.detail import DEFAULT_MIN_DETAIL
from scanner.paths import model_dir_or_default

EVAL_HELP = """Measure detection, attribution and open-set rejection on a labelled data set, with baselines.

\b
DATA: a folder with manifest.csv (path,label[,is_ai,source,group,fold]), a manifest CSV, or one sub-folder per
class; several DATA are judged as one data set. --holdout-sources names manifest sources never enrolled (an
unseen real source): the report gives the share of their real photos called AI.
For every shots value N each enrolled class gets N support images (at most half the class), chosen by
`group` so that no prompt or photo is on both sides; the rest are queries. Classes in --unknown are never
enrolled and should come out `unknown`. Images are judged exactly as `scan` judges them: a real support
index (HNSW, leave-one-out threshold) and k-NN votes.

\b
Baselines in the same run: spectral-knn (FFT of a high-pass residual), metadata (width, height, format,
bytes; must be near chance on a uniform kit), and the `ce` model when --ce-model is given.

\b
Writes to REPORT_DIR: metrics.json, summary.md (Markdown tables), predictions.parquet (one row per image,
method and fold at the main shots), figures/*.png (confusion, ROC, OSCR, shots sweep, UMAP of embeddings)
and report.html (self-contained).

\b
Examples:
  imgscan eval ../shared/data/kit --model scanner/default_model --out runs/eval --unknown glid-3,gaugan --query-folds 4
  imgscan eval ./my_classes --out runs/eval2 --shots 10,50 --folds
  imgscan eval ../shared/data/kit ../shared/data/photos --out runs/eval3 --query-folds 4 \
      --unknown glid-3,gaugan --holdout-sources camera:drewnoakes
"""


def _csv_list(text: str | None) -> list[str]:
    if not text:
        return []
    items = [t.strip() for t in text.split(",")]
    if any(not t for t in items):
        raise UsageError(f"{text!r}: expected a comma-separated list")
    return items


def _shots(text: str) -> list[int]:
    try:
        values = sorted({int(t) for t in _csv_list(text)})
    except ValueError:
        raise UsageError(f"--shots {text!r}: expected integers, e.g. 10,20,50,100,150") from None
    if not values or values[0] < 1:
        raise UsageError(f"--shots {text!r}: every value must be at least 1")
    return values



def _fold_list(ds, folds: bool, query_folds: Optional[str]) -> list:
    """[None] (one random split), every fold (--folds), or the --query-folds."""
    import numpy as np

    if not (folds or query_folds):
        return [None]
    present = sorted(set(int(f) for f in ds.folds.tolist() if f >= 0))
    if len(present) < 2 or np.any(ds.folds < 0):
        raise UsageError(f"--folds: {ds.source} has no fold for every image (a manifest with a fold column is needed)")
    if not query_folds:
        return present
    try:
        wanted = sorted({int(x) for x in _csv_list(query_folds)})
    except ValueError:
        raise UsageError(f"--query-folds {query_folds!r}: expected fold numbers, e.g. 4 or 3,4") from None
    bad = [f for f in wanted if f not in present]
    if bad:
        raise UsageError(f"--query-folds: no fold {bad[0]} in the data (folds: {', '.join(map(str, present))})")
    return wanted


def _embed(ds, embedder, batch_size: int, what: str, cache: Optional[Path] = None):
    """Embed the data set with a progress bar; (features, seconds)."""
    from scanner.evaluation.evaluate import embed_dataset
    from scanner.progress import ScanProgress

    t0 = time.monotonic()
    with ScanProgress(what) as progress:
        feats = embed_dataset(ds, embedder, batch_size=batch_size, progress=lambda n: progress.advance(n), cache=cache)
    return feats, time.monotonic() - t0


def _methods(ds, feats, embedder, embed_s: float, degradation, ce, baselines: bool, batch_size: int) -> list:
    """The main method and the comparisons in the same run: degraded queries, the ce model, baselines. Images
    that any of them cannot use are dropped from `feats.ok`, so every method judges the same images."""
    import tempfile

    import numpy as np

    from scanner.evaluation import baselines as B
    from scanner.evaluation.evaluate import MAIN_METHOD, Method
    from scanner.progress import ScanProgress

    methods = [Method(MAIN_METHOD, feats.embeddings, "cosine", embedder.model_id, embedder.card.weights_sha256,
                      "SupCon embedder + k-NN over the support index (what `scan` does)", embed_s)]
    if degradation is not None:
        from scanner.evaluation.degrade import degraded_copy

        with tempfile.TemporaryDirectory(prefix="imgscan-degraded-") as copies:
            degraded_ds, copied = degraded_copy(ds, degradation, Path(copies))
            degraded, seconds = _embed(degraded_ds, embedder, batch_size, f"embedding queries degraded by {degradation.name}")
        feats.ok &= copied & degraded.ok
        methods.append(Method(f"{MAIN_METHOD}@{degradation.name}", degraded.embeddings, "cosine", embedder.model_id,
                              embedder.card.weights_sha256,
                              f"queries downscaled and re-compressed ({degradation.name}), support enrolled clean",
                              seconds, support_features=feats.embeddings, detail=degraded.detail))
    if ce is not None:
        ce_feats, seconds = _embed(ds, ce, batch_size, f"embedding ce ({ce.model_id})")
        feats.ok &= ce_feats.ok
        methods.append(Method("ce", ce_feats.embeddings, "cosine", ce.model_id, ce.card.weights_sha256,
                              "model trained with --loss ce, same k-NN protocol", seconds))
    if baselines:
        t0 = time.monotonic()
        with ScanProgress("spectral features") as progress:
            spec, spec_ok = B.spectral_features(ds.paths.tolist(), progress=lambda n: progress.advance(n))
        feats.ok &= spec_ok
        spec = B.l2_normalise(B.standardise(spec.astype(np.float64)))
        methods.append(Method("spectral-knn", spec, "cosine", "spectral-fft-highpass-v1", "",
                              "log |FFT| of a 3x3 high-pass residual, 16x16 pooled + 32 radial bins, cosine k-NN",
                              time.monotonic() - t0))
        t0 = time.monotonic()
        meta = B.standardise(B.metadata_features(ds.paths.tolist()))
        methods.append(Method("metadata", meta, "euclidean", "metadata-v1", "",
                              "width, height, format, log2 bytes; Euclidean k-NN", time.monotonic() - t0))
    return methods


def run_eval(data: Path | list[Path], out: Path, model: Optional[Path] = None, shots: str = "10,20,50,100,150",
             unknown: Optional[str] = None, holdout_sources: Optional[str] = None, views: Optional[int] = None,
             folds: bool = False, query_folds: Optional[str] = None, ce_model: Optional[Path] = None,
             baselines: bool = True, seed: int = 0, k: int = 11, batch_size: int = 32, device: str = "auto",
             use_umap: bool = True, console: Console | None = None, command: str = "",
             cache: Optional[Path] = None, degrade_queries: Optional[str] = None, precision: str = "auto",
             runtime: str = "auto", min_detail: float = DEFAULT_MIN_DETAIL, unknown_every_fold: bool = False) -> dict:
    """The eval command as a function (tests call it directly)."""
    import tempfile

    from scanner.dataset import load_dataset
    from scanner.embed import Embedder, resolve_device
    from scanner.evaluation.eval_report import print_tables, write_outputs
    from scanner.evaluation.evaluate import run_protocol
    from scanner.evaluation.plots import pyplot
    from scanner.evaluation.protocol import check_sources
    from scanner.progress import ScanProgress

    console = console or err_console
    pyplot()  # no matplotlib: say so now, not after minutes of embedding
    shot_values, unknown_list, held_sources = _shots(shots), _csv_list(unknown), _csv_list(holdout_sources)
    degradation = None
    if degrade_queries:
        from scanner.evaluation.degrade import parse_degradation

        degradation = parse_degradation(degrade_queries)
    ds = load_dataset(data)
    missing = [u for u in unknown_list if u not in ds.classes]
    if missing:
        raise UsageError(f"--unknown {','.join(missing)}: no such class (classes: {', '.join(ds.classes)})")
    check_sources(ds, held_sources)  # before minutes of embedding
    fold_list = _fold_list(ds, folds, query_folds)
    if unknown_every_fold and (not unknown_list or len(fold_list) != 1 or fold_list == [None]):
        # with several query folds each never-enrolled image would be judged once per fold, counted n times
        raise UsageError("--unknown-every-fold needs --unknown and one query fold (--query-folds 4)")
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    dev = resolve_device(device)
    embedder = Embedder(model_dir_or_default(model), device=dev, precision=precision, runtime=runtime, views=views)
    feats, embed_s = _embed(ds, embedder, batch_size, f"embedding ({embedder.model_id})",
                            cache.expanduser() if cache else None)
    if not feats.ok.any():
        raise UsageError(f"{data}: no image could be decoded")
    ce = Embedder(ce_model, device=dev, precision=precision, runtime=runtime) if ce_model is not None else None
    methods = _methods(ds, feats, embedder, embed_s, degradation, ce, baselines, batch_size)
    for path, err in sorted(feats.errors.items()):
        console.print(f"skipped {path}: {err}", highlight=False)
    if feats.duplicates:
        console.print(f"left out {len(feats.duplicates)} byte-identical duplicate file(s) (see predictions.parquet, role "
                      "'duplicate')", highlight=False)

    with tempfile.TemporaryDirectory(prefix="imgscan-eval-") as work:
        with ScanProgress("judging splits") as progress:
            progress.set_total(len(shot_values) * len(fold_list) * len(methods))
            result = run_protocol(ds, feats, methods, shot_values, unknown_list, fold_list, seed, k, Path(work),
                                  on_step=lambda *a: progress.advance(1), holdout_sources=held_sources,
                                  min_detail=min_detail, unknown_every_fold=unknown_every_fold)
    info = {
        "command": command,
        "data": {"source": ds.source, "n_images": len(ds), "decoded": len(ds) - len(feats.errors),
                 "duplicates_left_out": len(feats.duplicates), "used": int(feats.ok.sum()), "counts": ds.counts(),
                 "errors": len(feats.errors)},
        "protocol": {"shots": shot_values, "unknown": unknown_list, "unknown_every_fold": unknown_every_fold,
                     "holdout_sources": held_sources,
                     "views": embedder.view_spec.views, "mirror": embedder.view_spec.mirror,
                     "resize": embedder.view_spec.resize,
                     "folds": fold_list, "seed": seed, "k": k, "min_detail": min_detail,
                     "degrade_queries": degradation.name if degradation else None,
                     "support_cap": "min(shots, floor(class size / 2))", "split_by": "group"},
        "embedding_throughput_img_s": round(len(ds) / max(embed_s, 1e-9), 2),
        "device": dev,
        "precision": embedder.precision,
        "runtime": embedder.runtime,
    }
    doc = write_outputs(result, ds, feats, out, info, use_umap=use_umap, seed=seed)
    print_tables(doc, console)
    console.print(f"wrote {out}/report.html, metrics.json, predictions.parquet, figures/", highlight=False)
    return doc


def register(app: typer.Typer) -> None:
    @app.command("eval", help=EVAL_HELP, no_args_is_help=True)
    def eval_command(
        data: Annotated[list[Path], typer.Argument(help="manifest folders / CSVs, or class folders; several are judged as one data set", show_default=False)],
        out: Annotated[Path, typer.Option("--out", "-o", help="Report directory to write.")],
        model: ModelOpt = None,
        shots: Annotated[str, typer.Option("--shots", help="Support images per class to sweep (capped at half a class).")] = "10,20,50,100,150",
        unknown: Annotated[Optional[str], typer.Option("--unknown", help="Comma-separated classes never enrolled; they should come out `unknown`.")] = None,
        unknown_every_fold: Annotated[bool, typer.Option("--unknown-every-fold", help="With one --query-folds fold: judge the --unknown classes' images of every fold, not only the query fold's (right when the model never trained on those classes; more unknown queries, a steadier open-set AUROC).")] = False,
        holdout_sources: Annotated[Optional[str], typer.Option("--holdout-sources", help="Comma-separated manifest sources never enrolled (e.g. camera:drewnoakes): all their images are queries; reports the share of their real photos called AI.")] = None,
        views: ViewsOpt = None,
        folds: Annotated[bool, typer.Option("--folds", help="One split per fold: queries = fold f, support drawn from the other folds; mean ± std.")] = False,
        query_folds: Annotated[Optional[str], typer.Option("--query-folds", help="Like --folds, but only these folds are queries, e.g. the model's validation fold (4) so no query was seen in training.")] = None,
        ce_model: Annotated[Optional[Path], typer.Option("--ce-model", help="A model trained with --loss ce, evaluated as a baseline.")] = None,
        no_baselines: Annotated[bool, typer.Option("--no-baselines", help="Skip the spectral and metadata baselines.")] = False,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the group draw.")] = 0,
        k: KOpt = 11,
        min_detail: MinDetailOpt = DEFAULT_MIN_DETAIL,
        batch_size: BatchOpt = 32,
        device: DeviceOpt = "auto",
        no_umap: Annotated[bool, typer.Option("--no-umap", help="Lay out embeddings with PCA instead of UMAP.")] = False,
        cache: Annotated[Optional[Path], typer.Option("--cache", help="An .npz of the model's embeddings keyed by file hash: reused by later runs with the same model (another --unknown or --shots without embedding again).")] = None,
        precision: PrecisionOpt = "auto",
        runtime: RuntimeOpt = "auto",
        degrade_queries: Annotated[Optional[str], typer.Option("--degrade-queries", help="Also judge degraded copies of the queries against the clean support, e.g. jpeg75,scale0.75 (downscale, then JPEG re-compression, as a re-post does); reported as method imgscan@scale0.75+jpeg75.")] = None,
    ) -> None:
        run_eval(data, out, model=model, shots=shots, unknown=unknown, holdout_sources=holdout_sources, views=views,
                 folds=folds, query_folds=query_folds, ce_model=ce_model,
                 baselines=not no_baselines, seed=seed, k=k, batch_size=batch_size, device=device,
                 use_umap=not no_umap, command=invocation(), cache=cache, degrade_queries=degrade_queries,
                 precision=precision, runtime=runtime, min_detail=min_detail,
                 unknown_every_fold=unknown_every_fold)

    @app.command("report", no_args_is_help=True)
    def report_command(
        verdicts: Annotated[Path, typer.Argument(help="Verdict Parquet file written by `imgscan scan`.", show_default=False)],
        out: Annotated[Path, typer.Option("--out", "-o", help="Report directory to write.")],
        index: Annotated[Optional[Path], typer.Option("--index", help="Support index, to show thumbnails of neighbours (their enrolled source files).")] = None,
        top: Annotated[int, typer.Option("--top", min=0, max=1000, help="How many of the most `unknown` images to show.")] = 24,
        support_root: Annotated[Optional[Path], typer.Option("--support-root", help="Folder that relative support source paths are under (e.g. the data set the index was enrolled from).")] = None,
    ) -> None:
        """Summarise a scan: counts per label, score histograms, the most `unknown` images, errors.

        \b
        Counts per label, ai_score and open_set_score histograms, the most `unknown` images with their
        neighbours, errors by kind; terminal tables plus a self-contained report.html with thumbnails.

        \b
        Examples:
          imgscan report verdicts.parquet --out runs/night-report
          imgscan report v.parquet --out rep --index scanner/default_index --support-root ../shared/data/kit
        """
        from scanner.evaluation.report import run_report

        run_report(verdicts, out, index=index, top=top, console=err_console, support_root=support_root)

    @app.command("explain", no_args_is_help=True)
    def explain_command(
        images: Annotated[list[Path], typer.Argument(help="Image file(s).", show_default=False)],
        out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write; with several images, a folder (IMAGE-explained.png each).")],
        model: ModelOpt = None,
        index: Annotated[Optional[Path], typer.Option("--index", help="Support index for the verdict in the title (default: the one scan uses).")] = None,
        views: Annotated[int, typer.Option("--views", min=8, max=5000, help="Perturbed views (occlusion patches at several scales plus random masks).")] = 400,
        fast: Annotated[bool, typer.Option("--fast", help="64 views (coarse patches + a few random masks): about 6x faster, a coarser map.")] = False,
        device: DeviceOpt = "auto",
        seed: Annotated[int, typer.Option("--seed")] = 0,
    ) -> None:
        """Show which regions of an image move its embedding most, drawn over the image.

        \b
        Many perturbed views of the image are embedded: square occlusions (filled with the image's mean
        colour) at three scales sliding over the image, plus random coarse masks (RISE/LIME-style). Each view
        scores 1 - cosine(embedding of the view, embedding of the image); a pixel's importance is the mean
        score of the views that hid it minus the mean of those that did not.

        \b
        Examples:
          imgscan explain suspicious.jpg --out suspicious-explained.png
          imgscan explain --fast flagged/*.jpg --out explained/
        """
        from scanner.evaluation.explain import explain_images

        explain_images(images, out, model_dir=model_dir_or_default(model), index=index, views=views, device=device,
                       seed=seed, console=err_console, fast=fast)
