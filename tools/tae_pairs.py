"""Make content-matched training images offline: real photos (and human-made graphics) through the tiny
autoencoders (TAESD family) of today's latent-diffusion generators, and the same originals re-posted.

Most generators people use now (SD 1.x/2.x, SDXL, SD3, FLUX.1, FLUX.2 and the models built on them) draw their
pixels through a VAE decoder. A real image encoded and decoded by such an autoencoder keeps its content and
gains the decoder's pixel traces ("Aligned Datasets", ICLR 2025; DRCT, ICML 2024), so an embedder trained on
the pair cannot use content (faces, text, a retouched look) as the cue. For every real original outside the
excluded folds and sources:

- through each decoder in `--decoders` (at native pixels, cropped to a multiple of 8): label `tae-<name>`
  (`tae-sd`, `tae-sdxl`, `tae-sd3`, `tae-flux1`, `tae-flux2`), is_ai 1, source `tae-<name>:<source>`;
- re-posted as people post photos (a random 0.5-0.75x, JPEG q70-95): label `real`, source `reposted:<source>`;
- each decoder's image re-posted at the same scale and quality as that original's copy: label `tae-<name>`, under
  images/tae-<name>-reposted/ (`--no-repost-ai` leaves these out). Re-posting only the real side would teach
  "shrunk and recompressed means real", and a re-posted generated image would pass as a photo; with both sides
  re-posted alike, size and compression say nothing.

The decoders are distilled stand-ins (≈1.2M parameters, nearest-neighbour up-sampling), not the generators' full
VAEs: their traces are LDM-decoder-like, which is why each keeps a class of its own. Weights: ../shared/weights/tae
(MIT, madebyollin/taesd), checked against SHA256SUMS before loading; training-time material, never shipped.

    python tools/tae_pairs.py ../shared/data/modern ../shared/data/photos --out ~/.cache/imgscan/tae \
        --exclude-fold 4 --decoders sd,sdxl,sd3,flux1,flux2 --limit 400

writes OUT/manifest.csv (each image keeps its original's group and fold), OUT/images/<label>/*.jpg (JPEG q95
4:2:0 like the kit) and OUT/pairs.json (settings, weight hashes, PSNR per decoder, time). The images are derived
from the data sets and must not enter the repository: keep OUT outside it.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgscan_core.errors import UsageError, run_script
from imgscan_core.files import sha256_file
from imgscan_core.labels import REAL_LABEL
from scanner.dataset import derived_name, real_photos, write_manifest
from train.data import open_rgb
from train.data_licence import record_derivation

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "tae"
# name -> (file stem, latent channels, FLUX.2's pooled branches)
DECODERS = {"sd": ("taesd", 4, False), "sdxl": ("taesdxl", 4, False), "sd3": ("taesd3", 16, False),
            "flux1": ("taef1", 16, False), "flux2": ("taef2", 32, True)}


def _conv(n_in: int, n_out: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class _Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    """conv-ReLU-conv-ReLU-conv plus a skip, then ReLU; FLUX.2's pair adds a pointwise branch before it."""

    def __init__(self, n: int, pooled: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(n, n), nn.ReLU(), _conv(n, n), nn.ReLU(), _conv(n, n))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = (nn.Sequential(nn.Conv2d(n, 4 * n, 1, bias=False), nn.GroupNorm(4, 4 * n), nn.ReLU(),
                                   nn.Conv2d(4 * n, n, 1, bias=False)) if pooled else None)

    def forward(self, x):
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def encoder(latent: int, pooled: bool) -> nn.Sequential:
    layers: list[nn.Module] = [_conv(3, 64), _Block(64)]
    for stage in range(3):
        last = stage == 2
        layers += [_conv(64, 64, stride=2, bias=False)] + [_Block(64, pooled and last) for _ in range(3)]
    return nn.Sequential(*layers, _conv(64, latent))


def decoder(latent: int, pooled: bool) -> nn.Sequential:
    layers: list[nn.Module] = [_Clamp(), _conv(latent, 64), nn.ReLU()]
    for stage in range(3):
        first = stage == 0
        layers += [_Block(64, pooled and first) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]
    return nn.Sequential(*layers, _Block(64), _conv(64, 3))


