"""`imgscan enroll` and `imgscan index remove`: the scan flow's side of the support index.

The index (indexes/) stores embeddings and perceptual hashes and finds leave-one-out neighbours; what it
calibrates with is the verdict rule's own calibration (scanner.verdict.calibrate), passed in here so the two
cannot drift.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgscan_core.errors import UsageError
from imgscan_core.labels import check_label
from indexes import support_index
from indexes.support_index import EnrollResult
from scanner.config import DecodeConfig, ReadConfig
from scanner.embed import Embedder
from scanner.judge import embedded_batches
from scanner.near_duplicate import first_view_hashes
from scanner.schema import display_path
from scanner.verdict import calibrate


def enroll_embeddings(directory: str | os.PathLike, label: str, embeddings: np.ndarray, shas: list[str],
                      source_paths: list[str], model_id: str, model_sha256: str,
                      hashes: np.ndarray | None = None) -> EnrollResult:
    return support_index.enroll_embeddings(directory, label, embeddings, shas, source_paths, model_id, model_sha256,
                                           calibrate=calibrate, hashes=hashes)


def remove_label(directory: str | os.PathLike, label: str):
    return support_index.remove_label(directory, label, calibrate=calibrate)


def recalibrate(directory: str | os.PathLike, ai_share: float):
    return support_index.recalibrate(directory, ai_share, calibrate=calibrate)


@dataclass
class EmbeddedFiles:
    embeddings: list[np.ndarray] = field(default_factory=list)
    shas: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    hashes: list[np.ndarray] = field(default_factory=list)  # perceptual hashes, one array per batch
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, error)


def embed_files(roots: list[bytes], embedder: Embedder, batch_size: int, progress=None) -> EmbeddedFiles:
    """Embed every image under `roots` through the scan's stages; files that fail are listed, not raised."""
    found = EmbeddedFiles()
    for reads, decoded, emb in embedded_batches(roots, embedder, ReadConfig(), DecodeConfig(), batch_size):
        ok = set(i for i, r in enumerate(reads) if r.error is None and decoded.errors[i] is None)
        for i, r in enumerate(reads):
            if i in ok:
                found.shas.append(r.sha)
                found.sources.append(display_path(r.path)[0])
            else:
                found.failed.append((display_path(r.path)[0], r.error or decoded.errors[i]))
        found.embeddings.append(emb)
        found.hashes.append(first_view_hashes(decoded))
        if progress is not None:
            progress.advance(len(reads), len(reads) - len(ok))
    return found


MIN_CLASS_IMAGES = 50  # the method's support sets hold 50-150 images per class


def enrollment_report(result: EnrollResult, found: EmbeddedFiles, label: str, k: int) -> tuple[str, list[str]]:
    """What an enrollment did, in one line, and the warnings a user must see."""
    from collections import Counter

    m = result.manifest
    already = Counter(lab for _, lab in result.duplicates)
    parts = [f"{result.added} new", f"{len(result.duplicates)} already enrolled"
             + (f" ({', '.join(f'{n} as {lab}' for lab, n in already.most_common())})" if already else ""),
             f"{len(found.failed)} unreadable"]
    line = (f"enrolled into class {label!r}: {'; '.join(parts)}. Class {label!r} now holds {m.counts.get(label, 0)}, "
            f"the index {m.total} in {len(m.counts)} classes (generation {m.generation}; open-set threshold "
            f"{m.open_set.threshold:.4f}, ai_score {m.ai_score.method})")
    warnings = []
    for other, n in sorted(already.items()):
        if other != label:
            warnings.append(f"{n} of these images are enrolled as {other!r}, not {label!r}: they stay {other!r} "
                            f"(remove that class, or those files, to change them)")
    size = m.counts.get(label, 0)
    if 0 < size < k:
        warnings.append(f"class {label!r} has {size} images, fewer than k={k} neighbours: its images are outvoted by "
                        f"other classes; enroll at least {MIN_CLASS_IMAGES}")
    elif 0 < size < MIN_CLASS_IMAGES:
        warnings.append(f"class {label!r} has {size} images; {MIN_CLASS_IMAGES}-150 per class is what the method "
                        "was measured with")
    if len(m.counts) == 1:
        warnings.append(f"the index holds one class ({label!r}): every scan would say {label!r}; enroll `real` and "
                        "at least one generator")
    return line, warnings


def enroll_files(index_dir: Path, label: str, roots: list[bytes], embedder: Embedder, batch_size: int,
                 progress=None) -> tuple[EnrollResult, EmbeddedFiles]:
    check_label(label)
    found = embed_files(roots, embedder, batch_size, progress)
    if not found.shas:
        raise UsageError(f"no decodable image found under {', '.join(os.fsdecode(r) for r in roots)}")
    result = enroll_embeddings(index_dir, label, np.concatenate(found.embeddings), found.shas, found.sources,
                               embedder.model_id, embedder.card.weights_sha256, np.concatenate(found.hashes))
    return result, found
