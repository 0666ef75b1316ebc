"""Chunk-parallel selective scan (Mamba-1) in pure PyTorch: a Python loop over chunks only, never over tokens.

Same signature and semantics as ``reference.py``. The recurrence is elementwise over (Dm, N):

    h_t = a_t * h_{t-1} + b_t,   a_t = exp(delta_t A),   b_t = (delta_t u_t) B_t

Forward, per chunk of Q tokens starting from state H (the previous chunk's last state):

1. a (B, Q, Dm, N) step decays and b (B, Q, Dm, N) writes for the chunk.
2. Hillis-Steele doubling scan from a zero state, for k = 1, 2, 4, ... < Q:
   h[t] += a[t] * h[t-k];  a[t] *= a[t-k]   (t >= k).
   Afterwards a[t] = prod_{j<=t} a_j, the decay from the chunk start, and h[t] the state reached from zero.
   Products of decays <= 1 only shrink, so nothing is ever divided by a small product.
3. h[t] += a[t] * H;  y_t = h_t . C_t;  the next chunk starts from h[Q-1].

Backward (a hand-written ``autograd.Function``, so only chunk-start states are stored): chunks in reverse order,
recompute the chunk's states from its saved start state, then the adjoint g_t = dL/dh_t by the mirrored doubling scan
of g_t = gy_t C_t + a_{t+1} g_{t+1}, seeded at the chunk end by the gradient flowing back from the next chunk. Then

    d log a_t = g_t * a_t * h_{t-1}       dA = sum_t d log a_t * delta_t      d delta_t += sum_n d log a_t * A
    d b_t = g_t                           d u_t = delta_t (g_t . B_t)        d delta_t += u_t (g_t . B_t)
    d B_t = sum_d g_t[d] delta_t[d] u_t[d]     d C_t = sum_d gy_t[d] h_t[d]     d h_init = a_0 * g_0

D and z are applied outside the Function with ordinary autograd. Double backward is not supported.
The chunk length adapts to B * Dm * N so that one chunk's (B, Q, Dm, N) tensors stay cache-sized. T == 1 (a decode
step) runs the reference's single update directly.
"""

from __future__ import annotations

import torch

from . import reference
from .reference import check_inputs, compute_dtype, skip_and_gate

CHUNK_ELEMENTS = 1 << 17  # target size of one chunk's (B, Q, Dm, N) tensors
MIN_CHUNK, MAX_CHUNK = 4, 64


def supports(u, delta, A, B, C, D=None, z=None, *, initial_state=None):
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C}
    for name, t in tensors.items():
        if not t.is_floating_point():
            return False, f"needs real floating-point inputs; {name} has dtype {t.dtype}"
    return True, ""


def chunk_length(width):
    """Tokens per chunk for a state of ``width`` = B * Dm * N elements: a power of two in [4, 64]."""
    length = MIN_CHUNK
    while length < MAX_CHUNK and 2 * length * width <= CHUNK_ELEMENTS:
        length *= 2
    return length


def _chunk_states(u, delta, A, B, start):
    """States of one chunk. u, delta (Bt, Q, Dm); B (Bt, Q, N); start (Bt, Dm, N).

    Returns h (Bt, Q, Dm, N) and the step decays a (Bt, Q, Dm, N)."""
    steps = torch.exp(delta.unsqueeze(-1) * A)  # (Bt, Q, Dm, N)
    h = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # (Bt, Q, Dm, N)
    decay = steps.clone()
    length = h.shape[1]
    shift = 1
    while shift < length:
        h[:, shift:] += decay[:, shift:] * h[:, :-shift]
        decay[:, shift:] = decay[:, shift:] * decay[:, :-shift]
        shift *= 2
    h.addcmul_(decay, start.unsqueeze(1))
    return h, steps


def _adjoint(direct, steps, incoming):
    """g_t = direct_t + steps_{t+1} * g_{t+1}, with g_{Q-1} = direct_{Q-1} + incoming. All (Bt, Q, Dm, N) but
    incoming (Bt, Dm, N)."""
    g = direct
    g[:, -1] += incoming
    carry = torch.ones_like(steps)
    carry[:, :-1] = steps[:, 1:]  # carry[t] = decay from h_t to h_{t+1}
    length = g.shape[1]
    shift = 1
    while shift < length:
        g[:, :-shift] += carry[:, :-shift] * g[:, shift:]
        carry[:, :-shift] = carry[:, :-shift] * carry[:, shift:]
        shift *= 2
    return g


