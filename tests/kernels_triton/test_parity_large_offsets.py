"""Triton backends on an input whose batch rows lie more than 2**31 elements apart: the kernels' batch index is a
32-bit program id, and its product with the batch stride wrapped around (a read far outside the tensor: a segfault
under the interpreter, an illegal address or garbage on a GPU) for any tensor of 2**31 elements or more, e.g.
(8, 65536, 4096) in bfloat16. The rows are views into a buffer that is allocated but never touched between them,
so the test costs a few kilobytes of real memory."""

import pytest
import torch

from seqzoo.kernels import get_kernel
from tests.kernels_triton.support import DEVICE, triton_kernel

ROW_STRIDE = 2**30 + 64  # < 2**31, so Triton takes it as a 32-bit integer; row 2 starts past 2**31


def _far_apart(t):
    """The same (3, ...) values as a view whose rows lie ROW_STRIDE elements apart."""
    try:
        buffer = torch.empty(2 * ROW_STRIDE + t[0].numel(), dtype=t.dtype, device=t.device)
    except RuntimeError as err:  # (a machine that refuses 4 GiB of address space)
        pytest.skip(f"cannot reserve the address space: {err}")
    view = buffer.as_strided(t.shape, (ROW_STRIDE, *t.stride()[1:]))
    view.copy_(t)
    return view


def _inputs(op):
    g = torch.Generator().manual_seed(3)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    if op == "causal_conv1d":
        return [r(3, 9, 5), r(5, 4), r(5)], {"activation": "silu"}
    if op == "selective_scan":
        return [r(3, 9, 5), torch.rand(3, 9, 5, generator=g), -torch.rand(5, 3, generator=g) - 0.1,
                r(3, 9, 3), r(3, 9, 3), r(5)], {}
    return [r(3, 9, 4, 3), torch.rand(3, 9, 4, generator=g), -torch.rand(4, generator=g) - 0.1,
            r(3, 9, 2, 5), r(3, 9, 2, 5), r(4)], {}


@pytest.mark.parametrize("op", ["causal_conv1d", "selective_scan", "ssd"])
def test_batch_rows_past_2_pow_31_elements(op):
    args, kwargs = _inputs(op)
    args = [a.to(DEVICE) for a in args]
    far = [_far_apart(args[0].to(torch.bfloat16)), *args[1:]]
    y, state = triton_kernel(op)(*far, **kwargs)
    y_ref, state_ref = get_kernel(op, "reference")(far[0].float(), *args[1:], **kwargs)
    torch.testing.assert_close(y.float(), y_ref.float(), atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(state.float(), state_ref.float(), atol=5e-2, rtol=5e-2)
