"""The local engine: this machine's threads feed batches (scanner.feed) to one BatchJudge in this process."""

from __future__ import annotations

from pathlib import Path

from scanner.config import ScanConfig
from scanner.embed import Embedder, resolve_device
from scanner.engines import EngineResult, ScanJob
from scanner.feed import LocalFeeder
from scanner.judge import BatchJudge
from scanner.writer import JournalOutput


class LocalEngine:
    output_class = JournalOutput

    def __init__(self, config: ScanConfig, model_dir: Path | None = None, embedder: Embedder | None = None):
        e = config.embed
        self.embedder = embedder or Embedder(model_dir, device=resolve_device(e.device), precision=e.precision,
                                             runtime=e.runtime, views=e.views)
        self.card = self.embedder.card  # verified when the embedder loaded it
        self.precision, self.runtime = self.embedder.precision, self.embedder.runtime

    def run(self, job: ScanJob, output: JournalOutput, progress) -> EngineResult:
        config = job.config
        result = EngineResult()
        with BatchJudge(self.embedder, job.support, config.k, config.decode, config.embed.batch_size,
                        config.min_detail) as judge:
            feeder = LocalFeeder(config.roots, config.read, config.embed.batch_size, judge.decode, done=job.done,
                                 known=job.known, queue_batches=config.queue_batches)
            for decoded in feeder:
                batch = judge.judge(decoded)
                output.write([batch])
                result.scanned += batch.num_rows
                progress.advance(batch.num_rows, batch.num_rows - batch.column("error").null_count)
            result.skipped_known = feeder.skipped_known
        return result
