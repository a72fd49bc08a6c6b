"""Write stage: verdict rows -> a resumable journal -> one Parquet file.

While a scan runs, rows go to `OUT.partial/journal-NNNN.arrows`, Arrow IPC *stream* files: append-only, each
record batch complete on its own. A run killed at any instant (SIGKILL, power loss) leaves every batch
written before the kill readable; only a torn last batch is dropped, and its files are scanned again. Each
run appends to a new journal, never to one that may be torn.

When the walk is exhausted, the journals are merged into `OUT` (written as `OUT.tmp-*`, fsync'd and renamed),
then `OUT.partial/` is removed. A re-run finds which paths are done from the journals and skips them, so the
final file has exactly one row per image file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from scanner.errors import UsageError
from scanner.schema import VERDICT_SCHEMA

RUN_FILE = "run.json"
ROW_GROUP_ROWS = 65536


def path_key(raw: bytes) -> int:
    return xxhash.xxh3_64_intdigest(raw)


def read_journal(path: Path):
    """Yield the complete record batches of a journal, stopping quietly at a torn tail."""
    try:
        with pa.OSFile(str(path), "rb") as f:
            try:
                reader = pa.ipc.open_stream(f)
            except (pa.ArrowInvalid, OSError):
                return  # killed before the schema was complete: nothing in it
            while True:
                try:
                    yield reader.read_next_batch()
                except StopIteration:
                    return
                except (pa.ArrowInvalid, OSError):
                    return  # torn last batch
    except FileNotFoundError:
        return


def batch_path_keys(batch: pa.RecordBatch) -> np.ndarray:
    paths = batch.column("path").to_pylist()
    raws = batch.column("path_bytes").to_pylist()
    return np.fromiter(
        (path_key(raw if raw is not None else p.encode("utf-8")) for p, raw in zip(paths, raws)),
        dtype=np.uint64, count=len(paths),
    )


class ScanJournal:
    def __init__(self, out: Path, fingerprint: dict, metadata: dict[str, str]):
        self.out = out
        self.dir = out.with_name(out.name + ".partial")
        self.fingerprint = fingerprint
        self.metadata = metadata
        self._writer = None
        self._sink = None
        self.rows_written = 0

    # -- starting / resuming ------------------------------------------------------------------------------
    def open(self) -> np.ndarray:
        """Create or adopt the staging directory; return sorted path keys already done (uint64)."""
        run_file = self.dir / RUN_FILE
        if self.dir.is_dir() and run_file.is_file():
            try:
                previous = json.loads(run_file.read_text(encoding="utf-8"))
            except ValueError:
                previous = None
            if previous != self.fingerprint:
                raise UsageError(
                    f"{self.dir} holds an unfinished scan with other settings (roots, model, k or file filter); "
                    "re-run that command to finish it, or delete the directory to start over"
                )
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / (RUN_FILE + ".tmp")
            tmp.write_text(json.dumps(self.fingerprint, sort_keys=True), encoding="utf-8")
            os.replace(tmp, run_file)
        keys = [batch_path_keys(b) for j in self.journals() for b in read_journal(j)]
        done = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
        return np.unique(done)

    def journals(self) -> list[Path]:
        return sorted(self.dir.glob("journal-*.arrows"))

    def _start_journal(self) -> None:
        existing = self.journals()
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        path = self.dir / f"journal-{number:05d}.arrows"
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, VERDICT_SCHEMA)

    # -- appending ----------------------------------------------------------------------------------------
    def append(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self._start_journal()
        self._writer.write_batch(batch)
        self._sink.flush()  # in the page cache: survives SIGKILL of this process
        self.rows_written += batch.num_rows

    def sync(self) -> None:
        if self._sink is not None:
            os.fsync(self._sink.fileno())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.sync()
            self._sink.close()
            self._writer = self._sink = None

    # -- finishing ----------------------------------------------------------------------------------------
    def finish(self) -> int:
        """Merge all journals into the final Parquet file atomically; return its row count."""
        self.close()
        schema = VERDICT_SCHEMA.with_metadata({k: v.encode() for k, v in self.metadata.items()})
        tmp = self.out.with_name(f"{self.out.name}.tmp-{os.getpid()}")
        rows = 0
        try:
            with pq.ParquetWriter(str(tmp), schema, compression="zstd") as pw:
                pending, pending_rows = [], 0
                for journal in self.journals():
                    for batch in read_journal(journal):
                        pending.append(batch)
                        pending_rows += batch.num_rows
                        if pending_rows >= ROW_GROUP_ROWS:
                            pw.write_table(pa.Table.from_batches(pending, VERDICT_SCHEMA).replace_schema_metadata(schema.metadata))
                            rows += pending_rows
                            pending, pending_rows = [], 0
                if pending:
                    pw.write_table(pa.Table.from_batches(pending, VERDICT_SCHEMA).replace_schema_metadata(schema.metadata))
                    rows += pending_rows
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        shutil.rmtree(self.dir, ignore_errors=True)
        return rows
