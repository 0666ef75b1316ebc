"""The flat code bundle that lets ``trust_remote_code=True`` load a seqzoo checkpoint where seqzoo is not installed.

transformers loads remote code from the files beside config.json and copies (or downloads) only the files that an
entry module names in ``from .x import y`` lines, recursively. seqzoo's modules live in packages and import each
other as ``from seqzoo.a.b import c`` or ``from .x import y``, so the exporter turns the modules one architecture
needs into a flat set of sibling files:

* which modules: start from the modules that define the architecture's config, backbone and causal-LM classes and
  follow every import (at any depth, so lazy imports inside functions come along) that points into a bundled
  package -- ``seqzoo`` and the top-level package of a plugin architecture. Anything else (torch, transformers,
  the standard library, optional accelerators) stays an ordinary import; the tests audit what that leaves.
* names: ``seqzoo/kernels/registry.py`` becomes ``seqzoo_kernels_registry.py``, a package's ``__init__.py`` takes
  the package name (``seqzoo_kernels.py``), and the config and model modules take the names transformers expects
  in ``auto_map``: ``configuration_<model_type>.py`` and ``modeling_<model_type>.py``.
* imports: each import of a bundled module is rewritten in place as a flat relative import. An imported *module
  object* (``from seqzoo.kernels import rnn_cells``, ``from . import reference``) becomes
  ``from . import seqzoo_kernels_rnn_cells as rnn_cells``, preceded by ``from .seqzoo_kernels_rnn_cells import
  __name__ as ...`` because transformers only fetches files named in ``from .x import`` lines.

A hybrid whose ``mixer_types`` name a plugin's token mixer (``seqzoo.mixers``; seqzoo looks mixers up by name) gets
that mixer's code too: the modules of its class and config class are followed as an architecture plugin's are, and
two generated entry modules, which ``auto_map`` names instead (``configuration_<model_type>_mixers.py`` for the
config, ``modeling_<model_type>_mixers.py`` for the models), register the bundled mixer under its name before the
config is read or a model built. Where the mixer's code cannot be bundled, the folder is saved without it and a
warning says it loads only where the plugin is installed.

Parent packages are not bundled: their ``__init__`` (``seqzoo/__init__.py`` registers every architecture) is not
needed by the modules themselves. Kernel backends registered lazily as ``"seqzoo....:fn"`` strings are not
followed; inside the bundle their module cannot be found, so the kernel registry reports them unavailable and the
always-present pure-PyTorch backends run.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("seqzoo")

RECORD_FILE = "seqzoo_bundle.json"

# What every bundled file's first line says (how a repository's files that seqzoo bundled are told from the owner's).
BUNDLED_MARK = "copied into the self-contained code of this checkpoint"
BUNDLE_NOTE = (
    "# {source} from seqzoo {version}, " + BUNDLED_MARK + " with its\n"
    "# imports of {packages} modules rewritten as flat sibling imports, so that transformers can load it with\n"
    "# trust_remote_code=True where seqzoo is not installed. Change seqzoo, not this copy.\n"
)


class BundleError(ValueError):
    """An architecture's code cannot be turned into a flat bundle (the message names the file, line and fix)."""


@dataclass
class Bundle:
    """Flat module name -> source text, plus the ``auto_map`` that points transformers at the classes."""

    files: dict[str, str]
    auto_map: dict[str, str]
    origins: dict[str, str] = field(default_factory=dict)  # flat module name -> original module name

    def write(self, folder: str | Path) -> list[Path]:
        paths = []
        for name, text in sorted(self.files.items()):
            path = Path(folder) / f"{name}.py"
            path.write_text(text, encoding="utf-8", newline="\n")  # (the same bytes on every system)
            paths.append(path)
        return paths


def bundle_record() -> dict[str, Any]:
    """What ``seqzoo_bundle.json`` says of a bundle: the seqzoo, transformers and torch it was exported with, and the
    transformers releases this seqzoo is tested against (its declared dependency range), so a user of a later
    release can tell whether the bundled code predates it (``seqzoo publish --refresh-code`` rewrites it)."""
    from importlib import metadata

    import torch
    import transformers

    import seqzoo

    try:
        requirements = metadata.requires("seqzoo") or []
    except metadata.PackageNotFoundError:  # seqzoo run from a source tree without being installed
        requirements = []
    tested = next((r.split(";")[0].strip()[len("transformers"):] for r in requirements
                   if re.match(r"transformers\s*[<>=!~]", r)), "unknown")
    return {
        "seqzoo_version": seqzoo.__version__,
        "exported_with": {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]},
        "tested_transformers": tested,
    }


