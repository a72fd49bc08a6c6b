"""`--ema`: the moving average of the weights, checked against its formula, and a training run that exports it
without changing the path training takes."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
from typer.testing import CliRunner  # noqa: E402

from imgscan_core.errors import UsageError  # noqa: E402
from scanner.model import load_model  # noqa: E402
from train.ema import WeightAverage  # noqa: E402

from test_train_run import TINY, app, tiny_data  # noqa: E402,F401  (the short run's fixtures)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 1, bias=False)
        self.bn = torch.nn.BatchNorm1d(1)


def test_average_follows_the_ramped_decay_and_copies_integer_buffers():
    model = _Tiny()
    with torch.no_grad():
        model.lin.weight.fill_(0.0)
    ema = WeightAverage(model, decay=0.5)
    expected = 0.0
    for step, value in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
        with torch.no_grad():
            model.lin.weight.fill_(value)
            model.bn.running_mean.fill_(value)
        model.bn.num_batches_tracked.fill_(10 * step)
        ema.update(model)
        d = min(0.5, (1 + step) / (10 + step))  # the ramp is below 0.5 for these first steps
        expected = d * expected + (1 - d) * value
        assert ema.module.lin.weight.item() == pytest.approx(expected, rel=1e-6)
        assert ema.module.bn.running_mean.item() == pytest.approx(expected, rel=1e-6)
        assert ema.module.bn.num_batches_tracked.item() == 10 * step
    # The average is a copy: the trained model's weights are untouched by it.
    assert model.lin.weight.item() == 8.0
    assert not any(p.requires_grad for p in ema.module.parameters())

    restored = WeightAverage(_Tiny(), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.5 and restored.updates == 4
    assert restored.module.lin.weight.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(_Tiny(), decay)


def _log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ema_run_takes_the_same_path_and_exports_the_average(app, tiny_data, tmp_path):  # noqa: F811 (fixtures)
    plain, averaged = tmp_path / "plain", tmp_path / "ema"
    r1 = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(plain), *TINY])
    r2 = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(averaged), *TINY, "--ema", "0.9"])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output + repr(r2.exception)

    # Training is the same, step for step: the losses of both runs are equal.
    assert [r["loss"] for r in _log(plain / "train_log.jsonl")] == [r["loss"] for r in _log(averaged / "train_log.jsonl")]

    card, module = load_model(averaged)
    assert card.training["settings"]["ema"] == 0.9 and "moving average" in card.notes
    ckpt = torch.load(averaged / "train_work" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["ema"]["updates"] > 0
    # What was exported is the average, not the last step's weights.
    exported = module.state_dict()
    head = [k for k in ckpt["ema"]["module"] if k.startswith("head.") and k.endswith("weight")][-1]
    assert torch.allclose(exported[head], ckpt["ema"]["module"][head])
    assert not torch.allclose(exported[head], ckpt["model"][head])
    _, plain_module = load_model(plain)
    x = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    with torch.no_grad():
        assert not torch.allclose(module(x), plain_module(x))

    # A checkpoint made without the average cannot be continued with it (and the other way round).
    more = [*TINY]
    more[more.index("--epochs") + 1] = "3"
    resumed = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(plain), *more, "--ema", "0.9", "--resume"])
    assert isinstance(resumed.exception, UsageError) and "ema" in str(resumed.exception)
    resumed = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(averaged), *more, "--ema", "0.9", "--resume"])
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    assert torch.load(averaged / "train_work" / "checkpoint.pt", map_location="cpu",
                      weights_only=True)["ema"]["updates"] > ckpt["ema"]["updates"]
