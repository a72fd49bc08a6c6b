"""P x K batch sampler: every batch has positives, rare classes are drawn with replacement."""

from collections import Counter

import pytest

from train.sampling import PKBatchSampler

# 3 classes: 10, 5 and 1 image(s)
LABELS = [0] * 10 + [1] * 5 + [2]


def test_every_batch_is_p_classes_times_k_images():
    sampler = PKBatchSampler(LABELS, classes_per_batch=2, images_per_class=4, batches_per_epoch=50, seed=1)
    assert len(sampler) == 50
    seen_classes = Counter()
    for batch in sampler:
        assert len(batch) == 8
        per_class = Counter(LABELS[i] for i in batch)
        assert len(per_class) == 2 and set(per_class.values()) == {4}  # every image has 3 positives
        seen_classes.update(per_class.keys())
    assert set(seen_classes) == {0, 1, 2}


def test_large_classes_without_replacement_small_with_replacement():
    sampler = PKBatchSampler(LABELS, classes_per_batch=3, images_per_class=4, batches_per_epoch=20, seed=0)
    for batch in sampler:
        by_class = {c: [i for i in batch if LABELS[i] == c] for c in (0, 1, 2)}
        assert len(set(by_class[0])) == 4 and len(set(by_class[1])) == 4  # enough images: all distinct
        assert by_class[2] == [15] * 4  # a single image, repeated


def test_fewer_classes_than_p_uses_all_classes():
    sampler = PKBatchSampler(LABELS, classes_per_batch=8, images_per_class=2, seed=0)
    batch = next(iter(sampler))
    assert sorted(Counter(LABELS[i] for i in batch).values()) == [2, 2, 2]


def test_default_epoch_covers_about_the_dataset_and_is_deterministic():
    sampler = PKBatchSampler(LABELS, classes_per_batch=2, images_per_class=2, seed=3)
    assert len(sampler) == 4  # ceil(16 / 4)
    first = list(sampler)
    assert first == list(PKBatchSampler(LABELS, 2, 2, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_k_must_allow_positives():
    with pytest.raises(ValueError):
        PKBatchSampler(LABELS, classes_per_batch=2, images_per_class=1)


def test_a_fixed_class_is_in_every_batch_with_its_own_count():
    """--real-per-batch: the real class (here 0) fills 6 slots of every batch, the other classes P x K."""
    labels = [0] * 40 + [1] * 5 + [2] * 6 + [3] * 3
    sampler = PKBatchSampler(labels, classes_per_batch=2, images_per_class=2, batches_per_epoch=30, seed=3,
                             fixed_class=0, fixed_images=6)
    others = Counter()
    for batch in sampler:
        per_class = Counter(labels[i] for i in batch)
        assert len(batch) == 10 and per_class[0] == 6 and len({i for i in batch if labels[i] == 0}) == 6
        rest = {c: n for c, n in per_class.items() if c != 0}
        assert len(rest) == 2 and set(rest.values()) == {2}
        others.update(rest)
    assert set(others) == {1, 2, 3}


def test_a_paired_class_brings_real_photos_of_its_own_collection():
    # class 0 is real: indices 0-4 from collection A, 5-9 from B; class 1 (paired with A's photos) and class 2
    # (no real photos of its kind) are generated
    labels = [0] * 10 + [1] * 5 + [2] * 5
    pairs = {1: [0, 1, 2, 3, 4]}
    sampler = PKBatchSampler(labels, classes_per_batch=2, images_per_class=2, batches_per_epoch=60, seed=0,
                             paired=pairs, paired_images=3)
    sizes = Counter()
    for batch in sampler:
        drawn = Counter(labels[i] for i in batch)
        reals = [i for i in batch if labels[i] == 0]
        if 1 in drawn:
            assert drawn[1] == 2 and sum(i in pairs[1] for i in reals) >= 3  # its own collection's photos came
        else:
            assert len(batch) == 4  # no paired class drawn: the plain P x K batch
        sizes[len(batch)] += 1
    assert sizes[7] > 0 and sizes[4] > 0
    plain = PKBatchSampler(labels, classes_per_batch=2, images_per_class=2, batches_per_epoch=60, seed=0)
    off = PKBatchSampler(labels, classes_per_batch=2, images_per_class=2, batches_per_epoch=60, seed=0,
                         paired=pairs, paired_images=0)
    assert list(plain) == list(off)  # off draws exactly the batches of a run without the option


def test_content_matched_reals_pair_classes_with_their_collections_real_photos():
    from pathlib import Path

    from train.data import Sample
    from train.sampling import content_matched_reals

    s = [Sample(Path("a"), "real", 0, "cnn:biggan"), Sample(Path("b"), "biggan", 0, "cnn:biggan"),
         Sample(Path("c"), "real", 0, "imagenet"), Sample(Path("d"), "dalle", 0, "imagen"),
         Sample(Path("e"), "real", 0, "cnn:crn"), Sample(Path("f"), "crn", 0, "cnn:crn"),
         Sample(Path("g"), "real", 1, "cnn:biggan")]
    idx = {"real": 0, "biggan": 1, "crn": 2, "dalle": 3}
    assert content_matched_reals(s, idx) == {1: [0, 6], 2: [4]}  # dalle's collection holds no real photos
