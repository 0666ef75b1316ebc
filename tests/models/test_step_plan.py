"""The classic causal LMs' planned decode step (``seqzoo.models.classic.step_plan``): a cache's later steps run the
operations its first general step chose, and change nothing. Every test runs the same calls twice, from copies of one
model: once as it is, once with planning switched off (the general path at every step), and compares what came out
(logits, states, errors, what hooks and backends saw). torch.nn's stepped RNN/LSTM/GRU, a reference we did not write,
is compared with the planned steps in test_classic_step.py (test_stacked_step_equals_torch_nn_stepped). The tests
that concern any family's plan run for RWKV-7's too (``FAMILIES``); its own calls and changes, which reuse these, are
test_rwkv7_step_plan.py."""

from __future__ import annotations

import contextlib
import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqzoo.cache import STEP_PLAN_ATTRIBUTE, SeqzooCache
from seqzoo.kernels import registry, use_backend
from seqzoo.kernels.rnn_cells import fused
from seqzoo.models.classic import modeling_classic
from seqzoo.models.classic.step_plan import StepPlan
from seqzoo.models.compat import output_cache
from seqzoo.models.decode_plan import DecodePlan
from seqzoo.models.rwkv7.modeling_rwkv7 import RWKV7Model
from seqzoo.models.rwkv7.step_plan import RWKV7StepPlan
from tests.conftest import tiny_model
from tests.models.test_classic_step import VARIANTS
from tests.models.test_rwkv7_step import random_model


def planned_model(variant: str = "gru", table: str = "always", **overrides) -> nn.Module:
    """A tiny classic LM whose steps read layer 0's input from the input table ("always"), or embed it ("never")."""
    preset, values = VARIANTS[variant]
    return tiny_model(preset, **{**values, **overrides}).set_input_table(table)


# The families whose caches plan their steps, for the tests below that concern any plan: a tiny model of each (every
# RWKV-7 parameter random: its init zeroes parts whose loss a comparison would not see) and its backbone's class.
FAMILIES = ("classic", "rwkv7")
BACKBONES = {"classic": modeling_classic.ClassicRecurrentModel, "rwkv7": RWKV7Model}


def family_model(family: str, seed: int = 0) -> nn.Module:
    if family == "classic":
        return planned_model("gru") if seed == 0 else tiny_model("gru-tiny", seed=seed).set_input_table("always")
    return random_model(seed=seed, num_hidden_layers=2)


@pytest.fixture
def plans_ran(monkeypatch):
    """How many steps a plan ran (an entry per planned step: True where it ran, False where it declined), of any
    family."""
    ran = []
    real = DecodePlan.step

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        ran.append(out is not None)
        return out

    monkeypatch.setattr(DecodePlan, "step", spy)
    return ran


def without_plans(monkeypatch):
    for plan in (StepPlan, RWKV7StepPlan):
        monkeypatch.setattr(plan, "build", classmethod(lambda cls, *args: None))


def snapshot(cache: SeqzooCache) -> list:
    return [{k: v.clone() for k, v in (entry.state or {}).items()} for entry in cache.layers] + [cache.seen_tokens]


def assert_same(a, b) -> None:
    """Exactly equal, tensors bitwise (the plan runs the same operations on the same tensors)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)  # (a loss over no label is NaN)
        assert a.requires_grad == b.requires_grad
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    else:
        assert a == b


def outcome(model, cache, tokens, **kwargs):
    """What one forward call gives: its logits (and hidden states, loss) or its error, and the cache's states."""
    torch.manual_seed(0)  # (dropout, where a change turns it on)
    try:
        out = model(tokens, cache=cache, **kwargs)
    except Exception as error:  # noqa: BLE001 -- the error is the outcome compared
        got = (type(error).__name__, str(error))
    else:
        if isinstance(out, tuple):
            got = ("tuple", *(o for o in out if isinstance(o, torch.Tensor)))
        else:
            got = {k: v for k, v in out.items() if isinstance(v, (torch.Tensor, tuple)) and k != "cache"}
    return got, snapshot(cache)


def prefilled(model, batch: int = 2, first_step: bool = True):
    """A cache after a prompt (which plans its steps) and, with ``first_step``, one step."""
    prompt = torch.tensor([[5, 9, 2, 7, 1], [3, 3, 8, 0, 4], [6, 1, 1, 2, 9]][:batch])
    with torch.no_grad():
        cache = output_cache(model(prompt, use_cache=True))
        if first_step:
            model(torch.tensor([[4], [2], [7]][:batch]), cache=cache)
    return cache


