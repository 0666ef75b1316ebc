"""More of ``generation_setup.py`` held to transformers' own methods: changes a kept merge must notice, copies it must
make, and inputs it must leave to transformers (each found missing by mutating the module)."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, GenerationMixin

import seqzoo.models.generation_setup as generation_setup
from tests.conftest import tiny_model
from tests.models.test_generation_setup import theirs


def assert_same(ours, expected):
    (config, model_kwargs), (their_config, their_kwargs) = ours, expected
    assert type(config) is type(their_config)
    assert vars(config) == vars(their_config)
    assert repr(vars(config)) == repr(vars(their_config))
    assert model_kwargs == their_kwargs


def outcome(call):
    """What ``call()`` returns, or the type and message of what it raises."""
    try:
        return call()
    except Exception as error:  # noqa: BLE001
        return type(error), str(error)


@pytest.fixture
def model():
    return tiny_model("gru-tiny")


def test_a_generation_config_subclass_is_prepared_as_transformers_prepares_it(model):
    class OwnDefaults(GenerationConfig):
        def to_dict(self):
            return {**super().to_dict(), "top_k": 3}

        @staticmethod
        def _get_default_generation_params():
            return {**GenerationConfig._get_default_generation_params(), "max_length": 7}

    model.generation_config = OwnDefaults(max_new_tokens=4)
    for _ in range(2):
        assert_same(model._prepare_generation_config(None), theirs(model))
    assert model._prepare_generation_config(None)[0].top_k == 3


def test_a_generation_config_changed_in_place_is_merged_again(model):
    own = model.generation_config
    own.eos_token_id = [3, 4]
    own.bad_words_ids = [[1, 2]]
    own.custom = {"a": [1]}
    model._prepare_generation_config(None)
    # (the same objects changed, not replaced: a kept reference to them would compare equal)
    for change in (lambda: own.eos_token_id.append(5), lambda: own.bad_words_ids[0].append(6),
                   lambda: own.custom["a"].append(2), lambda: own.custom.update(b=1)):
        change()
        assert_same(model._prepare_generation_config(None), theirs(model))


def test_each_prepared_config_holds_its_own_containers(model):
    model.generation_config.custom_dict = {"a": [1]}
    model.generation_config.custom_tuple = ([1], 2)
    first, _ = model._prepare_generation_config(None)
    first.custom_dict["a"].append(2)
    first.custom_dict["b"] = 3
    first.custom_tuple[0].append(2)
    assert_same(model._prepare_generation_config(None), theirs(model))
    assert model.generation_config.custom_dict == {"a": [1]} and model.generation_config.custom_tuple == ([1], 2)


def test_a_set_in_the_generation_config_is_not_shared_between_calls(model):
    model.generation_config.custom_set = {1, 2}
    first, _ = model._prepare_generation_config(None)
    first.custom_set.add(3)
    assert_same(model._prepare_generation_config(None), theirs(model))


def test_values_serialisation_drops_are_prepared_as_transformers_prepares_them_call_after_call(model):
    # to_dict leaves _commit_hash out of the merge; a tensor there must still never be compared between calls.
    model.generation_config._commit_hash = torch.tensor([1, 2])
    for _ in range(2):
        assert_same(model._prepare_generation_config(None), theirs(model))


@pytest.mark.parametrize("name, value", [("top_k", 0), ("do_sample", False), ("temperature", 0.0), ("top_p", "")])
def test_falsy_generation_fields_on_the_model_config_are_refused_as_transformers_refuses_them(model, name, value):
    model._prepare_generation_config(None)
    setattr(model.config, name, value)
    expected = outcome(lambda: theirs(model))
    assert expected[0] is ValueError
    assert outcome(lambda: model._prepare_generation_config(None)) == expected


def test_a_generation_field_set_per_layer_is_refused_as_transformers_refuses_it(model):
    model._prepare_generation_config(None)
    model.config.per_layer_config = {i: {"top_k": 3} for i in range(model.config.num_hidden_layers)}
    assert "top_k" not in vars(model.config)  # (only the per-layer settings hold it)
    expected = outcome(lambda: theirs(model))
    assert isinstance(expected, tuple)  # (transformers refuses to read a per-layer setting globally)
    assert outcome(lambda: model._prepare_generation_config(None)) == expected


def prepared(model, pad=0, eos=None):
    config, _ = model._prepare_generation_config(None, pad_token_id=pad, eos_token_id=eos)
    model._prepare_special_tokens(config, False, device=torch.device("cpu"))
    return config


def assert_same_mask(model, inputs, config):
    expected = outcome(lambda: GenerationMixin._prepare_attention_mask_for_generation(model, inputs, config, {}))
    ours = outcome(lambda: model._prepare_attention_mask_for_generation(inputs, config, {}))
    if isinstance(expected, tuple):
        assert ours[0] is expected[0]
    else:
        assert ours.dtype == expected.dtype and ours.shape == expected.shape and torch.equal(ours, expected)


@pytest.mark.parametrize("inputs", [
    torch.tensor([0, 5, 6]),
    torch.tensor([[[0, 5], [6, 0]]]),
    torch.tensor([[0.0, 5.0]]),
    torch.tensor([[0, 5]], dtype=torch.int16),
    torch.tensor([[0, 5]], dtype=torch.uint8),
], ids=["1-d", "3-d", "float", "int16", "uint8"])
def test_prompt_masks_of_inputs_other_than_token_ids_are_transformers(model, inputs):
    # transformers infers a mask only from 2-D int or long ids: all ones of the first two sizes otherwise.
    assert_same_mask(model, inputs, prepared(model))


def test_a_pad_tensor_of_several_tokens_is_left_to_transformers(model):
    config = prepared(model)
    config._pad_token_tensor = torch.tensor([0, 9])
    assert generation_setup.attention_mask_for_generation(torch.tensor([[0, 5]]), config, {}) is None
    assert_same_mask(model, torch.tensor([[0, 5]]), config)


@pytest.mark.parametrize("eos", [torch.tensor([True]), torch.tensor([0.0]), torch.tensor([0.5])],
                         ids=["bool", "float-equal", "float-other"])
def test_eos_tensors_of_other_dtypes_are_left_to_transformers(model, eos):
    config = prepared(model)
    config._eos_token_tensor = eos
    assert generation_setup.attention_mask_for_generation(torch.tensor([[0, 5]]), config, {}) is None
    assert_same_mask(model, torch.tensor([[0, 5]]), config)


def test_an_alias_on_the_config_itself_is_refused_as_transformers_refuses_it(model):
    model._prepare_generation_config(None)
    # (set on the instance, not the class: transformers' attribute reads find it there too)
    model.config.__dict__["attribute_map"] = {**type(model.config).attribute_map, "top_p": "hidden_size"}
    expected = outcome(lambda: theirs(model))
    assert expected[0] is ValueError and "top_p" in expected[1]
    assert outcome(lambda: model._prepare_generation_config(None)) == expected


def test_what_the_forward_supports_is_read_from_the_forward_not_the_input_preparation(model):
    base = type(model)

    def prepare(self, input_ids, mm_encoder_outputs=None, logits_to_keep=None, **kwargs):
        return base.prepare_inputs_for_generation(self, input_ids, **kwargs)

    model.__class__ = type("PreparationNamesMore", (base,), {"prepare_inputs_for_generation": prepare})
    for _ in range(2):
        assert model._supports_mm_encoder_outputs() == GenerationMixin._supports_mm_encoder_outputs(model)
        assert model._supports_logits_to_keep() == GenerationMixin._supports_logits_to_keep(model)
    assert not model._supports_mm_encoder_outputs()
