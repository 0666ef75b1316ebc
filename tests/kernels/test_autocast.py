"""Every kernel backend under the caller's torch.autocast: it runs as one of autocast's float32 ops, so its outputs,
final states and gradients are exactly those of the float32 call without autocast (bf16 inputs: those of the
float32 call on the same, rounded, values)."""

from __future__ import annotations

import pytest
import torch

from seqzoo.kernels import available_backends, dispatch, use_backend
from tests.kernels import test_causal_conv1d, test_rnn_cells, test_selective_scan, test_ssd, test_wkv7

LENGTH = 37  # more than two chunks of 16


def _ssd(t):
    return dispatch("ssd", t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], initial_state=t["initial_state"],
                    chunk_size=16)


def _wkv7(t):
    return dispatch("wkv7", *(t[n] for n in test_wkv7.NAMES), initial_state=t["initial_state"])


def _selective_scan(t):
    return dispatch("selective_scan", t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                    initial_state=t["initial_state"])


def _conv(t):
    return dispatch("causal_conv1d", t["x"], t["weight"], t["bias"], initial_state=t["initial_state"],
                    activation="silu")


def _cell(op):
    def call(t):
        extra = {"nonlinearity": "tanh"} if op == "rnn" else {}
        return dispatch(op, t["x"], *t["states"], *t["params"], mask=None, **extra)
    return call


def _cell_inputs(op):
    def make(length, dtype):
        x, states, params = test_rnn_cells.make_inputs(op, length, dtype)
        return {"x": x, "states": states, "params": params}
    return make


OPS = {
    "ssd": (test_ssd.make_inputs, _ssd),
    "wkv7": (test_wkv7.make_inputs, _wkv7),
    "selective_scan": (test_selective_scan.make_inputs, _selective_scan),
    "causal_conv1d": (test_causal_conv1d.make_inputs, _conv),
    **{op: (_cell_inputs(op), _cell(op)) for op in ("rnn", "lstm", "gru")},
}
CASES = [pytest.param(op, backend, id=f"{op}-{backend}") for op in OPS for backend in available_backends(op)
         if "triton" not in backend]  # Triton: GPU (tests/kernels_triton)


def _leaves(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in _leaves(value)]
    if isinstance(tree, (list, tuple)):
        return [leaf for value in tree for leaf in _leaves(value)]
    return []


def _run(call, tensors, autocast):
    inputs = [t.detach().clone().requires_grad_() for t in _leaves(tensors) if t.is_floating_point()]
    it = iter(inputs)
    rebuilt = _rebuild(tensors, it)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        outputs = [o for o in _leaves(call(rebuilt)) if o.is_floating_point()]
    torch.manual_seed(1)
    loss = sum((o.float() * torch.randn(o.shape)).sum() for o in outputs)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return outputs, [g if g is not None else torch.zeros_like(i) for g, i in zip(grads, inputs)]


def _rebuild(tree, it):
    if isinstance(tree, torch.Tensor):
        return next(it) if tree.is_floating_point() else tree
    if isinstance(tree, dict):
        return {k: _rebuild(v, it) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_rebuild(v, it) for v in tree]
    return tree


@pytest.mark.parametrize(("op", "backend"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_is_a_float32_op_under_autocast(op, backend, dtype):
    make, call = OPS[op]
    tensors = make(LENGTH, dtype)
    expected_tensors = _rebuild(tensors, iter(t.float() for t in _leaves(tensors) if t.is_floating_point()))
    with use_backend(op, backend):
        outputs, grads = _run(call, tensors, autocast=True)
        expected, expected_grads = _run(call, expected_tensors, autocast=False)
    for got, want in zip(outputs, expected, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.float(), want.to(got.dtype).float(), rtol=0, atol=0)
