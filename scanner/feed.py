"""The local engine's feeder: walk -> read + hash -> batch + decode, on threads joined by bounded queues.

    walk (1 thread) -> read + hash (N threads) -> batch + decode (1 thread) -> the caller (embed, search, ...)

Bounded queues keep memory flat however large the crawl; DALI, torch and hnswlib release the GIL, so decoding
the next batch overlaps embedding this one. A thread's exception stops the feeder and is raised to the caller.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

from scanner.config import ReadConfig
from scanner.keys import KeySet, path_key, sha_key
from scanner.read import ReadResult, read_file
from scanner.walk import walk_files

_END = object()


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
            for raw in walk_files(self.roots, self.read.all_files):
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
                if not self._put(self.read_q, read_file(raw, self.read.max_bytes)):
                    return
        finally:
            self._put(self.read_q, _END)

    def _batch_and_decode(self) -> None:
        readers_left = self.read.readers
        batch: list[ReadResult] = []
        while readers_left and not self.stop.is_set():
            item = self.read_q.get()
            if item is _END:
                readers_left -= 1
            elif item.sha is not None and sha_key(item.sha) in self.known:
                self.skipped_known += 1
            else:
                batch.append(item)
            if len(batch) >= self.batch_size or (batch and not readers_left):
                if not self._put(self.decoded_q, self.decode_fn(batch)):
                    return
                batch = []
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
