"""Crawls stored as shards (scanner/shards.py): webdataset tar files and Parquet files in img2dataset's layout,
hostile members, the same verdicts as the extracted files, brace ranges, resume after SIGKILL, and an S3 API on
localhost (moto)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import BLUE, RED, coloured, encode, sigkill_when_journaled
from imgscan_core.errors import UsageError
from scanner.cli import app
from scanner.shards import expand_braces, read_shard

runner = CliRunner()


def _scan(paths, out, index, model, *extra):
    return runner.invoke(app, ["scan", *map(str, paths), "--out", str(out), "--index", str(index), "--model",
                               str(model), "--device", "cpu", "--in-process-decode", *extra])


def _png_bomb() -> bytes:
    """A PNG whose header says 10,000 x 10,001 pixels (100 MP), with almost no data."""
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = (10_000).to_bytes(4, "big") + (10_001).to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _images(n: int, seed0: int) -> list[bytes]:
    return [encode(coloured(RED if i % 2 else BLUE, seed=seed0 + i)) for i in range(n)]


def _write_shards(root: Path) -> tuple[list[Path], dict[str, bytes], dict[str, str]]:
    """3 webdataset shards and 2 Parquet files in img2dataset's layout, 300 image members among them, 7 of them
    hostile members in the first shard and the first Parquet file. Returns the shards, {member path suffix: bytes}
    of the good images and {member path suffix: expected error prefix} of the hostile ones."""
    root.mkdir(parents=True)
    good, hostile, shards = {}, {}, []
    images = _images(293, 500)
    at = 0
    for s in range(3):
        path = root / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(61):
                key = f"{s:05d}{i:04d}"
                _add(tar, f"{key}.jpg", images[at])
                _add(tar, f"{key}.txt", b"a caption")
                _add(tar, f"{key}.json", json.dumps({"key": key, "url": f"https://example.com/{key}.jpg",
                                                     "caption": "a caption", "status": "success"}).encode())
                good[f"{path.name}#{key}.jpg"] = images[at]
                at += 1
            if s == 0:
                for name, data, error in (
                    ("bad_truncated.jpg", images[0][: len(images[0]) // 2], "decode:"),
                    ("bad_empty.jpg", b"", "decode: empty file"),
                    ("bad_text.jpg", b"this is a text file, not an image\n", "decode: not an image"),
                    ("bad_bomb.png", _png_bomb(), "decode: decompression bomb"),
                    ("../escape.jpg", images[1], "read: member name leaves the shard"),
                ):
                    _add(tar, name, data)
                    hostile[f"{path.name}#{name}"] = error
        shards.append(path)
    for s in range(2):
        path = root / f"part-{s}.parquet"
        rows = images[at: at + 55]
        keys = [f"p{s}{i:04d}" for i in range(len(rows))]
        for k, data in zip(keys, rows):
            good[f"{path.name}#row={keys.index(k)}"] = data
        at += len(rows)
        cells, row_keys = list(rows), list(keys)
        if s == 0:
            cells += [None, b"\x00garbage bytes"]
            row_keys += ["null", "garbage"]
            hostile[f"{path.name}#row={len(rows)}"] = "read: no image bytes"
            hostile[f"{path.name}#row={len(rows) + 1}"] = "decode:"
        table = pa.table({"key": row_keys, "url": [f"https://example.org/{k}" for k in row_keys],
                          "caption": ["c"] * len(row_keys), "jpg": pa.array(cells, pa.binary())})
        pq.write_table(table, path, row_group_size=20)
        shards.append(path)
    assert len(good) == 293 and len(good) + len(hostile) == 300
    return shards, good, hostile


def test_brace_ranges_expand_as_webdataset_spells_them():
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{a,b}/{8..10}.tar") == ["a/8.tar", "a/9.tar", "a/10.tar", "b/8.tar", "b/9.tar", "b/10.tar"]
    assert expand_braces("plain/name.tar") == ["plain/name.tar"]
    assert expand_braces("odd{x}.tar") == ["odd{x}.tar"]
    with pytest.raises(UsageError, match="over"):
        expand_braces("{0..99999999}.tar")


def test_shards_give_one_row_per_member_and_the_verdicts_of_the_extracted_files(tmp_path, tiny_model_dir,
                                                                              two_class_index):
    shards, good, hostile = _write_shards(tmp_path / "shards")
    out = tmp_path / "v.parquet"
    result = _scan([tmp_path / "shards" / "{00000..00002}.tar", *shards[3:]], out, two_class_index, tiny_model_dir)
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out).to_pylist()
    prefix = str(tmp_path / "shards") + "/"
    assert all(r["path"].startswith(prefix) for r in rows)
    by_member = {r["path"][len(prefix):]: r for r in rows}
    assert len(rows) == len(by_member) == len(good) + len(hostile)  # one row per member, none twice
    for member, prefix in hostile.items():
        assert by_member[member]["error"] and by_member[member]["error"].startswith(prefix), (member, by_member[member])
    assert all(by_member[m]["error"] is None for m in good)
    first = by_member["00000.tar#000000000.jpg"]
    assert first["key"] == "000000000" and first["source_url"] == "https://example.com/000000000.jpg"
    assert by_member["part-1.parquet#row=3"]["key"] == "p10003"

    # the same images as loose files: same sha, label and ai_score
    loose = tmp_path / "loose"
    loose.mkdir()
    names = {}
    for i, (member, data) in enumerate(sorted(good.items())):
        (loose / f"{i:04d}.jpg").write_bytes(data)
        names[f"{i:04d}.jpg"] = member
    out_loose = tmp_path / "loose.parquet"
    result = _scan([loose], out_loose, two_class_index, tiny_model_dir)
    assert result.exit_code == 0, result.output
    for r in pq.read_table(out_loose).to_pylist():
        s = by_member[names[Path(r["path"]).name]]
        assert (s["sha"], s["label"]) == (r["sha"], r["label"])
        assert s["ai_score"] == pytest.approx(r["ai_score"], abs=1e-6)
        assert r["key"] is None and r["source_url"] is None  # a file has neither


def test_a_truncated_or_unreadable_shard_costs_its_own_rows(tmp_path):
    images = _images(4, 900)
    whole = tmp_path / "whole.tar"
    with tarfile.open(whole, "w") as tar:
        for i, data in enumerate(images):
            _add(tar, f"{i}.jpg", data)
    raw = whole.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: 512 * 3 + len(images[0]) + 100])  # inside the second member's data
    results = list(read_shard(os.fsencode(cut), 1 << 20))
    assert [r.path.rsplit(b"#", 1)[1] for r in results] == [b"0.jpg", b"1.jpg"]
    assert results[0].error is None and results[0].data == images[0]
    assert results[1].error.startswith("read: truncated member")
    damaged = bytearray(raw)
    second_header = 512 + (len(images[0]) + 511) // 512 * 512
    damaged[second_header + 148] ^= 0xFF  # its checksum: tarfile alone would end the listing here without a word
    (tmp_path / "damaged.tar").write_bytes(bytes(damaged))
    results = list(read_shard(os.fsencode(tmp_path / "damaged.tar"), 1 << 20))
    assert [r.path.rsplit(b"#", 1)[-1] for r in results[:1]] == [b"0.jpg"] and results[0].data == images[0]
    assert len(results) == 2 and results[1].path == os.fsencode(tmp_path / "damaged.tar")
    assert results[1].error.startswith("read: shard could not be listed past member 1") and "corrupt" in results[1].error
    assert [r.error for r in read_shard(os.fsencode(whole), 1 << 20)] == [None] * 4  # a whole shard: no such row
    not_tar = tmp_path / "junk.tar"
    not_tar.write_bytes(b"\x01" * 2000)
    (only,) = read_shard(os.fsencode(not_tar), 1 << 20)
    assert only.path == os.fsencode(not_tar) and only.error.startswith("read: shard is not a readable tar file")
    (missing,) = read_shard(os.fsencode(tmp_path / "missing.tar"), 1 << 20)
    assert missing.error.startswith("read: shard could not be opened")
    no_column = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": [b"x"]}), no_column)
    (row,) = read_shard(os.fsencode(no_column), 1 << 20)
    assert "no image column 'jpg'" in row.error and "--image-column" in row.error
    hf = tmp_path / "hf.parquet"
    pq.write_table(pa.table({"image": [{"bytes": images[0], "path": "a.jpg"}, None]}), hf)
    got = list(read_shard(os.fsencode(hf), 1 << 20, image_column="image"))
    assert got[0].data == images[0] and got[1].error == "read: no image bytes in the row (null)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shards_in_an_s3_bucket_scanned_killed_and_resumed(tmp_path, tiny_model_dir, two_class_index):
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import boto3

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
        s3.create_bucket(Bucket="crawl")
        shards, good, hostile = _write_shards(tmp_path / "shards")
        for path in shards:
            s3.upload_file(str(path), "crawl", f"laion/{path.name}")
        out = tmp_path / "v.parquet"
        cmd = [sys.executable, "-m", "scanner.cli", "scan", "s3://crawl/laion/{00000..00002}.tar",
               "s3://crawl/laion/part-0.parquet", "s3://crawl/laion/part-1.parquet", "s3://crawl/missing/00009.tar",
               "--out", str(out), "--index", str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu",
               "--batch-size", "4", "--readers", "1"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sigkill_when_journaled(proc, tmp_path / "v.parquet.partial", 20_000, timeout_s=180)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        rows = pq.read_table(out).to_pylist()
        paths = [r["path"] for r in rows]
        assert len(paths) == len(set(paths)) == len(good) + len(hostile) + 1
        missing = [r for r in rows if r["path"] == "s3://crawl/missing/00009.tar"]
        assert len(missing) == 1 and missing[0]["error"].startswith("read: shard could not be opened")
        assert sum(r["error"] is None for r in rows) == len(good)
    finally:
        server.stop()


def test_links_gzip_and_a_list_of_shards(tmp_path, tiny_model_dir, two_class_index):
    images = _images(3, 950)
    gz = tmp_path / "a.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        for i, data in enumerate(images):
            _add(tar, f"s/{i}.jpg", data)
        link = tarfile.TarInfo("s/link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    got = {r.path.rsplit(b"#", 1)[1]: r for r in read_shard(os.fsencode(gz), 1 << 20)}
    assert [got[f"s/{i}.jpg".encode()].data for i in range(3)] == images
    assert got[b"s/link.jpg"].error == "read: tar member is a link or device, not a file"
    assert got[b"s/0.jpg"].key == "s/0"  # no sidecar JSON: webdataset's key from the name

    listing = tmp_path / "list.txt"
    listing.write_text(f"{gz}\n{gz}\n")  # a shard listed twice is read once
    out = tmp_path / "v.parquet"
    result = _scan([], out, two_class_index, tiny_model_dir, "--files-from", str(listing))
    assert result.exit_code == 0, result.output
    paths = sorted(pq.read_table(out).column("path").to_pylist())
    assert paths == sorted(f"{gz}#s/{name}" for name in ("0.jpg", "1.jpg", "2.jpg", "link.jpg"))


def test_arrow_files_and_skip_known_members(tmp_path, tiny_model_dir, two_class_index):
    images = _images(4, 970)
    table = pa.table({"key": ["a", "b", "c", "d"], "url": ["u1", None, "u3", "u4"], "jpg": images})
    stream_file, ipc_file = tmp_path / "s.arrow", tmp_path / "f.arrow"
    with pa.OSFile(str(stream_file), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=3)
    with pa.OSFile(str(ipc_file), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=3)
    for path in (stream_file, ipc_file):
        got = list(read_shard(os.fsencode(path), 1 << 20))
        assert [r.data for r in got] == images and [r.key for r in got] == ["a", "b", "c", "d"]
        assert [r.source_url for r in got] == ["u1", None, "u3", "u4"]
        assert got[3].path == os.fsencode(path) + b"#row=3"
    first = tmp_path / "first.parquet"
    assert _scan([stream_file], first, two_class_index, tiny_model_dir).exit_code == 0
    again = tmp_path / "again.parquet"
    result = _scan([ipc_file], again, two_class_index, tiny_model_dir, "--skip-known", str(first))
    assert result.exit_code == 0, result.output
    assert pq.read_table(again).num_rows == 0  # the same images, judged already: skipped by their sha
