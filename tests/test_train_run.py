"""A short CPU training run through the `train` command: export, reload, embeddings, resume, bad arguments."""

import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
typer = pytest.importorskip("typer")
from typer.testing import CliRunner  # noqa: E402

from imgscan_core.errors import UsageError  # noqa: E402
from scanner.model import load_model  # noqa: E402
from train.cli import register  # noqa: E402

TINY = ["--epochs", "2", "--batch-size", "6", "--images-per-class", "2", "--image-size", "32",
        "--export-size", "48", "--val-fold", "0", "--workers", "0", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root():  # keep `train` a sub-command, as in imgscan
        pass

    return app


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """3 classes of 64px images the test makes itself: tinted noise, stripes, smooth gradients."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for label in ("real", "noise-gan", "stripes"):
        (root / label).mkdir()
        for i in range(8):
            if label == "real":
                g = np.linspace(0, 255, 64)
                img = np.stack([g[None, :].repeat(64, 0), g[:, None].repeat(64, 1), np.full((64, 64), 40 * (i % 6))], -1)
            elif label == "noise-gan":
                img = rng.integers(0, 256, (64, 64, 3))
            else:
                img = np.zeros((64, 64, 3)) + ((np.arange(64) // (2 + i % 3)) % 2 * 255)[None, :, None]
            Image.fromarray(img.astype(np.uint8)).save(root / label / f"{i}.png")
    return root


def test_two_epoch_run_exports_a_loadable_model(app, tiny_data, tmp_path):
    out = tmp_path / "model"
    result = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(out), "--holdout", "stripes", *TINY])
    assert result.exit_code == 0, result.output + repr(result.exception)

    card, module = load_model(out)
    assert card.input_size == 48 and card.embedding_dim == 128
    x = torch.randint(0, 256, (5, 3, 48, 48), dtype=torch.uint8)
    with torch.no_grad():
        emb = module(x)
    assert emb.shape == (5, 128)
    assert torch.allclose(emb.norm(dim=1), torch.ones(5), atol=1e-5)

    t = card.training
    assert t["holdout_classes"] == ["stripes"] and t["val_fold_held_out"] == 0
    assert t["export_check"]["max_abs_diff"] < 1e-4
    assert "supcon" in card.loss and "tf_efficientnet_lite0" in card.backbone
    assert card.normalization == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all(0.0 <= r["knn_acc"] <= 1.0 for r in log)

    # The checkpoint exists; a second run into it must ask for --resume, and --resume with more epochs works.
    again = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(out), "--holdout", "stripes", *TINY])
    assert isinstance(again.exception, UsageError) and "--resume" in str(again.exception)
    more = [*TINY]
    more[more.index("--epochs") + 1] = "3"
    resumed = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(out), "--holdout", "stripes", *more, "--resume"])
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]

    # The stand-alone k-NN report reproduces the trainer's last validation on the exported model.
    from conftest import load_script

    knn_report = load_script("benchmarks/knn_report.py").main

    report = knn_report([str(tiny_data), "--val-fold", "0", "--holdout", "stripes", "--model", str(out)])
    assert report["knn_acc"] == log[-1]["knn_acc"] and report["n_support"] == log[-1]["n_support"]
    assert set(report["flagged_as_ai"]) == set(report["per_class_acc"])


@pytest.mark.parametrize("loss", ["ce", "soft-supcon"])
def test_other_losses_train_one_epoch(app, tiny_data, tmp_path, loss):
    args = [*TINY]
    args[args.index("--epochs") + 1] = "1"
    result = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(tmp_path / "m"), "--loss", loss, *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    card, _ = load_model(tmp_path / "m")
    assert card.loss.startswith(loss)


def test_two_branch_model_trains_exports_and_resumes_only_as_two_branch(app, tiny_data, tmp_path):
    args = [*TINY]
    args[args.index("--epochs") + 1] = "1"
    out = tmp_path / "m"
    args += ["--freeze-blocks", "2"]  # frozen and trained weights side by side, as in the shipped recipe
    result = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(out), "--residual-branch", "16", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    card, module = load_model(out)
    assert "residual branch of width 16" in card.backbone and card.training["settings"]["residual_branch"] == 16
    with torch.no_grad():
        emb = module(torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8))
    assert emb.shape == (3, 128) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    # Called with grad mode on first (torch.onnx.export does), then under inference_mode (the scan does).
    _, module = load_model(out)
    pixels = torch.randint(0, 256, (1, 3, 48, 48), dtype=torch.uint8)
    module(pixels), module(pixels)
    with torch.inference_mode():
        assert module(pixels).shape == (1, 128)
    args[args.index("--epochs") + 1] = "2"
    resumed = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(out), *args, "--resume"])
    assert isinstance(resumed.exception, UsageError) and "residual_branch" in str(resumed.exception)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--loss", "triplet"], "--loss"),
        (["--batch-size", "7"], "multiple"),
        (["--batch-size", "16", "--real-per-batch", "6"], "multiple"),
        (["--batch-size", "16", "--real-per-batch", "12"], "--real-per-batch 12"),
        (["--batch-size", "16", "--real-per-batch", "4", "--holdout", "real"], "no `real` class"),
        (["--holdout", "nope"], "unknown class"),
        (["--holdout", "real,"], "comma-separated"),
        (["--val-fold", "9"], "folds"),
        (["--pretrained", "--init-weights", "x.pt"], "exclusive"),
        (["--backbone", "no_such_net"], "timm"),
        (["--residual-branch", "12"], "multiple of 8"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(app, tiny_data, tmp_path, extra, message):
    result = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(tmp_path / "m"), *extra])
    assert isinstance(result.exception, UsageError), result.output
    assert message in str(result.exception) and "\n" not in str(result.exception)


def test_init_weights_file_is_loaded_tensors_only(app, tiny_data, tmp_path):
    import timm

    net = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    torch.save(net.state_dict(), tmp_path / "backbone.pt")
    args = [*TINY]
    args[args.index("--epochs") + 1] = "1"
    result = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(tmp_path / "m"),
                                      "--init-weights", str(tmp_path / "backbone.pt"), *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    card, _ = load_model(tmp_path / "m")
    assert "backbone.pt" in card.backbone

    # A pickled Python object is not a tensors-only state dict: refused.
    torch.save({"x": object()}, tmp_path / "evil.pt")
    bad = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(tmp_path / "m2"),
                                   "--init-weights", str(tmp_path / "evil.pt"), *args])
    assert isinstance(bad.exception, UsageError)


def test_help_teaches(app):
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for word in ("--holdout", "--val-fold", "--loss", "manifest", "k-NN", "--resume"):
        assert word in result.output


def test_paired_real_brings_each_generators_own_collection_and_says_so(app, tiny_data, tmp_path):
    # a manifest over the same images: noise-gan shares its collection with half of the real photos, stripes none
    rows = ["path,label,source,fold"]
    for label, source in (("real", None), ("noise-gan", "cnn:noise"), ("stripes", "renders")):
        for i in range(8):
            src = source or ("cnn:noise" if i < 4 else "scenes")
            rows.append(f"{tiny_data / label / f'{i}.png'},{label},{src},{i % 4}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    args = [*TINY]
    args[args.index("--epochs") + 1] = "1"
    result = CliRunner().invoke(app, ["train", str(manifest), "--out", str(tmp_path / "m"), "--paired-real", "2", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "--paired-real 2: real photos of their own collection join noise-gan (3)" in result.output  # fold 0 is val
    card, _ = load_model(tmp_path / "m")
    assert card.training["settings"]["paired_real"] == 2  # recorded, so --resume refuses another N
