"""Decoding in a child process, so a decoder that aborts, crashes or hangs on a hostile file costs that file an
`error` row and nothing else.

The parent puts a batch of encoded images in a shared memory file and sends their lengths down the child's
stdin; the child puts the decoded pixels in a second shared memory file and answers with a small JSON header on a
private pipe (no pickle in either direction). The bytes and pixels go through memory files rather than the pipes
because a pipe moves 64 KiB per wake-up of each process: that cost the decode stage a third of its speed at 256 px
(docs/benchmarks.md, "Decode stage"). The pipes still carry every message, so a child that dies or hangs is seen
on them as before. `timeout_s` is per image, strictly: a whole batch must come back within one image's timeout (a
batch of ordinary images takes a small fraction of it), else, or when the child dies, the batch is decoded
again one image per round trip in fresh children, each image within its own timeout; the image in flight when
something goes wrong gets `decode: decoder crashed ...` or `decode: timed out after T s`, the others their
pixels. A child whose DALI failed on a file finishes that batch with Pillow, says so in its reply and exits:
DALI is not safe to run again in that process (scanner.decode.DaliImageDecoder). A fresh child says it is ready (decoder built) before anything is sent, so its start-up (`startup_s`; a child
that misses it gets one more try with twice the time) is never charged to an image. One image per round trip costs about 0.6 ms per image (DALI's per-run overhead
and the pipe), which is why the batch goes first.

The child also reads each file's provenance evidence (C2PA, XMP, PNG text, EXIF) when asked: metadata parsers
face the same hostile bytes as decoders, so a parser that hangs or crashes costs its file's row, within the same
timeout, never the run.

Used on the CPU path (the default for `scan` and `enroll` there). The GPU path decodes in-process, because a
CUDA context does not cross processes cheaply; there the header sniff (pixel limit, format) is the guard.
"""

from __future__ import annotations

import json
import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import time

import numpy as np

from scanner.decode import DEFAULT_MAX_PIXELS, DecodedBatch, ImageDecoder, ViewSpec, dali_failed_in_process

DEFAULT_TIMEOUT_S = 20.0  # per image, from the moment it is sent to the moment its pixels are back
DEFAULT_STARTUP_S = 30.0  # a fresh child's start-up (DALI import, pipeline build), before any image is sent
_READY = b'{"ready": true}'

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# A memory file that grew past this for one large batch (12 MP JPEGs) is emptied after it, not kept at that size.
KEEP_SHARED_BYTES = 128 * 1024 * 1024


