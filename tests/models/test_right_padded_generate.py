"""generate() on a right-padded prompt: each row decoded padded on the left (``prompt_padded_on_the_left``), where
every model (transformers' own too) would continue it from a pad, and put back as it was given in the returned
sequences and cache (``prompt_put_back``)."""

from __future__ import annotations

import copy

import pytest
import torch

from seqzoo.cache import SeqzooCache
from seqzoo.models.compat import output_cache
from seqzoo.models.generation import generation_settings, prompt_padded_on_the_left
from tests.conftest import tiny_llama_pair, tiny_model

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


def check_same(mine, theirs, prompt, width=None):
    """``mine`` (a right-padded ``prompt``'s generate() output) holds ``prompt`` as given, then the tokens and
    logits of ``theirs`` (the same prompt padded on the left)."""
    width = prompt.shape[1] if width is None else width
    rows = mine.sequences.shape[0] // prompt.shape[0]
    assert torch.equal(mine.sequences[:, :width], prompt.repeat_interleave(rows, dim=0)[:, :width])
    assert torch.equal(mine.sequences[:, width:], theirs.sequences[:, width:])
    torch.testing.assert_close(torch.stack(mine.logits), torch.stack(theirs.logits), atol=1e-5, rtol=1e-4)


def test_right_padded_rows_decode_as_left_padded(family_preset):
    model = tiny_model(family_preset)
    right, right_mask = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    mine = run(model, right, right_mask)
    check_same(mine, run(model, left, left_mask), right)
    for row, prompt in enumerate(PROMPTS):
        alone = run(model, torch.tensor([prompt])).sequences[0, len(prompt):]
        assert torch.equal(mine.sequences[row, right.shape[1]:], alone), f"row {row}"


def test_right_padding_found_from_the_pad_token_without_a_mask(family_preset):
    model = tiny_model(family_preset)
    right, _ = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    check_same(run(model, right), run(model, left, left_mask), right)


def test_a_pad_token_that_is_also_eos_is_not_taken_for_padding():
    """transformers' rule: without a mask, a pad token that is an EOS token says nothing of padding (its mask is all
    ones), so the prompt is decoded as it is."""
    model = tiny_model("rnn-tiny")
    right, _ = padded(PROMPTS, "right")
    out = run(model, right, eos_token_id=PAD)
    ones = run(model, right, torch.ones_like(right), eos_token_id=PAD)
    assert torch.equal(out.sequences, ones.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(ones.logits))


def test_an_unpadded_prompt_is_passed_on_untouched():
    model = tiny_model("rnn-tiny")
    config = generation_settings(model, (), {})
    ids, mask = padded(PROMPTS, "left")
    for args, kwargs in [((ids,), dict(attention_mask=mask)), ((), dict(input_ids=ids, pad_token_id=PAD)),
                         ((ids,), dict(pad_token_id=None)), ((ids,), dict(pad_token_id=PAD, eos_token_id=[3, PAD]))]:
        got = prompt_padded_on_the_left(model, args, kwargs, config, None)
        assert got[0] is args and got[1] is kwargs and got[2] is None


def test_beams_sampling_and_several_sequences(family_preset):
    model = tiny_model(family_preset)
    right, right_mask = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    beams = dict(num_beams=3, num_return_sequences=2)
    check_same(run(model, right, right_mask, **beams), run(model, left, left_mask, **beams), right)
    sampled = []
    for ids, mask in ((right, right_mask), (left, left_mask)):
        torch.manual_seed(7)
        sampled.append(run(model, ids, mask, do_sample=True, num_return_sequences=2))
    check_same(*sampled, right)


def test_right_padded_inputs_embeds():
    """Only new tokens come back (no prompt ids were given), more of them than the prompt's length: none moved."""
    model = tiny_model("mamba2-tiny")
    right, right_mask = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    embed = model.get_input_embeddings()
    with torch.no_grad():
        mine = run(model, None, right_mask, inputs_embeds=embed(right), max_new_tokens=9)
        theirs = run(model, None, left_mask, inputs_embeds=embed(left), max_new_tokens=9)
    assert mine.sequences.shape[1] == 9 and torch.equal(mine.sequences, theirs.sequences)
    torch.testing.assert_close(torch.stack(mine.logits), torch.stack(theirs.logits))


