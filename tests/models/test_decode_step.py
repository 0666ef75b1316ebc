"""The single-token paths against the sequence paths they shortcut.

RWKV-7's time mix, its token shift and the chunked wkv7 kernel take a separate path when T == 1 (decoding): fewer,
fused operations. Stepping a mixer token by token must give what one call over the whole sequence gives -- every
output and the final state -- with padded tokens anywhere in the rows (a padded token is an identity step), at odd
sizes. The time mix runs its WKV and per-head norm in float32 whatever the model dtype (as RWKV-LM does), so the
two paths agree to float32 rounding; a wrong term shows up at O(1).
"""

from __future__ import annotations

import pytest
import torch

from seqzoo.layers.rwkv7 import RWKV7ChannelMix, RWKV7TimeMix, token_shift
from seqzoo.models.rwkv7 import RWKV7Config

LENGTH = 7


@pytest.fixture
def config():
    # Three heads of 12 (hidden 36), all low-rank widths different, two layers so layer 1 has the value residual.
    return RWKV7Config(vocab_size=99, hidden_size=36, head_size=12, num_hidden_layers=2, intermediate_size=50,
                       decay_low_rank_dim=6, a_low_rank_dim=10, v_low_rank_dim=4, gate_low_rank_dim=14)


def randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    # Random values in every parameter (the x070 init zeroes LoRAs and the output projection, which would hide terms).
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    return module.double().eval()  # float64 outside the float32 WKV: the tolerances measure only that


def masks(batch: int) -> list[torch.Tensor | None]:
    holes = torch.ones(batch, LENGTH, dtype=torch.bool)
    holes[0, :2] = False  # left padding
    holes[1, 3] = False  # a hole in the middle
    holes[-1, -1] = False  # a padded last token
    return [None, holes]


def step_by_step(mixer, x, mask, state=None, shared_first=None):
    outputs = []
    for t in range(x.shape[1]):
        shared = {} if shared_first is None else {"v_first": shared_first[:, t:t + 1]}
        out, state = mixer(x[:, t:t + 1], state=state, mask=None if mask is None else mask[:, t:t + 1],
                           shared=shared)
        outputs.append(out)
    return torch.cat(outputs, dim=1), state


@torch.no_grad()
@pytest.mark.parametrize("layer_idx", [0, 1])
@pytest.mark.parametrize("mask_index", [0, 1])
@pytest.mark.parametrize("batch", [1, 3])
def test_time_mix_steps_equal_the_sequence(config, layer_idx, mask_index, batch):
    mixer = randomised(RWKV7TimeMix(config, layer_idx), seed=layer_idx)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(batch, LENGTH, config.hidden_size, generator=gen, dtype=torch.float64)
    v_first = torch.randn(batch, LENGTH, config.hidden_size, generator=gen, dtype=torch.float64)
    heads = config.hidden_size // config.head_size
    # A carried state, so the first step reads it too.
    state = {"attn_shift": torch.randn(batch, config.hidden_size, generator=gen, dtype=torch.float64),
             "wkv": torch.randn(batch, heads, config.head_size, config.head_size, generator=gen, dtype=torch.float64)}
    mask = masks(batch)[mask_index] if batch > 1 else None
    shared = {} if layer_idx == 0 else {"v_first": v_first}
    whole, whole_state = mixer(x, state=dict(state), mask=mask, shared=shared)
    steps, step_state = step_by_step(mixer, x, mask, dict(state), None if layer_idx == 0 else v_first)
    torch.testing.assert_close(steps, whole, atol=1e-4, rtol=1e-5)
    assert set(step_state) == set(whole_state) == {"attn_shift", "wkv"}
    for name in whole_state:
        torch.testing.assert_close(step_state[name], whole_state[name], atol=1e-5, rtol=1e-5, msg=name)
    if layer_idx == 0:  # the first time mix hands its values on, in the sequence's (B, T, C) layout
        one = {}
        mixer(x[:, :1], state=dict(state), shared=one)
        assert one["v_first"].shape == (batch, 1, config.hidden_size)


@torch.no_grad()
@pytest.mark.parametrize("layer_idx", [0, 1])
def test_time_mix_steps_in_bfloat16(config, layer_idx):
    # A bfloat16 model: the step casts to float32 for the WKV and the norm, and back, in other places than the
    # sequence path does; the two agree to bfloat16 rounding (a wrong cast or term is off at O(1)). The carried
    # states keep their dtypes: the shift in the model's, the WKV matrices in float32.
    mixer = randomised(RWKV7TimeMix(config, layer_idx), seed=layer_idx).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, LENGTH, config.hidden_size, generator=gen).to(torch.bfloat16)
    v_first = torch.randn(3, LENGTH, config.hidden_size, generator=gen).to(torch.bfloat16)
    mask = masks(3)[1]
    shared = {} if layer_idx == 0 else {"v_first": v_first}
    whole, whole_state = mixer(x, mask=mask, shared=shared)
    steps, step_state = step_by_step(mixer, x, mask, None, None if layer_idx == 0 else v_first)
    assert steps.dtype == torch.bfloat16
    assert step_state["attn_shift"].dtype == torch.bfloat16 and step_state["wkv"].dtype == torch.float32
    scale = float(whole.float().abs().max())
    assert float((steps.float() - whole.float()).abs().max()) <= 0.03 * scale
    torch.testing.assert_close(step_state["wkv"], whole_state["wkv"], atol=0.03 * float(whole_state["wkv"].abs().max()),
                               rtol=0)


@pytest.mark.parametrize("mask_index", [0, 1])
def test_channel_mix_steps_equal_the_sequence(config, mask_index):
    mixer = randomised(RWKV7ChannelMix(config, 0), seed=3)
    x = torch.randn(3, LENGTH, config.hidden_size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mask = masks(3)[mask_index]
    whole, whole_state = mixer(x, mask=mask)
    steps, step_state = step_by_step(mixer, x, mask)
    torch.testing.assert_close(steps, whole, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(step_state["ffn_shift"], whole_state["ffn_shift"], atol=0, rtol=0)


def test_token_shift_of_one_token():
    x = torch.randn(2, 1, 5)
    last = torch.randn(2, 5)
    prev, carried = token_shift(x, last, torch.tensor([[True], [False]]))
    assert torch.equal(prev[:, 0], last)
    assert torch.equal(carried[0], x[0, 0]) and torch.equal(carried[1], last[1])  # a padded token carries it on
    prev, carried = token_shift(x, None, None)
    assert torch.equal(prev, torch.zeros_like(x)) and torch.equal(carried, x[:, 0])
