"""The view rule (scanner.decode.ViewSpec): native pixels, several crops, the same in DALI and Pillow, averaged
by the embedder, and the same rule wherever images are embedded."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from scanner.decode import MAX_VIEWS, VIEW_POSITIONS, ImageDecoder, ViewSpec, pillow_decode, view_crops


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _random_images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in sizes]


def test_native_views_crop_large_images_without_resampling():
    """A large image is cropped at its own pixels: every view is an exact window of the original."""
    (arr,) = _random_images([(900, 600)])
    views = view_crops(Image.fromarray(arr), ViewSpec(256, "native", MAX_VIEWS))
    assert views.shape == (MAX_VIEWS, 256, 256, 3)
    for v, (px, py) in enumerate(VIEW_POSITIONS):
        left, top = int(px * (900 - 256) + 0.5), int(py * (600 - 256) + 0.5)
        assert np.array_equal(views[v], arr[top:top + 256, left:left + 256])
    assert len({views[v].tobytes() for v in range(MAX_VIEWS)}) == MAX_VIEWS  # nine different windows


def test_small_images_are_scaled_up_to_the_input_size_in_both_rules():
    (arr,) = _random_images([(100, 80)])
    assert ViewSpec(64, "shorter_side").scaled_size(100, 80) == (80, 64)
    assert ViewSpec(64, "native").scaled_size(100, 80) == (100, 80)
    assert ViewSpec(256, "native").scaled_size(100, 80) == (320, 256)
    assert ViewSpec(256, "native").scaled_size(4000, 3000) == (4000, 3000)
    assert ViewSpec(256, "shorter_side").scaled_size(4000, 3000) == (341, 256)
    out = view_crops(Image.fromarray(arr), ViewSpec(256, "native", 2))
    assert out.shape == (1, 256, 256, 3)  # 320 x 256 after scaling up: one view


@pytest.mark.parametrize("spec", [ViewSpec(256, "native", 1), ViewSpec(256, "native", MAX_VIEWS), ViewSpec(96, "native", 3)])
def test_dali_and_pillow_give_identical_native_views(spec):
    """Odd free space (1, 3, 7 pixels) checks the rounding of the crop origin; 257 px checks that DALI's resize
    to an image's own shorter side copies it pixel for pixel."""
    arrays = _random_images([(257, 257), (259, 258), (261, 263), (1000, 257), (300, 1001), (270, 256)], seed=3)
    datas = [_png(a) for a in arrays]
    batch = ImageDecoder(spec, 8).decode(datas)
    assert batch.errors == [None] * len(datas)
    want_counts = [spec.count_for(a.shape[1], a.shape[0]) for a in arrays]
    assert batch.view_counts == want_counts
    assert batch.pixels.shape == (sum(want_counts), spec.size, spec.size, 3)
    pil = np.concatenate([pillow_decode(d, spec)[0] for d in datas])
    assert np.array_equal(batch.pixels, pil)


def test_only_images_half_again_larger_than_the_input_get_several_views():
    spec = ViewSpec(256, "native", 5)
    assert spec.count_for(256, 256) == 1 and spec.count_for(383, 300) == 1  # crops would mostly repeat
    assert spec.count_for(384, 256) == 5 and spec.count_for(4000, 3000) == 5
    assert spec.count_for(100, 80) == 1  # scaled up to 320 x 256: still under 1.5 S
    assert spec.count_for(100, 40) == 5  # scaled up to 640 x 256
    assert ViewSpec(256, "shorter_side", 5).count_for(4000, 3000) == 1  # 341 x 256 after the resize rule



def test_a_failed_item_costs_only_its_own_views():
    arrays = _random_images([(300, 300), (280, 290)], seed=4)
    datas = [_png(arrays[0]), b"not an image", _png(arrays[1])]
    batch = ImageDecoder(ViewSpec(64, "native", 3), 4).decode(datas)
    assert batch.errors[0] is None and batch.errors[1].startswith("decode:") and batch.errors[2] is None
    assert batch.view_counts == [3, 3] and batch.pixels.shape[0] == 2 * 3


def test_the_isolated_decoder_returns_the_same_views():
    from scanner.decode_isolated import IsolatedImageDecoder

    arrays = _random_images([(300, 300), (70, 60), (500, 90)], seed=5)
    datas = [_png(a) for a in arrays] + [b"junk"]
    spec = ViewSpec(64, "native", 4)
    want = ImageDecoder(spec, 8).decode(datas)
    isolated = IsolatedImageDecoder(spec, 8)
    try:
        got = isolated.decode(datas)
    finally:
        isolated.close()
    assert got.view_counts == want.view_counts == [4, 1, 4]
    assert got.errors == want.errors and np.array_equal(got.pixels, want.pixels)


