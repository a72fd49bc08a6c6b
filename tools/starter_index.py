"""Build the starter support index shipped with the default model (scanner/default_index).

For every class of a labelled data set (a manifest with folds, or a folder per class), up to `--per-class`
images outside the held-out fold are enrolled, through the scan's own stages (read, decode, embed) and the
index's own `enroll_embeddings`, exactly as `imgscan enroll` would. Classes held out of *training* are
enrolled too: enrolling is how imgscan learns a generator without retraining. Only embeddings and relative
paths enter the index, never images.

    python tools/starter_index.py ../shared/data/kit ../shared/data/photos --model scanner/default_model \
        --out scanner/default_index --per-class 150 --exclude-fold 4 --exclude-sources camera:drewnoakes

Paths in the index are relative to the data set's folder each image came from (prefixed by that folder's name
when several data sets are given).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from imgscan_core.labels import REAL_LABEL
from indexes import SupportIndex
from scanner.embed import Embedder
from scanner.enroll import embed_files, enroll_embeddings, recalibrate
from train.data import load_samples


def _relative(path: Path, roots: list[Path]) -> str:
    """The path relative to its data set's folder; with several data sets, prefixed by that folder's name
    (kit/images/real/x.jpg, photos/images/real/y.jpg), since their layouts repeat. Links inside a data set
    are not followed: a view whose images/ links elsewhere (tools/family_manifest.py) keeps its own paths."""
    resolved = Path(os.path.abspath(path))
    for root in roots:
        if resolved.is_relative_to(root):
            rel = str(resolved.relative_to(root))
            return f"{root.name}/{rel}" if len(roots) > 1 else rel
    return resolved.name


def _per_source(shuffled: list, n: int) -> list:
    """Up to n of each source, taken in turn (one of each, then a second of each, ...), so that a cap on the
    total still leaves every source in: real photos differ most between collections, and a support set drawn
    from a few large ones leaves the others' photos (people, phones, scans) without real neighbours."""
    by_source: dict[str, list] = defaultdict(list)
    for s in shuffled:
        by_source[s.source].append(s)
    rounds = [[items[i] for items in by_source.values() if i < len(items)] for i in range(n)]
    return [s for r in rounds for s in r]


def build(data: Path | list[Path], model_dir: Path, out: Path, per_class: int, exclude_fold: int | None, seed: int,
          exclude_sources: list[str] | None = None, real_per_class: int | None = None,
          ai_share: float = 0.5, real_per_source: int | None = None) -> dict[str, int]:
    datas = [Path(d) for d in (data if isinstance(data, (list, tuple)) else [data])]
    samples = load_samples(datas)
    by_label: dict[str, list] = defaultdict(list)
    for s in samples:
        if (exclude_fold is None or s.fold != exclude_fold) and s.source not in (exclude_sources or []):
            by_label[s.label].append(s)
    embedder = Embedder(model_dir, device="cpu", precision="fp32", runtime="torch")  # the same index on every CPU
    roots = [(d if d.is_dir() else d.parent).resolve() for d in datas]
    if out.exists():
        shutil.rmtree(out)
    counts = {}
    for label in sorted(by_label):
        chosen = sorted(by_label[label], key=lambda s: str(s.path))
        random.Random(f"{seed}:{label}").shuffle(chosen)
        if label == REAL_LABEL and real_per_source:
            chosen = _per_source(chosen, real_per_source)
        chosen = chosen[:real_per_class if label == REAL_LABEL and real_per_class else per_class]
        rel = {str(s.path): _relative(s.path, roots) for s in chosen}
        found = embed_files([os.fsencode(p) for p in rel], embedder, batch_size=32)
        result = enroll_embeddings(out, label, np.concatenate(found.embeddings), found.shas,
                                   [rel[p] for p in found.sources], embedder.model_id, embedder.card.weights_sha256,
                                   np.concatenate(found.hashes))
        counts[label] = result.added
        print(f"{label}: {result.added} enrolled", flush=True)
    if ai_share != 0.5:
        recalibrate(out, ai_share)
    # A packaged index is never written in place: no lock file, and no previous generation kept for readers.
    (out / ".lock").unlink(missing_ok=True)
    shutil.rmtree(out / "history", ignore_errors=True)
    current = {entry.name for entry in SupportIndex.open(out).manifest.files.values()}
    for path in out.glob("support-g*"):
        if path.name not in current:
            path.unlink()
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, nargs="+")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-class", type=int, default=150)
    ap.add_argument("--real-per-class", type=int, default=None,
                    help="support images of `real` (default: --per-class); real photos are the most varied class")
    ap.add_argument("--exclude-fold", type=int, default=4)
    ap.add_argument("--exclude-sources", default="", help="comma-separated manifest sources never enrolled")
    ap.add_argument("--real-per-source", type=int, default=None,
                    help="draw `real` support evenly over the data sets' sources, up to this many each (then "
                         "--real-per-class caps the total); default: at random over all real images")
    ap.add_argument("--ai-share", type=float, default=0.5,
                    help="calibrate ai_score for a crawl with this share of generated images (`imgscan index "
                         "calibrate`); 0.5: balanced")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    build(args.data, args.model, args.out, args.per_class, args.exclude_fold, args.seed,
          [x for x in args.exclude_sources.split(",") if x], args.real_per_class, args.ai_share, args.real_per_source)


if __name__ == "__main__":
    main()
