"""benchmarks/modern_candidate.py: the halves partition the protocol, and a half's parts never reach training."""

import argparse
import csv
from pathlib import Path

import pytest

from conftest import load_script

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _args(tmp_path: Path, shared: Path, half: str, index_held_real: bool = False,
          no_repost_ai: bool = False, members: int = 1, aug_camera: float = 0.0) -> argparse.Namespace:
    return argparse.Namespace(half=half, work=tmp_path / "work", shared=shared, threads=2, epochs=30,
                              people_repeat=4, rest_limit=500, real_weight=3.0, aug_camera=aug_camera, ai_share=0.1, seed=0, members=members,
                              device="cpu", index_held_real=index_held_real, no_repost_ai=no_repost_ai)


def test_halves_hold_out_every_family_once():
    mc = load_script("benchmarks/modern_candidate.py")
    held = [f for half in ("A", "B") for f in mc.HALVES[half][0]]
    mp = load_script("benchmarks/modern_proxies.py")
    assert sorted(held) == sorted(mp.FAMILIES)
    assert not set(mc.HALVES["A"][1]) & set(mc.HALVES["B"][1])
    assert mc.HALVES["all"] == ((), ())


@pytest.mark.skipif(not (SHARED / "modern" / "manifest.csv").exists(), reason="needs ../shared/data")
def test_halves_hold_out_every_real_source_once():
    mc = load_script("benchmarks/modern_candidate.py")
    mp = load_script("benchmarks/modern_proxies.py")
    sources = mp.real_sources(mp.load_universe(SHARED / "modern", SHARED / "photos"))  # what the proxies judge
    assert sorted(mc.HALVES["A"][1] + mc.HALVES["B"][1]) == sorted(sources)


