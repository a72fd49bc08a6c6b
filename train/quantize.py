"""int8 post-training static quantization of a model's embedder with NNCF, for `--precision int8`.

The TorchScript embedder's checked ONNX export (scanner.openvino_runtime) is quantized by NNCF against
calibration images decoded exactly as a scan decodes them (the model's view rule, centre view), and saved as
an OpenVINO IR beside the TorchScript file. The model card gets an `int8` section: the files and their sha256
(checked before every load, scanner.model.verify_int8), what it was calibrated on, and how close its
embeddings are to fp32 on images it was not calibrated on. Quantization changes no weights of the fp32 model:
its id, and every index built with it, stay valid.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from imgscan_core.errors import UsageError
from imgscan_core.files import atomic_path, atomic_write_text, sha256_file
from scanner.model import CARD_FILE, INT8_BIN, INT8_XML, ModelCard, load_model
from train.data import centre_view_pixels


def _split_images(data: list[Path], images: int, exclude_fold: int | None, seed: int) -> tuple[list[str], list[str]]:
    """Calibration paths (never from `exclude_fold`, the fold evaluations query) and up to 256 check paths."""
    from scanner.dataset import load_dataset

    ds = load_dataset(data)
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(ds.folds != exclude_fold) if exclude_fold is not None else np.arange(len(ds))
    calibration = rng.choice(pool, min(images, pool.size), replace=False)
    rest = np.setdiff1d(np.arange(len(ds)), calibration)
    check = rng.choice(rest, min(256, rest.size), replace=False) if rest.size else rest
    return ds.paths[np.sort(calibration)].tolist(), ds.paths[np.sort(check)].tolist()


def quantize_model(model_dir: Path, data: list[Path], images: int = 300, exclude_fold: int | None = None,
                   seed: int = 0, log=print) -> ModelCard:
    """Write MODEL_DIR/embedder_int8.{xml,bin} and the card's int8 section; returns the new card."""
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        raise UsageError(f"imgscan quantize needs {exc.name}: pip install nncf openvino") from None
    from scanner.openvino_runtime import cached_onnx, openvino_core

    card, module = load_model(model_dir)
    core = openvino_core()
    fp32 = core.read_model(str(cached_onnx(module, card.weights_sha256, card.input_size, core)))
    calibration_paths, check_paths = _split_images(data, images, exclude_fold, seed)
    calibration = centre_view_pixels(calibration_paths, card)
    log(f"calibrating on {calibration.shape[0]} images")
    quantized = nncf.quantize(fp32, nncf.Dataset([calibration[i:i + 1] for i in range(calibration.shape[0])]),
                              subset_size=calibration.shape[0], preset=nncf.QuantizationPreset.MIXED)
    accuracy = _cosine_to_fp32(core, fp32, quantized, centre_view_pixels(check_paths, card)) if check_paths else {}
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=model_dir) as tmp:
        ov.save_model(quantized, str(Path(tmp) / INT8_XML))  # writes the .bin beside it
        for name in (INT8_BIN, INT8_XML):  # the weights before the graph that names them
            with atomic_path(Path(model_dir) / name) as target:
                shutil.copyfile(Path(tmp) / name, target)
    card = dataclasses.replace(card, int8={
        "xml": INT8_XML, "xml_sha256": sha256_file(Path(model_dir) / INT8_XML),
        "bin": INT8_BIN, "bin_sha256": sha256_file(Path(model_dir) / INT8_BIN),
        "tool": f"nncf {nncf.__version__} quantize (preset mixed), openvino {ov.__version__}",
        "calibration": f"{calibration.shape[0]} images of {', '.join(os.fspath(d) for d in data)}"
                       + (f", none from fold {exclude_fold}" if exclude_fold is not None else "") + f", seed {seed}",
        "accuracy": accuracy,
    })
    atomic_write_text(Path(model_dir) / CARD_FILE, card.to_json())
    log(f"wrote {model_dir}/{INT8_XML}; cosine to fp32 on {accuracy.get('n', 0)} other images: "
        f"min {accuracy.get('cosine_min')}, mean {accuracy.get('cosine_mean')}")
    return card


def _cosine_to_fp32(core, fp32, quantized, pixels: np.ndarray) -> dict:
    def embed(model):
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        out = np.concatenate([request.infer({0: pixels[i:i + 32]})[compiled.output(0)] for i in range(0, len(pixels), 32)])
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    cos = (embed(fp32) * embed(quantized)).sum(axis=1)
    return {"n": int(len(cos)), "cosine_min": round(float(cos.min()), 5), "cosine_mean": round(float(cos.mean()), 5),
            "measured_on": "images not used for calibration, centre view, f32 inference"}
