"""tools/reconstruction_pairs.py: content-matched AI images from real photos, as one more training DATA."""

import csv
import json

import numpy as np
import torch
from PIL import Image

from conftest import load_script, real_photos_data
from train.data import load_samples, make_split


def test_reconstructions_keep_the_originals_size_group_and_fold_and_train_as_one_more_class(tmp_path):
    tool = load_script("tools/reconstruction_pairs.py")
    data, out = real_photos_data(tmp_path), tmp_path / "recon"
    assert tool.main([str(data), "--out", str(out), "--exclude-fold", "4", "--exclude-sources", "unseen",
                      "--steps", "3", "--batch", "2", "--crop", "64", "--threads", "1"]) == 0

    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    # only the real photos outside fold 4 and the excluded source, each once
    assert sorted((r["group"], r["fold"]) for r in rows) == [("g1", "0"), ("g1", "0"), ("g2", "1")]
    assert {r["label"] for r in rows} == {"ae-recon"} and {r["is_ai"] for r in rows} == {"1"}
    assert {r["source"] for r in rows} == {"reconstruction:cam"}
    sizes = sorted(Image.open(out / r["path"]).size for r in rows)
    assert sizes == [(96, 96), (100, 90), (120, 104)]  # the original's size, padding cropped back off
    card = json.loads((out / "autoencoder.json").read_text())
    assert card["images"] == 3 and card["steps"] == 3 and len(card["loss_curve"]) == 1

    # one more DATA for the trainer: its folds are the originals', so a pair never straddles the split
    split = make_split(load_samples([data, out]), val_fold=1, holdout=[])
    assert "ae-recon" in split.classes
    assert [s.path.name.split("-")[0] for s in split.val if s.label == "ae-recon"] == ["c"]


def test_reconstruction_is_the_whole_image_through_the_decoder(tmp_path):
    tool = load_script("tools/reconstruction_pairs.py")
    model = tool.Autoencoder().eval()
    img = np.random.default_rng(1).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    rec = tool.reconstruct(model, img)
    assert rec.shape == img.shape and rec.dtype == np.uint8
    assert not np.array_equal(rec, img)  # an untrained decoder does not pass the pixels through


def test_gan_decoder_makes_a_class_of_its_own(tmp_path):
    tool = load_script("tools/reconstruction_pairs.py")
    data, out = real_photos_data(tmp_path), tmp_path / "recon_gan"
    assert tool.main([str(data), "--out", str(out), "--exclude-fold", "4", "--exclude-sources", "unseen",
                      "--steps", "2", "--batch", "2", "--crop", "64", "--threads", "1", "--decoder", "gan"]) == 0
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["label"] for r in rows} == {"gan-recon"} and {r["source"] for r in rows} == {"reconstruction-gan:cam"}
    assert sorted(Image.open(out / r["path"]).size for r in rows) == [(96, 96), (100, 90), (120, 104)]
    card = json.loads((out / "autoencoder.json").read_text())
    assert card["decoder"] == "gan" and card["downsample"] == 4 and card["latent_channels"] == 64
    # up-sampling by stride-2 transposed convolutions, the GAN family's trace
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in tool.GanAutoencoder().decoder) == 2
    split = make_split(load_samples([data, out]), val_fold=1, holdout=[])
    assert "gan-recon" in split.classes


def test_bilinear_and_sub_pixel_decoders_are_classes_of_their_own(tmp_path):
    tool = load_script("tools/reconstruction_pairs.py")
    data = real_photos_data(tmp_path)
    for decoder, label, upsampler in [("bilinear", "bilinear-recon", torch.nn.Upsample),
                                      ("shuffle", "shuffle-recon", torch.nn.PixelShuffle)]:
        out = tmp_path / f"recon_{decoder}"
        assert tool.main([str(data), "--out", str(out), "--exclude-fold", "4", "--exclude-sources", "unseen",
                          "--steps", "2", "--batch", "2", "--crop", "64", "--threads", "1",
                          "--decoder", decoder]) == 0
        with open(out / "manifest.csv") as f:
            rows = list(csv.DictReader(f))
        assert {r["label"] for r in rows} == {label}
        assert {r["source"] for r in rows} == {f"reconstruction-{decoder}:cam"}
        assert sorted(Image.open(out / r["path"]).size for r in rows) == [(96, 96), (100, 90), (120, 104)]
        # each family up-samples its own way, twice (f=4): that way is the trace it teaches
        model = tool.DECODERS[decoder]()
        assert sum(isinstance(m, upsampler) for m in model.decoder) == 2
        if decoder == "bilinear":
            assert {m.mode for m in model.decoder if isinstance(m, torch.nn.Upsample)} == {"bilinear"}
    split = make_split(load_samples([data, tmp_path / "recon_bilinear", tmp_path / "recon_shuffle"]),
                      val_fold=1, holdout=[])
    assert {"bilinear-recon", "shuffle-recon"} <= set(split.classes)
