"""Write stage: verdict record batches -> one Parquet file (or a directory of parts), resumable at any instant.

One protocol, `ScanOutput`, two implementations, as img2dataset's interchangeable writers:

    open(fingerprint) -> KeySet of paths already done   adopt the staging directory of an unfinished run with
                                                        the same settings, or start one
    write(batches)                                       store finished rows, durable before the next batch
    finish(run_info) -> rows                            publish the output atomically, remove the staging

- `JournalOutput` (local engine): rows go to `OUT.partial/journal-NNNNN.arrows`, Arrow IPC *stream* files:
  append-only, each record batch complete on its own. A run killed at any instant leaves every batch written
  before the kill readable; only a torn last batch is dropped, and its files are scanned again. Each run
  appends to a new journal, never to one that may be torn.
- `PartsOutput` (Ray engine): each actor call writes one `part-<16 hex>.parquet`, atomically, named by its
  rows' paths (a retried call rewrites the same part). `--out DIR` keeps the parts (with `_manifest.json`,
  written last, marking the scan complete); `--out FILE.parquet` stages them in `FILE.parquet.parts/`.

Both keep the scan's settings in the staging directory (an unfinished scan is only resumed by the same
command) and assemble the final file the same way: streamed row groups, written to a temporary name, fsync'd
and renamed (imgscan_core.files). A re-run skips the paths already done, so the output has exactly one row
per image file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from imgscan_core.errors import UsageError
from imgscan_core.files import atomic_path, atomic_write_json
from imgscan_core.locks import LOCK_FILE, lock_holder, try_lock
from scanner.keys import KeySet, batch_path_keys
from scanner.read import TRANSIENT_MARK
from scanner.schema import VERDICT_SCHEMA, conform

ROW_GROUP_ROWS = 65536


# ----------------------------------------------------------------------------------------- shared by both

def adopt_staging(staging: Path, run_file: str, fingerprint: dict) -> bool:
    """Adopt `staging` when it holds an unfinished scan with these settings (True), or create it (False).
    The caller holds the staging directory's lock (ScanOutput.lock)."""
    path = staging / run_file
    if staging.is_dir() and path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            previous = None
        if previous != fingerprint:
            raise UsageError(
                f"{staging} holds an unfinished scan with other settings (roots, model, k, index generation or file "
                "filter); re-run that command to finish it, or pass --overwrite to start over"
            )
        return True
    staging.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, fingerprint, indent=None)
    return False


def verdict_schema(metadata: dict[str, str]) -> pa.Schema:
    return VERDICT_SCHEMA.with_metadata({k: v.encode() for k, v in metadata.items()})


def write_parquet(out: Path, batches: Iterable[pa.RecordBatch], metadata: dict[str, str]) -> int:
    """Stream record batches into one Parquet file, atomically, in row groups of ROW_GROUP_ROWS (memory stays
    flat however many rows). Returns the row count."""
    schema = verdict_schema(metadata)
    rows = 0
    with atomic_path(out) as tmp, pq.ParquetWriter(str(tmp), schema, compression="zstd") as pw:
        pending, pending_rows = [], 0
        for batch in batches:
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= ROW_GROUP_ROWS:
                pw.write_table(pa.Table.from_batches(pending, VERDICT_SCHEMA).replace_schema_metadata(schema.metadata))
                rows, pending, pending_rows = rows + pending_rows, [], 0
        if pending:
            pw.write_table(pa.Table.from_batches(pending, VERDICT_SCHEMA).replace_schema_metadata(schema.metadata))
            rows += pending_rows
    return rows


PROVENANCE_AI_PIXELS_REAL = "provenance says AI, pixels say real"
PROVENANCE_CAPTURE_PIXELS_AI = "provenance says camera capture, pixels say AI"


