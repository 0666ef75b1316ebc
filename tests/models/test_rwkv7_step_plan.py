"""RWKV-7's planned decode step (``seqzoo.models.rwkv7.step_plan``): a cache's later steps run the operations its
first general step chose (the scripted blocks of ``layers/rwkv7_step.py``), and change nothing. As for the classic
models (test_step_plan.py, whose calls and changes these reuse), every test runs the same calls twice, from copies of
one model, once as it is and once with planning switched off, and compares logits, states, errors and what hooks saw,
bitwise. The tests of any family's plan (generate(), copied, saved, reset and subclassed caches, another model's
step, compiling, a backbone method of its own) run for RWKV-7 too in test_step_plan.py. The scripted blocks against
the blocks in Python and the full-sequence forward, with plans and without, are test_rwkv7_step.py; against BlinkDL's
package, test_rwkv7_blinkdl.py."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqzoo.cache import STEP_PLAN_ATTRIBUTE
from seqzoo.kernels import onednn_linear, product_choice
from seqzoo.layers import rwkv7_step
from seqzoo.layers.rwkv7 import RWKV7ChannelMix, RWKV7TimeMix
from seqzoo.models.compat import output_cache
from seqzoo.models.rwkv7.modeling_rwkv7 import RWKV7Model
from seqzoo.models.rwkv7.step_plan import RWKV7StepPlan
from tests.models import test_step_plan
from tests.models.test_rwkv7_step import random_model
from tests.models.test_step_plan import (
    CHANGES,
    RUNS_PLANNED,
    _call,
    _class_forward_patched,
    _Counted,
    _hook,
    _in_place,
    _method_patched,
    _scaled,
    _set,
    assert_a_decoding_loop_is_planned_and_exact,
    assert_planned_as_general,
    assert_same,
    outcome,
    prefilled,
    without_plans,
)

plans_ran = test_step_plan.plans_ran  # (the fixture: an entry per step a plan was asked to run, of any family)


def model_of(layers: int = 2, **overrides) -> nn.Module:
    """A tiny RWKV-7 with every parameter random, so that any part left out or read twice shows in the logits."""
    return random_model(num_hidden_layers=layers, **overrides)


# The classic tests' changes that concern any causal LM (the rest name an RNN's weights, its input table or its class).
_SHARED = [
    "nothing", "a mask of ones", "int32 ids", "return_dict=False", "logits_to_keep=1", "a hook on a layer",
    "a hook on the head", "a hook on the backbone", "a pre-hook on the embedding", "a global module hook",
    "a forward set on a layer", "nn.Linear's forward patched", "nn.Embedding's forward patched",
    "the layers' class's forward patched", "the layers' class's __call__ patched",
    "the backbone class's __call__ patched", "nn.Linear's __call__ patched", "nn.Module's _call_impl patched",
    "autocast", "gradients recorded", "training", "the backbone alone in training", "the embedding changed in place",
    "the head replaced", "the embedding resized", "the embedding's max_norm set", "the model made double",
    "a state of another dtype", "an empty state", "hidden states asked for", "hidden states asked for by the config",
    "return_dict=False by the config", "labels", "position_ids", "a padded token", "a mask of another length",
    "a mask holding a 2", "use_cache=False", "a token outside the vocabulary", "a negative token", "float ids",
    "int16 ids", "two tokens", "one row more", "an empty batch", "an unknown keyword",
    "the cache under an older name too", "logits_to_keep as a tensor", "logits_to_keep as a 0-d tensor",
    "logits_to_keep past the end", "logits_to_keep=2", "logits_to_keep=-1", "ids of one dimension",
    "ids of three dimensions", "inputs_embeds too", "position_ids of another shape", "the embedding module replaced",
    "a layer's class changed", "every layer's class changed", "the head in training",
    "the embedding made float64 through .data", "decode_step wrapped on the backbone", "a torch function mode",
    "the embedding's weight of a subclass with its own lookup", "the vocabulary cut through .data",
    "the embedding flattened through .data", "the embedding flattened through .data, a row more",
    "the causal LM alone in training", "the config made bidirectional", "update_layer set on the cache",
    "advance patched on the cache's class", "get_seq_length patched on the cache's class",
    "the cache's class made a subclass", "a dispatch mode, one position kept",
    "the vocabulary cut, a row more and a token past the cut",
]


class _CountedWkv7(_Counted):
    """A forced reference backend of RWKV-7's WKV, counting its calls."""

    def __init__(self, model, seen):
        super().__init__(model, seen)
        self.op = "wkv7"


