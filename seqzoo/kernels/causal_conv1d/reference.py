"""Reference depthwise causal 1-D convolution: one explicit window per token, in plain PyTorch.

Shapes (batch-first, channels-last): x (B, T, D); weight (D, K), one length-K filter per channel; bias (D,) or None;
initial_state (B, D, K-1), the K-1 inputs that precede x (oldest first), zeros when None; mask (B, T) of 0/1 or bool,
or None. Returns y (B, T, D) in x's dtype and final_state (B, D, K-1) in float32 (float64 for float64 inputs).

For each channel d and step t, with the window w_t = (x_{t-K+1}, ..., x_t) of the *valid* inputs (positions before
the sequence come from initial_state):

    y_t[d] = act(bias[d] + sum_{j=0}^{K-1} weight[d, j] * w_t[j][d])        act = identity or silu(v) = v * sigmoid(v)

Padding: a position with mask == 0 is skipped as if it were absent from the sequence. It enters no window, leaves
the state unchanged, and its output is 0. A padded row therefore produces, at its valid positions, exactly the
outputs of its valid tokens run alone, and ends in the same state; this holds for any mask pattern.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqzoo.kernels.backend import check_floating
from seqzoo.kernels.reset import check_mask, check_reset

ACTIVATIONS = (None, "silu")


def compute_dtype(*tensors):
    """float64 if any input is float64, else float32: states and sums are never kept in half precision."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


FLOATING = ("x", "weight", "bias", "initial_state")  # every tensor but the mask and reset


def check_call(x, weight, bias=None, *, initial_state=None, activation=None, mask=None, reset=None):
    """The registry's check of a call before it chooses a backend (``register_op``): every input but ``mask`` and
    ``reset`` in a real floating-point dtype."""
    check_floating("causal_conv1d", FLOATING, (x, weight, bias, initial_state))


def check_inputs(x, weight, bias, initial_state, activation, mask):
    """Raise ValueError naming the offending argument, its shape, and the expected one."""
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: x must be (B, T, D), got shape {tuple(x.shape)}")
    batch, length, channels = x.shape
    if weight.dim() != 2 or weight.shape[0] != channels or weight.shape[1] < 1:
        raise ValueError(
            f"causal_conv1d: weight must be (D, K) = ({channels}, K) with K >= 1 for x of shape {tuple(x.shape)}, "
            f"got shape {tuple(weight.shape)}"
        )
    width = weight.shape[1]
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f"causal_conv1d: bias must be (D,) = ({channels},), got shape {tuple(bias.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, channels, width - 1):
        raise ValueError(
            f"causal_conv1d: initial_state must be (B, D, K-1) = ({batch}, {channels}, {width - 1}), "
            f"got shape {tuple(initial_state.shape)}"
        )
    check_mask("causal_conv1d", mask, batch, length)
    if activation not in ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be one of {ACTIVATIONS}, got {activation!r}")


def activate(y, activation):
    return F.silu(y) if activation == "silu" else y


def causal_conv1d(x, weight, bias=None, *, initial_state=None, activation=None, mask=None, reset=None):
    """Depthwise causal conv over (B, T, D); returns (y, final_state). See the module docstring for the formulas;
    ``reset`` (B, T): the inputs before a token marked True read as zeros (seqzoo/kernels/reset.py)."""
    check_inputs(x, weight, bias, initial_state, activation, mask)
    batch, length, channels = x.shape
    reset = check_reset("causal_conv1d", reset, batch, length)
    dtype = compute_dtype(x, weight, bias, initial_state)
    width = weight.shape[1]
    # Convert once: a per-step cast of a bf16 parameter would also accumulate its gradient in bf16.
    xs, w = x.to(dtype), weight.to(dtype)
    bias_c = None if bias is None else bias.to(dtype)
    if initial_state is None:
        state = x.new_zeros(batch, channels, width - 1, dtype=dtype)
    else:
        state = initial_state.to(dtype)
    outputs = []
    for t in range(length):
        if reset is not None:
            state = torch.where(reset[:, t, None, None], 0.0, state)
        window = torch.cat([state, xs[:, t, :, None]], dim=-1)  # (B, D, K)
        y = (window * w).sum(dim=-1)  # (B, D)
        if bias_c is not None:
            y = y + bias_c
        y = activate(y, activation)
        if mask is None:
            state = window[..., 1:]
        else:
            keep = mask[:, t].to(torch.bool)[:, None]  # (B, 1)
            y = torch.where(keep, y, torch.zeros_like(y))
            state = torch.where(keep[..., None], window[..., 1:], state)
        outputs.append(y)
    if not outputs:
        return x.new_zeros(batch, 0, channels), state
    return torch.stack(outputs, dim=1).to(x.dtype), state
