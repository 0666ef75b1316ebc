"""State is exact where it must be: a pad anywhere (start, middle, end) changes no state (every family: the README's
"pads inside a sequence" holds for attention, a hybrid and every variant too, and across a cache), and beam search
carries every state tensor with its beam. In float64 with tight tolerances, so a pad step that changes the state by
1e-3, or a beam that keeps another beam's LSTM cell state, shows.

Models are called plainly (``model(ids, attention_mask=...)``, ``generate``), so the checks hold whatever the cache
looks like inside."""

from __future__ import annotations

import pytest
import torch

import seqzoo
from seqzoo.models.compat import output_cache
from tests.conftest import FAMILIES, tiny_model

RECURRENT = ["rnn", "lstm", "gru", "mamba", "mamba2", "rwkv7"]
EVERY_FAMILY = sorted(FAMILIES)  # the recurrent ones, the Transformer's variants, rnn-relu and the hybrids
TIGHT = dict(rtol=1e-9, atol=1e-9)


def model_of(family):
    return tiny_model(FAMILIES[family]).double()


def with_holes(tokens: list[int], trailing: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``tokens`` with pads at the start, after the 2nd and 5th token, and (``trailing``) at the end;
    (ids, attention_mask)."""
    pads = {0, 1, 4, 5, 9} | ({14, 15} if trailing else set())
    length = len(tokens) + len(pads)
    ids, mask, rest = [], [], iter(tokens)
    for position in range(length):
        if position in pads:
            ids.append(0)
            mask.append(0)
        else:
            ids.append(next(rest))
            mask.append(1)
    return torch.tensor([ids]), torch.tensor([mask])


TOKENS = [5, 17, 42, 8, 91, 33, 7, 60, 12]


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_pads_anywhere_change_no_logit_of_a_real_token(family):
    model = model_of(family)
    ids, mask = with_holes(TOKENS)
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits[0, mask[0].bool()]
        compact = model(torch.tensor([TOKENS])).logits[0]
    torch.testing.assert_close(padded, compact, **TIGHT)


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_generation_after_a_prompt_with_pads_equals_the_compact_prompt(family):
    # Generation continues through the cache from the state the prompt's pads must not have touched. (A prompt
    # ends with a real token: the logits at its last position pick the first new token.)
    model = model_of(family)
    ids, mask = with_holes(TOKENS, trailing=False)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, output_scores=True,
                  return_dict_in_generate=True)
    with torch.no_grad():
        padded = model.generate(ids, attention_mask=mask, **kwargs)
        compact = model.generate(torch.tensor([TOKENS]), **kwargs)
    assert torch.equal(padded.sequences[0, ids.shape[1]:], compact.sequences[0, len(TOKENS):])
    for a, b in zip(padded.scores, compact.scores):  # generate() hands out scores in float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_pads_on_both_sides_of_a_cache_change_no_logit_of_a_real_token(family):
    # "also with pads inside a sequence and when continuing from a cache": the prompt with holes split in two, the
    # second part fed on the first's cache with the whole mask, gives every real token the logits of one forward.
    model = model_of(family)
    ids, mask = with_holes(TOKENS)
    with torch.no_grad():
        cache = output_cache(model(ids[:, :6], attention_mask=mask[:, :6], use_cache=True))
        continued = model(ids[:, 6:], attention_mask=mask, cache=cache).logits[0, mask[0, 6:].bool()]
        compact = model(torch.tensor([TOKENS])).logits[0, int(mask[0, :6].sum()):]
    torch.testing.assert_close(continued, compact, **TIGHT)


def test_a_hybrid_of_the_classic_mixers_keeps_pads_out_of_every_state():
    # The hybrid presets mix Mamba, Mamba-2 or RWKV-7 with attention; "any mixer per layer" includes the classic
    # cells (an Elman RNN with relu too), each keeping pads out of its state beside the attention's keys.
    torch.manual_seed(0)
    config = seqzoo.HybridConfig(vocab_size=99, hidden_size=32, mixer_types=["lstm", "attention", "gru", "rnn"],
                                 mixer_config={"attention": {"num_attention_heads": 4, "num_key_value_heads": 2},
                                               "rnn": {"nonlinearity": "relu"}},
                                 pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = seqzoo.HybridForCausalLM(config).eval().double()
    ids, mask = with_holes(TOKENS)
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits[0, mask[0].bool()]
        compact = model(torch.tensor([TOKENS])).logits[0]
        cache = output_cache(model(ids[:, :6], attention_mask=mask[:, :6], use_cache=True))
        continued = model(ids[:, 6:], attention_mask=mask, cache=cache).logits[0, mask[0, 6:].bool()]
    torch.testing.assert_close(padded, compact, **TIGHT)
    torch.testing.assert_close(continued, compact[int(mask[0, :6].sum()):], **TIGHT)


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_beam_scores_equal_a_plain_forward_over_each_returned_sequence(family):
    # With length_penalty=0 a beam's score is the sum of its tokens' log-probabilities. Recomputed by one forward
    # over the returned sequence (no cache), it must be the same: a beam that carried another beam's state (one
    # state tensor not reordered) scored its tokens with the wrong state.
    model = model_of(family)
    model.generation_config.eos_token_id = None  # every beam runs the full length: no finished, padded beams
    prompt = torch.tensor([TOKENS[:4]])
    new = 5
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=new, num_beams=4, num_return_sequences=4, do_sample=False,
                             pad_token_id=0, length_penalty=0.0, early_stopping=True, output_scores=True,
                             return_dict_in_generate=True)
        logprobs = model(out.sequences).logits.log_softmax(-1)
    start = prompt.shape[1]
    generated = out.sequences[:, start:]
    assert generated.shape[1] == new
    picked = logprobs[:, start - 1:-1].gather(-1, generated[..., None])[..., 0]
    # generate() keeps beam scores in float32.
    torch.testing.assert_close(out.sequences_scores, picked.sum(-1).float(), rtol=1e-5, atol=1e-5)
