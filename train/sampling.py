"""Class-balanced P x K batches for contrastive training.

A contrastive loss learns nothing from an anchor with no same-class partner in the batch, and the kit is very
unbalanced (1,360 real photos, 20 images for each GAN). Each batch therefore draws P distinct classes uniformly
and K images from each: every image in a batch has K-1 positives, and rare generators are seen as often as
the real class. A class with fewer than K images is drawn with replacement (its duplicates are still valid
positives; augmentation makes the two copies differ).

Uniform classes undersample the one class whose variety is largest: real photos (every camera, subject and
processing) get about 4 of 32 slots in 8 of 14 batches, so over a CPU schedule each real photo is seen about
once while each GAN image is seen dozens of times. `fixed_class` / `fixed_images` put that class in every batch
with more images (`imgscan train --real-per-batch N`); the other slots stay P x K over the remaining classes.

Content-matched negatives (`imgscan train --paired-real N`): some generated classes come with real photos of
their own kind from the same collection (the kit's GAN sets: each fake beside real photos of the same subjects).
Drawn at random, a batch almost never holds both, so a generator can be told from real photos by what its
images show. `paired` maps such a class to its collection's real photos; whenever the class is drawn, N of
them join the batch (as real photos), and only the trace separates the two.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Iterator, Sequence

from imgscan_core.labels import REAL_LABEL


def _draw(rng: random.Random, pool: list[int], k: int) -> list[int]:
    """k items of pool: distinct when it holds enough, else with replacement."""
    return rng.sample(pool, k) if len(pool) >= k else rng.choices(pool, k=k)


def content_matched_reals(samples: list, class_to_idx: dict[str, int]) -> dict[int, list[int]]:
    """Generated class id -> indices of the real photos (train.data.Sample, label `real`) from the collections
    (`source`) its images come from: the kit's GAN sets hold both, the text-to-image renders none. The `paired`
    argument of PKBatchSampler (`imgscan train --paired-real`)."""
    real_by_source: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if s.label == REAL_LABEL and s.source:
            real_by_source.setdefault(s.source, []).append(i)
    sources: dict[str, set[str]] = {}
    for s in samples:
        if s.label != REAL_LABEL and s.source in real_by_source:
            sources.setdefault(s.label, set()).add(s.source)
    return {class_to_idx[c]: sorted(i for src in srcs for i in real_by_source[src]) for c, srcs in sources.items()}


class PKBatchSampler:
    """Yields lists of dataset indices: `classes_per_batch` classes x `images_per_class` images.

    `labels[i]` is the class of dataset item i. One epoch is `batches_per_epoch` batches (default: enough batches
    to show about len(labels) images). Deterministic for a given seed and epoch (`set_epoch`).
    """

    def __init__(
        self,
        labels: Sequence[int],
        classes_per_batch: int,
        images_per_class: int,
        batches_per_epoch: int | None = None,
        seed: int = 0,
        fixed_class: int | None = None,
        fixed_images: int = 0,
        paired: dict[int, list[int]] | None = None,
        paired_images: int = 0,
    ):
        if images_per_class < 2:
            raise ValueError("images_per_class must be >= 2 so that every image has a positive")
        self.by_class: dict[int, list[int]] = defaultdict(list)
        for idx, label in enumerate(labels):
            self.by_class[int(label)].append(idx)
        self.classes = sorted(self.by_class)
        if not self.classes:
            raise ValueError("no images to sample from")
        self.fixed_class = fixed_class if fixed_images and fixed_class in self.by_class else None
        self.fixed_images = fixed_images if self.fixed_class is not None else 0
        if self.fixed_class is not None:
            self.classes = [c for c in self.classes if c != self.fixed_class]
        # With fewer classes than P, use them all: a smaller batch beats repeating classes.
        self.classes_per_batch = min(classes_per_batch, len(self.classes))
        self.paired = {c: list(pool) for c, pool in (paired or {}).items() if pool} if paired_images else {}
        self.paired_images = paired_images if self.paired else 0
        self.images_per_class = images_per_class
        batch = self.classes_per_batch * images_per_class + self.fixed_images
        self.batches_per_epoch = batches_per_epoch or max(1, -(-len(labels) // batch))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        for _ in range(self.batches_per_epoch):
            batch: list[int] = []
            if self.fixed_class is not None:
                batch.extend(_draw(rng, self.by_class[self.fixed_class], self.fixed_images))
            for c in rng.sample(self.classes, self.classes_per_batch):
                batch.extend(_draw(rng, self.by_class[c], self.images_per_class))
                if c in self.paired:
                    batch.extend(_draw(rng, self.paired[c], self.paired_images))
            yield batch
