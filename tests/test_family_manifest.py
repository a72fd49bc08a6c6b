"""tools/family_manifest.py: the training view by family (no ../shared needed)."""

from conftest import load_script


def _row(family, source, label="x", is_ai="1"):
    return {"path": f"images/{family}/{source}.jpg", "label": label, "is_ai": is_ai, "family": family, "source": source}


def test_labels_become_families_and_held_out_parts_vanish():
    fm = load_script("tools/family_manifest.py")
    rows = ([_row("sdxl", "gal", "sdxl-finetune+a")] * 3 + [_row("sdxl", "gal", "sdxl-base")] * 2
            + [_row("flux2", "gal", "flux2-dev")] + [_row("nano-banana", "gal")] * 5
            + [_row("real", "cam", "real", "0")] * 2 + [_row("graphic", "cam", "real", "0")]
            + [_row("real", "faces", "real", "0")] * 2)
    out = fm.family_rows(rows, exclude_families={"nano-banana"}, exclude_sources={"faces"}, min_class=3)
    labels = [r["label"] for r in out]
    assert labels.count("sdxl") == 5  # fine-tune labels merged into their family
    assert labels.count("modern-other") == 1  # a family under min_class is pooled
    assert labels.count("real") == 3  # photos and human-made graphics are both not AI
    assert "nano-banana" not in labels and all(r["source"] != "faces" for r in out)


def test_derived_copies_count_as_the_collection_they_came_from():
    fm = load_script("tools/family_manifest.py")
    assert fm.original_source("tae-sd:camera:drewnoakes") == "camera:drewnoakes"
    assert fm.original_source("reposted:google+mediapipe") == "google+mediapipe"
    assert fm.original_source("camera:drewnoakes") == "camera:drewnoakes"
    tae = [{"path": "a", "label": "tae-sd", "source": "tae-sd:faces"}, {"path": "b", "label": "real", "source": "reposted:cam"}]
    assert [r["path"] for r in fm.family_rows(tae, set(), {"faces"}, 20)] == ["b"]  # labels kept: no family column


def test_repeat_lists_a_sources_rows_more_often():
    fm = load_script("tools/family_manifest.py")
    rows = [_row("real", "faces", "real", "0"), _row("real", "cam", "real", "0"),
            {"path": "t", "label": "tae-sd", "source": "tae-sd:faces"}]
    out = fm.repeated(rows, {"faces": 3})
    assert [r["source"] for r in out] == ["faces"] * 3 + ["cam"] + ["tae-sd:faces"] * 3


def test_the_starter_index_keeps_a_views_own_paths_through_its_linked_images(tmp_path):
    """tools/starter_index.py names support items relative to their data set; a view made by family_manifest
    links images/ elsewhere, and following the link would leave a bare file name."""
    si = load_script("tools/starter_index.py")
    (tmp_path / "data" / "images" / "sd1").mkdir(parents=True)
    (tmp_path / "data" / "images" / "sd1" / "a.jpg").write_bytes(b"x")
    (tmp_path / "view").mkdir()
    (tmp_path / "view" / "images").symlink_to(tmp_path / "data" / "images", target_is_directory=True)
    (tmp_path / "kit").mkdir()
    roots = [(tmp_path / "kit").resolve(), (tmp_path / "view").resolve()]
    assert si._relative((tmp_path / "view").resolve() / "images/sd1/a.jpg", roots) == "view/images/sd1/a.jpg"


def test_a_support_only_view_keeps_the_not_ai_images_of_chosen_collections():
    fm = load_script("tools/family_manifest.py")
    rows = [_row("sdxl", "faces"), _row("real", "faces", "real", "0"), _row("graphic", "faces", "real", "0"),
            _row("real", "cam", "real", "0")]
    out = fm.family_rows(rows, set(), set(), 20, only_sources={"faces"}, real_only=True)
    assert [(r["family"], r["source"], r["label"]) for r in out] == [("real", "faces", "real"), ("graphic", "faces", "real")]