def test_view_spec_from_card_and_its_limits():
    assert ViewSpec.from_card(256, {"resize": "shorter_side", "crop": "center"}) == ViewSpec(256, "shorter_side", 1)
    assert ViewSpec.from_card(256, {"resize": "native", "views": 3}) == ViewSpec(256, "native", 3)
    assert ViewSpec.from_card(256, {"resize": "native", "views": 3}, views=5).views == 5
    assert ViewSpec.from_card(256, {}).resize == "shorter_side"  # a card without the key predates native views
    assert ViewSpec.from_card(256, {"resize": "native"}).mirror is False  # nor does it mirror
    spec = ViewSpec(256, "native", 5, mirror=True)
    assert spec.to_card()["mirror"] is True and "mirror" not in ViewSpec(256, "native", 5).to_card()
    assert ViewSpec.from_card(256, spec.to_card()) == spec
    assert ViewSpec.from_card(256, spec.to_card(), views=2) == ViewSpec(256, "native", 2, mirror=True)
    with pytest.raises(ValueError, match="mirror"):
        ViewSpec.from_card(256, {"resize": "native", "mirror": "yes"})
    for bad in (dict(views=0), dict(views=MAX_VIEWS + 1), dict(resize="stretch")):
        with pytest.raises(ValueError):
            ViewSpec(256, **bad)


def test_embedder_averages_a_files_views(tiny_model_dir):
    from scanner.decode import DecodedBatch
    from scanner.embed import Embedder

    emb = Embedder(tiny_model_dir, device="cpu", precision="fp32", views=3)
    assert emb.view_spec == ViewSpec(32, "native", 3)  # the tiny card's default preprocessing is native
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3 + 1 + 3, 32, 32, 3), dtype=np.uint8)
    got = emb.embed_batch(DecodedBatch(pixels=pixels, sizes=[(90, 90), (32, 32), (90, 90)], errors=[None] * 3,
                                       view_counts=[3, 1, 3]))
    each = emb.embed(pixels)
    mean = np.stack([each[0:3].mean(axis=0), each[3], each[4:7].mean(axis=0)])
    want = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    assert got.shape == (3, 128)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


@pytest.fixture(scope="module")
def mirrored_model_dir(tmp_path_factory):
    """The tiny fixture's embedder with a card that asks for mirrored views."""
    from conftest import make_tiny_embedder
    from scanner.model import ModelCard, save_model_dir

    out = tmp_path_factory.mktemp("mirrored_model")
    card = ModelCard(name="tiny-colour", version="test-mirror", input_size=32, embedding_dim=128,
                     preprocessing=ViewSpec(32, "native", 1, mirror=True).to_card(),
                     backbone="4x4 colour grid + random projection", training_data="none (test fixture)")
    save_model_dir(make_tiny_embedder(), card, out)
    return out


def test_mirrored_views_average_each_view_with_its_mirror_image(mirrored_model_dir):
    """Each view's embedding is the normalised mean of the view's and its left-right mirror's; then views are
    averaged as without mirroring. A left-right symmetric file embeds exactly as without mirroring."""
    from scanner.decode import DecodedBatch
    from scanner.embed import Embedder, mirrored

    emb = Embedder(mirrored_model_dir, device="cpu", precision="fp32", views=3)
    assert emb.view_spec == ViewSpec(32, "native", 3, mirror=True) and emb.view_spec.describe() == "3 views, mirrored"
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (3 + 1, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(mirrored(pixels)[:, :, 0], pixels[:, :, -1])
    plain, flipped = emb.embed(pixels), emb.embed(np.ascontiguousarray(pixels[:, :, ::-1]))
    assert not np.allclose(plain, flipped, atol=1e-3)  # the fixture's colour grid is not mirror-invariant
    per_view = plain + flipped
    per_view /= np.linalg.norm(per_view, axis=1, keepdims=True)
    np.testing.assert_allclose(emb.embed_views(pixels), per_view, atol=1e-6)
    got = emb.embed_batch(DecodedBatch(pixels=pixels, sizes=[(90, 90), (32, 32)], errors=[None] * 2, view_counts=[3, 1]))
    mean = np.stack([per_view[0:3].mean(axis=0), per_view[3]])
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)
    symmetric = np.concatenate([pixels[:1, :, :16], pixels[:1, :, :16][:, :, ::-1]], axis=2)
    np.testing.assert_allclose(emb.embed_views(symmetric), emb.embed(symmetric), atol=1e-6)


