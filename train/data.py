"""Training data: where images come from, how they are split, and how they are augmented.

DATA is read by scanner.dataset (a manifest CSV, a folder holding manifest.csv, or class folders; several at
once). An image without a fold (class folders, a manifest without a `fold` column) gets
fold = (first 4 bytes of sha1 of its path relative to its DATA) mod 5: stable across runs and machines, but a
split by image, so near-duplicates (same prompt, same photo) can leak across folds. Prefer a manifest with
folds assigned per group.

Splits: `--val-fold N` removes fold N from training and uses it as the validation queries; `--holdout a,b`
removes whole classes from training (zero-shot: they are only enrolled into the k-NN support at evaluation).

Decoding here uses Pillow: this is the training path, not the scan path.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from pathlib import Path

from imgscan_core.errors import UsageError

NUM_FOLDS_WITHOUT_MANIFEST = 5


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    fold: int
    source: str = ""  # the manifest's `source` column (which collection the original came from), if any


def _fold_from_path(rel: str) -> int:
    return int.from_bytes(hashlib.sha1(rel.encode("utf-8")).digest()[:4], "big") % NUM_FOLDS_WITHOUT_MANIFEST


def load_samples(data: str | Path | list) -> list[Sample]:
    """Samples of one DATA, or of several concatenated (each keeps its own manifest's folds), read by the one
    data-set reader (scanner.dataset); an image without a fold gets one from its path relative to its DATA."""
    from scanner.dataset import load_dataset

    datas = list(data) if isinstance(data, (list, tuple)) else [data]
    if not datas:
        raise UsageError("no DATA given")
    samples = []
    for d in datas:
        ds = load_dataset(d)
        for path, label, fold, source in zip(ds.paths, ds.labels, ds.folds, ds.sources):
            path = Path(path)
            if fold < 0:
                fold = _fold_from_path(path.relative_to(ds.root).as_posix())
            samples.append(Sample(path, str(label), int(fold), str(source)))
    return samples


@dataclass
class Split:
    train: list[Sample]  # training folds, classes not held out
    support: list[Sample]  # training folds, all classes (held-out classes only "enrolled", never trained on)
    val: list[Sample]  # the validation fold, all classes
    classes: list[str]  # training classes, index = label id used by the losses
    holdout: list[str]


def make_split(samples: list[Sample], val_fold: int | None, holdout: list[str],
               holdout_sources: list[str] | None = None) -> Split:
    """`holdout_sources`: whole collections (the manifest's `source`) left out of training, support and validation
    alike, so that `imgscan eval --holdout-sources` can measure them as never seen."""
    if holdout_sources:
        present = {s.source for s in samples}
        unknown_sources = [h for h in holdout_sources if h not in present]
        if unknown_sources:
            raise UsageError(f"--holdout-sources: unknown source(s) {', '.join(unknown_sources)}; "
                             f"sources are {', '.join(sorted(present))}")
        samples = [s for s in samples if s.source not in holdout_sources]
    labels = {s.label for s in samples}
    unknown = [h for h in holdout if h not in labels]
    if unknown:
        raise UsageError(f"--holdout: unknown class(es) {', '.join(unknown)}; classes are {', '.join(sorted(labels))}")
    folds = sorted({s.fold for s in samples})
    if val_fold is not None and val_fold not in folds:
        raise UsageError(f"--val-fold {val_fold}: the data has folds {', '.join(map(str, folds))}")
    in_train_folds = [s for s in samples if s.fold != val_fold]
    train = [s for s in in_train_folds if s.label not in holdout]
    val = [s for s in samples if s.fold == val_fold] if val_fold is not None else []
    classes = sorted({s.label for s in train})
    if len(classes) < 2:
        raise UsageError(f"training needs at least 2 classes after the holdout; found {classes}")
    return Split(train=train, support=in_train_folds, val=val, classes=classes, holdout=list(holdout))


def iter_centre_views(paths: list, card, batch: int = 32):
    """uint8 NCHW centre views of the images that decode, a batch at a time, exactly as a scan feeds `card`'s model
    (its view rule; images that fail to decode are skipped)."""
    import numpy as np

    from scanner.decode import ImageDecoder, view_spec_for

    decoder = ImageDecoder(view_spec_for(card, 1), batch, device="cpu")
    for i in range(0, len(paths), batch):
        blobs = []
        for p in paths[i:i + batch]:
            with open(p, "rb") as f:
                blobs.append(f.read())
        decoded = decoder.decode(blobs)
        if decoded.pixels.shape[0]:
            yield np.ascontiguousarray(np.asarray(decoded.pixels).transpose(0, 3, 1, 2))


def centre_view_pixels(paths: list, card, batch: int = 32):
    """All of `iter_centre_views` as one array; a one-line error when none decodes."""
    import numpy as np

    out = list(iter_centre_views(paths, card, batch))
    if not out:
        raise UsageError("none of the images could be decoded")
    return np.concatenate(out)


@dataclass
class AugmentConfig:
    """Training augmentations (all on by default). They model what happens to images on the web, so the
    embedding does not key on one compression level or resolution:
      - downscale by a factor in [0.5, 1] (probability p_downscale), bilinear with antialias;
      - upscale by a factor in [1, 2] (p_upscale, off by default; `imgscan train --aug-camera P`), bicubic: the
        soft pixels of a full-resolution camera photo, so that softness alone does not read as "generated";
      - Gaussian sensor-like noise, sigma in [1, 4] grey levels (p_noise, off by default; `--aug-camera P`);
      - Gaussian blur, radius in [0.1, 1.0] px (p_blur);
      - JPEG re-compression at quality 60..95 (p_jpeg);
      - random crop to image_size (images smaller than that are first upscaled, shorter side = image_size);
        with min_crop_detail > 0 (`--min-crop-detail D`), up to CROP_TRIES positions are drawn and the first whose
        pixel detail (scanner/detail.py) reaches D is kept, else the most detailed: a flat crop (sky, a wall)
        holds no generator trace, and the verdict does not judge such views either (scanner/verdict.py);
      - horizontal flip (p = 0.5).
    """

    enabled: bool = True
    p_downscale: float = 0.5
    downscale_range: tuple[float, float] = (0.5, 1.0)
    p_upscale: float = 0.0
    upscale_range: tuple[float, float] = (1.0, 2.0)
    p_noise: float = 0.0
    noise_sigma_range: tuple[float, float] = (1.0, 4.0)
    p_blur: float = 0.2
    blur_radius_range: tuple[float, float] = (0.1, 1.0)
    p_jpeg: float = 0.5
    jpeg_quality_range: tuple[int, int] = (60, 95)
    p_flip: float = 0.5
    min_crop_detail: float = 0.0


def open_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def augment(img, size: int, cfg: AugmentConfig, rng):
    """PIL RGB image -> augmented PIL RGB image of exactly size x size. `rng`: a random.Random or the module."""
    from PIL import Image, ImageFilter

    if cfg.enabled and rng.random() < cfg.p_downscale:
        f = rng.uniform(*cfg.downscale_range)
        w, h = img.size
        img = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR, reducing_gap=None)
    elif cfg.enabled and rng.random() < cfg.p_upscale:
        f = rng.uniform(*cfg.upscale_range)
        w, h = img.size
        img = img.resize((round(w * f), round(h * f)), Image.BICUBIC)
    if cfg.enabled and rng.random() < cfg.p_noise:
        import numpy as np

        sigma = rng.uniform(*cfg.noise_sigma_range)
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, sigma, (img.size[1], img.size[0], 3))
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8), "RGB")
    if cfg.enabled and rng.random() < cfg.p_blur:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*cfg.blur_radius_range)))
    if cfg.enabled and rng.random() < cfg.p_jpeg:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=rng.randint(*cfg.jpeg_quality_range))
        buf.seek(0)
        with Image.open(buf) as im:
            img = im.convert("RGB")
    w, h = img.size
    if min(w, h) < size:
        s = size / min(w, h)
        img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
        w, h = img.size
    if cfg.enabled:
        img = _random_crop(img, size, cfg.min_crop_detail, rng)
    else:
        x, y = (w - size) // 2, (h - size) // 2
        img = img.crop((x, y, x + size, y + size))
    if cfg.enabled and rng.random() < cfg.p_flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


CROP_TRIES = 4


def _random_crop(img, size: int, min_detail: float, rng):
    w, h = img.size
    if min_detail <= 0:
        x, y = rng.randint(0, w - size), rng.randint(0, h - size)
        return img.crop((x, y, x + size, y + size))
    import numpy as np

    from scanner.detail import view_detail

    best, best_detail = None, -1.0
    for _ in range(CROP_TRIES):
        x, y = rng.randint(0, w - size), rng.randint(0, h - size)
        crop = img.crop((x, y, x + size, y + size))
        detail = float(view_detail(np.asarray(crop)[None])[0])
        if detail >= min_detail:
            return crop
        if detail > best_detail:
            best, best_detail = crop, detail
    return best


def scan_preprocess(img, size: int):
    """The scanner's own preprocessing (`scanner.decode.ViewSpec`: native pixels, one centre view), so
    validation sees images exactly as `imgscan scan` does with a model this trainer exports."""
    from PIL import Image

    from scanner.decode import ViewSpec, view_crops

    return Image.fromarray(view_crops(img, ViewSpec(size))[0])


def pil_to_uint8_chw(img):
    import numpy as np
    import torch

    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


class TrainImages:
    """Map-style dataset: index -> (uint8 [3,S,S] augmented crop, class id)."""

    def __init__(self, samples: list[Sample], classes: list[str], image_size: int, cfg: AugmentConfig):
        self.samples = samples
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.labels = [self.class_to_idx[s.label] for s in samples]
        self.image_size = image_size
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        # `random` is reseeded per DataLoader worker by PyTorch; in-process we draw from the global generator,
        # which the trainer seeds with --seed.
        img = augment(open_rgb(self.samples[i].path), self.image_size, self.cfg, random)  # type: ignore[arg-type]
        return pil_to_uint8_chw(img), self.labels[i]


class ScanImages:
    """Map-style dataset for evaluation: index -> uint8 [3,S,S] exactly as the scanner would feed the model."""

    def __init__(self, samples: list[Sample], size: int):
        self.samples = samples
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return pil_to_uint8_chw(scan_preprocess(open_rgb(self.samples[i].path), self.size))


def collate_train(batch):
    import torch

    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([b[1] for b in batch], dtype=torch.long)
    return images, labels
