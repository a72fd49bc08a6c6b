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
