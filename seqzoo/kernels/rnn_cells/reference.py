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

from seqzoo.kernels.backend import check_floating
from seqzoo.kernels.reset import check_mask, check_reset
from seqzoo.kernels.symbolic import is_symbolic, scan


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


GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # gate blocks of hidden_size rows in each weight and bias
NONLINEARITIES = ("tanh", "relu")  # the Elman RNN's, as torch.nn.RNN's


# The registry's checks of a call before it chooses a backend (``register_op``): every tensor but the mask and reset
# in a real floating-point dtype (an integer input was cast by the reference backend, and its output truncated).
def check_rnn_call(x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, nonlinearity="tanh", mask=None,
                   reset=None):
    check_floating("rnn", _FLOATING, (x, h0, weight_ih, weight_hh, bias_ih, bias_hh))


def check_lstm_call(x, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, mask=None, reset=None):
    check_floating("lstm", _FLOATING_LSTM, (x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh))


def check_gru_call(x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, mask=None, reset=None):
    check_floating("gru", _FLOATING, (x, h0, weight_ih, weight_hh, bias_ih, bias_hh))


_FLOATING = ("x", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh")
_FLOATING_LSTM = ("x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh")


def check_nonlinearity(nonlinearity):
    """ValueError unless ``nonlinearity`` is one the Elman RNN has (a KeyError named only the value)."""
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"rnn: unknown nonlinearity {nonlinearity!r}; the Elman RNN takes 'tanh' or 'relu' "
                         "(as torch.nn.RNN)")


def check_shapes(op, x, weight_ih, weight_hh, bias_ih, bias_hh, *states):
    """Refuse weights that are not torch.nn's layout for ``op`` with G gates (1 rnn, 4 lstm, 3 gru) and hidden size H
    (weight_hh's columns): weight_hh (G*H, H), weight_ih (G*H, I), biases (G*H,) or None; an input that is not
    (B, T, I); and an initial state (h0, and c0 for the LSTM) that is not (B, H); each naming the argument, its shape
    and the one expected. torch's fused sequence kernels do not check (torch.nn.LSTM does, in Python, and builds
    its own weights): on the CPU the LSTM returned garbage for an input of another width, or a weight_ih of a
    GRU's 3*H rows, without an error (non-finite and different on every call: it read memory it does not own), and
    read and wrote past a smaller state's memory, corrupting the heap and crashing the process; the other ops
    failed with torch's shape errors, which name no argument. Comparisons of shapes, nothing read from the device
    (this runs on every decode step)."""
    shape = x.shape  # (each shape read once: this runs on every decode step)
    hh = weight_hh.shape
    gates = GATES[op]
    hidden = hh[-1] if hh else 0
    rows = gates * hidden
    if hh != (rows, hidden):
        example = f" = ({rows}, {hidden}) for its {hidden} columns" if len(hh) == 2 else ""
        raise ValueError(f"{op}: weight_hh has shape {tuple(hh)}; expected ({gates} * hidden_size, hidden_size)"
                         f"{example}: torch.nn's layout, one block of hidden_size rows per gate")
    ih = weight_ih.shape
    if len(ih) != 2 or ih[0] != rows:
        raise ValueError(f"{op}: weight_ih has shape {tuple(ih)}; expected ({rows}, input_size): {gates} * "
                         f"hidden_size rows, as weight_hh {tuple(hh)} has (torch.nn's layout, hidden size {hidden})")
    if len(shape) != 3 or shape[2] != ih[1]:
        raise ValueError(f"{op}: the input has shape {tuple(shape)}; expected (batch, length, {ih[1]}): the "
                         f"layer's weight_ih {tuple(ih)} takes inputs of width {ih[1]}")
    if bias_ih is not None and bias_ih.shape != (rows,) or bias_hh is not None and bias_hh.shape != (rows,):
        name, bias = ("bias_ih", bias_ih) if bias_ih is not None and bias_ih.shape != (rows,) else ("bias_hh", bias_hh)
        raise ValueError(f"{op}: {name} has shape {tuple(bias.shape)}; expected ({rows},), one value per row of "
                         f"weight_hh {tuple(hh)} (or None)")
    expected = (shape[0], hidden)
    for state in states:
        if state.shape != expected:
            name = ("h0", "c0")[next(i for i, s in enumerate(states) if s.shape != expected)]
            raise ValueError(f"{op}: the initial state {name} has shape {tuple(state.shape)}; "
                             f"expected {expected} (batch, hidden_size: the input's {shape[0]} rows, the layer's "
                             f"hidden size {hidden})")


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
    check_nonlinearity(nonlinearity)
    act = {"tanh": torch.tanh, "relu": torch.relu}[nonlinearity]
    check_shapes("rnn", x, weight_ih, weight_hh, bias_ih, bias_hh, h0)
    reset = check_positions("rnn", x, mask, reset)

    def cell(xp_t, h):
        return (act(xp_t + _hidden_projection(h, weight_hh, bias_hh)),)

    y, (h,) = _over_time(cell, x, _input_projection(x, weight_ih, bias_ih), (h0,), mask, reset)
    return y, h


