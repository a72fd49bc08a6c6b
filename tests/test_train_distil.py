"""`--distil-from`: a student learns a teacher's in-batch neighbours (train.losses.relation_distillation)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
from typer.testing import CliRunner  # noqa: E402

from imgscan_core.errors import UsageError  # noqa: E402
from scanner.model import read_card  # noqa: E402
from train.losses import relation_distillation  # noqa: E402

from test_train_run import TINY, app, tiny_data  # noqa: E402,F401  (the short run's fixtures)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_relation_distillation_is_the_kl_of_neighbour_distributions():
    rng = np.random.default_rng(0)
    s, t, temp = _unit(rng.normal(size=(6, 4))), _unit(rng.normal(size=(6, 9))), 0.5

    def neighbours(z):
        logits = z @ z.T / temp
        out = np.zeros_like(logits)
        for i in range(len(z)):
            others = [j for j in range(len(z)) if j != i]
            e = np.exp(logits[i, others])
            out[i, others] = e / e.sum()
        return out

    p, q = neighbours(s), neighbours(t)
    off = ~np.eye(6, dtype=bool)
    want = np.mean([(q[i, off[i]] * np.log(q[i, off[i]] / p[i, off[i]])).sum() for i in range(6)])
    student = torch.tensor(s, requires_grad=True)
    teacher = torch.tensor(t, requires_grad=True)
    got = relation_distillation(student, teacher, temp)
    assert got.item() == pytest.approx(want, rel=1e-6)
    got.backward()
    assert student.grad is not None and teacher.grad is None  # only the student learns
    same = torch.tensor(s)
    assert relation_distillation(same, same, temp).item() == pytest.approx(0.0, abs=1e-7)


def _log(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_student_trains_against_an_ensemble_teacher(app, tiny_data, tmp_path):  # noqa: F811 (fixtures)
    runner = CliRunner()
    members = [tmp_path / "m0", tmp_path / "m1"]
    for seed, out in enumerate(members):
        r = runner.invoke(app, ["train", str(tiny_data), "--out", str(out), *TINY, "--seed", str(seed)])
        assert r.exit_code == 0, r.output + repr(r.exception)
    teacher = tmp_path / "x2"
    r = runner.invoke(app, ["ensemble", str(teacher), *map(str, members)])
    assert r.exit_code == 0, r.output + repr(r.exception)

    student = tmp_path / "student"
    r = runner.invoke(app, ["train", str(tiny_data), "--out", str(student), *TINY, "--distil-from", str(teacher)])
    assert r.exit_code == 0, r.output + repr(r.exception)
    card = read_card(student)
    assert card.training["teacher"] == read_card(teacher).model_id and "Distilled from" in card.notes
    assert card.embedding_dim == 128 and read_card(teacher).embedding_dim == 256  # only similarities are compared
    # same seed and batches as members[0]: the distillation term is what changes the losses
    assert [r["loss"] for r in _log(student / "train_log.jsonl")] != [r["loss"] for r in _log(members[0] / "train_log.jsonl")]

    # a teacher that saw this run's validation fold would leak it into the student
    other_fold = [*TINY]
    other_fold[other_fold.index("--val-fold") + 1] = "1"
    r = runner.invoke(app, ["train", str(tiny_data), "--out", str(tmp_path / "leak"), *other_fold, "--distil-from", str(teacher)])
    assert isinstance(r.exception, UsageError) and "did not hold out" in str(r.exception)
