"""RWKV-7's one-token decode step in TorchScript (``seqzoo.layers.rwkv7_step.step_blocks``) against the blocks run
one by one in Python, against the full-sequence forward, and the cases where it must step aside (hooks, wrappers,
subclassed weights, another dtype, gradients, a forced backend, TorchScript failing). The step against BlinkDL's
``rwkv`` package is tests/models/test_rwkv7_blinkdl.py (its generate() runs through this path)."""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch
from torch import nn

from seqzoo.cache import SeqzooCache
from seqzoo.kernels import use_backend
from seqzoo.layers import rwkv7_step
from seqzoo.models.compat import output_cache
from seqzoo.models.rwkv7.step_plan import RWKV7StepPlan
from tests.conftest import decode_step_inputs, tiny_model


def random_model(seed=0, **overrides):
    """A tiny RWKV-7 with every parameter random (the x070 init zeroes the output projections and the LoRA inputs,
    which would hide most of the time mix from a comparison)."""
    model = tiny_model("rwkv7-tiny", seed=seed, **overrides)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.5 if parameter.dim() == 1 else parameter.shape[-1] ** -0.5
            parameter.copy_(torch.randn(parameter.shape, generator=gen) * scale)
    return model


@pytest.fixture(params=["planned", "unplanned"])
def scripted_calls(request, monkeypatch):
    """How many decode steps ran through the scripted blocks: an entry per general step (True where it ran them) and
    one per step a cache's plan ran (models/rwkv7/step_plan.py; a plan that declines leaves the step to the general
    path, which records it). Each test runs twice: with plans, and with none ever made (every step general)."""
    calls = []
    real = rwkv7_step.step_blocks

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(result is not None)
        return result

    import seqzoo.models.rwkv7.modeling_rwkv7 as modeling

    monkeypatch.setattr(modeling, "step_blocks", spy)
    if request.param == "unplanned":
        monkeypatch.setattr(RWKV7StepPlan, "build", classmethod(lambda cls, *args: None))
    else:
        real_run = RWKV7StepPlan._run

        def planned(self, *args):
            result = real_run(self, *args)
            if result is not None:
                calls.append(True)
            return result

        monkeypatch.setattr(RWKV7StepPlan, "_run", planned)
    return calls


@pytest.fixture
def python_path(monkeypatch):
    """A switch that makes the scripted step unavailable, as where TorchScript cannot script it."""
    def off():
        monkeypatch.setattr(rwkv7_step, "scripted_stack_step", lambda: None)
    return off


def inputs(model, batch):
    return decode_step_inputs(batch, model.config.vocab_size)


def decode(model, prompt, prompt_mask, steps, step_masks, cache=None):
    """Prefill ``prompt`` (or continue ``cache`` when the prompt is None) then feed ``steps`` one token at a time;
    returns the logits of every step and the final cache's per-layer states."""
    with torch.no_grad():
        if prompt is not None:
            cache = output_cache(model(prompt, attention_mask=prompt_mask, use_cache=True))
        mask = prompt_mask
        logits = []
        for t in range(steps.shape[1]):
            mask = step_masks[:, : t + 1] if mask is None else torch.cat([mask, step_masks[:, t : t + 1]], dim=1)
            out = model(steps[:, t : t + 1], attention_mask=mask, cache=cache, use_cache=True)
            logits.append(out.logits[:, -1])
    states = [{k: v.clone() for k, v in cache.layer(i).items()} for i in range(model.config.num_hidden_layers)]
    return torch.stack(logits, 1), states


def assert_same(fast, slow, atol=2e-5):
    (fast_logits, fast_states), (slow_logits, slow_states) = fast, slow
    torch.testing.assert_close(fast_logits, slow_logits, rtol=1e-5, atol=atol)
    for f, s in zip(fast_states, slow_states):
        assert f.keys() == s.keys() == {"attn_shift", "wkv", "ffn_shift"}
        for name in f:
            assert f[name].dtype == s[name].dtype and f[name].shape == s[name].shape
            torch.testing.assert_close(f[name], s[name], rtol=1e-5, atol=atol)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("layers", [1, 3])
