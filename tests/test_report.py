"""`imgscan report` on a real scan of generated images (with errors), and `imgscan explain`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import encode, coloured, write_class_dir
from scanner.cli import app

pytest.importorskip("matplotlib")


@pytest.fixture()
def scanned(tmp_path, two_class_index, tiny_model_dir):
    crawl = tmp_path / "crawl"
    write_class_dir(crawl / "red", (220, 30, 30), 4, seed0=500)
    # cyan lies nearer the blue generator than the red real photos, and far from both: an unknown generator
    write_class_dir(crawl / "cyan", (30, 200, 220), 3, seed0=600)
    (crawl / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (crawl / "empty.png").write_bytes(b"")
    out = tmp_path / "v.parquet"
    r = CliRunner().invoke(app, ["scan", str(crawl), "--out", str(out), "--index", str(two_class_index),
                                 "--model", str(tiny_model_dir), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return out, two_class_index


def test_report_summary_and_html(scanned, tmp_path):
    verdicts, index = scanned
    r = CliRunner().invoke(app, ["report", str(verdicts), "--out", str(tmp_path / "rep"), "--index", str(index)])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert doc["rows"] == 9 and doc["scanned"] == 7 and doc["errors_total"] == 2
    assert doc["labels"] == {"real": 4, "unknown": 3}
    assert sum(doc["errors"].values()) == 2 and all(k.startswith("decode") for k in doc["errors"])
    top = doc["most_unknown"]
    assert [t["label"] for t in top[:3]] == ["unknown"] * 3  # the cyan images come first
    assert all("/cyan/" in t["path"] for t in top[:3])
    assert top[0]["open_set_score"] >= top[1]["open_set_score"] >= top[-1]["open_set_score"]
    assert len(top[0]["neighbors"]) == 11
    # by top-level folder of the crawl (the two loose broken files sit at its top level), and a gallery per label
    assert doc["by_folder"]["red"] == {"rows": 4, "scanned": 4, "is_ai": 0, "errors": 0, "labels": {"real": 4}}
    assert doc["by_folder"]["cyan"]["labels"] == {"unknown": 3} and doc["by_folder"]["cyan"]["is_ai"] == 3
    assert doc["by_folder"]["(top level)"]["errors"] == 2
    assert {k: len(v) for k, v in doc["gallery"].items()} == {"real": 4, "unknown": 3}
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "By folder" in html and "Gallery per label" in html
    assert html.count("data:image/png;base64,") == 3  # label bars + two histograms
    # thumbnails of the 7 scanned images and of their neighbours (support files resolved through --index)
    assert html.count("data:image/jpeg;base64,") >= 7 + 7 * 6
    assert "http" not in html.split("<body>")[1]


def test_report_refuses_a_file_that_is_not_a_verdict_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgscan_core.errors import UsageError
    from scanner.evaluation.report import run_report

    pq.write_table(pa.table({"x": [1]}), tmp_path / "x.parquet")
    with pytest.raises(UsageError, match="not an imgscan verdict file"):
        run_report(tmp_path / "x.parquet", tmp_path / "out")
    (tmp_path / "junk.parquet").write_bytes(b"junk")
    with pytest.raises(UsageError, match="not a readable Parquet file"):
        run_report(tmp_path / "junk.parquet", tmp_path / "out")


def test_importance_map_finds_the_region_the_embedding_depends_on():
    """A synthetic embedder that only looks at the top-left quadrant: only that region may light up."""
    from scanner.evaluation.explain import importance_map

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)

    def embed(batch: np.ndarray) -> np.ndarray:
        x = batch[:, :32, :32].reshape(len(batch), -1).astype(np.float64)[:, :128] - 127.5
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    # embed reads the first 128 values of the quadrant's rows: pixels (0, 0..31) and (1, 0..10)
    heat, n = importance_map(pixels, embed, views=49, seed=1)  # 49 = the coarse occlusion grid, no random masks
    assert n == 49 and heat.shape == (64, 64)
    assert heat[:2, :32].min() > 0.05 and np.abs(heat[24:, :]).max() < 1e-9  # exact: hiding elsewhere changes nothing
    heat, n = importance_map(pixels, embed, views=300, seed=1)  # occlusion at three scales + random masks
    assert n == 300
    assert heat[:2, :32].mean() > 5 * np.abs(heat[32:, 32:]).mean()


def test_explain_writes_a_png(tmp_path, tiny_model_dir, two_class_index):
    img = tmp_path / "half.jpg"
    arr = np.array(coloured((220, 30, 30), size=(64, 64)))
    arr[:, 32:] = (30, 30, 220)
    from PIL import Image

    img.write_bytes(encode(Image.fromarray(arr)))
    out = tmp_path / "explained.png"
    r = CliRunner().invoke(app, ["explain", str(img), "--model", str(tiny_model_dir), "--out", str(out), "--views", "64",
                                 "--index", str(two_class_index), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 10_000
    assert Image.open(out).size[0] > 800


@pytest.mark.skipif(__import__("shutil").which("chromium") is None, reason="no headless Chromium (apt-get install chromium)")
def test_report_html_renders_thumbnails_in_headless_chromium(scanned, tmp_path):
    from PIL import Image

    from scanner.evaluation.browser import screenshot
    from scanner.evaluation.report import run_report

    verdicts, index = scanned
    run_report(verdicts, tmp_path / "rep", index=index)
    png = screenshot(tmp_path / "rep" / "report.html", tmp_path / "shot.png", width=1280, height=2600)
    im = np.asarray(Image.open(png).convert("RGB")).astype(int)
    r, g, b = im[..., 0], im[..., 1], im[..., 2]
    assert ((r < 90) & (g > 150) & (b > 150)).sum() > 2000  # the cyan `unknown` thumbnails are drawn
    assert ((r > 150) & (g < 80) & (b < 80)).sum() > 2000  # the red neighbour thumbnails
    assert ((b > 120) & (r < 110) & (g < 150)).sum() > 2000  # the histograms' bars


def test_explain_several_images_fast_with_the_default_index(tmp_path, tiny_model_dir, two_class_index, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("IMGSCAN_INDEX", str(two_class_index))  # the index `scan` would use by default
    images = []
    for i, rgb in enumerate([(220, 30, 30), (30, 30, 220)]):
        images.append(tmp_path / f"img{i}.jpg")
        images[-1].write_bytes(encode(coloured(rgb, size=(64, 64), seed=i)))
    out = tmp_path / "explained"
    r = CliRunner().invoke(app, ["explain", "--fast", *map(str, images), "--model", str(tiny_model_dir), "--out",
                                 str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["img0-explained.png", "img1-explained.png"]
    assert "(64 views); verdict real" in r.output and "(64 views); verdict gen_blue" in r.output
    assert Image.open(out / "img0-explained.png").size[0] > 800
