"""Decoding in a child process, so a decoder that aborts, crashes or hangs on a hostile file costs that file an
`error` row and nothing else.

The parent sends a batch of encoded images down the child's stdin and reads the decoded pixels back from a
private pipe; the protocol is length-prefixed raw bytes plus a small JSON header (no pickle in either
direction). A batch that times out or kills the child is retried one image at a time in fresh children: the
guilty image gets `decode: decoder crashed ...` or `decode: timed out ...`, the others their pixels.

Used on the CPU path (the default for `scan` and `enroll` there). The GPU path decodes in-process, because a
CUDA context does not cross processes cheaply; there the header sniff (pixel limit, format) is the guard.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import time

import numpy as np

from scanner.decode import DEFAULT_MAX_PIXELS, DecodedBatch, ImageDecoder, ViewSpec

DEFAULT_TIMEOUT_S = 20.0  # per image; a batch gets startup allowance + per-image time
DEFAULT_STARTUP_S = 30.0  # covers a fresh child's start-up (DALI import, pipeline build)
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class DecoderChildFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------- child side

def _read_exact_stream(stream, n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) < n:
        raise EOFError
    return data


def child_main(argv: list[str] | None = None) -> None:
    """Loop: read a batch from stdin, decode it with the in-process ImageDecoder, write the result."""
    args = argv or sys.argv[1:]
    size, max_batch, max_pixels, views = (int(a) for a in args[:4])
    spec = ViewSpec(size, resize=args[4], views=views)
    # Our replies go to a private copy of stdout; fd 1 then points at stderr, so anything a C library prints
    # cannot corrupt the protocol.
    reply = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    decoder = ImageDecoder(spec, max_batch, device="cpu", max_pixels=max_pixels, num_threads=1)
    requests = sys.stdin.buffer
    while True:
        try:
            (count,) = _U32.unpack(_read_exact_stream(requests, 4))
        except EOFError:
            return
        datas = []
        for _ in range(count):
            (length,) = _U64.unpack(_read_exact_stream(requests, 8))
            datas.append(_read_exact_stream(requests, length))
        batch = decoder.decode(datas)
        pixels = np.ascontiguousarray(batch.pixels, dtype=np.uint8)
        header = json.dumps({"sizes": batch.sizes, "errors": batch.errors, "rows": int(pixels.shape[0]),
                             "view_counts": batch.view_counts}).encode()
        reply.write(_U32.pack(len(header)) + header)
        reply.write(memoryview(pixels).cast("B"))


# --------------------------------------------------------------------------------------------- parent side

class IsolatedImageDecoder:
    """Same interface as ImageDecoder.decode (numpy pixels), with the decoding done in a child process."""

    def __init__(self, spec: ViewSpec, max_batch: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                 timeout_s: float = DEFAULT_TIMEOUT_S, startup_s: float = DEFAULT_STARTUP_S,
                 child_command: list[str] | None = None):
        self.spec = spec
        self.size = spec.size
        self.max_batch, self.max_pixels, self.timeout_s = max_batch, max_pixels, timeout_s
        self.startup_s = startup_s
        self.child_command = child_command or [sys.executable, "-m", "scanner.decode_isolated"]
        self._child: subprocess.Popen | None = None

    # -- child lifecycle
    def _start(self) -> subprocess.Popen:
        if self._child is None or self._child.poll() is not None:
            self._child = subprocess.Popen(
                [*self.child_command, str(self.size), str(self.max_batch), str(self.max_pixels), str(self.spec.views),
                 self.spec.resize],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        return self._child

    def _kill(self) -> None:
        if self._child is not None:
            if self._child.poll() is None:
                self._child.kill()
            self._child.wait()
            for stream in (self._child.stdin, self._child.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            self._child = None

    def close(self) -> None:
        if self._child is not None and self._child.poll() is None:
            try:
                self._child.stdin.close()  # EOF: the child exits its loop
                self._child.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._kill()

    # -- one round trip
    def _read_exact(self, fd: int, n: int, deadline: float) -> bytes:
        chunks, got = [], 0
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DecoderChildFailed(f"timed out after {self.timeout_s:g} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                raise DecoderChildFailed(self._death_reason())
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _death_reason(self) -> str:
        code = self._child.wait(timeout=5) if self._child is not None else None
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"decoder crashed ({name})"
        return f"decoder exited (status {code})"

    def _round_trip(self, datas: list[bytes], timeout_s: float) -> DecodedBatch:
        child = self._start()
        deadline = time.monotonic() + timeout_s
        try:
            child.stdin.write(_U32.pack(len(datas)))
            for d in datas:
                child.stdin.write(_U64.pack(len(d)))
                child.stdin.write(d)
            child.stdin.flush()
        except (BrokenPipeError, OSError):
            raise DecoderChildFailed(self._death_reason()) from None
        fd = child.stdout.fileno()
        (hlen,) = _U32.unpack(self._read_exact(fd, 4, deadline))
        header = json.loads(self._read_exact(fd, hlen, deadline))
        rows = int(header["rows"])
        raw = self._read_exact(fd, rows * self.size * self.size * 3, deadline)
        pixels = np.frombuffer(raw, dtype=np.uint8).reshape(rows, self.size, self.size, 3)
        sizes = [tuple(s) if s is not None else None for s in header["sizes"]]
        return DecodedBatch(pixels=pixels, sizes=sizes, errors=header["errors"], view_counts=header["view_counts"])

    # -- public
    def decode(self, datas: list[bytes | None]) -> DecodedBatch:
        n = len(datas)
        errors: list[str | None] = [None] * n
        todo = []
        for i, d in enumerate(datas):
            if d is None:
                errors[i] = "decode: no data"
            else:
                todo.append(i)
        if not todo:
            return DecodedBatch(np.empty((0, self.size, self.size, 3), np.uint8), [None] * n, errors, [])
        try:
            batch = self._round_trip([datas[i] for i in todo], self.startup_s + self.timeout_s * len(todo))
            return self._merge(n, todo, errors, [batch])
        except DecoderChildFailed:
            self._kill()
        # Isolate the culprit(s): one image per round trip, a fresh child after each failure.
        singles = []
        for i in todo:
            try:
                singles.append(self._round_trip([datas[i]], self.startup_s + self.timeout_s))
            except DecoderChildFailed as failure:
                self._kill()
                singles.append(DecodedBatch(np.empty((0, self.size, self.size, 3), np.uint8), [None],
                                            [f"decode: {failure.reason}"], []))
        return self._merge(n, todo, errors, singles)

    def _merge(self, n: int, todo: list[int], errors: list, batches: list[DecodedBatch]) -> DecodedBatch:
        sizes: list = [None] * n
        item_errors = [e for b in batches for e in b.errors]
        item_sizes = [s for b in batches for s in b.sizes]
        for slot, i in enumerate(todo):
            errors[i], sizes[i] = item_errors[slot], item_sizes[slot]
        frames = [b.pixels for b in batches if b.pixels.shape[0]]
        pixels = np.concatenate(frames) if frames else np.empty((0, self.size, self.size, 3), np.uint8)
        counts = [c for b in batches for c in b.view_counts]
        return DecodedBatch(pixels=pixels, sizes=sizes, errors=errors, view_counts=counts)


if __name__ == "__main__":
    child_main()
