"""Atomic file writes and file hashing: the one way imgscan replaces a file.

A reader (or a run killed at any instant) sees either the old file or the complete new one: the new content
goes to a hidden temporary name in the same directory, is fsync'd, renamed over the target, and the directory
is fsync'd so that the rename itself survives a power loss.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(directory: str | os.PathLike) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def temporary_name(target: Path) -> Path:
    """A hidden name beside `target`, unique to this process and call (parallel writers never share one)."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path to write `target`'s new content to; on success it replaces `target` atomically,
    on any exception it is removed and `target` is untouched."""
    target = Path(target)
    tmp = temporary_name(target)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike, data, indent: int | None = 1) -> None:
    atomic_write_text(target, json.dumps(data, indent=indent, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
