"""What ``generate()`` prepares before its first forward, held to transformers' own methods: the generation config
(``models/generation_setup.py``, kept merged between calls), the attention mask of a prompt, and the forward's
signature (kept on the function)."""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import GenerationConfig, GenerationMixin

import seqzoo.models.generation_setup as generation_setup
from seqzoo.models.modeling_utils import SeqzooForCausalLM, remember_signatures
from tests.conftest import FAMILIES, tiny_model

CALLS = [
    {},
    {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "eos_token_id": None},
    {"max_new_tokens": 3, "do_sample": True, "temperature": 0.7, "top_k": 5, "eos_token_id": [1, 2]},
    {"max_length": 30, "num_beams": 2, "output_hidden_states": True, "output_attentions": True},
    {"max_new_tokens": 4, "cache_implementation": "hybrid", "attention_mask": "a model keyword"},
]


def theirs(model, **kwargs):
    return GenerationMixin._prepare_generation_config(model, None, **kwargs)


def assert_same(ours, expected):
    (config, model_kwargs), (their_config, their_kwargs) = ours, expected
    assert type(config) is GenerationConfig
    assert vars(config) == vars(their_config)
    assert [type(v) for v in vars(config).values()] == [type(v) for v in vars(their_config).values()]
    assert model_kwargs == their_kwargs


@pytest.fixture
def model():
    torch.manual_seed(0)
    return tiny_model("gru-tiny").eval()


@pytest.mark.parametrize("kwargs", CALLS)
def test_prepared_config_is_transformers(model, kwargs):
    for _ in range(2):  # merged at the first call, kept for the second
        ours = model._prepare_generation_config(None, **kwargs)
        assert_same(ours, theirs(model, **kwargs))
    assert generation_setup.ATTRIBUTE in model.__dict__


def test_kept_merge_follows_the_models_generation_config(model):
    kwargs = {"max_new_tokens": 2}
    model._prepare_generation_config(None, **kwargs)
    changes = [("eos_token_id", [3, 4]), ("eos_token_id", [3, 5]), ("max_length", 40), ("max_length", 41),
               ("do_sample", True), ("top_k", 7), ("top_k", 7.0),
               ("temperature", 1), ("temperature", True), ("custom_entry", "kept"), ("bad_words_ids", [[1, 2]])]
    for name, value in changes:
        setattr(model.generation_config, name, value)
        ours = model._prepare_generation_config(None, **kwargs)
        assert_same(ours, theirs(model, **kwargs))
        assert getattr(ours[0], name) == value and type(getattr(ours[0], name)) is type(value)
    model.generation_config = GenerationConfig(max_new_tokens=9)
    assert_same(model._prepare_generation_config(None), theirs(model))
    assert model._prepare_generation_config(None)[0].max_new_tokens == 9


def test_a_prepared_config_is_a_copy(model):
    model.generation_config.eos_token_id = [3, 4]
    first, _ = model._prepare_generation_config(None)
    first.eos_token_id.append(5)
    first.max_length = 99
    second, _ = model._prepare_generation_config(None)
    assert second.eos_token_id == [3, 4] and second.max_length == theirs(model)[0].max_length
    assert model.generation_config.eos_token_id == [3, 4]


def test_transformers_prepares_what_this_does_not_take(model, monkeypatch):
    # A generation_config passed to the call, a value that is not plain data, another release: transformers' method.
    given = GenerationConfig(max_new_tokens=3)
    assert generation_setup.prepare_generation_config(model, given, {}) is None
    assert_same(model._prepare_generation_config(given, top_k=4),
                GenerationMixin._prepare_generation_config(model, given, top_k=4))
    model.generation_config.sequence_bias = {(1, 2): 0.5}  # (a tuple key: not kept)
    assert generation_setup.prepare_generation_config(model, None, {}) is None
    del model.generation_config.sequence_bias
    model.generation_config.eos_token_id = [1, 3]
    assert generation_setup.prepare_generation_config(model, None, {}) is not None
    model.generation_config.eos_token_id = [torch.tensor([1, 2]), 3]  # (not compared with the kept [1, 3])
    assert generation_setup.prepare_generation_config(model, None, {}) is None
    model.generation_config.eos_token_id = None
    assert generation_setup.prepare_generation_config(model, None, {}) is not None
    monkeypatch.setattr(generation_setup, "preparation_checked", lambda: False)
    assert generation_setup.prepare_generation_config(model, None, {}) is None


def test_generation_fields_on_the_model_config_are_refused_as_transformers_refuses_them(model):
    model._prepare_generation_config(None)  # (a merge kept from before)
    model.config.temperature = 0.5
    assert generation_setup.prepare_generation_config(model, None, {}) is None
    with pytest.raises(ValueError) as theirs_error:
        theirs(model)
    with pytest.raises(ValueError) as ours_error:
        model._prepare_generation_config(None)
    assert str(ours_error.value) == str(theirs_error.value)
    model.config.temperature = None  # (None is not a setting)
    assert generation_setup.prepare_generation_config(model, None, {}) is not None


