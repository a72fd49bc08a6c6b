"""`imgscan enroll` and `imgscan index remove`: the scan flow's side of the support index.

The index (indexes/) stores embeddings and calibrates its open-set threshold; the rule it calibrates with is
the verdict rule's own open-set score (scanner.verdict), passed in here so the two cannot drift.
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
from scanner.schema import display_path
from scanner.verdict import open_set_scores


def enroll_embeddings(directory: str | os.PathLike, label: str, embeddings: np.ndarray, shas: list[str],
                      source_paths: list[str], model_id: str, model_sha256: str) -> EnrollResult:
    return support_index.enroll_embeddings(directory, label, embeddings, shas, source_paths, model_id, model_sha256,
                                           open_set_score=open_set_scores)


def remove_label(directory: str | os.PathLike, label: str):
    return support_index.remove_label(directory, label, open_set_score=open_set_scores)


@dataclass
class EmbeddedFiles:
    embeddings: list[np.ndarray] = field(default_factory=list)
    shas: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
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
        if progress is not None:
            progress.advance(len(reads), len(reads) - len(ok))
    return found


def enroll_files(index_dir: Path, label: str, roots: list[bytes], embedder: Embedder, batch_size: int,
                 progress=None) -> tuple[EnrollResult, EmbeddedFiles]:
    check_label(label)
    found = embed_files(roots, embedder, batch_size, progress)
    if not found.shas:
        raise UsageError(f"no decodable image found under {', '.join(os.fsdecode(r) for r in roots)}")
    result = enroll_embeddings(index_dir, label, np.concatenate(found.embeddings), found.shas, found.sources,
                               embedder.model_id, embedder.card.weights_sha256)
    return result, found
