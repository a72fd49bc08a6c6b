"""tools/upsampling_pairs.py: real photos grown back through a random learned-style up-sampler and a resize."""

import csv
import json

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import load_script, real_photos_data
from train.data import load_samples, make_split


def test_each_photo_gives_a_trace_and_a_resized_real_with_its_group_and_fold(tmp_path):
    tool = load_script("tools/upsampling_pairs.py")
    data, out = real_photos_data(tmp_path), tmp_path / "ups"
    assert tool.main([str(data), "--out", str(out), "--exclude-fold", "4", "--exclude-sources", "unseen"]) == 0

    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    # only the real photos outside fold 4 and the excluded source, each twice: one trace, one resized real
    assert sorted((r["label"], r["group"], r["fold"]) for r in rows) == [
        ("real", "g1", "0"), ("real", "g1", "0"), ("real", "g2", "1"),
        ("upsampler-trace", "g1", "0"), ("upsampler-trace", "g1", "0"), ("upsampler-trace", "g2", "1")]
    assert {(r["label"], r["is_ai"], r["source"]) for r in rows} == {
        ("upsampler-trace", "1", "upsampler:cam"), ("real", "0", "resized:cam")}
    by_name = {}
    for r in rows:
        by_name.setdefault(r["path"].split("/")[-1], []).append(Image.open(out / r["path"]).size)
    for name, sizes in by_name.items():
        assert len(sizes) == 2 and sizes[0] == sizes[1]  # a pair shares its size
        w, h = sizes[0]
        assert w % 2 == 0 and h % 2 == 0
    assert json.loads((out / "pairs.json").read_text())["pairs"] == 3

    split = make_split(load_samples([data, out]), val_fold=1, holdout=[])
    assert "upsampler-trace" in split.classes
    assert sorted(s.label for s in split.val if s.path.parent.parent == out / "images") == ["real", "upsampler-trace"]


def test_the_transposed_convolution_with_the_bilinear_kernel_is_bilinear_up_sampling():
    """The wiring: with the plain bilinear kernel the learned-style up-sampler is exactly a bilinear resize, borders
    included (each phase divided by what its weights add up to)."""
    tool = load_script("tools/upsampling_pairs.py")
    kernel = torch.tensor(np.outer(tool._BILINEAR, tool._BILINEAR), dtype=torch.float32)[None, None].repeat(3, 1, 1, 1)
    x = torch.rand(1, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(tool.upsample_2x(x, kernel), expected, atol=1e-6)


def test_a_random_up_sampler_keeps_flat_regions_flat_and_leaves_a_period_two_trace():
    tool = load_script("tools/upsampling_pairs.py")
    kernel = tool.random_upsampler(np.random.default_rng(0), sigma=0.3)
    flat = torch.full((1, 3, 8, 8), 0.4)
    assert torch.allclose(tool.upsample_2x(flat, kernel), torch.full((1, 3, 16, 16), 0.4), atol=1e-6)

    # a horizontal ramp: a resize grows it into an even ramp; the random up-sampler's phases step unevenly
    ramp = torch.linspace(0, 1, 16).repeat(1, 3, 16, 1)
    up = tool.upsample_2x(ramp, kernel)[..., 4:-4, 4:-4]
    steps = up[..., 1:] - up[..., :-1]
    even, odd = steps[..., 0::2].mean(), steps[..., 1::2].mean()
    assert not torch.isclose(even, odd, rtol=0.05)
    resized = F.interpolate(ramp, scale_factor=2, mode="bilinear", align_corners=False)[..., 4:-4, 4:-4]
    r_steps = resized[..., 1:] - resized[..., :-1]
    assert torch.isclose(r_steps[..., 0::2].mean(), r_steps[..., 1::2].mean(), rtol=1e-4)
