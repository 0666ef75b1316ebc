"""What ``generate()`` prepares before its first forward, held to transformers' own methods: the generation config
(``models/generation_setup.py``, kept merged between calls) and the attention mask of a prompt."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import GenerationConfig, GenerationMixin

import seqzoo.models.generation_setup as generation_setup
from tests.conftest import FAMILIES, SEQ2SEQ_FAMILIES, tiny_model

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
    assert repr(vars(config)) == repr(vars(their_config))  # (the same types, all the way down: 1, 1.0 and True)
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


@pytest.mark.parametrize("preset", ["gru-tiny", *SEQ2SEQ_FAMILIES.values()])
def test_a_kept_merge_is_not_copied_or_pickled(preset):
    import copy
    import pickle

    model = tiny_model(preset)
    model._prepare_generation_config(None)
    assert generation_setup.ATTRIBUTE in model.__dict__
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
    with pytest.raises(ValueError, match="not used by the model: \\['temprature'\\]"):  # (the keywords' check)
        model.generate(prompt, temprature=0.5, **kwargs)
    monkeypatch.setattr(generation_setup, "preparation_checked", lambda: False)
    monkeypatch.setattr(generation_setup, "mask_preparation_checked", lambda: False)
    monkeypatch.setattr(generation_setup, "signature_names", lambda model: None)
    assert torch.equal(model.generate(prompt, **kwargs), ours)


@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
def test_seq2seq_generate_is_the_same_with_transformers_preparation(family, monkeypatch):
    torch.manual_seed(0)
    model = tiny_model(SEQ2SEQ_FAMILIES[family]).eval()
    source = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 7, 8, 9]])
    kwargs = {"max_new_tokens": 4, "do_sample": False}
    for _ in range(2):
        assert_same(model._prepare_generation_config(None, **kwargs), theirs(model, **kwargs))
    assert generation_setup.ATTRIBUTE in model.__dict__
    ours = model.generate(source, attention_mask=(source != 0).long(), **kwargs)
    monkeypatch.setattr(generation_setup, "preparation_checked", lambda: False)
    monkeypatch.setattr(generation_setup, "signature_names", lambda model: None)
    assert torch.equal(model.generate(source, attention_mask=(source != 0).long(), **kwargs), ours)


class GenerationFieldsElsewhere:
    """Config subclasses where a generation field is read other than from the config's own attributes."""

    @staticmethod
    def class_field(base):
        return type("WithClassField", (base,), {"top_k": 5})

    @staticmethod
    def property(base):
        return type("WithProperty", (base,), {"num_beams": property(lambda self: 2)})

    @staticmethod
    def alias(base):
        return type("WithAlias", (base,), {"attribute_map": {**base.attribute_map, "temperature": "hidden_size"}})

    @staticmethod
    def getattr(base):
        return type("WithGetattr", (base,), {"__getattr__": lambda self, name: 0.5 if name == "top_p" else
                                             object.__getattribute__(self, name)})

    @staticmethod
    def getattribute(base):
        def read(self, name):
            return 64 if name == "max_length" else base.__getattribute__(self, name)
        return type("WithGetattribute", (base,), {"__getattribute__": read})

    @staticmethod
    def own_check(base):
        def check(self):
            return {**base._get_generation_parameters(self), **(self.__dict__.get("decoder_settings") or {})}
        return type("WithOwnCheck", (base,), {"_get_generation_parameters": check})


@pytest.mark.parametrize("change", ["class_field", "property", "alias", "getattr", "getattribute", "own_check"])
def test_generation_fields_read_other_ways_are_refused_as_transformers_refuses_them(model, change):
    model._prepare_generation_config(None)  # (a merge kept from before)
    model.config.__class__ = getattr(GenerationFieldsElsewhere, change)(type(model.config))
    model.config.__dict__["decoder_settings"] = {"temperature": 0.3}
    assert generation_setup._may_hold_generation_fields(model.config)
    with pytest.raises(ValueError) as theirs_error:
        theirs(model)
    with pytest.raises(ValueError) as ours_error:
        model._prepare_generation_config(None)
    assert str(ours_error.value) == str(theirs_error.value)


