"""Checks found missing by a mutation check of the seq2seq attention and the encoder-decoders: each test here
fails with one deliberate bug that the rest of the suite let through, and compares against plain torch (a softmax,
the decoder rebuilt by hand from torch cells in test_decoder_reference.py)."""

from __future__ import annotations

import pytest
import torch

from seqzoo.layers.seq2seq_attention import masked_softmax
from tests.conftest import tiny_model
from tests.seq2seq.test_decoder_reference import CASES, SOURCE, SOURCE_MASK, TARGET, hand_logits


def test_masked_softmax_gives_an_empty_source_row_zero_weights_and_the_others_torchs_softmax():
    # The model refuses empty sources, but the function is public and its docstring promises zeros, not NaN.
    torch.manual_seed(0)
    scores = torch.randn(3, 2, 5)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    weights = masked_softmax(scores, mask)
    assert torch.equal(weights[1], torch.zeros(2, 5))
    for row in (0, 2):
        want = torch.zeros(2, 5)
        want[:, mask[row]] = torch.softmax(scores[row][:, mask[row]], dim=-1)
        torch.testing.assert_close(weights[row], want)


@pytest.mark.parametrize("case", ["luong-general-feeding", "bahdanau", "luong-general"])
def test_an_unpadded_target_without_a_decoder_mask_matches_the_decoder_built_by_hand(case):
    # Without decoder_attention_mask the decoder steps with no mask at all: input feeding must still feed each
    # step's attentional vector to the next (the padded-target reference test never takes this path).
    preset, overrides = CASES[case]
    model = tiny_model(preset, dropout=0.0, **overrides)
    with torch.no_grad():
        want = hand_logits(model, SOURCE, SOURCE_MASK, TARGET, torch.ones_like(TARGET))
        got = model(SOURCE, attention_mask=SOURCE_MASK, decoder_input_ids=TARGET).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
