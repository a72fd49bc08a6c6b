"""Short-form fuzzing (the long form is `python tests/fuzz_decode.py --inputs 100000`, see docs/reliability.md)."""

from __future__ import annotations

import random

import numpy as np

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_decode import apply_ops, mutate, run, seed_files

SEEDS = seed_files()


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


_DECODER = {}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, len(SEEDS) - 1),
       ops=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 1 << 16), st.binary(max_size=64)), min_size=1, max_size=4))
def test_hypothesis_mutations_decode_to_pixels_or_an_error(seed, ops, tiny_model_dir):
    from scanner.decode import ImageDecoder, ViewSpec
    from scanner.embed import Embedder

    if not _DECODER:
        _DECODER["embedder"] = Embedder(tiny_model_dir, device="cpu")
        _DECODER["decoder"] = ImageDecoder(ViewSpec(32), 4, device="cpu", max_pixels=4_000_000)
    data = apply_ops(SEEDS[seed], ops, SEEDS)
    batch = _DECODER["decoder"].decode([data, SEEDS[0]])  # a good image beside it must not be lost
    assert batch.errors[1] is None
    assert (batch.errors[0] is None) == (batch.pixels.shape[0] == 2)
    assert batch.errors[0] is None or batch.errors[0].startswith("decode: ")
    emb = _DECODER["embedder"].embed(batch.pixels)
    assert emb.shape == (batch.pixels.shape[0], 128) and np.isfinite(emb).all()
