"""The classic models' input table (``seqzoo.layers.recurrent.InputTable``): layer 0's input projection looked up by
token in a decode step instead of multiplied. The same logits and states as the cells' own projection (and as
torch.nn's layers stepped, in test_classic_step.py); rebuilt whenever a weight it was built from changes; never
used where gradients are recorded; and only where its policy says."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

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


def decode(model, prompt, prompt_mask, steps, step_masks, grad=False):
    """Prefill, then feed ``steps`` one token at a time; the logits of every step and the final states."""
    with torch.set_grad_enabled(grad):
        cache = output_cache(model(prompt, attention_mask=prompt_mask, use_cache=True))
        mask, logits = prompt_mask, []
        for t in range(steps.shape[1]):
            mask = torch.cat([mask, step_masks[:, t : t + 1]], dim=1)
            out = model(steps[:, t : t + 1], attention_mask=mask, cache=cache, use_cache=True)
            cache = output_cache(out)
            logits.append(out.logits[:, -1])
    states = [dict(cache.layer(i)) for i in range(model.config.num_hidden_layers)]
    return torch.stack(logits, 1), states


def table_of(model):
    return model.model.input_table._table


def assert_same_decoding(a, b, tol):
    torch.testing.assert_close(a[0], b[0], rtol=tol, atol=tol)
    for state_a, state_b in zip(a[1], b[1]):
        assert state_a.keys() == state_b.keys()
        for name in state_a:
            torch.testing.assert_close(state_a[name], state_b[name], rtol=tol, atol=tol)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_table_decodes_as_the_cells_own_projection(variant, batch):
    preset, overrides = VARIANTS[variant]
    model = tiny_model(preset, **overrides).double()
    args = decode_step_inputs(batch, model.config.vocab_size - 3)  # rows padded in the prompt and in the steps
    expected = decode(model.set_input_table("never"), *args)
    assert table_of(model) is None
    got = decode(model.set_input_table("always"), *args)
    assert table_of(model) is not None and table_of(model).shape == (
        model.config.vocab_size, model.model.layers[0].weight_ih.shape[0])
    assert_same_decoding(got, expected, 1e-12)
    assert not torch.equal(got[0], decode(tiny_model(preset, seed=1, **overrides).double(), *args)[0])


@pytest.mark.parametrize("missing", ["bias_ih", "bias_hh", "both"])
@pytest.mark.parametrize("preset", ["lstm-tiny", "gru-tiny", "rnn-tiny"])
def test_a_layer_without_biases_takes_the_table(preset, missing):
    model = tiny_model(preset).double()
    layer = model.model.layers[0]
    for name in ("bias_ih", "bias_hh") if missing == "both" else (missing,):
        setattr(layer, name, None)
    args = decode_step_inputs(2, model.config.vocab_size - 3)
    expected = decode(model.set_input_table("never"), *args)
    got = decode(model.set_input_table("always"), *args)
    assert table_of(model) is not None
    assert_same_decoding(got, expected, 1e-12)


@pytest.mark.parametrize("kind", ["tanh", "relu", "lstm", "gru"])
def test_step_layers_with_input_gates_equals_its_own_projection(kind):
    """The kernel's own contract: layer 0's projection given (as the input bias of a cell with an empty input) or
    computed, for one row and for several rows with different tokens and a padded row."""
    gen = torch.Generator().manual_seed(0)
    gates, hidden, width = {"lstm": 4, "gru": 3}.get(kind, 1), 6, 5
    params = [[torch.randn(gates * hidden, size, generator=gen, dtype=torch.float64)
               for size in (width if i == 0 else hidden, hidden)]
              + [torch.randn(gates * hidden, generator=gen, dtype=torch.float64) for _ in range(2)] for i in range(2)]
    for batch, mask in ((1, None), (3, torch.tensor([[True], [False], [True]]))):
        x = torch.randn(batch, 1, width, generator=gen, dtype=torch.float64)
        hx = [[torch.randn(batch, hidden, generator=gen, dtype=torch.float64)
               for _ in range(2 if kind == "lstm" else 1)] for _ in range(2)]
        projection = F.linear(x[:, 0], params[0][0], params[0][2])
        y, new = fused.step_layers(kind, x, hx, params, mask, projection)
        y_ref, new_ref = fused.step_layers(kind, x, hx, params, mask)
        torch.testing.assert_close(y, y_ref, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(new, new_ref, rtol=1e-13, atol=1e-13)
        y_off, _ = fused.step_layers(kind, x, hx, params, mask, projection + 0.1)
        assert not torch.allclose(y_off, y_ref)  # the given projection is what layer 0 reads


CHANGES = {
    "embedding in place": lambda m: m.model.embed_tokens.weight.mul_(1.5),
    "weight_ih in place": lambda m: m.model.layers[0].weight_ih.add_(0.05),
    "bias_ih in place": lambda m: m.model.layers[0].bias_ih.add_(0.3),
    "load_state_dict": lambda m: m.load_state_dict(tiny_model("gru-tiny", seed=1).state_dict()),
    "embedding replaced": lambda m: m.resize_token_embeddings(m.config.vocab_size + 4),
    "dtype changed": lambda m: m.double(),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_the_table_follows_every_change_of_its_weights(change):
    model = tiny_model("gru-tiny").set_input_table("always")
    args = decode_step_inputs(2, model.config.vocab_size - 3)
    decode(model, *args)
    built = table_of(model)
    assert built is not None
    with torch.no_grad():
        CHANGES[change](model)
    twin = copy.deepcopy(model).set_input_table("never")
    got, expected = decode(model, *args), decode(twin, *args)
    assert table_of(model) is not built and table_of(model).dtype == model.dtype
    assert table_of(model).shape[0] == model.get_input_embeddings().weight.shape[0]
    assert_same_decoding(got, expected, 1e-5)


def test_steps_that_record_gradients_do_not_use_the_table():
    model = tiny_model("lstm-tiny").set_input_table("always")
    args = decode_step_inputs(2, model.config.vocab_size - 3)
    logits, _ = decode(model, *args, grad=True)
    assert table_of(model) is None
    logits.sum().backward()
    # Through the embedding of the stepped tokens and layer 0's input weights (a table would cut both off).
    steps = args[2]
    assert model.model.embed_tokens.weight.grad[steps[0, -1]].abs().sum() > 0
    assert model.model.layers[0].weight_ih.grad.abs().sum() > 0


def test_inference_mode_steps_use_it_and_inference_weights_do_not():
    model = tiny_model("gru-tiny").set_input_table("always")
    args = decode_step_inputs(2, model.config.vocab_size - 3)
    expected = decode(copy.deepcopy(model).set_input_table("never"), *args)
    with torch.inference_mode():
        got = decode(model, *args)
        assert table_of(model) is not None
    assert_same_decoding(got, expected, 1e-6)
    with torch.inference_mode():  # weights made here cannot say when they change: the cells' own projection
        fresh = tiny_model("gru-tiny").set_input_table("always")
        decode(fresh, *args)
    assert table_of(fresh) is None


def test_auto_builds_the_table_for_a_vocabulary_at_most_twice_the_embedding_width():
    args = decode_step_inputs(1, 90)
    small = tiny_model("gru-tiny", hidden_size=50)  # vocabulary 99 <= 2 x 50
    large = tiny_model("gru-tiny", hidden_size=49)  # 99 > 2 x 49
    for model, built in ((small, True), (large, False)):
        assert model.config.vocab_size == 99
        assert model.model.input_table.policy == "auto"
        decode(model, *args)
        assert (table_of(model) is not None) is built
    decode(large.set_input_table("always"), *args)
    assert table_of(large) is not None
    decode(small.set_input_table("never"), *args)
    assert table_of(small) is None


def test_a_policy_that_does_not_exist_is_refused_and_the_table_is_never_saved(tmp_path):
    model = tiny_model("rnn-tiny")
    with pytest.raises(ValueError, match=r"one of 'auto', 'always', 'never'; got 'on'"):
        model.set_input_table("on")
    assert model.set_input_table("always") is model
    decode(model, *decode_step_inputs(1, 90))
    assert table_of(model) is not None
    assert set(model.state_dict()) == set(tiny_model("rnn-tiny").state_dict())
    model.save_pretrained(tmp_path)
    assert type(model).from_pretrained(tmp_path).model.input_table.policy == "auto"


@pytest.mark.parametrize("embedding", ["hooked", "max_norm"])
def test_an_embedding_that_does_more_than_look_up_is_read_by_the_cells(embedding):
    """A hook that changes the embedding's output, or ``max_norm`` (which rescales the rows it looks up), makes the
    embedding's output differ from its weight's rows: layer 0 must read the output."""
    model = tiny_model("lstm-tiny")
    if embedding == "hooked":
        model.model.embed_tokens.register_forward_hook(lambda module, args, out: out * 2.0)
    else:
        model.model.embed_tokens.max_norm = 0.5
    args = decode_step_inputs(2, model.config.vocab_size - 3)
    expected = decode(copy.deepcopy(model).set_input_table("never"), *args)
    got = decode(model.set_input_table("always"), *args)
    assert table_of(model) is None
    assert_same_decoding(got, expected, 1e-6)
