"""`imgscan scan --engine ray` on a local Ray with 2 CPUs: the same rows and verdicts as the local engine, parts
written atomically, resume by parts. Skipped where Ray is not installed (`pip install 'imgscan[ray]'`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import BLUE, GREEN, RED, write_class_dir
from hostile import make_hostile_files
from scanner.cli import app
from scanner.schema import VERDICT_SCHEMA

ray = pytest.importorskip("ray")

import dataclasses  # noqa: E402

from imgscan_core.errors import UsageError  # noqa: E402
from scanner.config import DecodeConfig, EmbedConfig, RayConfig, ScanConfig  # noqa: E402
from scanner.scan import run_scan  # noqa: E402
from scanner.writer import PARTS_MANIFEST_FILE as MANIFEST_FILE  # noqa: E402
from scanner.writer import PARTS_RUN_FILE as RUN_FILE  # noqa: E402
from scanner.writer import PartsOutput  # noqa: E402


def ray_config(roots, out, model_dir, index_dir, device="auto", batch_size=64, workers=None, part_rows=1024,
               isolate_decode=True) -> ScanConfig:
    return ScanConfig(roots=roots, out=out, index_dir=index_dir, engine="ray", decode=DecodeConfig(isolate=isolate_decode),
                      embed=EmbedConfig(model_dir=model_dir, device=device, batch_size=batch_size),
                      ray=RayConfig(workers=workers, part_rows=part_rows))


def part_files(out: Path) -> list[Path]:
    return PartsOutput(out).parts()

runner = CliRunner()


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _key(row) -> bytes:
    return row["path_bytes"] if row["path_bytes"] is not None else row["path"].encode()


def _crawl(root: Path) -> dict[str, str]:
    write_class_dir(root / "reds", RED, 50, seed0=500)
    write_class_dir(root / "blues", BLUE, 45, seed0=600, fmt="PNG", ext=".png")
    write_class_dir(root / "greens", GREEN, 10, seed0=700)
    return make_hostile_files(root / "hostile")


def test_ray_engine_agrees_with_local_engine(tmp_path, tiny_model_dir, two_class_index, local_ray):
    crawl = tmp_path / "crawl"
    hostile = _crawl(crawl)
    common = ["--index", str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu", "--batch-size", "16",
              "--in-process-decode"]  # both engines decode in-process here (the child start-up costs seconds)
    local_out, ray_out = tmp_path / "local.parquet", tmp_path / "ray.parquet"

    result = runner.invoke(app, ["scan", str(crawl), "--out", str(local_out), *common])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["scan", str(crawl), "--out", str(ray_out), *common, "--engine", "ray", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "ray.parquet.parts").exists()  # assembled into one file, staging removed

    local_t, ray_t = pq.read_table(local_out), pq.read_table(ray_out)
    assert ray_t.schema.remove_metadata() == VERDICT_SCHEMA == local_t.schema.remove_metadata()
    local_meta = json.loads(local_t.schema.metadata[b"imgscan"])
    ray_meta = json.loads(ray_t.schema.metadata[b"imgscan"])
    assert ray_meta.pop("precision") == "auto (per worker)" and local_meta.pop("precision") in ("fp32", "bf16")
    assert ray_meta.pop("runtime") == "auto (per worker)" and local_meta.pop("runtime") == "openvino"
    assert ray_meta == local_meta

    local_rows = {_key(r): r for r in local_t.to_pylist()}
    ray_rows = {_key(r): r for r in ray_t.to_pylist()}
    assert ray_t.num_rows == len(ray_rows) == local_t.num_rows == 105 + len(hostile)  # one row per file
    assert ray_rows.keys() == local_rows.keys()

    scanned = agree = 0
    for key, lr in local_rows.items():
        rr = ray_rows[key]
        assert (rr["path"], rr["path_bytes"], rr["sha"], rr["bytes"]) == (lr["path"], lr["path_bytes"], lr["sha"], lr["bytes"])
        assert rr["error"] == lr["error"], key  # bad files: the same error rows
        assert (rr["width"], rr["height"]) == (lr["width"], lr["height"])
        if lr["error"] is None:
            scanned += 1
            agree += rr["label"] == lr["label"]
            assert rr["ai_score"] == pytest.approx(lr["ai_score"], abs=1e-4)
            assert rr["model"] == lr["model"] and rr["index"] == lr["index"]
    assert scanned >= 100
    assert agree / scanned >= 0.99, (agree, scanned)
    latin1 = [r for r in ray_rows.values() if r["path_bytes"] is not None]
    assert latin1 and latin1[0]["path_bytes"].endswith(b"caf\xe9_latin1.jpg")  # non-UTF-8 name kept exactly

    # --skip-known: files whose sha is in earlier verdicts get no row, as locally (unreadable files have no sha).
    again = tmp_path / "again"
    result = runner.invoke(app, ["scan", str(crawl), "--out", str(again), *common, "--engine", "ray", "--workers", "1",
                                 "--skip-known", str(local_out)])
    assert result.exit_code == 0, result.output
    kept = {_key(r) for r in pq.read_table(again).to_pylist()}
    assert kept == {k for k, r in local_rows.items() if r["sha"] is None} and kept
    assert f"{len(local_rows) - len(kept)} files skipped" in result.output

    # A finished --out is left alone but for the files whose error was transient (unreadable.jpg: EIO), read again.
    result = runner.invoke(app, ["scan", str(crawl), "--out", str(ray_out), *common, "--engine", "ray", "--workers", "1"])
    assert result.exit_code == 0 and "1 rows carry a transient error: reading those files again" in result.output
    assert "1 files in" in result.output and pq.read_table(ray_out).num_rows == len(ray_rows)


def test_ray_engine_uses_the_same_views_as_the_local_engine(tmp_path, tiny_model_dir, two_class_index, local_ray):
    """--views reaches the Ray workers: the same averaged embeddings (scores, neighbours) as a local scan."""
    crawl = tmp_path / "crawl"
    write_class_dir(crawl / "reds", RED, 8, seed0=800)  # 48 x 40 images: 1.5x the tiny model's 32 px, so 3 views
    write_class_dir(crawl / "blues", BLUE, 8, seed0=900)
    common = ["--index", str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu", "--batch-size", "8",
              "--in-process-decode", "--views", "3"]
    outs = {}
    for engine in ("local", "ray"):
        outs[engine] = tmp_path / f"{engine}.parquet"
        extra = ["--engine", "ray", "--workers", "1"] if engine == "ray" else []
        result = runner.invoke(app, ["scan", str(crawl), "--out", str(outs[engine]), *common, *extra])
        assert result.exit_code == 0, result.output
    tables = {e: pq.read_table(o) for e, o in outs.items()}
    for t in tables.values():
        meta = json.loads(t.schema.metadata[b"imgscan"])
        assert meta["views"] == 3 and meta["resize"] == "native"
    local_rows = {r["path"]: r for r in tables["local"].to_pylist()}
    ray_rows = {r["path"]: r for r in tables["ray"].to_pylist()}
    assert local_rows.keys() == ray_rows.keys() and len(local_rows) == 16
    for path, lr in local_rows.items():
        rr = ray_rows[path]
        assert rr["label"] == lr["label"]
        assert rr["ai_score"] == pytest.approx(lr["ai_score"], abs=1e-5)
        assert [n["similarity"] for n in rr["neighbors"]] == pytest.approx([n["similarity"] for n in lr["neighbors"]], abs=1e-5)
    one_view = tmp_path / "one.parquet"
    result = runner.invoke(app, ["scan", str(crawl), "--out", str(one_view), *common[:-2], "--views", "1"])
    assert result.exit_code == 0, result.output
    single = {r["path"]: r for r in pq.read_table(one_view).to_pylist()}
    # views change the embedding: at least one file's nearest similarity differs from the one-view scan
    assert any(abs(single[p]["neighbors"][0]["similarity"] - r["neighbors"][0]["similarity"]) > 1e-4
               for p, r in local_rows.items())


def test_ray_parts_directory_resumes_by_parts(tmp_path, tiny_model_dir, two_class_index, local_ray):
    crawl = tmp_path / "crawl"
    write_class_dir(crawl / "reds", RED, 30, seed0=900)
    write_class_dir(crawl / "blues", BLUE, 20, seed0=950)
    (crawl / "empty.jpg").write_bytes(b"")
    out = tmp_path / "verdicts"
    opts = ray_config([os.fsencode(crawl)], out, tiny_model_dir, two_class_index, device="cpu", batch_size=8, workers=1,
                      part_rows=10, isolate_decode=False)

    first = run_scan(opts)
    parts = part_files(out)
    assert first.rows == 51 and first.scanned_this_run == 51 and len(parts) >= 5
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["complete"] and manifest["rows"] == 51 and sorted(manifest["parts"]) == [p.name for p in parts]
    full = {_key(r): r for r in pq.read_table(out).to_pylist()}  # the directory reads as one table
    assert len(full) == 51 and full[str(crawl / "empty.jpg").encode()]["error"] == "decode: empty file"

    # Simulate a run killed mid-way: no manifest, two parts missing, a torn temporary part left behind.
    (out / MANIFEST_FILE).unlink()
    lost = parts[:2]
    lost_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in lost)
    for p in lost:
        p.unlink()
    (out / ".part-0000000000000000.parquet.tmp-1-dead").write_bytes(b"PAR1 torn")
    # ... and a part written twice (a retried actor call bundled differently, or a dead driver's actor finishing).
    copy = out / "part-ffffffffffffffff.parquet"
    copy.write_bytes(parts[2].read_bytes())

    second = run_scan(opts)
    assert second.resumed_rows == 51 - lost_rows and second.scanned_this_run == lost_rows and second.rows == 51
    assert not list(out.glob(".part-*")) and not copy.exists()  # the copy held only duplicates: removed
    assert json.loads((out / MANIFEST_FILE).read_text())["this_run"]["duplicate_rows_dropped"] == pq.ParquetFile(parts[2]).metadata.num_rows
    again = {_key(r): r for r in pq.read_table(out).to_pylist()}
    assert again.keys() == full.keys()  # exactly one row per file
    assert all(again[k]["label"] == full[k]["label"] and again[k]["error"] == full[k]["error"] for k in full)

    assert run_scan(opts) is None  # complete: nothing to do
    again = run_scan(dataclasses.replace(opts, overwrite=True))  # the directory holds our lock file: still ours
    assert again.rows == again.scanned_this_run == 51 and len(pq.read_table(out).to_pylist()) == 51

    # An unfinished scan with other settings is refused, not mixed in.
    (out / MANIFEST_FILE).unlink()
    with pytest.raises(UsageError, match="other settings"):
        run_scan(dataclasses.replace(opts, k=5))
    assert json.loads((out / RUN_FILE).read_text())["k"] == 11


def test_plan_workers():
    from scanner.engines.ray_engine import plan_workers

    assert plan_workers({"CPU": 2}, None, None, 1) == (1, 0)
    assert plan_workers({"CPU": 64, "GPU": 8}, None, None, 1) == (8, 1)
    assert plan_workers({"CPU": 64, "GPU": 8}, None, 0.5, 1) == (16, 0.5)
    assert plan_workers({"CPU": 4}, 4, 2, 1) == (4, 2)  # explicit: an autoscaler may bring the GPUs
    with pytest.raises(UsageError, match="leave at least one"):
        plan_workers({"CPU": 2}, 2, None, 1)
    with pytest.raises(UsageError, match="give --workers as well"):
        plan_workers({"CPU": 8}, None, 1, 1)


def test_ray_engine_option_checks(tmp_path, tiny_model_dir, two_class_index):
    img = write_class_dir(tmp_path / "c", RED, 1)
    base = ["scan", str(img), "--index", str(two_class_index), "--model", str(tiny_model_dir)]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "a.parquet"), "--workers", "2"])
    assert result.exit_code == 2 and "need --engine ray" in result.output
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "a.parquet"), "--engine", "spark"])
    assert result.exit_code == 2 and "expected local or ray" in result.output
    (tmp_path / "not_ours").mkdir()
    (tmp_path / "not_ours" / "x.txt").write_text("someone else's")
    with pytest.raises(UsageError, match="not an imgscan parts directory"):
        run_scan(ray_config([os.fsencode(img)], tmp_path / "not_ours", tiny_model_dir, two_class_index))


def test_duplicate_rows_across_parts_are_dropped(tmp_path):
    import pyarrow as pa

    def rows(names):
        return pa.Table.from_pylist([{"path": n, "path_bytes": None, "label": "real"} for n in names],
                                    schema=VERDICT_SCHEMA).to_batches()

    output = PartsOutput(tmp_path, {"imgscan": "{}"})
    output.write_part("part-a.parquet", rows(["/c/1.jpg", "/c/2.jpg"]))
    os.utime(tmp_path / "part-a.parquet", ns=(1, 1))  # the oldest part keeps its rows
    output.write_part("part-b.parquet", rows(["/c/2.jpg", "/c/3.jpg"]))
    output.write_part("part-c.parquet", rows(["/c/1.jpg"]))
    assert output.drop_duplicate_rows() == 2
    assert not (tmp_path / "part-c.parquet").exists()
    assert pq.read_table(tmp_path / "part-b.parquet").column("path").to_pylist() == ["/c/3.jpg"]
    assert pq.read_schema(tmp_path / "part-b.parquet").metadata == {b"imgscan": b"{}"}
    assert sorted(pq.read_table(tmp_path).column("path").to_pylist()) == ["/c/1.jpg", "/c/2.jpg", "/c/3.jpg"]
    assert output.drop_duplicate_rows() == 0


@pytest.mark.slow
def test_sigterm_then_resume_by_parts(tmp_path, tiny_model_dir, two_class_index):
    """A real `imgscan scan --engine ray` process gets SIGTERM after its first part: exit 130, the finished part
    is kept, and the same command finishes the scan with exactly one row per file (about 60 s here)."""
    import signal
    import subprocess
    import sys
    import time

    crawl = tmp_path / "crawl"
    write_class_dir(crawl / "a", RED, 1100, seed0=3000)
    write_class_dir(crawl / "b", BLUE, 1100, seed0=5000)
    out = tmp_path / "night"
    cmd = [sys.executable, "-c", "from scanner.cli import main; main()", "scan", str(crawl), "--out", str(out),
           "--index", str(two_class_index), "--model", str(tiny_model_dir), "--engine", "ray", "--in-process-decode"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not (out.is_dir() and part_files(out)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "finished parts are kept" in output
    kept = sum(pq.ParquetFile(p).metadata.num_rows for p in part_files(out))
    assert 0 < kept < 2200 and not (out / MANIFEST_FILE).exists()

    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{kept} rows kept from an interrupted run" in result.stderr
    paths = pq.read_table(out).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 2200


@pytest.mark.parametrize("layout", ["directory", "file"])
def test_ray_rerun_reads_again_the_files_whose_error_was_transient(tmp_path, tiny_model_dir, two_class_index, local_ray,
                                                                   layout):
    """As with the local engine: a finished Ray output (parts directory or single file) whose rows include a
    transient read error (EIO, /proc/self/mem behind a link) is reopened by the same command once the file is
    readable; the file is read again and keeps only its new row, one row per file."""
    crawl = write_class_dir(tmp_path / "crawl", RED, 6, seed0=40)
    flaky = crawl / "flaky.jpg"
    flaky.symlink_to("/proc/self/mem")
    out = tmp_path / ("verdicts" if layout == "directory" else "verdicts.parquet")
    opts = ray_config([os.fsencode(crawl)], out, tiny_model_dir, two_class_index, device="cpu", batch_size=4,
                      workers=1, part_rows=3, isolate_decode=False)
    first = run_scan(opts)
    assert first.rows == 7
    errors = {Path(r["path"]).name: r["error"] for r in pq.read_table(out).to_pylist()}
    assert errors["flaky.jpg"] == "read: Input/output error (transient: the next run tries it again)"
    flaky.unlink()
    flaky.write_bytes((crawl / "img_0040.jpg").read_bytes())
    second = run_scan(opts)
    assert second is not None and second.scanned_this_run == 1 and second.rows == 7
    table = pq.read_table(out)
    paths = table.column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 7 and table.column("error").null_count == 7
    if layout == "directory":
        assert json.loads((out / MANIFEST_FILE).read_text())["rows"] == 7
    else:
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("verdicts")) == ["verdicts.parquet"]
    assert run_scan(opts) is None  # nothing transient left: left alone


def test_ray_engine_scans_shards_as_the_local_engine_does(tmp_path, tiny_model_dir, two_class_index, local_ray):
    """Each shard is one read task streaming its members (scanner.shards): the same rows as the local engine."""
    from test_shards import _write_shards

    shards, good, hostile = _write_shards(tmp_path / "shards")
    args = [str(tmp_path / "shards" / "{00000..00002}.tar"), *map(str, shards[3:])]
    common = ["--index", str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu", "--batch-size", "16",
              "--in-process-decode"]
    tables = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.parquet"
        extra = ["--engine", "ray", "--workers", "1"] if engine == "ray" else []
        result = runner.invoke(app, ["scan", *args, "--out", str(out), *common, *extra])
        assert result.exit_code == 0, result.output
        tables[engine] = {r["path"]: r for r in pq.read_table(out).to_pylist()}
    assert len(tables["ray"]) == len(good) + len(hostile)
    assert tables["ray"].keys() == tables["local"].keys()
    for path, row in tables["local"].items():
        other = tables["ray"][path]
        assert (other["sha"], other["label"], other["error"], other["key"], other["source_url"]) == (
            row["sha"], row["label"], row["error"], row["key"], row["source_url"])
