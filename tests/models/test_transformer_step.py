"""The Transformer's decode step without module calls (``TransformerModel.decode_step``,
``seqzoo/models/transformer/decoding.py``) against the general forward, bitwise: logits, keys and values, errors and
hook calls, in every variant and attention implementation, padded and not; and the cases where a part, a block or the
whole step must be called as modules (hooks, patched forwards, subclasses, wrappers, training, attention weights)."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqzoo.layers import mlp as mlp_module
from seqzoo.layers.attention import SelfAttention
from seqzoo.layers.norms import RMSNorm
from seqzoo.models.compat import output_cache
from seqzoo.models.transformer import decoding
from seqzoo.models.transformer import modeling_transformer as modeling
from tests.conftest import decode_step_inputs, tiny_model

VARIANTS = {
    "llama": {},
    "gpt2": dict(variant="gpt2"),
    "vaswani": dict(variant="vaswani", max_position_embeddings=64),
    "llama mha, biases": dict(num_key_value_heads=4, attention_bias=True, mlp_bias=True),
    "llama sinusoidal, scaled, post-norm": dict(position_embedding="sinusoidal", scale_embeddings=True,
                                                norm_position="post", max_position_embeddings=64),
    "gpt2 dropout": dict(variant="gpt2", dropout=0.3, attention_dropout=0.2),
}


def random_model(seed=0, attn="sdpa", **overrides):
    """A tiny Transformer with every parameter random (norm weights and biases too, which init sets to 1 and 0)."""
    model = tiny_model("transformer-tiny", seed=seed, **overrides)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            scale = 0.5 if parameter.dim() == 1 else parameter.shape[-1] ** -0.5
            parameter.copy_(torch.randn(parameter.shape, generator=gen) * scale + (parameter.dim() == 1))
    model.set_attn_implementation(attn)
    return model


@pytest.fixture
def inline_calls(monkeypatch):
    """How many blocks ran inline (not called as modules)."""
    calls = []
    real = decoding._inline_block

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(decoding, "_inline_block", spy)
    return calls


@pytest.fixture
def lean_steps(monkeypatch):
    """How many calls ran TransformerModel.decode_step (the lean step)."""
    calls = []
    real = modeling.TransformerModel.decode_step

    def spy(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(modeling.TransformerModel, "decode_step", spy)
    return calls


@pytest.fixture
def general(monkeypatch):
    """A switch that sends every decode step through the general forward."""
    def off():
        monkeypatch.setattr(modeling.TransformerModel, "takes_step", lambda *args, **kwargs: False)
    return off


def decode(model, batch, seed=3, **step_kwargs):
    """Prefill a prompt, feed four tokens one at a time (row 1 left-padded, two fed tokens padding where batch > 1);
    the logits of every step, the final keys and values of every layer, and the outputs' caches."""
    prompt, prompt_mask, steps, step_masks = decode_step_inputs(batch, model.config.vocab_size, seed)
    with torch.no_grad():
        cache = output_cache(model(prompt, attention_mask=prompt_mask, use_cache=True))
        mask, logits, caches = prompt_mask, [], []
        for t in range(steps.shape[1]):
            mask = torch.cat([mask, step_masks[:, t : t + 1]], dim=1)
            out = model(steps[:, t : t + 1], attention_mask=mask, cache=cache, **step_kwargs)
            logits.append(out.logits[:, -1])
            caches.append(output_cache(out))
    kv = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    return torch.stack(logits, 1), kv, caches


