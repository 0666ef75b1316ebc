"""Triton backend ``triton_chunked`` of ``wkv7`` (RWKV-7): the chunked algorithm of README.md for training and
prefill, forward and backward, with the tokens of a chunk processed together by matrix products.

Same signature and semantics as ``reference.py``. Per head and chunk of Q tokens entered with state S (V x K), with
c = cumsum(w) inside the chunk, cb = c - w, g = c_{Q-1} and the four masked Q x Q score matrices A_rb, A_rk (s <= t)
and A_ab, A_ak (s < t) of README.md, P = I - A_ab:

    u  = P^-1 (aw S^T + A_ak v)        aw = a exp(cb)            (u_t = S_{t-1} a_t, the removed value)
    y  = rw S^T + A_rb u + A_rk v      rw = r exp(c)
    S' = S diag(exp(g)) + u^T bend + v^T kend,      bend = b exp(g - c),  kend = k exp(g - c)

Forward, two launches:
  1. ``_fwd_intra_kernel``, one program per (chunk, batch * head): everything that does not need S, as
     u = W S^T + U0 and y = R S^T + Y0 with W = P^-1 aw, U0 = P^-1 A_ak v, R = rw + A_rb W, Y0 = A_rb U0 + A_rk v.
  2. ``_fwd_state_kernel``, one program per (block of value rows, batch * head), sequential over chunks: u, the
     output y and the next state; stores each chunk's start state and u when a backward will follow.
Backward, three launches, with dS' the gradient of a chunk's end state:
  3. ``_bwd_intra_kernel`` (parallel over chunks): Gy = P^-T A_rb^T dy and Bt = P^-T bend.
  4. ``_bwd_state_kernel`` (sequential, last chunk first): dz = Gy + Bt dS'^T (dz = P^-T du, du = dL/du) and
     dS = dS' diag(exp(g)) + dz^T aw + dy^T rw; stores each chunk's dS' and dz; its last value is d initial_state.
  5. ``_bwd_grads_kernel`` (parallel over chunks): from S, dS', u, dz and dy, every input gradient of the chunk
     (no triangular inverse: u and dz carry it).

Score matrices: E[t, s] = exp(c_t - c_s) is factored as exp(c_t - m) exp(m - c_s), m = g / 2, so each matrix is one
(Q x K)(K x Q) product, when the chunk decays by at most FACTORED_MAX_DECAY in every channel (always in RWKV-7
models); a chunk that decays more takes the pairwise form, one key at a time with every ratio <= 1. The choice is
made per chunk inside the kernels, so no value check reaches the host. Everything is float32; the products run
on tensor cores, with float32 accuracy (3xTF32) for float32 inputs and tf32 operands for bf16 and float16 inputs.

T == 1 runs the fused recurrent kernel of ``triton.py`` (one launch, the decode step).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seqzoo.kernels.triton_support import refuse_double_backward

from . import chunked
from . import triton as fused
from .reference import check_inputs

CHUNK = 32  # tokens per chunk (a tile size: results agree up to rounding); untuned
STATE_BLOCK_V = 32  # value rows per program of the sequential kernels; untuned
# Software-pipelining depth of the sequential kernels (their loads do not depend on the state, so the next chunk's
# are issued early); 3 stages of float32 tiles would exceed Hopper's shared memory at head size 128.
STATE_STAGES = 2
# exp(+-g/2) factors stay below exp(30) for chunks that decay by at most 60, far inside float32 (the CPU backend's
# bound). RWKV-7 models decay by at most 32 * exp(-0.5) = 19.4 per chunk of 32.
FACTORED_MAX_DECAY = 60.0
# w is floored here as the CPU chunked backend floors it (chunked.LOG_DECAY_FLOOR; exp of it is 0 in float32): w =
# -inf made the running sums c -inf, and c_t - c_s nan; a finite but strong decay swamped the differences of the
# steps after it. No gradient reaches a floored w (exp(w) is 0 there, as in the reference's own derivative).
LOG_DECAY_FLOOR = tl.constexpr(chunked.LOG_DECAY_FLOOR)


@triton.jit
def _tf32(x):
    # x with the 13 low mantissa bits cleared: the operand a tf32 tensor-core product reads.
    return (x.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    # a @ b of float32 tiles with float32 accumulation, on tensor cores: tf32 operands, or three tf32 products that
    # recover float32 accuracy ("tf32x3"). The interpreter multiplies exactly, so there tf32 operands are rounded
    # first (the 13 low mantissa bits cleared, as the tensor cores read them); tf32x3 stands in as exact.
    if EMULATE:
        if PRECISION == "tf32":
            a = (a.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
            b = (b.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _chunk_offsets(bidx, h, chunk, length, heads, dim, first, Q: tl.constexpr, BD: tl.constexpr):
    # Offsets and mask of one chunk's rows, columns first .. first + BD - 1, of a contiguous (B, T, H, D) tensor.
    t = chunk * Q + tl.arange(0, Q)
    d = first + tl.arange(0, BD)
    return ((bidx * length + t[:, None]) * heads + h) * dim + d[None, :], (t[:, None] < length) & (d[None, :] < dim)


@triton.jit
def _load_chunk(ptr, bidx, h, chunk, length, heads, dim, first, Q: tl.constexpr, BD: tl.constexpr):
    # (Q, BD) in float32; zeros past T and past D (w = k = b = 0 there: identity steps).
    off, mask = _chunk_offsets(bidx, h, chunk, length, heads, dim, first, Q, BD)
    return tl.load(ptr + off, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_chunk(ptr, value, bidx, h, chunk, length, heads, dim, first, Q: tl.constexpr, BD: tl.constexpr):
    off, mask = _chunk_offsets(bidx, h, chunk, length, heads, dim, first, Q, BD)
    tl.store(ptr + off, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tile(ptr, base, rows, cols, row_stride):
    # A full tile of a padded scratch buffer (no masks: the wrappers allocate the padded sizes).
    return tl.load(ptr + base + rows[:, None] * row_stride + cols[None, :]).to(tl.float32)


@triton.jit
def _put(ptr, base, rows, cols, row_stride, value):
    tl.store(ptr + base + rows[:, None] * row_stride + cols[None, :], value.to(ptr.dtype.element_ty))


@triton.jit
def _row(x, idx, s):
    # Row s of a (Q, D) tile, as a (D,) vector.
    return tl.sum(tl.where(idx[:, None] == s, x, 0.0), axis=0)


@triton.jit
def _decays(w, Q: tl.constexpr):
    # c_t = w_0 + ... + w_t, cb_t = c_{t-1} (c_{-1} = 0), and g = c_{Q-1}: the chunk's total log decay per channel.
    w = tl.maximum(w, LOG_DECAY_FLOOR)
    c = tl.cumsum(w, axis=0)
    return c, c - w, _row(c, tl.arange(0, Q), Q - 1)


@triton.jit
def _scores(r, k, a, b, c, cb, gamma, max_decay, Q: tl.constexpr,
            PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    """A_rb, A_rk (s <= t) and A_ab, A_ak (s < t): A_xy[t, s] = sum_i x_t[i] y_s[i] exp(c'_t[i] - c_s[i]), with
    c' = c for the r-rows and cb for the a-rows."""
    idx = tl.arange(0, Q)
    causal = idx[:, None] >= idx[None, :]
    strict = idx[:, None] > idx[None, :]
    if tl.min(gamma, axis=0) >= -max_decay:
        mid = 0.5 * gamma[None, :]
        grow = tl.exp(mid - c)  # exp(m - c_s) on the keys, exp(c_t - m) on the queries
        rq, aq = r * tl.exp(c - mid), a * tl.exp(cb - mid)
        bq, kq = tl.trans(b * grow), tl.trans(k * grow)
        A_rb = _dot(rq, bq, PRECISION, EMULATE)
        A_rk = _dot(rq, kq, PRECISION, EMULATE)
        A_ab = _dot(aq, bq, PRECISION, EMULATE)
        A_ak = _dot(aq, kq, PRECISION, EMULATE)
    else:
        A_rb = tl.zeros((Q, Q), dtype=tl.float32)
        A_rk = tl.zeros((Q, Q), dtype=tl.float32)
        A_ab = tl.zeros((Q, Q), dtype=tl.float32)
        A_ak = tl.zeros((Q, Q), dtype=tl.float32)
        for s in range(0, Q):
            row = idx[:, None] == s  # (helpers are not called inside loops: the interpreter is slow at calls)
            b_s = tl.sum(tl.where(row, b, 0.0), axis=0)
            k_s = tl.sum(tl.where(row, k, 0.0), axis=0)
            c_s = tl.sum(tl.where(row, c, 0.0), axis=0)
            # Ratios only where they are used (s <= t, resp. s < t), so each one is <= 1 whatever the decay.
            er = tl.exp(tl.where(idx[:, None] >= s, c - c_s[None, :], float("-inf")))
            ea = tl.exp(tl.where(idx[:, None] > s, cb - c_s[None, :], float("-inf")))
            column = idx[None, :] == s
            A_rb = tl.where(column, tl.sum(r * er * b_s[None, :], axis=1)[:, None], A_rb)
            A_rk = tl.where(column, tl.sum(r * er * k_s[None, :], axis=1)[:, None], A_rk)
            A_ab = tl.where(column, tl.sum(a * ea * b_s[None, :], axis=1)[:, None], A_ab)
            A_ak = tl.where(column, tl.sum(a * ea * k_s[None, :], axis=1)[:, None], A_ak)
    return (tl.where(causal, A_rb, 0.0), tl.where(causal, A_rk, 0.0),
            tl.where(strict, A_ab, 0.0), tl.where(strict, A_ak, 0.0))


@triton.jit
def _scores_bwd(dA_rb, dA_rk, dA_ab, dA_ak, r, k, a, b, c, cb, gamma, max_decay, Q: tl.constexpr,
                PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    """Gradients of r, k, a, b and of c, cb through the score matrices, given their (masked) gradients."""
    idx = tl.arange(0, Q)
    if tl.min(gamma, axis=0) >= -max_decay:
        # The mid point m cancels in every entry, so no gradient flows through it.
        mid = 0.5 * gamma[None, :]
        grow = tl.exp(mid - c)
        up_r, up_a = tl.exp(c - mid), tl.exp(cb - mid)
        rq, aq, bq, kq = r * up_r, a * up_a, b * grow, k * grow
        d_rq = _dot(dA_rb, bq, PRECISION, EMULATE) + _dot(dA_rk, kq, PRECISION, EMULATE)
        d_aq = _dot(dA_ab, bq, PRECISION, EMULATE) + _dot(dA_ak, kq, PRECISION, EMULATE)
        d_bq = (_dot(tl.trans(dA_rb), rq, PRECISION, EMULATE)
                + _dot(tl.trans(dA_ab), aq, PRECISION, EMULATE))
        d_kq = (_dot(tl.trans(dA_rk), rq, PRECISION, EMULATE)
                + _dot(tl.trans(dA_ak), aq, PRECISION, EMULATE))
        dr, da, db, dk = d_rq * up_r, d_aq * up_a, d_bq * grow, d_kq * grow
        dc = d_rq * rq - d_bq * bq - d_kq * kq
        dcb = d_aq * aq
    else:
        dr = tl.zeros(r.shape, dtype=tl.float32)
        da = tl.zeros(r.shape, dtype=tl.float32)
        db = tl.zeros(r.shape, dtype=tl.float32)
        dk = tl.zeros(r.shape, dtype=tl.float32)
        dc = tl.zeros(r.shape, dtype=tl.float32)
        dcb = tl.zeros(r.shape, dtype=tl.float32)
        for s in range(0, Q):
            row = idx[:, None] == s  # (helpers are not called inside loops: the interpreter is slow at calls)
            b_s = tl.sum(tl.where(row, b, 0.0), axis=0)
            k_s = tl.sum(tl.where(row, k, 0.0), axis=0)
            c_s = tl.sum(tl.where(row, c, 0.0), axis=0)
            er = tl.exp(tl.where(idx[:, None] >= s, c - c_s[None, :], float("-inf")))
            ea = tl.exp(tl.where(idx[:, None] > s, cb - c_s[None, :], float("-inf")))
            column = idx[None, :] == s
            g_rb = tl.sum(tl.where(column, dA_rb, 0.0), axis=1)[:, None]  # dA_rb[:, s]
            g_rk = tl.sum(tl.where(column, dA_rk, 0.0), axis=1)[:, None]
            g_ab = tl.sum(tl.where(column, dA_ab, 0.0), axis=1)[:, None]
            g_ak = tl.sum(tl.where(column, dA_ak, 0.0), axis=1)[:, None]
            via_r = (g_rb * b_s[None, :] + g_rk * k_s[None, :]) * er  # d A / d r_t, per t
            via_a = (g_ab * b_s[None, :] + g_ak * k_s[None, :]) * ea
            dr += via_r
            da += via_a
            dc += r * via_r  # the query side of exp(c_t - c_s) ...
            dcb += a * via_a
            # ... and the key side, all on row s.
            dc -= tl.where(row, tl.sum(r * via_r + a * via_a, axis=0)[None, :], 0.0)
            db += tl.where(row, tl.sum(r * er * g_rb + a * ea * g_ab, axis=0)[None, :], 0.0)
            dk += tl.where(row, tl.sum(r * er * g_rk + a * ea * g_ak, axis=0)[None, :], 0.0)
    return dr, dk, da, db, dc, dcb


@triton.jit
def _unit_lower_inverse(A, Q: tl.constexpr):
    """(I - A)^-1 for a strictly lower-triangular A, by forward substitution: row t is e_t + sum_{s<t} A[t, s] row s
    (rows s < t are final when row t is formed, and A[t, s] = 0 for s >= t)."""
    idx = tl.arange(0, Q)
    inv = (idx[:, None] == idx[None, :]).to(tl.float32)
    for t in range(1, Q):
        row = idx[:, None] == t
        a_t = tl.sum(tl.where(row, A, 0.0), axis=0)  # A[t, :]
        inv += tl.where(row, tl.sum(a_t[:, None] * inv, axis=0)[None, :], 0.0)
    return inv


@triton.jit
def _chunk_setup(r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, bidx, h, chunk, length, heads, key_dim, max_decay,
                 Q: tl.constexpr, BK: tl.constexpr,
                 PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    r = _load_chunk(r_ptr, bidx, h, chunk, length, heads, key_dim, 0, Q, BK)
    w = _load_chunk(w_ptr, bidx, h, chunk, length, heads, key_dim, 0, Q, BK)
    k = _load_chunk(k_ptr, bidx, h, chunk, length, heads, key_dim, 0, Q, BK)
    a = _load_chunk(a_ptr, bidx, h, chunk, length, heads, key_dim, 0, Q, BK)
    b = _load_chunk(b_ptr, bidx, h, chunk, length, heads, key_dim, 0, Q, BK)
    c, cb, gamma = _decays(w, Q)
    A_rb, A_rk, A_ab, A_ak = _scores(r, k, a, b, c, cb, gamma, max_decay, Q, PRECISION, EMULATE)
    return r, k, a, b, c, cb, gamma, A_rb, A_rk, A_ab, A_ak


@triton.jit
def _fwd_intra_kernel(r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, W_ptr, U0_ptr, R_ptr, Y0_ptr,
                      length, heads, key_dim, value_dim, num_chunks, max_decay,
                      Q: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    chunk, pid_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    bidx, h = pid_bh // heads, pid_bh % heads
    r, k, a, b, c, cb, gamma, A_rb, A_rk, A_ab, A_ak = _chunk_setup(
        r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, bidx, h, chunk, length, heads, key_dim, max_decay, Q, BK,
        PRECISION, EMULATE)
    P_inv = _unit_lower_inverse(A_ab, Q)
    v = _load_chunk(v_ptr, bidx, h, chunk, length, heads, value_dim, 0, Q, BV)
    W = _dot(P_inv, a * tl.exp(cb), PRECISION, EMULATE)  # (Q, BK)
    U0 = _dot(P_inv, _dot(A_ak, v, PRECISION, EMULATE), PRECISION, EMULATE)  # (Q, BV)
    R = r * tl.exp(c) + _dot(A_rb, W, PRECISION, EMULATE)
    Y0 = _dot(A_rb, U0, PRECISION, EMULATE) + _dot(A_rk, v, PRECISION, EMULATE)
    rows = (pid_bh * num_chunks + chunk) * Q + tl.arange(0, Q)
    ki, vi = tl.arange(0, BK), tl.arange(0, BV)
    _put(W_ptr, 0, rows, ki, BK, W)
    _put(R_ptr, 0, rows, ki, BK, R)
    _put(U0_ptr, 0, rows, vi, BV, U0)
    _put(Y0_ptr, 0, rows, vi, BV, Y0)


@triton.jit
def _fwd_state_kernel(w_ptr, k_ptr, v_ptr, b_ptr, W_ptr, U0_ptr, R_ptr, Y0_ptr, h0_ptr, y_ptr, hT_ptr,
                      states_ptr, u_ptr,
                      length, heads, key_dim, value_dim, num_chunks,
                      Q: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BVS: tl.constexpr,
                      HAS_H0: tl.constexpr, SAVE: tl.constexpr,
                      PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    pid_v, pid_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    bidx, h = pid_bh // heads, pid_bh % heads
    vi = pid_v * BVS + tl.arange(0, BVS)  # this program's value rows
    ki = tl.arange(0, BK)
    m_vk = (vi[:, None] < value_dim) & (ki[None, :] < key_dim)
    state_off = (pid_bh * value_dim + vi[:, None]) * key_dim + ki[None, :]  # (B*H, V, K) contiguous
    if HAS_H0:
        S = tl.load(h0_ptr + state_off, mask=m_vk, other=0.0)
    else:
        S = tl.zeros((BVS, BK), dtype=tl.float32)
    for chunk in range(0, num_chunks):
        if SAVE:
            _put(states_ptr, (pid_bh * num_chunks + chunk) * BV * BK, vi, ki, BK, S)
        rows = (pid_bh * num_chunks + chunk) * Q + tl.arange(0, Q)
        w = _load_chunk(w_ptr, bidx, h, chunk, length, heads, key_dim, 0, Q, BK)
        c, _, gamma = _decays(w, Q)
        to_end = tl.exp(gamma[None, :] - c)
        S_t = tl.trans(S)
        u = _dot(_tile(W_ptr, 0, rows, ki, BK), S_t, PRECISION, EMULATE) + _tile(U0_ptr, 0, rows, vi, BV)
        if SAVE:
            _put(u_ptr, 0, rows, vi, BV, u)
        y = _dot(_tile(R_ptr, 0, rows, ki, BK), S_t, PRECISION, EMULATE) + _tile(Y0_ptr, 0, rows, vi, BV)
        _store_chunk(y_ptr, y, bidx, h, chunk, length, heads, value_dim, pid_v * BVS, Q, BVS)
        b_end = _load_chunk(b_ptr, bidx, h, chunk, length, heads, key_dim, 0, Q, BK) * to_end
        k_end = _load_chunk(k_ptr, bidx, h, chunk, length, heads, key_dim, 0, Q, BK) * to_end
        v = _load_chunk(v_ptr, bidx, h, chunk, length, heads, value_dim, pid_v * BVS, Q, BVS)
        S = (S * tl.exp(gamma)[None, :] + _dot(tl.trans(u), b_end, PRECISION, EMULATE)
             + _dot(tl.trans(v), k_end, PRECISION, EMULATE))
    tl.store(hT_ptr + state_off, S, mask=m_vk)


@triton.jit
def _bwd_intra_kernel(r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, dy_ptr, Gy_ptr, Bt_ptr,
                      length, heads, key_dim, value_dim, num_chunks, max_decay,
                      Q: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    chunk, pid_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    bidx, h = pid_bh // heads, pid_bh % heads
    r, k, a, b, c, cb, gamma, A_rb, A_rk, A_ab, A_ak = _chunk_setup(
        r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, bidx, h, chunk, length, heads, key_dim, max_decay, Q, BK,
        PRECISION, EMULATE)
    P_inv_t = tl.trans(_unit_lower_inverse(A_ab, Q))
    dy = _load_chunk(dy_ptr, bidx, h, chunk, length, heads, value_dim, 0, Q, BV)
    Gy = _dot(P_inv_t, _dot(tl.trans(A_rb), dy, PRECISION, EMULATE), PRECISION, EMULATE)
    Bt = _dot(P_inv_t, b * tl.exp(gamma[None, :] - c), PRECISION, EMULATE)
    rows = (pid_bh * num_chunks + chunk) * Q + tl.arange(0, Q)
    _put(Gy_ptr, 0, rows, tl.arange(0, BV), BV, Gy)
    _put(Bt_ptr, 0, rows, tl.arange(0, BK), BK, Bt)


@triton.jit
def _bwd_state_kernel(r_ptr, w_ptr, a_ptr, dy_ptr, Gy_ptr, Bt_ptr, dhT_ptr, dh0_ptr, dends_ptr, dz_ptr,
                      length, heads, key_dim, value_dim, num_chunks,
                      Q: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BVS: tl.constexpr,
                      HAS_DHT: tl.constexpr,
                      PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    pid_v, pid_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    bidx, h = pid_bh // heads, pid_bh % heads
    vi = pid_v * BVS + tl.arange(0, BVS)
    ki = tl.arange(0, BK)
    m_vk = (vi[:, None] < value_dim) & (ki[None, :] < key_dim)
    state_off = (pid_bh * value_dim + vi[:, None]) * key_dim + ki[None, :]
    if HAS_DHT:
        dS = tl.load(dhT_ptr + state_off, mask=m_vk, other=0.0)
    else:
        dS = tl.zeros((BVS, BK), dtype=tl.float32)
    for j in range(0, num_chunks):
        chunk = num_chunks - 1 - j
        _put(dends_ptr, (pid_bh * num_chunks + chunk) * BV * BK, vi, ki, BK, dS)  # dL/d(state at chunk end)
        rows = (pid_bh * num_chunks + chunk) * Q + tl.arange(0, Q)
        w = _load_chunk(w_ptr, bidx, h, chunk, length, heads, key_dim, 0, Q, BK)
        c, cb, gamma = _decays(w, Q)
        aw = _load_chunk(a_ptr, bidx, h, chunk, length, heads, key_dim, 0, Q, BK) * tl.exp(cb)
        rw = _load_chunk(r_ptr, bidx, h, chunk, length, heads, key_dim, 0, Q, BK) * tl.exp(c)
        dy = _load_chunk(dy_ptr, bidx, h, chunk, length, heads, value_dim, pid_v * BVS, Q, BVS)
        dz_t = (_dot(dS, tl.trans(_tile(Bt_ptr, 0, rows, ki, BK)), PRECISION, EMULATE)
                + tl.trans(_tile(Gy_ptr, 0, rows, vi, BV)))  # (BVS, Q)
        _put(dz_ptr, 0, rows, vi, BV, tl.trans(dz_t))
        dS = (dS * tl.exp(gamma)[None, :] + _dot(dz_t, aw, PRECISION, EMULATE)
              + _dot(tl.trans(dy), rw, PRECISION, EMULATE))
    tl.store(dh0_ptr + state_off, dS, mask=m_vk)


@triton.jit
def _bwd_grads_kernel(r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, dy_ptr, states_ptr, dends_ptr, u_ptr, dz_ptr,
                      dr_ptr, dw_ptr, dk_ptr, dv_ptr, da_ptr, db_ptr,
                      length, heads, key_dim, value_dim, num_chunks, max_decay,
                      Q: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    chunk, pid_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    bidx, h = pid_bh // heads, pid_bh % heads
    idx = tl.arange(0, Q)
    r, k, a, b, c, cb, gamma, A_rb, A_rk, A_ab, A_ak = _chunk_setup(
        r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, bidx, h, chunk, length, heads, key_dim, max_decay, Q, BK,
        PRECISION, EMULATE)
    v = _load_chunk(v_ptr, bidx, h, chunk, length, heads, value_dim, 0, Q, BV)
    dy = _load_chunk(dy_ptr, bidx, h, chunk, length, heads, value_dim, 0, Q, BV)
    vi, ki = tl.arange(0, BV), tl.arange(0, BK)
    base = (pid_bh * num_chunks + chunk) * BV * BK
    S = _tile(states_ptr, base, vi, ki, BK)  # state at the chunk's start, (BV, BK)
    dS_end = _tile(dends_ptr, base, vi, ki, BK)  # gradient of the state at its end
    e_c, e_cb = tl.exp(c), tl.exp(cb)
    to_end = tl.exp(gamma[None, :] - c)
    rw, aw, b_end, k_end = r * e_c, a * e_cb, b * to_end, k * to_end

    rows = (pid_bh * num_chunks + chunk) * Q + idx
    u = _tile(u_ptr, 0, rows, vi, BV)  # the removed values, from the forward
    dz = _tile(dz_ptr, 0, rows, vi, BV)  # P^-T du, from the sequential backward
    d_rw = _dot(dy, S, PRECISION, EMULATE)  # (Q, BK)
    d_aw = _dot(dz, S, PRECISION, EMULATE)
    d_bend = _dot(u, dS_end, PRECISION, EMULATE)
    d_kend = _dot(v, dS_end, PRECISION, EMULATE)
    dv = (_dot(tl.trans(A_rk), dy, PRECISION, EMULATE)
          + _dot(tl.trans(A_ak), dz, PRECISION, EMULATE)
          + _dot(k_end, tl.trans(dS_end), PRECISION, EMULATE))
    causal = idx[:, None] >= idx[None, :]
    strict = idx[:, None] > idx[None, :]
    u_t, v_t = tl.trans(u), tl.trans(v)
    dA_rb = tl.where(causal, _dot(dy, u_t, PRECISION, EMULATE), 0.0)
    dA_rk = tl.where(causal, _dot(dy, v_t, PRECISION, EMULATE), 0.0)
    dA_ab = tl.where(strict, _dot(dz, u_t, PRECISION, EMULATE), 0.0)
    dA_ak = tl.where(strict, _dot(dz, v_t, PRECISION, EMULATE), 0.0)
    dr, dk, da, db, dc, dcb = _scores_bwd(dA_rb, dA_rk, dA_ab, dA_ak, r, k, a, b, c, cb, gamma, max_decay, Q,
                                          PRECISION, EMULATE)
    dr += d_rw * e_c
    da += d_aw * e_cb
    db += d_bend * to_end
    dk += d_kend * to_end
    dc += d_rw * rw - d_bend * b_end - d_kend * k_end
    dcb += d_aw * aw
    d_gamma = tl.exp(gamma) * tl.sum(S * dS_end, axis=0) + tl.sum(d_bend * b_end + d_kend * k_end, axis=0)
    # w_j enters c_t for t >= j, cb_t for t > j and g: reverse cumulative sums.
    dw = (tl.sum(dc, axis=0)[None, :] - tl.cumsum(dc, axis=0) + dc
          + tl.sum(dcb, axis=0)[None, :] - tl.cumsum(dcb, axis=0) + d_gamma[None, :])
    floored = _load_chunk(w_ptr, bidx, h, chunk, length, heads, key_dim, 0, Q, BK) < LOG_DECAY_FLOOR
    dw = tl.where(floored, 0.0, dw)
    _store_chunk(dr_ptr, dr, bidx, h, chunk, length, heads, key_dim, 0, Q, BK)
    _store_chunk(dw_ptr, dw, bidx, h, chunk, length, heads, key_dim, 0, Q, BK)
    _store_chunk(dk_ptr, dk, bidx, h, chunk, length, heads, key_dim, 0, Q, BK)
    _store_chunk(da_ptr, da, bidx, h, chunk, length, heads, key_dim, 0, Q, BK)
    _store_chunk(db_ptr, db, bidx, h, chunk, length, heads, key_dim, 0, Q, BK)
    _store_chunk(dv_ptr, dv, bidx, h, chunk, length, heads, value_dim, 0, Q, BV)


# Whether these kernels run under Triton's interpreter (decided when this module was imported).
_INTERPRETED = type(_fwd_intra_kernel).__name__ == "InterpretedFunction"


def _precision(x) -> str:
    """Products for inputs of x's dtype: float32 accuracy (3xTF32) for float32 inputs; tf32 operands for bf16 and
    float16 (bf16 operands would round the decayed keys and queries, the inverse and the state to 8 bits: about 3x
    the error of tf32 at the parity tests' sizes, beyond the bf16 tolerance; float16 cannot hold the factored
    operands). Exact float32 ("ieee") products would run on the CUDA cores and spill registers heavily."""
    return "tf32x3" if x.dtype == torch.float32 else "tf32"


def _sizes(r, v):
    batch, length, heads, key_dim = r.shape
    value_dim = v.shape[-1]
    block_k = max(16, triton.next_power_of_2(key_dim))
    block_v = max(16, triton.next_power_of_2(value_dim))
    return batch, length, heads, key_dim, value_dim, block_k, block_v, triton.cdiv(length, CHUNK)


def _forward(r, w, k, v, a, b, h0, save: bool):
    batch, length, heads, key_dim, value_dim, block_k, block_v, num_chunks = _sizes(r, v)
    dev, f32 = r.device, torch.float32
    rows = batch * heads * num_chunks * CHUNK
    W, R = torch.empty(rows, block_k, device=dev, dtype=f32), torch.empty(rows, block_k, device=dev, dtype=f32)
    U0, Y0 = torch.empty(rows, block_v, device=dev, dtype=f32), torch.empty(rows, block_v, device=dev, dtype=f32)
    dots = dict(PRECISION=_precision(r), EMULATE=_INTERPRETED)
    common = (length, heads, key_dim, value_dim, num_chunks)
    _fwd_intra_kernel[(num_chunks, batch * heads)](
        r, w, k, v, a, b, W, U0, R, Y0, *common, float(FACTORED_MAX_DECAY), Q=CHUNK, BK=block_k, BV=block_v, **dots,
        num_warps=8)
    y = torch.empty(batch, length, heads, value_dim, device=dev, dtype=r.dtype)
    hT = torch.empty(batch, heads, value_dim, key_dim, device=dev, dtype=f32)
    states = torch.empty(batch * heads * num_chunks, block_v, block_k, device=dev, dtype=f32) if save else None
    u = torch.empty(rows, block_v, device=dev, dtype=f32) if save else None
    block_vs = min(STATE_BLOCK_V, block_v)
    _fwd_state_kernel[(triton.cdiv(value_dim, block_vs), batch * heads)](
        w, k, v, b, W, U0, R, Y0, h0, y, hT, states, u, *common,
        Q=CHUNK, BK=block_k, BV=block_v, BVS=block_vs, HAS_H0=h0 is not None, SAVE=save, **dots,
        num_warps=4, num_stages=STATE_STAGES)
    return y, hT, states, u


class _ChunkedWKV7Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, w, k, v, a, b, h0):
        y, hT, states, u = _forward(r, w, k, v, a, b, h0, save=True)
        ctx.save_for_backward(r, w, k, v, a, b, h0, states, u)
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        refuse_double_backward("wkv7", "triton_chunked")
        r, w, k, v, a, b, h0, states, u = ctx.saved_tensors
        batch, length, heads, key_dim, value_dim, block_k, block_v, num_chunks = _sizes(r, v)
        dev, f32 = r.device, torch.float32
        dy = torch.zeros_like(v) if dy is None else dy.contiguous()
        dhT = dhT.contiguous() if dhT is not None else None
        dots = dict(PRECISION=_precision(r), EMULATE=_INTERPRETED)
        common = (length, heads, key_dim, value_dim, num_chunks)
        rows = batch * heads * num_chunks * CHUNK
        Gy = torch.empty(rows, block_v, device=dev, dtype=f32)
        Bt = torch.empty(rows, block_k, device=dev, dtype=f32)
        _bwd_intra_kernel[(num_chunks, batch * heads)](
            r, w, k, a, b, dy, Gy, Bt, *common, float(FACTORED_MAX_DECAY), Q=CHUNK, BK=block_k, BV=block_v,
            **dots, num_warps=8)
        dends, dz = torch.empty_like(states), torch.empty_like(u)
        dh0 = torch.empty(batch, heads, value_dim, key_dim, device=dev, dtype=f32)
        block_vs = min(STATE_BLOCK_V, block_v)
        _bwd_state_kernel[(triton.cdiv(value_dim, block_vs), batch * heads)](
            r, w, a, dy, Gy, Bt, dhT, dh0, dends, dz, *common,
            Q=CHUNK, BK=block_k, BV=block_v, BVS=block_vs, HAS_DHT=dhT is not None, **dots,
            num_warps=4, num_stages=STATE_STAGES)
        dr, dw, dk, da, db = (torch.empty(r.shape, device=dev, dtype=f32) for _ in range(5))
        dv = torch.empty(v.shape, device=dev, dtype=f32)
        _bwd_grads_kernel[(num_chunks, batch * heads)](
            r, w, k, v, a, b, dy, states, dends, u, dz, dr, dw, dk, dv, da, db, *common, float(FACTORED_MAX_DECAY),
            Q=CHUNK, BK=block_k, BV=block_v, **dots, num_warps=8)
        return (dr.to(r.dtype), dw.to(w.dtype), dk.to(k.dtype), dv.to(v.dtype), da.to(a.dtype), db.to(b.dtype),
                dh0.to(h0.dtype) if h0 is not None else None)


def wkv7(r, w, k, v, a, b, *, initial_state=None, reset=None):
    """RWKV-7 WKV over (B, T, H, *); returns (y, final_state). Formulas in ``reference.py``."""
    if reset is not None:  # supports() declines it; reached only by a direct call
        raise ValueError("wkv7: the triton_chunked backend takes no reset input; the triton, chunked and "
                         "reference backends do")
    check_inputs(r, w, k, v, a, b, initial_state)
    batch, length, heads, key_dim = r.shape
    if length <= 1:  # decoding: the recurrent kernel's single fused step
        return fused.wkv7(r, w, k, v, a, b, initial_state=initial_state)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    # The kernels index the inputs as contiguous (B, T, H, *); the model's inputs already are.
    r, w, k, v, a, b = (t.contiguous() for t in (r, w, k, v, a, b))
    inputs = (r, w, k, v, a, b, initial_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _ChunkedWKV7Fn.apply(r, w, k, v, a, b, h0)
    y, hT, _, _ = _forward(r, w, k, v, a, b, h0, save=False)
    return y, hT
