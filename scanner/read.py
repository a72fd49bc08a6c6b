"""Read stage: the bytes of one file and their xxh3-128 hash; failures become an error string, never a raise."""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass

import xxhash

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# Errors that say "not now" rather than "never": out of file descriptors (EMFILE/ENFILE, e.g. a low ulimit -n),
# a busy or stale network mount (EAGAIN, ESTALE, EIO on NFS/SMB), memory pressure, an interrupted call. They are
# retried with backoff; a row that still carries one says so, and the next run of the same scan reads it again.
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ESTALE, errno.EIO, errno.ENOMEM,
                              errno.EINTR, errno.EBUSY, errno.ETIMEDOUT})
RETRY_DELAYS_S = (0.05, 0.2, 0.5, 1.0, 2.0)
TRANSIENT_MARK = "(transient: the next run tries it again)"


@dataclass
class ReadResult:
    path: bytes
    data: bytes | None
    sha: str | None
    nbytes: int | None
    error: str | None = None
    key: str | None = None  # a shard member's sample key (scanner.shards); None for a file
    source_url: str | None = None  # where a shard member was downloaded from, when the shard says


def is_transient(error: str | None) -> bool:
    return error is not None and error.endswith(TRANSIENT_MARK)


def read_file(path: bytes, max_bytes: int = DEFAULT_MAX_BYTES, retry_delays_s=RETRY_DELAYS_S) -> ReadResult:
    """Read one file. Transient errors are retried after each of `retry_delays_s`; if the last try still fails,
    the row's error ends with TRANSIENT_MARK."""
    for delay in (*retry_delays_s, None):
        try:
            return _read(path, max_bytes)
        except OSError as exc:
            if exc.errno not in TRANSIENT_ERRNOS:
                return ReadResult(path, None, None, None, f"read: {_describe(exc)}")
            if delay is None:
                return ReadResult(path, None, None, None, f"read: {_describe(exc)} {TRANSIENT_MARK}")
            time.sleep(delay)
    raise AssertionError("unreachable")


def _read(path: bytes, max_bytes: int) -> ReadResult:
    st = os.stat(path)  # follows symlinks: a broken link or a loop fails here
    if stat.S_ISDIR(st.st_mode):  # the walk yields a directory only when it could not list it
        return ReadResult(path, None, None, None, f"walk: directory could not be listed ({_listing_error(path)})")
    if not stat.S_ISREG(st.st_mode):
        return ReadResult(path, None, None, None, "read: not a regular file")
    if st.st_size > max_bytes:
        return ReadResult(path, None, None, st.st_size, f"read: file is {st.st_size} bytes, over the {max_bytes}-byte limit")
    # O_NONBLOCK: a FIFO swapped in after the stat must not block the run.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb", closefd=True) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        return ReadResult(path, None, None, len(data), f"read: file is over the {max_bytes}-byte limit")
    return ReadResult(path, data, xxhash.xxh3_128_hexdigest(data), len(data))


def _listing_error(path: bytes) -> str:
    try:
        with os.scandir(path):
            return "it could be listed later: run again to scan it"
    except OSError as exc:
        return _describe(exc)


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "no such file (broken symlink or removed during the scan)"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return exc.strerror or type(exc).__name__
