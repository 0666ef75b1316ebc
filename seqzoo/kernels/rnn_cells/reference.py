"""Reference Elman RNN / LSTM / GRU layers: one explicit cell step per token, in plain PyTorch.

Shapes: x (B, T, I); h0, c0 (B, H); weight_ih (G*H, I); weight_hh (G*H, H); biases (G*H,) or None, with G = 1 (RNN),
4 (LSTM, gate order i, f, g, o) or 3 (GRU, gate order r, z, n) -- torch.nn's layout, so weights move freely between
this, the fused backend and ``torch.nn.LSTM`` checkpoints.

mask (B, T), optional: 1 for real tokens, 0 for padding. A padded step leaves the state unchanged and outputs zeros,
so a left-padded row ends in exactly the state of the same prompt alone.

reset (B, T), optional: True at a document's first token, whose entering state is zero (seqzoo/kernels/reset.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqzoo.kernels.reset import check_mask, check_reset


# Projections go through F.linear, so a quantised weight (a tensor subclass such as torchao's Int8Tensor, which
# implements F.linear and not a transposed matmul) runs here; the fused backend declines it.
def _input_projection(x, weight_ih, bias_ih):
    # The input half of every gate does not depend on the state: compute it for all steps at once.
    return F.linear(x, weight_ih, bias_ih)  # (B, T, G*H)


def _hidden_projection(h, weight_hh, bias_hh):
    return F.linear(h, weight_hh, bias_hh)  # (B, G*H)


def check_positions(op, x, mask, reset):
    """The per-position inputs of a call on x (B, T, I) checked: ``reset`` as :func:`check_reset` returns it, and a
    ``mask`` of another shape refused."""
    check_mask(op, mask, *x.shape[:2])
    return check_reset(op, reset, *x.shape[:2])


def _masked(mask, t, new, old):
    if mask is None:
        return new
    keep = mask[:, t, None].to(torch.bool)
    return torch.where(keep, new, old)


def _entering(reset, t, *states):
    """The states entering step t: zero in the rows that begin a document there."""
    if reset is None:
        return states
    return tuple(torch.where(reset[:, t, None], 0.0, s) for s in states)


def _output(mask, t, h):
    # A padded position outputs zeros; any nonzero mask value is a token, as for the state and the fused backend.
    return h if mask is None else h * mask[:, t, None].to(torch.bool).to(h.dtype)


def rnn(x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, nonlinearity="tanh", mask=None, reset=None):
    """Elman RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh). Returns (y, h_T)."""
    act = {"tanh": torch.tanh, "relu": torch.relu}[nonlinearity]
    reset = check_positions("rnn", x, mask, reset)
    xp = _input_projection(x, weight_ih, bias_ih)
    h = h0
    outputs = []
    for t in range(x.shape[1]):
        (h,) = _entering(reset, t, h)
        h = _masked(mask, t, act(xp[:, t] + _hidden_projection(h, weight_hh, bias_hh)), h)
        outputs.append(_output(mask, t, h))
    return _stack(outputs, x, h0), h


def lstm(x, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, mask=None, reset=None):
    """LSTM (Hochreiter & Schmidhuber 1997, with forget gate): returns (y, (h_T, c_T)).

    i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh);  c_t = sig(f) c_{t-1} + sig(i) tanh(g);
    h_t = sig(o) tanh(c_t)
    """
    reset = check_positions("lstm", x, mask, reset)
    xp = _input_projection(x, weight_ih, bias_ih)
    h, c = h0, c0
    outputs = []
    for t in range(x.shape[1]):
        h, c = _entering(reset, t, h, c)
        i, f, g, o = (xp[:, t] + _hidden_projection(h, weight_hh, bias_hh)).chunk(4, dim=-1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        c = _masked(mask, t, c_new, c)
        h = _masked(mask, t, h_new, h)
        outputs.append(_output(mask, t, h))
    return _stack(outputs, x, h0), (h, c)


def gru(x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, mask=None, reset=None):
    """GRU (Cho et al. 2014, torch.nn convention): returns (y, h_T).

    r = sig(W_ir x + b_ir + W_hr h + b_hr);  z = sig(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn));  h_t = (1 - z) n + z h_{t-1}
    """
    reset = check_positions("gru", x, mask, reset)
    xp = _input_projection(x, weight_ih, bias_ih)
    h = h0
    outputs = []
    for t in range(x.shape[1]):
        (h,) = _entering(reset, t, h)
        x_r, x_z, x_n = xp[:, t].chunk(3, dim=-1)
        h_r, h_z, h_n = _hidden_projection(h, weight_hh, bias_hh).chunk(3, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = _masked(mask, t, (1 - z) * n + z * h, h)
        outputs.append(_output(mask, t, h))
    return _stack(outputs, x, h0), h


def _stack(outputs, x, h0):
    if not outputs:  # zero-length input: no outputs, state unchanged
        return x.new_zeros(x.shape[0], 0, h0.shape[-1])
    return torch.stack(outputs, dim=1)
