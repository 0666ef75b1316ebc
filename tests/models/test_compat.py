"""The cache argument's names and the keyword arguments a forward accepts, on whichever transformers is installed.

transformers <= 5.23 passes the decoding state as ``past_key_values`` (``cache_params`` for Mamba-named classes),
5.24 as ``cache``; a forward that swallowed unknown keywords decoded from an empty state on 5.24 without a word.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from transformers import AutoModelForSequenceClassification
from transformers.modeling_outputs import CausalLMOutputWithPast

from seqzoo.models import compat
from seqzoo.models.compat import CACHE_ALIASES, output_cache
from tests.conftest import tiny_model

IDS = torch.tensor([[5, 17, 33, 8, 61, 12, 40]])
NAMES = ("cache", *CACHE_ALIASES)


@pytest.mark.parametrize("name", NAMES)
def test_every_cache_name_continues_the_same_state(family_preset, name):
    model = tiny_model(family_preset)
    full = model(IDS).logits[:, 4:]
    prefix = output_cache(model(IDS[:, :4], use_cache=True))
    continued = model(IDS[:, 4:], attention_mask=torch.ones_like(IDS), **{name: prefix}).logits
    torch.testing.assert_close(continued, full, rtol=1e-5, atol=1e-5)


def test_two_different_caches_raise(family_preset):
    model = tiny_model(family_preset)
    first = output_cache(model(IDS[:, :4], use_cache=True))
    second = output_cache(model(IDS[:, :4], use_cache=True))
    with pytest.raises(ValueError, match="two different caches"):
        model(IDS[:, 4:], cache=first, past_key_values=second)
    with pytest.raises(ValueError, match="two different caches"):
        model.model(IDS[:, 4:], cache=first, cache_params=second)


@pytest.mark.parametrize("name", NAMES)
def test_generate_continues_from_a_cache_under_every_name(family_preset, name):
    model = tiny_model(family_preset)
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    expected = model.generate(IDS, **kwargs)
    cache = output_cache(model(IDS[:, :4], use_cache=True))
    assert torch.equal(model.generate(IDS, **{name: cache}, **kwargs), expected)
    assert cache.get_seq_length() == IDS.shape[1] + 4  # the prompt and all but the last new token


@pytest.mark.parametrize("typo, suggestion", [("attention_mak", "attention_mask"), ("past_key_value", "past_key_values"),
                                              ("caches", "cache"), ("use_cach", "use_cache")])
def test_a_misspelt_keyword_raises_with_a_suggestion(family_preset, typo, suggestion):
    model = tiny_model(family_preset)
    value = output_cache(model(IDS[:, :4], use_cache=True)) if "cache" in typo else torch.ones_like(IDS)
    for module in (model, model.model):
        with pytest.raises(TypeError, match=rf"'{typo}' \(did you mean '{suggestion}'\?\)"):
            module(IDS, **{typo: value})


def test_an_unrelated_keyword_raises_and_lists_what_is_accepted(family_preset):
    model = tiny_model(family_preset)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) 'temperature_schedule'.*It accepts"):
        model(IDS, temperature_schedule=3)


def test_a_classifier_names_no_cache_it_does_not_take(family_preset):
    config = tiny_model(family_preset).config
    config.num_labels = 3
    classifier = AutoModelForSequenceClassification.from_config(config).eval()
    for name in ("cache", "past_key_values", "kwargs"):
        with pytest.raises(TypeError, match=rf"unexpected keyword argument\(s\) '{name}'\. It accepts") as error:
            classifier(IDS, **{name: 1})
        accepted = str(error.value).split("It accepts ", 1)[1].split(", ")
        assert not {"cache", "past_key_values", "cache_params", "kwargs"} & set(accepted), accepted
    assert classifier(IDS).logits.shape == (IDS.shape[0], 3)


def test_what_transformers_passes_through_is_accepted(family_preset):
    model = tiny_model(family_preset)
    expected = model(IDS).logits
    passed = model(IDS, cache_position=torch.arange(7), output_attentions=False, num_items_in_batch=torch.tensor(6),
                   return_dict=True).logits
    torch.testing.assert_close(passed, expected, rtol=0, atol=0)


def test_plugins_extend_the_pass_through_list(family_preset, monkeypatch):
    monkeypatch.setattr(compat, "PASSTHROUGH_KWARGS", set(compat.PASSTHROUGH_KWARGS))
    model = tiny_model(family_preset)
    with pytest.raises(TypeError):
        model(IDS, my_plugin_flag=True)
    compat.register_passthrough_kwargs("my_plugin_flag")
    model(IDS, my_plugin_flag=True)
    with pytest.raises(ValueError, match="identifier"):
        compat.register_passthrough_kwargs("not a name")


def test_bundled_code_is_lenient_but_catches_misspellings(family_preset, monkeypatch):
    # A published bundle cannot be updated when a newer transformers passes a keyword it has never seen.
    monkeypatch.setattr(compat, "STRICT", False)
    monkeypatch.setattr(compat, "_WARNED", set())
    model = tiny_model(family_preset)
    expected = model(IDS).logits
    with pytest.warns(UserWarning, match="ignores the keyword argument 'brand_new_generate_flag'"):
        logits = model(IDS, brand_new_generate_flag=1).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(IDS, brand_new_generate_flag=1)  # warned once only
    with pytest.raises(TypeError, match="did you mean 'attention_mask'"):
        model(IDS, attention_mak=torch.ones_like(IDS))
    cache = output_cache(model(IDS[:, :4], use_cache=True))
    torch.testing.assert_close(model(IDS[:, 4:], cache_params=cache).logits, expected[:, 4:], rtol=1e-5, atol=1e-5)


def test_outputs_carry_the_cache_where_the_installed_release_reads_it(family_preset):
    model = tiny_model(family_preset)
    out = model(IDS, use_cache=True)
    field = compat.OUTPUT_CACHE_FIELD
    assert field in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    assert out[field] is output_cache(out) is not None
    assert model(IDS, return_dict=False)[1] is not None  # (logits, cache)


def _tuple_kinds(output):
    return [type(value).__name__ if isinstance(value, tuple) else "tensor" if isinstance(value, torch.Tensor) else
            "cache" for value in output]


def test_a_backbone_honours_return_dict_as_transformers_backbones_do(family_preset):
    """AutoModel's backbone with return_dict=False (passed, or the config's) gives a tuple of the fields set, as
    transformers' LlamaModel does: (last_hidden_state, cache[, hidden_states]), packed rows too; the causal LM built
    on it still reads it."""
    from transformers import LlamaConfig, LlamaModel

    llama = LlamaModel(LlamaConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2)).eval()
    model = tiny_model(family_preset).eval()
    with torch.no_grad():
        for settings in ({"use_cache": True}, {"use_cache": True, "output_hidden_states": True}):
            expected = _tuple_kinds(llama(IDS, return_dict=False, **settings))
            as_dict = model.model(IDS, **settings)
            as_tuple = model.model(IDS, return_dict=False, **settings)
            assert isinstance(as_tuple, tuple) and _tuple_kinds(as_tuple) == expected, settings
            torch.testing.assert_close(as_tuple[0], as_dict.last_hidden_state, rtol=0, atol=0)
            assert as_tuple[1].get_seq_length() == IDS.shape[1]
        expected_logits = model(IDS).logits
        packed = {"position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3]]), "use_cache": False}  # two documents
        expected_packed = model.model(IDS, **packed).last_hidden_state
        model.config.return_dict = False
        assert isinstance(model.model(IDS), tuple)
        torch.testing.assert_close(model.model(IDS, **packed)[0], expected_packed, rtol=0, atol=0)
        assert isinstance(model.model(IDS, return_dict=True), type(as_dict))
        # (the causal-LM head asks its backbone for a ModelOutput whatever the config says)
        torch.testing.assert_close(model(IDS)[0], expected_logits, rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["transformer-tiny", "mamba-tiny"])
def test_cache_implementation_dynamic_is_the_default_and_others_are_refused(preset):
    """generate() builds a SeqzooCache itself; "dynamic" (what it is) gives the same tokens, and a cache transformers
    would build instead (static, offloaded, ...) is refused naming what works, from a keyword or the model's
    generation config."""
    model = tiny_model(preset)
    ids = torch.randint(3, 90, (2, 6), generator=torch.Generator().manual_seed(0))
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    expected = model.generate(ids, **settings)
    assert torch.equal(model.generate(ids, cache_implementation="dynamic", **settings), expected)
    with pytest.raises(ValueError, match=r"cache_implementation='static' is not supported.*SeqzooCache"):
        model.generate(ids, cache_implementation="static", **settings)
    model.generation_config.cache_implementation = "dynamic"
    assert torch.equal(model.generate(ids, **settings), expected)
    model.generation_config.cache_implementation = "offloaded"
    with pytest.raises(ValueError, match=r"cache_implementation='offloaded' is not supported"):
        model.generate(ids, **settings)


# ----------------------------------------------------------------------------------------------------------------
# model_output builds what the output class's own constructor builds.

from transformers.modeling_outputs import BaseModelOutputWithPast  # noqa: E402
from transformers.utils import ModelOutput  # noqa: E402

OUTPUT_CASES = {
    "all fields": dict(last_hidden_state=torch.ones(2, 3), hidden_states=(torch.zeros(1),), attentions=(IDS,)),
    "some None": dict(last_hidden_state=torch.ones(2, 3), hidden_states=None),
    "head, no loss": dict(loss=None, logits=torch.ones(2, 3)),
    "head, loss": dict(loss=torch.tensor(1.5), logits=torch.ones(2, 3), hidden_states=(torch.ones(1),)),
}


def _same_output(built, reference):
    assert type(built) is type(reference)
    assert list(built.keys()) == list(reference.keys())
    assert all(built[k] is reference[k] for k in reference.keys())
    assert vars(built).keys() == vars(reference).keys()
    assert all(vars(built)[k] is vars(reference)[k] for k in vars(reference))
    assert len(built.to_tuple()) == len(reference.to_tuple())


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_model_output_builds_what_the_constructor_builds(case):
    fields = OUTPUT_CASES[case]
    cls = CausalLMOutputWithPast if "logits" in fields else BaseModelOutputWithPast
    cache = object()
    built = compat.model_output(cls, cache=cache, **fields)
    reference = cls(**fields, **{compat.OUTPUT_CACHE_FIELD: cache})
    assert compat._BUILDERS[cls].__name__ == "fast"  # the fast path, not the constructor, built it
    _same_output(built, reference)
    assert output_cache(built) is cache
    none = compat.model_output(cls, **fields)
    _same_output(none, cls(**fields))
    with pytest.raises(TypeError):
        compat.model_output(cls, not_a_field=1, **fields)


def test_model_output_falls_back_to_the_constructor_where_it_stores_more():
    def post_init(self):
        ModelOutput.__post_init__(self)
        self.extra = "set by __post_init__"

    stores = dataclasses.make_dataclass(
        "Stores", [("last_hidden_state", object, None), (compat.OUTPUT_CACHE_FIELD, object, None)],
        bases=(ModelOutput,), namespace={"__post_init__": post_init},
    )
    assert stores(last_hidden_state=torch.ones(1)).extra == "set by __post_init__"

    built = compat.model_output(stores, last_hidden_state=torch.ones(1))
    assert built.extra == "set by __post_init__"
    assert compat._BUILDERS[stores].__name__ == "<lambda>"
