"""Readers see one consistent snapshot while another process writes; output on another filesystem."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import RED, write_class_dir
from indexes import SupportIndex
from scanner.enroll import enroll_embeddings

WRITER = textwrap.dedent("""
    import sys, numpy as np
    from scanner.enroll import enroll_embeddings
    rng = np.random.default_rng(7)
    for g in range(12):
        e = rng.normal(size=(40, 16)).astype("float32")
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        enroll_embeddings(sys.argv[1], f"gen_{g:02d}", e, [f"a{g:03d}{i:028x}" for i in range(40)], ["w"] * 40, "m", "s")
""")


def test_readers_see_consistent_snapshots_while_another_process_enrolls(tmp_path):
    import numpy as np

    e = np.eye(16, dtype=np.float32)[:4]
    enroll_embeddings(tmp_path, "real", e, [f"{i:032x}" for i in range(4)], ["r"] * 4, "m", "s")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stderr=subprocess.PIPE, text=True)
    generations = set()
    while writer.poll() is None:
        index = SupportIndex.open(tmp_path)  # must never fail or mix generations
        m = index.manifest
        assert len(index.table) == index.hnsw.get_current_count() == m.total
        assert sorted(set(index.table.label)) == sorted(m.counts)
        generations.add(m.generation)
    assert writer.returncode == 0, writer.stderr.read()
    final = SupportIndex.open(tmp_path)
    assert final.manifest.generation == 13 and final.manifest.total == 4 + 12 * 40
    assert len(generations) >= 2  # the reader really overlapped the writes


def test_scan_with_output_on_another_filesystem(tmp_path, tiny_model_dir, two_class_index):
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) here")
    from scanner.cli import app

    src = write_class_dir(tmp_path / "src", RED, 6)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        out = Path(other) / "v.parquet"
        result = CliRunner().invoke(app, ["scan", str(src), "--out", str(out), "--index", str(two_class_index),
                                          "--model", str(tiny_model_dir), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert pq.read_table(out).num_rows == 6 and not Path(str(out) + ".partial").exists()


def test_read_only_output_directory_is_refused_up_front(tmp_path, tiny_model_dir, two_class_index):
    """A read-only mount (as root, permission bits would not stop a write; a read-only filesystem does)."""
    from scanner.cli import app

    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        src = write_class_dir(tmp_path / "src", RED, 2)
        result = CliRunner().invoke(app, ["scan", str(src), "--out", str(mount_point / "v.parquet"), "--index",
                                          str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu"])
        assert result.exit_code == 2 and "is not writable" in result.output
        assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_scan_sees_one_snapshot_while_enrolls_write(tmp_path, tiny_model_dir, two_class_index):
    """A scan opens the index once; enrolls landing meanwhile neither break it nor mix generations into it."""
    from conftest import BLUE, GREEN

    crawl = write_class_dir(tmp_path / "crawl", RED, 400, seed0=7000)
    out = tmp_path / "v.parquet"
    common = ["--index", str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu"]
    scan = subprocess.Popen([sys.executable, "-m", "scanner.cli", "scan", str(crawl), "--out", str(out),
                             "--batch-size", "4", "--readers", "1", *common],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Freeze the scan once its first rows are journalled (so it has opened the index), enroll three times,
    # then let it finish: deterministic however fast the machine is, unlike racing a big crawl.
    partial = out.with_name(out.name + ".partial")
    deadline = time.monotonic() + 120
    while not list(partial.glob("journal-*.arrows")):
        assert scan.poll() is None, "the scan ended before it was frozen"
        assert time.monotonic() < deadline, "the scan wrote no rows in 120 s"
        time.sleep(0.002)
    scan.send_signal(signal.SIGSTOP)
    try:
        assert not out.exists(), "the scan finished before it was frozen: make the crawl larger"
        for i, rgb in enumerate((GREEN, BLUE, GREEN)):
            src = write_class_dir(tmp_path / f"new{i}", rgb, 6, seed0=8000 + 100 * i)
            enrolled = subprocess.run([sys.executable, "-m", "scanner.cli", "enroll", f"gen_new{i}", str(src),
                                       *common], capture_output=True, text=True, timeout=300)
            assert enrolled.returncode == 0, enrolled.stderr
    finally:
        scan.send_signal(signal.SIGCONT)
    _, err = scan.communicate(timeout=300)
    assert scan.returncode == 0, err
    table = pq.read_table(out)
    assert table.num_rows == 400 and table.column("error").null_count == 400
    assert set(table.column("index").to_pylist()) == {"index@g2"}  # the generation the scan opened
    assert SupportIndex.open(two_class_index).manifest.generation == 5  # while three enrolls landed