def test_a_class_changed_after_a_call_is_read_again(model):
    model._prepare_generation_config(None)
    config_class = type(model.config)
    model.config.__class__ = type("Later", (config_class,), {})
    assert not generation_setup._may_hold_generation_fields(model.config)
    type(model.config).top_k = 7  # (set on the class after the first call)
    with pytest.raises(ValueError, match="top_k"):
        model._prepare_generation_config(None)
    model.config.__dict__["attribute_map"] = {"top_p": "hidden_size"}
    assert generation_setup._may_hold_generation_fields(model.config)
    assert generation_setup._generation_names(dict) is None  # (not a dataclass: no fields to leave out)


def test_transformers_methods_patched_are_called(model, monkeypatch):
    import functools

    model._prepare_generation_config(None)
    original = GenerationMixin._prepare_generation_config

    @functools.wraps(original)  # (inspect reads the source of what a wrapper wraps: the fingerprint would match)
    def patched(self, generation_config, **kwargs):
        config, model_kwargs = original(self, generation_config, **kwargs)
        config.max_length = 7
        return config, model_kwargs

    monkeypatch.setattr(GenerationMixin, "_prepare_generation_config", patched)
    assert model._prepare_generation_config(None)[0].max_length == 7
    monkeypatch.setattr(GenerationMixin, "_prepare_generation_config", lambda self, config, **kw: (None, kw))
    assert model._prepare_generation_config(None, top_k=3) == (None, {"top_k": 3})
    monkeypatch.undo()
    assert generation_setup.preparation_checked()

    ids = torch.tensor([[0, 5, 6]])
    config, _ = model._prepare_generation_config(None, pad_token_id=0)
    model._prepare_special_tokens(config, False, device=ids.device)
    assert model._prepare_attention_mask_for_generation(ids, config, {}).tolist() == [[0, 1, 1]]
    monkeypatch.setattr(GenerationMixin, "_prepare_attention_mask_for_generation",
                        lambda self, inputs, config, kwargs: torch.ones_like(inputs))
    assert model._prepare_attention_mask_for_generation(ids, config, {}).tolist() == [[1, 1, 1]]


def test_equal_values_of_other_types_are_merged_again(model):
    def config(eos=(2, 3), custom=({1: 1},)):
        return GenerationConfig(max_new_tokens=4, a=1, b=1.0, eos_token_id=list(eos), custom=[[1], *custom])

    model.generation_config = config()
    model._prepare_generation_config(None)
    for changed in (config(eos=(2.0, 3)), config(eos=(True, 3)), config(custom=({1: 1.0},)),
                    config(custom=({1.0: 1},)), config(custom=({True: 1},)), config(custom=([True],))):
        model.generation_config = changed
        assert_same(model._prepare_generation_config(None), theirs(model))
        model.generation_config = config()
        assert_same(model._prepare_generation_config(None), theirs(model))
    # The same names, and the same types in the same places, but not of the same names: a=1, b=1.0 kept, then b=1,
    # a=1.0 (in that order).
    own = model.generation_config
    del own.a, own.b
    own.a, own.b = 1, 1.0
    model._prepare_generation_config(None)
    del own.a, own.b
    own.b, own.a = 1, 1.0
    assert_same(model._prepare_generation_config(None), theirs(model))


def test_what_is_merged_is_what_was_compared(model, monkeypatch):
    # Another thread changing the model's generation_config while a call merges it: the merge kept is of the values
    # it was compared with, so the next call merges the change.
    model.generation_config.max_length = 10
    merge = generation_setup._merged

    def merged_while_changed(values):
        model.generation_config.max_length = 50
        return merge(values)

    monkeypatch.setattr(generation_setup, "_merged", merged_while_changed)
    assert model._prepare_generation_config(None)[0].max_length == 10
    monkeypatch.undo()
    assert model._prepare_generation_config(None)[0].max_length == 50 == theirs(model)[0].max_length


