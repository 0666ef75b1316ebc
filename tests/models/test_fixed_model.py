"""``model.fixed_while_decoding()`` (``seqzoo.models.decode_plan.fixed_model``): in the block a cache's plan checks the
model at its first step there and trusts it at its later ones. What the block changes is which checks run, never a
result: generate() gives the same tokens and scores in it as outside, a change made before the block is seen at its
first step, each call's own checks stay, and the checks come back when the block ends, in another block, for another
model and in another thread. A change inside the block after a cache's first step goes unseen, as documented: the
test of that is what shows the checks were skipped."""

from __future__ import annotations

import contextvars
import copy
import functools
import threading

import pytest
import torch
import torch.nn.functional as F

from seqzoo.cache import STEP_PLAN_ATTRIBUTE
from seqzoo.models import decode_plan
from seqzoo.models.decode_plan import DecodePlan, fixed_model
from tests.models.test_step_plan import (
    FAMILIES,
    assert_same,
    assert_same_generated,
    family_model,
    generate_case,
    planned_model,
    prefilled,
    without_plans,
)

TOKENS = torch.tensor([[6], [1]])


@pytest.fixture
def model_checks(monkeypatch):
    """How many times a plan checked the model's modules (``DecodePlan._model_unchanged``), of any family."""
    calls = []
    real = DecodePlan._model_unchanged

    def spy(self, lm, cache):
        calls.append(lm)
        return real(self, lm, cache)

    monkeypatch.setattr(DecodePlan, "_model_unchanged", spy)
    return calls


def twins(family: str) -> tuple:
    """A model, a copy of it, and a prefilled cache of each."""
    model = family_model(family)
    twin = copy.deepcopy(model)
    return model, twin, prefilled(model), prefilled(twin)


def steps(model, cache, count: int, tokens: torch.Tensor = TOKENS) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(tokens, cache=cache).logits for _ in range(count)]


def test_the_method_is_a_block_that_yields_the_model():
    model = family_model("classic")
    with model.fixed_while_decoding() as inside:
        assert inside is model


@pytest.mark.parametrize("family", [*FAMILIES, "rnn-tanh", "lstm"])
@pytest.mark.parametrize("beams", [1, 3])
def test_generate_in_the_block_gives_what_it_gives_outside(family, beams, model_checks, monkeypatch):
    model = planned_model(family) if family not in FAMILIES else family_model(family)
    prompt, kwargs = generate_case(model, beams)
    outside = model.generate(prompt, **kwargs)
    checked_outside = len(model_checks)
    with model.fixed_while_decoding():
        inside = model.generate(prompt, **kwargs)
    # (outside, every planned step checks the model; in the block, the first only)
    assert checked_outside >= 4 and len(model_checks) == checked_outside + 1
    assert_same_generated(inside, outside)
    without_plans(monkeypatch)
    assert_same_generated(inside, copy.deepcopy(model).generate(prompt, **kwargs))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_model_is_checked_at_each_caches_first_step_in_each_block(family, model_checks):
    model = family_model(family)
    cache, other = prefilled(model), prefilled(model)
    del model_checks[:]
    steps(model, cache, 3)
    assert len(model_checks) == 3
    with fixed_model(model):
        steps(model, cache, 3)
        assert len(model_checks) == 4
        steps(model, other, 2)  # (another cache's plan: its own first step)
        assert len(model_checks) == 5
        with fixed_model(model):  # (a block inside: checked again at its first step)
            steps(model, cache, 2)
            assert len(model_checks) == 6
        steps(model, cache, 2)  # (back in the outer block, whose token the plan no longer holds)
        assert len(model_checks) == 7
    steps(model, cache, 2)  # (after the block: every step)
    assert len(model_checks) == 9
    with fixed_model(model):  # (a new block: checked again)
        steps(model, cache, 2)
    assert len(model_checks) == 10


@pytest.mark.parametrize("family", FAMILIES)
def test_a_block_for_another_model_or_in_another_thread_changes_no_check(family, model_checks):
    model, other = family_model(family), family_model(family, seed=1)
    cache = prefilled(model)
    del model_checks[:]
    with fixed_model(other):
        steps(model, cache, 3)
    assert model_checks == [model] * 3
    with fixed_model(model):
        steps(model, cache, 1)
        # (a thread's own context, without the block: a free-threaded Python may start threads in a copy of this one)
        thread = threading.Thread(target=contextvars.Context().run, args=(steps, model, cache, 3))
        thread.start()
        thread.join()
    assert model_checks == [model] * 7


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("how", ["ended out of order", "context copied in it"])
def test_an_ended_block_is_trusted_nowhere(family, how):
    # Blocks that end out of order leave an ended one in the context, and a context copied in a block (a task's)
    # keeps it after the block: neither skips a check, so a hook registered after the block is called.
    model = family_model(family)
    cache = prefilled(model)

    def decoding():
        with model.fixed_while_decoding():
            yield steps(model, cache, 2)

    if how == "ended out of order":
        first, second = decoding(), decoding()
        next(first)
        next(second)
        list(first)  # (the first ends before the second: the second's exit puts back the first's block)
        list(second)
        assert decode_plan._FIXED.get() is not None
        run = steps
    else:
        with model.fixed_while_decoding():
            steps(model, cache, 1)
            copied = contextvars.copy_context()
        run = functools.partial(copied.run, steps)
    run(model, cache, 1)
    seen = []
    model.lm_head.register_forward_hook(lambda *args: seen.append("head"))
    run(model, cache, 2)
    assert seen == ["head"] * 2


