"""`imgscan report verdicts.parquet --out DIR`: a summary of one scan, for people.

Counts per label, ai_score and open_set_score histograms, the most `unknown` images (highest open_set_score)
with their nearest support items, errors by kind with an example path each. Written as summary.json,
figures/*.png and a self-contained report.html (thumbnails embedded); tables go to the terminal.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgscan_core.errors import UsageError
from scanner.evaluation import html_report as H
from scanner.evaluation import plots
from scanner.evaluation.baselines import encode_thumbnail
from scanner.evaluation.metrics import nan_to_none
from scanner.schema import VERDICT_SCHEMA
from scanner.verdict import UNKNOWN_LABEL

NEEDED = ("path", "label", "closed_set_label", "is_ai", "ai_score", "open_set_score", "open_set_threshold",
          "neighbors", "error", "model", "index")


def error_kind(message: str) -> str:
    """The kind of an error: its text up to any details in parentheses (as `scan`'s summary counts them)."""
    return message.split(" (")[0]


def load_verdicts(path: Path) -> tuple[pa.Table, dict]:
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, pa.ArrowException) as exc:
        raise UsageError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    names = set(pf.schema_arrow.names)
    missing = [c for c in NEEDED if c not in names]
    if missing:
        raise UsageError(f"{path}: not an imgscan verdict file (missing column(s) {', '.join(missing)})")
    table = pf.read(columns=[c for c in VERDICT_SCHEMA.names if c in names])
    meta = {}
    raw = (pf.schema_arrow.metadata or {}).get(b"imgscan")
    if raw:
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = {}
    return table, meta


GALLERY_PER_LABEL = 8


def folder_breakdown(paths: list[str], labels: list, is_ai: list, ok: np.ndarray) -> dict[str, dict]:
    """Rows per top-level folder below the folder all paths share (a crawl's sites or nights)."""
    import os

    try:
        common = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    except ValueError:  # relative and absolute paths mixed
        common = ""
    out: dict[str, dict] = {}
    for p, lab, ai_flag, good in zip(paths, labels, is_ai, ok):
        rel = os.path.relpath(p, common) if common else p
        top = rel.split(os.sep, 1)[0] if os.sep in rel else "(top level)"
        d = out.setdefault(top, {"rows": 0, "scanned": 0, "is_ai": 0, "errors": 0, "labels": {}})
        d["rows"] += 1
        if good:
            d["scanned"] += 1
            d["is_ai"] += int(bool(ai_flag))
            d["labels"][lab] = d["labels"].get(lab, 0) + 1
        else:
            d["errors"] += 1
    return dict(sorted(out.items()))


def summarise(table: pa.Table, top: int = 24) -> dict:
    col = {n: table.column(n).to_pylist() for n in ("path", "label", "closed_set_label", "is_ai", "error")}
    err = col["error"]
    ok = np.array([e is None for e in err], dtype=bool)
    ai = np.array([np.nan if v is None else v for v in table.column("ai_score").to_pylist()], dtype=np.float64)
    osc = np.array([np.nan if v is None else v for v in table.column("open_set_score").to_pylist()], dtype=np.float64)
    thr = [v for v in table.column("open_set_threshold").to_pylist() if v is not None]
    labels = Counter(lab for lab, good in zip(col["label"], ok) if good)
    errors = Counter(error_kind(e) for e in err if e is not None)
    examples = {}
    for p, e in zip(col["path"], err):
        if e is not None:
            examples.setdefault(error_kind(e), (p, e))
    order = [i for i in np.argsort(-np.nan_to_num(osc, nan=-np.inf), kind="stable") if ok[i]][:top]
    neighbors = table.column("neighbors")
    most_unknown = []
    for i in order:
        i = int(i)
        most_unknown.append({
            "path": col["path"][i], "label": col["label"][i], "closed_set_label": col["closed_set_label"][i],
            "ai_score": float(ai[i]), "open_set_score": float(osc[i]),
            "neighbors": neighbors[i].as_py() or [],
        })
    n_ok = int(ok.sum())
    by_folder = folder_breakdown(col["path"], col["label"], col["is_ai"], ok)
    rows_of: dict[str, list[int]] = {}
    for i in np.flatnonzero(ok):
        rows_of.setdefault(col["label"][i], []).append(int(i))
    gallery: dict[str, list[str]] = {}
    for lab, idx in rows_of.items():
        # the most confident first: the highest ai_score for an AI label, the lowest for `real`
        idx.sort(key=lambda i: ai[i] if lab == "real" else -ai[i])
        gallery[lab] = [col["path"][i] for i in idx[:GALLERY_PER_LABEL]]
    disagree = {}
    if "provenance" in table.column_names:  # verdict files written before provenance existed have none
        from scanner.writer import PROVENANCE_AI_PIXELS_REAL, PROVENANCE_CAPTURE_PIXELS_AI, provenance_disagreements

        for what, mask in zip((PROVENANCE_AI_PIXELS_REAL, PROVENANCE_CAPTURE_PIXELS_AI),
                              provenance_disagreements(table)):
            disagree[what] = {"count": int(mask.sum()), "paths": [col["path"][i] for i in np.flatnonzero(mask)[:top]]}
    return {
        "rows": table.num_rows, "scanned": n_ok, "errors_total": int((~ok).sum()),
        "labels": dict(labels.most_common()), "unknown": labels.get(UNKNOWN_LABEL, 0),
        "is_ai": int(sum(1 for v, good in zip(col["is_ai"], ok) if good and v)),
        "ai_score": {"mean": float(np.nanmean(ai)) if n_ok else None, "median": float(np.nanmedian(ai)) if n_ok else None},
        "open_set_score": {"mean": float(np.nanmean(osc)) if n_ok else None, "median": float(np.nanmedian(osc)) if n_ok else None},
        "open_set_threshold": float(np.median(thr)) if thr else None,
        "errors": dict(errors.most_common()),
        "error_examples": {k: {"path": p, "error": e} for k, (p, e) in examples.items()},
        "most_unknown": most_unknown,
        "by_folder": by_folder,
        "gallery": gallery,
        "provenance_disagreements": disagree,
        "models": sorted({m for m in table.column("model").to_pylist() if m}),
        "indexes": sorted({m for m in table.column("index").to_pylist() if m}),
        "_ai": ai, "_osc": osc,
    }


