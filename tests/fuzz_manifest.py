"""Index-manifest fuzzing: random mutations of a valid manifest.json, each opened and searched as a scan would.

Each mutation is one of: a value of another JSON type, an extreme or out-of-range number, a hostile file name
(absolute, `../`, /dev/zero, a FIFO, a symlink out of the index), a deleted or an unknown key. With the manifest's
checksum left as written, every change must be refused (exit 2, one line) unless the verdicts stay identical;
with the checksum recomputed (someone who edits it on purpose), nothing may crash, hang or raise anything but
the one-line error.

    python fuzz_manifest.py INDEX_DIR --mutations 1000 --seed 0 --recompute-checksum --report out.json

Runs in its own process (the test runs it as a child): a crash in a native library would end it with a signal.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgscan_core.errors import ImgscanError  # noqa: E402
from indexes import SupportIndex  # noqa: E402
from indexes.manifest import _checksum  # noqa: E402
from scanner.verdict import VerdictRule, decide  # noqa: E402

HOSTILE_NAMES = ["/dev/zero", "../manifest.json", "/etc/passwd", "", ".", "..", "fifo", "link", "support-g000001.hnsw",
                 "support-g999999.parquet", "x" * 5000, "support-g000001.parquet/..", "\x00", "manifest.json"]
NUMBERS = [0, -1, 1, 2, 3, 64, 100, 129, 256, 100_000, 2 ** 31, 2 ** 63, -(2 ** 63), 1e308, -1e308, 0.5, 1.5,
           float("nan"), float("inf"), True, False]
OTHER_TYPES = [None, "", "x", [], {}, [1, 2], {"a": 1}, "128", 3.7]


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, prefix + (i,))


def mutate(doc: dict, rng: random.Random) -> dict:
    doc = copy.deepcopy(doc)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        where = rng.choice([p for p in paths(doc) if p])
        parent = doc
        for key in where[:-1]:
            parent = parent[key]
        key = where[-1]
        kind = rng.random()
        if kind < 0.15 and isinstance(parent, dict):
            del parent[key]
        elif kind < 0.2 and isinstance(parent, dict):
            parent["unexpected_" + str(rng.randint(0, 9))] = rng.choice(NUMBERS + OTHER_TYPES)
        elif kind < 0.45:
            parent[key] = rng.choice(NUMBERS)
        elif kind < 0.65:
            parent[key] = rng.choice(OTHER_TYPES)
        elif kind < 0.85 and (key == "name" or rng.random() < 0.3):
            parent[key] = rng.choice(HOSTILE_NAMES)
        else:
            value = parent[key]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                parent[key] = value * rng.choice([-1, 0, 2, 1000]) + rng.choice([0, 1, -1])
            elif isinstance(value, str):
                parent[key] = value[::-1] if rng.random() < 0.5 else value + "x"
            else:
                parent[key] = rng.choice(NUMBERS + OTHER_TYPES)
    return doc


def judge(index_dir: Path, queries: np.ndarray):
    index = SupportIndex.open(index_dir)
    index.check_model(index.manifest.model_id, "sha-m", 16)
    found = index.search(queries, 11)
    v = decide(found.labels, found.sims, VerdictRule.of(index))
    return v.label.tolist(), np.round(v.ai_score, 6).tolist(), np.round(v.open_set_score, 6).tolist()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("index", type=Path)
    ap.add_argument("--mutations", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recompute-checksum", action="store_true")
    ap.add_argument("--report", type=Path, required=True)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    queries = np.random.default_rng(args.seed).normal(size=(20, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    reference = judge(args.index, queries)
    original = json.loads((args.index / "manifest.json").read_text())
    counts = {"identical": 0, "refused": 0, "changed": 0}
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "index"
        shutil.copytree(args.index, work)
        os.mkfifo(work / "fifo")
        os.symlink("/etc/passwd", work / "link")
        for i in range(args.mutations):
            doc = mutate(original, rng)
            if args.recompute_checksum:
                doc["checksum"] = _checksum(doc)
            text = json.dumps(doc, allow_nan=True)
            (work / "manifest.json").write_text(text)
            try:
                verdicts = judge(work, queries)
            except ImgscanError as exc:
                message = str(exc)
                if "\n" in message or not message:
                    failures.append({"mutation": i, "manifest": text[:2000], "error": f"not one line: {message!r}"})
                counts["refused"] += 1
                continue
            except Exception as exc:  # the defect this fuzz exists to find
                failures.append({"mutation": i, "manifest": text[:2000], "error": f"{type(exc).__name__}: {exc}"})
                continue
            if verdicts == reference:
                counts["identical"] += 1
            else:
                counts["changed"] += 1
                if not args.recompute_checksum:
                    failures.append({"mutation": i, "manifest": text[:2000], "error": "verdicts changed, exit 0"})
    args.report.write_text(json.dumps({"counts": counts, "failures": failures[:20], "n_failures": len(failures)},
                                      indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
