"""The few-shot protocol: which images are enrolled (support) and which are judged (queries).

Data: a folder holding `manifest.csv` (columns path,label and optionally is_ai,source,group,fold; paths relative
to the folder), a manifest CSV itself, or a folder with one sub-folder per class; or several of these, judged as
one data set (each keeps its folds; groups are prefixed with the data set's position so none is shared). Without a `group` column every
image is its own group; without `is_ai`, every class but `real` is AI; without `fold`, folds are not known.

Split rules (one split per shots value N, and per fold with --folds):
- Support images are chosen by *group* (images sharing a prompt or a photo): a group is either on the support
  side or on the query side, never both, across every class. Images of a support group that are not needed
  (their class already has its N, or their class is one of the --unknown classes) are left out of both sides
  (`excluded`), so no prompt or photo is seen on both sides.
- Each enrolled class gets min(N, floor(class size / 2)) support images (half a class at most, so that small
  classes keep queries); the last group picked may be split, its surplus excluded.
- Classes named in --unknown are never enrolled; all their images outside support groups are queries, and
  their true label for attribution is `unknown`. With folds, only the query fold's by default; with
  --unknown-every-fold, their images of every fold (outside support groups), as for held-out sources: a class
  the model never trained on has no fold that was seen in training, and the query fold alone may hold a dozen of
  its images, too few for a steady open-set AUROC.
- With folds: the queries of fold f are the images of fold f; support groups are drawn from the other folds
  (folds are assigned per group, so they never share a group).
- Sources named in --holdout-sources (the manifest's `source`, e.g. one camera collection) are never enrolled:
  every image of them is a query, in every fold, keeping its true label. Their real photos called AI are the
  false-positive rate on a real source nobody enrolled (pair it with a model trained with the same
  --holdout-sources, so that no image of it was trained on either).
Groups are drawn in a seeded random order, the class with the largest unmet share of its quota first.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from imgscan_core.errors import UsageError
from imgscan_core.labels import UNKNOWN_LABEL
from scanner.dataset import Dataset

SUPPORT, QUERY, EXCLUDED = "support", "query", "excluded"


@dataclass
class Split:
    shots: int  # requested support images per class
    fold: int | None  # query fold, or None for a single random split
    role: np.ndarray  # object [n]: support / query / excluded
    true_label: np.ndarray  # object [n]: the class, or `unknown` for classes never enrolled
    enrolled: list[str]
    unknown: list[str]
    quota: dict[str, int] = field(default_factory=dict)  # support images wanted per enrolled class
    holdout_sources: list[str] = field(default_factory=list)

    def counts(self, labels: np.ndarray) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for lab in sorted(set(labels.tolist())):
            m = labels == lab
            out[lab] = {r: int(np.sum(m & (self.role == r))) for r in (SUPPORT, QUERY, EXCLUDED)}
        return out


def check_sources(ds: Dataset, names: list[str]) -> None:
    """UsageError unless every name is a `source` of the data."""
    present = set(ds.sources.tolist())
    absent = [h for h in names if h not in present]
    if absent:
        raise UsageError(f"--holdout-sources {','.join(absent)}: no such source in the data "
                         f"(sources: {', '.join(sorted(present - {''})) or 'none'})")


def make_split(ds: Dataset, shots: int, unknown: list[str], seed: int = 0, fold: int | None = None,
               usable: np.ndarray | None = None, holdout_sources: list[str] | None = None,
               unknown_every_fold: bool = False) -> Split:
    """One support/query split (see the module docstring for the rules). Images not `usable` (they could not
    be decoded) are on neither side and do not count towards a class's size."""
    if shots < 1:
        raise UsageError(f"--shots {shots}: must be at least 1")
    classes = ds.classes
    missing = [u for u in unknown if u not in classes]
    if missing:
        raise UsageError(f"--unknown {','.join(missing)}: no such class in the data (classes: {', '.join(classes)})")
    enrolled = [c for c in classes if c not in unknown]
    if not enrolled:
        raise UsageError("every class is --unknown: nothing left to enroll")
    holdout_sources = list(holdout_sources or [])
    check_sources(ds, holdout_sources)
    usable = np.ones(len(ds), dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    held = np.isin(ds.sources, holdout_sources)
    counts = {c: int(np.sum(usable & ~held & (ds.labels == c))) for c in classes}
    quota = {c: min(shots, counts[c] // 2) for c in enrolled}
    rng = np.random.default_rng([seed, 0 if fold is None else fold + 1])  # same order for every N: nested supports
    role = np.full(len(ds), EXCLUDED if fold is not None else QUERY, dtype=object)
    if fold is not None:
        role[ds.folds == fold] = QUERY
        if unknown_every_fold:
            role[np.isin(ds.labels, unknown)] = QUERY  # those sharing a support group are excluded below
    role[held] = QUERY
    role[~usable] = EXCLUDED
    candidates = (ds.folds != fold if fold is not None else np.ones(len(ds), dtype=bool)) & usable & ~held
    # groups that may give support, and each class's groups, in a seeded random order
    members: dict[str, list[int]] = defaultdict(list)
    for i in np.flatnonzero(candidates):
        members[ds.groups[i]].append(int(i))
    group_names = sorted(members)
    rng.shuffle(group_names)
    by_class: dict[str, list[str]] = defaultdict(list)
    for g in group_names:
        for c in sorted({ds.labels[i] for i in members[g]}):
            by_class[c].append(g)
    used: set[str] = set()
    have = {c: 0 for c in enrolled}
    cursor = {c: 0 for c in enrolled}
    while True:
        needy = [c for c in enrolled if 0 < quota[c] and have[c] < quota[c] and cursor[c] < len(by_class[c])]
        if not needy:
            break
        c = max(needy, key=lambda x: ((quota[x] - have[x]) / quota[x], x))
        g = by_class[c][cursor[c]]
        cursor[c] += 1
        if g in used:
            continue
        used.add(g)
        order = list(members[g])
        rng.shuffle(order)
        for i in order:
            lab = ds.labels[i]
            if lab in have and have[lab] < quota[lab]:
                role[i] = SUPPORT
                have[lab] += 1
            else:
                role[i] = EXCLUDED  # same prompt/photo as a support image: on neither side
    true_label = np.where(np.isin(ds.labels, unknown), UNKNOWN_LABEL, ds.labels).astype(object)
    return Split(shots=shots, fold=fold, role=role, true_label=true_label, enrolled=enrolled, unknown=list(unknown),
                 quota=quota, holdout_sources=holdout_sources)


def check_split(ds: Dataset, split: Split) -> None:
    """Invariants every split must hold (used by tests and, cheaply, by every eval run)."""
    sup = split.role == SUPPORT
    qry = split.role == QUERY
    shared = set(ds.groups[sup].tolist()) & set(ds.groups[qry].tolist())
    if shared:
        raise AssertionError(f"groups on both sides: {sorted(shared)[:5]}")
    if np.any(sup & np.isin(ds.labels, split.unknown)):
        raise AssertionError("an --unknown class was enrolled")
    if np.any(sup & np.isin(ds.sources, split.holdout_sources)):
        raise AssertionError("a --holdout-sources image was enrolled")
