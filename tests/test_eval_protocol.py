"""The few-shot protocol: support chosen by group, never an --unknown class, half a class at most, folds."""

from __future__ import annotations

import numpy as np
import pytest

from imgscan_core.errors import UsageError
from scanner.evaluation.evaluate import Judged, compute_metrics
from scanner.dataset import Dataset, load_dataset
from scanner.evaluation.protocol import QUERY, SUPPORT, check_split, make_split


def synthetic(n_prompts: int = 12, per: int = 3, n_real: int = 40, n_gan: int = 8) -> Dataset:
    """Two text-to-image classes sharing prompts (groups across classes), a GAN class, real photos."""
    paths, labels, groups, folds = [], [], [], []
    for p in range(n_prompts):
        for cls in ("t2i_a", "t2i_b"):
            for r in range(per):
                paths.append(f"/x/{cls}/{p}_{r}.jpg"); labels.append(cls); groups.append(f"prompt-{p}"); folds.append(p % 5)
    for i in range(n_real):
        paths.append(f"/x/real/{i}.jpg"); labels.append("real"); groups.append(f"photo-{i}"); folds.append(i % 5)
    for i in range(n_gan):
        paths.append(f"/x/gan/{i}.jpg"); labels.append("gan"); groups.append(f"gan-{i}"); folds.append(i % 5)
    labels = np.array(labels, dtype=object)
    return Dataset(root=None, paths=np.array(paths, dtype=object), labels=labels, is_ai=labels != "real",
                   groups=np.array(groups, dtype=object), folds=np.array(folds))


