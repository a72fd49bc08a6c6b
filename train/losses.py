"""Training objectives. Every loss takes L2-normalised embeddings [B, D] and integer labels [B].

- `SupConLoss`: supervised contrastive loss of Khosla et al. 2020, as in HobbitLong/SupContrast (single view per
  image here: the P x K sampler supplies positives from other images of the same class).
- `SoftSupConLoss` ("soft-supcon"): a soft-positive variant that makes real photos one compact "natural" cluster,
  after the natural-traces idea of Liang et al., AAAI 2025 (our own formula, see docs/training.md).
- `CosineCELoss` ("ce"): cross-entropy through a cosine classifier whose input is the embedding itself, so the
  embedding is the classifier's penultimate feature.
- `relation_distillation` (`imgscan train --distil-from`, added to any of these): the student's in-batch
  neighbour distribution is pulled toward a teacher's (e.g. an ensemble's), so that the student's k-NN sees the
  batch as the teacher does; dimensions may differ, only similarities are compared.

Formulas are written out in docs/training.md; tests compare them with plain numpy loops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOSS_NAMES = ("supcon", "soft-supcon", "ce")


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision embeddings (AMP) are upcast: exp(s/T) with T = 0.1 loses too much in fp16/bf16."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _masked_log_softmax_rows(features: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(i -> j) = s_ij/T - log sum_{a != i} exp(s_ia/T), with the diagonal (self-contrast) removed.

    The row maximum is subtracted first for numerical stability (it cancels in the softmax), as HobbitLong does.
    Diagonal entries of the result are meaningless and must be masked by the caller.
    """
    logits = features @ features.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    b = features.shape[0]
    not_self = ~torch.eye(b, dtype=torch.bool, device=features.device)
    exp_logits = torch.exp(logits) * not_self
    return logits - torch.log(exp_logits.sum(dim=1, keepdim=True))


def _mean_over_anchors_with_positives(log_prob: torch.Tensor, weights: torch.Tensor, anchor_weight: torch.Tensor) -> torch.Tensor:
    """sum_i c_i * -(sum_j w_ij log p_ij / sum_j w_ij) / sum_i c_i over anchors i that have a positive weight.

    Anchors without a positive in the batch are excluded from the mean (not counted as zero): their own term
    would be 0/0. If no anchor has a positive, the loss is 0 but still attached to the graph (no NaN, and
    backward() still works).
    """
    pos_weight = weights.sum(dim=1)
    has_pos = pos_weight > 0
    if not bool(has_pos.any()):
        return (log_prob * 0.0).sum()
    per_anchor = -(weights * log_prob).sum(dim=1)[has_pos] / pos_weight[has_pos]
    c = anchor_weight[has_pos]
    return (c * per_anchor).sum() / c.sum()


class SupConLoss(nn.Module):
    """L = (1/|A|) sum_{i in A} -(T/T_b) (1/|P(i)|) sum_{p in P(i)} log( exp(z_i.z_p/T) / sum_{a != i} exp(z_i.z_a/T) )

    P(i): other images in the batch with the label of i; A: anchors with |P(i)| > 0.
    """

    def __init__(self, temperature: float = 0.1, base_temperature: float | None = None):
        super().__init__()
        self.temperature = temperature
        # HobbitLong's default base_temperature is 0.07 with temperature 0.07, i.e. the scale T/T_b is 1.
        self.base_temperature = temperature if base_temperature is None else base_temperature

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features = _at_least_float32(features)
        b = features.shape[0]
        log_prob = _masked_log_softmax_rows(features, self.temperature)
        not_self = ~torch.eye(b, dtype=torch.bool, device=features.device)
        positives = (labels[:, None] == labels[None, :]) & not_self
        ones = torch.ones(b, device=features.device)
        return (self.temperature / self.base_temperature) * _mean_over_anchors_with_positives(
            log_prob, positives.float(), ones
        )


SOFT_ALPHA = 0.1  # soft-supcon's positive weight between images of two different generators
REAL_WEIGHT = 2.0  # soft-supcon's weight of real anchors


