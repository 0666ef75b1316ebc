"""Reference selective scan (Mamba-1): one explicit state update per token, in plain PyTorch.

Shapes (batch-first, channels-last): u, delta (B, T, Dm) with delta already softplus'ed; A (Dm, N), negative reals;
B, C (B, T, N), shared by all channels; D (Dm,) or None; z (B, T, Dm) or None; initial_state (B, Dm, N), zeros when
None. Returns y (B, T, Dm) in u's dtype and final_state (B, Dm, N) in float32 (float64 for float64 inputs).

Per channel d and state index n:

    h_t[d, n] = exp(delta_t[d] * A[d, n]) * h_{t-1}[d, n] + delta_t[d] * u_t[d] * B_t[n]
    y_t[d]    = sum_n h_t[d, n] * C_t[n] + D[d] * u_t[d]
    y_t[d]   *= silu(z_t[d])                                   (only when z is given)

delta_t == 0 is an identity step: exp(0) = 1 and the input term is 0, so the state is unchanged bit for bit. Model
layers mask padding this way, so the kernel takes no mask. These are the semantics of mamba_ssm's
``selective_scan_fn`` with ``delta_softplus`` already applied (transformers' MambaMixer slow path), channels-last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqzoo.kernels.backend import check_floating
from seqzoo.kernels.reset import check_reset
from seqzoo.kernels.symbolic import over_tokens


def compute_dtype(*tensors):
    """float64 if any input is float64, else float32: the state is never kept in half precision."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


FLOATING = ("u", "delta", "A", "B", "C", "D", "z", "initial_state")  # every input but reset


def check_call(u, delta, A, B, C, D=None, z=None, *, initial_state=None, reset=None):
    """The registry's check of a call before it chooses a backend (``register_op``): every input but ``reset`` in
    a real floating-point dtype."""
    check_floating("selective_scan", FLOATING, (u, delta, A, B, C, D, z, initial_state))


def check_inputs(u, delta, A, B, C, D, z, initial_state):
    """Raise ValueError naming the offending argument, its shape, and the expected one."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (B, T, Dm), got shape {tuple(u.shape)}")
    batch, length, channels = u.shape
    if tuple(delta.shape) != (batch, length, channels):
        raise ValueError(
            f"selective_scan: delta must match u's shape (B, T, Dm) = {tuple(u.shape)}, got {tuple(delta.shape)}"
        )
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"selective_scan: A must be (Dm, N) = ({channels}, N), got shape {tuple(A.shape)}")
    state_size = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (batch, length, state_size):
            raise ValueError(
                f"selective_scan: {name} must be (B, T, N) = ({batch}, {length}, {state_size}), "
                f"got shape {tuple(t.shape)}"
            )
    if D is not None and tuple(D.shape) != (channels,):
        raise ValueError(f"selective_scan: D must be (Dm,) = ({channels},), got shape {tuple(D.shape)}")
    if z is not None and tuple(z.shape) != (batch, length, channels):
        raise ValueError(f"selective_scan: z must match u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, channels, state_size):
        raise ValueError(
            f"selective_scan: initial_state must be (B, Dm, N) = ({batch}, {channels}, {state_size}), "
            f"got shape {tuple(initial_state.shape)}"
        )


def skip_and_gate(y, u, D, z):
    """y + D * u, then * silu(z); all already in the compute dtype."""
    if D is not None:
        y = y + D * u
    if z is not None:
        y = y * F.silu(z)
    return y


def selective_scan(u, delta, A, B, C, D=None, z=None, *, initial_state=None, reset=None):
    """Mamba-1 selective scan over (B, T, Dm); returns (y, final_state). Formulas in the module docstring;
    ``reset`` (B, T): the state entering a token marked True is zero (seqzoo/kernels/reset.py)."""
    check_inputs(u, delta, A, B, C, D, z, initial_state)
    batch, length, channels = u.shape
    reset = check_reset("selective_scan", reset, batch, length)
    dtype = compute_dtype(u, delta, A, B, C, D, z, initial_state)
    out_dtype = u.dtype
    # Convert once: a per-step cast of a bf16 parameter would also accumulate its gradient in bf16.
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    # A decay of exactly zero (A = -inf) as the most negative finite rate: a delta = 0 step then stays the identity
    # step (exp(0 * -inf) was nan), and any delta > 0 still decays to 0, as the chunked kernel computes it.
    A = A.clamp(min=torch.finfo(dtype).min)
    D = None if D is None else D.to(dtype)
    z = None if z is None else z.to(dtype)
    if initial_state is None:
        h = u.new_zeros(batch, channels, A.shape[1])
    else:
        h = initial_state.to(dtype)

    def step(h, inputs):  # one token: inputs are u_t, delta_t, B_t, C_t, then z_t and reset_t where given
        u_t, delta_t, B_t, C_t = inputs[:4]
        if reset is not None:
            h = torch.where(inputs[-1][:, None, None], 0.0, h)
        decay = torch.exp(delta_t[:, :, None] * A)  # (B, Dm, N)
        write = (delta_t * u_t)[:, :, None] * B_t[:, None, :]  # (B, Dm, N)
        h = decay * h + write
        y = (h * C_t[:, None, :]).sum(dim=-1)  # (B, Dm)
        # Per step, like everything else here, so a sequence run in pieces gives bit-identical outputs.
        return h, skip_and_gate(y, u_t, D, None if z is None else inputs[4])

    per_token = (u, delta, B, C) + (() if z is None else (z,)) + (() if reset is None else (reset,))
    h, y = over_tokens(step, h, per_token, length)  # (torch's scan for torch.export's dynamic length)
    if y is None:
        return u.new_zeros(batch, 0, channels, dtype=out_dtype), h
    return y.to(out_dtype), h
