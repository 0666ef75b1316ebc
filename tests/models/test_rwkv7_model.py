"""RWKV-7 specifics beyond the registry-driven tests: exact padding (also inside a sequence and across cached
chunks), state layout, init, gradient checkpointing.

The x070 init zeroes every output projection, so a freshly initialised model is the identity in each block and
padding bugs could not show; these tests use a model with random weights in every tensor instead (a converted
random RWKV-LM-style state dict).
"""

from __future__ import annotations

import math

import pytest
import torch

from seqzoo.conversions.rwkv7 import convert_rwkv7
from seqzoo.models.compat import output_cache
from tests.conftest import tiny_model
from tests.models.test_rwkv7_reference import random_x070_checkpoint

PROMPTS = [[5, 17, 33, 8, 61, 12, 40], [9, 3, 77], [44, 21, 6, 90, 13]]


@pytest.fixture(scope="module")
def model():
    checkpoint = random_x070_checkpoint(vocab=99, hidden=32, layers=2, head_size=16, ffn=72, decay=8, iclr=12,
                                        value=4, gate=20, seed=3)
    return convert_rwkv7(checkpoint, dtype=torch.float32, pad_token_id=0)


def with_pads(tokens, pad_after):
    """``tokens`` with pads inserted: ``pad_after`` maps an index i to the number of pads placed before token i."""
    ids, mask = [], []
    for i, token in enumerate(tokens):
        ids += [0] * pad_after.get(i, 0) + [token]
        mask += [0] * pad_after.get(i, 0) + [1]
    ids += [0] * pad_after.get(len(tokens), 0)
    mask += [0] * pad_after.get(len(tokens), 0)
    return torch.tensor([ids]), torch.tensor([mask])


def cache_tensors(cache):
    return {(i, name): value.clone() for i in range(len(cache)) for name, value in cache.layer(i).items()}


@torch.no_grad()
def test_pads_anywhere_change_nothing_also_across_cached_chunks(model):
    tokens = PROMPTS[0] + PROMPTS[2]
    compact = model(torch.tensor([tokens]), use_cache=True)
    ids, mask = with_pads(tokens, {0: 2, 3: 1, 4: 3, 9: 1, len(tokens): 2})
    valid = mask[0].bool()
    # One call ...
    padded = model(ids, attention_mask=mask, use_cache=True)
    torch.testing.assert_close(padded.logits[0, valid], compact.logits[0], atol=1e-5, rtol=1e-4)
    # ... and chunk by chunk through the cache, with chunks that start, end, or consist of padding.
    cache, logits = None, []
    for start, stop in ((0, 3), (3, 4), (4, 8), (8, 9), (9, ids.shape[1])):
        out = model(ids[:, start:stop], attention_mask=mask[:, :stop], cache=cache, use_cache=True)
        cache = output_cache(out)
        logits.append(out.logits)
    torch.testing.assert_close(torch.cat(logits, 1)[0, valid], compact.logits[0], atol=1e-5, rtol=1e-4)
    for key, value in cache_tensors(output_cache(compact)).items():
        torch.testing.assert_close(cache.layer(key[0])[key[1]], value, atol=1e-6, rtol=1e-5, msg=str(key))


@torch.no_grad()
def test_a_chunk_of_only_padding_leaves_the_state_bit_identical(model):
    out = model(torch.tensor([PROMPTS[0]]), use_cache=True)
    before = cache_tensors(output_cache(out))
    mask = torch.tensor([[1] * len(PROMPTS[0]) + [0] * 4])
    model(torch.tensor([[7, 8, 9, 10]]), attention_mask=mask, cache=output_cache(out), use_cache=True)
    after = cache_tensors(output_cache(out))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)


def left_pad(prompts):
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def test_left_padded_generation_equals_each_prompt_alone(model):
    ids, mask = left_pad(PROMPTS)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    batch = model.generate(ids, attention_mask=mask, **kwargs)
    for row, prompt in enumerate(PROMPTS):
        alone = model.generate(torch.tensor([prompt]), **kwargs)
        assert batch.sequences[row, ids.shape[1]:].tolist() == alone.sequences[0, len(prompt):].tolist()
        torch.testing.assert_close(torch.stack(batch.logits, 1)[row], torch.stack(alone.logits, 1)[0],
                                   atol=1e-4, rtol=1e-4)


