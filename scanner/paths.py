"""Where things live by default: the per-user support index (XDG data dir) and the model."""

from __future__ import annotations

import os
from pathlib import Path

INDEX_ENV = "IMGSCAN_INDEX"
MODEL_ENV = "IMGSCAN_MODEL"
PACKAGED_MODEL_DIR = Path(__file__).parent / "default_model"
PACKAGED_INDEX_DIR = Path(__file__).parent / "default_index"


def default_index_dir() -> Path:
    """--index, else $IMGSCAN_INDEX, else $XDG_DATA_HOME/imgscan/index (~/.local/share/imgscan/index)."""
    if os.environ.get(INDEX_ENV):
        return Path(os.environ[INDEX_ENV])
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "imgscan" / "index"


def default_model_dir() -> Path | None:
    """--model, else $IMGSCAN_MODEL, else the model shipped inside the package (if this build has one)."""
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV])
    if (PACKAGED_MODEL_DIR / "model_card.json").is_file():
        return PACKAGED_MODEL_DIR
    return None