def _spans(length, chunk):
    return [(start, min(start + chunk, length)) for start in range(0, length, chunk)]


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0):
        batch, length, channels = u.shape
        spans = _spans(length, chunk_length(batch * channels * A.shape[1]))
        y = u.new_empty(batch, length, channels)
        starts = []
        h = h0
        for t0, t1 in spans:  # autograd is off inside Function.forward, so the in-place scan records nothing
            starts.append(h)
            states, _ = _chunk_states(u[:, t0:t1], delta[:, t0:t1], A, B[:, t0:t1], h)
            y[:, t0:t1] = torch.matmul(states, C[:, t0:t1].unsqueeze(-1)).squeeze(-1)
            h = states[:, -1].clone()
        ctx.spans = spans
        ctx.save_for_backward(u, delta, A, B, C, *starts)
        return y, h

    @staticmethod
    def backward(ctx, grad_y, grad_h):
        u, delta, A, B, C, *starts = ctx.saved_tensors
        grads = [torch.zeros_like(t) for t in (u, delta, A, B, C)]
        grad_u, grad_delta, grad_A, grad_B, grad_C = grads
        incoming = grad_h
        for (t0, t1), start in zip(reversed(ctx.spans), reversed(starts)):
            u_c, delta_c, B_c, C_c, gy = u[:, t0:t1], delta[:, t0:t1], B[:, t0:t1], C[:, t0:t1], grad_y[:, t0:t1]
            states, steps = _chunk_states(u_c, delta_c, A, B_c, start)
            direct = gy.unsqueeze(-1) * C_c.unsqueeze(2)  # (Bt, Q, Dm, N)
            g = _adjoint(direct, steps, incoming)
            previous = torch.cat([start.unsqueeze(1), states[:, :-1]], dim=1)  # h_{t-1}
            dlog = g * steps * previous  # (Bt, Q, Dm, N)
            g_dot_B = torch.matmul(g, B_c.unsqueeze(-1)).squeeze(-1)  # (Bt, Q, Dm)
            grad_delta[:, t0:t1] = (dlog * A).sum(dim=-1) + g_dot_B * u_c
            grad_u[:, t0:t1] = g_dot_B * delta_c
            grad_A += torch.einsum("bqdn,bqd->dn", dlog, delta_c)
            grad_B[:, t0:t1] = torch.einsum("bqdn,bqd->bqn", g, delta_c * u_c)
            grad_C[:, t0:t1] = torch.einsum("bqdn,bqd->bqn", states, gy)
            incoming = steps[:, 0] * g[:, 0]
        return grad_u, grad_delta, grad_A, grad_B, grad_C, incoming


def selective_scan(u, delta, A, B, C, D=None, z=None, *, initial_state=None):
    """Mamba-1 selective scan over (B, T, Dm); returns (y, final_state). Formulas in ``reference.py``."""
    check_inputs(u, delta, A, B, C, D, z, initial_state)
    batch, length, channels = u.shape
    if length == 1:  # a decode step: the reference's single update is the cheapest form
        return reference.selective_scan(u, delta, A, B, C, D, z, initial_state=initial_state)
    dtype = compute_dtype(u, delta, A, B, C, D, z, initial_state)
    if initial_state is None:
        h0 = u.new_zeros(batch, channels, A.shape[1], dtype=dtype)
    else:
        h0 = initial_state.to(dtype)
    if length == 0:
        return u.new_zeros(batch, 0, channels), h0
    u_c = u.to(dtype)
    y, h = _SelectiveScan.apply(u_c, *(t.to(dtype) for t in (delta, A, B, C)), h0)
    D_c = None if D is None else D.to(dtype)
    z_c = None if z is None else z.to(dtype)
    return skip_and_gate(y, u_c, D_c, z_c).to(u.dtype), h