def write_bundle(folder: str | Path, spec: Any) -> list[str]:
    """Make the saved model folder ``folder`` load where seqzoo is absent: write the code bundle of ``spec`` beside
    its config.json, set the config's ``auto_map`` and write ``seqzoo_bundle.json``. Returns the code file names.

    ``save_pretrained`` of every seqzoo model calls this, so a folder from ``save_pretrained``, ``seqzoo new``,
    ``seqzoo train`` or ``seqzoo publish`` carries the same code. A plugin mixer the config names whose code cannot be
    bundled is warned about, and the folder then loads only where the plugin is installed."""
    folder = Path(folder)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    mixers = plugin_mixers(spec, config)
    try:
        bundle = _cached_bundle(spec, mixers)
    except BundleError as err:
        if not mixers:
            raise
        bundle = _cached_bundle(spec)
        logger.warning("the code bundle of %s holds none of its plugin mixer(s) %s (%s): the saved folder loads only "
                       "where the plugin is installed (its mixers are looked up by name)", folder,
                       ", ".join(f"{mixer.name!r} ({mixer.mixer_class.__module__}.{mixer.mixer_class.__qualname__})"
                                 for mixer in mixers), err)
    names = [path.name for path in bundle.write(folder)]
    config["auto_map"] = bundle.auto_map
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (folder / RECORD_FILE).write_text(json.dumps(bundle_record(), indent=2) + "\n", encoding="utf-8")
    return names


def plugin_mixers(spec: Any, config: dict[str, Any]) -> tuple[Any, ...]:
    """The plugin token mixers (:class:`seqzoo.models.mixers.MixerSpec`, not seqzoo's own) that the saved
    ``config`` (config.json's dict) of a hybrid of ``spec`` names in its ``mixer_types``; () for other
    architectures."""
    from seqzoo.models.hybrid.configuration_hybrid import HybridConfig
    from seqzoo.models.mixers import BUILTIN_MIXERS, get_mixer

    names = config.get("mixer_types")
    if not issubclass(spec.config_class, HybridConfig) or not isinstance(names, list):
        return ()
    return tuple(mixer for mixer in map(get_mixer, dict.fromkeys(names)) if mixer not in BUILTIN_MIXERS)


# Built once per architecture (and plugin mixers) and process: a bundle reads and parses a dozen to forty source
# files, and a training run or a test session saves the same architecture many times. Sources do not change under a
# running process.
_BUNDLES: dict[tuple[int, tuple[Any, ...]], tuple[Any, Bundle]] = {}


def check_bundle(spec: Any) -> None:
    """Raise :class:`BundleError` where the code of ``spec``'s architecture cannot be bundled (built once, kept for
    :func:`write_bundle`): ``save_pretrained`` asks before it writes anything."""
    _cached_bundle(spec)


def _cached_bundle(spec: Any, mixers: tuple[Any, ...] = ()) -> Bundle:
    key = (id(spec), mixers)
    held = _BUNDLES.get(key)
    if held is None or held[0] is not spec:
        held = _BUNDLES[key] = (spec, build_bundle(spec, mixers))
    return held[1]


def build_bundle(spec: Any, mixers: tuple[Any, ...] = ()) -> Bundle:
    """The bundle of one registered architecture (a :class:`seqzoo.registry.ModelSpec`), with the code of the
    plugin token ``mixers`` (:func:`plugin_mixers`) a hybrid's config names and the module that registers them."""
    from seqzoo.registry import TASKS

    model_type = re.sub(r"\W", "_", spec.model_type)
    classes = {"AutoConfig": spec.config_class, "AutoModel": spec.model_class}
    classes.update({TASKS[task][0]: head for task, head in spec.heads.items()})
    mixer_classes = [cls for mixer in mixers for cls in (mixer.mixer_class, mixer.config_class)]
    for cls in (*classes.values(), *mixer_classes):
        _check_importable(cls)
    first_head = next(iter(spec.heads.values())).__module__
    fixed_names = {first_head: f"modeling_{model_type}"}
    fixed_names.setdefault(spec.config_class.__module__, f"configuration_{model_type}")
    packages = {"seqzoo"} | {cls.__module__.partition(".")[0] for cls in (*classes.values(), *mixer_classes)}

    bundler = _Bundler(packages, fixed_names)
    for cls in (*classes.values(), *mixer_classes):
        bundler.add(cls.__module__)
    auto_map = {auto: f"{bundler.flat_name(cls.__module__)}.{cls.__name__}" for auto, cls in classes.items()}
    if mixers:
        # transformers imports the config's and the models' auto_map modules each into a package of its own (named by
        # a hash of the files it reaches), each with its own mixer registry: both entry modules register the mixers.
        bundler.add(type(mixers[0]).__module__)  # (seqzoo.models.mixers, which the hybrid's config imports anyway)
        configuration, modeling = f"configuration_{model_type}_mixers", f"modeling_{model_type}_mixers"
        bundler.files[configuration] = _mixers_module(bundler, spec.config_class, mixers)
        bundler.files[modeling] = _reexport(configuration, spec.config_class, auto_map)
        auto_map = {auto: f"{configuration if auto == 'AutoConfig' else modeling}.{target.rpartition('.')[2]}"
                    for auto, target in auto_map.items()}
    return Bundle(bundler.files, auto_map, bundler.origins)


