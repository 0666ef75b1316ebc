"""Packing markers the collator does not write but a caller may: seq_idx that goes down as well as up, and malformed
position_ids / cu_seq_lens, each refused by name (not by torch's error on expand or indexing, nor accepted)."""

from __future__ import annotations

import pytest
import torch

from seqzoo.models.compat import output_cache
from tests.conftest import FAMILIES, tiny_model

DOCS = [[5, 17], [33, 8, 61], [40, 9]]
IDS = torch.tensor([[t for doc in DOCS for t in doc]])  # 7 tokens


@pytest.mark.parametrize("family", ["lstm", "mamba"])
def test_seq_idx_that_goes_back_to_a_lower_value_starts_a_document(family):
    # Mamba's convention: a change of seq_idx, up or down, is a new sequence. [1, 1, 0, 0, 0, 1, 1] is three documents.
    model = tiny_model(FAMILIES[family]).double().eval()
    seq_idx = torch.tensor([[1, 1, 0, 0, 0, 1, 1]])
    with torch.no_grad():
        packed = model(IDS, seq_idx=seq_idx).logits[0]
        expected = torch.cat([model(torch.tensor([doc]), use_cache=False).logits[0] for doc in DOCS])
    torch.testing.assert_close(packed, expected, rtol=1e-5, atol=1e-6)


def test_position_ids_of_fewer_rows_than_the_batch_are_refused_by_name():
    ids = torch.tensor([[5, 17, 33, 8, 61]] * 3)
    with pytest.raises(ValueError, match=r"position_ids must have shape \(3, 5\) .* or \(1, 5\); got \(2, 5\)"):
        tiny_model("lstm-tiny")(ids, position_ids=torch.arange(5).repeat(2, 1))


@pytest.mark.parametrize("cu", [[0, 3, 5], [0, 3, 9], [0, 3, 3, 7]], ids=["short", "beyond", "empty-document"])
def test_cu_seq_lens_must_end_at_the_token_count_and_rise_strictly(cu):
    with pytest.raises(ValueError, match=r"cu_seq_lens_q must rise strictly from 0 to 7"):
        tiny_model("lstm-tiny")(IDS, cu_seq_lens_q=torch.tensor(cu, dtype=torch.int32))


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny"])
def test_restarting_position_ids_continuing_a_left_padded_cache_are_refused(preset):
    # The mask spans the cached and the current positions; the current tokens are its last columns (the first ones
    # are this row's left padding, which would hide the restart).
    model = tiny_model(preset)
    ids = torch.tensor([[0, 0, 5, 17, 33, 8, 61, 40], [9, 3, 77, 21, 6, 40, 12, 2]])
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with torch.no_grad():
        cache = output_cache(model(ids[:, :5], attention_mask=mask[:, :5], use_cache=True))
        with pytest.raises(ValueError, match="position_ids restart between two real tokens"):
            model(ids[:, 5:], attention_mask=mask, cache=cache, position_ids=torch.tensor([[3, 0, 1], [5, 6, 7]]))


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny"])
def test_a_restart_behind_a_masked_pad_is_refused_and_positions_across_holes_are_not(preset):
    # Two documents with a pad between them: the restart sits beside no real token, and was taken (the LSTM ran the
    # second document on from the first's state).
    model = tiny_model(preset)
    ids = torch.tensor([[5, 17, 33, 8, 61, 0, 40, 9, 12]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 1, 1, 1]])
    with pytest.raises(ValueError, match="position_ids restart between two real tokens"):
        model(ids, attention_mask=mask, position_ids=torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2]]))
    # A hole numbered as generate() numbers it (counting real tokens) or counting every position: no restart.
    for positions in ([0, 1, 2, 3, 4, 1, 5, 6, 7], list(range(9))):
        model(ids, attention_mask=mask, position_ids=torch.tensor([positions]))


def test_a_mask_shorter_than_the_inputs_with_position_ids_is_named():
    # (was torch's "The size of tensor a (4) must match the size of tensor b (2)" from the packing check)
    ids = torch.tensor([[5, 17, 33, 8, 61], [1, 2, 3, 4, 5]])
    with pytest.raises(ValueError, match=r"attention_mask of shape \(2, 3\) does not fit the inputs of shape \(2, 5\)"):
        tiny_model("lstm-tiny")(ids, attention_mask=torch.ones(2, 3, dtype=torch.long),
                                position_ids=torch.arange(5).repeat(2, 1))


def test_cu_seq_lens_of_floats_are_refused():
    # (were truncated: 3.5 read as 3, a document boundary nobody asked for; seq_idx and position_ids refuse floats)
    with pytest.raises(ValueError, match="cu_seq_lens_q must be an integer tensor, got dtype torch.float32"):
        tiny_model("lstm-tiny")(IDS, cu_seq_lens_q=torch.tensor([0.0, 3.5, 7.0]))


def test_restarting_position_ids_with_a_cache_are_positions_not_packing():
    # As in transformers, the markers mean packing only without a cache: a recurrent model continues its cache and
    # reads no positions (the documents are not run alone, dropping the cache).
    model = tiny_model("lstm-tiny")
    ids = torch.tensor([[5, 17, 33, 8, 61, 40, 9]])
    with torch.no_grad():
        cache = output_cache(model(ids[:, :3], use_cache=True))
        expected = model(ids).logits[:, 3:]
        got = model(ids[:, 3:], cache=cache, position_ids=torch.tensor([[3, 4, 0, 1]]))
    torch.testing.assert_close(got.logits, expected)


def test_output_attentions_with_packed_rows_of_a_hybrid_is_refused():
    # The documents run in a batch of their own: their attention weights have no packed layout (not dropped silently).
    model = tiny_model(FAMILIES["hybrid"])
    with pytest.raises(ValueError, match="output_attentions=True cannot be combined with packed rows"):
        model(IDS, position_ids=torch.tensor([[0, 1, 0, 1, 2, 0, 1]]), output_attentions=True)


@pytest.mark.parametrize("family", ["mamba", "rwkv7"])
def test_a_bidirectional_model_of_a_resetting_mixer_reads_each_packed_document_alone(family):
    # Resets mark documents' starts; a right-to-left pass would need their ends, so these unpack too.
    from seqzoo.registry import architecture_for_model_type
    from tests.conftest import tiny_config

    config = tiny_config(FAMILIES[family], bidirectional=True)
    model = architecture_for_model_type(config.model_type).heads["token-classification"](config).double().eval()
    with torch.no_grad():
        packed = model(IDS, position_ids=torch.tensor([[0, 1, 0, 1, 2, 0, 1]])).logits[0]
        expected = torch.cat([model(torch.tensor([doc])).logits[0] for doc in DOCS])
    torch.testing.assert_close(packed, expected)
