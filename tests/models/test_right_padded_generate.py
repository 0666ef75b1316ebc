"""generate() on a right-padded prompt: each row padded on the left instead (``prompt_padded_on_the_left``), so
it decodes what it decodes padded on the left, where every model (transformers' own too) would continue it from a
pad."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from seqzoo.cache import SeqzooCache
from seqzoo.conversions.llama import convert_llama
from seqzoo.models.generation import generation_settings, prompt_padded_on_the_left
from tests.conftest import tiny_model

PROMPTS = [[5, 17, 33, 8, 61, 12, 40], [9, 3, 77], [44, 21, 6, 90, 13]]  # odd, unequal lengths
PAD = 0


def padded(prompts, side, width=None):
    width = width or max(map(len, prompts))
    ids = torch.full((len(prompts), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        where = slice(0, len(prompt)) if side == "right" else slice(width - len(prompt), width)
        ids[row, where] = torch.tensor(prompt)
        mask[row, where] = 1
    return ids, mask


def run(model, ids, mask=None, **kwargs):
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=PAD, eos_token_id=None,
                    return_dict_in_generate=True, output_logits=True)
    if mask is not None:
        settings["attention_mask"] = mask
    return model.generate(ids, **{**settings, **kwargs})


def test_right_padded_rows_decode_as_left_padded(family_preset):
    model = tiny_model(family_preset)
    right, right_mask = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    mine, theirs = run(model, right, right_mask), run(model, left, left_mask)
    # The returned sequences hold the prompt padded on the left (as the cache does), then the same new tokens.
    assert torch.equal(mine.sequences, theirs.sequences)
    torch.testing.assert_close(torch.stack(mine.logits), torch.stack(theirs.logits), atol=1e-5, rtol=1e-4)
    for row, prompt in enumerate(PROMPTS):
        alone = run(model, torch.tensor([prompt])).sequences[0, len(prompt):]
        assert torch.equal(mine.sequences[row, right.shape[1]:], alone), f"row {row}"


def test_right_padding_found_from_the_pad_token_without_a_mask(family_preset):
    model = tiny_model(family_preset)
    right, _ = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    assert torch.equal(run(model, right).sequences, run(model, left, left_mask).sequences)


def test_a_pad_token_that_is_also_eos_is_not_taken_for_padding():
    """transformers' rule: without a mask, a pad token that is an EOS token says nothing of padding (its mask is all
    ones), so the prompt is passed on as it is."""
    model = tiny_model("rnn-tiny")
    right, _ = padded(PROMPTS, "right")
    out = run(model, right, eos_token_id=PAD)
    assert torch.equal(out.sequences[:, :right.shape[1]], right)
    ones = run(model, right, torch.ones_like(right), eos_token_id=PAD)
    assert torch.equal(out.sequences, ones.sequences)


def test_an_unpadded_prompt_is_passed_on_untouched():
    model = tiny_model("rnn-tiny")
    config = generation_settings(model, (), {})
    ids, mask = padded(PROMPTS, "left")
    for args, kwargs in [((ids,), dict(attention_mask=mask)), ((), dict(input_ids=ids, pad_token_id=PAD)),
                         ((ids,), dict(pad_token_id=None)), ((ids,), dict(pad_token_id=PAD, eos_token_id=[3, PAD]))]:
        assert prompt_padded_on_the_left(model, args, kwargs, config, None) == (args, kwargs)
        got = prompt_padded_on_the_left(model, args, kwargs, config, None)
        assert got[0] is args and got[1] is kwargs


def test_beams_sampling_and_several_sequences(family_preset):
    model = tiny_model(family_preset)
    right, right_mask = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    beams = dict(num_beams=3, num_return_sequences=2)
    assert torch.equal(run(model, right, right_mask, **beams).sequences, run(model, left, left_mask, **beams).sequences)
    sampled = []
    for ids, mask in ((right, right_mask), (left, left_mask)):
        torch.manual_seed(7)
        sampled.append(run(model, ids, mask, do_sample=True, num_return_sequences=2).sequences)
    assert torch.equal(*sampled)


def test_right_padded_inputs_embeds():
    model = tiny_model("mamba2-tiny")
    right, right_mask = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    embed = model.get_input_embeddings()
    with torch.no_grad():
        mine = run(model, None, right_mask, inputs_embeds=embed(right))
        theirs = run(model, None, left_mask, inputs_embeds=embed(left))
    assert torch.equal(mine.sequences, theirs.sequences)
    torch.testing.assert_close(torch.stack(mine.logits), torch.stack(theirs.logits))


def test_position_ids_are_rolled_with_their_tokens():
    model = tiny_model("transformer-tiny")
    right, right_mask = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    positions = [(mask.cumsum(-1) - 1).clamp(min=0) for mask in (right_mask, left_mask)]
    mine = run(model, right, right_mask, position_ids=positions[0])
    theirs = run(model, left, left_mask, position_ids=positions[1])
    assert torch.equal(mine.sequences, theirs.sequences)
    torch.testing.assert_close(torch.stack(mine.logits), torch.stack(theirs.logits))


def test_with_a_cache_only_the_new_positions_are_rolled(family_preset):
    """A cache holding the first turn (rows padded on the left), then a second turn padded on the right: only the
    positions after the cached ones move, and the rows decode as with the second turn padded on the left (pads
    inside a sequence change no state)."""
    model = tiny_model(family_preset)
    first, first_mask = padded([[5, 17, 33], [9, 3]], "left")
    cache = SeqzooCache.for_model(model)
    turn = run(model, first, first_mask, cache=cache, max_new_tokens=3).sequences
    cached = cache.get_seq_length()  # (the last token generated is not in it yet)
    done = {}
    for side in ("right", "left"):
        ids, mask = padded([[8, 61, 12, 40], [77, 21]], side)
        prompt = torch.cat([turn, ids], dim=1)
        full_mask = torch.cat([first_mask, torch.ones_like(turn[:, first.shape[1]:]), mask], dim=1)
        done[side] = run(model, prompt, full_mask, cache=copy.deepcopy(cache), max_new_tokens=4)
    width = done["left"].sequences.shape[1] - 4
    assert torch.equal(done["right"].sequences[:, width:], done["left"].sequences[:, width:])
    torch.testing.assert_close(torch.stack(done["right"].logits), torch.stack(done["left"].logits))
    assert torch.equal(done["right"].sequences[:, :cached], turn[:, :cached])  # the cached positions stay
    # (row 1's new positions: the turn's last token, then 77, 21 and two pads, now the two pads first)
    assert done["right"].sequences[1, cached:width].tolist() == [PAD, PAD, int(turn[1, -1]), 77, 21]


def test_a_row_of_padding_only_is_left_as_it_is():
    model = tiny_model("lstm-tiny")
    ids, mask = padded([[5, 17, 33], []], "right")
    out = run(model, ids, mask)
    assert torch.equal(out.sequences[1, :ids.shape[1]], ids[1])
    alone = run(model, torch.tensor([[5, 17, 33]])).sequences[0, 3:]
    assert torch.equal(out.sequences[0, 3:], alone)


def test_llama_converted_decodes_a_right_padded_prompt_as_transformers_decodes_it_padded_on_the_left():
    """Against transformers' own LlamaForCausalLM, which must be given the prompt padded on the left."""
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD)).eval()
    llama.set_attn_implementation("eager")
    ours = convert_llama(llama).eval()
    right, right_mask = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    theirs = run(llama, left, left_mask)
    mine = run(ours, right, right_mask)
    assert torch.equal(mine.sequences, theirs.sequences)
    torch.testing.assert_close(torch.stack(mine.logits), torch.stack(theirs.logits), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_masks_of_other_dtypes(dtype):
    model = tiny_model("gru-tiny")
    right, right_mask = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    assert torch.equal(run(model, right, right_mask.to(dtype)).sequences, run(model, left, left_mask).sequences)


def test_a_cache_holding_the_whole_prompt_gets_the_continued_cache_error():
    model = tiny_model("rnn-tiny")
    right, right_mask = padded(PROMPTS, "right")
    cache = SeqzooCache.for_model(model)
    run(model, right, right_mask, cache=cache)
    with pytest.raises(ValueError, match="the cache already holds 11 position"):
        run(model, right, right_mask, cache=cache)


@pytest.mark.parametrize("pad", [PAD, torch.tensor(PAD)], ids=["int", "tensor"])
def test_one_row_ending_in_the_pad_token(pad):
    """One row, no mask: transformers logs nothing there and continues it from the pad."""
    model = tiny_model("mamba-tiny")
    out = run(model, torch.tensor([[5, 17, 33, PAD, PAD]]), pad_token_id=pad).sequences
    assert out[0, :5].tolist() == [PAD, PAD, 5, 17, 33]
    assert torch.equal(out[0, 5:], run(model, torch.tensor([[5, 17, 33]])).sequences[0, 3:])
