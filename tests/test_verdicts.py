"""Verdicts a reviewer can act on: one decision shown two ways, a calibrated ai_score, exact and near matches,
provenance evidence, enrollment warnings."""

from __future__ import annotations

import datetime
import io
import json
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from conftest import BLUE, RED, coloured, encode, write_class_dir
from indexes.manifest import AiScoreCalibration
from scanner.cli import app
from scanner.evaluation.metrics import expected_calibration_error
from scanner.decode import PNG_SIGNATURE
from scanner.provenance import indication, read_provenance
from scanner.verdict import VerdictRule, decide, fit_ai_calibration

runner = CliRunner()
CLASSES = ["real", "gen_a", "gen_b", ""]


# -- one decision, two views ----------------------------------------------------------------------------------

@st.composite
def neighbour_sets(draw):
    n = draw(st.integers(1, 6))
    k = draw(st.integers(1, 12))
    labels = np.array(draw(st.lists(st.lists(st.sampled_from(CLASSES), min_size=k, max_size=k), min_size=n, max_size=n)),
                      dtype=object)
    sims = np.array(draw(st.lists(st.lists(st.floats(-1, 1), min_size=k, max_size=k), min_size=n, max_size=n)))
    sims = -np.sort(-sims, axis=1)  # nearest first, as the index returns them
    knots = sorted(draw(st.lists(st.floats(-1, 1), min_size=1, max_size=6, unique=True)))
    probs = sorted(draw(st.lists(st.floats(0, 1), min_size=len(knots), max_size=len(knots))))
    cal = draw(st.sampled_from([AiScoreCalibration(), AiScoreCalibration("isotonic", knots, probs)]))
    return labels, sims, VerdictRule(draw(st.floats(0, 2)), cal)


@settings(max_examples=400, deadline=None)
@given(neighbour_sets())
def test_label_and_is_ai_agree_for_any_neighbours(case):
    labels, sims, rule = case
    v = decide(labels, sims, rule)
    for i in range(len(labels)):
        present = set(labels[i]) - {""}
        if not present:  # no neighbour at all: nothing to judge
            assert v.label[i] == "unknown" and not v.is_ai[i]
            continue
        assert v.is_ai[i] == (v.label[i] != "real") == (v.ai_score[i] > 0.5)
        assert 0.0 <= v.ai_score[i] <= 1.0 and 0.0 <= v.open_set_score[i] <= 2.0
        if v.label[i] == "unknown":  # far from the generator it is closest to, or no generated neighbour at all
            assert v.open_set_score[i] > rule.threshold or v.closed_set_label[i] == "unknown"
        elif v.is_ai[i]:
            assert v.label[i] in present - {"real"} and v.label[i] == v.closed_set_label[i]


# -- calibration ------------------------------------------------------------------------------------------------

def test_isotonic_calibration_recovers_a_known_probability_with_unequal_class_sizes():
    # evidence: real uniform on [-1, 0.2], AI uniform on [-0.2, 1], nine AI items per real one. With the classes
    # weighted equally (the documented prior) P(AI | e) is 0 below -0.2, 1/2 on the overlap, 1 above 0.2.
    rng = np.random.default_rng(0)
    real, ai = rng.uniform(-1, 0.2, 1000), rng.uniform(-0.2, 1, 9000)
    cal = fit_ai_calibration(np.concatenate([real, ai]), np.r_[np.zeros(1000, bool), np.ones(9000, bool)])
    p = lambda e: float(np.interp(e, cal.evidence, cal.probability))  # noqa: E731
    assert cal.method == "isotonic" and np.all(np.diff(cal.probability) >= 0)
    assert p(-0.6) < 0.03 and abs(p(0.0) - 0.5) < 0.08 and p(0.6) > 0.97
    assert 0 < min(cal.probability) and max(cal.probability) < 1  # never claims certainty


