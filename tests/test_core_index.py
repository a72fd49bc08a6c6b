"""Support index rules, verdict arithmetic, the journal's torn tail, and the walk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import GREEN, RED, write_class_dir
from indexes import SupportIndex
from scanner.enroll import enroll_embeddings, remove_label
from scanner.cli import app
from imgscan_core.errors import UsageError
from scanner.verdict import VerdictRule, decide

runner = CliRunner()


def _unit(rows):
    a = np.asarray(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


# -- verdict arithmetic, by hand -------------------------------------------------------------------------------

def test_decide_weighted_vote_ai_score_and_open_set_score():
    labels = np.array([["real", "gen_a", "gen_a", "real"]], dtype=object)
    sims = np.array([[0.9, 0.8, 0.7, -0.2]])
    v = decide(labels, sims)
    # weights: real 0.9 (+0 for the negative similarity), gen_a 0.8 + 0.7 = 1.5: evidence (1.5 - 0.9) / 4
    assert v.ai_evidence[0] == pytest.approx(0.15)
    assert v.ai_score[0] == pytest.approx((0.15 + 1) / 2)  # an index without calibration: (e + 1) / 2
    assert bool(v.is_ai[0]) and v.closed_set_label[0] == "gen_a"
    assert v.open_set_score[0] == pytest.approx(1 - (0.8 + 0.7) / 2)
    assert decide(labels, sims, VerdictRule(threshold=0.2)).label[0] == "unknown"
    assert decide(labels, sims, VerdictRule(threshold=0.3)).label[0] == "gen_a"


def test_decide_tie_goes_to_the_nearest_and_padding_carries_no_vote():
    v = decide(np.array([["gen_b", "real", ""]], dtype=object), np.array([[0.5, 0.5, 0.99]]))
    assert v.ai_score[0] == pytest.approx(0.5) and v.label[0] == "real"  # no evidence either way accuses nobody
    v = decide(np.array([["gen_b", "gen_c", "real"]], dtype=object), np.array([[0.5, 0.5, 0.2]]))
    assert v.label[0] == "gen_b"  # tied generators: the one holding the nearest neighbour
    v = decide(np.array([["real", "real"]], dtype=object), np.array([[-0.1, -0.3]]))
    assert v.ai_score[0] == pytest.approx(0.5)  # no positive evidence either way
    assert v.open_set_score[0] == pytest.approx(1.2)


# -- index rules ------------------------------------------------------------------------------------------------

def test_enroll_dedupes_by_sha_recalibrates_and_searches(tmp_path):
    rng = np.random.default_rng(0)
    a = _unit(rng.normal([1, 0, 0, 0], 0.05, (30, 4)))
    b = _unit(rng.normal([0, 1, 0, 0], 0.05, (30, 4)))
    shas_a = [f"{i:032x}" for i in range(30)]
    shas_b = [f"{i + 100:032x}" for i in range(30)]
    r = enroll_embeddings(tmp_path, "real", a, shas_a, [f"a{i}" for i in range(30)], "m@1", "sha-m")
    assert r.added == 30 and r.manifest.generation == 1
    r = enroll_embeddings(tmp_path, "gen_b", np.vstack([b, a[:3]]), shas_b + shas_a[:3], [f"b{i}" for i in range(33)], "m@1", "sha-m")
    assert r.added == 30 and [d[1] for d in r.duplicates] == ["real"] * 3  # same image, not enrolled twice
    index = SupportIndex.open(tmp_path)
    assert index.manifest.counts == {"gen_b": 30, "real": 30}
    m = index.manifest
    assert 0 < m.open_set.threshold < 0.05 and m.open_set.calibrated_on == 30  # over the AI items only
    assert m.ai_score.method == "isotonic" and m.ai_score.calibrated_on == 60
    for entry in m.files.values():
        assert (tmp_path / entry.name).stat().st_size == entry.bytes
    found = index.search(_unit([[1, 0.02, 0, 0], [0, 0.3, 1, 0]]), k=11)
    labels = decide(found.labels, found.sims, VerdictRule.of(index)).label
    assert labels[0] == "real" and labels[1] == "unknown"  # the second leans to gen_b but lies far from it
    assert found.labels.shape == (2, 11) and found.support_ids[0, 0] in set(shas_a)
    assert len(set(index.table.support_id)) == 60  # support ids are unique even where shas share a prefix
    # only the current and the previous generation's files are kept
    assert sorted(p.name for p in tmp_path.glob("support-g*")) == [
        "support-g000001.hnsw", "support-g000001.parquet", "support-g000002.hnsw", "support-g000002.parquet"]


def test_enroll_refuses_another_models_embeddings_and_bad_labels(tmp_path):
    e = _unit(np.eye(4)[:2])
    enroll_embeddings(tmp_path, "real", e, ["0" * 32, "1" * 32], ["x", "y"], "m@1", "sha-m")
    with pytest.raises(UsageError, match="different models"):
        enroll_embeddings(tmp_path, "gen", e, ["2" * 32, "3" * 32], ["x", "y"], "other@1", "sha-other")
    for bad in ("unknown", "", "../etc", "a b"):
        with pytest.raises(UsageError):
            enroll_embeddings(tmp_path, bad, e, ["4" * 32, "5" * 32], ["x", "y"], "m@1", "sha-m")


def test_remove_label_rebuilds_and_an_emptied_index_opens(tmp_path):
    rng = np.random.default_rng(1)
    real = _unit(rng.normal(size=(5, 8)))
    enroll_embeddings(tmp_path, "real", real, [f"{i:032x}" for i in range(5)], ["p"] * 5, "m", "s")
    enroll_embeddings(tmp_path, "gen", _unit(rng.normal(size=(4, 8))), [f"{i + 9:032x}" for i in range(4)], ["p"] * 4, "m", "s")
    removed, m = remove_label(tmp_path, "gen")
    assert removed == 4 and m.counts == {"real": 5}
    index = SupportIndex.open(tmp_path)
    # the enrolled vectors are kept once, in the HNSW file, and survive the rebuild exactly
    assert np.allclose(index.vectors(), real, atol=1e-6) and index.vectors([]).shape == (0, 8)
    assert set(index.search(_unit(rng.normal(size=(3, 8))), k=11).labels.ravel()) == {"real"}
    with pytest.raises(UsageError, match="no class 'gen'"):
        remove_label(tmp_path, "gen")
    remove_label(tmp_path, "real")
    assert SupportIndex.open(tmp_path).manifest.total == 0


def test_truncated_data_file_is_refused_before_parsing(tmp_path):
    enroll_embeddings(tmp_path, "real", _unit(np.eye(4)[:3]), [f"{i:032x}" for i in range(3)], ["p"] * 3, "m", "s")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    support = tmp_path / manifest["files"]["support"]["name"]
    support.write_bytes(support.read_bytes()[:-10])
    with pytest.raises(UsageError, match=f"{support.name}: index file is corrupt"):
        SupportIndex.open(tmp_path)


def test_cli_enroll_index_show_and_remove(tmp_path, tiny_model_dir):
    index = tmp_path / "idx"
    reds = write_class_dir(tmp_path / "reds", RED, 8)
    (reds / "broken.jpg").write_bytes(b"\xff\xd8\xff junk")
    common = ["--index", str(index), "--model", str(tiny_model_dir), "--device", "cpu"]
    result = runner.invoke(app, ["enroll", "real", str(reds), *common])
    assert result.exit_code == 0, result.output
    assert "enrolled into class 'real': 8 new; 0 already enrolled; 1 unreadable" in result.output
    assert "unreadable, skipped" in result.output and "broken.jpg" in result.output
    assert "warning: the index holds one class ('real')" in result.output
    result = runner.invoke(app, ["enroll", "real", str(reds), *common])
    assert "0 new; 8 already enrolled (8 as real)" in result.output and "already enrolled as real" in result.output
    runner.invoke(app, ["enroll", "gen_green", str(write_class_dir(tmp_path / "greens", GREEN, 5)), *common])
    result = runner.invoke(app, ["index", "show", "--index", str(index)])
    assert result.exit_code == 0 and "gen_green" in result.output and "open-set threshold" in result.output
    result = runner.invoke(app, ["index", "show", "--index", str(index), "--json"])
    assert json.loads(result.output)["counts"] == {"gen_green": 5, "real": 8}
    result = runner.invoke(app, ["index", "remove", "gen_green", "--index", str(index)])
    assert result.exit_code == 0 and "removed 5" in result.output
    result = runner.invoke(app, ["enroll", "unknown", str(reds), *common])
    assert result.exit_code == 2 and "reserved" in result.output


def test_default_index_location_follows_env(tmp_path, monkeypatch, tiny_model_dir):
    from scanner.paths import default_index_dir

    assert default_index_dir() == tmp_path / "xdg" / "imgscan" / "index"  # XDG_DATA_HOME set by conftest
    monkeypatch.setenv("IMGSCAN_INDEX", str(tmp_path / "env_index"))
    assert default_index_dir() == tmp_path / "env_index"
    reds = write_class_dir(tmp_path / "reds", RED, 3)
    result = runner.invoke(app, ["enroll", "real", str(reds), "--model", str(tiny_model_dir), "--device", "cpu"])
    assert result.exit_code == 0 and (tmp_path / "env_index" / "manifest.json").is_file()


# -- journal and walk ---------------------------------------------------------------------------------------------

def test_journal_with_torn_tail_keeps_every_complete_batch(tmp_path):
    from scanner.schema import VERDICT_SCHEMA
    from scanner.writer import JournalOutput, read_journal

    journal = JournalOutput(tmp_path / "v.parquet")
    assert len(journal.open({"run": 1})) == 0
    def batch(paths):
        cols = {f.name: [None] * len(paths) for f in VERDICT_SCHEMA}
        cols["path"] = paths
        return pa.RecordBatch.from_pydict(cols, schema=VERDICT_SCHEMA)
    journal.write([batch(["a", "b"])])
    path = journal.journals()[0]
    after_first = path.stat().st_size
    journal.write([batch(["c"])])
    journal.close()
    journal.unlock()  # as the end of a run does
    path.write_bytes(path.read_bytes()[: after_first + 40])  # a kill in the middle of the second batch
    assert [b.num_rows for b in read_journal(path)] == [2]
    resumed = JournalOutput(tmp_path / "v.parquet")
    assert len(resumed.open({"run": 1})) == 2
    with pytest.raises(UsageError, match="another imgscan scan"):  # while that run holds the output
        JournalOutput(tmp_path / "v.parquet").open({"run": 1})
    resumed.unlock()
    with pytest.raises(UsageError, match="other settings"):
        JournalOutput(tmp_path / "v.parquet").open({"run": 2})


def test_walk_streams_sorted_images_without_following_dir_links(tmp_path):
    from scanner.walk import walk_files

    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    for p in ("a/2.JPG", "a/1.png", "b/x.webp", "b/readme.txt", "top.gif"):
        (tmp_path / p).write_bytes(b"")
    os.symlink(tmp_path, tmp_path / "b" / "loop")
    found = [Path(os.fsdecode(p)).relative_to(tmp_path).as_posix() for p in walk_files([os.fsencode(tmp_path)])]
    assert found == ["top.gif", "a/1.png", "a/2.JPG", "b/x.webp"]
    everything = list(walk_files([os.fsencode(tmp_path)], all_files=True))
    assert len(everything) == 5


def test_packaged_starter_index_is_read_in_place_and_seeds_the_user_index(tmp_path, monkeypatch):
    import scanner.paths as paths

    starter = tmp_path / "starter"
    enroll_embeddings(starter, "real", _unit(np.eye(4)[:3]), [f"{i:032x}" for i in range(3)], ["p"] * 3, "m", "s")
    monkeypatch.setattr(paths, "PACKAGED_INDEX_DIR", starter)
    user = paths.default_index_dir()
    assert paths.index_dir_for_reading(None, "another model") == user  # the starter only serves its model
    assert paths.index_dir_for_reading(None, "s") == starter  # the user has no index yet
    assert paths.index_dir_for_writing(None, "s") == user
    assert SupportIndex.open(user).manifest.counts == {"real": 3}  # seeded with the starter classes
    enroll_embeddings(user, "gen", _unit(np.eye(4)[3:]), ["f" * 32], ["q"], "m", "s")
    assert paths.index_dir_for_reading(None, "s") == user
    assert SupportIndex.open(starter).manifest.total == 3  # the packaged copy is never written
    assert paths.index_dir_for_reading(tmp_path / "explicit", "s") == tmp_path / "explicit"


def test_a_packaged_model_is_named_by_model_and_reads_its_own_starter_index(tmp_path, monkeypatch, tiny_model_dir):
    """`--model fast` names the packaged single-seed model when no directory of that name exists; each packaged
    model's starter index serves that model only."""
    import scanner.paths as paths
    from imgscan_core.errors import UsageError

    monkeypatch.chdir(tmp_path)
    default_starter, fast_starter = tmp_path / "default_index", tmp_path / "fast_index"
    enroll_embeddings(default_starter, "real", _unit(np.eye(4)[:3]), [f"{i:032x}" for i in range(3)], ["p"] * 3, "m", "s")
    enroll_embeddings(fast_starter, "real", _unit(np.eye(4)[:2]), [f"{i:032x}" for i in range(2)], ["p"] * 2, "m3", "s3")
    monkeypatch.setattr(paths, "PACKAGED_INDEX_DIR", default_starter)
    monkeypatch.setattr(paths, "PACKAGED_FAST_INDEX_DIR", fast_starter)
    monkeypatch.setattr(paths, "PACKAGED_FAST_MODEL_DIR", tiny_model_dir)
    assert paths.model_dir_or_default(Path("fast")) == tiny_model_dir
    assert paths.index_dir_for_reading(None, "s3") == fast_starter
    assert paths.index_dir_for_reading(None, "s") == default_starter
    (tmp_path / "fast").mkdir()  # a directory of that name is what the user means
    assert paths.model_dir_or_default(Path("fast")) == Path("fast")
    monkeypatch.setattr(paths, "PACKAGED_FAST_MODEL_DIR", tmp_path / "not shipped")
    (tmp_path / "fast").rmdir()
    with pytest.raises(UsageError, match="does not ship"):
        paths.model_dir_or_default(Path("fast"))


