"""Activation checkpointing and the decoder's embedding accessors of the encoder-decoders (transformers' T5 has
both): checkpointed gradients equal the plain ones, each checkpointed layer runs again in the backward pass, and
``get_decoder().get_input_embeddings()`` is the shared table."""

from __future__ import annotations

import copy

import pytest
import torch

from seqzoo.models.compat import output_cache
from tests.conftest import SEQ2SEQ_FAMILIES, tiny_model
from tests.seq2seq.test_common import padded


@pytest.fixture(params=sorted(SEQ2SEQ_FAMILIES), ids=sorted(SEQ2SEQ_FAMILIES))
def preset(request) -> str:
    return SEQ2SEQ_FAMILIES[request.param]


def _model(preset, **overrides):
    # Two layers a side (every_n_layers) and dropout: a replayed layer must draw the same dropout masks.
    model = tiny_model(preset, num_hidden_layers=2, num_decoder_layers=2, dropout=0.2, **overrides).train()
    model.config.use_cache = False
    return model


def _gradients(model):
    ids, mask = padded()
    labels = torch.tensor([[7, 8, 9, 10, 11], [12, 13, 14, -100, -100], [15, 16, 17, 18, -100]])
    model.zero_grad()
    torch.manual_seed(1)
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _count_calls(modules):
    calls = {}
    for name, module in modules:
        module.register_forward_pre_hook(lambda *args, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    return calls


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_checkpointed_gradients_equal_the_plain_ones(preset, reentrant):
    model = _model(preset)
    stacks = {"encoder": model.model.encoder, "decoder": model.model.decoder}
    calls = _count_calls((f"{side}.{idx}", layer) for side, stack in stacks.items()
                         for idx, layer in enumerate(stack.layers))
    plain = _gradients(model)
    assert set(calls.values()) <= {1, 2 * 5, 5}  # (a step-by-step decoder runs each layer once per target step)
    once = dict(calls)
    model.activation_checkpointing_enable({"use_reentrant": reentrant})
    assert model.is_activation_checkpointing
    calls.clear()
    checkpointed = _gradients(model)
    assert calls == {name: 2 * count for name, count in once.items()}  # every layer run again in the backward pass
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)

    # every_n_layers=2: layer 0 of each stack is checkpointed, layer 1 keeps its activations
    model.activation_checkpointing_enable({"use_reentrant": reentrant}, every_n_layers=2)
    calls.clear()
    _gradients(model)
    assert calls == {name: count * (2 if name.endswith(".0") else 1) for name, count in once.items()}

    model.activation_checkpointing_disable()
    calls.clear()
    _gradients(model)
    assert calls == once


def test_checkpointing_runs_without_a_cache(preset, caplog):
    model = _model(preset)
    model.activation_checkpointing_enable({"use_reentrant": False})
    ids, mask = padded()
    decoder_ids = torch.tensor([[1, 7, 8], [1, 9, 10], [1, 11, 12]])
    with caplog.at_level("WARNING", logger="seqzoo"):
        out = model(ids, attention_mask=mask, decoder_input_ids=decoder_ids, use_cache=True)
        model(ids, attention_mask=mask, decoder_input_ids=decoder_ids, use_cache=True)
    assert output_cache(out) is None
    assert caplog.text.count("use_cache=True is incompatible with activation checkpointing") == 1  # once
    with torch.no_grad():  # no backward pass, nothing replayed: the cache is kept
        cached = model(ids, attention_mask=mask, decoder_input_ids=decoder_ids[:, :2], use_cache=True)
    cache = output_cache(cached)
    assert cache is not None
    with pytest.raises(ValueError, match="cannot be continued with activation checkpointing"):
        model(ids, attention_mask=mask, decoder_input_ids=decoder_ids[:, 2:], cache=cache)
    model.eval()  # decoding in eval mode continues it
    model(ids, attention_mask=mask, decoder_input_ids=decoder_ids[:, 2:], cache=cache)


def test_the_decoder_reaches_the_shared_embedding(preset):
    model = tiny_model(preset)
    table = model.get_input_embeddings()
    assert model.get_decoder() is model.model.decoder and model.model.get_decoder() is model.model.decoder
    assert model.get_decoder().get_input_embeddings() is table is model.get_encoder().embed_tokens
    assert "decoder._encoder" not in dict(model.named_modules())  # no second copy in the state dict
    assert not any(".decoder." in key and "embed_tokens" in key for key in model.state_dict())

    size = table.num_embeddings
    model.resize_token_embeddings(size + 5, mean_resizing=False)
    assert model.get_decoder().get_input_embeddings() is model.get_input_embeddings()
    assert model.get_decoder().get_input_embeddings().num_embeddings == size + 5

    twin = copy.deepcopy(model)
    assert twin.get_decoder().get_input_embeddings() is twin.get_input_embeddings()
    assert twin.get_input_embeddings() is not model.get_input_embeddings()

    replacement = torch.nn.Embedding(size + 5, table.embedding_dim)
    model.get_decoder().set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement
