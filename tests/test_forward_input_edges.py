"""Edges of forward()'s input checks that the wider tests pass over: both inputs at once, bool ids, a mask one
column too long, a bad id between good ones in a decode-sized input."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_model

IDS = torch.tensor([[5, 17, 33, 8], [9, 3, 77, 21]])


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny"])
def test_ids_and_embeddings_together_are_refused(preset):
    model = tiny_model(preset)
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(IDS, inputs_embeds=model.get_input_embeddings()(IDS))


def test_bool_ids_are_refused():
    with pytest.raises(ValueError, match="input_ids must be an integer tensor, got dtype torch.bool"):
        tiny_model("lstm-tiny")(IDS > 10)


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny"])
def test_a_mask_one_position_longer_than_cache_and_inputs_is_refused(preset):
    model = tiny_model(preset)
    with pytest.raises(ValueError, match=r"expected \(batch, L\) with 4 <= L <= 4"):
        model(IDS, attention_mask=torch.ones(2, 5))


def test_an_id_outside_the_vocabulary_between_good_ones_is_refused():
    model = tiny_model("lstm-tiny")
    ids = IDS.clone()
    ids[0, 1] = model.config.vocab_size
    with pytest.raises(ValueError, match=f"token id {model.config.vocab_size}, outside the vocabulary"):
        model(ids)
    ids[0, 1] = -1
    with pytest.raises(ValueError, match="token id -1, outside the vocabulary"):
        model(ids)


@pytest.mark.parametrize("keep", [1, 3])
def test_logits_to_keep_returns_the_last_that_many_positions(keep):
    # generate() passes logits_to_keep=1 to the prefill: one position's logits, not the whole prompt's.
    model = tiny_model("lstm-tiny")
    with torch.no_grad():
        full = model(IDS).logits
        kept = model(IDS, logits_to_keep=keep).logits
    assert kept.shape == (2, keep, full.shape[-1])
    torch.testing.assert_close(kept, full[:, -keep:])


@pytest.mark.parametrize("preset", ["rnn-tiny", "gru-tiny", "rwkv7-tiny", "mamba-tiny", "mamba2-tiny"])
@pytest.mark.parametrize("how", ["keyword", "config", "generate"])
def test_attention_weights_asked_of_a_recurrent_model_are_said_to_be_none(preset, how, caplog):
    """Every layer keeps a recurrent state: there are no attention weights, and asking for them is answered with
    None and one warning per class, not silently (a sequence classifier on the same backbone warns too)."""
    model = tiny_model(preset)
    with caplog.at_level("WARNING", logger="seqzoo"):
        for _ in range(2):
            if how == "generate":
                out = model.generate(IDS[:1], max_new_tokens=2, do_sample=False, output_attentions=True,
                                     return_dict_in_generate=True)
                assert all(step is None for step in out.attentions)
                continue
            if how == "config":
                model.config.output_attentions = True
                out = model(IDS)
            else:
                out = model(IDS, output_attentions=True)
            assert out.attentions is None
    name = type(model.model).__name__
    assert caplog.text.count(f"output_attentions=True: {name} has no attention layers") == 1, caplog.text


def test_attention_weights_are_not_warned_about_unasked_or_where_there_are_some(caplog):
    with caplog.at_level("WARNING", logger="seqzoo"):
        tiny_model("gru-tiny")(IDS, output_attentions=False)
        model = tiny_model("transformer-tiny", attn_implementation="eager")
        assert len(model(IDS, output_attentions=True).attentions) == model.config.num_hidden_layers
    assert "has no attention layers" not in caplog.text


def test_output_attentions_false_given_is_not_warned_about_under_a_config_that_asks(caplog):
    # An explicit output_attentions=False wins over config.output_attentions=True (as transformers reads it): no
    # attention weights were asked for, so there is nothing to warn about.
    model = tiny_model("gru-tiny")
    model.config.output_attentions = True
    with caplog.at_level("WARNING", logger="seqzoo"):
        model(IDS, output_attentions=False)
    assert "has no attention layers" not in caplog.text
