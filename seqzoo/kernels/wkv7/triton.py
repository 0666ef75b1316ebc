"""Triton backend of ``wkv7`` (RWKV-7): fused recurrent forward, checkpointed backward, one-launch decode step.

Same signature and semantics as ``reference.py``: per head, with S a V x K matrix and w the log decay,

    S_t = S_{t-1} diag(exp(w_t)) + (S_{t-1} a_t) b_t^T + v_t k_t^T,        y_t = S_t r_t

Forward: one program per (block of BV value rows, batch * head) walks the sequence keeping its (BV, K) slice of
the state in registers, so HBM traffic is the inputs and outputs once, plus (for a training call) the state saved
every CHECKPOINT steps. With T == 1 the same kernel is the decode step: state update and output in one launch.

Backward, one program per (batch, head) holding the whole (V, K) state (the K-vector gradients sum over all value
rows), with dS = dL/dS_t carried from the end:

    dS  += dy_t r_t^T;            dr_t = S_t^T dy_t;   dv_t = dS k_t;   dk_t = dS^T v_t
    dw_t = exp(w_t) * sum_v S_{t-1} * dS;   da_t = S_{t-1}^T (dS b_t);   db_t = dS^T (S_{t-1} a_t)
    dS   = dS diag(exp(w_t)) + (dS b_t) a_t^T                                                  (to dL/dS_{t-1})

S_{t-1} is needed in reverse order: segments of CHECKPOINT steps are taken last to first; each is re-run forward
from its saved state, writing every step's state to a per-program scratch (CHECKPOINT * V * K floats), then walked
backwards.

Resets (``reset`` (B, T), True at a document's first token): the state entering a reset step is multiplied by 0
before the update, in the forward and in the backward's re-run (so the scratch holds the state the step really
read), and the gradient passed on to the previous step is multiplied by the same 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seqzoo.kernels.reset import check_reset
from seqzoo.kernels.triton_support import refuse_double_backward

from .reference import check_inputs

CHECKPOINT = 32  # steps per saved state; untuned (no GPU was available when this was written)
FWD_BLOCK_V = 32


@triton.jit
def _load_step(r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, v_ptr, key_off, val_off, mk, mv):
    r = tl.load(r_ptr + key_off, mask=mk, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + key_off, mask=mk, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + key_off, mask=mk, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + key_off, mask=mk, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + key_off, mask=mk, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + val_off, mask=mv, other=0.0).to(tl.float32)
    return r, w, k, a, b, v


@triton.jit
def _update(S, w, k, a, b, v):
    # S (BV, BK) -> S diag(exp(w)) + (S a) b^T + v k^T
    sa = tl.sum(S * a[None, :], axis=1)
    return S * tl.exp(w)[None, :] + sa[:, None] * b[None, :] + v[:, None] * k[None, :]


@triton.jit
def _keep(keep_ptr, bidx, length, t, HAS_RESET: tl.constexpr):
    # 0.0 where step t of row bidx begins a document (its entering state is zero), else 1.0
    if HAS_RESET:
        return tl.load(keep_ptr + bidx * length + t)
    return 1.0


@triton.jit
def _wkv7_fwd_kernel(r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, h0_ptr, keep_ptr, y_ptr, hT_ptr, ckpt_ptr,
                     length, heads, key_dim, value_dim, num_ckpts,
                     BV: tl.constexpr, BK: tl.constexpr, CKPT: tl.constexpr,
                     HAS_H0: tl.constexpr, SAVE: tl.constexpr, HAS_RESET: tl.constexpr):
    pid_v, pid_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    bidx, h = pid_bh // heads, pid_bh % heads
    vi = pid_v * BV + tl.arange(0, BV)
    ki = tl.arange(0, BK)
    mv, mk = vi < value_dim, ki < key_dim
    m_vk = mv[:, None] & mk[None, :]
    state_off = (pid_bh * value_dim + vi[:, None]) * key_dim + ki[None, :]  # (B*H, V, K) contiguous
    if HAS_H0:
        S = tl.load(h0_ptr + state_off, mask=m_vk, other=0.0)
    else:
        S = tl.zeros((BV, BK), dtype=tl.float32)
    row = bidx * length * heads + h  # inputs: contiguous (B, T, H, K) and (B, T, H, V); row of step t = row + t*H
    r, w, k, a, b, v = _load_step(r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, v_ptr,
                                  row * key_dim + ki, row * value_dim + vi, mk, mv)
    for t in range(0, length):
        if SAVE:
            if t % CKPT == 0:
                ckpt = ((pid_bh * num_ckpts + t // CKPT) * value_dim + vi[:, None]) * key_dim + ki[None, :]
                tl.store(ckpt_ptr + ckpt, S, mask=m_vk)
        # Issue the next step's loads before this step's arithmetic, so that their latency overlaps it: the loop
        # is a chain of T dependent steps, bound by latency rather than bandwidth (Triton does not pipeline these
        # vector loads by itself; checked in the PTX).
        nxt = row + heads
        more_k = mk & (tl.full((BK,), t + 1, tl.int32) < length)
        more_v = mv & (tl.full((BV,), t + 1, tl.int32) < length)
        r_n, w_n, k_n, a_n, b_n, v_n = _load_step(r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, v_ptr,
                                                  nxt * key_dim + ki, nxt * value_dim + vi, more_k, more_v)
        if HAS_RESET:
            S = S * _keep(keep_ptr, bidx, length, t, HAS_RESET)
        S = _update(S, w, k, a, b, v)
        y = tl.sum(S * r[None, :], axis=1)
        tl.store(y_ptr + row * value_dim + vi, y.to(y_ptr.dtype.element_ty), mask=mv)
        row = nxt
        r, w, k, a, b, v = r_n, w_n, k_n, a_n, b_n, v_n
    tl.store(hT_ptr + state_off, S, mask=m_vk)


@triton.jit
def _wkv7_bwd_kernel(r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, keep_ptr, dy_ptr, dhT_ptr, ckpt_ptr, scratch_ptr,
                     dr_ptr, dw_ptr, dk_ptr, dv_ptr, da_ptr, db_ptr, dh0_ptr,
                     length, heads, key_dim, value_dim, num_ckpts,
                     BV: tl.constexpr, BK: tl.constexpr, CKPT: tl.constexpr, HAS_DHT: tl.constexpr,
                     HAS_RESET: tl.constexpr):
    pid_bh = tl.program_id(0).to(tl.int64)
    bidx, h = pid_bh // heads, pid_bh % heads
    vi = tl.arange(0, BV)
    ki = tl.arange(0, BK)
    mv, mk = vi < value_dim, ki < key_dim
    m_vk = mv[:, None] & mk[None, :]
    state_off = (pid_bh * value_dim + vi[:, None]) * key_dim + ki[None, :]
    scratch = scratch_ptr + pid_bh * CKPT * BV * BK + vi[:, None] * BK + ki[None, :]  # CKPT states of (BV, BK)
    if HAS_DHT:
        dS = tl.load(dhT_ptr + state_off, mask=m_vk, other=0.0)
    else:
        dS = tl.zeros((BV, BK), dtype=tl.float32)
    for j in range(0, num_ckpts):
        seg = num_ckpts - 1 - j
        start = seg * CKPT
        count = tl.minimum(length - start, CKPT)
        ckpt = ((pid_bh * num_ckpts + seg) * value_dim + vi[:, None]) * key_dim + ki[None, :]
        S = tl.load(ckpt_ptr + ckpt, mask=m_vk, other=0.0)
        tl.debug_barrier()  # the previous segment's reads of the scratch are done before it is overwritten
        for i in range(0, count):
            if HAS_RESET:
                S = S * _keep(keep_ptr, bidx, length, start + i, HAS_RESET)
            tl.store(scratch + i * BV * BK, S)  # S_{t-1} for t = start + i (as step t reads it, after a reset)
            row = (bidx * length + start + i) * heads + h
            r, w, k, a, b, v = _load_step(r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, v_ptr,
                                          row * key_dim + ki, row * value_dim + vi, mk, mv)
            S = _update(S, w, k, a, b, v)
        tl.debug_barrier()
        for i2 in range(0, count):
            i = count - 1 - i2
            row = (bidx * length + start + i) * heads + h
            key_off, val_off = row * key_dim + ki, row * value_dim + vi
            r, w, k, a, b, v = _load_step(r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, v_ptr, key_off, val_off, mk, mv)
            dy = tl.load(dy_ptr + val_off, mask=mv, other=0.0).to(tl.float32)
            S_prev = tl.load(scratch + i * BV * BK)
            S_t = _update(S_prev, w, k, a, b, v)
            dS += dy[:, None] * r[None, :]
            decay = tl.exp(w)
            dSb = tl.sum(dS * b[None, :], axis=1)  # (BV,)
            sa = tl.sum(S_prev * a[None, :], axis=1)  # (BV,)
            tl.store(dr_ptr + key_off, tl.sum(S_t * dy[:, None], axis=0), mask=mk)
            tl.store(dv_ptr + val_off, tl.sum(dS * k[None, :], axis=1), mask=mv)
            tl.store(dk_ptr + key_off, tl.sum(dS * v[:, None], axis=0), mask=mk)
            tl.store(dw_ptr + key_off, decay * tl.sum(S_prev * dS, axis=0), mask=mk)
            tl.store(da_ptr + key_off, tl.sum(S_prev * dSb[:, None], axis=0), mask=mk)
            tl.store(db_ptr + key_off, tl.sum(dS * sa[:, None], axis=0), mask=mk)
            dS = dS * decay[None, :] + dSb[:, None] * a[None, :]
            if HAS_RESET:
                dS = dS * _keep(keep_ptr, bidx, length, start + i, HAS_RESET)
    tl.store(dh0_ptr + state_off, dS, mask=m_vk)


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _forward(r, w, k, v, a, b, h0, keep, save: bool):
    batch, length, heads, key_dim = r.shape
    value_dim = v.shape[-1]
    dev = r.device
    num_ckpts = triton.cdiv(length, CHECKPOINT)
    y = torch.empty(batch, length, heads, value_dim, device=dev, dtype=r.dtype)
    hT = torch.empty(batch, heads, value_dim, key_dim, device=dev, dtype=torch.float32)
    ckpt = (torch.empty(batch * heads, num_ckpts, value_dim, key_dim, device=dev, dtype=torch.float32)
            if save else None)
    block_v = min(FWD_BLOCK_V, _block(value_dim))
    _wkv7_fwd_kernel[(triton.cdiv(value_dim, block_v), batch * heads)](
        r, w, k, v, a, b, h0, keep, y, hT, ckpt, length, heads, key_dim, value_dim, num_ckpts,
        BV=block_v, BK=_block(key_dim), CKPT=CHECKPOINT, HAS_H0=h0 is not None, SAVE=save,
        HAS_RESET=keep is not None,
    )
    return y, hT, ckpt


class _WKV7Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, w, k, v, a, b, h0, keep):
        y, hT, ckpt = _forward(r, w, k, v, a, b, h0, keep, save=True)
        ctx.save_for_backward(r, w, k, v, a, b, h0, keep, ckpt)
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        refuse_double_backward("wkv7", "triton")
        r, w, k, v, a, b, h0, keep, ckpt = ctx.saved_tensors
        batch, length, heads, key_dim = r.shape
        value_dim = v.shape[-1]
        block_v, block_k = _block(value_dim), _block(key_dim)
        dev, f32 = r.device, torch.float32
        dy = torch.zeros_like(v) if dy is None else dy.contiguous()
        dhT = dhT.contiguous() if dhT is not None else None
        scratch = torch.empty(batch * heads * CHECKPOINT * block_v * block_k, device=dev, dtype=f32)
        dr, dw, dk, da, db = (torch.empty(r.shape, device=dev, dtype=f32) for _ in range(5))
        dv = torch.empty(v.shape, device=dev, dtype=f32)
        dh0 = torch.empty(batch, heads, value_dim, key_dim, device=dev, dtype=f32)
        _wkv7_bwd_kernel[(batch * heads,)](
            r, w, k, v, a, b, keep, dy, dhT, ckpt, scratch, dr, dw, dk, dv, da, db, dh0,
            length, heads, key_dim, value_dim, ckpt.shape[1],
            BV=block_v, BK=block_k, CKPT=CHECKPOINT, HAS_DHT=dhT is not None, HAS_RESET=keep is not None,
            num_warps=4 if block_v * block_k <= 64 * 64 else 8,
        )
        return (dr.to(r.dtype), dw.to(w.dtype), dk.to(k.dtype), dv.to(v.dtype), da.to(a.dtype), db.to(b.dtype),
                dh0.to(h0.dtype) if h0 is not None else None, None)


def wkv7(r, w, k, v, a, b, *, initial_state=None, reset=None):
    """RWKV-7 WKV over (B, T, H, *); returns (y, final_state). Formulas in ``reference.py``; ``reset`` (B, T): the
    state entering a token marked True is zero."""
    check_inputs(r, w, k, v, a, b, initial_state)
    batch, length, heads, key_dim = r.shape
    reset = check_reset("wkv7", reset, batch, length)
    keep = None if reset is None else (~reset).float().contiguous()  # (B, T): 0 where a document begins
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    if length == 0:
        final = h0 if h0 is not None else r.new_zeros(batch, heads, v.shape[-1], key_dim, dtype=torch.float32)
        return r.new_zeros(batch, 0, heads, v.shape[-1]), final
    # The kernels index the inputs as contiguous (B, T, H, *); the model's inputs already are.
    r, w, k, v, a, b = (t.contiguous() for t in (r, w, k, v, a, b))
    inputs = (r, w, k, v, a, b, initial_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _WKV7Fn.apply(r, w, k, v, a, b, h0, keep)
    y, hT, _ = _forward(r, w, k, v, a, b, h0, keep, save=False)
    return y, hT
