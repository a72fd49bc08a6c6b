"""Make content-matched AI images: real photos passed through an autoencoder trained here, offline.

A latent-diffusion generator draws its image through a decoder that up-samples a latent (nearest-neighbour
up-sampling and convolutions, 8x); the decoder leaves its trace on everything it draws. Reconstructing a real
photo through such a decoder gives an image with the photo's content and a generator's trace, so a detector
trained on the pair can only tell them apart by the trace (the "content-matched pairs" of the embedder issue).
No pretrained autoencoder can be obtained here, so this script trains a small one on the same real photos: an
f=8 encoder to a 16-channel latent (the latent shape of current LDM autoencoders), and a decoder built like
theirs (nearest up-sampling, 3x3 convolutions), with an L1 loss on pixels and on their finite differences (so
the reconstruction is less blurred than with L1 on the pixels alone).

`--decoder gan` builds the other family instead: a GAN generator's decoder (CycleGAN's: an f=4 encoder and two
stride-2 transposed 3x3 convolutions with instance normalisation, a 7x7 output convolution and tanh), whose
up-sampling leaves the checkerboard trace of GAN images; label `gan-recon`, source `reconstruction-gan:<source>`,
so that it is a class of its own beside `ae-recon` when both are passed to `imgscan train`. Two more GAN
up-samplers, each its own class: `--decoder bilinear` (bilinear up-sampling, leaky ReLU and pixel norm, as in
ProGAN / StyleGAN; `bilinear-recon`) and `--decoder shuffle` (sub-pixel convolution, as in super-resolution GANs;
`shuffle-recon`). One family teaches one up-sampler's trace; several teach what GAN up-sampling has in common.

    python tools/reconstruction_pairs.py ../shared/data/kit ../shared/data/photos --out /tmp/recon \
        --exclude-fold 4 --exclude-sources camera:drewnoakes --steps 4000

writes OUT/manifest.csv (the kit's columns: label `ae-recon`, is_ai 1, source `reconstruction:<source>`, the
original's group and fold, so a pair never straddles folds) and OUT/images/ae-recon/*.jpg (JPEG q95 4:2:0 like
the kit), plus OUT/autoencoder.json (settings, loss curve, PSNR on the reconstructed photos). Only real photos
outside the excluded fold and sources are trained on and reconstructed. The images stay where --out puts them:
they are derived from the data sets and must not enter the repository. Pass OUT as one more DATA to
`imgscan train`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from imgscan_core.errors import run_script
from scanner.dataset import derived_name, real_photos, write_manifest
from train.data import open_rgb
from train.data_licence import record_derivation

RECON_LABEL = "ae-recon"
DOWNSAMPLE = 8  # three stride-2 stages


class _Reconstructor(nn.Module):
    """An encoder and a decoder built by the subclass; what it writes is labelled `label`, its source prefixed."""

    downsample: int  # the encoder's total stride: inputs are padded to a multiple of it
    label: str
    source_prefix: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x in [0, 1], height and width multiples of `downsample`."""
        return self.decoder(self.encoder(x * 2 - 1)) * 0.5 + 0.5


class Autoencoder(_Reconstructor):
    """Encoder: three stride-2 convolutions to a 16-channel latent at 1/8 size. Decoder: three stages of
    nearest-neighbour 2x up-sampling and a 3x3 convolution, as in LDM decoders (smaller, to train on 2 cores)."""

    downsample = DOWNSAMPLE
    label, source_prefix = RECON_LABEL, "reconstruction"

    def __init__(self, enc_widths=(32, 64, 128), dec_widths=(128, 64, 32), latent: int = 16):
        super().__init__()
        act = nn.SiLU
        enc = [nn.Conv2d(3, enc_widths[0], 3, padding=1), act()]
        c = enc_widths[0]
        for w in enc_widths:
            enc += [nn.Conv2d(c, w, 3, stride=2, padding=1), act()]
            c = w
        self.encoder = nn.Sequential(*enc, nn.Conv2d(c, latent, 1))
        dec = [nn.Conv2d(latent, dec_widths[0], 3, padding=1), act()]
        c = dec_widths[0]
        for w in dec_widths:
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, w, 3, padding=1), act()]
            c = w
        self.decoder = nn.Sequential(*dec, nn.Conv2d(c, 3, 3, padding=1))


