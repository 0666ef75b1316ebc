"""What ``generate()`` reads from the forward's signature (``generation_setup.signature_names``: read once per class),
held to transformers' own ``_validate_model_kwargs``, ``_supports_logits_to_keep`` and
``_supports_mm_encoder_outputs``, which read it through ``inspect`` at every call."""

from __future__ import annotations

import functools
import inspect
import types

import pytest
import torch
from transformers import GenerationMixin

import seqzoo.models.generation_setup as generation_setup
from seqzoo.models.modeling_utils import SeqzooForCausalLM
from tests.conftest import FAMILIES, SEQ2SEQ_FAMILIES, tiny_model

KWARGS = [
    {},
    {"attention_mask": torch.ones(1, 3), "use_cache": True, "logits_to_keep": 1},
    {"cache": None, "position_ids": None, "inputs_embeds": None},
    {"output_attentions": True, "output_hidden_states": True},  # (TransformersKwargs)
    {"debug_io": True, "mm_encoder_outputs": None},
    {"not_an_argument": None},  # (None is not refused)
    {"not_an_argument": 1},
    {"attention_mask": torch.ones(1, 3), "atention_mask": torch.ones(1, 3)},
    {"decoder_input_ids": torch.ones(1, 1, dtype=torch.long), "labels": None},
]


def outcome(validate, kwargs):
    """What ``validate(kwargs)`` returns or the message it raises, and what it leaves of the kwargs."""
    kwargs = dict(kwargs)
    try:
        result = validate(kwargs)
    except ValueError as error:
        result = str(error)
    return result, sorted(kwargs)


@pytest.mark.parametrize("preset", [*FAMILIES.values(), *SEQ2SEQ_FAMILIES.values()])
def test_answers_are_transformers(preset):
    model = tiny_model(preset)
    for _ in range(2):  # read at the first call, kept for the second
        assert model._supports_logits_to_keep() == GenerationMixin._supports_logits_to_keep(model)
        assert model._supports_mm_encoder_outputs() == GenerationMixin._supports_mm_encoder_outputs(model)
        for kwargs in KWARGS:
            ours = outcome(model._validate_model_kwargs, kwargs)
            expected = outcome(functools.partial(GenerationMixin._validate_model_kwargs, model), kwargs)
            assert ours == expected
            names = generation_setup.signature_names(model)
            if names is not None:  # (answered without transformers' method where that passes; else left to it)
                assert names.accepts(kwargs) == (expected[0] is None)
    if not model.config.is_encoder_decoder:
        assert generation_setup.signature_names(model) is not None
        assert model._supports_logits_to_keep()
        assert "not used by the model: ['not_an_argument']" in outcome(model._validate_model_kwargs, KWARGS[6])[0]


def test_a_forward_set_on_the_model_is_read_by_transformers():
    # accelerate's hooks set a wrapper of the forward on the model: its signature is what transformers reads.
    model = tiny_model("gru-tiny")
    assert model._supports_logits_to_keep()

    def forward(input_ids=None, cache=None, use_cache=None, mm_encoder_outputs=None, **kwargs):
        return type(model).forward(model, input_ids, cache=cache, use_cache=use_cache, **kwargs)

    model.forward = forward
    assert generation_setup.signature_names(model) is None
    assert not model._supports_logits_to_keep() and model._supports_mm_encoder_outputs()
    del model.forward
    assert model._supports_logits_to_keep() and not model._supports_mm_encoder_outputs()

    def prepare(input_ids, cache=None, attention_mask=None):  # (no **kwargs: the forward's names are not taken)
        return {"input_ids": input_ids}

    model.prepare_inputs_for_generation = prepare
    assert generation_setup.signature_names(model) is None
    assert "['use_cache']" in outcome(model._validate_model_kwargs, {"use_cache": True})[0]


def test_a_model_under_accelerates_hook_is_read_by_transformers():
    hooks = pytest.importorskip("accelerate.hooks")
    model = tiny_model("gru-tiny").eval()
    prompt = torch.tensor([[5, 6, 7]])
    expected = model.generate(prompt, max_new_tokens=3, do_sample=False)
    hooks.add_hook_to_module(model, hooks.ModelHook())
    assert generation_setup.signature_names(model) is None
    assert model._supports_logits_to_keep() == GenerationMixin._supports_logits_to_keep(model) is True
    assert torch.equal(model.generate(prompt, max_new_tokens=3, do_sample=False), expected)


def test_a_class_of_another_forward_is_read_again():
    model = tiny_model("gru-tiny")
    assert model._supports_logits_to_keep()
    base = type(model)

    def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs):
        return base.forward(self, input_ids, cache=cache, use_cache=use_cache, **kwargs)

    model.__class__ = type("WithOwnForward", (base,), {"forward": forward})
    assert not model._supports_logits_to_keep()
    for kwargs in ({"labels": 1}, {"use_cache": True}, {"logits_to_keep": 1}):
        expected = outcome(functools.partial(GenerationMixin._validate_model_kwargs, model), kwargs)
        assert outcome(model._validate_model_kwargs, kwargs) == expected
    assert outcome(model._validate_model_kwargs, {"labels": 1})[0] is not None  # (the new forward does not name it)
    model.__class__.forward = lambda self, input_ids=None, logits_to_keep=0: None  # (patched after the first call)
    assert model._supports_logits_to_keep()

    # (no **kwargs: the forward's names are not taken)
    def prepare(self, input_ids, logits_to_keep=None, use_cache=None):
        return {"input_ids": input_ids}

    model.__class__ = type("WithOwnPreparation", (base,),
                           {"forward": forward, "prepare_inputs_for_generation": prepare})
    assert not model._supports_logits_to_keep()  # (the forward's name, not the preparation's)
    names = generation_setup.signature_names(model)
    assert names.accepts({"use_cache": True}) and not names.accepts({"cache": 1})
    for kwargs in ({"use_cache": True}, {"cache": 1}, {"logits_to_keep": 1}):
        expected = outcome(functools.partial(GenerationMixin._validate_model_kwargs, model), kwargs)
        assert outcome(model._validate_model_kwargs, kwargs) == expected

    def prepare_more(self, input_ids, **model_kwargs):  # (transformers takes the forward's names beside **model_kwargs)
        return {"input_ids": input_ids}

    model.__class__ = type("WithModelKwargs", (base,),
                           {"forward": forward, "prepare_inputs_for_generation": prepare_more})
    assert generation_setup.signature_names(model).accepts({"cache": 1})
    assert outcome(model._validate_model_kwargs, {"cache": 1}) == (None, ["cache"])
    model.__class__ = base
    assert model._supports_logits_to_keep()


