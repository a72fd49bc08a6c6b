"""Pixel detail (scanner/detail.py) and the verdict's detail floor: measured values, the rule, and a scan that
writes the column and does not accuse flat images."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import BLUE, coloured, encode
from scanner.cli import app
from scanner.decode import DecodedBatch
from scanner.detail import CHUNK, DEFAULT_MIN_DETAIL, item_detail, view_detail
from scanner.verdict import VerdictRule, decide


def _grey(a: np.ndarray) -> np.ndarray:
    return np.repeat(a.astype(np.uint8)[..., None], 3, axis=-1)


def test_flat_and_linear_views_have_no_detail_and_a_checkerboard_has_a_known_one():
    flat = _grey(np.full((16, 16), 128))
    board = _grey(np.indices((16, 16)).sum(axis=0) % 2 * 100)  # every interior |Laplacian| is 4 * 100
    ramp = _grey(np.tile(np.arange(16) * 10, (16, 1)))  # no second derivative
    got = view_detail(np.stack([flat, board, ramp]))
    assert got.dtype == np.float32 and got.shape == (3,)
    assert got[0] == 0.0 and got[1] == pytest.approx(400.0) and abs(got[2]) < 1e-3
    assert view_detail(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0,)
    assert view_detail(np.zeros((2, 2, 2, 3), np.uint8)).tolist() == [0.0, 0.0]  # too small for a Laplacian


def test_numpy_and_torch_agree_across_chunks():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).integers(0, 256, (CHUNK + 5, 20, 24, 3)).astype(np.uint8)
    a, b = view_detail(x), view_detail(torch.from_numpy(x))
    assert a.shape == (CHUNK + 5,) and np.allclose(a, b, rtol=1e-5)
    assert np.allclose(a[CHUNK:], view_detail(x[CHUNK:]))  # a chunk boundary changes nothing


def test_an_item_has_the_detail_of_its_most_detailed_view():
    flat = _grey(np.full((16, 16), 50))
    board = _grey(np.indices((16, 16)).sum(axis=0) % 2 * 10)
    pixels = np.stack([flat, board, flat, flat])
    batch = DecodedBatch(pixels=pixels, sizes=[(800, 600), (16, 16), None, (900, 900)],
                         errors=[None, None, "decode: broken", None], view_counts=[2, 1, 1])
    # float32 Laplacian sums: the last bit depends on the kernel the CPU dispatches to
    assert item_detail(batch).tolist() == pytest.approx([40.0, 0.0, 0.0], rel=1e-6)
    one_each = DecodedBatch(pixels=pixels[:2], sizes=[(16, 16)] * 2, errors=[None, None])
    assert item_detail(one_each).tolist() == pytest.approx([0.0, 40.0], rel=1e-6)


def test_the_floor_caps_ai_score_at_one_half_and_keeps_the_invariant():
    labels = np.array([["gen"] * 5, ["gen"] * 5, ["real"] * 5, ["gen"] * 5], dtype=object)
    sims = np.full((4, 5), 0.9)
    detail = np.array([0.5, 30.0, 0.5, 1.99], dtype=np.float32)
    plain = decide(labels, sims, VerdictRule())
    floored = decide(labels, sims, VerdictRule(), detail)
    assert plain.is_ai.tolist() == [True, True, False, True]
    assert floored.is_ai.tolist() == [False, True, False, False]  # flat images are not accused
    assert floored.label.tolist() == ["real", "gen", "real", "real"]
    assert floored.ai_score[0] == 0.5 and floored.ai_score[1] == plain.ai_score[1]
    assert floored.ai_score[2] == plain.ai_score[2]  # a "real" verdict is not moved toward 0.5
    assert (floored.is_ai == (floored.ai_score > 0.5)).all()
    off = decide(labels, sims, VerdictRule(min_detail=0.0), detail)
    assert off.is_ai.tolist() == plain.is_ai.tolist()
    assert DEFAULT_MIN_DETAIL == VerdictRule().min_detail


def test_scan_writes_detail_and_does_not_accuse_flat_images(tmp_path, tiny_model_dir, two_class_index):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    for i in range(3):  # blue like the enrolled generator; flat ones carry no pixel-level evidence
        (crawl / f"flat_{i}.png").write_bytes(encode(coloured(BLUE, noise=0, seed=300 + i), "PNG"))
        (crawl / f"noisy_{i}.png").write_bytes(encode(coloured(BLUE, noise=30, seed=300 + i), "PNG"))
    runner = CliRunner()
    base = ["scan", str(crawl), "--index", str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu"]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "v.parquet")])
    assert result.exit_code == 0, result.output
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in pq.read_table(tmp_path / "v.parquet").to_pylist()}
    for i in range(3):
        flat, noisy = rows[f"flat_{i}.png"], rows[f"noisy_{i}.png"]
        assert flat["detail"] < 1e-3 and not flat["is_ai"] and flat["label"] == "real" and flat["ai_score"] <= 0.5
        assert noisy["detail"] > 20 and noisy["is_ai"] and noisy["label"] == "gen_blue", {k: noisy[k] for k in ("label", "ai_score", "match", "detail", "error")}
    # --min-detail 0 judges every image: the flat blue ones are then the generator's too.
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "all.parquet"), "--min-detail", "0"])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(tmp_path / "all.parquet").to_pylist()
    assert all(r["is_ai"] and r["label"] == "gen_blue" for r in rows)
    # A different floor is a different scan: an unfinished output is not resumed across it (scan fingerprint).
    import json

    meta = json.loads(pq.read_schema(tmp_path / "all.parquet").metadata[b"imgscan"])
    assert meta["min_detail"] == 0.0
