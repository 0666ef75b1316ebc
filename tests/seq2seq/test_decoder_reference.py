"""The recurrent decoders against decoders rebuilt by hand from torch.nn.LSTMCell / GRUCell with the model's
weights and the formulas seqzoo's docstrings cite (the bridge, Bahdanau's and Luong's scores, input feeding, the
attentional vector), stepping one token at a time; and beam search's scores against the summed log-probabilities
a plain forward gives the returned sequences.

The encoders are checked against torch.nn.LSTM / GRU in test_reference.py: here the hand-built decoder starts from
the encoder's outputs, so a difference is the decoder's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import tiny_model

SOURCE = torch.tensor([[0, 0, 5, 17, 33, 8], [9, 3, 77, 12, 40, 61], [44, 21, 6, 0, 0, 0]])
SOURCE_MASK = (SOURCE != 0).long()  # left padding, none, right padding
TARGET = torch.tensor([[1, 7, 19, 4, 88], [1, 50, 2, 63, 9], [1, 14, 14, 71, 30]])
TARGET_MASK = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])  # none, left, right padding


def hand_cells(decoder, lstm: bool, hidden: int) -> list[nn.Module]:
    cells = []
    for layer in decoder.layers:
        cell = (nn.LSTMCell if lstm else nn.GRUCell)(layer.weight_ih.shape[1], hidden)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(layer, name))
        cells.append(cell)
    return cells


def hand_logits(model, source, source_mask, target, target_mask, drop=lambda x: x) -> torch.Tensor:
    """Logits (B, T, V) from a decoder stepped by hand; a padded target step changes no state (nor the fed vector).
    ``drop`` stands for the decoder's dropout: on its embeddings, between its layers and on its output."""
    config, decoder = model.config, model.model.decoder
    encoded = model.get_encoder()(input_ids=source, attention_mask=source_mask)
    memory, final = encoded.last_hidden_state, encoded.final_state  # (B, S, D), (B, layers, F)
    hidden, lstm = config.hidden_size, config.decoder_type == "lstm"
    cells = hand_cells(decoder, lstm, hidden)
    # The bridge: decoder layer i starts from encoder layer i's final states (h, then c for an LSTM), copied, or
    # through tanh(W_i [final states] + b_i).
    h, c = [], []
    for i, _ in enumerate(cells):
        start = final[:, i]
        if config.bridge == "zeros":  # (attention only: the decoder starts from no information)
            start = torch.zeros(final.shape[0], 2 * hidden)
        elif config.bridge == "projection":
            projection = decoder.bridge.projections[i]
            start = torch.tanh(start @ projection.weight.T + projection.bias)
        h.append(start[:, :hidden])
        c.append(start[:, hidden : 2 * hidden] if lstm else None)
    real = source_mask.bool()
    attention = decoder.attention

    def attend(query: torch.Tensor) -> torch.Tensor:  # query (B, H) -> context (B, D)
        if config.attention == "luong-dot":
            scores = torch.einsum("bsd,bd->bs", memory, query)
        elif config.attention == "luong-general":  # s^T W_a h_j
            scores = torch.einsum("bq,qd,bsd->bs", query, attention.memory_proj.weight, memory)
        else:  # v^T tanh(W_h h_j + W_s s)
            energy = torch.tanh(memory @ attention.memory_proj.weight.T +
                                (query @ attention.query_proj.weight.T)[:, None])
            scores = energy @ attention.v.weight[0]
        weights = torch.softmax(scores.masked_fill(~real, float("-inf")), dim=-1)
        return torch.einsum("bs,bsd->bd", weights, memory)

    embeds = drop(model.get_input_embeddings()(target))
    feed = memory.new_zeros(target.shape[0], hidden)  # h~_0 = 0
    outputs = []
    for t in range(target.shape[1]):
        keep = target_mask[:, t].bool()[:, None]
        x = embeds[:, t]
        if config.attention == "bahdanau":  # c_t from s_{t-1}, joining the input
            context = attend(h[-1])
            x = torch.cat([x, context], dim=-1)
        elif config.input_feeding:
            x = torch.cat([x, feed], dim=-1)
        for i, cell in enumerate(cells):
            if lstm:
                new_h, new_c = cell(x, (h[i], c[i]))
                c[i] = torch.where(keep, new_c, c[i])
            else:
                new_h = cell(x, h[i])
            h[i] = torch.where(keep, new_h, h[i])
            x = drop(h[i])  # (the input of the next layer; the top layer's state itself is not dropped)
        top = h[-1]  # (the top layer's state: its dropout applies to the output alone)
        if config.attention == "none":
            output = top
        else:
            if config.attention != "bahdanau":  # Luong: c_t from s_t
                context = attend(top)
            output = torch.tanh(torch.cat([context, top], dim=-1) @ decoder.readout.weight.T)  # h~_t
            feed = torch.where(keep, output, feed)
        outputs.append(drop(output) @ model.lm_head.weight.T)
    return torch.stack(outputs, dim=1)


