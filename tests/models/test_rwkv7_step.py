"""RWKV-7's one-token decode step in TorchScript (``seqzoo.layers.rwkv7_step.step_blocks``) against the blocks run
one by one in Python, against the full-sequence forward, and the cases where it must step aside (hooks, wrappers,
subclassed weights, another dtype, gradients, a forced backend, TorchScript failing). The step against BlinkDL's
``rwkv`` package is tests/models/test_rwkv7_blinkdl.py (its generate() runs through this path)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from seqzoo.cache import SeqzooCache
from seqzoo.kernels import use_backend
from seqzoo.layers import rwkv7_step
from seqzoo.models.compat import output_cache
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


@pytest.fixture
def scripted_calls(monkeypatch):
    """How many decode steps ran through the scripted blocks."""
    calls = []
    real = rwkv7_step.step_blocks

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(result is not None)
        return result

    import seqzoo.models.rwkv7.modeling_rwkv7 as modeling

    monkeypatch.setattr(modeling, "step_blocks", spy)
    return calls


@pytest.fixture
def python_path(monkeypatch):
    """A switch that makes the scripted step unavailable, as where TorchScript cannot script it."""
    def off():
        monkeypatch.setattr(rwkv7_step, "scripted_block_step", lambda: None)
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
                                    "bfloat16",
                                    "float64", "grad enabled", "reference backend"])
def test_the_step_declines_what_it_does_not_compute(change, scripted_calls, python_path):
    model = random_model(num_hidden_layers=2)
    args = inputs(model, 2)
    attn = model.model.layers[1].attn
    if change == "subclass weight":
        attn.w1 = nn.Parameter(attn.w1.detach().as_subclass(Marked))
    elif change == "linear subclass":
        replacement = LinearWithBias(attn.key.in_features, attn.key.out_features, bias=False)
        replacement.weight = attn.key.weight
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


def test_scripting_shows_no_deprecation_warning(monkeypatch, recwarn):
    monkeypatch.setattr(rwkv7_step, "_scripted", None)
    assert rwkv7_step.scripted_block_step() is not None
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


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
