"""Reference Mamba-2 state-space recurrence (SSD, scalar decay per head): one state update per token.

Shapes (batch-first, channels-last): x (B, T, H, P); dt (B, T, H), already softplus'ed and clamped; A (H,), negative;
B, C (B, T, G, N) with H % G == 0, head h reading group h // (H // G); D (H,) or None; initial_state (B, H, P, N),
zeros when None. Returns y (B, T, H, P) in x's dtype and final_state (B, H, P, N) in float32 (float64 for float64
inputs). ``chunk_size`` (a positive int) is accepted for signature parity with the chunked backend and has no effect
here.

Per head h (with g = h // (H // G)):

    state_t = exp(dt_t[h] * A[h]) * state_{t-1} + dt_t[h] * x_t[h] (outer) B_t[g]        (P x N)
    y_t[h]  = state_t @ C_t[g] + D[h] * x_t[h]                                           (P,)

dt_t == 0 is an identity step (exp(0) = 1, nothing written): the state is unchanged bit for bit. These are the
semantics of transformers' Mamba2Mixer ``torch_forward`` / mamba_ssm's ``mamba_chunk_scan_combined`` without the
gate, channels-last.
"""

from __future__ import annotations

import torch

from seqzoo.kernels.backend import check_floating
from seqzoo.kernels.reset import check_reset
from seqzoo.kernels.symbolic import over_tokens


def compute_dtype(*tensors):
    """float64 if any input is float64, else float32: the state is never kept in half precision."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


FLOATING = ("x", "dt", "A", "B", "C", "D", "initial_state")  # every input but reset (and chunk_size)


def check_chunk_size(chunk_size):
    """ValueError unless ``chunk_size`` is an int >= 1 (bool, an int subclass, is refused: True is no size)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"ssd: chunk_size must be a positive integer, got {chunk_size!r} "
                         f"({type(chunk_size).__name__})")


def check_call(x, dt, A, B, C, D=None, *, initial_state=None, chunk_size=64, reset=None):
    """The registry's check of a call before it chooses a backend (``register_op``): every input but ``reset`` in
    a real floating-point dtype, and a valid ``chunk_size`` (which only the chunked backend reads: another one
    would run an invalid one without a word)."""
    check_floating("ssd", FLOATING, (x, dt, A, B, C, D, initial_state))
    check_chunk_size(chunk_size)


def check_inputs(x, dt, A, B, C, D, initial_state):
    """Raise ValueError naming the offending argument, its shape, and the expected one."""
    if x.dim() != 4:
        raise ValueError(f"ssd: x must be (B, T, H, P), got shape {tuple(x.shape)}")
    batch, length, heads, head_dim = x.shape
    if tuple(dt.shape) != (batch, length, heads):
        raise ValueError(f"ssd: dt must be (B, T, H) = ({batch}, {length}, {heads}), got shape {tuple(dt.shape)}")
    if tuple(A.shape) != (heads,):
        raise ValueError(f"ssd: A must be (H,) = ({heads},), got shape {tuple(A.shape)}")
    if B.dim() != 4 or tuple(B.shape[:2]) != (batch, length):
        raise ValueError(f"ssd: B must be (B, T, G, N) with (B, T) = ({batch}, {length}), got shape {tuple(B.shape)}")
    groups, state_size = B.shape[2:]
    if groups < 1 or heads % groups != 0:
        raise ValueError(f"ssd: the number of heads H={heads} must be a multiple of the groups G={groups} "
                         f"(B has shape {tuple(B.shape)})")
    if tuple(C.shape) != tuple(B.shape):
        raise ValueError(f"ssd: C must have B's shape {tuple(B.shape)}, got {tuple(C.shape)}")
    if D is not None and tuple(D.shape) != (heads,):
        raise ValueError(f"ssd: D must be (H,) = ({heads},), got shape {tuple(D.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, heads, head_dim, state_size):
        raise ValueError(
            f"ssd: initial_state must be (B, H, P, N) = ({batch}, {heads}, {head_dim}, {state_size}), "
            f"got shape {tuple(initial_state.shape)}"
        )


def initial(x, B, initial_state, dtype):
    batch, _, heads, head_dim = x.shape
    if initial_state is None:
        return x.new_zeros(batch, heads, head_dim, B.shape[-1], dtype=dtype)
    return initial_state.to(dtype)


def ssd(x, dt, A, B, C, D=None, *, initial_state=None, chunk_size=64, reset=None):
    """Mamba-2 SSD recurrence over (B, T, H, P); returns (y, final_state). Formulas in the module docstring;
    ``reset`` (B, T): the state entering a token marked True is zero (seqzoo/kernels/reset.py)."""
    check_inputs(x, dt, A, B, C, D, initial_state)
    check_chunk_size(chunk_size)
    batch, length, heads, head_dim = x.shape
    reset = check_reset("ssd", reset, batch, length)
    repeat = heads // B.shape[2]
    dtype = compute_dtype(x, dt, A, B, C, D, initial_state)
    state = initial(x, B, initial_state, dtype)
    out_dtype = x.dtype
    # Convert once: a per-step cast of a bf16 parameter would also accumulate its gradient in bf16.
    x, dt, A = x.to(dtype), dt.to(dtype), A.to(dtype)
    # A decay of exactly zero (A = -inf) as the most negative finite rate: a dt = 0 step then stays the identity step
    # (exp(0 * -inf) was nan), and any dt > 0 still decays to 0, as the chunked kernel computes it.
    A = A.clamp(min=torch.finfo(dtype).min)
    B, C = (t.to(dtype).repeat_interleave(repeat, dim=2) for t in (B, C))  # (B, T, H, N): head h reads its group
    D = None if D is None else D.to(dtype)

    def step(state, inputs):  # one token: inputs are x_t, dt_t, B_t, C_t, then reset_t where given
        x_t, dt_t, B_t, C_t = inputs[:4]
        if reset is not None:
            state = torch.where(inputs[-1][:, None, None, None], 0.0, state)
        decay = torch.exp(dt_t * A)[:, :, None, None]  # (B, H, 1, 1)
        write = (dt_t[:, :, None] * x_t)[..., None] * B_t[:, :, None, :]  # (B, H, P, N)
        state = decay * state + write
        y = (state * C_t[:, :, None, :]).sum(dim=-1)  # (B, H, P)
        if D is not None:
            y = y + D[:, None] * x_t
        return state, y

    per_token = (x, dt, B, C) + (() if reset is None else (reset,))
    state, y = over_tokens(step, state, per_token, length)  # (torch's scan for torch.export's dynamic length)
    if y is None:
        return x.new_zeros(batch, 0, heads, head_dim, dtype=out_dtype), state
    return y.to(out_dtype), state
