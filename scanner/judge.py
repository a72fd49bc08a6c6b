"""The per-batch work every engine runs: read files -> decode -> embed -> search -> verdict -> record batch.

`BatchEmbedder` owns the decode stage (a child process on CPU, in-process on CUDA) and the embedder;
`BatchJudge` adds the support index and the verdict rule and turns a batch into rows of VERDICT_SCHEMA.
Engines only distribute batches: the local engine decodes on a feeder thread (`decode`) while the main
thread judges the previous batch (`judge`); a Ray actor calls both in turn (`__call__`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from scanner.config import DecodeConfig, ReadConfig
from scanner.decode import DecodedBatch, ImageDecoder, ViewSpec
from scanner.decode_isolated import IsolatedImageDecoder
from scanner.detail import DEFAULT_MIN_DETAIL, item_detail
from scanner.embed import Embedder
from scanner.feed import LocalFeeder
from scanner.near_duplicate import first_view_hashes
from scanner.read import ReadResult
from scanner.schema import VERDICT_SCHEMA, display_path
from scanner.threads import thread_budget
from scanner.verdict import Matches, VerdictRule, apply_matches, decide, find_matches


def make_decoder(spec: ViewSpec, batch_size: int, device: str, config: DecodeConfig):
    """The decode stage: in a child process on CPU (a crashing or hanging decoder costs one row), in-process
    on CUDA (nvJPEG needs this process's CUDA context) or when isolation is turned off."""
    if config.isolate and device != "cuda":
        return IsolatedImageDecoder(spec, batch_size, max_pixels=config.max_pixels, timeout_s=config.timeout_s,
                                    threads=thread_budget().decode)
    return ImageDecoder(spec, batch_size, device=device, max_pixels=config.max_pixels,
                        num_threads=thread_budget().decode)


@dataclass
class DecodedReads:
    """A batch after decoding: the read results (their bytes dropped) and the decoded pixels."""

    reads: list[ReadResult]
    decoded: DecodedBatch
    provenance: list[list[dict] | None] | None = None  # per read file; None when not read (--no-provenance)
    detail: np.ndarray | None = None  # pixel detail per decoded file (scanner/detail.py); set by BatchJudge.decode

    def ok_rows(self) -> list[int]:
        """Items whose read and decode succeeded, in order: the rows of the batch's embeddings."""
        return [i for i, r in enumerate(self.reads) if r.error is None and self.decoded.errors[i] is None]

    def error(self, i: int) -> str | None:
        return self.reads[i].error or self.decoded.errors[i]


class BatchEmbedder:
    """Read files -> decoded views -> one embedding per decodable file. Close it (or use `with`) to stop the
    decoder's child process."""

    def __init__(self, embedder: Embedder, decode: DecodeConfig, batch_size: int):
        self.embedder = embedder
        self.decoder = make_decoder(embedder.view_spec, batch_size, embedder.device, decode)
        self.read_provenance = decode.provenance

    def decode(self, reads: list[ReadResult]) -> DecodedReads:
        # Provenance is read where the pixels are decoded: in the isolated child on CPU, so a metadata parser that
        # hangs or crashes on a hostile file costs that file's row under the same timeout.
        decoded = self.decoder.decode([r.data for r in reads], provenance=self.read_provenance)
        provenance = decoded.provenance
        for r in reads:
            r.data = None  # the bytes are no longer needed: keep memory flat
        return DecodedReads(reads, decoded, provenance)

    def embed(self, batch: DecodedReads) -> np.ndarray:
        return self.embedder.embed_batch(batch.decoded)

    def close(self) -> None:
        close = getattr(self.decoder, "close", None)
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class BatchJudge(BatchEmbedder):
    """Read files -> verdict rows: embeddings searched in the support index, the k neighbours' votes decided
    by scanner.verdict."""

    def __init__(self, embedder: Embedder, index, k: int, decode: DecodeConfig, batch_size: int,
                 min_detail: float = DEFAULT_MIN_DETAIL):
        super().__init__(embedder, decode, batch_size)
        self.index, self.k, self.min_detail = index, k, min_detail

    def decode(self, reads: list[ReadResult]) -> DecodedReads:
        batch = super().decode(reads)
        # Measured beside decoding (the local engine's feeder thread), not on the thread that embeds and judges.
        batch.detail = item_detail(batch.decoded)
        return batch

    def judge(self, batch: DecodedReads) -> pa.RecordBatch:
        embeddings = self.embed(batch)
        neighbors = self.index.search(embeddings, self.k)
        verdicts = decide(neighbors.labels, neighbors.sims, VerdictRule.of(self.index, self.min_detail), batch.detail)
        ok = batch.ok_rows()
        hashes = first_view_hashes(batch.decoded)
        matches = find_matches(self.index, [batch.reads[i].sha for i in ok], hashes, embeddings)
        verdicts = apply_matches(verdicts, matches, self.index.table.label,
                                 np.min(neighbors.sims, axis=1, initial=np.inf))
        return verdict_rows(batch, neighbors, verdicts, matches, self.index, self.embedder.model_id)

    def __call__(self, reads: list[ReadResult]) -> pa.RecordBatch:
        return self.judge(self.decode(reads))


def verdict_rows(batch: DecodedReads, neighbors, verdicts, matches: Matches, index, model_id: str) -> pa.RecordBatch:
    """One VERDICT_SCHEMA row per read file: the verdict where it was judged, else its `error`."""
    reads, decoded = batch.reads, batch.decoded
    n = len(reads)
    col = {name: [None] * n for name in VERDICT_SCHEMA.names}
    now = datetime.now(timezone.utc)
    for i, r in enumerate(reads):
        col["path"][i], col["path_bytes"][i] = display_path(r.path)
        col["sha"][i], col["bytes"][i] = r.sha, r.nbytes
        col["key"][i], col["source_url"][i] = r.key, r.source_url
        col["error"][i] = batch.error(i)
        col["model"][i], col["index"][i], col["scanned_at"][i] = model_id, index.name, now
        if decoded.sizes[i] is not None:
            col["width"][i], col["height"][i] = decoded.sizes[i]
        if batch.provenance is not None:
            col["provenance"][i] = batch.provenance[i]
    for row, i in enumerate(batch.ok_rows()):
        col["label"][i] = verdicts.label[row]
        col["closed_set_label"][i] = verdicts.closed_set_label[row]
        col["is_ai"][i] = bool(verdicts.is_ai[row])
        if matches.rows[row] >= 0:
            col["match"][i] = {"kind": matches.kinds[row], "support_id": index.table.support_id[matches.rows[row]],
                               "similarity": float(matches.similarity[row])}
        col["ai_score"][i] = float(verdicts.ai_score[row])
        col["detail"][i] = float(batch.detail[row])
        col["open_set_score"][i] = float(verdicts.open_set_score[row])
        col["open_set_threshold"][i] = float(index.threshold)
        col["neighbors"][i] = [
            {"label": lab, "support_id": sid, "similarity": float(s)}
            for lab, sid, s in zip(neighbors.labels[row], neighbors.support_ids[row], neighbors.sims[row])
        ]
    arrays = [pa.array(col[f.name], type=f.type) for f in VERDICT_SCHEMA]
    return pa.RecordBatch.from_arrays(arrays, schema=VERDICT_SCHEMA)


def embedded_batches(roots: list[bytes], embedder: Embedder, read: ReadConfig | None = None,
                     decode: DecodeConfig | None = None, batch_size: int = 64, queue_batches: int = 4):
    """Walk, read, decode and embed: yield (reads, decoded, embeddings) per batch, through the scan's own stages
    (enroll, eval and the starter index see images exactly as scan does). Rows of `embeddings` follow the items
    whose read and decode succeeded."""
    with BatchEmbedder(embedder, decode or DecodeConfig(), batch_size) as stages:
        for batch in LocalFeeder(roots, read or ReadConfig(), batch_size, stages.decode, queue_batches=queue_batches):
            yield batch.reads, batch.decoded, stages.embed(batch)
