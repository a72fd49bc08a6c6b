"""Core-seconds per image of the decode and embed stages, to see how much two cores can overlap.

    python benchmarks/stage_cpu.py IMAGES_DIR [--model M] [--batch-size 32]

Runs the scan's own feeder and decode stage (scanner.feed, scanner.judge) over IMAGES_DIR, isolated and
in-process, and then the default embedder over the decoded batches; prints CPU seconds (this process's threads,
plus the isolated decoder child's from /proc) per image for each. Linux only (reads /proc/PID/stat).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def _child_cpu_s(decoder) -> float:
    child = getattr(decoder, "_child", None)
    if child is None:
        return 0.0
    fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", type=Path)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    from scanner.config import DecodeConfig, ReadConfig
    from scanner.embed import Embedder
    from scanner.feed import LocalFeeder
    from scanner.judge import BatchEmbedder
    from scanner.paths import model_dir_or_default

    embedder = Embedder(model_dir_or_default(args.model), device="cpu")
    for isolate in (True, False):
        with BatchEmbedder(embedder, DecodeConfig(isolate=isolate), args.batch_size) as stages:
            cpu0, wall0, n, decoded = time.process_time(), time.perf_counter(), 0, []
            for batch in LocalFeeder([os.fsencode(args.images)], ReadConfig(), args.batch_size, stages.decode):
                n += len(batch.reads)
                decoded.append(batch.decoded)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0 + _child_cpu_s(stages.decoder)
        print(f"decode isolate={isolate}: {n} files, {wall:.2f} s wall, {cpu:.2f} s CPU, {cpu / n:.4f} core-s/image")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for d in decoded:
            embedder.embed_batch(d)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        print(f"embed {embedder.runtime}/{embedder.precision}/{embedder.threads} threads: {wall:.2f} s wall, "
              f"{cpu:.2f} s CPU, {cpu / n:.4f} core-s/image")


if __name__ == "__main__":
    main()
