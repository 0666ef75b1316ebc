"""Triton backend of ``causal_conv1d``: forward and backward kernels, same signature as ``reference.py``.

The convolution itself is one kernel over (time block, channel block, batch) tiles, channels-last so that a tile's
loads are contiguous along D. Each output reads its K inputs directly; positions before the sequence come from
``initial_state``. The same launch writes the final state (the last K-1 inputs), so a decoding step is one kernel.
The backward is two kernels: the first recomputes the pre-activation, forms ds = dy * act'(s) and per-tile partial
sums of dweight/dbias; the second gathers dx (and d initial_state, the K-1 positions before the sequence) from ds.

Padding is exact by compaction around the kernel, as in ``chunked.py``: each row's valid tokens are gathered to the
front in order, the kernel convolves the compacted rows, and each valid position reads its output back at its
compacted index. Gathers are torch ops, so autograd routes their gradients; only the convolution is custom. With a
mask, the final state (the last K-1 inputs each row really saw) is a (B, K-1, D) gather, also in torch.

Resets (``reset`` (B, T), True at a document's first token): the kernels read each token's document (the running
count of resets, (B, T) int32, compacted with the rows) and multiply by 0 every tap that reaches into another
document, in the forward, the weight gradients and dx; the final state, gathered in torch, keeps only the last
document's inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seqzoo.kernels.reset import check_reset
from seqzoo.kernels.triton_support import refuse_double_backward

from .reference import check_inputs


@triton.jit
def _silu_and_grad(s):
    sig = 1.0 / (1.0 + tl.exp(-s))
    return s * sig, sig * (1.0 + s * (1.0 - sig))


@triton.jit
def _window_value(x_ptr, init_ptr, b, pos, d, length, channels,
                  sxb, sxt, sxd, sib, sid, sik, K: tl.constexpr, HAS_INIT: tl.constexpr):
    # The input at sequence position `pos` (BT,) for channels d (BD,): x when pos >= 0, else initial_state[K-1+pos].
    inside = (pos[:, None] >= 0) & (pos[:, None] < length) & (d[None, :] < channels)
    val = tl.load(x_ptr + b * sxb + pos[:, None] * sxt + d[None, :] * sxd, mask=inside, other=0.0).to(tl.float32)
    if HAS_INIT:
        before = (pos[:, None] < 0) & (pos[:, None] >= -(K - 1)) & (d[None, :] < channels)
        hist = tl.load(init_ptr + b * sib + d[None, :] * sid + (K - 1 + pos[:, None]) * sik, mask=before, other=0.0)
        val += hist.to(tl.float32)
    return val


@triton.jit
def _document(doc_ptr, b, pos, length):
    # (BT,) the document of each sequence position; 0 before the sequence (the history is document 0)
    return tl.load(doc_ptr + b * length + pos, mask=(pos >= 0) & (pos < length), other=0)


@triton.jit
def _tap(x_ptr, init_ptr, doc_ptr, b, pos, t_doc, d, length, channels,
         sxb, sxt, sxd, sib, sid, sik, K: tl.constexpr, HAS_INIT: tl.constexpr, HAS_RESET: tl.constexpr):
    # The input at `pos` as a tap of outputs in document t_doc (BT,): 0 when it lies in another document.
    val = _window_value(x_ptr, init_ptr, b, pos, d, length, channels, sxb, sxt, sxd, sib, sid, sik, K, HAS_INIT)
    if HAS_RESET:
        val = tl.where((_document(doc_ptr, b, pos, length) == t_doc)[:, None], val, 0.0)
    return val


@triton.jit
def _preactivation(x_ptr, w_ptr, bias_ptr, init_ptr, doc_ptr, b, t, d, length, channels,
                   sxb, sxt, sxd, sib, sid, sik,
                   K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_RESET: tl.constexpr):
    # s[t, d] = bias[d] + sum_k w[d, k] * input[t - (K-1) + k, d]; (BT, BD) float32.
    acc = tl.zeros((t.shape[0], d.shape[0]), dtype=tl.float32)
    t_doc = t
    if HAS_RESET:
        t_doc = _document(doc_ptr, b, t, length)
    for k in tl.static_range(K):
        w_k = tl.load(w_ptr + d * K + k, mask=d < channels, other=0.0).to(tl.float32)  # (BD,)
        acc += w_k[None, :] * _tap(x_ptr, init_ptr, doc_ptr, b, t - (K - 1) + k, t_doc, d, length, channels,
                                   sxb, sxt, sxd, sib, sid, sik, K, HAS_INIT, HAS_RESET)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=d < channels, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, doc_ptr, y_ptr, final_ptr, length, channels,
                     sxb, sxt, sxd, sib, sid, sik, syb, syt, syd,
                     K: tl.constexpr, KM: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr, HAS_RESET: tl.constexpr):
    pid_t, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    t = pid_t * BT + tl.arange(0, BT)
    d = pid_d * BD + tl.arange(0, BD)
    if pid_t == 0:
        # The final state, the last K-1 inputs (oldest first), in the same launch: a decoding step is one kernel.
        j = tl.arange(0, KM)
        last = _window_value(x_ptr, init_ptr, b, length - (K - 1) + j, d, length, channels,
                             sxb, sxt, sxd, sib, sid, sik, K, HAS_INIT)  # (KM, BD)
        tl.store(final_ptr + (b * channels + d[None, :]) * (K - 1) + j[:, None], last,
                 mask=(j[:, None] < K - 1) & (d[None, :] < channels))
    s = _preactivation(x_ptr, w_ptr, bias_ptr, init_ptr, doc_ptr, b, t, d, length, channels,
                       sxb, sxt, sxd, sib, sid, sik, K, HAS_BIAS, HAS_INIT, HAS_RESET)
    if SILU:
        s, _ = _silu_and_grad(s)
    mask = (t[:, None] < length) & (d[None, :] < channels)
    tl.store(y_ptr + b * syb + t[:, None] * syt + d[None, :] * syd, s.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv_bwd_ds_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, doc_ptr, dy_ptr, ds_ptr, dw_part_ptr, db_part_ptr,
                        length, channels, num_t_blocks,
                        sxb, sxt, sxd, sib, sid, sik, sdb, sdt, sdd,
                        K: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
                        HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
                        HAS_RESET: tl.constexpr):
    pid_t, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    t = pid_t * BT + tl.arange(0, BT)
    d = pid_d * BD + tl.arange(0, BD)
    mask = (t[:, None] < length) & (d[None, :] < channels)
    ds = tl.load(dy_ptr + b * sdb + t[:, None] * sdt + d[None, :] * sdd, mask=mask, other=0.0).to(tl.float32)
    if SILU:
        s = _preactivation(x_ptr, w_ptr, bias_ptr, init_ptr, doc_ptr, b, t, d, length, channels,
                           sxb, sxt, sxd, sib, sid, sik, K, HAS_BIAS, HAS_INIT, HAS_RESET)
        _, grad = _silu_and_grad(s)
        ds = ds * grad
    # ds buffer: contiguous (B, T, D) float32.
    tl.store(ds_ptr + (b * length + t[:, None]) * channels + d[None, :], ds, mask=mask)
    # Partial weight / bias gradients of this tile: (B, nT, K, D) and (B, nT, D), summed in torch.
    part = (b * num_t_blocks + pid_t)
    t_doc = t
    if HAS_RESET:
        t_doc = _document(doc_ptr, b, t, length)
    for k in tl.static_range(K):
        inp = _tap(x_ptr, init_ptr, doc_ptr, b, t - (K - 1) + k, t_doc, d, length, channels,
                   sxb, sxt, sxd, sib, sid, sik, K, HAS_INIT, HAS_RESET)
        tl.store(dw_part_ptr + (part * K + k) * channels + d, tl.sum(ds * inp, axis=0), mask=d < channels)
    if HAS_BIAS:
        tl.store(db_part_ptr + part * channels + d, tl.sum(ds, axis=0), mask=d < channels)


@triton.jit
def _conv_bwd_dx_kernel(ds_ptr, w_ptr, doc_ptr, dx_ptr, dinit_ptr, length, channels,
                        K: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, HAS_INIT: tl.constexpr,
                        HAS_RESET: tl.constexpr):
    # Positions q in [-(K-1), T): q >= 0 is x, q < 0 is initial_state[K-1+q]. dx[q] = sum_k ds[q+K-1-k] * w[k].
    pid_t, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    q = pid_t * BT + tl.arange(0, BT) - (K - 1)
    d = pid_d * BD + tl.arange(0, BD)
    acc = tl.zeros((BT, BD), dtype=tl.float32)
    q_doc = q
    if HAS_RESET:
        q_doc = _document(doc_ptr, b, q, length)
    for k in tl.static_range(K):
        t = q + (K - 1 - k)
        w_k = tl.load(w_ptr + d * K + k, mask=d < channels, other=0.0).to(tl.float32)
        m = (t[:, None] >= 0) & (t[:, None] < length) & (d[None, :] < channels)
        if HAS_RESET:  # output t reads input q only within one document
            m = m & (_document(doc_ptr, b, t, length) == q_doc)[:, None]
        acc += w_k[None, :] * tl.load(ds_ptr + (b * length + t[:, None]) * channels + d[None, :], mask=m, other=0.0)
    in_x = (q[:, None] >= 0) & (q[:, None] < length) & (d[None, :] < channels)
    tl.store(dx_ptr + (b * length + q[:, None]) * channels + d[None, :], acc, mask=in_x)
    if HAS_INIT:
        in_init = (q[:, None] < 0) & (d[None, :] < channels)
        tl.store(dinit_ptr + (b * channels + d[None, :]) * (K - 1) + (K - 1 + q[:, None]), acc, mask=in_init)


def _blocks(length: int, channels: int) -> tuple[int, int]:
    # Short calls (decoding: T = 1) use a small time block so that no work is spent on masked rows.
    # (16, 128) tiles: the backward's recomputed windows of larger tiles spill registers (ptxas, sm_90).
    block_t = min(16, triton.next_power_of_2(max(length, 1)))
    block_d = min(128, max(16, triton.next_power_of_2(channels)))
    return block_t, block_d


def _conv_forward(x, weight, bias, initial_state, activation, document=None):
    """y = act(conv(cat(initial_state, x)) + bias) (B, T, D) and the last K-1 inputs (B, D, K-1), one launch."""
    batch, length, channels = x.shape
    width = weight.shape[1]
    y = torch.empty(batch, length, channels, device=x.device, dtype=x.dtype)
    final = torch.empty(batch, channels, width - 1, device=x.device, dtype=torch.float32)
    block_t, block_d = _blocks(length, channels)
    init_strides = initial_state.stride() if initial_state is not None else (0, 0, 0)
    grid = (triton.cdiv(length, block_t), triton.cdiv(channels, block_d), batch)
    _conv_fwd_kernel[grid](
        x, weight, bias, initial_state, document, y, final, length, channels,
        *x.stride(), *init_strides, *y.stride(),
        K=width, KM=max(1, triton.next_power_of_2(width - 1)), BT=block_t, BD=block_d,
        HAS_BIAS=bias is not None, HAS_INIT=initial_state is not None, SILU=activation == "silu",
        HAS_RESET=document is not None,
    )
    return y, final


class _CausalConv1dFn(torch.autograd.Function):
    """The convolution over (already compacted) rows, and the inputs it ends with as the final state."""

    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, activation, document):
        weight_c = weight.contiguous()
        y, final = _conv_forward(x, weight_c, bias, initial_state, activation, document)
        ctx.save_for_backward(x, weight_c, bias, initial_state, document)
        ctx.activation = activation
        ctx.set_materialize_grads(False)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        refuse_double_backward("causal_conv1d", "triton")
        x, weight, bias, initial_state, document = ctx.saved_tensors
        batch, length, channels = x.shape
        width = weight.shape[1]
        if dy is None:
            dy = torch.zeros_like(x)
        block_t, block_d = _blocks(length, channels)
        num_t_blocks = triton.cdiv(length, block_t)
        ds = torch.empty(batch, length, channels, device=x.device, dtype=torch.float32)
        dw_part = torch.empty(batch, num_t_blocks, width, channels, device=x.device, dtype=torch.float32)
        db_part = torch.empty(batch, num_t_blocks, channels, device=x.device, dtype=torch.float32)
        init_strides = initial_state.stride() if initial_state is not None else (0, 0, 0)
        grid = (num_t_blocks, triton.cdiv(channels, block_d), batch)
        _conv_bwd_ds_kernel[grid](
            x, weight, bias, initial_state, document, dy, ds, dw_part, db_part, length, channels, num_t_blocks,
            *x.stride(), *init_strides, *dy.stride(),
            K=width, BT=block_t, BD=block_d, HAS_BIAS=bias is not None,
            HAS_INIT=initial_state is not None, SILU=ctx.activation == "silu", HAS_RESET=document is not None,
        )
        dx = torch.empty(batch, length, channels, device=x.device, dtype=torch.float32)
        dinit = (torch.empty(batch, channels, width - 1, device=x.device, dtype=torch.float32)
                 if initial_state is not None else None)
        grid = (triton.cdiv(length + width - 1, block_t), triton.cdiv(channels, block_d), batch)
        _conv_bwd_dx_kernel[grid](ds, weight, document, dx, dinit, length, channels,
                                  K=width, BT=block_t, BD=block_d, HAS_INIT=initial_state is not None,
                                  HAS_RESET=document is not None)
        if dfinal is not None and width > 1:  # (with resets the final state is gathered in torch: no dfinal here)
            # final[..., j] is the input at position T-(K-1)+j: x where that is >= 0, else initial_state[T+j].
            from_x = min(width - 1, length)
            dx[:, length - from_x:] += dfinal[:, :, width - 1 - from_x:].transpose(1, 2)
            if dinit is not None and width - 1 > length:
                dinit[:, :, length:] += dfinal[:, :, :width - 1 - length]
        dweight = dw_part.sum(dim=(0, 1)).transpose(0, 1).to(weight.dtype)  # (D, K)
        dbias = db_part.sum(dim=(0, 1)).to(bias.dtype) if bias is not None else None
        dinit = dinit.to(initial_state.dtype) if dinit is not None else None
        return dx.to(x.dtype), dweight, dbias, dinit, None, None


def causal_conv1d(x, weight, bias=None, *, initial_state=None, activation=None, mask=None, reset=None):
    """Depthwise causal conv over (B, T, D); returns (y, final_state). Formulas in ``reference.py``; ``reset`` (B, T):
    the inputs before a token marked True read as zeros."""
    check_inputs(x, weight, bias, initial_state, activation, mask)
    batch, length, channels = x.shape
    reset = check_reset("causal_conv1d", reset, batch, length)
    width = weight.shape[1]
    bias = bias.contiguous() if bias is not None else None  # the kernels read bias as a contiguous (D,) vector
    if initial_state is not None:
        initial_state = initial_state.float()
    if length == 0:
        final = initial_state if initial_state is not None else x.new_zeros(batch, channels, width - 1,
                                                                              dtype=torch.float32)
        return x.new_zeros(batch, 0, channels), final

    valid = None
    if mask is not None:
        valid = mask.to(torch.bool)
        if not torch.compiler.is_compiling() and bool(valid.all()):  # (a trace cannot branch on values)
            valid = None
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, initial_state))
    if valid is None and reset is None:
        if not needs_grad:
            return _conv_forward(x, weight.contiguous(), bias, initial_state, activation)
        return _CausalConv1dFn.apply(x, weight, bias, initial_state, activation, None)

    # Each token's document, counted on the uncompacted row (a reset at a padded position still starts one).
    document = None if reset is None else reset.long().cumsum(dim=1)  # (B, T)
    xs, count = x, torch.full((batch,), length, device=x.device)
    if valid is not None:
        # Valid tokens first, in order; the padded tail only feeds outputs that are never read.
        order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices  # (B, T)
        xs = x.gather(1, order[..., None].expand(-1, -1, channels))
        count = valid.sum(dim=1)  # (B,)
        if document is not None:
            document = document.gather(1, order)
    kernel_document = None if document is None else document.to(torch.int32).contiguous()
    y, _ = _CausalConv1dFn.apply(xs, weight, bias, initial_state, activation, kernel_document)  # (B, T, D)

    # The final state: the K-1 inputs before compacted position `count`, from xs where that index is >= 0, else
    # from the initial state; with resets, only those of the row's last document.
    index = count[:, None] - (width - 1) + torch.arange(width - 1, device=x.device)  # (B, K-1)
    from_x = xs.gather(1, index.clamp(min=0)[..., None].expand(-1, -1, channels)).float()  # (B, K-1, D)
    if initial_state is not None:
        history = initial_state.transpose(1, 2)  # (B, K-1, D)
        from_init = history.gather(1, (index + width - 1).clamp(max=width - 2)[..., None].expand(-1, -1, channels))
    else:
        from_init = torch.zeros_like(from_x)
    final = torch.where((index >= 0)[..., None], from_x, from_init)  # (B, K-1, D)
    if document is not None:
        tap_document = torch.where(index >= 0, document.gather(1, index.clamp(min=0)), 0)  # (B, K-1)
        final = final * (tap_document == reset.sum(dim=1, keepdim=True))[..., None]
    final = final.transpose(1, 2).contiguous()  # (B, D, K-1)

    if valid is None:
        return y, final
    compact_pos = (valid.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
    y = y.gather(1, compact_pos[..., None].expand(-1, -1, channels))
    y = torch.where(valid[..., None], y, torch.zeros_like(y))
    return y, final
