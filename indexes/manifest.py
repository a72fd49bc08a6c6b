"""The index manifest contract: `manifest.json` in the index directory, the one file a reader opens first.

It names the current generation's data files with their sha256, so a reader sees one consistent snapshot
(writers never modify a named file; they write a new generation and swap the manifest atomically), and a
corrupt or tampered file is refused before hnswlib or pyarrow parse it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from imgscan_core.errors import UsageError
from imgscan_core.files import atomic_write_text

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
# A manifest is read before any data file: every field is checked (types, ranges, names) so that a damaged or
# hostile one is refused in one line, never handed to hnswlib (a wrong dim crashes it) or used to open a path.
DATA_FILE_NAME = re.compile(r"support-g\d{6}\.(parquet|hnsw)\Z")
FILE_ROLES = {"support": ".parquet", "hnsw": ".hnsw"}
SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")
MAX_DIM = 8192
MAX_MANIFEST_BYTES = 1 << 20
MAX_ITEMS = 1 << 40
BALANCED_PRIOR = "balanced"
AI_SHARE_PRIOR = "ai-share"
MIN_AI_SHARE = 0.01


def _check_int(value, what: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{what}: expected an integer in [{lo}, {hi}], got {value!r}")
    return value


def _check_float(value, what: str, lo: float, hi: float) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{what}: expected a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _check_str(value, what: str, max_len: int = 1000) -> str:
    if type(value) is not str or len(value) > max_len:
        raise ValueError(f"{what}: expected a string, got {value!r:.80}")
    return value


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
    fitted leave-one-out on the support set with real and AI items weighted to the totals `prior` names:
    "balanced" (ai_score is P(AI) for a crawl with as many real as generated images) or "ai-share S" (P(AI) for a
    crawl where a share S of the images is generated). `is_ai` is ai_score > 0.5 either way, so a prior of
    "ai-share 0.1" accuses only where the evidence is nine times likelier from a generated image than from a real
    one: the operating point for users to whom a false "AI" costs most. The knots carry the prior, so a reader
    needs nothing else to apply it. "none" (indexes written before calibration existed): ai_score =
    (evidence + 1) / 2.
    """

    method: str = "none"
    evidence: list[float] = field(default_factory=list)
    probability: list[float] = field(default_factory=list)
    prior: str = BALANCED_PRIOR
    calibrated_on: int = 0

    @property
    def ai_share(self) -> float:
        """The share of generated images the calibration assumes (0.5 for "balanced")."""
        return ai_share_of(self.prior)


def prior_for(ai_share: float) -> str:
    """The `prior` text of an ai_score calibration fitted for a crawl with this share of generated images."""
    if not (isinstance(ai_share, (int, float)) and MIN_AI_SHARE <= ai_share <= 1 - MIN_AI_SHARE):
        raise UsageError(f"ai share: expected a number in [{MIN_AI_SHARE}, {1 - MIN_AI_SHARE}], got {ai_share!r}")
    return BALANCED_PRIOR if ai_share == 0.5 else f"{AI_SHARE_PRIOR} {ai_share:g}"


