"""seqzoo's checks around ``generate()`` read the settings it decodes with: a ``generation_config`` passed to the
call is merged with the model's own (where it sets nothing, the model's value holds), as transformers merges them,
before the call's keywords. A review found each check below reading the passed config alone."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import GenerationConfig

from seqzoo.models.compat import output_cache
from tests.conftest import FAMILIES, SEQ2SEQ_FAMILIES, tiny_model

PROMPT = torch.tensor([[5, 17, 33, 8, 61, 12]])
GREEDY = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None}


def continued(model):
    """A greedy run's output and the prompt plus its tokens and one more, to continue its cache from."""
    out = model.generate(PROMPT, max_new_tokens=3, return_dict_in_generate=True, **GREEDY)
    return output_cache(out), torch.cat([out.sequences, torch.tensor([[7]])], dim=1)


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_use_cache_false_from_the_model_refuses_a_cache_with_a_config_passed(family):
    model = tiny_model(FAMILIES[family])
    cache, sequence = continued(model)
    model.generation_config.use_cache = False
    passed = GenerationConfig(max_new_tokens=3, **GREEDY)
    with pytest.raises(ValueError, match="use_cache=False"):
        model.generate(sequence, cache=cache, generation_config=passed)
    with pytest.raises(ValueError, match="use_cache=False"):
        model.generate(sequence, cache=cache, max_new_tokens=3, **GREEDY)


@pytest.mark.parametrize("family", ["rnn", "mamba"])
def test_beams_from_the_model_expand_and_mark_the_cache_with_a_config_passed(family):
    model = tiny_model(FAMILIES[family])
    cache, sequence = continued(model)
    model.generation_config.num_beams = 2
    passed = GenerationConfig(max_new_tokens=3, return_dict_in_generate=True, **GREEDY)
    expected = model.generate(sequence, max_new_tokens=3, return_dict_in_generate=True, **GREEDY)
    out = model.generate(sequence, cache=cache, generation_config=passed)  # (expanded for the beams)
    assert torch.equal(out.sequences, expected.sequences)
    assert output_cache(out).from_beam_search and cache.from_beam_search
    fresh = model.generate(PROMPT, generation_config=passed)
    assert output_cache(fresh).from_beam_search
    with pytest.raises(ValueError, match="beam search"):
        model.generate(sequence, cache=output_cache(fresh), max_new_tokens=2, **GREEDY)


@pytest.mark.parametrize("preset", [FAMILIES["rnn"], FAMILIES["transformer"], *SEQ2SEQ_FAMILIES.values()][:4])
def test_a_cache_implementation_from_the_model_with_a_config_passed(preset, caplog):
    model = tiny_model(preset)
    passed = GenerationConfig(max_new_tokens=3, **GREEDY)
    expected = model.generate(PROMPT, generation_config=passed)
    model.generation_config.cache_implementation = "dynamic"
    with caplog.at_level(logging.WARNING, logger="transformers"):
        assert torch.equal(model.generate(PROMPT, generation_config=passed), expected)
        assert torch.equal(model.generate(PROMPT, generation_config=GenerationConfig(
            max_new_tokens=3, cache_implementation="dynamic", **GREEDY)), expected)
    # (transformers' "generation_config together with generation-related arguments" names what was not passed)
    assert not [r for r in caplog.records if "together with generation-related arguments" in r.getMessage()]
    model.generation_config.cache_implementation = "static"
    with pytest.raises(ValueError, match="cache_implementation='static' is not supported"):
        model.generate(PROMPT, generation_config=passed)
    with pytest.raises(ValueError, match="cache_implementation='offloaded' is not supported"):
        model.generate(PROMPT, max_new_tokens=3, cache_implementation="offloaded")


def test_a_config_passed_by_position_is_read_too():
    model = tiny_model(FAMILIES["rnn"])
    cache, sequence = continued(model)
    with pytest.raises(ValueError, match="use_cache=False"):
        model.generate(sequence, GenerationConfig(max_new_tokens=3, use_cache=False, **GREEDY), cache=cache)
