"""Checks shared by the scan kernels' parity tests (selective_scan, ssd, wkv7; causal_conv1d uses the first two).

Each test file describes its op with a ``run(backend, tensors) -> (y, final_state)`` function and the names of its
``(batch, time, ...)`` inputs; the checks here are the same for every op.
"""

from __future__ import annotations

import torch

from tests.kernels.tolerances import assert_close


def leaves(tensors, dtype=None):
    """Fresh leaf copies (converted to ``dtype`` when given) that collect gradients."""
    return {name: t.detach().to(dtype or t.dtype, copy=True).requires_grad_() for name, t in tensors.items()}


def backward(y, state, seed=1):
    """Backpropagate a random weighting of the output and the final state."""
    g = torch.Generator().manual_seed(seed)
    # bf16-representable weights: every run sees the same output gradient whatever its output dtype.
    wy = torch.randn(y.shape, generator=g).bfloat16().double()
    ws = torch.randn(state.shape, generator=g).bfloat16().double()
    ((y.double() * wy).sum() + (state.double() * ws).sum()).backward()


def slice_time(tensors, start, stop, sequence_args):
    return {name: t[:, start:stop] if name in sequence_args else t for name, t in tensors.items()}


def check_two_pieces_equal_whole(run, backend, tensors, split, sequence_args):
    """Running [0, split) then [split, T) from the first piece's final state gives the whole run: exactly for the
    reference (the same step-by-step arithmetic), within float64 rounding for the chunked paths."""
    whole_y, whole_state = run(backend, tensors)
    first_y, first_state = run(backend, slice_time(tensors, 0, split, sequence_args))
    second = slice_time(tensors, split, None, sequence_args)
    second["initial_state"] = first_state
    second_y, second_state = run(backend, second)
    check_continued(backend, torch.cat([first_y, second_y], dim=1), second_state, whole_y, whole_state)


def check_continued(backend, y, state, whole_y, whole_state):
    """A run continued from an earlier piece's final state equals the whole run: exactly for the reference,
    within float64 rounding for the chunked paths."""
    if backend == "reference":
        assert torch.equal(y, whole_y) and torch.equal(state, whole_state)
    else:
        assert_close(y, whole_y, torch.float64, "output", "continued")
        assert_close(state, whole_state, torch.float64, "state", "continued")
