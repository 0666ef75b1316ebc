"""Triton ``ssd`` against the reference: outputs, final states and the gradients of x, dt, A, B, C, D and the
initial state; odd lengths across several chunks, grouped B/C, float32 and bfloat16, identity steps (dt = 0) and
the fused decode step."""

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


def _inputs(batch, length, heads, head_dim, groups, state_size, seed, with_optional=True):
    g = torch.Generator().manual_seed(seed)
    dt = torch.rand(batch, length, heads, generator=g) * 0.5
    dt[0, 1:3] = 0.0  # padding-style identity steps
    return {
        "x": torch.randn(batch, length, heads, head_dim, generator=g),
        "dt": dt,
        "A": -(torch.rand(heads, generator=g) * 2 + 0.1),
        "B": torch.randn(batch, length, groups, state_size, generator=g),
        "C": torch.randn(batch, length, groups, state_size, generator=g),
        "D": torch.randn(heads, generator=g) if with_optional else None,
        "initial_state": torch.randn(batch, heads, head_dim, state_size, generator=g) if with_optional else None,
    }


def _call(f, t):
    return f(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], initial_state=t["initial_state"], chunk_size=16)


@pytest.fixture
def small_chunks(monkeypatch):
    # Chunks of 16 (the smallest tl.dot tile), so that T = 33 spans three chunks, the last one partial.
    module = importlib.import_module("seqzoo.kernels.ssd.triton")
    monkeypatch.setattr(module, "CHUNK", 16)
    monkeypatch.setattr(module, "CHUNK_FP32", 16)


@pytest.mark.parametrize("length, dtype", CASES, ids=CASE_IDS)
def test_parity(length, dtype, small_chunks):
    fn = triton_kernel("ssd")
    # 4 heads in 2 groups; P = 5 and N = 6 are padded to 16 inside the kernels.
    inputs = _inputs(2, length, 4, 5, 2, 6, seed=length)
    # As in the Mamba-2 layer: x, B, C in the model dtype; dt, A, D in float32.
    backend, reference = leaves(inputs, dtype, low_precision=("x", "B", "C"))
    check_parity(f"ssd T={length}", fn, get_kernel("ssd", "reference"), backend, reference, _call, dtype,
                 out_dtype=dtype)


@pytest.mark.parametrize("length", [1, 16, 21])
def test_parity_with_a_decay_of_exactly_zero(length, small_chunks):
    # Head 1 has A = -inf: each step with dt > 0 forgets its state, and the padding of a partial chunk (dt = 0, at
    # T = 21) is the identity. dt * -inf made the running sums cs -inf and every decay of the head nan, and
    # 0 * -inf a padding step's.
    inputs = _inputs(2, length, 2, 5, 1, 6, seed=21)
    inputs["A"][1] = -float("inf")
    inputs["dt"][..., 1] = inputs["dt"][..., 1].clamp(min=0.05)  # (at dt = 0 the derivative by dt is infinite)
    backend, reference = leaves(inputs, torch.float32, low_precision=())
    check_parity(f"ssd A=-inf T={length}", triton_kernel("ssd"), get_kernel("ssd", "reference"), backend, reference,
                 _call, torch.float32, out_dtype=torch.float32)
    # Identity steps of that head (dt = 0; at T = 1 the decode step): the state as the reference leaves it.
    inputs["dt"][1, :, 1] = 0.0
    t = {key: None if value is None else value.to(DEVICE) for key, value in inputs.items()}
    with torch.no_grad():
        for got, want, what in zip(_call(triton_kernel("ssd"), t), _call(get_kernel("ssd", "reference"), t),
                                   ("output", "state")):
            assert got.isfinite().all(), what
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=lambda m: f"ssd identity {what}: {m}")


def test_parity_with_a_strong_decay_inside_a_chunk(small_chunks):
    # One step of dt A = -1e4 first in a chunk, weak ones after it: the running sums' float32 differences lost 2e-3
    # of the steps after it before dt A was floored at LOG_DECAY_FLOOR.
    inputs = _inputs(1, 32, 1, 5, 1, 6, seed=22)
    inputs["dt"] = torch.full_like(inputs["dt"], 0.01)
    inputs["dt"][0, 16] = 1e4 / -inputs["A"][0]
    backend, reference = leaves(inputs, torch.float32, low_precision=())
    check_parity("ssd strong decay", triton_kernel("ssd"), get_kernel("ssd", "reference"), backend, reference,
                 _call, torch.float32, out_dtype=torch.float32)