@pytest.mark.parametrize("shared", [False, True], ids=["per-row", "broadcast"])
def test_position_ids_are_rolled_with_their_tokens(shared):
    """Absolute positions (the gpt2 variant), given per row or as one (1, length) row for the batch."""
    model = tiny_model("transformer-tiny", variant="gpt2")
    right, right_mask = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    positions = [(mask.cumsum(-1) - 1).clamp(min=0) for mask in (right_mask, left_mask)]
    if shared:
        positions[0] = torch.arange(right.shape[1])[None]  # (right for every right-padded row's real tokens)
    check_same(run(model, right, right_mask, position_ids=positions[0]),
               run(model, left, left_mask, position_ids=positions[1]), right)


def assert_holds_the_prompt(cache, forward, mask):
    """The attention layers' keys and values ``cache`` holds for the prompt's real tokens (``mask``) are those of
    ``forward``, the cache of a forward of the prompt as given; how many layers were compared."""
    compared = 0
    for held, fresh in zip(cache.layers, forward.layers):
        if getattr(held, "keys", None) is not None:
            for name in ("keys", "values"):
                a, b = getattr(held, name)[:, :, :mask.shape[1]], getattr(fresh, name)
                rows = mask.bool()[:, None, :, None].expand_as(a)
                torch.testing.assert_close(a[rows], b[rows], atol=1e-5, rtol=1e-4)
            compared += 1
    return compared


def test_the_cache_holds_the_prompt_as_given(family_preset):
    """Its attention layers' keys of the real tokens are those of a forward of the prompt as given; a later call
    continues it with the mask the prompt came with, then ones, as the same sequences decode without a cache."""
    model = tiny_model(family_preset)
    right, right_mask = padded(PROMPTS, "right")
    cache = SeqzooCache.for_model(model)
    out = run(model, right, right_mask, cache=cache).sequences
    assert_holds_the_prompt(cache, output_cache(model(right, attention_mask=right_mask, use_cache=True)), right_mask)
    more = torch.tensor([[11, 22], [33, 44], [55, 66]])
    prompt = torch.cat([out, more], dim=1)
    mask = torch.cat([right_mask, torch.ones(len(PROMPTS), prompt.shape[1] - right.shape[1], dtype=torch.long)], 1)
    continued = run(model, prompt, mask, cache=cache)
    whole = run(model, prompt, mask)  # (no cache: the prompt, pads inside, read whole)
    assert torch.equal(continued.sequences, whole.sequences)
    torch.testing.assert_close(torch.stack(continued.logits), torch.stack(whole.logits), atol=1e-5, rtol=1e-4)


def test_with_a_cache_only_the_new_positions_are_rolled(family_preset):
    """A cache holding the first turn (rows padded on the left), then a second turn padded on the right: only the
    positions after the cached ones move while decoding, the rows decode as with the second turn padded on the left
    (pads inside a sequence change no state), and the sequences come back as given."""
    model = tiny_model(family_preset)
    first, first_mask = padded([[5, 17, 33], [9, 3]], "left")
    cache = SeqzooCache.for_model(model)
    turn = run(model, first, first_mask, cache=cache, max_new_tokens=3).sequences
    done, prompts = {}, {}
    for side in ("right", "left"):
        ids, mask = padded([[8, 61, 12, 40], [77, 21]], side)
        prompts[side] = torch.cat([turn, ids], dim=1)
        full_mask = torch.cat([first_mask, torch.ones_like(turn[:, first.shape[1]:]), mask], dim=1)
        done[side] = run(model, prompts[side], full_mask, cache=copy.deepcopy(cache), max_new_tokens=4)
    check_same(done["right"], done["left"], prompts["right"])


def test_a_row_of_padding_only_is_left_as_it_is():
    model = tiny_model("lstm-tiny")
    ids, mask = padded([[5, 17, 33], []], "right")
    out = run(model, ids, mask)
    assert torch.equal(out.sequences[:, :ids.shape[1]], ids)
    alone = run(model, torch.tensor([[5, 17, 33]])).sequences[0, 3:]
    assert torch.equal(out.sequences[0, 3:], alone)


