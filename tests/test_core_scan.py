"""`imgscan enroll` + `imgscan scan` end to end: one row per file, the exact columns, hostile files as rows."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import BLUE, GREEN, RED, sigkill_when_journaled, write_class_dir
from hostile import make_hostile_files
from scanner.cli import app
from scanner.schema import COLUMN_NAMES

REQUIRED_COLUMNS = {
    "path": "string", "sha": "string", "bytes": "int64", "width": "int32", "height": "int32", "label": "string",
    "closed_set_label": "string", "is_ai": "bool", "ai_score": "float", "open_set_score": "float",
    "neighbors": "list<element: struct<label: string, support_id: string, similarity: float>>",
    "error": "string", "model": "string", "index": "string", "scanned_at": "timestamp[us, tz=UTC]",
}

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def scan_cmd(paths, out, index, model, *extra):
    return ["scan", *map(str, paths), "--out", str(out), "--index", str(index), "--model", str(model), "--device", "cpu", *extra]


def test_scan_mixed_folder_one_row_per_file_with_exact_columns(tmp_path, tiny_model_dir, two_class_index):
    crawl = tmp_path / "crawl"
    write_class_dir(crawl / "reds", RED, 6, seed0=500)
    write_class_dir(crawl / "blues", BLUE, 6, seed0=600, fmt="PNG", ext=".png")
    write_class_dir(crawl / "greens", GREEN, 4, seed0=700)
    expected = make_hostile_files(crawl / "hostile")
    (crawl / "notes.txt").write_text("not an image extension: not scanned")
    out = tmp_path / "verdicts.parquet"

    result = cli(*scan_cmd([crawl], out, two_class_index, tiny_model_dir, "--batch-size", "5"))
    assert result.exit_code == 0, result.output

    table = pq.read_table(out)
    schema = {f.name: str(f.type) for f in table.schema}
    for name, type_ in REQUIRED_COLUMNS.items():
        assert schema[name] == type_, name
    assert table.schema.names == COLUMN_NAMES
    rows = table.to_pylist()
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(rows) == 6 + 6 + 4 + len(expected)  # exactly one row per image file; notes.txt not scanned
    assert len({r["path"] for r in rows}) == len(rows)

    for name, expect in expected.items():
        row = by_name[name]
        if expect == "ok":
            assert row["error"] is None, (name, row["error"])
            assert row["label"] is not None and len(row["neighbors"]) == 11
        else:
            assert row["error"] is not None and expect.split(":", 1)[1] in row["error"], (name, row["error"])
            assert row["label"] is None and row["ai_score"] is None

    # Verdicts on the clean images: the tiny colour model separates the enrolled classes exactly. The
    # open-set threshold accepts 95 % of known AI support images, so a known AI image may still be `unknown`.
    for r in rows:
        if "/reds/" in r["path"]:
            assert (r["label"], r["closed_set_label"], r["is_ai"]) == ("real", "real", False) and r["ai_score"] < 0.5
        if "/blues/" in r["path"]:
            assert (r["closed_set_label"], r["is_ai"]) == ("gen_blue", True) and r["ai_score"] > 0.5
            assert r["label"] in ("gen_blue", "unknown")
        if r["error"] is not None:
            continue
        assert r["is_ai"] == (r["label"] != "real") == (r["ai_score"] > 0.5)  # one decision, two views
        if r["label"] == "unknown":  # only an AI verdict becomes an unknown generator
            assert r["is_ai"] and r["open_set_score"] > r["open_set_threshold"]
        else:
            assert r["label"] == r["closed_set_label"]
            assert not r["is_ai"] or r["open_set_score"] <= r["open_set_threshold"]
        if "/greens/" in r["path"]:
            assert r["label"] == "unknown"  # far from both enrolled classes
        if r["error"] is None:
            assert len(r["sha"]) == 32 and r["bytes"] > 0 and r["model"].startswith("tiny-colour@")
            assert r["index"] == "index@g2" and r["scanned_at"] is not None
            sims = [n["similarity"] for n in r["neighbors"]]
            assert sims == sorted(sims, reverse=True)

    clean = [r for r in rows if "/reds/" in r["path"] or "/blues/" in r["path"]]
    assert sum(r["label"] != "unknown" for r in clean) >= 10  # most known images are accepted
    rotated = by_name["exif_rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (30, 60)  # EXIF orientation applied
    latin1 = by_name["caf\\xe9_latin1.jpg"]
    assert latin1["path_bytes"].endswith(b"caf\xe9_latin1.jpg")  # the exact bytes survive
    assert by_name["good.jpg"]["path_bytes"] is None
    assert not (tmp_path / "verdicts.parquet.partial").exists()

    # Other readers load it directly.
    import polars as pl

    assert pl.read_parquet(out).height == len(rows)


def test_scan_refuses_model_mismatch_and_missing_model(tmp_path, tiny_model_dir, two_class_index, monkeypatch):
    import scanner.paths

    monkeypatch.setattr(scanner.paths, "PACKAGED_MODEL_DIR", tmp_path / "a build without a default model")
    from conftest import make_tiny_embedder
    from scanner.model import ModelCard, save_model_dir

    other = tmp_path / "other_model"
    save_model_dir(make_tiny_embedder(), ModelCard(name="other", version="2", input_size=24, embedding_dim=128), other)
    (tmp_path / "a.jpg").write_bytes(b"x")
    result = cli(*scan_cmd([tmp_path / "a.jpg"], tmp_path / "v.parquet", two_class_index, other))
    assert result.exit_code == 2 and "embeddings of different models cannot be compared" in result.output

    result = cli("scan", tmp_path / "a.jpg", "--out", tmp_path / "v.parquet", "--index", two_class_index)
    assert result.exit_code == 2 and "no model" in result.output and "--model" in result.output


def test_skip_known_skips_images_seen_in_earlier_verdicts(tmp_path, tiny_model_dir, two_class_index):
    night1 = write_class_dir(tmp_path / "night1", RED, 5, seed0=800)
    out1 = tmp_path / "n1.parquet"
    assert cli(*scan_cmd([night1], out1, two_class_index, tiny_model_dir)).exit_code == 0
    night2 = write_class_dir(tmp_path / "night2", RED, 5, seed0=800)  # the same 5 images again ...
    write_class_dir(night2, BLUE, 3, seed0=900)  # ... and 3 new ones
    out2 = tmp_path / "n2.parquet"
    result = cli(*scan_cmd([night2], out2, two_class_index, tiny_model_dir, "--skip-known", out1))
    assert result.exit_code == 0, result.output
    assert pq.read_table(out2).num_rows == 3
    assert "5 files skipped" in result.output


def test_finished_output_is_not_overwritten_without_flag(tmp_path, tiny_model_dir, two_class_index):
    src = write_class_dir(tmp_path / "src", RED, 3, seed0=50)
    out = tmp_path / "v.parquet"
    assert cli(*scan_cmd([src], out, two_class_index, tiny_model_dir)).exit_code == 0
    before = out.stat().st_mtime_ns
    result = cli(*scan_cmd([src], out, two_class_index, tiny_model_dir))
    assert result.exit_code == 0 and "already complete" in result.output and out.stat().st_mtime_ns == before
    result = cli(*scan_cmd([src], out, two_class_index, tiny_model_dir, "--overwrite"))
    assert result.exit_code == 0 and pq.read_table(out).num_rows == 3


def _python_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "scanner.cli", *map(str, args)], capture_output=True, text=True, **kw)


def test_scan_killed_with_sigkill_resumes_to_exactly_one_row_per_file(tmp_path, tiny_model_dir, two_class_index):
    crawl = tmp_path / "crawl"
    n = 400
    write_class_dir(crawl / "r", RED, n // 2, seed0=1000)
    write_class_dir(crawl / "b", BLUE, n // 2, seed0=2000)
    out = tmp_path / "v.parquet"
    args = scan_cmd([crawl], out, two_class_index, tiny_model_dir, "--batch-size", "4", "--readers", "1")
    proc = subprocess.Popen([sys.executable, "-m", "scanner.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal_dir = tmp_path / "v.parquet.partial"
    sigkill_when_journaled(proc, journal_dir, 30_000)  # some batches on disk, the scan not finished
    assert not out.exists() and journal_dir.exists()

    from scanner.writer import read_journal

    kept = sum(b.num_rows for j in journal_dir.glob("journal-*.arrows") for b in read_journal(j))
    assert 0 < kept < n

    result = _python_cli(*args, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{kept} rows kept from an interrupted run" in result.stderr
    table = pq.read_table(out)
    paths = table.column("path").to_pylist()
    assert len(paths) == n and len(set(paths)) == n
    assert table.column("error").null_count == n
    assert not journal_dir.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_sigint_keeps_completed_rows_and_exits_cleanly(signum, tmp_path, tiny_model_dir, two_class_index):
    crawl = write_class_dir(tmp_path / "crawl", RED, 300, seed0=3000)
    out = tmp_path / "v.parquet"
    args = scan_cmd([crawl], out, two_class_index, tiny_model_dir, "--batch-size", "4", "--readers", "1")
    proc = subprocess.Popen([sys.executable, "-m", "scanner.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal_dir = tmp_path / "v.parquet.partial"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(journal_dir.glob("journal-*.arrows")):
        time.sleep(0.002)
    proc.send_signal(signum)  # at once: a fast machine finishes 300 files in well under a second
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("scan finished before the signal arrived")
    assert proc.returncode == 130, stderr
    assert "run the same command again to continue" in stderr and "Traceback" not in stderr
    result = _python_cli(*args, timeout=300)
    assert result.returncode == 0, result.stderr
    assert pq.read_table(out).num_rows == 300


def test_corrupted_index_file_is_refused_with_one_line(tmp_path, tiny_model_dir, two_class_index):
    manifest = json.loads((two_class_index / "manifest.json").read_text())
    hnsw_file = two_class_index / manifest["files"]["hnsw"]["name"]
    data = bytearray(hnsw_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    hnsw_file.write_bytes(bytes(data))
    img = write_class_dir(tmp_path / "src", RED, 1)
    result = _python_cli(*scan_cmd([img], tmp_path / "v.parquet", two_class_index, tiny_model_dir), timeout=120)
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert hnsw_file.name in lines[0] and "corrupt" in lines[0]
    assert "Traceback" not in result.stderr


def test_corrupted_manifest_and_missing_roots_are_one_line_errors(tmp_path, tiny_model_dir, two_class_index):
    (two_class_index / "manifest.json").write_text("{ not json")
    img = write_class_dir(tmp_path / "src", RED, 1)
    result = cli(*scan_cmd([img], tmp_path / "v.parquet", two_class_index, tiny_model_dir))
    assert result.exit_code == 2 and "manifest.json: corrupt index manifest" in result.output
    result = cli(*scan_cmd([tmp_path / "nope[1]"], tmp_path / "v.parquet", two_class_index, tiny_model_dir))
    assert result.exit_code == 2 and "no such file or directory" in result.output
    assert "nope[1]" in result.output  # printed as text, not swallowed as rich markup
    result = cli(*scan_cmd([img], tmp_path / "missing_dir" / "v.parquet", two_class_index, tiny_model_dir))
    assert result.exit_code == 2 and "does not exist" in result.output


def test_corrupted_model_weights_are_refused(tmp_path, tiny_model_dir, two_class_index):
    import shutil

    broken = tmp_path / "broken_model"
    shutil.copytree(tiny_model_dir, broken)
    with open(broken / "embedder.pt", "ab") as f:
        f.write(b"tampered")
    img = write_class_dir(tmp_path / "src", RED, 1)
    result = cli(*scan_cmd([img], tmp_path / "v.parquet", two_class_index, broken))
    assert result.exit_code == 2 and "embedder.pt: sha256" in result.output and "does not match" in result.output


def test_plain_progress_lines_when_not_a_terminal(capsys):
    from scanner.progress import ScanProgress

    with ScanProgress("scanning", log_every_s=0.0, force_plain=True) as progress:
        progress.set_total(10)
        progress.advance(4, errors=1)
    err = capsys.readouterr().err
    assert "imgscan: scanning 4/10 files" in err and "1 errors" in err


def test_disk_full_while_writing_keeps_earlier_rows_and_resumes(tmp_path, tiny_model_dir, two_class_index):
    import resource

    crawl = write_class_dir(tmp_path / "crawl", BLUE, 120, seed0=4000)
    out = tmp_path / "v.parquet"
    args = scan_cmd([crawl], out, two_class_index, tiny_model_dir, "--batch-size", "4")

    def small_file_limit():  # every file this process writes is capped at 40 kB: "disk full" for the journal
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    result = subprocess.run([sys.executable, "-m", "scanner.cli", *args], capture_output=True, text=True,
                            preexec_fn=small_file_limit, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "run the same command again" in result.stderr
    from scanner.writer import read_journal

    kept = sum(b.num_rows for j in (tmp_path / "v.parquet.partial").glob("journal-*.arrows") for b in read_journal(j))
    assert 0 < kept < 120
    result = _python_cli(*args, timeout=300)
    assert result.returncode == 0, result.stderr
    paths = pq.read_table(out).column("path").to_pylist()
    assert len(paths) == 120 == len(set(paths))


def test_two_enrolls_at_once_both_land(tmp_path, tiny_model_dir):
    index = tmp_path / "idx"
    reds = write_class_dir(tmp_path / "reds", RED, 30, seed0=5000)
    blues = write_class_dir(tmp_path / "blues", BLUE, 30, seed0=6000)
    common = ["--index", index, "--model", tiny_model_dir, "--device", "cpu"]
    procs = [subprocess.Popen([sys.executable, "-m", "scanner.cli", "enroll", label, str(src), *map(str, common)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for label, src in (("real", reds), ("gen_blue", blues))]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    from indexes import SupportIndex

    opened = SupportIndex.open(index)
    assert opened.manifest.counts == {"gen_blue": 30, "real": 30} and opened.manifest.generation == 2
    assert len(opened.table) == opened.hnsw.get_current_count() == 60


@pytest.mark.parametrize("name, flags, model_prefix", [
    ("default", [], "imgscan-lite0-soft-supcon-x3@"),  # a fresh install: no --model, no --index
    ("fast", ["--model", "fast"], "imgscan-lite0-soft-supcon@"),  # the packaged single seed, by name
])
def test_a_shipped_model_scans_with_its_own_starter_index(tmp_path, name, flags, model_prefix):
    from scanner.paths import packaged

    model_dir, index_dir = packaged()[name]
    if not (model_dir / "model_card.json").is_file():
        pytest.skip(f"this build ships no {name} model")
    src = write_class_dir(tmp_path / "imgs", RED, 3)
    write_class_dir(src, BLUE, 2, seed0=50, fmt="PNG", ext=".png")
    out = tmp_path / "v.parquet"
    result = cli("scan", src, "--out", out, *flags)  # the XDG dir is empty (conftest): the starter index is read
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).to_pylist()
    assert len(table) == 5 and all(r["error"] is None for r in table)
    assert all(r["model"].startswith(model_prefix) for r in table)
    assert all(r["index"].startswith(f"{index_dir.name}@g") and len(r["neighbors"]) == 11 for r in table)
    # The packaged index was read in place, never written.
    assert not (index_dir / ".lock").exists()
