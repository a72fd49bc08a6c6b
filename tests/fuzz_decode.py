"""Mutation fuzzing of the read -> decode -> embed stages, in-process (no isolation, the harsher setting).

DALI is not run again in a process after its first failure (scanner.decode.DaliImageDecoder): the report says
after how many inputs that happened (`dali_failed_after`); from then on the run fuzzes the Pillow path and the
sniff. The tests run this file in a child process for that reason.

Seeds are small valid JPEG, PNG, WebP and GIF files; each input is a seed mutated by byte flips, truncation,
insertion, deletion, chunk duplication or a header spliced from another format. Every input must end as
exactly one of: an embedding row, or an `error` string, with no exception escaping and no hang.

Short form: `tests/test_fuzz.py` (part of the default test run). Long form:

    python tests/fuzz_decode.py --inputs 100000 --batch 32 --seed 1 --model MODEL_DIR --report docs/fuzz-run.json
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image


def seed_files() -> list[bytes]:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    seeds = []
    for fmt, kw in (("JPEG", {"quality": 90}), ("JPEG", {"progressive": True}), ("PNG", {}), ("WEBP", {}),
                    ("GIF", {}), ("PNG", {"mode": "RGBA"}), ("BMP", {}), ("TIFF", {})):
        buf = io.BytesIO()
        src = img.convert(kw.pop("mode")) if "mode" in kw else img
        src.save(buf, fmt, **kw)
        seeds.append(buf.getvalue())
    return seeds


def apply_ops(data: bytes, ops: list[tuple[int, int, bytes]], seeds: list[bytes]) -> bytes:
    """The same mutations as `mutate`, driven by explicit (op, position, payload) triples: what hypothesis
    draws and shrinks."""
    b = bytearray(data)
    for op, pos, payload in ops:
        at = pos % (len(b) + 1)
        if op == 0 and b:
            for j, byte in enumerate(payload[:8] or b"\x00"):
                b[(at + j) % len(b)] = byte
        elif op == 1:
            del b[at:]
        elif op == 2:
            b[at:at] = payload
        elif op == 3:
            del b[at:at + 1 + len(payload) % 32]
        elif op == 4 and b:
            b[at:at] = b[at:at + 4 + len(payload) * 4]
        elif op == 5:
            other = seeds[pos % len(seeds)]
            cut = 2 + len(payload) % min(63, len(other) - 1)
            b[:cut] = other[:cut]
        elif op == 6 and len(b) > 8:
            b[at % (len(b) - 4):at % (len(b) - 4) + 4] = (payload + b"\xff\xff\xff\xff")[:4]
    return bytes(b)


def mutate(data: bytes, rnd: random.Random, seeds: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(7)
        if op == 0 and b:  # flip bytes
            for _ in range(rnd.randint(1, 8)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
        elif op == 1 and b:  # truncate
            del b[rnd.randrange(len(b)):]
        elif op == 2:  # insert random bytes
            pos = rnd.randrange(len(b) + 1)
            b[pos:pos] = rnd.randbytes(rnd.randint(1, 64))
        elif op == 3 and len(b) > 2:  # delete a run
            pos = rnd.randrange(len(b) - 1)
            del b[pos:pos + rnd.randint(1, 32)]
        elif op == 4 and len(b) > 8:  # duplicate a chunk
            pos = rnd.randrange(len(b) - 4)
            b[pos:pos] = b[pos:pos + rnd.randint(4, 256)]
        elif op == 5:  # splice another format's header
            other = rnd.choice(seeds)
            cut = rnd.randint(2, min(64, len(other)))
            b[:cut] = other[:cut]
        elif op == 6 and len(b) > 24:  # overwrite a likely size field with a huge value
            pos = rnd.randrange(4, min(len(b) - 4, 64))
            b[pos:pos + 4] = rnd.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
    return bytes(b)


def run(n_inputs: int, batch: int, seed: int, size: int = 32, embed=None) -> dict:
    """Fuzz n_inputs; return counts. `embed` maps uint8 NHWC -> [m, dim] (a real model in the tests)."""
    from scanner.decode import ImageDecoder, ViewSpec, dali_failed_in_process

    rnd = random.Random(seed)
    dali_failed_after = None
    seeds = seed_files()
    decoder = ImageDecoder(ViewSpec(size), batch, device="cpu", max_pixels=4_000_000)
    outcomes: Counter = Counter()
    slowest = 0.0
    started = time.monotonic()
    done = 0
    while done < n_inputs:
        datas = [mutate(rnd.choice(seeds), rnd, seeds) for _ in range(min(batch, n_inputs - done))]
        t0 = time.monotonic()
        decoded = decoder.decode(datas)
        slowest = max(slowest, time.monotonic() - t0)
        ok = sum(e is None for e in decoded.errors)
        assert decoded.pixels.shape[0] == ok, "every decoded image has exactly one row of pixels"
        if embed is not None and ok:
            emb = embed(decoded.pixels)
            assert emb.shape[0] == ok and np.isfinite(emb).all()
        for err in decoded.errors:
            outcomes["decoded" if err is None else err.split(" (")[0].split(":")[0] + ": " + err.split(":", 1)[1].split("(")[0].strip()[:40]] += 1
        if dali_failed_after is None and dali_failed_in_process():
            dali_failed_after = done
        done += len(datas)
    return {
        "inputs": done, "seconds": round(time.monotonic() - started, 1), "slowest_batch_s": round(slowest, 3),
        "decoded": outcomes.pop("decoded", 0), "errors": dict(outcomes.most_common()),
        "dali_failed_after": dali_failed_after,
    }


def hypothesis_property(model_dir: Path, examples: int) -> None:
    """Hypothesis draws (and shrinks) the same mutations as `mutate`; each mutated file is decoded next to a good
    image that must still decode, and whatever decodes is embedded. Raises on the first counterexample."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from scanner.decode import ImageDecoder, ViewSpec
    from scanner.embed import Embedder

    seeds = seed_files()
    embedder = Embedder(model_dir, device="cpu")
    decoder = ImageDecoder(ViewSpec(embedder.size), 4, device="cpu", max_pixels=4_000_000)

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(seed=st.integers(0, len(seeds) - 1),
           ops=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 1 << 16), st.binary(max_size=64)),
                        min_size=1, max_size=4))
    def decodes_to_pixels_or_an_error(seed, ops):
        data = apply_ops(seeds[seed], ops, seeds)
        batch = decoder.decode([data, seeds[0]])
        assert batch.errors[1] is None
        assert (batch.errors[0] is None) == (batch.pixels.shape[0] == 2)
        assert batch.errors[0] is None or batch.errors[0].startswith("decode: ")
        emb = embedder.embed(batch.pixels)
        assert emb.shape == (batch.pixels.shape[0], 128) and np.isfinite(emb).all()

    decodes_to_pixels_or_an_error()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--report", type=Path)
    ap.add_argument("--model", type=Path, help="embed every decoded input with this model directory")
    ap.add_argument("--hypothesis", type=int, metavar="EXAMPLES",
                    help="instead: hypothesis draws this many mutations, each decoded beside a good image (needs --model)")
    args = ap.parse_args()
    if args.hypothesis:
        hypothesis_property(args.model, args.hypothesis)
        print(json.dumps({"hypothesis_examples": args.hypothesis, "passed": True}))
        return
    embed, size = None, 32
    if args.model:
        from scanner.embed import Embedder

        embedder = Embedder(args.model, device="cpu")
        embed, size = embedder.embed, embedder.size
    result = run(args.inputs, args.batch, args.seed, size=size, embed=embed)
    result.update({"command": " ".join(["python", *sys.argv]), "seed": args.seed,
                   "model": str(args.model) if args.model else None, "input_size": size})
    text = json.dumps(result, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")


if __name__ == "__main__":
    main()