@pytest.mark.parametrize("shots", [1, 4, 10, 100])
@pytest.mark.parametrize("fold", [None, 0, 3])
def test_split_rules(shots, fold):
    ds = synthetic()
    split = make_split(ds, shots, ["t2i_b"], seed=1, fold=fold)
    check_split(ds, split)  # no group on both sides, unknown never enrolled
    sup, qry = split.role == SUPPORT, split.role == QUERY
    counts = ds.counts()
    for c in ("t2i_a", "real", "gan"):
        n_sup = int(np.sum(sup & (ds.labels == c)))
        assert n_sup == min(shots, counts[c] // 2), (c, n_sup)  # exactly the quota: half a class at most
        assert np.sum(qry & (ds.labels == c)) > 0
    assert not np.any(sup & (ds.labels == "t2i_b"))
    assert set(split.true_label[ds.labels == "t2i_b"]) == {"unknown"}
    # groups on the support side hold no query, across classes: t2i_b renders of support prompts are excluded
    support_groups = set(ds.groups[sup])
    assert all(r != QUERY for g, r in zip(ds.groups, split.role) if g in support_groups)
    if fold is not None:
        assert set(ds.folds[qry]) == {fold}
        assert not np.any(sup & (ds.folds == fold))


def test_split_is_seeded_and_nested_over_shots():
    ds = synthetic()
    a = make_split(ds, 5, [], seed=7)
    b = make_split(ds, 5, [], seed=7)
    assert (a.role == b.role).all()
    small, large = make_split(ds, 4, [], seed=7), make_split(ds, 10, [], seed=7)
    # the same group order for every N: real support at 4 shots is inside real support at 10
    real = ds.labels == "real"
    assert set(np.flatnonzero(real & (small.role == SUPPORT))) <= set(np.flatnonzero(real & (large.role == SUPPORT)))


def test_split_refuses_bad_arguments():
    ds = synthetic()
    with pytest.raises(UsageError, match="no such class"):
        make_split(ds, 5, ["nope"])
    with pytest.raises(UsageError, match="nothing left"):
        make_split(ds, 5, ds.classes)


def test_load_manifest_and_class_folders(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.csv").write_text(
        "path,label,is_ai,group,fold\nimages/a.jpg,real,0,g1,0\nimages/b.jpg,sd,1,g1,1\nimages/c.jpg,sd,1,,2\n")
    ds = load_dataset(tmp_path / "m")
    assert ds.labels.tolist() == ["real", "sd", "sd"]
    assert ds.is_ai.tolist() == [False, True, True]
    assert ds.groups.tolist() == ["g1", "g1", "image:images/c.jpg"]
    assert ds.folds.tolist() == [0, 1, 2]
    assert ds.paths[0] == str((tmp_path / "m" / "images" / "a.jpg").resolve())
    for cls in ("real", "gan_x"):
        (tmp_path / "f" / cls).mkdir(parents=True)
        (tmp_path / "f" / cls / "1.png").write_bytes(b"")
        (tmp_path / "f" / cls / "notes.txt").write_text("not an image")
    ds = load_dataset(tmp_path / "f")
    assert ds.labels.tolist() == ["gan_x", "real"]
    assert ds.is_ai.tolist() == [True, False]
    assert (ds.folds == -1).all()
    with pytest.raises(UsageError):
        load_dataset(tmp_path / "missing")


def test_compute_metrics_on_a_hand_made_split():
    """Detection per generator, PRF1 with `unknown`, confusion rows with the unknown class's own name."""
    labels = np.array(["real", "real", "gen_a", "gen_a", "gen_b", "gen_x", "gen_x"], dtype=object)
    ds = Dataset(None, np.array([f"/p{i}" for i in range(7)], dtype=object), labels, labels != "real",
                 np.array([f"g{i}" for i in range(7)], dtype=object), np.full(7, -1))
    split = make_split(ds, 1, ["gen_x"], seed=0)
    split.role[:] = QUERY  # judge every image (the support side does not matter to the metrics)
    q = np.arange(7)
    pred = np.array(["real", "gen_a", "gen_a", "unknown", "gen_b", "unknown", "gen_b"], dtype=object)
    closed = np.array(["real", "gen_a", "gen_a", "gen_b", "gen_b", "gen_a", "gen_b"], dtype=object)
    ai = np.array([0.1, 0.6, 0.9, 0.7, 0.8, 0.9, 0.4], dtype=np.float32)
    osc = np.array([0.1, 0.2, 0.1, 0.5, 0.2, 0.6, 0.3], dtype=np.float32)
    j = Judged("m", split, q, pred, closed, ai > 0.5, ai, osc, 0.45, None, None, None)
    m = compute_metrics(ds, j)
    det = m["detection"]["per_generator"]
    # real vs gen_a: truth [0,0,1,1], is_ai [0,1,1,1] -> acc 3/4 ; scores .1 .6 | .9 .7 -> AUC 1
    assert det["gen_a"]["accuracy"] == pytest.approx(0.75) and det["gen_a"]["auc"] == 1.0
    assert det["gen_a"]["enrolled"] and not det["gen_x"]["enrolled"]
    assert m["detection"]["real_called_ai"] == pytest.approx(0.5)  # real queries' ai_score .1 and .6
    # real vs gen_x: scores .1 .6 | .9 .4 -> pairs (.9>.1, .9>.6, .4>.1, .4<.6) = 3/4
    assert det["gen_x"]["auc"] == pytest.approx(0.75)
    assert m["detection"]["mean_auc"] == pytest.approx((1.0 + 1.0) / 2)  # enrolled generators only
    att = m["attribution"]["per_class"]
    assert att["unknown"]["recall"] == pytest.approx(0.5) and att["unknown"]["precision"] == pytest.approx(0.5)
    assert att["real"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    conf = m["confusion"]
    assert conf["rows"] == ["gen_a", "gen_b", "real", "gen_x"]
    assert conf["columns"] == ["gen_a", "gen_b", "real", "unknown"]
    assert conf["matrix"] == [[1, 0, 0, 1], [0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1]]
    # open set: unknown scores .6 .3 vs known .1 .2 .1 .5 .2: .6 beats all 5, .3 beats 4 of 5 -> 9/10
    assert m["open_set"]["auroc"] == pytest.approx(0.9)
    assert m["open_set"]["unknown_rejected"] == pytest.approx(0.5)
    # one unknown class here, so its own row is the whole: 2 queries, 9/10, one rejected, one called AI (.9 > .5)
    assert m["open_set"]["n_unknown"] == 2
    assert m["open_set"]["per_unknown_class"] == {"gen_x": {"n": 2, "auroc": pytest.approx(0.9),
                                                            "rejected": 0.5, "called_ai": 0.5}}
    # closed set on the 5 known queries: real ok, real->gen_a, gen_a ok, gen_a->gen_b, gen_b ok -> 3/5
    assert m["closed_set_attribution"]["accuracy"] == pytest.approx(3 / 5)
    # calibration over 7 queries, bins of 0.1: (.1: real), (.4: AI), (.6: real), (.7: AI), (.8: AI), (.9, .9: AI)
    # -> |.1-0| + |.4-1| + |.6-0| + |.7-1| + |.8-1| + 2|.9-1| = 2.0 over 7
    assert m["calibration"]["ece"] == pytest.approx(2.0 / 7, abs=1e-6)


def test_commands_say_at_once_when_matplotlib_is_missing(monkeypatch, tmp_path):
    import sys

    from scanner.evaluation.cli import run_eval

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(UsageError, match=r"imgscan\[eval\]"):
        run_eval(tmp_path, tmp_path / "out", model=tmp_path)  # before touching data or model


def _with_sources(ds: Dataset) -> Dataset:
    """Real photos 0-9 come from `camera:held`, the rest from `camera:seen`."""
    sources = np.array(["" if lab != "real" else "camera:seen" for lab in ds.labels], dtype=object)
    real_idx = np.flatnonzero(ds.labels == "real")
    sources[real_idx[:10]] = "camera:held"
    return Dataset(ds.root, ds.paths, ds.labels, ds.is_ai, ds.groups, ds.folds, sources=sources)


@pytest.mark.parametrize("fold", [None, 2])
def test_holdout_sources_are_never_enrolled_and_always_queries(fold):
    ds = _with_sources(synthetic())
    held = ds.sources == "camera:held"
    split = make_split(ds, 10, [], seed=0, fold=fold, holdout_sources=["camera:held"])
    check_split(ds, split)
    assert (split.role[held] == QUERY).all()  # in every fold, not only the query fold
    assert not np.any((split.role == SUPPORT) & held)
    assert np.sum((split.role == SUPPORT) & (ds.labels == "real")) == 10  # the quota comes from the other source
    with pytest.raises(UsageError, match="holdout-sources"):
        make_split(ds, 10, [], holdout_sources=["camera:nowhere"])


def test_open_set_auroc_per_unknown_class_ranks_each_against_the_known_queries_only():
    labels = np.array(["real", "real", "gen_a", "gen_x", "gen_x", "gen_y"], dtype=object)
    ds = Dataset(None, np.array([f"/p{i}" for i in range(6)], dtype=object), labels, labels != "real",
                 np.array([f"g{i}" for i in range(6)], dtype=object), np.full(6, -1))
    split = make_split(ds, 1, ["gen_x", "gen_y"], seed=0)
    split.role[:] = QUERY
    pred = np.array(["real", "real", "gen_a", "unknown", "real", "real"], dtype=object)
    osc = np.array([0.1, 0.3, 0.2, 0.9, 0.8, 0.15], dtype=np.float32)  # gen_y hides among the known queries
    ai = np.array([0.1, 0.2, 0.9, 0.9, 0.2, 0.3], dtype=np.float32)
    j = Judged("m", split, np.arange(6), pred, pred, ai > 0.5, ai, osc, 0.5, None, None, None)
    per = compute_metrics(ds, j)["open_set"]["per_unknown_class"]
    assert per["gen_x"] == {"n": 2, "auroc": 1.0, "rejected": 0.5, "called_ai": 0.5}
    assert per["gen_y"] == {"n": 1, "auroc": pytest.approx(1 / 3), "rejected": 0.0, "called_ai": 0.0}


@pytest.mark.parametrize("unknown", ["gan", "t2i_b"])
def test_unknown_every_fold_judges_every_fold_of_a_never_enrolled_class(unknown):
    ds = synthetic()
    only_fold = make_split(ds, 4, [unknown], seed=0, fold=2)
    every = make_split(ds, 4, [unknown], seed=0, fold=2, unknown_every_fold=True)
    check_split(ds, every)
    is_unknown = ds.labels == unknown
    # the known classes' split is the same: same support, queries still of fold 2 only
    assert (every.role[~is_unknown] == only_fold.role[~is_unknown]).all()
    assert set(ds.folds[(every.role == QUERY) & ~is_unknown]) == {2}
    # the unknown class: every image is a query unless it shares a group with a support image
    support_groups = set(ds.groups[every.role == SUPPORT])
    expected = np.array([g not in support_groups for g in ds.groups[is_unknown]])
    assert ((every.role[is_unknown] == QUERY) == expected).all()
    assert len(set(ds.folds[(every.role == QUERY) & is_unknown])) > 1
    assert np.sum((every.role == QUERY) & is_unknown) > np.sum((only_fold.role == QUERY) & is_unknown)
    if unknown == "t2i_b":  # renders of support prompts stay out
        assert not expected.all()


def test_metrics_report_the_share_of_an_unseen_sources_real_photos_called_ai():
    ds = _with_sources(synthetic())
    split = make_split(ds, 10, [], seed=0, holdout_sources=["camera:held"])
    q = np.flatnonzero(split.role == QUERY)
    held_q = ds.sources[q] == "camera:held"
    ai = np.where(ds.is_ai[q], 0.9, 0.1).astype(np.float32)
    ai[np.flatnonzero(held_q)[:3]] = 0.8  # 3 of the 10 unseen-source photos called AI
    pred = np.where(ai >= 0.5, "gan", ds.labels[q]).astype(object)
    j = Judged("m", split, q, pred, pred, ai > 0.5, ai, np.zeros(q.size, np.float32), 0.5, None, None, None)
    m = compute_metrics(ds, j)
    assert m["holdout_sources"]["per_source"]["camera:held"]["n_real"] == 10
    assert m["holdout_sources"]["real_called_ai"] == pytest.approx(0.3)
    from scanner.evaluation.evaluate import headline

    assert headline(m)["unseen_real_called_ai"] == pytest.approx(0.3)


def test_several_manifests_load_as_one_data_set(tmp_path):
    for name, label, source in (("a", "real", "bsds"), ("b", "real", "camera:x")):
        root = tmp_path / name
        (root / "img").mkdir(parents=True)
        (root / "img" / "0.jpg").write_bytes(b"x")
        (root / "manifest.csv").write_text(f"path,label,source,group,fold\nimg/0.jpg,{label},{source},g0,{1 if name == 'b' else 0}\n")
    ds = load_dataset([tmp_path / "a", tmp_path / "b"])
    assert ds.sources.tolist() == ["bsds", "camera:x"] and ds.folds.tolist() == [0, 1]
    assert ds.groups.tolist() == ["0:g0", "1:g0"]  # the same group name in two data sets is two groups
    assert ds.select(np.array([False, True])).sources.tolist() == ["camera:x"]
