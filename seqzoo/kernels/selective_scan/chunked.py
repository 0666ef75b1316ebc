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

Backward (a hand-written ``autograd.Function``; only the chunk start states are saved): the adjoint
g_t = dL/dh_t obeys g_t = gy_t C_t + a_{t+1} g_{t+1}, seeded at the end by the final state's gradient, and is
solved with the forward's three passes mirrored -- from a zero seed over the Q positions of all chunks at once in
reverse, across chunks last to first, then again over the positions from each chunk's true incoming gradient --
while the states are recomputed forward from the saved starts (for groups of chunks of at most GROUP_ELEMENTS
elements per step buffer). Each step then gives

    d log a_t = g_t * a_t * h_{t-1}       dA = sum_t d log a_t * delta_t      d delta_t += sum_n d log a_t * A
    d b_t = g_t                           d u_t = delta_t (g_t . B_t)        d delta_t += u_t (g_t . B_t)
    d B_t = sum_d g_t[d] delta_t[d] u_t[d]     d C_t = sum_d gy_t[d] h_t[d]     d h_init = a_0 * g_0

D and z are applied outside the Function with ordinary autograd. Double backward is not supported.
T == 1 (a decode step) runs the reference's single update directly.
"""

from __future__ import annotations

import torch

from seqzoo.kernels.reset import check_reset
from seqzoo.kernels.symbolic import is_symbolic
from seqzoo.kernels.triton_support import refuse_double_backward

from . import reference
from .reference import check_inputs, compute_dtype, skip_and_gate

MIN_CHUNK, MAX_CHUNK = 4, 64
LOG2_E = 1.4426950408889634
# Backward: the recomputed states h_{t-1} of a group of chunks (every step) hold at most this many elements (64 MiB
# in float32); more chunks per group means fewer, larger operations per step.
GROUP_ELEMENTS = 1 << 24


def chunk_length(length):
    """Tokens per chunk: the power of two nearest sqrt(T) in [4, 64], which balances the two Q-step passes against
    the pass over T / Q chunks."""
    chunk = MIN_CHUNK
    while chunk < MAX_CHUNK and chunk * chunk < length:
        chunk *= 2
    return chunk


def _log2_rates(A):
    """A (Dm, N) -> A log2(e) as (N, Dm), contiguous (or every step reads it with stride N), with -inf (a decay of
    exactly zero, which the reference computes as exp(delta * -inf) = 0) made the most negative finite value: a
    padding step's delta = 0 then gives 2^0 = 1, the identity step, where 0 * -inf gave nan (and a nan final state);
    every step with delta > 0 still decays by 2^(-huge) = 0."""
    return (A * LOG2_E).clamp_(min=torch.finfo(A.dtype).min).t().contiguous()


def _step_major(x, chunks, chunk):
    """(B, T, ...) zero-padded to chunks * chunk tokens -> (B, chunk, chunks, ...): [:, q] holds position q of every
    chunk, contiguous, so one step of all chunks is one dense tensor."""
    pad = chunks * chunk - x.shape[1]
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    return x.unflatten(1, (chunks, chunk)).transpose(1, 2).contiguous()


def _keep(reset, chunks, chunk, dtype):
    """Resets -> step-major factors on the step decays, 0 at a reset (the state entering it is zero) and 1 elsewhere
    (padding included), (B, Q, chunks, 1, 1); and on each chunk's decay, 0 when the chunk holds a reset,
    (B, chunks, 1, 1). None without resets."""
    if reset is None:
        return None, None
    resets = _step_major(reset[..., None].to(dtype), chunks, chunk)  # (B, Q, chunks, 1), padding 0
    keep = (1 - resets)[..., None]
    return keep, keep.prod(dim=1)


def _forward(u, delta, A, B, C, h0, chunk, reset=None):
    """The three-pass forward; returns y (B, T, Dm), the chunk start states (B, chunks, N, Dm) and the final state.
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
    A2 = _log2_rates(A)  # (N, Dm)
    decay = torch.empty(batch, chunks, A.shape[1], channels, dtype=u.dtype, device=u.device)  # (B, chunks, N, Dm)
    keep, chunk_keep = _keep(reset, chunks, chunk, u.dtype)

    def advance(h, q):  # h <- exp(delta_q A) * h + (delta_q u_q) B_q, for every chunk at once, in place
        torch.mul(delta_q[:, q, :, None, :], A2, out=decay)
        decay.exp2_()
        if keep is not None:  # a reset: the step's decay is 0, so no state enters it
            decay.mul_(keep[:, q])
        h.mul_(decay).addcmul_(B_q[:, q, :, :, None], write_q[:, q, :, None, :])

    ends = torch.zeros_like(decay)  # pass 1: each chunk's end state from a zero start
    for q in range(chunk):
        advance(ends, q)
    chunk_decay = torch.exp2(delta_q.sum(dim=1).unsqueeze(-2) * A2)  # (B, chunks, N, Dm)
    if chunk_keep is not None:
        chunk_decay.mul_(chunk_keep)
    starts = torch.empty_like(decay)  # pass 2: true start states
    state = h0.transpose(-1, -2)  # (B, N, Dm)
    for c in range(chunks):
        starts[:, c] = state
        state = torch.addcmul(ends[:, c], chunk_decay[:, c], state)
    h = starts.clone()  # pass 3: outputs from the true start states
    y = u.new_empty(batch, chunk, chunks, 1, channels)
    for q in range(chunk):
        advance(h, q)
        if torch.compiler.is_compiling():  # dynamo refuses a non-contiguous out=
            y[:, q] = torch.matmul(C_q[:, q], h)
        else:
            torch.matmul(C_q[:, q], h, out=y[:, q])  # (B, chunks, 1, N) @ (B, chunks, N, Dm)
    y = y.squeeze(-2).transpose(1, 2).flatten(1, 2)[:, :length]
    return y, starts, state.transpose(-1, -2).contiguous()