def test_bench_json_reports_exactly_the_measured_keys(tiny_model_dir, monkeypatch):
    import scanner.bench as bench

    monkeypatch.setattr(bench, "MIN_STEADY_S", 0.05)  # the keys and their sense here; the figures in benchmarks.md
    result = runner.invoke(app, ["bench", "--model", str(tiny_model_dir), "--device", "cpu", "--images", "40",
                                 "--batch-size", "8", "--support", "64", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert tuple(figures) == bench.BENCH_KEYS
    assert figures["runtime"] == "openvino" and figures["precision"] in ("fp32", "bf16")  # what `auto` chose here
    assert figures["device"] == "cpu" and figures["batch_size"] == 8 and figures["cpus"] >= 1 and figures["threads"] >= 1
    assert figures["images"] == 40 and figures["megapixels"] == round(32 * 32 / 1e6, 3)  # the tiny model's input
    measured = bench.STARTUP_KEYS + bench.RATE_KEYS + bench.CPU_KEYS + bench.DERIVED_KEYS
    assert all(isinstance(figures[k], float) and figures[k] > 0 for k in measured), figures
    # the derived figures are what they say, from the figures beside them
    assert figures["end_to_end_vs_embed"] == pytest.approx(figures["end_to_end_ips"] / figures["embed_ips"], rel=0.01)
    assert figures["decode_per_core_vs_pillow"] == pytest.approx(
        figures["pillow_cpu_ms"] / figures["decode_cpu_ms"], rel=0.05)


def test_bench_generates_the_format_and_size_asked_for(tmp_path):
    from scanner.bench import make_images

    paths = make_images(tmp_path, 2, 48, "png")
    assert [p.suffix for p in paths] == [".png", ".png"]
    with Image.open(paths[0]) as im:
        assert im.format == "PNG" and im.size == (48, 48)
    with pytest.raises(ValueError, match="format"):
        make_images(tmp_path, 1, 48, "gif")


def test_bench_rejects_an_unknown_format(tiny_model_dir):
    result = runner.invoke(app, ["bench", "--model", str(tiny_model_dir), "--device", "cpu", "--format", "gif"])
    assert result.exit_code == 2 and "--format gif" in result.output


def test_search_breadth_grows_with_the_index():
    from indexes.support_index import ef_search_for

    assert ef_search_for(0) == ef_search_for(12_800) == 128
    assert ef_search_for(50_000) == 500 and ef_search_for(100_000) == 1000 and ef_search_for(10**7) == 1024


def test_an_index_written_with_an_embedding_column_still_opens(tmp_path):
    """Indexes written before the vectors moved out of the Parquet table (e.g. an older starter index) open."""
    import pyarrow.parquet as pq

    from indexes.manifest import read_manifest, write_manifest
    from imgscan_core.files import sha256_file

    e = _unit(np.eye(4)[:3])
    enroll_embeddings(tmp_path, "real", e, [f"{i:032x}" for i in range(3)], ["p"] * 3, "m", "s")
    m = read_manifest(tmp_path)
    path = tmp_path / m.files["support"].name
    table = pq.read_table(path)
    old = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), 4))
    pq.write_table(old, path)
    m.files["support"].sha256, m.files["support"].bytes = sha256_file(path), path.stat().st_size
    write_manifest(tmp_path, m)
    index = SupportIndex.open(tmp_path)
    assert list(index.table.label) == ["real"] * 3 and np.allclose(index.vectors(), e, atol=1e-6)
    r = enroll_embeddings(tmp_path, "gen", _unit(np.eye(4)[3:]), ["f" * 32], ["q"], "m", "s")
    assert r.manifest.counts == {"gen": 1, "real": 3}
    assert "embedding" not in pq.read_schema(tmp_path / r.manifest.files["support"].name).names