def shared_memory_file(name: str) -> int:
    """An anonymous file in memory (Linux memfd; elsewhere an unlinked temporary file), inherited by the child."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create(name, os.MFD_CLOEXEC)
    import tempfile

    fd, path = tempfile.mkstemp(prefix=name)
    os.unlink(path)
    return fd


def write_all(fd: int, buffers, offset: int = 0) -> int:
    """Write buffers one after another at `offset` of a file (a short write is continued); returns the end."""
    for buf in buffers:
        view = memoryview(buf).cast("B")
        while view:
            done = os.pwrite(fd, view, offset)
            view, offset = view[done:], offset + done
    return offset


def read_exact_at(fd: int, n: int, offset: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = os.pread(fd, n - got, offset + got)
        if not chunk:
            raise EOFError
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class MappedPixels:
    """The child's side of the reply file: decoded views are written straight into it (no copy, no fresh pages per
    batch). The parent may empty the file between batches (KEEP_SHARED_BYTES), so the mapping follows its size."""

    def __init__(self, fd: int, size: int):
        self.fd, self.view_bytes = fd, size * size * 3
        self.shape = (size, size, 3)
        self._map: mmap.mmap | None = None

    def array(self, rows: int) -> np.ndarray:
        needed = rows * self.view_bytes
        if needed == 0:
            return np.empty((0, *self.shape), dtype=np.uint8)
        size = os.fstat(self.fd).st_size
        if size < needed:
            os.ftruncate(self.fd, needed)
            size = needed
        if self._map is None or len(self._map) != size:
            # the old mapping is dropped, not closed: the last batch's array may still hold it until replaced
            self._map = mmap.mmap(self.fd, size)
        return np.frombuffer(self._map, dtype=np.uint8, count=needed).reshape(rows, *self.shape)


def read_into(fd: int, buf, offset: int = 0) -> None:
    """Fill `buf` from `offset` of a file; EOFError if the file is shorter."""
    view = memoryview(buf).cast("B")
    while view:
        got = os.preadv(fd, [view], offset)
        if got <= 0:
            raise EOFError
        view, offset = view[got:], offset + got


class DecoderChildFailed(Exception):
    def __init__(self, reason: str, at_start: bool = False):
        super().__init__(reason)
        self.reason, self.at_start = reason, at_start


# ---------------------------------------------------------------------------------------------- child side

def _read_exact_stream(stream, n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) < n:
        raise EOFError
    return data


def child_main(argv: list[str] | None = None) -> None:
    """Loop: read a batch's lengths from stdin and its bytes from the request file, decode it with the in-process
    ImageDecoder, put the pixels in the reply file and the header on the reply pipe."""
    args = argv or sys.argv[1:]
    size, max_batch, max_pixels, views = (int(a) for a in args[:4])
    spec = ViewSpec(size, resize=args[4], views=views)
    request_fd, reply_fd = int(args[5]), int(args[6])
    threads = int(args[7]) if len(args) > 7 else 1
    # Our replies go to a private copy of stdout; fd 1 then points at stderr, so anything a C library prints
    # cannot corrupt the protocol.
    reply = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    decoder = ImageDecoder(spec, max_batch, device="cpu", max_pixels=max_pixels, num_threads=threads)
    decoder.dali.build()
    reply_pixels = MappedPixels(reply_fd, size)
    reply.write(_U32.pack(len(_READY)) + _READY)
    requests = sys.stdin.buffer
    while True:
        try:
            (count,) = _U32.unpack(_read_exact_stream(requests, 4))
            provenance = _read_exact_stream(requests, 1) == b"\x01"
            lengths = struct.unpack(f"<{count}Q", _read_exact_stream(requests, 8 * count))
        except EOFError:
            return
        datas, offset = [], 0
        for length in lengths:
            datas.append(read_exact_at(request_fd, length, offset))
            offset += length
        batch = decoder.decode(datas, provenance=provenance, pixels_out=reply_pixels.array)
        pixels = batch.pixels
        retire = dali_failed_in_process()  # DALI is not run again in this process: a fresh child takes over
        header = json.dumps({"sizes": batch.sizes, "errors": batch.errors, "rows": int(pixels.shape[0]),
                             "view_counts": batch.view_counts, "provenance": batch.provenance,
                             "retire": retire}).encode()
        reply.write(_U32.pack(len(header)) + header)
        if retire:
            os._exit(0)  # without running DALI's teardown, which is what crashed after a failure


# --------------------------------------------------------------------------------------------- parent side

class IsolatedImageDecoder:
    """Same interface as ImageDecoder.decode (numpy pixels), with the decoding done in a child process."""

    def __init__(self, spec: ViewSpec, max_batch: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                 timeout_s: float = DEFAULT_TIMEOUT_S, startup_s: float = DEFAULT_STARTUP_S,
                 child_command: list[str] | None = None, threads: int = 1):
        """`threads`: the child's DALI threads (scanner.threads.thread_budget().decode in a scan)."""
        self.spec = spec
        self.threads = threads
        self.size = spec.size
        self.max_batch, self.max_pixels, self.timeout_s = max_batch, max_pixels, timeout_s
        self.startup_s = startup_s
        self.child_command = child_command or [sys.executable, "-m", "scanner.decode_isolated"]
        self._child: subprocess.Popen | None = None
        self._request_fd = shared_memory_file("imgscan-decode-requests")
        self._reply_fd = shared_memory_file("imgscan-decode-pixels")

    # -- child lifecycle
    def _start(self) -> subprocess.Popen:
        """The running child, or a fresh one once it has said it is ready. A machine busy with other work can
        take longer than startup_s to import DALI: a child that does not start gets one more try with twice the
        time before the batch's images are failed."""
        if self._child is not None and self._child.poll() is None:
            return self._child
        try:
            return self._spawn(self.startup_s)
        except DecoderChildFailed as first:
            try:
                return self._spawn(2 * self.startup_s)
            except DecoderChildFailed as second:
                reason = first.reason if first.reason == second.reason else f"{first.reason}; again: {second.reason}"
                raise DecoderChildFailed(reason, at_start=True) from None

    def _spawn(self, startup_s: float) -> subprocess.Popen:
        self._kill()
        self._child = subprocess.Popen(
            [*self.child_command, str(self.size), str(self.max_batch), str(self.max_pixels), str(self.spec.views),
             self.spec.resize, str(self._request_fd), str(self._reply_fd), str(self.threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            pass_fds=(self._request_fd, self._reply_fd),
            env={**os.environ, "OMP_NUM_THREADS": str(self.threads)},
        )
        deadline = time.monotonic() + startup_s
        fd = self._child.stdout.fileno()
        late = f"decoder did not start within {startup_s:g} s"
        try:
            (hlen,) = _U32.unpack(self._read_exact(fd, 4, deadline, late))
            ready = self._read_exact(fd, hlen, deadline, late)
        except DecoderChildFailed as failure:
            self._kill()
            raise DecoderChildFailed(failure.reason, at_start=True) from None
        if ready != _READY:
            self._kill()
            raise DecoderChildFailed("decoder did not start (unexpected greeting)", at_start=True)
        return self._child

    def child_pid(self) -> int | None:
        """The running child's process id (for measuring its CPU time), None when none runs."""
        return self._child.pid if self._child is not None and self._child.poll() is None else None

    def _retire(self) -> None:
        """The child said it exits after this reply (its DALI failed): let it, so the next batch gets a fresh one."""
        try:
            self._child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._kill()

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
        for fd in (self._request_fd, self._reply_fd):
            if fd >= 0:
                os.close(fd)
        self._request_fd = self._reply_fd = -1

    # -- one round trip
    def _read_exact(self, fd: int, n: int, deadline: float, late: str) -> bytes:
        chunks, got = [], 0
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DecoderChildFailed(late)
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

    def _round_trip(self, datas: list[bytes], provenance: bool) -> DecodedBatch:
        """Images to a ready child and their pixels (and provenance, if asked) back, all within timeout_s of
        sending them."""
        child = self._start()
        request_end = write_all(self._request_fd, datas)
        deadline = time.monotonic() + self.timeout_s
        late = f"timed out after {self.timeout_s:g} s"
        try:
            child.stdin.write(_U32.pack(len(datas)) + (b"\x01" if provenance else b"\x00")
                              + struct.pack(f"<{len(datas)}Q", *(len(d) for d in datas)))
            child.stdin.flush()
        except (BrokenPipeError, OSError):
            raise DecoderChildFailed(self._death_reason()) from None
        fd = child.stdout.fileno()
        (hlen,) = _U32.unpack(self._read_exact(fd, 4, deadline, late))
        header = json.loads(self._read_exact(fd, hlen, deadline, late))
        rows = int(header["rows"])
        pixels = np.empty((rows, self.size, self.size, 3), dtype=np.uint8)
        try:
            if rows:  # a batch of files that all failed has no pixels
                read_into(self._reply_fd, pixels)
        except EOFError:
            raise DecoderChildFailed("decoder replied without its pixels") from None
        for fd, end in ((self._request_fd, request_end), (self._reply_fd, pixels.nbytes)):
            if end > KEEP_SHARED_BYTES:
                os.ftruncate(fd, 0)
        if header.get("retire"):
            self._retire()
        sizes = [tuple(s) if s is not None else None for s in header["sizes"]]
        return DecodedBatch(pixels=pixels, sizes=sizes, errors=header["errors"], view_counts=header["view_counts"],
                            provenance=header.get("provenance"))

    # -- public
    def decode(self, datas: list[bytes | None], provenance: bool = False) -> DecodedBatch:
        """`provenance`: the child also reads each file's provenance evidence (DecodedBatch.provenance)."""
        n = len(datas)
        errors: list[str | None] = [None] * n
        todo = []
        for i, d in enumerate(datas):
            if d is None:
                errors[i] = "decode: no data"
            else:
                todo.append(i)
        if not todo:
            return DecodedBatch(np.empty((0, self.size, self.size, 3), np.uint8), [None] * n, errors, [],
                                [None] * n if provenance else None)
        try:
            return self._merge(n, todo, errors, [self._round_trip([datas[i] for i in todo], provenance)], provenance)
        except DecoderChildFailed as failure:
            self._kill()
            start_failure = failure if failure.at_start else None
        # One image per round trip: the culprit is the image in flight; a fresh child after each failure.
        singles: list[DecodedBatch] = []
        for i in todo:
            try:
                if start_failure is not None:
                    raise start_failure  # a child that cannot start fails the batch, without a restart per image
                singles.append(self._round_trip([datas[i]], provenance))
            except DecoderChildFailed as failure:
                self._kill()  # the next image gets a fresh child
                start_failure = failure if failure.at_start else None
                singles.append(DecodedBatch(np.empty((0, self.size, self.size, 3), np.uint8), [None],
                                            [f"decode: {failure.reason}"], [], [None]))
        return self._merge(n, todo, errors, singles, provenance)

    def _merge(self, n: int, todo: list[int], errors: list, batches: list[DecodedBatch],
               provenance: bool) -> DecodedBatch:
        sizes: list = [None] * n
        entries: list | None = [None] * n if provenance else None
        if entries is not None:
            item_entries = [e for b in batches for e in (b.provenance or [None] * len(b.errors))]
            for slot, i in enumerate(todo):
                entries[i] = item_entries[slot]
        item_errors = [e for b in batches for e in b.errors]
        item_sizes = [s for b in batches for s in b.sizes]
        for slot, i in enumerate(todo):
            errors[i], sizes[i] = item_errors[slot], item_sizes[slot]
        frames = [b.pixels for b in batches if b.pixels.shape[0]]
        if len(frames) == 1:
            pixels = frames[0]  # the usual case, a whole batch in one round trip: no second copy
        else:
            pixels = np.concatenate(frames) if frames else np.empty((0, self.size, self.size, 3), np.uint8)
        counts = [c for b in batches for c in b.view_counts]
        return DecodedBatch(pixels=pixels, sizes=sizes, errors=errors, view_counts=counts, provenance=entries)


if __name__ == "__main__":
    child_main()
