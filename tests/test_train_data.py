"""Data sources, splits and augmentations of the trainer."""

import random
from pathlib import Path

import pytest
from PIL import Image

from imgscan_core.errors import UsageError
from train.data import AugmentConfig, augment, load_samples, make_split, scan_preprocess

KIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "kit"


def _write_images(root: Path, classes: dict[str, int], size=(40, 30)) -> None:
    for label, n in classes.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", size, (i * 20 % 256, 100, 50)).save(root / label / f"{i}.png")


def test_class_folders_get_stable_folds(tmp_path):
    _write_images(tmp_path, {"real": 6, "gan": 4})
    a, b = load_samples(tmp_path), load_samples(tmp_path)
    assert [(s.label, s.fold) for s in a] == [(s.label, s.fold) for s in b]
    assert {s.label for s in a} == {"real", "gan"} and all(0 <= s.fold < 5 for s in a)


def test_manifest_paths_are_relative_to_the_csv(tmp_path):
    _write_images(tmp_path / "imgs", {"real": 2, "sd": 2})
    (tmp_path / "m.csv").write_text(
        "path,label,fold,extra\nimgs/real/0.png,real,0,x\nimgs/real/1.png,real,1,x\nimgs/sd/0.png,sd,0,x\nimgs/sd/1.png,sd,1,x\n"
    )
    samples = load_samples(tmp_path / "m.csv")
    assert all(s.path.is_file() for s in samples)
    split = make_split(samples, val_fold=1, holdout=[])
    assert [s.fold for s in split.train] == [0, 0] and [s.fold for s in split.val] == [1, 1]


def test_holdout_removes_classes_from_training_only(tmp_path):
    _write_images(tmp_path, {"real": 5, "a": 5, "b": 5})
    split = make_split(load_samples(tmp_path), val_fold=None, holdout=["b"])
    assert split.classes == ["a", "real"]
    assert "b" not in {s.label for s in split.train} and "b" in {s.label for s in split.support}


def test_bad_splits_are_usage_errors(tmp_path):
    _write_images(tmp_path, {"real": 3, "a": 3})
    samples = load_samples(tmp_path)
    with pytest.raises(UsageError, match="unknown class"):
        make_split(samples, None, ["nope"])
    with pytest.raises(UsageError, match="folds"):
        make_split(samples, 9, [])
    with pytest.raises(UsageError, match="at least 2 classes"):
        make_split(samples, None, ["a"])
    with pytest.raises(UsageError):
        load_samples(tmp_path / "missing")


@pytest.mark.parametrize("enabled", [True, False])
def test_augment_always_returns_the_crop_size(enabled):
    rng = random.Random(0)
    img = Image.new("RGB", (50, 70), (10, 200, 30))
    for _ in range(30):
        out = augment(img, 48, AugmentConfig(enabled=enabled), rng)
        assert out.size == (48, 48) and out.mode == "RGB"


def test_camera_augmentations_soften_and_add_noise():
    """--aug-camera: an upscaled copy is softer (smaller neighbour differences) and noise makes a flat image
    vary; both keep the crop size."""
    import numpy as np

    rng = random.Random(1)
    flat = Image.new("RGB", (64, 64), (120, 120, 120))
    noisy = augment(flat, 48, AugmentConfig(p_downscale=0, p_blur=0, p_jpeg=0, p_flip=0, p_noise=1.0), rng)
    assert noisy.size == (48, 48) and np.asarray(noisy, dtype=np.float32).std() > 0.5
    checker = Image.fromarray((np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)).convert("RGB")
    up = augment(checker, 48, AugmentConfig(p_downscale=0, p_blur=0, p_jpeg=0, p_flip=0, p_upscale=1.0,
                                            upscale_range=(1.5, 2.0)), rng)
    def grad(im):
        return np.abs(np.diff(np.asarray(im, dtype=np.float32)[..., 0], axis=1)).mean()
    assert up.size == (48, 48) and grad(up) < 0.8 * grad(checker.crop((0, 0, 48, 48)))


def test_min_crop_detail_redraws_flat_crops():
    import numpy as np

    from scanner.detail import view_detail

    half = np.full((256, 256, 3), 120, np.uint8)  # left half flat, right half noise
    half[:, 128:] = np.random.default_rng(0).integers(0, 256, (256, 128, 3))
    img, flat = Image.fromarray(half), Image.fromarray(np.full((256, 256, 3), 90, np.uint8))
    plain = AugmentConfig(p_downscale=0, p_blur=0, p_jpeg=0)
    redraw = AugmentConfig(p_downscale=0, p_blur=0, p_jpeg=0, min_crop_detail=2.0)
    rng = random.Random(0)

    def flat_share(cfg):
        return np.mean([view_detail(np.asarray(augment(img, 64, cfg, rng))[None])[0] < 2 for _ in range(200)])

    assert flat_share(plain) > 0.25 and flat_share(redraw) < 0.05  # 4 draws: (1/2)^4 of flat-only draws at most
    assert augment(flat, 64, redraw, rng).size == (64, 64)  # nothing textured to find: still a crop


def test_scan_preprocess_is_the_native_centre_view():
    """Validation sees what a scan of an exported model sees: the centre S x S at native pixels, not shrunk."""
    import numpy as np

    arr = np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    out = scan_preprocess(Image.fromarray(arr), 64)
    assert out.size == (64, 64)
    assert np.array_equal(np.asarray(out), arr[18:82, 68:132])  # origin rounded as DALI places crops


@pytest.mark.kit
@pytest.mark.skipif(not (KIT / "manifest.csv").is_file(), reason="needs ../shared/data/kit")
def test_kit_manifest_split():
    split = make_split(load_samples(KIT), val_fold=4, holdout=["glid-3", "gaugan"])
    assert len(split.classes) == 14 and "real" in split.classes
    assert all(s.fold != 4 for s in split.train) and all(s.fold == 4 for s in split.val)
    assert not {"glid-3", "gaugan"} & {s.label for s in split.train}
