"""Triton backend of ``ssd`` (Mamba-2): chunked forward and backward kernels and a fused decode step.

Same signature and semantics as ``reference.py``. Within a chunk of L steps starting from state S (P x N), with
cs_l = dt_0 A + ... + dt_l A the running log decay inside the chunk:

    y_l   = exp(cs_l) C_l S^T  +  sum_{s<=l} (C_l . B_s) exp(cs_l - cs_s) dt_s x_s  +  D x_l
    S_end = exp(cs_{L-1}) S    +  sum_s exp(cs_{L-1} - cs_s) dt_s x_s (outer) B_s

Forward, two kernels:
  1. ``_ssd_states_kernel``, one program per (batch, head, block of P), sequential over chunks: stores every
     chunk's start state and the final state (one (L, P)^T @ (L, N) tl.dot per chunk).
  2. ``_ssd_output_kernel``, one program per (chunk, block of P, batch * head), all chunks in parallel: the
     (L, L) C B^T decay-masked matrix and the two tl.dot products above.
Backward, two kernels, all in Triton; torch only sums the per-head partials of dB, dC (over the heads that share a
group) and of dA, dD:
  3. ``_ssd_dstates_kernel``, sequential over chunks in reverse: the gradient of each chunk's end state,
     dS_start = exp(cs_{L-1}) dS_end + (exp(cs) dy)^T C, and d initial_state.
  4. ``_ssd_chunk_bwd_kernel``, all chunks in parallel, launched twice (dx, ddt, dA, dD; then dB, dC): the
     gradients of one chunk from its start state and end-state gradient, including the gradient through the decays
     (a reverse cumulative sum of d cs).

Chunks are CHUNK steps (CHUNK_FP32 for float32 inputs) regardless of ``chunk_size`` (a tile size here, not a
semantic choice: results agree up to rounding). A partial last chunk is padded with dt = 0, the identity step.
Products run on tensor cores in the input dtype (bf16/fp16 operands, float32 accumulation); float32 inputs use
exact float32 ("ieee") dots.

Resets (``reset`` (B, T), True at a document's first token), as in ``chunked.py``: the running log decay cs stays
that of the data, and every term that would cross a reset is multiplied by 0. With seg_l the resets in the chunk up
to l: the (L, L) decays by [seg_l == seg_s], exp(cs_l) (the start state's reach) by [seg_l == 0], exp(cs_last - cs_s)
(the reach to the chunk's end) by [seg_s == seg_last], and the chunk decay exp(cs_last) by [seg_last == 0], in every
kernel, so the backward's gradients through the decays see the same zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seqzoo.kernels.reset import check_reset
from seqzoo.kernels.triton_support import refuse_double_backward

from .reference import check_chunk_size, check_inputs

# Chunk lengths (untuned: no GPU was available when this was written). float32 inputs use shorter chunks: exact
# float32 dots need about twice the shared memory and registers of bf16 ones, and 64-step chunks would need 182 KB of
# shared memory at N = 128 in the chunk backward (ptxas, sm_90), more than an A100 has.
CHUNK = 64
CHUNK_FP32 = 32
STEP_BLOCK_P = 16
# A = -inf (a decay of exactly zero) enters as the most negative float32, as the reference reads it: a dt = 0 step (a
# chunk's padding, an identity step) is then exp(0) = 1, not exp(0 * -inf) = nan. A step's log decay dt A is also
# floored at LOG_DECAY_FLOOR (exp of it is 0 in float32, as is that of anything below it), as the CPU wkv7 chunked
# backend floors w: the running sums cs stay finite (-inf - -inf was nan), and a strong decay's magnitude does not
# swamp the float32 differences cs_l - cs_s of the steps after it.
FLOAT32_MIN = tl.constexpr(torch.finfo(torch.float32).min)
LOG_DECAY_FLOOR = tl.constexpr(-120.0)


@triton.jit
def _chunk_decay(dt_ptr, A_ptr, bidx, h, t, length, sdb, sdt, sdh):
    # dt (L,) float32 (0 past the end) and the running log decay cs (L,) inside the chunk.
    dt = tl.load(dt_ptr + bidx * sdb + t * sdt + h * sdh, mask=t < length, other=0.0).to(tl.float32)
    A = tl.maximum(tl.load(A_ptr + h).to(tl.float32), FLOAT32_MIN)
    return dt, tl.cumsum(tl.maximum(dt * A, LOG_DECAY_FLOOR), axis=0)


@triton.jit
def _segments(reset_ptr, bidx, t, length, idx, L: tl.constexpr, HAS_RESET: tl.constexpr):
    # The reset masks of one chunk (float32, 1.0 = kept): same (L, L) [l, s] in one document; first (L,) reached by
    # the chunk's start state; last (L,) reaching its end; open (scalar) the start state reaching the end.
    if HAS_RESET:
        resets = tl.load(reset_ptr + bidx * length + t, mask=t < length, other=0.0)
        seg = tl.cumsum(resets, axis=0)
        seg_last = _last(seg, idx, L)
        same = tl.where(seg[:, None] == seg[None, :], 1.0, 0.0)
        first = tl.where(seg == 0.0, 1.0, 0.0)
        last = tl.where(seg == seg_last, 1.0, 0.0)
        return same, first, last, tl.where(seg_last == 0.0, 1.0, 0.0)
    ones = tl.full((L,), 1.0, tl.float32)
    return ones[:, None] * ones[None, :], ones, ones, 1.0


@triton.jit
def _mm(a, b, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    # a @ b with operands rounded to DOT_DTYPE and float32 accumulation. Triton's interpreter multiplies bf16/fp16
    # operands wrongly, so there the rounded operands are widened back to float32 first: the same numbers, since
    # a product of two 16-bit floats is exact in float32.
    if EMULATE:
        return tl.dot(a.to(DOT_DTYPE).to(tl.float32), b.to(DOT_DTYPE).to(tl.float32), input_precision="ieee")
    return tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), input_precision=PRECISION)


@triton.jit
def _last(values, idx, L: tl.constexpr):
    return tl.sum(tl.where(idx == L - 1, values, 0.0), axis=0)


@triton.jit
def _load_2d(ptr, base, rows, cols, row_stride, col_stride, row_limit, col_limit):
    mask = (rows[:, None] < row_limit) & (cols[None, :] < col_limit)
    return tl.load(ptr + base + rows[:, None] * row_stride + cols[None, :] * col_stride, mask=mask, other=0.0)


@triton.jit
def _ssd_states_kernel(x_ptr, dt_ptr, A_ptr, b_ptr, h0_ptr, reset_ptr, states_ptr, hT_ptr,
                       length, heads, head_dim, state_size, heads_per_group, num_chunks,
                       sxb, sxt, sxh, sxp, sdb, sdt, sdh, sbb, sbt, sbg, sbn,
                       L: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, HAS_H0: tl.constexpr,
                       DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
                       HAS_RESET: tl.constexpr):
    pid_p, pid_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    bidx, h = pid_bh // heads, pid_bh % heads
    g = h // heads_per_group
    p = pid_p * BP + tl.arange(0, BP)
    n = tl.arange(0, BN)
    idx = tl.arange(0, L)
    m_pn = (p[:, None] < head_dim) & (n[None, :] < state_size)
    state_off = (pid_bh * head_dim + p[:, None]) * state_size + n[None, :]  # (B*H, P, N) contiguous
    if HAS_H0:
        S = tl.load(h0_ptr + state_off, mask=m_pn, other=0.0)
    else:
        S = tl.zeros((BP, BN), dtype=tl.float32)
    for c in range(0, num_chunks):
        tl.store(states_ptr + ((pid_bh * num_chunks + c) * head_dim + p[:, None]) * state_size + n[None, :], S,
                 mask=m_pn)
        t = c * L + idx
        dt, cs = _chunk_decay(dt_ptr, A_ptr, bidx, h, t, length, sdb, sdt, sdh)
        cs_last = _last(cs, idx, L)
        x = _load_2d(x_ptr, bidx * sxb + h * sxh, t, p, sxt, sxp, length, head_dim).to(tl.float32)  # (L, BP)
        bm = _load_2d(b_ptr, bidx * sbb + g * sbg, t, n, sbt, sbn, length, state_size)  # (L, BN)
        _, _, last, open_ = _segments(reset_ptr, bidx, t, length, idx, L, HAS_RESET)
        xw = x * (dt * tl.exp(cs_last - cs) * last)[:, None]
        S = tl.exp(cs_last) * open_ * S + _mm(tl.trans(xw), bm, DOT_DTYPE, PRECISION, EMULATE)
    tl.store(hT_ptr + state_off, S, mask=m_pn)


@triton.jit
def _ssd_output_kernel(x_ptr, dt_ptr, A_ptr, b_ptr, c_ptr, D_ptr, reset_ptr, states_ptr, y_ptr,
                       length, heads, head_dim, state_size, heads_per_group, num_chunks,
                       sxb, sxt, sxh, sxp, sdb, sdt, sdh, sbb, sbt, sbg, sbn, scb, sct, scg, scn,
                       L: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr,
                       DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
                       HAS_RESET: tl.constexpr):
    c, pid_p, pid_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    bidx, h = pid_bh // heads, pid_bh % heads
    g = h // heads_per_group
    p = pid_p * BP + tl.arange(0, BP)
    n = tl.arange(0, BN)
    idx = tl.arange(0, L)
    t = c * L + idx
    dt, cs = _chunk_decay(dt_ptr, A_ptr, bidx, h, t, length, sdb, sdt, sdh)
    x = _load_2d(x_ptr, bidx * sxb + h * sxh, t, p, sxt, sxp, length, head_dim)  # (L, BP)
    bm = _load_2d(b_ptr, bidx * sbb + g * sbg, t, n, sbt, sbn, length, state_size).to(DOT_DTYPE)
    cm = _load_2d(c_ptr, bidx * scb + g * scg, t, n, sct, scn, length, state_size).to(DOT_DTYPE)
    S = _load_2d(states_ptr, (pid_bh * num_chunks + c) * head_dim * state_size, p, n, state_size, 1,
                 head_dim, state_size)  # (BP, BN) float32
    same, first, _, _ = _segments(reset_ptr, bidx, t, length, idx, L, HAS_RESET)
    y = (tl.exp(cs) * first)[:, None] * _mm(cm, tl.trans(S), DOT_DTYPE, PRECISION, EMULATE)
    causal = idx[:, None] >= idx[None, :]
    decay = tl.exp(tl.where(causal, cs[:, None] - cs[None, :], float("-inf")))  # (L, L), 0 above the diagonal
    decay = decay * same
    M = _mm(cm, tl.trans(bm), DOT_DTYPE, PRECISION, EMULATE) * decay * dt[None, :]
    y += _mm(M, x, DOT_DTYPE, PRECISION, EMULATE)
    if HAS_D:
        y += tl.load(D_ptr + h).to(tl.float32) * x.to(tl.float32)
    out = ((bidx * length + t[:, None]) * heads + h) * head_dim + p[None, :]  # y: contiguous (B, T, H, P)
    tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=(t[:, None] < length) & (p[None, :] < head_dim))


@triton.jit
def _ssd_dstates_kernel(dy_ptr, dt_ptr, A_ptr, c_ptr, reset_ptr, dhT_ptr, dstates_ptr, dh0_ptr,
                        length, heads, head_dim, state_size, heads_per_group, num_chunks,
                        sgb, sgt, sgh, sgp, sdb, sdt, sdh, scb, sct, scg, scn,
                        L: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, HAS_DHT: tl.constexpr,
                        DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
                        HAS_RESET: tl.constexpr):
    pid_p, pid_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    bidx, h = pid_bh // heads, pid_bh % heads
    g = h // heads_per_group
    p = pid_p * BP + tl.arange(0, BP)
    n = tl.arange(0, BN)
    idx = tl.arange(0, L)
    m_pn = (p[:, None] < head_dim) & (n[None, :] < state_size)
    state_off = (pid_bh * head_dim + p[:, None]) * state_size + n[None, :]
    if HAS_DHT:
        dS = tl.load(dhT_ptr + state_off, mask=m_pn, other=0.0)
    else:
        dS = tl.zeros((BP, BN), dtype=tl.float32)
    for j in range(0, num_chunks):
        c = num_chunks - 1 - j
        tl.store(dstates_ptr + ((pid_bh * num_chunks + c) * head_dim + p[:, None]) * state_size + n[None, :], dS,
                 mask=m_pn)
        t = c * L + idx
        dt, cs = _chunk_decay(dt_ptr, A_ptr, bidx, h, t, length, sdb, sdt, sdh)
        dy = _load_2d(dy_ptr, bidx * sgb + h * sgh, t, p, sgt, sgp, length, head_dim).to(tl.float32)
        cm = _load_2d(c_ptr, bidx * scb + g * scg, t, n, sct, scn, length, state_size)
        _, first, _, open_ = _segments(reset_ptr, bidx, t, length, idx, L, HAS_RESET)
        dyw = dy * (tl.exp(cs) * first)[:, None]
        dS = tl.exp(_last(cs, idx, L)) * open_ * dS + _mm(tl.trans(dyw), cm, DOT_DTYPE, PRECISION, EMULATE)
    tl.store(dh0_ptr + state_off, dS, mask=m_pn)


@triton.jit
def _ssd_chunk_bwd_kernel(x_ptr, dt_ptr, A_ptr, b_ptr, c_ptr, D_ptr, reset_ptr, dy_ptr, states_ptr, dstates_ptr,
                          dx_ptr, ddt_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr,
                          length, heads, head_dim, state_size, heads_per_group, num_chunks,
                          sxb, sxt, sxh, sxp, sdb, sdt, sdh, sbb, sbt, sbg, sbn, scb, sct, scg, scn,
                          sgb, sgt, sgh, sgp,
                          L: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr,
                          DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
                          PART: tl.constexpr, HAS_RESET: tl.constexpr):
    # One chunk of one (batch, head), the whole head dim (BP >= P). Launched twice: PART 0 computes dx, ddt, dA,
    # dD; PART 1 dB, dC. Split so that fewer (L, L) and (L, N) tiles are live at once (register spills).
    c, pid_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    bidx, h = pid_bh // heads, pid_bh % heads
    g = h // heads_per_group
    p = tl.arange(0, BP)
    n = tl.arange(0, BN)
    idx = tl.arange(0, L)
    t = c * L + idx
    A = tl.maximum(tl.load(A_ptr + h).to(tl.float32), FLOAT32_MIN)
    dt, cs = _chunk_decay(dt_ptr, A_ptr, bidx, h, t, length, sdb, sdt, sdh)
    floored = dt * A < LOG_DECAY_FLOOR  # (these steps' log decays are the floor: no gradient reaches dt or A there)
    cs_last = _last(cs, idx, L)
    x = _load_2d(x_ptr, bidx * sxb + h * sxh, t, p, sxt, sxp, length, head_dim).to(tl.float32)  # (L, P)
    dy = _load_2d(dy_ptr, bidx * sgb + h * sgh, t, p, sgt, sgp, length, head_dim).to(tl.float32)  # (L, P)
    bm = _load_2d(b_ptr, bidx * sbb + g * sbg, t, n, sbt, sbn, length, state_size).to(tl.float32)  # (L, N)
    cm = _load_2d(c_ptr, bidx * scb + g * scg, t, n, sct, scn, length, state_size).to(tl.float32)  # (L, N)
    chunk_state = (pid_bh * num_chunks + c) * head_dim * state_size
    S = _load_2d(states_ptr, chunk_state, p, n, state_size, 1, head_dim, state_size)  # (P, N) at chunk start
    dS = _load_2d(dstates_ptr, chunk_state, p, n, state_size, 1, head_dim, state_size)  # d(state at chunk end)

    same, first, last, open_ = _segments(reset_ptr, bidx, t, length, idx, L, HAS_RESET)
    decay_in = tl.exp(cs) * first  # (L,) from the chunk start to step l
    decay_out = tl.exp(cs_last - cs) * last  # (L,) from step l to the chunk end
    w_out = dt * decay_out
    causal = idx[:, None] >= idx[None, :]
    E = tl.exp(tl.where(causal, cs[:, None] - cs[None, :], float("-inf"))) * same  # (L, L)
    G = _mm(dy, tl.trans(x), DOT_DTYPE, PRECISION, EMULATE)  # (L, L): dy_l . x_s
    in_t = t < length

    if PART == 0:
        # dx, ddt (through dt directly and through the decays), dA, dD.
        M0 = _mm(cm, tl.trans(bm), DOT_DTYPE, PRECISION, EMULATE) * E  # (L, L): (C_l . B_s) exp(cs_l - cs_s)
        # Intra-chunk term y_l += sum_s M0[l, s] dt_s x_s.
        dx = dt[:, None] * _mm(tl.trans(M0), dy, DOT_DTYPE, PRECISION, EMULATE)  # (L, P)
        Q = M0 * G  # (L, L)
        ddt = tl.sum(Q, axis=0)  # (L,) over l, for each s
        Q = Q * dt[None, :]  # d y_l . (intra term s -> l): its log-decay gradient is +Q at l, -Q at s
        dcs = tl.sum(Q, axis=1) - tl.sum(Q, axis=0)
        # Inter-chunk term y_l += exp(cs_l) C_l S^T.
        dcs += decay_in * tl.sum(_mm(dy, S, DOT_DTYPE, PRECISION, EMULATE) * cm, axis=1)
        # End state S_end = exp(cs_last) S + sum_s decay_out_s dt_s x_s (outer) B_s.
        BdS = _mm(bm, tl.trans(dS), DOT_DTYPE, PRECISION, EMULATE)  # (L, P): dS B_s
        dx += w_out[:, None] * BdS
        R = decay_out * tl.sum(x * BdS, axis=1)  # (L,): d S_end . (x_s outer B_s) exp(cs_last - cs_s)
        ddt += R
        dcs -= dt * R
        dcs += tl.where(idx == L - 1,
                        tl.sum(dt * R, axis=0) + tl.exp(cs_last) * open_ * tl.sum(tl.sum(dS * S, axis=1), axis=0),
                        0.0)
        if HAS_D:
            Dh = tl.load(D_ptr + h).to(tl.float32)
            dx += Dh * dy
            tl.store(dD_ptr + pid_bh * num_chunks + c, tl.sum(tl.sum(dy * x, axis=1), axis=0))
        # cs_l = sum_{j<=l} dt_j A: the gradient of dt_j A is the reverse cumulative sum of dcs.
        d_dtA = tl.cumsum(dcs, axis=0, reverse=True)
        d_dtA = tl.where(floored, 0.0, d_dtA)
        ddt += A * d_dtA
        tl.store(dA_ptr + pid_bh * num_chunks + c, tl.sum(dt * d_dtA, axis=0))
        tl.store(dx_ptr + ((bidx * length + t[:, None]) * heads + h) * head_dim + p[None, :], dx,
                 mask=in_t[:, None] & (p[None, :] < head_dim))
        tl.store(ddt_ptr + (bidx * length + t) * heads + h, ddt, mask=in_t)
    else:
        # dB, dC of this head (summed over the heads of a group in torch).
        dCB = E * G * dt[None, :]  # (L, L)
        dC = _mm(dCB, bm, DOT_DTYPE, PRECISION, EMULATE)  # (L, N)
        dC += decay_in[:, None] * _mm(dy, S, DOT_DTYPE, PRECISION, EMULATE)
        dB = _mm(tl.trans(dCB), cm, DOT_DTYPE, PRECISION, EMULATE)  # (L, N)
        dB += w_out[:, None] * _mm(x, dS, DOT_DTYPE, PRECISION, EMULATE)
        per_head = ((bidx * length + t[:, None]) * heads + h) * state_size + n[None, :]  # (B, T, H, N) buffers
        m_tn = in_t[:, None] & (n[None, :] < state_size)
        tl.store(dB_ptr + per_head, dB, mask=m_tn)
        tl.store(dC_ptr + per_head, dC, mask=m_tn)


@triton.jit
def _ssd_step_kernel(x_ptr, dt_ptr, A_ptr, b_ptr, c_ptr, D_ptr, h0_ptr, reset_ptr, y_ptr, h1_ptr,
                     heads, head_dim, state_size, heads_per_group,
                     sxb, sxh, sxp, sdb, sdh, sbb, sbg, sbn, scb, scg, scn,
                     BP: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr, HAS_H0: tl.constexpr,
                     HAS_RESET: tl.constexpr):
    # One decoding step for a block of P rows of one (batch, head): state update and output in one launch.
    pid_p, pid_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    bidx, h = pid_bh // heads, pid_bh % heads
    g = h // heads_per_group
    p = pid_p * BP + tl.arange(0, BP)
    n = tl.arange(0, BN)
    mp, mn = p < head_dim, n < state_size
    m_pn = mp[:, None] & mn[None, :]
    x = tl.load(x_ptr + bidx * sxb + h * sxh + p * sxp, mask=mp, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + bidx * sdb + h * sdh).to(tl.float32)
    bm = tl.load(b_ptr + bidx * sbb + g * sbg + n * sbn, mask=mn, other=0.0).to(tl.float32)
    cm = tl.load(c_ptr + bidx * scb + g * scg + n * scn, mask=mn, other=0.0).to(tl.float32)
    state_off = (pid_bh * head_dim + p[:, None]) * state_size + n[None, :]
    S = (dt * x)[:, None] * bm[None, :]
    if HAS_H0:
        decay = tl.exp(dt * tl.maximum(tl.load(A_ptr + h).to(tl.float32), FLOAT32_MIN))
        if HAS_RESET:
            decay = decay * (1.0 - tl.load(reset_ptr + bidx))  # (B, 1) resets: no state enters a document's start
        S += decay * tl.load(h0_ptr + state_off, mask=m_pn, other=0.0)
    y = tl.sum(S * cm[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + h).to(tl.float32) * x
    tl.store(y_ptr + pid_bh * head_dim + p, y.to(y_ptr.dtype.element_ty), mask=mp)
    tl.store(h1_ptr + state_off, S, mask=m_pn)


# Whether these kernels run under Triton's interpreter (decided when this module was imported).
_INTERPRETED = type(_ssd_output_kernel).__name__ == "InterpretedFunction"
_DOT_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _dims(x, B):
    batch, length, heads, head_dim = x.shape
    groups, state_size = B.shape[2:]
    return batch, length, heads, head_dim, state_size, heads // groups


def _tiles(head_dim, state_size):
    block_n = max(16, triton.next_power_of_2(state_size))
    block_p_full = max(16, triton.next_power_of_2(head_dim))
    # The states kernels keep a (BP, BN) float32 tile live across the chunk loop.
    block_p = min(block_p_full, 64 if block_n <= 64 else 32)
    return block_p, block_p_full, block_n


def _chunk(x):
    return CHUNK_FP32 if x.dtype == torch.float32 else CHUNK


def _dot_config(x):
    return _DOT_DTYPES[x.dtype], "ieee" if x.dtype == torch.float32 else "tf32"


def _forward(x, dt, A, B, C, D, h0, resets):
    batch, length, heads, head_dim, state_size, per_group = _dims(x, B)
    block_p, _, block_n = _tiles(head_dim, state_size)
    chunk = _chunk(x)
    num_chunks = triton.cdiv(length, chunk)
    dot_dtype, precision = _dot_config(x)
    dev = x.device
    states = torch.empty(batch * heads, num_chunks, head_dim, state_size, device=dev, dtype=torch.float32)
    hT = torch.empty(batch, heads, head_dim, state_size, device=dev, dtype=torch.float32)
    common = (length, heads, head_dim, state_size, per_group, num_chunks)
    _ssd_states_kernel[(triton.cdiv(head_dim, block_p), batch * heads)](
        x, dt, A, B, h0, resets, states, hT, *common, *x.stride(), *dt.stride(), *B.stride(),
        L=chunk, BP=block_p, BN=block_n, HAS_H0=h0 is not None, DOT_DTYPE=dot_dtype, PRECISION=precision,
        EMULATE=_INTERPRETED, HAS_RESET=resets is not None,
    )
    y = torch.empty(batch, length, heads, head_dim, device=dev, dtype=x.dtype)
    _ssd_output_kernel[(num_chunks, triton.cdiv(head_dim, block_p), batch * heads)](
        x, dt, A, B, C, D, resets, states, y, *common, *x.stride(), *dt.stride(), *B.stride(), *C.stride(),
        L=chunk, BP=block_p, BN=block_n, HAS_D=D is not None, DOT_DTYPE=dot_dtype, PRECISION=precision,
        EMULATE=_INTERPRETED, HAS_RESET=resets is not None,
        num_warps=8,
    )
    return y, hT, states


class _SSDFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, h0, resets):
        y, hT, states = _forward(x, dt, A, B, C, D, h0, resets)
        ctx.save_for_backward(x, dt, A, B, C, D, h0, resets, states)
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        refuse_double_backward("ssd", "triton")
        x, dt, A, B, C, D, h0, resets, states = ctx.saved_tensors
        batch, length, heads, head_dim, state_size, per_group = _dims(x, B)
        block_p, block_p_full, block_n = _tiles(head_dim, state_size)
        num_chunks = states.shape[1]
        chunk = _chunk(x)
        dot_dtype, precision = _dot_config(x)
        dev, f32 = x.device, torch.float32
        if dy is None:
            dy = torch.zeros_like(x)
        # The kernel reads dhT as a contiguous (B, H, P, N) tensor; autograd may hand it an expanded (stride 0) one.
        dhT = dhT.contiguous() if dhT is not None else None
        common = (length, heads, head_dim, state_size, per_group, num_chunks)
        dstates = torch.empty_like(states)
        dh0 = torch.empty(batch, heads, head_dim, state_size, device=dev, dtype=f32)
        _ssd_dstates_kernel[(triton.cdiv(head_dim, block_p), batch * heads)](
            dy, dt, A, C, resets, dhT, dstates, dh0, *common, *dy.stride(), *dt.stride(), *C.stride(),
            L=chunk, BP=block_p, BN=block_n, HAS_DHT=dhT is not None, DOT_DTYPE=dot_dtype, PRECISION=precision,
            EMULATE=_INTERPRETED, HAS_RESET=resets is not None,
        )
        dx = torch.empty(batch, length, heads, head_dim, device=dev, dtype=f32)
        ddt = torch.empty(batch, length, heads, device=dev, dtype=f32)
        dB_heads = torch.empty(batch, length, heads, state_size, device=dev, dtype=f32)
        dC_heads = torch.empty_like(dB_heads)
        dA_part = torch.empty(batch, heads, num_chunks, device=dev, dtype=f32)
        dD_part = torch.empty_like(dA_part) if D is not None else None
        for part in (0, 1):
            _ssd_chunk_bwd_kernel[(num_chunks, batch * heads)](
                x, dt, A, B, C, D, resets, dy, states, dstates, dx, ddt, dB_heads, dC_heads, dA_part, dD_part,
                *common,
                *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *dy.stride(),
                L=chunk, BP=block_p_full, BN=block_n, HAS_D=D is not None, DOT_DTYPE=dot_dtype,
                PRECISION=precision, EMULATE=_INTERPRETED, PART=part, HAS_RESET=resets is not None, num_warps=8,
            )
        groups = heads // per_group
        dB = dB_heads.view(batch, length, groups, per_group, state_size).sum(3)
        dC = dC_heads.view(batch, length, groups, per_group, state_size).sum(3)
        return (
            dx.to(x.dtype), ddt.to(dt.dtype), dA_part.sum((0, 2)).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            dD_part.sum((0, 2)).to(D.dtype) if D is not None else None,
            dh0.to(h0.dtype) if h0 is not None else None,
            None,
        )


def _step(x, dt, A, B, C, D, h0, resets):
    batch, _, heads, head_dim, state_size, per_group = _dims(x, B)
    block_n = max(16, triton.next_power_of_2(state_size))
    y = torch.empty(batch, 1, heads, head_dim, device=x.device, dtype=x.dtype)
    h1 = torch.empty(batch, heads, head_dim, state_size, device=x.device, dtype=torch.float32)
    _ssd_step_kernel[(triton.cdiv(head_dim, STEP_BLOCK_P), batch * heads)](
        x, dt, A, B, C, D, h0, resets, y, h1, heads, head_dim, state_size, per_group,
        x.stride(0), x.stride(2), x.stride(3), dt.stride(0), dt.stride(2),
        B.stride(0), B.stride(2), B.stride(3), C.stride(0), C.stride(2), C.stride(3),
        BP=STEP_BLOCK_P, BN=block_n, HAS_D=D is not None, HAS_H0=h0 is not None, HAS_RESET=resets is not None,
    )
    return y, h1


def ssd(x, dt, A, B, C, D=None, *, initial_state=None, chunk_size=64, reset=None):
    """Mamba-2 SSD over (B, T, H, P); returns (y, final_state). Formulas in ``reference.py``; ``chunk_size`` is
    accepted for signature parity, the kernels use chunks of CHUNK (CHUNK_FP32 for float32) steps; ``reset``
    (B, T): the state entering a token marked True is zero."""
    check_inputs(x, dt, A, B, C, D, initial_state)
    check_chunk_size(chunk_size)  # (checked as every backend checks it, though no tile reads it)
    batch, length, heads, head_dim = x.shape
    reset = check_reset("ssd", reset, batch, length)
    resets = None if reset is None else reset.float().contiguous()  # (B, T): 1.0 where a document begins
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    # The kernels read A and D as contiguous (H,) vectors.
    A, D = A.contiguous(), (D.contiguous() if D is not None else None)
    if length == 0:
        final = h0 if h0 is not None else x.new_zeros(batch, heads, head_dim, B.shape[-1], dtype=torch.float32)
        return x.new_zeros(batch, 0, heads, head_dim), final
    inputs = (x, dt, A, B, C, D, initial_state)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    if not needs_grad:
        if length == 1:
            return _step(x, dt, A, B, C, D, h0, resets)
        y, hT, _ = _forward(x, dt, A, B, C, D, h0, resets)
        return y, hT
    return _SSDFn.apply(x, dt, A, B, C, D, h0, resets)
