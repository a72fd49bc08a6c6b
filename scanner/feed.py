"""The local engine's feeder: walk -> read + hash -> batch + decode, on threads joined by bounded queues.

    walk (1 thread) -> read + hash (N threads) -> batch + decode (1 thread) -> the caller (embed, search, ...)

Bounded queues keep memory flat however large the crawl, and a byte budget (`ReadConfig.max_inflight_bytes`)
however large its files: a reader waits for budget before it reads, a batch is cut early when it holds half the
budget, and a batch's bytes are returned once it is decoded. DALI, torch and hnswlib release the GIL, so decoding
the next batch overlaps embedding this one. A thread's exception stops the feeder and is raised to the caller.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Callable, Iterator

from scanner.config import ReadConfig
from scanner.keys import KeySet, path_key, sha_key
from scanner.read import ReadResult, read_file
from scanner.shards import is_shard, read_shard
from scanner.walk import files_to_scan

_END = object()
# A batch that has waited this long for its next file is decoded as it is: a list streamed by a crawler (or one
# that never ends) gets its rows while the crawler writes, instead of when a batch happens to fill.
IDLE_CUT_S = 1.0


class ByteBudget:
    """Bytes of file data in flight. `take` waits until `n` more fit (or nothing is in flight: a file larger than
    the whole budget is read alone); `give` returns them."""

    def __init__(self, limit: int, stop: threading.Event):
        self.limit, self.stop = max(1, limit), stop
        self.used = 0
        self.waiting = 0
        self.cond = threading.Condition()

    def take(self, n: int) -> bool:
        with self.cond:
            self.waiting += 1
            try:
                while self.used and self.used + n > self.limit:
                    if self.stop.is_set():
                        return False
                    self.cond.wait(0.1)
                self.used += n
                return True
            finally:
                self.waiting -= 1

    def give(self, n: int) -> None:
        if n:
            with self.cond:
                self.used -= n
                self.cond.notify_all()


def _planned_bytes(path: bytes, max_bytes: int) -> int:
    """What reading this path will hold in memory: its size (capped), 0 when it will not be read."""
    try:
        return min(os.stat(path).st_size, max_bytes + 1)
    except OSError:
        return 0


class LocalFeeder:
    """Yields decoded batches (whatever `decode(reads)` returns) of the files under `roots`, skipping paths in
    `done` and files whose hash is in `known` (counted in `skipped_known`)."""

    def __init__(self, roots: list[bytes], read: ReadConfig, batch_size: int, decode: Callable,
                 done: KeySet | None = None, known: KeySet | None = None, queue_batches: int = 4):
        self.roots, self.read, self.batch_size, self.decode_fn = roots, read, batch_size, decode
        self.done, self.known = done or KeySet(), known or KeySet()
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self.paths_q: queue.Queue = queue.Queue(maxsize=batch_size * queue_batches)
        self.read_q: queue.Queue = queue.Queue(maxsize=batch_size * queue_batches)
        self.decoded_q: queue.Queue = queue.Queue(maxsize=queue_batches)
        self.skipped_known = 0
        self.budget = ByteBudget(read.max_inflight_bytes, self.stop)
        self.threads: list[threading.Thread] = []

    def __iter__(self) -> Iterator:
        self._start()
        try:
            yield from self._batches()
        finally:
            self._shutdown()

    def _put(self, q: queue.Queue, item) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _guard(self, fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # surfaced by the consuming thread; never swallowed
                self.failure = self.failure or exc
                self.stop.set()
        return run

    def _start(self) -> None:
        specs = [("imgscan-walk", self._walk)] + [(f"imgscan-read-{i}", self._read) for i in range(self.read.readers)]
        specs.append(("imgscan-decode", self._batch_and_decode))
        for name, fn in specs:
            t = threading.Thread(target=self._guard(fn), name=name, daemon=True)
            t.start()
            self.threads.append(t)

    def _walk(self) -> None:
        try:
            for raw in files_to_scan(self.roots, self.read):
                if path_key(raw) in self.done:
                    continue  # finished by an earlier, interrupted run of the same scan
                if not self._put(self.paths_q, raw):
                    return
        finally:
            for _ in range(self.read.readers):
                self._put(self.paths_q, _END)

    def _read(self) -> None:
        try:
            while not self.stop.is_set():
                raw = self.paths_q.get()
                if raw is _END:
                    return
                if is_shard(raw):
                    if not self._read_shard(raw):
                        return
                    continue
                planned = _planned_bytes(raw, self.read.max_bytes)
                if not self.budget.take(planned):
                    return
                result = read_file(raw, self.read.max_bytes)
                held = len(result.data) if result.data is not None else 0
                self.budget.give(planned - held)  # the file may have changed size since the stat
                if not self._put(self.read_q, result):
                    return
        finally:
            self._put(self.read_q, _END)

    def _read_shard(self, shard: bytes) -> bool:
        """A shard's members, streamed into the read queue one by one, each within the byte budget."""
        for result in read_shard(shard, self.read.max_bytes, self.read.all_files,
                                 skip=lambda p: path_key(p) in self.done, image_column=self.read.image_column):
            held = len(result.data) if result.data is not None else 0
            if not self.budget.take(held):
                return False
            if not self._put(self.read_q, result):
                return False
        return True

    def _batch_and_decode(self) -> None:
        readers_left = self.read.readers
        batch: list[ReadResult] = []
        batch_bytes = 0
        last_item = time.monotonic()
        while readers_left and not self.stop.is_set():
            try:
                item = self.read_q.get(timeout=0.05)
                last_item = time.monotonic()
            except queue.Empty:
                item = None
            if item is _END:
                readers_left -= 1
            elif item is not None and item.sha is not None and sha_key(item.sha) in self.known:
                self.skipped_known += 1
                self.budget.give(len(item.data or b""))
            elif item is not None:
                batch.append(item)
                batch_bytes += len(item.data or b"")
            # cut the batch when it is full, when the crawl ends, when it holds half the byte budget, when
            # readers wait for budget and nothing more is coming (they wait for these very bytes), or when no file
            # has come for IDLE_CUT_S
            starved = item is None and self.budget.waiting and self.read_q.empty()
            idle = item is None and time.monotonic() - last_item >= IDLE_CUT_S
            if batch and (len(batch) >= self.batch_size or not readers_left or starved or idle
                          or 2 * batch_bytes >= self.budget.limit):
                decoded = self.decode_fn(batch)  # drops the batch's bytes
                self.budget.give(batch_bytes)
                if not self._put(self.decoded_q, decoded):
                    return
                batch, batch_bytes = [], 0
        self._put(self.decoded_q, _END)

    def _batches(self):
        while True:
            try:
                item = self.decoded_q.get(timeout=0.2)
            except queue.Empty:
                if self.failure is not None:
                    raise self.failure
                continue
            if item is _END:
                if self.failure is not None:
                    raise self.failure
                return
            yield item

    def _shutdown(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)