def provenance_disagreements(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Row masks of the cases a reviewer must look at: provenance says AI while the pixels say real, and
    provenance says camera capture (and nothing says AI) while the pixels say AI."""
    n = table.num_rows
    column = table.column("is_ai")
    judged = pc.is_valid(column).to_numpy(zero_copy_only=False).astype(bool)
    is_ai = pc.fill_null(column, False).to_numpy(zero_copy_only=False).astype(bool)
    says_ai, says_capture = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    prov = table.column("provenance").combine_chunks()
    flat = pc.list_flatten(prov)
    if len(flat):
        parents = pc.list_parent_indices(prov).to_numpy()
        indicates = pc.struct_field(flat, "indicates").to_numpy(zero_copy_only=False)
        says_ai[parents[indicates == "ai"]] = True
        says_capture[parents[indicates == "capture"]] = True
    says_capture &= ~says_ai
    return judged & says_ai & ~is_ai, judged & says_capture & is_ai


def summarize(files: list[Path]) -> tuple[Counter, Counter, Counter]:
    """Counts per label, per kind of error (the message up to its details in parentheses), and of provenance
    that disagrees with the pixel verdict."""
    labels, errors, disagreements = Counter(), Counter(), Counter()
    for f in files:
        table = pq.read_table(f, columns=["label", "error", "is_ai", "provenance"])
        for lab, err in zip(table.column("label").to_pylist(), table.column("error").to_pylist()):
            if err is None:
                labels[lab] += 1
            else:
                errors[err.split(" (")[0]] += 1
        ai_real, capture_ai = provenance_disagreements(table)
        disagreements[PROVENANCE_AI_PIXELS_REAL] += int(ai_real.sum())
        disagreements[PROVENANCE_CAPTURE_PIXELS_AI] += int(capture_ai.sum())
    return labels, errors, disagreements


def remove_tree(directory: Path) -> None:
    """Remove a staging directory so that no kill leaves half of one behind: renamed to a hidden name first (a
    staging directory that is there is always whole), then deleted; leftovers go at the next open."""
    if not directory.exists():
        return
    trash = directory.with_name(f".{directory.name}.removing-{os.getpid()}")
    os.replace(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


class ScanOutput:
    """Where a scan's rows go; see the module docstring. `metadata` is the verdict file's key-value metadata."""

    staging: Path

    def __init__(self, out: Path, metadata: dict[str, str] | None = None):
        self.out, self.metadata = out, metadata or {}
        self._lock_fd: int | None = None

    def check_target(self) -> None:
        """Refuse an --out that is something other than this output's kind of file (a device, a FIFO, ...)."""
        raise NotImplementedError

    def refuse_other_kinds(self, final_file: Path | None) -> None:
        """The final file, where there is one, must be a regular file or absent; the staging a directory or
        absent (never unlink or write through a device or a FIFO named as --out)."""
        if final_file is not None and final_file.exists() and not final_file.is_file():
            raise UsageError(f"--out {final_file}: exists and is not a regular file")
        if self.staging.exists() and not self.staging.is_dir():
            raise UsageError(f"{self.staging}: exists and is not a directory")

    def lock(self) -> None:
        """Take the staging directory's lock for this run: a second scan of the same --out is refused, never
        interleaved (released when the process ends, however it ends)."""
        self.staging.mkdir(parents=True, exist_ok=True)
        self._lock_fd = try_lock(self.staging / LOCK_FILE)
        if self._lock_fd is None:
            raise UsageError(f"--out {self.out}: another imgscan scan (pid {lock_holder(self.staging / LOCK_FILE)}) "
                             "is writing it; wait for it to finish, or choose another --out")

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def discard_unfinished(self) -> None:
        """--overwrite: an unfinished run's staging is dropped too (unless a run holds it now)."""
        if self.staging.is_dir() and self.out != self.staging:
            self.lock()
            self.remove_staging()

    def remove_leftovers(self) -> None:
        """Temporary files and half-removed staging directories of runs killed while finishing."""
        for stale in self.out.parent.glob(f".{self.out.name}.tmp-*"):
            stale.unlink(missing_ok=True)
        for stale in self.out.parent.glob(f".{self.staging.name}.removing-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def is_complete(self) -> bool:
        raise NotImplementedError

    def clear(self) -> None:
        """Remove a complete output (--overwrite)."""
        raise NotImplementedError

    def transient_rows(self) -> int:
        """Rows of the complete output whose error was transient (scanner.read.TRANSIENT_MARK): a re-run of the
        same scan reads those files again."""
        return sum(int(transient_mask(pq.read_table(f, columns=["error"])).sum()) for f in self.result_files())

    def judged_by(self) -> dict:
        """The `imgscan` metadata (model, index generation, ...) of the complete output; {} when unreadable."""
        try:
            return json.loads((pq.ParquetFile(self.result_files()[0]).schema_arrow.metadata or {}).get(b"imgscan", b"{}"))
        except (OSError, ValueError, IndexError, pa.ArrowException):
            return {}

    def reopen(self, fingerprint: dict) -> None:
        """Turn a complete output back into an unfinished run of this scan (its rows kept), so that a re-run
        retries the transient-error rows (the lock held)."""
        raise NotImplementedError

    def open(self, fingerprint: dict, reopen: bool = False) -> KeySet:
        """Take the lock, remove leftovers of killed runs, adopt or create the staging; the paths already done
        (rows with a transient error are not done: the run reads those files again). `reopen`: a complete output
        is first turned back into an unfinished run (`reopen`). The lock is released again if any of it fails."""
        self.lock()
        try:
            self.remove_leftovers()
            if reopen:
                self.reopen(fingerprint)
            return self.adopt(fingerprint)
        except BaseException:
            self.unlock()
            raise

    def adopt(self, fingerprint: dict) -> KeySet:
        """Adopt or create the staging directory (the lock held); the path keys already done."""
        raise NotImplementedError

    def remove_staging(self) -> None:
        """Remove the staging directory (the lock held), then release the lock: no other run can adopt a
        staging that is being removed."""
        remove_tree(self.staging)
        self.unlock()

    def write(self, batches: list[pa.RecordBatch]) -> None:
        raise NotImplementedError

    def finish(self, run_info: dict | None = None) -> int:
        raise NotImplementedError

    def result_files(self) -> list[Path]:
        """The finished verdict file(s), after finish()."""
        return [self.out]

    def resume_hint(self) -> str:
        return f"completed rows are kept in {self.staging}; run the same command again to continue"


# ----------------------------------------------------------------------------------------- local engine

JOURNAL_RUN_FILE = "run.json"


def read_journal(path: Path) -> Iterator[pa.RecordBatch]:
    """Yield the complete record batches of a journal, stopping quietly at a torn tail."""
    try:
        with pa.OSFile(str(path), "rb") as f:
            try:
                reader = pa.ipc.open_stream(f)
            except (pa.ArrowInvalid, OSError):
                return  # killed before the schema was complete: nothing in it
            while True:
                try:
                    yield conform(reader.read_next_batch())
                except StopIteration:
                    return
                except (pa.ArrowInvalid, OSError):
                    return  # torn last batch
    except FileNotFoundError:
        return


class JournalOutput(ScanOutput):
    def __init__(self, out: Path, metadata: dict[str, str] | None = None):
        super().__init__(out, metadata)
        self.staging = out.with_name(out.name + ".partial")
        self._writer = self._sink = None

    def check_target(self) -> None:
        if self.out.suffix.lower() != ".parquet":
            raise UsageError(f"--out {self.out}: imgscan writes Parquet (polars, duckdb and pandas read it directly); "
                             "name the file *.parquet")
        self.refuse_other_kinds(self.out)

    def is_complete(self) -> bool:
        return self.out.is_file() and not self.staging.exists()

    def clear(self) -> None:
        self.out.unlink()

    def adopt(self, fingerprint: dict) -> KeySet:
        adopt_staging(self.staging, JOURNAL_RUN_FILE, fingerprint)
        return KeySet.union([batch_path_keys(b)[~transient_mask(b)] for b in self._batches()])

    def reopen(self, fingerprint: dict) -> None:
        # The staging (fingerprint + a journal of every finished row) is complete before anything else changes;
        # the finished file stays until finish() replaces it atomically. Killed in between: the staging is
        # adopted as an unfinished run.
        adopt_staging(self.staging, JOURNAL_RUN_FILE, fingerprint)
        with atomic_path(self.staging / "journal-00000.arrows") as tmp:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, VERDICT_SCHEMA) as writer:
                for batch in pq.ParquetFile(self.out).iter_batches(batch_size=65536):
                    writer.write_batch(conform(batch))

    def journals(self) -> list[Path]:
        return sorted(self.staging.glob("journal-*.arrows"))

    def _batches(self) -> Iterator[pa.RecordBatch]:
        for journal in self.journals():
            yield from read_journal(journal)

    def write(self, batches: list[pa.RecordBatch]) -> None:
        if self._writer is None:
            existing = self.journals()
            number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
            self._sink = pa.OSFile(str(self.staging / f"journal-{number:05d}.arrows"), "wb")
            self._writer = pa.ipc.new_stream(self._sink, VERDICT_SCHEMA)
        for batch in batches:
            self._writer.write_batch(batch)
        self._sink.flush()  # in the page cache: survives SIGKILL of this process

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            os.fsync(self._sink.fileno())
            self._sink.close()
            self._writer = self._sink = None

    def finish(self, run_info: dict | None = None) -> int:
        self.close()
        superseded = self._superseded_rows()
        rows = write_parquet(self.out, self._batches_without(superseded), self.metadata)
        # A kill from here until the staging is gone leaves both: the next run adopts the staging, finds every
        # file done and writes the same rows again.
        self.remove_staging()
        return rows


    def _superseded_rows(self) -> np.ndarray:
        """Global row numbers of journal rows that a later row of the same path replaces (a transient error read
        again): each file keeps its last row."""
        keys = [batch_path_keys(b) for b in self._batches()]
        if not keys:
            return np.zeros(0, dtype=np.int64)
        keys = np.concatenate(keys)
        _, last_from_end = np.unique(keys[::-1], return_index=True)
        keep = np.zeros(keys.size, dtype=bool)
        keep[keys.size - 1 - last_from_end] = True
        return np.flatnonzero(~keep)

    def _batches_without(self, rows: np.ndarray) -> Iterator[pa.RecordBatch]:
        start = 0
        for batch in self._batches():
            drop = rows[(rows >= start) & (rows < start + batch.num_rows)] - start
            start += batch.num_rows
            if drop.size:
                mask = np.ones(batch.num_rows, dtype=bool)
                mask[drop] = False
                batch = batch.filter(pa.array(mask))
            yield batch


def transient_mask(rows: pa.RecordBatch | pa.Table) -> np.ndarray:
    """Rows whose error is transient (scanner.read.TRANSIENT_MARK)."""
    errors = pc.fill_null(rows.column("error"), "")
    return pc.ends_with(errors, TRANSIENT_MARK).to_numpy(zero_copy_only=False).astype(bool)


# ----------------------------------------------------------------------------------------- Ray engine

PARTS_LAYOUT = "imgscan-parts/1"
PARTS_RUN_FILE = "_run.json"
PARTS_MANIFEST_FILE = "_manifest.json"
PART_GLOB = "part-*.parquet"
WORKERS_DIR = "_workers"  # each actor announces itself here (node, device); folded into _manifest.json


def part_name(batches: list[pa.RecordBatch]) -> str:
    """Deterministic in the part's rows: a retried actor call rewrites the same part instead of adding one."""
    h = xxhash.xxh3_64()
    for batch in batches:
        h.update(batch_path_keys(batch).tobytes())
    return f"part-{h.intdigest():016x}.parquet"


class PartsOutput(ScanOutput):
    """Plain data (paths and metadata): it travels to the Ray actors, which call `write` and `announce`."""

    def __init__(self, out: Path, metadata: dict[str, str] | None = None):
        super().__init__(out, metadata)
        single = out.suffix == ".parquet" and not out.is_dir()
        self.staging = out.with_name(out.name + ".parts") if single else out
        self.single_file = out if single else None

    def check_target(self) -> None:
        self.refuse_other_kinds(self.single_file)

    def is_complete(self) -> bool:
        if self.single_file is not None:
            return self.single_file.is_file() and not self.staging.exists()
        return (self.staging / PARTS_MANIFEST_FILE).is_file()

    def clear(self) -> None:
        if self.single_file is not None:
            self.single_file.unlink()
            return
        for f in [*self.parts(), self.staging / PARTS_MANIFEST_FILE, self.staging / PARTS_RUN_FILE]:
            f.unlink(missing_ok=True)
        self._drop_leftovers()

    def parts(self) -> list[Path]:
        return sorted(self.staging.glob(PART_GLOB))

    def __getstate__(self):  # travels to the Ray actors: the driver's lock stays with the driver
        return {**self.__dict__, "_lock_fd": None}

    def _drop_leftovers(self) -> None:
        for stale in self.staging.glob(".part-*.tmp-*"):
            stale.unlink(missing_ok=True)  # a part that was being written when an earlier run died
        shutil.rmtree(self.staging / WORKERS_DIR, ignore_errors=True)  # actors of an earlier run

    def open(self, fingerprint: dict, reopen: bool = False) -> KeySet:
        d = self.staging
        ours = d.is_dir() and (d / PARTS_RUN_FILE).is_file()
        if not ours and d.exists() and (not d.is_dir() or any(p.name != LOCK_FILE for p in d.iterdir())):
            raise UsageError(f"--out {d}: exists and is not an imgscan parts directory; choose another --out")
        return super().open(fingerprint, reopen)

    def reopen(self, fingerprint: dict) -> None:
        # A parts directory becomes an unfinished run by losing its manifest (adopt then drops the transient
        # rows). A single file is first copied back into parts under a new staging; it stays in place until
        # finish() replaces it atomically, and a kill in between leaves an unfinished run to adopt.
        if self.single_file is None:
            (self.staging / PARTS_MANIFEST_FILE).unlink(missing_ok=True)
            return
        adopt_staging(self.staging, PARTS_RUN_FILE, {**fingerprint, "layout": PARTS_LAYOUT})
        # One part per row group: memory stays at one row group however large the finished file is.
        for batch in pq.ParquetFile(self.single_file).iter_batches(batch_size=ROW_GROUP_ROWS):
            batch = conform(batch)
            self.write_part(part_name([batch]), [batch])

    def adopt(self, fingerprint: dict) -> KeySet:
        """The path keys already done. Rows whose error was transient are taken out of their parts here, so
        that the files are read again and only their new rows remain (a kill in between only means more work)."""
        d = self.staging
        if adopt_staging(d, PARTS_RUN_FILE, {**fingerprint, "layout": PARTS_LAYOUT}):
            self._drop_leftovers()
        (d / WORKERS_DIR).mkdir(exist_ok=True)
        keys = []
        for f in self.parts():
            try:
                table = pq.read_table(f, columns=["path", "path_bytes", "error"])
            except (OSError, pa.ArrowException):
                f.unlink(missing_ok=True)  # unreadable (atomic renames make this unexpected; never trust it): redo
                continue
            transient = transient_mask(table)
            if transient.any():
                kept = pq.read_table(f).filter(pa.array(~transient))
                if kept.num_rows:
                    self.write_part(f.name, kept.to_batches())
                else:
                    f.unlink()
                table = table.filter(pa.array(~transient))
            keys.extend(batch_path_keys(b) for b in table.to_batches())
        return KeySet.union(keys)

    def write(self, batches: list[pa.RecordBatch]) -> str | None:
        """Write the batches as one part; returns its name (None when there were no batches)."""
        if not batches:
            return None
        name = part_name(batches)
        self.write_part(name, batches)
        return name

    def write_part(self, name: str, batches: list[pa.RecordBatch]) -> int:
        table = pa.Table.from_batches(batches, VERDICT_SCHEMA).replace_schema_metadata(
            verdict_schema(self.metadata).metadata)
        with atomic_path(self.staging / name) as tmp:
            pq.write_table(table, str(tmp), compression="zstd")
        return table.num_rows

    def announce(self, worker: str, info: dict) -> None:
        """An actor records where it runs (node, device, precision): folded into the manifest by finish()."""
        atomic_write_json(self.staging / WORKERS_DIR / f"{worker}.json", info)

    def drop_duplicate_rows(self) -> int:
        """Keep one row per path across the parts; returns how many rows were dropped.

        Duplicates cannot come from one run's listing, but they can from a retried actor call that Ray Data
        bundled differently, or from actors of a killed driver still finishing parts while a re-run listed the
        same files. The oldest part keeps its row; a later part is rewritten without them, or removed when
        nothing is left. Memory: 16 bytes per row (path keys), like the done set."""
        files = sorted(self.parts(), key=lambda f: (f.stat().st_mtime_ns, f.name))
        keys = [np.concatenate([batch_path_keys(b) for b in pq.read_table(f, columns=["path", "path_bytes"]).to_batches()]
                               or [np.zeros(0, np.uint64)]) for f in files]
        if not keys:
            return 0
        all_keys = np.concatenate(keys)
        all_owner = np.concatenate([np.full(k.size, i, dtype=np.int64) for i, k in enumerate(keys)])
        order = np.lexsort((all_owner, all_keys))  # by key, then oldest part first
        dup = np.zeros(all_keys.size, dtype=bool)
        dup[order[1:]] = all_keys[order[1:]] == all_keys[order[:-1]]
        offsets = np.cumsum([0] + [k.size for k in keys])
        for i in np.unique(all_owner[dup]):
            keep = ~dup[offsets[i]:offsets[i + 1]]
            if not keep.any():
                files[i].unlink()
            else:
                self.write_part(files[i].name, pq.read_table(files[i]).filter(pa.array(keep)).to_batches())
        return int(dup.sum())

    def _announced(self) -> list[dict]:
        announced = []
        for f in sorted((self.staging / WORKERS_DIR).glob("*.json")):
            try:
                announced.append(json.loads(f.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                pass
        return announced

    def finish(self, run_info: dict | None = None) -> int:
        duplicates = self.drop_duplicate_rows()
        run_info = {**(run_info or {}), "actors": self._announced(), "duplicate_rows_dropped": duplicates}
        shutil.rmtree(self.staging / WORKERS_DIR, ignore_errors=True)
        parts = self.parts()
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in parts)
        fingerprint = json.loads((self.staging / PARTS_RUN_FILE).read_text(encoding="utf-8"))
        atomic_write_json(self.staging / PARTS_MANIFEST_FILE, {
            "layout": PARTS_LAYOUT, "complete": True, "rows": rows, "parts": [f.name for f in parts],
            "finished_at": datetime.now(timezone.utc).isoformat(), "fingerprint": fingerprint,
            "this_run": run_info, "imgscan": json.loads(self.metadata.get("imgscan", "{}")),
        })
        if self.single_file is None:
            self.unlock()
            return rows
        rows = write_parquet(self.single_file, (conform(b) for f in parts for b in pq.ParquetFile(f).iter_batches(
            batch_size=ROW_GROUP_ROWS)), self.metadata)
        self.remove_staging()
        return rows

    def result_files(self) -> list[Path]:
        return [self.single_file] if self.single_file is not None else self.parts()

    def resume_hint(self) -> str:
        return f"finished parts are kept in {self.staging}; run the same command again to continue"
