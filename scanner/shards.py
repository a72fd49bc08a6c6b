"""Read stage for crawls stored as shards: webdataset tar files (img2dataset, clip-retrieval) and Parquet or Arrow
files with an image-bytes column, on a local disk or in an object store (fsspec: s3://, gs://, hf://, https://).

Each member image becomes one `ReadResult`, as a file does, and from there on is a file like any other (decode,
embed, verdict, one row). Nothing is extracted to disk and members stream: a tar is read member by member, a
Parquet file a batch of rows at a time, never whole. A member's `path` names the shard and the member:

    shards/00012.tar#000120034.jpg        a tar member
    data/part-3.parquet#row=1834          a Parquet or Arrow row (counted from 0 over the whole file)

The sample's own key and source URL (a webdataset sample's `.json` sidecar, or the `key` and `url` columns, as
img2dataset writes them) travel with the member into the `key` and `source_url` columns.

Errors follow the files' contract: a member that is truncated, too large, a link, named outside the shard
(`../`, an absolute name) or not an image costs its own row an `error`; a shard that cannot be opened or listed
costs one row naming the shard, and whatever it had yielded before that stays. Only shards named explicitly
(arguments, brace ranges, --files-from entries) are opened as shards: a walked folder yields image files only, so
a verdict file lying in a crawl is never read as one.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterator

import xxhash

from imgscan_core.errors import UsageError
from scanner.read import TRANSIENT_ERRNOS, TRANSIENT_MARK, ReadResult
from scanner.walk import is_image_name

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
TABLE_SUFFIXES = (".parquet", ".arrow")
DEFAULT_IMAGE_COLUMN = "jpg"  # img2dataset's name for the image bytes
SIDECAR_SUFFIXES = (".json", ".txt", ".cls")  # a webdataset sample's other members: metadata, never rows
MAX_SIDECAR_BYTES = 1 << 20  # a sidecar JSON is a few hundred bytes; a larger one is not read
MAX_BRACE_EXPANSION = 1_000_000
TRUNCATED_MEMBER = "read: truncated member"  # after such a member the stream is over: nothing more is listed
TABLE_BATCH_ROWS = 64


def is_remote(spec: bytes | str) -> bool:
    return (b"://" if isinstance(spec, bytes) else "://") in spec


def is_shard(spec: bytes | str) -> bool:
    name = os.fsdecode(spec).lower()
    return name.endswith(TAR_SUFFIXES + TABLE_SUFFIXES)


def expand_braces(spec: str) -> list[str]:
    """`shards/{00000..00999}.tar` and `{train,val}` as webdataset and img2dataset spell shard ranges (the width
    of a zero-padded start is kept); several groups multiply. Text without a range is returned as it is."""
    m = re.search(r"\{([^{}]*)\}", spec)
    if m is None:
        return [spec]
    body, head, tail = m.group(1), spec[: m.start()], spec[m.end():]
    if (r := re.fullmatch(r"(\d+)\.\.(\d+)", body)) is not None:
        start, stop = r.groups()
        width = len(start) if start.startswith("0") else 0
        lo, hi = int(start), int(stop)
        if abs(hi - lo) + 1 > MAX_BRACE_EXPANSION:
            raise UsageError(f"{spec}: the range names over {MAX_BRACE_EXPANSION:,} shards")
        step = 1 if hi >= lo else -1
        options = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        return [head + "{" + body + "}" + out for out in expand_braces(tail)]  # literal braces
    out = [x for option in options for x in expand_braces(head + option + tail)]
    if len(out) > MAX_BRACE_EXPANSION:
        raise UsageError(f"{spec}: the ranges name over {MAX_BRACE_EXPANSION:,} shards")
    return out


def member_path(shard: bytes, member: str) -> bytes:
    return shard + b"#" + member.encode("utf-8", "surrogateescape")


def _open(shard: bytes):
    """A binary stream of the shard: a local file, or fsspec for a URL (credentials from each store's usual
    environment and config files)."""
    if not is_remote(shard):
        return open(shard, "rb")  # noqa: SIM115 - closed by the caller
    try:
        import fsspec
    except ImportError:
        raise OSError(errno.ENOPROTOOPT, "reading URLs needs fsspec (pip install fsspec)") from None
    try:
        return fsspec.open(os.fsdecode(shard), "rb").open()
    except ImportError as exc:  # the store's fsspec backend (s3fs, gcsfs, huggingface_hub) is not installed
        raise OSError(errno.ENOPROTOOPT, str(exc).splitlines()[0][:200]) from None


def _describe(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return text or type(exc).__name__


def _is_transient(exc: BaseException) -> bool:
    """Network and store hiccups: the next run tries the shard again (its rows are dropped when it resumes)."""
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def _shard_error(shard: bytes, what: str, exc: BaseException) -> ReadResult:
    error = f"read: shard {what} ({_describe(exc)})"
    if _is_transient(exc):
        error += f" {TRANSIENT_MARK}"
    return ReadResult(shard, None, None, None, error)


def read_shard(shard: bytes, max_bytes: int, all_files: bool = False, skip: Callable[[bytes], bool] = lambda p: False,
               image_column: str = DEFAULT_IMAGE_COLUMN) -> Iterator[ReadResult]:
    """The members of one shard as ReadResults, streamed; `skip(path)` drops members already done (resume)."""
    name = os.fsdecode(shard).lower()
    if name.endswith(TAR_SUFFIXES):
        yield from _tar_members(shard, max_bytes, all_files, skip)
    else:
        yield from _table_rows(shard, max_bytes, skip, image_column)


# ------------------------------------------------------------------------------------------------ tar shards

def _sample_key(member: str) -> str:
    """Webdataset's sample key: the member's path up to the first dot of its base name."""
    directory, base = posixpath.split(member)
    return posixpath.join(directory, base.split(".", 1)[0])


def _unsafe_name(member: str) -> bool:
    return member.startswith("/") or ".." in member.split("/") or "\\" in member


class _Sample:
    """The members of one webdataset sample seen so far: its image rows wait for its JSON sidecar."""

    def __init__(self, key: str | None):
        self.key, self.rows, self.meta = key, [], {}

    def results(self) -> Iterator[ReadResult]:
        key = self.meta.get("key")
        url = self.meta.get("url")
        for r in self.rows:
            r.key = str(key) if key is not None else self.key
            r.source_url = str(url) if isinstance(url, str) else None
            yield r


def _tar_members(shard: bytes, max_bytes: int, all_files: bool, skip) -> Iterator[ReadResult]:
    try:
        stream = _open(shard)
    except Exception as exc:
        yield _shard_error(shard, "could not be opened", exc)
        return
    sample = _Sample(None)
    listed = 0
    try:
        with stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            while True:
                try:
                    member = tar.next()
                except tarfile.ReadError as exc:
                    if listed == 0:
                        yield _shard_error(shard, "is not a readable tar file", exc)
                    else:
                        yield _shard_error(shard, f"could not be listed past member {listed}", exc)
                    break
                if member is None:
                    if _data_after_the_end(tar):
                        yield from sample.results()
                        sample = _Sample(None)
                        yield _shard_error(shard, f"could not be listed past member {listed}",
                                           tarfile.ReadError("bytes follow where the listing stopped: a corrupt member "
                                                             "header (the members after it are not read) or data after "
                                                             "the archive's end"))
                    break
                listed += 1
                if member.isdir():
                    continue
                key = _sample_key(member.name)
                if key != sample.key:
                    yield from sample.results()
                    sample = _Sample(key)
                result = _tar_member(tar, member, shard, max_bytes, all_files, skip, sample)
                if result is not None:
                    sample.rows.append(result)
                    if result.error is not None and result.error.startswith(TRUNCATED_MEMBER):
                        break
    except Exception as exc:  # not a tar at all, or the stream failing under tarfile (a connection, a bad gzip)
        yield from sample.results()
        sample = _Sample(None)
        if listed == 0 and isinstance(exc, tarfile.ReadError):
            yield _shard_error(shard, "is not a readable tar file", exc)
        else:
            yield _shard_error(shard, f"could not be read past member {listed}", exc)
    yield from sample.results()


def _data_after_the_end(tar) -> bool:
    """Whether anything but zeros follows where tarfile stopped. Python's tarfile ends the listing silently at a
    corrupt header past the first member (as at the end-of-archive blocks), so without this the members after a
    damaged header would be missing from the output without a row saying so. What follows a proper end is at most
    a record's zero padding."""
    while chunk := tar.fileobj.read(1 << 16):
        if chunk.count(0) != len(chunk):
            return True
    return False


