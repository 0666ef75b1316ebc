"""Triton backend of ``selective_scan`` (Mamba-1): forward, backward and single-step decode kernels.

Same signature and semantics as ``reference.py`` (formulas there). One program owns a block of BD channels of one
batch row and walks the sequence in tiles of BT steps, carrying the (BD, N) state in registers:

  forward, per tile:  a = exp(delta A), w = delta u B          (BT, BD, N)
                      h = associative scan of h_t = a_t h_{t-1} + w_t over the tile's BT steps, with the carried
                          state folded into the first step (w_0 += a_0 h)
                      y = h . C + D u, times silu(z)
  backward, per tile in reverse order, with g_t = dL/dh_t:
                      g_t = dy'_t C_t + a_{t+1} g_{t+1}       a reverse associative scan (a_{t+1} from delta shifted)
                      a_t h_{t-1} = h_t - w_t                  so no shifted state is needed
                      ddelta = sum_n g (a h_{t-1}) A + g u B,  du = sum_n g delta B + D dy',  dA += g (a h_{t-1}) delta
                      dB_t, dC_t sum over the channel blocks of a row: float32 atomics into (B, T, N)

Memory: the forward of a training call saves the state at the start of every segment of SEGMENT_TILES tiles
(SEGMENT_TILES * BT steps). The backward takes segments last to first; for each it re-runs the forward from the
saved state, writing each tile's start state to a small per-program scratch (L2-resident), then walks the
segment's tiles in reverse. Saved memory is 1/(SEGMENT_TILES * BT) of storing every state.

Padding: steps past T are loaded as delta = 0, u = 0, which are identity steps, so a partial last tile needs no
special case. Decoding (T = 1 without gradients) uses one fused step kernel: state update and output in one launch.

Resets (``reset`` (B, T), True at a document's first token): the step's decay a_t is multiplied by 0 there, in the
forward, the backward's re-run and its reverse scan (a_{t+1}), and in d h_init = a_0 g_0; ``a_t h_{t-1}`` is then 0,
so no gradient crosses a document boundary either.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seqzoo.kernels.reset import check_reset
from seqzoo.kernels.triton_support import refuse_double_backward

from .reference import check_inputs

# Untuned defaults (no GPU was available when this was written): tiles of (BT, BD, N) = (16, 16, 16) float32
# keep a handful of live tiles per thread in registers at N = 16, Mamba's state size.
BLOCK_T = 16
BLOCK_D = 16
SEGMENT_TILES = 8
# A = -inf (a decay of exactly zero) enters as the most negative float32, as the reference reads it: a delta = 0
# step (a tile's padding, a decode step's identity) is then exp(0) = 1, not exp(0 * -inf) = nan.
FLOAT32_MIN = tl.constexpr(torch.finfo(torch.float32).min)
FWD_WARPS = 4
BWD_WARPS = 8


@triton.jit
def _linear_combine(a1, b1, a2, b2):
    # Composition of h -> a1 h + b1 then h -> a2 h + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _row(tile, rows, index):
    # tile[index] of a (BT, ...) tile, as a masked reduction (register tiles cannot be indexed dynamically).
    return tl.sum(tl.where(rows == index, tile, 0.0), axis=0)


@triton.jit
def _load_tile(u_ptr, dl_ptr, b_ptr, c_ptr, bidx, t, d, n, length, channels, state_size,
               sub, sut, sud, sdb, sdt, sdd, sbb, sbt, sbn, scb, sct, scn):
    # u, delta: (BT, BD); B, C: (BT, N); float32, zero (an identity step) outside the sequence.
    m_td = (t[:, None] < length) & (d[None, :] < channels)
    m_tn = (t[:, None] < length) & (n[None, :] < state_size)
    u = tl.load(u_ptr + bidx * sub + t[:, None] * sut + d[None, :] * sud, mask=m_td, other=0.0).to(tl.float32)
    dl = tl.load(dl_ptr + bidx * sdb + t[:, None] * sdt + d[None, :] * sdd, mask=m_td, other=0.0).to(tl.float32)
    bm = tl.load(b_ptr + bidx * sbb + t[:, None] * sbt + n[None, :] * sbn, mask=m_tn, other=0.0).to(tl.float32)
    cm = tl.load(c_ptr + bidx * scb + t[:, None] * sct + n[None, :] * scn, mask=m_tn, other=0.0).to(tl.float32)
    return u, dl, bm, cm


@triton.jit
def _keep_tile(keep_ptr, bidx, t, length, HAS_RESET: tl.constexpr):
    # (BT,): 0.0 at the steps that begin a document (their entering state is zero), 1.0 elsewhere and past the end
    if HAS_RESET:
        return tl.load(keep_ptr + bidx * length + t, mask=t < length, other=1.0)
    return tl.full(t.shape, 1.0, tl.float32)


@triton.jit
def _tile_states(h, dl, u, bm, A, rows, kp):
    # States after each of the tile's steps, from the state h before it: (BT, BD, N); also a and w.
    a = tl.exp(dl[:, :, None] * A[None, :, :]) * kp[:, None, None]
    w = (dl * u)[:, :, None] * bm[:, None, :]
    w_first = w + tl.where(rows[:, None, None] == 0, a * h[None, :, :], 0.0)
    _, hs = tl.associative_scan((a, w_first), 0, _linear_combine)
    return hs, a, w


@triton.jit
def _scan_fwd_kernel(u_ptr, dl_ptr, A_ptr, b_ptr, c_ptr, D_ptr, z_ptr, h0_ptr, keep_ptr, y_ptr, hT_ptr, ckpt_ptr,
                     length, channels, state_size, num_tiles,
                     sub, sut, sud, sdb, sdt, sdd, sbb, sbt, sbn, scb, sct, scn, szb, szt, szd,
                     syb, syt, syd, num_segments,
                     BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, SEGMENT: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_H0: tl.constexpr, SAVE: tl.constexpr,
                     HAS_RESET: tl.constexpr):
    pid_d, bidx = tl.program_id(0), tl.program_id(1).to(tl.int64)
    d = pid_d * BD + tl.arange(0, BD)
    n = tl.arange(0, BN)
    rows = tl.arange(0, BT)
    m_dn = (d[:, None] < channels) & (n[None, :] < state_size)
    A = tl.load(A_ptr + d[:, None] * state_size + n[None, :], mask=m_dn, other=0.0).to(tl.float32)
    A = tl.maximum(A, FLOAT32_MIN)  # (BD, N)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=d < channels, other=0.0).to(tl.float32)
    state_off = (bidx * channels + d[:, None]) * state_size + n[None, :]  # (B, Dm, N) contiguous
    if HAS_H0:
        h = tl.load(h0_ptr + state_off, mask=m_dn, other=0.0)
    else:
        h = tl.zeros((BD, BN), dtype=tl.float32)
    for i in range(0, num_tiles):
        if SAVE:
            if i % SEGMENT == 0:
                ckpt = ((bidx * num_segments + i // SEGMENT) * channels + d[:, None]) * state_size + n[None, :]
                tl.store(ckpt_ptr + ckpt, h, mask=m_dn)
        t = i * BT + rows
        u, dl, bm, cm = _load_tile(u_ptr, dl_ptr, b_ptr, c_ptr, bidx, t, d, n, length, channels, state_size,
                                   sub, sut, sud, sdb, sdt, sdd, sbb, sbt, sbn, scb, sct, scn)
        hs, a, w = _tile_states(h, dl, u, bm, A, rows, _keep_tile(keep_ptr, bidx, t, length, HAS_RESET))
        y = tl.sum(hs * cm[:, None, :], axis=2)  # (BT, BD)
        if HAS_D:
            y += Dv[None, :] * u
        m_td = (t[:, None] < length) & (d[None, :] < channels)
        if HAS_Z:
            z = tl.load(z_ptr + bidx * szb + t[:, None] * szt + d[None, :] * szd, mask=m_td, other=0.0)
            z = z.to(tl.float32)
            y = y * z / (1.0 + tl.exp(-z))
        tl.store(y_ptr + bidx * syb + t[:, None] * syt + d[None, :] * syd, y.to(y_ptr.dtype.element_ty), mask=m_td)
        h = _row(hs, rows[:, None, None], BT - 1)
    tl.store(hT_ptr + state_off, h, mask=m_dn)


@triton.jit
def _scan_bwd_kernel(u_ptr, dl_ptr, A_ptr, b_ptr, c_ptr, D_ptr, z_ptr, keep_ptr, dy_ptr, dhT_ptr, ckpt_ptr,
                     scratch_ptr,
                     du_ptr, ddl_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dh0_ptr,
                     length, channels, state_size, num_tiles, num_segments,
                     sub, sut, sud, sdb, sdt, sdd, sbb, sbt, sbn, scb, sct, scn, szb, szt, szd,
                     sgb, sgt, sgd,
                     BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, SEGMENT: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DHT: tl.constexpr, HAS_RESET: tl.constexpr):
    pid_d, bidx = tl.program_id(0), tl.program_id(1).to(tl.int64)
    d = pid_d * BD + tl.arange(0, BD)
    n = tl.arange(0, BN)
    rows = tl.arange(0, BT)
    m_dn = (d[:, None] < channels) & (n[None, :] < state_size)
    A = tl.load(A_ptr + d[:, None] * state_size + n[None, :], mask=m_dn, other=0.0).to(tl.float32)
    A = tl.maximum(A, FLOAT32_MIN)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=d < channels, other=0.0).to(tl.float32)
    state_off = (bidx * channels + d[:, None]) * state_size + n[None, :]
    # This program's scratch: SEGMENT tile-start states of (BD, BN), float32.
    scratch = scratch_ptr + ((bidx * tl.num_programs(0) + pid_d) * SEGMENT * BD + tl.arange(0, BD)[:, None]) * BN \
        + n[None, :]
    if HAS_DHT:
        g_next = tl.load(dhT_ptr + state_off, mask=m_dn, other=0.0)  # dL/dh at the step after the current tile
    else:
        g_next = tl.zeros((BD, BN), dtype=tl.float32)
    dA_acc = tl.zeros((BD, BN), dtype=tl.float32)
    dD_acc = tl.zeros((BD,), dtype=tl.float32)
    for j in range(0, num_segments):
        seg = num_segments - 1 - j
        first = seg * SEGMENT
        count = tl.minimum(num_tiles - first, SEGMENT)
        ckpt = ((bidx * num_segments + seg) * channels + d[:, None]) * state_size + n[None, :]
        h = tl.load(ckpt_ptr + ckpt, mask=m_dn, other=0.0)
        tl.debug_barrier()  # the previous segment's reads of the scratch are done before it is overwritten
        for r in range(0, count):
            tl.store(scratch + r * BD * BN, h)
            t = (first + r) * BT + rows
            u, dl, bm, cm = _load_tile(u_ptr, dl_ptr, b_ptr, c_ptr, bidx, t, d, n, length, channels, state_size,
                                       sub, sut, sud, sdb, sdt, sdd, sbb, sbt, sbn, scb, sct, scn)
            hs, a, w = _tile_states(h, dl, u, bm, A, rows, _keep_tile(keep_ptr, bidx, t, length, HAS_RESET))
            h = _row(hs, rows[:, None, None], BT - 1)
        tl.debug_barrier()
        for r2 in range(0, count):
            r = count - 1 - r2
            h = tl.load(scratch + r * BD * BN)
            t = (first + r) * BT + rows
            u, dl, bm, cm = _load_tile(u_ptr, dl_ptr, b_ptr, c_ptr, bidx, t, d, n, length, channels, state_size,
                                       sub, sut, sud, sdb, sdt, sdd, sbb, sbt, sbn, scb, sct, scn)
            hs, a, w = _tile_states(h, dl, u, bm, A, rows, _keep_tile(keep_ptr, bidx, t, length, HAS_RESET))
            m_td = (t[:, None] < length) & (d[None, :] < channels)
            dy = tl.load(dy_ptr + bidx * sgb + t[:, None] * sgt + d[None, :] * sgd, mask=m_td, other=0.0)
            dy = dy.to(tl.float32)
            if HAS_Z:
                y = tl.sum(hs * cm[:, None, :], axis=2)
                if HAS_D:
                    y += Dv[None, :] * u
                z = tl.load(z_ptr + bidx * szb + t[:, None] * szt + d[None, :] * szd, mask=m_td, other=0.0)
                z = z.to(tl.float32)
                sig = 1.0 / (1.0 + tl.exp(-z))
                dz = dy * y * sig * (1.0 + z * (1.0 - sig))
                tl.store(dz_ptr + (bidx * length + t[:, None]) * channels + d[None, :], dz, mask=m_td)
                dy = dy * z * sig  # gradient of the ungated output y' = h . C + D u
            # a_{t+1}: the next step's decay (1 past the end, where delta is masked to 0).
            tn = t + 1
            dl_next = tl.load(dl_ptr + bidx * sdb + tn[:, None] * sdt + d[None, :] * sdd,
                              mask=(tn[:, None] < length) & (d[None, :] < channels), other=0.0).to(tl.float32)
            a_next = tl.exp(dl_next[:, :, None] * A[None, :, :])
            if HAS_RESET:
                a_next = a_next * _keep_tile(keep_ptr, bidx, tn, length, HAS_RESET)[:, None, None]
            c = dy[:, :, None] * cm[:, None, :] + tl.where(rows[:, None, None] == BT - 1, a_next * g_next[None], 0.0)
            _, g = tl.associative_scan((a_next, c), 0, _linear_combine, reverse=True)  # (BT, BD, N)
            ah = hs - w  # a_t h_{t-1}
            g_ah = g * ah
            ddl = tl.sum(g_ah * A[None, :, :], axis=2) + u * tl.sum(g * bm[:, None, :], axis=2)
            du = dl * tl.sum(g * bm[:, None, :], axis=2)
            if HAS_D:
                du += dy * Dv[None, :]
                dD_acc += tl.sum(dy * u, axis=0)
            dA_acc += tl.sum(g_ah * dl[:, :, None], axis=0)
            tl.store(du_ptr + (bidx * length + t[:, None]) * channels + d[None, :], du, mask=m_td)
            tl.store(ddl_ptr + (bidx * length + t[:, None]) * channels + d[None, :], ddl, mask=m_td)
            m_tn = (t[:, None] < length) & (n[None, :] < state_size)
            dBt = tl.sum(g * (dl * u)[:, :, None], axis=1)  # (BT, N), this channel block's share
            dCt = tl.sum(hs * dy[:, :, None], axis=1)
            tl.atomic_add(dB_ptr + (bidx * length + t[:, None]) * state_size + n[None, :], dBt, mask=m_tn)
            tl.atomic_add(dC_ptr + (bidx * length + t[:, None]) * state_size + n[None, :], dCt, mask=m_tn)
            g_next = _row(g, rows[:, None, None], 0)
    # dL/dh_init = a_0 g_0.
    dl0 = tl.load(dl_ptr + bidx * sdb + d * sdd, mask=d < channels, other=0.0).to(tl.float32)
    a0 = tl.exp(dl0[:, None] * A)
    if HAS_RESET:
        a0 = a0 * tl.load(keep_ptr + bidx * length)
    tl.store(dh0_ptr + state_off, a0 * g_next, mask=m_dn)
    tl.store(dA_ptr + state_off, dA_acc, mask=m_dn)
    if HAS_D:
        tl.store(dD_ptr + bidx * channels + d, dD_acc, mask=d < channels)


@triton.jit
def _scan_step_kernel(u_ptr, dl_ptr, A_ptr, b_ptr, c_ptr, D_ptr, z_ptr, h0_ptr, keep_ptr, y_ptr, h1_ptr,
                      channels, state_size, sub, sud, sdb, sdd, sbb, sbn, scb, scn, szb, szd, syb, syd,
                      BD: tl.constexpr, BN: tl.constexpr,
                      HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_H0: tl.constexpr, HAS_RESET: tl.constexpr):
    # One decoding step for BD channels of one row: state update and output in one launch.
    pid_d, bidx = tl.program_id(0), tl.program_id(1).to(tl.int64)
    d = pid_d * BD + tl.arange(0, BD)
    n = tl.arange(0, BN)
    md = d < channels
    m_dn = md[:, None] & (n[None, :] < state_size)
    A = tl.load(A_ptr + d[:, None] * state_size + n[None, :], mask=m_dn, other=0.0).to(tl.float32)
    A = tl.maximum(A, FLOAT32_MIN)
    u = tl.load(u_ptr + bidx * sub + d * sud, mask=md, other=0.0).to(tl.float32)
    dl = tl.load(dl_ptr + bidx * sdb + d * sdd, mask=md, other=0.0).to(tl.float32)
    bm = tl.load(b_ptr + bidx * sbb + n * sbn, mask=n < state_size, other=0.0).to(tl.float32)
    cm = tl.load(c_ptr + bidx * scb + n * scn, mask=n < state_size, other=0.0).to(tl.float32)
    state_off = (bidx * channels + d[:, None]) * state_size + n[None, :]
    h = (dl * u)[:, None] * bm[None, :]
    if HAS_H0:
        decay = tl.exp(dl[:, None] * A)
        if HAS_RESET:
            decay = decay * tl.load(keep_ptr + bidx)  # (B, 1) keep: 0 when this token begins a document
        h += decay * tl.load(h0_ptr + state_off, mask=m_dn, other=0.0)
    y = tl.sum(h * cm[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + d, mask=md, other=0.0).to(tl.float32) * u
    if HAS_Z:
        z = tl.load(z_ptr + bidx * szb + d * szd, mask=md, other=0.0).to(tl.float32)
        y = y * z / (1.0 + tl.exp(-z))
    tl.store(y_ptr + bidx * syb + d * syd, y.to(y_ptr.dtype.element_ty), mask=md)
    tl.store(h1_ptr + state_off, h, mask=m_dn)


def _strides(t, dims=3):
    return t.stride() if t is not None else (0,) * dims


def _block_n(state_size: int) -> int:
    return max(2, triton.next_power_of_2(state_size))


def _forward(u, delta, A, B, C, D, z, h0, keep, save: bool):
    batch, length, channels = u.shape
    state_size = A.shape[1]
    num_tiles = triton.cdiv(length, BLOCK_T)
    num_segments = triton.cdiv(num_tiles, SEGMENT_TILES)
    y = torch.empty(batch, length, channels, device=u.device, dtype=u.dtype)
    hT = torch.empty(batch, channels, state_size, device=u.device, dtype=torch.float32)
    ckpt = (torch.empty(batch, num_segments, channels, state_size, device=u.device, dtype=torch.float32)
            if save else None)
    grid = (triton.cdiv(channels, BLOCK_D), batch)
    _scan_fwd_kernel[grid](
        u, delta, A, B, C, D, z, h0, keep, y, hT, ckpt, length, channels, state_size, num_tiles,
        *u.stride(), *delta.stride(), *B.stride(), *C.stride(), *_strides(z), *y.stride(), num_segments,
        BT=BLOCK_T, BD=BLOCK_D, BN=_block_n(state_size), SEGMENT=SEGMENT_TILES,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_H0=h0 is not None, SAVE=save, HAS_RESET=keep is not None,
        num_warps=FWD_WARPS,
    )
    return y, hT, ckpt


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, h0, keep):
        A_c = A.contiguous()
        y, hT, ckpt = _forward(u, delta, A_c, B, C, D, z, h0, keep, save=True)
        ctx.save_for_backward(u, delta, A_c, B, C, D, z, h0, keep, ckpt)
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        refuse_double_backward("selective_scan", "triton")
        u, delta, A, B, C, D, z, h0, keep, ckpt = ctx.saved_tensors
        batch, length, channels = u.shape
        state_size = A.shape[1]
        block_n = _block_n(state_size)
        num_tiles = triton.cdiv(length, BLOCK_T)
        num_segments = ckpt.shape[1]
        dev, f32 = u.device, torch.float32
        blocks_d = triton.cdiv(channels, BLOCK_D)
        scratch = torch.empty(batch * blocks_d * SEGMENT_TILES * BLOCK_D * block_n, device=dev, dtype=f32)
        du = torch.empty(batch, length, channels, device=dev, dtype=f32)
        ddelta = torch.empty_like(du)
        dz = torch.empty_like(du) if z is not None else None
        dB = torch.zeros(batch, length, state_size, device=dev, dtype=f32)
        dC = torch.zeros_like(dB)
        dA = torch.empty(batch, channels, state_size, device=dev, dtype=f32)
        dD = torch.empty(batch, channels, device=dev, dtype=f32) if D is not None else None
        dh0 = torch.empty(batch, channels, state_size, device=dev, dtype=f32)
        if dy is None:
            dy = torch.zeros(batch, length, channels, device=dev, dtype=u.dtype)
        # The kernel reads dhT as a contiguous (B, Dm, N) tensor; autograd may hand it an expanded (stride 0) one.
        dhT = dhT.contiguous() if dhT is not None else None
        _scan_bwd_kernel[(blocks_d, batch)](
            u, delta, A, B, C, D, z, keep, dy, dhT, ckpt, scratch, du, ddelta, dz, dB, dC, dA, dD, dh0,
            length, channels, state_size, num_tiles, num_segments,
            *u.stride(), *delta.stride(), *B.stride(), *C.stride(), *_strides(z), *dy.stride(),
            BT=BLOCK_T, BD=BLOCK_D, BN=block_n, SEGMENT=SEGMENT_TILES,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_DHT=dhT is not None, HAS_RESET=keep is not None,
            num_warps=BWD_WARPS,
        )
        return (
            du.to(u.dtype), ddelta.to(delta.dtype), dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            dD.sum(0).to(D.dtype) if D is not None else None,
            dz.to(z.dtype) if z is not None else None,
            dh0.to(h0.dtype) if h0 is not None else None,
            None,
        )


def _step(u, delta, A, B, C, D, z, h0, keep):
    batch, _, channels = u.shape
    state_size = A.shape[1]
    A = A.contiguous()
    y = torch.empty_like(u, memory_format=torch.contiguous_format)
    h1 = torch.empty(batch, channels, state_size, device=u.device, dtype=torch.float32)
    zs = (z.stride(0), z.stride(2)) if z is not None else (0, 0)
    _scan_step_kernel[(triton.cdiv(channels, BLOCK_D * 4), batch)](
        u, delta, A, B, C, D, z, h0, keep, y, h1, channels, state_size,
        u.stride(0), u.stride(2), delta.stride(0), delta.stride(2), B.stride(0), B.stride(2),
        C.stride(0), C.stride(2), *zs, y.stride(0), y.stride(2),
        BD=BLOCK_D * 4, BN=_block_n(state_size), HAS_D=D is not None, HAS_Z=z is not None, HAS_H0=h0 is not None,
        HAS_RESET=keep is not None,
    )
    return y, h1


def selective_scan(u, delta, A, B, C, D=None, z=None, *, initial_state=None, reset=None):
    """Mamba-1 selective scan over (B, T, Dm); returns (y, final_state). Formulas in ``reference.py``; ``reset``
    (B, T): the state entering a token marked True is zero."""
    check_inputs(u, delta, A, B, C, D, z, initial_state)
    batch, length, channels = u.shape
    reset = check_reset("selective_scan", reset, batch, length)
    keep = None if reset is None else (~reset).float().contiguous()  # (B, T): 0 where a document begins
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    D = D.contiguous() if D is not None else None  # the kernels read D as a contiguous (Dm,) vector
    if length == 0:
        final = h0 if h0 is not None else u.new_zeros(batch, channels, A.shape[1], dtype=torch.float32)
        return u.new_zeros(batch, 0, channels), final
    inputs = (u, delta, A, B, C, D, z, initial_state)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    if not needs_grad:
        if length == 1:
            return _step(u, delta, A, B, C, D, z, h0, keep)
        y, hT, _ = _forward(u, delta, A.contiguous(), B, C, D, z, h0, keep, save=False)
        return y, hT
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, h0, keep)
