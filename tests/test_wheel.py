"""seqzoo as a user installs it: built into a wheel and an sdist by setuptools' own build hooks (no network, no pip),
and run from the unpacked wheel in a folder outside the checkout. Every other test runs seqzoo from its checkout
(``pip install -e``), where the package reads its presets, recipes and card templates in place: a file the wheel
leaves out, or one found only through the checkout, fails for users alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import seqzoo
from seqzoo.cli import main
from seqzoo.hub import cards
from seqzoo.lab import findings
from seqzoo.training import recipe_loading
from tests.conftest import python_path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "seqzoo"
# What pyproject.toml builds the wheel and the sdist from (tests/ is copied too: the sdist must leave it out).
BUILD_INPUTS = ("pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "seqzoo_cli.py", "seqzoo", "tests")
# The folders of package data the code reads through Path(__file__) at run time.
DATA_FOLDERS = {"presets": seqzoo.registry.PRESET_DIR, "recipes": recipe_loading.RECIPE_DIR,
                "card templates": cards.TEMPLATE_DIR, "the lab's card prose": findings.CARD_DIR}

_BUILD = """
import sys
from setuptools import build_meta
kind, out = sys.argv[1:3]
print((build_meta.build_wheel if kind == "wheel" else build_meta.build_sdist)(out))
"""

# Run from the unpacked wheel, in a folder of its own: seqzoo's presets, recipes and cards as an installed user reads
# them, and a model made and published there as `seqzoo new` and `seqzoo publish --dry-run` make them.
_INSTALLED = """
import json
import sys
from pathlib import Path

import seqzoo
from seqzoo.cli import main
from seqzoo.training.recipe_loading import list_recipes, load_recipe

site = Path(sys.argv[1])
assert Path(seqzoo.__file__).resolve().is_relative_to(site.resolve()), seqzoo.__file__
assert main(["new", "lstm-tiny", "lstm"]) == 0
assert main(["publish", "lstm", "me/lstm", "--dry-run", "--output", "published"]) == 0
load_recipe("lstm-pydoc")
print(json.dumps({"presets": seqzoo.list_models(), "recipes": list_recipes()}))
"""


def _build(kind: str, source: Path, out: Path) -> Path:
    run = subprocess.run([sys.executable, "-c", _BUILD, kind, str(out)], cwd=source, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return out / run.stdout.strip().splitlines()[-1]


def _files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A wheel built from a copy of the checkout's build inputs, the sdist built beside it, and the wheel built from
    that sdist. A link in the copy is a text file holding its target, as git checks a link out where links are off
    (Windows' default): a package that needs links to hold its files builds without them there."""
    pytest.importorskip("setuptools", minversion="77", reason="pyproject.toml builds with setuptools >= 77")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "checkout"
    source.mkdir()
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.exists():
            shutil.copy2(path, source / name)
    for folder, names, files in os.walk(source):  # (os.walk does not enter a linked folder)
        for link in [Path(folder) / name for name in names + files if (Path(folder) / name).is_symlink()]:
            target = os.readlink(link)
            link.unlink()
            link.write_text(target, encoding="utf-8")
    wheel = _build("wheel", source, root / "wheel")
    sdist = _build("sdist", source, root / "sdist")
    with tarfile.open(sdist) as archive:
        # (extraction filters came with Python 3.11.4; seqzoo supports 3.11.0)
        archive.extractall(root / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    from_sdist = _build("wheel", next((root / "unpacked").iterdir()), root / "wheel-from-sdist")
    return {"root": root, "wheel": wheel, "sdist": sdist, "wheel_from_sdist": from_sdist}


def test_the_package_holds_no_links():
    # seqzoo/configs and seqzoo/hub_cards were links to ../configs and ../hub_cards: git makes a link a text file
    # holding its target where links are off (Windows' default), so such a checkout, and the wheel built from it,
    # had no presets, recipes or card templates (`seqzoo new lstm-tiny` said "unknown model preset", listing none).
    links = [path.relative_to(REPO).as_posix() for path in PACKAGE.rglob("*") if path.is_symlink()]
    assert not links, f"links in the package: {links}"


@pytest.mark.release_independent  # (what the wheel holds is setuptools' doing, whatever transformers is installed)
def test_the_wheel_holds_every_file_the_package_reads(built):
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = set(wheel.namelist())
        entry_points = next(wheel.read(name).decode() for name in names if name.endswith(".dist-info/entry_points.txt"))
    # (every file of the package folder: its modules, its data, and the pages beside the code that its docstrings
    # send a reader to, kernels/<op>/README.md and models/README.md)
    package = {path.relative_to(REPO).as_posix() for path in PACKAGE.rglob("*")
               if path.is_file() and "__pycache__" not in path.parts}
    assert package | {"seqzoo_cli.py"} <= names, sorted((package | {"seqzoo_cli.py"}) - names)
    assert "seqzoo = seqzoo_cli:main" in entry_points
    for what, folder in DATA_FOLDERS.items():
        inside = folder.relative_to(PACKAGE.resolve()).as_posix()
        wanted = {f"seqzoo/{inside}/{path.name}" for path in folder.iterdir() if path.is_file()}
        assert wanted and wanted <= names, f"{what}: {sorted(wanted - names)} not in the wheel"


@pytest.mark.release_independent
def test_the_sdist_builds_the_same_wheel(built):
    with zipfile.ZipFile(built["wheel"]) as wheel, zipfile.ZipFile(built["wheel_from_sdist"]) as again:
        assert {n: wheel.read(n) for n in wheel.namelist()} == {n: again.read(n) for n in again.namelist()}
    with tarfile.open(built["sdist"]) as sdist:
        top = {Path(name).parts[1] for name in sdist.getnames() if len(Path(name).parts) > 1}
    # (setuptools adds tests/test*.py to an sdist of its own accord: without conftest.py, the fixtures and the
    # benchmarks they import, that part of the suite fails; the suite runs from a checkout)
    assert "tests" not in top, sorted(top)


def test_what_a_user_reads_names_no_folder_of_the_checkout(tmp_path, capsys):
    # (an installed user has no configs/: the train command's help and an empty recipe's refusal sent them there)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n", encoding="utf-8")
    with pytest.raises(ValueError, match="--print-recipe") as refused:
        recipe_loading.load_recipe(empty)
    for text in (help_text, str(refused.value)):
        assert "configs/" not in text, text


@pytest.mark.release_independent  # (the checkout's seqzoo and the wheel's run on the one transformers installed)
def test_an_installed_wheel_makes_what_the_checkout_makes(built, tmp_path, monkeypatch):
    site, work = tmp_path / "site", tmp_path / "work"
    with zipfile.ZipFile(built["wheel"]) as wheel:
        wheel.extractall(site)
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": python_path(site)}
    run = subprocess.run([sys.executable, "-c", _INSTALLED, str(site)], cwd=work, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    installed = json.loads(run.stdout.strip().splitlines()[-1])
    assert installed == {"presets": seqzoo.list_models(), "recipes": recipe_loading.list_recipes()}

    monkeypatch.chdir(tmp_path)
    assert main(["new", "lstm-tiny", "lstm"]) == 0
    assert main(["publish", "lstm", "me/lstm", "--dry-run", "--output", "published"]) == 0
    for folder in ("lstm", "published"):  # (the code bundle, config, card and weights: the same bytes)
        ours, theirs = _files(tmp_path / folder), _files(work / folder)
        assert ours.keys() == theirs.keys(), folder
        differ = [name for name in ours if ours[name] != theirs[name]]
        assert not differ, f"{folder}: {differ} differ between the wheel and the checkout"
