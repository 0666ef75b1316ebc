"""Chunked Mamba-2 SSD in pure PyTorch: the state-space-duality block decomposition, a Python loop over chunks only.

Same signature and semantics as ``reference.py``. With l_t = dt_t A (log decay of step t, per head) the recurrence
unrolls, inside a chunk of Q steps starting from state S, to

    y_t = sum_{s<=t} exp(l_{s+1} + ... + l_t) (C_t . B_s) dt_s x_s  +  exp(l_0 + ... + l_t) S C_t  +  D x_t

1. Intra-chunk (diagonal blocks): the (Q, Q) matrix L[t, s] = exp(segsum(l)[t, s]) for s <= t, 0 above the
   diagonal, times C_t . B_s (one matmul per group), applied to dt x: attention-like, all chunks at once.
   segsum[t, s] = l_{s+1} + ... + l_t is formed by a cumulative sum over a masked copy, not as a difference of
   running sums, so long chunks keep the precision of short ones and an all-identity span is exactly 0.
2. Chunk states from a zero start: sum_s exp(segsum[Q-1, s]) dt_s x_s (outer) B_s (one matmul per group).
3. Inter-chunk: start_c = exp(sum of l over chunk c-1) start_{c-1} + state_{c-1}, a loop over chunks.
4. Off-diagonal blocks: exp(l_0 + ... + l_t) start_c C_t, added to step 1's output.

A length that is not a multiple of the chunk is padded with dt = 0, an identity step. Chunks are
min(chunk_size, T) long, so short calls do no padded work, and T == 1 (a decode step) runs the reference's single
update directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqzoo.kernels.reset import check_reset, chunk_segments
from seqzoo.kernels.symbolic import is_symbolic

from . import reference
from .reference import check_chunk_size, check_inputs, compute_dtype, initial


def segsum(log_decay):
    """log_decay (..., Q) -> (..., Q, Q) with [t, s] = sum_{j=s+1}^{t} log_decay[j] for s <= t, -inf above."""
    length = log_decay.shape[-1]
    ones = torch.ones(length, length, dtype=torch.bool, device=log_decay.device)
    # [..., j, s] = log_decay[j] where j > s: the cumulative sum over j then adds exactly the steps s+1 .. t.
    terms = log_decay.unsqueeze(-1).expand(*log_decay.shape, length).masked_fill(~ones.tril(-1), 0.0)
    sums = terms.cumsum(dim=-2)
    return sums.masked_fill(~ones.tril(0), float("-inf"))


def ssd(x, dt, A, B, C, D=None, *, initial_state=None, chunk_size=64, reset=None):
    """Mamba-2 SSD over (B, T, H, P); returns (y, final_state). Formulas in ``reference.py``; resets in README.md."""
    check_inputs(x, dt, A, B, C, D, initial_state)
    check_chunk_size(chunk_size)
    batch, length, heads, head_dim = x.shape
    reset = check_reset("ssd", reset, batch, length)
    if length == 1:  # a decode step: the reference's single update is the cheapest form
        return reference.ssd(x, dt, A, B, C, D, initial_state=initial_state, reset=reset)
    if is_symbolic(length):  # torch.export with a dynamic length: the chunks would fix it (seqzoo/kernels/symbolic.py)
        return reference.ssd(x, dt, A, B, C, D, initial_state=initial_state, reset=reset)
    groups, state_size = B.shape[2:]
    repeat = heads // groups
    dtype = compute_dtype(x, dt, A, B, C, D, initial_state)
    state = initial(x, B, initial_state, dtype)
    if length == 0:
        return x.new_zeros(batch, 0, heads, head_dim), state

    chunk = min(chunk_size, length)
    pad = (-length) % chunk
    chunks = (length + pad) // chunk

    def blocks(t, *inner):
        # (B, T, ...) -> (B, nc, Q, ...), zero-padded in time (dt = 0 there: identity steps).
        t = t.to(dtype)
        if pad:
            t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(batch, chunks, chunk, *inner)

    xs = blocks(x, groups, repeat, head_dim)  # (B, nc, Q, G, R, P)
    dts = blocks(dt, groups, repeat)  # (B, nc, Q, G, R)
    Bs = blocks(B, groups, state_size)  # (B, nc, Q, G, N)
    Cs = blocks(C, groups, state_size)  # (B, nc, Q, G, N)
    # A = -inf (a decay of exactly zero) as the most negative finite value: a padding step's dt = 0 then gives a log
    # decay of 0, the identity step, where 0 * -inf gave nan (and a nan final state); a real step's is still -huge.
    rates = A.to(dtype).clamp(min=torch.finfo(dtype).min)
    log_decay = dts * rates.view(groups, repeat)  # (B, nc, Q, G, R)
    inputs = xs * dts.unsqueeze(-1)  # dt x, (B, nc, Q, G, R, P)

    seg = segsum(log_decay.permute(0, 1, 3, 4, 2))  # (B, nc, G, R, Q, Q) as [t, s]
    scores = torch.einsum("bclgn,bcsgn->bcgls", Cs, Bs)  # (B, nc, G, Q, Q)
    mixing = torch.exp(seg) * scores.unsqueeze(3)  # (B, nc, G, R, Q, Q)
    if reset is not None:
        # Documents inside a chunk: every term that would carry a state across a reset is multiplied by 0 (the
        # decays stay those of the data, so segsum never meets log 0).
        same, first, last, open_ = (m.to(dtype) for m in chunk_segments(blocks(reset)))  # (B, nc, Q[, Q]), (B, nc)
        mixing = mixing * same[:, :, None, None]
    y = torch.einsum("bcgrls,bcsgrp->bclgrp", mixing, inputs)  # (B, nc, Q, G, R, P)

    to_end = torch.exp(seg[..., -1, :]).permute(0, 1, 4, 2, 3)  # decay from step s to the chunk end, (B, nc, Q, G, R)
    if reset is not None:
        to_end = to_end * last[..., None, None]
    chunk_states = torch.einsum("bclgn,bclgrp->bcgrpn", Bs, inputs * to_end.unsqueeze(-1))  # (B, nc, G, R, P, N)

    cumulative = log_decay.cumsum(dim=2)  # (B, nc, Q, G, R): l_0 + ... + l_t
    chunk_decay = torch.exp(cumulative[:, :, -1])[..., None, None]  # (B, nc, G, R, 1, 1)
    from_start_decay = torch.exp(cumulative)  # (B, nc, Q, G, R)
    if reset is not None:
        chunk_decay = chunk_decay * open_[:, :, None, None, None, None]
        from_start_decay = from_start_decay * first[..., None, None]
    running = state.view(batch, groups, repeat, head_dim, state_size)
    starts = []
    # unbind, not indexing: one stack in the backward instead of a full-size zero gradient per chunk.
    for decay_c, state_c in zip(chunk_decay.unbind(dim=1), chunk_states.unbind(dim=1)):
        starts.append(running)
        running = decay_c * running + state_c
    starts = torch.stack(starts, dim=1)  # (B, nc, G, R, P, N)

    from_start = torch.einsum("bclgn,bcgrpn->bclgrp", Cs, starts)  # (B, nc, Q, G, R, P)
    y = y + from_start * from_start_decay.unsqueeze(-1)
    y = y.reshape(batch, chunks * chunk, heads, head_dim)[:, :length]
    if D is not None:
        y = y + D.to(dtype)[:, None] * x.to(dtype)
    return y.to(x.dtype), running.reshape(batch, heads, head_dim, state_size)
