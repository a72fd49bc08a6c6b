"""benchmarks/modern_proxies.py: the protocol on embeddings made here (no ../shared): which images are queries,
what the support holds in each setting, and how the pooled figures add up."""

import numpy as np

from conftest import load_script


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _setup(mp, seed=0):
    rng = np.random.default_rng(seed)
    real_dir, ai_dir, odd_dir = np.eye(8)[0], np.eye(8)[1], np.eye(8)[2]
    rows = []  # (label, is_ai, family, source, fold, direction)
    for i in range(40):
        rows.append(("sdxl-base", True, "sdxl", "gallery", i % 5, ai_dir))
    for i in range(30):  # a family the starter index knows nothing like: it lands near the real photos
        rows.append(("sd1-base", True, "sd1", "gallery", i % 5, real_dir))
    for i in range(30):
        rows.append(("real", False, "real", "cam-a", i % 5, real_dir))
    for i in range(20):  # photos of people that the embedding puts among generated images
        rows.append(("real", False, "real", "open-mmlab+mmpose", i % 5, ai_dir))
    for i in range(10):
        rows.append(("real", False, "graphic", "cam-a", i % 5, odd_dir))
    n = len(rows)
    u = mp.Universe(paths=np.array([f"/x/{i}.jpg" for i in range(n)], dtype=object),
                    labels=np.array([r[0] for r in rows], dtype=object), is_ai=np.array([r[1] for r in rows]),
                    family=np.array([r[2] for r in rows], dtype=object), source=np.array([r[3] for r in rows], dtype=object),
                    fold=np.array([r[4] for r in rows]), group=np.array([f"g{i}" for i in range(n)], dtype=object))
    emb = _unit(np.array([r[5] for r in rows]) + 0.05 * rng.standard_normal((n, 8)))
    starter = _unit(np.concatenate([np.tile(real_dir, (30, 1)), np.tile(ai_dir, (30, 1)), np.tile(odd_dir, (15, 1))])
                    + 0.05 * rng.standard_normal((75, 8)))
    labels = np.array(["real"] * 30 + ["kitgan"] * 30 + ["real"] * 15, dtype=object)
    e = mp.Embedded(emb, emb.copy(), np.full(n, 10.0, np.float32), np.full(n, 10.0, np.float32), starter, labels,
                    np.array([""] * 75, dtype=object))
    return u, e


def test_held_out_families_and_sources_are_judged_as_the_protocol_says():
    mp = load_script("benchmarks/modern_proxies.py")
    u, e = _setup(mp)
    sdxl = mp.family_proxy(u, e, "sdxl")
    assert sdxl["queries"] == 24  # folds 2-4 only: folds 0-1 are the pool that shots are drawn from
    assert sdxl["out_of_box"] == 1.0 and sdxl["shots_50"] == 1.0 and sdxl["shots_50_enrolled"] == 16
    sd1 = mp.family_proxy(u, e, "sd1")
    assert sd1["out_of_box"] == 0.0  # among the real photos: missed, as an unseen family is
    assert sd1["shots_20"] == 0.0  # 12 shots among 45 real items near it cannot outvote them
    # the other families and every real source enrolled, sd1 itself still unseen (had its own images been
    # enrolled, each query would sit among 29 of them and be called AI)
    assert sd1["others_enrolled"] == 0.0
    assert sdxl["others_enrolled"] > 0.0
    cam = mp.source_proxy(u, e, "cam-a")
    assert cam["out_of_box"]["photos"] == {"n": 30, "called_ai": 0.0}
    assert cam["out_of_box"]["graphics"] == {"n": 10, "called_ai": 0.0}
    people = mp.source_proxy(u, e, "open-mmlab+mmpose")
    assert people["people"] and people["out_of_box"]["photos"] == {"n": 20, "called_ai": 1.0}
    # enrolling the other families puts sd1's images, which land among the real photos, next to cam-a's photos:
    # some of them are now called AI (the "enrolling drags real photos along"); its graphics stay real
    assert 0.1 < cam["others_enrolled"]["photos"]["called_ai"] < 0.9
    assert cam["others_enrolled"]["graphics"]["called_ai"] == 0.0


def test_pooled_balanced_accuracy_weights_each_image_once():
    mp = load_script("benchmarks/modern_proxies.py")
    families = {"a": {"queries": 30, "out_of_box": 1.0, "reposted_queries": 30, "out_of_box_reposted": 0.5},
                "b": {"queries": 10, "out_of_box": 0.0, "reposted_queries": 10, "out_of_box_reposted": 0.0}}
    cell = lambda n, x: {"n": n, "called_ai": x}  # noqa: E731
    sources = {"cam": {"people": False, "out_of_box": {"photos": cell(60, 0.1), "graphics": cell(0, None)},
                       "out_of_box_reposted": {"photos": cell(60, 0.0), "graphics": cell(0, None)}},
               "faces": {"people": True, "out_of_box": {"photos": cell(20, 0.5), "graphics": cell(20, 0.25)},
                         "out_of_box_reposted": {"photos": cell(20, 0.0), "graphics": cell(20, 0.0)}}}
    native = mp.pooled(families, sources, reposted=False)
    assert native["ai_caught"] == 0.75  # 30 of 40
    assert native["real_kept"] == 1 - (6 + 10 + 5) / 100
    assert native["people_kept"] == 0.5 and native["graphics_kept"] == 0.75
    assert native["balanced"] == round((0.75 + 0.79) / 2, 4)
    assert mp.pooled(families, sources, reposted=True)["ai_caught"] == 0.375


