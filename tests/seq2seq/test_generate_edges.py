"""An encoder-decoder's ``generate()`` at its edges, found by a review: a padded batch of sources passed without a
mask, encoder outputs passed in (reused, or as the encoder's tuple), and the encoder's tuple of attentions alone."""

from __future__ import annotations

import pytest
import torch

from seqzoo.models.seq2seq.modeling_seq2seq import _as_encoder_output, source_mask_from_padding
from tests.conftest import SEQ2SEQ_FAMILIES, tiny_model

SOURCES = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 0, 0], [0, 0, 0, 21, 22, 23, 24]])
SETTINGS = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}


@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
def test_a_padded_batch_without_a_mask_decodes_each_row_as_alone(family):
    model = tiny_model(SEQ2SEQ_FAMILIES[family])
    assert model.generation_config.pad_token_id == 0
    batch = model.generate(SOURCES, **SETTINGS)
    masked = model.generate(SOURCES, attention_mask=(SOURCES != 0).long(), **SETTINGS)
    assert torch.equal(batch, masked)
    for row, source in enumerate(SOURCES):
        alone = model.generate(source[source != 0][None], **SETTINGS)
        assert torch.equal(batch[row], alone[0])


def test_the_mask_is_inferred_only_from_a_pad_token_that_is_not_an_eos_token():
    model = tiny_model(next(iter(SEQ2SEQ_FAMILIES.values())))
    from seqzoo.models.generation import generation_settings

    def inferred(**kwargs):
        source_mask_from_padding(model, generation_settings(model, (SOURCES,), kwargs), (SOURCES,), kwargs)
        return kwargs.get("attention_mask")

    assert torch.equal(inferred(), (SOURCES != 0).long())
    assert torch.equal(inferred(pad_token_id=12), (SOURCES != 12).long())
    assert inferred(pad_token_id=0, eos_token_id=[2, 0]) is None  # (transformers' rule: pad = eos says nothing)
    assert inferred(pad_token_id=99) is None  # (no pad token in the sources)
    assert inferred(pad_token_id=None) is None
    given = torch.ones_like(SOURCES)
    assert inferred(attention_mask=given) is given


@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
def test_encoder_outputs_passed_in_are_left_as_they_were(family):
    model = tiny_model(SEQ2SEQ_FAMILIES[family])
    sources = SOURCES[:2, :5]
    encoded = model.get_encoder()(input_ids=sources)
    shapes = {name: value.shape for name, value in encoded.items() if torch.is_tensor(value)}
    expected = model.generate(sources, num_beams=3, num_return_sequences=2, **SETTINGS)
    for _ in range(2):  # (transformers repeated the caller's tensors in place: the second call returned more rows)
        out = model.generate(encoder_outputs=encoded, num_beams=3, num_return_sequences=2, **SETTINGS)
        assert torch.equal(out, expected)
        assert {name: value.shape for name, value in encoded.items() if torch.is_tensor(value)} == shapes


@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
@pytest.mark.parametrize("beams", [1, 2])
def test_encoder_outputs_as_the_encoders_tuple(family, beams):
    model = tiny_model(SEQ2SEQ_FAMILIES[family])
    sources = SOURCES[:2, :5]
    expected = model.generate(sources, num_beams=beams, **SETTINGS)
    as_tuple = model.get_encoder()(input_ids=sources, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(model.generate(encoder_outputs=as_tuple, num_beams=beams, **SETTINGS), expected)


def test_the_encoders_tuple_of_attentions_alone_is_read_as_attentions():
    model = tiny_model(SEQ2SEQ_FAMILIES["seq2seq-transformer"])
    sources = SOURCES[:2, :5]
    encoder = model.get_encoder()
    for flags in ({"output_attentions": True}, {"output_hidden_states": True},
                  {"output_attentions": True, "output_hidden_states": True}):
        as_dict = encoder(input_ids=sources, **flags)
        read = _as_encoder_output(encoder(input_ids=sources, return_dict=False, **flags))
        for name in ("last_hidden_state", "hidden_states", "attentions"):
            assert (getattr(read, name) is None) == (getattr(as_dict, name) is None), (flags, name)
        if as_dict.attentions is not None:
            assert all(torch.equal(a, b) for a, b in zip(read.attentions, as_dict.attentions))


def test_a_decoder_prompt_of_another_batch_size_is_refused_by_name():
    """As the forward refuses it, instead of torch's size error inside transformers' set-up; the source given as
    ids, embeddings or encoder outputs."""
    model = tiny_model(next(iter(SEQ2SEQ_FAMILIES.values())))
    start = model.generation_config.decoder_start_token_id
    prompt = torch.full((2, 1), start)
    message = r"generate\(\): decoder_input_ids hold 2 sequence\(s\) but the source 3; pass one decoder prompt per"
    encoded = model.get_encoder()(SOURCES)
    for source in ({"input_ids": SOURCES}, {"inputs_embeds": model.get_input_embeddings()(SOURCES)},
                   {"encoder_outputs": encoded}):
        with pytest.raises(ValueError, match=message):
            model.generate(**source, decoder_input_ids=prompt, **SETTINGS)
    with pytest.raises(ValueError, match=message):
        model.generate(SOURCES, decoder_input_ids=prompt, **SETTINGS)
    assert model.generate(SOURCES, decoder_input_ids=torch.full((3, 1), start), **SETTINGS).shape[0] == 3


@pytest.mark.parametrize("family", ["seq2seq-bahdanau", "seq2seq-transformer"])
def test_a_chunked_prefill_is_refused_by_name(family):
    """transformers' chunked prefill cuts the source's attention_mask to the decoder's chunk (its own BART fails on
    the sizes); an encoder-decoder's generate() failed with "Cannot use prefill chunking without a cache", a cache
    the call never turned off. Refused naming the setting, also when the model's generation config holds it."""
    model = tiny_model(SEQ2SEQ_FAMILIES[family])
    start = model.generation_config.decoder_start_token_id
    prompt = torch.tensor([[start, 4, 5, 6]] * 3)
    message = r"prefill_chunk_size=2 reads a decoder-only model's prompt in chunks; an encoder-decoder reads"
    with pytest.raises(ValueError, match=message):
        model.generate(SOURCES, decoder_input_ids=prompt, prefill_chunk_size=2, **SETTINGS)
    model.generation_config.prefill_chunk_size = 2
    with pytest.raises(ValueError, match=message):
        model.generate(SOURCES, **SETTINGS)
