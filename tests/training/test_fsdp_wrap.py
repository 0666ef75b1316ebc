"""FSDP through `accelerate launch --use_fsdp --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP` wraps the classes a
model names in ``_no_split_modules`` (accelerate, and seqzoo's CPU path, raise if one is missing). test_fsdp.py
trains two families under FSDP; this checks for every family that the names are real classes, one per layer."""

from __future__ import annotations

import pytest
from accelerate.utils.dataclasses import get_module_class_from_name

from tests.conftest import FAMILIES, SEQ2SEQ_FAMILIES, tiny_model


def wrap_units(model) -> list:
    names = list(model._no_split_modules or [])
    assert names, f"{type(model).__name__} sets no _no_split_modules: FSDP's transformer wrap policy has no unit"
    units = []
    for name in names:
        cls = get_module_class_from_name(model, name)
        assert cls is not None, f"_no_split_modules names {name!r}, which is no module class of {type(model).__name__}"
        units += [m for m in model.modules() if isinstance(m, cls)]
    wrapped = {id(p) for unit in units for p in unit.parameters()}
    inside = sum(p.numel() for p in model.parameters() if id(p) in wrapped)
    assert inside > 0.3 * sum(p.numel() for p in model.parameters())  # the layers hold most of the weights
    return units


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_split_modules_name_one_wrap_unit_per_layer(family):
    model = tiny_model(FAMILIES[family])
    assert len(wrap_units(model)) == model.config.num_hidden_layers


@pytest.mark.parametrize("family", sorted(SEQ2SEQ_FAMILIES))
def test_seq2seq_wrap_units_are_the_classes_each_config_builds(family):
    model = tiny_model(SEQ2SEQ_FAMILIES[family])
    units = wrap_units(model)  # every name a class of this model: accelerate refuses a missing one
    encoder, decoder = model.get_encoder(), model.model.decoder
    layers = [*encoder.layers, *(getattr(encoder, "backward_layers", None) or []), *decoder.layers]
    assert [id(unit) for unit in units] and sorted(map(id, units)) == sorted(map(id, layers))
    shared = {id(p) for p in model.get_input_embeddings().parameters()}
    assert not any(id(p) in shared for unit in units for p in unit.parameters())  # FSDP cannot split a shared one