def test_the_verdicts_are_scans_rule_over_exact_neighbours():
    """judge() == scanner.verdict.decide over the k nearest support items, calibrated leave-one-out."""
    mp = load_script("benchmarks/modern_proxies.py")
    u, e = _setup(mp)
    q = e.clean[:5]
    v = mp.judge(e.starter, e.starter_labels, q, None)
    sims = q @ e.starter.T
    nearest = np.argsort(-sims, axis=1)[:, :mp.K]
    assert all(set(e.starter_labels[nearest[i]]) == {"kitgan"} for i in range(5))
    assert v.is_ai.all() and (v.label != "real").all()


def test_operating_points_rethreshold_the_same_protocol():
    """benchmarks/modern_operating_points.py: at 0.5 it is the protocol as shipped; a stricter threshold never
    calls more images AI; the module's judge is put back afterwards."""
    mp = load_script("benchmarks/modern_proxies.py")
    ops = load_script("benchmarks/modern_operating_points.py")
    ops.mp = mp  # the same module object the sweep patches
    mp.FAMILIES = ("sdxl", "sd1")  # the families _setup makes
    u, e = _setup(mp)
    shipped = mp.judge
    swept = ops.sweep(u, lambda **held_out: e, [0.5, 0.9, 0.999])
    assert mp.judge is shipped
    assert swept["0.5"]["native"] == mp.run_proxies(u, lambda **held_out: e)["native"]
    caught = [swept[t]["native"]["ai_caught"] for t in ("0.5", "0.9", "0.999")]
    kept = [swept[t]["native"]["real_kept"] for t in ("0.5", "0.9", "0.999")]
    assert caught == sorted(caught, reverse=True) and kept == sorted(kept)
    assert caught[-1] < caught[0]  # the threshold does move the verdicts
    priors = ops.sweep(u, lambda **held_out: e, [0.5, 0.1], ai_shares=True)  # the index's prior, the product's rule
    assert priors["0.5"]["native"] == swept["0.5"]["native"]
    assert priors["0.1"]["native"]["real_kept"] >= priors["0.5"]["native"]["real_kept"]
    assert priors["0.1"]["native"]["ai_caught"] <= priors["0.5"]["native"]["ai_caught"]


def test_runs_that_held_out_different_parts_combine_into_one_table():
    """Two trainings of one recipe, each holding out part of the set, judged each on what it held out: combined,
    the table is the one a single model judged on everything would give; nothing may be judged twice."""
    import pytest

    mp = load_script("benchmarks/modern_proxies.py")
    u, e = _setup(mp)
    same = lambda **held_out: e  # noqa: E731
    whole = mp.run_proxies(u, same, families=("sdxl", "sd1"))
    others = tuple(s for s in mp.real_sources(u) if s != "cam-a")
    a = mp.run_proxies(u, same, families=("sdxl",), sources=("cam-a",))
    b = mp.run_proxies(u, same, families=("sd1",), sources=others)
    assert set(a["families"]) == {"sdxl"} and set(a["sources"]) == {"cam-a"}
    assert a["native"]["ai_caught"] == 1.0  # pooled over what run a judged only
    both = mp.combine([a, b])
    for key in ("families", "sources", "native", "reposted"):
        assert both[key] == whole[key]
    assert both["summary"] == mp.summary(whole)
    with pytest.raises(ValueError, match="sdxl"):
        mp.combine([a, a])


def test_a_starter_index_calibrated_for_few_generated_images_accuses_fewer_real_photos():
    """Embedded.ai_share (the starter index's prior) reaches every verdict: the photos that enrolling drags among
    generated images are called AI less often, and a family whose neighbours all agree is still caught."""
    import dataclasses

    mp = load_script("benchmarks/modern_proxies.py")
    u, e = _setup(mp)
    cautious = dataclasses.replace(e, ai_share=0.1)
    balanced_cam, cautious_cam = mp.source_proxy(u, e, "cam-a"), mp.source_proxy(u, cautious, "cam-a")
    assert (cautious_cam["others_enrolled"]["photos"]["called_ai"]
            < balanced_cam["others_enrolled"]["photos"]["called_ai"])
    assert mp.family_proxy(u, cautious, "sdxl")["out_of_box"] == 1.0


