"""A decode plan asks the kernel registry which backend runs its layers once, and reuses the answer while the
registry's stamp says nothing it reads has changed (``registry.select_stamped`` / ``selection_stamp``): a backend
forced or released, ``SEQZOO_KERNELS`` set, a backend registered between two steps is honoured at the next one, as
when every step asked. The classic models' plan embeds no token that the input table stands in for. Each step is
compared, bitwise, with a twin's decoding through the general path."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

from seqzoo.cache import STEP_PLAN_ATTRIBUTE
from seqzoo.kernels import registry, use_backend
from seqzoo.kernels.rnn_cells import fused
from seqzoo.kernels.wkv7 import chunked
from seqzoo.models.decode_plan import DecodePlan
from tests.models import test_step_plan
from tests.models.test_step_plan import (
    FAMILIES,
    assert_same,
    family_model,
    planned_model,
    prefilled,
    without_plans,
)

TOKENS = torch.tensor([[6], [1]])
plans_ran = test_step_plan.plans_ran  # (the fixture: an entry per step a plan was asked to run, of any family)


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    monkeypatch.delenv("SEQZOO_KERNELS", raising=False)


def op_of(model) -> str:
    return "wkv7" if model.config.model_type == "seqzoo_rwkv7" else model.config.mixer_type


@pytest.fixture
def selections(monkeypatch):
    """The ops a plan asked the registry about, one entry per call."""
    asked = []
    real = registry.select_stamped

    def spy(op, *args, **kwargs):
        asked.append(op)
        return real(op, *args, **kwargs)

    monkeypatch.setattr(registry, "select_stamped", spy)
    return asked


@pytest.fixture
def reference_calls(monkeypatch):
    """Calls of each op's reference backend, by op."""
    calls = []
    for op in ("gru", "wkv7"):
        backend = registry.get_op(op).backends["reference"]
        real = registry.get_kernel(op, "reference")
        monkeypatch.setattr(backend, "_loaded", lambda *a, _op=op, _real=real, **k: calls.append(_op) or _real(*a, **k))
    return calls


def twin_caches(family: str) -> tuple:
    """A model and its prefilled cache (its first step planned and run), and a twin and its cache, which decode
    through the general path once :func:`unplanned` is called."""
    model = family_model(family)
    twin = copy.deepcopy(model)
    return model, prefilled(model), twin, prefilled(twin)


def unplanned(cache, monkeypatch) -> None:
    """From now on no cache plans its steps, and ``cache`` has no plan: its steps run the general path."""
    without_plans(monkeypatch)
    cache.__dict__.pop(STEP_PLAN_ATTRIBUTE, None)


def step(model, cache) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS, cache=cache).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_a_plan_asks_the_registry_once_while_nothing_changes(family, selections, plans_ran, monkeypatch):
    model, cache, twin, twin_cache = twin_caches(family)
    op = op_of(model)
    assert plans_ran == [True, True] and selections == [op, op]  # (each cache's first planned step asked)
    got = [step(model, cache) for _ in range(4)]
    assert plans_ran == [True] * 6 and selections == [op, op]
    unplanned(twin_cache, monkeypatch)
    for logits in got:
        assert_same(logits, step(twin, twin_cache))


def _forced(op, monkeypatch):
    monkeypatch.setattr(registry, "_FORCED", {**registry._FORCED})  # (restored after the test)
    registry.set_backend(op, "reference")


def _environment(op, monkeypatch):
    monkeypatch.setenv("SEQZOO_KERNELS", f"{op}=reference")


def _registered(op, monkeypatch):
    # A backend of a higher priority than the plan's, registered after its choice: the reference, under a new name.
    registry.register_backend(op, "test_newer", registry.get_op(op).backends["reference"].load(), priority=99)
    monkeypatch.setattr(registry, "_FORCED", {**registry._FORCED})
    monkeypatch.callback = lambda: registry.unregister_backend(op, "test_newer")


CHANGES = {"a backend forced": _forced, "SEQZOO_KERNELS set": _environment, "a backend registered": _registered}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("change", CHANGES)
def test_a_setting_changed_between_steps_is_honoured_at_the_next(family, change, reference_calls, plans_ran,
                                                                 monkeypatch):
    model, cache, twin, twin_cache = twin_caches(family)
    op = op_of(model)
    step(model, cache)
    step(twin, twin_cache)
    try:
        CHANGES[change](op, monkeypatch)
        assert not reference_calls
        got = [step(model, cache) for _ in range(2)]
        assert reference_calls and plans_ran[-2:] == [False, False]  # (declined: the general path ran the reference)
        ran = len(reference_calls)
        unplanned(twin_cache, monkeypatch)
        for logits in got:
            assert_same(logits, step(twin, twin_cache))
        assert len(reference_calls) == 2 * ran
    finally:
        getattr(monkeypatch, "callback", lambda: None)()
        registry.set_backend(op, None) if registry._FORCED.get(op) else None


