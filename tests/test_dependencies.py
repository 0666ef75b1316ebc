"""pyproject.toml's dependencies against what they must be: every package seqzoo imports is declared (numpy,
tokenizers and tqdm came only through transformers' own requirements), and no floor is below what the oldest
supported transformers requires of the same package (safetensors>=0.4 and huggingface-hub>=1.0 could never be
installed beside transformers 5.23, which requires 0.8 and 1.31)."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
IMPORT_TO_DISTRIBUTION = {"yaml": "pyyaml", "huggingface_hub": "huggingface-hub"}
# Imported only behind a check whose error names the package to install, and in no extra.
UNDECLARED = {"datasets"}  # (data.source='dataset': "needs the `datasets` package: pip install datasets")

pytestmark = pytest.mark.skipif(not PYPROJECT.is_file(), reason="needs the repository's pyproject.toml")


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def _floors(requirements: list[str]) -> dict[str, Version]:
    floors = {}
    for text in requirements:
        req = Requirement(text)
        lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        floors[canonicalize_name(req.name)] = max(lows) if lows else None
    return floors


def test_every_package_seqzoo_imports_is_declared():
    project = _project()
    declared = set(_floors(project["dependencies"]))
    for extra in project["optional-dependencies"].values():
        declared |= set(_floors(extra))
    imported = set()
    for path in [*(ROOT / "seqzoo").rglob("*.py"), ROOT / "seqzoo_cli.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"seqzoo", "seqzoo_cli"} - UNDECLARED
    missing = sorted(name for name in third_party
                     if canonicalize_name(IMPORT_TO_DISTRIBUTION.get(name, name)) not in declared)
    assert not missing, f"imported by seqzoo but not declared in pyproject.toml: {missing}"


def test_no_floor_is_below_what_the_oldest_supported_transformers_requires():
    floors = _floors(_project()["dependencies"])
    oldest = floors["transformers"]
    installed = Version(importlib.metadata.version("transformers"))
    if installed.release[:2] != oldest.release[:2]:
        pytest.skip(f"transformers {installed} is installed, not the oldest supported {oldest} (CI runs both)")
    for text in importlib.metadata.requires("transformers"):
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if req.marker is not None or name not in floors:
            continue
        needed = _floors([text])[name]
        assert needed is None or (floors[name] is not None and floors[name] >= needed), (
            f"pyproject.toml's floor for {name} is {floors[name]}, but transformers {installed} requires {req}")
