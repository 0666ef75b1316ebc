"""seqzoo's greedy and sampled decoding loop (``models/decode_loop.py``) against transformers' own ``_sample``.

The two loops must give the same tokens and call the model's forward with the same inputs, step by step, for
every family and every option a plain ``generate()`` call takes; where seqzoo's loop was not checked (other
releases, returned dicts, a replaced input preparation ...) transformers' loop runs.
"""

from __future__ import annotations

import copy
import functools
import weakref
from pathlib import Path

import pytest
import torch
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

import seqzoo.models.decode_loop as decode_loop
import seqzoo.models.generation as generation
import seqzoo.models.modeling_utils as modeling_utils
from seqzoo.cache import SeqzooCache
from seqzoo.models.compat import GENERATE_CACHE_KWARG, OUTPUT_CACHE_FIELD
from tests.conftest import FAMILIES, tiny_model

PROMPT = torch.tensor([[5, 17, 33, 8, 61, 12, 40], [3, 3, 21, 9, 50, 14, 7]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])
GREEDY = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}


class Spy:
    """Counts the seqzoo loop's runs and the steps it built from the last one's inputs."""

    def __init__(self, monkeypatch):
        self.runs = self.built = 0
        real_sample, real_with_token = decode_loop.sample, decode_loop._StepInputs.with_token

        def sample(*args, **kwargs):
            self.runs += 1
            return real_sample(*args, **kwargs)

        def with_token(*args, **kwargs):
            self.built += 1
            return real_with_token(*args, **kwargs)

        monkeypatch.setattr(modeling_utils, "sample", sample)
        monkeypatch.setattr(decode_loop._StepInputs, "with_token", with_token)


def _recorded(value):
    if isinstance(value, torch.Tensor):
        return value.clone(), value.is_contiguous(), type(value)
    if isinstance(value, SeqzooCache):
        return ("a SeqzooCache holding", value.get_seq_length())
    return value


def generate(model, loop, seed=0, **kwargs):
    """``model.generate(**kwargs)`` through ``loop``, with the keyword arguments of every forward call recorded."""
    calls = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kw: calls.append((len(args), {k: _recorded(v) for k, v in kw.items()})),
        with_kwargs=True)
    model.set_generate_loop(loop)
    torch.manual_seed(seed)
    try:
        result = model.generate(**kwargs)
    finally:
        handle.remove()
        model.set_generate_loop("seqzoo")
    return result, calls


def assert_same_calls(ours, theirs):
    assert len(ours) == len(theirs)
    for step, ((our_args, our_kwargs), (their_args, their_kwargs)) in enumerate(zip(ours, theirs)):
        assert our_args == their_args and our_kwargs.keys() == their_kwargs.keys(), step
        for name, value in their_kwargs.items():
            if isinstance(value, tuple) and isinstance(value[0], torch.Tensor):  # (a tensor, whether contiguous, type)
                (our_value, our_layout, our_type), (their_value, their_layout, their_type) = our_kwargs[name], value
                assert (our_value.dtype == their_value.dtype and torch.equal(our_value, their_value)
                        and our_layout == their_layout and our_type is their_type), (step, name)
            else:
                assert our_kwargs[name] == value, (step, name)


def assert_same_generation(model, monkeypatch, fast=True, **kwargs):
    """Both loops give the same output and the same forward calls; ``fast``: seqzoo's loop built the later steps'
    inputs itself (else it ran but prepared every step through both methods)."""
    spy = Spy(monkeypatch)
    theirs, their_calls = generate(model, "transformers", **kwargs)
    assert spy.runs == 0
    ours, our_calls = generate(model, "seqzoo", **kwargs)
    assert spy.runs == 1
    assert (spy.built > 0) == fast
    assert torch.equal(ours, theirs)
    assert_same_calls(our_calls, their_calls)
    return ours


def same_generation_under_hook(model, monkeypatch, hook):
    """:func:`assert_same_generation` of the plain greedy call with ``hook`` as a forward hook of the model."""
    handle = model.register_forward_hook(hook)
    try:
        return assert_same_generation(model, monkeypatch, input_ids=PROMPT, attention_mask=MASK, **GREEDY)
    finally:
        handle.remove()


@pytest.mark.parametrize("rows", ["one-row", "left-padded"])
def test_greedy_decoding_matches_transformers_loop(family_preset, rows, monkeypatch):
    model = tiny_model(family_preset)
    inputs = {"input_ids": PROMPT[:1]} if rows == "one-row" else {"input_ids": PROMPT, "attention_mask": MASK}
    assert_same_generation(model, monkeypatch, **inputs, **GREEDY)


def test_sampling_matches_transformers_loop(family_preset, monkeypatch):
    model = tiny_model(family_preset)
    assert_same_generation(model, monkeypatch, input_ids=PROMPT, attention_mask=MASK, do_sample=True, top_k=20,
                           temperature=0.8, max_new_tokens=6, pad_token_id=0, eos_token_id=None, seed=3)


def eos_of(model):
    """A token that row 0 of the greedy continuation makes and row 1 does not: as the EOS token, row 0 ends early and
    is padded while row 1 goes on."""
    tokens = model.generate(input_ids=PROMPT, attention_mask=MASK, **GREEDY)[:, PROMPT.shape[1]:].tolist()
    return next(token for token in tokens[0][:-1] if token not in tokens[1])


@pytest.mark.parametrize("family", ["transformer", "lstm", "rwkv7", "mamba2"])
def test_an_eos_token_ends_rows_as_in_transformers_loop(family, monkeypatch):
    model = tiny_model(FAMILIES[family])
    eos = eos_of(model)
    out = assert_same_generation(model, monkeypatch, input_ids=PROMPT, attention_mask=MASK,
                                 **{**GREEDY, "eos_token_id": eos, "pad_token_id": 1, "max_new_tokens": 8})
    new = out[:, PROMPT.shape[1]:]
    assert eos in new[0].tolist()  # (the case this test is for: a row that ended, padded after its EOS)
    assert (new[0, new[0].tolist().index(eos) + 1:] == 1).all()