def _check_importable(cls: type) -> None:
    # A class of the script being run is found by no import: find_spec('__main__') failed with "__main__.__spec__ is
    # None", naming neither the class nor the fix.
    if cls.__module__ == "__main__":
        raise BundleError(f"{cls.__qualname__} is defined in the script being run (module __main__), so its code "
                          "cannot go into the code bundle, which imports every class from its module: define it in an "
                          "importable module (a file beside the script that the script imports) and register it "
                          "from there")


def _mixers_module(bundler: _Bundler, config_class: type, mixers: tuple[Any, ...]) -> str:
    """The generated entry module that registers the bundled plugin ``mixers`` with the bundle's mixer registry and
    hands on the config class (auto_map's AutoConfig names it, so it runs before the config is read)."""
    import seqzoo

    registry = bundler.flat_name(type(mixers[0]).__module__)
    lines = [
        f"# Written by seqzoo {seqzoo.__version__} for this checkpoint: registers the plugin token mixer(s) its "
        "mixer_types name,\n",
        "# from their code bundled beside it, so that it loads where neither seqzoo nor the plugin is installed.\n",
        f"from .{bundler.flat_name(config_class.__module__)} import {config_class.__name__}\n",
        f"from .{registry} import MixerSpec, register_mixer\n",
    ]
    for index, mixer in enumerate(mixers):
        lines.append(f"from .{bundler.flat_name(mixer.mixer_class.__module__)} import "
                     f"{mixer.mixer_class.__name__} as _mixer_{index}\n")
        lines.append(f"from .{bundler.flat_name(mixer.config_class.__module__)} import "
                     f"{mixer.config_class.__name__} as _config_{index}\n")
    lines.append("\n")
    for index, mixer in enumerate(mixers):
        lines.append(f"register_mixer(MixerSpec({mixer.name!r}, _mixer_{index}, _config_{index}, {mixer.fields!r}, "
                     f"{mixer.description!r}))\n")
    return "".join(lines)


def _reexport(configuration: str, config_class: type, auto_map: dict[str, str]) -> str:
    """The models' generated entry module: the mixers' registration (``configuration``), then the model classes."""
    classes: dict[str, list[str]] = {}
    for auto, target in auto_map.items():
        if auto != "AutoConfig":
            module, _, name = target.rpartition(".")
            classes.setdefault(module, []).append(name)
    return ("# Written by seqzoo for this checkpoint: its model classes, after its plugin mixers are registered.\n"
            f"from .{configuration} import {config_class.__name__}\n"
            + "".join(_from_import(module, list(dict.fromkeys(names)), 0) + "\n" for module, names in classes.items()))


class _Bundler:
    def __init__(self, packages: set[str], fixed_names: dict[str, str]) -> None:
        self.packages = packages
        self.fixed_names = fixed_names
        self.files: dict[str, str] = {}
        self.origins: dict[str, str] = {}

    def flat_name(self, module: str) -> str:
        return self.fixed_names.get(module) or module.replace(".", "_")

    def add(self, module: str) -> None:
        pending = [module]
        while pending:
            name = pending.pop()
            flat = self.flat_name(name)
            if flat in self.origins:
                if self.origins[flat] != name:
                    raise BundleError(
                        f"modules {self.origins[flat]!r} and {name!r} would both be bundled as {flat}.py; "
                        "rename one of them"
                    )
                continue
            path = _source_file(name)
            text, imported = self._rewrite(name, path)
            self.origins[flat] = name
            self.files[flat] = _note(name, path, self.packages) + text
            pending.extend(imported)

    def _rewrite(self, module: str, path: Path) -> tuple[str, list[str]]:
        """The module's source with its bundled imports rewritten, and the modules those imports need."""
        # Line ends as Python reads them: a checkout with Windows line ends (git's autocrlf) mixed with the rewritten
        # imports' "\n", then written in text mode on Windows, gave "\r\r\n", a blank line after every line (a
        # SyntaxError after a line ending in a backslash, extra lines inside every multi-line string).
        source = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        tree = ast.parse(source, filename=str(path))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edits: list[tuple[ast.stmt, list[str]]] = []
        imported: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                statements = self._rewrite_from(node, package, path, imported)
            elif isinstance(node, ast.Import):
                statements = self._rewrite_import(node, path, imported)
            else:
                continue
            if statements is not None:
                edits.append((node, statements))
        return _apply_edits(source, edits), imported

    def _bundled(self, module: str) -> bool:
        return module.partition(".")[0] in self.packages

    def _rewrite_from(self, node: ast.ImportFrom, package: str, path: Path, imported: list[str]) -> list[str] | None:
        target = _absolute_module(node, package, path)
        if not self._bundled(target):
            return None
        statements: list[str] = []
        names: list[str] = []
        for alias in node.names:
            if alias.name != "*" and _is_submodule(target, alias.name):
                submodule = f"{target}.{alias.name}"
                imported.append(submodule)
                statements += self._module_object(submodule, alias.asname or alias.name)
            else:
                names.append(alias.name if alias.asname is None else f"{alias.name} as {alias.asname}")
        if names:
            imported.append(target)
            statements.insert(0, _from_import(self.flat_name(target), names, node.col_offset))
        return statements

    def _rewrite_import(self, node: ast.Import, path: Path, imported: list[str]) -> list[str] | None:
        if not any(self._bundled(alias.name) for alias in node.names):
            return None
        statements = []
        for alias in node.names:
            if not self._bundled(alias.name):
                statements.append(f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else ""))
            elif alias.asname is None:
                parent, _, last = alias.name.rpartition(".")
                fix = f"`from {parent} import {last}`" if parent else "imports of the names it needs"
                raise BundleError(
                    f"{path}:{node.lineno}: `import {alias.name}` binds the package name "
                    f"{alias.name.partition('.')[0]!r}, which a flat code bundle cannot provide; use {fix} instead"
                )
            else:
                imported.append(alias.name)
                statements += self._module_object(alias.name, alias.asname)
        return statements

    def _module_object(self, module: str, bind_as: str) -> list[str]:
        flat = self.flat_name(module)
        # The first line is what transformers reads to copy or download the file; the second binds the module.
        return [f"from .{flat} import __name__ as _bundled_{flat}", f"from . import {flat} as {bind_as}"]