def test_scripted_step_equals_the_blocks_in_python(batch, layers, scripted_calls, python_path):
    model = random_model(num_hidden_layers=layers)
    args = inputs(model, batch)
    fast = decode(model, *args)
    assert scripted_calls == [True] * 4
    python_path()
    slow = decode(model, *args)
    assert scripted_calls[4:] == [False] * 4
    assert_same(fast, slow)


def test_each_block_steps_with_its_own_eps(scripted_calls, python_path):
    """The whole stack runs in one scripted call: each block's own norm eps reach it, not the first block's."""
    model = random_model(num_hidden_layers=3)
    for idx, block in enumerate(model.model.layers):
        block.attn_norm.eps, block.ffn_norm.eps, block.attn.ln_x.eps = 0.3 * (idx + 1), 0.2 * (idx + 1), 0.5 * (idx + 1)
    args = inputs(model, 2)
    fast = decode(model, *args)
    assert scripted_calls == [True] * 4
    python_path()
    assert_same(fast, decode(model, *args))


def test_scripted_step_from_an_empty_cache_equals_the_full_sequence(scripted_calls):
    """Every token fed one by one from an empty cache (each block's state starts as zeros in the step) against one
    forward over the whole padded sequence."""
    model = random_model(num_hidden_layers=2)
    prompt, prompt_mask, steps, step_masks = inputs(model, 3)
    tokens = torch.cat([prompt, steps], dim=1)
    mask = torch.cat([prompt_mask, step_masks], dim=1)
    logits, states = decode(model, None, None, tokens, mask, cache=SeqzooCache.for_model(model))
    assert scripted_calls == [True] * tokens.shape[1]
    with torch.no_grad():
        out = model(tokens, attention_mask=mask, use_cache=True)
    keep = mask.bool()
    torch.testing.assert_close(logits[keep], out.logits[keep], rtol=1e-4, atol=1e-4)
    cache = output_cache(out)
    for i, state in enumerate(states):
        for name, value in state.items():
            torch.testing.assert_close(value, cache.layer(i)[name], rtol=1e-4, atol=1e-4)