def _from_step_major(x, length):
    """Inverse of ``_step_major``: (B, Q, chunks, ...) -> (B, T, ...)."""
    return x.transpose(1, 2).flatten(1, 2)[:, :length]


def _backward(u, delta, A, B, C, starts, grad_y, grad_h, chunk, reset=None):
    """Gradients of (y, final state) with respect to (u, delta, A, B, C, h0), step-major like the forward.

    The adjoint g_t = dL/dh_t runs backwards: g_t = gy_t C_t + a_{t+1} g_{t+1}, g_{T-1} = gy C + grad_h.
    A. from a zero incoming gradient, run it over the Q positions of all chunks at once (reverse order), giving each
       chunk's local adjoint L_c at its first position;
    B. pass gradients across chunks, last to first: I_last = grad_h, I_{c-1} = a_{c,0} L_c + exp(A sum_c delta) I_c
       (I_c: the gradient entering chunk c at its end; I_{-1} is the gradient of the initial state);
    C. in groups of chunks: recompute the states forward from the saved chunk starts (keeping h_{t-1} of every step
       of the group), then run the adjoint backwards from the true I_c and read every input gradient off each step.
    """
    batch, length, channels = u.shape
    state = A.shape[1]
    chunks = starts.shape[1]
    delta_q = _step_major(delta, chunks, chunk)  # (B, Q, chunks, Dm); padding: delta = 0, the identity step
    u_q = _step_major(u, chunks, chunk)
    write_q = delta_q * u_q
    B_q = _step_major(B, chunks, chunk)  # (B, Q, chunks, N)
    C_q = _step_major(C, chunks, chunk)
    gy_q = _step_major(grad_y.to(u.dtype), chunks, chunk)  # zero at padding
    A_t = A.clamp(min=torch.finfo(A.dtype).min).t().contiguous()  # (N, Dm); A = -inf as the reference reads it
    A2 = _log2_rates(A)

    keep, chunk_keep = _keep(reset, chunks, chunk, u.dtype)

    def decay_at(q, out, group=slice(None)):  # out <- exp(delta_q A), times 0 at a reset, (B, G, N, Dm)
        torch.mul(delta_q[:, q, group, None, :], A2, out=out)
        out.exp2_()
        return out if keep is None else out.mul_(keep[:, q, group])

    # A. local adjoints from a zero incoming gradient
    decay = torch.empty(batch, chunks, state, channels, dtype=u.dtype, device=u.device)
    local = torch.zeros_like(decay)
    for q in reversed(range(chunk)):
        if q < chunk - 1:
            local.mul_(decay_at(q + 1, decay))
        local.addcmul_(C_q[:, q, :, :, None], gy_q[:, q, :, None, :])
    sent = local.mul_(decay_at(0, decay))  # a_{c,0} L_c: what chunk c passes to chunk c - 1
    # B. across chunks
    chunk_decay = torch.exp2(delta_q.sum(dim=1).unsqueeze(-2) * A2)  # (B, chunks, N, Dm)
    if chunk_keep is not None:
        chunk_decay.mul_(chunk_keep)
    incoming = torch.empty_like(decay)
    carry = grad_h.to(u.dtype).transpose(-1, -2)  # (B, N, Dm)
    for c in reversed(range(chunks)):
        incoming[:, c] = carry
        carry = torch.addcmul(sent[:, c], chunk_decay[:, c], carry)
    grad_h0 = carry.transpose(-1, -2)
    del decay, local, sent, chunk_decay

    # C. per group of chunks
    grad_u_q, grad_delta_q = torch.empty_like(u_q), torch.empty_like(delta_q)
    grad_B_q, grad_C_q = torch.empty_like(B_q), torch.empty_like(C_q)
    grad_A = torch.zeros_like(A_t)
    # (an empty batch, state or channel dimension holds no elements: one group, where the division raised)
    size = max(1, min(chunks, GROUP_ELEMENTS // max(1, batch * chunk * state * channels)))
    for first in range(0, chunks, size):
        group = slice(first, min(first + size, chunks))
        # states[q] = h_{q-1} for every step of the group (step-first, so each step is one contiguous block)
        states = u.new_empty(chunk, batch, group.stop - group.start, state, channels)
        states[0] = starts[:, group]
        step = torch.empty_like(states[0])
        for q in range(chunk - 1):
            torch.mul(states[q], decay_at(q, step, group), out=states[q + 1])
            states[q + 1].addcmul_(B_q[:, q, group, :, None], write_q[:, q, group, None, :])
            # sum_d h_q[n, d] gy_q[d]
            grad_C_q[:, q, group] = torch.matmul(states[q + 1], gy_q[:, q, group, :, None]).squeeze(-1)
        last = states[-1] * decay_at(chunk - 1, step, group)
        last.addcmul_(B_q[:, -1, group, :, None], write_q[:, -1, group, None, :])
        grad_C_q[:, -1, group] = torch.matmul(last, gy_q[:, -1, group, :, None]).squeeze(-1)
        del last
        g = incoming[:, group].clone()
        buffers = (torch.empty_like(g), torch.empty_like(g))
        after = None  # a_{q+1}
        grad_A_group = torch.zeros_like(g)
        for q in reversed(range(chunk)):
            if after is not None:
                g.mul_(after)
            g.addcmul_(C_q[:, q, group, :, None], gy_q[:, q, group, None, :])
            after = decay_at(q, buffers[q % 2], group)  # a_q, also the next (earlier) step's factor
            dlog = torch.mul(g, after).mul_(states[q])  # d log a_q = g_q a_q h_{q-1}
            grad_A_group.addcmul_(dlog, delta_q[:, q, group, None, :])
            g_dot_B = torch.matmul(B_q[:, q, group, None, :], g).squeeze(-2)  # sum_n B[n] g[n, d], (B, G, Dm)
            grad_delta_q[:, q, group] = dlog.mul_(A_t).sum(dim=-2) + g_dot_B * u_q[:, q, group]
            grad_u_q[:, q, group] = g_dot_B * delta_q[:, q, group]
            grad_B_q[:, q, group] = torch.matmul(g, write_q[:, q, group, :, None]).squeeze(-1)  # sum_d g w
        grad_A += grad_A_group.sum(dim=(0, 1))
    grad_u, grad_delta, grad_B, grad_C = (
        _from_step_major(x, length) for x in (grad_u_q, grad_delta_q, grad_B_q, grad_C_q)
    )
    return grad_u, grad_delta, grad_A.t(), grad_B, grad_C, grad_h0


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, reset):
        # autograd is off inside Function.forward, so the in-place passes record nothing; torch.export traces this
        # body with autograd on, hence no_grad.
        chunk = chunk_length(u.shape[1])
        with torch.no_grad():
            y, starts, final = _forward(u, delta, A, B, C, h0, chunk, reset)
        ctx.chunk = chunk
        ctx.save_for_backward(u, delta, A, B, C, starts, reset)
        return y, final

    @staticmethod
    def backward(ctx, grad_y, grad_h):
        refuse_double_backward("selective_scan", "chunked")
        u, delta, A, B, C, starts, reset = ctx.saved_tensors
        return *_backward(u, delta, A, B, C, starts, grad_y, grad_h, ctx.chunk, reset), None


def selective_scan(u, delta, A, B, C, D=None, z=None, *, initial_state=None, reset=None):
    """Mamba-1 selective scan over (B, T, Dm); returns (y, final_state). Formulas in ``reference.py``; a reset
    multiplies its step's decay by 0 (README.md)."""
    check_inputs(u, delta, A, B, C, D, z, initial_state)
    batch, length, channels = u.shape
    reset = check_reset("selective_scan", reset, batch, length)
    if length == 1:  # a decode step: the reference's single update is the cheapest form
        return reference.selective_scan(u, delta, A, B, C, D, z, initial_state=initial_state, reset=reset)
    if is_symbolic(length):  # torch.export with a dynamic length: the chunks would fix it (seqzoo/kernels/symbolic.py)
        return reference.selective_scan(u, delta, A, B, C, D, z, initial_state=initial_state, reset=reset)
    dtype = compute_dtype(u, delta, A, B, C, D, z, initial_state)
    if initial_state is None:
        h0 = u.new_zeros(batch, channels, A.shape[1], dtype=dtype)
    else:
        h0 = initial_state.to(dtype)
    if length == 0:
        return u.new_zeros(batch, 0, channels), h0
    u_c = u.to(dtype)
    y, h = _SelectiveScan.apply(u_c, *(t.to(dtype) for t in (delta, A, B, C)), h0, reset)
    D_c = None if D is None else D.to(dtype)
    z_c = None if z is None else z.to(dtype)
    return skip_and_gate(y, u_c, D_c, z_c).to(u.dtype), h