CASES = {
    "luong-general-feeding": ("seq2seq-luong-general-tiny", {}),
    "luong-general": ("seq2seq-luong-general-tiny", {"input_feeding": False}),
    "luong-dot-feeding": ("seq2seq-luong-dot-tiny", {}),
    "luong-concat-feeding-gru": ("seq2seq-luong-concat-tiny", {"encoder_type": "gru", "decoder_type": "gru"}),
    "bahdanau": ("seq2seq-bahdanau-tiny", {}),
    "bahdanau-lstm": ("seq2seq-bahdanau-tiny", {"encoder_type": "lstm", "decoder_type": "lstm"}),
    "sutskever": ("seq2seq-sutskever-tiny", {}),
    "bahdanau-zeros": ("seq2seq-bahdanau-tiny", {"bridge": "zeros"}),
    "luong-dot-zeros-lstm": ("seq2seq-luong-dot-tiny", {"bridge": "zeros", "encoder_type": "lstm",
                                                        "decoder_type": "lstm"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_decoder_matches_a_decoder_built_by_hand_from_torch_cells(case):
    preset, overrides = CASES[case]
    model = tiny_model(preset, dropout=0.0, **overrides)
    with torch.no_grad():
        want = hand_logits(model, SOURCE, SOURCE_MASK, TARGET, TARGET_MASK)
        got = model(SOURCE, attention_mask=SOURCE_MASK, decoder_input_ids=TARGET,
                    decoder_attention_mask=TARGET_MASK).logits
    real = TARGET_MASK.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)


class Halve(nn.Module):
    """A dropout stand-in that is the same on every call (each unit kept, scaled by 1/2), so that where a model drops
    is visible in its output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5


@pytest.mark.parametrize("case", ["luong-general-feeding", "luong-general", "bahdanau-lstm", "sutskever"])
def test_dropout_is_where_the_decoder_says(case):
    # The decoder drops its embeddings, its inputs between layers and its output -- not its states, not what it
    # feeds back or queries with. A dropout left out (or moved) changes the training of every such model silently.
    preset, overrides = CASES[case]
    model = tiny_model(preset, dropout=0.0, num_hidden_layers=2, **overrides)
    decoder = model.model.decoder
    decoder.dropout = Halve()
    with torch.no_grad():
        want = hand_logits(model, SOURCE, SOURCE_MASK, TARGET, TARGET_MASK, drop=Halve())
        got = model(SOURCE, attention_mask=SOURCE_MASK, decoder_input_ids=TARGET,
                    decoder_attention_mask=TARGET_MASK).logits
    real = TARGET_MASK.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 3])
def test_the_encoder_drops_its_embeddings_and_between_its_layers(cell, layers):
    # Embedding -> dropout -> layer -> [dropout -> layer] x (N - 1), against torch.nn's layers run one at a time: as
    # inside torch.nn.LSTM(dropout=p), the last layer's output (the annotations the decoder attends to) is not
    # dropped (it was, which the configuration's "between layers" did not say).
    model = tiny_model("seq2seq-sutskever-tiny", encoder_type=cell, decoder_type=cell, dropout=0.0,
                       num_hidden_layers=layers)
    encoder = model.get_encoder()
    encoder.dropout = Halve()
    x = encoder.embed_tokens(SOURCE[1:2])
    with torch.no_grad():
        for mixer in encoder.layers:
            reference = (nn.LSTM if cell == "lstm" else nn.GRU)(mixer.weight_ih.shape[1], 32, batch_first=True)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(reference, f"{name}_l0").copy_(getattr(mixer, name))
            x = reference(x * 0.5)[0]
        got = encoder(input_ids=SOURCE[1:2], output_hidden_states=True)
    torch.testing.assert_close(got.last_hidden_state, x, rtol=1e-5, atol=1e-6)
    assert len(got.hidden_states) == layers + 1  # the embeddings as the first layer reads them, then each output
    torch.testing.assert_close(got.hidden_states[-1], x, rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["seq2seq-luong-general-tiny", "seq2seq-bahdanau-tiny", "seq2seq-transformer-tiny"])
def test_beam_scores_are_the_summed_log_probabilities_of_the_returned_sequences(preset):
    """transformers' beam search scores a hypothesis by its summed log-probabilities (length_penalty=0); a plain
    forward of the returned sequences, without a cache, must give those sums: a cache entry reordered wrongly between
    beams (the fed vector, a state) changes the tokens' probabilities but not the uncached forward's."""
    model = tiny_model(preset, dropout=0.0)
    out = model.generate(SOURCE, attention_mask=SOURCE_MASK, max_new_tokens=6, num_beams=4, num_return_sequences=4,
                         do_sample=False, length_penalty=0.0, eos_token_id=None, pad_token_id=0,
                         output_scores=True, return_dict_in_generate=True)
    sequences = out.sequences  # (B * 4, 7), each source's 4 beams
    source, mask = SOURCE.repeat_interleave(4, dim=0), SOURCE_MASK.repeat_interleave(4, dim=0)
    with torch.no_grad():
        logits = model(source, attention_mask=mask, decoder_input_ids=sequences[:, :-1], use_cache=False).logits
    summed = torch.log_softmax(logits.float(), dim=-1).gather(-1, sequences[:, 1:, None])[..., 0].sum(-1)
    torch.testing.assert_close(out.sequences_scores, summed, rtol=1e-4, atol=1e-4)
    # The beams of one source are distinct, best first.
    for row in range(SOURCE.shape[0]):
        beams = sequences[4 * row : 4 * row + 4]
        assert len({tuple(b.tolist()) for b in beams}) == 4
        assert (out.sequences_scores[4 * row : 4 * row + 4].diff() <= 1e-6).all()
