"""RWKV-7 ("x070") token mixers: the time mix (WKV with a generalised delta rule) and the channel mix.

Both follow the published reference, RWKV-LM ``RWKV-v7/rwkv_v7_demo.py`` (``RWKV_Tmix_x070``, ``RWKV_CMix_x070``);
parameters keep the reference's names (``x_r``, ``w0``/``w1``/``w2``, ``k_k``, ``r_k``, ``receptance`` ...) so a
reader can hold the two side by side. The WKV recurrence itself runs through the kernel registry (op ``wkv7``).

Padding is exact: a position whose mask is False changes no state. The token shift of a position reads the last
*valid* earlier token (or the carried shift state), and the WKV step at a padded position is the identity
(log-decay 0, key 0, b 0).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from seqzoo.kernels import dispatch

# The reference writes the decay as exp(-exp(w)) with w = -softplus(-z) - 0.5. Since exp(-softplus(-z)) =
# sigmoid(z), its log is -exp(-0.5) * sigmoid(z): the per-channel decay lies in (exp(-exp(-0.5)), 1) ~ (0.545, 1).
# Computing the log-decay in this form is exact and never under- or overflows.
DECAY_LOG_SCALE = math.exp(-0.5)


def token_shift(
    x: torch.Tensor, last: torch.Tensor | None, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each position, the input of the previous *valid* token; and the shift state to carry on.

    x: (B, T, C); last: (B, C) carried from the previous call, or None (zeros, as the reference's ZeroPad2d);
    mask: (B, T) bool, False at padding, or None. Returns prev (B, T, C) and the new carried state (B, C).
    """
    batch, length, channels = x.shape
    if last is None:
        last = x.new_zeros(batch, channels)
    last = last.to(x.dtype)
    if mask is None:
        return torch.cat([last[:, None], x[:, :-1]], dim=1), x[:, -1]
    # Index 0 of `extended` is the carried state; the running maximum of valid indices finds, for every index,
    # the most recent valid one at or before it (index 0 counts as valid).
    extended = torch.cat([last[:, None], x], dim=1)  # (B, T + 1, C)
    valid = torch.cat([mask.new_ones(batch, 1), mask], dim=1)
    positions = torch.arange(length + 1, device=x.device).expand(batch, -1)
    last_valid = torch.where(valid, positions, 0).cummax(dim=1).values  # (B, T + 1)
    gathered = extended.gather(1, last_valid[:, :, None].expand(-1, -1, channels))  # (B, T + 1, C)
    return gathered[:, :length], gathered[:, length]