class GanAutoencoder(_Reconstructor):
    """CycleGAN's generator without its residual blocks: 7x7 stem, two stride-2 convolutions (f=4) to a 64-channel
    latent; decoder: two stride-2 transposed 3x3 convolutions (instance norm, ReLU), 7x7 convolution, tanh."""

    downsample = 4
    label, source_prefix = "gan-recon", "reconstruction-gan"

    def __init__(self, widths=(32, 64, 128), latent: int = 64):
        super().__init__()
        norm_act = lambda c: [nn.InstanceNorm2d(c), nn.ReLU()]  # noqa: E731
        enc = [nn.Conv2d(3, widths[0], 7, padding=3), *norm_act(widths[0])]
        for a, b in zip(widths, widths[1:]):
            enc += [nn.Conv2d(a, b, 3, stride=2, padding=1), *norm_act(b)]
        self.encoder = nn.Sequential(*enc, nn.Conv2d(widths[-1], latent, 1))
        dec = [nn.Conv2d(latent, widths[-1], 3, padding=1), *norm_act(widths[-1])]
        for a, b in zip(widths[::-1], widths[::-1][1:]):
            dec += [nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1), *norm_act(b)]
        self.decoder = nn.Sequential(*dec, nn.Conv2d(widths[0], 3, 7, padding=3), nn.Tanh())


