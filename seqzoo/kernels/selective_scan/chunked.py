"""Chunk-parallel selective scan (Mamba-1) in pure PyTorch: a Python loop over chunks only, never over tokens.

Same signature and semantics as ``reference.py``. The recurrence is elementwise over (Dm, N):

    h_t = a_t * h_{t-1} + b_t,   a_t = exp(delta_t A),   b_t = (delta_t u_t) B_t

Forward: the sequence is cut into chunks of Q tokens and processed in three passes whose Python loops run over the
Q positions of a chunk and over the chunks -- never over tokens -- with every chunk advanced at once:

1. from a zero state, run the recurrence over the Q positions of all chunks together, step by step (each step one
   (B, chunks, Dm, N) tensor), giving each chunk's end state E_c as if it started from zero;
2. pass states across chunks: H_0 = initial state, H_{c+1} = exp(A * sum_{t in c} delta_t) * H_c + E_c;
3. run the recurrence over the Q positions again, every chunk starting from its true start state H_c, and read
   y_t = h_t . C_t at each step.

The step decays exp(delta_t A) are recomputed in pass 3 rather than stored: one step's decays for all chunks stay in
cache, a stored (B, T, Dm, N) tensor does not, and recomputing was measured faster. Q ~ sqrt(T) balances the Q-step
loops against the chunk loop. Products of decays <= 1 only shrink, so nothing is ever divided by a small product.

Backward (a hand-written ``autograd.Function``, so only chunk-start states are stored): chunks in reverse order,
recompute the chunk's states from its saved start state by a Hillis-Steele doubling scan (h[t] += a[t] * h[t-k],
a[t] *= a[t-k] for k = 1, 2, 4, ...), then the adjoint g_t = dL/dh_t by the mirrored doubling scan of
g_t = gy_t C_t + a_{t+1} g_{t+1}, seeded at the chunk end by the gradient flowing back from the next chunk. Then

    d log a_t = g_t * a_t * h_{t-1}       dA = sum_t d log a_t * delta_t      d delta_t += sum_n d log a_t * A
    d b_t = g_t                           d u_t = delta_t (g_t . B_t)        d delta_t += u_t (g_t . B_t)
    d B_t = sum_d g_t[d] delta_t[d] u_t[d]     d C_t = sum_d gy_t[d] h_t[d]     d h_init = a_0 * g_0

D and z are applied outside the Function with ordinary autograd. Double backward is not supported.
T == 1 (a decode step) runs the reference's single update directly.
"""

from __future__ import annotations

import torch

from . import reference
from .reference import check_inputs, compute_dtype, skip_and_gate

MIN_CHUNK, MAX_CHUNK = 4, 64
LOG2_E = 1.4426950408889634


def supports(u, delta, A, B, C, D=None, z=None, *, initial_state=None):
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C}
    for name, t in tensors.items():
        if not t.is_floating_point():
            return False, f"needs real floating-point inputs; {name} has dtype {t.dtype}"
    return True, ""


def chunk_length(length):
    """Tokens per chunk: the power of two nearest sqrt(T) in [4, 64], which balances the two Q-step passes against
    the pass over T / Q chunks."""
    chunk = MIN_CHUNK
    while chunk < MAX_CHUNK and chunk * chunk < length:
        chunk *= 2
    return chunk


def _step_major(x, chunks, chunk):
    """(B, T, ...) zero-padded to chunks * chunk tokens -> (B, chunk, chunks, ...): [:, q] holds position q of every
    chunk, contiguous, so one step of all chunks is one dense tensor."""
    pad = chunks * chunk - x.shape[1]
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    return x.unflatten(1, (chunks, chunk)).transpose(1, 2).contiguous()


def _forward(u, delta, A, B, C, h0, chunk):
    """The three-pass forward; returns y (B, T, Dm), the chunk start states (B, chunks, Dm, N) and the final state.
    Padding positions added to fill the last chunk have delta = 0: identity steps that change no state.

    Inside, states are laid out (B, chunks, N, Dm): the read-out sum over N is then a (1, N) x (N, Dm) matrix
    product per chunk, about 3x faster than a matrix-vector product over the (Dm, N) layout."""
    batch, length, channels = u.shape
    chunks = -(-length // chunk)
    delta_q = _step_major(delta, chunks, chunk)  # (B, Q, chunks, Dm)
    write_q = _step_major(delta * u, chunks, chunk)  # (B, Q, chunks, Dm)
    B_q = _step_major(B, chunks, chunk)  # (B, Q, chunks, N)
    C_q = _step_major(C, chunks, chunk).unsqueeze(-2)  # (B, Q, chunks, 1, N)
    # exp(x) = 2^(x log2 e): torch's exp2 is about twice as fast as exp on CPU, and 2^0 is still exactly 1.
    A2 = (A * LOG2_E).t().contiguous()  # (N, Dm); contiguous, or every step reads it with stride N
    decay = torch.empty(batch, chunks, A.shape[1], channels, dtype=u.dtype, device=u.device)  # (B, chunks, N, Dm)

    def advance(h, q):  # h <- exp(delta_q A) * h + (delta_q u_q) B_q, for every chunk at once, in place
        torch.mul(delta_q[:, q, :, None, :], A2, out=decay)
        h.mul_(decay.exp2_()).addcmul_(B_q[:, q, :, :, None], write_q[:, q, :, None, :])

    ends = torch.zeros_like(decay)  # pass 1: each chunk's end state from a zero start
    for q in range(chunk):
        advance(ends, q)
    chunk_decay = torch.exp2(delta_q.sum(dim=1).unsqueeze(-2) * A2)  # (B, chunks, N, Dm)
    starts = torch.empty_like(decay)  # pass 2: true start states
    state = h0.transpose(-1, -2)  # (B, N, Dm)
    for c in range(chunks):
        starts[:, c] = state
        state = torch.addcmul(ends[:, c], chunk_decay[:, c], state)
    h = starts.clone()  # pass 3: outputs from the true start states
    y = u.new_empty(batch, chunk, chunks, 1, channels)
    for q in range(chunk):
        advance(h, q)
        torch.matmul(C_q[:, q], h, out=y[:, q])  # (B, chunks, 1, N) @ (B, chunks, N, Dm)
    y = y.squeeze(-2).transpose(1, 2).flatten(1, 2)[:, :length]
    return y, starts.transpose(-1, -2), state.transpose(-1, -2).contiguous()


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
        # autograd is off inside Function.forward, so the in-place passes record nothing.
        length = u.shape[1]
        chunk = chunk_length(length)
        y, starts, final = _forward(u, delta, A, B, C, h0, chunk)
        ctx.spans = _spans(length, chunk)
        ctx.save_for_backward(u, delta, A, B, C, *starts.unbind(1))
        return y, final

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
