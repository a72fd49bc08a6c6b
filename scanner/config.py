"""The scan configuration: one tree, composed of the parts each stage reads, built once by the CLI.

    ScanConfig
      read     ReadConfig     which files, how many reader threads, size limit, --skip-known
      decode   DecodeConfig   pixel limit, child-process isolation and its timeout
      embed    EmbedConfig    model, device, precision, runtime, views, batch size
      ray      RayConfig      only for --engine ray: cluster address, actors, GPUs per actor, part size

Every engine takes the same ScanConfig; a stage only sees its own part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scanner.decode import DEFAULT_MAX_PIXELS
from scanner.decode_isolated import DEFAULT_TIMEOUT_S
from scanner.detail import DEFAULT_MIN_DETAIL
from scanner.read import DEFAULT_MAX_BYTES
from scanner.walk import FileList

ENGINES = ("local", "ray")
DEFAULT_PART_ROWS = 1024  # --engine ray: files per part (and per actor call), the unit of resume


@dataclass
class ReadConfig:
    all_files: bool = False  # every file, not only image file extensions
    max_bytes: int = DEFAULT_MAX_BYTES
    readers: int = 4  # threads reading and hashing files (per read task on Ray)
    # file bytes held at once between reading and decoding (the local engine): memory follows this, not the
    # sizes of the files a crawl happens to hold. One file larger than this is still read, alone.
    max_inflight_bytes: int = 512 * 1024 * 1024
    skip_known: list[Path] = field(default_factory=list)  # earlier verdict files: their shas get no row
    include: list[str] = field(default_factory=list)  # globs: only files one matches (scanner.walk.pattern_match)
    exclude: list[str] = field(default_factory=list)  # globs: files any matches are left out
    listed: FileList | None = None  # --files-from, streamed after the roots (scanner.walk.listed_files)
    image_column: str = "jpg"  # the image-bytes column of Parquet/Arrow shards (scanner.shards)


@dataclass
class DecodeConfig:
    max_pixels: int = DEFAULT_MAX_PIXELS
    isolate: bool = True  # on CPU, decode in a child process (a decoder crash costs one row)
    timeout_s: float = DEFAULT_TIMEOUT_S  # per image, isolated decoding only
    provenance: bool = True  # read C2PA / XMP / PNG text / EXIF from the bytes before they are dropped


@dataclass
class EmbedConfig:
    model_dir: Path | None = None  # None: $IMGSCAN_MODEL, else the packaged model (scanner.paths)
    device: str = "auto"  # auto, cpu, cuda (on Ray: per worker, CUDA when Ray gave it a GPU)
    precision: str = "auto"
    runtime: str = "auto"  # auto: OpenVINO on CPU where installed, else torch (scanner.embed.resolve_runtime)
    views: int | None = None  # None: the model card's
    batch_size: int = 64


@dataclass
class RayConfig:
    address: str | None = None  # None: a new local Ray; "auto": the cluster this machine belongs to; ray://host:port
    workers: int | None = None  # verdict actors; None: one per GPU, else CPUs // (cpus_per_worker + 1)
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_worker: float = 1.0
    part_rows: int = DEFAULT_PART_ROWS
    # All actors must be up within this time (covers an autoscaler adding GPU nodes), else the run stops.
    actor_start_timeout_s: int = 900


@dataclass
class ScanConfig:
    roots: list[bytes]
    out: Path
    index_dir: Path | None = None  # None: --index's default (scanner.paths.index_dir_for_reading)
    k: int = 11
    min_detail: float = DEFAULT_MIN_DETAIL  # images with less pixel detail are never accused (scanner/verdict.py)
    overwrite: bool = False
    engine: str = "local"
    queue_batches: int = 4  # bounded prefetch between the local engine's threads, in batches
    read: ReadConfig = field(default_factory=ReadConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    ray: RayConfig = field(default_factory=RayConfig)
