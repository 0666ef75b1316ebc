"""Triton ``causal_conv1d`` against the reference: outputs, final states, gradients (x, weight, bias, initial state),
with and without padding masks, odd lengths, float32 and bfloat16."""

import pytest
import torch

from seqzoo.kernels import get_kernel
from tests.kernels_triton.support import CASE_IDS, CASES, DEVICE, check_parity, leaves, triton_kernel


def _inputs(batch, length, channels, width, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, length, channels, generator=g),
        "weight": torch.randn(channels, width, generator=g) / width**0.5,
        "bias": torch.randn(channels, generator=g),
        "initial_state": torch.randn(batch, channels, width - 1, generator=g),
    }


@pytest.mark.parametrize("length, dtype", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "padded"])
def test_parity(length, dtype, masked):
    fn = triton_kernel("causal_conv1d")
    batch, channels, width = 2, 5, 4
    inputs = _inputs(batch, length, channels, width, seed=length)
    mask = None
    if masked:
        mask = torch.rand(batch, length, generator=torch.Generator().manual_seed(3)) > 0.35
        mask[0, :] = False  # a row with no valid token keeps its initial state
        mask = mask.to(DEVICE)
    backend, reference = leaves(inputs, dtype, low_precision=("x", "weight", "bias"))

    def call(f, t):
        return f(t["x"], t["weight"], t["bias"], initial_state=t["initial_state"], activation="silu", mask=mask)

    check_parity(f"causal_conv1d T={length}", fn, get_kernel("causal_conv1d", "reference"), backend, reference,
                 call, dtype, out_dtype=dtype)


def test_no_bias_no_state_identity_activation():
    fn = triton_kernel("causal_conv1d")
    inputs = _inputs(1, 7, 3, 3, seed=5)
    inputs["bias"] = inputs["initial_state"] = None
    backend, reference = leaves(inputs, torch.float32, low_precision=())

    def call(f, t):
        return f(t["x"], t["weight"], None, activation=None)

    check_parity("causal_conv1d no bias/state", fn, get_kernel("causal_conv1d", "reference"), backend, reference,
                 call, torch.float32, out_dtype=torch.float32)
