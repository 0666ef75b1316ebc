"""The classic models' one-token decode step (``seqzoo.layers.recurrent.step_stack``: every layer's fused cell in a
row, without the per-layer module and dispatch calls) against the layer-by-layer path and against torch.nn's
multi-layer RNN/LSTM/GRU stepped with the model's weights; and the cases where it must step aside (a forced or
plugin backend, hooks, autocast, training)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqzoo.kernels import registry, use_backend
from seqzoo.kernels.rnn_cells import fused
from seqzoo.models.compat import output_cache
from tests.conftest import decode_step_inputs, tiny_model

VARIANTS = {
    "rnn-tanh": ("rnn-tiny", {"nonlinearity": "tanh"}),
    "rnn-relu": ("rnn-tiny", {"nonlinearity": "relu"}),
    "lstm": ("lstm-tiny", {}),
    "gru": ("gru-tiny", {}),
    "gru-untied": ("gru-tiny", {"tie_word_embeddings": False, "embedding_size": 24, "num_hidden_layers": 3}),
}
TORCH_NN = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@pytest.fixture
def stacked_calls(monkeypatch):
    """How many times the stacked step ran (an entry per call: whether layer 0's projection was given, looked up)."""
    calls = []
    real = fused.step_layers

    def spy(*args, **kwargs):
        calls.append((args[5] if len(args) > 5 else kwargs.get("input_gates")) is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(fused, "step_layers", spy)
    return calls


def decode(model, prompt, prompt_mask, steps, step_masks):
    """Prefill ``prompt`` then feed ``steps`` (B, N) one token at a time; returns the logits of every step and the
    final cache's per-layer states."""
    with torch.no_grad():
        out = model(prompt, attention_mask=prompt_mask, use_cache=True)
        cache, mask = output_cache(out), prompt_mask
        logits = []
        for t in range(steps.shape[1]):
            mask = torch.cat([mask, step_masks[:, t : t + 1]], dim=1)
            out = model(steps[:, t : t + 1], attention_mask=mask, cache=cache, use_cache=True)
            cache = output_cache(out)
            logits.append(out.logits[:, -1])
    states = [dict(cache.layer(i)) for i in range(model.config.num_hidden_layers)]
    return torch.stack(logits, 1), states


def inputs(model, batch):
    return decode_step_inputs(batch, model.config.vocab_size - 3)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stacked_step_equals_the_layer_by_layer_path(variant, batch, stacked_calls):
    preset, overrides = VARIANTS[variant]
    model = tiny_model(preset, **overrides)
    args = inputs(model, batch)
    fast_logits, fast_states = decode(model, *args)
    assert len(stacked_calls) == 4
    # A forward hook on a layer must be called, so it sends every step through the layers one by one.
    seen = []
    handle = model.model.layers[-1].register_forward_hook(lambda *a: seen.append(1))
    try:
        slow_logits, slow_states = decode(model, *args)
    finally:
        handle.remove()
    assert len(stacked_calls) == 4 and len(seen) == 5
    torch.testing.assert_close(fast_logits, slow_logits, rtol=0, atol=0)
    for fast, slow in zip(fast_states, slow_states):
        assert fast.keys() == slow.keys()
        for name in fast:
            torch.testing.assert_close(fast[name], slow[name], rtol=0, atol=0)


def test_a_padded_token_leaves_every_layer_state_unchanged(stacked_calls):
    model = tiny_model("lstm-tiny")
    prompt = torch.randint(0, 90, (2, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = output_cache(model(prompt, use_cache=True))
        before = [{k: v.clone() for k, v in cache.layer(i).items()} for i in range(2)]
        out = model(torch.tensor([[5], [6]]), attention_mask=torch.tensor([[1] * 4 + [0], [1] * 5]), cache=cache)
    assert stacked_calls
    for i in range(2):
        for name in ("h", "c"):
            assert torch.equal(cache.layer(i)[name][0], before[i][name][0])
            assert not torch.equal(cache.layer(i)[name][1], before[i][name][1])
    assert out.logits.shape == (2, 1, model.config.vocab_size)


def twin_logits(model, twin, prompt, steps):
    """The logits of each step (B, T, V) and the final state of torch.nn's twin stepped token by token after the
    prompt, through the model's own embedding and head."""
    embed, head = model.model.embed_tokens.weight, model.lm_head
    with torch.no_grad():
        _, state = twin(F.embedding(prompt, embed))
        expected = []
        for t in range(steps.shape[1]):
            y, state = twin(F.embedding(steps[:, t : t + 1], embed), state)
            expected.append(head(y[:, -1]))
    return torch.stack(expected, 1), state


def torch_nn_twin(model):
    config = model.config
    kind = config.mixer_type
    extra = {"nonlinearity": config.nonlinearity} if kind == "rnn" else {}
    twin = TORCH_NN[kind](config.embedding_size, config.hidden_size, config.num_hidden_layers, batch_first=True,
                          **extra).double()
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(twin, f"{name}_l{i}").copy_(getattr(layer, name))
    return twin


@pytest.mark.parametrize("table", ["never", "always"])  # layer 0's projection multiplied, or looked up by token
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stacked_step_equals_torch_nn_stepped(variant, batch, table, stacked_calls):
    preset, overrides = VARIANTS[variant]
    model = tiny_model(preset, **overrides).double().set_input_table(table)
    twin = torch_nn_twin(model)
    prompt, _, steps, _ = inputs(model, batch)
    ones = torch.ones(batch, 5 + steps.shape[1], dtype=torch.long)
    logits, states = decode(model, prompt, ones[:, :5], steps, ones[:, 5:])
    assert len(stacked_calls) == steps.shape[1]
    assert stacked_calls == [table == "always"] * steps.shape[1]
    expected, state = twin_logits(model, twin, prompt, steps)
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
    names = ("h", "c") if model.config.mixer_type == "lstm" else ("h",)
    state = state if isinstance(state, tuple) else (state,)
    for name, stacked in zip(names, state):
        for i, layer_state in enumerate(states):
            torch.testing.assert_close(layer_state[name], stacked[i], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("op,preset", [("gru", "gru-tiny"), ("rnn", "rnn-tiny"), ("lstm", "lstm-tiny")])
def test_a_forced_reference_backend_runs_every_layer(op, preset, stacked_calls, monkeypatch):
    model = tiny_model(preset)
    calls = []
    reference = registry.get_kernel(op, "reference")
    monkeypatch.setattr(registry.get_op(op).backends["reference"], "_loaded",
                        lambda *a, **k: calls.append(1) or reference(*a, **k))
    prompt, mask, steps, step_masks = inputs(model, 2)
    with use_backend(op, "reference"):
        decode(model, prompt, mask, steps, step_masks)
    assert not stacked_calls
    assert len(calls) == 2 * (1 + steps.shape[1])  # every layer, the prompt and each step


def test_a_plugin_backend_of_higher_priority_is_called_for_each_layer(stacked_calls):
    model = tiny_model("gru-tiny")
    calls = []

    def plugin(*args, **kwargs):
        calls.append(1)
        return fused.gru(*args, **kwargs)

    registry.register_backend("gru", "test_plugin", plugin, priority=50)
    try:
        decode(model, *inputs(model, 2))
    finally:
        registry.unregister_backend("gru", "test_plugin")
    assert not stacked_calls and len(calls) == 2 * 5


def test_autocast_and_training_run_layer_by_layer(stacked_calls):
    model = tiny_model("gru-tiny")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = decode(model, *inputs(model, 2))
    assert not stacked_calls and torch.isfinite(logits).all()
    model.train()
    decode(model, *inputs(model, 2))
    assert not stacked_calls


class Marked(torch.Tensor):
    """A tensor subclass, as quantised weights are (torchao's): the fused backend declines it."""


@pytest.mark.parametrize("layer", [0, 1])
def test_a_layer_with_subclass_weights_runs_layer_by_layer(layer, stacked_calls):
    model = tiny_model("gru-tiny")
    plain_logits, _ = decode(model, *inputs(model, 2))
    assert stacked_calls
    stacked_calls.clear()
    cell = model.model.layers[layer]
    cell.weight_ih = nn.Parameter(cell.weight_ih.detach().as_subclass(Marked))
    logits, _ = decode(model, *inputs(model, 2))
    assert not stacked_calls
    torch.testing.assert_close(logits, plain_logits, rtol=1e-6, atol=1e-6)  # the reference backend, for that layer


@pytest.fixture
def decode_branch(monkeypatch):
    """One entry per call of the classic backbone's decode branch (the common decode step), made on entry, and per
    step a cache's plan ran (seqzoo/models/classic/step_plan.py: the same step, planned by the branch's first)."""
    from seqzoo.models.classic import modeling_classic
    from seqzoo.models.classic.step_plan import StepPlan

    taken = []
    real, planned = modeling_classic.prepare_step_inputs, StepPlan.step

    def spy(*args):
        taken.append(True)
        return real(*args)

    def plan_spy(*args):
        try:
            out = planned(*args)
        except Exception:
            taken.append(True)  # (the plan made the branch's checks, which raised)
            raise
        if out is not None:
            taken.append(True)
        return out

    monkeypatch.setattr(modeling_classic, "prepare_step_inputs", spy)
    monkeypatch.setattr(StepPlan, "step", plan_spy)
    return taken


def test_generate_steps_take_the_decode_branch_and_match_a_full_recompute(decode_branch):
    model = tiny_model("gru-tiny")
    prompt = torch.tensor([[5, 9, 2, 7], [0, 0, 4, 8]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                             pad_token_id=model.config.pad_token_id)
        full = torch.cat([mask, torch.ones(2, 4, dtype=torch.long)], dim=1)
        logits = model(out[:, :-1], attention_mask=full).logits  # no cache: the sequence path
    assert decode_branch == [True] * 4
    torch.testing.assert_close(logits[:, 3:].argmax(-1), out[:, 4:])


@pytest.mark.parametrize("call", ["hidden_states", "config hidden states", "embeds", "training", "bidirectional"])
def test_the_decode_branch_leaves_other_calls_to_the_generic_forward(call, decode_branch):
    model = tiny_model("lstm-tiny")
    if call == "bidirectional":
        from seqzoo.cache import SeqzooCache
        from seqzoo.models.classic.modeling_classic import ClassicRecurrentModel

        config = type(model.config).from_dict({**model.config.to_dict(), "bidirectional": True})
        encoder = ClassicRecurrentModel(config).eval()
        with pytest.raises(ValueError, match="is bidirectional"):
            encoder(torch.tensor([[3]]), cache=SeqzooCache.for_model(model), use_cache=True)
        assert not decode_branch
        return
    with torch.no_grad():
        cache = output_cache(model(torch.tensor([[1, 2, 3]]), use_cache=True))
        kwargs = {"hidden_states": {"output_hidden_states": True},
                  "embeds": {"inputs_embeds": model.model.embed_tokens(torch.tensor([[4]]))}}.get(call, {})
        if call == "training":
            model.train()
        elif call == "config hidden states":  # asked for by the config, not the call
            model.config.output_hidden_states = True
        ids = None if call == "embeds" else torch.tensor([[4]])
        out = model(ids, cache=cache, **kwargs)
    assert not any(decode_branch)
    assert cache.get_seq_length() == 4
    if call in ("hidden_states", "config hidden states"):
        assert len(out.hidden_states) == model.config.num_hidden_layers + 1


BAD_STEPS = {
    "id past the vocabulary": (lambda v: torch.tensor([[v], [1]]), None),
    "negative id": (lambda v: torch.tensor([[-1], [1]]), None),
    "float ids": (lambda v: torch.tensor([[1.0], [2.0]]), None),
    "another batch size": (lambda v: torch.tensor([[1]]), None),
    "mask of 2": (lambda v: torch.tensor([[1], [2]]), torch.tensor([[1, 1, 1, 2], [1, 1, 1, 1]])),
    "mask too long": (lambda v: torch.tensor([[1], [2]]), torch.ones(2, 5, dtype=torch.long)),
    "mask of another batch": (lambda v: torch.tensor([[1], [2]]), torch.ones(3, 4, dtype=torch.long)),
    "bool ids": (lambda v: torch.tensor([[True], [False]]), None),
}


@pytest.mark.parametrize("bad", sorted(BAD_STEPS))
def test_a_bad_decode_step_raises_as_the_generic_forward_and_leaves_the_cache(bad, decode_branch):
    model = tiny_model("rnn-tiny")
    ids, mask = BAD_STEPS[bad]
    ids = ids(model.config.vocab_size)
    errors = []
    for generic in (False, True):
        with torch.no_grad():
            cache = output_cache(model(torch.tensor([[1, 2, 3], [4, 5, 6]]), use_cache=True))
            before = [cache.layer(i)["h"].clone() for i in range(2)]
            # Asking for the hidden states sends the step through the generic forward.
            with pytest.raises((ValueError, TypeError)) as err:
                model(ids, attention_mask=mask, cache=cache, output_hidden_states=generic)
        errors.append(str(err.value))
        assert cache.get_seq_length() == 3
        assert all(torch.equal(cache.layer(i)["h"], before[i]) for i in range(2))
    assert errors[0] == errors[1]
    assert decode_branch == [True]  # the first call raised inside the branch, the second never entered it


OTHER_CALLS = {
    "1-d ids": ({"input_ids": torch.tensor([1, 2])}, "input_ids must have shape (batch, sequence_length)"),
    "ids and embeds": ({"input_ids": torch.tensor([[1], [2]]), "inputs_embeds": torch.zeros(2, 1, 32)},
                       "pass exactly one of input_ids or inputs_embeds"),
    "position_ids of another shape": ({"input_ids": torch.tensor([[1], [2]]), "position_ids": torch.zeros(2, 3)},
                                      "position_ids"),
}


@pytest.mark.parametrize("call", sorted(OTHER_CALLS))
def test_a_bad_call_the_decode_branch_does_not_take_raises_the_generic_error(call, decode_branch):
    """Calls continuing a cache that are not a plain step (the decode branch must not take them, nor skip what the
    generic forward checks): the generic forward's error, and the cache as it was."""
    model = tiny_model("rnn-tiny")
    kwargs, message = OTHER_CALLS[call]
    with torch.no_grad():
        cache = output_cache(model(torch.tensor([[1, 2, 3], [4, 5, 6]]), use_cache=True))
        before = [cache.layer(i)["h"].clone() for i in range(2)]
        with pytest.raises(ValueError, match=re.escape(message)):
            model(cache=cache, **kwargs)
    assert cache.get_seq_length() == 3 and not decode_branch
    assert all(torch.equal(cache.layer(i)["h"], before[i]) for i in range(2))


@pytest.mark.parametrize("layers", ["stacked", "reference backend", "subclass weights", "hooked"])
def test_each_decode_step_checks_and_embeds_once_however_its_layers_run(layers, decode_branch, stacked_calls,
                                                                       monkeypatch):
    """The decode branch runs the layers one by one itself when the stacked step declines (a forced backend,
    quantised weights, a hook): the embedding (and its hooks) and the id check run once per token, and the step
    gives the layer-by-layer logits."""
    import seqzoo.models.inputs as model_inputs

    model = tiny_model("lstm-tiny")
    prompt, mask, steps, step_masks = inputs(model, 2)
    expected, expected_states = decode(model, prompt, mask, steps, step_masks)
    stacked_calls.clear()
    decode_branch.clear()
    if layers == "subclass weights":
        cell = model.model.layers[1]
        cell.weight_hh = nn.Parameter(cell.weight_hh.detach().as_subclass(Marked))
    elif layers == "hooked":
        model.model.layers[0].register_forward_hook(lambda *a: None)
    seen, checked = [], []
    model.model.embed_tokens.register_forward_hook(lambda module, args, out: seen.append(out.shape[1]))
    real_check = model_inputs.check_token_ids
    monkeypatch.setattr(model_inputs, "check_token_ids", lambda *a: checked.append(1) or real_check(*a))
    context = use_backend("lstm", "reference") if layers == "reference backend" else torch.no_grad()
    with context:
        logits, states = decode(model, prompt, mask, steps, step_masks)
    assert seen == [5, 1, 1, 1, 1] and len(checked) == 5 and len(decode_branch) == 4
    assert len(stacked_calls) == (4 if layers == "stacked" else 0)
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-6)
    for state, expected_state in zip(states, expected_states):
        for name in state:
            torch.testing.assert_close(state[name], expected_state[name], rtol=1e-6, atol=1e-6)


def test_a_forward_replaced_on_a_layer_is_called(stacked_calls):
    """accelerate's hooks (offloading, device placement) replace a module's forward on the instance: the step must
    call it, so the layers run one by one."""
    model = tiny_model("gru-tiny")
    plain, _ = decode(model, *inputs(model, 2))
    stacked_calls.clear()
    layer = model.model.layers[1]
    calls = []
    original = layer.forward

    def wrapped(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    layer.forward = wrapped
    logits, _ = decode(model, *inputs(model, 2))
    assert not stacked_calls and len(calls) == 5
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)


def test_a_backbone_forward_replaced_on_the_class_is_called(monkeypatch, decode_branch):
    """A library or a user patching ``ClassicRecurrentModel.forward`` on the class: the patched forward runs at every
    decode step (the causal LM's head must not call the backbone's step itself, skipping it)."""
    from seqzoo.models.classic.modeling_classic import ClassicRecurrentModel

    model = tiny_model("gru-tiny")
    original = ClassicRecurrentModel.forward
    calls = []

    def patched(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ClassicRecurrentModel, "forward", patched)
    decode(model, *inputs(model, 2))
    assert len(calls) == 5 and not decode_branch  # the prompt and every step, each by the generic forward


def test_a_compiled_layer_is_called(stacked_calls):
    """``layer.compile()`` makes the layer's call run the compiled graph: the step must call it (seen here by
    replacing the compiled call with a counting one, without compiling)."""
    model = tiny_model("rnn-tiny")
    plain, _ = decode(model, *inputs(model, 2))
    stacked_calls.clear()
    layer = model.model.layers[0]
    layer.compile()
    calls = []
    layer._compiled_call_impl = lambda *a, **k: calls.append(1) or layer._call_impl(*a, **k)
    logits, _ = decode(model, *inputs(model, 2))
    assert not stacked_calls and len(calls) == 5
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.uint32, torch.int16, torch.int32])
@pytest.mark.parametrize("count", [1, 65])
def test_token_ids_of_any_integer_dtype_and_count_are_taken(dtype, count):
    model = tiny_model("gru-tiny")
    ids = torch.randint(0, 90, (1, count), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
        torch.testing.assert_close(model(ids.to(dtype)).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("count", [1, 64, 65, 300])
def test_token_ids_are_checked_at_every_count(count):
    from seqzoo.models.inputs import check_token_ids

    ids = torch.zeros(1, count, dtype=torch.long)
    check_token_ids(ids, 10)
    check_token_ids(ids.to(torch.uint32), 10)
    with pytest.raises(ValueError, match="token id 10, outside the vocabulary"):
        check_token_ids(torch.full((1, count), 10, dtype=torch.uint32), 10)
    for bad, shown in ((10, 10), (-2, -2)):
        ids[0, count // 2] = bad
        with pytest.raises(ValueError, match=f"token id {shown}, outside the vocabulary"):
            check_token_ids(ids, 10)
        ids[0, count // 2] = 9
        check_token_ids(ids, 10)


class CountingLinear(nn.Linear):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


HEAD_ROUTES = ["plain", "backbone hook", "backbone forward replaced", "global hook", "head hook", "head subclass",
               "backbone subclass", "backbone wrapper", "backbone compiled", "head compiled"]


class Wrapper(nn.Module):
    """A module put in the backbone's place that hands attribute reads on to it (as FSDP1's wrapper does)."""

    def __init__(self, inner, seen):
        super().__init__()
        self.inner, self.seen = inner, seen

    def forward(self, *args, **kwargs):
        self.seen.append("backbone")
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


@pytest.mark.parametrize("route", HEAD_ROUTES)
def test_the_head_runs_the_backbone_step_itself_only_when_nothing_hooks_a_skipped_call(route, monkeypatch):
    """A decode step of a classic causal LM skips the backbone's module call and runs the embedding and vocabulary
    head's operations directly, unless something would have seen those calls: a hook on them (or on every module),
    a forward replaced on the backbone (accelerate), a head of another class (peft, quantisation). Whatever runs,
    the logits are the same."""
    from torch.nn.modules.module import register_module_forward_hook

    from seqzoo.models.classic import modeling_classic

    model = tiny_model("gru-tiny", tie_word_embeddings=False)
    plain, _ = decode(model, *inputs(model, 2))
    # Counted where the backbone's forward starts (a forward replaced on the class would itself be called every step).
    backbone_forwards = []
    real_start = modeling_classic.backbone_cache_argument
    monkeypatch.setattr(modeling_classic, "backbone_cache_argument",
                        lambda *a: backbone_forwards.append(1) or real_start(*a))
    seen = []  # the modules whose calls something saw, per call
    if route == "backbone hook":
        model.model.register_forward_hook(lambda module, args, out: seen.append("backbone"))
    elif route == "backbone forward replaced":
        original = model.model.forward
        model.model.forward = lambda *a, **k: seen.append("backbone") or original(*a, **k)
    elif route == "global hook":
        names = {model.model: "backbone", model.model.embed_tokens: "embedding", model.lm_head: "head"}
        handle = register_module_forward_hook(lambda module, args, out: seen.append(names.get(module)))
    elif route == "head hook":
        model.lm_head.register_forward_hook(lambda module, args, out: seen.append("head"))
    elif route == "head subclass":
        head = CountingLinear(model.lm_head.in_features, model.lm_head.out_features, bias=False)
        head.weight = model.lm_head.weight
        model.lm_head = head
        CountingLinear.calls = 0
    elif route == "backbone subclass":
        class Subclassed(type(model.model)):
            def forward(self, *args, **kwargs):
                seen.append("backbone")
                return super().forward(*args, **kwargs)

        model.model.__class__ = Subclassed
    elif route == "backbone wrapper":
        model.model = Wrapper(model.model, seen)
    elif route in ("backbone compiled", "head compiled"):
        # module.compile() makes every call run torch.compile(module._call_impl): seen here without compiling.
        module = model.model if route == "backbone compiled" else model.lm_head
        module.compile()
        name = route.split()[0]
        module._compiled_call_impl = lambda *a, m=module, **k: seen.append(name) or m._call_impl(*a, **k)
    try:
        logits, _ = decode(model, *inputs(model, 2))
    finally:
        if route == "global hook":
            handle.remove()
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)
    # The prompt and four steps: the prompt always through the backbone's module call.
    skipped = route in ("plain", "head hook", "head subclass", "head compiled")
    assert len(backbone_forwards) == (1 if skipped else 5)
    if route == "global hook":
        assert [name for name in seen if name] == ["embedding", "backbone", "head"] * 5
    elif route == "head subclass":
        assert CountingLinear.calls == 5
    else:
        assert seen == {"plain": [], "head hook": ["head"] * 5, "head compiled": ["head"] * 5}.get(
            route, ["backbone"] * 5)


@pytest.mark.parametrize("module", ["embedding", "embedding with max_norm", "embedding scaling its gradient",
                                    "embedding without padding", "linear", "linear without bias"])
def test_calling_a_plain_module_directly_is_its_forward(module):
    from seqzoo.models.decode_step import call_plainly

    torch.manual_seed(0)
    if module.startswith("embedding"):
        build = lambda: nn.Embedding(  # noqa: E731
            11, 6, padding_idx=None if "without padding" in module else 3,
            max_norm=0.5 if "max_norm" in module else None, scale_grad_by_freq="scaling" in module)
        x = torch.tensor([[3, 4, 10], [0, 4, 1]])
    else:
        build = lambda: nn.Linear(6, 5, bias=module == "linear")  # noqa: E731
        x = torch.randn(2, 3, 6)
    torch.manual_seed(1)
    direct = build()
    torch.manual_seed(1)
    called = build()
    out = call_plainly(direct, x)
    torch.testing.assert_close(out, called(x), rtol=0, atol=0)
    torch.testing.assert_close(direct.weight, called.weight, rtol=0, atol=0)  # max_norm renormalises in place
    if "max_norm" in module:
        assert direct.weight[4].norm() <= 0.5 + 1e-6
    # The same gradients: none to the padding row, a repeated token's scaled by its count.
    grad = torch.randn_like(out)
    out.backward(grad)
    called(x).backward(grad)
    torch.testing.assert_close(direct.weight.grad, called.weight.grad, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [nn.Linear, nn.Embedding])
def test_a_forward_replaced_on_the_module_class_is_called(cls, monkeypatch):
    from seqzoo.models.decode_step import call_plainly

    module = nn.Linear(6, 5) if cls is nn.Linear else nn.Embedding(11, 6)
    x = torch.randn(2, 6) if cls is nn.Linear else torch.tensor([[3, 4]])
    original = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, x: original(self, x) * 2)
    torch.testing.assert_close(call_plainly(module, x), module(x), rtol=0, atol=0)


@pytest.mark.parametrize("cls", [nn.Linear, nn.Embedding, nn.LayerNorm])
@pytest.mark.parametrize("how", ["function", "functools.wraps"])
def test_a_forward_put_on_the_class_before_seqzoo_was_imported_is_called(cls, how, monkeypatch):
    """seqzoo's table of torch's own forwards is built at import; a patch put on the class before (by a profiler or a
    quantiser imported first) must not be taken for torch's: the shortcut then calls the module."""
    import functools

    from seqzoo.layers import rwkv7_step
    from seqzoo.layers.mixer import torch_forward
    from seqzoo.models import decode_step

    assert torch_forward(cls) is cls.forward  # torch's own, unpatched
    original = cls.forward

    def patched(self, x):
        return original(self, x) * 2

    if how == "functools.wraps":
        patched = functools.wraps(original)(patched)
    monkeypatch.setattr(cls, "forward", patched)
    assert torch_forward(cls) is not patched
    # The tables as an import after the patch builds them:
    monkeypatch.setattr(decode_step, "_PLAIN_FORWARDS",
                        {kind: torch_forward(kind) for kind in (nn.Linear, nn.Embedding)})
    monkeypatch.setattr(rwkv7_step, "_FORWARDS", tuple((kind, name, torch_forward(kind) if kind.__module__.startswith(
        "torch.") else function) for kind, name, function in rwkv7_step._FORWARDS))
    if cls is not nn.LayerNorm:
        module = nn.Linear(6, 5) if cls is nn.Linear else nn.Embedding(11, 6)
        x = torch.randn(2, 6) if cls is nn.Linear else torch.tensor([[3, 4]])
        torch.testing.assert_close(decode_step.call_plainly(module, x), module(x), rtol=0, atol=0)
    # Whole decode steps: the patched forward runs in the shortcut as in the general forward.
    for preset in ("gru-tiny", "rwkv7-tiny"):
        model = tiny_model(preset, tie_word_embeddings=False)
        calls = []
        monkeypatch.setattr(cls, "forward", lambda self, x, f=patched: calls.append(1) or f(self, x))
        monkeypatch.setattr(decode_step, "_PLAIN_FORWARDS",
                            {kind: torch_forward(kind) for kind in (nn.Linear, nn.Embedding)})
        with torch.no_grad():
            cache = output_cache(model(torch.tensor([[5, 9, 12]]), use_cache=True))
            calls.clear()
            model(torch.tensor([[3]]), cache=cache)
            step_calls = len(calls)
            calls.clear()
            model(torch.tensor([[3]]), cache=cache, output_hidden_states=True)  # the general path
        assert step_calls == len(calls), (preset, step_calls, len(calls))
        assert step_calls or (cls is nn.LayerNorm and preset == "gru-tiny")  # (the GRU has no norm)


def test_torchs_own_forward_is_recognised_in_an_install_of_compiled_files_only(tmp_path, monkeypatch):
    # Some slim images ship .pyc files without their .py: co_filename then keeps the source's path at compile time
    # and __file__ is the .pyc's. torch's own forward must still be recognised there (else no decode shortcut runs).
    import compileall
    import importlib
    import sys

    from seqzoo.layers.mixer import torch_forward

    package = tmp_path / "sourceless_torchlike"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "linear.py").write_text("from torch import nn\n\nclass Linear(nn.Module):\n"
                                       "    def forward(self, x):\n        return x\n")
    assert compileall.compile_dir(str(package), quiet=1, legacy=True)
    for source in package.glob("*.py"):
        source.unlink()
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("sourceless_torchlike.linear")
    try:
        assert module.__file__.endswith(".pyc")
        assert torch_forward(module.Linear) is module.Linear.forward
    finally:
        sys.modules.pop("sourceless_torchlike.linear", None)
        sys.modules.pop("sourceless_torchlike", None)


def test_a_stack_of_mixed_rnn_nonlinearities_steps_each_layer_with_its_own():
    # step_stack runs every layer with one nonlinearity: a stack whose layers differ must be stepped layer by layer.
    model = tiny_model("rnn-tiny", nonlinearity="tanh", num_hidden_layers=2)
    model.model.layers[1].nonlinearity = "relu"
    ids = torch.tensor([[5, 17, 33, 8, 4]])
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        cache = output_cache(model(ids[:, :-1], use_cache=True))
        step = model(ids[:, -1:], cache=cache).logits[:, -1]
    torch.testing.assert_close(step, full)


class HandlesFunctionalEmbedding(torch.Tensor):
    """A weight subclass (as a quantised embedding's) whose own lookup is what F.embedding dispatches to."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is F.embedding:
            with torch._C.DisableTorchFunctionSubclass():
                return F.embedding(*args, **(kwargs or {})) + 100.0
        return super().__torch_function__(func, types, args, kwargs)


def test_an_embedding_of_a_subclass_weight_is_looked_up_through_f_embedding():
    # The fast path called torch.embedding, which the subclass's __torch_function__ sees as another function.
    from seqzoo.models.decode_step import call_plainly

    embedding = nn.Embedding(11, 6, padding_idx=3)
    embedding.weight = nn.Parameter(embedding.weight.detach().as_subclass(HandlesFunctionalEmbedding),
                                    requires_grad=False)
    x = torch.tensor([[3, 4, 10]])
    torch.testing.assert_close(call_plainly(embedding, x).as_subclass(torch.Tensor),
                               embedding(x).as_subclass(torch.Tensor), rtol=0, atol=0)


@pytest.mark.parametrize("which", ["every layer", "layer 1"])
def test_a_subclassed_layer_is_called(which, stacked_calls):
    """A subclass of the mixer (its own forward) must run: the stacked step, which runs the cells of the mixers as
    defined, declines a stack of them, or a stack with one among plain layers."""
    from seqzoo.layers.recurrent import GRUMixer

    calls = []

    class Counted(GRUMixer):
        def forward(self, *args, **kwargs):
            calls.append(1)
            return super().forward(*args, **kwargs)

    model = tiny_model("gru-tiny")
    plain, _ = decode(model, *inputs(model, 2))
    stacked_calls.clear()
    layers = list(model.model.layers) if which == "every layer" else [model.model.layers[1]]
    for layer in layers:
        layer.__class__ = Counted
    logits, _ = decode(model, *inputs(model, 2))
    assert not stacked_calls and len(calls) == 5 * len(layers)  # the prompt and every step
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)


def test_a_global_module_hook_sees_every_layer_of_every_step(stacked_calls):
    from torch.nn.modules.module import register_module_forward_hook

    model = tiny_model("lstm-tiny")
    plain, _ = decode(model, *inputs(model, 2))
    stacked_calls.clear()
    layers = {id(layer): i for i, layer in enumerate(model.model.layers)}
    seen = []
    handle = register_module_forward_hook(lambda module, args, out: seen.append(layers.get(id(module))))
    try:
        logits, _ = decode(model, *inputs(model, 2))
    finally:
        handle.remove()
    assert [i for i in seen if i is not None] == [0, 1] * 5 and not stacked_calls
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)


@pytest.mark.parametrize("layer", [0, 1])
def test_a_weight_made_a_buffer_is_read_by_the_layer(layer, stacked_calls):
    """A weight taken out of the parameters (a buffer now, frozen by hand): the layer reads its attribute all the
    same, so the step must not take the weight as missing."""
    model = tiny_model("gru-tiny")
    with torch.no_grad():
        for cell in model.model.layers:
            cell.bias_hh.uniform_(-0.5, 0.5)
    plain, _ = decode(model, *inputs(model, 2))
    stacked_calls.clear()
    cell = model.model.layers[layer]
    value = cell.bias_hh.detach().clone()
    del cell.bias_hh
    cell.register_buffer("bias_hh", value)
    logits, _ = decode(model, *inputs(model, 2))
    assert not stacked_calls
    torch.testing.assert_close(logits, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("missing", ["bias_ih", "bias_hh"])
@pytest.mark.parametrize("preset", ["gru-tiny", "lstm-tiny"])
def test_a_layer_missing_one_bias_steps_as_torch_nn_with_that_bias_zero(preset, missing, stacked_calls):
    model = tiny_model(preset).double().set_input_table("never")
    with torch.no_grad():
        for cell in model.model.layers:
            cell.bias_ih.uniform_(-0.5, 0.5)
            cell.bias_hh.uniform_(-0.5, 0.5)
    twin = torch_nn_twin(model)
    with torch.no_grad():
        for i, cell in enumerate(model.model.layers):
            setattr(cell, missing, None)
            getattr(twin, f"{missing}_l{i}").zero_()
    prompt, _, steps, _ = inputs(model, 2)
    ones = torch.ones(2, 9, dtype=torch.long)
    logits, _ = decode(model, prompt, ones[:, :5], steps, ones[:, 5:])
    assert len(stacked_calls) == steps.shape[1]
    expected, state = twin_logits(model, twin, prompt, steps)
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
