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
