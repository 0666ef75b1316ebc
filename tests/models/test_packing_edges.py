"""Edges of packed-row detection that tests/models/test_packing.py passes over: a first document of one token,
markers given alone or spanning rows, malformed markers, and left-padded rows whose position ids are not packing."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.conftest import FAMILIES, tiny_model

DOCS = [[5], [40], [70, 12, 3]]  # a first document of one token, then another
IDS = torch.tensor([list(itertools.chain(*DOCS))])


def alone(model, docs=DOCS):
    return torch.cat([model(torch.tensor([doc]), use_cache=False).logits[0] for doc in docs])


@pytest.mark.parametrize("docs", [DOCS, [[5], [40, 70, 12]]], ids=["two-one-token-docs", "only-a-boundary-at-1"])
@pytest.mark.parametrize("family", ["lstm", "mamba", "transformer"])
def test_one_token_documents_at_the_start_are_packing(family, docs):
    model = tiny_model(FAMILIES[family]).double().eval()
    ids = torch.tensor([list(itertools.chain(*docs))])
    positions = torch.tensor([[i for doc in docs for i in range(len(doc))]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids, position_ids=positions).logits[0], alone(model, docs),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["lstm", "transformer"])
def test_cu_seq_lens_k_alone_marks_the_documents_and_is_refused_with_a_mask(family):
    model = tiny_model(FAMILIES[family]).double().eval()
    cu = torch.tensor([0, 1, 2, 5], dtype=torch.int32)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS, cu_seq_lens_k=cu).logits[0], alone(model), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="take no attention_mask"):
        model(IDS, cu_seq_lens_k=cu, attention_mask=torch.ones_like(IDS))


def test_cu_seq_lens_not_starting_at_0_are_refused():
    with pytest.raises(ValueError, match="cu_seq_lens_q must rise strictly from 0 to 5"):
        tiny_model("lstm-tiny")(IDS, cu_seq_lens_q=torch.tensor([1, 2, 5]))


def test_a_document_of_cu_seq_lens_that_runs_on_into_the_next_row_is_refused():
    # It was cut at the row's end without a word, its part in the next row computed without its start (FlashAttention's
    # varlen kernels, which read cu_seq_lens over the flattened batch, would attend across the two rows).
    model = tiny_model("lstm-tiny").double().eval()
    ids = torch.tensor([[5, 17, 33, 8], [61, 40, 9, 70]])
    with torch.no_grad(), pytest.raises(ValueError, match=r"cu_seq_lens_q=\[0, 3, 8\] has a document run on from row 0 "
                                                          r"into row 1 of the batch's 2 rows of 4 tokens"):
        model(ids, cu_seq_lens_q=torch.tensor([0, 3, 8]))
    with torch.no_grad():  # (each row beginning a document: taken)
        split = model(ids, cu_seq_lens_q=torch.tensor([0, 3, 4, 8])).logits
        torch.testing.assert_close(split[1], model(ids[1:]).logits[0])


@pytest.mark.parametrize("positions, message", [
    (torch.zeros(3, 5, dtype=torch.long), r"position_ids must have shape \(2, 5\)"),
    (torch.ones(2, 5, dtype=torch.bool), "position_ids must be an integer tensor, got dtype torch.bool")])
def test_position_ids_of_another_batch_or_bool_are_refused(positions, message):
    with pytest.raises(ValueError, match=message):
        tiny_model("lstm-tiny")(IDS.repeat(2, 1), position_ids=positions)


@pytest.mark.parametrize("family", ["lstm", "transformer"])
def test_left_padded_rows_with_their_position_ids_are_not_packing(family):
    # transformers' positions for a left-padded row: 0 on the padding, then 0, 1, ... (cumsum - 1, clamped)
    model = tiny_model(FAMILIES[family]).eval()
    ids, mask = torch.tensor([[0, 0, 5, 17, 33], [9, 3, 77, 21, 6]]), torch.tensor([[0, 0, 1, 1, 1], [1] * 5])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask, position_ids=positions).logits[0, 2:],
                                   model(ids[:1, 2:]).logits[0], rtol=1e-4, atol=1e-5)


def test_a_bidirectional_model_reads_each_packed_document_alone():
    from seqzoo.registry import architecture_for_model_type
    from tests.conftest import tiny_config

    config = tiny_config(FAMILIES["gru"], bidirectional=True)
    model = architecture_for_model_type(config.model_type).heads["token-classification"](config).double().eval()
    docs = [[5, 17, 33, 8, 61], [40, 9]]
    with torch.no_grad():
        packed = model(torch.tensor([list(itertools.chain(*docs))]), position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1]])).logits[0]
        expected = torch.cat([model(torch.tensor([doc])).logits[0] for doc in docs])
    torch.testing.assert_close(packed, expected)


@pytest.mark.parametrize("preset", ["lstm-tiny", "hybrid-tiny"])
def test_a_document_whose_positions_jump_ahead_is_a_document_of_its_own(preset):
    # Any step of the position ids other than +1 starts a document (transformers' rule), a jump ahead too; a document
    # that starts at position 5 is computed at positions 5, 6, ... (an attention layer's RoPE reads them).
    model = tiny_model(preset)
    ids = torch.tensor([[5, 17, 33, 40, 70]])
    with torch.no_grad():
        packed = model(ids, position_ids=torch.tensor([[0, 1, 2, 5, 6]])).logits
        first = model(ids[:, :3]).logits
        second = model(ids[:, 3:], position_ids=torch.tensor([[5, 6]])).logits
    torch.testing.assert_close(packed[:, :3], first)
    torch.testing.assert_close(packed[:, 3:], second)