def test_a_kept_merge_is_not_copied_or_pickled(model):
    import copy
    import pickle

    model._prepare_generation_config(None)
    assert generation_setup.ATTRIBUTE not in copy.deepcopy(model).__dict__
    assert generation_setup.ATTRIBUTE not in pickle.loads(pickle.dumps(model)).__dict__


PROMPTS = [
    torch.tensor([[5, 6, 7, 8]]),
    torch.tensor([[0, 0, 7, 8], [5, 6, 7, 8]]),  # left padding with the pad token 0
    torch.tensor([[5, 6, 0, 8]], dtype=torch.int32),
    torch.tensor([[5, 6, 7, 0]]),
]


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("pad, eos", [(0, None), (0, [1]), (0, [1, 0]), (0, 0), (3, 2), (None, None)])
def test_prompt_mask_is_transformers(model, prompt, pad, eos):
    config, _ = model._prepare_generation_config(None, pad_token_id=pad, eos_token_id=eos)
    model._prepare_special_tokens(config, False, device=prompt.device)
    ours = model._prepare_attention_mask_for_generation(prompt, config, {})
    expected = GenerationMixin._prepare_attention_mask_for_generation(model, prompt, config, {})
    assert ours.dtype == expected.dtype and torch.equal(ours, expected)
    taken = generation_setup.attention_mask_for_generation(prompt, config, {})
    assert (taken is None) == (pad is None)


def test_prompt_mask_leaves_other_inputs_to_transformers(model, monkeypatch):
    config, _ = model._prepare_generation_config(None, pad_token_id=0)
    model._prepare_special_tokens(config, False, device=torch.device("cpu"))
    ids = torch.tensor([[0, 5]])
    assert generation_setup.attention_mask_for_generation(ids, config, {}) is not None
    assert generation_setup.attention_mask_for_generation(ids, config, {"input_ids": ids}) is None
    assert generation_setup.attention_mask_for_generation(torch.rand(1, 2, 4), config, {}) is None
    monkeypatch.setattr(generation_setup, "mask_preparation_checked", lambda: False)
    assert generation_setup.attention_mask_for_generation(ids, config, {}) is None


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_is_the_same_with_transformers_preparation(family, monkeypatch):
    torch.manual_seed(0)
    model = tiny_model(FAMILIES[family]).eval()
    prompt = torch.tensor([[0, 0, 7, 8, 9], [5, 6, 7, 8, 9]])
    kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    ours = model.generate(prompt, **kwargs)
    monkeypatch.setattr(generation_setup, "preparation_checked", lambda: False)
    monkeypatch.setattr(generation_setup, "mask_preparation_checked", lambda: False)
    assert torch.equal(model.generate(prompt, **kwargs), ours)


def test_forward_signature_is_kept_on_the_function():
    forward = SeqzooForCausalLM.forward
    assert "__signature__" in vars(forward)
    del forward.__signature__
    try:
        from_code = inspect.signature(forward)
    finally:
        remember_signatures(SeqzooForCausalLM)
    assert forward.__signature__ == from_code
    model = tiny_model("lstm-tiny")
    assert inspect.signature(model.forward) == inspect.signature(forward.__get__(model))
    assert list(inspect.signature(model.forward).parameters)[0] == "input_ids"

    class Subclass(type(model)):
        def forward(self, input_ids=None, extra=None, **kwargs):
            return super().forward(input_ids, **kwargs)

    assert list(inspect.signature(Subclass.forward).parameters) == ["self", "input_ids", "extra", "kwargs"]
    assert "__signature__" in vars(Subclass.forward)


def test_generation_fields_read_other_ways_leave_the_check_to_transformers(model):
    config_class = type(model.config)
    assert generation_setup._generation_names(config_class) is not None
    names = generation_setup._generation_names
    assert names(type("WithClassField", (config_class,), {"top_k": 5})) is None
    assert names(type("WithProperty", (config_class,), {"num_beams": property(lambda self: 2)})) is None
    assert names(type("WithAlias", (config_class,), {"attribute_map": {"temperature": "hidden_size"}})) is None
    assert names(type("WithGetattr", (config_class,), {"__getattr__": lambda self, name: 1})) is None
    assert names(dict) is None  # (not a dataclass: no fields to leave out)
    model.config.__dict__["attribute_map"] = {"top_p": "hidden_size"}
    assert generation_setup._may_hold_generation_fields(model.config)


def test_the_installed_release_is_one_these_were_checked_against():
    assert generation_setup.preparation_checked() and generation_setup.mask_preparation_checked(), (
        "this release's GenerationMixin._prepare_generation_config, PreTrainedConfig._get_generation_parameters or "
        "GenerationMixin._prepare_attention_mask_for_generation is not one seqzoo's preparation was checked against, "
        "so generate() prepares through transformers' methods: compare (this file's tests), then add the "
        "fingerprints to seqzoo/models/generation_setup.py")