def test_a_block_left_by_an_exception_has_ended():
    model = family_model("classic")
    with pytest.raises(RuntimeError), fixed_model(model):
        block = decode_plan._FIXED.get()
        assert block.model is model
        raise RuntimeError
    assert block.model is None and decode_plan._FIXED.get() is not block


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("change", ["F.embedding", "nn.Linear.forward"])
def test_what_every_model_shares_is_checked_at_each_step_in_the_block(family, change, monkeypatch):
    # (not the model's own: another thread, a profiler, may patch it while the block is open)
    model, twin, cache, twin_cache = twins(family)
    seen = []
    owner, name = (F, "embedding") if change == "F.embedding" else (torch.nn.Linear, "forward")
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        seen.append(change)
        return real(*args, **kwargs)

    with fixed_model(model):
        steps(model, cache, 1)
        steps(twin, twin_cache, 1)
        monkeypatch.setattr(owner, name, counted)
        got = steps(model, cache, 2)
        called = len(seen)
        expected = steps(twin, twin_cache, 2)
    assert called == len(seen) - called > 0
    assert_same(got, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_change_made_before_the_block_is_seen_at_its_first_step(family):
    model, twin, cache, twin_cache = twins(family)
    with fixed_model(model):
        steps(model, cache, 1)
    steps(twin, twin_cache, 1)
    seen = []
    for each in (model, twin):
        each.lm_head.register_forward_hook(lambda *args: seen.append("head"))
        each.lm_head.weight = torch.nn.Parameter(each.lm_head.weight * 2)
    with fixed_model(model):
        got = steps(model, cache, 2)
    assert seen == ["head"] * 2
    expected = steps(twin, twin_cache, 2)
    assert_same(got, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_weight_changed_in_place_in_the_block_is_read(family):
    model, twin, cache, twin_cache = twins(family)
    got, expected = [], []
    with fixed_model(model):
        for each, each_cache, out in ((model, cache, got), (twin, twin_cache, expected)):
            out += steps(each, each_cache, 1)
            with torch.no_grad():
                each.lm_head.weight.mul_(3)
                next(each.model.layers[0].parameters()).add_(0.5)
            out += steps(each, each_cache, 2)
    assert_same(got, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_calls_own_checks_stay_in_the_block(family, monkeypatch):
    model = family_model(family)
    cache = prefilled(model)
    ran = []
    real = DecodePlan.step
    monkeypatch.setattr(DecodePlan, "step", lambda self, *a, **k: (ran.append(real(self, *a, **k)), ran[-1])[1])
    seen = []
    with fixed_model(model):
        steps(model, cache, 2)
        handle = torch.nn.modules.module.register_module_forward_hook(lambda module, *args: seen.append(module))
        try:
            steps(model, cache, 1)
        finally:
            handle.remove()
        assert model.lm_head in seen  # (a global hook sees every module: the general step ran)
        with torch.enable_grad():
            model(TOKENS, cache=cache)
        with torch.no_grad(), pytest.raises(ValueError, match="outside the vocabulary"):  # (the plan's own error)
            model(torch.tensor([[6], [10_000]]), cache=cache)
    assert [out is not None for out in ran] == [True, True, False, False]
    assert STEP_PLAN_ATTRIBUTE in cache.__dict__  # (declined for the call, kept for the next)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_change_in_the_block_after_the_first_step_goes_unseen_until_it_ends(family):
    # What the block's promise leaves out, as its docstring says: the test that fails if the checks ran anyway.
    model = family_model(family)
    cache = prefilled(model)
    seen = []
    with fixed_model(model):
        steps(model, cache, 1)
        model.lm_head.register_forward_hook(lambda *args: seen.append("head"))
        steps(model, cache, 2)
        assert seen == []
    steps(model, cache, 1)
    assert seen == ["head"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cache_begun_in_the_block_plans_from_the_model_as_it_is_then(family):
    model = family_model(family)
    with fixed_model(model):
        steps(model, prefilled(model), 2)
        for parameter in model.model.layers[-1].parameters():
            parameter.data = torch.randn_like(parameter)  # (new tensors: a plan made before holds the old ones)
        twin = copy.deepcopy(model)
        got = steps(model, prefilled(model), 2)
    expected = steps(twin, prefilled(twin), 2)
    assert_same(got, expected)
