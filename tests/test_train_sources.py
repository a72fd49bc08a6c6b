"""Several data sets at once, held-out sources, and the NPR input filter of the trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from imgscan_core.errors import UsageError
from train.data import load_samples, make_split


def _manifest_set(root: Path, rows: list[tuple[str, str, int]]) -> Path:
    """rows: (label, source, fold); one tiny image each."""
    root.mkdir(parents=True)
    lines = ["path,label,is_ai,source,group,fold"]
    for i, (label, source, fold) in enumerate(rows):
        (root / label).mkdir(exist_ok=True)
        Image.new("RGB", (20, 20), (i * 10 % 256, 0, 0)).save(root / label / f"{i}.png")
        lines.append(f"{label}/{i}.png,{label},{int(label != 'real')},{source},g{i},{fold}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def test_several_data_sets_keep_their_folds_and_sources(tmp_path):
    a = _manifest_set(tmp_path / "a", [("real", "bsds", 0), ("sd", "imagen", 1), ("sd", "imagen", 0)])
    b = _manifest_set(tmp_path / "b", [("real", "camera:x", 1), ("real", "camera:y", 0)])
    samples = load_samples([a, b])
    assert [(s.label, s.source, s.fold) for s in samples] == [
        ("real", "bsds", 0), ("sd", "imagen", 1), ("sd", "imagen", 0), ("real", "camera:x", 1), ("real", "camera:y", 0)]
    split = make_split(samples, val_fold=1, holdout=[], holdout_sources=["camera:y"])
    assert all(s.source != "camera:y" for s in split.train + split.support + split.val)
    assert [s.source for s in split.val] == ["imagen", "camera:x"]
    with pytest.raises(UsageError, match="unknown source"):
        make_split(samples, val_fold=1, holdout=[], holdout_sources=["camera:z"])


def test_npr_residual_removes_what_2x_upsampling_made_and_keeps_its_shape():
    from train.model import npr_residual

    coarse = torch.rand(2, 3, 8, 8)
    upsampled = torch.nn.functional.interpolate(coarse, scale_factor=2.0, mode="nearest")  # a generator's 2x up
    assert torch.count_nonzero(npr_residual(upsampled)) == 0  # nothing left: every 2x2 block is one value
    noise = torch.rand(1, 3, 17, 15)  # odd sizes keep their shape
    r = npr_residual(noise)
    assert r.shape == noise.shape and torch.count_nonzero(r[:, :, ::2, ::2]) == 0 and r.abs().sum() > 0


def test_npr_embedder_scripts_and_differs_from_the_plain_one():
    from train.model import build_embedder, script_embedder

    torch.manual_seed(0)
    plain, _ = build_embedder("resnet10t", embedding_dim=16)
    torch.manual_seed(0)
    npr, _ = build_embedder("resnet10t", embedding_dim=16, input_filter="npr")
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        a, b = plain.eval()(x), npr.eval()(x)
        scripted = script_embedder(npr)(x)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(scripted, b, atol=1e-5, rtol=0)
    with pytest.raises(UsageError, match="input-filter"):
        build_embedder("resnet10t", input_filter="sobel")


def test_residual_branch_reads_only_the_npr_residual_and_scripts():
    from train.model import NPR_GAIN, ResidualBranch, build_embedder, npr_residual, script_embedder

    torch.manual_seed(0)
    branch = ResidualBranch(16).eval()
    x = torch.rand(2, 3, 32, 32)
    content = torch.nn.functional.interpolate(torch.rand(2, 3, 16, 16), scale_factor=2.0, mode="nearest")

    def feed(image):  # what the Embedder gives the branch: the residual, computed once for both consumers
        return branch(npr_residual(image) * NPR_GAIN)

    with torch.no_grad():
        a, b, c = feed(x), feed(x + content), feed(torch.rand(2, 3, 32, 32))
    assert a.shape == (2, 16)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # 2x-upsampled content is invisible to it
    assert not torch.allclose(a, c, atol=1e-3)

    two, _ = build_embedder("resnet10t", embedding_dim=16, residual_width=16)
    one, _ = build_embedder("resnet10t", embedding_dim=16)
    assert any(k.startswith("residual.") for k in two.state_dict())
    assert not any(k.startswith("residual.") for k in one.state_dict())  # one-branch checkpoints unchanged
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    both, _ = build_embedder("resnet10t", embedding_dim=16, residual_width=16, input_filter="npr")
    with torch.no_grad():
        torch.testing.assert_close(script_embedder(two)(pixels), two.eval()(pixels), atol=1e-5, rtol=0)
        torch.testing.assert_close(script_embedder(both)(pixels), both.eval()(pixels), atol=1e-5, rtol=0)
    with pytest.raises(UsageError, match="residual-branch 12"):
        build_embedder("resnet10t", residual_width=12)
