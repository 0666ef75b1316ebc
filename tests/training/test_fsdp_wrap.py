"""FSDP through `accelerate launch --use_fsdp --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP` wraps the classes a
model names in ``_no_split_modules`` (accelerate, and seqzoo's CPU path, raise if one is missing). test_fsdp.py
trains two families under FSDP; this checks for every family that the names are real classes, one per layer."""

from __future__ import annotations

import pytest
from accelerate.utils.dataclasses import get_module_class_from_name

from tests.conftest import FAMILIES, tiny_model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_split_modules_name_one_wrap_unit_per_layer(family):
    model = tiny_model(FAMILIES[family])
    names = list(model._no_split_modules or [])
    assert names, f"{type(model).__name__} sets no _no_split_modules: FSDP's transformer wrap policy has no unit"
    units = []
    for name in names:
        cls = get_module_class_from_name(model, name)
        assert cls is not None, f"_no_split_modules names {name!r}, which is no module class of {type(model).__name__}"
        units += [m for m in model.modules() if isinstance(m, cls)]
    assert len(units) == model.config.num_hidden_layers
    wrapped = {id(p) for unit in units for p in unit.parameters()}
    inside = sum(p.numel() for p in model.parameters() if id(p) in wrapped)
    assert inside > 0.3 * sum(p.numel() for p in model.parameters())  # the layers hold most of the weights