def test_a_mirrored_scan_matches_its_mirrored_enrollment_and_records_it(tmp_path, mirrored_model_dir):
    import json

    table = _enroll_two_classes_and_scan(tmp_path, mirrored_model_dir, (40, 36), "gen_blue", scan_options=["--min-detail", "0"])
    assert json.loads(table.schema.metadata[b"imgscan"])["mirror"] is True
    rows = table.to_pylist()
    assert len(rows) == 12 and all(row["label"] == "gen_blue" for row in rows)
    assert all(row["neighbors"][0]["similarity"] > 0.9999 for row in rows)


def _enroll_two_classes_and_scan(tmp_path, model_dir, size, scanned: str, options=(), scan_options=()):
    """Enroll 12 red `real` and 12 blue `gen_blue` images of `size`, then scan one class's folder; both commands
    take `options`, the scan `scan_options` too. Returns the verdict table."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from scanner.cli import app
    from conftest import BLUE, RED, coloured

    runner = CliRunner()
    index = tmp_path / "index"
    for label, rgb, seed in (("real", RED, 0), ("gen_blue", BLUE, 50)):
        src = tmp_path / label
        src.mkdir()
        for i in range(12):
            coloured(rgb, size=size, seed=seed + i).save(src / f"{i}.png")
        r = runner.invoke(app, ["enroll", label, str(src), "--index", str(index), "--model", str(model_dir),
                                "--device", "cpu", *options])
        assert r.exit_code == 0, r.output
    out = tmp_path / "v.parquet"
    r = runner.invoke(app, ["scan", str(tmp_path / scanned), "--out", str(out), "--index", str(index), "--model",
                            str(model_dir), "--device", "cpu", *options, *scan_options])
    assert r.exit_code == 0, r.output
    return pq.read_table(out)


def test_views_outside_the_range_are_a_usage_error(tiny_model_dir):
    from scanner.embed import Embedder
    from imgscan_core.errors import UsageError

    with pytest.raises(UsageError, match="--views"):
        Embedder(tiny_model_dir, device="cpu", views=MAX_VIEWS + 1)


def test_scan_with_views_records_them_and_enroll_uses_the_same_rule(tmp_path, tiny_model_dir):
    """scan and enroll embed through the same views: an enrolled file scanned with the same --views matches
    its own support entry exactly (similarity 1)."""
    import json

    table = _enroll_two_classes_and_scan(tmp_path, tiny_model_dir, (90, 70), "real", options=["--views", "4"])
    meta = json.loads(table.schema.metadata[b"imgscan"])
    assert meta["views"] == 4 and meta["resize"] == "native"
    rows = table.to_pylist()
    assert len(rows) == 12 and all(row["label"] == "real" for row in rows)
    assert all(row["neighbors"][0]["similarity"] > 0.9999 for row in rows)


def test_the_isolated_decoder_survives_its_shared_memory_being_emptied(monkeypatch):
    """The parent empties a memory file that grew past KEEP_SHARED_BYTES after each batch; the child's mapping of
    the pixel file must follow (a stale mapping past the end of the file would crash it with SIGBUS)."""
    import scanner.decode_isolated as isolated_module

    monkeypatch.setattr(isolated_module, "KEEP_SHARED_BYTES", 1)
    arrays = _random_images([(300, 300), (70, 60), (500, 90), (64, 64)], seed=6)
    datas = [_png(a) for a in arrays]
    spec = ViewSpec(64, "native", 4)
    isolated = isolated_module.IsolatedImageDecoder(spec, 8)
    try:
        for batch in (datas, datas[:1], [b"junk", b""], datas[::-1]):  # a batch with no pixels at all too
            want = ImageDecoder(spec, 8).decode(batch)
            got = isolated.decode(batch)
            assert got.errors == want.errors and np.array_equal(got.pixels, want.pixels)
            assert os.fstat(isolated._reply_fd).st_size == 0  # emptied after the batch (or never filled)
        assert isolated._child.poll() is None  # one child served every batch
    finally:
        isolated.close()


def _jpeg(arr: np.ndarray, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=92, **options)
    return buf.getvalue()


def test_large_jpegs_decoded_in_part_give_the_same_views_as_pillow_decoding_all():
    """A large JPEG's views are decoded from their window alone (libjpeg-turbo skips the rest): odd window
    offsets, each chroma subsampling, progressive files and an EXIF-rotated photo (decoded whole) must give the
    pixels Pillow gives from the whole image."""
    from scanner.decode import partial_window, sniff

    spec = ViewSpec(64, "native", MAX_VIEWS)
    arrays = _random_images([(517, 389), (333, 701), (1001, 1003), (100, 90)], seed=9)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: shown as 389 x 517
    datas = [_jpeg(arrays[0], subsampling=2), _jpeg(arrays[1], subsampling=1), _jpeg(arrays[2], subsampling=0),
             _jpeg(arrays[2], subsampling=2, progressive=True), _jpeg(arrays[0], exif=exif.tobytes()),
             _jpeg(arrays[3])]
    windows = [partial_window(sniff(d, 10**8, spec), spec) for d in datas]
    assert [w is not None for w in windows] == [True, True, True, True, False, False]
    assert windows[2].width * windows[2].height < 0.4 * 1001 * 1003  # the part decoded of the largest
    batch = ImageDecoder(spec, 8).decode(datas)
    assert batch.errors == [None] * len(datas)
    assert batch.sizes == [(517, 389), (333, 701), (1001, 1003), (1001, 1003), (389, 517), (100, 90)]
    pil = np.concatenate([pillow_decode(d, spec)[0] for d in datas])
    assert batch.view_counts == [MAX_VIEWS] * 6
    assert np.array_equal(batch.pixels, pil)


def test_the_jpeg_header_walk_finds_the_size_pillow_finds():
    """scanner.decode.jpeg_frame_size (the sniff's fast path) against Pillow's parse: EXIF, ICC, progressive,
    restart intervals, a comment; None for what is not a JPEG or stops before its frame header."""
    from scanner.decode import jpeg_frame_size

    (arr,) = _random_images([(123, 77)], seed=11)
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    variants = [_jpeg(arr), _jpeg(arr, progressive=True), _jpeg(arr, exif=exif.tobytes()),
                _jpeg(arr, icc_profile=b"\0" * 3000), _jpeg(arr, subsampling=0, comment=b"hello")]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", restart_marker_blocks=1)
    variants.append(buf.getvalue())
    for data in variants:
        with Image.open(io.BytesIO(data)) as im:
            assert jpeg_frame_size(data) == im.size == (123, 77)
    assert jpeg_frame_size(_png(arr)) is None and jpeg_frame_size(b"") is None
    assert jpeg_frame_size(variants[2][:40]) is None  # cut inside the EXIF segment


def test_files_whose_end_is_missing_go_to_pillow_not_dali():
    """A cut-off download (the usual damaged file in a crawl) is refused by both decoders, but DALI is not run
    again in a process after a failure (scanner.decode.DaliImageDecoder): `looks_whole` keeps such files from it.
    The autouse fixture `dali_never_fails_in_the_test_process` checks that DALI did not fail here."""
    from scanner.decode import looks_whole, sniff

    (arr,) = _random_images([(120, 90)], seed=5)
    exif = Image.Exif()
    exif[0x010F] = "a maker note ending \xff\xd9"  # an end-of-image marker before the scan must not count
    jpeg, progressive, png = _jpeg(arr, exif=exif.tobytes()), _jpeg(arr, progressive=True), _png(arr)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "WEBP", quality=90)
    webp = buf.getvalue()
    whole = {"JPEG": [jpeg, progressive, jpeg + b"trailing bytes"], "PNG": [png, png + b"trailing"], "WEBP": [webp]}
    cut = {"JPEG": [jpeg[: len(jpeg) // 2], progressive[:-2], jpeg[:-1]], "PNG": [png[:-1], png[: len(png) // 2]],
           "WEBP": [webp[:-1]]}
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0xFF  # a CRC no longer matches
    cut["PNG"].append(bytes(flipped))
    for fmt, datas in whole.items():
        assert all(looks_whole(d, fmt) for d in datas), fmt
    for fmt, datas in cut.items():
        assert not any(looks_whole(d, fmt) for d in datas), fmt
    assert looks_whole(b"GIF89a", "GIF")  # formats DALI does not take are not its business
    spec = ViewSpec(32)
    assert sniff(jpeg, 10**8, spec).whole and not sniff(jpeg[:-1], 10**8, spec).whole
    # Pillow decides: half a file is an error row, a file short of its last byte or two may still decode
    halves = [jpeg[: len(jpeg) // 2], png[: len(png) // 2], webp[: len(webp) // 2]]
    batch = ImageDecoder(spec, 16).decode(halves + [d for datas in cut.values() for d in datas] + [jpeg])
    assert all(e and e.startswith("decode:") for e in batch.errors[:3]) and batch.errors[-1] is None