class SoftSupConLoss(nn.Module):
    """Soft-positive SupCon that pulls real photos into one compact "natural" cluster.

    Positive weights w_ij (j != i):
      - i real,  j real:              1        (all real photos share natural traces: one cluster)
      - i AI,    j AI, same class:    1        (a generator's own cluster, for attribution)
      - i AI,    j AI, other class:   alpha    (soft: generated images share the absence of natural traces,
                                                but must stay separable by generator)
      - real/AI pairs:                0        (pushed apart through the softmax denominator)
    L = (1/sum_i c_i) * sum_{i in A} c_i * -(sum_j w_ij log p_ij / sum_j w_ij), with c_i = real_weight for real
    anchors and 1 otherwise (real anchors weigh more: the natural cluster is the target, as in the paper's idea
    of natural traces being the stable signal across generators).
    Without a `real` class in the batch this reduces to SupCon with soft cross-generator positives.
    """

    def __init__(self, real_label: int | None, temperature: float = 0.1, alpha: float = SOFT_ALPHA,
                 real_weight: float = REAL_WEIGHT):
        super().__init__()
        self.real_label = real_label
        self.temperature = temperature
        self.alpha = alpha
        self.real_weight = real_weight

    def positive_weights(self, labels: torch.Tensor) -> torch.Tensor:
        b = labels.shape[0]
        not_self = ~torch.eye(b, dtype=torch.bool, device=labels.device)
        same = labels[:, None] == labels[None, :]
        is_real = labels == self.real_label if self.real_label is not None else torch.zeros_like(labels, dtype=torch.bool)
        both_ai = (~is_real)[:, None] & (~is_real)[None, :]
        w = same.float() + self.alpha * (both_ai & ~same).float()
        return w * not_self

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features = _at_least_float32(features)
        log_prob = _masked_log_softmax_rows(features, self.temperature)
        weights = self.positive_weights(labels)
        is_real = labels == self.real_label if self.real_label is not None else torch.zeros_like(labels, dtype=torch.bool)
        anchor_weight = torch.where(is_real, torch.full_like(features[:, 0], self.real_weight), torch.ones_like(features[:, 0]))
        return _mean_over_anchors_with_positives(log_prob, weights, anchor_weight)


class CosineCELoss(nn.Module):
    """Cross-entropy over logits s * cos(z, w_c): the L2-normalised embedding z is the classifier's input.

    A cosine classifier (rather than a free linear layer) keeps class evidence in the embedding's direction,
    which is what the cosine k-NN at scan time uses. The class weights w_c are trained with the network and
    discarded at export.
    """

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 16.0):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_dim) * 0.01)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        features = _at_least_float32(features)
        return self.scale * features @ F.normalize(self.weight.to(features.dtype), dim=1).T

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(features), labels)


def relation_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """(1/B) sum_i KL(q_i || p_i), q_ij = softmax_{j != i}(t_i.t_j / T), p_ij the same of the student's embeddings.

    Both [B, *] L2-normalised; the teacher carries no gradient."""
    log_p = _masked_log_softmax_rows(_at_least_float32(student), temperature)
    log_q = _masked_log_softmax_rows(_at_least_float32(teacher).detach(), temperature)
    not_self = ~torch.eye(student.shape[0], dtype=torch.bool, device=student.device)
    q = torch.exp(log_q) * not_self
    kl = (q * (log_q - log_p)).masked_fill(~not_self, 0.0).sum(dim=1)
    return kl.mean()


def build_loss(name: str, *, num_classes: int, embedding_dim: int, real_label: int | None, temperature: float,
               soft_alpha: float | None = None, real_weight: float | None = None) -> nn.Module:
    """`soft_alpha` / `real_weight`: soft-supcon's constants, None for its defaults."""
    if name == "supcon":
        return SupConLoss(temperature=temperature)
    if name == "soft-supcon":
        return SoftSupConLoss(real_label=real_label, temperature=temperature,
                              alpha=SOFT_ALPHA if soft_alpha is None else soft_alpha,
                              real_weight=REAL_WEIGHT if real_weight is None else real_weight)
    if name == "ce":
        return CosineCELoss(embedding_dim=embedding_dim, num_classes=num_classes)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