def lstm(x, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, mask=None, reset=None):
    """LSTM (Hochreiter & Schmidhuber 1997, with forget gate): returns (y, (h_T, c_T)).

    i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh);  c_t = sig(f) c_{t-1} + sig(i) tanh(g);
    h_t = sig(o) tanh(c_t)
    """
    check_shapes("lstm", x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0)
    reset = check_positions("lstm", x, mask, reset)

    def cell(xp_t, h, c):
        i, f, g, o = (xp_t + _hidden_projection(h, weight_hh, bias_hh)).chunk(4, dim=-1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_new), c_new

    y, (h, c) = _over_time(cell, x, _input_projection(x, weight_ih, bias_ih), (h0, c0), mask, reset)
    return y, (h, c)


def gru(x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, mask=None, reset=None):
    """GRU (Cho et al. 2014, torch.nn convention): returns (y, h_T).

    r = sig(W_ir x + b_ir + W_hr h + b_hr);  z = sig(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn));  h_t = (1 - z) n + z h_{t-1}
    """
    check_shapes("gru", x, weight_ih, weight_hh, bias_ih, bias_hh, h0)
    reset = check_positions("gru", x, mask, reset)

    def cell(xp_t, h):
        x_r, x_z, x_n = xp_t.chunk(3, dim=-1)
        h_r, h_z, h_n = _hidden_projection(h, weight_hh, bias_hh).chunk(3, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return ((1 - z) * n + z * h,)

    y, (h,) = _over_time(cell, x, _input_projection(x, weight_ih, bias_ih), (h0,), mask, reset)
    return y, h


def _over_time(cell, x, xp, states, mask, reset):
    """``cell(xp_t, *states) -> new states`` (h first) over the T steps of ``xp`` (B, T, G*H), from ``states``
    (each (B, H)), with the padding mask and resets applied around it. Returns y (B, T, H) and the final states."""
    if is_symbolic(x.shape[1]):
        return _scanned(cell, xp, states, mask, reset)
    outputs = []
    for t in range(x.shape[1]):
        states = _entering(reset, t, *states)
        new = cell(xp[:, t], *states)
        states = new if mask is None else tuple(_masked(mask, t, n, s) for n, s in zip(new, states))
        outputs.append(_output(mask, t, states[0]))
    return _stack(outputs, x, states[0]), states


def _scanned(cell, xp, states, mask, reset):
    """:func:`_over_time` for a symbolic length (torch.export with a dynamic length): the same steps through
    torch's ``scan``, which the exported program runs for the length it is given (seqzoo/kernels/symbolic.py)."""
    xs = (xp,)
    if mask is not None:
        xs += (mask.to(torch.bool),)
    if reset is not None:
        xs += (reset,)

    def step(carry, inputs):
        xp_t = inputs[0]
        if reset is not None:  # the states entering a document's first token are zero
            carry = tuple(torch.where(inputs[-1][:, None], 0.0, s) for s in carry)
        new = cell(xp_t, *carry)
        if mask is None:
            return new, new[0].clone()  # (scan refuses an output that is also the carry)
        keep = inputs[1][:, None]
        new = tuple(torch.where(keep, n, s) for n, s in zip(new, carry))
        return new, new[0] * keep.to(new[0].dtype)

    # (copies: an exported scan whose carries start from one tensor, as an LSTM's zero h and c do, computes wrong
    # values in torch 2.13)
    final, y = scan(step, tuple(s.clone() for s in states), xs, dim=1)
    return y, tuple(final)


def _stack(outputs, x, h0):
    if not outputs:  # zero-length input: no outputs, state unchanged
        return x.new_zeros(x.shape[0], 0, h0.shape[-1])
    return torch.stack(outputs, dim=1)
