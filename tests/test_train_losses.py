"""Losses against direct numpy loops over the formulas in docs/training.md."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from train.losses import CosineCELoss, SoftSupConLoss, SupConLoss, build_loss  # noqa: E402


def _unit(rows):
    a = np.asarray(rows, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def supcon_reference(z, labels, t, base_t):
    """Khosla et al. eq. 2 (L_out), anchor by anchor; anchors without positives are skipped."""
    n = len(z)
    losses = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(z[i] @ z[a] / t) for a in range(n) if a != i)
        terms = [math.log(math.exp(z[i] @ z[p] / t) / denom) for p in positives]
        losses.append(-(t / base_t) * sum(terms) / len(positives))
    return sum(losses) / len(losses)


def soft_supcon_reference(z, labels, real, t, alpha, real_weight):
    n = len(z)
    num, den = 0.0, 0.0
    for i in range(n):
        w = {}
        for j in range(n):
            if j == i:
                continue
            if labels[j] == labels[i]:
                w[j] = 1.0
            elif labels[i] != real and labels[j] != real:
                w[j] = alpha
        if not w:
            continue
        denom = sum(math.exp(z[i] @ z[a] / t) for a in range(n) if a != i)
        li = -sum(wj * math.log(math.exp(z[i] @ z[j] / t) / denom) for j, wj in w.items()) / sum(w.values())
        c = real_weight if labels[i] == real else 1.0
        num += c * li
        den += c
    return num / den


Z4 = _unit([[1.0, 0.2, 0.0], [0.9, 0.1, 0.3], [-0.2, 1.0, 0.1], [0.1, 0.8, -0.5]])


@pytest.mark.parametrize("labels", [[0, 0, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]])
@pytest.mark.parametrize("t,base_t", [(0.1, 0.1), (0.07, 0.07), (0.5, 0.07)])
def test_supcon_matches_hand_loop(labels, t, base_t):
    got = SupConLoss(temperature=t, base_temperature=base_t)(torch.tensor(Z4), torch.tensor(labels)).item()
    assert got == pytest.approx(supcon_reference(Z4, labels, t, base_t), rel=1e-6, abs=1e-8)


def test_supcon_two_identical_pairs_hand_computed():
    # z0 = z1 = e1, z2 = z3 = e2 (orthogonal), T = 1: for every anchor the positive has s = 1 and the two
    # negatives s = 0, so p = e / (e + 2) and the loss is -log(e / (e + 2)).
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    got = SupConLoss(temperature=1.0)(z, torch.tensor([0, 0, 1, 1])).item()
    assert got == pytest.approx(-math.log(math.e / (math.e + 2)), rel=1e-6)


def test_supcon_anchor_without_positive_is_excluded_and_finite():
    labels = [0, 0, 1, 2]  # anchors 2 and 3 have no positive in the batch
    loss = SupConLoss(temperature=0.1)(torch.tensor(Z4), torch.tensor(labels))
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(supcon_reference(Z4, labels, 0.1, 0.1), rel=1e-6)


@pytest.mark.parametrize(
    "loss_fn,labels",
    [
        (SupConLoss(0.1), [0, 1, 2, 3]),
        # one real photo and one image per generator with alpha = 0: no positive weight anywhere
        (SoftSupConLoss(real_label=0, temperature=0.1, alpha=0.0), [0, 1, 2, 3]),
    ],
)
def test_no_positive_anywhere_gives_zero_and_backward_works(loss_fn, labels):
    z = torch.tensor(Z4, dtype=torch.float32, requires_grad=True)
    loss = loss_fn(z, torch.tensor(labels))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_supcon_gradient_is_finite_with_identical_vectors():
    z = torch.tensor([[1.0, 0.0]] * 4, requires_grad=True)
    loss = SupConLoss(0.05)(z, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("labels", [[0, 0, 1, 2], [0, 1, 1, 2], [1, 2, 3, 1], [0, 0, 0, 1]])
def test_soft_supcon_matches_hand_loop(labels):
    loss_fn = SoftSupConLoss(real_label=0, temperature=0.2, alpha=0.3, real_weight=2.0)
    got = loss_fn(torch.tensor(Z4), torch.tensor(labels)).item()
    assert got == pytest.approx(soft_supcon_reference(Z4, labels, 0, 0.2, 0.3, 2.0), rel=1e-6)


def test_soft_supcon_with_alpha_zero_and_equal_weights_is_supcon():
    labels = torch.tensor([0, 0, 1, 1])
    soft = SoftSupConLoss(real_label=0, temperature=0.1, alpha=0.0, real_weight=1.0)(torch.tensor(Z4), labels)
    hard = SupConLoss(temperature=0.1)(torch.tensor(Z4), labels)
    assert soft.item() == pytest.approx(hard.item(), rel=1e-6)


def test_soft_supcon_weights_real_pairs_and_soft_ai_pairs():
    w = SoftSupConLoss(real_label=0, alpha=0.25).positive_weights(torch.tensor([0, 0, 1, 2]))
    expected = [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0.25], [0, 0, 0.25, 0]]
    assert w.tolist() == expected


def test_cosine_ce_matches_hand_computation():
    loss_fn = CosineCELoss(embedding_dim=3, num_classes=2, scale=16.0)
    with torch.no_grad():
        loss_fn.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))  # normalised inside
    z = torch.tensor(Z4[:2], dtype=torch.float32)
    labels = [0, 1]
    expected = 0.0
    for i, y in enumerate(labels):
        logits = [16.0 * Z4[i][0], 16.0 * Z4[i][1]]
        expected += -(logits[y] - math.log(sum(math.exp(v) for v in logits)))
    got = loss_fn(z, torch.tensor(labels)).item()
    assert got == pytest.approx(expected / 2, rel=1e-5)


def test_build_loss_names():
    assert isinstance(build_loss("supcon", num_classes=3, embedding_dim=8, real_label=0, temperature=0.1), SupConLoss)
    assert isinstance(build_loss("soft-supcon", num_classes=3, embedding_dim=8, real_label=0, temperature=0.1), SoftSupConLoss)
    assert isinstance(build_loss("ce", num_classes=3, embedding_dim=8, real_label=None, temperature=0.1), CosineCELoss)
    with pytest.raises(ValueError):
        build_loss("triplet", num_classes=3, embedding_dim=8, real_label=None, temperature=0.1)


def test_build_loss_passes_soft_supcon_constants():
    """`imgscan train --soft-alpha A --real-weight W` reach the loss; unset, the loss keeps its defaults."""
    labels = [0, 0, 1, 2]
    built = build_loss("soft-supcon", num_classes=3, embedding_dim=8, real_label=0, temperature=0.2,
                       soft_alpha=0.3, real_weight=1.5)
    got = built(torch.tensor(Z4), torch.tensor(labels)).item()
    assert got == pytest.approx(soft_supcon_reference(Z4, labels, 0, 0.2, 0.3, 1.5), rel=1e-6)
    default = build_loss("soft-supcon", num_classes=3, embedding_dim=8, real_label=0, temperature=0.2)
    assert (default.alpha, default.real_weight) == (0.1, 2.0)