class _Switched:
    """A setting switched for the steps: ``enter()`` returns what ``leave(value)`` restores."""

    def __init__(self, enter, leave):
        self.enter, self.leave = enter, leave

    def __enter__(self):
        self.value = self.enter()

    def __exit__(self, *exc):
        self.leave(self.value)


def _onednn_off():
    def enter():
        enabled = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        return enabled
    return _Switched(enter, lambda enabled: setattr(torch.backends.mkldnn, "enabled", enabled))


def _function_counted(owner, name):
    """``owner.name`` (a torch function the blocks call) replaced by one that counts its calls (a profiler's)."""
    def change(model, cache, seen):
        real = getattr(owner, name)
        seen.patches.setattr(owner, name, lambda *a, **k: seen.append(name) or real(*a, **k))
        return None, {}, None
    return change


def _no_torchscript(model, cache, seen):
    seen.patches.setattr(rwkv7_step, "scripted_stack_step", lambda: None)
    return None, {}, None


def _state_edited(edit):
    def change(model, cache, seen):
        cache.layers[1].state = edit(cache.layers[1].state)
        return None, {}, None
    return change


def _replace_block(model, cache, seen):
    block = copy.deepcopy(model.model.layers[1])
    with torch.no_grad():
        block.attn.key.weight.mul_(0.5)
    model.model.layers[1] = block
    return None, {}, None


def _replace_backbone(model, cache, seen):
    backbone = copy.deepcopy(model.model)
    with torch.no_grad():
        backbone.layers[1].ffn.value.weight.mul_(0.5)
    model.model = backbone
    return None, {}, None


def _new_norm(name):
    def change(model, cache, seen):
        old = getattr(model.model, name)
        norm = nn.LayerNorm(old.normalized_shape, eps=old.eps)
        with torch.no_grad():
            norm.weight.copy_(old.weight * 1.5)
            norm.bias.copy_(old.bias - 0.25)
        setattr(model.model, name, norm)
        return None, {}, None
    return change


def _parameter_made_a_buffer(model, cache, seen):
    attn = model.model.layers[1].attn
    value = attn._parameters.pop("k_k").detach() * 0.5
    attn.register_buffer("k_k", value)
    return None, {}, None


def _forward_on_the_time_mix(model, cache, seen):
    attn = model.model.layers[0].attn
    real = attn.forward
    attn.forward = lambda *args, **kwargs: seen.append("time mix forward") or real(*args, **kwargs)
    return None, {}, None


def _double_through_data(path):
    def change(model, cache, seen):
        *owners, name = path.split(".")
        target = model
        for part in owners:
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        tensor = getattr(target, name)
        tensor.data = tensor.data.double()
        return None, {}, None
    return change


def _products(choice):
    return _call(context=lambda: product_choice.products(choice))


