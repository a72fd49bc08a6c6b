"""The model card's licence text follows the training data back to the sets it was made from."""

from pathlib import Path

from train.data_licence import (KIT_LICENCE, MODERN_LICENCE, PHOTOS_LICENCE, data_licences,
                                record_derivation)


def _set(root: Path, title: str | None) -> Path:
    root.mkdir(parents=True)
    (root / "manifest.csv").write_text("path,label\n")
    if title is not None:
        (root / "README.md").write_text(f"# {title}\n\nmore text\n")
    return root


def test_known_sets_are_recognised_by_their_readme_title(tmp_path):
    kit = _set(tmp_path / "kit", "Real / AI-generated image kit")
    photos = _set(tmp_path / "photos", "Real camera photos (a second set beside the kit)")
    modern = _set(tmp_path / "modern", "Modern generators and more real cameras (a third set beside the kit and the photos)")
    assert data_licences(kit) == [KIT_LICENCE]
    assert data_licences(photos / "manifest.csv") == [PHOTOS_LICENCE]  # a manifest CSV names its folder's set
    assert data_licences(modern) == [MODERN_LICENCE]


def test_a_derived_set_carries_its_inputs_licences_once_each(tmp_path):
    kit = _set(tmp_path / "kit", "Real / AI-generated image kit")
    modern = _set(tmp_path / "modern", "Modern generators and more real cameras")
    view = _set(tmp_path / "view", None)
    record_derivation(view, [modern], "tools/family_manifest.py")
    pairs = _set(tmp_path / "pairs", None)
    record_derivation(pairs, [view, kit, modern], "tools/tae_pairs.py")
    assert data_licences(view) == [MODERN_LICENCE]
    assert data_licences(pairs) == [MODERN_LICENCE, KIT_LICENCE]
    # the text names no path, so the same data made twice (each seed's own copy) gives one text
    assert str(tmp_path) not in MODERN_LICENCE


def test_unrecorded_data_is_named_in_a_warning_and_a_derivation_cycle_ends(tmp_path):
    bare = _set(tmp_path / "bare", "Some photos")
    [text] = data_licences(bare)
    assert str(bare) in text and "licence was not recorded" in text
    a, b = _set(tmp_path / "a", None), _set(tmp_path / "b", None)
    record_derivation(a, [b], "x")
    record_derivation(b, [a], "x")
    [text] = data_licences(a)
    assert "licence was not recorded" in text