@pytest.mark.parametrize("family", FAMILIES)
def test_a_choice_the_registry_does_not_keep_is_asked_at_every_step(family, selections, reference_calls,
                                                                    plans_ran):
    # A backend whose supports() has no cache_key, of a lower priority: the plan's backend is still chosen, but the
    # registry keeps no choice of the op, so the plan asks at every step, and sees a backend forced then.
    model, cache, twin, twin_cache = twin_caches(family)
    op = op_of(model)
    registry.register_backend(op, "test_unkeyed", registry.get_op(op).backends["reference"].load(), priority=-5,
                              supports=lambda *a, **k: (True, ""))
    try:
        selections.clear()
        for _ in range(3):
            step(model, cache)
        assert selections == [op] * 3 and plans_ran[-3:] == [True] * 3 and not reference_calls
        with use_backend(op, "reference"):
            step(model, cache)
        assert reference_calls and plans_ran[-1] is False
    finally:
        registry.unregister_backend(op, "test_unkeyed")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_choice_that_reads_the_batch_is_asked_again_for_another_batch(family, reference_calls, plans_ran,
                                                                       monkeypatch):
    # A backend of a higher priority that runs only a batch of four, keyed on it: a cache grown from two rows to four
    # (as beam search grows it) gets it, as the general step would.
    model, cache, twin, twin_cache = twin_caches(family)
    op = op_of(model)
    registry.register_backend(op, "test_four_rows", registry.get_op(op).backends["reference"].load(), priority=99,
                              supports=lambda x, *a, **k: (x.shape[0] == 4, "four rows only"),
                              cache_key=lambda x, *a, **k: x.shape[0])
    try:
        four = torch.tensor([[6], [1], [3], [2]])
        before = step(model, cache)
        assert plans_ran[-1] is True and not reference_calls  # (two rows: the fused cells, planned)
        cache.batch_repeat_interleave(2)
        with torch.no_grad():
            planned = model(four, cache=cache).logits
        assert reference_calls and plans_ran[-1] is False
        unplanned(twin_cache, monkeypatch)
        assert_same(before, step(twin, twin_cache))
        twin_cache.batch_repeat_interleave(2)
        with torch.no_grad():
            assert_same(planned, twin(four, cache=twin_cache).logits)
    finally:
        registry.unregister_backend(op, "test_four_rows")


def test_a_choice_that_reads_a_weight_is_asked_again_when_it_changes_through_data(plans_ran, monkeypatch):
    # A backend of a higher priority that runs only float64 weights, keyed on layer 0's input weight's dtype: after
    # that weight and its bias become float64 through .data (the same tensors), the general step chooses it.
    model = planned_model("gru", "never")
    twin = copy.deepcopy(model)
    cache, twin_cache = prefilled(model), prefilled(twin)
    reference = registry.get_op("gru").backends["reference"].load()

    def in_the_inputs_dtype(x, h, *weights, **kwargs):
        return reference(x, h, *(w if w is None else w.to(x.dtype) for w in weights), **kwargs)

    registry.register_backend("gru", "test_float64", in_the_inputs_dtype, priority=99,
                              supports=lambda x, h, w_ih, *a, **k: (w_ih.dtype == torch.float64, "float64 only"),
                              cache_key=lambda x, h, w_ih, *a, **k: w_ih.dtype)

    def to_float64(m):
        for name in ("weight_ih", "bias_ih"):
            weight = getattr(m.model.layers[0], name)
            weight.data = weight.data.double()

    try:
        calls = []
        registry.get_op("gru").backends["test_float64"]._loaded = lambda *a, **k: calls.append(1) or \
            in_the_inputs_dtype(*a, **k)
        # A planned step first, for the plan to keep the registry's choice under the setting as it now is (the
        # registration above changed it): only the weight's dtype read anew tells it to ask again.
        assert_same(step(model, cache), step(twin, twin_cache))
        assert not calls and plans_ran[-1] is True
        to_float64(model)
        planned = [step(model, cache) for _ in range(2)]
        assert calls and plans_ran[-2:] == [False, False]
        unplanned(twin_cache, monkeypatch)
        to_float64(twin)
        for logits in planned:
            assert_same(logits, step(twin, twin_cache))
    finally:
        registry.unregister_backend("gru", "test_float64")


@pytest.mark.parametrize("table,embedded", [("always", 0), ("never", 3)])
def test_the_classic_plan_embeds_no_token_the_table_stands_in_for(table, embedded, plans_ran, monkeypatch):
    model = planned_model("gru", table)
    twin = copy.deepcopy(model)
    cache, twin_cache = prefilled(model), prefilled(twin)
    calls = []
    real = DecodePlan._embedded
    monkeypatch.setattr(DecodePlan, "_embedded", lambda self, ids: calls.append(1) or real(self, ids))
    got = [step(model, cache) for _ in range(3)]
    assert plans_ran[-3:] == [True] * 3 and len(calls) == embedded
    unplanned(twin_cache, monkeypatch)
    for logits in got:
        assert_same(logits, step(twin, twin_cache))


def test_the_plans_run_the_backends_they_reuse():
    # (what the tests above assume: a plan's layers are the fused cells' and the chunked wkv7's)
    assert registry.get_op("gru").backends["torch"].load() is fused.gru
    assert registry.get_op("wkv7").backends["chunked"].load() is chunked.wkv7


@pytest.mark.parametrize("family", FAMILIES)
def test_a_plan_does_not_keep_the_registry_state_it_chose_under_alive(family, selections, plans_ran, monkeypatch):
    # The registry replaces its selection state (every choice it caches) when a setting changes; a plan whose cache
    # has not stepped since refers to the old one weakly, and asks again at its next step.
    model, cache, twin, twin_cache = twin_caches(family)
    op = op_of(model)
    step(model, cache)
    old = weakref.ref(registry.selection_stamp())
    assert old() is not None
    registry.refresh()
    gc.collect()
    assert old() is None
    selections.clear()
    got = [step(model, cache) for _ in range(2)]
    assert selections == [op] and plans_ran[-2:] == [True, True]  # (asked once under the new state)
    step(twin, twin_cache)
    unplanned(twin_cache, monkeypatch)
    for logits in got:
        assert_same(logits, step(twin, twin_cache))