@pytest.mark.parametrize("options", [
    {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2},  # processors that read the sequence so far
    {"min_new_tokens": 4, "suppress_tokens": [3, 4]},
    {"do_sample": True, "top_p": 0.9, "typical_p": 0.95},
    {"bad_words_ids": [[7], [9, 10]], "begin_suppress_tokens": [5]},
], ids=lambda options: next(iter(options)))
def test_logits_processors_see_what_they_see_in_transformers_loop(options, monkeypatch):
    model = tiny_model(FAMILIES["transformer"])
    eos = eos_of(model)
    assert_same_generation(model, monkeypatch, input_ids=PROMPT, attention_mask=MASK,
                           **{**GREEDY, "eos_token_id": eos, "max_new_tokens": 8, **options})


class StopAfterToken(StoppingCriteria):
    def __init__(self, token):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


def test_stopping_criteria_and_streamers_are_called_as_transformers_loop_calls_them(monkeypatch):
    model = tiny_model(FAMILIES["gru"])
    token = eos_of(model)

    class Recorder:
        def __init__(self):
            self.seen = []

        def put(self, value):
            self.seen.append(value.clone())

        def end(self):
            self.seen.append("end")

    streams = []
    for loop in ("transformers", "seqzoo"):
        streams.append(Recorder())
        model.set_generate_loop(loop)
        out = model.generate(input_ids=PROMPT, attention_mask=MASK, streamer=streams[-1], **{**GREEDY,
                             "max_new_tokens": 8, "pad_token_id": 1, "eos_token_id": 90},
                             stopping_criteria=StoppingCriteriaList([StopAfterToken(token)]))
        streams[-1].seen.append(out)
    model.set_generate_loop("seqzoo")
    theirs, ours = (s.seen for s in streams)
    assert len(ours) == len(theirs) and len(ours) > 3
    for a, b in zip(ours, theirs):
        assert a == b if isinstance(a, str) else torch.equal(a, b)
    out = assert_same_generation(model, monkeypatch, input_ids=PROMPT, attention_mask=MASK,
                                 stopping_criteria=StoppingCriteriaList([StopAfterToken(token)]),
                                 **{**GREEDY, "max_new_tokens": 8, "pad_token_id": 1, "eos_token_id": 90})
    new = out[0, PROMPT.shape[1]:].tolist()
    assert token in new and set(new[new.index(token) + 1:]) == {1}  # row 0 stopped by the criterion, then padded


@pytest.mark.parametrize("family", ["transformer", "rnn"])
def test_a_continued_cache_matches_transformers_loop(family, monkeypatch):
    spy = Spy(monkeypatch)  # (seqzoo's loop ran where it should)
    model = tiny_model(FAMILIES[family])
    outputs = []
    for loop in ("transformers", "seqzoo"):
        model.set_generate_loop(loop)
        cache = SeqzooCache.for_model(model)
        first = model.generate(PROMPT, attention_mask=MASK, cache=cache, **GREEDY)
        mask = torch.cat([MASK, torch.ones(2, first.shape[1] - MASK.shape[1], dtype=MASK.dtype)], dim=1)
        outputs.append((first, model.generate(first, attention_mask=mask, cache=cache, **GREEDY),
                        cache.get_seq_length()))
    model.set_generate_loop("seqzoo")
    (a1, a2, alen), (b1, b2, blen) = outputs
    assert torch.equal(a1, b1) and torch.equal(a2, b2) and alen == blen
    assert spy.runs == 2


class ScoreRecorder(LogitsProcessor):
    def __init__(self):
        self.seen = []

    def __call__(self, input_ids, scores):
        self.seen.append((input_ids.clone(), scores.clone()))
        return scores


def test_a_bf16_model_samples_from_float32_scores_as_transformers_loop(monkeypatch):
    model = tiny_model(FAMILIES["mamba"]).to(torch.bfloat16)
    recorders = [ScoreRecorder(), ScoreRecorder()]
    for loop, recorder in zip(("transformers", "seqzoo"), recorders):
        generate(model, loop, input_ids=PROMPT, attention_mask=MASK, max_new_tokens=5, do_sample=True,
                 pad_token_id=0, eos_token_id=None, logits_processor=LogitsProcessorList([recorder]))
    (theirs, ours) = (recorder.seen for recorder in recorders)
    assert len(ours) == len(theirs) == 5
    for (our_ids, our_scores), (their_ids, their_scores) in zip(ours, theirs):
        assert our_scores.dtype == their_scores.dtype == torch.float32
        assert torch.equal(our_ids, their_ids) and torch.equal(our_scores, their_scores)
    assert_same_generation(model, monkeypatch, input_ids=PROMPT, attention_mask=MASK, do_sample=True,
                           max_new_tokens=5, pad_token_id=0, eos_token_id=None, seed=1)


def test_an_unchecked_step_preparation_prepares_every_step_through_both_methods(monkeypatch):
    # Where decode_step_inputs was not checked against the installed release, the model's method hands every step to
    # transformers' preparation, and seqzoo's loop builds no step from another's inputs.
    model = tiny_model(FAMILIES["transformer"])
    monkeypatch.setattr(generation, "_CHECKED_PREPARATIONS", frozenset())
    try:
        assert_same_generation(model, monkeypatch, fast=False, input_ids=PROMPT, attention_mask=MASK, **GREEDY)
    finally:
        monkeypatch.undo()


