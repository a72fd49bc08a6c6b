"""Ray is an optional extra: the local engine never imports it, and `--engine ray` without it is a one-line error.
Runs with or without Ray installed."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from conftest import RED, write_class_dir
from scanner.cli import app


def test_local_engine_does_not_import_ray():
    code = ("import sys, scanner.cli, scanner.scan, scanner.engines.local, scanner.engines, scanner.engines.ray_engine; "
            "print(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_engine_ray_without_ray_installed(tmp_path, tiny_model_dir, two_class_index, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    img = write_class_dir(tmp_path / "c", RED, 1)
    result = CliRunner().invoke(app, ["scan", str(img), "--out", str(tmp_path / "v.parquet"), "--index",
                                      str(two_class_index), "--model", str(tiny_model_dir), "--engine", "ray"])
    # (the CLI prints errors as rich markup, which swallows "[ray]": see the report; the message itself has it)
    assert result.exit_code == 2 and "--engine ray needs Ray: pip install" in result.output
    assert not (tmp_path / "v.parquet").exists() and not (tmp_path / "v.parquet.parts").exists()
