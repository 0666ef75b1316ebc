"""Cases of ``seqzoo.models.decode_plan`` that a mutation check found unguarded: each step is compared with a twin
decoding the same tokens through the general path (planning switched off), never with the plan itself."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

from seqzoo.cache import STEP_PLAN_ATTRIBUTE
from seqzoo.models.compat import output_cache
from seqzoo.models.decode_plan import fixed_model
from tests.models import test_step_plan
from tests.models.test_fixed_model import TOKENS, steps
from tests.models.test_step_plan import (
    FAMILIES,
    assert_same,
    family_model,
    outcome,
    prefilled,
    without_plans,
)

plans_ran = test_step_plan.plans_ran  # (the fixture: an entry per step a plan was asked to run)


def general_twin(model, monkeypatch) -> tuple:
    """A copy of ``model`` and a prefilled cache of it whose steps all run the general path."""
    twin = copy.deepcopy(model)
    with monkeypatch.context() as patches:
        without_plans(patches)
        twin_cache = prefilled(twin)
    return twin, twin_cache


@pytest.mark.parametrize("family", FAMILIES)
def test_a_plan_dropped_for_a_replaced_head_is_made_again_and_runs_from_the_next_step(family, plans_ran,
                                                                                       monkeypatch):
    # A plan that only declined (kept on the cache) would leave every later step to the general path.
    model = family_model(family)
    twin, twin_cache = general_twin(model, monkeypatch)
    cache = prefilled(model)
    for each in (model, twin):
        head = copy.deepcopy(each.lm_head)
        head.weight = nn.Parameter(each.lm_head.weight.detach() * 2)
        each.lm_head = head
    plans_ran.clear()
    got = steps(model, cache, 3)
    assert plans_ran == [False, True, True]
    without_plans(monkeypatch)
    assert_same(got, steps(twin, twin_cache, 3))


def _layer_class(model) -> type:
    layer = model.model.layers[0]
    return type(layer._modules["attn"]) if "attn" in layer._modules else type(layer)


# (what is patched: a class, its method, and how many calls one step makes of it, where that is fixed)
PATCHED = {"a layer class": (_layer_class, "forward", None),
           "the backbone class": (lambda model: type(model.model), "decode_step", 1)}


@pytest.mark.parametrize("patched", PATCHED)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_class_patched_in_the_block_after_the_first_step_is_called(family, patched, monkeypatch):
    # (a class is shared by every model: another thread may patch it while the block is open)
    model = family_model(family)
    twin, twin_cache = general_twin(model, monkeypatch)
    cache = prefilled(model)
    class_of, name, per_step = PATCHED[patched]
    cls = class_of(model)
    real = getattr(cls, name)
    seen = []

    def counted(self, *args, **kwargs):
        seen.append(type(self).__name__)
        return real(self, *args, **kwargs)

    with fixed_model(model):
        got = steps(model, cache, 1)
        with monkeypatch.context() as patches:
            without_plans(patches)
            expected = steps(twin, twin_cache, 1)
            patches.undo()
            patches.setattr(cls, name, counted)
            got += steps(model, cache, 2)
            planned_seen = len(seen)
            without_plans(patches)
            expected += steps(twin, twin_cache, 2)
    assert planned_seen > 0 and planned_seen == len(seen) - planned_seen
    assert per_step is None or planned_seen == 2 * per_step
    assert_same(got, expected)


class RecordedIds(torch.Tensor):
    """Token ids of a tensor subclass that records the torch functions called on it (the general step's)."""

    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(getattr(func, "__name__", str(func)))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("family", FAMILIES)
def test_ids_of_a_tensor_subclass_go_through_the_general_step(family, monkeypatch):
    model = family_model(family)
    twin, twin_cache = general_twin(model, monkeypatch)
    cache = prefilled(model)
    assert STEP_PLAN_ATTRIBUTE in cache.__dict__
    monkeypatch.setattr(RecordedIds, "seen", [])
    got = steps(model, cache, 2, TOKENS.as_subclass(RecordedIds))
    planned_seen, RecordedIds.seen = RecordedIds.seen, []
    without_plans(monkeypatch)
    expected = steps(twin, twin_cache, 2, TOKENS.as_subclass(RecordedIds))
    assert planned_seen == RecordedIds.seen
    assert_same(got, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_embedding_weight_put_on_another_device_gives_the_general_steps_error(family, monkeypatch):
    # ("meta" stands in for an accelerator: the plan runs its operations on the CPU only)
    model = family_model(family)
    twin, twin_cache = general_twin(model, monkeypatch)
    cache = prefilled(model)

    def moved(each, each_cache) -> list:
        with torch.no_grad():
            weight = each.model.embed_tokens.weight
            each.model.embed_tokens.weight = nn.Parameter(weight.detach().to("meta"))
            return [outcome(each, each_cache, TOKENS)[0] for _ in range(2)]

    got = moved(model, cache)
    without_plans(monkeypatch)
    expected = moved(twin, twin_cache)
    assert got == expected and isinstance(expected[0], tuple)  # (both the same error)


def _state_with_a_name_more(cache) -> None:
    cache.layers[0].state = {**cache.layers[0].state, "extra": torch.zeros(2, 3)}


def _entry_of_another_class(cache) -> None:
    cache.layers[0] = types.SimpleNamespace(state=cache.layers[0].state)  # (a state, but no StateLayer)


@pytest.mark.parametrize("change", [_state_with_a_name_more, _entry_of_another_class], ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_layers_entry_the_plan_does_not_read_gives_the_general_steps_outcome(family, change, monkeypatch):
    # (the general step refuses both: a replacement missing a held name, and an entry it hands the layer as its state)
    model = family_model(family)
    twin, twin_cache = general_twin(model, monkeypatch)
    cache = prefilled(model)

    def changed(each, each_cache) -> list:
        change(each_cache)
        with torch.no_grad():
            return [outcome(each, each_cache, TOKENS)[0] for _ in range(2)]

    got = changed(model, cache)
    without_plans(monkeypatch)
    expected = changed(twin, twin_cache)
    assert got == expected and isinstance(expected[0], tuple)  # (both the same error)


def test_a_model_off_the_cpu_makes_no_plan(monkeypatch):
    # ("meta" stands in for an accelerator: a plan is made only for an embedding on the CPU, whose steps it runs)
    def decoded(each) -> tuple:
        each = each.to("meta")
        with torch.no_grad():
            cache = output_cache(each(torch.tensor([[5, 9, 2], [3, 3, 8]]), use_cache=True))
            logits = [each(TOKENS, cache=cache).logits for _ in range(2)]
        return STEP_PLAN_ATTRIBUTE in cache.__dict__, [(t.device, t.shape) for t in logits]

    model = family_model("classic")
    twin = copy.deepcopy(model)
    got = decoded(model)
    without_plans(monkeypatch)
    assert got == (False, decoded(twin)[1])
