"""Defects of the nightly-job and hardening issues, each reproduced as it was reported: overlapping roots,
a resumed run with the roots spelled differently, two scans of one --out, shell-expanded --skip-known globs,
--out that is not a Parquet file, leftovers of a run killed while finishing, and small contract gaps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import BLUE, RED, REPO, sigkill_when_journaled, write_class_dir
from imgscan_core.errors import UsageError
from scanner.cli import app

runner = CliRunner()


def _scan(paths, out, index, model, *extra):
    return runner.invoke(app, ["scan", *map(str, paths), "--out", str(out), "--index", str(index), "--model",
                               str(model), "--device", "cpu", "--in-process-decode", *extra])


def _one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_overlapping_roots_give_one_row_per_file(tmp_path, tiny_model_dir, two_class_index):
    site = write_class_dir(tmp_path / "crawl" / "siteA", RED, 6, seed0=10)
    one = sorted(site.iterdir())[0]
    out = tmp_path / "v.parquet"
    result = _scan([tmp_path / "crawl", site, one, tmp_path / "crawl" / "." / "siteA", tmp_path / "crawl"], out,
                   two_class_index, tiny_model_dir)
    assert result.exit_code == 0, result.output
    paths = pq.read_table(out).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 6
    assert all(os.path.isabs(p) for p in paths)  # rows name files the same way whatever the roots' spelling


def test_resume_with_the_root_spelled_differently_adds_no_row(tmp_path, tiny_model_dir, two_class_index):
    crawl = tmp_path / "mut"
    n = 300
    write_class_dir(crawl, RED, n, seed0=4000)
    out = tmp_path / "v.parquet"
    base = ["--out", str(out), "--index", str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu",
            "--batch-size", "4", "--readers", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "scanner.cli", "scan", "mut", *base], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sigkill_when_journaled(proc, tmp_path / "v.parquet.partial", 30_000)
    done = subprocess.run([sys.executable, "-m", "scanner.cli", "scan", str(crawl.resolve()), *base],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    paths = pq.read_table(out).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == n


def test_a_second_scan_of_the_same_out_is_refused_while_the_first_runs(tmp_path, tiny_model_dir, two_class_index):
    from scanner.writer import JournalOutput

    crawl = write_class_dir(tmp_path / "crawl", RED, 4, seed0=30)
    out = tmp_path / "cc.parquet"
    first = JournalOutput(out)  # another run, between its start and its end
    first.open({"roots": ["elsewhere"]})
    result = _scan([crawl], out, two_class_index, tiny_model_dir)
    assert result.exit_code == 2 and f"pid {os.getpid()}" in _one_line(result)
    assert "another imgscan scan" in result.output and not out.exists()
    first.unlock()
    assert (out.with_name("cc.parquet.partial") / "run.json").is_file()  # the first run's staging is untouched


def test_skip_known_takes_a_shell_expanded_glob_and_a_pattern(tmp_path, tiny_model_dir, two_class_index):
    crawl = tmp_path / "crawl"
    write_class_dir(crawl / "siteA", RED, 3, seed0=50)
    write_class_dir(crawl / "siteB", BLUE, 3, seed0=60)
    verdicts = tmp_path / "verdicts"
    verdicts.mkdir()
    for site in ("siteA", "siteB"):
        assert _scan([crawl / site], verdicts / f"{site}.parquet", two_class_index, tiny_model_dir).exit_code == 0
    write_class_dir(crawl / "siteC", RED, 2, seed0=70)
    # `--skip-known verdicts/*.parquet` unquoted: the shell passes siteB.parquet as an argument of its own
    out = tmp_path / "night.parquet"
    result = _scan([crawl, verdicts / "siteB.parquet"], out, two_class_index, tiny_model_dir,
                   "--skip-known", str(verdicts / "siteA.parquet"))
    assert result.exit_code == 0, result.output
    paths = pq.read_table(out).column("path").to_pylist()
    assert len(paths) == 2 and all("/siteC/" in p for p in paths)  # nothing of siteA/siteB, no row for a Parquet file
    # quoted: the pattern is expanded by imgscan; on the first night it matches nothing, which skips nothing
    result = _scan([crawl], tmp_path / "first.parquet", two_class_index, tiny_model_dir,
                   "--skip-known", str(tmp_path / "none-yet" / "*.parquet"))
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "first.parquet").num_rows == 8
    result = _scan([crawl], tmp_path / "quoted.parquet", two_class_index, tiny_model_dir,
                   "--skip-known", str(verdicts / "*.parquet"))
    assert pq.read_table(tmp_path / "quoted.parquet").num_rows == 2


def test_out_must_be_a_parquet_file(tmp_path, tiny_model_dir, two_class_index):
    crawl = write_class_dir(tmp_path / "crawl", RED, 2, seed0=80)
    result = _scan([crawl], tmp_path / "q.csv", two_class_index, tiny_model_dir)
    assert result.exit_code == 2 and "name the file *.parquet" in _one_line(result)
    (tmp_path / "d.parquet").mkdir()
    result = _scan([crawl], tmp_path / "d.parquet", two_class_index, tiny_model_dir, "--overwrite")
    assert result.exit_code == 2 and "not a regular file" in _one_line(result)
    os.mkfifo(tmp_path / "f.parquet")
    result = _scan([crawl], tmp_path / "f.parquet", two_class_index, tiny_model_dir, "--overwrite")
    assert result.exit_code == 2 and "not a regular file" in _one_line(result)
    assert (tmp_path / "f.parquet").exists() and not (tmp_path / "f.parquet.partial").exists()


def test_a_bad_skip_known_file_is_one_line_and_creates_nothing(tmp_path, tiny_model_dir, two_class_index):
    crawl = write_class_dir(tmp_path / "crawl", RED, 2, seed0=90)
    bad = tmp_path / "old.parquet"
    pq.write_table(pa.table({"sha": pa.array([1, 2], pa.int64())}), bad)
    out = tmp_path / "v.parquet"
    result = _scan([crawl], out, two_class_index, tiny_model_dir, "--skip-known", str(bad))
    assert result.exit_code == 2 and "not a readable verdict file" in _one_line(result)
    assert not out.exists() and not out.with_name("v.parquet.partial").exists()


def test_leftovers_of_a_run_killed_while_finishing_are_removed(tmp_path, tiny_model_dir, two_class_index):
    crawl = write_class_dir(tmp_path / "crawl", RED, 3, seed0=95)
    out = tmp_path / "v.parquet"
    (tmp_path / ".v.parquet.tmp-123-dead").write_bytes(b"PAR1 half a file")
    half_removed = tmp_path / ".v.parquet.partial.removing-123"
    half_removed.mkdir()
    (half_removed / "journal-00000.arrows").write_bytes(b"old")
    assert _scan([crawl], out, two_class_index, tiny_model_dir).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert pq.read_table(out).num_rows == 3


def test_version_flag_and_label_with_a_trailing_newline(tmp_path):
    from imgscan_core.labels import check_label

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("imgscan ")
    with pytest.raises(UsageError):
        check_label("c\n")


def test_a_closed_pipe_ends_quietly_with_the_sigpipe_status(tmp_path, two_class_index):
    proc = subprocess.Popen([sys.executable, "-m", "scanner.cli", "index", "show", "--index", str(two_class_index)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head -0`: the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE and "Traceback" not in err and err.strip() == ""


def test_sighup_keeps_completed_rows_like_sigterm(tmp_path, tiny_model_dir, two_class_index):
    crawl = write_class_dir(tmp_path / "crawl", RED, 300, seed0=6000)
    out = tmp_path / "v.parquet"
    proc = subprocess.Popen([sys.executable, "-m", "scanner.cli", "scan", str(crawl), "--out", str(out), "--index",
                             str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu", "--batch-size",
                             "4", "--readers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    staging, deadline = tmp_path / "v.parquet.partial", time.monotonic() + 120
    while not (staging.exists() and any(j.stat().st_size > 10_000 for j in staging.glob("journal-*.arrows"))):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "run the same command again to continue" in err, err


def test_a_model_that_returns_nan_or_the_wrong_size_is_refused_at_load(tmp_path, tiny_model_dir):
    import json
    import shutil

    import torch

    from scanner.embed import Embedder
    from scanner.model import ModelCard, read_card, save_model_dir

    class NaNEmbedder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 128), float("nan"))

    card = read_card(tiny_model_dir)
    save_model_dir(torch.jit.script(NaNEmbedder()), card, tmp_path / "nan")
    with pytest.raises(UsageError, match="non-finite"):
        Embedder(tmp_path / "nan", device="cpu", runtime="torch")
    bad = tmp_path / "zero"
    shutil.copytree(tiny_model_dir, bad)
    data = json.loads((bad / "model_card.json").read_text())
    data["input_size"] = 0
    (bad / "model_card.json").write_text(json.dumps(data))
    with pytest.raises(UsageError, match="input_size 0"):
        Embedder(bad, device="cpu")
    assert isinstance(ModelCard, type)


def test_an_extreme_aspect_ratio_is_refused_before_it_is_scaled(tmp_path, tiny_model_dir, two_class_index):
    from PIL import Image

    crawl = tmp_path / "crawl"
    crawl.mkdir()
    Image.new("RGB", (1, 20_000), (200, 10, 10)).save(crawl / "line.png")
    write_class_dir(crawl, RED, 2, seed0=7000)
    out = tmp_path / "v.parquet"
    result = _scan([crawl], out, two_class_index, tiny_model_dir, "--max-pixels", "1000000")
    assert result.exit_code == 0, result.output
    rows = {os.path.basename(r["path"]): r for r in pq.read_table(out).to_pylist()}
    assert rows["line.png"]["error"].startswith("decode: extreme aspect ratio refused")
    assert sum(r["error"] is None for r in rows.values()) == 2


def test_readme_python_examples_run_on_a_real_verdict_file(tmp_path, tiny_model_dir, two_class_index, monkeypatch):
    """Every ```python block of the README runs as written, in a folder holding a verdicts.parquet from a scan
    (the neighbour example once raised polars' DuplicateError on the `label` column)."""
    import re

    from conftest import REPO

    crawl = tmp_path / "crawl"
    write_class_dir(crawl / "r", RED, 3, seed0=8000)
    write_class_dir(crawl / "b", BLUE, 3, seed0=8100)
    assert _scan([crawl], tmp_path / "verdicts.parquet", two_class_index, tiny_model_dir).exit_code == 0
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_index_flag_and_environment_variable_name_the_same_new_index(tmp_path, tiny_model_dir, monkeypatch):
    """Both name the user's own index: a new one starts empty (the starter index is only the unnamed default)."""
    import shutil

    import scanner.paths as paths
    from indexes import SupportIndex

    starter = tmp_path / "starter"
    reds = write_class_dir(tmp_path / "reds", RED, 3, seed0=9000)
    blues = write_class_dir(tmp_path / "blues", BLUE, 3, seed0=9100)
    common = ["--model", str(tiny_model_dir), "--device", "cpu"]
    assert runner.invoke(app, ["enroll", "real", str(reds), "--index", str(starter), *common]).exit_code == 0
    assert runner.invoke(app, ["enroll", "gen_blue", str(blues), "--index", str(starter), *common]).exit_code == 0
    monkeypatch.setattr(paths, "PACKAGED_INDEX_DIR", starter)
    greens = write_class_dir(tmp_path / "greens", BLUE, 3, seed0=9200)
    assert runner.invoke(app, ["enroll", "mine", str(greens), "--index", str(tmp_path / "by_flag"), *common]).exit_code == 0
    monkeypatch.setenv("IMGSCAN_INDEX", str(tmp_path / "by_env"))
    assert runner.invoke(app, ["enroll", "mine", str(greens), *common]).exit_code == 0
    assert SupportIndex.open(tmp_path / "by_flag").manifest.counts == {"mine": 3}
    assert SupportIndex.open(tmp_path / "by_env").manifest.counts == {"mine": 3}
    monkeypatch.delenv("IMGSCAN_INDEX")
    assert paths.index_dir_for_reading(None, read_card_sha(tiny_model_dir)) == starter  # the unnamed default
    shutil.rmtree(starter)


def read_card_sha(model_dir) -> str:
    from scanner.model import read_card

    return read_card(model_dir).weights_sha256


def test_the_log_names_model_and_index_with_timestamps_and_warns_of_a_one_class_index(tmp_path, tiny_model_dir):
    import re

    index = tmp_path / "one-class"
    assert runner.invoke(app, ["enroll", "real", str(write_class_dir(tmp_path / "r", RED, 3, seed0=9300)),
                               "--index", str(index), "--model", str(tiny_model_dir), "--device", "cpu"]).exit_code == 0
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "crawl"
    write_class_dir(deep, RED, 2, seed0=9400)
    done = subprocess.run([sys.executable, "-m", "scanner.cli", "scan", str(deep), "--out", str(tmp_path / "v.parquet"),
                           "--index", str(index), "--model", str(tiny_model_dir), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    start = next(line for line in lines if " imgscan: start: " in line)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00 imgscan: start: roots ", start)
    assert str(deep) in start and "model tiny" in start and "one-class@g1" in start and "runtime openvino" in start
    assert any("warning: the index holds one class (real)" in line for line in lines)
    assert any(re.match(r"\S+ imgscan: done: 2 rows in ", line) for line in lines)


def test_a_resume_after_an_enroll_is_refused_and_overwrite_starts_over(tmp_path, tiny_model_dir, two_class_index):
    import shutil

    index = tmp_path / "idx"
    shutil.copytree(two_class_index, index)
    crawl = write_class_dir(tmp_path / "crawl", RED, 300, seed0=9500)
    out = tmp_path / "v.parquet"
    args = ["scan", str(crawl), "--out", str(out), "--index", str(index), "--model", str(tiny_model_dir), "--device",
            "cpu", "--batch-size", "4", "--readers", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "scanner.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    sigkill_when_journaled(proc, tmp_path / "v.parquet.partial", 20_000)
    enrolled = runner.invoke(app, ["enroll", "gen_blue2", str(write_class_dir(tmp_path / "b", BLUE, 3, seed0=9600)),
                                   "--index", str(index), "--model", str(tiny_model_dir), "--device", "cpu"])
    assert enrolled.exit_code == 0, enrolled.output
    result = runner.invoke(app, args[:1] + args[1:])
    assert result.exit_code == 2 and "index generation" in _one_line(result) and "--overwrite" in result.output
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.num_rows == 300 and set(table.column("index").to_pylist()) == {"idx@g3"}


def test_a_directory_that_cannot_be_listed_gets_a_row(tmp_path, tiny_model_dir, two_class_index):
    """A directory whose path is over PATH_MAX (or, for a user without CAP_DAC_*, without read permission)
    cannot be listed: it gets an error row instead of vanishing with everything in it."""
    crawl = write_class_dir(tmp_path / "crawl", RED, 2, seed0=9700)
    fd = os.open(crawl, os.O_RDONLY)
    try:
        for _ in range(22):  # 22 levels of 200 characters: the deepest paths are over 4,096 bytes
            os.mkdir("d" * 200, dir_fd=fd)
            deeper = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = deeper
    finally:
        os.close(fd)
    out = tmp_path / "v.parquet"
    result = _scan([crawl], out, two_class_index, tiny_model_dir)
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out).to_pylist()
    unlisted = [r for r in rows if r["error"] and len(r["path"].encode()) > 4096]
    assert len(unlisted) == 1 and "name too long" in unlisted[0]["error"].lower()  # read: the path itself is too long
    assert sum(r["error"] is None for r in rows) == 2


# -- issue 16.7: the index manifest is validated and checksummed -------------------------------------------------

def _edit_manifest(index, edit, recompute: bool = True):
    import json

    from indexes.manifest import _checksum

    path = index / "manifest.json"
    doc = json.loads(path.read_text())
    edit(doc)
    if recompute:
        doc["checksum"] = _checksum(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(dim=100000), "dim"),
    (lambda d: d.update(dim=64), "dim 128"),
    (lambda d: d["files"]["hnsw"].update(name="/dev/zero"), "not a data file name"),
    (lambda d: d["files"]["support"].update(name="../manifest.json"), "not a data file name"),
    (lambda d: d["open_set"].update(threshold="0.5"), "open_set.threshold"),
    (lambda d: d.update(counts=[1, 2]), "counts"),
    (lambda d: d["hnsw"].update(M=True), "hnsw.M"),
])
def test_a_hostile_manifest_is_refused_in_one_line(tmp_path, tiny_model_dir, two_class_index, edit, message):
    _edit_manifest(two_class_index, edit)
    for args in (["index", "show", "--index", str(two_class_index)],
                 ["scan", str(tmp_path), "--out", str(tmp_path / "v.parquet"), "--index", str(two_class_index),
                  "--model", str(tiny_model_dir), "--device", "cpu"]):
        r = subprocess.run([sys.executable, "-m", "scanner.cli", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_a_data_file_that_is_a_fifo_or_a_link_out_is_refused_without_blocking(tmp_path, two_class_index):
    import json

    doc = json.loads((two_class_index / "manifest.json").read_text())
    hnsw = two_class_index / doc["files"]["hnsw"]["name"]
    hnsw.unlink()
    os.mkfifo(hnsw)  # reading it would block forever
    r = subprocess.run([sys.executable, "-m", "scanner.cli", "index", "show", "--index", str(two_class_index)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a regular file" in r.stderr
    hnsw.unlink()
    hnsw.symlink_to("/dev/zero")
    r = subprocess.run([sys.executable, "-m", "scanner.cli", "index", "show", "--index", str(two_class_index)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a regular file" in r.stderr


def test_an_edited_manifest_fails_its_checksum(tmp_path, two_class_index):
    _edit_manifest(two_class_index, lambda d: d["open_set"].update(threshold=0.9), recompute=False)
    r = CliRunner().invoke(app, ["index", "show", "--index", str(two_class_index)])
    assert r.exit_code == 2 and "checksum does not match" in r.output


@pytest.mark.parametrize("recompute", [False, True], ids=["checksum-as-written", "checksum-recomputed"])
def test_manifest_fuzz_1000_mutations(tmp_path, recompute):
    """1,000 random mutations (types, values, names, sizes): with the checksum as written, each is refused in one
    line or leaves the verdicts identical; with it recomputed, none crashes, hangs or raises anything else."""
    import json

    import numpy as np

    from scanner.enroll import enroll_embeddings

    rng = np.random.default_rng(0)
    for c, label in enumerate(["real", "gen_a", "gen_b"]):
        e = rng.normal(size=16) + rng.normal(0, 0.5, (40, 16))
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        enroll_embeddings(tmp_path / "index", label, e.astype(np.float32), [f"{c:02d}{i:030x}" for i in range(40)],
                          ["p"] * 40, "m@1", "sha-m", rng.integers(0, 2 ** 62, 40).astype(np.uint64))
    report = tmp_path / "report.json"
    cmd = [sys.executable, str(REPO / "tests" / "fuzz_manifest.py"), str(tmp_path / "index"), "--mutations", "1000",
           "--report", str(report)] + (["--recompute-checksum"] if recompute else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    doc = json.loads(report.read_text()) if report.is_file() else None
    assert r.returncode == 0 and doc is not None, (r.returncode, r.stderr[-2000:], doc)  # a signal: negative code
    assert doc["n_failures"] == 0 and sum(doc["counts"].values()) == 1000
    assert doc["counts"]["refused"] > 500
    if not recompute:
        assert doc["counts"]["changed"] == 0


# -- issue 16.6: transient errors are retried, and say so when they persist ----------------------------------------

def test_transient_read_errors_are_retried_and_marked_when_they_persist(tmp_path, monkeypatch):
    import errno

    from scanner import read as read_stage

    f = tmp_path / "a.jpg"
    f.write_bytes(b"data")
    real_open, failures = os.open, {"left": 2}

    def flaky_open(path, flags, *args):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, flags, *args)

    monkeypatch.setattr(read_stage.os, "open", flaky_open)
    r = read_stage.read_file(os.fsencode(f), retry_delays_s=(0, 0, 0))
    assert r.error is None and r.data == b"data"
    failures["left"] = 10
    r = read_stage.read_file(os.fsencode(f), retry_delays_s=(0, 0))
    assert r.error == "read: Too many open files (transient: the next run tries it again)"
    assert read_stage.is_transient(r.error)
    failures["left"] = 0
    monkeypatch.setattr(read_stage.os, "open", lambda *a: (_ for _ in ()).throw(OSError(errno.EACCES, "denied")))
    assert read_stage.read_file(os.fsencode(f)).error == "read: permission denied"  # not retried


def test_a_low_open_file_limit_does_not_turn_files_into_error_rows(tmp_path, tiny_model_dir, two_class_index):
    import resource

    crawl = write_class_dir(tmp_path / "crawl", RED, 200)
    out = tmp_path / "v.parquet"

    def low_fd_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))

    r = subprocess.run([sys.executable, "-m", "scanner.cli", "scan", str(crawl), "--out", str(out), "--readers", "64",
                        "--index", str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu", "-q"],
                       capture_output=True, text=True, timeout=300, preexec_fn=low_fd_limit)
    assert r.returncode == 0, r.stderr
    errors = pq.read_table(out).column("error").to_pylist()
    assert len(errors) == 200 and errors.count(None) == 200, [e for e in errors if e][:3]


# -- issue 16.5: memory follows a byte budget, not file sizes ---------------------------------------------------------

def test_huge_files_are_read_within_the_byte_budget(tmp_path, tiny_model_dir, two_class_index):
    """Eight sparse 250 MB `.jpg` files (2 GB that a 64-file batch used to hold at once) beside a few images: the
    scan's peak RSS stays within the 512 MiB byte budget (and some slack) of the same scan without them."""
    crawl = write_class_dir(tmp_path / "crawl", RED, 6)
    # a fresh parent, so that RUSAGE_CHILDREN's peak is this scan's alone
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")

    def peak_mb(out):
        r = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "scanner.cli", "scan", str(crawl),
                            "--out", str(out), "--index", str(two_class_index), "--model", str(tiny_model_dir),
                            "--device", "cpu", "-q"], capture_output=True, text=True, timeout=300)
        rc, peak_kb = map(int, r.stdout.split()[-2:])
        assert rc == 0, r.stderr
        return peak_kb / 1024

    baseline = peak_mb(tmp_path / "baseline.parquet")
    for i in range(8):
        with open(crawl / f"big_{i}.jpg", "wb") as f:
            f.truncate(250 * 1024 * 1024)
    out = tmp_path / "v.parquet"
    peak = peak_mb(out)
    errors = pq.read_table(out).column("error").to_pylist()
    assert len(errors) == 14 and errors.count(None) == 6
    # measured: +390 MB (baseline 807 MB); the build before the budget: +1,860 MB
    assert peak - baseline < 800, f"peak RSS {peak:.0f} MB, {peak - baseline:.0f} MB over the same scan without them"


# -- issue 16.12: the exit contract under an address-space limit, and --index naming a file ---------------------------

def test_an_address_space_limit_is_one_line_not_a_traceback(tmp_path, tiny_model_dir, two_class_index):
    import resource

    crawl = write_class_dir(tmp_path / "crawl", RED, 4)

    def limit_address_space():
        resource.setrlimit(resource.RLIMIT_AS, (1536 * 1024 * 1024, 1536 * 1024 * 1024))

    r = subprocess.run([sys.executable, "-m", "scanner.cli", "scan", str(crawl), "--out", str(tmp_path / "v.parquet"),
                        "--index", str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu"],
                       capture_output=True, text=True, timeout=300, preexec_fn=limit_address_space)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "out of memory" in lines[0]


def test_enroll_into_an_index_path_that_is_a_file_is_one_line(tmp_path, tiny_model_dir):
    reds = write_class_dir(tmp_path / "reds", RED, 3)
    not_a_dir = tmp_path / "index.txt"
    not_a_dir.write_text("x")
    r = CliRunner().invoke(app, ["enroll", "real", str(reds), "--index", str(not_a_dir), "--model",
                                 str(tiny_model_dir), "--device", "cpu"])
    assert r.exit_code == 2 and "is a file, not an index directory" in r.output
    assert not_a_dir.read_text() == "x"


def test_the_index_column_names_the_directory_not_a_symlink_to_it(tmp_path, tiny_model_dir, two_class_index):
    link = tmp_path / "current-index"
    link.symlink_to(two_class_index)
    out = tmp_path / "v.parquet"
    r = CliRunner().invoke(app, ["scan", str(write_class_dir(tmp_path / "crawl", RED, 2)), "--out", str(out),
                                 "--index", str(link), "--model", str(tiny_model_dir), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert set(pq.read_table(out).column("index").to_pylist()) == {f"{two_class_index.name}@g2"}


# -- issue 16: the crash loop (slow suite) -------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_at_30_points_of_a_scan_and_its_merge_then_rerun(tmp_path, tiny_model_dir, two_class_index):
    """For 30 kill times spread from start-up to the end of the final merge: a fresh scan is SIGKILLed at that
    time and the same command is re-run to completion. Every output has exactly one row per file and nothing
    else is left beside it."""
    crawl = write_class_dir(tmp_path / "crawl", RED, 150)
    write_class_dir(crawl / "blue", BLUE, 150, seed0=1000)
    files = {str(p) for p in crawl.rglob("*.jpg")}

    def command(out):
        return [sys.executable, "-m", "scanner.cli", "scan", str(crawl), "--out", str(out), "--index",
                str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu", "--batch-size", "4", "-q"]

    (tmp_path / "timing").mkdir()
    start = time.monotonic()
    subprocess.run(command(tmp_path / "timing" / "v.parquet"), check=True, timeout=600, capture_output=True)
    whole = time.monotonic() - start  # start-up, scan and final merge: the kill times spread over it
    killed_before_the_end = 0
    for i in range(30):
        out_dir = tmp_path / f"run{i:02d}"
        out_dir.mkdir()
        out = out_dir / "v.parquet"
        p = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(whole * (i + 1) / 31)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed_before_the_end += 1
        p.wait(timeout=60)
        r = subprocess.run(command(out), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (i, r.stderr)
        paths = pq.read_table(out, columns=["path"]).column("path").to_pylist()
        assert len(paths) == len(set(paths)) == len(files) and set(paths) == files, i
        assert sorted(q.name for q in out_dir.iterdir()) == ["v.parquet"], (i, list(out_dir.iterdir()))
    assert killed_before_the_end >= 20  # most kill times fall before the run ends (a loaded machine runs slower)


def test_usage_errors_are_one_line_with_exit_2():
    for args in (["scan"], ["scan", "x", "--bogus"], ["scan", "x", "--out", "v.parquet", "--k", "abc"], ["--bogus"],
                 ["bogus"]):
        r = subprocess.run([sys.executable, "-m", "scanner.cli", *args], capture_output=True, text=True, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("imgscan: error: "), (args, r.stderr)
        assert "--help" in lines[0] and "╭" not in r.stderr


def test_scan_json_summary_on_stdout(tmp_path, tiny_model_dir, two_class_index):
    import json

    crawl = write_class_dir(tmp_path / "crawl", RED, 3)
    (crawl / "broken.jpg").write_bytes(b"\xff\xd8 no")
    out = tmp_path / "v.parquet"
    common = ["--out", str(out), "--index", str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu"]
    r = subprocess.run([sys.executable, "-m", "scanner.cli", "scan", str(crawl), *common, "--json", "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["out"] == str(out) and doc["rows"] == 4 and doc["labels"] == {"real": 3} and doc["error_rows"] == 1
    assert doc["scanned_this_run"] == 4 and not doc["already_complete"] and doc["elapsed_s"] > 0
    r = subprocess.run([sys.executable, "-m", "scanner.cli", "scan", str(crawl), *common, "--json"],
                       capture_output=True, text=True, timeout=300)
    assert json.loads(r.stdout) == {"out": str(out), "already_complete": True}


def test_index_remove_without_a_terminal_or_with_yes_does_not_ask(tmp_path, two_class_index):
    r = CliRunner().invoke(app, ["index", "remove", "gen_blue", "--index", str(two_class_index), "--yes"])
    assert r.exit_code == 0 and "removed 20 support image(s) of 'gen_blue'" in r.output


def test_switches_show_no_type_and_a_value_after_one_is_explained(tmp_path, two_class_index):
    r = CliRunner().invoke(app, ["scan", "--help"], terminal_width=200)
    line = next(ln for ln in r.output.splitlines() if "--overwrite" in ln)
    assert "<bool>" not in line and "<bool>" not in r.output
    r = CliRunner().invoke(app, ["scan", str(tmp_path), "--out", str(tmp_path / "v.parquet"), "--overwrite", "true",
                                 "--index", str(two_class_index)])
    assert r.exit_code == 2 and "take no value" in r.output and not (tmp_path / "v.parquet").exists()


def test_include_and_exclude_globs(tmp_path, tiny_model_dir, two_class_index):
    crawl = tmp_path / "crawl"
    write_class_dir(crawl / "2026-11-01", RED, 3)
    write_class_dir(crawl / "2026-11-02", RED, 3, seed0=10, fmt="PNG", ext=".png")
    write_class_dir(crawl / "thumbs", RED, 2, seed0=20)
    out = tmp_path / "v.parquet"
    r = CliRunner().invoke(app, ["scan", str(crawl), "--out", str(out), "--include", "2026-11-*/*",
                                 "--exclude", "*.png", "--index", str(two_class_index), "--model", str(tiny_model_dir),
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    paths = sorted(p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in pq.read_table(out).column("path").to_pylist())
    assert paths == [f"2026-11-01/img_{i:04d}.jpg" for i in range(3)]


def test_index_history_and_rollback_undo_a_remove(tmp_path, tiny_model_dir, two_class_index):
    from indexes import SupportIndex
    from indexes.support_index import HISTORY_GENERATIONS, history_of

    runner = CliRunner()
    r = runner.invoke(app, ["index", "remove", "gen_blue", "--index", str(two_class_index), "--yes"])
    assert r.exit_code == 0 and SupportIndex.open(two_class_index).manifest.counts == {"real": 20}
    r = runner.invoke(app, ["index", "history", "--index", str(two_class_index)], terminal_width=200)
    assert r.exit_code == 0 and "restores" not in r.output and "current" in r.output
    assert [m.generation for m in history_of(two_class_index)] == [1, 2, 3]
    r = runner.invoke(app, ["index", "rollback", "2", "--index", str(two_class_index), "--yes"])
    assert r.exit_code == 0, r.output
    index = SupportIndex.open(two_class_index)
    assert index.manifest.generation == 4 and index.manifest.counts == {"gen_blue": 20, "real": 20}
    assert index.manifest.restores == 2 and index.manifest.rolled_back_from == 3
    assert index.search(index.vectors([0]), 3).labels.shape == (1, 3)  # its files are there and verified
    r = runner.invoke(app, ["index", "rollback", "9", "--index", str(two_class_index), "--yes"])
    assert r.exit_code == 2 and "not kept" in r.output
    for i in range(HISTORY_GENERATIONS):  # older generations go, with the files only they named
        src = write_class_dir(tmp_path / f"more{i}", BLUE, 2, seed0=900 + 10 * i)
        runner.invoke(app, ["enroll", f"gen_{i}", str(src), "--index", str(two_class_index), "--model",
                            str(tiny_model_dir), "--device", "cpu"])
    kept = history_of(two_class_index)
    assert len(kept) == HISTORY_GENERATIONS and kept[0].generation == 5
    named = {e.name for m in kept for e in m.files.values()}
    assert {p.name for p in two_class_index.glob("support-g*")} == named


def test_readme_nightly_recipe_over_three_nights_skips_exactly_what_earlier_nights_saw(tmp_path):
    """The README's nightly command, taken from the README and run through a shell for three nights of folders
    (each night re-posts some earlier images, byte for byte, beside new ones), with the shipped model and index."""
    import re

    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Scanning a crawl every night"):]
    command = re.search(r"```bash\n(imgscan scan .*?)\n```", section, re.S).group(1).strip()
    assert "--skip-known '/verdicts/*.parquet'" in command
    crawl, verdicts = tmp_path / "crawl", tmp_path / "verdicts"
    verdicts.mkdir()
    nights = ["2026-11-21", "2026-11-22", "2026-11-23"]
    new_files = {}
    for n, night in enumerate(nights):
        folder = write_class_dir(crawl / night, (RED, BLUE, (30, 200, 30))[n], 4, seed0=100 * n)
        new_files[night] = {p.name for p in folder.iterdir()}
        for earlier in nights[:n]:  # re-posts: the same bytes under new names
            for p in sorted((crawl / earlier).iterdir())[:2]:
                if not p.name.startswith("repost"):
                    (folder / f"repost_{earlier}_{p.name}").write_bytes(p.read_bytes())
    for night in nights:
        line = command.replace("/crawl/", f"{crawl}/").replace("/verdicts/", f"{verdicts}/").replace("2026-11-22", night)
        r = subprocess.run(["bash", "-c", f"{sys.executable} -m scanner.cli {line.removeprefix('imgscan ')}"],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert r.returncode == 0, (night, r.stderr)
        names = {p.rsplit("/", 1)[-1] for p in pq.read_table(verdicts / f"{night}.parquet").column("path").to_pylist()}
        assert names == new_files[night], night  # every re-post of an earlier night skipped, every new file judged


def test_heic_and_avif_are_judged_like_any_image(tmp_path, tiny_model_dir, two_class_index):
    from PIL import Image

    from conftest import coloured

    crawl = tmp_path / "crawl"
    crawl.mkdir()
    import scanner.decode  # noqa: F401  (registers the HEIF opener)

    coloured(RED, size=(64, 48), seed=1).save(crawl / "phone.heic", "HEIF", quality=90)
    coloured(RED, size=(64, 48), seed=2).save(crawl / "web.avif", "AVIF", quality=90)
    (crawl / "broken.heic").write_bytes((crawl / "phone.heic").read_bytes()[:60])
    out = tmp_path / "v.parquet"
    r = CliRunner().invoke(app, ["scan", str(crawl), "--out", str(out), "--index", str(two_class_index), "--model",
                                 str(tiny_model_dir), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rows = {p.rsplit("/", 1)[-1]: row for p, row in
            zip(pq.read_table(out).column("path").to_pylist(), pq.read_table(out).to_pylist())}
    for name in ("phone.heic", "web.avif"):
        assert rows[name]["error"] is None and rows[name]["label"] == "real", rows[name]["error"]
        assert (rows[name]["width"], rows[name]["height"]) == (64, 48)
    assert rows["broken.heic"]["error"].startswith("decode:")
    assert Image.open(crawl / "phone.heic").format == "HEIF"


def test_log_format_json_gives_one_json_object_per_line(tmp_path, tiny_model_dir, two_class_index):
    import json

    crawl = write_class_dir(tmp_path / "crawl", RED, 3)
    common = ["--index", str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu", "--log-format", "json"]
    r = subprocess.run([sys.executable, "-m", "scanner.cli", "scan", str(crawl), "--out", str(tmp_path / "v.parquet"),
                        *common], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stderr.strip().splitlines()]
    assert [rec["message"].split(":")[0] for rec in records] == ["start", "done"]
    assert all(rec["level"] == "info" and rec["time"].endswith("+00:00") for rec in records)
    r = subprocess.run([sys.executable, "-m", "scanner.cli", "scan", str(tmp_path / "missing"), "--out",
                        str(tmp_path / "w.parquet"), *common], capture_output=True, text=True, timeout=300)
    [rec] = [json.loads(line) for line in r.stderr.strip().splitlines()]
    assert r.returncode == 2 and rec["level"] == "error" and "no such file" in rec["message"]


def test_files_from_a_list_or_nul_separated_stdin(tmp_path, tiny_model_dir, two_class_index):
    site_a = write_class_dir(tmp_path / "siteA", RED, 3)
    site_b = write_class_dir(tmp_path / "siteB", BLUE, 3, seed0=50)
    listing = tmp_path / "list.txt"
    b_files = sorted(str(p) for p in site_b.iterdir())
    # a repeat, a file under a root given too (one row), a file that vanished (a row saying so)
    listing.write_text("\n".join(b_files + [b_files[0], str(site_a / "img_0000.jpg"), str(tmp_path / "gone.jpg")]) + "\n")
    common = ["--index", str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu"]
    out = tmp_path / "v.parquet"
    r = CliRunner().invoke(app, ["scan", str(site_a), "--files-from", str(listing), "--out", str(out), *common])
    assert r.exit_code == 0, r.output
    table = pq.read_table(out)
    paths = table.column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 7
    assert set(paths) == {str(p) for p in site_a.iterdir()} | set(b_files) | {str(tmp_path / "gone.jpg")}
    assert table.column("error").to_pylist().count(None) == 6
    out0 = tmp_path / "v0.parquet"
    r = subprocess.run([sys.executable, "-m", "scanner.cli", "scan", "-0", "--files-from", "-", "--out", str(out0),
                        *common, "-q"], input=b"\0".join(p.encode() for p in b_files) + b"\0",
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(pq.read_table(out0).column("path").to_pylist()) == b_files
    r = CliRunner().invoke(app, ["scan", "--out", str(tmp_path / "x.parquet"), *common])
    assert r.exit_code == 2 and "nothing to scan" in r.output


def test_a_rerun_reads_again_the_files_whose_error_was_transient(tmp_path, tiny_model_dir, two_class_index):
    """A file that failed with EIO (here /proc/self/mem behind a link: EIO even for root) is marked transient;
    once it is readable, the same command on the finished output reads it again: one row per file, the new
    verdict in place of the error."""
    crawl = write_class_dir(tmp_path / "crawl", RED, 5)
    flaky = crawl / "flaky.jpg"
    flaky.symlink_to("/proc/self/mem")
    out = tmp_path / "v.parquet"
    command = ["scan", str(crawl), "--out", str(out), "--index", str(two_class_index), "--model", str(tiny_model_dir),
               "--device", "cpu"]
    r = CliRunner().invoke(app, command)
    assert r.exit_code == 0, r.output
    rows = {p.rsplit("/", 1)[-1]: e for p, e in zip(pq.read_table(out).column("path").to_pylist(),
                                                     pq.read_table(out).column("error").to_pylist())}
    assert rows["flaky.jpg"] == "read: Input/output error (transient: the next run tries it again)"
    flaky.unlink()
    flaky.write_bytes((crawl / "img_0000.jpg").read_bytes())
    r = CliRunner().invoke(app, command)
    assert r.exit_code == 0, r.output
    assert "1 rows carry a transient error: reading those files again" in r.output
    table = pq.read_table(out)
    paths = table.column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 6 and table.column("error").null_count == 6
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("v.")) == ["v.parquet"]
    r = CliRunner().invoke(app, command)
    assert "already complete" in r.output  # nothing transient left: left alone


def test_every_readme_imgscan_bash_example_runs(tmp_path):
    """The README's bash blocks of imgscan commands, run as written in a folder holding ./crawl and ./samples,
    with the shipped model and (seeded) default index. (The install and test blocks are what CI itself runs;
    the nightly block has its own three-night test.)"""
    import re

    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", readme, re.S)
              if b.strip().startswith("imgscan") and "/crawl/" not in b]
    assert len(blocks) >= 2
    write_class_dir(tmp_path / "crawl", RED, 4)
    write_class_dir(tmp_path / "samples", BLUE, 3, seed0=70)
    _readme_shards(tmp_path)
    for block in blocks:
        for line in block.strip().splitlines():
            command = line.split("#")[0].strip()
            r = subprocess.run(["bash", "-c", f"{sys.executable} -m scanner.cli {command.removeprefix('imgscan ')}"],
                               capture_output=True, text=True, timeout=600, cwd=tmp_path)
            assert r.returncode == 0, (command, r.stderr[-2000:])
            if " --out verdicts.parquet" in command:
                assert pq.read_table(tmp_path / "verdicts.parquet").num_rows == 4
                (tmp_path / "verdicts.parquet").unlink()


def _readme_shards(root: Path) -> None:
    """What the README's shard examples name: three tar shards, img2dataset Parquet files, a Hugging Face style
    Parquet file and a list of shards."""
    import io
    import tarfile

    from conftest import coloured, encode

    (root / "shards").mkdir()
    (root / "data").mkdir()
    images = [encode(coloured(RED, seed=900 + i)) for i in range(6)]
    for s in range(3):
        with tarfile.open(root / "shards" / f"{s:05d}.tar", "w") as tar:
            for i, data in enumerate(images[:2]):
                info = tarfile.TarInfo(f"{s:05d}{i:04d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    for s in range(2):
        pq.write_table(pa.table({"key": ["a", "b"], "jpg": images[2:4]}), root / "data" / f"part-{s}.parquet")
    pq.write_table(pa.table({"image": [{"bytes": images[4], "path": "x.jpg"}]}), root / "hf.parquet")
    (root / "shard-list.txt").write_text("shards/00000.tar\n")
