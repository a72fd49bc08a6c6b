"""Outputs of `imgscan eval`: metrics.json, predictions.parquet, PNG figures, report.html, terminal tables."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scanner import __version__
from scanner.evaluation import html_report as H
from scanner.evaluation import plots
from scanner.evaluation.evaluate import (HEADLINE, MAIN_METHOD, EvalResult, Features, Judged, compute_metrics,
                                         headline, mean_std)
from scanner.evaluation.metrics import nan_to_none
from scanner.dataset import Dataset
from scanner.schema import NEIGHBOR_TYPE
from scanner.verdict import UNKNOWN_LABEL

HEADLINE_TITLES = {
    "mean_det_acc": "det acc", "mean_det_bal_acc": "det bal acc", "mean_det_auc": "det AUC",
    "closed_macro_f1": "F1 closed", "open_macro_f1": "F1 open", "open_set_auroc": "OS AUROC", "oscr": "OSCR",
    "unseen_real_called_ai": "unseen real called AI", "ai_score_ece": "ai_score ECE",
    "ai_score_ece_balanced": "ai_score ECE (balanced)",
}

PREDICTION_SCHEMA = pa.schema([
    ("method", pa.string()), ("shots", pa.int32()), ("fold", pa.int32()), ("path", pa.string()),
    ("class", pa.string()), ("true_label", pa.string()), ("is_ai_true", pa.bool_()), ("group", pa.string()),
    ("role", pa.string()), ("label", pa.string()), ("closed_set_label", pa.string()), ("is_ai", pa.bool_()),
    ("ai_score", pa.float32()), ("open_set_score", pa.float32()), ("open_set_threshold", pa.float32()),
    ("detail", pa.float32()), ("neighbors", pa.list_(NEIGHBOR_TYPE)), ("error", pa.string()),
])


def pooled_judged(result: EvalResult, ds: Dataset, method: str, shots: int) -> Judged:
    """One Judged holding the queries of every fold at `shots` (each query image is in exactly one fold)."""
    parts = [result.judged[(method, shots, f)] for f in result.folds]
    first = parts[0]
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    j = Judged(method=method, split=first.split, query_idx=cat("query_idx"), label=cat("label"),
               closed_set_label=cat("closed_set_label"), is_ai=cat("is_ai"), ai_score=cat("ai_score"), open_set_score=cat("open_set_score"),
               threshold=float(np.mean([p.threshold for p in parts])), neighbor_labels=first.neighbor_labels,
               neighbor_ids=first.neighbor_ids, neighbor_sims=first.neighbor_sims)
    j.metrics = compute_metrics(ds, j)
    return j


def sweep_table(result: EvalResult) -> dict[str, list[dict]]:
    out = {}
    for m in result.methods:
        rows = []
        for n in result.shots:
            stats = mean_std([headline(result.judged[(m.name, n, f)].metrics) for f in result.folds])
            rows.append({"shots": n, **stats})
        out[m.name] = rows
    return out


def _prediction_rows(result: EvalResult, ds: Dataset, feats: Features, shots: int) -> pa.Table:
    cols = {name: [] for name in PREDICTION_SCHEMA.names}
    for m in result.methods:
        detail = m.judged_detail(feats)
        for f in result.folds:
            j = result.judged[(m.name, shots, f)]
            at = {int(q): r for r, q in enumerate(j.query_idx)}
            for i in range(len(ds)):
                r = at.get(i)
                cols["method"].append(m.name)
                cols["shots"].append(shots)
                cols["fold"].append(f)
                cols["path"].append(ds.paths[i])
                cols["class"].append(ds.labels[i])
                cols["true_label"].append(j.split.true_label[i])
                cols["is_ai_true"].append(bool(ds.is_ai[i]))
                cols["group"].append(ds.groups[i])
                cols["role"].append(j.split.role[i] if feats.ok[i] else
                                    "duplicate" if ds.paths[i] in feats.duplicates else "error")
                cols["error"].append(feats.errors.get(ds.paths[i]))
                if r is None:
                    for name in ("label", "closed_set_label", "is_ai", "ai_score", "open_set_score", "open_set_threshold",
                                 "detail", "neighbors"):
                        cols[name].append(None)
                    continue
                cols["label"].append(j.label[r])
                cols["closed_set_label"].append(j.closed_set_label[r])
                cols["is_ai"].append(bool(j.is_ai[r]))
                cols["ai_score"].append(float(j.ai_score[r]))
                cols["open_set_score"].append(float(j.open_set_score[r]))
                cols["open_set_threshold"].append(j.threshold)
                cols["detail"].append(None if detail is None else float(detail[i]))
                cols["neighbors"].append([
                    {"label": lab, "support_id": sid, "similarity": float(s)}
                    for lab, sid, s in zip(j.neighbor_labels[r], j.neighbor_ids[r], j.neighbor_sims[r])
                ])
    return pa.table({n: pa.array(cols[n], type=PREDICTION_SCHEMA.field(n).type) for n in PREDICTION_SCHEMA.names},
                    schema=PREDICTION_SCHEMA)


def write_outputs(result: EvalResult, ds: Dataset, feats: Features, out: Path, info: dict, use_umap: bool = True,
                  seed: int = 0) -> dict:
    """Write everything under `out`; return the metrics document (as written to metrics.json)."""
    out.mkdir(parents=True, exist_ok=True)
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    main_n = result.main_shots
    names = [m.name for m in result.methods]
    pooled = {name: pooled_judged(result, ds, name, main_n) for name in names}
    sweep = sweep_table(result)
    main = pooled[MAIN_METHOD]
    has_unknown = bool(main.split.unknown)

    # --- figures -------------------------------------------------------------------------------------------
    figs = {}
    conf = main.metrics["confusion"]
    figs["confusion"] = plots.confusion_png(conf["rows"], conf["columns"], conf["matrix"], fig_dir / "confusion.png",
                                            f"{MAIN_METHOD}: confusion at {main_n} shots (rows: true class)")
    cls = ds.labels[main.query_idx]
    ai_true = ds.is_ai[main.query_idx]
    per_gen = {}
    for g in main.metrics["detection"]["per_generator"]:
        m = (cls == g) | (cls == "real")
        per_gen[g + ("" if g in main.split.enrolled else " (unknown)")] = (ai_true[m], main.ai_score[m])
    pooled_curves = {name: (ds.is_ai[p.query_idx], p.ai_score) for name, p in pooled.items()}
    figs["roc"] = plots.roc_png(per_gen, pooled_curves, fig_dir / "roc.png", f"Detection ROC at {main_n} shots (ai_score)")
    cal = main.metrics["calibration"]
    figs["reliability"] = plots.reliability_png(
        cal["reliability"], fig_dir / "reliability.png",
        f"{MAIN_METHOD}: ai_score reliability at {main_n} shots (ECE {cal['ece']:.3f}, balanced {cal['ece_balanced']:.3f})")
    if has_unknown:
        curves = {}
        for name, p in pooled.items():
            true = p.split.true_label[p.query_idx]
            known = true != UNKNOWN_LABEL
            curves[name] = (p.closed_set_label[known] == true[known], -p.open_set_score[known], -p.open_set_score[~known])
        figs["oscr"] = plots.oscr_png(curves, fig_dir / "oscr.png",
                                      f"OSCR at {main_n} shots (unknown: {', '.join(main.split.unknown)})")
    figs["shots"] = plots.shots_png(sweep, fig_dir / "shots.png", "Shots sweep"
                                    + (" (mean ± std over folds)" if len(result.folds) > 1 else ""))
    first = result.judged[(MAIN_METHOD, main_n, result.folds[0])]
    sel = np.flatnonzero(np.isin(first.split.role, ["support", "query"]) & feats.ok)
    emb_method = next(m for m in result.methods if m.name == MAIN_METHOD)
    xy, how = plots.project_2d(emb_method.features[sel], seed=seed, use_umap=use_umap)
    lab = np.array([c + (" (unknown)" if c in first.split.unknown else "") for c in ds.labels[sel]], dtype=object)
    figs["umap"] = plots.embedding_map_png(xy, lab, first.split.role[sel], fig_dir / "embedding_map.png",
                                           f"{MAIN_METHOD} embeddings, {how}, {main_n} shots"
                                           + (f", fold {result.folds[0]}" if result.folds[0] is not None else ""))

    # --- per-image Parquet -----------------------------------------------------------------------------------
    pq.write_table(_prediction_rows(result, ds, feats, main_n), out / "predictions.parquet", compression="zstd")

    # --- metrics.json ----------------------------------------------------------------------------------------
    runs = []
    for (name, n, f), j in result.judged.items():
        runs.append({"method": name, "shots": n, "fold": f, "threshold": j.threshold,
                     "split": j.split.counts(ds.labels), "metrics": j.metrics})
    doc = {
        "imgscan_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **info,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": __import__("os").cpu_count()},
        "embedding_layout": how,
        "methods": {m.name: {"model": m.model_id, "kind": m.kind, "description": m.description,
                             "feature_seconds": round(m.feature_seconds, 2),
                             "judge_seconds": round(result.seconds[m.name], 2)} for m in result.methods},
        "main_shots": main_n,
        "main": {name: {"headline": headline(p.metrics), "metrics": p.metrics} for name, p in pooled.items()},
        "sweep": sweep,
        "runs": runs,
        "figures": {k: str(v.relative_to(out)) for k, v in figs.items()},
    }
    doc = nan_to_none(doc)
    (out / "metrics.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    (out / "report.html").write_text(render_html(doc, figs, pooled, result, ds), encoding="utf-8")
    (out / "summary.md").write_text(render_markdown(doc), encoding="utf-8")
    return doc


def _md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(H.fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def sweep_pivot(doc: dict, key: str, with_std: bool) -> tuple[list[str], list[list]]:
    shots = [r["shots"] for r in next(iter(doc["sweep"].values()))]
    rows = []
    for name, sw in doc["sweep"].items():
        cells = []
        for r in sw:
            v = r[key]
            cells.append("–" if v["mean"] is None else H.fmt(v["mean"]) + (f" ± {H.fmt(v['std'])}" if with_std and v["n"] > 1 else ""))
        rows.append([name] + cells)
    return ["method"] + [f"{n} shots" for n in shots], rows


def render_markdown(doc: dict) -> str:
    """The figures as Markdown tables, ready to paste into docs."""
    main_n = doc["main_shots"]
    proto = doc["protocol"]
    with_std = len(proto["folds"]) > 1
    out = [f"Command: `{doc.get('command', '')}`  \n",
           f"Data: {doc['data']['source']} ({doc['data']['n_images']} images, {doc['data']['used']} used); "
           f"model `{doc['methods'][MAIN_METHOD]['model']}`; unknown: {', '.join(proto['unknown']) or 'none'}"
           f"{' (every fold)' if proto.get('unknown_every_fold') else ''}; "
           f"k = {proto['k']}; "
           + ("one seeded group split (seed " + str(proto["seed"]) + ")" if proto["folds"] == [None]
              else "query folds: " + ", ".join(str(f) for f in proto["folds"]))
           + f"; written {doc['created_at']} on "
           f"{doc['machine']['platform']} ({doc['machine']['cpus']} CPUs).\n\n",
           f"**At {main_n} shots**\n\n"]
    out.append(_md_table(["method"] + [HEADLINE_TITLES[k] for k, _ in HEADLINE],
                         [[name] + [m["headline"][k] for k, _ in HEADLINE] for name, m in doc["main"].items()]))
    for key in ("closed_macro_f1", "mean_det_auc", "mean_det_bal_acc", "oscr"):
        header, rows = sweep_pivot(doc, key, with_std)
        out.append(f"\n**Shots sweep: {HEADLINE_TITLES[key]}**\n\n" + _md_table(header, rows))
    per_gen = doc["main"][MAIN_METHOD]["metrics"]["detection"]["per_generator"]
    others = [n for n in doc["main"] if n != MAIN_METHOD]
    rows = []
    for g, v in per_gen.items():
        rows.append([g + ("" if v["enrolled"] else " (unknown)"), str(v["n_generated"]), v["balanced_accuracy"], v["auc"]]
                    + [doc["main"][n]["metrics"]["detection"]["per_generator"].get(g, {}).get("auc") for n in others])
    out.append(f"\n**Detection per generator at {main_n} shots ({MAIN_METHOD})**\n\n"
               + _md_table(["generator", "queries", "bal. acc", "AUC"] + [f"{n} AUC" for n in others], rows))
    att = doc["main"][MAIN_METHOD]["metrics"]["attribution"]["per_class"]
    closed = doc["main"][MAIN_METHOD]["metrics"]["closed_set_attribution"]["per_class"]
    rows = [[c, str(v["support"]), v["precision"], v["recall"], v["f1"], closed.get(c, {}).get("f1")] for c, v in att.items()]
    out.append(f"\n**Attribution per class at {main_n} shots ({MAIN_METHOD})**\n\n"
               + _md_table(["class", "queries", "precision", "recall", "F1", "F1 closed"], rows))
    return "".join(out)


def render_html(doc: dict, figs: dict[str, Path], pooled: dict[str, Judged], result: EvalResult, ds: Dataset) -> str:
    main_n = doc["main_shots"]
    b = ["<h1>imgscan evaluation</h1>"]
    proto = doc["protocol"]
    b.append('<p class="meta">'
             f"Data: <code>{H.esc(doc['data']['source'])}</code>, {doc['data']['n_images']} images in "
             f"{len(doc['data']['counts'])} classes ({doc['data']['decoded']} decoded, "
             f"{doc['data']['duplicates_left_out']} byte-identical duplicates left out). "
             f"Model: <code>{H.esc(doc['methods'][MAIN_METHOD]['model'])}</code>. "
             f"Shots: {', '.join(map(str, proto['shots']))} (main: {main_n}); unknown classes: "
             f"{H.esc(', '.join(proto['unknown']) or 'none')}{' (every fold)' if proto.get('unknown_every_fold') else ''}; "
             f"{'folds: ' + ', '.join(map(str, proto['folds'])) if proto['folds'] != [None] else 'one seeded group split (seed ' + str(proto['seed']) + ')'}; "
             f"k = {proto['k']}.<br>Command: <code>{H.esc(doc.get('command', ''))}</code><br>"
             f"Written {H.esc(doc['created_at'])} by imgscan {H.esc(doc['imgscan_version'])} on "
             f"{H.esc(doc['machine']['platform'])} ({doc['machine']['cpus']} CPUs).</p>")
    b.append(f"<h2>Summary at {main_n} shots</h2>")
    rows = []
    for name, m in doc["main"].items():
        rows.append([name] + [m["headline"][k] for k, _ in HEADLINE])
    b.append(H.table(["method"] + [HEADLINE_TITLES[k] for k, _ in HEADLINE], rows))
    b.append('<p class="meta">Detection: real vs each enrolled generator (accuracy of is_ai, AUC of ai_score), '
             "averaged over generators. Attribution: macro F1 over enrolled classes with the closed-set label "
             "(known queries), and over enrolled classes plus <code>unknown</code> with the final label. "
             "Open set: AUROC of open_set_score (unknown vs known queries), OSCR from the real CCR/FPR curve. "
             "Metrics at the main shots pool the queries of all folds.</p>")
    if "metadata" in doc["main"]:
        md = doc["main"]["metadata"]["headline"]
        n_cls = len(pooled["metadata"].split.enrolled)
        b.append(f'<p class="meta">Metadata-only baseline (width, height, format, bytes): mean detection AUC '
                 f"{H.fmt(md['mean_det_auc'])}, closed-set macro F1 {H.fmt(md['closed_macro_f1'])} "
                 f"(chance: AUC 0.5, macro F1 about {1 / n_cls:.3f} for {n_cls} classes).</p>")
    b.append("<h2>Shots sweep</h2>")
    header = ["method", "shots"] + [HEADLINE_TITLES[k] for k, _ in HEADLINE]
    rows = []
    for name, sw in doc["sweep"].items():
        for r in sw:
            rows.append([name, r["shots"]] + [
                H.RawHTML(H.fmt(r[k]["mean"]) + (f" ± {H.fmt(r[k]['std'])}" if len(proto["folds"]) > 1 and r[k]["mean"] is not None else ""))
                for k, _ in HEADLINE])
    b.append(H.table(header, rows))
    for key in ("closed_macro_f1", "mean_det_auc"):
        ph, prow = sweep_pivot(doc, key, len(proto["folds"]) > 1)
        b.append(f"<p><b>{H.esc(HEADLINE_TITLES[key])} by shots</b></p>" + H.table(ph, [[H.RawHTML(H.esc(c)) for c in r] for r in prow]))
    b.append(H.figure(figs["shots"], "Shots sweep: attribution macro F1, mean detection AUC and OSCR per method."))
    b.append("<h2>Detection per generator</h2>")
    main = doc["main"][MAIN_METHOD]["metrics"]["detection"]["per_generator"]
    rows = []
    for g, v in main.items():
        r = [g + ("" if v["enrolled"] else " (unknown)"), v["n_generated"], v["accuracy"], v["balanced_accuracy"], v["auc"]]
        for name in doc["main"]:
            if name != MAIN_METHOD:
                r.append(doc["main"][name]["metrics"]["detection"]["per_generator"].get(g, {}).get("auc"))
        rows.append(r)
    b.append(H.table(["generator", "queries", f"{MAIN_METHOD} acc", f"{MAIN_METHOD} bal. acc", f"{MAIN_METHOD} AUC"]
                     + [f"{n} AUC" for n in doc["main"] if n != MAIN_METHOD], rows))
    b.append(H.figure(figs["roc"], "ROC of ai_score: real vs each generator (left), real vs all generated per method (right)."))
    cal = doc["main"][MAIN_METHOD]["metrics"]["calibration"]
    b.append(f'<p class="meta">ai_score calibration: expected calibration error {cal["ece"]:.3f} over the queries as they '
             f'come, {cal["ece_balanced"]:.3f} with real and AI queries weighted equally (the prior the index '
             "calibrates for).</p>")
    b.append(H.figure(figs["reliability"], "Reliability of ai_score: observed share of AI images per bin of predicted "
                      "probability (the diagonal is perfect calibration); bar height: queries per bin."))
    b.append("<h2>Attribution per class</h2>")
    att = doc["main"][MAIN_METHOD]["metrics"]["attribution"]["per_class"]
    closed = doc["main"][MAIN_METHOD]["metrics"]["closed_set_attribution"]["per_class"]
    rows = [[c, v["support"], v["precision"], v["recall"], v["f1"], closed.get(c, {}).get("f1")] for c, v in att.items()]
    b.append(H.table(["class", "queries", "precision", "recall", "F1", "F1 (closed set)"], rows))
    b.append(H.figure(figs["confusion"], "Confusion matrix (row-normalised colour, counts in cells); the last column is `unknown`."))
    if "oscr" in figs:
        b.append("<h2>Open set</h2>")
        rows = []
        for name, m in doc["main"].items():
            o = m["metrics"]["open_set"]
            rows.append([name, o.get("auroc"), o.get("oscr"), o.get("known_accepted"), o.get("unknown_rejected"), o.get("threshold")])
        b.append(H.table(["method", "AUROC", "OSCR", "known accepted", "unknown rejected", "threshold (mean)"], rows))
        rows = [[name, c, v["n"], v["auroc"], v["rejected"], v["called_ai"]] for name, m in doc["main"].items()
                for c, v in m["metrics"]["open_set"].get("per_unknown_class", {}).items()]
        b.append(H.table(["method", "never-enrolled class", "queries", "AUROC (vs known queries)", "rejected",
                          "called AI"], rows))
        b.append(H.figure(figs["oscr"], "OSCR: correct classification rate of known queries against the share of unknown queries accepted, from the real curve."))
    b.append("<h2>Embedding map</h2>")
    b.append(H.figure(figs["umap"], f"Support and query embeddings of {MAIN_METHOD} ({doc['embedding_layout']})."))
    b.append("<h2>Split</h2>")
    first = result.judged[(MAIN_METHOD, main_n, result.folds[0])]
    counts = first.split.counts(ds.labels)
    rows = [[c, v["support"], v["query"], v["excluded"]] for c, v in counts.items()]
    b.append(f'<p class="meta">At {main_n} shots{"" if result.folds[0] is None else ", fold " + str(result.folds[0])}. '
             "Excluded: images sharing a group (prompt or photo) with a support image but not enrolled, and, with "
             "folds, images of other folds not drawn as support.</p>")
    b.append(H.table(["class", "support", "query", "excluded"], rows))
    b.append("<h2>Methods</h2>")
    rows = [[n, m["model"], m["description"], m["feature_seconds"], m["judge_seconds"]] for n, m in doc["methods"].items()]
    b.append(H.table(["method", "model / features", "what", "feature s", "index+judge s"], rows, digits=1))
    return H.page("imgscan evaluation", "".join(b))


def print_tables(doc: dict, console) -> None:
    from rich.table import Table

    from scanner.progress import table_console

    console = table_console(console)

    t = Table(title=f"imgscan eval at {doc['main_shots']} shots", show_edge=False)
    t.add_column("method")
    for k, _ in HEADLINE:
        t.add_column(HEADLINE_TITLES[k], justify="right")
    for name, m in doc["main"].items():
        t.add_row(name, *[H.fmt(m["headline"][k]) for k, _ in HEADLINE])
    console.print(t)
    t = Table(title="shots sweep (mean over folds)", show_edge=False)
    t.add_column("method")
    t.add_column("shots", justify="right")
    for k, _ in HEADLINE:
        t.add_column(HEADLINE_TITLES[k], justify="right")
    for name, rows in doc["sweep"].items():
        for r in rows:
            t.add_row(name, str(r["shots"]), *[H.fmt(r[k]["mean"]) for k, _ in HEADLINE])
    console.print(t)
    t = Table(title=f"{MAIN_METHOD}: detection per generator", show_edge=False)
    for c in ("generator", "queries", "accuracy", "bal. acc", "AUC"):
        t.add_column(c, justify="left" if c == "generator" else "right")
    for g, v in doc["main"][MAIN_METHOD]["metrics"]["detection"]["per_generator"].items():
        t.add_row(g + ("" if v["enrolled"] else " (unknown)"), str(v["n_generated"]), H.fmt(v["accuracy"]),
                  H.fmt(v["balanced_accuracy"]), H.fmt(v["auc"]))
    console.print(t)
