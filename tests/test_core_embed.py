"""The embed stage: unit-norm output, numpy or torch input, precision choices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scanner.embed import Embedder
from imgscan_core.errors import UsageError


def test_embeddings_are_unit_norm_and_input_type_does_not_matter(tiny_model_dir):
    embedder = Embedder(tiny_model_dir, device="cpu")
    x = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    a = embedder.embed(x)
    b = embedder.embed(torch.from_numpy(x))
    assert a.shape == (5, 128) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert np.array_equal(a, b)
    assert embedder.embed(x[:0]).shape == (0, 128)


def test_bf16_autocast_stays_close_to_fp32_and_bad_precisions_are_refused(tiny_model_dir):
    x = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    fp32 = Embedder(tiny_model_dir, device="cpu", precision="fp32", runtime="torch").embed(x)
    bf16 = Embedder(tiny_model_dir, device="cpu", precision="bf16", runtime="torch").embed(x)
    assert np.all((fp32 * bf16).sum(axis=1) > 0.99)  # cosine similarity
    with pytest.raises(UsageError, match="needs --device cuda"):
        Embedder(tiny_model_dir, device="cpu", precision="fp16")
    with pytest.raises(UsageError, match="expected one of"):
        Embedder(tiny_model_dir, device="cpu", precision="int4")


def test_auto_precision_follows_the_hardware(tiny_model_dir, monkeypatch):
    import scanner.embed as embed

    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(embed, "cpu_has_native_bf16", lambda: native)
        assert Embedder(tiny_model_dir, device="cpu").precision == expected
    assert embed.resolve_precision("auto", "cuda") == "fp16"
    assert embed.resolve_precision("fp32", "cpu") == "fp32"
    flags = open("/proc/cpuinfo").read() if __import__("os").path.exists("/proc/cpuinfo") else ""
    monkeypatch.undo()
    assert embed.cpu_has_native_bf16() == (" avx512_bf16" in flags or " amx_bf16" in flags)


def test_openvino_runtime_matches_torch_and_caches_its_onnx_export(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # (conftest isolates it too; named here)
    x = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    ref = Embedder(tiny_model_dir, device="cpu", precision="fp32", runtime="torch").embed(x)
    ov = Embedder(tiny_model_dir, device="cpu", precision="fp32", runtime="openvino")
    assert ov.runtime == "openvino"
    got = ov.embed(x)
    assert got.shape == ref.shape and np.all((got * ref).sum(axis=1) > 0.9999)
    assert ov.embed(x[:0]).shape == (0, 128)
    cached = list((tmp_path / "cache" / "imgscan" / "onnx").glob("*.onnx"))
    assert len(cached) == 1 and cached[0].stem == ov.card.weights_sha256
    # a damaged cache file is rebuilt, not handed to OpenVINO
    cached[0].write_bytes(b"garbage")
    again = Embedder(tiny_model_dir, device="cpu", precision="fp32", runtime="openvino").embed(x)
    assert np.allclose(again, got, atol=1e-5) and cached[0].read_bytes() != b"garbage"
    with pytest.raises(UsageError, match="expected one of"):
        Embedder(tiny_model_dir, device="cpu", runtime="tensorrt")


def test_auto_runtime_is_openvino_on_cpu_and_torch_without_it(tiny_model_dir, monkeypatch):
    import scanner.embed as embed

    assert embed.resolve_runtime("auto", "cuda") == "torch"
    auto = Embedder(tiny_model_dir, device="cpu")
    assert auto.runtime == "openvino" and auto.module is None  # the compiled OpenVINO model runs, not torch
    monkeypatch.setattr(embed, "openvino_installed", lambda: False)
    assert Embedder(tiny_model_dir, device="cpu").runtime == "torch"
    with pytest.raises(UsageError, match="runs on the CPU"):
        embed.resolve_runtime("openvino", "cuda")


def test_onnx_export_check_compares_with_the_torchscript_module(tmp_path):
    """The check that guards the ONNX cache: the export of a module agrees with it (cosine ~1), and the same ONNX
    graph checked against another module does not, so a wrong export is refused before it is cached."""
    import openvino as ov

    from conftest import make_tiny_embedder
    from scanner.openvino_runtime import EXPORT_MIN_COSINE, cached_onnx, export_check, onnx_cache_dir

    first, second = make_tiny_embedder(), make_tiny_embedder()
    with torch.no_grad():  # another projection: another model
        second.projection.copy_(torch.randn(48, 128, generator=torch.Generator().manual_seed(7)))
    core = ov.Core()
    path = cached_onnx(first, "a" * 64, 32, core)
    assert export_check(first, core, path, 32) >= EXPORT_MIN_COSINE
    assert export_check(second, core, path, 32) < 0.99
    sidecar = onnx_cache_dir() / f"{'a' * 64}.onnx.json"
    assert __import__("json").loads(sidecar.read_text())["check_min_cosine"] >= EXPORT_MIN_COSINE


def test_scan_with_the_openvino_runtime_gives_the_torch_verdicts(tmp_path, tiny_model_dir, two_class_index):
    pytest.importorskip("openvino")
    import json

    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from conftest import BLUE, RED, write_class_dir
    from scanner.cli import app

    crawl = tmp_path / "crawl"
    write_class_dir(crawl / "r", RED, 6, seed0=10)
    write_class_dir(crawl / "b", BLUE, 6, seed0=20)
    tables = {}
    for runtime in ("torch", "openvino"):
        out = tmp_path / f"{runtime}.parquet"
        result = CliRunner().invoke(app, ["scan", str(crawl), "--out", str(out), "--index", str(two_class_index),
                                          "--model", str(tiny_model_dir), "--device", "cpu", "--runtime", runtime,
                                          "--precision", "fp32"])
        assert result.exit_code == 0, result.output
        tables[runtime] = pq.read_table(out).sort_by("path")
        assert json.loads(tables[runtime].schema.metadata[b"imgscan"])["runtime"] == runtime
    assert tables["torch"].column("label").to_pylist() == tables["openvino"].column("label").to_pylist()
    assert np.allclose(tables["torch"].column("ai_score").to_numpy(), tables["openvino"].column("ai_score").to_numpy(),
                       atol=1e-3)


def test_weights_hash_ignores_the_serialization_id_but_not_the_weights(tiny_model_dir, tmp_path):
    import dataclasses

    from scanner.model import load_model, save_model_dir, tensors_sha256
    from conftest import load_script

    weights_hash = load_script("tools/weights_hash.py").main

    card, module = load_model(tiny_model_dir)
    again = save_model_dir(module, dataclasses.replace(card, weights_sha256=""), tmp_path / "again")
    assert again.tensors_sha256 == card.tensors_sha256 == tensors_sha256(module) != ""
    assert again.weights_sha256 != card.weights_sha256  # TorchScript writes a random serialization id
    assert weights_hash([str(tiny_model_dir), str(tmp_path / "again")]) == 0
    with torch.no_grad():
        next(t for t in module.state_dict().values() if t.is_floating_point()).add_(1e-3)
    changed = save_model_dir(module, dataclasses.replace(card, weights_sha256=""), tmp_path / "changed")
    assert changed.tensors_sha256 != card.tensors_sha256
    assert weights_hash([str(tiny_model_dir), str(tmp_path / "changed")]) == 1


def test_help_shows_the_extras_to_install_with_their_brackets():
    """Typer renders help as rich markup, where `[ray]` would vanish as a style tag unless escaped."""
    from typer.testing import CliRunner

    from scanner.cli import app

    result = CliRunner().invoke(app, ["scan", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "imgscan[ray]" in text and "--precision" in text and "--runtime" in text


def test_int8_version_is_made_verified_and_run_by_openvino(tiny_model_dir, tmp_path):
    """`imgscan quantize` adds an NNCF int8 IR with its sha256 in the card; `--precision int8` runs it, close to
    fp32; a changed file is refused, and so is int8 for a model without it."""
    pytest.importorskip("nncf")
    import shutil

    from typer.testing import CliRunner

    from conftest import BLUE, GREEN, RED, write_class_dir
    from scanner.cli import app
    from scanner.model import read_card

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    data = tmp_path / "data"
    for seed0, (name, rgb) in enumerate((("real", RED), ("gen_blue", BLUE), ("gen_green", GREEN))):
        write_class_dir(data / name, rgb, 8, seed0=100 * seed0)
    with pytest.raises(UsageError, match="no int8 version"):
        Embedder(model, device="cpu", precision="int8")
    result = CliRunner().invoke(app, ["quantize", str(model), str(data), "--images", "16"])
    assert result.exit_code == 0, result.output
    card = read_card(model)
    assert card.int8["accuracy"]["n"] == 8 and card.int8["accuracy"]["cosine_min"] > 0.9
    assert card.weights_sha256 == read_card(tiny_model_dir).weights_sha256  # the fp32 model is unchanged
    x = np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    int8 = Embedder(model, device="cpu", precision="int8")
    assert int8.runtime == "openvino" and int8.precision == "int8"
    fp32 = Embedder(model, device="cpu", precision="fp32", runtime="torch").embed(x)
    assert np.all((int8.embed(x) * fp32).sum(axis=1) > 0.9)
    with pytest.raises(UsageError, match="runs with OpenVINO"):
        Embedder(model, device="cpu", precision="int8", runtime="torch")
    (model / card.int8["bin"]).write_bytes(b"\0" * 64)
    with pytest.raises(UsageError, match="sha256 differs"):
        Embedder(model, device="cpu", precision="int8")


_EMBEDDERS_RELEASED_OUT_OF_ORDER = """
import ctypes, signal, subprocess, sys
import numpy as np
from scanner.embed import Embedder