@pytest.mark.parametrize("chunk_size", [0, -1, True, 2.0, "4", None])
def test_the_kernel_called_directly_refuses_a_bad_chunk_size(chunk_size):
    # (the registry checks it at dispatch; called directly, this backend took any value, where the others refuse)
    t = {key: None if value is None else value.to(DEVICE) for key, value in _inputs(1, 4, 1, 5, 1, 6, 0).items()}
    with pytest.raises(ValueError, match="ssd: chunk_size must be a positive integer"):
        triton_kernel("ssd")(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=chunk_size)


def test_parity_default_chunk_without_optional_inputs():
    fn = triton_kernel("ssd")
    inputs = _inputs(1, 70, 2, 16, 1, 16, seed=3, with_optional=False)  # float32: 32-step chunks, the last partial
    backend, reference = leaves(inputs, torch.float32, low_precision=())
    check_parity("ssd plain", fn, get_kernel("ssd", "reference"), backend, reference, _call, torch.float32,
                 out_dtype=torch.float32)


def test_zero_dt_keeps_the_state_bit_for_bit_and_decode_steps_match_the_sequence(small_chunks):
    fn = triton_kernel("ssd")
    t = {k: (v.to(DEVICE) if v is not None else None) for k, v in _inputs(2, 7, 4, 5, 2, 6, seed=4).items()}
    with torch.no_grad():
        _, state = _call(fn, dict(t, dt=torch.zeros_like(t["dt"])))
        assert torch.equal(state, t["initial_state"]), "dt = 0 must leave the state unchanged"

        y_full, state_full = _call(fn, t)
        state, outputs = t["initial_state"], []
        for step in range(7):  # T = 1 without gradients takes the fused decode kernel
            one = {k: v[:, step:step + 1] for k, v in t.items() if k in ("x", "dt", "B", "C")}
            y, state = _call(fn, dict(t, **one, initial_state=state))
            outputs.append(y)
    torch.testing.assert_close(torch.cat(outputs, dim=1), y_full, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(state, state_full, atol=2e-5, rtol=1e-4)


def test_supports_declines_what_the_kernels_cannot_run():
    from seqzoo.kernels.triton_support import supports_ssd

    t = _inputs(1, 3, 2, 4, 1, 4, seed=0)
    ok, reason = supports_ssd(t["x"], t["dt"], t["A"], t["B"], t["C"])
    assert not ok and reason == "needs CUDA tensors (got cpu)"
    if torch.cuda.is_available():
        c = {k: v.cuda() for k, v in t.items() if v is not None}
        ok, reason = supports_ssd(c["x"].double(), c["dt"], c["A"], c["B"], c["C"])
        assert not ok and "float64" in reason
        wide = torch.randn(1, 3, 2, 256, device="cuda")
        ok, reason = supports_ssd(wide, c["dt"], c["A"], c["B"], c["C"])
        assert not ok and "P=256" in reason


def test_resets_match_separate_documents(small_chunks):
    # Chunks of 16: documents cross chunks, one begins on a chunk's first step (16), documents of one token, the last
    # one included; row 0's first document continues the initial state, row 1 starts afresh.
    from tests.kernels.scan_checks import check_resets_match_separate_documents

    fn = triton_kernel("ssd")
    tensors = {k: v.to(DEVICE) for k, v in _inputs(2, 33, 4, 5, 2, 6, seed=13).items()}

    def run(backend, t, reset=None):
        kernel = fn if backend == "triton" else get_kernel("ssd", backend)
        return kernel(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], initial_state=t["initial_state"],
                      chunk_size=16, reset=reset)

    check_resets_match_separate_documents(run, "triton", tensors, [[1, 15, 9, 8], [5, 1, 26, 1]],
                                          ("x", "dt", "B", "C"), dtype=torch.float32)
    with torch.no_grad():  # T = 1 without gradients: the fused decode step
        one = {k: (v[:, :1] if k in ("x", "dt", "B", "C") else v) for k, v in tensors.items()}
        reset = torch.tensor([[False], [True]], device=DEVICE)
        y, state = run("triton", one, reset=reset)
        y_ref, state_ref = run("reference", one, reset=reset)
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(state, state_ref, atol=2e-5, rtol=1e-4)


def test_double_backward_is_refused_by_name():
    fn = triton_kernel("ssd")
    check_double_backward_refused("ssd", "triton", fn, _inputs(1, 5, 2, 4, 1, 4, seed=2), _call)