# What happens between a cache's planned steps, for the next step to see: each takes the model, its cache and a
# list that hooks append to, and returns the next call's tokens, its keywords and the context it runs in.
def _hook(where):
    def change(model, cache, seen):
        module = where(model)
        module.register_forward_hook(lambda *args: seen.append(type(module).__name__))
        return None, {}, None
    return change


def _pre_hook_on_embedding(model, cache, seen):
    model.model.embed_tokens.register_forward_pre_hook(lambda *args: seen.append("embedding"))
    return None, {}, None


class _GlobalHook:
    def __init__(self, seen):
        self.seen = seen

    def __enter__(self):
        self.handle = torch.nn.modules.module.register_module_forward_hook(
            lambda module, *args: self.seen.append(type(module).__name__))

    def __exit__(self, *exc):
        self.handle.remove()


def _global_hook(model, cache, seen):
    return None, {}, _GlobalHook(seen)


def _forward_on_the_instance(model, cache, seen):
    layer = model.model.layers[1]
    real = layer.forward
    layer.forward = lambda *args, **kwargs: seen.append("layer forward") or real(*args, **kwargs)
    return None, {}, None


class _Counted:
    """A forced reference backend of the model's cell, counting its calls."""

    def __init__(self, model, seen):
        self.op, self.seen = model.config.mixer_type, seen

    def __enter__(self):
        self.backend = registry.get_op(self.op).backends["reference"]
        reference = registry.get_kernel(self.op, "reference")
        self.real = self.backend.__dict__.get("_loaded")
        self.backend._loaded = lambda *args, **kwargs: self.seen.append("reference") or reference(*args, **kwargs)
        self.forced = use_backend(self.op, "reference")
        self.forced.__enter__()

    def __exit__(self, *exc):
        self.forced.__exit__(*exc)
        self.backend._loaded = self.real


def _set(attribute_path, value):
    def change(model, cache, seen):
        *path, name = attribute_path.split(".")
        target = model
        for part in path:
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        setattr(target, name, value(target) if callable(value) else value)
        return None, {}, None
    return change


def _scaled(name, factor):
    return lambda module: nn.Parameter(getattr(module, name).detach() * factor)


def _in_place(change):
    def run(model, cache, seen):
        with torch.no_grad():
            change(model)
        return None, {}, None
    return run


def _call(tokens=None, context=None, **kwargs):
    return lambda model, cache, seen: (tokens(model, cache) if callable(tokens) else tokens, kwargs,
                                       context() if context is not None else None)


def _new_head(model, cache, seen):
    torch.manual_seed(5)
    model.lm_head = nn.Linear(model.lm_head.in_features, model.lm_head.out_features)
    return None, {}, None


def _replace_layer(model, cache, seen):
    layer = copy.deepcopy(model.model.layers[1])
    with torch.no_grad():
        layer.weight_hh.mul_(0.5)
    model.model.layers[1] = layer
    return None, {}, None


def _replace_backbone(model, cache, seen):
    backbone = copy.deepcopy(model.model)
    with torch.no_grad():
        backbone.layers[1].weight_hh.mul_(0.5)
    model.model = backbone
    return None, {}, None


def _replace_embedding(model, cache, seen):
    old = model.model.embed_tokens
    torch.manual_seed(7)
    model.model.embed_tokens = nn.Embedding(old.num_embeddings, old.embedding_dim)
    return None, {}, None


def _subclass_layer(model, cache, seen):
    layer = model.model.layers[1]

    class Recorded(type(layer)):
        def forward(self, *args, **kwargs):
            seen.append("subclass forward")
            return super().forward(*args, **kwargs)

    layer.__class__ = Recorded
    return None, {}, None


def _subclass_every_layer(model, cache, seen):
    # (one class for them all: the plan compares each layer with the class it was built for, not with layer 0's)
    class Recorded(type(model.model.layers[0])):
        def forward(self, *args, **kwargs):
            seen.append("subclass forward")
            return super().forward(*args, **kwargs)

    for layer in model.model.layers:
        layer.__class__ = Recorded
    return None, {}, None


def _weight_made_a_buffer(model, cache, seen):
    layer = model.model.layers[1]
    weight = layer._parameters.pop("weight_hh").detach() * 0.5
    layer.register_buffer("weight_hh", weight)
    return None, {}, None


