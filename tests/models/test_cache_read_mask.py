"""A cache continued with a mask that says otherwise than what its recurrent state read is refused.

A batched chat: generate() finishes one row early and feeds it pad tokens after its EOS as tokens (transformers'
loop does, with mask 1). The next turn passes the sequences plus new tokens and no mask; generate() builds one from the
pad token, 0 at those pads. A recurrent state (RNN, LSTM, GRU, RWKV-7, Mamba, Mamba-2, a hybrid's recurrent layers)
has read them and cannot honour the 0s: the row continued differently from the same call without the cache, without a
word. The other way round, a left-padded first call continued with a mask of ones there, too. Attention layers mask
their keys as asked (the Transformer, as Llama), and are left as they are.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from seqzoo.models.compat import GENERATE_CACHE_KWARG, output_cache
from tests.conftest import families_where, tiny_llama_pair, tiny_model

PAD = 0
NEW = torch.tensor([[7, 8], [7, 8]])
# (max_new_tokens, output_logits: greedy, and the logits compared with the same call without a cache)
NEXT_TURN = dict(max_new_tokens=3, do_sample=False, pad_token_id=PAD, eos_token_id=None, output_logits=True,
                 return_dict_in_generate=True)
# Row 0 is padded on the left; a few prompts, one of which makes row 0 stop first on some EOS token.
PROMPT_PAIRS = [([5, 17, 33], [9, 3, 77, 44, 21]), ([44, 21, 6], [5, 17, 33, 8, 61]),
                ([12, 40], [90, 13, 6, 21, 3]), ([61, 8, 5], [33, 77, 9, 44, 12])]

RECURRENT = families_where("can_crop_cache", False)  # (every family whose cache holds a recurrent state)


def left_pad(first, second):
    width = max(len(first), len(second))
    ids = torch.full((2, width), PAD, dtype=torch.long)
    for row, prompt in enumerate((first, second)):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
    return ids, (ids != PAD).long()


def chat_first_turn(model):
    """A first turn in which row 0 ends on its EOS after one token and is fed pad tokens after it while row 1 goes
    on: its ids, mask, the output (with its cache) and the EOS token."""
    for first, second in PROMPT_PAIRS:
        ids, mask = left_pad(first, second)
        probe = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=PAD,
                               eos_token_id=None)[:, ids.shape[1]:]
        eos = int(probe[0, 0])
        if eos != PAD and eos not in probe[1].tolist():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=PAD,
                                 eos_token_id=eos, return_dict_in_generate=True)
            assert out.sequences[0, ids.shape[1] + 1:].tolist() == [PAD] * 3  # fed as tokens, but the last
            return ids, mask, out, eos
    pytest.fail("no prompt pair makes row 0 stop first")


def extended(mask, length):
    """The previous call's mask extended by ones to ``length`` positions: what the cache read."""
    return torch.cat([mask, mask.new_ones(mask.shape[0], length - mask.shape[1])], dim=1)


def check_same_as_without_cache(model, ids, mask, cache):
    with_cache = model.generate(ids, attention_mask=mask, cache=cache, **NEXT_TURN)
    without = model.generate(ids, attention_mask=mask, **NEXT_TURN)
    assert torch.equal(with_cache.sequences, without.sequences)
    torch.testing.assert_close(torch.stack(with_cache.logits), torch.stack(without.logits), atol=1e-4, rtol=1e-4)


def held(cache):
    return [tensor.clone() for tensor in cache.tensors()], cache.get_seq_length(), cache.batch_size


def assert_unchanged(cache, before):
    tensors, length, rows = before
    assert (cache.get_seq_length(), cache.batch_size) == (length, rows)
    assert all(torch.equal(a, b) for a, b in zip(cache.tensors(), tensors, strict=True))


@pytest.mark.parametrize("preset", RECURRENT)
def test_a_batched_chat_s_next_turn_with_the_mask_from_the_pad_token_is_refused(preset):
    model = tiny_model(preset)
    ids, mask, out, _ = chat_first_turn(model)
    cache = output_cache(out)
    following = torch.cat([out.sequences, NEW], dim=1)
    length = ids.shape[1]
    assert torch.equal(cache.read_mask, extended(mask, length + 3).bool())
    before = held(cache)
    where = rf"row 0 position {length + 1}, read as a token; row 0 position {length + 2}, read as a token"
    with pytest.raises(ValueError, match=rf"read 2 of the {length + 3} position\(s\) it holds otherwise than this "
                                         rf"call's mask says \(no attention_mask: the one generate\(\) builds from "
                                         rf"pad_token_id=0\): {where}\. .*torch\.cat\(\[m, m\.new_ones"):
        model.generate(following, cache=cache, **NEXT_TURN)
    assert_unchanged(cache, before)  # refused before any layer ran
    with pytest.raises(ValueError, match=rf"\(attention_mask\): {where}"):  # under the older name, the mask passed
        model.generate(following, attention_mask=(following != PAD).long(), past_key_values=cache, **NEXT_TURN)
    assert_unchanged(cache, before)
    # the mask the cache was filled with, extended by ones: what the same call without the cache decodes
    check_same_as_without_cache(model, following, extended(mask, following.shape[1]), cache)


