"""Where things live by default: the per-user support index (XDG data dir) and the model.

A build may ship a default model and a starter support index built with it (scanner/default_model,
scanner/default_index). Scanning with no index of the user's own reads the starter index in place; the
first `enroll` into the default location copies it there first, so new classes extend it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from imgscan_core.errors import UsageError

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


def model_dir_or_default(model: Path | None) -> Path:
    """--model, else the default model; a one-line error when there is none."""
    if model is not None:
        return model
    found = default_model_dir()
    if found is None:
        raise UsageError(
            "no model: this build ships no default model. Pass --model DIR (a directory with embedder.pt and "
            f"model_card.json, e.g. one made by `imgscan train`), or set ${MODEL_ENV}"
        )
    return found


def _has_index(directory: Path) -> bool:
    return (directory / "manifest.json").is_file()


def _starter_fits(model_sha256: str) -> bool:
    """The starter index holds the packaged model's embeddings: it only serves that model."""
    if not _has_index(PACKAGED_INDEX_DIR):
        return False
    try:
        manifest = json.loads((PACKAGED_INDEX_DIR / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("model_sha256") == model_sha256


def _starter_in_use(index: Path | None, model_sha256: str) -> bool:
    """No index named (neither --index nor $IMGSCAN_INDEX: both name the user's own index, and an index named
    but not there yet starts empty), the user's default index does not exist yet, and the starter index fits
    the model in use."""
    return (index is None and not os.environ.get(INDEX_ENV) and not _has_index(default_index_dir())
            and _starter_fits(model_sha256))


def index_dir_for_reading(index: Path | None, model_sha256: str) -> Path:
    """--index, else the user's default index, else (while the user has none) the packaged starter index."""
    if _starter_in_use(index, model_sha256):
        return PACKAGED_INDEX_DIR
    return index if index is not None else default_index_dir()


def index_dir_for_writing(index: Path | None, model_sha256: str) -> Path:
    """--index, else the user's default index, seeded from the packaged starter index on first use (when
    the starter index was built with the model in use)."""
    if index is not None:
        if index.exists() and not index.is_dir():  # refused before any image is embedded
            raise UsageError(f"--index {index}: is a file, not an index directory")
        return index
    user = default_index_dir()
    if _starter_in_use(index, model_sha256):
        user.parent.mkdir(parents=True, exist_ok=True)
        staging = user.with_name(user.name + f".seeding-{os.getpid()}")
        shutil.copytree(PACKAGED_INDEX_DIR, staging, ignore=shutil.ignore_patterns(".lock"))
        try:
            os.rename(staging, user)  # atomic; if another process seeded it first, keep theirs
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return user
