"""The classic RNN/LSTM/GRU LMs against torch.nn cells stepped by hand with the model's weights; the initialisation
users rely on (forget-gate bias in the forget gate, orthogonal hidden-to-hidden blocks); dropout where the config
puts it, in train mode only.

Weights are read by parameter name (``model.layers.<i>.weight_ih`` ...), the names checkpoints carry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqzoo.kernels import use_backend
from tests.conftest import tiny_model

TORCH_CELLS = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}
VARIANTS = {
    "rnn-tanh": ("rnn-tiny", {"nonlinearity": "tanh"}),
    "rnn-relu": ("rnn-tiny", {"nonlinearity": "relu"}),
    "lstm": ("lstm-tiny", {}),
    "gru": ("gru-tiny", {}),
    "lstm-untied": ("lstm-tiny", {"tie_word_embeddings": False, "embedding_size": 24}),
}


def cell_of(model):
    return model.config.mixer_type


def by_hand(model, ids):
    """Embedding -> torch.nn cells stepped token by token, layer by layer -> linear decoder."""
    weights = model.state_dict()
    config = model.config
    x = F.embedding(ids, weights["model.embed_tokens.weight"])
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        kind = cell_of(model)
        extra = {"nonlinearity": config.nonlinearity} if kind == "rnn" else {}
        cell = TORCH_CELLS[kind](x.shape[-1], config.hidden_size, **extra).double()
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(weights[prefix + name])
        h = torch.zeros(ids.shape[0], config.hidden_size, dtype=torch.float64)
        c = torch.zeros_like(h)
        outputs = []
        for t in range(ids.shape[1]):
            if kind == "lstm":
                h, c = cell(x[:, t], (h, c))
            else:
                h = cell(x[:, t], h)
            outputs.append(h)
        x = torch.stack(outputs, dim=1)
    return F.linear(x, weights["lm_head.weight"], weights.get("lm_head.bias"))


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_equal_torch_nn_cells_stepped_by_hand(variant, backend):
    preset, overrides = VARIANTS[variant]
    model = tiny_model(preset, dropout=0.3, **overrides).double()  # eval mode: dropout must not act
    ids = torch.randint(0, model.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(1))
    with use_backend(cell_of(model), backend), torch.no_grad():
        logits = model(ids).logits
    torch.testing.assert_close(logits, by_hand(model, ids), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------------
# Initialisation.


@pytest.mark.parametrize("forget_bias", [1.0, 2.5, 0.0])
def test_forget_bias_lands_in_the_forget_gate(forget_bias):
    # With every weight zeroed and zero input, one LSTM step from c = 1 gives c' = sigmoid(forget gate) * 1 +
    # sigmoid(i) * tanh(g) = sigmoid(b_f) when only the forget gate has a bias: the torch.nn cell decides which block
    # is the forget gate, not seqzoo's own layout.
    model = tiny_model("lstm-tiny", forget_bias=forget_bias)
    weights = model.state_dict()
    hidden = model.config.hidden_size
    for layer in range(model.config.num_hidden_layers):
        cell = nn.LSTMCell(1, hidden)
        with torch.no_grad():
            cell.weight_ih.zero_()
            cell.weight_hh.zero_()
            cell.bias_ih.copy_(weights[f"model.layers.{layer}.bias_ih"])
            cell.bias_hh.copy_(weights[f"model.layers.{layer}.bias_hh"])
            _, c = cell(torch.zeros(1, 1), (torch.zeros(1, hidden), torch.ones(1, hidden)))
        expected = torch.full((1, hidden), torch.sigmoid(torch.tensor(forget_bias)).item())
        torch.testing.assert_close(c, expected)
        bias = weights[f"model.layers.{layer}.bias_ih"] + weights[f"model.layers.{layer}.bias_hh"]
        assert torch.count_nonzero(bias) == (hidden if forget_bias else 0)


@pytest.mark.parametrize("preset", ["rnn-tiny", "lstm-tiny", "gru-tiny"])
def test_orthogonal_init_gives_orthogonal_distinct_hidden_blocks(preset):
    model = tiny_model(preset, orthogonal_init=True)
    hidden = model.config.hidden_size
    eye = torch.eye(hidden)
    for layer in range(model.config.num_hidden_layers):
        blocks = model.state_dict()[f"model.layers.{layer}.weight_hh"].split(hidden)
        for block in blocks:
            torch.testing.assert_close(block @ block.T, eye, atol=1e-5, rtol=0)
        for a, b in zip(blocks, blocks[1:]):
            assert not torch.allclose(a, b)
    plain = tiny_model(preset, orthogonal_init=False)
    block = plain.state_dict()["model.layers.0.weight_hh"][:hidden]
    assert (block @ block.T - eye).abs().max() > 0.3
    assert block.abs().max() <= 1.0 / hidden**0.5  # torch.nn's U(-1/sqrt(H), 1/sqrt(H))


def test_embedding_init_has_the_configured_scale():
    model = tiny_model("lstm-tiny", initializer_range=1.0, vocab_size=400, pad_token_id=None)
    std = model.state_dict()["model.embed_tokens.weight"].std().item()
    assert 0.9 < std < 1.1


# ----------------------------------------------------------------------------------------------------------------
# Dropout.


def recorded_inputs(model, ids):
    """The tensors entering each recurrent layer and the decoder, in order. A layer is the module that holds a
    ``weight_ih`` (found by parameter name, which checkpoints fix, not by class)."""
    seen = []
    layers = [model.get_submodule(name.rsplit(".", 1)[0]) for name, _ in model.named_parameters()
              if name.endswith(".weight_ih")]
    hooks = [layer.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
             for layer in layers]
    hooks.append(model.lm_head.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone())))
    try:
        model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize("preset", ["rnn-tiny", "lstm-tiny", "gru-tiny"])
def test_dropout_acts_in_train_mode_on_every_layer_input_and_the_decoder_input(preset):
    p = 0.5
    model = tiny_model(preset, dropout=p)
    ids = torch.randint(0, model.config.vocab_size, (4, 7), generator=torch.Generator().manual_seed(0))
    model.eval()
    clean = recorded_inputs(model, ids)
    assert all((x != 0).all() for x in clean[:1])  # embeddings are never exactly 0
    model.train()
    torch.manual_seed(0)
    dropped = recorded_inputs(model, ids)
    assert len(dropped) == model.config.num_hidden_layers + 1
    # The embedding (input of layer 0) is dropped and rescaled by 1/(1-p) exactly where it is kept.
    kept = dropped[0] != 0
    assert 0.3 < 1 - kept.float().mean().item() < 0.7
    torch.testing.assert_close(dropped[0][kept], clean[0][kept] / (1 - p))
    # Every later layer's input and the decoder's input has dropped units too (outputs of a trained-mode layer
    # differ from eval, so only the zero pattern is checked there).
    for x in dropped[1:]:
        assert 0.3 < (x == 0).float().mean().item() < 0.7
    for x in clean[1:]:
        assert (x == 0).float().mean().item() < 0.05
    # Train-mode outputs vary with the seed; eval-mode outputs do not.
    torch.manual_seed(1)
    assert not torch.equal(model(ids).logits, (torch.manual_seed(2), model(ids).logits)[1])
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)


@pytest.mark.parametrize("preset", ["rnn-tiny", "lstm-tiny", "gru-tiny"])
def test_zero_dropout_changes_nothing_in_train_mode(preset):
    model = tiny_model(preset, dropout=0.0)
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    eval_logits = model.eval()(ids).logits
    torch.testing.assert_close(model.train()(ids).logits, eval_logits, rtol=0, atol=0)
