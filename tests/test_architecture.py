"""The dependency rules of docs/architecture.md, checked on the source (every import, lazy ones included):
packages depend one way, imgscan_core -> indexes -> scanner -> train, and no module imports another
module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("imgscan_core", "indexes", "scanner", "train")
# What each package may import, besides itself. scanner.evaluation and the CLI live in `scanner`; the CLI finds
# `train`'s command through the `imgscan.commands` entry point, never by importing it.
ALLOWED = {
    "imgscan_core": set(),
    "indexes": {"imgscan_core"},
    "scanner": {"imgscan_core", "indexes"},
    "train": {"imgscan_core", "indexes", "scanner"},
}


def _imports(path: Path):
    """(line, module, names) of every import in a file, function-level imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [a.name for a in node.names]


def _sources():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield package, path


def test_packages_depend_one_way():
    wrong = []
    for package, path in _sources():
        for line, module, _ in _imports(path):
            top = module.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_another_modules_private_names():
    wrong = []
    for _, path in _sources():
        for line, module, names in _imports(path):
            if module.split(".")[0] in PACKAGES:
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private or any(part.startswith("_") and part != "__main__" for part in module.split(".")):
                    wrong.append(f"{path.relative_to(REPO)}:{line} from {module} import {', '.join(names)}")
    assert not wrong, "\n".join(wrong)


def test_scripts_live_beside_the_packages():
    """Benchmarks and ops scripts (argparse mains) are kept in benchmarks/ and tools/, as timm keeps its
    scripts beside its library; the packages hold the library and the one CLI."""
    scripts = [path.relative_to(REPO) for _, path in _sources() if "argparse" in path.read_text(encoding="utf-8")]
    assert not scripts, scripts
