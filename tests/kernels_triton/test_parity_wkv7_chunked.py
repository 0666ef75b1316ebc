"""Triton ``triton_chunked`` wkv7 against the reference: outputs, final states and the gradients of r, w, k, v, a, b
and the initial state; lengths 1 (the fused decode step), 63 and 100 (seven chunks of 16), float32 and bfloat16, a
padding mask (identity steps w = k = b = 0), head sizes that are not powers of two, both forms of the score
matrices (factored, and pairwise for chunks that decay strongly) and the registry's choice."""

import importlib

import pytest
import torch

from seqzoo.kernels import get_kernel
from tests.kernels_triton.support import DEVICE, check_double_backward_refused, check_parity, leaves, triton_kernel
from tests.kernels_triton.test_parity_wkv7 import _call, _inputs

CHUNKED = importlib.import_module("seqzoo.kernels.wkv7.triton_chunked")
ALL = ("r", "w", "k", "v", "a", "b")


@pytest.fixture
def chunk16(monkeypatch):
    # The smallest chunk the compiled kernels take (tl.dot needs 16): more chunks per test at the same length.
    monkeypatch.setattr(CHUNKED, "CHUNK", 16)


def _check(name, inputs, dtype=torch.float32):
    backend, reference = leaves(inputs, dtype, low_precision=ALL if dtype != torch.float32 else ())
    check_parity(name, triton_kernel("wkv7", "triton_chunked"), get_kernel("wkv7", "reference"), backend, reference,
                 _call, dtype, out_dtype=dtype)


@pytest.mark.parametrize("length, dtype", [(1, torch.float32), (63, torch.float32), (63, torch.bfloat16)],
                         ids=["T1-fp32", "T63-fp32", "T63-bf16"])
def test_parity(length, dtype):
    # Default chunk (32): T = 63 is one full chunk and one partial one. V = 12 is padded to 16 inside the kernels.
    _check(f"wkv7 chunked T={length}", _inputs(1, length, 2, 16, 12, seed=length), dtype)


def test_parity_across_many_chunks(chunk16):
    _check("wkv7 chunked T=100", _inputs(1, 100, 1, 16, 16, seed=3))


def test_parity_with_padding_mask_and_identity_steps_bit_for_bit(chunk16):
    inputs = _inputs(2, 40, 1, 16, 16, seed=4)
    pad = torch.zeros(2, 40, dtype=torch.bool)
    pad[0, :21] = True  # a left-padded row, its padding crossing a chunk boundary
    pad[1, 9:14] = True  # a gap inside the sequence
    for key in ("w", "k", "b"):  # what the model does at masked positions
        inputs[key] = inputs[key].masked_fill(pad[:, :, None, None], 0.0)
    _check("wkv7 chunked padding mask", inputs)

    fn = triton_kernel("wkv7", "triton_chunked")
    t = {key: value.to(DEVICE) for key, value in inputs.items()}
    with torch.no_grad():  # only identity steps: the state must come back bit for bit
        zeros = {key: torch.zeros_like(t[key]) for key in ("w", "k", "b")}
        _, state = _call(fn, dict(t, **zeros))
    assert torch.equal(state, t["initial_state"]), "w = k = b = 0 must leave the state unchanged"


def test_parity_with_strongly_decaying_chunks(chunk16):
    # Chunk 1 (steps 16..31) decays by ~90 (> FACTORED_MAX_DECAY): its score matrices take the pairwise form, the
    # other chunks the factored one, in the same launch.
    inputs = _inputs(1, 40, 1, 16, 16, seed=5)
    inputs["w"][:, 16:32] = -3.0 - 5.0 * torch.rand(1, 16, 1, 16, generator=torch.Generator().manual_seed(5))
    assert inputs["w"][0, 16:32].sum(0).max() < -CHUNKED.FACTORED_MAX_DECAY
    _check("wkv7 chunked strong decay", inputs)


@pytest.mark.parametrize("strength", [float("inf"), 1e4], ids=["w=-inf", "w=-1e4"])
def test_parity_with_a_decay_of_exactly_zero(chunk16, strength):
    # Two key channels decay to nothing at step 20 (w = -inf; or w = -1e4, exp of it 0 in float32 too): the running
    # sums c were -inf there, and c_t - c_s nan in every output, state and gradient; -1e4 swamped the float32
    # differences of the steps after it (errors of 3e-3). w is floored at chunked.LOG_DECAY_FLOOR, as on the CPU.
    inputs = _inputs(1, 40, 1, 16, 16, seed=8)
    inputs["w"][0, 20, 0, :2] = -strength
    _check(f"wkv7 chunked w=-{strength}", inputs)


def test_parity_pairwise_form_everywhere(chunk16, monkeypatch):
    monkeypatch.setattr(CHUNKED, "FACTORED_MAX_DECAY", -1.0)  # no chunk qualifies for the factored form
    _check("wkv7 chunked pairwise", _inputs(1, 20, 1, 16, 16, seed=6))


def test_parity_without_initial_state_two_value_blocks_odd_key_size(chunk16):
    # K = 24 (padded to 32); V = 40: padded to 64, two programs of 32 value rows in the sequential kernels.
    _check("wkv7 chunked no state", _inputs(1, 20, 1, 24, 40, seed=7, with_state=False))


def test_registry_prefers_the_chunked_kernel_and_it_declines_cpu_tensors():
    from seqzoo.kernels.registry import get_op

    backends = get_op("wkv7").backends
    assert backends["triton_chunked"].priority > backends["triton"].priority > backends["chunked"].priority
    t = _inputs(1, 2, 1, 16, 16, seed=0)
    ok, reason = backends["triton_chunked"].supports(*(t[key] for key in ALL))
    assert not ok and reason == "needs CUDA tensors (got cpu)"


def test_double_backward_is_refused_by_name():
    fn = triton_kernel("wkv7", "triton_chunked")
    check_double_backward_refused("wkv7", "triton_chunked", fn, _inputs(1, 5, 1, 16, 16, seed=2), _call)
