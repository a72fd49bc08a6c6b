"""The support index directory: what is enrolled, the HNSW graph over it, and the manifest naming both.

    INDEX_DIR/
      manifest.json              the contract (indexes/manifest.py): model, dim, counts, files + sha256, threshold
      support-gNNNNNN.parquet    support items: support_id, label, sha, source_path, enrolled_at, phash
      support-gNNNNNN.hnsw       hnswlib graph (cosine) whose ids are row numbers of the Parquet table; it also
                                 holds the embeddings (`SupportIndex.vectors`), so they are stored once
      .lock                      writers' flock

Writers (enroll, remove) take the lock, write generation N+1 under new names, then atomically replace the
manifest; readers that opened generation N keep a consistent snapshot. The previous generation's files stay
until the next write, so a reader that read the old manifest a moment ago can still open them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgscan_core.errors import UsageError
from imgscan_core.files import atomic_path, sha256_file
from imgscan_core.labels import check_label
from imgscan_core.locks import exclusive_lock
from indexes.calibrate import Calibrator, leave_one_out_neighbours
from indexes.manifest import AiScoreCalibration, FileEntry, IndexManifest, prior_for, read_manifest, write_manifest

HISTORY_DIR = "history"  # manifest-gNNNNNN.json of the last generations: `imgscan index history` / `rollback`
HISTORY_GENERATIONS = 5


SUPPORT_SCHEMA = pa.schema(
    [
        ("support_id", pa.string()),
        ("label", pa.string()),
        ("sha", pa.string()),
        ("source_path", pa.string()),
        ("enrolled_at", pa.timestamp("us", tz="UTC")),
        # 64-bit perceptual hash of the item's first view (scanner/near_duplicate.py), for near-duplicate matches
        ("phash", pa.uint64()),
    ]
)
NO_HASH = np.uint64(0xFFFFFFFFFFFFFFFF)  # no hash known (indexes written before hashes existed): never near
OPTIONAL_COLUMNS = {"phash"}
# Indexes written by earlier builds also carry an `embedding` column; it is not read (the HNSW file holds the
# same vectors), which made opening a 100,000-item index 0.3 s faster and the files half the size.



@dataclass
class Neighbors:
    labels: np.ndarray  # object [n, k], nearest first
    support_ids: np.ndarray  # object [n, k]
    sims: np.ndarray  # float32 [n, k], cosine similarity


@dataclass
class SupportTable:
    """The Parquet table in memory, as columns (row number = hnsw id)."""

    support_id: np.ndarray
    label: np.ndarray
    sha: np.ndarray
    source_path: np.ndarray
    enrolled_at: np.ndarray  # datetime64[us], UTC
    phash: np.ndarray  # uint64, NO_HASH where unknown

    FIELDS = ("support_id", "label", "sha", "source_path", "enrolled_at", "phash")

    @classmethod
    def empty(cls) -> "SupportTable":
        e = np.zeros(0, dtype=object)
        return cls(e, e.copy(), e.copy(), e.copy(), np.zeros(0, dtype="datetime64[us]"), np.zeros(0, dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.label)

    def to_arrow(self) -> pa.Table:
        return pa.table(
            {
                "support_id": pa.array(self.support_id, pa.string()),
                "label": pa.array(self.label, pa.string()),
                "sha": pa.array(self.sha, pa.string()),
                "source_path": pa.array(self.source_path, pa.string()),
                "enrolled_at": pa.array(self.enrolled_at, pa.timestamp("us", tz="UTC")),
                "phash": pa.array(self.phash, pa.uint64()),
            },
            schema=SUPPORT_SCHEMA,
        )

    @classmethod
    def from_arrow(cls, table: pa.Table) -> "SupportTable":
        def strings(name: str) -> np.ndarray:  # object arrays straight from Arrow, no Python list in between
            return table.column(name).to_numpy(zero_copy_only=False).astype(object, copy=False)

        return cls(
            support_id=strings("support_id"), label=strings("label"), sha=strings("sha"),
            # datetime64 straight from Arrow: a list of 100,000 Python datetimes cost 0.4 s per enroll
            source_path=strings("source_path"),
            enrolled_at=table.column("enrolled_at").to_numpy().astype("datetime64[us]", copy=False),
            phash=(table.column("phash").fill_null(NO_HASH).to_numpy().astype(np.uint64)
                   if "phash" in table.column_names else np.full(table.num_rows, NO_HASH, dtype=np.uint64)),
        )

    def concat(self, other: "SupportTable") -> "SupportTable":
        return SupportTable(*(np.concatenate([getattr(self, f), getattr(other, f)]) for f in self.FIELDS))

    def select(self, keep: np.ndarray) -> "SupportTable":
        return SupportTable(*(getattr(self, f)[keep] for f in self.FIELDS))


def _verified(directory: Path, entry: FileEntry) -> Path:
    """Check a data file against the manifest before any parser sees it (hnswlib can crash on a bad file). The
    name was validated with the manifest (a plain file name of this index); the file must be a regular file here,
    not a link out of the directory, a FIFO or a device."""
    path = directory / entry.name
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise FileNotFoundError(path) from None
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{path}: index data file is not a regular file")
    if info.st_size != entry.bytes or sha256_file(path) != entry.sha256:
        raise UsageError(f"{path}: index file is corrupt (size or sha256 differs from {directory / 'manifest.json'})")
    return path


def ef_search_for(n_items: int) -> int:
    """HNSW search breadth for an index of n items: recall@11 against exact search fell from 0.999 at 5,000
    clustered vectors (ef 128) to 0.926 at 100,000, and took ef 1,024 to reach 0.9955 there
    (docs/benchmarks.md), so ef grows with the index, about n/100, within [128, 1024]."""
    return int(min(1024, max(128, n_items // 100)))


def _new_hnsw(manifest: IndexManifest, capacity: int):
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=manifest.dim)
    index.init_index(max_elements=max(capacity, 1), M=manifest.hnsw["M"], ef_construction=manifest.hnsw["ef_construction"])
    return index


# hnswlib's saved header: offsetLevel0, max_elements, cur_element_count, size_data_per_element, label_offset,
# offsetData (size_t each), maxlevel (int), enterpoint (uint), maxM, maxM0, M (size_t), mult (double), ef_construction
HNSW_HEADER = struct.Struct("<QQQQQQiIQQQdQ")


def check_hnsw_header(path: Path, manifest: IndexManifest) -> None:
    """The graph file's own dim and count must be the manifest's: hnswlib trusts the dim it is given and reads
    out of bounds (or crashes) when it is wrong."""
    with open(path, "rb") as f:
        raw = f.read(HNSW_HEADER.size)
    if len(raw) < HNSW_HEADER.size:
        raise UsageError(f"{path}: not an HNSW index file (header too short)")
    _, _, count, per_element, label_offset, data_offset, *_ = HNSW_HEADER.unpack(raw)
    dim = (label_offset - data_offset) // 4 if label_offset > data_offset else -1
    if dim != manifest.dim or count != manifest.total or per_element != label_offset + 8:
        raise UsageError(f"{path}: HNSW file holds {count} vectors of dim {dim}; the manifest says {manifest.total} "
                         f"of dim {manifest.dim}")


def _load_hnsw(path: Path, manifest: IndexManifest, capacity: int):
    import hnswlib

    check_hnsw_header(path, manifest)

    index = hnswlib.Index(space="cosine", dim=manifest.dim)
    index.load_index(str(path), max_elements=max(capacity, manifest.total, 1))
    return index


@dataclass
class SupportIndex:
    directory: Path
    manifest: IndexManifest
    table: SupportTable
    hnsw: object | None = field(repr=False, default=None)
    _sha_rows: dict | None = field(repr=False, default=None)

    @property
    def name(self) -> str:
        """Written into every verdict row: which index, at which generation (the directory's own name, not a
        symlink's that led to it)."""
        return f"{self.directory.resolve().name}@g{self.manifest.generation}"

    @property
    def threshold(self) -> float:
        return self.manifest.open_set.threshold

    @classmethod
    def open(cls, directory: str | os.PathLike, capacity_extra: int = 0) -> "SupportIndex":
        """Open the current generation, verifying every file against the manifest first."""
        directory = Path(directory)
        if not directory.is_dir():
            raise UsageError(
                f"{directory}: no support index here; create one with `imgscan enroll LABEL IMAGES... --index {directory}`"
            )
        for attempt in range(5):
            manifest = read_manifest(directory)
            try:
                return cls._load(directory, manifest, capacity_extra)
            except FileNotFoundError:
                # A writer swapped generations between our manifest read and file open: read the manifest again.
                time.sleep(0.05 * (attempt + 1))
        raise UsageError(f"{directory}: index files named by manifest.json are missing")

    @classmethod
    def _load(cls, directory: Path, manifest: IndexManifest, capacity_extra: int) -> "SupportIndex":
        if "support" not in manifest.files:
            return cls(directory, manifest, SupportTable.empty(), None)
        support_path = _verified(directory, manifest.files["support"])
        hnsw_path = _verified(directory, manifest.files["hnsw"])
        try:
            # ParquetFile, not read_table: read_table imports pyarrow.dataset (and pandas), 0.5 s per process
            parquet = pq.ParquetFile(support_path)
            present = {f.name: f.type for f in parquet.schema_arrow}
            if any(present.get(f.name) != f.type for f in SUPPORT_SCHEMA
                   if not (f.name in OPTIONAL_COLUMNS and f.name not in present)):
                raise UsageError(f"{support_path}: support table schema differs from this imgscan's")
            table = parquet.read(columns=[n for n in SUPPORT_SCHEMA.names if n in present])
        except (pa.ArrowException, OSError) as exc:
            raise UsageError(f"{support_path}: unreadable support table ({exc})") from None
        support = SupportTable.from_arrow(table)
        if len(support) != manifest.total:
            raise UsageError(f"{support_path}: {len(support)} rows, manifest counts {manifest.total}")
        hnsw = _load_hnsw(hnsw_path, manifest, len(support) + capacity_extra)
        if hnsw.get_current_count() != len(support):
            raise UsageError(f"{hnsw_path}: {hnsw.get_current_count()} vectors, manifest counts {len(support)}")
        hnsw.set_ef(max(manifest.hnsw["ef_search"], 2 * manifest.open_set.k))
        return cls(directory, manifest, support, hnsw)

    def check_model(self, model_id: str, model_sha256: str, dim: int | None = None) -> None:
        if dim is not None and self.manifest.dim != dim:
            raise UsageError(f"{self.directory}: index holds {self.manifest.dim}-d embeddings, model {model_id} "
                             f"makes {dim}-d ones")
        if self.manifest.model_sha256 != model_sha256:
            raise UsageError(
                f"{self.directory}: index was built with model {self.manifest.model_id}, not {model_id}; "
                "embeddings of different models cannot be compared (use the index's model, or enroll into a new --index)"
            )

    def check_not_empty(self) -> None:
        if self.manifest.total == 0:
            raise UsageError(f"{self.directory}: the index is empty; enroll images first (`imgscan enroll LABEL DIR`)")

    def search(self, embeddings: np.ndarray, k: int, threads: int = 1) -> Neighbors:
        """The k nearest support items of each embedding. One thread by default: a scan's batches are small
        (a thread pool per call costs more than it saves) and the embedder needs the cores."""
        n = embeddings.shape[0]
        k = min(k, len(self.table))
        if n == 0 or k == 0:
            empty = np.zeros((n, 0), dtype=object)
            return Neighbors(empty, empty.copy(), np.zeros((n, 0), dtype=np.float32))
        self.hnsw.set_ef(max(self.manifest.hnsw["ef_search"], 2 * k))
        ids, dist = self.hnsw.knn_query(np.ascontiguousarray(embeddings, dtype=np.float32), k=k, num_threads=threads)
        ids = ids.astype(np.int64)
        return Neighbors(self.table.label[ids], self.table.support_id[ids], (1.0 - dist).astype(np.float32))

    def rows_for_shas(self, shas: list[str]) -> np.ndarray:
        """The table row of each sha among the enrolled items, -1 where it is not enrolled."""
        if self._sha_rows is None:
            self._sha_rows = {s: i for i, s in enumerate(self.table.sha.tolist())}
        return np.array([self._sha_rows.get(s, -1) if s is not None else -1 for s in shas], dtype=np.int64)

    def nearest_by_hash(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each perceptual hash, the table row of the enrolled item with the nearest hash and the number of
        differing bits (-1 and 64 when the index holds no hash). Exhaustive: 64 hashes against 100,000 items is
        6.4 M popcounts per batch."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        known = np.flatnonzero(self.table.phash != NO_HASH)
        if hashes.size == 0 or known.size == 0:
            return np.full(hashes.size, -1, dtype=np.int64), np.full(hashes.size, 64, dtype=np.int64)
        bits = np.bitwise_count(np.bitwise_xor(hashes[:, None], self.table.phash[known][None, :]))
        best = bits.argmin(axis=1)
        return known[best].astype(np.int64), bits[np.arange(hashes.size), best].astype(np.int64)

    def vectors(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The enrolled embeddings of these table rows (all by default), float32 [n, dim], from the HNSW file."""
        rows = np.arange(len(self.table)) if rows is None else np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, self.manifest.dim), dtype=np.float32)
        return np.asarray(self.hnsw.get_items(rows, return_type="numpy"), dtype=np.float32)


@dataclass
class EnrollResult:
    added: int
    duplicates: list[tuple[str, str]]  # (source_path, label it is already enrolled as)
    manifest: IndexManifest


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _write_generation(index: SupportIndex, table: SupportTable, hnsw, calibrate: Calibrator) -> IndexManifest:
    """Write `table` + `hnsw` as the next generation, recalibrate with the verdict rule's `calibrate` (open-set
    threshold and ai_score map, on leave-one-out neighbours), swap the manifest, drop old files."""
    directory, old = index.directory, index.manifest
    gen = old.generation + 1
    manifest = IndexManifest(
        model_id=old.model_id, model_sha256=old.model_sha256, dim=old.dim, generation=gen, space=old.space,
        hnsw=dict(old.hnsw), open_set=old.open_set, ai_score=old.ai_score, created_at=old.created_at or _now().isoformat(),
        updated_at=_now().isoformat(),
    )
    labels, counts = np.unique(table.label.astype(str), return_counts=True) if len(table) else ([], [])
    manifest.counts = {str(lab): int(c) for lab, c in zip(labels, counts)}
    manifest.hnsw["ef_search"] = ef_search_for(len(table))
    if len(table):
        support_name, hnsw_name = f"support-g{gen:06d}.parquet", f"support-g{gen:06d}.hnsw"
        with atomic_path(directory / support_name) as tmp:
            pq.write_table(table.to_arrow(), tmp)
        with atomic_path(directory / hnsw_name) as tmp:
            hnsw.save_index(str(tmp))
        manifest.files = {
            role: FileEntry(name, sha256_file(directory / name), (directory / name).stat().st_size)
            for role, name in (("support", support_name), ("hnsw", hnsw_name))
        }
        rows, loo_labels, loo_sims = leave_one_out_neighbours(hnsw, table.label, manifest.open_set.k)
        manifest.ai_score, manifest.open_set = calibrate(loo_labels, loo_sims, table.label[rows], manifest.open_set,
                                                         manifest.ai_score)
    return _publish(directory, manifest, old)


def _publish(directory: Path, manifest: IndexManifest, old: IndexManifest) -> IndexManifest:
    """Swap in `manifest`, record it in the history, and drop data files no kept generation names."""
    write_manifest(directory, manifest)
    history = directory / HISTORY_DIR
    history.mkdir(exist_ok=True)
    write_manifest(history, manifest, name=f"manifest-g{manifest.generation:06d}.json")
    kept = sorted(history.glob("manifest-g*.json"))
    for stale in kept[:-HISTORY_GENERATIONS]:
        stale.unlink(missing_ok=True)
    # Files of the kept generations stay (rollback), and gen-1's always (readers that read the previous
    # manifest a moment ago); older ones go.
    keep = {e.name for e in manifest.files.values()} | {e.name for e in old.files.values()}
    for past in history_of(directory):
        keep |= {e.name for e in past.files.values()}
    for entry in directory.glob("support-g*"):
        if entry.name not in keep:
            entry.unlink(missing_ok=True)
    return manifest


def history_of(directory: str | os.PathLike) -> list[IndexManifest]:
    """The kept generations' manifests, oldest first. Unreadable ones are left out, and so is one whose
    `generation` is not the one its file name records (`_publish` writes generation N as manifest-gNNNNNN.json):
    a file copied or forged under another name must not stand in for a generation at rollback."""
    out = []
    for path in sorted((Path(directory) / HISTORY_DIR).glob("manifest-g*.json")):
        named = re.fullmatch(r"manifest-g(\d{6,})\.json", path.name)
        if named is None:
            continue
        try:
            manifest = read_manifest(path.parent, name=path.name)
        except UsageError:
            continue
        if manifest.generation == int(named.group(1)):
            out.append(manifest)
    return out


def rollback(directory: str | os.PathLike, generation: int) -> IndexManifest:
    """Make a kept generation current again, as a new generation (scans see the change; nothing is lost: the
    generation rolled back from stays in the history)."""
    directory = Path(directory)
    with exclusive_lock(directory):
        current = read_manifest(directory)
        past = {m.generation: m for m in history_of(directory)}
        if generation not in past:
            raise UsageError(f"{directory}: generation {generation} is not kept (kept: "
                             f"{', '.join(map(str, sorted(past))) or 'none'}; see `imgscan index history`)")
        if generation == current.generation:
            raise UsageError(f"{directory}: generation {generation} is the current one")
        target = past[generation]
        for entry in target.files.values():
            _verified(directory, entry)
        restored = dataclasses.replace(target, generation=current.generation + 1, updated_at=_now().isoformat(),
                                       rolled_back_from=current.generation, restores=generation)
        return _publish(directory, restored, current)


def enroll_embeddings(
    directory: str | os.PathLike, label: str, embeddings: np.ndarray, shas: list[str], source_paths: list[str],
    model_id: str, model_sha256: str, *, calibrate: Calibrator, hashes: np.ndarray | None = None,
) -> EnrollResult:
    """Add embeddings as class `label`; images already enrolled (same sha, any label) are skipped.
    `calibrate` is the verdict rule's calibration (scanner.verdict.calibrate); `hashes` the images' perceptual
    hashes (scanner.near_duplicate), for near-duplicate matches."""
    check_label(label)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--index {directory}: is a file, not an index directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--index {directory}: cannot create the index directory ({exc.strerror or exc})") from None
    dim = int(embeddings.shape[1])
    with exclusive_lock(directory):
        if (directory / "manifest.json").exists():
            index = SupportIndex.open(directory, capacity_extra=len(shas))
            index.check_model(model_id, model_sha256)
            if index.manifest.dim != dim:
                raise UsageError(f"{directory}: index dim {index.manifest.dim}, embeddings dim {dim}")
        else:
            manifest = IndexManifest(model_id=model_id, model_sha256=model_sha256, dim=dim, created_at=_now().isoformat())
            index = SupportIndex(directory, manifest, SupportTable.empty(), None)
        table = index.table
        known = dict(zip(table.sha.tolist(), table.label.tolist()))
        fresh, duplicates = [], []
        for i, sha in enumerate(shas):
            if sha in known:
                duplicates.append((source_paths[i], known[sha]))
            else:
                known[sha] = label
                fresh.append(i)
        if not fresh:
            return EnrollResult(0, duplicates, index.manifest)
        fresh_idx = np.array(fresh)
        now = _now()
        new_rows = SupportTable(
            support_id=np.array([shas[i] for i in fresh], dtype=object),  # unique: a sha is enrolled once
            label=np.array([label] * len(fresh), dtype=object),
            sha=np.array([shas[i] for i in fresh], dtype=object),
            source_path=np.array([source_paths[i] for i in fresh], dtype=object),
            enrolled_at=np.full(len(fresh), np.datetime64(now.replace(tzinfo=None), "us")),
            phash=(np.full(len(fresh), NO_HASH, dtype=np.uint64) if hashes is None
                   else np.asarray(hashes, dtype=np.uint64)[fresh_idx]),
        )
        hnsw = index.hnsw
        if hnsw is None:
            hnsw = _new_hnsw(index.manifest, len(fresh))
        else:
            hnsw.resize_index(len(table) + len(fresh))
        hnsw.add_items(np.ascontiguousarray(embeddings[fresh_idx], dtype=np.float32),
                       np.arange(len(table), len(table) + len(fresh)))
        manifest = _write_generation(index, table.concat(new_rows), hnsw, calibrate)
        return EnrollResult(len(fresh), duplicates, manifest)


def recalibrate(directory: str | os.PathLike, ai_share: float, *, calibrate: Calibrator) -> IndexManifest:
    """Fit the ai_score map again for a crawl with this share of generated images (a new generation; the support
    set is unchanged). Later enrollments keep the share."""
    directory = Path(directory)
    prior = prior_for(ai_share)
    SupportIndex.open(directory)  # a missing or damaged index is refused in one line before the lock is taken
    with exclusive_lock(directory):
        index = SupportIndex.open(directory)
        if not len(index.table):
            raise UsageError(f"{directory}: the index is empty; enroll first")
        index.manifest = dataclasses.replace(index.manifest, ai_score=AiScoreCalibration(prior=prior))
        return _write_generation(index, index.table, index.hnsw, calibrate)


def remove_label(directory: str | os.PathLike, label: str, *, calibrate: Calibrator) -> tuple[int, IndexManifest]:
    """Remove every support item of `label`; the HNSW graph is rebuilt from the remaining embeddings."""
    directory = Path(directory)
    with exclusive_lock(directory):
        index = SupportIndex.open(directory)
        keep = index.table.label != label
        removed = int((~keep).sum())
        if removed == 0:
            raise UsageError(f"{directory}: no class {label!r} (classes: {', '.join(sorted(index.manifest.counts)) or 'none'})")
        table = index.table.select(keep)
        hnsw = None
        if len(table):
            hnsw = _new_hnsw(index.manifest, len(table))
            hnsw.add_items(index.vectors(np.flatnonzero(keep)), np.arange(len(table)))
        return removed, _write_generation(index, table, hnsw, calibrate)
