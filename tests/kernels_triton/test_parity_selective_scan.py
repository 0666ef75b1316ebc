"""Triton ``selective_scan`` against the reference: outputs, final states and the gradients of u, delta, A, B, C,
D, z and the initial state; odd lengths, a length that needs several checkpoint segments, float32 and bfloat16,
identity steps (delta = 0) and the fused decode step."""

import importlib

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


def _inputs(batch, length, channels, state_size, seed, with_optional=True):
    g = torch.Generator().manual_seed(seed)
    delta = torch.rand(batch, length, channels, generator=g) * 0.6
    delta[0, 1:3] = 0.0  # padding-style identity steps
    return {
        "u": torch.randn(batch, length, channels, generator=g),
        "delta": delta,
        "A": -(torch.rand(channels, state_size, generator=g) * 2 + 0.1),
        "B": torch.randn(batch, length, state_size, generator=g),
        "C": torch.randn(batch, length, state_size, generator=g),
        "D": torch.randn(channels, generator=g) if with_optional else None,
        "z": torch.randn(batch, length, channels, generator=g) if with_optional else None,
        "initial_state": torch.randn(batch, channels, state_size, generator=g) if with_optional else None,
    }


def _call(f, t):
    return f(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], initial_state=t["initial_state"])


@pytest.mark.parametrize("length, dtype", CASES, ids=CASE_IDS)
def test_parity(length, dtype):
    fn = triton_kernel("selective_scan")
    # N = 5 is padded to 8 inside the kernel; Dm = 19 spans two channel blocks.
    inputs = _inputs(2, length, 19, 5, seed=length)
    # As in the Mamba layer: the signal, B, C and the gate in the model dtype; delta, A, D in float32.
    backend, reference = leaves(inputs, dtype, low_precision=("u", "B", "C", "z"))
    check_parity(f"selective_scan T={length}", fn, get_kernel("selective_scan", "reference"), backend, reference,
                 _call, dtype, out_dtype=dtype)


@pytest.mark.parametrize("length", [1, 8, 16])
def test_parity_with_a_decay_of_exactly_zero(length):
    # Channel 1, state 2 has A = -inf: a step with delta > 0 forgets that entry, a delta = 0 step (steps 1-2 of row
    # 0, a tile's padding past T = 8) is the identity. exp(0 * -inf) was nan: in the state at T = 8, in the gradients
    # at every length, and the decode step (T = 1) changed the state at delta = 0.
    inputs = _inputs(2, length, 6, 4, seed=12)
    inputs["A"][1, 2] = -float("inf")
    inputs["delta"][1, 0, 1] = 0.0  # (at T = 1 too: row 1's only step of channel 1 is the identity)
    backend, reference = leaves(inputs, torch.float32, low_precision=())
    check_parity(f"selective_scan A=-inf T={length}", triton_kernel("selective_scan"),
                 get_kernel("selective_scan", "reference"), backend, reference, _call, torch.float32,
                 out_dtype=torch.float32)


def test_parity_across_checkpoint_segments(monkeypatch):
    fn = triton_kernel("selective_scan")
    # One tile per segment: T = 40 runs 3 tiles (the last one partial) as 3 segments in the backward.
    monkeypatch.setattr(importlib.import_module("seqzoo.kernels.selective_scan.triton"), "SEGMENT_TILES", 1)
    inputs = _inputs(1, 40, 6, 4, seed=11)
    backend, reference = leaves(inputs, torch.float32, low_precision=())
    check_parity("selective_scan segments", fn, get_kernel("selective_scan", "reference"), backend, reference,
                 _call, torch.float32, out_dtype=torch.float32)


def test_parity_without_optional_inputs():
    fn = triton_kernel("selective_scan")
    inputs = _inputs(1, 7, 3, 4, seed=2, with_optional=False)
    backend, reference = leaves(inputs, torch.float32, low_precision=())
    check_parity("selective_scan plain", fn, get_kernel("selective_scan", "reference"), backend, reference,
                 _call, torch.float32, out_dtype=torch.float32)