def _from_import(module: str, names: list[str], indent: int) -> str:
    line = f"from .{module} import {', '.join(names)}"
    if indent + len(line) <= 120:
        return line
    inner = " " * (indent + 4)
    return f"from .{module} import (\n" + "".join(f"{inner}{name},\n" for name in names) + " " * indent + ")"


def _source_file(module: str) -> Path:
    try:
        spec = importlib.util.find_spec(module)
    except (ModuleNotFoundError, ValueError) as err:  # (ValueError: a module whose __spec__ is None)
        raise BundleError(f"cannot bundle module {module!r}: {err}") from err
    if spec is None:
        raise BundleError(f"cannot bundle module {module!r}: the code imports it, but there is no such module (a "
                          "misspelt name, or a file missing from the package)")
    origin = spec.origin
    if origin is None or not origin.endswith(".py"):
        raise BundleError(
            f"cannot bundle module {module!r}: it has no Python source file (found {origin!r}); only modules "
            "written in Python (and packages with an __init__.py) can go into the code bundle"
        )
    return Path(origin)


def _absolute_module(node: ast.ImportFrom, package: str, path: Path) -> str:
    if node.level == 0:
        return node.module or ""
    parts = package.split(".")
    if node.level > len(parts):
        raise BundleError(f"{path}:{node.lineno}: relative import goes above the top-level package {parts[0]!r}")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def _is_submodule(package: str, name: str) -> bool:
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:  # a missing parent package: _source_file names it
        return False
    if spec is None or spec.submodule_search_locations is None:
        return False  # a plain module has no submodules: the name is an attribute
    return importlib.util.find_spec(f"{package}.{name}") is not None


def _note(module: str, path: Path, packages: set[str]) -> str:
    import seqzoo

    source = module.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")
    return BUNDLE_NOTE.format(version=seqzoo.__version__, source=source, packages="/".join(sorted(packages)))


def _apply_edits(source: bytes, edits: list[tuple[ast.stmt, list[str]]]) -> str:
    """Replace each import statement's exact span (ast offsets are UTF-8 byte offsets) with its rewrite."""
    line_starts = [0]
    for line in source.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    result = source
    for node, statements in sorted(edits, key=lambda edit: (edit[0].lineno, edit[0].col_offset), reverse=True):
        start = line_starts[node.lineno - 1] + node.col_offset
        end = line_starts[node.end_lineno - 1] + node.end_col_offset
        prefix = source[line_starts[node.lineno - 1] : start]
        starts_line = not prefix.strip()
        indent = prefix.decode("utf-8")
        # A statement that owns its line keeps one statement per line; one sharing a line (`if x: import y`) is
        # rewritten on that line.
        joined = ("\n" + indent).join(statements) if starts_line else "; ".join(statements)
        result = result[:start] + joined.encode("utf-8") + result[end:]
    return result.decode("utf-8")


__all__ = ["RECORD_FILE", "Bundle", "BundleError", "bundle_record", "build_bundle", "plugin_mixers", "write_bundle"]