def ai_share_of(prior: str) -> float:
    """Inverse of prior_for; ValueError on any other text."""
    if prior == BALANCED_PRIOR:
        return 0.5
    head, _, value = prior.partition(" ")
    try:
        share = float(value) if head == AI_SHARE_PRIOR else math.nan
    except ValueError:
        share = math.nan
    if not MIN_AI_SHARE <= share <= 1 - MIN_AI_SHARE:
        raise ValueError(f"ai_score.prior: expected 'balanced' or 'ai-share S' with S in [{MIN_AI_SHARE}, "
                         f"{1 - MIN_AI_SHARE}], got {prior!r:.80}")
    return share


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
    rolled_back_from: int = 0  # set by `imgscan index rollback`: the generation that was current before
    restores: int = 0  # ... and the generation whose contents this one restores
    checksum: str = ""  # sha256 of the manifest's other fields (canonical JSON): a damaged manifest is refused

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["checksum"] = _checksum(data)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def validate(self) -> None:
        """Every field's type and range; raises ValueError naming the first bad one."""
        from imgscan_core.labels import check_label

        _check_str(self.model_id, "model_id")
        _check_str(self.model_sha256, "model_sha256")
        _check_int(self.dim, "dim", 1, MAX_DIM)
        _check_int(self.generation, "generation", 0, 1 << 62)
        _check_int(self.rolled_back_from, "rolled_back_from", 0, 1 << 62)
        _check_int(self.restores, "restores", 0, 1 << 62)
        if self.space != "cosine":
            raise ValueError(f"space: expected 'cosine', got {self.space!r:.80}")
        if not isinstance(self.hnsw, dict) or set(self.hnsw) != {"M", "ef_construction", "ef_search"}:
            raise ValueError("hnsw: expected exactly M, ef_construction and ef_search")
        _check_int(self.hnsw["M"], "hnsw.M", 2, 256)
        _check_int(self.hnsw["ef_construction"], "hnsw.ef_construction", 1, 100_000)
        _check_int(self.hnsw["ef_search"], "hnsw.ef_search", 1, 100_000)
        if not isinstance(self.counts, dict):
            raise ValueError("counts: expected an object")
        for label, n in self.counts.items():
            try:
                check_label(label)
            except Exception:
                raise ValueError(f"counts: {label!r:.80} is not a valid class name") from None
            _check_int(n, f"counts[{label}]", 1, MAX_ITEMS)
        if not isinstance(self.files, dict) or (self.files and set(self.files) != set(FILE_ROLES)):
            raise ValueError("files: expected none, or exactly `support` and `hnsw`")
        if bool(self.files) != bool(self.counts):
            raise ValueError("files and counts disagree: an index with items names its data files, an empty one none")
        for role, entry in self.files.items():
            name = _check_str(entry.name, f"files.{role}.name")
            if not DATA_FILE_NAME.match(name) or not name.endswith(FILE_ROLES[role]):
                raise ValueError(f"files.{role}.name: {name!r:.80} is not a data file name of this index")
            if type(entry.sha256) is not str or not SHA256_HEX.match(entry.sha256):
                raise ValueError(f"files.{role}.sha256: expected 64 hex digits")
            _check_int(entry.bytes, f"files.{role}.bytes", 1, 1 << 50)
        o = self.open_set
        _check_float(o.threshold, "open_set.threshold", 0.0, 2.0)
        _check_float(o.target_accept, "open_set.target_accept", 0.01, 1.0)
        _check_int(o.k, "open_set.k", 1, 1000)
        _check_int(o.calibrated_on, "open_set.calibrated_on", 0, MAX_ITEMS)
        _check_str(o.method, "open_set.method")
        a = self.ai_score
        if a.method not in ("none", "isotonic"):
            raise ValueError(f"ai_score.method: expected none or isotonic, got {a.method!r:.80}")
        if not isinstance(a.evidence, list) or not isinstance(a.probability, list) or len(a.evidence) != len(a.probability):
            raise ValueError("ai_score: evidence and probability must be lists of one length")
        if a.method == "isotonic" and not a.evidence:
            raise ValueError("ai_score: an isotonic calibration needs at least one knot")
        xs = [_check_float(x, "ai_score.evidence", -1.0, 1.0) for x in a.evidence]
        ys = [_check_float(y, "ai_score.probability", 0.0, 1.0) for y in a.probability]
        if any(b < a_ for a_, b in zip(xs, xs[1:])) or any(b < a_ for a_, b in zip(ys, ys[1:])):
            raise ValueError("ai_score: evidence and probability must be non-decreasing")
        _check_str(a.prior, "ai_score.prior")
        ai_share_of(a.prior)
        _check_int(a.calibrated_on, "ai_score.calibrated_on", 0, MAX_ITEMS)

    @classmethod
    def from_json(cls, text: str, where: str) -> "IndexManifest":
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            version = _check_int(data.get("format_version", 0), "format_version", 0, 1 << 31)
            if version > FORMAT_VERSION:
                raise ValueError(f"format_version {version} is newer than this imgscan understands")
            stored = data.get("checksum", "")
            if stored and stored != _checksum(data):  # absent: written before manifests carried one
                raise ValueError("checksum does not match its contents (damaged or edited)")
            for name in ("files", "open_set", "ai_score"):
                if not isinstance(data.get(name, {}), dict):
                    raise ValueError(f"{name}: expected an object")
            data["files"] = {role: FileEntry(**entry) if isinstance(entry, dict) else _bad(f"files.{role}")
                             for role, entry in data.get("files", {}).items()}
            data["open_set"] = OpenSetCalibration(**data.get("open_set", {}))
            data["ai_score"] = AiScoreCalibration(**data.get("ai_score", {}))
            known = {f.name for f in dataclasses.fields(cls)}
            manifest = cls(**{k: v for k, v in data.items() if k in known})
            manifest.validate()
            return manifest
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            raise UsageError(f"{where}: corrupt index manifest ({str(exc)[:200]})") from None


def _bad(what: str):
    raise ValueError(f"{what}: expected an object")


def _checksum(data: dict) -> str:
    body = {k: v for k, v in data.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_manifest(directory: Path, name: str = MANIFEST_FILE) -> IndexManifest:
    path = directory / name
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
            raise UsageError(f"{path}: not a regular file")
        if info.st_size > MAX_MANIFEST_BYTES:
            raise UsageError(f"{path}: {info.st_size} bytes, more than any index manifest ({MAX_MANIFEST_BYTES})")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"{directory}: no support index here (no {MANIFEST_FILE}); create one with "
            f"`imgscan enroll LABEL IMAGES... --index {directory}`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: unreadable index manifest ({exc})") from None
    return IndexManifest.from_json(text, str(path))


def write_manifest(directory: Path, manifest: IndexManifest, name: str = MANIFEST_FILE) -> None:
    atomic_write_text(directory / name, manifest.to_json())
