"""What ``generate()`` hands the forward at each decode step.

seqzoo prepares a plain decode step itself (``decode_step_inputs``: one new token continuing a SeqzooCache), where
transformers' general ``prepare_inputs_for_generation`` spends about 30 µs a token checking for inputs a seqzoo model
never gets; and a model whose layers all keep a recurrent state builds no position ids in ``generate()``. Both are
held here to transformers' own method, on whichever release is installed.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import transformers
from transformers import GenerationMixin

import seqzoo.models.generation as generation
import seqzoo.models.modeling_utils as modeling_utils
from seqzoo.cache import SeqzooCache
from seqzoo.models.compat import GENERATE_CACHE_KWARG
from tests.conftest import FAMILIES, families_where, tiny_model

PROMPT = torch.tensor([[5, 17, 33, 8, 61, 12, 40], [3, 3, 21, 9, 50, 14, 7]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])


def transformers_inputs(model, args, kwargs):
    """What seqzoo's prepare_inputs_for_generation returned before its own decode-step path: transformers' method,
    plus the cache under its older name."""
    inputs = GenerationMixin.prepare_inputs_for_generation(model, *args, **kwargs)
    if GENERATE_CACHE_KWARG != "past_key_values" and inputs.get(GENERATE_CACHE_KWARG) is not None:
        inputs["past_key_values"] = inputs[GENERATE_CACHE_KWARG]
    return inputs


def assert_same_inputs(ours, theirs):
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(ours[name], value), name
            assert ours[name].is_contiguous() == value.is_contiguous(), name
        else:
            assert ours[name] is value or ours[name] == value, name


def recorded_steps(model, monkeypatch, **generate_kwargs):
    """generate() with every call of ``decode_step_inputs`` recorded: (args, a copy of kwargs, what it returned).
    Through transformers' loop, which prepares every step through the model's method (seqzoo's loop prepares the
    first and builds the later ones from it: tests/models/test_decode_loop.py)."""
    model.set_generate_loop("transformers")
    calls = []
    real = modeling_utils.decode_step_inputs

    def record(model_, args, kwargs):
        result = real(model_, args, kwargs)
        calls.append((args, dict(kwargs), result))
        return result

    # (patched in modeling_utils, where SeqzooForCausalLM.prepare_inputs_for_generation looks the name up)
    monkeypatch.setattr(modeling_utils, "decode_step_inputs", record)
    model.generate(**{"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0, **generate_kwargs})
    return calls


@pytest.mark.parametrize("prompt", ["one-row", "left-padded", "embeddings"])
def test_decode_steps_get_what_transformers_prepares(family_preset, prompt, monkeypatch):
    model = tiny_model(family_preset)
    inputs = {"one-row": {"input_ids": PROMPT[:1]}, "left-padded": {"input_ids": PROMPT, "attention_mask": MASK},
              "embeddings": {"inputs_embeds": model.get_input_embeddings()(PROMPT).detach(), "attention_mask": MASK}}
    calls = recorded_steps(model, monkeypatch, **inputs[prompt])
    steps = [call for call in calls if call[2] is not None]
    assert len(calls) == 4 and len(steps) == 3  # the prefill takes transformers' path, every decode step seqzoo's
    for args, kwargs, ours in steps:
        assert_same_inputs(ours, transformers_inputs(model, args, kwargs))


def test_position_ids_and_other_keywords_are_handed_on_as_transformers_does():
    model = tiny_model(FAMILIES["transformer"])
    cache = SeqzooCache.for_model(model)
    ids = PROMPT[:1]
    base = {"next_sequence_length": 1, GENERATE_CACHE_KWARG: cache, "use_cache": True, "logits_to_keep": 1,
            "attention_mask": None}
    cases = [
        {"position_ids": torch.arange(7)[None]},  # 2-D, sliced to the last
        {"position_ids": torch.arange(7).expand(3, 1, 7)},  # 3-D, sliced on the last dimension
        {"position_ids": torch.tensor([[6]])},  # already one long: handed on as it is
        {"position_ids": None, "token_type_ids": None, "labels": None},  # dropped
        {"output_hidden_states": True, "decoder_attention_mask": None},  # handed on
        {"attention_mask": torch.ones(1, 7, dtype=torch.long)},
        {"pixel_values": None},  # dropped after the prefill
        {"inputs_embeds": torch.zeros(1, 7, 32)},  # a prompt's embeddings: read by the first step only
    ]
    for extra in cases:
        kwargs = {**base, **extra}
        assert generation.decode_step_inputs(model, (ids,), kwargs) is not None, extra
        ours = model.prepare_inputs_for_generation(ids, **kwargs)
        assert_same_inputs(ours, transformers_inputs(model, (ids,), kwargs))


@pytest.mark.parametrize("change", [
    {"next_sequence_length": None}, {"next_sequence_length": 3}, {"is_first_iteration": True},
    {"use_cache": False}, {"token_type_ids": torch.zeros(1, 7)},
    {"pixel_values": torch.zeros(1, 3)}, {"labels": torch.zeros(1, 7)}, {"cache": "not a cache"},
], ids=lambda change: next(iter(change)))
def test_other_calls_take_transformers_path(change):
    model = tiny_model(FAMILIES["transformer"])
    kwargs = {"next_sequence_length": 1, GENERATE_CACHE_KWARG: SeqzooCache.for_model(model), "use_cache": True}
    if "cache" in change:
        change = {GENERATE_CACHE_KWARG: change["cache"]}
    assert generation.decode_step_inputs(model, (PROMPT[:1],), kwargs) is not None
    assert generation.decode_step_inputs(model, (PROMPT[:1],), {**kwargs, **change}) is None
    assert generation.decode_step_inputs(model, (PROMPT[:1].to("meta"),), kwargs) is None  # another device


def test_input_ids_given_by_keyword_or_not_2d_take_transformers_path():
    model = tiny_model(FAMILIES["transformer"])
    kwargs = {"next_sequence_length": 1, GENERATE_CACHE_KWARG: SeqzooCache.for_model(model), "use_cache": True}
    assert generation.decode_step_inputs(model, (), {**kwargs, "input_ids": PROMPT[:1]}) is None
    assert generation.decode_step_inputs(model, (PROMPT[0],), kwargs) is None


def forward_position_ids(model, monkeypatch, **generate_kwargs):
    seen = []
    forward = type(model).forward

    def record(self, *args, **kwargs):
        seen.append(kwargs.get("position_ids"))
        return forward(self, *args, **kwargs)

    record.__signature__ = inspect.signature(forward)  # generate() builds position ids for a forward that names them
    monkeypatch.setattr(type(model), "forward", record)
    out = model.generate(**{"max_new_tokens": 3, "do_sample": False, "pad_token_id": 0, **generate_kwargs})
    monkeypatch.undo()
    return seen, out


@pytest.mark.parametrize("preset", families_where("constant_state_decode"))
def test_a_recurrent_model_gets_no_position_ids_from_generate(preset, monkeypatch):
    model = tiny_model(preset)
    seen, out = forward_position_ids(model, monkeypatch, input_ids=PROMPT, attention_mask=MASK)
    assert len(seen) == 3 and all(ids is None for ids in seen)
    # They would change nothing: transformers' own position ids give the same tokens.
    positions = (MASK.cumsum(-1) - 1).clamp(min=0)
    with_positions = model.generate(PROMPT, attention_mask=MASK, position_ids=positions, max_new_tokens=3,
                                    do_sample=False, pad_token_id=0)
    assert torch.equal(out, with_positions)


@pytest.mark.parametrize("preset", families_where("constant_state_decode", False))
def test_attention_models_still_get_position_ids(preset, monkeypatch):
    seen, _ = forward_position_ids(tiny_model(preset), monkeypatch, input_ids=PROMPT, attention_mask=MASK)
    assert len(seen) == 3 and all(ids is not None for ids in seen)
    assert seen[-1].tolist() == [[8], [6]]  # the third token of row 0 at 8; the left-padded row counts from 0 at 2


GENERATE_MODES = {
    "greedy": {},
    "sampling": {"do_sample": True, "top_k": 5, "num_return_sequences": 2},
    "beam search": {"num_beams": 3, "num_return_sequences": 2},
    "scores": {"return_dict_in_generate": True, "output_scores": True, "output_logits": True},
}


@pytest.mark.parametrize("mode", sorted(GENERATE_MODES))
def test_generate_gives_what_it_gave_through_transformers_preparation(family_preset, mode, monkeypatch):
    """End to end: every decoding mode gives the same tokens (and scores) with seqzoo's decode-step preparation as
    with transformers' own at every step."""
    model = tiny_model(family_preset)
    kwargs = {"input_ids": PROMPT, "attention_mask": MASK, "max_new_tokens": 4, "pad_token_id": 0,
              **GENERATE_MODES[mode]}
    runs = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(modeling_utils, "decode_step_inputs", lambda *args: None)
        torch.manual_seed(0)
        runs.append(model.generate(**kwargs))
    ours, theirs = runs
    if mode == "scores":
        assert torch.equal(ours.sequences, theirs.sequences)
        for name in ("scores", "logits"):
            for a, b in zip(getattr(ours, name), getattr(theirs, name), strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    else:
        assert torch.equal(ours, theirs)


def test_the_installed_release_is_one_the_decode_step_was_checked_against():
    fingerprint = generation._preparation_fingerprint()
    assert fingerprint in generation._CHECKED_PREPARATIONS, (
        f"transformers {transformers.__version__}'s prepare_inputs_for_generation (fingerprint {fingerprint}) is not "
        "one that seqzoo's decode_step_inputs was checked against, so every decode step takes transformers' method: "
        "compare the two (this file's tests, with the fingerprint added), then add it to _CHECKED_PREPARATIONS in "
        "seqzoo/models/generation.py")


def test_an_unchecked_release_prepares_every_step_with_transformers_method(monkeypatch):
    # A Hub bundle of this code loaded by a later release of transformers, whose method may prepare other inputs.
    model = tiny_model(FAMILIES["transformer"])
    expected = model.generate(PROMPT, attention_mask=MASK, max_new_tokens=4, do_sample=False, pad_token_id=0)
    monkeypatch.setattr(generation, "_CHECKED_PREPARATIONS", frozenset())
    try:
        calls = recorded_steps(model, monkeypatch, input_ids=PROMPT, attention_mask=MASK)
        assert len(calls) == 4 and all(result is None for _, _, result in calls)
        got = model.generate(PROMPT, attention_mask=MASK, max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert torch.equal(got, expected)
    finally:
        monkeypatch.undo()
    assert generation.preparation_checked()


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny"])
@pytest.mark.parametrize("mask", [torch.ones(2, 5, dtype=torch.long), torch.ones(2, 9, dtype=torch.long),
                                  torch.ones(1, 7, dtype=torch.long)], ids=["shorter", "longer", "fewer-rows"])
def test_generate_refuses_an_attention_mask_that_does_not_fit_the_prompt(preset, mask):
    # An all-ones mask is dropped by transformers' generate() before any forward sees it: of another length it would
    # be ignored, and the pads of PROMPT's second row read as tokens.
    model = tiny_model(preset)
    with pytest.raises(ValueError, match=r"attention_mask has shape .* but input_ids has \(2, 7\)"):
        model.generate(PROMPT, attention_mask=mask, max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize("prompt", ["inputs", "inputs_embeds"])
def test_a_mask_that_does_not_fit_a_prompt_given_by_keyword_is_refused_naming_it(prompt):
    model = tiny_model("lstm-tiny")
    given = {"inputs": PROMPT, "inputs_embeds": model.get_input_embeddings()(PROMPT).detach()}[prompt]
    name = "inputs_embeds" if prompt == "inputs_embeds" else "input_ids"
    with pytest.raises(ValueError, match=rf"attention_mask has shape \(2, 5\) but {name} has \(2, 7\)"):
        model.generate(**{prompt: given}, attention_mask=MASK[:, 2:], max_new_tokens=2, do_sample=False,
                       pad_token_id=0)


@pytest.mark.parametrize("preset", ["lstm-tiny", "seq2seq-bahdanau-tiny"])
def test_continuous_batching_is_refused_by_name(preset):
    model = tiny_model(preset)
    with pytest.raises(NotImplementedError, match="does not support continuous batching"):
        model.generate_batch(inputs=[[5, 6, 7]], generation_config=transformers.GenerationConfig(max_new_tokens=2))


@pytest.mark.parametrize("preset", ["lstm-tiny", "seq2seq-bahdanau-tiny"])
def test_a_prompt_or_mask_that_is_no_tensor_is_named(preset):
    # (a list of ids failed inside transformers with "'list' object has no attribute 'shape'"; a tokenizer's output
    # passed whole, as the prompt, likewise)
    from transformers import BatchEncoding

    model = tiny_model(preset)
    ids = torch.tensor([[5, 6, 7]])
    for args, kwargs, name, hint in (
            (([[5, 6, 7]],), {}, "inputs", r"torch\.tensor\(\[\[\.\.\.\]\]\) makes one of a list"),
            ((), {"input_ids": [[5, 6, 7]]}, "input_ids", "return_tensors='pt'"),
            ((ids,), {"attention_mask": [[1, 1, 1]]}, "attention_mask", "makes one of a list"),
            ((BatchEncoding({"input_ids": ids}),), {}, "inputs", r"generate\(\*\*inputs\)")):
        with pytest.raises(TypeError, match=rf"{type(model).__name__}\.generate: {name} must be a torch\.Tensor of "
                                            rf"shape \(batch, sequence_length\); got \w+ \(.*{hint}"):
            model.generate(*args, max_new_tokens=2, **kwargs)
