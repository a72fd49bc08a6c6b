"""Short-form fuzzing (the long form is `python tests/fuzz_decode.py --inputs 100000`, see docs/reliability.md)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from fuzz_decode import mutate, seed_files

HERE = Path(__file__).parent


def test_mutations_are_deterministic_and_varied():
    seeds = seed_files()
    a = [mutate(seeds[0], random.Random(5), seeds) for _ in range(3)]
    b = [mutate(seeds[0], random.Random(5), seeds) for _ in range(3)]
    assert a == b and len({bytes(x) for x in [mutate(s, random.Random(i), seeds) for i, s in enumerate(seeds)]}) == len(seeds)


def _fuzz_in_a_child(*args: str) -> dict:
    """tests/fuzz_decode.py in a process of its own: DALI fails there on some inputs, and a process where it
    failed does not run it again (the test process must not be one)."""
    done = subprocess.run([sys.executable, str(HERE / "fuzz_decode.py"), *args], capture_output=True, text=True,
                          timeout=600, cwd=HERE.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def test_mutated_images_end_as_a_row_or_an_error_through_decode_and_embed(tiny_model_dir):
    result = _fuzz_in_a_child("--inputs", "600", "--batch", "16", "--seed", "2", "--model", str(tiny_model_dir))
    assert result["inputs"] == 600
    assert result["decoded"] + sum(result["errors"].values()) == 600
    assert result["decoded"] > 0 and result["errors"]  # both outcomes are exercised
    assert result["dali_failed_after"] is not None  # DALI failed on some input, and the run lived on without it


def test_hypothesis_mutations_decode_to_pixels_or_an_error(tiny_model_dir):
    assert _fuzz_in_a_child("--hypothesis", "300", "--model", str(tiny_model_dir))["passed"]
