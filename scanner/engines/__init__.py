"""Engines distribute a scan's batches; each runs scanner.judge.BatchJudge on them and writes through a
scanner.writer.ScanOutput. `local` (threads on this machine) and `ray` (a Ray cluster: docs/ray.md).

An engine class has `output_class` (the ScanOutput it writes), `card` (the verified model card),
`precision` and `runtime` (recorded in the verdict metadata) and `run(job, output, progress) -> EngineResult`. Nothing here imports Ray: it is the
optional extra `pip install 'imgscan[ray]'`, imported by scanner.engines.ray_engine alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from indexes import SupportIndex
from scanner.config import ScanConfig
from scanner.decode import ViewSpec
from scanner.keys import KeySet
from scanner.model import ModelCard


@dataclass
class ScanJob:
    """What an engine is given: the configuration, the verified model and index, and what to skip."""

    config: ScanConfig
    model_dir: Path
    index_dir: Path
    card: ModelCard
    support: SupportIndex
    view_spec: ViewSpec
    done: KeySet
    known: KeySet


@dataclass
class EngineResult:
    scanned: int = 0  # rows written this run
    skipped_known: int = 0
    run_info: dict = field(default_factory=dict)  # recorded by the output (the Ray engine's manifest)