def test_calibration_for_a_crawl_with_few_generated_images_accuses_only_on_strong_evidence():
    # the same evidence as above fitted for a crawl where one image in ten is generated: on the overlap (likelihood
    # ratio 1) P(AI) is the prior, 0.1, so nothing there is called AI; outside it the evidence still decides
    rng = np.random.default_rng(0)
    real, ai = rng.uniform(-1, 0.2, 1000), rng.uniform(-0.2, 1, 9000)
    evidence, is_ai = np.concatenate([real, ai]), np.r_[np.zeros(1000, bool), np.ones(9000, bool)]
    cal = fit_ai_calibration(evidence, is_ai, ai_share=0.1)
    p = lambda e: float(np.interp(e, cal.evidence, cal.probability))  # noqa: E731
    assert cal.prior == "ai-share 0.1" and cal.ai_share == 0.1 and np.all(np.diff(cal.probability) >= 0)
    assert p(-0.6) < 0.03 and abs(p(0.0) - 0.1) < 0.05 and p(0.6) > 0.9
    balanced = fit_ai_calibration(evidence, is_ai)
    called = lambda c: np.interp(evidence, c.evidence, c.probability) > 0.5  # noqa: E731
    assert balanced.prior == "balanced" and not (called(cal) & ~called(balanced)).any()  # accuses a subset
    assert called(cal)[~is_ai].mean() < called(balanced)[~is_ai].mean() / 5


