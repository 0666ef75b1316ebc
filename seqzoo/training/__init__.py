"""Training on Accelerate: recipes, no-download data, truncated BPTT, gradient health, exact resume.

``seqzoo train`` runs it from the shell; from Python::

    from seqzoo.training import load_recipe, train
    result = train(load_recipe("lstm-pydoc", {"train.max_steps": 100}))
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use, so that ``seqzoo train --help`` (which imports seqzoo.training.cli) does not load torch.
_EXPORTS = {"Recipe": "recipe", "recipe_from_dict": "recipe", "list_recipes": "recipe_loading",
            "load_recipe": "recipe_loading", "TrainResult": "trainer", "train": "trainer",
            "leave_process_group": "launch"}

__all__ = ["Recipe", "TrainResult", "leave_process_group", "list_recipes", "load_recipe", "recipe_from_dict", "train"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'seqzoo.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"seqzoo.training.{_EXPORTS[name]}"), name)