def test_beam_search_with_cache_equals_without(model):
    ids, mask = left_pad(PROMPTS[:2])
    kwargs = dict(attention_mask=mask, max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False,
                  pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    cached = model.generate(ids, use_cache=True, **kwargs)
    uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_chunked_forward_equals_token_by_token(model):
    ids = torch.randint(1, 99, (2, 21), generator=torch.Generator().manual_seed(0))
    full = model(ids, use_cache=False).logits
    cache, steps = None, []
    for t in range(ids.shape[1]):
        out = model(ids[:, t:t + 1], cache=cache, use_cache=True)
        cache = output_cache(out)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_state_layout_and_size(model):
    config = model.config
    cache = output_cache(model(torch.tensor([PROMPTS[1]]), use_cache=True))
    H, N = config.num_heads, config.head_size
    for layer in map(cache.layer, range(len(cache))):
        assert set(layer) == {"attn_shift", "wkv", "ffn_shift"}
        assert layer["wkv"].shape == (1, H, N, N) and layer["wkv"].dtype == torch.float32
        assert layer["attn_shift"].shape == layer["ffn_shift"].shape == (1, config.hidden_size)
    # In bfloat16 the shift states follow the model dtype and the WKV matrices stay float32.
    half = convert_rwkv7({k: v for k, v in random_x070_checkpoint(vocab=99, hidden=32, layers=2, ffn=72).items()},
                         dtype=torch.bfloat16)
    cache = output_cache(half(torch.tensor([PROMPTS[1]]), use_cache=True))
    assert cache.layer(0)["attn_shift"].dtype == torch.bfloat16 and cache.layer(0)["wkv"].dtype == torch.float32
    assert cache.state_bytes() == half.config.state_bytes_per_sequence(dtype_bytes=2)


def test_gradient_checkpointing_gives_the_same_gradients(model):
    ids = torch.randint(1, 99, (2, 9), generator=torch.Generator().manual_seed(1))
    grads = []
    for checkpointing in (False, True):
        model.train()
        model.activation_checkpointing_enable() if checkpointing else model.activation_checkpointing_disable()
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.activation_checkpointing_disable()
    model.eval()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_init_follows_the_x070_scheme():
    # The x070 values of the two fields the tiny test sizes override (see TINY_OVERRIDES in tests/conftest.py).
    model = tiny_model("rwkv7-tiny", output_init_gain=0.0, tie_word_embeddings=False)
    config = model.config
    L, C = config.num_hidden_layers, config.hidden_size
    assert model.model.embed_tokens.weight.abs().max() <= 1e-4
    for i, layer in enumerate(model.model.layers):
        attn = layer.attn
        assert not attn.output.weight.any() and not layer.ffn.value.weight.any()
        torch.testing.assert_close(attn.ln_x.weight, torch.full((C,), ((1 + i) / L) ** 0.7))
        assert torch.all(attn.k_a == 1.02) and torch.all(attn.r_k == -0.04)
        assert not attn.w1.any() and not attn.g1.any()
        # w2 is orthogonal with gain 0.1: its (rank) rows are orthonormal up to that gain.
        rank = attn.w2.shape[0]
        torch.testing.assert_close(attn.w2 @ attn.w2.T, 0.01 * torch.eye(rank), atol=1e-6, rtol=0)
        # Token-shift mixes run from 1 (channel 0) towards 0; deeper layers mix less.
        assert attn.x_r[0] == 1.0 and torch.all(attn.x_r[1:] < 1.0)
        # Initial decays span the x070 range exp(-e^-0.5 * sigmoid(w0)).
        decay = torch.exp(-math.exp(-0.5) * torch.sigmoid(attn.w0))
        assert decay.min() > math.exp(-math.exp(-0.5)) and decay.max() < 1
    assert model.model.layers[0].attn.x_k.mean() > model.model.layers[-1].attn.x_k.mean()
    # The head is orthogonal with gain 0.5 * sqrt(vocab / hidden); tied, the shared matrix takes the head's init.
    gain = 0.5 * math.sqrt(config.vocab_size / C)
    torch.testing.assert_close(model.lm_head.weight.T @ model.lm_head.weight, gain**2 * torch.eye(C), atol=1e-4, rtol=0)
    tied = tiny_model("rwkv7-tiny", tie_word_embeddings=True)
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(tied.lm_head.weight.T @ tied.lm_head.weight, gain**2 * torch.eye(C), atol=1e-4, rtol=0)


def test_a_float64_model_keeps_its_wkv_state_in_float64():
    # A float64 model computes in float64 throughout (README): the WKV state, the kernel and the GroupNorm included,
    # so a token-by-token decode equals the whole forward to float64 rounding and gradcheck holds.
    import seqzoo

    model = tiny_model("rwkv7-tiny").double()
    ids = torch.tensor([[5, 17, 42, 8, 9, 30, 11]])
    with torch.no_grad():
        out = model(ids[:, :-1], use_cache=True)
        cache = output_cache(out)
        assert all(v.dtype == torch.float64 for v in cache.layer(0).values())
        step = model(ids[:, -1:], cache=cache).logits[:, -1]
        full = model(ids).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-12, atol=1e-12)
    x = torch.randn(1, 3, model.config.hidden_size, dtype=torch.float64, requires_grad=True)
    with seqzoo.use_kernel_backend("wkv7", "reference"):
        assert torch.autograd.gradcheck(lambda e: model(inputs_embeds=e, use_cache=False).logits, (x,), eps=1e-6,
                                        atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("kwargs", [{"use_reentrant": True}, {}])
def test_reentrant_activation_checkpointing_is_refused(kwargs):
    # A reentrant checkpoint carries gradients through positional tensors only: v_first's path into layer 0 would
    # be dropped, and layer 0's and the embeddings' gradients would be wrong without an error.
    model = tiny_model("rwkv7-tiny").train()
    with pytest.raises(ValueError, match="use_reentrant"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_activation_checkpointing
