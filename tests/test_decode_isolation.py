"""Isolated decoding: an aborting or hanging decoder costs exactly one image its pixels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import BLUE, RED, coloured, dali_failing_jpeg, encode
from scanner.decode import ImageDecoder, ViewSpec
from scanner.decode_isolated import IsolatedImageDecoder

HERE = Path(__file__).parent


def _gif_with(marker: bytes) -> bytes:
    # GIF goes to Pillow (DALI has no GIF decoder); the marker rides in a GIF comment block.
    return encode(coloured(RED, seed=1), "GIF", comment=marker)


def test_isolated_decoder_matches_in_process_decoder():
    datas = [encode(coloured(RED, seed=i)) for i in range(5)] + [b"junk", encode(coloured(BLUE, seed=9), "PNG")]
    isolated = IsolatedImageDecoder(ViewSpec(32), 8)
    try:
        got = isolated.decode(datas)
        again = isolated.decode(datas[:2])  # the child is reused across batches
    finally:
        isolated.close()
    want = ImageDecoder(ViewSpec(32), 8).decode(datas)
    assert got.errors == want.errors and got.sizes == want.sizes
    assert np.array_equal(got.pixels, want.pixels) and again.pixels.shape == (2, 32, 32, 3)


def test_abort_and_hang_cost_one_row_each():
    datas = [encode(coloured(RED, seed=1)), _gif_with(b"ABORT-ME"), encode(coloured(BLUE, seed=2)),
             _gif_with(b"HANG-ME"), _gif_with(b"fine")]
    decoder = IsolatedImageDecoder(ViewSpec(32), 8, timeout_s=2.0, startup_s=8.0,
                                   child_command=[sys.executable, str(HERE / "faulty_decoder_child.py")])
    try:
        batch = decoder.decode(datas)
        after = decoder.decode([encode(coloured(RED, seed=3))])  # a fresh child takes over
    finally:
        decoder.close()
    assert batch.errors[0] is None and batch.errors[2] is None and batch.errors[4] is None
    assert batch.errors[1] == "decode: decoder crashed (SIGABRT)"
    assert batch.errors[3].startswith("decode: timed out after 2 s")
    assert batch.pixels.shape == (3, 32, 32, 3) and batch.sizes[1] is None and batch.sizes[4] == (48, 40)
    assert after.errors == [None]


def test_decode_timeout_is_per_image_and_start_up_is_not_charged(monkeypatch):
    """A batch of five with one image slower than the timeout: that image alone is cut, even though the batch as
    a whole is well within five timeouts; two images under the timeout each but over it together both decode; a
    child slower to start than one timeout still decodes every image."""
    monkeypatch.setenv("FAULTY_CHILD_SLOW_START", "2")
    datas = [_gif_with(b"SLOWISH 1"), encode(coloured(RED, seed=1)), _gif_with(b"SLOW-ME"), encode(coloured(BLUE, seed=2)),
             _gif_with(b"SLOWISH 2")]
    decoder = IsolatedImageDecoder(ViewSpec(32), 8, timeout_s=1.5, startup_s=20.0,
                                   child_command=[sys.executable, str(HERE / "faulty_decoder_child.py")])
    try:
        batch = decoder.decode(datas)
    finally:
        decoder.close()
    assert batch.errors == [None, None, "decode: timed out after 1.5 s", None, None]
    assert batch.pixels.shape == (4, 32, 32, 3)


def test_a_decoder_that_cannot_start_fails_the_batch_in_one_line_each():
    decoder = IsolatedImageDecoder(ViewSpec(32), 8, timeout_s=1.0, startup_s=5.0,
                                   child_command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    try:
        batch = decoder.decode([encode(coloured(RED, seed=1)), encode(coloured(BLUE, seed=2))])
    finally:
        decoder.close()
    assert batch.errors == ["decode: decoder exited (status 3)"] * 2 and batch.pixels.shape[0] == 0


def test_a_child_that_does_not_start_in_time_gets_one_more_try(tmp_path, monkeypatch):
    """A busy machine can take longer than the start-up bound to import DALI once: the batch still decodes."""
    monkeypatch.setenv("FAULTY_CHILD_HANG_FIRST_START", str(tmp_path / "started-once"))
    decoder = IsolatedImageDecoder(ViewSpec(32), 8, timeout_s=5.0, startup_s=4.0,
                                   child_command=[sys.executable, str(HERE / "faulty_decoder_child.py")])
    try:
        batch = decoder.decode([encode(coloured(RED, seed=1)), encode(coloured(BLUE, seed=2))])
    finally:
        decoder.close()
    assert (tmp_path / "started-once").exists()  # the first child did hang
    assert batch.errors == [None, None] and batch.pixels.shape == (2, 32, 32, 3)


def test_a_file_dali_fails_on_retires_the_child_and_a_fresh_one_takes_the_next_batch():
    """DALI is not safe to run again in a process after it failed (scanner.decode.DaliImageDecoder): the child
    finishes that batch with Pillow, says so and exits; the next batch starts a fresh child. A good batch keeps
    its child."""
    good = [encode(coloured(RED if i % 2 else BLUE, seed=i)) for i in range(3)]
    decoder = IsolatedImageDecoder(ViewSpec(32), 8)
    try:
        first = decoder.decode(good)
        pid = decoder.child_pid()
        decoder.decode(good)
        assert decoder.child_pid() == pid
        failed = decoder.decode([good[0], dali_failing_jpeg(), good[1]])
        assert decoder.child_pid() is None  # it exited after its reply
        after = decoder.decode(good)
        assert decoder.child_pid() not in (None, pid)
    finally:
        decoder.close()
    assert failed.errors[0] is None and failed.errors[2] is None
    assert failed.errors[1].startswith("decode:") and "crashed" not in failed.errors[1]
    assert np.array_equal(failed.pixels, first.pixels[:2]) and np.array_equal(after.pixels, first.pixels)


_AFTER_A_FAILURE = """
import json, sys, threading
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import numpy as np
from conftest import BLUE, RED, coloured, dali_failing_jpeg, encode
from scanner.decode import ImageDecoder, ViewSpec, dali_failed_in_process

decoder = ImageDecoder(ViewSpec(32), 32)
good = [encode(coloured(RED if i % 2 else BLUE, seed=i)) for i in range(24)]
reference = decoder.decode(good)  # DALI, before any failure
stop, report = threading.Event(), {}

def busy():  # another thread at work, as the scan's embedder is beside its feeder
    while not stop.is_set():
        sum(range(1000))

def feeder():
    failed = decoder.decode(good[:5] + [dali_failing_jpeg()] + good[5:10])
    report["failed_errors"] = [e is not None for e in failed.errors]
    report["dali_failed"] = dali_failed_in_process()
    same = True
    for n in range(1, 25):
        batch = decoder.decode(good[:n])
        same &= batch.errors == [None] * n and np.array_equal(batch.pixels, reference.pixels[:n])
    report["same_after"] = bool(same)

threading.Thread(target=busy).start()
worker = threading.Thread(target=feeder)
worker.start()
worker.join()
stop.set()
print(json.dumps(report))
"""


def test_after_dali_fails_a_process_decodes_with_pillow_and_lives_on():
    """In a process of its own (the test process must never see DALI fail): a batch with a file DALI fails on,
    decoded in a second thread while another works, then batches of every size. Before DALI was retired after a
    failure, this pattern died of SIGSEGV in most runs."""
    done = subprocess.run([sys.executable, "-c", _AFTER_A_FAILURE, str(HERE), str(HERE.parent)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"failed_errors": [False] * 5 + [True] + [False] * 5, "dali_failed": True, "same_after": True}
