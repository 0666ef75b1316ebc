"""Training on Accelerate: recipes, no-download data, truncated BPTT, gradient health, exact resume.

``seqzoo train`` runs it from the shell; from Python::

    from seqzoo.training import load_recipe, train
    result = train(load_recipe("lstm-pydoc", {"train.max_steps": 100}))
"""

from seqzoo.training.recipe import Recipe, list_recipes, load_recipe, recipe_from_dict
from seqzoo.training.trainer import TrainResult, train

__all__ = ["Recipe", "TrainResult", "list_recipes", "load_recipe", "recipe_from_dict", "train"]
