"""An encoder-decoder's cache continued by hand, found by a review: cropped."""

from __future__ import annotations

import pytest
import torch

from seqzoo.models.compat import output_cache
from tests.conftest import SEQ2SEQ_FAMILIES, tiny_model

SOURCE = torch.tensor([[5, 17, 33, 8, 61, 12, 40], [9, 3, 77, 44, 21, 6, 90]])
TARGET = torch.tensor([[4, 8, 15, 16, 23, 42], [7, 31, 62, 3, 11, 50]])


def prompt_cache(model, source=SOURCE, length=4):
    with torch.no_grad():
        return output_cache(model(input_ids=source, decoder_input_ids=TARGET[:, :length]))


def test_a_transformer_decoders_cache_is_not_cropped_through_the_sources_keys():
    # Its layers are all attention layers, so it said it could be cropped, and crop(-2) cut two positions off the
    # cross-attention's keys and values too: the source's, of which the continuation then read five of seven.
    model = tiny_model(SEQ2SEQ_FAMILIES["seq2seq-transformer"])
    cache = prompt_cache(model)
    assert not cache.is_croppable
    cache.crop(0)  # removes no position: accepted, as on every cache
    with pytest.raises(ValueError, match=r"crop\(-2\).*cannot be cropped.*source's keys and values"):
        cache.crop(-2)
    with torch.no_grad():
        continued = model(input_ids=SOURCE, decoder_input_ids=TARGET[:, 4:], cache=cache).logits
        full = model(input_ids=SOURCE, decoder_input_ids=TARGET).logits
    torch.testing.assert_close(continued, full[:, 4:])  # the refused crop left the cache as it was