def test_zero_delta_keeps_the_state_bit_for_bit_and_decode_steps_match_the_sequence():
    fn = triton_kernel("selective_scan")
    t = {k: (v.to(DEVICE) if v is not None else None) for k, v in _inputs(2, 7, 5, 4, seed=4).items()}
    with torch.no_grad():
        frozen = dict(t, delta=torch.zeros_like(t["delta"]))
        _, state = _call(fn, frozen)
        assert torch.equal(state, t["initial_state"]), "delta = 0 must leave the state unchanged"

        y_full, state_full = _call(fn, t)
        state, outputs = t["initial_state"], []
        for step in range(7):  # T = 1 without gradients takes the fused decode kernel
            one = {k: (v[:, step:step + 1] if v is not None and v.dim() == 3 and v.shape[1] == 7 else v)
                   for k, v in t.items() if k != "initial_state"}
            y, state = _call(fn, dict(one, initial_state=state))
            outputs.append(y)
    torch.testing.assert_close(torch.cat(outputs, dim=1), y_full, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(state, state_full, atol=2e-5, rtol=1e-4)
    y_ref, state_ref = _call(get_kernel("selective_scan", "reference"), t)
    torch.testing.assert_close(y_full, y_ref, atol=2e-5, rtol=1e-4)


def test_supports_declines_what_the_kernel_cannot_run():
    from seqzoo.kernels.triton_support import supports_selective_scan

    t = _inputs(1, 3, 4, 4, seed=0)
    ok, reason = supports_selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"])
    assert not ok and reason == "needs CUDA tensors (got cpu)"
    if torch.cuda.is_available():
        c = {k: v.cuda() for k, v in t.items() if v is not None}
        ok, reason = supports_selective_scan(c["u"].double(), c["delta"], c["A"], c["B"], c["C"])
        assert not ok and "float64" in reason
        wide = -torch.ones(4, 128, device="cuda")
        ok, reason = supports_selective_scan(c["u"], c["delta"], wide, c["B"], c["C"])
        assert not ok and "N=128" in reason


def test_resets_match_separate_documents(monkeypatch):
    # Tiles of 16, one per backward segment: documents cross tiles and segments, one begins on a tile's first step
    # (16), documents of one token; row 0's first document continues the initial state, row 1 starts afresh.
    from tests.kernels.scan_checks import check_resets_match_separate_documents

    fn = triton_kernel("selective_scan")
    monkeypatch.setattr(importlib.import_module("seqzoo.kernels.selective_scan.triton"), "SEGMENT_TILES", 1)
    tensors = {k: v.to(DEVICE) for k, v in _inputs(2, 40, 19, 5, seed=12).items()}

    def run(backend, t, reset=None):
        kernel = fn if backend == "triton" else get_kernel("selective_scan", backend)
        return kernel(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], initial_state=t["initial_state"],
                      reset=reset)

    check_resets_match_separate_documents(run, "triton", tensors, [[1, 15, 9, 15], [5, 1, 32, 2]],
                                          ("u", "delta", "B", "C", "z"), dtype=torch.float32)
    with torch.no_grad():  # T = 1 without gradients: the fused decode step
        one = {k: (v[:, :1] if v.dim() == 3 and v.shape[1] == 40 else v) for k, v in tensors.items()}
        reset = torch.tensor([[False], [True]], device=DEVICE)
        y, state = run("triton", one, reset=reset)
        y_ref, state_ref = run("reference", one, reset=reset)
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(state, state_ref, atol=2e-5, rtol=1e-4)


def test_double_backward_is_refused_by_name():
    fn = triton_kernel("selective_scan")
    check_double_backward_refused("selective_scan", "triton", fn, _inputs(1, 5, 3, 4, seed=2), _call)