def test_a_padded_token_leaves_every_state_unchanged(scripted_calls):
    model = random_model(num_hidden_layers=2)
    prompt = torch.randint(0, 50, (2, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = output_cache(model(prompt, use_cache=True))
        before = [{k: v.clone() for k, v in cache.layer(i).items()} for i in range(2)]
        model(torch.tensor([[5], [6]]), attention_mask=torch.tensor([[1] * 4 + [0], [1] * 5]), cache=cache)
    assert scripted_calls == [True]
    for i in range(2):
        for name in ("attn_shift", "wkv", "ffn_shift"):
            assert torch.equal(cache.layer(i)[name][0], before[i][name][0])
            assert not torch.equal(cache.layer(i)[name][1], before[i][name][1])


def test_generate_runs_the_scripted_step_and_matches_the_python_path(scripted_calls, python_path):
    model = random_model(num_hidden_layers=2)
    prompt = torch.tensor([[5, 9, 2, 7], [0, 0, 4, 8]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    kwargs = {"attention_mask": mask, "max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False,
              "pad_token_id": model.config.pad_token_id, "output_logits": True, "return_dict_in_generate": True}
    with torch.no_grad():
        fast = model.generate(prompt, **kwargs)
        assert scripted_calls == [True] * 5
        python_path()
        slow = model.generate(prompt, **kwargs)
    assert torch.equal(fast.sequences, slow.sequences)
    torch.testing.assert_close(torch.stack(fast.logits), torch.stack(slow.logits), rtol=1e-5, atol=2e-5)


def test_a_weight_changed_in_place_is_seen_by_the_next_step(scripted_calls, python_path):
    """Nothing is copied: the parameters are read on every call."""
    model = random_model(num_hidden_layers=2)
    args = inputs(model, 2)
    first = decode(model, *args)
    with torch.no_grad():
        model.model.layers[1].attn.receptance.weight.data.mul_(-0.5)
        model.model.layers[0].attn.w1.data.add_(0.3)
    changed = decode(model, *args)
    assert scripted_calls == [True] * 8
    assert not torch.allclose(first[0], changed[0], atol=1e-3)
    python_path()
    assert_same(changed, decode(model, *args))


def test_a_hook_on_any_part_sends_the_step_through_the_blocks(scripted_calls):
    model = random_model(num_hidden_layers=2)
    args = inputs(model, 2)
    fast = decode(model, *args)
    layer = model.model.layers[1]
    # (ln_x is read as parameters by the time mix itself, never called.)
    for module in (layer, layer.attn_norm, layer.attn, layer.attn.output, layer.ffn_norm, layer.ffn, layer.ffn.value):
        seen = []
        handle = module.register_forward_hook(lambda *a: seen.append(1))
        try:
            assert_same(decode(model, *args), fast)
        finally:
            handle.remove()
        assert len(seen) == 5, type(module).__name__  # the prompt and every step
    assert scripted_calls[4:] == [False] * (4 * 7)


class Marked(torch.Tensor):
    """A tensor subclass, as quantised weights are (torchao's)."""


class LinearWithBias(nn.Linear):
    """A subclass of nn.Linear, as peft's and quantisation wrappers are modules of their own."""


def shifted(self, *args, **kwargs):
    out, state = type(self).__mro__[1].forward(self, *args, **kwargs)
    return out + torch.linspace(0, 1, out.shape[-1]), state  # (the final LayerNorm undoes a uniform change)


def shifted_norm(self, x):
    return nn.LayerNorm.forward(self, x) + torch.linspace(0, 1, x.shape[-1])


@pytest.mark.parametrize("change", ["subclass weight", "linear subclass", "block subclass", "first block subclass",
                                    "time mix subclass", "channel mix subclass", "norm subclass", "mlp norm subclass",
                                    "linear with a bias", "bfloat16",
                                    "float64", "grad enabled", "reference backend", "no value residual", "post norm",
                                    "parameter made a buffer"])
def test_the_step_declines_what_it_does_not_compute(change, scripted_calls, python_path):
    model = random_model(num_hidden_layers=2)
    args = inputs(model, 2)
    attn = model.model.layers[1].attn
    if change == "post norm":
        model.model.layers[1].pre_norm = False  # each norm after its residual: another function of the same weights
    elif change == "parameter made a buffer":
        # (frozen by hand: the time mix reads self.x_r all the same, no longer from its parameters)
        value = attn.x_r.detach().clone()
        del attn.x_r
        attn.register_buffer("x_r", value)
    elif change == "subclass weight":
        attn.w1 = nn.Parameter(attn.w1.detach().as_subclass(Marked))
    elif change == "linear subclass":
        replacement = LinearWithBias(attn.key.in_features, attn.key.out_features, bias=False)
        replacement.weight = attn.key.weight
        attn.key = replacement
    elif change == "linear with a bias":
        # A plain nn.Linear with a bias, put in the key's place: the scripted step adds none (it was not declined).
        replacement = nn.Linear(attn.key.in_features, attn.key.out_features, bias=True)
        with torch.no_grad():
            replacement.weight.copy_(attn.key.weight)
            replacement.bias.uniform_(-0.5, 0.5)
        attn.key = replacement
    elif change in ("block subclass", "first block subclass"):
        # A subclass's own forward must run: it doubles the block's output.
        block = model.model.layers[1 if change == "block subclass" else 0]
        block.__class__ = type("Shifted", (type(block),), {"forward": shifted})
    elif change in ("time mix subclass", "channel mix subclass"):
        mixer = getattr(model.model.layers[1], "attn" if change == "time mix subclass" else "ffn")
        mixer.__class__ = type("Shifted", (type(mixer),), {"forward": shifted})
    elif change in ("norm subclass", "mlp norm subclass"):
        norm = getattr(model.model.layers[1], "attn_norm" if change == "norm subclass" else "ffn_norm")
        norm.__class__ = type("ShiftedNorm", (nn.LayerNorm,), {"forward": shifted_norm})
    elif change == "no value residual":
        attn.has_value_residual = False  # layer 1 then makes its own v_first instead of reading layer 0's
    elif change in ("bfloat16", "float64"):
        model.to(getattr(torch, change))
    if change == "grad enabled":
        with torch.enable_grad():
            cache = output_cache(model(args[0], attention_mask=args[1], use_cache=True))
            out = model(args[2][:, :1], attention_mask=torch.cat([args[1], args[3][:, :1]], 1), cache=cache)
        assert out.logits.requires_grad
        assert scripted_calls == [False]
        return
    if change == "reference backend":
        with use_backend("wkv7", "reference"):
            result = decode(model, *args)
    else:
        result = decode(model, *args)
    assert scripted_calls == [False] * 4
    if "subclass" in change and "weight" not in change and "linear" not in change:
        # The subclass's forward ran: the logits are not those of the unmodified model.
        plain = decode(random_model(num_hidden_layers=2), *args)[0]
        assert not torch.allclose(result[0], plain, atol=1e-3)
    python_path()
    expected = decode(model, *args)
    torch.testing.assert_close(result[0], expected[0], rtol=1e-4, atol=1e-4)


def test_when_torchscript_cannot_script_it_decoding_warns_once_and_runs_in_python(monkeypatch, caplog,
                                                                                scripted_calls):
    model = random_model(num_hidden_layers=2)
    args = inputs(model, 2)
    expected = decode(model, *args)

    def refuse(fn):
        raise RuntimeError("TorchScript is not available here")

    monkeypatch.setattr(rwkv7_step, "_scripted", None)
    monkeypatch.setattr(torch.jit, "script", refuse)
    with caplog.at_level(logging.WARNING, logger="seqzoo.layers.rwkv7_step"):
        result = decode(model, *args)
        decode(model, *args)
    warnings = [r for r in caplog.records if "could not be scripted" in r.getMessage()]
    assert len(warnings) == 1 and "TorchScript is not available here" in warnings[0].getMessage()
    assert scripted_calls == [True] * 4 + [False] * 8
    assert_same(result, expected)


@pytest.mark.parametrize("category", [None, DeprecationWarning, FutureWarning])
def test_scripting_shows_no_deprecation_warning(monkeypatch, recwarn, category):
    # torch 2.13 warns that torch.jit.script is deprecated with a DeprecationWarning, torch 2.15 with a FutureWarning
    # (which Python shows by default): None scripts with this torch's own warning, the others with each release's.
    if category is not None:
        script = torch.jit.script

        def script_as_torch_warns(fn):
            warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`.",
                          category)
            return script(fn)

        monkeypatch.setattr(torch.jit, "script", script_as_torch_warns)
    monkeypatch.setattr(rwkv7_step, "_scripted", None)
    assert rwkv7_step.scripted_stack_step() is not None
    assert not [str(w.message) for w in recwarn if "torch.jit" in str(w.message)]


def test_a_peft_adapter_sends_the_step_through_the_blocks_and_merged_it_is_scripted(scripted_calls):
    peft = pytest.importorskip("peft")
    model = random_model(num_hidden_layers=2)
    args = inputs(model, 2)
    config = peft.LoraConfig(r=4, target_modules=["receptance", "value"], init_lora_weights=False)
    adapted = peft.get_peft_model(model, config)
    result = decode(adapted, *args)
    assert scripted_calls == [False] * 4  # the LoRA layers run as modules
    merged = adapted.merge_and_unload()
    expected = decode(merged, *args)
    assert scripted_calls[4:] == [True] * 4
    torch.testing.assert_close(result[0], expected[0], rtol=1e-4, atol=1e-4)
    plain = decode(random_model(num_hidden_layers=2), *args)[0]
    assert not torch.allclose(result[0], plain, atol=1e-3)  # the adapter changed the model


def test_inference_mode_takes_the_scripted_step(scripted_calls):
    model = random_model(num_hidden_layers=2)
    args = inputs(model, 2)
    expected = decode(model, *args)
    with torch.inference_mode():
        result = decode(model, *args)
    assert scripted_calls == [True] * 8
    assert_same(result, expected, atol=0)


def other_cache(change):
    """(model, cache): a 2-layer model's cache after a prompt of 3 rows, where the cache does not fit the model's
    states though the model type and layer kinds pass the cache's own check."""
    model = random_model(num_hidden_layers=2)
    prompt = torch.randint(3, 99, (3, 5), generator=torch.Generator().manual_seed(0))
    if change == "head layout":  # same width, other heads: a wkv of (B, 4, 8, 8) for (B, 2, 16, 16)
        source = random_model(num_hidden_layers=2, head_size=8)
    elif change == "width":
        source = random_model(num_hidden_layers=2, hidden_size=48)
    else:
        source = model
    with torch.no_grad():
        cache = output_cache(source(prompt, use_cache=True))
    if change == "wkv rows":  # a hand-edited cache: one state of fewer rows than the others
        cache.update_layer(1, {**cache.layer(1), "wkv": cache.layer(1)["wkv"][:2]})
    elif change == "shift of one row":  # broadcasts in the blocks, which compute it: so must the step
        cache.update_layer(1, {**cache.layer(1), "ffn_shift": cache.layer(1)["ffn_shift"][:1]})
    elif change == "attn shift of one row":
        cache.update_layer(1, {**cache.layer(1), "attn_shift": cache.layer(1)["attn_shift"][:1]})
    return model, cache


def outcome(model, cache):
    """The logits of one step from a copy of ``cache``, or the error it raised (type and message), and whether the
    copy was left as it was."""
    cache = copy.deepcopy(cache)
    before = [{k: v.clone() for k, v in cache.layer(i).items()} for i in range(2)]
    try:
        with torch.no_grad():
            result = model(torch.tensor([[4], [5], [6]]), cache=cache).logits
    except Exception as err:  # noqa: BLE001 -- compared below
        result = f"{type(err).__name__}: {err}"
    unchanged = all(cache.layer(i).keys() == before[i].keys()
                    and all(torch.equal(cache.layer(i)[k], v) for k, v in before[i].items()) for i in range(2))
    return result, unchanged


@pytest.mark.parametrize("change", ["head layout", "width", "wkv rows", "shift of one row", "attn shift of one row"])
def test_a_cache_whose_states_do_not_fit_runs_as_in_python(change, scripted_calls, python_path):
    """The step reshapes freely (a wkv of 4 heads of 8 reads as 2 heads of 16): a state of another shape than the
    blocks' goes to the blocks, which raise their own error (or compute what they compute), never a silent answer.
    A cache that a model of other sizes filled never gets there: the cache's own check names it first."""
    model, cache = other_cache(change)
    fast = outcome(model, cache)
    if change in ("head layout", "width"):  # a model of other sizes filled it: refused before any block runs
        assert scripted_calls == [] and fast[1]
        assert "RWKV7Model: the cache holds the states of a model of other sizes" in fast[0]
        return
    assert scripted_calls == [False]
    python_path()
    slow = outcome(model, cache)
    if isinstance(slow[0], str):
        assert fast == slow
        assert "TorchScript" not in fast[0]
    else:
        torch.testing.assert_close(fast[0], slow[0])
    if change == "wkv rows":
        assert fast == (slow[0], True) and "initial_state must be (B, H, V, K)" in slow[0]


@pytest.mark.parametrize("where", ["RWKV7Model.forward", "RWKV7Block.forward", "RWKV7TimeMix.forward",
                                   "RWKV7TimeMix._step", "RWKV7ChannelMix.forward", "LayerNorm.forward",
                                   "Linear.forward"])
def test_a_forward_replaced_on_the_class_runs(where, monkeypatch, scripted_calls, python_path):
    """A library or a user patching a class's forward (not an instance's, not a subclass) is honoured as the general
    forward honours it: the patched function runs at every decode step."""
    from seqzoo.layers.rwkv7 import RWKV7ChannelMix, RWKV7TimeMix
    from seqzoo.models.rwkv7.modeling_rwkv7 import RWKV7Block, RWKV7Model

    classes = {"RWKV7Model": RWKV7Model, "RWKV7Block": RWKV7Block, "RWKV7TimeMix": RWKV7TimeMix,
               "RWKV7ChannelMix": RWKV7ChannelMix, "LayerNorm": nn.LayerNorm, "Linear": nn.Linear}
    name, attr = where.split(".")
    cls = classes[name]
    original = getattr(cls, attr)
    ran = []

    def patched(self, *args, **kwargs):
        ran.append(1)
        return original(self, *args, **kwargs)

    model = random_model(num_hidden_layers=2)
    prompt, prompt_mask, steps, step_masks = inputs(model, 2)
    monkeypatch.setattr(cls, attr, patched)
    with torch.no_grad():
        cache = output_cache(model(prompt, attention_mask=prompt_mask, use_cache=True))
        assert ran or attr == "_step"  # (the time mix's one-token form)
        mask = prompt_mask
        for t in range(steps.shape[1]):
            ran.clear()
            mask = torch.cat([mask, step_masks[:, t : t + 1]], dim=1)
            model(steps[:, t : t + 1], attention_mask=mask, cache=cache)
            assert ran, f"the patched {where} did not run at decode step {t}"
    assert not any(scripted_calls)


def test_a_torch_function_mode_sees_every_operation(scripted_calls, python_path):
    """TorchScript's interpreter runs below Python's __torch_function__: under a TorchFunctionMode (a user's op
    logger, a numerics simulator) the blocks run in Python, where the mode sees each operation."""
    from torch.overrides import TorchFunctionMode

    class Scaled(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            return out * 1.25 if func is torch.nn.functional.linear else out

    model = random_model(num_hidden_layers=2)
    args = inputs(model, 2)
    with Scaled():
        result = decode(model, *args)
    python_path()
    with Scaled():
        expected = decode(model, *args)
    assert not any(scripted_calls)
    assert_same(result, expected, atol=0)


def test_a_block_with_other_heads_than_the_first_is_left_to_the_blocks(scripted_calls):
    """Blocks whose time mixes split the width into other heads than the first's: the step, which reshapes by the
    first block's heads, declines, and the blocks meet their own error."""
    model = random_model(num_hidden_layers=2)
    prompt, prompt_mask, steps, step_masks = inputs(model, 2)
    with torch.no_grad():
        cache = output_cache(model(prompt, attention_mask=prompt_mask, use_cache=True))
        attn = model.model.layers[1].attn
        attn.num_heads, attn.head_size = attn.num_heads // 2, attn.head_size * 2
        with pytest.raises((ValueError, RuntimeError)):
            model(steps[:, :1], attention_mask=torch.cat([prompt_mask, step_masks[:, :1]], 1), cache=cache)
    assert scripted_calls == [False]


def test_an_offloaded_group_norm_sends_the_step_through_the_blocks(scripted_calls, python_path):
    """ln_x is read, never called; the Python path reads it through module_weights, which loads accelerate's
    offloaded weights. The scripted step, which reads the parameters themselves (on the meta device here), must
    decline a hooked ln_x."""
    accelerate = pytest.importorskip("accelerate")
    model = random_model(num_hidden_layers=2)
    args = inputs(model, 2)
    expected = decode(model, *args)
    accelerate.cpu_offload(model.model.layers[1].attn.ln_x, execution_device="cpu")
    assert model.model.layers[1].attn.ln_x.weight.device.type == "meta"
    scripted_calls.clear()
    assert_same(decode(model, *args), expected)
    assert scripted_calls and not any(scripted_calls)


@pytest.mark.parametrize("step", [False, True], ids=["forward", "one-token-steps"])
def test_a_non_finite_value_at_a_pad_never_reaches_the_state(step):
    """A padded position is an identity step: its value and removal key are masked too, so a NaN there (from an
    earlier layer of a hybrid, say) cannot reach the state as NaN * 0."""
    model = random_model(num_hidden_layers=2)
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 7, 8, 9]])
    mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        embeds[1, :2] = float("nan")
        if step:
            cache, logits = SeqzooCache.for_model(model), []
            for t in range(5):
                out = model(inputs_embeds=embeds[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache)
                logits.append(out.logits[:, -1])
            logits = torch.stack(logits, 1)
        else:
            logits = model(inputs_embeds=embeds, attention_mask=mask).logits
        alone = model(ids[1:, 2:]).logits[0]
    torch.testing.assert_close(logits[1, 2:], alone, rtol=1e-4, atol=1e-4)


def test_a_float64_cache_continues_in_a_float32_step():
    # A cache a float64 model filled (its wkv state float64) continued after model.float(): the scripted step reads
    # the states in float32, as the blocks' own path casts them.
    model = tiny_model("rwkv7-tiny").double().eval()
    ids = torch.tensor([[5, 17, 33, 8, 61]])
    with torch.no_grad():
        cache = output_cache(model(ids[:, :4], use_cache=True))
        model.float()
        step = model(ids[:, 4:], cache=cache).logits[:, -1]
        full = model(ids).logits[:, -1]
    assert step.dtype == torch.float32
    assert all(state.dtype == torch.float32 for i in range(len(cache)) for state in cache.layer(i).values())
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)


def test_a_non_finite_token_at_a_pad_never_reaches_the_state_of_the_scripted_step(scripted_calls):
    """The scripted step's padded token is an identity step as the blocks' is: its key, value, removal key and
    decay are each masked, so a NaN in a padded token's embedding (a row never trained) leaves every state as it
    was, bit for bit, where NaN * 0 would have reached it."""
    model = random_model(num_hidden_layers=2, tie_word_embeddings=False)
    prompt = torch.randint(0, 50, (2, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.model.embed_tokens.weight[7] = float("nan")
        cache = output_cache(model(prompt, use_cache=True))
        before = [{k: v.clone() for k, v in cache.layer(i).items()} for i in range(2)]
        out = model(torch.tensor([[7], [6]]), attention_mask=torch.tensor([[1] * 4 + [0], [1] * 5]), cache=cache)
    assert scripted_calls == [True]
    assert torch.isfinite(out.logits[1]).all()
    for i in range(2):
        for name in ("attn_shift", "wkv", "ffn_shift"):
            assert torch.equal(cache.layer(i)[name][0], before[i][name][0]), (i, name)


def test_a_vanishing_removal_key_is_normalised_as_in_python(scripted_calls, python_path):
    """kk = k * k_k is normalised per head with F.normalize's floor (1e-12): a block whose k_k is tiny (norms of
    about 1e-6) still removes along a unit vector."""
    model = random_model(num_hidden_layers=2)
    with torch.no_grad():
        model.model.layers[1].attn.k_k.mul_(1e-6)
    args = inputs(model, 2)
    fast = decode(model, *args)
    assert scripted_calls == [True] * 4
    python_path()
    assert_same(fast, decode(model, *args))


def test_autocast_runs_the_blocks_in_python(scripted_calls, python_path):
    """Under autocast the blocks' linear maps run in bfloat16; the scripted step would run them in float32."""
    model = random_model(num_hidden_layers=2)
    args = inputs(model, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = decode(model, *args)
    python_path()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = decode(model, *args)
    assert scripted_calls == [False] * 8
    assert_same(result, expected, atol=0)


def test_a_global_module_hook_sees_every_block_of_every_step(scripted_calls):
    from torch.nn.modules.module import register_module_forward_hook

    from seqzoo.models.rwkv7.modeling_rwkv7 import RWKV7Block

    model = random_model(num_hidden_layers=2)
    args = inputs(model, 2)
    expected = decode(model, *args)
    seen = []
    handle = register_module_forward_hook(lambda module, a, out: seen.append(1) if type(module) is RWKV7Block else None)
    try:
        result = decode(model, *args)
    finally:
        handle.remove()
    assert len(seen) == 2 * 5  # both blocks, for the prompt and each of the four steps
    assert not any(scripted_calls[4:])
    assert_same(result, expected)


class ScalesLinear(torch.Tensor):
    """A tensor subclass whose __torch_function__ changes what F.linear gives (a numerics simulator, say): it
    reaches the blocks as their input, and TorchScript's interpreter would run below it."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs)
        return out * 1.25 if func is torch.nn.functional.linear else out


def test_an_input_of_a_tensor_subclass_runs_the_blocks_in_python(scripted_calls, python_path):
    model = random_model(num_hidden_layers=2)
    embedding = model.model.embed_tokens
    embedding.weight = nn.Parameter(embedding.weight.detach().as_subclass(ScalesLinear), requires_grad=False)
    args = inputs(model, 2)
    result = decode(model, *args)
    python_path()
    expected = decode(model, *args)
    assert not any(scripted_calls)
    torch.testing.assert_close(result[0].as_subclass(torch.Tensor), expected[0].as_subclass(torch.Tensor), rtol=0,
                               atol=0)


def test_a_time_mix_of_another_kind_in_the_first_block_is_left_to_the_blocks(scripted_calls):
    """A one-block model whose time mix is another token mixer (no heads to read): the step declines before it
    reads the first block's heads, and the block runs that mixer."""
    from seqzoo.layers.mixer import Mixer

    class Halving(Mixer):
        def forward(self, x, *, state=None, mask=None, **context):
            return x * 0.5, {}

    model = random_model(num_hidden_layers=1)
    model.model.layers[0].attn = Halving(model.config, 0)
    with torch.no_grad():
        full = model(torch.tensor([[5, 9, 12, 3]])).logits[:, -1]
        cache = output_cache(model(torch.tensor([[5, 9, 12]]), use_cache=True))
        step = model(torch.tensor([[3]]), cache=cache).logits[:, -1]
    assert scripted_calls == [False]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)


def test_the_step_declines_while_torch_compile_traces_it_and_off_the_cpu(monkeypatch):
    """Dynamo cannot trace into a TorchScript call, and the scripted stack is only built for the CPU: while
    compiling, and for states on another device, the step returns None and the blocks run in Python."""
    from seqzoo.models.rwkv7 import modeling_rwkv7

    model = random_model(num_hidden_layers=2)
    blocks = model.model.layers
    hidden = torch.randn(2, 1, model.config.hidden_size)

    def step(hidden_states):
        with torch.no_grad():
            return rwkv7_step.step_blocks(blocks, modeling_rwkv7.RWKV7Block, modeling_rwkv7._BLOCK_FORWARD,
                                          hidden_states, [None, None], None)

    assert step(hidden) is not None  # the control: the same call steps when nothing declines it
    assert step(hidden.to("meta")) is None
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert step(hidden) is None
