"""Loading a recipe: a YAML (or JSON) file, a recipe preset (``seqzoo/configs/<name>.yaml``) or a model preset (the
default recipe for that model), with overrides applied before the recipe is built and validated
(seqzoo.training.recipe).

Overrides from the command line are ``key=value`` pairs where ``key`` is a dotted path (``train.max_steps=100``,
``model.config.dropout=0.1``) or a field name that exists in only one section (``max_steps=100``).
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from seqzoo.training.recipe import DEFAULT_PRESET, SECTIONS, TRAINED_TASKS, DataSection, Recipe, recipe_from_dict
from seqzoo.training.recipe_reading import DuplicateKeyError, read_recipe_file

RECIPE_DIR = Path(__file__).resolve().parent.parent / "configs"


def list_recipes() -> list[str]:
    """The names of the recipe presets (``lstm-pydoc``, ...), which :func:`load_recipe` and ``seqzoo train`` take."""
    return sorted(path.stem for path in RECIPE_DIR.glob("*.yaml"))


def _folder_is_no_recipe(path: Path) -> str:
    """What to do with a run's folder or a saved model's folder given where a recipe goes."""
    if (path / "recipe.yaml").is_file():
        return (f"{str(path)!r} is the folder of a run, not a recipe: train its recipe again with `seqzoo train "
                f"{path / 'recipe.yaml'}`, continue the run from its newest checkpoint with `seqzoo train "
                f"{path / 'recipe.yaml'} --resume`, or train the model it saved further on a recipe's data with "
                f"`seqzoo train <recipe> model.path={path}`")
    return (f"{str(path)!r} holds a saved model, not a recipe: train it further on a recipe's data with "
            f"`seqzoo train <recipe> model.path={path}` (for example `seqzoo train text-file data.path=corpus.txt "
            f"model.path={path}`)")


def load_recipe(source: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> Recipe:
    """Read ``source`` -- a YAML file, a recipe preset or a model preset -- and apply dotted ``overrides``."""
    import seqzoo

    source = _check_arguments(source, overrides)
    path = Path(source)
    named_from_preset = False  # a model preset as the recipe: the run is named after its model and data
    # A folder that happens to share a preset's name (an output folder, say) is not a recipe file.
    if path.suffix in (".yaml", ".yml", ".json") or path.is_file():
        if path.is_dir():
            raise ValueError(f"recipe file {str(path)!r} is a folder, not a YAML file")
        if not path.is_file():
            raise ValueError(f"recipe file {str(path)!r} does not exist")
        try:
            values = read_recipe_file(path)
        except UnicodeDecodeError as err:
            raise ValueError(f"recipe file {str(path)!r} is not UTF-8 text ({err})") from err
        except yaml.YAMLError as err:
            raise ValueError(f"recipe file {str(path)!r} is not valid YAML: {err}") from err
        except json.JSONDecodeError as err:
            raise ValueError(f"recipe file {str(path)!r} is not valid JSON: {err}") from err
        except DuplicateKeyError as err:
            raise ValueError(f"recipe file {str(path)!r}: {err}; give each key once") from err
        except RecursionError as err:  # (a bare RecursionError from inside the JSON or YAML reader)
            raise ValueError(f"recipe file {str(path)!r} nests lists or mappings too deep to read ({err})") from None
        if values is None:  # empty, or comments only: it would train the default recipe without a word
            raise ValueError(f"recipe file {str(path)!r} is empty (or only comments); a recipe names at least its "
                             "model (model: {preset: lstm-tiny}); `seqzoo train lstm-pydoc --print-recipe` prints "
                             "a whole one to start from")
        default_name = path.stem
    elif source in list_recipes():
        values = read_recipe_file(RECIPE_DIR / f"{source}.yaml") or {}
        default_name = source
    elif source in seqzoo.list_models():
        if seqzoo.registry.preset_values(source)[0].default_task == "seq2seq":  # an encoder-decoder: a built-in task
            values = {"model": {"preset": source}, "data": {"source": "task", "task": "reverse"}}
        else:
            values = {"model": {"preset": source}}
        default_name, named_from_preset = None, True  # (named once the overrides are in: _preset_run_name)
    elif path.is_dir() and ((path / "recipe.yaml").is_file() or (path / "config.json").is_file()):
        raise ValueError(_folder_is_no_recipe(path))
    else:
        close = difflib.get_close_matches(source, list_recipes() + seqzoo.list_models(), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown recipe {source!r}: not a YAML file, a recipe preset or a model preset.{hint} "
            f"Recipe presets: {', '.join(list_recipes()) or '(none)'}; model presets: see `seqzoo list`"
        )
    if not isinstance(values, dict):
        raise ValueError(f"recipe {source!r} must be a mapping of sections, got {type(values).__name__}")
    if default_name is not None:
        values.setdefault("name", default_name)
    given: dict[str, Any] = {}
    typed: dict[str, str] = {}  # dotted key -> the override as given, key=value
    for key, value in (overrides or {}).items():
        shown = f"{key}={value!r}"  # (as given: a later override may set a field inside this value)
        dotted = apply_override(values, key, value)
        for other in given:  # (a field's short and dotted names, or a section and a field inside it: one would go)
            if dotted == other or dotted.startswith(other + ".") or other.startswith(dotted + "."):
                what = f"both set {dotted}" if dotted == other else f"overlap ({min(dotted, other, key=len)} holds " \
                       f"{max(dotted, other, key=len)})"
                raise ValueError(f"overrides {typed[other]} and {shown} {what}; give each setting once")
        given[dotted], typed[dotted] = value, shown
    sources = [key for key in ("model.preset", "model.path") if given.get(key) is not None]
    if len(sources) == 1 and isinstance(values.get("model"), dict):
        # A model source given on the command line replaces the recipe's other one: `seqzoo train lstm-pydoc
        # model.path=runs/mine` trains the saved model on that recipe's data (the recipe's model.config, overrides of
        # its preset's config, goes with the preset; one given on the command line too is refused with the path).
        if sources == ["model.preset"]:
            values["model"].pop("path", None)
        else:
            values["model"].pop("preset", None)
            if not any(key.startswith("model.config") for key in given):
                values["model"].pop("config", None)
    if named_from_preset and "name" not in given:
        values["name"] = _preset_run_name(values, source)
    return recipe_from_dict(values, source=f"recipe {source!r}")


def _check_arguments(source: Any, overrides: Any) -> str:
    """``source`` as a string, once it and ``overrides`` are of a kind load_recipe reads (None, a Path or a list of
    pairs stopped in pathlib, difflib or a dict method, naming none of them)."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise ValueError(f"load_recipe(source={source!r}) is invalid: expected a recipe file's path (a str or "
                         "os.PathLike), the name of a recipe preset (seqzoo.training.list_recipes()) or of a model "
                         "preset (seqzoo.list_models())")
    if overrides is not None and not (isinstance(overrides, dict) and all(isinstance(k, str) for k in overrides)):
        raise ValueError(f"load_recipe(overrides={overrides!r}) is invalid: expected a mapping of field names, "
                         "dotted or unique to one section, to values ({'train.max_steps': 100, 'lr': 1e-3}), or None")
    return source


