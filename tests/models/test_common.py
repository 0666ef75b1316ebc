"""Registry-driven tests: every registered preset family gets the same checks."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.generation.streamers import BaseStreamer

from seqzoo.models.compat import output_cache
from tests.conftest import families_where, tiny_model

PROMPTS = [[5, 17, 33, 8, 61, 12, 40], [9, 3, 77], [44, 21, 6, 90, 13]]  # odd, unequal lengths
NEW_TOKENS = 6


def left_pad(prompts, pad_id=0):
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def greedy(model, ids, mask=None, **kwargs):
    out = model.generate(
        ids, attention_mask=mask if mask is not None else torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
        do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0, **kwargs,
    )
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, dim=1)


def test_forward_backward(family_preset):
    model = tiny_model(family_preset).train()
    ids = torch.randint(3, 99, (2, 7))
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 7, 99)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_auto_classes_resolve(family_preset):
    model = tiny_model(family_preset)
    values = model.config.to_diff_dict()
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    assert type(config) is type(model.config)
    assert type(AutoModelForCausalLM.from_config(config)) is type(model)
    assert type(AutoModel.from_config(config)) is type(model.model)


def test_save_load_roundtrip(family_preset, tmp_path):
    model = tiny_model(family_preset)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    ids = torch.randint(3, 99, (2, 7))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    if model.config.tie_word_embeddings:
        assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    else:
        assert "lm_head.weight" in keys


def test_load_in_bfloat16(family_preset, tmp_path):
    model = tiny_model(family_preset)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    ids = torch.randint(3, 99, (2, 7))
    logits = loaded(ids).logits
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), model(ids).logits, atol=0.05, rtol=0.05)


def test_cached_generation_equals_full_recompute(family_preset):
    model = tiny_model(family_preset)
    ids = torch.tensor([PROMPTS[0]])
    cached_tokens, cached_logits = greedy(model, ids, use_cache=True)
    full_tokens, full_logits = greedy(model, ids, use_cache=False)
    assert torch.equal(cached_tokens, full_tokens)
    torch.testing.assert_close(cached_logits, full_logits, atol=1e-4, rtol=1e-4)


def test_chunked_forward_equals_token_by_token(family_preset):
    model = tiny_model(family_preset)
    ids = torch.tensor([PROMPTS[0], PROMPTS[0][::-1]])
    full = model(ids, use_cache=False).logits
    out = model(ids[:, :3], use_cache=True)
    steps = [out.logits]
    cache = output_cache(out)
    for t in range(3, ids.shape[1]):
        out = model(ids[:, t:t + 1], cache=cache, use_cache=True)
        cache = output_cache(out)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    assert cache.get_seq_length() == ids.shape[1]


def test_left_padded_rows_equal_alone(family_preset):
    model = tiny_model(family_preset)
    ids, mask = left_pad(PROMPTS)
    batch_tokens, batch_logits = greedy(model, ids, mask)
    for row, prompt in enumerate(PROMPTS):
        alone_tokens, alone_logits = greedy(model, torch.tensor([prompt]))
        assert torch.equal(batch_tokens[row], alone_tokens[0]), f"row {row} differs from its prompt alone"
        torch.testing.assert_close(batch_logits[row], alone_logits[0], atol=1e-4, rtol=1e-4)


def test_padded_forward_logits_equal_alone(family_preset):
    model = tiny_model(family_preset)
    ids, mask = left_pad(PROMPTS)
    logits = model(ids, attention_mask=mask).logits
    for row, prompt in enumerate(PROMPTS):
        alone = model(torch.tensor([prompt])).logits[0]
        torch.testing.assert_close(logits[row, -len(prompt):], alone, atol=1e-5, rtol=1e-4)


def test_beam_search_with_cache_equals_without(family_preset):
    model = tiny_model(family_preset)
    ids, mask = left_pad(PROMPTS[:2])
    kwargs = dict(attention_mask=mask, max_new_tokens=NEW_TOKENS, num_beams=3, num_return_sequences=2,
                  do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    cached = model.generate(ids, use_cache=True, **kwargs)
    uncached = model.generate(ids, use_cache=False, **kwargs)
    assert cached.sequences.shape[0] == 4
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=1e-4, rtol=1e-4)


def test_beam_search_rows_equal_alone(family_preset):
    model = tiny_model(family_preset)
    ids, mask = left_pad(PROMPTS[:2])
    kwargs = dict(max_new_tokens=NEW_TOKENS, num_beams=3, do_sample=False, pad_token_id=0)
    batch = model.generate(ids, attention_mask=mask, **kwargs)[:, ids.shape[1]:]
    for row, prompt in enumerate(PROMPTS[:2]):
        alone = model.generate(torch.tensor([prompt]), **kwargs)[0, len(prompt):]
        assert torch.equal(batch[row], alone)


def test_sampling(family_preset):
    model = tiny_model(family_preset)
    ids = torch.tensor([PROMPTS[1]])
    kwargs = dict(max_new_tokens=NEW_TOKENS, do_sample=True, pad_token_id=0)
    torch.manual_seed(1)
    first = model.generate(ids, temperature=0.7, top_p=0.9, **kwargs)
    torch.manual_seed(1)
    second = model.generate(ids, temperature=0.7, top_p=0.9, **kwargs)
    assert torch.equal(first, second)
    # top_k=1 sampling must pick the argmax at every step, i.e. reproduce greedy decoding.
    top1 = model.generate(ids, top_k=1, **kwargs)
    greedy_ids = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    assert torch.equal(top1, greedy_ids)
    many = model.generate(ids, num_return_sequences=3, top_k=50, temperature=1.5, **kwargs)
    assert many.shape == (3, ids.shape[1] + NEW_TOKENS)


def test_bad_token_ids_raise(family_preset):
    model = tiny_model(family_preset)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[1, 99]]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[-1, 5]]))
    with pytest.raises(ValueError, match="shape"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="integer"):
        model(torch.tensor([[1.0, 2.0]]))


def test_state_size_is_reported(family_preset):
    model = tiny_model(family_preset)
    config = model.config
    out = model(torch.tensor([PROMPTS[0]]), use_cache=True)
    cache = output_cache(out)
    # What the config reports is what the cache holds: a fixed state, plus K/V growing with every position.
    expected = config.state_bytes_per_sequence(dtype_bytes=4) + len(PROMPTS[0]) * config.kv_bytes_per_token(4)
    assert cache.state_bytes() == expected > 0
    json.dumps(config.to_dict())  # configs stay JSON-serialisable


def test_a_decoded_token_adds_only_its_keys_and_values_to_the_cache(family_preset):
    # "O(1) time and memory per decoded token": a recurrent layer's state keeps its shapes step after step; an
    # attention layer (the Transformer, a hybrid's) grows by one position's keys and values.
    model = tiny_model(family_preset)
    config = model.config
    with torch.no_grad():
        out = model(torch.tensor([PROMPTS[1]]), use_cache=True)
        cache = output_cache(out)
        for _ in range(5):
            out = model(out.logits[:, -1:].argmax(-1), cache=cache)
    length = len(PROMPTS[1]) + 5
    assert cache.state_bytes() == config.state_bytes_per_sequence(4) + length * config.kv_bytes_per_token(4)
    assert (config.kv_bytes_per_token(4) == 0) == config.capabilities.constant_state_decode


def test_generate_continues_from_a_user_cache(family_preset):
    model = tiny_model(family_preset)
    ids = torch.tensor([PROMPTS[0]])
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    expected = model.generate(ids, **kwargs)
    cache = output_cache(model(ids[:, :4], use_cache=True))
    assert torch.equal(model.generate(ids, cache=cache, **kwargs), expected)


@pytest.mark.parametrize("mode", [dict(do_sample=False), dict(num_beams=3, num_return_sequences=2, do_sample=False)],
                         ids=["greedy", "beams"])
def test_generate_continues_a_user_cache_of_a_left_padded_prompt(family_preset, mode):
    # The cache of a padded batch's first positions, made by a forward with their mask, continued by generate()
    # with the whole mask: what the padded batch generates without it.
    model = tiny_model(family_preset)
    ids, mask = left_pad(PROMPTS)
    kwargs = dict(attention_mask=mask, max_new_tokens=4, pad_token_id=0, eos_token_id=None, **mode)
    expected = model.generate(ids, **kwargs)
    with torch.no_grad():
        cache = output_cache(model(ids[:, :5], attention_mask=mask[:, :5], use_cache=True))
    assert torch.equal(model.generate(ids, cache=cache, **kwargs), expected)


def test_several_sequences_per_prompt_of_a_left_padded_batch_equal_each_prompt_alone(family_preset):
    # top_k=1 sampling is greedy: each of a row's num_return_sequences copies decodes what its prompt alone does.
    model = tiny_model(family_preset)
    ids, mask = left_pad(PROMPTS[:2])
    kwargs = dict(max_new_tokens=4, pad_token_id=0, eos_token_id=None)
    batch = model.generate(ids, attention_mask=mask, do_sample=True, top_k=1, num_return_sequences=2, **kwargs)
    for row, prompt in enumerate(PROMPTS[:2]):
        alone = model.generate(torch.tensor([prompt]), do_sample=False, **kwargs)[0, len(prompt):]
        for copy_ in (2 * row, 2 * row + 1):
            assert torch.equal(batch[copy_, ids.shape[1]:], alone), (row, copy_)


class CollectingStreamer(BaseStreamer):
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.clone().reshape(-1))

    def end(self):
        self.ended = True


def test_streaming_sends_the_tokens_returned_and_beam_search_refuses_a_streamer(family_preset):
    check_streaming(tiny_model(family_preset), torch.tensor([PROMPTS[0]]))


def check_streaming(model, ids):
    """A streamer receives exactly the tokens generate() returns, and beam search refuses one (also run by
    tests/seq2seq/test_common.py)."""
    streamer = CollectingStreamer()
    out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, eos_token_id=None,
                         streamer=streamer)
    assert streamer.ended and torch.equal(torch.cat(streamer.chunks), out[0])
    with pytest.raises(ValueError, match="streamer"):
        model.generate(ids, max_new_tokens=2, num_beams=2, pad_token_id=0, streamer=CollectingStreamer())


@pytest.mark.parametrize("mode", [dict(num_beams=3, num_return_sequences=2, do_sample=False),
                                  dict(do_sample=True, top_k=20, num_return_sequences=3)], ids=["beams", "sampled"])
def test_generate_continues_a_user_cache_into_several_sequences_per_prompt(family_preset, mode):
    # generate() repeats every input tensor num_beams / num_return_sequences times, but not a cache object: every
    # such call with a cache failed with the cache's batch-size error. The cache's rows are repeated alongside.
    model = tiny_model(family_preset)
    ids = torch.tensor([PROMPTS[0], PROMPTS[2] + [7, 11]])
    kwargs = dict(max_new_tokens=4, pad_token_id=0, eos_token_id=None, **mode)
    torch.manual_seed(0)
    expected = model.generate(ids, **kwargs)
    with torch.no_grad():
        cache = output_cache(model(ids[:, :4], use_cache=True))
    torch.manual_seed(0)
    assert torch.equal(model.generate(ids, cache=cache, **kwargs), expected)
    with torch.no_grad():  # a call refused before its first step leaves the cache one row per prompt
        cache = output_cache(model(ids[:, :4], use_cache=True))
    with pytest.raises(ValueError):
        model.generate(ids, cache=cache, max_new_tokens=-1, **mode)
    assert cache.batch_size == 2 and cache.get_seq_length() == 4


def test_a_cache_passed_is_returned_advanced_whatever_use_cache_says(family_preset):
    # A forward given a cache advances it in place; the Transformer then returned cache=None under use_cache=False
    # while every other family (and LlamaForCausalLM) returned the cache it advanced.
    model = tiny_model(family_preset).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        cache = output_cache(model(ids[:, :4], use_cache=True))
        out = model(ids[:, 4:], cache=cache, use_cache=False)
        full = model(ids).logits
    assert output_cache(out) is cache and cache.get_seq_length() == 6
    torch.testing.assert_close(out.logits, full[:, 4:], atol=1e-5, rtol=1e-5)
    assert output_cache(model(ids, use_cache=False)) is None


def test_a_cache_holding_the_whole_input_is_refused(family_preset):
    # generate() advances the cache it is given in place: passing it again with the same inputs, or a cache of the
    # whole prompt, made transformers feed the cached tokens a second time on top of it (garbage, silently).
    model = tiny_model(family_preset)
    ids = torch.tensor([PROMPTS[0]])
    kwargs = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():  # (copy.deepcopy takes only tensors outside a graph)
        cache = output_cache(model(ids, use_cache=True))
    with pytest.raises(ValueError, match=r"the cache already holds 7 position\(s\), but input_ids has 7"):
        model.generate(ids, cache=cache, **kwargs)
    assert cache.get_seq_length() == 7  # refused before any forward
    longer = torch.cat([ids, torch.tensor([[11]])], dim=1)
    expected = model.generate(longer, **kwargs)
    assert torch.equal(model.generate(longer, cache=copy.deepcopy(cache), **kwargs), expected)
    model.generate(longer, cache=cache, **kwargs)
    with pytest.raises(ValueError, match="already holds 10 position"):  # the same cache a second time
        model.generate(longer, cache=cache, **kwargs)
    # use_cache=False beside a cache made transformers feed the whole sequence at every step on top of it
    with pytest.raises(ValueError, match="a cache to continue was passed with use_cache=False"):
        model.generate(torch.cat([longer, longer[:, -1:]], dim=1), cache=cache, use_cache=False, **kwargs)
    assert cache.get_seq_length() == 10  # refused before any forward


def test_the_cache_of_a_beam_search_is_refused_for_continuing(family_preset):
    """Its rows hold the running beams of the last step, not the sequences returned, which transformers keeps no
    cache for: continuing it decoded other tokens than the returned sequences decoded afresh, without an error."""
    model = tiny_model(family_preset)
    ids = torch.tensor([PROMPTS[0]])
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    out = model.generate(ids, max_new_tokens=3, num_beams=3, num_return_sequences=3, return_dict_in_generate=True,
                         **kwargs)
    with pytest.raises(ValueError, match="this cache comes from a beam search"):
        model.generate(out.sequences, cache=output_cache(out), max_new_tokens=2, **kwargs)
    # a greedy run's cache continues as before, and a reset one decodes as new
    out = model.generate(ids, max_new_tokens=3, return_dict_in_generate=True, **kwargs)
    assert torch.equal(model.generate(out.sequences, cache=output_cache(out), max_new_tokens=2, **kwargs),
                       model.generate(out.sequences, max_new_tokens=2, **kwargs))


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny"])
def test_a_generation_configs_use_cache_false_beside_a_cache_is_refused(preset):
    model = tiny_model(preset)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        cache = output_cache(model(ids[:, :4], use_cache=True))
    model.generation_config.use_cache = False
    with pytest.raises(ValueError, match="a cache to continue was passed with use_cache=False"):
        model.generate(ids, cache=cache, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert cache.get_seq_length() == 4


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny"])
def test_the_cache_of_a_beam_search_asked_for_by_the_generation_config_is_refused_for_continuing(preset):
    model = tiny_model(preset)
    model.generation_config.num_beams = 3
    out = model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=3, do_sample=False, pad_token_id=0,
                         eos_token_id=None, return_dict_in_generate=True)
    with pytest.raises(ValueError, match="this cache comes from a beam search"):
        model.generate(out.sequences, cache=output_cache(out), max_new_tokens=2, do_sample=False, pad_token_id=0)


def test_a_cache_holding_the_whole_prompt_of_embeddings_is_refused_naming_the_embeddings():
    model = tiny_model("lstm-tiny")
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        cache = output_cache(model(ids, use_cache=True))
        embeds = model.get_input_embeddings()(ids)
    with pytest.raises(ValueError, match=r"the cache already holds 7 position\(s\), but inputs_embeds has 7"):
        model.generate(inputs_embeds=embeds, cache=cache, max_new_tokens=2, do_sample=False, pad_token_id=0)


def test_a_cache_with_gradients_recorded_says_how_to_copy_it(family_preset):
    model = tiny_model(family_preset)
    ids = torch.tensor([PROMPTS[0]])
    cache = output_cache(model(ids, use_cache=True))  # outside no_grad: the states are in the graph
    with pytest.raises(RuntimeError, match=r"holds tensors of an autograd graph .* torch.no_grad\(\)"):
        copy.deepcopy(cache)
    copied = copy.deepcopy(cache.detach())
    assert copied is not cache and copied.get_seq_length() == cache.get_seq_length() == 7
    assert all(a is not b and torch.equal(a, b) for a, b in zip(copied.tensors(), cache.tensors()))
    assert len(list(copied.tensors())) == len(list(cache.tensors())) > 0


ASSISTED = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("preset", families_where("can_crop_cache"))
def test_assisted_decoding_equals_plain_decoding(preset):
    model = tiny_model(preset)
    ids = torch.tensor([[5, 6, 7, 5, 6, 7]])
    assert torch.equal(model.generate(ids, prompt_lookup_num_tokens=2, **ASSISTED), model.generate(ids, **ASSISTED))


@pytest.mark.parametrize("preset", families_where("can_crop_cache", False))
def test_assisted_decoding_is_refused_when_the_cache_cannot_be_cropped(preset):
    # A recurrent state cannot be cropped back after rejected draft tokens: refused clearly, not mis-decoded. The
    # refusal names the model, why, and what decodes instead (transformers' own says only "not supported with
    # stateful models"), for a draft model as for prompt lookup.
    model = tiny_model(preset)
    ids = torch.tensor([[5, 6, 7, 5, 6, 7]])
    why = (rf"{type(model).__name__}\.generate: assisted decoding .* stateful models: this model keeps a recurrent "
           r"state \(\w+.* layers\), which cannot be rolled back .*greedy, sampling and beam search work")
    layers = model.config.num_hidden_layers
    for assisted in ({"prompt_lookup_num_tokens": 2}, {"assistant_model": tiny_model("transformer-tiny")},
                     {"assistant_early_exit": 0}):  # (0 asks for early exit as transformers reads it)
        with pytest.raises(ValueError, match=why):
            model.generate(ids, **assisted, **ASSISTED)
    assert model.config.num_hidden_layers == layers  # (early exit left it at 0: every later forward failed)
    # With beam search transformers decodes without the draft (as for an attention model): still allowed.
    beams = dict(ASSISTED, num_beams=2)
    assert torch.equal(model.generate(ids, prompt_lookup_num_tokens=2, **beams), model.generate(ids, **beams))


@pytest.mark.parametrize("draft", ["lstm-tiny", "mamba-tiny", "hybrid-tiny"])
def test_a_draft_model_that_keeps_a_state_is_refused_by_name(draft):
    # transformers checks the main model alone: the draft's cache failed to crop after the first round of drafts
    model = tiny_model("transformer-tiny")
    with pytest.raises(ValueError, match=rf"assistant_model {type(tiny_model(draft)).__name__} keeps a recurrent "
                                         "state"):
        model.generate(torch.tensor([[5, 6, 7, 5, 6, 7]]), assistant_model=tiny_model(draft), **ASSISTED)
    ids = torch.tensor([[5, 6, 7, 5, 6, 7]])  # an attention-only draft still decodes as plain greedy
    assert torch.equal(model.generate(ids, assistant_model=tiny_model("transformer-tiny", seed=1), **ASSISTED),
                       model.generate(ids, **ASSISTED))


def test_a_stateful_model_with_a_stateful_draft_is_refused_for_itself():
    # The main model's refusal comes first: the draft's advice (an attention-only draft, or prompt lookup) would not
    # help a main model that keeps a recurrent state.
    model = tiny_model("rnn-tiny")
    with pytest.raises(ValueError,
                       match=r"RNNForCausalLM\.generate: assisted decoding .* this model keeps a recurrent"):
        model.generate(torch.tensor([[5, 6, 7, 5, 6, 7]]), assistant_model=tiny_model("lstm-tiny"), **ASSISTED)


@pytest.mark.parametrize("preset", families_where("can_crop_cache"))
def test_early_exit_drafting_is_refused_and_leaves_the_model_as_it_was(preset):
    # transformers drafts with the model itself, setting config.num_hidden_layers to the exit layer for each draft
    # (its Llama's loop reads it; with a Llama the tokens are greedy's). A seqzoo model runs every layer it holds:
    # the draft failed with an IndexError from the cache, and left num_hidden_layers changed, so every later forward
    # failed too. Refused by name before anything changes, from a keyword or a generation config.
    from transformers import GenerationConfig

    model = tiny_model(preset)
    ids = torch.tensor([[5, 6, 7, 5, 6, 7]])
    layers = model.config.num_hidden_layers
    for exit_layer in (1, 0):  # (0 asks for it too, as transformers reads it)
        for call in ({"assistant_early_exit": exit_layer},
                     {"generation_config": GenerationConfig(assistant_early_exit=exit_layer)}):
            with pytest.raises(ValueError, match=rf"{type(model).__name__}\.generate: assistant_early_exit="
                                                 rf"{exit_layer} is not supported: .* pass assistant_model= .* or "
                                                 r"prompt_lookup_num_tokens="):
                model.generate(ids, **call, **ASSISTED)
            assert model.config.num_hidden_layers == layers
    assert torch.equal(model.generate(ids, prompt_lookup_num_tokens=2, **ASSISTED), model.generate(ids, **ASSISTED))
    # With beam search transformers decodes without drafts and leaves the config alone: allowed, as for the others.
    beams = dict(ASSISTED, num_beams=2)
    assert torch.equal(model.generate(ids, assistant_early_exit=1, **beams), model.generate(ids, **beams))


@pytest.mark.parametrize("assisted", [{"prompt_lookup_num_tokens": 2}, {"assistant_model": "draft"}])
def test_assisted_decoding_does_not_continue_a_cache_holding_positions(assisted):
    # transformers' assisted loop feeds the whole prompt on top of a cache passed in (LlamaForCausalLM's too): the
    # cache held the prompt twice and the tokens were wrong. Refused; from the whole sequence without the cache it
    # decodes as plain greedy decoding continues the cache.
    model = tiny_model("transformer-tiny")
    if "assistant_model" in assisted:
        assisted = {"assistant_model": tiny_model("transformer-tiny", seed=1)}
    ids = torch.tensor([[5, 6, 7, 5, 6, 7]])
    out = model.generate(ids, return_dict_in_generate=True, **ASSISTED)
    cache = output_cache(out)
    longer = torch.cat([out.sequences, torch.tensor([[5, 6]])], dim=1)
    held = cache.get_seq_length()
    with pytest.raises(ValueError, match=r"assisted decoding \((prompt_lookup_num_tokens|assistant_model)=\) cannot "
                                         rf"continue a cache that already holds positions \({held} here\)"):
        model.generate(longer, cache=cache, **assisted, **ASSISTED)
    assert cache.get_seq_length() == held  # (untouched)
    assert torch.equal(model.generate(longer, **assisted, **ASSISTED), model.generate(longer, cache=cache, **ASSISTED))


@pytest.mark.parametrize("preset", ["transformer-tiny", "gru-tiny"])
def test_chunked_prefill_from_inputs_embeds_is_refused(preset):
    # transformers' chunked prefill slices input_ids, empty beside inputs_embeds: the forward got length-0 inputs
    model = tiny_model(preset)
    embeds = model.get_input_embeddings()(torch.tensor([[5, 6, 7, 8, 9, 10]]))
    with pytest.raises(ValueError, match=r"prefill_chunk_size=2 reads the prompt from input_ids .* inputs_embeds"):
        model.generate(inputs_embeds=embeds, prefill_chunk_size=2, **ASSISTED)
    assert model.generate(inputs_embeds=embeds, **ASSISTED).shape == (1, 4)


def test_hf_trainer_trains_and_evaluates(family_preset, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = tiny_model(family_preset).train()
    rows = [torch.randint(3, 99, (12,)) for _ in range(8)]
    dataset = [{"input_ids": r, "labels": r} for r in rows]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                             per_device_eval_batch_size=4, learning_rate=1e-2, report_to=[], save_strategy="no",
                             use_cpu=True, seed=0, disable_tqdm=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    metrics = trainer.evaluate()  # the decoding cache stays out of the gathered predictions
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))


def test_hidden_states_follow_transformers_conventions(family_preset):
    model = tiny_model(family_preset)
    ids = torch.tensor([PROMPTS[0]])
    out = model.model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    # The first entry is the embedding stream entering layer 0, the last the backbone's final (normed) output.
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state, rtol=0, atol=0)
    assert model(ids, output_hidden_states=True).hidden_states[-1].shape == out.last_hidden_state.shape


@pytest.mark.parametrize("preset", [p for p in families_where("can_generate")
                                    if "transformer" in p.id or "hybrid" in p.id])
def test_eager_attention_returns_its_weights(preset):
    model = tiny_model(preset, attn_implementation="eager")
    out = model(torch.tensor([PROMPTS[0]]), output_attentions=True)
    layers = model.config.layer_mixer_types().count("attention")
    assert len(out.attentions) == layers
    for weights in out.attentions:
        assert weights.shape[-2:] == (len(PROMPTS[0]), len(PROMPTS[0]))
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
        assert (weights.triu(1) == 0).all()  # causal
    assert model(torch.tensor([PROMPTS[0]])).attentions is None


def test_gradient_checkpointing_gives_the_same_gradients(family_preset):
    model = tiny_model(family_preset).train()
    model.config.use_cache = False
    ids = torch.tensor([PROMPTS[0], PROMPTS[0][::-1]])

    def gradients():
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    from seqzoo.layers.mixer import Mixer

    calls = []
    mixer = next(m for m in model.model.layers[0].modules() if isinstance(m, Mixer))
    mixer.register_forward_pre_hook(lambda *args: calls.append(1))  # (the recompute may stop early)
    torch.manual_seed(0)
    plain = gradients()
    assert len(calls) == 1
    model.activation_checkpointing_enable({"use_reentrant": False})
    assert model.is_activation_checkpointing
    torch.manual_seed(0)
    checkpointed = gradients()
    assert len(calls) == 3  # run again in the backward pass: the activations were not kept
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
    # every_n_layers=2 checkpoints layers 0, 2, ...: layer 1 keeps its activations (it was ignored by the classic
    # models, which checkpoint their bare mixers themselves)
    second = next(m for m in model.model.layers[1].modules() if isinstance(m, Mixer))
    second.register_forward_pre_hook(lambda *args: calls.append(2))
    model.activation_checkpointing_enable({"use_reentrant": False}, every_n_layers=2)
    calls.clear()
    gradients()
    assert calls.count(1) == 2 and calls.count(2) == 1  # layer 0 run again in the backward pass, layer 1 not


@pytest.mark.parametrize("kwargs, message", [
    ({"every_n_layers": 0}, r"every_n_layers=0 is invalid: expected an integer >= 1"),
    ({"every_n_layers": True}, r"every_n_layers=True is invalid"),
    ({"every_n_layers": "2"}, r"every_n_layers='2' is invalid"),
    ({"activation_checkpointing_kwargs": {"use_reentrant": False, "use_reentrantt": True}},
     r"torch\.utils\.checkpoint\.checkpoint takes no option use_reentrantt \(did you mean 'use_reentrant'\?\); "
     r"it takes context_fn, debug"),
])
def test_checkpointing_options_that_fail_at_the_first_step_are_refused_when_enabled(family_preset, kwargs, message):
    # Accepted, then a division by zero in the classic loop, or torch handing the misspelt option to the layer, at
    # the first training step
    model = tiny_model(family_preset)
    with pytest.raises(ValueError, match=rf"{type(model).__name__}\.activation_checkpointing_enable: {message}"):
        model.activation_checkpointing_enable(**kwargs)
    assert not model.is_gradient_checkpointing
    model.activation_checkpointing_enable({"use_reentrant": False, "preserve_rng_state": False}, every_n_layers=2)
    assert model.is_gradient_checkpointing


# Every family that continues a state from one call to the next (truncated BPTT), and a hybrid of recurrent mixers
# only (its own layer loop), which is the kind of hybrid that continues a state in training.
RECURRENT_HYBRID = {"mixer_types": ["mamba", "lstm", "mamba2"], "mixer_config": {"mamba2": {"head_dim": 16}}}


@pytest.mark.parametrize("preset, overrides", [
    *((param.values[0], {}) for param in families_where("supports_tbptt")),
    ("hybrid-tiny", RECURRENT_HYBRID),
], ids=[*(param.id for param in families_where("supports_tbptt")), "hybrid-recurrent"])
def test_a_cache_continued_under_checkpointing_keeps_its_gradient(preset, overrides):
    # Truncated BPTT with activation checkpointing: call 1 returns a cache, call 2 continues it, the loss is on both.
    # A reentrant checkpoint carries gradients through its positional tensors only: a layer's state passed to it as
    # a keyword (the blocks' state=) or handed back in a dict reached the next call with no gradient path into the
    # first call's layers, and their parameters got wrong gradients, silently.
    torch.manual_seed(1)
    ids = torch.randint(3, 90, (2, 6))

    def gradients(**checkpointing):
        model = tiny_model(preset, **overrides).train()
        if checkpointing:
            model.activation_checkpointing_enable(checkpointing)
        first = model(ids[:, :3], use_cache=True, labels=ids[:, :3])
        second = model(ids[:, 3:], cache=output_cache(first), labels=ids[:, 3:])
        (first.loss + second.loss).backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    for reentrant in (True, False):
        if reentrant and any(getattr(m, "has_value_residual", False) for m in tiny_model(preset).modules()):
            with pytest.raises(ValueError, match="use_reentrant"):  # (RWKV-7's value residual: refused)
                gradients(use_reentrant=True)
            continue
        checkpointed = gradients(use_reentrant=reentrant)
        assert plain.keys() == checkpointed.keys()
        for name in plain:
            torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6,
                                       msg=f"use_reentrant={reentrant}: {name}")


@pytest.mark.parametrize("preset, overrides", [("transformer-tiny", {}), ("hybrid-tiny", {})])
def test_a_model_with_attention_keeps_no_cache_under_checkpointing_and_refuses_to_continue_one(preset, overrides,
                                                                                                 caplog):
    # A checkpointed attention layer runs again in the backward pass and appends its keys to the cache a second
    # time: continuing the cache failed in the backward on mismatched sizes, and the cache held every key twice.
    model = tiny_model(preset, **overrides).train()
    model.activation_checkpointing_enable({"use_reentrant": False})
    ids = torch.randint(3, 90, (2, 6))
    with caplog.at_level("WARNING", logger="seqzoo"):
        first = model(ids[:, :3], use_cache=True, labels=ids[:, :3])
    assert output_cache(first) is None and "runs without a cache (use_cache=False)" in caplog.text
    first.loss.backward()
    with torch.no_grad():
        cache = output_cache(model(ids[:, :3], use_cache=True))  # (no gradients: nothing is run again)
    assert cache is not None and cache.get_seq_length() == 3
    with pytest.raises(ValueError, match="a cache cannot be continued with activation checkpointing on while training"):
        model(ids[:, 3:], cache=cache, labels=ids[:, 3:])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids[:, 3:], cache=cache).logits[:, -1], model(ids).logits[:, -1])


def test_device_is_the_first_parameters(family_preset):
    # seqzoo finds the first parameter without transformers' parameter generator; the answer must be the same,
    # with parameters spread over devices too (the meta device stands in for a second one).
    model = tiny_model(family_preset)
    first = next(model.parameters())
    assert model.device == first.device
    for name, module in model.named_modules():
        if module._parameters:
            for pname, parameter in list(module._parameters.items()):
                if parameter is not None:
                    module._parameters[pname] = torch.nn.Parameter(parameter.detach().to("meta"))
            break  # only the first module holding parameters moves
    assert model.device == next(model.parameters()).device == torch.device("meta")


@pytest.mark.parametrize("preset", [p for p in families_where("can_generate")
                                    if "transformer" in p.id or "hybrid" in p.id])
def test_eager_attention_in_float64_keeps_a_left_padded_row_exact(preset):
    """The mask value of float64 scores is float64's minimum; a softmax taken in float32 turned it into -inf and a
    row of padding into NaN, which the next layer carried into the real tokens."""
    model = tiny_model(preset, attn_implementation="eager").double()
    ids, mask = left_pad([PROMPTS[0], PROMPTS[0][:3]])
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits[1, -3:]
        alone = model(torch.tensor([PROMPTS[0][:3]])).logits[0]
    torch.testing.assert_close(padded, alone)


@pytest.mark.parametrize("preset", families_where("can_generate"))
def test_a_float64_models_loss_is_float64(preset):
    # (transformers' causal-LM and token-classification losses cast the logits to float32 first: the loss of a
    # float64 model was float32, 1e-7 off its float64 value; README, a float64 model computes in float64 throughout)
    from seqzoo.registry import architecture_for_model_type
    from tests.conftest import tiny_config

    ids = torch.tensor([PROMPTS[0], PROMPTS[0][::-1]])
    model = tiny_model(preset).double()
    out = model(ids, labels=ids)
    assert out.loss.dtype == torch.float64
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]),
                                                 ids[:, 1:].reshape(-1))
    assert out.loss.item() == expected.item()
    summed = model(ids, labels=ids, num_items_in_batch=torch.tensor(5)).loss
    torch.testing.assert_close(summed, expected * ids[:, 1:].numel() / 5, rtol=1e-15, atol=0)
    config = tiny_config(preset, num_labels=3)
    tagger = architecture_for_model_type(config.model_type).heads["token-classification"](config).double().eval()
    tags = torch.tensor([[0, 1, 2, 1, -100, 0, 2], [2, 2, 0, 1, 1, -100, 0]])
    out = tagger(ids, labels=tags)
    assert out.loss.dtype == torch.float64
    assert out.loss.item() == torch.nn.functional.cross_entropy(out.logits.reshape(-1, 3), tags.reshape(-1)).item()


@pytest.mark.parametrize("preset", [p for p in families_where("can_generate")
                                    if "transformer" in p.id or "hybrid" in p.id])
def test_a_float64_model_rotates_positions_in_float64_however_it_was_made(preset, tmp_path):
    # (a model built or loaded in float64 kept its float32 RoPE frequencies; .double() computed them in float64 from
    # float32's values: three models of the same weights, three sets of logits, 7e-6 apart at position 4000; at 1000
    # here, below the learned and sinusoidal tables' ends)
    model = tiny_model(preset).double()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    ids = torch.tensor([PROMPTS[0]])
    positions = torch.arange(1000, 1000 + ids.shape[1])[None]
    with torch.no_grad():
        want = model(ids, position_ids=positions).logits
        # (to float64's rounding: the loaded model's attention may run another kernel)
        torch.testing.assert_close(loaded(ids, position_ids=positions).logits, want, rtol=1e-12, atol=1e-13)
    for name, buffer in model.named_buffers():
        if name.endswith("inv_freq"):
            head_dim = 2 * buffer.numel()
            theta = model.config.rope_theta
            assert torch.equal(buffer, 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
