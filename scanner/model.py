"""The model contract: a model is a directory holding a TorchScript embedder and a JSON model card.

    MODEL_DIR/
      model_card.json   what the model is, how to feed it, what it was trained on, sha256 of the weights
      embedder.pt       TorchScript module: uint8 RGB NCHW [B,3,S,S] -> float [B,dim], L2-normalised

Normalisation lives inside the TorchScript module so every caller (scan, enroll, eval, bench) feeds the same
uint8 tensors and cannot get the mean/std wrong; the card repeats it for people and for checks.

Loading never unpickles Python objects: `torch.jit.load` reads TorchScript's own archive format, and the card
is JSON. The weights file is verified against the card's sha256 before it is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgscan_core.errors import UsageError
from imgscan_core.files import atomic_path, atomic_write_text, sha256_file

CARD_FILE = "model_card.json"
WEIGHTS_FILE = "embedder.pt"
CARD_FORMAT_VERSION = 1


@dataclass
class ModelCard:
    name: str
    version: str
    input_size: int  # square side S the embedder expects
    embedding_dim: int
    weights_sha256: str = ""
    # sha256 over the parameter and buffer tensors (names, dtypes, shapes, bytes; sorted by name). The TorchScript
    # file also holds a random serialization id and generated code, so two exports of identical weights differ in
    # weights_sha256; this one is equal exactly when the weights are (how a retraining is checked: training.md).
    tensors_sha256: str = ""
    # How an arbitrary image becomes the SxS input(s): scanner.decode.ViewSpec reads this ("resize": "native" keeps
    # pixels and only upscales images under S; "shorter_side", older cards, scales the shorter side to S; "views").
    preprocessing: dict[str, Any] = field(
        default_factory=lambda: {"resize": "native", "crop": "views", "views": 1, "interpolation": "bilinear_antialias"}
    )
    # Applied inside the TorchScript module to x/255; stated here for people and checks.
    normalization: dict[str, Any] = field(default_factory=lambda: {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    backbone: str = ""
    loss: str = ""
    training_data: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    licence: str = ""
    notes: str = ""
    # An optional int8 OpenVINO version of the same embedder (`--precision int8`, made by `imgscan quantize`):
    # {"xml": name, "xml_sha256", "bin": name, "bin_sha256", "calibration": what it was calibrated on,
    #  "accuracy": figures against fp32}. Empty when the model has none.
    int8: dict[str, Any] = field(default_factory=dict)
    format_version: int = CARD_FORMAT_VERSION

    @property
    def model_id(self) -> str:
        """Stable identifier written into indexes and verdicts: name, version and the weights' hash."""
        return f"{self.name}@{self.version}+{self.weights_sha256[:12]}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model card") -> "ModelCard":
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in ("name", "version", "input_size", "embedding_dim", "weights_sha256") if n not in data]
        if missing:
            raise UsageError(f"{where}: missing field(s) {', '.join(missing)}")
        if int(data.get("format_version", 1)) > CARD_FORMAT_VERSION:
            raise UsageError(f"{where}: format_version {data['format_version']} is newer than this imgscan understands")
        for name, low, high in (("input_size", 8, 4096), ("embedding_dim", 1, 65536)):
            value = data[name]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise UsageError(f"{where}: {name} {value!r} is not an integer in {low}..{high}")
        return cls(**{k: v for k, v in data.items() if k in known})



def read_card(model_dir: str | os.PathLike) -> ModelCard:
    card_path = Path(model_dir) / CARD_FILE
    if not card_path.is_file():
        raise UsageError(f"{model_dir} is not a model directory: no {CARD_FILE}")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{card_path}: unreadable model card ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{card_path}: model card must be a JSON object")
    return ModelCard.from_dict(data, where=str(card_path))


def verify_model_dir(model_dir: str | os.PathLike) -> ModelCard:
    """Read the card and check the weights file against its sha256; raise UsageError naming the bad file."""
    card = read_card(model_dir)
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise UsageError(f"{weights}: model weights missing")
    actual = sha256_file(weights)
    if actual != card.weights_sha256:
        raise UsageError(
            f"{weights}: sha256 {actual[:16]}... does not match the model card ({card.weights_sha256[:16]}...); "
            "the file is corrupt or was replaced"
        )
    return card


INT8_XML, INT8_BIN = "embedder_int8.xml", "embedder_int8.bin"


def verify_int8(model_dir: str | os.PathLike, card: ModelCard) -> Path:
    """The int8 OpenVINO files of a model, checked against the card's sha256; returns the .xml path."""
    if not card.int8:
        raise UsageError(f"model {card.model_id} has no int8 version: make one with `imgscan quantize "
                         f"{model_dir} DATA`, or use --precision fp32")
    for role in ("xml", "bin"):
        path = Path(model_dir) / str(card.int8.get(role, ""))
        if not path.is_file() or sha256_file(path) != card.int8.get(f"{role}_sha256"):
            raise UsageError(f"{path}: int8 model file missing or its sha256 differs from the model card")
    return Path(model_dir) / card.int8["xml"]


def load_model(model_dir: str | os.PathLike, device: str = "cpu"):
    """Verify and load a model directory. Returns (card, torch.jit.ScriptModule in eval mode on `device`)."""
    import torch

    card = verify_model_dir(model_dir)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch marks TorchScript deprecated; it is our format
            module = torch.jit.load(str(Path(model_dir) / WEIGHTS_FILE), map_location=device)
    except Exception as exc:  # TorchScript raises RuntimeError subclasses with multi-line messages
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{Path(model_dir) / WEIGHTS_FILE}: not a loadable TorchScript embedder ({first})") from None
    module.eval()
    # Nothing downstream trains. Weights that still ask for gradients (those a training run left unfrozen) make the
    # TorchScript executor build a differentiable plan on a first call with grad mode on, which a later call under
    # torch.inference_mode() then fails on ("Inference tensors cannot be saved for backward").
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return card, module


def tensors_sha256(module) -> str:
    """Hash of a module's weights alone (see ModelCard.tensors_sha256)."""

    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_model_dir(script_module, card: ModelCard, model_dir: str | os.PathLike) -> ModelCard:
    """Write a TorchScript module and its card; the card's weights_sha256 is filled in here.

    Files are written under temporary names and renamed, so a reader never sees a card that does not match
    its weights.
    """
    import torch

    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Weights first, card last: a card never names weights that are not in place yet.
    with atomic_path(out / WEIGHTS_FILE) as tmp_weights:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(script_module, str(tmp_weights))
        card = dataclasses.replace(card, weights_sha256=sha256_file(tmp_weights),
                                   tensors_sha256=tensors_sha256(script_module))
    atomic_write_text(out / CARD_FILE, card.to_json())
    return card
