"""The encoders and the Transformer decoder against torch.nn's own implementations with the same weights: a
bidirectional nn.LSTM / nn.GRU (padded sources packed as torch packs them), and nn.TransformerEncoder /
nn.TransformerDecoder (post-norm, ReLU, no final norm: Vaswani et al.'s layout)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from tests.conftest import tiny_model

LENGTHS = torch.tensor([7, 4, 6])


def right_padded(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    ids = torch.randint(3, 99, (3, 7))
    mask = (torch.arange(7)[None] < LENGTHS[:, None]).long()
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bidirectional_encoder_matches_torch(cell):
    model = tiny_model("seq2seq-bahdanau-tiny", encoder_type=cell, decoder_type=cell, bidirectional=True)
    encoder = model.get_encoder()
    torch_class = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
    reference = torch_class(32, 32, num_layers=2, bidirectional=True, batch_first=True)
    with torch.no_grad():
        for layer in range(2):
            for suffix, mixer in (("", encoder.layers[layer]), ("_reverse", encoder.backward_layers[layer])):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(reference, f"{name}_l{layer}{suffix}").copy_(getattr(mixer, name))
    ids, mask = right_padded()
    with torch.no_grad():
        ours = encoder(input_ids=ids, attention_mask=mask)
        packed = pack_padded_sequence(encoder.embed_tokens(ids), LENGTHS, batch_first=True, enforce_sorted=False)
        output, state = reference(packed)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=7)
    real = mask.bool()
    torch.testing.assert_close(ours.last_hidden_state[real], output[real], rtol=1e-5, atol=1e-5)
    h = state[0] if cell == "lstm" else state  # (layers * 2, B, H): layer 0 forward, layer 0 backward, ...
    names = 2 if cell == "lstm" else 1
    for layer in range(2):
        final = ours.final_state[:, layer].split(32, dim=-1)  # forward's states, then backward's
        torch.testing.assert_close(final[0], h[2 * layer], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(final[names], h[2 * layer + 1], rtol=1e-5, atol=1e-5)
        if cell == "lstm":
            torch.testing.assert_close(final[1], state[1][2 * layer], rtol=1e-5, atol=1e-5)


def torch_layer(kind: type, layer: nn.Module) -> nn.Module:
    """torch's layer with the weights of one of seqzoo's (sub-layers in the same order: attention(s), MLP)."""
    reference = kind(32, 4, dim_feedforward=128, dropout=0.0, activation="relu", batch_first=True,
                     norm_first=False, layer_norm_eps=1e-5)
    ours = [layer.self_attn] + ([layer.cross_attn] if hasattr(layer, "cross_attn") else [])
    theirs = [reference.self_attn] + ([reference.multihead_attn] if hasattr(layer, "cross_attn") else [])
    norms = [reference.norm1, reference.norm2, getattr(reference, "norm3", None)]
    with torch.no_grad():
        for index, (sub, attention) in enumerate(zip(ours, theirs)):
            mine = sub.sublayer
            attention.in_proj_weight.copy_(torch.cat([mine.q_proj.weight, mine.k_proj.weight, mine.v_proj.weight]))
            attention.in_proj_bias.copy_(torch.cat([mine.q_proj.bias, mine.k_proj.bias, mine.v_proj.bias]))
            attention.out_proj.weight.copy_(mine.o_proj.weight)
            attention.out_proj.bias.copy_(mine.o_proj.bias)
            norms[index].load_state_dict(sub.norm.state_dict())
        reference.linear1.load_state_dict(layer.mlp.sublayer.up_proj.state_dict())
        reference.linear2.load_state_dict(layer.mlp.sublayer.down_proj.state_dict())
        norms[len(ours)].load_state_dict(layer.mlp.norm.state_dict())
    return reference


def sinusoids(length: int, width: int) -> torch.Tensor:
    return torch.tensor([[math.sin(p / 10000 ** (i / width)) if i % 2 == 0 else
                          math.cos(p / 10000 ** ((i - 1) / width)) for i in range(width)] for p in range(length)])


@pytest.mark.parametrize("sharpness", [1.0, 300.0])
def test_transformer_matches_torch(sharpness):
    # sharpness scales every query and key projection (in float64): scores of about 1e5, as a sharply trained model's
    # can be, which a finite mask value like -1e4 no longer keeps off padded or future keys; torch masks with -inf.
    model = tiny_model("seq2seq-transformer-tiny")
    ids, mask = right_padded()
    target = torch.randint(3, 99, (3, 5))
    encoder, decoder = model.get_encoder(), model.model.decoder
    if sharpness != 1.0:
        model.double()
        with torch.no_grad():
            for layer in [*encoder.layers, *decoder.layers]:
                for sub in (layer.self_attn, getattr(layer, "cross_attn", None)):
                    if sub is not None:
                        sub.sublayer.q_proj.weight.mul_(sharpness)
                        sub.sublayer.k_proj.weight.mul_(sharpness)
    torch_encoder = nn.TransformerEncoder(torch_layer(nn.TransformerEncoderLayer, encoder.layers[0]), 2,
                                          enable_nested_tensor=False)
    torch_decoder = nn.TransformerDecoder(torch_layer(nn.TransformerDecoderLayer, decoder.layers[0]), 2)
    for index in range(2):
        torch_encoder.layers[index] = torch_layer(nn.TransformerEncoderLayer, encoder.layers[index])
        torch_decoder.layers[index] = torch_layer(nn.TransformerDecoderLayer, decoder.layers[index])
    torch_encoder.to(model.dtype), torch_decoder.to(model.dtype)
    table = encoder.embed_tokens.weight
    with torch.no_grad():
        # Embeddings scaled by sqrt(d), plus sinusoidal positions (sin on even, cos on odd features).
        memory = torch_encoder(table[ids] * math.sqrt(32) + sinusoids(7, 32).to(model.dtype),
                               src_key_padding_mask=mask == 0)
        causal = nn.Transformer.generate_square_subsequent_mask(5, dtype=model.dtype)
        want = torch_decoder(table[target] * math.sqrt(32) + sinusoids(5, 32).to(model.dtype), memory, tgt_mask=causal,
                             memory_key_padding_mask=mask == 0, tgt_is_causal=True)
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=target, output_hidden_states=True)
    real = mask.bool()
    torch.testing.assert_close(out.encoder_last_hidden_state[real], memory[real], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.decoder_hidden_states[-1], want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.logits, want @ table.T, rtol=1e-4, atol=1e-4)  # tied output layer
