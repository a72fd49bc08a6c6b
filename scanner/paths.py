"""Where things live by default: the per-user support index (XDG data dir) and the model.

A build may ship models, each with a starter support index built with it: the default (scanner/default_model,
scanner/default_index: three seeds of one recipe as one ensemble, three forwards per view) and others that
`--model NAME` names (`PACKAGED_NAMES`; `fast`, one of those seeds alone: half the embedding time, more real
photos called AI). Scanning with no index of the user's own reads the starter index of the model in use in place;
the first `enroll` into the default location copies it there first, so new classes extend it.
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
PACKAGED_FAST_MODEL_DIR = Path(__file__).parent / "fast_model"
PACKAGED_FAST_INDEX_DIR = Path(__file__).parent / "fast_index"
PACKAGED_NAMES = ("default", "fast")


def packaged() -> dict[str, tuple[Path, Path]]:
    """The models this package may ship, by the name `--model` takes: (model dir, its starter index dir)."""
    return {"default": (PACKAGED_MODEL_DIR, PACKAGED_INDEX_DIR), "fast": (PACKAGED_FAST_MODEL_DIR, PACKAGED_FAST_INDEX_DIR)}


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
    """--model (a directory, or the name of a model this package ships when no such directory exists), else the
    default model; a one-line error when there is none."""
    if model is not None:
        name = os.fspath(model)
        if name in PACKAGED_NAMES and not model.exists():
            model_dir = packaged()[name][0]
            if not (model_dir / "model_card.json").is_file():
                raise UsageError(f"--model {name}: this build does not ship that model (nor is there a directory {name})")
            return model_dir
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


def _starter_for(model_sha256: str) -> Path | None:
    """The packaged starter index that holds this model's embeddings (each serves only its own model)."""
    for _, starter in packaged().values():
        if not _has_index(starter):
            continue
        try:
            manifest = json.loads((starter / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if manifest.get("model_sha256") == model_sha256:
            return starter
    return None


def _starter_in_use(index: Path | None, model_sha256: str) -> Path | None:
    """The starter index to use, when no index is named (neither --index nor $IMGSCAN_INDEX: both name the user's
    own index, and an index named but not there yet starts empty), the user's default index does not exist yet,
    and a starter index fits the model in use."""
    if index is None and not os.environ.get(INDEX_ENV) and not _has_index(default_index_dir()):
        return _starter_for(model_sha256)
    return None


def index_dir_for_reading(index: Path | None, model_sha256: str) -> Path:
    """--index, else the user's default index, else (while the user has none) the model's packaged starter index."""
    starter = _starter_in_use(index, model_sha256)
    if starter is not None:
        return starter
    return index if index is not None else default_index_dir()


def index_dir_for_writing(index: Path | None, model_sha256: str) -> Path:
    """--index, else the user's default index, seeded from the packaged starter index on first use (when
    the starter index was built with the model in use)."""
    if index is not None:
        if index.exists() and not index.is_dir():  # refused before any image is embedded
            raise UsageError(f"--index {index}: is a file, not an index directory")
        return index
    user = default_index_dir()
    starter = _starter_in_use(index, model_sha256)
    if starter is not None:
        user.parent.mkdir(parents=True, exist_ok=True)
        staging = user.with_name(user.name + f".seeding-{os.getpid()}")
        shutil.copytree(starter, staging, ignore=shutil.ignore_patterns(".lock"))
        try:
            os.rename(staging, user)  # atomic; if another process seeded it first, keep theirs
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return user