def _wrap_on_backbone(name):
    def change(model, cache, seen):
        real = getattr(model.model, name)
        setattr(model.model, name, lambda *a, **k: seen.append(name) or real(*a, **k))
        return None, {}, None
    return change


def _class_method_patched(name):
    def change(model, cache, seen):
        cls = modeling_classic.ClassicRecurrentModel
        real = getattr(cls, name)
        seen.patches.setattr(cls, name, lambda self, *a, **k: seen.append(name) or real(self, *a, **k))
        return None, {}, None
    return change


class _Recording(torch.overrides.TorchFunctionMode):
    """A torch function mode (a profiler's, ``with torch.device(...)``) that records every function it sees."""

    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


class _InputReadingBackend:
    """A backend of the model's cell forced by name, whose check takes only a (B, 1, I) input: the plan must ask the
    registry about the call the general step makes."""

    def __init__(self, model, seen):
        self.op, self.seen = model.config.mixer_type, seen

    def __enter__(self):
        fused_cell = getattr(fused, self.op)
        registry.register_backend(self.op, "test_reads_input", lambda *a, **k: self.seen.append("plugin")
                                  or fused_cell(*a, **k), priority=-5,
                                  supports=lambda x, *a, **k: (x.dim() == 3 and x.shape[1] == 1, "(B, 1, I) only"))
        self.forced = use_backend(self.op, "test_reads_input")
        self.forced.__enter__()

    def __exit__(self, *exc):
        self.forced.__exit__(*exc)
        registry.unregister_backend(self.op, "test_reads_input")


