"""Triton ``wkv7`` against the reference: outputs, final states and the gradients of r, w, k, v, a, b and the
initial state; odd lengths across several checkpoint segments, head sizes that are not powers of two, float32 and
bfloat16, identity steps (w = k = b = 0) and single-token decoding."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from seqzoo.kernels import get_kernel
from seqzoo.kernels.wkv7 import wkv7_step
from tests.kernels_triton.support import (
    CASE_IDS,
    CASES,
    DEVICE,
    check_double_backward_refused,
    check_parity,
    leaves,
    triton_kernel,
)


def _inputs(batch, length, heads, key_dim, value_dim, seed, with_state=True):
    g = torch.Generator().manual_seed(seed)
    kk = F.normalize(torch.randn(batch, length, heads, key_dim, generator=g), dim=-1)
    iclr = torch.rand(batch, length, heads, key_dim, generator=g)
    # The RWKV-7 layer's ranges: log decay in (-exp(-0.5), 0), a = -kk, b = kk * iclr with |kk| = 1.
    return {
        "r": torch.randn(batch, length, heads, key_dim, generator=g),
        "w": -torch.rand(batch, length, heads, key_dim, generator=g) * 0.6,
        "k": torch.randn(batch, length, heads, key_dim, generator=g),
        "v": torch.randn(batch, length, heads, value_dim, generator=g),
        "a": -kk,
        "b": kk * iclr,
        "initial_state": torch.randn(batch, heads, value_dim, key_dim, generator=g) if with_state else None,
    }


def _call(f, t):
    return f(t["r"], t["w"], t["k"], t["v"], t["a"], t["b"], initial_state=t["initial_state"])


@pytest.fixture
def short_checkpoints(monkeypatch):
    # Checkpoints every 8 steps, so that T = 33 runs five backward segments, the last one partial.
    monkeypatch.setattr(importlib.import_module("seqzoo.kernels.wkv7.triton"), "CHECKPOINT", 8)


@pytest.mark.parametrize("length, dtype", CASES, ids=CASE_IDS)
def test_parity(length, dtype, short_checkpoints):
    fn = triton_kernel("wkv7")
    inputs = _inputs(1, length, 2, 16, 12, seed=length)  # V = 12 is padded to 16 inside the kernels
    backend, reference = leaves(inputs, dtype, low_precision=("r", "w", "k", "v", "a", "b"))
    check_parity(f"wkv7 T={length}", fn, get_kernel("wkv7", "reference"), backend, reference, _call, dtype,
                 out_dtype=dtype)


def test_parity_without_initial_state_two_value_blocks():
    fn = triton_kernel("wkv7")
    inputs = _inputs(2, 5, 1, 16, 40, seed=6, with_state=False)  # V = 40: two forward value blocks of 32
    backend, reference = leaves(inputs, torch.float32, low_precision=())
    check_parity("wkv7 no state", fn, get_kernel("wkv7", "reference"), backend, reference, _call, torch.float32,
                 out_dtype=torch.float32)


def test_identity_steps_keep_the_state_bit_for_bit_and_decode_matches_wkv7_step():
    fn = triton_kernel("wkv7")
    t = {key: value.to(DEVICE) for key, value in _inputs(2, 6, 2, 16, 16, seed=8).items()}
    with torch.no_grad():
        identity = dict(t, w=torch.zeros_like(t["w"]), k=torch.zeros_like(t["k"]), b=torch.zeros_like(t["b"]))
        _, state = _call(fn, identity)
        assert torch.equal(state, t["initial_state"]), "w = k = b = 0 must leave the state unchanged"

        y_full, state_full = _call(fn, t)
        state = t["initial_state"]
        for step in range(6):  # T = 1 without gradients: one launch per token
            one = {key: value[:, step:step + 1] for key, value in t.items() if key != "initial_state"}
            y, new_state = _call(fn, dict(one, initial_state=state))
            y_ref, state_ref = wkv7_step(*(one[key][:, 0] for key in "rwkvab"), state)
            torch.testing.assert_close(y[:, 0], y_ref, atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(new_state, state_ref, atol=2e-5, rtol=1e-4)
            state = new_state
    torch.testing.assert_close(state, state_full, atol=2e-5, rtol=1e-4)


def test_supports_declines_what_the_kernels_cannot_run():
    from seqzoo.kernels.triton_support import supports_wkv7

    t = _inputs(1, 2, 1, 16, 16, seed=0)
    ok, reason = supports_wkv7(*(t[key] for key in "rwkvab"))
    assert not ok and reason == "needs CUDA tensors (got cpu)"
    if torch.cuda.is_available():
        c = {key: t[key].cuda() for key in "rwkvab"}
        ok, reason = supports_wkv7(c["r"].double(), c["w"], c["k"], c["v"], c["a"], c["b"])
        assert not ok and "float64" in reason
        big = {key: torch.zeros(1, 2, 1, 256, device="cuda") for key in "rwkab"}
        ok, reason = supports_wkv7(big["r"], big["w"], big["k"], c["v"], big["a"], big["b"])
        assert not ok and "256" in reason


def test_resets_match_separate_documents(short_checkpoints):
    # Checkpoints every 8 steps: documents cross segments, one begins on a segment's first step (16), documents of
    # one token, the last one included; row 0's first document continues the initial state, row 1 starts afresh.
    from tests.kernels.scan_checks import check_resets_match_separate_documents

    fn = triton_kernel("wkv7")
    tensors = {key: value.to(DEVICE) for key, value in _inputs(2, 33, 2, 16, 12, seed=9).items()}

    def run(backend, t, reset=None):
        kernel = fn if backend == "triton" else get_kernel("wkv7", backend)
        return kernel(t["r"], t["w"], t["k"], t["v"], t["a"], t["b"], initial_state=t["initial_state"], reset=reset)

    check_resets_match_separate_documents(run, "triton", tensors, [[1, 15, 9, 8], [5, 1, 26, 1]], tuple("rwkvab"),
                                          dtype=torch.float32)


def test_supports_takes_a_reset_and_the_chunked_kernel_declines_it():
    from seqzoo.kernels.triton_support import supports_wkv7, supports_wkv7_chunked

    t = _inputs(1, 4, 1, 16, 16, seed=1)
    reset = torch.zeros(1, 4, dtype=torch.bool)
    ok, reason = supports_wkv7_chunked(*(t[key] for key in "rwkvab"), reset=reset)
    assert not ok and "reset" in reason
    ok, reason = supports_wkv7(*(t[key] for key in "rwkvab"), reset=reset)
    assert "reset" not in reason


def test_double_backward_is_refused_by_name():
    fn = triton_kernel("wkv7")
    check_double_backward_refused("wkv7", "triton", fn, _inputs(1, 5, 1, 16, 16, seed=2), _call)