class Stack(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

def alternate_stack_is_mapped():
    s = Stack()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(s))
    if not s.sp:
        return True
    for line in open("/proc/self/maps"):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= s.sp < hi:
            return True
    return False

first = Embedder(sys.argv[1], device="cpu", precision="fp32", runtime="openvino")
second = Embedder(sys.argv[1], device="cpu", precision="fp32", runtime="openvino")
x = np.zeros((1, 32, 32, 3), np.uint8)
first.embed(x), second.embed(x)
del first  # released first in, first out
del second
print("mapped" if alternate_stack_is_mapped() else "dangling", flush=True)
signal.signal(signal.SIGCHLD, lambda *_: None)  # what torch's DataLoader installs
for _ in range(3):
    subprocess.run(["true"])
print("alive")
"""


def test_embedders_released_in_any_order_leave_signals_deliverable(tiny_model_dir, tmp_path):
    """Every OpenVINO Core's CPU plugin swaps the thread's alternate signal stack in and back out; Cores released
    first-in, first-out left it pointing at unmapped memory and the next SIGCHLD killed the process (the test
    suite died of it). One Core per process (scanner.openvino_runtime.openvino_core) keeps it valid. In a process
    of its own: the failure mode is a SIGSEGV."""
    pytest.importorskip("openvino")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", _EMBEDDERS_RELEASED_OUT_OF_ORDER, str(tiny_model_dir)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parents[1])
    assert done.returncode == 0 and done.stdout.split() == ["mapped", "alive"], (done.returncode, done.stderr[-2000:])