@pytest.mark.parametrize("preset", ["lstm-tiny", "mamba2-tiny", "hybrid-tiny"])
def test_a_left_padded_turn_continued_with_a_mask_of_ones_there_is_refused(preset):
    # The other way round: the first call skipped its left padding; the next one says those were tokens (here with
    # the pad token an EOS token, where transformers builds no mask from it).
    model = tiny_model(preset)
    ids, mask = left_pad(*PROMPT_PAIRS[0])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=PAD,
                         eos_token_id=None, return_dict_in_generate=True)
    cache = output_cache(out)
    following = torch.cat([out.sequences, NEW], dim=1)
    with pytest.raises(ValueError, match=r"read 2 of the 7 position\(s\) .*\(no attention_mask: every position a "
                                         r"token\): row 0 position 0, read as padding; row 0 position 1, read as "
                                         r"padding\."):
        model.generate(following, cache=copy.deepcopy(cache), **{**NEXT_TURN, "eos_token_id": PAD})
    with pytest.raises(ValueError, match=r"row 0 position 0, read as padding"):
        model.generate(following, attention_mask=torch.ones_like(following), cache=copy.deepcopy(cache), **NEXT_TURN)
    # without a mask, the one from the pad token is right here (no row stopped early)
    check_same_as_without_cache(model, following, None, copy.deepcopy(cache))
    check_same_as_without_cache(model, following, extended(mask, following.shape[1]), cache)


def test_a_model_of_attention_layers_only_continues_as_transformers_llama_and_is_not_refused():
    # LlamaForCausalLM masks the cached keys of the pads after the EOS as the next turn's mask asks; the Transformer
    # converted from it continues the same chat with its cache to the same tokens and logits.
    llama, ours = tiny_llama_pair(PAD)
    ids, mask, out, eos = chat_first_turn(ours)
    theirs = llama.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=PAD,
                            eos_token_id=eos, return_dict_in_generate=True)
    assert torch.equal(out.sequences, theirs.sequences) and output_cache(out).read_mask is None
    following = torch.cat([out.sequences, NEW], dim=1)
    mine = ours.generate(following, cache=output_cache(out), **NEXT_TURN)
    reference = llama.generate(following, **{GENERATE_CACHE_KWARG: output_cache(theirs)}, **NEXT_TURN)
    assert torch.equal(mine.sequences, reference.sequences)
    torch.testing.assert_close(torch.stack(mine.logits), torch.stack(reference.logits), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", ["lstm-tiny", "hybrid-tiny"])
def test_the_record_travels_with_copies_and_pickles_and_reset_clears_it(preset):
    model = tiny_model(preset)
    ids, mask, out, _ = chat_first_turn(model)
    cache = output_cache(out)
    following = torch.cat([out.sequences, NEW], dim=1)
    buffer = io.BytesIO()
    torch.save(cache, buffer)
    buffer.seek(0)
    for each in (copy.deepcopy(cache), torch.load(buffer, weights_only=False)):
        assert torch.equal(each.read_mask, cache.read_mask)
        with pytest.raises(ValueError, match=r"row 0 position \d+, read as a token"):
            model.generate(following, cache=each, **NEXT_TURN)
        check_same_as_without_cache(model, following, extended(mask, following.shape[1]), each)
    row = copy.deepcopy(cache)  # a row selected keeps its record, and is checked by it
    row.batch_select_indices([0])
    assert torch.equal(row.read_mask, cache.read_mask[:1])
    with pytest.raises(ValueError, match=r"row 0 position \d+, read as a token"):
        model.generate(following[:1], cache=row, **NEXT_TURN)
    row.reorder_cache(torch.tensor([0]))  # (beam search's: the record is dropped, not reordered at every step)
    assert row.read_mask is None
    cache.reset()
    assert cache.read_mask is None


def test_an_unpadded_chat_of_one_row_continues_without_a_mask():
    model = tiny_model("mamba-tiny")
    ids = torch.tensor([[5, 17, 33, 8]])
    out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=PAD, eos_token_id=None,
                         return_dict_in_generate=True)
    cache = output_cache(out)
    assert cache.read_mask.tolist() == [[True] * 6]
    following = torch.cat([out.sequences, NEW[:1]], dim=1)
    check_same_as_without_cache(model, following, None, cache)
    assert cache.read_mask.shape == (1, following.shape[1] + 2)  # (extended by the second call)