def test_a_candidate_is_checked_against_the_baseline_on_every_figure():
    """worse_than lists each family, source and pooled figure where the candidate does worse, and nothing where
    it does as well or better: the shipping rule "beats the shipped model on every modern proxy"."""
    import dataclasses

    mp = load_script("benchmarks/modern_proxies.py")
    u, e = _setup(mp)
    same = lambda **held_out: e  # noqa: E731
    base = mp.run_proxies(u, same, families=("sdxl", "sd1"))
    assert mp.worse_than(base, base) == []
    # a model whose people photos move off the generated images but whose sdxl images move among the real photos
    moved = e.clean.copy()
    people = u.source == "open-mmlab+mmpose"
    sdxl = u.family == "sdxl"
    real_dir, ai_dir = np.eye(8)[0], np.eye(8)[1]
    moved[people | sdxl] = _unit(moved[people | sdxl] - ai_dir + real_dir)
    candidate = mp.run_proxies(u, lambda **held_out: dataclasses.replace(e, clean=moved, reposted=moved),
                               families=("sdxl", "sd1"))
    rows = {r["proxy"]: r for r in mp.worse_than(candidate, base)}
    assert rows["family sdxl out_of_box"]["candidate"] < rows["family sdxl out_of_box"]["base"]
    assert rows["family sdxl out_of_box"]["n"] == 24
    gap = rows["family sdxl out_of_box"]["base"] - rows["family sdxl out_of_box"]["candidate"]
    assert rows["family sdxl out_of_box"]["images"] == round(gap * 24) > 0
    assert "pooled native ai_caught" in rows
    assert not any("open-mmlab+mmpose" in p for p in rows)  # its photos are called AI less now: not a regression
    assert "pooled native people_kept" not in rows
    assert all(r["candidate"] < r["base"] if "family" in p or "pooled" in p else r["candidate"] > r["base"]
               for p, r in rows.items())
    # a run that judged part of the set is compared with the baseline pooled over that part only
    part = mp.run_proxies(u, same, families=("sd1",), sources=("cam-a",))
    assert part["native"]["ai_caught"] < base["native"]["ai_caught"]  # sd1 alone: the family it misses
    assert mp.worse_than(part, base) == []



def test_the_crowded_index_is_compared_again_at_the_baselines_share_of_real_called_ai():
    """The candidate's crowded-index evidence re-thresholded where its real images are called AI no more often
    than the baseline's were: its held-out families caught there, beside the baseline's."""
    mp = load_script("benchmarks/modern_proxies.py")
    u, e = _setup(mp)
    run = mp.run_proxies(u, lambda **held_out: e, families=("sdxl", "sd1"))
    # every crowded verdict carries the evidence it was decided on, one value per query
    assert len(run["families"]["sdxl"]["others_enrolled_evidence"]) == run["families"]["sdxl"]["queries"]
    assert len(run["sources"]["cam-a"]["others_enrolled_evidence"]) == 40  # 30 photos and 10 graphics

    def fam(caught, queries, evidence=None):
        f = {"others_enrolled": caught, "queries": queries}
        return f if evidence is None else {**f, "others_enrolled_evidence": evidence}

    def src(called, n, evidence=None):
        s = {"others_enrolled": {"photos": {"n": n, "called_ai": called}, "graphics": {"n": 0, "called_ai": None}}}
        return s if evidence is None else {**s, "others_enrolled_evidence": evidence}

    base = {"families": {"f1": fam(0.5, 4), "f2": fam(0.0, 4)}, "sources": {"s1": src(0.25, 4), "s2": src(0.25, 4)}}
    # a strict candidate: its own verdicts catch nothing, but its evidence ranks the families above most real images
    cand = {"families": {"f1": fam(0.0, 4, [0.9, 0.8, 0.7, 0.1]), "f2": fam(0.0, 4, [0.6, 0.5, -0.2, -0.3])},
            "sources": {"s1": src(0.0, 4, [0.75, -0.5, -0.6, -0.9]), "s2": src(0.0, 4, [0.4, -0.1, -0.8, -1.0])}}
    m = mp.crowded_at_base_share(cand, base)
    assert m["base_real_called_ai"] == 0.25 and m["base_caught"] == 0.25
    # two of the eight real values may lie above the threshold (0.75, 0.4): -0.1 is the lowest that keeps it so
    assert m["evidence_threshold"] == -0.1 and m["real_called_ai"] == 0.25
    assert m["caught"] == 0.75 and (m["real_images"], m["ai_images"]) == (8, 8)
    # only the parts both runs judged; runs written before the evidence was stored give no figure
    assert mp.crowded_at_base_share({"families": {"f1": cand["families"]["f1"]}, "sources": cand["sources"]},
                                    base)["base_caught"] == 0.5
    assert mp.crowded_at_base_share(base, base) is None
