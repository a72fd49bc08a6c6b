"""The verdict Parquet schema: the one definition every writer and reader of scan output uses."""

from __future__ import annotations

import pyarrow as pa

NEIGHBOR_TYPE = pa.struct(
    [("label", pa.string()), ("support_id", pa.string()), ("similarity", pa.float32())]
)

MATCH_TYPE = pa.struct(
    [("kind", pa.string()), ("support_id", pa.string()), ("similarity", pa.float32())]
)
PROVENANCE_TYPE = pa.struct(
    [("source", pa.string()), ("detail", pa.string()), ("indicates", pa.string())]
)

VERDICT_SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # absolute (roots made absolute), or a shard member: shard.tar#name, table.parquet#row=N; bytes that are not UTF-8 appear as \xNN escapes
        ("path_bytes", pa.binary()),  # the exact path bytes, set only when the path is not valid UTF-8
        ("sha", pa.string()),  # xxh3-128 of the file's bytes, hex
        ("bytes", pa.int64()),
        ("width", pa.int32()),  # as decoded (after EXIF orientation)
        ("height", pa.int32()),
        ("label", pa.string()),  # "real", a generator, or "unknown" (an AI image far from every enrolled generator)
        ("closed_set_label", pa.string()),  # the label before open-set rejection
        ("is_ai", pa.bool_()),  # label != "real", by construction (scanner/verdict.py)
        ("ai_score", pa.float32()),  # calibrated P(AI) on the index judged with; is_ai == (ai_score > 0.5)
        ("detail", pa.float32()),  # pixel detail of its views (scanner/detail.py); below the scan's min_detail, never AI
        ("open_set_score", pa.float32()),  # higher = farther from every enrolled class
        ("open_set_threshold", pa.float32()),  # the index's threshold this row was judged with
        ("neighbors", pa.list_(NEIGHBOR_TYPE)),  # k nearest support items, nearest first
        ("match", MATCH_TYPE),  # an enrolled item this file is ("exact": same bytes) or nearly is ("near"; "near-disputed": same perceptual hash, but the embedding disagrees, so it did not decide); else null
        ("provenance", pa.list_(PROVENANCE_TYPE)),  # metadata evidence ([] when none; null: not read)
        ("error", pa.string()),  # null when the file was scanned; else "stage: reason"
        ("model", pa.string()),
        ("index", pa.string()),
        ("scanned_at", pa.timestamp("us", tz="UTC")),
        ("key", pa.string()),  # a shard member's sample key (webdataset key, or the `key` column); null for a file
        ("source_url", pa.string()),  # the URL a shard member was downloaded from, when the shard records it
    ]
)

COLUMN_NAMES = VERDICT_SCHEMA.names


def conform(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch read back from an unfinished run or a finished file, in VERDICT_SCHEMA: a column added since it
    was written (`key`, `source_url`) comes back as nulls, so an upgrade never strands a resumable run."""
    if batch.schema.names == COLUMN_NAMES:
        return pa.RecordBatch.from_arrays(batch.columns, schema=VERDICT_SCHEMA)
    names = batch.schema.names
    arrays = [batch.column(names.index(f.name)) if f.name in names else pa.nulls(batch.num_rows, f.type)
              for f in VERDICT_SCHEMA]
    return pa.RecordBatch.from_arrays(arrays, schema=VERDICT_SCHEMA)


def display_path(raw: bytes) -> tuple[str, bytes | None]:
    """The `path` string and, only when the bytes are not valid UTF-8, the exact bytes for `path_bytes`."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="backslashreplace"), raw
