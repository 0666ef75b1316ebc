"""Cases of seqzoo's decoding loop (``models/decode_loop.py``) that a mutation check of the module found untested:
what must run transformers' loop, and what must give transformers' loop's tokens.

The helpers are those of ``test_decode_loop.py``; each case but the last (a check of ``_builds_on`` alone) compares
seqzoo's loop with transformers' own.
"""

from __future__ import annotations

import types

import pytest
import torch
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

import seqzoo.models.decode_loop as decode_loop
from seqzoo.cache import SeqzooCache
from seqzoo.models.compat import GENERATE_CACHE_KWARG
from tests.conftest import FAMILIES, tiny_model
from tests.models.test_decode_loop import GREEDY, MASK, PROMPT, Spy, generate


def test_a_synced_gpus_call_runs_transformers_loop(monkeypatch):
    # transformers' loop asks the process group at every step whether all peers are done (here: there is none, so it
    # fails); seqzoo's loop never asks, and would let one peer stop while the others still run forwards.
    model = tiny_model(FAMILIES["transformer"])
    spy = Spy(monkeypatch)
    errors = []
    for loop in ("transformers", "seqzoo"):
        model.set_generate_loop(loop)
        with pytest.raises(ValueError) as error:
            model.generate(input_ids=PROMPT, attention_mask=MASK, synced_gpus=True, **GREEDY)
        errors.append(str(error.value))
    model.set_generate_loop("seqzoo")
    assert errors[0] == errors[1] and "process group" in errors[0]
    assert spy.runs == 0


def test_an_automatically_compiled_forward_runs_transformers_loop(monkeypatch):
    # Where transformers would compile the forward (a compilable cache on a GPU, or compile_config on every device),
    # each decode step goes through the compiled call: seqzoo's loop, which calls model.__call__, must step aside.
    model = tiny_model(FAMILIES["transformer"])
    compiled_calls = []

    def compiled_call(compile_config):
        def call(*args, **kwargs):
            compiled_calls.append(1)
            return model(*args, **kwargs)
        return call

    monkeypatch.setattr(model, "_valid_auto_compile_criteria", lambda model_kwargs, generation_config: True,
                        raising=False)
    monkeypatch.setattr(model, "get_compiled_call", compiled_call, raising=False)
    spy = Spy(monkeypatch)
    results = {}
    for loop in ("transformers", "seqzoo"):
        compiled_calls.clear()
        results[loop], _ = generate(model, loop, input_ids=PROMPT, attention_mask=MASK, **GREEDY)
        results[loop] = (results[loop], len(compiled_calls))
    assert spy.runs == 0
    assert torch.equal(results["seqzoo"][0], results["transformers"][0])
    assert results["seqzoo"][1] == results["transformers"][1] == GREEDY["max_new_tokens"] - 1


def test_another_function_bound_to_the_model_as_its_preparation_runs_at_every_step(monkeypatch):
    # Bound to the model itself (so __self__ is the model), but not seqzoo's method: transformers' loop calls it for
    # every token, and so must the loop that runs.
    model = tiny_model(FAMILIES["transformer"])
    own, calls = type(model).prepare_inputs_for_generation, []

    def counting(self, *args, **kwargs):
        calls.append(1)
        return own(self, *args, **kwargs)

    model.prepare_inputs_for_generation = types.MethodType(counting, model)
    expected = {}
    for loop in ("transformers", "seqzoo"):
        calls.clear()
        out, _ = generate(model, loop, input_ids=PROMPT, attention_mask=MASK, **GREEDY)
        expected[loop] = (out, len(calls))
    assert torch.equal(expected["seqzoo"][0], expected["transformers"][0])
    assert expected["seqzoo"][1] == expected["transformers"][1] == GREEDY["max_new_tokens"]


def assert_criteria_fail_alike(model):
    errors = []
    for loop in ("transformers", "seqzoo"):
        model.set_generate_loop(loop)
        try:
            with pytest.raises(AttributeError) as error:
                model.generate(input_ids=PROMPT, attention_mask=MASK, **GREEDY)
        finally:
            model.set_generate_loop("seqzoo")
        errors.append(str(error.value))
    assert errors[0] == errors[1] and "eos_token_id" in errors[0]


def test_a_criterion_call_replaced_by_another_function_of_transformers_module_is_called(monkeypatch):
    # Defined in the same file as MaxLengthCriteria's own call, but another class's: transformers' loop calls it (and
    # fails: a MaxLengthCriteria has no eos_token_id); reading the max length instead would not. (Nothing remembered
    # of earlier calls here: see the next test.)
    monkeypatch.setattr(decode_loop, "_OWN_CALLS", {})
    model = tiny_model(FAMILIES["gru"])
    monkeypatch.setattr(MaxLengthCriteria, "__call__", EosTokenCriteria.__call__)
    assert_criteria_fail_alike(model)


def test_a_criterion_call_replaced_after_a_first_generate_is_called(monkeypatch):
    # EosTokenCriteria's call, found its own class's at a first generate(), is not MaxLengthCriteria's own once set
    # there (the loop remembered its answers by the function alone, and read the criteria instead of calling them).
    monkeypatch.setattr(decode_loop, "_OWN_CALLS", {})
    model = tiny_model(FAMILIES["gru"])
    model.generate(input_ids=PROMPT, attention_mask=MASK, **{**GREEDY, "eos_token_id": 97})  # (both read as own)
    monkeypatch.setattr(MaxLengthCriteria, "__call__", EosTokenCriteria.__call__)
    assert_criteria_fail_alike(model)


def test_a_mask_of_more_than_two_dimensions_is_not_built_on():
    model = tiny_model(FAMILIES["transformer"])
    cache = SeqzooCache.for_model(model)
    for mask in (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 1, 8, dtype=torch.long)):
        kwargs = {GENERATE_CACHE_KWARG: cache, "attention_mask": mask}
        inputs = {"input_ids": torch.zeros(2, 1, dtype=torch.long), "attention_mask": mask,
                  GENERATE_CACHE_KWARG: cache, "use_cache": True}
        assert decode_loop._builds_on(inputs, kwargs, 2) == (mask.dim() == 2)
