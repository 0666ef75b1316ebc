"""Each attention score against its formula on a hand-sized example (3 source tokens, 2 target steps, as in the
seeds' exercise), worked out with plain Python arithmetic; padding gets exactly zero weight; and inside the models,
the right decoder state queries (Bahdanau: the previous one; Luong: the current one)."""

from __future__ import annotations

import math

import pytest
import torch

from seqzoo.layers.seq2seq_attention import MultiHeadAttention, SourceAttention
from tests.conftest import tiny_model

H = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # annotations h_1..h_3 (D = 2)
S = [[0.5, -1.0], [2.0, 0.25]]  # decoder states s_1, s_2 (the queries)
W_A = [[1.0, 2.0], [0.0, -1.0]]  # Luong's general W_a (Q x D)
W_H = [[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]  # additive W_h (A x D), A = 3
W_S = [[0.5, 0.0], [0.0, 0.5], [1.0, 1.0]]  # additive W_s (A x Q)
V = [1.0, -1.0, 0.5]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def matvec(m, x):
    return [dot(row, x) for row in m]


FORMULAS = {
    "luong-dot": lambda s, h: dot(s, h),
    "luong-general": lambda s, h: dot(s, matvec(W_A, h)),
    "luong-concat": lambda s, h: dot(V, [math.tanh(a + b) for a, b in zip(matvec(W_H, h), matvec(W_S, s))]),
    "bahdanau": lambda s, h: dot(V, [math.tanh(a + b) for a, b in zip(matvec(W_H, h), matvec(W_S, s))]),
}


def expected(score, keep=(True, True, True)):
    """Weights (2 x 3) and contexts (2 x 2) by hand: a softmax over the kept positions of each step's scores."""
    weights, contexts = [], []
    for s in S:
        e = [math.exp(FORMULAS[score](s, h)) if k else 0.0 for h, k in zip(H, keep)]
        alpha = [x / sum(e) for x in e]
        weights.append(alpha)
        contexts.append([sum(a * h[d] for a, h in zip(alpha, H)) for d in range(2)])
    return torch.tensor(weights, dtype=torch.float64), torch.tensor(contexts, dtype=torch.float64)


def hand_attention(score: str) -> SourceAttention:
    attention = SourceAttention(score, query_size=2, memory_size=2, attention_size=3).double()
    with torch.no_grad():
        if score == "luong-general":
            attention.memory_proj.weight.copy_(torch.tensor(W_A))
        elif score in ("bahdanau", "luong-concat"):
            attention.memory_proj.weight.copy_(torch.tensor(W_H))
            attention.query_proj.weight.copy_(torch.tensor(W_S))
            attention.v.weight.copy_(torch.tensor([V]))
    return attention


@pytest.mark.parametrize("score", sorted(FORMULAS))
def test_each_score_matches_its_formula(score):
    attention = hand_attention(score)
    memory, query = torch.tensor([H], dtype=torch.float64), torch.tensor([S], dtype=torch.float64)
    context, weights = attention(query, attention.keys(memory), memory, None)
    want_weights, want_context = expected(score)
    torch.testing.assert_close(weights[0], want_weights.double(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(context[0], want_context.double(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("score", sorted(FORMULAS))
def test_a_padded_position_gets_exactly_zero_weight(score):
    attention = hand_attention(score)
    memory, query = torch.tensor([H], dtype=torch.float64), torch.tensor([S], dtype=torch.float64)
    mask = torch.tensor([[True, False, True]])
    context, weights = attention(query, attention.keys(memory), memory, mask)
    assert (weights[0, :, 1] == 0).all()  # exactly, not approximately
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-15)
    want_weights, want_context = expected(score, keep=(True, False, True))
    torch.testing.assert_close(weights[0], want_weights.double(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(context[0], want_context.double(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("score", sorted(FORMULAS))
def test_an_all_padding_source_row_gets_zero_weights_not_nan(score):
    """The models refuse an empty source; the layer called directly gives that row a context of zeros (it gave NaN),
    and leaves the other row as it was."""
    attention = hand_attention(score)
    memory, query = torch.tensor([H, H], dtype=torch.float64), torch.tensor([S, S], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [False, False, False]])
    context, weights = attention(query, attention.keys(memory), memory, mask)
    assert (weights[1] == 0).all() and (context[1] == 0).all()
    want_weights, want_context = expected(score)
    torch.testing.assert_close(weights[0], want_weights, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(context[0], want_context, rtol=1e-12, atol=1e-12)


def test_the_dot_score_needs_one_width():
    with pytest.raises(ValueError, match="one width; got 2 and 4"):
        SourceAttention("luong-dot", query_size=2, memory_size=4, attention_size=3)
    with pytest.raises(ValueError, match="unknown attention score 'luong-location'"):
        SourceAttention("luong-location", 2, 2, 2)


def torch_peer(ours, theirs):
    """torch's nn.MultiheadAttention holding ``ours``' weights, in eval mode."""
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.weight.copy_(ours.o_proj.weight)
        theirs.out_proj.bias.copy_(ours.o_proj.bias)
    return theirs.eval()


def test_multi_head_attention_matches_torch(monkeypatch):
    """Scaled dot-product attention per head, against torch.nn.MultiheadAttention with the same weights."""
    torch.manual_seed(0)
    config = type("C", (), {"num_attention_heads": 4, "hidden_size": 32, "attention_dropout": 0.0,
                            "_attn_implementation": "sdpa"})()
    ours = MultiHeadAttention(config, is_causal=False).eval()
    theirs = torch_peer(ours, torch.nn.MultiheadAttention(32, 4, batch_first=True))
    queries, source = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    padded = torch.zeros(2, 7, dtype=torch.bool)
    padded[1, 5:] = True
    additive = torch.zeros(2, 1, 1, 7).masked_fill(padded[:, None, None], torch.finfo(torch.float32).min)
    want, want_weights = theirs(queries, source, source, key_padding_mask=padded, average_attn_weights=False)
    for need_weights in (False, True):  # sdpa, then eager (which returns the weights)
        got, weights = ours(queries, *ours.key_values(source), additive, need_weights=need_weights)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights, want_weights, rtol=1e-5, atol=1e-6)
    assert (weights[1, :, :, 5:] == 0).all()


def decoder_internals(preset: str, **overrides):
    """A tiny model of ``preset``, a padded batch, and what its decoder attended to and from."""
    model = tiny_model(preset, dropout=0.0, **overrides)
    torch.manual_seed(1)
    source = torch.randint(3, 99, (2, 6))
    mask = torch.ones_like(source)
    mask[1, :2] = 0  # left padding in the second row
    target = torch.randint(3, 99, (2, 4))
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=source, attention_mask=mask)
        out = model(attention_mask=mask, encoder_outputs=encoded, decoder_input_ids=target, output_attentions=True,
                    output_hidden_states=True)
    return model, encoded, mask.bool(), out


@pytest.mark.parametrize("preset,score", [("seq2seq-luong-general-tiny", "luong-general"),
                                          ("seq2seq-luong-dot-tiny", "luong-dot")])
@pytest.mark.parametrize("feeding", [True, False])
def test_luong_attends_with_the_current_state(preset, score, feeding):
    model, encoded, mask, out = decoder_internals(preset, input_feeding=feeding)
    decoder = model.model.decoder
    memory = encoded.last_hidden_state  # (B, S, D)
    top = out.decoder_hidden_states[len(decoder.layers)]  # s_t of the top layer (B, T, H)
    keys = memory if score == "luong-dot" else memory @ decoder.attention.memory_proj.weight.T
    scores = torch.einsum("bth,bsh->bts", top, keys).masked_fill(~mask[:, None], float("-inf"))
    (weights,) = out.cross_attentions
    torch.testing.assert_close(weights[:, 0], scores.softmax(-1), rtol=1e-5, atol=1e-6)
    attentional = torch.tanh(torch.cat([weights[:, 0] @ memory, top], -1) @ decoder.readout.weight.T)
    torch.testing.assert_close(out.decoder_hidden_states[-1], attentional, rtol=1e-5, atol=1e-6)
    assert (weights[1, :, :, :2] == 0).all() and torch.allclose(weights.sum(-1), torch.ones(2, 1, 4))


def test_bahdanau_attends_with_the_previous_state():
    model, encoded, mask, out = decoder_internals("seq2seq-bahdanau-tiny")
    decoder = model.model.decoder
    memory = encoded.last_hidden_state
    initial = decoder.bridge(encoded.final_state, memory)[-1]["h"]  # s_0, from the encoder's final states
    top = out.decoder_hidden_states[len(decoder.layers)]  # s_1 .. s_T
    previous = torch.cat([initial[:, None], top[:, :-1]], dim=1)  # s_0 .. s_{T-1}
    attention = decoder.attention
    hidden = torch.tanh((memory @ attention.memory_proj.weight.T)[:, None] +
                        (previous @ attention.query_proj.weight.T)[:, :, None])
    scores = (hidden @ attention.v.weight[0]).masked_fill(~mask[:, None], float("-inf"))
    (weights,) = out.cross_attentions
    torch.testing.assert_close(weights[:, 0], scores.softmax(-1), rtol=1e-5, atol=1e-6)
    # The initial state is the bridge's projection of both directions' final states: tanh(W [h->; h<-] + b).
    projection = decoder.bridge.projections[-1]
    torch.testing.assert_close(initial, torch.tanh(projection(encoded.final_state[:, -1])), rtol=0, atol=0)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_a_left_padded_decoder_input_gives_no_nan_in_half_precision(implementation):
    # A query at a left-padded decoder position sees no key: in float16 its scores plus the mask value overflowed to
    # -inf, the row became NaN, and its keys and values turned the next layer's real rows NaN (weight 0 * NaN).
    model = tiny_model("seq2seq-transformer-tiny", num_decoder_layers=3, attn_implementation=implementation).half()
    with torch.no_grad():
        for layer in model.model.decoder.layers:  # sharper attention, as a trained model's: scores beyond +-16
            layer.self_attn.sublayer.q_proj.weight.mul_(8)
            layer.self_attn.sublayer.k_proj.weight.mul_(8)
    decoder_input_ids = torch.tensor([[0, 0, 1, 20], [1, 7, 8, 9]])
    decoder_attention_mask = (decoder_input_ids != 0).long()
    logits = model(input_ids=torch.tensor([[5, 17, 33], [9, 3, 77]]), decoder_input_ids=decoder_input_ids,
                   decoder_attention_mask=decoder_attention_mask).logits
    assert not torch.isnan(logits).any()


@pytest.mark.parametrize("score", ["luong-dot", "luong-general"])
def test_padding_gets_zero_weight_however_negative_the_real_scores(score):
    # A finite mask value (say -1e4) would win the softmax when every real score is below it (large, opposed states
    # under a dot score): the padding would take all the weight. -inf leaves it exactly 0 whatever the scores.
    attention = hand_attention(score)
    memory = torch.tensor([H], dtype=torch.float64) * 1e3
    query = -torch.tensor([[[40.0, 40.0], [60.0, 30.0]]], dtype=torch.float64)  # scores of about -1e5 or less
    mask = torch.tensor([[True, False, True]])
    context, weights = attention(query, attention.keys(memory), memory, mask)
    assert (weights[0, :, 1] == 0).all()
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_multi_head_attention_drops_nothing_in_eval_and_returns_weights_only_when_asked(implementation):
    # attention_dropout applies while training only: in eval the layer must equal torch's nn.MultiheadAttention in
    # eval (no dropout), not drop weights at random. And the weights come back only with need_weights.
    torch.manual_seed(0)
    config = type("C", (), {"num_attention_heads": 2, "hidden_size": 8, "attention_dropout": 0.5,
                            "_attn_implementation": implementation})()
    ours = MultiHeadAttention(config, is_causal=False).eval()
    theirs = torch_peer(ours, torch.nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True))
    queries, source = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    want, _ = theirs(queries, source, source)
    got, weights = ours(queries, *ours.key_values(source), None)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert weights is None
    assert ours.train()(queries, *ours.key_values(source), None)[0].ne(want).any()  # (it does drop while training)
