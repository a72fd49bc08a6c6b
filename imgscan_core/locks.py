"""One writer at a time: an exclusive flock on a lock file (released when the process dies, however it dies).

Used by the support index (one enroll or remove at a time, waiting for the other) and by scan outputs (a second
scan writing the same --out is refused at once: two writers would interleave or delete each other's rows).
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from imgscan_core.errors import UsageError

LOCK_FILE = ".lock"


@contextmanager
def exclusive_lock(directory: Path, timeout_s: float = 600.0):
    """Wait (up to timeout_s) for the lock on DIR/.lock; hold it for the `with` block."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UsageError(f"{directory}: index is locked by another writer for over {timeout_s:.0f} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def try_lock(path: Path) -> int | None:
    """Take the lock on `path` now, writing this process's pid into it; the open descriptor (close it to
    release), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def lock_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"
