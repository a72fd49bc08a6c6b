"""Evaluation protocol and metadata baseline on the labelled kit (../shared/data/kit; skipped where absent).

Fast: no image is decoded here (the metadata baseline reads headers and file sizes only)."""

from __future__ import annotations


import numpy as np
import pytest

from conftest import KIT_DIR, needs_kit

pytestmark = [needs_kit, pytest.mark.kit]

UNKNOWN = ["glid-3", "gaugan"]


@pytest.fixture(scope="module")
def kit():
    from scanner.dataset import load_dataset

    return load_dataset(KIT_DIR)


def test_kit_splits_hold_the_protocol(kit):
    from scanner.evaluation.protocol import QUERY, SUPPORT, check_split, make_split

    assert len(kit) == 2593 and len(kit.classes) == 16
    counts = kit.counts()
    for shots in (10, 20, 50, 100, 150):
        for fold in (None, 4):
            split = make_split(kit, shots, UNKNOWN, seed=0, fold=fold)
            check_split(kit, split)  # no prompt or photo on both sides; unknown classes never enrolled
            for c in split.enrolled:
                n_sup = int(np.sum((split.role == SUPPORT) & (kit.labels == c)))
                assert n_sup == min(shots, counts[c] // 2), (shots, fold, c)
                assert np.sum((split.role == QUERY) & (kit.labels == c)) > 0, (shots, fold, c)
            if fold is not None:
                assert set(kit.folds[split.role == QUERY].tolist()) == {fold}
    # GAN classes have 20 images: capped at 10 shots
    split = make_split(kit, 150, UNKNOWN)
    assert split.quota["biggan"] == 10 and split.quota["real"] == 150


def test_metadata_baseline_is_near_chance_on_the_kit(kit, tmp_path):
    """Every kit image is a 256x256 JPEG q95: width, height, format and byte count must not tell the classes
    apart. Were they to, a detector could learn the file format instead of the generator."""
    from scanner.evaluation import baselines as B
    from scanner.evaluation.evaluate import Features, Method, run_protocol

    raw = B.metadata_features(kit.paths.tolist())
    assert np.unique(raw[:, 0]).tolist() == [256.0] and np.unique(raw[:, 1]).tolist() == [256.0]
    assert raw[:, 3:].sum(axis=0).tolist()[0] == len(kit)  # all JPEG
    feats = Features(ok=np.ones(len(kit), dtype=bool), sha=np.array([f"{i:032x}" for i in range(len(kit))], dtype=object),
                     errors={}, embeddings=None)
    method = Method("metadata", B.standardise(raw), "euclidean", "metadata-v1")
    result = run_protocol(kit, feats, [method], [50], UNKNOWN, [None], seed=0, k=11, workdir=tmp_path)
    m = result.judged[("metadata", 50, None)].metrics
    n_classes = 14
    assert m["closed_set_attribution"]["macro_f1"] < 2.0 / n_classes  # chance is about 1/14
    assert 0.35 < m["open_set"]["auroc"] < 0.65
    assert m["detection"]["mean_auc"] < 0.7  # byte count carries a little content signal, nothing like a shortcut


@pytest.mark.slow
def test_kit_eval_with_the_shipped_model(tmp_path):
    """The full command on the kit (minutes on a CPU): queries from fold 4, the trained model's validation
    fold; glid-3 and gaugan never enrolled. The embedder must beat the metadata baseline by far."""
    from scanner.evaluation.cli import run_eval
    from scanner.paths import PACKAGED_MODEL_DIR

    if not (PACKAGED_MODEL_DIR / "model_card.json").is_file():
        pytest.skip("this build ships no default model")
    doc = run_eval(KIT_DIR, tmp_path / "eval", model=PACKAGED_MODEL_DIR, shots="10,50", unknown=",".join(UNKNOWN),
                   query_folds="4", device="cpu", use_umap=False)
    assert (tmp_path / "eval" / "report.html").is_file()
    ours, meta = doc["main"]["imgscan"]["headline"], doc["main"]["metadata"]["headline"]
    assert ours["closed_macro_f1"] > meta["closed_macro_f1"] + 0.2
    assert ours["mean_det_auc"] > meta["mean_det_auc"]