def test_llama_converted_decodes_a_right_padded_prompt_as_transformers_decodes_it_padded_on_the_left():
    """Against transformers' own LlamaForCausalLM, which must be given the prompt padded on the left."""
    llama, ours = tiny_llama_pair(PAD)
    right, right_mask = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    mine, theirs = run(ours, right, right_mask), run(llama, left, left_mask)
    assert torch.equal(mine.sequences[:, :right.shape[1]], right)
    assert torch.equal(mine.sequences[:, right.shape[1]:], theirs.sequences[:, left.shape[1]:])
    torch.testing.assert_close(torch.stack(mine.logits), torch.stack(theirs.logits), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_masks_of_other_dtypes(dtype):
    model = tiny_model("gru-tiny")
    right, right_mask = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    check_same(run(model, right, right_mask.to(dtype)), run(model, left, left_mask), right)


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
    assert out[0, :5].tolist() == [5, 17, 33, PAD, PAD]
    assert torch.equal(out[0, 5:], run(model, torch.tensor([[5, 17, 33]])).sequences[0, 3:])


def test_a_plain_tensor_result_and_the_caller_s_tensors_untouched():
    model = tiny_model("transformer-tiny")
    right, right_mask = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    given = (right.clone(), right_mask.clone())
    out = model.generate(right, attention_mask=right_mask, max_new_tokens=4, do_sample=False, pad_token_id=PAD)
    theirs = model.generate(left, attention_mask=left_mask, max_new_tokens=4, do_sample=False, pad_token_id=PAD)
    assert torch.equal(out[:, :right.shape[1]], right) and torch.equal(out[:, right.shape[1]:],
                                                                       theirs[:, left.shape[1]:])
    assert torch.equal(right, given[0]) and torch.equal(right_mask, given[1])


def test_peft_prompt_tuning_cache_holds_virtual_tokens_then_the_prompt_as_given():
    """With peft's prompt tuning the cache holds V virtual tokens before the prompt: the prompt's positions are put
    back after them (a first version put back the cache's first P positions, the virtual tokens among them)."""
    peft = pytest.importorskip("peft")
    virtual = 3
    model = peft.get_peft_model(tiny_model("transformer-tiny"), peft.PromptTuningConfig(
        task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=virtual)).eval()
    right, right_mask = padded(PROMPTS, "right")
    left, left_mask = padded(PROMPTS, "left")
    settings = dict(max_new_tokens=2, do_sample=False, pad_token_id=PAD, return_dict_in_generate=True)
    mine = output_cache(model.generate(input_ids=right, attention_mask=right_mask, **settings))
    theirs = output_cache(model.generate(input_ids=left, attention_mask=left_mask, **settings))
    width = right.shape[1]
    for a, b in zip(mine.layers, theirs.layers):
        if getattr(a, "keys", None) is None:
            continue
        for row, prompt in enumerate(PROMPTS):
            n = len(prompt)
            torch.testing.assert_close(a.keys[row, :, :virtual], b.keys[row, :, :virtual], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(a.keys[row, :, virtual:virtual + n],
                                       b.keys[row, :, virtual + width - n:virtual + width], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("preset", ["transformer-tiny", "hybrid-tiny"])
def test_the_cache_of_a_prompt_of_embeddings_holds_it_as_given(preset):
    """No ids come back for a prompt of embeddings: the cache's prompt positions are counted without them."""
    model = tiny_model(preset)
    right, right_mask = padded(PROMPTS, "right")
    with torch.no_grad():
        embeds = model.get_input_embeddings()(right)
    cache = SeqzooCache.for_model(model)
    run(model, None, right_mask, inputs_embeds=embeds, cache=cache, max_new_tokens=3)
    forward = output_cache(model(inputs_embeds=embeds, attention_mask=right_mask, use_cache=True))
    assert assert_holds_the_prompt(cache, forward, right_mask)


def real_positions(mask, rows):
    """(rows, T) bool: the real tokens of ``mask``'s rows, each repeated for ``rows // B`` returned rows."""
    return mask.bool().repeat_interleave(rows // mask.shape[0], dim=0)


@pytest.mark.parametrize("beams", [1, 2])
def test_the_prompt_s_hidden_states_come_back_as_given(family_preset, beams):
    """The prompt's forward's hidden states at its real tokens are those of a forward of the prompt as given."""
    model = tiny_model(family_preset)
    right, right_mask = padded(PROMPTS, "right")
    out = run(model, right, right_mask, output_hidden_states=True, num_beams=beams, max_new_tokens=3)
    forward = model(right, attention_mask=right_mask, output_hidden_states=True).hidden_states
    real = real_positions(right_mask, out.hidden_states[0][0].shape[0])
    assert len(out.hidden_states[0]) == len(forward)
    for mine, theirs in zip(out.hidden_states[0], forward):
        theirs = theirs.repeat_interleave(beams, dim=0)
        torch.testing.assert_close(mine[real], theirs[real], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("preset", ["transformer-tiny", "hybrid-tiny"])
def test_the_attentions_read_the_prompt_as_given(preset):
    """Every step's attention weights are those of a forward of the returned sequences with the prompt's mask
    extended by ones: the prompt's forward at its real queries, each later step's over every key."""
    model = tiny_model(preset)
    model.set_attn_implementation("eager")
    right, right_mask = padded(PROMPTS, "right")
    out = run(model, right, right_mask, output_attentions=True, max_new_tokens=4)
    width = right.shape[1]
    mask = torch.cat([right_mask, torch.ones(len(PROMPTS), out.sequences.shape[1] - width, dtype=torch.long)], 1)
    forward = model(out.sequences, attention_mask=mask, output_attentions=True).attentions
    compared = 0
    for step, layers in enumerate(out.attentions):
        assert len(layers) == len(forward)
        for mine, whole in zip(layers, forward):
            if mine is None:
                assert whole is None
                continue
            compared += 1
            if step == 0:
                real = right_mask.bool()
                torch.testing.assert_close(mine.transpose(1, 2)[real],
                                           whole[:, :, :width, :width].transpose(1, 2)[real], atol=1e-5, rtol=1e-4)
            else:
                at = width + step - 1
                torch.testing.assert_close(mine[:, :, 0], whole[:, :, at, :at + 1], atol=1e-5, rtol=1e-4)
    assert compared


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny", "hybrid-tiny"])
def test_with_a_cache_the_outputs_of_the_new_positions_come_back_as_given(preset):
    """A cache holding a first turn, then a second turn padded on the right: the hidden states and attention weights
    of its forward (the positions after the cached ones) are a whole forward's of the prompt as given."""
    model = tiny_model(preset)
    attends = preset != "lstm-tiny"
    if attends:
        model.set_attn_implementation("eager")
    first, first_mask = padded([[5, 17, 33], [9, 3]], "left")
    cache = SeqzooCache.for_model(model)
    turn = run(model, first, first_mask, cache=cache, max_new_tokens=3).sequences
    ids, mask = padded([[8, 61, 12, 40], [77, 21]], "right")
    prompt = torch.cat([turn, ids], dim=1)
    full_mask = torch.cat([first_mask, torch.ones_like(turn[:, first.shape[1]:]), mask], dim=1)
    held = cache.get_seq_length()
    out = run(model, prompt, full_mask, cache=cache, max_new_tokens=2, output_hidden_states=True,
              output_attentions=attends)
    whole = model(prompt, attention_mask=full_mask, output_hidden_states=True, output_attentions=attends)
    real = full_mask[:, held:].bool()
    for mine, theirs in zip(out.hidden_states[0], whole.hidden_states):
        torch.testing.assert_close(mine[real], theirs[:, held:][real], atol=1e-5, rtol=1e-4)
    for mine, theirs in zip(out.attentions[0] if out.attentions else (), whole.attentions or ()):
        if mine is not None:
            torch.testing.assert_close(mine.transpose(1, 2)[real], theirs[:, :, held:].transpose(1, 2)[real],
                                       atol=1e-5, rtol=1e-4)