def _fake_shared(root: Path) -> Path:
    rows = {"kit": [], "photos": [("real", "0", "", "camera:drewnoakes"), ("real", "0", "", "dreambooth")],
            "modern": [("real", "0", "real", s) for s in ("google+mediapipe", "open-mmlab+mmpose",
                                                          "photoprism+photoprism", "NVlabs+instant-ngp")]
            + [("sd1", "1", "sd1", "civitai")]}
    for name, items in rows.items():
        (root / name).mkdir(parents=True)
        with open(root / name / "manifest.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "is_ai", "family", "source", "group", "fold"])
            for i, (label, is_ai, family, source) in enumerate(items):
                w.writerow([f"images/{i}.jpg", label, is_ai, family, source, f"g{i}", 0])
    return root


def test_a_half_never_trains_on_or_enrolls_what_it_holds_out(tmp_path):
    mc = load_script("benchmarks/modern_candidate.py")
    shared = _fake_shared(tmp_path / "shared")
    families, held = mc.HALVES["B"]
    plan = {name: cmd for name, _, cmd in mc.stages(_args(tmp_path, shared, "B"))}
    assert list(plan) == ["view", "view-train", "tae-people", "tae-rest", "train", "index", "proxies"]

    def value(cmd, option):
        return cmd[cmd.index(option) + 1].split(",")

    for view in ("view", "view-train"):
        assert value(plan[view], "--exclude-families") == list(families)
        assert set(held) <= set(value(plan[view], "--exclude-sources"))
    # people crops made into TAE pairs come only from the people sources this half trains on
    assert "google+mediapipe" not in value(plan["tae-people"], "--exclude-sources")
    assert {"open-mmlab+mmpose", "photoprism+photoprism"} <= set(value(plan["tae-people"], "--exclude-sources"))
    assert set(held) <= set(value(plan["tae-rest"], "--exclude-sources"))
    assert value(plan["view-train"], "--repeat") == [f"{s}=4" for s in sorted(mc.PEOPLE_SOURCES - set(held))]
    # the photos set's held-out source is out of training and of the starter index
    assert value(plan["train"], "--holdout-sources") == ["dreambooth"]
    assert value(plan["index"], "--exclude-sources") == ["dreambooth"]
    assert value(plan["proxies"], "--held-out-families") == list(families)
    assert str(shared / "modern") not in plan["train"]  # trains on the view, never on the whole set
    assert value(plan["train"], "--work-dir") == [str(mc.train_work_dir(tmp_path / "work" / "model"))]  # where resume looks


def test_the_shipping_recipe_holds_nothing_out_and_judges_nothing(tmp_path):
    mc = load_script("benchmarks/modern_candidate.py")
    plan = {name: cmd for name, _, cmd in mc.stages(_args(tmp_path, _fake_shared(tmp_path / "shared"), "all"))}
    assert "proxies" not in plan and "--holdout-sources" not in plan["train"]
    assert "--exclude-families" not in plan["view"]


def test_held_out_real_collections_can_be_support_but_never_training(tmp_path):
    mc = load_script("benchmarks/modern_candidate.py")
    shared = _fake_shared(tmp_path / "shared")
    families, held = mc.HALVES["B"]
    plan = {name: cmd for name, _, cmd in mc.stages(_args(tmp_path, shared, "B", index_held_real=True))}
    assert list(plan) == ["view", "view-train", "tae-people", "tae-rest", "train", "view-held-real", "index", "proxies"]
    view = plan["view-held-real"]
    assert "--real-only" in view and view[view.index("--only-sources") + 1].split(",") == list(held)
    held_real = str(tmp_path / "work" / "held_real")
    assert held_real in plan["index"] and held_real not in plan["train"]
    assert "--exclude-sources" not in plan["index"]  # the proxies drop the judged source's own items


def test_the_autoencoder_sets_re_post_both_sides_unless_told_otherwise(tmp_path):
    mc = load_script("benchmarks/modern_candidate.py")
    shared = _fake_shared(tmp_path / "shared")
    plan = {name: cmd for name, _, cmd in mc.stages(_args(tmp_path, shared, "B"))}
    assert "--no-repost-ai" not in plan["tae-people"] and "--no-repost-ai" not in plan["tae-rest"]
    older = {name: cmd for name, _, cmd in mc.stages(_args(tmp_path, shared, "B", no_repost_ai=True))}
    assert "--no-repost-ai" in older["tae-people"] and "--no-repost-ai" in older["tae-rest"]


def _without_values(cmd: list[str], *options: str) -> list[str]:
    return [c for i, c in enumerate(cmd) if not (i and cmd[i - 1] in options)]


def test_several_seeds_are_judged_as_one_ensemble(tmp_path):
    mc = load_script("benchmarks/modern_candidate.py")
    work = tmp_path / "work"
    plan = {name: cmd for name, _, cmd in mc.stages(_args(tmp_path, _fake_shared(tmp_path / "shared"), "B", members=3))}
    assert list(plan)[4:] == ["train", "train-seed1", "train-seed2", "ensemble", "index", "proxies"]
    members = [work / "model", work / "model_seed1", work / "model_seed2"]
    for name, seed, model in zip(("train", "train-seed1", "train-seed2"), range(3), members):
        cmd = plan[name]
        assert cmd[cmd.index("--seed") + 1] == str(seed) and cmd[cmd.index("--out") + 1] == str(model)
        assert cmd[cmd.index("--work-dir") + 1] == str(mc.train_work_dir(model))  # each resumes its own run
        # the members differ in their seed (and where they are written) only
        assert _without_values(cmd, "--seed", "--out", "--work-dir") == _without_values(
            plan["train"], "--seed", "--out", "--work-dir")
    ensemble = work / "ensemble_x3"
    assert plan["ensemble"][-4:] == [str(ensemble), *map(str, members)]
    for name in ("index", "proxies"):
        cmd = plan[name]
        assert cmd[cmd.index("--model") + 1] == str(ensemble)
    assert plan["index"][plan["index"].index("--out") + 1] == str(work / "index_x3")
    assert plan["proxies"][plan["proxies"].index("--out") + 1] == str(work / "proxies_x3")


def test_camera_augmentation_reaches_every_member_and_the_record(tmp_path):
    mc = load_script("benchmarks/modern_candidate.py")
    shared = _fake_shared(tmp_path / "shared")
    plain = {name: cmd for name, _, cmd in mc.stages(_args(tmp_path, shared, "B", members=2))}
    assert all("--aug-camera" not in cmd for cmd in plain.values())  # off unless asked: the recipe as before
    plan = {name: cmd for name, _, cmd in mc.stages(_args(tmp_path, shared, "B", members=2, aug_camera=0.3))}
    for name in ("train", "train-seed1"):
        assert plan[name][plan[name].index("--aug-camera") + 1] == "0.3"
    trained_on = plan["proxies"][plan["proxies"].index("--trained-on") + 1]
    assert trained_on.endswith("--members 2 --aug-camera 0.3")
