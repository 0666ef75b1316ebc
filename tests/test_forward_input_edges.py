"""Edges of forward()'s input checks that the wider tests pass over: both inputs at once, bool ids, a mask one
column too long or too short or of another rank, embeddings without a batch dimension, a bad id between good ones in
a decode-sized input, and when a forward keeps a cache unasked."""

from __future__ import annotations

import pytest
import torch

from seqzoo.models.compat import output_cache
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


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny"])
@pytest.mark.parametrize("mask", [torch.ones(4), torch.ones(2, 1, 4)], ids=["1-d", "3-d"])
def test_a_mask_that_is_neither_2d_nor_4d_is_refused(preset, mask):
    with pytest.raises(ValueError, match=r"attention_mask must be 2-d \(batch, past_length \+ sequence_length\)"):
        tiny_model(preset)(IDS, attention_mask=mask)


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny"])
def test_a_mask_shorter_than_the_inputs_is_refused(preset):
    model = tiny_model(preset)
    with pytest.raises(ValueError, match=r"expected \(batch, L\) with 4 <= L <= 4"):
        model(IDS, attention_mask=torch.ones(2, 3))


def test_a_short_mask_after_a_cache_is_said_to_need_every_cached_position_only_where_a_layer_attends():
    for preset, attends in (("transformer-tiny", True), ("lstm-tiny", False)):
        model = tiny_model(preset)
        cache = output_cache(model(IDS[:, :2], use_cache=True))
        with pytest.raises(ValueError, match="does not fit the inputs") as err:
            model(IDS[:, 2:], attention_mask=torch.ones(2, 1), cache=cache)
        assert ("(every cached position: attention layers read them all)" in str(err.value)) == attends


def test_inputs_embeds_without_a_batch_dimension_are_refused():
    model = tiny_model("lstm-tiny")
    embeds = model.get_input_embeddings()(IDS[0])
    with pytest.raises(ValueError, match=r"inputs_embeds must have shape \(batch, sequence_length, 32\); got \(4, "):
        model(inputs_embeds=embeds)


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny"])
def test_a_forward_keeps_a_cache_by_default_in_eval_only(preset):
    model = tiny_model(preset)
    assert output_cache(model(IDS)) is not None
    model.train()
    assert output_cache(model(IDS)) is None
    assert output_cache(model(IDS, use_cache=True)) is not None
    model.eval().config.use_cache = False
    assert output_cache(model(IDS)) is None


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
