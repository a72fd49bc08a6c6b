"""An ensemble model: several trained embedders of one recipe, run side by side, their embeddings concatenated.

Members that differ only in their seed agree on the traces the data teaches and disagree on the accidents of
one run; k-NN over the concatenation (each member L2-normalised, divided by sqrt(n), so the whole vector has unit
norm and its cosine is the mean of the members' cosines) keeps the first and averages the second away
(docs/training.md has the measurements). The result is an ordinary model directory: one TorchScript module, one
card, used by scan, enroll, eval and the Ray engine like any other. It costs n forwards per view.

Members must share how images become input (input size, normalisation, view rule): a scan decodes once for all.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from imgscan_core.errors import UsageError
from scanner.embed import probe_batch
from scanner.model import ModelCard, load_model, save_model_dir

SHARED_FIELDS = ("input_size", "preprocessing", "normalization")
HELD_OUT_FIELDS = ("val_fold_held_out", "holdout_classes", "holdout_sources")


def ensemble_module(members):
    """TorchScript module: uint8 NCHW -> concatenation of the members' unit embeddings, / sqrt(n)."""
    import torch
    import torch.nn.functional as F

    class Ensemble(torch.nn.Module):
        def __init__(self, members):
            super().__init__()
            self.members = torch.nn.ModuleList(members)
            self.scale = 1.0 / math.sqrt(len(members))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            outs = [F.normalize(m(x), dim=1) for m in self.members]
            return torch.cat(outs, dim=1) * self.scale

    return torch.jit.script(Ensemble(members).eval())


def ensemble_card(cards: list[ModelCard], name: str | None, version: str | None, command: str) -> ModelCard:
    first = cards[0]
    licences = list(dict.fromkeys(c.licence for c in cards if c.licence))
    return dataclasses.replace(
        first,
        name=name or f"{first.name}-x{len(cards)}",
        version=version or first.version,
        embedding_dim=sum(c.embedding_dim for c in cards),
        weights_sha256="", tensors_sha256="", int8={},
        backbone=f"ensemble of {len(cards)}, each: {first.backbone}",
        training_data=first.training_data if all(c.training_data == first.training_data for c in cards)
        else " | ".join(c.training_data for c in cards),
        licence=" ".join(licences),
        training={
            "command": command,
            # what every member held out, so that the ensemble can teach a student that holds out the same
            **{key: first.training[key] for key in HELD_OUT_FIELDS
               if key in first.training and all(c.training.get(key) == first.training[key] for c in cards)},
            "members": [{"model": c.model_id, "tensors_sha256": c.tensors_sha256,
                         "command": c.training.get("command"), "hardware": c.training.get("hardware"),
                         "train_wall_seconds": c.training.get("train_wall_seconds"),
                         "seed": c.training.get("settings", {}).get("seed")} for c in cards],
        },
        notes=(f"Ensemble of {len(cards)} embedders (train/ensemble.py): each member's unit embedding, concatenated "
               f"and divided by sqrt({len(cards)}); cosine = the mean of the members' cosines. Members: "
               + ", ".join(c.model_id for c in cards) + "."),
    )


def make_ensemble(member_dirs: list[Path], out: Path, name: str | None = None, version: str | None = None,
                  command: str = "", log=print) -> ModelCard:
    """Write an ensemble model directory at OUT from trained model directories; returns its card."""
    import torch

    if len(member_dirs) < 2:
        raise UsageError("an ensemble needs at least two member models")
    loaded = [load_model(d) for d in member_dirs]
    cards = [c for c, _ in loaded]
    for field in SHARED_FIELDS:
        values = {repr(getattr(c, field)) for c in cards}
        if len(values) > 1:
            raise UsageError(f"members differ in {field} ({' vs '.join(sorted(values))}): a scan decodes images "
                             "once for all members, so they must take the same input")
    ids = [c.model_id for c in cards]
    if len(set(ids)) < len(ids):
        raise UsageError("the same model is given twice: its embedding would count double")
    module = ensemble_module([m for _, m in loaded])
    # the scripted ensemble must give exactly what its members give, side by side
    probe = torch.from_numpy(probe_batch(cards[0].input_size)).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        got = module(probe)
        want = torch.cat([torch.nn.functional.normalize(m(probe), dim=1) for _, m in loaded], 1) / math.sqrt(len(loaded))
    diff = float((got - want).abs().max())
    if diff > 1e-5:
        raise UsageError(f"the scripted ensemble differs from its members by {diff:.2e}")
    card = save_model_dir(module, ensemble_card(cards, name, version, command), out)
    log(f"wrote {out} ({card.model_id}): {len(cards)} members, {card.embedding_dim}-d embeddings; "
        f"scripted vs members max |diff| {diff:.1e}")
    return card
