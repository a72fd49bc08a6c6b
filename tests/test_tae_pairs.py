"""tools/tae_pairs.py: real photos through the tiny autoencoders of today's generators, and re-posted."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_script, real_photos_data

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "tae"
needs_tae = pytest.mark.skipif(not (WEIGHTS / "SHA256SUMS").is_file(),
                               reason="../shared/weights/tae is not present (a user's clone)")


def test_every_decoder_family_builds_with_the_layout_of_its_weights():
    """The architectures alone (no weights needed): latent widths and FLUX.2's pointwise branches."""
    tool = load_script("tools/tae_pairs.py")
    for name, (_, latent, pooled) in tool.DECODERS.items():
        enc, dec = tool.encoder(latent, pooled), tool.decoder(latent, pooled)
        x = torch.rand(1, 3, 64, 48)
        z = enc(x)
        assert z.shape == (1, latent, 8, 6)
        assert dec(z).shape == (1, 3, 64, 48)
        branches = sum(1 for m in list(enc.modules()) + list(dec.modules()) if isinstance(m, tool._Block) and m.pool is not None)
        assert branches == (6 if pooled else 0), name


@needs_tae
def test_reconstructions_keep_content_and_pairs_keep_group_and_fold(tmp_path):
    tool = load_script("tools/tae_pairs.py")
    data, out = real_photos_data(tmp_path), tmp_path / "tae"
    assert tool.main([str(data), "--out", str(out), "--decoders", "sd,flux2", "--exclude-fold", "4",
                      "--exclude-sources", "unseen", "--threads", "1"]) == 0
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    # three originals outside fold 4 and the unseen source, each through two decoders; the original and each
    # decoder's image re-posted once
    assert sorted((r["label"], r["group"], r["fold"]) for r in rows) == sorted(
        [(lab, g, f) for lab in ("tae-sd", "tae-sd", "tae-flux2", "tae-flux2", "real")
         for g, f in (("g1", "0"), ("g1", "0"), ("g2", "1"))])
    assert {(r["label"], r["is_ai"], r["source"].split(":")[0]) for r in rows} == {
        ("tae-sd", "1", "tae-sd"), ("tae-flux2", "1", "tae-flux2"), ("real", "0", "reposted")}
    originals = {Path(p).stem: Image.open(p).size for p in (data / "images" / "real").glob("*.jpg")}
    sizes = {}
    for r in rows:
        w, h = Image.open(out / r["path"]).size
        stem = r["path"].split("/")[-1].rsplit("-", 1)[0]
        ow, oh = originals[stem]
        if r["label"] == "real" or "-reposted/" in r["path"]:
            assert 0.45 * ow <= w <= 0.8 * ow  # re-posted at 0.5-0.75x
            sizes.setdefault(stem, set()).add(w)
        else:
            assert (w, h) == (ow // 8 * 8, oh // 8 * 8)
    # each original's real copy and its decoders' copies re-posted alike (within the decoders' crop to 8 px)
    assert all(max(ws) - min(ws) <= 6 for ws in sizes.values()) and len(sizes) == 3
    info = json.loads((out / "pairs.json").read_text())
    assert set(info["weights_sha256"]) == {"taesd_encoder.safetensors", "taesd_decoder.safetensors",
                                           "taef2_encoder.pth", "taef2_decoder.pth"}
    # the fixture's photos are noise (the hardest content to keep): the decoders still reproduce their means
    assert all(v > 5 for v in info["psnr_db_mean"].values())
    # a model trained on the pairs names the licence of the photos they were made from
    assert json.loads((out / "derived_from.json").read_text())["data"] == [str(data.resolve())]


@needs_tae
def test_a_camera_photo_comes_back_at_the_quality_the_readme_states(tmp_path):
    """A smooth photo-like image through each TAE: 25 dB or more (the weights' README: 31-36 dB on a photo)."""
    tool = load_script("tools/tae_pairs.py")
    yy, xx = np.mgrid[0:128, 0:128] / 128.0
    img = (255 * np.stack([xx, yy, 0.5 + 0.4 * np.sin(6 * xx * yy)], -1)).astype(np.uint8)
    for name in tool.DECODERS:
        enc, dec, _ = tool.load_pair(name)
        out, db = tool.reconstruct(img, enc, dec)
        assert out.shape == img.shape and db > 25, (name, db)
