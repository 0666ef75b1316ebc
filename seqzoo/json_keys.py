"""Reading JSON objects without losing a key given twice, which ``json`` (and transformers, reading a config.json)
would take the last value of without a word.

Standard library only: the code bundle a saved model carries (``seqzoo.models.loading`` among it) imports this
module where neither seqzoo nor YAML is installed.
"""

from __future__ import annotations

from typing import Any


class DuplicateKeyError(ValueError):
    """A file gives one key twice in one mapping (JSON and YAML readers keep the last silently)."""


def unique_json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook`` that refuses a key given twice in one object."""
    values: dict[str, Any] = {}
    for key, value in pairs:
        if key in values:
            raise DuplicateKeyError(f"key {key!r} is given twice in one object")
        values[key] = value
    return values
