"""Triton backends against the reference for tensor layouts the kernels index by hand: a 1-D parameter (D, A, the
conv bias) that is a strided view, and a final-state gradient that autograd hands over expanded (stride 0), as
``state.sum()`` does. Both once read memory as if it were contiguous: silently wrong outputs and gradients."""

import pytest
import torch

from seqzoo.kernels import get_kernel
from tests.kernels_triton.support import DEVICE, triton_kernel


def _strided(t):
    """The same values as a non-contiguous view (every third element of a larger buffer)."""
    big = torch.zeros(*t.shape, 3, dtype=t.dtype, device=t.device)
    big[..., 1] = t
    return big[..., 1]


def _inputs(op, length):
    g = torch.Generator().manual_seed(7)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    if op == "selective_scan":
        return ([r(2, length, 5), torch.rand(2, length, 5, generator=g), -torch.rand(5, 3, generator=g) - 0.1,
                 r(2, length, 3), r(2, length, 3), r(5), r(2, length, 5)], {"initial_state": r(2, 5, 3)}, (5,))
    if op == "ssd":
        return ([r(2, length, 4, 3), torch.rand(2, length, 4, generator=g), -torch.rand(4, generator=g) - 0.1,
                 r(2, length, 2, 5), r(2, length, 2, 5), r(4)], {"initial_state": r(2, 4, 3, 5)}, (2, 5))
    return ([r(2, length, 5), r(5, 4), r(5)], {"initial_state": r(2, 5, 3), "activation": "silu"}, (2,))


@pytest.mark.parametrize("length", [1, 20])
@pytest.mark.parametrize("op", ["selective_scan", "ssd", "causal_conv1d"])
def test_strided_vectors_and_expanded_state_gradient(op, length):
    fn = triton_kernel(op)
    args, kwargs, strided = _inputs(op, length)
    results = []
    for f, view in ((fn, _strided), (get_kernel(op, "reference"), lambda t: t)):
        leaves = [a.to(DEVICE).requires_grad_() for a in args]
        state0 = kwargs["initial_state"].to(DEVICE).requires_grad_()
        call_args = [view(t) if i in strided else t for i, t in enumerate(leaves)]
        y, state = f(*call_args, **{**kwargs, "initial_state": state0})
        (y.float() * 0.5).pow(2).sum().backward(retain_graph=True)
        state.sum().backward()  # an expanded (stride 0) final-state gradient
        results.append([y.float(), state.float()] + [t.grad.float() for t in leaves + [state0]])
    for name, got, want in zip(["y", "state"] + [f"grad{i}" for i in range(len(args) + 1)], *results):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=f"{op} T={length}: {name}")
