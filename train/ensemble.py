"""An ensemble model: several trained embedders of one recipe, run side by side, their embeddings concatenated.

Members that differ only in their seed agree on the traces the data teaches and disagree on the accidents of
one run; k-NN over the concatenation (each member L2-normalised, divided by sqrt(n), so the whole vector has unit
norm and its cosine is the mean of the members' cosines) keeps the first and averages the second away
(docs/training.md has the measurements). The result is an ordinary model directory: one TorchScript module, one
card, used by scan, enroll, eval and the Ray engine like any other. It costs n forwards per view.

With `dim`, the concatenation is projected onto its `dim` leading principal directions (uncentred, so cosines are
what is kept), fitted on the images the members trained on (the data given, less everything the members held
out: a projection fitted on held-out images would leak them into every figure measured on them), and
L2-normalised again. SupCon embeddings of a few dozen classes span few directions, so the method's 128-d
embedding (and an index of the same size as one member's) costs almost none of the ensemble's geometry; the card
records how much of the energy the projection keeps.

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


def ensemble_module(members, projection=None):
    """TorchScript module: uint8 NCHW -> concatenation of the members' unit embeddings, / sqrt(n); with
    `projection` ([n * member dim, dim] float32), that vector times it, L2-normalised."""
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

    class ProjectedEnsemble(torch.nn.Module):
        def __init__(self, members, projection):
            super().__init__()
            self.ensemble = Ensemble(members)
            self.register_buffer("projection", torch.as_tensor(projection))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.ensemble(x) @ self.projection, dim=1)

    module = Ensemble(members) if projection is None else ProjectedEnsemble(members, projection)
    return torch.jit.script(module.eval())


def fit_projection(module, card: ModelCard, fit_data: list[Path], dim: int, log=print):
    """[concatenated dim, dim] leading right singular vectors of the ensemble's embeddings of the images its
    members trained on (`fit_data` less the validation fold, classes and sources every member's card says it
    held out), and a record of the fit for the card."""
    import time

    import numpy as np
    import torch

    from train.data import iter_centre_views, load_samples, make_split
    from train.trainer import hardware_description

    held = card.training
    missing = [key for key in HELD_OUT_FIELDS if key not in held]
    if missing:
        raise UsageError(f"--dim: the members do not all record the same {', '.join(missing)}, so which images they "
                         "trained on is not known and the projection could be fitted on held-out ones")
    if dim >= card.embedding_dim:
        raise UsageError(f"--dim {dim}: the members' concatenation is {card.embedding_dim}-d already")
    split = make_split(load_samples(list(fit_data)), held["val_fold_held_out"], list(held["holdout_classes"] or []),
                       list(held["holdout_sources"] or []))
    paths = [s.path for s in split.train]
    if len(paths) < dim:
        raise UsageError(f"--dim {dim}: only {len(paths)} training images in the fit data")
    chunks, started = [], time.monotonic()
    with torch.inference_mode():
        for i, pixels in enumerate(iter_centre_views(paths, card)):
            chunks.append(module(torch.from_numpy(pixels)).numpy())
            if i % 16 == 15:
                log(f"  projection fit: embedded {sum(len(c) for c in chunks)} / {len(paths)} images")
    x = np.concatenate(chunks).astype(np.float64)
    projection, energy = leading_directions(x, dim)
    record = {"dim": dim, "method": "uncentred PCA (leading right singular vectors), then L2-normalised",
              "fit_images": int(x.shape[0]), "fit_data": [str(d) for d in fit_data],
              "fit_excludes": {key: held[key] for key in HELD_OUT_FIELDS}, "energy_kept": round(energy, 6),
              "hardware": hardware_description(torch.device("cpu")),
              "fit_wall_seconds": round(time.monotonic() - started, 1)}
    return projection, record


def leading_directions(x, dim: int):
    """[x's width, dim] float32: the `dim` leading right singular vectors of x, uncentred (so that cosines, not
    variances, are what the projection keeps); and the share of x's energy they keep."""
    import numpy as np

    _, singular, vt = np.linalg.svd(x, full_matrices=False)
    return (np.ascontiguousarray(vt[:dim].T.astype(np.float32)),
            float((singular[:dim] ** 2).sum() / (singular ** 2).sum()))


def ensemble_card(cards: list[ModelCard], name: str | None, version: str | None, command: str,
                  projection: dict | None = None) -> ModelCard:
    first = cards[0]
    licences = list(dict.fromkeys(c.licence for c in cards if c.licence))
    return dataclasses.replace(
        first,
        name=name or f"{first.name}-x{len(cards)}",
        version=version or first.version,
        embedding_dim=projection["dim"] if projection else sum(c.embedding_dim for c in cards),
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
            **({"projection": projection} if projection else {}),
        },
        notes=(f"Ensemble of {len(cards)} embedders (train/ensemble.py): each member's unit embedding, concatenated "
               f"and divided by sqrt({len(cards)}); cosine = the mean of the members' cosines"
               + (f"; projected to {projection['dim']}-d ({projection['energy_kept']:.4%} of the energy of its "
                  f"{projection['fit_images']} training images kept) and L2-normalised" if projection else "")
               + ". Members: " + ", ".join(c.model_id for c in cards) + "."),
    )


def make_ensemble(member_dirs: list[Path], out: Path, name: str | None = None, version: str | None = None,
                  command: str = "", log=print, dim: int | None = None, fit_data: list[Path] | None = None) -> ModelCard:
    """Write an ensemble model directory at OUT from trained model directories (projected to `dim` with a fit
    on `fit_data` when given); returns its card."""
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
    if (dim is None) != (not fit_data):
        raise UsageError("--dim and --fit-data go together: the projection is fitted on the members' training data")
    module = ensemble_module([m for _, m in loaded])
    projection, record = None, None
    if dim is not None:
        projection, record = fit_projection(module, ensemble_card(cards, name, version, command), fit_data, dim, log)
        module = ensemble_module([m for _, m in loaded], projection)
    # the scripted ensemble must give exactly what its members give, side by side (and projected)
    probe = torch.from_numpy(probe_batch(cards[0].input_size)).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        got = module(probe)
        want = torch.cat([torch.nn.functional.normalize(m(probe), dim=1) for _, m in loaded], 1) / math.sqrt(len(loaded))
        if projection is not None:
            want = torch.nn.functional.normalize(want @ torch.from_numpy(projection), dim=1)
    diff = float((got - want).abs().max())
    if diff > 1e-5:
        raise UsageError(f"the scripted ensemble differs from its members by {diff:.2e}")
    card = save_model_dir(module, ensemble_card(cards, name, version, command, record), out)
    log(f"wrote {out} ({card.model_id}): {len(cards)} members, {card.embedding_dim}-d embeddings"
        + (f" ({record['energy_kept']:.4%} of the energy of {record['fit_images']} training images)" if record else "")
        + f"; scripted vs members max |diff| {diff:.1e}")
    return card