def _preset_run_name(values: dict[str, Any], preset: str) -> str:
    """The name of a run whose recipe is a model preset: its model and its data, as the overrides left them
    (``lstm-small-pydoc``; ``mine-text`` for ``seqzoo train lstm-small data.source=text ... model.path=runs/mine``,
    whose model is the saved one; ``seq2seq-bahdanau-tiny-reverse`` for an encoder-decoder's built-in task)."""
    model = values.get("model") if isinstance(values.get("model"), dict) else {}
    data = values.get("data") if isinstance(values.get("data"), dict) else {}
    path = model.get("path")
    if isinstance(path, str) and path.strip():
        # (made absolute without following links: `.` and `mine/` name their folder, a link its own name, which
        # stays the same when the link is moved to another model before --resume; a link loop reaches the check of
        # model.path rather than raise here)
        model_name = Path(os.path.abspath(path)).name or "model"
    else:  # (the preset given as the recipe, or one given over it: `seqzoo train lstm-tiny model.preset=gru-tiny`)
        named = model.get("preset", preset)
        model_name = named if isinstance(named, str) else DEFAULT_PRESET  # (model.preset=null: the default model)
    source = data.get("source", DataSection.source)
    data_name = data.get("task") if source == "task" and isinstance(data.get("task"), str) else source
    return f"{model_name}-{data_name}" if isinstance(data_name, str) else model_name


def apply_override(values: dict[str, Any], key: str, value: Any) -> str:
    """Set ``key`` (dotted, or a field name unique to one section) in the plain-dict recipe ``values``; return the
    dotted key set."""
    parts = key.split(".")
    # A bare "task" is data.task (the memory task), as before recipes had a top-level task, unless it names what the
    # recipe trains (no data task has such a name).
    if key == "task" and value in TRAINED_TASKS:
        values["task"] = value
        return "task"
    if key == "task" and isinstance(value, str) and (close := difflib.get_close_matches(value, TRAINED_TASKS, 1, 0.8)):
        # (a misspelt recipe task went on to data.task, whose error named data.source and no recipe task)
        raise ValueError(f"override task={value!r} names neither what a recipe trains ({', '.join(TRAINED_TASKS)}) "
                         f"nor a data task; did you mean task={close[0]}?")
    if len(parts) == 1 and key not in ("name", "output_dir"):
        owners = [s for s, cls in SECTIONS.items() if key in {f.name for f in fields(cls)}]
        if len(owners) != 1:
            every = sorted({f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)})
            close = difflib.get_close_matches(key, [e.split(".")[1] for e in every], n=1)
            why = "is in several sections, write section.field" if owners else "is not a recipe field"
            hint = f" Did you mean {close[0]!r}?" if close and not owners else ""
            raise ValueError(f"override {key}={value!r}: {key!r} {why}.{hint} Fields: {', '.join(every)}")
        parts = [owners[0], key]
    target = values
    for depth, part in enumerate(parts[:-1]):
        nested = target.setdefault(part, {})
        if nested is None and depth == 0 and part in SECTIONS:  # `train:` with nothing under it: an empty section
            nested = target[part] = {}
        if not isinstance(nested, dict):
            raise ValueError(f"override {key}={value!r}: {part!r} is not a section")
        target = nested
    target[parts[-1]] = value
    return ".".join(parts)
