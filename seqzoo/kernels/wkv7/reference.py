"""Reference RWKV-7 ("x070") WKV recurrence, the generalized delta rule: one state update per token.

Shapes (batch-first, channels-last): r, w, k, a, b (B, T, H, K); v (B, T, H, V); initial_state (B, H, V, K), zeros
when None (rows indexed by the value dim, columns by the key dim). ``w`` is the LOG of the per-channel decay
(w <= 0, decay = exp(w)). Returns y (B, T, H, V) in r's dtype and final_state (B, H, V, K) in float32 (float64 for
float64 inputs).

Per head, with S a V x K matrix:

    S_t = S_{t-1} diag(exp(w_t)) + (S_{t-1} a_t) b_t^T + v_t k_t^T
    y_t = S_t r_t

This is the fp32 loop of RWKV-LM's x070 CUDA kernel and of ``rwkv_v7_demo.py`` (where decay = exp(-exp(w_raw)),
i.e. our w = -exp(w_raw)). In RWKV-7, a = -kk and b = kk * iclr with kk the L2-normalised key, which makes
diag(exp(w)) + a b^T a contraction. w = k = b = 0 is an identity step (exp(0) = 1, nothing removed or written): the
state is unchanged bit for bit, which is how the model masks padding.

``wkv7_step`` is the same update for one token, on (B, H, K) inputs, for decoding.
"""

from __future__ import annotations

import torch

from seqzoo.kernels.backend import check_floating
from seqzoo.kernels.reset import check_reset
from seqzoo.kernels.symbolic import is_symbolic, scan


def compute_dtype(*tensors):
    """float64 if any input is float64, else float32: the state is never kept in half precision."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


FLOATING = ("r", "w", "k", "v", "a", "b", "initial_state")  # every input but reset


def check_call(r, w, k, v, a, b, *, initial_state=None, reset=None):
    """The registry's check of a call before it chooses a backend (``register_op``): every input but ``reset`` in
    a real floating-point dtype."""
    check_floating("wkv7", FLOATING, (r, w, k, v, a, b, initial_state))


def check_inputs(r, w, k, v, a, b, initial_state):
    """Raise ValueError naming the offending argument, its shape, and the expected one."""
    if r.dim() != 4:
        raise ValueError(f"wkv7: r must be (B, T, H, K), got shape {tuple(r.shape)}")
    batch, length, heads, key_dim = r.shape
    for name, t in (("w", w), ("k", k), ("a", a), ("b", b)):
        if t.shape != r.shape:
            raise ValueError(f"wkv7: {name} must match r's shape (B, T, H, K) = {tuple(r.shape)}, "
                             f"got {tuple(t.shape)}")
    if v.dim() != 4 or tuple(v.shape[:3]) != (batch, length, heads):
        raise ValueError(f"wkv7: v must be (B, T, H, V) with (B, T, H) = ({batch}, {length}, {heads}), "
                         f"got shape {tuple(v.shape)}")
    value_dim = v.shape[-1]
    if initial_state is not None and tuple(initial_state.shape) != (batch, heads, value_dim, key_dim):
        raise ValueError(
            f"wkv7: initial_state must be (B, H, V, K) = ({batch}, {heads}, {value_dim}, {key_dim}), "
            f"got shape {tuple(initial_state.shape)}"
        )


def initial(r, v, initial_state, dtype):
    batch, _, heads, key_dim = r.shape
    if initial_state is None:
        return r.new_zeros(batch, heads, v.shape[-1], key_dim, dtype=dtype)
    return initial_state.to(dtype)


def update(state, r, w, k, v, a, b):
    """One token in the compute dtype: r, w, k, a, b (B, H, K); v (B, H, V); state (B, H, V, K)."""
    removed = state @ a.unsqueeze(-1)  # S_{t-1} a_t, (B, H, V, 1)
    state = state * torch.exp(w).unsqueeze(-2) + removed * b.unsqueeze(-2) + v.unsqueeze(-1) * k.unsqueeze(-2)
    return (state @ r.unsqueeze(-1)).squeeze(-1), state  # (B, H, V), (B, H, V, K)


def wkv7_step(r, w, k, v, a, b, state):
    """Decode one token: r, w, k, a, b (B, H, K); v (B, H, V); state (B, H, V, K).

    Returns y (B, H, V) in r's dtype and the new state in float32 (float64 for float64 inputs)."""
    if state is None or state.dim() != 4:
        raise ValueError(f"wkv7_step: state must be (B, H, V, K), got {None if state is None else tuple(state.shape)}")
    if r.dim() != 3:
        raise ValueError(f"wkv7_step: r must be (B, H, K), got shape {tuple(r.shape)}")
    check_inputs(*(t.unsqueeze(1) for t in (r, w, k, v, a, b)), state)
    dtype = compute_dtype(r, w, k, v, a, b, state)
    y, state = update(state.to(dtype), *(t.to(dtype) for t in (r, w, k, v, a, b)))
    return y.to(r.dtype), state


def wkv7(r, w, k, v, a, b, *, initial_state=None, reset=None):
    """RWKV-7 WKV over (B, T, H, *); returns (y, final_state). Formulas in the module docstring; ``reset`` (B, T):
    the state entering a token marked True is zero (seqzoo/kernels/reset.py)."""
    check_inputs(r, w, k, v, a, b, initial_state)
    batch, length, heads, _ = r.shape
    reset = check_reset("wkv7", reset, batch, length)
    dtype = compute_dtype(r, w, k, v, a, b, initial_state)
    state = initial(r, v, initial_state, dtype)
    inputs = [t.to(dtype) for t in (r, w, k, v, a, b)]
    if is_symbolic(length):  # torch.export with a dynamic length: the same steps through torch's scan
        return _scanned(state, inputs, reset, r.dtype)
    outputs = []
    for t in range(length):
        if reset is not None:
            state = torch.where(reset[:, t, None, None, None], 0.0, state)
        y, state = update(state, *(x[:, t] for x in inputs))
        outputs.append(y)
    if not outputs:
        return r.new_zeros(batch, 0, heads, v.shape[-1]), state
    return torch.stack(outputs, dim=1).to(r.dtype), state


def _scanned(state, inputs, reset, out_dtype):
    """The loop of :func:`wkv7` through torch's ``scan``, for a symbolic length (seqzoo/kernels/symbolic.py)."""

    def step(state, per_token):
        if reset is not None:
            state = torch.where(per_token[-1][:, None, None, None], 0.0, state)
        y, state = update(state, *per_token[:6])
        return state, y

    state, y = scan(step, state.contiguous(), tuple(inputs) + (() if reset is None else (reset,)), dim=1)
    return y.to(out_dtype), state
