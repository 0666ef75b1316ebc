"""An encoder-decoder's cache continued by hand, found by a review: cropped, continued with another source, and
continued by the model in another dtype."""

from __future__ import annotations

import copy

import pytest
import torch

from seqzoo.models.compat import output_cache
from tests.conftest import SEQ2SEQ_FAMILIES, tiny_config, tiny_model

SOURCE = torch.tensor([[5, 17, 33, 8, 61, 12, 40], [9, 3, 77, 44, 21, 6, 90]])
TARGET = torch.tensor([[4, 8, 15, 16, 23, 42], [7, 31, 62, 3, 11, 50]])
ATTENDING = [family for family in sorted(SEQ2SEQ_FAMILIES)
             if tiny_config(SEQ2SEQ_FAMILIES[family]).attention != "none"]


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


@pytest.mark.parametrize("family", ATTENDING)
def test_a_cache_continued_with_a_source_of_another_length_is_refused_naming_both(family):
    # The recurrent decoders failed inside torch ("Expected size for first two dimensions of batch2 tensor"); the
    # Transformer's went on reading the cached source's keys.
    model = tiny_model(SEQ2SEQ_FAMILIES[family])
    cache = prompt_cache(model)
    with torch.no_grad(), pytest.raises(ValueError, match="source of 7 position.*the source given has 5"):
        model(input_ids=SOURCE[:, :5], decoder_input_ids=TARGET[:, 4:], cache=cache)
    assert cache.get_seq_length() == 4


@pytest.mark.parametrize("family", [f for f in ATTENDING if f != "seq2seq-transformer"])
def test_a_float32_cache_is_continued_by_the_model_in_float64(family):
    # As a causal model casts a cached state to its own dtype: Bahdanau's and Luong's dot and general attention
    # failed inside torch on the float32 keys and query ("expected m1 and m2 to have the same dtype").
    model = tiny_model(SEQ2SEQ_FAMILIES[family])
    cache = prompt_cache(model)
    wide = copy.deepcopy(model).double()
    with torch.no_grad():
        continued = wide(input_ids=SOURCE, decoder_input_ids=TARGET[:, 4:], cache=cache).logits
        full = wide(input_ids=SOURCE, decoder_input_ids=TARGET).logits
    assert continued.dtype == torch.float64
    torch.testing.assert_close(continued, full[:, 4:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(SEQ2SEQ_FAMILIES))
def test_a_decoder_cache_continued_with_a_mask_that_says_otherwise_than_its_state_read_is_refused(family):
    # A recurrent decoder skipped a left-padded decoder prompt's pad as its decoder_attention_mask said; continued
    # with no mask (every position a token), it would have gone on from a state that never read it, silently. The
    # Transformer's decoder masks its cached keys as asked, and is left as it is.
    model = tiny_model(SEQ2SEQ_FAMILIES[family])
    start = model.config.decoder_start_token_id
    decoder_ids = torch.tensor([[0, start, 7], [start, 8, 9]])
    decoder_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    kwargs = dict(max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0)
    out = model.generate(SOURCE, decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask,
                         return_dict_in_generate=True, **kwargs)
    cache = output_cache(out)
    following = torch.cat([out.sequences, torch.tensor([[5], [6]])], dim=1)
    right = torch.cat([decoder_mask, decoder_mask.new_ones(2, following.shape[1] - 3)], dim=1)
    if model.config.is_transformer:
        assert cache.read_mask is None
    else:
        assert cache.read_mask.tolist() == right[:, :5].bool().tolist()
        with pytest.raises(ValueError, match=r"read 1 of the 5 position\(s\) .*\(no decoder_attention_mask: every "
                                             r"position a token\): row 0 position 0, read as padding\. .*Pass as "
                                             r"decoder_attention_mask"):
            model.generate(SOURCE, decoder_input_ids=following, cache=cache, **kwargs)
        assert cache.get_seq_length() == 5
    expected = model.generate(SOURCE, decoder_input_ids=following, decoder_attention_mask=right, **kwargs)
    continued = model.generate(SOURCE, decoder_input_ids=following, decoder_attention_mask=right, cache=cache, **kwargs)
    assert torch.equal(continued, expected)
