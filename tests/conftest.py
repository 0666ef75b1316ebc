"""Shared fixtures. Model tests are driven by the registry: every registered preset family is enrolled."""

from __future__ import annotations

import re

import pytest
import torch

import seqzoo
from seqzoo.registry import architecture_for_model_type, preset_values, smallest_preset

# Tiny, deliberately odd sizes so shape bugs cannot hide behind powers of two.
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
SIZE_SUFFIX = re.compile(r"-(tiny|small|medium|large|base|\d+[mkb])$")


def preset_families() -> dict[str, str]:
    """family name -> its smallest preset (``lstm`` -> ``lstm-tiny``, ``transformer-gpt2`` -> ``...-small``)."""
    families: dict[str, list[str]] = {}
    for name in seqzoo.list_models():
        match = SIZE_SUFFIX.search(name)
        families.setdefault(name[: match.start()] if match else name, []).append(name)
    return {family: smallest_preset(among=names) for family, names in sorted(families.items())}


FAMILIES = preset_families()


def tiny_config(preset: str, **overrides):
    spec, values = preset_values(preset)
    values.update(TINY)
    # Fields derived from the sizes are recomputed for the tiny sizes.
    values.update(getattr(spec.config_class, "tiny_test_overrides", {}))
    values.update(overrides)
    return spec.config_class(**values)


def tiny_model(preset: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(preset, **overrides)
    model = architecture_for_model_type(config.model_type).causal_lm_class(config)
    return model.eval()


@pytest.fixture(params=sorted(FAMILIES), ids=sorted(FAMILIES))
def family_preset(request) -> str:
    return FAMILIES[request.param]