RWKV7_CHANGES = {
    # Hooks and classes the plan stands in for.
    "a hook on the time mix": _hook(lambda m: m.model.layers[1].attn),
    "a hook on the channel mix's key": _hook(lambda m: m.model.layers[0].ffn.key),
    "a hook on the group norm": _hook(lambda m: m.model.layers[1].attn.ln_x),
    "a hook on embed_norm": _hook(lambda m: m.model.embed_norm),
    "a hook on the final norm": _hook(lambda m: m.model.norm),
    "a hook on a block's norm": _hook(lambda m: m.model.layers[0].ffn_norm),
    "a forward set on the time mix": _forward_on_the_time_mix,
    "the backbone class's forward patched": _class_forward_patched(RWKV7Model),
    "decode_step patched on the backbone's class": _method_patched(lambda m: RWKV7Model, "decode_step"),
    "takes_step patched on the backbone's class": _method_patched(lambda m: RWKV7Model, "takes_step"),
    "the time mix's forward patched": _method_patched(lambda m: RWKV7TimeMix, "forward"),
    "the time mix's _step patched": _method_patched(lambda m: RWKV7TimeMix, "_step"),
    "the channel mix's forward patched": _method_patched(lambda m: RWKV7ChannelMix, "forward"),
    "nn.LayerNorm's forward patched": _class_forward_patched(nn.LayerNorm),
    "nn.LayerNorm's __call__ patched": _method_patched(lambda m: nn.LayerNorm, "__call__"),
    "nn.GroupNorm's __call__ patched": _method_patched(lambda m: nn.GroupNorm, "__call__"),
    "F.layer_norm counted": _function_counted(F, "layer_norm"),
    "torch.sigmoid counted": _function_counted(torch, "sigmoid"),
    "F.linear counted": _function_counted(F, "linear"),
    # Backends, products and TorchScript.
    "a forced reference backend": lambda model, cache, seen: (None, {}, _CountedWkv7(model, seen)),
    "oneDNN switched off": _call(context=_onednn_off),
    "torch's products": _products("torch"),
    "seqzoo's products": _products("seqzoo"),
    "TorchScript unavailable": _no_torchscript,
    # Modules and tensors replaced or changed.
    "a block replaced": _replace_block,
    "the backbone replaced": _replace_backbone,
    "embed_norm replaced": _new_norm("embed_norm"),
    "the final norm replaced": _new_norm("norm"),
    "a linear's weight replaced": _set("model.layers.1.attn.key.weight", _scaled("weight", 0.5)),
    "a time-mix parameter replaced": _set("model.layers.0.attn.w0", _scaled("w0", 0.5)),
    "a value-residual parameter replaced": _set("model.layers.1.attn.v0", _scaled("v0", 2.0)),
    "the final norm's weight replaced": _set("model.norm.weight", _scaled("weight", 0.5)),
    "a bias given to a linear": _set("model.layers.0.attn.receptance.bias",
                                     lambda linear: nn.Parameter(torch.full((linear.out_features,), 0.5))),
    "a linear replaced": _set("model.layers.0.ffn.key", lambda ffn: copy.deepcopy(ffn.key).requires_grad_(False)),
    "a parameter made a buffer": _parameter_made_a_buffer,
    "x_k changed in place": _in_place(lambda m: m.model.layers[0].ffn.x_k.mul_(-1.0)),
    "embed_norm's bias changed in place": _in_place(lambda m: m.model.embed_norm.bias.add_(0.5)),
    "a weight made float64 through .data": _double_through_data("model.layers.1.attn.value.weight"),
    "the final norm made float64 through .data": _double_through_data("model.norm.weight"),
    "a group norm without weight": _set("model.layers.0.attn.ln_x.weight", None),
    # Settings read at each step.
    "a block norm's eps changed": _set("model.layers.1.attn_norm.eps", 0.3),
    "the group norm's eps changed": _set("model.layers.0.attn.ln_x.eps", 0.2),
    "the final norm's eps changed": _set("model.norm.eps", 0.4),
    "embed_norm's shape given another dimension": _set("model.embed_norm.normalized_shape",
                                                       lambda norm: (1, *norm.normalized_shape)),
    "the final norm's shape given another dimension": _set("model.norm.normalized_shape",
                                                           lambda norm: (1, *norm.normalized_shape)),
    "dropout said on in a block": _set("model.layers.1.has_dropout", True),
    "a block's norm put after its mixer": _set("model.layers.0.pre_norm", False),
    "other heads in a block": _set("model.layers.1.attn.num_heads", 1),
    "another head size": _set("model.layers.0.attn.head_size", 8),
    "the value residual said off": _set("model.layers.1.attn.has_value_residual", False),
    "a block's part names swapped": _set("model.layers.1.part_names", ("ffn_norm", "attn", "attn_norm", "ffn")),
    "the heads given as a float": _set("model.layers.0.attn.num_heads", 2.0),
    "the head size given as a float": _set("model.layers.0.attn.head_size", 16.0),
    # States.
    "a state of one row": _state_edited(lambda state: {k: v[:1].clone() for k, v in state.items()}),
    "a state with a name more": _state_edited(lambda state: {**state, "extra": state["attn_shift"].clone()}),
    "a state without its wkv": _state_edited(lambda state: {k: v for k, v in state.items() if k != "wkv"}),
    "a wkv of another head layout": _state_edited(lambda state: {**state, "wkv": state["wkv"].reshape(
        state["wkv"].shape[0], -1, 8, 8)[:, : state["wkv"].shape[1]].clone()}),
}