def _support_paths(index: Path | None) -> dict[str, str]:
    if index is None:
        return {}
    from indexes import SupportIndex

    support = SupportIndex.open(index)
    return dict(zip(support.table.support_id.tolist(), support.table.source_path.tolist()))


def run_report(verdicts: Path, out: Path, index: Path | None = None, top: int = 24, console=None,
               support_root: Path | None = None) -> dict:
    plots.pyplot()  # no matplotlib: say so before any work
    table, meta = load_verdicts(verdicts)
    s = summarise(table, top)
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    thr = s["open_set_threshold"]
    figs = {
        "labels": plots.bar_png(s["labels"] or {"(none)": 0}, fig_dir / "labels.png", "Images per label"),
        "ai_score": plots.histogram_png(s["_ai"], fig_dir / "ai_score.png", "ai_score (> 0.5: is_ai)", "ai_score",
                                        threshold=0.5, value_range=(0.0, 1.0)),
        "open_set_score": plots.histogram_png(s["_osc"], fig_dir / "open_set_score.png",
                                              "open_set_score (above the threshold: unknown)", "open_set_score",
                                              threshold=thr),
    }
    sources = _support_paths(index)
    _BASES[:] = ([Path(support_root).expanduser().resolve()] if support_root else []) + [Path(verdicts).resolve().parent] \
        + ([Path(index).resolve().parent] if index else [])
    doc = {k: v for k, v in s.items() if not k.startswith("_")}
    doc["verdicts"] = str(verdicts)
    doc["scan_metadata"] = meta
    doc["figures"] = {k: str(v.relative_to(out)) for k, v in figs.items()}
    (out / "summary.json").write_text(json.dumps(nan_to_none(doc), indent=1, default=str) + "\n", encoding="utf-8")
    (out / "report.html").write_text(render_html(doc, figs, sources), encoding="utf-8")
    if console is not None:
        print_tables(doc, console)
        console.print(f"wrote {out}/report.html, summary.json, figures/", highlight=False)
    return doc


_BASES: list[Path] = []


