"""Labelled data sets: the one reader of the DATA layout, used by `imgscan eval`, `imgscan train` and the
starter-index builder, and the writer of the manifests of training sets derived from real photos (tools/).

DATA is a folder holding `manifest.csv`, a manifest CSV itself, or a folder with one sub-folder per class; or
several of these, read as one data set (each keeps its folds and sources; groups are prefixed with the data
set's position so none is shared).
- A manifest has columns path,label and optionally is_ai,source,group,fold; paths are relative to its folder.
- Without `is_ai`, every class but `real` is AI; without `group`, every image is its own group; without
  `fold`, the fold is unknown (-1; the trainer then derives one from the path, train.data).
- Class folders: DATA/<label>/**/<image>, image files by extension (scanner.walk.is_image_name, as `scan`
  takes them); hidden folders are skipped.
- The label `unknown` is reserved (imgscan_core.labels) and refused.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgscan_core.errors import UsageError
from imgscan_core.labels import REAL_LABEL, UNKNOWN_LABEL
from scanner.walk import is_image_name


@dataclass
class Dataset:
    root: Path
    paths: np.ndarray  # object [n] absolute paths (str)
    labels: np.ndarray  # object [n]
    is_ai: np.ndarray  # bool [n]
    groups: np.ndarray  # object [n]
    folds: np.ndarray  # int [n], -1 where unknown
    source: str = ""  # how it was read: manifest or class folders
    sources: np.ndarray | None = None  # object [n]: the manifest's `source` column ("" where absent)

    def __post_init__(self):
        if self.sources is None:
            self.sources = np.full(len(self.paths), "", dtype=object)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels.tolist()))

    def counts(self) -> dict[str, int]:
        labs, n = np.unique(self.labels.astype(str), return_counts=True)
        return {str(a): int(b) for a, b in zip(labs, n)}

    def select(self, keep: np.ndarray) -> "Dataset":
        return Dataset(self.root, self.paths[keep], self.labels[keep], self.is_ai[keep], self.groups[keep],
                       self.folds[keep], self.source, self.sources[keep])


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "ai")


def load_dataset(data: str | os.PathLike | list) -> Dataset:
    if isinstance(data, (list, tuple)):
        parts = [load_dataset(d) for d in data]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            raise UsageError("no DATA given")
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        groups = np.concatenate([np.array([f"{i}:{g}" for g in p.groups], dtype=object) for i, p in enumerate(parts)])
        return Dataset(parts[0].root, cat("paths"), cat("labels"), cat("is_ai"), groups, cat("folds"),
                       source=" + ".join(p.source for p in parts), sources=cat("sources"))
    data = Path(data).expanduser()
    if data.is_file():
        return _load_manifest(data)
    if not data.is_dir():
        raise UsageError(f"{data}: no such file or folder")
    if (data / "manifest.csv").is_file():
        return _load_manifest(data / "manifest.csv")
    return _load_class_folders(data)


def _load_manifest(csv_path: Path) -> Dataset:
    root = csv_path.parent.resolve()
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"{csv_path}: unreadable manifest ({exc})") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise UsageError(f"{csv_path}: a manifest needs a header with at least the columns path,label")
    paths, labels, is_ai, groups, folds, sources = [], [], [], [], [], []
    for i, row in enumerate(rows, start=2):
        rel, lab = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not rel or not lab:
            raise UsageError(f"{csv_path}:{i}: empty path or label")
        if lab == UNKNOWN_LABEL:
            raise UsageError(f"{csv_path}:{i}: label '{UNKNOWN_LABEL}' is reserved")
        paths.append(str(root / rel))
        labels.append(lab)
        ai = row.get("is_ai")
        is_ai.append(_truthy(ai) if ai not in (None, "") else lab != REAL_LABEL)
        groups.append((row.get("group") or "").strip() or f"image:{rel}")
        sources.append((row.get("source") or "").strip())
        fold = (row.get("fold") or "").strip()
        try:
            folds.append(int(fold) if fold else -1)
        except ValueError:
            raise UsageError(f"{csv_path}:{i}: fold {fold!r} is not an integer") from None
    return Dataset(root, np.array(paths, dtype=object), np.array(labels, dtype=object), np.array(is_ai, dtype=bool),
                   np.array(groups, dtype=object), np.array(folds, dtype=np.int64), source=f"manifest {csv_path}",
                   sources=np.array(sources, dtype=object))


def _load_class_folders(root: Path) -> Dataset:
    paths, labels = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for dirpath, dirnames, filenames in os.walk(sub):
            dirnames.sort()
            for name in sorted(filenames):
                if is_image_name(os.fsencode(name)):
                    paths.append(str(Path(dirpath) / name))
                    labels.append(sub.name)
    if not paths:
        raise UsageError(f"{root}: no manifest.csv and no class sub-folders with images (DATA/<label>/<image>)")
    if UNKNOWN_LABEL in labels:
        raise UsageError(f"{root}: a class folder is named '{UNKNOWN_LABEL}', which is reserved")
    n = len(paths)
    return Dataset(root.resolve(), np.array(paths, dtype=object), np.array(labels, dtype=object),
                   np.array([lab != REAL_LABEL for lab in labels], dtype=bool),
                   np.array([f"image:{p}" for p in paths], dtype=object), np.full(n, -1, dtype=np.int64),
                   source=f"class folders under {root}")


MANIFEST_COLUMNS = ("path", "label", "is_ai", "source", "group", "fold", "upscaled")


def real_photos(data: list, exclude_folds, exclude_sources) -> list[tuple[Path, str, str, int]]:
    """(path, source, group, fold) of every real photo in the data sets outside the given folds and sources: the
    originals that tools/reconstruction_pairs.py and tools/upsampling_pairs.py derive training images from."""
    out = []
    for d in data:
        ds = load_dataset(d)
        for path, label, group, fold, source in zip(ds.paths, ds.labels, ds.groups, ds.folds, ds.sources):
            if label == REAL_LABEL and int(fold) not in exclude_folds and source not in exclude_sources:
                out.append((Path(path), str(source), str(group), int(fold)))
    if not out:
        raise UsageError("no real photos left after the exclusions")
    return out


def derived_name(original: Path) -> str:
    """File name of an image derived from `original`: its stem and a hash of its full path (stems repeat across
    data sets, full paths do not)."""
    return f"{original.stem}-{hashlib.sha1(str(original.resolve()).encode()).hexdigest()[:8]}.jpg"


def write_manifest(folder: Path, rows: list[dict]) -> None:
    """folder/manifest.csv with MANIFEST_COLUMNS, as load_dataset reads it."""
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
