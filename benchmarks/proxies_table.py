"""Markdown table of several `embedder_proxies.py` results, one row per model, one column per proxy.

    python benchmarks/proxies_table.py "0.2.0=runs/proxies/base" "0.3.0=runs/proxies/new" ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from embedder_proxies import held_source

COLUMNS = [
    ("P1 kit det acc", lambda d: d["p1_kit"]["det_acc"]),
    ("P1 kit real called AI", lambda d: d["p1_kit"]["real_called_ai"]),
    ("P1 closed F1", lambda d: d["p1_kit"]["closed_f1"]),
    ("P2 unseen source", held_source),
    ("P2 unseen-source real called AI", lambda d: d["p2_unseen_source"]["real_called_ai"]),
    ("P2 photos fold 4 called AI, per source (* never trained on)", lambda d: _fold4(d, "imgscan")),
    ("P2 native full size called AI (unseen source / all)", lambda d: _native(d, "p2_native_full_size")),
    ("P3 held-out gens det acc, enrolled", lambda d: d["p3_unseen_generators"]["mean_det_acc_enrolled"]),
    ("P3 held-out gens F1, enrolled", lambda d: _f1(d)),
    ("P3 open-set AUROC", lambda d: d["p3_unseen_generators"]["open_set_auroc"]),
    ("P3 OSCR", lambda d: d["p3_unseen_generators"]["oscr"]),
    ("P3 open-set AUROC, never-enrolled generators' images of every fold (n)", lambda d: _every_fold(d)),
    ("P4 re-posted kit det acc", lambda d: d["p4_reposted"]["det_acc"]),
    ("P4 re-posted open-set AUROC", lambda d: d["p4_reposted"]["open_set_auroc"]),
    ("P4 re-posted unseen-source real called AI", lambda d: d["p4_reposted"]["unseen_real_called_ai"]),
    ("P4 re-posted native called AI (unseen source / all)", lambda d: _native(d, "p4_native_reposted")),
    ("P4 re-posted photos fold 4 called AI, per source", lambda d: _fold4(d, "reposted")),
]


def _f1(d: dict) -> str:
    return ", ".join(f"{g} {v:.2f}" for g, v in d["p3_unseen_generators"]["f1_enrolled"].items())


def _every_fold(d: dict) -> str:
    e = d["p3_unseen_generators"].get("every_fold")
    return f"{e['open_set_auroc']:.3f} ({e['n_unknown']}; re-posted {e['reposted_open_set_auroc']:.3f})" if e else "-"


def _fold4(d: dict, method: str) -> str:
    part = d.get("p2_photos_fold4", {}).get(method)
    held = held_source(d)
    return ", ".join(f"{src}{'*' if src == held else ''} {v['real_called_ai']:.3f} ({v['n_real']})"
                     for src, v in part.items()) if part else "-"


def _native(d: dict, key: str) -> str:
    part = d.get(key)
    if not part:
        return "-"
    # SOURCES.csv names the origin repository (drewnoakes/..., google/dreambooth); the manifest's source ends with
    # the same word (camera:drewnoakes, dreambooth)
    word = held_source(d).split(":")[-1]
    src = next((v for k, v in part.items() if word in k), None)
    a = part["all"]
    return (f"{src['called_ai']}/{src['n'] - src['errors']} / " if src else "") + f"{a['called_ai']}/{a['n'] - a['errors']}"


def main(args: list[str]) -> None:
    runs = [(a.split("=", 1)[0], json.loads((Path(a.split("=", 1)[1]) / "proxies.json").read_text())) for a in args]
    print("| proxy | " + " | ".join(name for name, _ in runs) + " |")
    print("|---|" + "---:|" * len(runs))
    for title, get in COLUMNS:
        cells = []
        for _, d in runs:
            v = get(d)
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        print(f"| {title} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
