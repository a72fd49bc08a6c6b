"""One writer at a time per index directory: an exclusive flock on `DIR/.lock` (released if the process dies)."""

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