class _FunctionalLookup(torch.Tensor):
    """A weight subclass (a quantised embedding's) whose own lookup is what F.embedding dispatches to."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is F.embedding:
            with torch._C.DisableTorchFunctionSubclass():
                return F.embedding(*args, **(kwargs or {})) * 2.0
        return super().__torch_function__(func, types, args, kwargs)


def _subclass_embedding_weight(model, cache, seen):
    embedding = model.model.embed_tokens
    embedding.weight = nn.Parameter(embedding.weight.detach().as_subclass(_FunctionalLookup), requires_grad=False)
    return None, {}, None


def _cut_vocabulary(model):
    # Fewer rows than twice the embedding's width: the input table now applies under "auto".
    weight = model.model.embed_tokens.weight
    weight.data = weight.data[: weight.shape[1]].clone()


def _state_of_another_dtype(model, cache, seen):
    state = cache.layers[1].state
    cache.layers[1].state = {k: v.double() for k, v in state.items()}
    return None, {}, None


def _empty_state(model, cache, seen):
    cache.layers[1].state = None
    return None, {}, None


def _class_forward_patched(cls):
    def change(model, cache, seen):
        real = cls.forward
        # (monkeypatch undoes it: the test's own fixture, passed through seen's owner)
        seen.patches.setattr(cls, "forward", lambda self, *a, **k: seen.append(cls.__name__) or real(self, *a, **k))
        return None, {}, None
    return change


def _method_patched(owner, name):
    """A change that puts a counting ``name`` on ``owner(model)``'s class (a layer's, the backbone's, torch's)."""
    def change(model, cache, seen):
        cls = owner(model)
        real = getattr(cls, name)
        seen.patches.setattr(cls, name, lambda self, *a, **k: seen.append(f"{cls.__name__}.{name}") or real(self, *a,
                                                                                                             **k))
        return None, {}, None
    return change


def _mask_of_ones(model, cache, seen):
    # (the cached positions and the new one, as generate() passes it; the same mask for both steps)
    return None, {"attention_mask": torch.ones(2, cache.get_seq_length() + 1, dtype=torch.long)}, None


def _cache_method_set(name):
    """A cache method the general step calls, set on the cache itself: logged, then run."""
    def change(model, cache, seen):
        real = getattr(cache, name)
        setattr(cache, name, lambda *a, **k: seen.append(name) or real(*a, **k))
        return None, {}, None
    return change


def _cache_method_patched(name):
    def change(model, cache, seen):
        real = getattr(SeqzooCache, name)
        seen.patches.setattr(SeqzooCache, name, lambda self, *a, **k: seen.append(name) or real(self, *a, **k))
        return None, {}, None
    return change


class _LoggedAdvance(SeqzooCache):
    def advance(self, num_positions):
        self.__dict__.setdefault("advanced", []).append(num_positions)
        super().advance(num_positions)


def _cache_subclassed(model, cache, seen):
    cache.__class__ = _LoggedAdvance
    return None, {}, None


class _RecordingDispatch(torch.utils._python_dispatch.TorchDispatchMode):
    """A dispatch mode (a FLOP counter's, say) that records every aten operation it sees."""

    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def _integer_weight_hh(model):
    # The op's own check refuses an integer weight (a ValueError naming it): the registry must be asked again.
    weight = model.model.layers[0].weight_hh
    weight.requires_grad_(False)
    weight.data = weight.data.long()


def _flattened_embedding(model):
    # A weight of one dimension: the embedding's own error ("'weight' must be 2-D") comes first, as in the general step.
    weight = model.model.embed_tokens.weight
    weight.data = weight.data.reshape(-1)


def _flattened_and_a_row_more(model, cache, seen):
    _flattened_embedding(model)
    return torch.tensor([[1], [2], [3]]), {}, None


def _cut_and_a_row_more(model, cache, seen):
    # The general step embeds first: its error is the embedding's, not the cache's check of the rows.
    _cut_vocabulary(model)
    return torch.tensor([[1], [2], [model.config.vocab_size - 1]]), {}, None


CHANGES = {
    "nothing": _call(),
    "a mask of ones": _mask_of_ones,
    "int32 ids": _call(tokens=torch.tensor([[6], [1]], dtype=torch.int32)),
    "return_dict=False": _call(return_dict=False),
    "logits_to_keep=1": _call(logits_to_keep=1),
    # What the plan must step aside for.
    "a hook on a layer": _hook(lambda m: m.model.layers[1]),
    "a hook on the head": _hook(lambda m: m.lm_head),
    "a hook on the backbone": _hook(lambda m: m.model),
    "a pre-hook on the embedding": _pre_hook_on_embedding,
    "a global module hook": _global_hook,
    "a forward set on a layer": _forward_on_the_instance,
    "the backbone class's forward patched": _class_forward_patched(modeling_classic.ClassicRecurrentModel),
    "nn.Linear's forward patched": _class_forward_patched(nn.Linear),
    "nn.Embedding's forward patched": _class_forward_patched(nn.Embedding),
    "the layers' class's forward patched": _method_patched(lambda m: type(m.model.layers[0]), "forward"),
    "the layers' class's __call__ patched": _method_patched(lambda m: type(m.model.layers[0]), "__call__"),
    "the backbone class's __call__ patched": _method_patched(lambda m: type(m.model), "__call__"),
    "nn.Linear's __call__ patched": _method_patched(lambda m: nn.Linear, "__call__"),
    "nn.Module's _call_impl patched": _method_patched(lambda m: nn.Module, "_call_impl"),
    "a forced reference backend": lambda model, cache, seen: (None, {}, _Counted(model, seen)),
    "autocast": _call(context=lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
    "gradients recorded": _call(context=torch.enable_grad),
    "training": lambda model, cache, seen: (model.train(), (None, {}, None))[1],
    "the backbone alone in training": lambda model, cache, seen: (model.model.train(), (None, {}, None))[1],
    "a layer's weight_hh replaced": _set("model.layers.1.weight_hh", _scaled("weight_hh", 0.5)),
    "layer 0's bias_hh removed": _set("model.layers.0.bias_hh", None),
    "layer 0's weight_ih changed in place": _in_place(lambda m: m.model.layers[0].weight_ih.mul_(1.5)),
    "layer 1's weight_hh changed through .data": _in_place(lambda m: m.model.layers[1].weight_hh.data.mul_(1.5)),
    "the embedding changed in place": _in_place(lambda m: m.model.embed_tokens.weight.add_(0.1)),
    "the head replaced": _new_head,
    "a layer replaced": _replace_layer,
    "the embedding resized": lambda model, cache, seen: (model.resize_token_embeddings(40), (None, {}, None))[1],
    "the embedding's max_norm set": _set("model.embed_tokens.max_norm", 0.5),
    "the model made double": lambda model, cache, seen: (model.double(), (None, {}, None))[1],
    "a state of another dtype": _state_of_another_dtype,
    "an empty state": _empty_state,
    "hidden states asked for": _call(output_hidden_states=True),
    "hidden states asked for by the config": _set("config.output_hidden_states", True),
    "return_dict=False by the config": _set("config.return_dict", False),
    "labels": _call(labels=torch.tensor([[1], [2]])),
    "position_ids": _call(position_ids=torch.tensor([[6], [6]])),
    "a padded token": _call(attention_mask=torch.tensor([[1] * 7, [1] * 6 + [0]])),
    "a mask of another length": _call(attention_mask=torch.ones(2, 3, dtype=torch.long)),
    "a mask holding a 2": _call(attention_mask=torch.tensor([[1] * 7, [1] * 5 + [2, 1]])),
    "use_cache=False": _call(use_cache=False),
    "a token outside the vocabulary": _call(tokens=lambda m, c: torch.tensor([[3], [m.config.vocab_size]])),
    "a negative token": _call(tokens=torch.tensor([[-1], [3]])),
    "float ids": _call(tokens=torch.tensor([[1.0], [3.0]])),
    "int16 ids": _call(tokens=torch.tensor([[1], [3]], dtype=torch.int16)),
    "two tokens": _call(tokens=torch.tensor([[1, 2], [3, 4]])),
    "one row more": _call(tokens=torch.tensor([[1], [2], [3]])),
    "an empty batch": _call(tokens=torch.zeros(0, 1, dtype=torch.long)),
    "an unknown keyword": _call(temprature=0.5),
    "the cache under an older name too": lambda model, cache, seen: (None, {"past_key_values": cache}, None),
    "logits_to_keep as a tensor": _call(logits_to_keep=torch.tensor([0])),
    "logits_to_keep as a 0-d tensor": _call(logits_to_keep=torch.tensor(0)),
    "logits_to_keep past the end": _call(logits_to_keep=torch.tensor([1])),
    "logits_to_keep=2": _call(logits_to_keep=2),
    "logits_to_keep=-1": _call(logits_to_keep=-1),
    "ids of one dimension": _call(tokens=torch.tensor([6, 1])),
    "ids of three dimensions": _call(tokens=torch.tensor([[[6]], [[1]]])),
    "inputs_embeds too": _call(inputs_embeds=torch.zeros(2, 1, 16)),
    "position_ids of another shape": _call(position_ids=torch.tensor([[6, 7], [6, 7]])),
    "the backbone replaced": _replace_backbone,
    "the embedding module replaced": _replace_embedding,
    "a layer's class changed": _subclass_layer,
    "every layer's class changed": _subclass_every_layer,
    "the head in training": lambda model, cache, seen: (model.lm_head.train(), (None, {}, None))[1],
    "a layer's weight_hh made a buffer": _weight_made_a_buffer,
    "the input table switched off": lambda model, cache, seen: (model.set_input_table("never"), (None, {}, None))[1],
    "the input table switched on": lambda model, cache, seen: (model.set_input_table("always"), (None, {}, None))[1],
    "the embedding made float64 through .data": _in_place(lambda m: setattr(m.model.embed_tokens.weight, "data",
                                                                            m.model.embed_tokens.weight.double())),
    "the input table left to its default": lambda model, cache, seen: (model.set_input_table("auto"),
                                                                      (None, {}, None))[1],
    "decode_step wrapped on the backbone": _wrap_on_backbone("decode_step"),
    "decode_step patched on the backbone's class": _class_method_patched("decode_step"),
    "takes_step patched on the backbone's class": _class_method_patched("takes_step"),
    "a torch function mode": lambda model, cache, seen: (None, {}, _Recording(seen)),
    "a forced backend whose check reads the input": lambda model, cache, seen: (None, {}, _InputReadingBackend(model,
                                                                                                            seen)),
    "the embedding's weight of a subclass with its own lookup": _subclass_embedding_weight,
    "the vocabulary cut through .data": _in_place(_cut_vocabulary),
    "the causal LM alone in training": lambda model, cache, seen: (model.train(), model.model.eval(),
                                                                  (None, {}, None))[2],
    # Found by review (each ran planned, with another outcome than the general step's).
    "the config made bidirectional": _set("config.bidirectional", True),
    "update_layer set on the cache": _cache_method_set("update_layer"),
    "advance patched on the cache's class": _cache_method_patched("advance"),
    "get_seq_length patched on the cache's class": _cache_method_patched("get_seq_length"),
    "the cache's class made a subclass": _cache_subclassed,
    "a dispatch mode, one position kept": lambda model, cache, seen: (None, {"logits_to_keep": 1},
                                                                      _RecordingDispatch(seen)),
    "the vocabulary cut, a row more and a token past the cut": _cut_and_a_row_more,
    # Found by review (each ran planned, with another error than the general step's, once the plan kept the registry's
    # choice between steps).
    "layer 0's weight_hh made integer through .data": _in_place(_integer_weight_hh),
    "the embedding flattened through .data": _in_place(_flattened_embedding),
    "the embedding flattened through .data, a row more": _flattened_and_a_row_more,
}
RNN_ONLY = {"a layer's nonlinearity changed": _set("model.layers.1.nonlinearity", "relu")}


class Seen(list):
    patches: pytest.MonkeyPatch


def run_with_change(model, name, change, patches, after) -> tuple:
    """Prefill, one step unless ``after`` is "prefill", ``change``, then two steps; what each step gave."""
    cache = prefilled(model, first_step=after == "a step")
    planned = STEP_PLAN_ATTRIBUTE in cache.__dict__
    seen = Seen()
    seen.patches = patches
    tokens, kwargs, context = change(model, cache, seen)
    tokens = torch.tensor([[6], [1]]) if tokens is None else tokens
    results = []
    with contextlib.ExitStack() as stack:
        # Every step without gradients (as generate() runs them), except where the change records them.
        stack.enter_context(context if isinstance(context, torch.enable_grad) else torch.no_grad())
        if context is not None:
            stack.enter_context(context)
        for _ in range(2):
            results.append(outcome(model, cache, tokens, **kwargs))
    return planned, results, list(seen)


@pytest.mark.parametrize("after", ["prefill", "a step"])
@pytest.mark.parametrize("table", ["always", "never", "auto"])
@pytest.mark.parametrize("variant", ["rnn-tanh", "lstm", "gru"])
@pytest.mark.parametrize("name", sorted(CHANGES) + sorted(RNN_ONLY))
def test_a_planned_step_gives_what_the_general_step_gives(name, variant, table, after, plans_ran, monkeypatch):
    if name in RNN_ONLY and not variant.startswith("rnn"):
        pytest.skip("an RNN layer's own attribute")
    change = CHANGES.get(name) or RNN_ONLY[name]
    assert_planned_as_general(planned_model(variant, table, dropout=0.3), name, change, after, name in RUNS_PLANNED,
                              plans_ran, monkeypatch)


# The calls the plan runs itself (it must, or it speeds nothing).
RUNS_PLANNED = ("nothing", "a mask of ones", "int32 ids", "return_dict=False", "logits_to_keep=1",
                "the cache under an older name too")


def assert_planned_as_general(model, name, change, after, runs, plans_ran, monkeypatch) -> None:
    """``change`` made after the prompt (``after``: "prefill") or a step, then two steps, on ``model`` with plans and
    on a copy without: the same logits, states, errors and calls seen; with ``runs``, every step planned."""
    twin = copy.deepcopy(model)
    with monkeypatch.context() as patches:
        planned, got, seen = run_with_change(model, name, change, patches, after)
    assert planned  # (else this compares the general path with itself)
    without_plans(monkeypatch)
    with monkeypatch.context() as patches:
        unplanned, expected, expected_seen = run_with_change(twin, name, change, patches, after)
    assert not unplanned
    assert_same(got, expected)
    assert seen == expected_seen
    if runs:
        assert plans_ran == [True] * (3 if after == "a step" else 2)


@pytest.mark.parametrize("table", ["always", "never", "auto"])  # (auto: the tiny vocabulary is too wide for it)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("batch", [1, 3])
def test_every_later_step_of_a_decoding_loop_is_planned_and_exact(variant, batch, table, plans_ran, monkeypatch):
    assert_a_decoding_loop_is_planned_and_exact(planned_model(variant, table), batch, plans_ran, monkeypatch)


def assert_a_decoding_loop_is_planned_and_exact(model, batch, plans_ran, monkeypatch) -> None:
    """Six steps after a prompt, each with the mask grown by one (as generate() passes it): every one planned, and
    bitwise what the general step gives for a copy of ``model``."""
    twin = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    steps = torch.randint(0, model.config.vocab_size, (batch, 6), generator=gen)

    def decode(m):
        cache = prefilled(m, batch, first_step=False)  # (the prompt plans every step)
        mask = torch.ones(batch, 5, dtype=torch.long)
        logits = []
        with torch.no_grad():
            for t in range(steps.shape[1]):
                mask = torch.cat([mask, mask[:, :1]], dim=1)
                logits.append(m(steps[:, t : t + 1], attention_mask=mask, cache=cache).logits)
        return logits, snapshot(cache)

    got = decode(model)
    assert plans_ran == [True] * steps.shape[1]
    without_plans(monkeypatch)
    assert_same(got, decode(twin))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("beams", [1, 3])
def test_generate_with_plans_gives_what_it_gives_without(beams, family, plans_ran, monkeypatch):
    model = planned_model("lstm") if family == "classic" else family_model(family)
    prompt, kwargs = generate_case(model, beams)
    got = model.generate(prompt, **kwargs)
    assert plans_ran and all(plans_ran)
    without_plans(monkeypatch)
    assert_same_generated(got, copy.deepcopy(model).generate(prompt, **kwargs))


def generate_case(model, beams: int) -> tuple[torch.Tensor, dict]:
    """A two-row prompt, one row left-padded, and generate()'s keywords: six new tokens, greedy or beams, scores
    returned."""
    prompt = torch.tensor([[5, 9, 2, 7], [0, 0, 4, 8]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    return prompt, dict(attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=beams,
                        pad_token_id=model.config.pad_token_id or 0, output_scores=True, return_dict_in_generate=True)


def assert_same_generated(got, expected) -> None:
    assert_same(got.sequences, expected.sequences)
    assert_same(list(got.scores), list(expected.scores))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_copied_cache_shares_the_plan_and_each_continues_alone(family, plans_ran):
    model = family_model(family)
    cache = prefilled(model)
    plan = cache.__dict__[STEP_PLAN_ATTRIBUTE]
    copied = copy.deepcopy(cache)
    assert copied.__dict__[STEP_PLAN_ATTRIBUTE] is plan  # (no weights copied)
    with torch.no_grad():
        a = model(torch.tensor([[6], [1]]), cache=cache).logits
        b = model(torch.tensor([[6], [1]]), cache=copied).logits
    assert plans_ran == [True, True, True]
    assert_same(a, b)
    assert_same(snapshot(cache), snapshot(copied))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_saved_cache_holds_no_plan_and_plans_again(how, family, plans_ran):
    model = family_model(family)
    cache = prefilled(model)
    if how == "pickle":
        loaded = pickle.loads(pickle.dumps(cache))
    else:
        buffer = io.BytesIO()
        torch.save(cache, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
    assert loaded.__dict__.get(STEP_PLAN_ATTRIBUTE) is None
    with torch.no_grad():
        expected = model(torch.tensor([[6], [1]]), cache=cache).logits
        got = model(torch.tensor([[6], [1]]), cache=loaded).logits
    assert_same(got, expected)
    assert loaded.__dict__.get(STEP_PLAN_ATTRIBUTE) is not None  # (planned again by that general step)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_reset_cache_drops_its_plan(family):
    model = family_model(family)
    cache = prefilled(model)
    cache.reset()
    assert STEP_PLAN_ATTRIBUTE not in cache.__dict__


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cache_stepped_by_another_model_is_stepped_by_that_model(family, plans_ran, monkeypatch):
    model = family_model(family)
    other = family_model(family, seed=1)
    cache = prefilled(model)
    copied = copy.deepcopy(cache)
    with torch.no_grad():
        got = other(torch.tensor([[6], [1]]), cache=cache).logits
    assert plans_ran == [True, False]
    without_plans(monkeypatch)
    with torch.no_grad():
        copied.__dict__.pop(STEP_PLAN_ATTRIBUTE)
        expected = other(torch.tensor([[6], [1]]), cache=copied).logits
    assert_same(got, expected)


class LoggedCache(SeqzooCache):
    """A cache of the user's own that stores states its own way (here: logs each store and advance)."""

    def update_layer(self, idx, state):
        self.__dict__.setdefault("log", []).append(("update", idx))
        super().update_layer(idx, state)

    def advance(self, num_positions):
        self.__dict__.setdefault("log", []).append(("advance", num_positions))
        super().advance(num_positions)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cache_of_a_subclass_is_never_planned(family, plans_ran):
    model = planned_model("lstm") if family == "classic" else family_model(family)
    cache = LoggedCache.for_model(model)
    with torch.no_grad():
        model(torch.tensor([[5, 9, 2]]), cache=cache)
        for token in (4, 6, 1):
            model(torch.tensor([[token]]), cache=cache)
    assert STEP_PLAN_ATTRIBUTE not in cache.__dict__ and not plans_ran
    assert cache.log.count(("advance", 1)) == 3


@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_decoding_after_planned_steps_compiles_the_general_step(family, plans_ran, monkeypatch):
    """compile_decoding() after a cache was planned: the compiled steps trace the general forward (the plan steps
    aside while dynamo traces), as they would without plans."""
    def run(model):
        cache = prefilled(model)
        model.compile_decoding(backend="eager")
        with torch.no_grad():
            return [outcome(model, cache, torch.tensor([[6], [1]])) for _ in range(2)]

    model = family_model(family)
    twin = copy.deepcopy(model)
    got = run(model)
    assert plans_ran[0] and not any(plans_ran[1:])  # (prefilled()'s step ran planned, before compiling)
    without_plans(monkeypatch)
    assert_same(got, run(twin))


_REAL = {family: {name: getattr(cls, name) for name in ("forward", "takes_step", "decode_step")}
         for family, cls in BACKBONES.items()}


def _replacement(name, called, family="classic"):
    """A backbone method that the general step calls and the plan would skip: logged, and for the decode step's two
    methods, one that declines the lean step or doubles its output."""
    real = _REAL[family]

    def forward(self, *args, **kwargs):
        called.append("forward")
        return real["forward"](self, *args, **kwargs)

    def takes_step(self, *args):
        called.append("takes_step")
        return False

    def decode_step(self, *args):
        called.append("decode_step")
        return real["decode_step"](self, *args) * 2

    return {"forward": forward, "takes_step": takes_step, "decode_step": decode_step}[name]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("where", ["a subclass", "the class", "the instance"])
@pytest.mark.parametrize("name", ["forward", "takes_step", "decode_step"])
def test_a_backbone_method_of_its_own_before_the_prompt_is_never_planned(name, where, family, plans_ran,
                                                                        monkeypatch):
    """A backbone whose forward, takes_step or decode_step is not the library's own from the start (a subclass, a
    patch on the class, an attribute of the instance): no plan, and every step as the general path runs it."""
    def run(model):
        called = []
        method = _replacement(name, called, family)
        with monkeypatch.context() as patches:
            if where == "a subclass":
                model.model.__class__ = type("Mine", (type(model.model),), {name: method})
            elif where == "the class":
                patches.setattr(BACKBONES[family], name, method)
            else:
                setattr(model.model, name, method.__get__(model.model))
            cache = prefilled(model, first_step=False)
            planned = STEP_PLAN_ATTRIBUTE in cache.__dict__
            with torch.no_grad():
                got = [outcome(model, cache, torch.tensor([[6], [1]])) for _ in range(2)]
        return planned, got, called

    model = family_model(family)
    twin = copy.deepcopy(model)
    planned, got, called = run(model)
    assert not planned and not plans_ran
    without_plans(monkeypatch)
    assert_same((got, called), run(twin)[1:])


@pytest.mark.parametrize("table", ["always", "never"])
@pytest.mark.parametrize("variant", ["lstm", "gru"])
def test_a_missing_bias_is_zeros_of_the_weights_dtype_at_each_step(variant, table, plans_ran, monkeypatch):
    """Layers without bias_ih, made double after the prompt (the same parameters, their data replaced): each step
    fills the missing bias as the general step does (here: the same dtype error)."""
    def run(model):
        for layer in model.model.layers:
            layer.bias_ih = None
        cache = prefilled(model, first_step=False)
        model.model.layers.double()
        with torch.no_grad():
            return [outcome(model, cache, torch.tensor([[6], [1]])) for _ in range(2)]

    model = planned_model(variant, table)
    twin = copy.deepcopy(model)
    got = run(model)
    without_plans(monkeypatch)
    assert_same(got, run(twin))


def test_a_method_patched_for_a_while_after_the_prompt_is_planned_again_once_undone(plans_ran, monkeypatch):
    """A plan that meets a backbone method other than the one it was made with drops itself: the steps while the
    patch holds run the general path, and once it is undone the next general step plans the rest again."""
    model = planned_model("gru")
    called = []
    cache = prefilled(model, first_step=False)
    with torch.no_grad():
        with monkeypatch.context() as patches:
            patches.setattr(modeling_classic.ClassicRecurrentModel, "takes_step", _replacement("takes_step", called))
            model(torch.tensor([[6], [1]]), cache=cache)
            assert STEP_PLAN_ATTRIBUTE not in cache.__dict__
            model(torch.tensor([[6], [1]]), cache=cache)
        asked = len(called)
        for _ in range(3):
            model(torch.tensor([[6], [1]]), cache=cache)
    assert asked and len(called) == asked  # (asked by both steps while it held, never after)
    assert plans_ran == [False, True, True]  # (the first step declined; the first after the patch ran general)
