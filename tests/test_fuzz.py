"""Short-form fuzzing (the long form is `python tests/fuzz_decode.py --inputs 100000`, see docs/reliability.md)."""

from __future__ import annotations

import random

from fuzz_decode import mutate, run, seed_files


def test_mutations_are_deterministic_and_varied():
    seeds = seed_files()
    a = [mutate(seeds[0], random.Random(5), seeds) for _ in range(3)]
    b = [mutate(seeds[0], random.Random(5), seeds) for _ in range(3)]
    assert a == b and len({bytes(x) for x in [mutate(s, random.Random(i), seeds) for i, s in enumerate(seeds)]}) == len(seeds)


def test_mutated_images_end_as_a_row_or_an_error_through_decode_and_embed(tiny_model_dir):
    from scanner.embed import Embedder

    embedder = Embedder(tiny_model_dir, device="cpu")
    result = run(n_inputs=600, batch=16, seed=2, size=embedder.size, embed=embedder.embed)
    assert result["inputs"] == 600
    assert result["decoded"] + sum(result["errors"].values()) == 600
    assert result["decoded"] > 0 and result["errors"]  # both outcomes are exercised