def _state(path: Path, sums: dict[str, str]) -> dict:
    if sums.get(path.name) != sha256_file(path):
        raise UsageError(f"{path}: sha256 does not match {path.parent / 'SHA256SUMS'}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {k: v.float() for k, v in load_file(path).items()}
    return {k: v.float() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}


def load_pair(name: str, weights: Path = WEIGHTS) -> tuple[nn.Module, nn.Module, dict[str, str]]:
    """(encoder, decoder, {file: sha256}) of one TAE, weights verified and loaded tensors-only."""
    stem, latent, pooled = DECODERS[name]
    sums_file = weights / "SHA256SUMS"
    if not sums_file.is_file():
        raise UsageError(f"{weights}: no SHA256SUMS (the TAE weights live in ../shared/weights/tae)")
    sums = dict(reversed(line.split()) for line in sums_file.read_text().splitlines() if line.strip())
    ext = ".pth" if name == "flux2" else ".safetensors"
    enc, dec = encoder(latent, pooled), decoder(latent, pooled)
    for module, part in ((enc, "encoder"), (dec, "decoder")):
        module.load_state_dict(_state(weights / f"{stem}_{part}{ext}", sums), strict=True)
    return enc.eval(), dec.eval(), {f"{stem}_{p}{ext}": sums[f"{stem}_{p}{ext}"] for p in ("encoder", "decoder")}


@torch.no_grad()
def reconstruct(img: np.ndarray, enc: nn.Module, dec: nn.Module) -> tuple[np.ndarray, float]:
    """uint8 HxWx3 -> (its reconstruction, cropped to a multiple of 8; PSNR in dB against that crop)."""
    h, w = img.shape[0] // 8 * 8, img.shape[1] // 8 * 8
    x = torch.from_numpy(img[:h, :w].copy()).permute(2, 0, 1)[None].float() / 255
    y = dec(enc(x)).clamp(0, 1)
    out = (y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    mse = float(np.mean((out.astype(np.float64) - img[:h, :w]) ** 2))
    return out, 10 * np.log10(255 ** 2 / max(mse, 1e-9))


def repost_setting(rng: np.random.Generator) -> tuple[float, int]:
    """As people post photos: a random 0.5-0.75x and a JPEG quality 70-95."""
    return float(rng.uniform(0.5, 0.75)), int(rng.integers(70, 96))


def reposted(img: np.ndarray, setting: tuple[float, int]) -> bytes:
    """The image shrunk by the setting's scale (bilinear) and saved as JPEG at its quality."""
    from PIL import Image

    scale, quality = setting
    im = Image.fromarray(img)
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="+", help="data sets (manifest folders) whose real photos and graphics are used")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--decoders", default=",".join(DECODERS), help=f"comma-separated, of {', '.join(DECODERS)}")
    ap.add_argument("--exclude-fold", type=int, action="append", default=[], help="fold(s) left out")
    ap.add_argument("--exclude-sources", default="", help="comma-separated sources left out")
    ap.add_argument("--limit", type=int, default=0, help="at most this many originals (a seeded sample; 0: all)")
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quality", type=int, default=95)
    ap.add_argument("--no-repost-ai", action="store_true",
                    help="re-post only the real copies (the sets made before the decoders' images were re-posted too)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from PIL import Image

    names = [n for n in args.decoders.split(",") if n]
    unknown = [n for n in names if n not in DECODERS]
    if unknown:
        raise UsageError(f"--decoders {','.join(unknown)}: not one of {', '.join(DECODERS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    excluded = {s for s in args.exclude_sources.split(",") if s}
    originals = real_photos(args.data, args.exclude_fold, excluded)
    rng = np.random.default_rng(args.seed)
    if args.limit and len(originals) > args.limit:
        originals = [originals[i] for i in sorted(rng.choice(len(originals), args.limit, replace=False))]
    pairs = {n: load_pair(n, args.weights) for n in names}
    t0 = time.time()
    rows, psnr = [], {n: [] for n in names}
    folders = [f"tae-{n}" for n in names] + [REAL_LABEL] + ([] if args.no_repost_ai else [f"tae-{n}-reposted" for n in names])
    for folder in folders:
        (args.out / "images" / folder).mkdir(parents=True, exist_ok=True)
    for count, (path, source, group, fold) in enumerate(originals, 1):
        img = np.asarray(open_rgb(path))
        if min(img.shape[:2]) < 64:
            continue
        name = derived_name(path)
        setting = repost_setting(rng)
        for n, (enc, dec, _) in pairs.items():
            out, db = reconstruct(img, enc, dec)
            psnr[n].append(db)
            Image.fromarray(out).save(args.out / "images" / f"tae-{n}" / name, quality=args.quality, subsampling="4:2:0")
            row = {"path": f"images/tae-{n}/{name}", "label": f"tae-{n}", "is_ai": 1, "source": f"tae-{n}:{source}",
                   "group": group, "fold": fold, "upscaled": 0}
            rows.append(row)
            if not args.no_repost_ai:
                (args.out / "images" / f"tae-{n}-reposted" / name).write_bytes(reposted(out, setting))
                rows.append({**row, "path": f"images/tae-{n}-reposted/{name}"})
        (args.out / "images" / REAL_LABEL / name).write_bytes(reposted(img, setting))
        rows.append({"path": f"images/{REAL_LABEL}/{name}", "label": REAL_LABEL, "is_ai": 0,
                     "source": f"reposted:{source}", "group": group, "fold": fold, "upscaled": 0})
        if count % 50 == 0:
            print(f"{count}/{len(originals)} originals, {time.time() - t0:.0f} s", flush=True)
    write_manifest(args.out, rows)
    record_derivation(args.out, args.data, "tools/tae_pairs.py")
    (args.out / "pairs.json").write_text(json.dumps({
        "data": args.data, "exclude_fold": args.exclude_fold, "exclude_sources": sorted(excluded),
        "decoders": names, "weights_sha256": {f: s for n in names for f, s in pairs[n][2].items()},
        "originals": len(originals), "limit": args.limit, "seed": args.seed, "quality": args.quality,
        "repost_ai": not args.no_repost_ai,
        "psnr_db_mean": {n: round(float(np.mean(v)), 2) for n, v in psnr.items() if v},
        "seconds": round(time.time() - t0, 1),
    }, indent=1))
    print(f"{len(originals)} originals x {len(names)} decoders in {args.out} in {time.time() - t0:.0f} s; PSNR "
          + ", ".join(f"{n} {np.mean(v):.1f} dB" for n, v in psnr.items() if v), flush=True)
    return 0


if __name__ == "__main__":
    run_script(main)
