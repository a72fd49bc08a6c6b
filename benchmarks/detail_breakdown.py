"""Where the false accusations are: the proxies' verdicts split by how much pixel detail each image has.

    python benchmarks/detail_breakdown.py runs/proxies/default [runs/proxies/other ...]

Pixel detail (scanner/detail.py) = mean |4-neighbour Laplacian| of the image's luma (ITU-R 601, grey levels),
over the whole 256 x 256 crop the proxies judge as one view. A flat crop (night sky, fog, a wall) has detail < 2-4; a textured one 10-60.
For each embedder_proxies.py --out DIR it reads the stored verdicts (nothing is re-embedded) and prints:

- per detail bin: the unseen real source's crops (P2) and how many of them are called AI; the kit's fold-4
  queries (P1, never-enrolled generators left out) with real photos called AI and AI images detected;
- "not judged below t": the same figures if images with detail < t were not judged at all (counted as not
  accused; their AI images as missed; "n" is then the images still judged): what a detail floor in the verdict
  would trade.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from imgscan_core.labels import REAL_LABEL, UNKNOWN_LABEL
from scanner.detail import view_detail
from embedder_proxies import SHARED, held_source as result_held_source, photos_manifest, photos_relative

BINS = (0.0, 2.0, 4.0, 8.0, 16.0, float("inf"))
FLOORS = (2.0, 3.0, 4.0)


def file_detail(path: str) -> float:
    """The detail of a 256 x 256 crop judged as one view (the proxies' images): its pixels as they are."""
    with Image.open(path) as im:
        return float(view_detail(np.asarray(im.convert("RGB"))[None])[0])


def _queries(path: Path):
    t = pq.read_table(path, columns=["method", "role", "path", "class", "true_label", "is_ai_true", "is_ai"]).to_pandas()
    return t[(t.method == "imgscan") & (t.role == "query") & t.is_ai.notna()]


def groups(run: Path, photos: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(detail, called AI) per group of queries: the unseen source's real crops, the kit's real and AI queries."""
    import json

    proxies = run / "proxies.json"
    held = result_held_source(json.loads(proxies.read_text()) if proxies.is_file() else {})
    sources = {p: r["source"] for p, r in photos_manifest(photos).items()}
    unseen = _queries(run / "unseen-source" / "predictions.parquet")
    unseen = unseen[(unseen["class"] == REAL_LABEL) & unseen.path.map(lambda p: sources.get(photos_relative(p)) == held)]
    kit = _queries(run / "kit-unknown" / "predictions.parquet")
    kit = kit[kit.true_label != UNKNOWN_LABEL]
    out = {}
    for name, t in (("unseen real", unseen), ("kit real", kit[kit["class"] == REAL_LABEL]),
                    ("kit AI", kit[kit["class"] != REAL_LABEL])):
        out[name] = (np.array([file_detail(p) for p in t.path]), t.is_ai.to_numpy(dtype=bool))
    return out


def table(g: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    rows = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        row = {"detail": f"{lo:g}-{hi:g}"}
        for name, (detail, called) in g.items():
            m = (detail >= lo) & (detail < hi)
            row[f"{name} n"] = int(m.sum())
            row[f"{name} called AI"] = float(called[m].mean()) if m.any() else float("nan")
        rows.append(row)
    for floor in (0.0, *FLOORS):
        row = {"detail": "all" if floor == 0 else f"not judged below {floor:g}"}
        for name, (detail, called) in g.items():
            row[f"{name} n"] = int((detail >= floor).sum())
            row[f"{name} called AI"] = float((called & (detail >= floor)).mean()) if len(called) else float("nan")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="embedder_proxies.py --out directories")
    ap.add_argument("--photos", type=Path, default=SHARED / "photos")
    args = ap.parse_args(argv)
    for run in args.runs:
        rows = table(groups(run, args.photos))
        cols = list(rows[0])
        print(f"\n{run}\n")
        print("| " + " | ".join(cols) + " |")
        print("|---|" + "---:|" * (len(cols) - 1))
        for r in rows:
            print("| " + " | ".join(str(r[c]) if isinstance(r[c], (str, int)) else f"{r[c]:.3f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