def test_index_calibrate_sets_the_prior_and_enrollment_keeps_it(two_class_index, tmp_path, tiny_model_dir):
    from indexes import SupportIndex

    before = SupportIndex.open(two_class_index).manifest
    r = runner.invoke(app, ["index", "calibrate", "--ai-share", "0.1", "--index", str(two_class_index)])
    assert r.exit_code == 0, r.output
    after = SupportIndex.open(two_class_index).manifest
    assert after.generation == before.generation + 1 and after.counts == before.counts
    assert before.ai_score.prior == "balanced" and after.ai_score.prior == "ai-share 0.1"
    assert after.ai_score.method == "isotonic" and min(after.ai_score.probability) < min(before.ai_score.probability)
    more = write_class_dir(tmp_path / "more_blue", BLUE, 5, seed0=500)
    r = runner.invoke(app, ["enroll", "gen_navy", str(more), "--index", str(two_class_index), "--model",
                            str(tiny_model_dir), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert SupportIndex.open(two_class_index).manifest.ai_score.prior == "ai-share 0.1"
    r = runner.invoke(app, ["index", "show", "--index", str(two_class_index)])
    assert "ai-share 0.1 prior" in r.output
    r = runner.invoke(app, ["index", "calibrate", "--ai-share", "1", "--index", str(two_class_index)])
    assert r.exit_code == 2 and "--ai-share" in r.output
    r = runner.invoke(app, ["index", "calibrate", "--ai-share", "0.2", "--index", str(tmp_path / "no_index")])
    assert r.exit_code != 0 and "Traceback" not in r.output and "no_index" in r.output


def test_a_manifest_with_an_unreadable_prior_is_refused(two_class_index):
    from imgscan_core.errors import UsageError
    from indexes.manifest import IndexManifest

    text = (two_class_index / "manifest.json").read_text()
    for prior in ("ai-share 1.5", "ai-share x", "mostly real"):
        data = json.loads(text)
        data["ai_score"]["prior"], data["checksum"] = prior, ""
        with pytest.raises(UsageError, match="ai_score.prior"):
            IndexManifest.from_json(json.dumps(data), "manifest.json")


def test_calibration_error_is_measured_right():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 200_000)
    assert expected_calibration_error(rng.uniform(0, 1, p.size) < p, p) < 0.01  # calibrated by construction
    y = rng.uniform(0, 1, 100_000) < 0.5
    assert expected_calibration_error(y, np.full(y.size, 0.9)) == pytest.approx(0.4, abs=0.01)


def test_enrolled_index_calibrates_ai_score_so_all_agreeing_neighbours_are_not_all_one(two_class_index, tmp_path,
                                                                                       tiny_model_dir):
    from indexes import SupportIndex

    index = SupportIndex.open(two_class_index)
    cal = index.manifest.ai_score
    assert cal.method == "isotonic" and cal.calibrated_on == 40
    labels = np.array([["gen_blue"] * 11] * 2, dtype=object)
    v = decide(labels, np.array([[0.95] * 11, [0.55] * 11]), VerdictRule.of(index))
    assert 0.5 < v.ai_score[1] <= v.ai_score[0] < 1.0  # a probability, never exactly 1


# -- exact and near matches -------------------------------------------------------------------------------------

def _patterned(seed: int) -> Image.Image:
    """A red image with edges (a perceptual hash needs structure; smooth gradients flip bits under JPEG) that the
    colour model still places among the red `real` images."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (64, 64), RED)
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x, y = rng.integers(0, 56, 2)
        w, h = rng.integers(6, 30, 2)
        shade = rng.uniform(0.3, 1.0)
        draw.rectangle([int(x), int(y), int(x + w), int(y + h)], fill=tuple(int(c * shade) for c in RED))
    return im


def test_exact_and_near_copies_of_an_enrolled_image_take_its_class(two_class_index, tmp_path, tiny_model_dir):
    odd = tmp_path / "odd"
    odd.mkdir()
    original = encode(_patterned(2), quality=95)
    (odd / "odd.jpg").write_bytes(original)
    common = ["--index", str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu"]
    r = runner.invoke(app, ["enroll", "gen_odd", str(odd), *common])
    assert r.exit_code == 0, r.output
    assert "warning: class 'gen_odd' has 1 images, fewer than k=11" in r.output
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    (crawl / "exact.jpg").write_bytes(original)
    with Image.open(io.BytesIO(original)) as im:
        (crawl / "near.jpg").write_bytes(encode(im, quality=80))  # other bytes, same picture
    (crawl / "other.jpg").write_bytes(encode(_patterned(12), quality=95))
    out = tmp_path / "v.parquet"
    r = runner.invoke(app, ["scan", str(crawl), "--out", str(out), *common])
    assert r.exit_code == 0, r.output
    rows = {p.rsplit("/", 1)[-1]: row for p, row in
            zip(pq.read_table(out).column("path").to_pylist(), pq.read_table(out).to_pylist())}
    # without the match, ten red `real` neighbours outvote the one gen_odd item
    assert rows["other.jpg"]["label"] == "real" and rows["other.jpg"]["match"] is None
    exact, near = rows["exact.jpg"], rows["near.jpg"]
    assert exact["match"]["kind"] == "exact" and exact["match"]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert near["match"]["kind"] == "near"
    for row in (exact, near):
        assert (row["label"], row["closed_set_label"], row["is_ai"], row["ai_score"]) == ("gen_odd", "gen_odd", True, 1.0)
        assert row["match"]["support_id"] == exact["sha"]


# -- provenance ---------------------------------------------------------------------------------------------

def _png_info(text: dict[str, str]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    return info


def _png(text: dict[str, str]) -> bytes:
    return encode(coloured(RED, seed=3), "PNG", pnginfo=_png_info(text))


def _jpeg_with_exif(**tags) -> bytes:
    exif = Image.Exif()
    for tag, value in tags.items():
        exif[{"software": 0x0131, "make": 0x010F, "model": 0x0110}[tag]] = value
    return encode(coloured(RED, seed=4), exif=exif.tobytes())


XMP_AI = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
          b'<rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
          b'Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"/>'
          b'</rdf:RDF></x:xmpmeta>')


def test_png_text_exif_and_xmp_are_read():
    a1111 = read_provenance(_png({"parameters": "a cat, Steps: 20, Sampler: Euler a, Model: sd_xl_base"}))
    assert [(e["source"], e["indicates"]) for e in a1111] == [("png-text", "ai")]
    assert "AUTOMATIC1111" in a1111[0]["detail"] and "a cat" in a1111[0]["detail"]
    comfy = read_provenance(_png({"prompt": '{"3": {"class_type": "KSampler"}}', "workflow": "{}"}))
    assert {e["detail"].split(":")[0] for e in comfy} == {"ComfyUI"} and len(comfy) == 2
    firefly = read_provenance(_jpeg_with_exif(software="Adobe Firefly", make="Canon", model="EOS R5"))
    assert ("exif", "Software Adobe Firefly", "ai") in [(e["source"], e["detail"], e["indicates"]) for e in firefly]
    assert ("exif", "camera Canon EOS R5", "capture") in [(e["source"], e["detail"], e["indicates"]) for e in firefly]
    assert indication(firefly) == "ai"
    camera = read_provenance(_jpeg_with_exif(make="NIKON CORPORATION", model="NIKON D750"))
    assert indication(camera) == "capture"
    xmp = read_provenance(encode(coloured(RED, seed=5), xmp=XMP_AI))
    assert [(e["source"], e["detail"], e["indicates"]) for e in xmp] == [
        ("xmp", "DigitalSourceType trainedAlgorithmicMedia", "ai")]
    assert read_provenance(encode(coloured(RED, seed=6))) == []  # nothing said


def test_png_metadata_after_the_pixels_is_read_without_decoding_them():
    """Text and eXIf chunks may follow the pixel data; Pillow reads those only by decoding every pixel (a second
    full decode per PNG). They are read from the chunks alone: here the pixel data is garbage and they still are."""
    from scanner.decode import png_chunks

    exif = Image.Exif()
    exif[0x0131] = "Adobe Firefly"
    source = encode(coloured(RED, seed=8), "PNG", exif=exif.tobytes(), pnginfo=_png_info({"parameters": "a dog"}))
    chunks = png_chunks(source)
    by_kind = {kind: chunk for kind, chunk in chunks}
    assert b"eXIf" in by_kind and b"tEXt" in by_kind
    garbage = b"IDAT" + b"\x00not zlib at all" * 50
    idat = (len(garbage) - 4).to_bytes(4, "big") + garbage + zlib.crc32(garbage).to_bytes(4, "big")
    after = [c for kind, c in chunks if kind in (b"IHDR",)] + [idat] + [by_kind[b"tEXt"], by_kind[b"eXIf"], by_kind[b"IEND"]]
    late = PNG_SIGNATURE + b"".join(after)
    got = {(e["source"], e["detail"].split(":")[0], e["indicates"]) for e in read_provenance(late)}
    assert got == {("png-text", "AUTOMATIC1111-style parameters", "ai"), ("exif", "Software Adobe Firefly", "ai")}


def test_hostile_metadata_gives_an_empty_list_and_nothing_worse():
    plain = _png({})
    # a zTXt chunk that inflates to 100 MB (over Pillow's text limit), spliced before IEND
    bomb = zlib.compress(b"a" * 100_000_000, 9)
    chunk = b"zTXt" + b"parameters\x00\x00" + bomb
    ztxt = len(chunk[4:]).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big")
    iend = plain.rindex(b"IEND") - 4
    hostile = [
        plain[:iend] + ztxt + plain[iend:],
        b"\xff\xd8\xff\xeb\x00\x20JP\x00\x00\x00\x00\x00\x00jumbc2pa garbage garbage!!\xff\xd9",  # bogus C2PA box
        _jpeg_with_exif(software="x" * 60_000),
        encode(coloured(RED, seed=7), xmp=b"<x:xmpmeta>" + b"DigitalSourceType=\"" * 3_000),
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"", b"not an image at all",
    ]
    for data in hostile:
        entries = read_provenance(data)
        assert isinstance(entries, list)
        assert all(len(e["detail"]) <= 300 for e in entries)
    # the text bomb is flagged (its text unread), the bogus C2PA box says nothing
    assert read_provenance(hostile[0]) == [{"source": "png-text", "indicates": "",
                                            "detail": "text chunk over Pillow's size limit (a decompression bomb?), not read"}]
    assert read_provenance(hostile[1]) == []


def _throwaway_signer():
    """An ES256 signer with a certificate chain made here (a test CA and an end-entity certificate)."""
    import c2pa
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imgscan tests")])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ee = (x509.CertificateBuilder().subject_name(name("test signer")).issuer_name(ca.subject)
          .public_key(key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
          .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    chain = ee.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, pem, None))


def c2pa_signed_jpeg(source_type: str = "trainedAlgorithmicMedia", seed: int = 9) -> bytes:
    import c2pa

    manifest = {"claim_generator_info": [{"name": "test-generator", "version": "1.0"}], "title": "t.jpg",
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [{
                    "action": "c2pa.created",
                    "digitalSourceType": f"http://cv.iptc.org/newscodes/digitalsourcetype/{source_type}"}]}}]}
    out = io.BytesIO()
    with c2pa.Builder(manifest) as builder:
        builder.sign(_throwaway_signer(), "image/jpeg", io.BytesIO(encode(_patterned(seed), quality=90)), out)
    return out.getvalue()


def test_c2pa_claims_are_read_and_validated():
    pytest.importorskip("cryptography")
    signed = c2pa_signed_jpeg()
    [entry] = [e for e in read_provenance(signed) if e["source"] == "c2pa"]
    assert entry["indicates"] == "ai"
    assert "claim generator test-generator 1.0" in entry["detail"] and "trainedAlgorithmicMedia" in entry["detail"]
    assert "signature valid" in entry["detail"] and "signer imgscan tests" in entry["detail"]
    # one pixel byte changed after signing: the data hash no longer matches, and an invalid claim vouches for nothing
    at = signed.rindex(b"\xff\xd9") - 50
    tampered = signed[:at] + bytes([signed[at] ^ 0x55]) + signed[at + 1:]
    [bad] = [e for e in read_provenance(tampered) if e["source"] == "c2pa"]
    assert "INVALID" in bad["detail"] and bad["indicates"] == ""


def test_scan_reports_provenance_and_counts_disagreements(two_class_index, tmp_path, tiny_model_dir):
    pytest.importorskip("cryptography")
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    (crawl / "signed_ai.jpg").write_bytes(c2pa_signed_jpeg())  # red pixels: the model says real
    (crawl / "plain.jpg").write_bytes(encode(coloured(RED, seed=11)))
    out = tmp_path / "v.parquet"
    common = ["--index", str(two_class_index), "--model", str(tiny_model_dir), "--device", "cpu"]
    r = runner.invoke(app, ["scan", str(crawl), "--out", str(out), *common])
    assert r.exit_code == 0, r.output
    assert "1 files where provenance says AI, pixels say real" in r.output
    rows = {p.rsplit("/", 1)[-1]: row for p, row in
            zip(pq.read_table(out).column("path").to_pylist(), pq.read_table(out).to_pylist())}
    assert rows["signed_ai.jpg"]["label"] == "real"  # metadata never changes the pixel verdict
    assert [e["source"] for e in rows["signed_ai.jpg"]["provenance"]] == ["c2pa"]
    assert rows["plain.jpg"]["provenance"] == []
    r = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    import json

    doc = json.loads((tmp_path / "rep" / "summary.json").read_text())
    case = doc["provenance_disagreements"]["provenance says AI, pixels say real"]
    assert case["count"] == 1 and case["paths"][0].endswith("signed_ai.jpg")
    assert doc["provenance_disagreements"]["provenance says camera capture, pixels say AI"]["count"] == 0
    out2 = tmp_path / "v2.parquet"
    r = runner.invoke(app, ["scan", str(crawl), "--out", str(out2), "--no-provenance", *common])
    assert r.exit_code == 0 and pq.read_table(out2).column("provenance").null_count == 2


# -- enrollment that warns ---------------------------------------------------------------------------------------

def test_enroll_counts_new_known_and_unreadable_and_warns_about_small_classes(tmp_path, tiny_model_dir):
    from conftest import BLUE, write_class_dir

    index = tmp_path / "idx"
    common = ["--index", str(index), "--model", str(tiny_model_dir), "--device", "cpu"]
    reds = write_class_dir(tmp_path / "reds", RED, 12)
    r = runner.invoke(app, ["enroll", "real", str(reds), *common])
    assert "12 new; 0 already enrolled; 0 unreadable" in r.output
    assert "warning: class 'real' has 12 images; 50-150 per class" in r.output
    assert "warning: the index holds one class ('real')" in r.output
    blues = write_class_dir(tmp_path / "blues", BLUE, 3, seed0=50)
    (blues / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for i in range(2):  # two red images already enrolled as real, offered again as another class
        (blues / f"again_{i}.jpg").write_bytes((reds / f"img_{i:04d}.jpg").read_bytes())
    r = runner.invoke(app, ["enroll", "gen_blue", str(blues), *common])
    assert r.exit_code == 0, r.output
    assert "3 new; 2 already enrolled (2 as real); 1 unreadable" in r.output
    assert "2 of these images are enrolled as 'real', not 'gen_blue'" in r.output
    assert "warning: class 'gen_blue' has 3 images, fewer than k=11" in r.output
    assert "one class" not in r.output
