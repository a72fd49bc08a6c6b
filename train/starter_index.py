"""Build the starter support index shipped with the default model (scanner/default_index).

For every class of a labelled data set (a manifest with folds, or a folder per class), up to `--per-class`
images outside the held-out fold are enrolled, through the scan's own stages (read, decode, embed) and the
index's own `enroll_embeddings`, exactly as `imgscan enroll` would. Classes held out of *training* are
enrolled too: enrolling is how imgscan learns a generator without retraining. Only embeddings and relative
paths enter the index, never images.

    python -m train.starter_index ../shared/data/kit --model scanner/default_model \
        --out scanner/default_index --per-class 150 --exclude-fold 4
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from indexes import SupportIndex, enroll_embeddings
from scanner.embed import Embedder
from scanner.pipeline import embedded_batches
from train.data import load_samples


def build(data: Path, model_dir: Path, out: Path, per_class: int, exclude_fold: int | None, seed: int) -> dict[str, int]:
    samples = load_samples(data)
    by_label: dict[str, list] = defaultdict(list)
    for s in samples:
        if exclude_fold is None or s.fold != exclude_fold:
            by_label[s.label].append(s)
    embedder = Embedder(model_dir, device="cpu", precision="fp32")  # fp32: the same index on every CPU
    root = data if data.is_dir() else data.parent
    if out.exists():
        shutil.rmtree(out)
    counts = {}
    for label in sorted(by_label):
        chosen = sorted(by_label[label], key=lambda s: str(s.path))
        random.Random(f"{seed}:{label}").shuffle(chosen)
        chosen = chosen[:per_class]
        rel = {os.fsencode(s.path): str(Path(s.path).resolve().relative_to(root.resolve())) for s in chosen}
        embeddings, shas, sources = [], [], []
        for reads, decoded, emb in embedded_batches(list(rel), embedder, batch_size=32):
            ok = [i for i, r in enumerate(reads) if r.error is None and decoded.errors[i] is None]
            embeddings.append(emb)
            shas.extend(reads[i].sha for i in ok)
            sources.extend(rel[reads[i].path] for i in ok)
        result = enroll_embeddings(out, label, np.concatenate(embeddings), shas, sources, embedder.model_id,
                                   embedder.card.weights_sha256)
        counts[label] = result.added
        print(f"{label}: {result.added} enrolled", flush=True)
    # A packaged index is never written in place: no lock file, and no previous generation kept for readers.
    (out / ".lock").unlink(missing_ok=True)
    current = {entry.name for entry in SupportIndex.open(out).manifest.files.values()}
    for path in out.glob("support-g*"):
        if path.name not in current:
            path.unlink()
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-class", type=int, default=150)
    ap.add_argument("--exclude-fold", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    build(args.data, args.model, args.out, args.per_class, args.exclude_fold, args.seed)


if __name__ == "__main__":
    main()