def test_the_merges_messages_follow_the_verbosity(model):
    import transformers

    model.generation_config.temperature = 0.7  # (a sampling flag without do_sample)
    messages = []
    handler = type("Handler", (logging.Handler,), {"emit": lambda self, record: messages.append(record.getMessage())})()
    logger = transformers.logging.get_logger("transformers")
    logger.addHandler(handler)
    verbosity = transformers.logging.get_verbosity()
    try:
        for level in (transformers.logging.ERROR, transformers.logging.INFO):
            transformers.logging.set_verbosity(level)
            model._prepare_generation_config(None, do_sample=False)
        kept = model.__dict__[generation_setup.ATTRIBUTE]
        assert kept[0] == transformers.logging.INFO  # (merged again at the new verbosity, its messages logged)
    finally:
        transformers.logging.set_verbosity(verbosity)
        logger.removeHandler(handler)


def test_a_config_holding_itself_is_left_to_transformers(model):
    looped = [1]
    looped.append(looped)
    model.generation_config.custom_list = looped
    assert generation_setup.prepare_generation_config(model, None, {}) is None
    deep = [1]
    for _ in range(20):
        deep = [deep]
    model.generation_config.custom_list = deep
    assert generation_setup.prepare_generation_config(model, None, {}) is None


def test_prompt_masks_transformers_refuses_or_lays_out_otherwise_are_left_to_it(model):
    config, _ = model._prepare_generation_config(None, pad_token_id=0)
    model._prepare_special_tokens(config, False, device=torch.device("cpu"))
    strided = torch.tensor([[5, 6], [7, 8]]).t()
    assert generation_setup.attention_mask_for_generation(strided, config, {}) is None
    config._pad_token_tensor = torch.tensor(True)
    assert generation_setup.attention_mask_for_generation(torch.tensor([[5, 6]]), config, {}) is None
    with pytest.raises(RuntimeError):  # (transformers' isin refuses a bool pad token)
        model._prepare_attention_mask_for_generation(torch.tensor([[5, 6]]), config, {})


def test_the_installed_release_is_one_these_were_checked_against():
    assert generation_setup.preparation_checked() and generation_setup.mask_preparation_checked(), (
        "this release's GenerationMixin._prepare_generation_config, PreTrainedConfig._get_generation_parameters or "
        "GenerationMixin._prepare_attention_mask_for_generation is not one seqzoo's preparation was checked against, "
        "so generate() prepares through transformers' methods: compare (this file's tests), then add the "
        "fingerprints to seqzoo/models/generation_setup.py")


@pytest.mark.parametrize("preset", ["gru-tiny", *list(SEQ2SEQ_FAMILIES.values())[:1]])
def test_signatures_read_once_are_what_inspect_reads(preset):
    # generate() reads _sample's signature at every call: read once, when the class is made, and what inspect reads
    # from the function itself. A forward keeps none: a wrapper of the bound method (accelerate's hooks) copies the
    # function's __dict__, and answered with the unbound signature, self first.
    import functools
    import inspect

    model = tiny_model(preset)
    sample = getattr(type(model), "_sample", None)
    if sample is not None and "__signature__" in vars(sample):
        kept = sample.__signature__
        assert inspect.signature(sample) is kept
        del sample.__signature__
        try:
            assert inspect.signature(sample) == kept
        finally:
            sample.__signature__ = kept
    assert "__signature__" not in vars(type(model).forward)
    hooked = functools.update_wrapper(functools.partial(lambda *args, **kwargs: None), model.forward)
    assert list(inspect.signature(hooked).parameters) == list(inspect.signature(model.forward).parameters)
    assert next(iter(inspect.signature(hooked).parameters)) != "self"
