"""`imgscan ensemble`: several trained models as one model directory whose embedding is theirs side by side."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from scanner.cli import app


def _member(tmp_path_factory, seed: int, **card_changes):
    """A tiny colour embedder with its own random projection (a stand-in for one training seed)."""
    import torch
    from torch import nn

    from scanner.model import ModelCard, save_model_dir

    class Member(nn.Module):
        def __init__(self):
            super().__init__()
            gen = torch.Generator().manual_seed(seed)
            self.register_buffer("projection", torch.randn(48, 16, generator=gen))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            grid = nn.functional.adaptive_avg_pool2d(x.float() / 255.0 - 0.5, 4).flatten(1)
            return nn.functional.normalize(grid @ self.projection, dim=1)

    out = tmp_path_factory.mktemp(f"member{seed}")
    card = ModelCard(name="tiny-member", version=f"s{seed}", input_size=32, embedding_dim=16,
                     training={"command": f"imgscan train --seed {seed}", "settings": {"seed": seed}},
                     licence="test fixture", training_data="none")
    save_model_dir(torch.jit.script(Member().eval()), dataclasses.replace(card, **card_changes), out)
    return out


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    return [_member(tmp_path_factory, s) for s in (1, 2, 3)]


def test_ensemble_embeds_as_its_members_side_by_side(members, tmp_path):
    from scanner.embed import Embedder

    out = tmp_path / "x3"
    result = CliRunner().invoke(app, ["ensemble", str(out), *map(str, members), "--model-version", "1.0"])
    assert result.exit_code == 0, result.output
    card = json.loads((out / "model_card.json").read_text())
    assert card["name"] == "tiny-member-x3" and card["version"] == "1.0" and card["embedding_dim"] == 48
    assert [m["seed"] for m in card["training"]["members"]] == [1, 2, 3]
    assert card["training"]["command"]  # the invocation (under pytest: pytest's argv)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    whole = Embedder(out, device="cpu", precision="fp32", runtime="torch").embed(pixels)
    parts = [Embedder(m, device="cpu", precision="fp32", runtime="torch").embed(pixels) for m in members]
    np.testing.assert_allclose(whole, np.concatenate(parts, axis=1) / np.sqrt(3), atol=1e-6)
    # its cosine is the mean of the members' cosines
    np.testing.assert_allclose(whole @ whole.T, np.mean([p @ p.T for p in parts], axis=0), atol=1e-6)


def test_members_must_take_the_same_input(members, tmp_path_factory, tmp_path):
    other = _member(tmp_path_factory, 4, input_size=64)
    result = CliRunner().invoke(app, ["ensemble", str(tmp_path / "bad"), str(members[0]), str(other)])
    assert result.exit_code == 2 and "input_size" in result.output
    result = CliRunner().invoke(app, ["ensemble", str(tmp_path / "bad"), str(members[0]), str(members[0])])
    assert result.exit_code == 2 and "twice" in result.output
    result = CliRunner().invoke(app, ["ensemble", str(tmp_path / "bad"), str(members[0])])
    assert result.exit_code == 2 and "at least two" in result.output
    assert not (tmp_path / "bad").exists()


def _fit_data(root):
    """Four classes of flat-colour-and-noise JPEGs with folds and sources in a manifest: 'c', fold 4 and the
    source 'held' are what the members' cards say they held out."""
    from PIL import Image

    rng = np.random.default_rng(5)
    rows = ["path,label,fold,source"]
    for label, base in (("real", 60), ("a", 120), ("b", 180), ("c", 240)):
        (root / label).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.jpg", quality=90)
            rows.append(f"{label}/{i}.jpg,{label},{i % 5},{'held' if i == 0 else 'kept'}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    # trained on: classes real/a/b, folds 0-3, source 'kept' (i = 1..11 except 4 and 9: nine images a class)
    return [root / label / f"{i}.jpg" for label in ("real", "a", "b") for i in range(1, 12) if i % 5 != 4]


def test_a_projected_ensemble_is_fitted_on_what_its_members_trained_on(tmp_path_factory, tmp_path):
    from scanner.embed import Embedder

    held = {"val_fold_held_out": 4, "holdout_classes": ["c"], "holdout_sources": ["held"]}
    members = [_member(tmp_path_factory, s, training={"command": "t", "settings": {"seed": s}, **held})
               for s in (1, 2, 3)]
    trained_on = _fit_data(tmp_path / "data")
    out = tmp_path / "x3d8"
    result = CliRunner().invoke(app, ["ensemble", str(out), *map(str, members), "--dim", "8",
                                      "--fit-data", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    card = json.loads((out / "model_card.json").read_text())
    projection = card["training"]["projection"]
    assert card["embedding_dim"] == 8 and projection["dim"] == 8
    assert projection["fit_images"] == len(trained_on) == 27 and projection["fit_excludes"] == held
    assert 0.5 < projection["energy_kept"] <= 1.0
    # the same projection recomputed from the full ensemble's embeddings of exactly the training images: equal
    # cosines (singular vectors are defined up to sign, cosines are not)
    full = tmp_path / "x3"
    assert CliRunner().invoke(app, ["ensemble", str(full), *map(str, members)]).exit_code == 0
    from train.data import centre_view_pixels

    embed_full = Embedder(full, device="cpu", precision="fp32", runtime="torch")
    fit = embed_full.embed(centre_view_pixels(trained_on, embed_full.card).transpose(0, 2, 3, 1))
    basis = np.linalg.svd(fit.astype(np.float64), full_matrices=False)[2][:8].T
    queries = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    want = embed_full.embed(queries) @ basis
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = Embedder(out, device="cpu", precision="fp32", runtime="torch").embed(queries)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got @ got.T, want @ want.T, atol=1e-4)


def test_a_projection_needs_its_fit_data_and_known_held_out_images(members, tmp_path):
    data = tmp_path / "data"
    _fit_data(data)
    base = ["ensemble", str(tmp_path / "bad"), *map(str, members)]
    result = CliRunner().invoke(app, [*base, "--dim", "8"])
    assert result.exit_code == 2 and "--fit-data" in result.output
    # these members' cards do not say what they held out: a fit could include held-out images
    result = CliRunner().invoke(app, [*base, "--dim", "8", "--fit-data", str(data)])
    assert result.exit_code == 2 and "held" in result.output
    assert not (tmp_path / "bad").exists()