def test_only_plain_first_step_inputs_are_built_on():
    model = tiny_model(FAMILIES["transformer"])
    cache = SeqzooCache.for_model(model)
    mask = torch.ones(2, 8, dtype=torch.long)
    kwargs = {GENERATE_CACHE_KWARG: cache, "attention_mask": mask, "position_ids": torch.arange(8).expand(2, 8)}
    plain = {"input_ids": torch.zeros(2, 1, dtype=torch.long), "position_ids": torch.full((2, 1), 7),
             "attention_mask": mask, GENERATE_CACHE_KWARG: cache, "past_key_values": cache, "logits_to_keep": 1,
             "use_cache": True}
    assert decode_loop._builds_on(plain, kwargs, 2)
    for change in [{"token_type_ids": torch.zeros(2, 1)}, {"attention_mask": mask.clone()},
                   {"position_ids": torch.full((3, 2, 1), 7)}, {"input_ids": torch.zeros(2, 2, dtype=torch.long)},
                   {"past_key_values": SeqzooCache.for_model(model)}, {"output_hidden_states": True}]:
        assert not decode_loop._builds_on({**plain, **change}, kwargs, 2), change
    assert not decode_loop._builds_on(plain, {**kwargs, GENERATE_CACHE_KWARG: None}, 2)
    assert not decode_loop._builds_on(plain, {**kwargs, "position_ids": None}, 2)
    assert not decode_loop._builds_on(plain, {**kwargs, "position_ids": torch.arange(8).expand(3, 2, 8)}, 2)


@pytest.mark.parametrize("new_tokens", [1, 2])
def test_one_or_two_new_tokens_match_transformers_loop(new_tokens, monkeypatch):
    # (no step is built from another's inputs: the first after the prompt is prepared by the model's method)
    model = tiny_model(FAMILIES["lstm"])
    out = assert_same_generation(model, monkeypatch, fast=False, input_ids=PROMPT[:1], max_length=7 + new_tokens,
                                 do_sample=False, pad_token_id=0, eos_token_id=None)
    assert out.shape[1] == PROMPT.shape[1] + new_tokens


@pytest.mark.parametrize("family", ["transformer", "rnn"])  # (the tiny RNN's tokens change from step to step)
def test_embeddings_as_the_prompt_prepare_every_step_through_both_methods(family, monkeypatch):
    # generate() keeps the prompt's embeddings among the model's keywords: the later steps are not plain, and
    # seqzoo's loop prepares each through the model's prepare_inputs_for_generation, as transformers' does (with
    # every token so far: none is kept aside for later).
    appends = AppendSpy(monkeypatch)
    model = tiny_model(FAMILIES[family])
    embeds = model.get_input_embeddings()(PROMPT).detach()
    assert_same_generation(model, monkeypatch, fast=False, inputs_embeds=embeds, attention_mask=MASK, **GREEDY)
    assert appends.runs == []


@pytest.mark.parametrize("where", ["keyword", "generation config"])
def test_generating_without_a_cache_runs_transformers_loop(where, monkeypatch):
    # (each step then feeds the whole sequence: seqzoo's loop, which feeds one token, would decode from no history)
    model = tiny_model(FAMILIES["lstm"])
    expected = model.generate(input_ids=PROMPT, attention_mask=MASK, **GREEDY)
    spy = Spy(monkeypatch)
    if where == "keyword":
        out = model.generate(input_ids=PROMPT, attention_mask=MASK, use_cache=False, **GREEDY)
    else:
        model.generation_config.use_cache = False
        out = model.generate(input_ids=PROMPT, attention_mask=MASK, **GREEDY)
    assert spy.runs == 0 and torch.equal(out, expected)