def _tar_member(tar, member, shard: bytes, max_bytes: int, all_files: bool, skip, sample: _Sample):
    """The member's ReadResult, None for a sidecar (read into `sample.meta`) or a member that is no row."""
    name = member.name
    lower = name.lower()
    if lower.endswith(SIDECAR_SUFFIXES):
        if lower.endswith(".json") and member.isfile() and member.size <= MAX_SIDECAR_BYTES:
            try:
                meta = json.loads(tar.extractfile(member).read())
                if isinstance(meta, dict):
                    sample.meta = meta
            except (ValueError, OSError, tarfile.TarError):
                pass  # a broken sidecar only costs the row its key and URL
        return None
    if not (all_files or is_image_name(name.encode("utf-8", "surrogateescape"))):
        return None
    path = member_path(shard, name)
    if skip(path):
        return None
    if _unsafe_name(name):
        return ReadResult(path, None, None, member.size, "read: member name leaves the shard (absolute or ../), not read")
    if not member.isfile():
        return ReadResult(path, None, None, None, "read: tar member is a link or device, not a file")
    if member.size > max_bytes:
        return ReadResult(path, None, None, member.size,
                          f"read: member is {member.size} bytes, over the {max_bytes}-byte limit")
    try:
        data = tar.extractfile(member).read()
    except (tarfile.ReadError, OSError, EOFError) as exc:
        return ReadResult(path, None, None, member.size, f"{TRUNCATED_MEMBER} ({_describe(exc)})")
    if len(data) < member.size:
        return ReadResult(path, None, None, member.size, f"{TRUNCATED_MEMBER} (the shard ends inside it)")
    return ReadResult(path, data, xxhash.xxh3_128_hexdigest(data), len(data))