def _resolve(path: str) -> str:
    """Paths in a verdict file are as the scan was given them: relative ones are tried from the current
    directory, then from the verdict file's directory."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return path
    for base in _BASES:
        if (base / p).exists():
            return str(base / p)
    return path


def _thumb(path: str | None, side: int, alt: str) -> str:
    data = encode_thumbnail(_resolve(path), side) if path else None
    if data is None:
        return f'<div class="meta">(no thumbnail: {H.esc(alt)})</div>'
    return H.img_tag(data, alt, mime="image/jpeg")


def render_html(doc: dict, figs: dict[str, Path], sources: dict[str, str]) -> str:
    b = ["<h1>imgscan scan report</h1>"]
    b.append(f'<p class="meta">Verdicts: <code>{H.esc(doc["verdicts"])}</code> - {doc["rows"]} rows, '
             f'{doc["scanned"]} scanned, {doc["errors_total"]} errors. Model(s): {H.esc(", ".join(doc["models"]) or "-")}; '
             f'index: {H.esc(", ".join(doc["indexes"]) or "-")}; open-set threshold {H.fmt(doc["open_set_threshold"])}.</p>')
    b.append("<h2>Labels</h2>")
    total = max(doc["scanned"], 1)
    b.append(H.table(["label", "images", "share"], [[k, v, v / total] for k, v in doc["labels"].items()]))
    b.append(f'<p class="meta">{doc["is_ai"]} of {doc["scanned"]} scanned images have is_ai (ai_score > 0.5).</p>')
    b.append(H.figure(figs["labels"], "Images per label."))
    b.append("<h2>Scores</h2>")
    b.append(H.figure(figs["ai_score"], "ai_score: the probability of AI-generated, as calibrated by the index."))
    b.append(H.figure(figs["open_set_score"], "open_set_score: 1 - mean similarity to the winning class; above the threshold the label is `unknown`."))
    b.append(f"<h2>Most unknown ({len(doc['most_unknown'])} highest open_set_score)</h2>")
    cards = []
    for item in doc["most_unknown"]:
        nb_html = []
        for nb in item["neighbors"][:6]:
            src = sources.get(nb["support_id"])
            thumb = _thumb(src, 56, nb["label"]) if src else ""
            nb_html.append(f'<div title="{H.esc(nb["label"])} {nb["similarity"]:.3f}">{thumb}'
                           f'<div>{H.esc(nb["label"])} {nb["similarity"]:.3f}</div></div>')
        cards.append(
            f'<div class="card">{_thumb(item["path"], 128, "image")}<div><b>{H.esc(item["label"])}</b> '
            f'(closest class {H.esc(item["closed_set_label"])})<br>open_set_score {item["open_set_score"]:.3f}, '
            f'ai_score {item["ai_score"]:.3f}<br><code>{H.esc(item["path"])}</code></div>'
            f'<div class="meta">nearest support images:</div><div class="nb">{"".join(nb_html)}</div></div>')
    b.append('<div class="thumbs">' + "".join(cards) + "</div>")
    b.append("<h2>By folder</h2>")
    b.append(H.table(["folder", "rows", "scanned", "is_ai", "share AI", "errors", "labels"],
                     [[k, v["rows"], v["scanned"], v["is_ai"], v["is_ai"] / max(v["scanned"], 1), v["errors"],
                       ", ".join(f"{lab} {n}" for lab, n in sorted(v["labels"].items(), key=lambda kv: -kv[1]))]
                      for k, v in doc["by_folder"].items()]))
    b.append("<h2>Gallery per label</h2>")
    for lab, paths in doc["gallery"].items():
        b.append(f"<h3>{H.esc(lab)} ({doc['labels'].get(lab, 0)} images; the most confident first)</h3>")
        b.append('<div class="thumbs">' + "".join(
            f'<div class="card">{_thumb(p, 96, lab)}<div class="meta"><code>{H.esc(Path(p).name)}</code></div></div>'
            for p in paths) + "</div>")
    if doc["provenance_disagreements"]:
        b.append("<h2>Provenance that disagrees with the pixels (review these)</h2>")
        b.append(H.table(["case", "files", "first files"],
                         [[what, d["count"], ", ".join(d["paths"][:5])] for what, d in doc["provenance_disagreements"].items()]))
    b.append("<h2>Errors by kind</h2>")
    if doc["errors"]:
        b.append(H.table(["kind", "files", "example"],
                         [[k, v, doc["error_examples"][k]["path"]] for k, v in doc["errors"].items()]))
    else:
        b.append("<p>No errors.</p>")
    return H.page("imgscan scan report", "".join(b))


def print_tables(doc: dict, console) -> None:
    from rich.table import Table

    from scanner.progress import table_console

    console = table_console(console)

    t = Table(title=f"{doc['verdicts']}: {doc['rows']} rows", show_edge=False)
    t.add_column("label")
    t.add_column("images", justify="right")
    t.add_column("share", justify="right")
    total = max(doc["scanned"], 1)
    for k, v in doc["labels"].items():
        t.add_row(k, str(v), f"{v / total:.1%}")
    console.print(t)
    t = Table(title="most unknown", show_edge=False)
    for c in ("open_set_score", "label", "closest", "path", "neighbours"):
        t.add_column(c, justify="right" if c == "open_set_score" else "left")
    for item in doc["most_unknown"][:10]:
        nbs = ", ".join(f"{n['label']} {n['similarity']:.2f}" for n in item["neighbors"][:3])
        t.add_row(f"{item['open_set_score']:.3f}", item["label"], item["closed_set_label"], item["path"], nbs)
    console.print(t)
    if len(doc["by_folder"]) > 1:
        t = Table(title="by folder", show_edge=False)
        for c in ("folder", "rows", "is_ai", "errors", "labels"):
            t.add_column(c, justify="right" if c in ("rows", "is_ai", "errors") else "left")
        for k, v in doc["by_folder"].items():
            t.add_row(k, str(v["rows"]), str(v["is_ai"]), str(v["errors"]),
                      ", ".join(f"{lab} {n}" for lab, n in sorted(v["labels"].items(), key=lambda kv: -kv[1])))
        console.print(t)
    if any(d["count"] for d in doc["provenance_disagreements"].values()):
        t = Table(title="provenance that disagrees with the pixels (review these)", show_edge=False)
        t.add_column("case")
        t.add_column("files", justify="right")
        t.add_column("first file")
        for what, d in doc["provenance_disagreements"].items():
            t.add_row(what, str(d["count"]), d["paths"][0] if d["paths"] else "")
        console.print(t)
    if doc["errors"]:
        t = Table(title="errors by kind", show_edge=False)
        t.add_column("kind")
        t.add_column("files", justify="right")
        t.add_column("example")
        for k, v in doc["errors"].items():
            t.add_row(k, str(v), doc["error_examples"][k]["path"])
        console.print(t)
