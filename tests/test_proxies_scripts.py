"""The proxies' per-source figures: fold-4 real crops called AI per photos source, and how the table names them."""

import csv

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import load_script


def _photos(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rows = [("images/real/a.jpg", "camera:x", "4"), ("images/real/b.jpg", "camera:x", "4"),
            ("images/real/c.jpg", "camera:x", "1"), ("images/real/d.jpg", "shop", "4")]
    with open(photos / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "is_ai", "source", "group", "fold", "upscaled"])
        for path, source, fold in rows:
            w.writerow([path, "real", 0, source, path, fold, 0])
    return photos


def test_photos_fold4_counts_real_fold4_queries_per_source_and_method(tmp_path):
    proxies = load_script("benchmarks/embedder_proxies.py")
    photos = _photos(tmp_path)
    base = f"{photos}/images/real/"
    rows = [  # method, path, role, class, is_ai
        ("imgscan", base + "a.jpg", "query", "real", True),
        ("imgscan", base + "b.jpg", "query", "real", False),
        ("imgscan", base + "c.jpg", "query", "real", True),  # fold 1: not counted
        ("imgscan", base + "d.jpg", "support", "real", True),  # support: not counted
        ("imgscan", "/kit/images/real/k.jpg", "query", "real", True),  # not a photos crop
        ("imgscan@deg", base + "a.jpg", "query", "real", False),
        ("imgscan@deg", base + "b.jpg", "query", "real", False),
        ("imgscan@deg", base + "d.jpg", "query", "real", None),  # an error row: not judged
    ]
    table = pa.table({k: [r[i] for r in rows] for i, k in enumerate(["method", "path", "role", "class", "is_ai"])})
    pq.write_table(table, tmp_path / "predictions.parquet")

    got = proxies._photos_fold4(tmp_path / "predictions.parquet", photos, "imgscan@deg")
    assert got == {"imgscan": {"camera:x": {"n_real": 2, "real_called_ai": 0.5}},
                   "reposted": {"camera:x": {"n_real": 2, "real_called_ai": 0.0}}}


def test_table_marks_the_unseen_source_and_finds_its_originals():
    table = load_script("benchmarks/proxies_table.py")
    doc = {"p2_unseen_source": {"source": "dreambooth"},
           "p2_photos_fold4": {"imgscan": {"camera:drewnoakes": {"n_real": 114, "real_called_ai": 0.0263},
                                           "dreambooth": {"n_real": 98, "real_called_ai": 0.0}}},
           "p2_native_full_size": {"drewnoakes/metadata-extractor-images": {"n": 19, "called_ai": 1, "errors": 0},
                                   "google/dreambooth": {"n": 14, "called_ai": 2, "errors": 0},
                                   "all": {"n": 33, "called_ai": 3, "errors": 0}}}
    assert table._fold4(doc, "imgscan") == "camera:drewnoakes 0.026 (114), dreambooth* 0.000 (98)"
    assert table._native(doc, "p2_native_full_size") == "2/14 / 3/33"
    older = {**doc, "p2_unseen_source": {}}  # results written before the source was recorded: the camera source
    assert table._native(older, "p2_native_full_size") == "1/19 / 3/33"
    assert table._fold4(older, "reposted") == "-"
    p3 = {"f1_enrolled": {"stable-diffusion": 0.41, "biggan": 0.0},
          "every_fold": {"open_set_auroc": 0.7512, "n_unknown": 83, "reposted_open_set_auroc": 0.7}}
    assert table._f1({"p3_unseen_generators": p3}) == "stable-diffusion 0.41, biggan 0.00"
    assert table._every_fold({"p3_unseen_generators": p3}) == "0.751 (83; re-posted 0.700)"
    assert table._every_fold({"p3_unseen_generators": {}}) == "-"  # results written before it was measured


def test_detail_table_bins_and_floors():
    import numpy as np

    detail = load_script("benchmarks/detail_breakdown.py")
    g = {"unseen real": (np.array([1.0, 1.5, 3.0, 20.0]), np.array([True, False, True, False])),
         "kit AI": (np.array([1.0, 30.0]), np.array([True, True]))}
    rows = {r["detail"]: r for r in detail.table(g)}
    assert rows["0-2"]["unseen real n"] == 2 and rows["0-2"]["unseen real called AI"] == 0.5
    assert rows["2-4"]["unseen real called AI"] == 1.0 and rows["16-inf"]["unseen real called AI"] == 0.0
    assert rows["all"]["unseen real called AI"] == 0.5
    # Not judging below 2 removes the accusation at detail 1.0, and misses the kit AI image at detail 1.0.
    assert rows["not judged below 2"]["unseen real called AI"] == 0.25 and rows["not judged below 2"]["unseen real n"] == 2
    assert rows["not judged below 2"]["kit AI called AI"] == 0.5


def test_open_set_scores_rank_unknown_queries_by_each_score(tmp_path):
    """Two known queries close to their class, one unknown query far from everything: every distance score ranks
    it first (AUROC 1); purity, which its neighbours' agreement does not separate here, gives 0.5."""
    scores = load_script("benchmarks/open_set_scores.py")

    def nb(label, sims):
        return [{"label": label, "support_id": str(i), "similarity": s} for i, s in enumerate(sims)]

    rows = [  # method, role, class, is_ai_true, open_set_score, neighbors
        ("imgscan", "support", "gen_a", True, None, None),
        ("imgscan", "support", "real", False, None, None),
        ("imgscan", "query", "gen_a", True, 0.05, nb("gen_a", [0.97, 0.95, 0.93])),
        ("imgscan", "query", "real", False, 0.04, nb("real", [0.98, 0.96, 0.94])),
        ("imgscan", "query", "gen_new", True, 0.5, nb("gen_a", [0.6, 0.5, 0.4])),
    ]
    keys = ["method", "role", "class", "is_ai_true", "open_set_score", "neighbors"]
    pq.write_table(pa.table({k: [r[i] for r in rows] for i, k in enumerate(keys)}), tmp_path / "p.parquet")
    (method, figures), = scores.scores(str(tmp_path / "p.parquet"))
    assert method == "imgscan"
    for name in ("verdict score", "1 - nearest", "1 - mean of k", "1 - k-th", "1 - mean, nearest's class",
                 "verdict score, AI queries only"):
        assert figures[name] == 1.0, name
    assert figures["1 - purity"] == 0.5
