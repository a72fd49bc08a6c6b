"""Self-contained HTML: figures embedded as base64 data URIs, inline CSS, no script, no external asset, so the
file can be mailed, archived or opened offline and shows the same everywhere."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 24px auto; max-width: 1280px;
       color: #222; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.86em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f5f8; } td:first-child, th:first-child, td.t { text-align: left; }
.meta { color: #555; font-size: 0.88em; } .meta code { font-size: 0.95em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85em; }
.thumbs { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #ddd; padding: 6px; width: 300px; font-size: 0.8em; background: #fafafa; }
.card img { display: block; max-width: 128px; max-height: 128px; }
.nb { display: flex; gap: 3px; flex-wrap: wrap; margin-top: 4px; } .nb img { max-width: 56px; max-height: 56px; }
.warn { color: #a15c00; }
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if math.isnan(x):
            return "–"
        return f"{x:.{digits}f}"
    return esc(x)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img_tag(png: Path | bytes, alt: str, mime: str = "image/png", css_class: str = "") -> str:
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    cls = f' class="{css_class}"' if css_class else ""
    return f'<img{cls} alt="{esc(alt)}" src="{data_uri(data, mime)}">'


def figure(png: Path, caption: str) -> str:
    return f"<figure>{img_tag(png, caption)}<figcaption>{esc(caption)}</figcaption></figure>"


def table(header: list[str], rows: list[list], digits: int = 3) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    def cell(c) -> str:
        if isinstance(c, RawHTML):
            return f"<td>{c}</td>"
        text = isinstance(c, str)
        return f'<td class="t">{esc(c)}</td>' if text else f"<td>{fmt(c, digits)}</td>"

    body = "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class RawHTML(str):
    """A table cell that is already HTML (not escaped)."""


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body>{body}</body></html>\n")