class RWKV7TimeMix(nn.Module):
    """The x070 time mix: token-shift lerps, low-rank decay / in-context learning rate / value residual / gate,
    the WKV recurrence, per-head GroupNorm, the ``r * k * r_k`` bonus, and the output projection.

    Carries two states: ``shift`` (B, C), the previous token's input, and ``wkv`` (B, H, N, N) float32, one
    (value x key) matrix per head.
    """

    def __init__(
        self,
        hidden_size: int,
        head_size: int,
        decay_low_rank_dim: int,
        a_low_rank_dim: int,
        v_low_rank_dim: int,
        gate_low_rank_dim: int,
        layer_idx: int,
        group_norm_eps: float = 64e-5,
    ) -> None:
        super().__init__()
        if hidden_size % head_size:
            raise ValueError(f"head_size={head_size} must divide hidden_size={hidden_size}")
        C = hidden_size
        self.hidden_size = hidden_size
        self.head_size = head_size
        self.num_heads = hidden_size // head_size
        self.layer_idx = layer_idx
        # Layer 0 produces v_first; the value residual towards it only exists from layer 1 on. (RWKV-LM checkpoints
        # carry unused blocks.0.att.v0/v1/v2; the conversion drops them.)
        self.has_value_residual = layer_idx > 0

        # Token-shift interpolation weights, one per branch: x + (x_prev - x) * mix.
        self.x_r = nn.Parameter(torch.zeros(C))
        self.x_w = nn.Parameter(torch.zeros(C))
        self.x_k = nn.Parameter(torch.zeros(C))
        self.x_v = nn.Parameter(torch.zeros(C))
        self.x_a = nn.Parameter(torch.zeros(C))
        self.x_g = nn.Parameter(torch.zeros(C))
        # Low-rank maps in the reference layout: x @ w1 @ w2 with w1 (C, D) and w2 (D, C).
        self.w0 = nn.Parameter(torch.zeros(C))
        self.w1 = nn.Parameter(torch.zeros(C, decay_low_rank_dim))
        self.w2 = nn.Parameter(torch.zeros(decay_low_rank_dim, C))
        self.a0 = nn.Parameter(torch.zeros(C))
        self.a1 = nn.Parameter(torch.zeros(C, a_low_rank_dim))
        self.a2 = nn.Parameter(torch.zeros(a_low_rank_dim, C))
        if self.has_value_residual:
            self.v0 = nn.Parameter(torch.zeros(C))
            self.v1 = nn.Parameter(torch.zeros(C, v_low_rank_dim))
            self.v2 = nn.Parameter(torch.zeros(v_low_rank_dim, C))
        self.g1 = nn.Parameter(torch.zeros(C, gate_low_rank_dim))
        self.g2 = nn.Parameter(torch.zeros(gate_low_rank_dim, C))
        self.k_k = nn.Parameter(torch.zeros(C))
        self.k_a = nn.Parameter(torch.zeros(C))
        self.r_k = nn.Parameter(torch.zeros(self.num_heads, head_size))

        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(self.num_heads, C, eps=group_norm_eps)

    def extra_repr(self) -> str:
        return f"layer={self.layer_idx}, heads={self.num_heads}x{self.head_size}"

    def forward(
        self,
        x: torch.Tensor,
        v_first: torch.Tensor | None,
        shift_state: torch.Tensor | None = None,
        wkv_state: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # x: (B, T, C), already normed (ln1); v_first: (B, T, C) from layer 0 (None in layer 0).
        # Returns the output (B, T, C), v_first, the new shift state (B, C) and WKV state (B, H, N, N).
        B, T, C = x.shape
        H, N = self.num_heads, self.head_size
        prev, shift_state = token_shift(x, shift_state, mask)
        xx = prev - x
        xr, xw, xk = x + xx * self.x_r, x + xx * self.x_w, x + xx * self.x_k
        xv, xa, xg = x + xx * self.x_v, x + xx * self.x_a, x + xx * self.x_g

        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        if self.has_value_residual:
            if v_first is None:
                raise ValueError(f"RWKV7TimeMix layer {self.layer_idx} needs v_first from layer 0")
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        else:
            v_first = v
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)  # in-context learning rate, (B, T, C)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0)  # unit removal key per head
        k = k * (1 + (a - 1) * self.k_a)
        log_decay = -DECAY_LOG_SCALE * torch.sigmoid((self.w0 + torch.tanh(xw @ self.w1) @ self.w2).float())

        # The kernel works in float32 on (B, T, H, N); the delta rule is S <- S diag(decay) - (S kk) (kk * a)^T + v k^T.
        r_h, k_h, v_h, a_h, log_decay = (t.float().view(B, T, H, N) for t in (r, k, v, a, log_decay))
        kk = kk.float()
        b_h = kk * a_h
        if mask is not None:
            # Identity step at padding: no decay, nothing written, nothing removed.
            keep = mask[:, :, None, None]
            log_decay = torch.where(keep, log_decay, 0.0)
            k_in, b_h = torch.where(keep, k_h, 0.0), torch.where(keep, b_h, 0.0)
        else:
            k_in = k_h
        if wkv_state is not None:
            wkv_state = wkv_state.float()
        y, wkv_state = dispatch("wkv7", r_h, log_decay, k_in, v_h, -kk, b_h, initial_state=wkv_state)

        # Per-head GroupNorm and the bonus in float32 (the kernel's output precision), then back to the model dtype.
        y = F.group_norm(y.reshape(B * T, C), H, self.ln_x.weight.float(), self.ln_x.bias.float(), self.ln_x.eps)
        bonus = (r_h * k_h * self.r_k.float()).sum(dim=-1, keepdim=True) * v_h  # (B, T, H, N)
        y = (y.view(B, T, C) + bonus.view(B, T, C)).to(x.dtype)
        return self.output(y * g), v_first, shift_state, wkv_state


class RWKV7ChannelMix(nn.Module):
    """The x070 channel mix: token-shift lerp, then ``value(relu(key(x))**2)``. Carries the shift state (B, C)."""

    def __init__(self, hidden_size: int, intermediate_size: int, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.x_k = nn.Parameter(torch.zeros(hidden_size))
        self.key = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.value = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(
        self, x: torch.Tensor, shift_state: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (B, T, C), already normed (ln2). Returns the output (B, T, C) and the new shift state (B, C).
        prev, shift_state = token_shift(x, shift_state, mask)
        k = x + (prev - x) * self.x_k
        return self.value(torch.relu(self.key(k)) ** 2), shift_state


__all__ = ["RWKV7ChannelMix", "RWKV7TimeMix", "token_shift", "DECAY_LOG_SCALE"]