def test_rows_repeated_for_several_sequences_are_recorded_so_and_a_beam_search_s_cache_is_not():
    model = tiny_model("gru-tiny")
    ids, mask = left_pad(*PROMPT_PAIRS[0])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=True, top_k=1, num_return_sequences=2,
                         pad_token_id=PAD, eos_token_id=None, return_dict_in_generate=True)
    cache = output_cache(out)
    assert torch.equal(cache.read_mask, extended(mask, 7).bool().repeat_interleave(2, dim=0))
    following = torch.cat([out.sequences, NEW.repeat(2, 1)], dim=1)
    with pytest.raises(ValueError, match=r"row 1 position 0, read as padding"):
        model.generate(following, attention_mask=torch.ones_like(following), cache=copy.deepcopy(cache), **NEXT_TURN)
    check_same_as_without_cache(model, following, extended(mask.repeat_interleave(2, dim=0), following.shape[1]),
                                cache)
    # a cache passed with one row per prompt is repeated with its record, and put back with it when refused
    first = output_cache(model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=PAD,
                                        eos_token_id=None, return_dict_in_generate=True))
    record = first.read_mask.clone()
    with pytest.raises(ValueError):
        model.generate(torch.cat([ids, NEW], 1), cache=first, max_new_tokens=-1, num_return_sequences=2,
                       do_sample=True)
    assert torch.equal(first.read_mask, record)
    beams = model.generate(ids, attention_mask=mask, max_new_tokens=2, num_beams=2, pad_token_id=PAD,
                           eos_token_id=None, return_dict_in_generate=True)
    assert output_cache(beams).read_mask is None  # (refused for continuing anyway)


def test_a_cache_filled_by_a_forward_is_not_recorded_nor_checked():
    # A direct forward records nothing (a decode step pays nothing for it): such a cache is continued unchecked, as
    # README says, and so is the generate() that continues it.
    model = tiny_model("rwkv7-tiny")
    ids, mask = left_pad(*PROMPT_PAIRS[0])
    with torch.no_grad():
        cache = output_cache(model(ids[:, :3], attention_mask=mask[:, :3], use_cache=True))
    assert cache.read_mask is None
    out = model.generate(ids, attention_mask=mask, cache=cache, max_new_tokens=2, do_sample=False, pad_token_id=PAD,
                         eos_token_id=None, return_dict_in_generate=True)
    assert output_cache(out).read_mask is None


@pytest.mark.parametrize("preset", ["lstm-tiny", "hybrid-tiny"])
def test_a_right_padded_prompt_is_recorded_as_given(preset):
    # generate() decodes it padded on the left and puts it back as given: the mask given, extended by ones, is the
    # one to continue with.
    model = tiny_model(preset)
    ids = torch.tensor([[5, 17, 33, PAD, PAD], [9, 3, 77, 44, 21]])
    mask = (ids != PAD).long()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=PAD,
                         eos_token_id=None, return_dict_in_generate=True)
    cache = output_cache(out)
    assert torch.equal(cache.read_mask, extended(mask, 7).bool())
    following = torch.cat([out.sequences, NEW], dim=1)
    with pytest.raises(ValueError, match=r"row 0 position 3, read as padding"):
        model.generate(following, attention_mask=torch.ones_like(following), cache=copy.deepcopy(cache), **NEXT_TURN)
    check_same_as_without_cache(model, following, extended(mask, following.shape[1]), cache)


def test_a_cache_of_other_rows_gets_the_batch_error_not_a_mask_one():
    model = tiny_model("lstm-tiny")
    ids, mask = left_pad(*PROMPT_PAIRS[0])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=PAD,
                         eos_token_id=None, return_dict_in_generate=True)
    following = torch.cat([out.sequences, NEW], dim=1)
    with pytest.raises(ValueError, match=r"the cache holds 2 sequence\(s\) but the inputs have batch size 3"):
        model.generate(torch.cat([following, following[1:]]), cache=output_cache(out), **{**NEXT_TURN,
                                                                                           "eos_token_id": PAD})