@pytest.mark.parametrize("after", ["prefill", "a step"])
@pytest.mark.parametrize("name", _SHARED + sorted(RWKV7_CHANGES))
def test_a_planned_step_gives_what_the_general_step_gives(name, after, plans_ran, monkeypatch):
    runs = name in RUNS_PLANNED or name in (
        "x_k changed in place", "embed_norm's bias changed in place", "a block norm's eps changed",
        "the group norm's eps changed", "the final norm's eps changed", "torch's products", "seqzoo's products",
        "oneDNN switched off")
    assert_planned_as_general(model_of(), name, RWKV7_CHANGES.get(name) or CHANGES[name], after, runs, plans_ran,
                              monkeypatch)


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_every_later_step_of_a_decoding_loop_is_planned_and_exact(batch, layers, plans_ran, monkeypatch):
    assert_a_decoding_loop_is_planned_and_exact(model_of(layers), batch, plans_ran, monkeypatch)


def test_a_large_head_runs_by_the_products_of_the_general_step(plans_ran, monkeypatch):
    """A head of more than oneDNN's threshold of elements: the plan multiplies it as the general step's
    call_plainly does (``onednn_linear.linear``, under the same choice of products), with the same values. (At
    these sizes oneDNN's and MKL's products agree bitwise here, so the calls are compared too.)"""
    def run(model):
        calls = []
        real = onednn_linear.linear

        def recorded(x, weight, bias=None):
            calls.append((tuple(x.shape), tuple(weight.shape)))
            return real(x, weight, bias)

        with monkeypatch.context() as patches:
            patches.setattr(onednn_linear, "linear", recorded)
            with torch.no_grad(), product_choice.products("seqzoo"):  # (oneDNN's from one row, on any processor)
                cache = prefilled(model)
                got = [outcome(model, cache, torch.tensor([[6], [1]])) for _ in range(2)]
                # (without a cache kept the general step is the full forward, whose head is the module's call)
                got.append(outcome(model, cache, torch.tensor([[6], [1]]), use_cache=False))
        return got, calls

    model = model_of(1, vocab_size=20000)
    twin = copy.deepcopy(model)
    got, calls = run(model)
    assert plans_ran == [True, True, True]
    assert calls.count(((2, 1, 32), (20000, 32))) == 3  # (the first step's and the two after it, not use_cache=False's)
    without_plans(monkeypatch)
    assert_same((got, calls), run(twin))


def test_no_plan_where_the_blocks_would_not_be_scripted(plans_ran):
    """Where the general step would run the blocks one by one from the start (bf16 weights, a hooked part, dropout
    in a block), or call a norm (a hooked one, one of another class), no plan."""
    hooked, dropped, norm_hooked = model_of(), model_of(), model_of()
    hooked.model.layers[0].attn.output.register_forward_hook(lambda *args: None)
    dropped.model.layers[1].has_dropout = True
    norm_hooked.model.embed_norm.register_forward_pre_hook(lambda *args: None)
    norm_of_its_own = model_of()
    norm_of_its_own.model.norm.__class__ = type("ScaledNorm", (nn.LayerNorm,),
                                                {"forward": lambda self, x: nn.LayerNorm.forward(self, x) * 2})
    for model in (model_of().to(torch.bfloat16), hooked, dropped, norm_hooked, norm_of_its_own):
        cache = prefilled(model, first_step=False)
        assert STEP_PLAN_ATTRIBUTE not in cache.__dict__
    assert not plans_ran


def test_a_prompt_through_the_plan_path_matches_the_full_sequence():
    """Planned steps from a prompt against one forward over prompt and steps (the model's own full path)."""
    model = model_of(3)
    tokens = torch.tensor([[5, 9, 2, 7, 1, 4, 8, 3, 6], [3, 3, 8, 0, 4, 2, 2, 9, 1]])
    with torch.no_grad():
        full = model(tokens).logits
        cache = output_cache(model(tokens[:, :4], use_cache=True))
        assert type(cache.__dict__.get(STEP_PLAN_ATTRIBUTE)) is RWKV7StepPlan
        stepped = [model(tokens[:, t : t + 1], cache=cache).logits[:, 0] for t in range(4, tokens.shape[1])]
    torch.testing.assert_close(torch.stack(stepped, 1), full[:, 4:], rtol=1e-5, atol=2e-5)


def test_a_cache_pickled_before_the_plans_moved_still_loads():
    """A cache saved (pickle, torch.save) before decode_plan.py held the plans' shared part names its plan by
    ``seqzoo.models.classic.step_plan._no_plan``: that name still loads, as no plan."""
    saved = b"cseqzoo.models.classic.step_plan\n_no_plan\n(tR."  # (protocol 0: call it with no arguments)
    assert pickle.loads(saved) is None
