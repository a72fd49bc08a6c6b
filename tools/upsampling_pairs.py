"""Make content- and blur-matched pairs that differ only in how an image was up-sampled, offline, with no training.

Every GAN and latent-diffusion generator draws its image through learned up-sampling layers (transposed
convolutions, or nearest / bilinear up-sampling followed by convolutions), and each of an output pixel's four
2x2 phases is computed by different weights: the image carries a periodic trace of period 2 (the spectral peaks
GAN detectors find), whatever the generator. A real photo that was resized carries none: a resampling filter
treats every output pixel alike.

So, for each real photo: shrink it 2x (or 4x) by area averaging, then

- grow it back through a *random* learned-style up-sampler, a depthwise stride-2 transposed 4x4 convolution
  with its own random weights per image (a bilinear / nearest mixture perturbed multiplicatively, the colour
  channels sharing most of the perturbation), normalised so that each phase keeps the image's brightness, and a random 3x3 filter: label
  `upsampler-trace`, is_ai 1, source `upsampler:<source>`;
- grow it back with a bicubic or Lanczos resize: label `real`, source `resized:<source>`.

The two share content, size and the detail lost in the shrinking; only the phase trace tells them apart, so an
embedder trained on them cannot use blur or content as the cue, and a resized real photo stays real. Random
weights give a different up-sampler per image: the trace of up-sampling in general, not of one network.

    python tools/upsampling_pairs.py ../shared/data/kit ../shared/data/photos --out /tmp/upsampling \
        --exclude-fold 4 --exclude-sources camera:drewnoakes

writes OUT/manifest.csv (the kit's columns; each pair keeps its original's group and fold, so a pair never
straddles folds), OUT/images/{upsampler-trace,real}/*.jpg (JPEG q95 4:2:0 like the kit) and OUT/pairs.json (the
settings). The images are derived from the data sets and must not enter the repository. Pass OUT as one more
DATA to `imgscan train`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from imgscan_core.errors import run_script
from imgscan_core.labels import REAL_LABEL
from scanner.dataset import derived_name, real_photos, write_manifest
from train.data import open_rgb
from train.data_licence import record_derivation

TRACE_LABEL = "upsampler-trace"
_BILINEAR = np.array([0.25, 0.75, 0.75, 0.25])
_NEAREST = np.array([0.0, 1.0, 1.0, 0.0])


def random_upsampler(rng: np.random.Generator, sigma: float) -> torch.Tensor:
    """[3, 1, 4, 4] depthwise weights of a stride-2 transposed convolution: a random mix of the bilinear and
    nearest kernels times log-normal noise of scale `sigma`, shared by the colour channels but for a third of it
    (a generator's channels share most of their up-sampling; positive, so no phase sums to zero)."""
    a = rng.uniform(0, 1)
    taps = a * _BILINEAR + (1 - a) * _NEAREST
    base = np.outer(taps, taps) + 0.02
    shared = sigma * rng.standard_normal((4, 4))
    kernels = [base * np.exp(shared + sigma / 3 * rng.standard_normal((4, 4))) for _ in range(3)]
    return torch.tensor(np.stack(kernels)[:, None], dtype=torch.float32)


def upsample_2x(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """x [1, 3, h, w] -> [1, 3, 2h, 2w]; each output pixel divided by what its phase's weights add up to, so a
    flat image stays flat and only the phase-dependent part of the kernel leaves a trace."""
    up = F.conv_transpose2d(x, kernel, stride=2, padding=1, groups=3)
    gain = F.conv_transpose2d(torch.ones_like(x), kernel, stride=2, padding=1, groups=3)
    return up / gain


def random_filter(rng: np.random.Generator, sigma: float) -> torch.Tensor:
    """[3, 1, 3, 3] depthwise 3x3 filters, identity plus noise, each summing to 1 (a generator's last
    convolution: it sharpens or softens, the same at every pixel)."""
    k = np.zeros((3, 3, 3))
    k[:, 1, 1] = 1
    k += sigma * rng.standard_normal((1, 3, 3))
    k /= k.sum(axis=(1, 2), keepdims=True)
    return torch.tensor(k[:, None], dtype=torch.float32)


@torch.no_grad()
def make_pair(img: np.ndarray, rng: np.random.Generator, sigma: float, four_x_share: float):
    """(up-sampler trace, resized) versions of `img` (uint8 HxWx3), both cropped to a multiple of the factor."""
    from PIL import Image

    factor = 4 if rng.uniform() < four_x_share else 2
    sigma = sigma * rng.uniform(0.25, 1.5)  # traces from faint to plain
    h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
    x = torch.from_numpy(img[:h, :w].copy()).permute(2, 0, 1)[None].float() / 255
    small = F.avg_pool2d(x, factor)
    out = small
    for _ in range(factor // 2):
        out = upsample_2x(out, random_upsampler(rng, sigma))
    out = F.conv2d(F.pad(out, (1, 1, 1, 1), mode="reflect"), random_filter(rng, sigma / 10), groups=3)
    trace = (out[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    small_u8 = (small[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    resample = Image.BICUBIC if rng.uniform() < 0.5 else Image.LANCZOS
    resized = np.asarray(Image.fromarray(small_u8).resize((w, h), resample))
    return trace, resized, factor


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="+", help="data sets (manifest folders) whose real photos are used")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--exclude-fold", type=int, action="append", default=[],
                    help="fold(s) left out (the validation fold)")
    ap.add_argument("--exclude-sources", default="", help="comma-separated sources left out (the unseen source)")
    ap.add_argument("--sigma", type=float, default=0.1, help="scale of the log-normal noise on the kernels (each image draws 0.25-1.5x it)")
    ap.add_argument("--four-x", type=float, default=0.3, help="share of photos shrunk and grown 4x, not 2x")
    ap.add_argument("--quality", type=int, default=95)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    excluded_sources = {s for s in args.exclude_sources.split(",") if s}
    from PIL import Image

    originals = real_photos(args.data, args.exclude_fold, excluded_sources)
    t0 = time.time()
    rng = np.random.default_rng(args.seed)
    rows, factors = [], []
    for label in (TRACE_LABEL, REAL_LABEL):
        (args.out / "images" / label).mkdir(parents=True, exist_ok=True)
    for path, source, group, fold in originals:
        trace, resized, factor = make_pair(np.asarray(open_rgb(path)), rng, args.sigma, args.four_x)
        factors.append(factor)
        name = derived_name(path)
        for label, img, prefix, is_ai in ((TRACE_LABEL, trace, "upsampler", 1),
                                          (REAL_LABEL, resized, "resized", 0)):
            Image.fromarray(img).save(args.out / "images" / label / name, quality=args.quality, subsampling="4:2:0")
            rows.append({"path": f"images/{label}/{name}", "label": label, "is_ai": is_ai,
                         "source": f"{prefix}:{source}", "group": group, "fold": fold, "upscaled": 0})
    write_manifest(args.out, rows)
    record_derivation(args.out, args.data, "tools/upsampling_pairs.py")
    (args.out / "pairs.json").write_text(json.dumps({
        "data": args.data, "exclude_fold": args.exclude_fold, "exclude_sources": sorted(excluded_sources),
        "sigma": args.sigma, "four_x": args.four_x, "seed": args.seed, "quality": args.quality,
        "pairs": len(originals), "four_x_pairs": factors.count(4), "seconds": round(time.time() - t0, 1),
    }, indent=1))
    print(f"{len(originals)} pairs in {args.out} ({factors.count(4)} at 4x) in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    run_script(main)
