"""The 64-bit keys a scan skips by: paths already done (resume) and file hashes already judged (--skip-known).

A `KeySet` is a sorted uint64 array, 8 bytes a file, shared by the local and the Ray engine.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import xxhash

from imgscan_core.errors import UsageError


def path_key(raw: bytes) -> int:
    return xxhash.xxh3_64_intdigest(raw)


def sha_key(sha: str) -> int:
    """A file hash's key: its first 64 bits (plenty to skip by)."""
    return int(sha[:16], 16)


def batch_path_keys(batch: pa.RecordBatch) -> np.ndarray:
    """Path keys of the rows of a verdict batch (from `path_bytes` where the path is not UTF-8)."""
    paths = batch.column("path").to_pylist()
    raws = batch.column("path_bytes").to_pylist()
    return np.fromiter(
        (path_key(raw if raw is not None else p.encode("utf-8")) for p, raw in zip(paths, raws)),
        dtype=np.uint64, count=len(paths),
    )


class KeySet:
    def __init__(self, keys: np.ndarray | None = None):
        self.keys = np.unique(np.asarray(keys, dtype=np.uint64)) if keys is not None else np.zeros(0, np.uint64)

    @classmethod
    def union(cls, parts: list[np.ndarray]) -> "KeySet":
        return cls(np.concatenate(parts) if parts else None)

    def __len__(self) -> int:
        return int(self.keys.size)

    def __contains__(self, key: int) -> bool:
        if self.keys.size == 0:
            return False
        i = np.searchsorted(self.keys, np.uint64(key))
        return bool(i < self.keys.size and self.keys[i] == key)


def is_verdict_file(path: str | os.PathLike) -> bool:
    """A Parquet file written by imgscan scan (its schema carries the `imgscan` metadata)."""
    import pyarrow.parquet as pq

    if not str(path).endswith(".parquet") or not os.path.isfile(path):
        return False
    try:
        return b"imgscan" in (pq.read_schema(path).metadata or {})
    except (OSError, pa.ArrowException):
        return False


def skip_known_files(values: list[str | os.PathLike]) -> list[Path]:
    """--skip-known values as files: a file as given, a glob pattern (quoted, so the shell leaves it) as the
    files it matches now; a pattern that matches nothing (the first night) means nothing to skip."""
    files: list[Path] = []
    for value in values:
        text = os.fspath(value)
        if os.path.exists(text) or not glob.has_magic(text):
            files.append(Path(text))
        else:
            files.extend(Path(p) for p in sorted(glob.glob(text)))
    return list(dict.fromkeys(files))


def load_known_shas(files: list[Path]) -> KeySet:
    """Keys of the `sha` column of earlier verdict files."""
    import pyarrow.parquet as pq

    parts = []
    for f in files:
        try:
            col = pq.read_table(f, columns=["sha"]).column("sha")
            if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
                raise ValueError(f"its sha column is {col.type}, not string")
            parts.append(np.array([sha_key(s) for s in col.to_pylist() if s], dtype=np.uint64))
        except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
            raise UsageError(f"--skip-known {f}: not a readable verdict file ({str(exc).splitlines()[0]})") from None
    return KeySet.union(parts)