def test_what_processors_streamers_and_hooks_change_in_place_is_what_they_change_in_transformers_loop(monkeypatch):
    spy = Spy(monkeypatch)  # (seqzoo's loop ran where it should)
    model = tiny_model(FAMILIES["gru"])

    class BanInPlace(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores[:, 3] = -float("inf")
            return scores

    class ClampingStreamer:
        def put(self, value):
            value.clamp_(max=50)

        def end(self):
            pass

    seen = {}
    for loop in ("transformers", "seqzoo"):
        logits = []
        # (the outputs kept as they are, as a caller's hook may keep them)
        handle = model.register_forward_hook(lambda module, args, output: logits.append(output.logits))
        # (generate() hands the prompt itself to the streamer first, which clamps it too: a copy of it)
        out, calls = generate(model, loop, input_ids=PROMPT.clone(), attention_mask=MASK, streamer=ClampingStreamer(),
                              logits_processor=LogitsProcessorList([BanInPlace()]), **{**GREEDY, "max_new_tokens": 8})
        handle.remove()
        seen[loop] = (out, calls, logits)
    (theirs, their_calls, their_logits), (ours, our_calls, our_logits) = seen["transformers"], seen["seqzoo"]
    assert torch.equal(ours, theirs) and (ours[:, PROMPT.shape[1]:] > 50).any()  # (the streamer's clamp unseen)
    assert_same_calls(our_calls, their_calls)
    assert len(our_logits) == len(their_logits) and all(map(torch.equal, our_logits, their_logits))
    assert torch.isfinite(our_logits[0][:, -1, 3]).all()  # the processor changed its copy of the logits only
    assert spy.runs == 1


def test_a_call_set_on_the_instance_is_called_at_every_step_as_in_transformers_loop(monkeypatch):
    spy = Spy(monkeypatch)  # (seqzoo's loop ran where it should)
    model = tiny_model(FAMILIES["transformer"])
    counts = {}
    for loop in ("transformers", "seqzoo"):
        counts[loop] = 0
        cls_call = type(model).__call__

        def wrapper(*args, **kwargs):
            counts[loop] += 1
            return cls_call(model, *args, **kwargs)

        model.__call__ = wrapper
        try:
            generate(model, loop, input_ids=PROMPT, attention_mask=MASK, **GREEDY)
        finally:
            del model.__call__
    assert counts["seqzoo"] == counts["transformers"] == GREEDY["max_new_tokens"] - 1  # (the prefill: the class's)
    assert spy.runs == 1


def test_a_preparation_set_back_to_the_model_own_keeps_seqzoo_loop(monkeypatch):
    # peft's prompt tuning sets its own prepare_inputs_for_generation on the base model while it generates, then sets
    # the model's bound method back, which stays in the instance's __dict__.
    model = tiny_model(FAMILIES["transformer"])
    model.prepare_inputs_for_generation = model.prepare_inputs_for_generation
    model._update_model_kwargs_for_generation = model._update_model_kwargs_for_generation
    assert "prepare_inputs_for_generation" in model.__dict__
    assert_same_generation(model, monkeypatch, input_ids=PROMPT, attention_mask=MASK, **GREEDY)
    other = tiny_model(FAMILIES["transformer"])
    model.prepare_inputs_for_generation = other.prepare_inputs_for_generation  # (another model's: not its own)
    spy = Spy(monkeypatch)
    model.generate(input_ids=PROMPT, attention_mask=MASK, **GREEDY)
    assert spy.runs == 0


def test_a_hook_that_changes_the_position_ids_or_mask_in_place_changes_them_as_in_transformers_loop(monkeypatch):
    # transformers' loop keeps its own position ids (the forward gets a copy) and hands on the very mask it keeps; a
    # processor that changes the mask a hook kept comes after transformers has grown the next step's.
    model = tiny_model(FAMILIES["transformer"])
    kept = []

    def shift(module, args, kwargs):
        kwargs["position_ids"] += 100
        kept.append(kwargs.get("attention_mask"))

    class ZeroKeptMask(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if kept and kept[-1] is not None and kept[-1].shape[1] > PROMPT.shape[1]:  # (not the caller's own mask)
                kept[-1][1, 3] = 0
            return scores

    handle = model.register_forward_pre_hook(shift, with_kwargs=True)
    try:
        assert_same_generation(model, monkeypatch, input_ids=PROMPT, attention_mask=MASK,
                               logits_processor=LogitsProcessorList([ZeroKeptMask()]), **GREEDY)
    finally:
        handle.remove()


class CriteriaChanger(LogitsProcessor):
    """At its third call, runs ``change`` (on stopping criteria passed in by the caller)."""

    def __init__(self, change):
        self.change, self.calls = change, 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        if self.calls == 3:
            self.change()
        return scores


@pytest.mark.parametrize("change", ["max_length", "eos_token_id"])
def test_criteria_changed_while_generating_stop_as_in_transformers_loop(change, monkeypatch):
    spy = Spy(monkeypatch)  # (seqzoo's loop ran where it should)
    model = tiny_model(FAMILIES["gru"])
    tokens = model.generate(input_ids=PROMPT, attention_mask=MASK, **{**GREEDY, "max_new_tokens": 8})
    tokens = tokens[:, PROMPT.shape[1]:].tolist()
    late = next(token for token in tokens[0][4:] if token not in tokens[1])  # (row 0 makes it after the change)
    results = []
    for loop in ("transformers", "seqzoo"):
        length, eos = MaxLengthCriteria(PROMPT.shape[1] + 8), EosTokenCriteria(97)
        criteria = StoppingCriteriaList([length, eos])
        changes = {"max_length": lambda: setattr(length, "max_length", PROMPT.shape[1] + 5),
                   "eos_token_id": lambda: setattr(eos, "eos_token_id", torch.tensor([late]))}
        model.set_generate_loop(loop)
        results.append(model.generate(input_ids=PROMPT, attention_mask=MASK, stopping_criteria=criteria,
                                      logits_processor=LogitsProcessorList([CriteriaChanger(changes[change])]),
                                      **{**GREEDY, "max_new_tokens": 8, "pad_token_id": 1, "eos_token_id": 97}))
    model.set_generate_loop("seqzoo")
    assert torch.equal(results[0], results[1])
    if change == "eos_token_id":  # (row 0 ended at the new EOS token, then padded)
        assert (results[0][0, -1] == 1) and late in results[0][0].tolist()
    else:
        assert results[0].shape[1] == PROMPT.shape[1] + 5
    assert spy.runs == 2  # (the token's search, then the changed criteria's run)


def test_a_criterion_of_the_wrong_shape_beside_eos_fails_as_in_transformers_loop():
    model = tiny_model(FAMILIES["rnn"])

    class Column(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.zeros(input_ids.shape[0], 1, dtype=torch.bool)

    errors = []
    for loop in ("transformers", "seqzoo"):
        model.set_generate_loop(loop)
        with pytest.raises(RuntimeError) as error:
            model.generate(input_ids=PROMPT, attention_mask=MASK, stopping_criteria=StoppingCriteriaList([Column()]),
                           **{**GREEDY, "eos_token_id": 90})
        errors.append(str(error.value))
    model.set_generate_loop("seqzoo")
    assert errors[0] == errors[1]


def test_an_eos_criterion_that_cannot_move_fails_where_transformers_loop_fails():
    model = tiny_model(FAMILIES["transformer"])
    lengths = []
    for loop in ("transformers", "seqzoo"):
        model.set_generate_loop(loop)
        cache = SeqzooCache.for_model(model)
        criteria = StoppingCriteriaList([EosTokenCriteria(torch.tensor([5], device="meta"))])
        with pytest.raises(NotImplementedError):
            model.generate(input_ids=PROMPT, attention_mask=MASK, cache=cache, stopping_criteria=criteria, **GREEDY)
        lengths.append(cache.get_seq_length())
    model.set_generate_loop("seqzoo")
    assert lengths[0] == lengths[1] == PROMPT.shape[1]  # (after the prefill, at the first check)


def test_each_step_output_is_freed_before_the_next_forward_as_in_transformers_loop():
    # (transformers' loop drops each output, the prompt's logits included, before the next forward)
    model = tiny_model(FAMILIES["transformer"])
    alive = {}
    for loop in ("transformers", "seqzoo"):
        outputs, seen = [], []
        hooks = [model.register_forward_hook(lambda module, args, output: outputs.append(weakref.ref(output.logits))),
                 model.register_forward_pre_hook(lambda module, args: seen.append([o() is not None for o in outputs]))]
        try:
            generate(model, loop, input_ids=PROMPT, attention_mask=MASK, logits_to_keep=0, **GREEDY)
        finally:
            for hook in hooks:
                hook.remove()
        alive[loop] = seen
    assert alive["seqzoo"] == alive["transformers"] and not any(any(step) for step in alive["seqzoo"])


def test_criteria_whose_class_call_was_patched_are_called_as_in_transformers_loop(monkeypatch):
    model = tiny_model(FAMILIES["gru"])
    counts = {}
    real = EosTokenCriteria.__call__
    for loop in ("transformers", "seqzoo"):
        counts[loop] = 0

        def counted(self, *args, **kwargs):
            counts[loop] += 1
            return real(self, *args, **kwargs)

        monkeypatch.setattr(EosTokenCriteria, "__call__", counted)
        generate(model, loop, input_ids=PROMPT, attention_mask=MASK, **{**GREEDY, "eos_token_id": 97})
    assert counts["seqzoo"] == counts["transformers"] == GREEDY["max_new_tokens"]


def test_ids_on_another_device_than_the_model_run_transformers_loop(monkeypatch):
    # (transformers' method moves each step's inputs to the model's device; seqzoo's built steps would not)
    model = tiny_model(FAMILIES["transformer"])
    expected = model.generate(input_ids=PROMPT, **GREEDY)
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cpu", 0)))
    spy = Spy(monkeypatch)
    assert torch.equal(model.generate(input_ids=PROMPT, **GREEDY), expected)
    assert spy.runs == 0


@pytest.mark.parametrize("change", ["return_dict_in_generate", "transformers loop", "unchecked release",
                                    "instance preparation", "subclass update", "chunked prefill", "beam search"])
def test_what_seqzoo_loop_was_not_checked_for_runs_transformers_loop(change, monkeypatch):
    model = tiny_model(FAMILIES["transformer"])
    kwargs = {"input_ids": PROMPT, "attention_mask": MASK, **GREEDY}
    expected = model.generate(**kwargs)
    if change == "return_dict_in_generate":
        kwargs.update(return_dict_in_generate=True, output_scores=True)
    elif change == "transformers loop":
        model.set_generate_loop("transformers")
    elif change == "unchecked release":
        monkeypatch.setattr(decode_loop, "_CHECKED_LOOPS", frozenset())
    elif change == "instance preparation":  # as peft's prompt tuning sets it while it generates
        own = model.prepare_inputs_for_generation
        model.prepare_inputs_for_generation = functools.wraps(own)(lambda *args, **kw: own(*args, **kw))
    elif change == "subclass update":
        class Sub(type(model)):
            def _update_model_kwargs_for_generation(self, *args, **kw):
                return GenerationMixin._update_model_kwargs_for_generation(self, *args, **kw)
        model.__class__ = Sub
    elif change == "chunked prefill":
        kwargs["prefill_chunk_size"] = 3
    else:
        kwargs.update(num_beams=2)
    spy = Spy(monkeypatch)
    out = model.generate(**kwargs)
    assert spy.runs == 0
    sequences = out.sequences if change == "return_dict_in_generate" else out
    if change != "beam search":
        assert torch.equal(sequences, expected)


def test_the_installed_release_is_one_the_loop_was_checked_against():
    assert decode_loop.loop_checked(), (
        "this release's GenerationMixin._sample or _update_model_kwargs_for_generation is not one seqzoo's decoding "
        "loop was checked against, so generate() runs transformers' loop: compare the two (this file's tests, with "
        "the fingerprints added), then add them to _CHECKED_LOOPS in seqzoo/models/decode_loop.py")


def test_only_transformers_max_length_and_eos_criteria_are_read_instead_of_called():
    def read(*criteria):
        read = decode_loop._PlainStopping.read(StoppingCriteriaList(criteria), torch.device("cpu"))
        if read is None:
            return None, None
        return read.max_length, None if read.eos_tokens is None else read.eos_tokens.tolist()

    assert read(MaxLengthCriteria(20, max_position_embeddings=30)) == (20, None)
    assert read(MaxLengthCriteria(20)) == (20, None)
    assert read(MaxLengthCriteria(20, 10)) == (None, None)  # it would warn at lengths 11-19
    assert read(MaxLengthCriteria(20, 19)) == (20, None)  # (no unfinished length above 19)
    assert read(MaxLengthCriteria(20), EosTokenCriteria([3, 4])) == (20, [3, 4])
    assert read(EosTokenCriteria(3), MaxLengthCriteria(20)) == (20, [3])
    assert read(MaxLengthCriteria(20), EosTokenCriteria(3), EosTokenCriteria(4)) == (None, None)
    assert read(MaxLengthCriteria(20), StopAfterToken(3)) == (None, None)
    assert read(EosTokenCriteria(3)) == (None, None)

    class OwnMax(MaxLengthCriteria):
        pass

    assert read(OwnMax(20)) == (None, None)
    # What was read is checked at every token: the same criteria in the list, with the same settings.
    changes = [lambda criteria: criteria.append(StopAfterToken(3)),
               lambda criteria: criteria.__setitem__(1, EosTokenCriteria(3)),
               lambda criteria: setattr(criteria[0], "max_length", 19),
               lambda criteria: setattr(criteria[0], "max_position_embeddings", 9),
               lambda criteria: setattr(criteria[1], "eos_token_id", torch.tensor([3, 4]))]
    for change in [None, *changes]:
        criteria = StoppingCriteriaList([MaxLengthCriteria(20), EosTokenCriteria([3, 4])])
        plain = decode_loop._PlainStopping.read(criteria, torch.device("cpu"))
        if change is not None:
            change(criteria)
        assert plain.holds(criteria) == (change is None)


@pytest.mark.parametrize("family", ["transformer", "gru"])
def test_several_eos_tokens_and_a_pad_token_that_is_one_match_transformers_loop(family, monkeypatch):
    model = tiny_model(FAMILIES[family])
    eos = eos_of(model)
    for tokens in ([eos, 90], [90, eos]):
        out = assert_same_generation(model, monkeypatch, input_ids=PROMPT, attention_mask=MASK,
                                     **{**GREEDY, "eos_token_id": tokens, "pad_token_id": eos, "max_new_tokens": 8})
        assert eos in out[0, PROMPT.shape[1]:].tolist()


def test_an_eos_criterion_without_a_pad_token_fails_as_in_transformers_loop():
    # (a criterion of the caller's with an eos_token_id, and no pad token: transformers pads from the first token)
    model = tiny_model(FAMILIES["rnn"])
    model.generation_config.pad_token_id = None

    class OwnEos(StoppingCriteria):
        eos_token_id = 5

        def __call__(self, input_ids, scores, **kwargs):
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    errors = []
    for loop in ("transformers", "seqzoo"):
        model.set_generate_loop(loop)
        cache = SeqzooCache.for_model(model)
        with pytest.raises(TypeError) as error:
            model.generate(input_ids=PROMPT[:1], cache=cache, stopping_criteria=StoppingCriteriaList([OwnEos()]),
                           **{**GREEDY, "pad_token_id": None})
        errors.append((str(error.value), cache.get_seq_length()))
    model.set_generate_loop("seqzoo")
    assert errors[0] == errors[1] and errors[0][1] == PROMPT.shape[1]  # (at the first new token)


def test_each_step_continues_the_cache_the_last_step_returned(monkeypatch):
    spy = Spy(monkeypatch)  # (seqzoo's loop ran where it should)
    # A hook that returns another cache object (a copy): transformers' loop hands that one to the next step.
    model = tiny_model(FAMILIES["mamba2"])
    returned, handed = [], []

    def copy_cache(module, args, kwargs, output):
        setattr(output, OUTPUT_CACHE_FIELD, copy.deepcopy(getattr(output, OUTPUT_CACHE_FIELD)))
        returned.append(getattr(output, OUTPUT_CACHE_FIELD))
        return output

    def check(module, args, kwargs):
        handed.append(kwargs.get(GENERATE_CACHE_KWARG))

    hooks = [model.register_forward_hook(copy_cache, with_kwargs=True),
             model.register_forward_pre_hook(check, with_kwargs=True)]
    try:
        for loop in ("transformers", "seqzoo"):
            returned.clear()
            handed.clear()
            generate(model, loop, input_ids=PROMPT, attention_mask=MASK, **GREEDY)
            assert len(handed) == GREEDY["max_new_tokens"]
            assert all(cache is previous for cache, previous in zip(handed[1:], returned)), loop
    finally:
        for hook in hooks:
            hook.remove()
    assert spy.runs == 1


def test_an_unknown_loop_is_refused():
    model = tiny_model(FAMILIES["rnn"])
    with pytest.raises(ValueError, match=r"loop must be one of 'seqzoo', 'transformers'; got 'fast'"):
        model.set_generate_loop("fast")
    assert model.generate_loop == "seqzoo"
    assert model.set_generate_loop("transformers") is model and model.generate_loop == "transformers"


class AppendSpy:
    """Records the lengths of the runs of tokens seqzoo's loop kept aside and appended at once."""

    def __init__(self, monkeypatch):
        self.runs = []
        real = decode_loop._appended

        def appended(input_ids, tokens):
            self.runs.append(len(tokens))
            return real(input_ids, tokens)

        monkeypatch.setattr(decode_loop, "_appended", appended)


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_plain_greedy_steps_append_their_tokens_once_at_the_end(family, monkeypatch):
    # (the first new token is appended as it is made, where the input preparation reads the ids; from the second
    # on, nothing reads them until the end)
    appends = AppendSpy(monkeypatch)
    model = tiny_model(FAMILIES[family])
    assert_same_generation(model, monkeypatch, input_ids=PROMPT, attention_mask=MASK, **GREEDY)
    assert appends.runs == [GREEDY["max_new_tokens"] - 1]


@pytest.mark.parametrize("change", ["max_length", "eos_token_id"])
def test_criteria_changed_by_a_hook_while_tokens_wait_to_be_appended_see_every_token(change, monkeypatch):
    # No processor, no streamer: seqzoo's loop keeps tokens aside, and criteria a forward hook changes at the fourth
    # step are then called with all of them, as transformers' loop calls them (stale ids would stop late, or at the
    # wrong token).
    appends = AppendSpy(monkeypatch)
    model = tiny_model(FAMILIES["rnn"])
    tokens = model.generate(input_ids=PROMPT, attention_mask=MASK, **{**GREEDY, "max_new_tokens": 8})
    tokens = tokens[:, PROMPT.shape[1]:].tolist()
    late = next(token for token in tokens[0][4:] if token not in tokens[1])
    appends.runs.clear()  # (the reference call above kept its tokens aside too)
    results = []
    for loop in ("transformers", "seqzoo"):
        length, eos = MaxLengthCriteria(PROMPT.shape[1] + 8), EosTokenCriteria(97)
        steps = [0]

        def change_at_fourth(module, args, kwargs):
            steps[0] += 1
            if steps[0] == 4:
                if change == "max_length":
                    length.max_length = PROMPT.shape[1] + 6
                else:
                    eos.eos_token_id = torch.tensor([late])

        handle = model.register_forward_pre_hook(change_at_fourth, with_kwargs=True)
        try:
            model.set_generate_loop(loop)
            results.append(model.generate(input_ids=PROMPT, attention_mask=MASK,
                                          stopping_criteria=StoppingCriteriaList([length, eos]),
                                          **{**GREEDY, "max_new_tokens": 8, "pad_token_id": 1, "eos_token_id": 97}))
        finally:
            handle.remove()
            model.set_generate_loop("seqzoo")
    assert torch.equal(results[0], results[1])
    assert appends.runs and max(appends.runs) >= 2  # (tokens were kept aside before the change)
    if change == "max_length":
        assert results[0].shape[1] == PROMPT.shape[1] + 6
    else:
        assert late in results[0][0].tolist() and results[0][0, -1] == 1


def test_a_streamer_or_criterion_that_changes_the_new_token_in_place_changes_the_next_input_as_in_transformers_loop(
        monkeypatch):
    # No processor: the greedy token is the argmax of the logits as they are, and a streamer that clamps the tokens it
    # is given (the loop's own on the CPU) or a criterion that rewrites the last id must not reach, or must reach, the
    # next forward as in transformers' loop.
    model = tiny_model(FAMILIES["gru"])

    class ClampingStreamer:
        def put(self, value):
            value.clamp_(max=50)

        def end(self):
            pass

    class Rewriter(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            input_ids[:, -1] = 7
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    for options in ({"streamer": ClampingStreamer()}, {"stopping_criteria": StoppingCriteriaList([Rewriter()])}):
        out = assert_same_generation(model, monkeypatch, input_ids=PROMPT.clone(), attention_mask=MASK,
                                     **options, **{**GREEDY, "max_new_tokens": 8})
        if "streamer" in options:
            assert (out[:, PROMPT.shape[1]:] > 50).any()  # (the streamer's clamp unseen)
        else:
            assert (out[:, PROMPT.shape[1]:] == 7).all()


def test_float64_logits_that_tie_in_float32_pick_the_token_transformers_loop_picks(monkeypatch):
    # transformers' loop takes the argmax of a float32 copy of the logits: float64 logits 1e-12 apart tie there, and
    # the first wins. seqzoo's loop takes the argmax of the logits as they are only for dtypes float32 holds exactly.
    model = tiny_model(FAMILIES["lstm"]).double()

    def tie(module, args, output):
        logits = output.logits
        logits[..., :] = -1.0
        logits[..., 5] = 1.0
        logits[..., 6] = 1.0 + 1e-12

    out = same_generation_under_hook(model, monkeypatch, tie)
    assert (out[:, PROMPT.shape[1]:] == 5).all()


@pytest.mark.parametrize("dtype", [torch.bool, torch.int32, torch.float32])
def test_masks_of_other_dtypes_grow_as_in_transformers_loop(dtype, monkeypatch):
    model = tiny_model(FAMILIES["mamba"])
    assert_same_generation(model, monkeypatch, input_ids=PROMPT, attention_mask=MASK.to(dtype), **GREEDY)


def test_sampling_without_processors_matches_transformers_loop(monkeypatch):
    # (no top-k, top-p or temperature: an empty processor list, yet the tokens are drawn, not the argmax)
    model = tiny_model(FAMILIES["gru"])
    options = dict(input_ids=PROMPT, attention_mask=MASK, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                   max_new_tokens=8, pad_token_id=0, eos_token_id=None, seed=5)
    sampled = assert_same_generation(model, monkeypatch, **options)
    greedy = model.generate(input_ids=PROMPT, attention_mask=MASK, **{**GREEDY, "max_new_tokens": 8})
    assert not torch.equal(sampled, greedy)


def test_a_processor_list_call_patched_on_its_class_is_called_as_in_transformers_loop(monkeypatch):
    model = tiny_model(FAMILIES["rnn"])
    real = LogitsProcessorList.__call__
    seen = {}
    for loop in ("transformers", "seqzoo"):
        seen[loop] = []

        def banning(self, input_ids, scores, **kwargs):
            seen[loop].append(input_ids.clone())
            scores = real(self, input_ids, scores, **kwargs)
            scores[:, 11] = -float("inf")
            return scores

        monkeypatch.setattr(LogitsProcessorList, "__call__", banning)
        out, _ = generate(model, loop, input_ids=PROMPT, attention_mask=MASK, **{**GREEDY, "max_new_tokens": 8})
        seen[loop].append(out)
    assert len(seen["seqzoo"]) == len(seen["transformers"]) == 9
    assert all(map(torch.equal, seen["seqzoo"], seen["transformers"]))
    assert 11 not in seen["seqzoo"][-1][:, PROMPT.shape[1]:].tolist()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_decodes_greedily_as_transformers_loop(dtype, monkeypatch):
    # Greedy without processors takes the argmax of the model's own bf16/fp16 logits, transformers' loop that of a
    # float32 copy: the same token, ties (the first wins) included.
    appends = AppendSpy(monkeypatch)
    model = tiny_model(FAMILIES["gru"]).to(dtype)
    assert_same_generation(model, monkeypatch, input_ids=PROMPT, attention_mask=MASK, **{**GREEDY, "max_new_tokens": 8})
    assert appends.runs == [7]

    def tie(module, args, output):
        output.logits[..., 9] = output.logits[..., 4] = output.logits.max() + 1

    out = same_generation_under_hook(model, monkeypatch, tie)
    assert (out[:, PROMPT.shape[1]:] == 4).all()


class TokenIds(torch.Tensor):
    """Ids that stay of this class through what the decoding loops do with the ids (cat, slices, copies) only."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        if func not in (torch.cat, torch.Tensor.__getitem__, torch.Tensor.clone) and isinstance(out, TokenIds):
            out = out.as_subclass(torch.Tensor)
        return out


class PlainMask(torch.Tensor):
    """A mask of a tensor subclass (grown by torch.cat of it and new_ones, as in transformers' loop)."""


@pytest.mark.parametrize("what", ["ids", "mask"])
def test_ids_or_a_mask_of_a_tensor_subclass_reach_the_forward_as_in_transformers_loop(what, monkeypatch):
    appends = AppendSpy(monkeypatch)
    model = tiny_model(FAMILIES["gru"])
    ids, mask = (PROMPT.as_subclass(TokenIds), MASK) if what == "ids" else (PROMPT, MASK.as_subclass(PlainMask))
    out = assert_same_generation(model, monkeypatch, input_ids=ids, attention_mask=mask, **GREEDY)
    if what == "ids":
        assert type(out) is TokenIds and appends.runs == []  # (no token kept aside: the ids keep their type)


class LazyLogits(torch.Tensor):
    """Logits that can be sliced and copied (as transformers' loop does) and nothing else."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to:
            return args[0].as_subclass(torch.Tensor).to(*args[1:], **kwargs)
        if func is torch.Tensor.__getitem__ or getattr(func, "__name__", "") in ("__get__", "dtype", "device", "shape"):
            return super().__torch_function__(func, types, args, kwargs)
        raise NotImplementedError(f"LazyLogits does not implement {getattr(func, '__name__', func)}")


def test_logits_of_a_tensor_subclass_are_copied_as_in_transformers_loop(monkeypatch):
    model = tiny_model(FAMILIES["gru"])

    def lazy(module, args, output):
        output.logits = output.logits.as_subclass(LazyLogits)
        return output

    out = same_generation_under_hook(model, monkeypatch, lazy)
    assert torch.equal(out, model.generate(input_ids=PROMPT, attention_mask=MASK, **GREEDY))


@pytest.mark.parametrize("cls", [LogitsProcessorList, StoppingCriteriaList, MaxLengthCriteria])
def test_a_wrapped_call_on_transformers_classes_is_called_as_in_transformers_loop(cls, monkeypatch):
    # A wrapper set on the class (functools.wraps keeps the name; set before or after seqzoo was imported alike) is
    # called at every token as transformers' loop calls it.
    model = tiny_model(FAMILIES["rnn"])
    real = cls.__call__
    counts = {}
    for loop in ("transformers", "seqzoo"):
        counts[loop] = 0

        @functools.wraps(real)
        def counted(*args, **kwargs):
            counts[loop] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(cls, "__call__", counted)
        generate(model, loop, input_ids=PROMPT, attention_mask=MASK, **GREEDY)
        monkeypatch.undo()
    assert counts["seqzoo"] == counts["transformers"] >= GREEDY["max_new_tokens"]


def test_the_scores_a_processor_was_handed_live_as_long_as_in_transformers_loop():
    # transformers' loop keeps each token's float32 copy of the logits until the next token's replaces it.
    model = tiny_model(FAMILIES["gru"])

    class NewScores(LogitsProcessor):
        def __init__(self):
            self.handed = []

        def __call__(self, input_ids, scores):
            self.handed.append(weakref.ref(scores))
            return scores - 0.0  # (new scores: the copy handed in is referenced by the loop alone)

    alive = {}
    for loop in ("transformers", "seqzoo"):
        processor, seen = NewScores(), []
        handle = model.register_forward_pre_hook(lambda module, args: seen.append(
            [handed() is not None for handed in processor.handed]))
        try:
            generate(model, loop, input_ids=PROMPT, attention_mask=MASK,
                     logits_processor=LogitsProcessorList([processor]), **GREEDY)
        finally:
            handle.remove()
        alive[loop] = seen
    assert alive["seqzoo"] == alive["transformers"] and alive["seqzoo"][-1][-1]


@pytest.mark.parametrize("cls", [LogitsProcessorList, MaxLengthCriteria])
def test_a_call_set_on_transformers_classes_while_generating_is_called_from_then_on_with_every_token(cls, monkeypatch):
    # Set by a forward hook at the fourth step, after seqzoo's loop has kept tokens aside: from then on it is called,
    # with the ids of every token so far, as transformers' loop calls it.
    appends = AppendSpy(monkeypatch)
    model = tiny_model(FAMILIES["rnn"])
    real = cls.__call__
    seen, results = {}, {}
    for loop in ("transformers", "seqzoo"):
        seen[loop], steps = [], [0]

        def recording(self, input_ids, *args, **kwargs):
            seen[loop].append(input_ids.clone())
            return real(self, input_ids, *args, **kwargs)

        def set_at_fourth(module, args, kwargs):
            steps[0] += 1
            if steps[0] == 4:
                cls.__call__ = recording

        handle = model.register_forward_pre_hook(set_at_fourth, with_kwargs=True)
        try:
            results[loop], _ = generate(model, loop, input_ids=PROMPT, attention_mask=MASK,
                                        **{**GREEDY, "max_new_tokens": 8})
        finally:
            handle.remove()
            cls.__call__ = real
    assert torch.equal(results["seqzoo"], results["transformers"])
    assert len(seen["seqzoo"]) == len(seen["transformers"]) == 5
    assert all(map(torch.equal, seen["seqzoo"], seen["transformers"]))
    assert appends.runs and appends.runs[0] >= 2  # (tokens were kept aside before the call was set)


@pytest.mark.parametrize("name", ["prepare_inputs_for_generation", "_update_model_kwargs_for_generation"])
@pytest.mark.parametrize("wrapped", [False, True], ids=["patched", "wrapped"])
def test_a_transformers_method_patched_after_a_first_generate_runs_at_every_step(name, wrapped, monkeypatch):
    # Whether transformers' methods were the ones checked was read once a process: one patched after the first
    # generate() (a profiler, a library) ran at the prompt's step only, and a functools.wraps wrapper was never seen.
    model = tiny_model(FAMILIES["transformer"])
    kwargs = {"input_ids": PROMPT, "attention_mask": MASK, **GREEDY}
    expected = model.generate(**kwargs)  # (the first use)
    original, calls = getattr(GenerationMixin, name), []

    def patched(*args, **kw):
        calls.append(name)
        return original(*args, **kw)

    monkeypatch.setattr(GenerationMixin, name, functools.wraps(original)(patched) if wrapped else patched)
    assert torch.equal(model.generate(**kwargs), expected)
    assert len(calls) == GREEDY["max_new_tokens"]
    monkeypatch.undo()  # (put back: seqzoo's own steps again)
    calls.clear()
    assert torch.equal(model.generate(**kwargs), expected) and not calls
    assert decode_loop.loop_checked() and generation.preparation_checked()


def test_a_preparation_wrapped_before_seqzoo_is_imported_runs_at_every_step():
    # A functools.wraps wrapper set before seqzoo's import was the method found at import, and fingerprinted as what
    # it wraps (inspect reads through __wrapped__): seqzoo's steps skipped it after the prompt's.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import functools
        import torch
        from transformers import GenerationMixin
        calls = []
        original = GenerationMixin.prepare_inputs_for_generation
        @functools.wraps(original)
        def patched(self, *args, **kwargs):
            calls.append(1)
            return original(self, *args, **kwargs)
        GenerationMixin.prepare_inputs_for_generation = patched
        from seqzoo.models import generation
        from tests.conftest import tiny_model
        assert not generation.preparation_checked()
        tiny_model("transformer-tiny").generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, do_sample=False,
                                                pad_token_id=0)
        print(len(calls))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=str(Path(__file__).resolve().parents[2]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "5"
