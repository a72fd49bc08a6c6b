"""`imgscan eval` end to end on generated images with the tiny colour model: outputs, metrics, and the HTML
report rendered in headless Chromium."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import BLUE, GREEN, RED, encode, coloured
from scanner.cli import app

pytest.importorskip("matplotlib")

CLASSES = {"real": RED, "gen_blue": BLUE, "gen_green": GREEN, "gen_cyan": (30, 200, 220)}


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    """A manifest folder: 4 classes x 14 images; pairs of images share a group; folds per group."""
    root = tmp_path_factory.mktemp("eval_data")
    lines = ["path,label,is_ai,group,fold"]
    for c, (label, rgb) in enumerate(CLASSES.items()):
        (root / "images" / label).mkdir(parents=True)
        for i in range(14):
            rel = f"images/{label}/{i:03d}.jpg"
            (root / rel).write_bytes(encode(coloured(rgb, seed=100 * c + i)))
            group = f"{label}-g{i // 2}"
            lines.append(f"{rel},{label},{int(label != 'real')},{group},{(i // 2) % 3}")
    (root / "images" / "gen_blue" / "broken.jpg").write_bytes(b"not an image")
    lines.append("images/gen_blue/broken.jpg,gen_blue,1,broken,0")
    # a byte-identical copy in another group: left out, or it could be a query while its twin is enrolled
    (root / "images" / "real" / "copy.jpg").write_bytes((root / "images" / "real" / "000.jpg").read_bytes())
    lines.append("images/real/copy.jpg,real,0,copy-group,1")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def eval_out(eval_data, tiny_model_dir, tmp_path_factory):
    from scanner.evaluation.cli import run_eval

    out = tmp_path_factory.mktemp("eval_out") / "report"
    doc = run_eval(eval_data, out, model=tiny_model_dir, shots="3,6", unknown="gen_cyan", device="cpu",
                   use_umap=False, batch_size=16, command="test")
    return out, doc


def test_eval_writes_every_output(eval_out):
    out, doc = eval_out
    for name in ("metrics.json", "predictions.parquet", "report.html", "summary.md"):
        assert (out / name).is_file(), name
    for fig in ("confusion", "roc", "oscr", "shots", "umap"):
        assert (out / doc["figures"][fig]).stat().st_size > 5000, fig
    assert json.loads((out / "metrics.json").read_text()) == doc
    assert doc["data"]["n_images"] == 58 and doc["data"]["decoded"] == 57 and doc["data"]["errors"] == 1
    assert doc["data"]["duplicates_left_out"] == 1 and doc["data"]["used"] == 56
    assert set(doc["methods"]) == {"imgscan", "spectral-knn", "metadata"}
    assert [r["shots"] for r in doc["sweep"]["imgscan"]] == [3, 6]
    md = (out / "summary.md").read_text()
    assert "| imgscan | 1.000 | 1.000 |" in md  # shots sweep of closed-set macro F1: 3 and 6 shots


def test_eval_metrics_on_separable_colours(eval_out):
    _, doc = eval_out
    main = doc["main"]["imgscan"]
    # the tiny model separates colours perfectly: every known query is attributed right, detection is perfect,
    # and the never-enrolled cyan class lies far from every enrolled class
    assert main["headline"]["closed_macro_f1"] == 1.0
    assert main["headline"]["mean_det_auc"] == 1.0
    assert main["headline"]["open_set_auroc"] == 1.0
    assert main["metrics"]["open_set"]["unknown_rejected"] == 1.0
    assert main["headline"]["oscr"] >= 0.9
    conf = main["metrics"]["confusion"]
    assert conf["rows"][-1] == "gen_cyan" and conf["columns"][-1] == "unknown"
    cyan = conf["matrix"][-1]
    assert cyan[-1] == sum(cyan) > 0
    # queries: 14 - 6 per enrolled class (6 shots = 3 groups of 2; half of 14 is 7), all 14 of the unknown
    # class; the undecodable file is on neither side
    assert doc["main"]["imgscan"]["metrics"]["n_queries"] == 3 * (14 - 6) + 14


def test_eval_predictions_parquet(eval_out):
    out, doc = eval_out
    t = pq.read_table(out / "predictions.parquet")
    assert t.num_rows == 58 * 3  # every image, once per method, at the main shots
    rows = [r for r in t.to_pylist() if r["method"] == "imgscan"]
    roles = {r["role"] for r in rows}
    assert roles <= {"support", "query", "excluded", "error", "duplicate"}
    assert [r["path"].endswith("copy.jpg") for r in rows if r["role"] == "duplicate"] == [True]
    broken = [r for r in rows if r["path"].endswith("broken.jpg")][0]
    assert broken["role"] == "error" and broken["error"].startswith("decode")
    q = [r for r in rows if r["role"] == "query"]
    assert all(len(r["neighbors"]) == 11 for r in q)
    assert all(r["label"] == "unknown" for r in q if r["class"] == "gen_cyan")
    assert all(r["label"] is None for r in rows if r["role"] == "support")


def test_eval_html_is_self_contained(eval_out):
    out, _ = eval_out
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html)
    assert "<script" not in html
    assert "never-enrolled class" in html and '<td class="t">gen_cyan</td>' in html  # its own open-set row


@pytest.mark.skipif(__import__("shutil").which("chromium") is None, reason="no headless Chromium (apt-get install chromium)")
def test_eval_html_renders_in_headless_chromium(eval_out):
    """Acceptance: the report opened in a real browser shows the plots (not broken-image icons)."""
    from PIL import Image

    from scanner.evaluation.browser import screenshot

    out, _ = eval_out
    png = screenshot(out / "report.html", out / "screenshot.png", width=1280, height=3600)
    im = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert im.shape[:2] == (3600, 1280)
    non_white = (im.min(axis=2) < 235).mean()
    assert non_white > 0.05  # tables alone cover far less; the figures fill the page
    # the confusion matrix's dark blue and the ROC/shots curves' tab10 blue are drawn: pixels of the plots
    dark_blue = ((im[..., 2] > 90) & (im[..., 0] < 40) & (im[..., 1] < 80)).sum()
    assert dark_blue > 500
    assert len(np.unique(im.reshape(-1, 3)[::7], axis=0)) > 200  # anti-aliased plots, not flat text


def test_eval_with_folds(eval_data, tiny_model_dir, tmp_path, monkeypatch):
    from scanner.evaluation.cli import run_eval

    doc = run_eval(eval_data, tmp_path / "r", model=tiny_model_dir, shots="2", unknown=None, folds=True,
                   device="cpu", use_umap=False, baselines=False, ce_model=tiny_model_dir)
    assert doc["protocol"]["folds"] == [0, 1, 2]
    assert set(doc["methods"]) == {"imgscan", "ce"}  # a --ce-model is judged like the main model
    assert doc["main"]["ce"]["headline"] == doc["main"]["imgscan"]["headline"]  # (here: the same weights)
    runs = [r for r in doc["runs"] if r["method"] == "imgscan"]
    assert len(runs) == 3
    assert doc["sweep"]["imgscan"][0]["closed_macro_f1"]["n"] == 3
    # pooled over folds, every decoded image is a query exactly once
    assert doc["main"]["imgscan"]["metrics"]["n_queries"] == 56
    assert doc["main"]["imgscan"]["metrics"]["open_set"].get("oscr") is None  # no --unknown: no OSCR
    cache = tmp_path / "emb.npz"
    one = run_eval(eval_data, tmp_path / "r1", model=tiny_model_dir, shots="2", query_folds="1", device="cpu",
                   use_umap=False, baselines=False, cache=cache)
    import scanner.judge

    seen = []
    real_batches = scanner.judge.embedded_batches
    monkeypatch.setattr(scanner.judge, "embedded_batches", lambda roots, *a, **kw: seen.extend(roots) or real_batches(roots, *a, **kw))
    again = run_eval(eval_data, tmp_path / "r2", model=tiny_model_dir, shots="2", query_folds="1", device="cpu",
                     use_umap=False, baselines=False, cache=cache)  # from the cache: same embeddings, same metrics
    assert [p.endswith(b"broken.jpg") for p in seen] == [True]  # only the file that failed is tried again
    assert again["main"] == one["main"] and again["data"] == one["data"]
    seen.clear()  # another view rule gives the same weights other embeddings: the cache does not serve it
    run_eval(eval_data, tmp_path / "r3", model=tiny_model_dir, shots="2", query_folds="1", device="cpu",
             use_umap=False, baselines=False, cache=cache, views=2)
    assert len(seen) == one["data"]["n_images"]
    assert one["protocol"]["folds"] == [1]
    assert one["main"]["imgscan"]["metrics"]["n_queries"] < 56
    # a never-enrolled class judged in every fold: more unknown queries, the known ones unchanged
    fold1, every = (run_eval(eval_data, tmp_path / f"u{e}", model=tiny_model_dir, shots="2", query_folds="1",
                             unknown="gen_cyan", device="cpu", use_umap=False, baselines=False, cache=cache,
                             unknown_every_fold=e) for e in (False, True))
    assert every["protocol"]["unknown_every_fold"] is True
    n_unknown = [d["main"]["imgscan"]["metrics"]["open_set"]["n_unknown"] for d in (fold1, every)]
    assert 0 < n_unknown[0] < n_unknown[1]
    known = [d["main"]["imgscan"]["metrics"]["n_queries"] - n for d, n in zip((fold1, every), n_unknown)]
    assert known[0] == known[1]


def test_eval_cli_registered_and_errors_are_one_line(eval_data, tiny_model_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--help"])
    assert result.exit_code == 0 and "--unknown" in result.output and "--folds" in result.output
    result = runner.invoke(app, ["eval", str(eval_data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "r"),
                                 "--unknown", "no_such_class", "--device", "cpu"])
    assert result.exit_code == 2 and "no such class" in result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [result.output.strip()]  # one line
    result = runner.invoke(app, ["eval", str(eval_data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "r"),
                                 "--unknown", "gen_cyan", "--folds", "--unknown-every-fold", "--device", "cpu"])
    assert result.exit_code == 2 and "--unknown-every-fold needs --unknown and one query fold" in result.output
    for cmd in ("report", "explain"):
        assert runner.invoke(app, [cmd, "--help"]).exit_code == 0


@pytest.mark.slow
def test_umap_layout_with_cosine_metric():
    """The embedding map uses umap-learn (metric="cosine") when installed; numba's first compile is slow."""
    pytest.importorskip("umap")
    from scanner.evaluation.plots import project_2d

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    x = np.concatenate([c + 0.05 * rng.normal(size=(30, 16)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    xy, how = project_2d(x, seed=0)
    assert how == "UMAP (cosine)" and xy.shape == (90, 2)
    # clusters stay apart: each point's nearest 2-D neighbour is from its own cluster
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert (np.argmin(d, axis=1) // 30 == np.arange(90) // 30).mean() > 0.95


def test_degraded_queries_are_judged_against_the_clean_support(eval_data, tiny_model_dir, tmp_path):
    from scanner.evaluation.cli import run_eval

    # min_detail 0: halved 48 px test images are upscaled to the input size, smooth enough to fall under the
    # pixel-detail floor; this test is about the protocol (degraded queries, clean support), not the floor.
    doc = run_eval(eval_data, tmp_path / "r", model=tiny_model_dir, shots="3", unknown="gen_cyan", device="cpu",
                   use_umap=False, baselines=False, degrade_queries="jpeg60,scale0.5", min_detail=0.0)
    name = "imgscan@scale0.5+jpeg60"
    assert set(doc["methods"]) == {"imgscan", name} and doc["protocol"]["degrade_queries"] == "scale0.5+jpeg60"
    clean, degraded = doc["main"]["imgscan"]["metrics"], doc["main"][name]["metrics"]
    assert degraded["n_queries"] == clean["n_queries"] > 0
    # the tiny model reads colour, which a re-post keeps: the degraded queries still land in their class
    assert degraded["closed_set_attribution"]["macro_f1"] > 0.9
    rows = pq.read_table(tmp_path / "r" / "predictions.parquet").to_pandas()
    assert set(rows["method"]) == {"imgscan", name}


def test_degradation_spec_and_effect():
    import io

    from PIL import Image

    from conftest import encode, coloured
    from imgscan_core.errors import UsageError
    from scanner.evaluation.degrade import Degradation, parse_degradation

    assert parse_degradation("jpeg75,scale0.75") == Degradation(75, 0.75)
    assert parse_degradation("scale0.5").name == "scale0.5"
    for bad in ("jpeg", "jpeg101", "scale2", "blur3", ""):
        with pytest.raises(UsageError):
            parse_degradation(bad)
    src = encode(coloured(RED, seed=1, size=(80, 60)))
    out = Image.open(io.BytesIO(Degradation(75, 0.75).apply(src)))
    assert out.format == "JPEG" and out.size == (60, 45)
    q95 = Image.open(io.BytesIO(Degradation(95, None).apply(src)))
    assert sum(out.quantization[0]) > sum(q95.quantization[0])  # coarser quantisation at quality 75