def assert_bitwise(fast, slow):
    (fast_logits, fast_kv, fast_caches), (slow_logits, slow_kv, slow_caches) = fast, slow
    assert torch.equal(fast_logits, slow_logits), (fast_logits - slow_logits).abs().max()
    for (fk, fv), (sk, sv) in zip(fast_kv, slow_kv, strict=True):
        assert torch.equal(fk, sk) and torch.equal(fv, sv)
    assert [c is None for c in fast_caches] == [c is None for c in slow_caches]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_step_equals_the_general_forward_bitwise(variant, batch, attn, inline_calls, general):
    model = random_model(attn=attn, **VARIANTS[variant])
    fast = decode(model, batch)
    assert len(inline_calls) == 4 * model.config.num_hidden_layers  # every block of every step ran inline
    general()
    slow = decode(model, batch)
    assert len(inline_calls) == 4 * model.config.num_hidden_layers
    assert_bitwise(fast, slow)


def test_the_step_equals_the_full_sequence(inline_calls):
    model = random_model()
    prompt, _, steps, _ = decode_step_inputs(1, model.config.vocab_size)
    fast_logits, _, _ = decode(model, 1)
    assert inline_calls
    ids = torch.cat([prompt, steps], dim=1)
    with torch.no_grad():
        full = model(ids).logits[:, prompt.shape[1]:]
    torch.testing.assert_close(fast_logits, full, atol=1e-5, rtol=1e-5)


