"""A two-node Ray cluster simulated on this machine (ray.cluster_utils.Cluster: two raylets on loopback), each
node declaring one (logical) GPU, so `--gpus-per-worker 1 --workers 2` puts one verdict actor on each node.
torch sees no CUDA device here, so the actors run on CPU: the placement and the output are what is tested."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from conftest import BLUE, RED, write_class_dir

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from scanner.config import EmbedConfig, RayConfig, ScanConfig  # noqa: E402
from scanner.scan import run_scan  # noqa: E402
from scanner.writer import PARTS_MANIFEST_FILE as MANIFEST_FILE  # noqa: E402


@pytest.fixture()
def two_node_cluster():
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    yield cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


def test_two_node_cluster_scan(tmp_path, tiny_model_dir, two_class_index, two_node_cluster):
    crawl = tmp_path / "crawl"
    write_class_dir(crawl / "reds", RED, 40, seed0=300)
    write_class_dir(crawl / "blues", BLUE, 30, seed0=400)
    (crawl / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    out = tmp_path / "night"
    config = ScanConfig(  # isolated decoding, as scan does on CPU
        roots=[os.fsencode(crawl / "reds"), os.fsencode(crawl / "blues"), os.fsencode(crawl / "broken.jpg")], out=out,
        index_dir=two_class_index, engine="ray", embed=EmbedConfig(model_dir=tiny_model_dir, batch_size=8),
        ray=RayConfig(address=two_node_cluster.address, workers=2, gpus_per_worker=1, part_rows=6))
    summary = run_scan(config)
    assert not ray.is_initialized()  # the engine connected, and let go of the cluster afterwards

    assert summary.rows == summary.scanned_this_run == 71
    table = pq.read_table(out)
    rows = table.to_pylist()
    assert len({r["path"] for r in rows}) == 71
    by_dir = {"reds": ("real", False), "blues": ("gen_blue", True)}
    for r in rows:
        part = r["path"].split("/")[-2]
        if part in by_dir:
            assert r["error"] is None and (r["closed_set_label"], r["is_ai"]) == by_dir[part]
        else:
            assert r["error"].startswith("decode:") and r["label"] is None
    run = json.loads((out / MANIFEST_FILE).read_text())["this_run"]
    assert run["workers"] == 2 and run["gpus_per_worker"] == 1
    # One actor on each node (each took that node's GPU); which of them got the parts is up to Ray Data.
    assert len(run["actors"]) == 2 and len({a["node"] for a in run["actors"]}) == 2, run
    assert all(a["gpu_ids"] for a in run["actors"])
    assert set(run["rows_per_node"]) <= {a["node"] for a in run["actors"]} and sum(run["rows_per_node"].values()) == 71
    assert {a["device"] for a in run["actors"]} == {"cpu"}  # logical GPUs only: torch finds no CUDA here
    assert not (out / "_workers").exists()