def test_transformers_methods_patched_are_called(monkeypatch):
    model = tiny_model("gru-tiny")
    assert model._supports_logits_to_keep() and generation_setup.signature_names(model) is not None
    original = GenerationMixin._supports_logits_to_keep

    @functools.wraps(original)  # (inspect reads the source of what a wrapper wraps: the fingerprint would match)
    def patched(self):
        return False

    monkeypatch.setattr(GenerationMixin, "_supports_logits_to_keep", patched)
    assert generation_setup.signature_names(model) is None
    assert not model._supports_logits_to_keep()
    monkeypatch.setattr(GenerationMixin, "_supports_logits_to_keep", eval("lambda self: False"))  # (no source)
    assert generation_setup.signature_names(model) is None and not model._supports_logits_to_keep()
    monkeypatch.setattr(GenerationMixin, "_validate_model_kwargs", lambda self, kwargs: kwargs.clear())
    kwargs = {"attention_mask": None}
    model._validate_model_kwargs(kwargs)
    assert kwargs == {}
    monkeypatch.undo()
    assert model._supports_logits_to_keep() and generation_setup.signature_names(model) is not None


def test_the_decoding_methods_signature_is_its_own():
    function = SeqzooForCausalLM._sample
    # (the same function, nothing set on it)
    bare = types.FunctionType(function.__code__, function.__globals__, function.__name__, function.__defaults__,
                              function.__closure__)
    bare.__annotations__, bare.__kwdefaults__ = function.__annotations__, function.__kwdefaults__
    assert inspect.signature(function) == inspect.signature(bare)
    assert "inputs_tensor" not in inspect.signature(function).parameters


def test_the_installed_release_is_one_these_were_checked_against():
    assert generation_setup.signature_names(tiny_model("gru-tiny")) is not None, (
        "this release's GenerationMixin._validate_model_kwargs, _supports_logits_to_keep or "
        "_supports_mm_encoder_outputs is not one seqzoo's answers were checked against, so generate() reads the "
        "signatures through transformers' methods: compare (this file's tests), then add the fingerprint to "
        "seqzoo/models/generation_setup.py")


def test_whether_the_input_preparation_takes_the_cache_is_read_as_inspect_reads_it(monkeypatch):
    """generate() builds a cache before the first forward only where the step's input preparation names the cache
    keyword (``generation.preparation_takes_cache``, read once per function): an instance's own preparation (peft's
    prompt tuning sets one) and a class patched after the first read are read again."""
    from seqzoo.models.compat import GENERATE_CACHE_KWARG
    from seqzoo.models.generation import preparation_takes_cache

    model = tiny_model(FAMILIES["rnn"])
    for _ in range(2):
        assert preparation_takes_cache(model) is True

    def without_cache(input_ids, **kwargs):
        return {"input_ids": input_ids}

    model.prepare_inputs_for_generation = without_cache
    assert preparation_takes_cache(model) is False
    del model.prepare_inputs_for_generation
    assert preparation_takes_cache(model) is True

    def named(self, input_ids, **kwargs):
        return {"input_ids": input_ids}

    named_with_cache = types.FunctionType(named.__code__, named.__globals__)
    named_with_cache.__signature__ = inspect.Signature([
        *inspect.signature(named).parameters.values(),
    ][:2] + [inspect.Parameter(GENERATE_CACHE_KWARG, inspect.Parameter.KEYWORD_ONLY, default=None)])
    monkeypatch.setattr(type(model), "prepare_inputs_for_generation", named)
    assert preparation_takes_cache(model) is False
    monkeypatch.setattr(type(model), "prepare_inputs_for_generation", named_with_cache)
    assert preparation_takes_cache(model) is True


@pytest.mark.parametrize("preset", [FAMILIES["gru"], FAMILIES["transformer"], *SEQ2SEQ_FAMILIES.values()])
@pytest.mark.parametrize("value", [True, False])
def test_return_dict_to_generate_is_refused_naming_return_dict_in_generate(preset, value):
    """The forward names return_dict, so the check of generate()'s model keywords let it through to the loop's
    forward(..., return_dict=True): a TypeError whose text was the model's repr. (transformers' Llama refuses it as
    a keyword its model does not use.)"""
    model = tiny_model(preset)
    with pytest.raises(ValueError, match="generate: return_dict is a forward argument, which generate\\(\\) sets "
                                         "itself; .* pass return_dict_in_generate=True"):
        model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, return_dict=value)