def test_generate_takes_the_step_and_matches_the_general_forward(inline_calls, general):
    model = random_model()
    prompt, prompt_mask, _, _ = decode_step_inputs(3, model.config.vocab_size)
    kwargs = dict(attention_mask=prompt_mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    fast = model.generate(prompt, **kwargs)
    beams = model.generate(prompt, num_beams=3, **kwargs)
    torch.manual_seed(7)
    sampled = model.generate(prompt, **{**kwargs, "do_sample": True, "top_k": 20})
    assert len(inline_calls) == 3 * 5 * model.config.num_hidden_layers  # three runs of five steps after the prompt
    general()
    assert torch.equal(fast, model.generate(prompt, **kwargs))
    assert torch.equal(beams, model.generate(prompt, num_beams=3, **kwargs))
    torch.manual_seed(7)
    assert torch.equal(sampled, model.generate(prompt, **{**kwargs, "do_sample": True, "top_k": 20}))


def linear_of(model):
    return model.model.layers[1].self_attn.v_proj


@pytest.mark.parametrize("where", ["q linear", "o linear", "mlp linear", "attention", "attention pre", "norm",
                                   "mlp norm", "mlp", "block", "final norm", "embedding", "activation"])
def test_a_hook_anywhere_sees_every_call_and_the_same_values(where, inline_calls, general):
    def target(model):
        layer = model.model.layers[1]
        return {"q linear": layer.self_attn.q_proj, "o linear": layer.self_attn.o_proj,
                "mlp linear": layer.mlp.down_proj, "attention": layer.self_attn, "attention pre": layer.self_attn,
                "norm": layer.attn_norm, "mlp norm": layer.mlp_norm, "mlp": layer.mlp, "block": layer,
                "final norm": model.model.norm, "embedding": model.model.embed_tokens,
                "activation": layer.mlp.act_fn}[where]

    results = []
    for run in range(2):
        if run:
            general()
        model = random_model()
        seen = []
        module = target(model)
        if where == "attention pre":
            module.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
        else:
            module.register_forward_hook(
                lambda mod, args, out: seen.append((out[0] if isinstance(out, tuple) else out).clone()))
        results.append((decode(model, 3), seen))
    (fast, fast_seen), (slow, slow_seen) = results
    assert_bitwise(fast, slow)
    assert len(fast_seen) == len(slow_seen) == 5  # the prompt and four steps
    assert all(torch.equal(a, b) for a, b in zip(fast_seen, slow_seen, strict=True))


def test_the_blocks_around_a_hooked_block_still_run_inline(inline_calls):
    model = random_model()
    model.model.layers[0].register_forward_hook(lambda *args: None)
    decode(model, 1)
    assert len(inline_calls) == 4  # layer 1 of every step


def _patched(monkeypatch, cls, name, scale):
    real = getattr(cls, name)

    def patched(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out * scale
        if isinstance(out, tuple):
            return (out[0] * scale, *out[1:])
        out["last_hidden_state"] = out["last_hidden_state"] * scale  # the backbone's output
        return out

    monkeypatch.setattr(cls, name, patched)


PATCHES = {
    "nn.Linear.forward": (nn.Linear, "forward"),
    "SelfAttention.__call__": (SelfAttention, "__call__"),
    "GatedMLP.__call__": (mlp_module.GatedMLP, "__call__"),
    "RMSNorm.__call__": (RMSNorm, "__call__"),
    "SelfAttention.forward": (SelfAttention, "forward"),
    "TransformerBlock.forward": (modeling.TransformerBlock, "forward"),
    "RMSNorm.forward": (RMSNorm, "forward"),
    "GatedMLP.forward": (mlp_module.GatedMLP, "forward"),
    "TransformerModel.forward": (modeling.TransformerModel, "forward"),
}


@pytest.mark.parametrize("where", sorted(PATCHES))
def test_a_forward_replaced_on_the_class_runs(where, monkeypatch, general):
    cls, name = PATCHES[where]
    _patched(monkeypatch, cls, name, 1.5)
    fast = decode(random_model(), 3)
    general()
    slow = decode(random_model(), 3)
    assert_bitwise(fast, slow)
    monkeypatch.undo()
    plain = decode(random_model(), 3)
    assert not torch.equal(plain[0], fast[0])  # the patch did change the logits


def test_a_call_method_of_its_own_on_a_part_runs(monkeypatch, general):
    class CountingNorm(RMSNorm):
        calls = 0

        def __call__(self, *args, **kwargs):
            type(self).calls += 1
            return super().__call__(*args, **kwargs) * 2

    def build():
        model = random_model()
        old = model.model.layers[0].mlp_norm
        new = CountingNorm(old.weight.shape[0], old.eps)
        new.load_state_dict(old.state_dict())
        model.model.layers[0].mlp_norm = new
        return model

    fast = decode(build(), 1)
    assert CountingNorm.calls == 5
    general()
    assert_bitwise(fast, decode(build(), 1))


def _negated_forward(cls):
    return {"forward": lambda self, *args, **kwargs: _negated(cls.forward(self, *args, **kwargs))}


def _negated(out):
    return (-out[0], *out[1:]) if isinstance(out, tuple) else -out


# Each change to layer 1, and how many of the 2 x 4 blocks decoded still run inline (the changed block is called
# whole, or only the changed part is called as a module).
CHANGES = {"block subclass": 4, "attention subclass": 4, "linear subclass": 8, "mlp subclass": 8,
           "stateless other mlp": 8, "linear without weight parameter": 8, "weight shadowed on the instance": 8,
           "forward on instance": 8, "call_impl on instance": 8, "one layer training": 4, "dropout training": 8,
           "compiled norm": 8}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_what_it_does_not_run_inline_is_called(change, inline_calls, general):
    def build():
        model = random_model(dropout=0.3)
        layer = model.model.layers[1]
        if change == "block subclass":
            layer.__class__ = type("Block2", (modeling.TransformerBlock,), _negated_forward(modeling.TransformerBlock))
        elif change == "attention subclass":
            layer.self_attn.__class__ = type("Attention2", (SelfAttention,), _negated_forward(SelfAttention))
        elif change == "linear subclass":
            layer.self_attn.k_proj.__class__ = type("Linear2", (nn.Linear,), _negated_forward(nn.Linear))
        elif change == "mlp subclass":
            cls = type(layer.mlp)
            layer.mlp.__class__ = type("MLP2", (cls,), _negated_forward(cls))  # (its run is still GatedMLP's)
        elif change == "stateless other mlp":
            width = model.config.hidden_size
            layer.mlp = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        elif change == "linear without weight parameter":
            linear = layer.mlp.up_proj
            weight = linear.weight.detach().clone()
            del linear.weight
            linear.weight = weight * 2.0
        elif change == "weight shadowed on the instance":
            linear = layer.mlp.up_proj
            object.__setattr__(linear, "weight", linear.weight.detach() * 2.0)  # (forward reads the attribute)
        elif change == "forward on instance":
            linear = layer.self_attn.o_proj
            linear.forward = lambda x: F.linear(x, linear.weight, linear.bias) * 0.5
        elif change == "call_impl on instance":
            linear = layer.self_attn.q_proj
            real = linear._call_impl
            linear._call_impl = lambda *args, **kwargs: real(*args, **kwargs) * 0.5
        elif change == "one layer training":
            layer.train()
        elif change == "dropout training":
            layer.dropout.train()
        elif change == "compiled norm":
            def doubled(graph, example_inputs):  # a backend whose graphs are seen in the logits
                return lambda *args: [2 * out for out in graph(*args)]

            layer.mlp_norm.compile(backend=doubled)  # (torch's own modules, nn.Linear too, run uncompiled)
        return model

    torch.manual_seed(5)
    fast = decode(build(), 3)
    assert len(inline_calls) == CHANGES[change]
    general()
    torch.manual_seed(5)
    assert_bitwise(fast, decode(build(), 3))
    torch.manual_seed(5)
    assert not torch.equal(fast[0], decode(random_model(dropout=0.3), 3)[0])  # the change is seen in the logits


def test_a_global_module_hook_sees_every_module_call(general):
    counts = []
    for run in range(2):
        if run:
            general()
        model = random_model()
        seen = []
        handle = nn.modules.module.register_module_forward_hook(lambda mod, args, out: seen.append(type(mod)))
        try:
            decode(model, 1)
        finally:
            handle.remove()
        counts.append(seen)
    assert counts[0] == counts[1]


@pytest.mark.parametrize("step_kwargs", [dict(use_cache=False), dict(output_attentions=True),
                                         dict(output_hidden_states=True), dict(return_dict=False)])
def test_other_outputs_asked_for_are_the_general_forwards(step_kwargs, lean_steps, general):
    model = random_model(attn="eager")
    results = []
    for run in range(2):
        if run:
            general()
        prompt, prompt_mask, steps, step_masks = decode_step_inputs(3, model.config.vocab_size)
        with torch.no_grad():
            cache = output_cache(model(prompt, attention_mask=prompt_mask, use_cache=True))
            mask = torch.cat([prompt_mask, step_masks[:, :1]], dim=1)
            out = model(steps[:, :1], attention_mask=mask, cache=cache, **step_kwargs)
        results.append((out if isinstance(out, tuple) else out.to_tuple(), cache))
    # Only the tuple output is the lean step's; the others are the general forward's in both runs.
    assert len(lean_steps) == (1 if step_kwargs.get("return_dict") is False else 0)
    (fast, fast_cache), (slow, slow_cache) = results
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow, strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
        elif isinstance(a, tuple):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        else:  # the cache returned: the one passed, in both
            assert (a is fast_cache) and (b is slow_cache)
    for fast_layer, slow_layer in zip(fast_cache.layers, slow_cache.layers, strict=True):
        assert torch.equal(fast_layer.keys, slow_layer.keys) and torch.equal(fast_layer.values, slow_layer.values)


def test_attention_weights_asked_by_the_config_are_returned():
    model = random_model(attn="eager")
    model.config.output_attentions = True
    prompt, prompt_mask, steps, step_masks = decode_step_inputs(1, model.config.vocab_size)
    with torch.no_grad():
        cache = output_cache(model(prompt, use_cache=True))
        out = model(steps[:, :1], cache=cache)
    assert out.attentions is not None and len(out.attentions) == model.config.num_hidden_layers


def test_position_ids_given_are_used(lean_steps, general):
    model = random_model()
    prompt, _, steps, _ = decode_step_inputs(1, model.config.vocab_size)
    runs = []
    for run in range(2):
        if run:
            general()
        with torch.no_grad():
            logits = []
            for position, dtype in (([[5]], torch.long), ([[9]], torch.long), ([[9]], torch.int32)):
                cache = output_cache(model(prompt, use_cache=True))
                position_ids = torch.tensor(position, dtype=dtype)
                logits.append(model(steps[:, :1], cache=cache, position_ids=position_ids).logits)
        runs.append(logits)
    assert len(lean_steps) == 3
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    assert not torch.equal(runs[0][0], runs[0][1]) and torch.equal(runs[0][1], runs[0][2])


@pytest.mark.parametrize("bad", ["token id", "mask value", "mask length", "cache dtype", "batch"])
def test_bad_inputs_raise_the_general_forwards_errors_and_leave_the_cache(bad, lean_steps, general):
    messages = []
    for run in range(2):
        if run:
            general()
        model = random_model()
        prompt, prompt_mask, steps, _ = decode_step_inputs(2, model.config.vocab_size)
        with torch.no_grad():
            cache = output_cache(model(prompt, attention_mask=prompt_mask, use_cache=True))
        before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
        token, mask = steps[:, :1], torch.cat([prompt_mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        if bad == "token id":
            token = token.clone()
            token[1, 0] = model.config.vocab_size
        elif bad == "mask value":
            mask = mask.clone()
            mask[0, -1] = 2
        elif bad == "mask length":
            mask = mask[:, 1:]
        elif bad == "cache dtype":
            model.double()
        elif bad == "batch":
            token = token[:1]
            mask = mask[:1]
        with pytest.raises(ValueError) as error, torch.no_grad():
            model(token, attention_mask=mask, cache=cache)
        messages.append(str(error.value))
        assert len(lean_steps) == 1  # the first run's step was the lean one
        assert cache.get_seq_length() == prompt.shape[1]
        for layer, (keys, values) in zip(cache.layers, before, strict=True):
            assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    assert messages[0] == messages[1]


# What every lean step (the Transformer's, RWKV-7's, the classic models' and their plans) must leave to the module
# calls: torch function modes, a patched F.embedding, a patched __call__ or _call_impl.
LEAN_FAMILIES = ["transformer-tiny", "rwkv7-tiny", "lstm-tiny", "rnn-tiny"]


def decode_family(preset, batch=2):
    model = tiny_model(preset, seed=1)
    prompt, prompt_mask, steps, step_masks = decode_step_inputs(batch, model.config.vocab_size)
    with torch.no_grad():
        cache = output_cache(model(prompt, attention_mask=prompt_mask, use_cache=True))
        mask, logits = prompt_mask, []
        for t in range(steps.shape[1]):
            mask = torch.cat([mask, step_masks[:, t : t + 1]], dim=1)
            logits.append(model(steps[:, t : t + 1], attention_mask=mask, cache=cache).logits)
    return torch.cat(logits, 1)


def general_for(monkeypatch, preset):
    """Every decode step of ``preset``'s backbone through its general forward (no lean step, no plan)."""
    backbone_class = type(tiny_model(preset).model)
    monkeypatch.setattr(backbone_class, "takes_step", lambda *args, **kwargs: False)


class Recording(torch.overrides.TorchFunctionMode):
    """A torch function mode that records the functions it sees, and doubles F.embedding's output where asked."""

    def __init__(self, doubling=False):
        super().__init__()
        self.seen, self.doubling = [], doubling

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(getattr(func, "__name__", str(func)))
        out = func(*args, **(kwargs or {}))
        return out * 2 if self.doubling and func is F.embedding else out


@pytest.mark.parametrize("preset", LEAN_FAMILIES)
def test_a_torch_function_mode_sees_the_functions_the_modules_call(preset, monkeypatch):
    decode_family(preset)  # (a kernel's first call makes checks of its own once)
    runs = []
    for run in range(2):
        if run:
            general_for(monkeypatch, preset)
        with Recording(doubling=True) as mode:
            logits = decode_family(preset)
        runs.append((logits, mode.seen))
    (fast, fast_seen), (slow, slow_seen) = runs
    assert torch.equal(fast, slow)
    assert fast_seen == slow_seen and "embedding" in fast_seen


@pytest.mark.parametrize("patch", ["F.embedding", "F.linear", "torch.sigmoid", "nn.Linear.__call__",
                                   "nn.Embedding.__call__", "nn.Linear._call_impl", "nn.Module.__call__",
                                   "nn.Module._call_impl", "backbone.__call__", "mixer.forward", "mixer.__call__"])
@pytest.mark.parametrize("preset", LEAN_FAMILIES)
def test_a_patched_module_call_or_embedding_function_is_called(preset, patch, monkeypatch):
    calls = []

    def counted(real, scaled):
        def wrapper(*args, **kwargs):
            calls.append(1)
            out = real(*args, **kwargs)
            return out * 1.5 if scaled and isinstance(out, torch.Tensor) else out
        return wrapper

    model = tiny_model(preset)
    # (the classic models' layers are their mixers; the Transformer's and RWKV-7's blocks have tests of their own)
    mixer_class = type(model.model.layers[0]) if preset in ("lstm-tiny", "rnn-tiny") else None
    if patch.startswith("mixer.") and mixer_class is None:
        pytest.skip("a block of named parts: its parts' classes are patched in the Transformer's and RWKV-7's tests")
    owner, name = {"F.embedding": (F, "embedding"), "F.linear": (F, "linear"), "torch.sigmoid": (torch, "sigmoid"),
                   "nn.Linear.__call__": (nn.Linear, "__call__"), "nn.Embedding.__call__": (nn.Embedding, "__call__"),
                   "nn.Linear._call_impl": (nn.Linear, "_call_impl"), "nn.Module.__call__": (nn.Module, "__call__"),
                   "nn.Module._call_impl": (nn.Module, "_call_impl"),
                   "backbone.__call__": (type(model.model), "__call__"),
                   "mixer.forward": (mixer_class, "forward"), "mixer.__call__": (mixer_class, "__call__")}[patch]
    scaled = patch not in ("nn.Module.__call__", "nn.Module._call_impl", "torch.sigmoid")
    runs = []
    for run in range(2):
        with monkeypatch.context() as patched:
            if run:
                general_for(patched, preset)
            patched.setattr(owner, name, counted(getattr(owner, name), scaled))
            del calls[:]
            runs.append((decode_family(preset), len(calls)))
    (fast, fast_calls), (slow, slow_calls) = runs
    assert torch.equal(fast, slow)
    assert fast_calls == slow_calls
    assert slow_calls > 0 or patch == "torch.sigmoid"  # (the Transformer's MLP calls no sigmoid)
    if patch.startswith("mixer."):  # every layer's call, the prompt's and each of the four steps' (the general
        assert slow_calls == 5 * model.config.num_hidden_layers  # forward's one-token steps skip them too if allowed)


@pytest.mark.parametrize("preset", LEAN_FAMILIES)
def test_a_call_impl_put_on_the_head_instance_is_called(preset, monkeypatch):
    runs = []
    for run in range(2):
        with monkeypatch.context() as patched:
            if run:
                general_for(patched, preset)
            calls = []
            real_build = tiny_model

            def build(name, seed=0, **overrides):
                model = real_build(name, seed=seed, **overrides)
                head = model.lm_head
                real = head._call_impl
                head._call_impl = lambda *args, **kwargs: (calls.append(1), real(*args, **kwargs) * 2)[1]
                return model

            patched.setattr(sys.modules[__name__], "tiny_model", build)
            runs.append((decode_family(preset), len(calls)))
    (fast, fast_calls), (slow, slow_calls) = runs
    assert torch.equal(fast, slow) and fast_calls == slow_calls == 5


@pytest.mark.parametrize("preset", LEAN_FAMILIES)
def test_token_ids_of_a_tensor_subclass_see_the_embedding_function(preset, monkeypatch):
    class Ids(torch.Tensor):
        seen = []

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func is F.embedding:
                cls.seen.append(1)
            return super().__torch_function__(func, types, args, kwargs or {})

    runs = []
    for run in range(2):
        if run:
            general_for(monkeypatch, preset)
        model = tiny_model(preset, seed=1)
        prompt, _, steps, _ = decode_step_inputs(2, model.config.vocab_size)
        del Ids.seen[:]
        with torch.no_grad():
            cache = output_cache(model(prompt, use_cache=True))
            logits = model(steps[:, :1].as_subclass(Ids), cache=cache).logits
        runs.append((logits.as_subclass(torch.Tensor), len(Ids.seen)))
    (fast, fast_seen), (slow, slow_seen) = runs
    assert torch.equal(fast, slow) and fast_seen == slow_seen > 0


def test_a_function_mode_entered_after_a_planned_step_sees_the_functions(monkeypatch):
    runs = []
    for run in range(2):
        if run:
            general_for(monkeypatch, "lstm-tiny")
        model = tiny_model("lstm-tiny", seed=1)
        prompt, _, steps, _ = decode_step_inputs(2, model.config.vocab_size)
        with torch.no_grad():
            cache = output_cache(model(prompt, use_cache=True))
            model(steps[:, :1], cache=cache)  # (planned, in the first run)
            with Recording() as mode:
                logits = model(steps[:, 1:2], cache=cache).logits
        runs.append((logits, mode.seen))
    (fast, fast_seen), (slow, slow_seen) = runs
    assert torch.equal(fast, slow) and fast_seen == slow_seen and "embedding" in fast_seen


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # (torch marks TorchScript deprecated)
def test_torchscript_scripts_the_mlps():
    for cls in (mlp_module.MLP, mlp_module.GatedMLP):
        mlp = cls(8, 16, "silu").eval()
        x = torch.randn(2, 3, 8)
        assert torch.equal(torch.jit.script(mlp)(x), mlp(x))


@pytest.mark.parametrize("where", ["class", "instance"])
def test_a_patched_mlp_run_is_not_taken_for_its_forward(where, monkeypatch, general):
    def build():
        model = random_model()
        if where == "instance":
            mlp = model.model.layers[1].mlp
            mlp.run = lambda x, project: torch.zeros_like(x)
        return model

    if where == "class":
        monkeypatch.setattr(mlp_module.GatedMLP, "run", lambda self, x, project: torch.zeros_like(x))
    fast = decode(build(), 2)
    general()
    assert_bitwise(fast, decode(build(), 2))


def test_a_backbone_with_a_decode_step_of_the_older_signature_still_decodes(monkeypatch):
    # decode_step(input_ids, attention_mask, cache): position_ids go only to a class that reads them
    from seqzoo.models.classic import modeling_classic

    real = modeling_classic.ClassicRecurrentModel.decode_step
    calls = []

    def decode_step(self, input_ids, attention_mask, cache):
        calls.append(1)
        return real(self, input_ids, attention_mask, cache)

    monkeypatch.setattr(modeling_classic.ClassicRecurrentModel, "decode_step", decode_step)
    model = tiny_model("lstm-tiny")
    prompt, _, steps, _ = decode_step_inputs(2, model.config.vocab_size)
    with torch.no_grad():
        cache = output_cache(model(prompt, use_cache=True))
        with_positions = model(steps[:, :1], cache=cache, position_ids=torch.full((2, 1), 5)).logits
        cache = output_cache(model(prompt, use_cache=True))
        without = model(steps[:, :1], cache=cache).logits
    assert len(calls) == 2 and torch.equal(with_positions, without)  # (a recurrent model reads no positions)
