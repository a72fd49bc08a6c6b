"""The index manifest contract: `manifest.json` in the index directory, the one file a reader opens first.

It names the current generation's data files with their sha256, so a reader sees one consistent snapshot
(writers never modify a named file; they write a new generation and swap the manifest atomically), and a
corrupt or tampered file is refused before hnswlib or pyarrow parse it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from imgscan_core.errors import UsageError
from imgscan_core.files import atomic_write_text

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class FileEntry:
    name: str
    sha256: str
    bytes: int


@dataclass
class OpenSetCalibration:
    threshold: float = 2.0  # open_set_score above this -> `unknown`; 2.0 (the maximum) rejects nothing
    method: str = "leave-one-out"
    target_accept: float = 0.95  # share of support images (left out in turn) accepted as known
    k: int = 11
    calibrated_on: int = 0  # how many support items the quantile was taken over


@dataclass
class AiScoreCalibration:
    """The map from the verdict rule's AI evidence to `ai_score`, a probability (scanner/verdict.py).

    `method` "isotonic": piecewise-linear through the knots (`evidence` increasing, `probability` non-decreasing),
    fitted leave-one-out on the support set with real and AI items weighted to equal totals (`prior`
    "balanced": ai_score is P(AI) for a crawl with as many real as generated images). "none" (indexes written
    before calibration existed): ai_score = (evidence + 1) / 2.
    """

    method: str = "none"
    evidence: list[float] = field(default_factory=list)
    probability: list[float] = field(default_factory=list)
    prior: str = "balanced"
    calibrated_on: int = 0


@dataclass
class IndexManifest:
    model_id: str
    model_sha256: str
    dim: int
    generation: int = 0
    space: str = "cosine"
    hnsw: dict[str, int] = field(default_factory=lambda: {"M": 32, "ef_construction": 200, "ef_search": 128})
    counts: dict[str, int] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)  # role ("support", "hnsw") -> file
    open_set: OpenSetCalibration = field(default_factory=OpenSetCalibration)
    ai_score: AiScoreCalibration = field(default_factory=AiScoreCalibration)
    created_at: str = ""
    updated_at: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> "IndexManifest":
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if int(data.get("format_version", 0)) > FORMAT_VERSION:
                raise ValueError(f"format_version {data['format_version']} is newer than this imgscan understands")
            data["files"] = {role: FileEntry(**entry) for role, entry in data.get("files", {}).items()}
            data["open_set"] = OpenSetCalibration(**data.get("open_set", {}))
            data["ai_score"] = AiScoreCalibration(**data.get("ai_score", {}))
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError, KeyError) as exc:
            raise UsageError(f"{where}: corrupt index manifest ({exc})") from None


def read_manifest(directory: Path) -> IndexManifest:
    path = directory / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"{directory}: no support index here (no {MANIFEST_FILE}); create one with "
            f"`imgscan enroll LABEL IMAGES... --index {directory}`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: unreadable index manifest ({exc})") from None
    return IndexManifest.from_json(text, str(path))


def write_manifest(directory: Path, manifest: IndexManifest) -> None:
    atomic_write_text(directory / MANIFEST_FILE, manifest.to_json())
