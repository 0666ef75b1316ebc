"""Reading a recipe's plain values: recipe files (JSON, or YAML through a safe loader that refuses a key given twice
and a document whose aliases expand past a bound) and each field's value checked against its annotation.

seqzoo.training.recipe_loading reads recipe files through these, and seqzoo.training.recipe builds the validated
dataclass tree from what they return.
"""

from __future__ import annotations

import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from seqzoo.json_keys import DuplicateKeyError, unique_json_pairs


def coerce(value: Any, annotation: Any, name: str, from_text: bool = True) -> Any:
    """Check ``value`` against a field's annotation; YAML reads ``3e-3`` as a string, so numbers are parsed, unless
    ``from_text`` is False (a recipe built in Python, whose numbers are numbers: ``lr='1e-3'`` there is refused)."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"recipe field {name}=None is invalid: a value is required ({_describe(annotation)})")
    for option in options:
        ok, converted = _try(value, option, from_text)
        if ok:
            return converted
    hint, field_name = "", name.rsplit(".", 1)[-1]
    if isinstance(value, bool) and str in options and from_text:  # (mixed_precision: no)
        hint = ("; YAML reads an unquoted no, yes, off, on, false or true as a boolean: write the value in quotes "
                f"({field_name}: '{'yes' if value else 'no'}')")
    elif isinstance(value, str) and not from_text and any(_try(_number(value), o, False)[0] for o in options):
        hint = f"; give the number itself, not text ({field_name}={value} rather than {field_name}={value!r})"
    elif isinstance(value, os.PathLike) and str in options:
        hint = f"; give the path as a string ({field_name}=str(path))"
    raise ValueError(f"recipe field {name}={value!r} is invalid: expected {_describe(annotation)}{hint}")


def _number(text: str) -> int | float | None:
    """The number ``text`` spells (an int where it spells one), or None."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _try(value: Any, option: Any, from_text: bool) -> tuple[bool, Any]:
    origin = typing.get_origin(option)
    if option is type(None):
        return False, None
    if option is bool:
        return isinstance(value, bool), value
    if option is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if option is float:
        # Every float field needs a finite value: YAML's .inf / .nan (or "inf" on the command line) would reach the
        # optimizer and turn every weight into NaN.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return math.isfinite(value), float(value)
        if isinstance(value, str) and from_text:
            try:
                number = float(value)
            except ValueError:
                return False, None
            return math.isfinite(number), number
        return False, None
    if option is str:
        return isinstance(value, str), value
    if origin is list:
        (item,) = typing.get_args(option)
        if not isinstance(value, (list, tuple)):
            return False, None
        converted = [_try(v, item, from_text) for v in value]
        return all(ok for ok, _ in converted), [v for _, v in converted]
    if origin is dict:  # (model.config's keys are checked in Recipe.validate, for a Recipe built in Python too)
        return isinstance(value, dict), dict(value) if isinstance(value, dict) else None
    return False, None


_PLURALS = {int: "integers", float: "finite numbers", str: "strings"}


def _describe(annotation: Any) -> str:
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    names = []
    for option in options:
        if option is type(None):
            names.append("null")
        elif typing.get_origin(option) is list:
            item = typing.get_args(option)[0]
            names.append(f"a list of {_PLURALS[item]}")
        elif typing.get_origin(option) is dict:
            names.append("a mapping of names (strings) to values")
        elif option is bool:
            names += ["true", "false"]
        else:
            names.append({int: "an integer", float: "a finite number", str: "a string"}[option])
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 2 else names)  # (true, false or null)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping: PyYAML keeps the last one, so a second
    ``train:`` section would silently drop the first one's fields."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges are not duplicates
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader itself names it
                continue
            if first is not None:
                raise DuplicateKeyError(f"key {key!r} is given twice (lines {first.start_mark.line + 1} and "
                                        f"{key_node.start_mark.line + 1})")
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def read_recipe_file(path: Path) -> Any:
    """The values of a recipe file: JSON for ``.json`` (YAML refuses JSON indented with tabs), else YAML; a key
    given twice in one mapping raises :class:`DuplicateKeyError`."""
    text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is no part of the recipe
    if path.suffix == ".json":
        return json.loads(text, object_pairs_hook=unique_json_pairs)
    values = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 -- a SafeLoader subclass
    _check_expanded_size(values)
    return values


MAX_RECIPE_VALUES = 100_000


def _check_expanded_size(values: Any) -> None:
    """Refuse a YAML document whose aliases expand to more than MAX_RECIPE_VALUES values: PyYAML shares an aliased
    node, but checking, copying (``dataclasses.asdict``) and saving the recipe expand every use of it, so nine
    nested ``*alias`` lists of ten ("billion laughs") would hang the run and exhaust memory."""
    budget = MAX_RECIPE_VALUES
    stack = [values]
    while stack:
        value = stack.pop()
        budget -= 1
        if budget < 0:
            raise yaml.YAMLError(f"the document expands to more than {MAX_RECIPE_VALUES:,} values (YAML aliases "
                                 "repeating a list or mapping within itself); a recipe holds a few dozen")
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
