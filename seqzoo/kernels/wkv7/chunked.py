"""Chunked RWKV-7 WKV in pure PyTorch: the generalized delta rule with diagonal decay, solved per chunk with a
triangular (UT / WY-style) solve, and a Python loop over chunks only. The derivation is in README.md.

Same signature and semantics as ``reference.py``. Inside a chunk of Q tokens, with c_t = w_0 + ... + w_t (the
cumulative log decay, per key channel) and E[t, s] = exp(c_t - c_s) for s <= t (every decay ratio is a difference
with s <= t, so it is <= 1 and nothing is divided by a small product):

    u_t = S_{t-1} a_t   (the "removed" value) solves  (I - A_ab) u = aw S^T + A_ak v
    y    = rw S^T + A_rb u + A_rk v
    S_Q  = S diag(exp(c_{Q-1})) + u^T (b * E[Q-1]) + v^T (k * E[Q-1])

with A_xy[t, s] = sum_i x_t[i] y_s[i] E[t, s, i] (s <= t; for A_ab, A_ak the decay stops at t-1 and s < t),
aw_t = a_t exp(c_{t-1}), rw_t = r_t exp(c_t), and S the chunk's start state. Splitting u into the part that
depends on S (W S^T, W = (I - A_ab)^{-1} aw) and the part that does not (U0) makes every chunk's work independent
of S except one (V x K) @ (K x K) product per chunk: S_next = S M + N.

The score matrices are plain matrix products, E[t, s] = exp(c_t - m) exp(m - c_s) with m half the chunk's total
decay, whenever every chunk decays by at most FACTORED_MAX_DECAY in every channel (always, in RWKV-7 models);
otherwise (possible through the kernel API) they come from the (Q, Q, K) tensor of ratios, which never forms a
factor above 1.

T == 1 goes straight through a single-token update (``step``), so decoding does no chunk work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqzoo.kernels.reset import check_reset, chunk_segments
from seqzoo.kernels.symbolic import is_symbolic

from . import reference
from .reference import check_inputs, compute_dtype, initial

CHUNK = 32
# The factored score products form exp(+-(c_t - m)) with m the chunk's mid decay: factors up to exp(30) for a chunk
# whose total log decay is -60, far inside float32. RWKV-7 models stay below 32 * exp(-0.5) = 19.4 per chunk of 32;
# stronger decays (possible through the kernel API) take the pairwise path, which never forms a factor above 1.
FACTORED_MAX_DECAY = 60.0
# A decay of exactly zero (w = -inf: decay = exp(w) allows it) enters the pairwise form's cumulative log decays as
# this instead: -inf there gives differences -inf - -inf = nan. exp(-120) is 0 in float32 and 8e-53 in float64, so
# the state is forgotten as the reference forgets it; chunks holding such a step decay by more than
# FACTORED_MAX_DECAY, so only the pairwise form (every ratio <= 1) meets it.
LOG_DECAY_FLOOR = -120.0


def _cumulative(w_):
    """Log decays (B, H, nc, Q, K) -> c_t = w_0 + ... + w_t, c_{t-1} (c_{-1} = 0) and c_{Q-1} (B, H, nc, 1, K)."""
    cum = w_.cumsum(dim=-2)
    return cum, F.pad(cum[..., :-1, :], (0, 0, 1, 0)), cum[..., -1:, :]


def _shift_down(m):
    """Rows move down by one (row 0 becomes zeros): turns 'decay up to t' into 'decay up to t-1' for row t+1."""
    return F.pad(m[..., :-1, :], (0, 0, 1, 0))


def _scores_factored(r_, k_, a_, b_, cum, cum_before, total):
    """The four Q x Q score matrices as plain matrix products: E[t, s] = exp(c_t - m) exp(m - c_s), m = c_{Q-1} / 2.

    Queries (r_t, a_t) carry exp(c_t - m) resp. exp(c_{t-1} - m), keys (b_s, k_s) carry exp(m - c_s); one
    (2Q x K) @ (K x 2Q) product per chunk gives all four, then the causal masks (s <= t for r, s < t for a)."""
    chunk = cum.shape[-2]
    mid = 0.5 * total
    grow = torch.exp(mid - cum)  # exp(m - c_s)
    queries = torch.cat([r_ * torch.exp(cum - mid), a_ * torch.exp(cum_before - mid)], dim=-2)  # (.., 2Q, K)
    keys = torch.cat([b_ * grow, k_ * grow], dim=-2)  # (.., 2Q, K)
    scores = queries @ keys.transpose(-1, -2)  # (.., 2Q_query, 2Q_key): [r; a] x [b, k]
    top, bottom = scores[..., :chunk, :], scores[..., chunk:, :]
    A_rb, A_rk = top[..., :chunk].tril(), top[..., chunk:].tril()
    A_ab, A_ak = bottom[..., :chunk].tril(-1), bottom[..., chunk:].tril(-1)
    return A_rb, A_rk, A_ab, A_ak


def _scores_pairwise(r_, k_, a_, b_, cum):
    """The same four matrices from the (Q, Q, K) tensor of decay ratios E[t, s] = exp(c_t - c_s), s <= t: every
    factor is <= 1 whatever the decay, at Q times the memory of the factored form."""
    chunk = cum.shape[-2]
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=cum.device).tril()
    span = cum.unsqueeze(-2) - cum.unsqueeze(-3)  # [t, s] = c_t - c_s, (B, H, nc, Q, Q, K)
    ratio = torch.exp(span.masked_fill_(~causal[:, :, None], float("-inf")))  # E[t, s], 0 for s > t
    # Keys (b, k) at s against queries (r_t, a_{t+1}) at t in one product; the a-rows then move down one row,
    # turning "decay up to t" into "decay up to t-1".
    keys = torch.stack([b_, k_], dim=-2)  # (B, H, nc, Q, 2, K)
    queries = torch.stack([r_, F.pad(a_[..., 1:, :], (0, 0, 0, 1))], dim=-1)  # (B, H, nc, Q, K, 2)
    weighted = ratio.unsqueeze(-2) * keys.unsqueeze(-4)  # (B, H, nc, Q_t, Q_s, 2, K)
    scores = (weighted.flatten(-3, -2) @ queries).unflatten(-2, (chunk, 2))  # (.., Q_t, Q_s, 2_key, 2_query)
    A_rb, A_rk = scores[..., 0, 0], scores[..., 1, 0]
    A_ab, A_ak = _shift_down(scores[..., 0, 1]), _shift_down(scores[..., 1, 1])
    return A_rb, A_rk, A_ab, A_ak


def step(state, r, w, k, v, a, b):
    """One token, as ``reference.update`` computes it: S diag(exp(w)) + (S a) b^T + v k^T, then y = S r. r, w, k,
    a, b (B, H, K) or (B, 1, H, K); v likewise with V; state (B, H, V, K). Returns y (B, H, V) and the new state.
    Decoding calls this once per layer and token, where every operation counts: the two matrix-vector products
    run as (1 x K) @ (K x V) against the state's transpose, which torch's CPU batched product does 3-4x faster than
    (V x K) @ (K x 1), and the two rank-1 updates are elementwise ``addcmul``s."""
    batch, heads, value_dim, key_dim = state.shape
    n = batch * heads
    S = state.reshape(n, value_dim, key_dim)
    removed = torch.bmm(a.reshape(n, 1, key_dim), S.transpose(1, 2))  # (S a)^T, (BH, 1, V)
    S = torch.addcmul(S * torch.exp(w).reshape(n, 1, key_dim), removed.view(n, value_dim, 1), b.reshape(n, 1, key_dim))
    S.addcmul_(v.reshape(n, value_dim, 1), k.reshape(n, 1, key_dim))
    y = torch.bmm(r.reshape(n, 1, key_dim), S.transpose(1, 2))  # (S r)^T
    return y.view(batch, heads, value_dim), S.view(batch, heads, value_dim, key_dim)


def wkv7(r, w, k, v, a, b, *, initial_state=None, reset=None):
    """RWKV-7 WKV over (B, T, H, *); returns (y, final_state). Formulas in ``reference.py``; resets in README.md."""
    check_inputs(r, w, k, v, a, b, initial_state)
    batch, length, heads, key_dim = r.shape
    reset = check_reset("wkv7", reset, batch, length)
    value_dim = v.shape[-1]
    dtype = compute_dtype(r, w, k, v, a, b, initial_state)
    state = initial(r, v, initial_state, dtype)
    if length == 0:
        return r.new_zeros(batch, 0, heads, value_dim), state
    if length == 1:
        if reset is not None:
            state = torch.where(reset[:, 0, None, None, None], 0.0, state)
        y, state = step(state, *(x.to(dtype) for x in (r, w, k, v, a, b)))
        return y.view(batch, 1, heads, value_dim).to(r.dtype), state
    if is_symbolic(length):  # torch.export with a dynamic length: the chunks would fix it (seqzoo/kernels/symbolic.py)
        return reference.wkv7(r, w, k, v, a, b, initial_state=initial_state, reset=reset)

    chunk = min(CHUNK, length)
    pad = (-length) % chunk
    chunks = (length + pad) // chunk

    def blocks(t):
        # (B, T, H, D) -> (B, H, nc, Q, D); padded steps are all-zero: w = k = b = 0 is the identity step.
        t = t.to(dtype)
        if pad:
            t = F.pad(t, (0, 0, 0, 0, 0, pad))
        return t.reshape(batch, chunks, chunk, heads, t.shape[-1]).permute(0, 3, 1, 2, 4)

    r_, w_, k_, v_, a_, b_ = (blocks(t) for t in (r, w, k, v, a, b))
    cum, cum_before, total = _cumulative(w_)
    # The factored form is faster but overflows for strong decays. Which one applies depends on the data, a branch
    # torch.compile cannot trace without a graph break: compiled code takes the pairwise form, exact for any decay.
    if not torch.compiler.is_compiling() and (total.numel() == 0 or bool(total.min() >= -FACTORED_MAX_DECAY)):
        A_rb, A_rk, A_ab, A_ak = _scores_factored(r_, k_, a_, b_, cum, cum_before, total)
    else:
        # (a pass over w in this form only: a chunk with w = -inf always takes it, and the factored one never)
        cum, cum_before, total = _cumulative(w_.clamp(min=LOG_DECAY_FLOOR))
        A_rb, A_rk, A_ab, A_ak = _scores_pairwise(r_, k_, a_, b_, cum)

    a_decayed = a_ * torch.exp(cum_before)  # aw, (B, H, nc, Q, K)
    r_decayed = r_ * torch.exp(cum)  # rw, (B, H, nc, Q, K)
    to_end = torch.exp(total - cum)  # E[Q-1, s], (B, H, nc, Q, K)
    start_to_end = torch.exp(total[..., 0, :])  # (B, H, nc, K)
    if reset is not None:
        # Documents inside a chunk: every term that would carry a state across a reset is multiplied by 0 (the
        # decays stay those of the data, so no log-space sum meets log 0).
        reset_blocks = F.pad(reset, (0, pad)).view(batch, 1, chunks, chunk)  # (B, 1, nc, Q)
        same, first, last, open_ = (m.to(dtype) for m in chunk_segments(reset_blocks))
        A_rb, A_rk, A_ab, A_ak = (A * same for A in (A_rb, A_rk, A_ab, A_ak))
        a_decayed, r_decayed = a_decayed * first[..., None], r_decayed * first[..., None]
        to_end = to_end * last[..., None]
        start_to_end = start_to_end * open_[..., None]
    # unitriangular: the solver reads only the strict lower part, so -A_ab stands for I - A_ab.
    solved = torch.linalg.solve_triangular(
        -A_ab, torch.cat([a_decayed, A_ak @ v_], dim=-1), upper=False, unitriangular=True
    )
    W, U0 = solved.split([key_dim, value_dim], dim=-1)  # (.., Q, K), (.., Q, V)
    R = r_decayed + A_rb @ W  # y = R S^T + Y0
    Y0 = A_rb @ U0 + A_rk @ v_  # (B, H, nc, Q, V)

    b_end, k_end = b_ * to_end, k_ * to_end
    M = torch.diag_embed(start_to_end) + W.transpose(-1, -2) @ b_end  # (B, H, nc, K, K)
    N = U0.transpose(-1, -2) @ b_end + v_.transpose(-1, -2) @ k_end  # (B, H, nc, V, K)
    starts = []
    # Chunk-major copies, then unbind: each product reads a contiguous slice, and the backward is a single stack
    # rather than one full-size zero gradient per indexed chunk.
    for M_c, N_c in zip(M.movedim(2, 0).contiguous().unbind(), N.movedim(2, 0).contiguous().unbind()):
        starts.append(state)
        state = state @ M_c + N_c
    starts = torch.stack(starts, dim=2)  # (B, H, nc, V, K)

    y = Y0 + R @ starts.transpose(-1, -2)  # (B, H, nc, Q, V)
    y = y.permute(0, 2, 3, 1, 4).reshape(batch, chunks * chunk, heads, value_dim)[:, :length]
    return y.to(r.dtype), state
