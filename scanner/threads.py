"""How many CPU threads each stage of a scan gets, from the cores this process may use.

On a machine with few cores the stages compete: the decode child process, the reader threads, the embedder's
threads and hnswlib's search threads. On 2 AVX2 cores (docs/benchmarks.md, "Decode stage and end to end in steady
state") the embedder costs 39 ms of CPU per 256-px file (5-view model) and decoding 0.8, so the embedder gets
every core; the decoder one DALI thread in its child process (two above 4 cores); the k-NN search one thread (a
scan's batch of 64 queries is a fraction of a millisecond of search; more threads would only take cores from the
embedder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask: a container's or taskset's limit, not the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadBudget:
    embed: int  # OpenVINO INFERENCE_NUM_THREADS, or torch's intra-op threads on CPU
    decode: int  # DALI CPU threads of one decoder
    search: int  # hnswlib threads per k-NN query batch


def thread_budget(cpus: int | None = None) -> ThreadBudget:
    cpus = cpus or usable_cpus()
    return ThreadBudget(embed=cpus, decode=1 if cpus <= 4 else 2, search=1 if cpus <= 4 else 2)
