"""Shared fixtures: a small TorchScript embedder of the tests' own, and images the tests make themselves.

The tiny embedder is a real TorchScript model honouring the model contract (uint8 NHWC->NCHW input, L2-normalised
128-d output); its features are coarse colour layouts, so images of distinct colours land in distinct classes
and verdicts can be checked exactly. No GPU, no ../shared, no download.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

KIT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kit"


def make_tiny_embedder():
    import torch
    from torch import nn

    class TinyColourEmbedder(nn.Module):
        """4x4 grid of mean colours (48 values) -> fixed random projection to 128 -> L2 norm."""

        def __init__(self):
            super().__init__()
            gen = torch.Generator().manual_seed(1234)
            self.register_buffer("projection", torch.randn(48, 128, generator=gen))
            self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = (x.to(self.projection.dtype) / 255.0 - self.mean) / self.std
            grid = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
            return nn.functional.normalize(grid @ self.projection, dim=1)

    return torch.jit.script(TinyColourEmbedder().eval())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from scanner.model import ModelCard, save_model_dir

    out = tmp_path_factory.mktemp("tiny_model")
    card = ModelCard(name="tiny-colour", version="test", input_size=32, embedding_dim=128,
                     backbone="4x4 colour grid + random projection", training_data="none (test fixture)")
    save_model_dir(make_tiny_embedder(), card, out)
    return out


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def coloured(rgb: tuple[int, int, int], size=(48, 40), noise: int = 30, seed: int = 0) -> Image.Image:
    """A noisy image of one colour; brightness varies per seed so that each class has some spread."""
    rng = np.random.default_rng(seed)
    base = np.array(rgb, dtype=np.float64) * rng.uniform(0.75, 1.0)
    arr = np.clip(base + rng.integers(-noise, noise + 1, (size[1], size[0], 3)), 0, 255)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


def write_class_dir(root: Path, rgb, n: int, seed0: int = 0, fmt: str = "JPEG", ext: str = ".jpg") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"img_{seed0 + i:04d}{ext}").write_bytes(encode(coloured(rgb, seed=seed0 + i), fmt))
    return root


@pytest.fixture()
def two_class_index(tmp_path, tiny_model_dir) -> Path:
    """An index with classes `real` (red images) and `gen_blue` (blue images), enrolled through the CLI code."""
    from typer.testing import CliRunner

    from scanner.cli import app

    index = tmp_path / "index"
    runner = CliRunner()
    for label, rgb, seed in (("real", RED, 0), ("gen_blue", BLUE, 100)):
        src = write_class_dir(tmp_path / f"support_{label}", rgb, 20, seed0=seed)
        result = runner.invoke(app, ["enroll", label, str(src), "--index", str(index), "--model", str(tiny_model_dir), "--device", "cpu"])
        assert result.exit_code == 0, result.output
    return index


def kit_available() -> bool:
    return (KIT_DIR / "manifest.csv").is_file()


needs_kit = pytest.mark.skipif(not kit_available(), reason="../shared/data/kit is not present (a user's clone)")


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path, monkeypatch):
    """Never touch the real per-user index or cache, and never pick up a model from the environment."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # the OpenVINO runtime's ONNX cache
    monkeypatch.delenv("IMGSCAN_INDEX", raising=False)
    monkeypatch.delenv("IMGSCAN_MODEL", raising=False)
    os.environ.setdefault("OMP_NUM_THREADS", "2")


REPO = Path(__file__).resolve().parent.parent


def load_script(relative: str):
    """Import a script kept beside the packages (tools/, benchmarks/) as a module, for its tests."""
    import importlib.util
    import sys

    path = REPO / relative
    sys.path.insert(0, str(path.parent))  # scripts import their neighbours by name
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # dataclasses resolve their string annotations through it
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def real_photos_data(tmp_path) -> Path:
    """A manifest data set for the tools that derive images from real photos: three real photos outside fold 4 and
    the source `unseen`, one inside each, and one AI image; one size not a multiple of 8."""
    data = tmp_path / "data"
    (data / "images" / "real").mkdir(parents=True)
    (data / "images" / "gan").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    # (name, label, source, group, fold, size): 100x90 is not a multiple of the autoencoder's 8
    for name, label, source, group, fold, size in [
        ("a", "real", "cam", "g1", 0, (100, 90)), ("b", "real", "cam", "g1", 0, (96, 96)),
        ("c", "real", "cam", "g2", 1, (120, 104)), ("d", "real", "cam", "g3", 4, (96, 96)),
        ("e", "real", "unseen", "g4", 1, (96, 96)), ("f", "gan", "cam", "g5", 0, (96, 96)),
    ]:
        arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(data / "images" / label / f"{name}.jpg", quality=95)
        rows.append([f"images/{label}/{name}.jpg", label, int(label != "real"), source, group, fold, 0])
    with open(data / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "is_ai", "source", "group", "fold", "upscaled"])
        w.writerows(rows)
    return data


def sigkill_when_journaled(proc, staging: Path, nbytes: int, timeout_s: float = 120.0) -> None:
    """SIGKILL a running scan once the journals of its unfinished run (`staging`, OUT.partial) hold `nbytes`:
    rows were written, the scan is not finished."""
    import signal
    import time

    deadline = time.monotonic() + timeout_s
    while not (staging.exists() and sum(j.stat().st_size for j in staging.glob("journal-*.arrows")) > nbytes):
        assert proc.poll() is None and time.monotonic() < deadline, "scan ended before it could be killed"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(autouse=True)
def dali_never_fails_in_the_test_process():
    """DALI is not run again in a process after one of its pipelines failed (scanner.decode.DaliImageDecoder), so
    a test that made it fail here would turn every later in-process DALI test into a Pillow test unseen. Tests
    that need a DALI failure make it in a child process (the isolated decoder's, or one of their own)."""
    yield
    from scanner.decode import dali_failed_in_process

    assert not dali_failed_in_process(), "DALI failed in the test process; make that failure in a child process"


def dali_failing_jpeg() -> bytes:
    """A whole JPEG (its end is there: `looks_whole` lets it through) whose scan names a component its frame does
    not have: both DALI and Pillow refuse it."""
    from scanner.decode import jpeg_scan_offset

    data = bytearray(encode(coloured(RED, size=(64, 48), seed=1)))
    scan_at = jpeg_scan_offset(bytes(data))
    sos = data.rfind(b"\xff\xda", 0, scan_at)
    data[sos + 5] = 9  # the scan's first component id
    return bytes(data)
