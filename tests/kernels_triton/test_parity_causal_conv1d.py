"""Triton ``causal_conv1d`` against the reference: outputs, final states, gradients (x, weight, bias, initial state),
with and without padding masks, odd lengths, float32 and bfloat16."""

import pytest
import torch

from seqzoo.kernels import get_kernel
from tests.kernels_triton.support import (
    CASE_IDS,
    CASES,
    DEVICE,
    check_double_backward_refused,
    check_parity,
    leaves,
    triton_kernel,
)


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


# Time blocks of 16: documents cross a block edge, one begins at 16; documents of 1 and 2 tokens (shorter than the
# K - 1 = 3 inputs a window reaches back), also last in a row; row 0 continues its initial state.
DOCUMENTS = [[1, 2, 13, 7], [3, 18, 2], [16, 7], [12, 1, 9, 1]]


@pytest.mark.parametrize("width", [2, 4])
def test_resets_match_separate_documents(width):
    from tests.kernels.scan_checks import check_resets_match_separate_documents

    fn = triton_kernel("causal_conv1d")
    tensors = {k: v.to(DEVICE) for k, v in _inputs(4, 23, 5, width, seed=7).items()}

    def run(backend, t, reset=None):
        kernel = fn if backend == "triton" else get_kernel("causal_conv1d", backend)
        return kernel(t["x"], t["weight"], t["bias"], initial_state=t["initial_state"], activation="silu",
                      reset=reset)

    check_resets_match_separate_documents(run, "triton", tensors, DOCUMENTS, ("x",), f"K={width}",
                                          dtype=torch.float32)


def test_resets_with_padding_match_the_reference():
    # A reset at a padded position still starts a document; the reference takes both inputs the same way.
    from tests.kernels.scan_checks import reset_from_documents

    fn = triton_kernel("causal_conv1d")
    inputs = _inputs(4, 23, 5, 4, seed=8)
    mask = torch.rand(4, 23, generator=torch.Generator().manual_seed(4)) > 0.3
    reset = reset_from_documents(DOCUMENTS, 23)
    mask[0, 3] = False  # row 0's third document begins at a padded position
    mask, reset = mask.to(DEVICE), reset.to(DEVICE)
    backend, reference = leaves(inputs, torch.float32, low_precision=())

    def call(f, t):
        return f(t["x"], t["weight"], t["bias"], initial_state=t["initial_state"], activation="silu", mask=mask,
                 reset=reset)

    check_parity("causal_conv1d resets + padding", fn, get_kernel("causal_conv1d", "reference"), backend,
                 reference, call, torch.float32, out_dtype=torch.float32)


def test_double_backward_is_refused_by_name():
    fn = triton_kernel("causal_conv1d")
    check_double_backward_refused("causal_conv1d", "triton", fn, _inputs(1, 5, 3, 4, seed=2),
                                  lambda f, t: f(t["x"], t["weight"], t["bias"], initial_state=t["initial_state"]))