class _PixelNorm(nn.Module):
    """ProGAN's / StyleGAN's feature normalisation: each pixel's feature vector scaled to unit mean square."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class _LeakyF4Autoencoder(_Reconstructor):
    """3x3 stem and two stride-2 3x3 convolutions (f=4) with leaky ReLU to a latent; a decoder of two 2x stages
    that subclasses define, so that the families differ only in how they up-sample."""

    downsample = 4

    def __init__(self, widths=(32, 64, 128), latent: int = 64):
        super().__init__()
        enc = [nn.Conv2d(3, widths[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for a, b in zip(widths, widths[1:]):
            enc += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.encoder = nn.Sequential(*enc, nn.Conv2d(widths[-1], latent, 1))
        dec = [nn.Conv2d(latent, widths[-1], 3, padding=1), *self.activation()]
        for a, b in zip(widths[::-1], widths[::-1][1:]):
            dec += self.up_stage(a, b)
        self.decoder = nn.Sequential(*dec, self.to_rgb(widths[0]))

    def activation(self) -> list[nn.Module]:
        return [nn.LeakyReLU(0.2)]


class BilinearGanAutoencoder(_LeakyF4Autoencoder):
    """A progressive/style GAN's synthesis path: two stages of bilinear 2x up-sampling and a 3x3 convolution with
    leaky ReLU and pixel norm, then a 1x1 to-RGB convolution (ProGAN / StyleGAN's layout)."""

    label, source_prefix = "bilinear-recon", "reconstruction-bilinear"

    def activation(self) -> list[nn.Module]:
        return [nn.LeakyReLU(0.2), _PixelNorm()]

    def up_stage(self, a: int, b: int) -> list[nn.Module]:
        return [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(a, b, 3, padding=1),
                *self.activation()]

    def to_rgb(self, c: int) -> nn.Module:
        return nn.Conv2d(c, 3, 1)


class SubPixelAutoencoder(_LeakyF4Autoencoder):
    """A super-resolution GAN's up-sampler (ESRGAN / SRGAN): two stages of a 3x3 convolution to 4x the channels and
    a pixel shuffle (sub-pixel convolution), leaky ReLU, then a 3x3 output convolution."""

    label, source_prefix = "shuffle-recon", "reconstruction-shuffle"

    def up_stage(self, a: int, b: int) -> list[nn.Module]:
        return [nn.Conv2d(a, 4 * b, 3, padding=1), nn.PixelShuffle(2), *self.activation()]

    def to_rgb(self, c: int) -> nn.Module:
        return nn.Conv2d(c, 3, 3, padding=1)


DECODERS = {"ldm": Autoencoder, "gan": GanAutoencoder, "bilinear": BilinearGanAutoencoder,
            "shuffle": SubPixelAutoencoder}


def _loss(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return F.l1_loss(out, x) + F.l1_loss(dx(out), dx(x)) + F.l1_loss(dy(out), dy(x))


def train_autoencoder(images: list[np.ndarray], steps: int, batch: int, crop: int, seed: int,
                      log_every: int = 100, decoder: str = "ldm") -> tuple[_Reconstructor, list[dict]]:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = DECODERS[decoder]()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    curve = []
    for step in range(1, steps + 1):
        xs = []
        for _ in range(batch):
            img = images[rng.randrange(len(images))]
            h, w = img.shape[:2]
            y0, x0 = rng.randint(0, h - crop), rng.randint(0, w - crop)
            patch = img[y0:y0 + crop, x0:x0 + crop]
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
            xs.append(patch)
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255
        loss = _loss(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            curve.append({"step": step, "loss": round(loss.item(), 5)})
            print(f"step {step}/{steps} loss {loss.item():.4f}", flush=True)
    return model.eval(), curve


@torch.no_grad()
def reconstruct(model: _Reconstructor, img: np.ndarray) -> np.ndarray:
    """The whole image through the autoencoder (reflect-padded to a multiple of its down-sampling, then cropped
    back)."""
    h, w = img.shape[:2]
    ph, pw = (-h) % model.downsample, (-w) % model.downsample
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    out = model(x)[..., :h, :w].clamp(0, 1)
    return (out[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="+", help="data sets (manifest folders) whose real photos are used")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--exclude-fold", type=int, action="append", default=[],
                    help="fold(s) neither trained on nor reconstructed (the validation fold)")
    ap.add_argument("--exclude-sources", default="", help="comma-separated sources left out (the unseen source)")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--quality", type=int, default=95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decoder", choices=sorted(DECODERS), default="ldm",
                    help="ldm: a latent-diffusion decoder (label ae-recon); gan: a CycleGAN-style one (gan-recon); "
                         "bilinear: ProGAN/StyleGAN-style (bilinear-recon); shuffle: sub-pixel, as in "
                         "super-resolution GANs (shuffle-recon)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    excluded_sources = {s for s in args.exclude_sources.split(",") if s}

    originals = real_photos(args.data, args.exclude_fold, excluded_sources)
    images = [np.asarray(open_rgb(p)) for p, *_ in originals]
    small = [i for i, im in enumerate(images) if min(im.shape[:2]) < args.crop]
    if small:
        raise SystemExit(f"{len(small)} photo(s) smaller than --crop {args.crop}, e.g. {originals[small[0]][0]}")
    print(f"{len(images)} real photos; training the autoencoder for {args.steps} steps", flush=True)

    t0 = time.time()
    model, curve = train_autoencoder(images, args.steps, args.batch, args.crop, args.seed, decoder=args.decoder)
    train_s = time.time() - t0

    from PIL import Image

    label = model.label
    out_dir = args.out / "images" / label
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, psnrs = [], []
    for (path, source, group, fold), img in zip(originals, images):
        rec = reconstruct(model, img)
        psnrs.append(_psnr(rec, img))
        name = derived_name(path)
        Image.fromarray(rec).save(out_dir / name, quality=args.quality, subsampling="4:2:0")
        rows.append({"path": f"images/{label}/{name}", "label": label, "is_ai": 1,
                     "source": f"{model.source_prefix}:{source}", "group": group, "fold": fold, "upscaled": 0})
    write_manifest(args.out, rows)
    record_derivation(args.out, args.data, "tools/reconstruction_pairs.py")
    (args.out / "autoencoder.json").write_text(json.dumps({
        "data": args.data, "exclude_fold": args.exclude_fold, "exclude_sources": sorted(excluded_sources),
        "steps": args.steps, "batch": args.batch, "crop": args.crop, "seed": args.seed, "quality": args.quality,
        "decoder": args.decoder, "downsample": model.downsample,
        "latent_channels": model.encoder[-1].out_channels, "train_seconds": round(train_s, 1),
        "images": len(rows), "psnr_mean": round(float(np.mean(psnrs)), 2),
        "psnr_min": round(float(np.min(psnrs)), 2), "loss_curve": curve,
    }, indent=1))
    print(f"{len(rows)} reconstructions in {args.out}; PSNR mean {np.mean(psnrs):.2f} dB; "
          f"autoencoder trained in {train_s:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    run_script(main)