# ------------------------------------------------------------------------------------------ Parquet / Arrow

def _image_bytes(value):
    """A cell of the image column: bytes, or a struct with `bytes` (Hugging Face datasets' Image feature)."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return value if isinstance(value, (bytes, bytearray, memoryview)) else None


def _table_reader(stream, shard: bytes):
    """(schema, batches(columns)) of a Parquet file (a row group at a time) or an Arrow IPC stream or file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if os.fsdecode(shard).lower().endswith(".parquet"):
        pf = pq.ParquetFile(stream)
        return pf.schema_arrow, lambda columns: pf.iter_batches(batch_size=TABLE_BATCH_ROWS, columns=columns)
    try:
        reader = pa.ipc.open_stream(stream)  # Hugging Face datasets' .arrow files are IPC streams
        return reader.schema, lambda columns: (b.select(columns) for b in reader)
    except pa.ArrowInvalid:
        stream.seek(0)
        file_reader = pa.ipc.open_file(stream)
        return file_reader.schema, lambda columns: (file_reader.get_batch(i).select(columns)
                                                    for i in range(file_reader.num_record_batches))


def _table_rows(shard: bytes, max_bytes: int, skip, image_column: str) -> Iterator[ReadResult]:
    try:
        stream = _open(shard)
    except Exception as exc:
        yield _shard_error(shard, "could not be opened", exc)
        return
    with stream:
        try:
            schema, batches = _table_reader(stream, shard)
        except Exception as exc:
            yield _shard_error(shard, "is not a readable Parquet or Arrow file", exc)
            return
        if image_column not in schema.names:
            yield ReadResult(shard, None, None, None,
                             f"read: shard has no image column {image_column!r} (columns: "
                             f"{', '.join(schema.names[:20])}); name it with --image-column")
            return
        columns = [image_column] + [c for c in ("key", "url") if c in schema.names and c != image_column]
        row = 0
        try:
            for batch in batches(columns):
                cells = batch.to_pydict()
                for i in range(batch.num_rows):
                    path = member_path(shard, f"row={row}")
                    row += 1
                    if not skip(path):
                        yield _table_row(path, _image_bytes(cells[image_column][i]), max_bytes,
                                         cells["key"][i] if "key" in cells else None,
                                         cells["url"][i] if "url" in cells else None)
        except Exception as exc:
            yield _shard_error(shard, f"could not be read past row {row}", exc)


def _table_row(path: bytes, data, max_bytes: int, key, url) -> ReadResult:
    if data is None:
        result = ReadResult(path, None, None, None, "read: no image bytes in the row (null)")
    elif len(data) > max_bytes:
        result = ReadResult(path, None, None, len(data), f"read: row holds {len(data)} bytes, over the "
                                                         f"{max_bytes}-byte limit")
    else:
        data = bytes(data)
        result = ReadResult(path, data, xxhash.xxh3_128_hexdigest(data), len(data))
    result.key = str(key) if key is not None else None
    result.source_url = url if isinstance(url, str) else None
    return result


def count_members(shard: bytes, all_files: bool = False, image_column: str = DEFAULT_IMAGE_COLUMN) -> int | None:
    """Rows a shard will give, for the progress bar, reading headers only; None where that costs a download (a
    URL) or the shard cannot be read (its rows will say why)."""
    if is_remote(shard):
        return None
    try:
        if os.fsdecode(shard).lower().endswith(TAR_SUFFIXES):
            with tarfile.open(shard, mode="r:*") as tar:
                return sum(1 for m in tar if not m.isdir() and not m.name.lower().endswith(SIDECAR_SUFFIXES)
                           and (all_files or is_image_name(m.name.encode("utf-8", "surrogateescape"))))
        if os.fsdecode(shard).lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.ParquetFile(shard).metadata.num_rows
    except Exception:
        return None
    return None
