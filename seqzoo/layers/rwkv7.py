"""RWKV-7 ("x070") token mixers: the time mix (WKV with a generalised delta rule) and the channel mix.

Both follow the published reference, RWKV-LM ``RWKV-v7/rwkv_v7_demo.py`` (``RWKV_Tmix_x070``, ``RWKV_CMix_x070``);
parameters keep the reference's names (``x_r``, ``w0``/``w1``/``w2``, ``k_k``, ``r_k``, ``receptance`` ...) so a
reader can hold the two side by side. The WKV recurrence itself runs through the kernel registry (op ``wkv7``).

Padding is exact: a position whose mask is False changes no state. The token shift of a position reads the last
*valid* earlier token (or the carried shift state), and the WKV step at a padded position is the identity
(log-decay 0, key 0, b 0).

Packed rows are exact too: with ``reset`` (True at each document's first token), the token shift of a document's
first token reads zeros (as at the start of a sequence) and the WKV kernel starts its state from zero there.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from seqzoo.kernels import dispatch, wkv7  # noqa: F401  (the op package registers the op)
from seqzoo.kernels.symbolic import is_symbolic
from seqzoo.layers.mixer import Mixer, SharedValues, module_weights

# The reference writes the decay as exp(-exp(w)) with w = -softplus(-z) - 0.5. Since exp(-softplus(-z)) =
# sigmoid(z), its log is -exp(-0.5) * sigmoid(z): the per-channel decay lies in (exp(-exp(-0.5)), 1) ~ (0.545, 1).
# Computing the log-decay in this form is exact and never under- or overflows.
DECAY_LOG_SCALE = math.exp(-0.5)


def token_shift(
    x: torch.Tensor, last: torch.Tensor | None, mask: torch.Tensor | None, reset: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each position, the input of the previous *valid* token; and the shift state to carry on.

    x: (B, T, C); last: (B, C) carried from the previous call, or None (zeros, as the reference's ZeroPad2d);
    mask: (B, T) bool, False at padding, or None; reset: (B, T) bool, True at a document's first token, or None.
    Returns prev (B, T, C) and the new carried state (B, C).
    """
    batch, length, channels = x.shape
    if last is None:
        last = x.new_zeros(batch, channels)
    last = last.to(x.dtype)
    if reset is not None:
        if mask is not None:
            raise ValueError("token_shift: reset marks the documents of packed rows, which carry no padding mask")
        prev, carried = token_shift(x, last, None)
        return torch.where(reset[..., None], 0.0, prev), carried
    if length == 1:  # decoding: the carried state is the previous token; a padded token carries it on unchanged
        return last[:, None], (x[:, 0] if mask is None else torch.where(mask, x[:, 0], last))
    if mask is None:
        # (torch.export with a dynamic length: the tracer asks whether x[:, :-1] is contiguous, i.e. whether T - 1
        # is 1, which would exclude T = 2 from the exported lengths)
        if is_symbolic(length):
            return torch.cat([last[:, None], x], dim=1)[:, :length], x[:, -1]
        return torch.cat([last[:, None], x[:, :-1]], dim=1), x[:, -1]
    # Index 0 of `extended` is the carried state; the running maximum of valid indices finds, for every index,
    # the most recent valid one at or before it (index 0 counts as valid).
    extended = torch.cat([last[:, None], x], dim=1)  # (B, T + 1, C)
    valid = torch.cat([mask.new_ones(batch, 1), mask], dim=1)
    positions = torch.arange(length + 1, device=x.device).expand(batch, -1)
    last_valid = torch.where(valid, positions, 0).cummax(dim=1).values  # (B, T + 1)
    gathered = extended.gather(1, last_valid[:, :, None].expand(-1, -1, channels))  # (B, T + 1, C)
    return gathered[:, :length], gathered[:, length]


def _v_first(shared: SharedValues, v: torch.Tensor) -> torch.Tensor:
    """The first time mix's values, on this layer's device (a model dispatched over several devices keeps them where
    the first layer ran)."""
    v_first = shared["v_first"]
    return v_first if v_first.device == v.device else v_first.to(v.device)


class RWKV7TimeMix(Mixer):
    """The x070 time mix: token-shift lerps, low-rank decay / in-context learning rate / value residual / gate,
    the WKV recurrence, per-head GroupNorm, the ``r * k * r_k`` bonus, and the output projection.

    Carries two states: ``attn_shift`` (B, C), the previous token's input, and ``wkv`` (B, H, N, N) float32, one
    (value x key) matrix per head. The first time mix of a model produces ``v_first`` (its values) for the value
    residual of the later ones; it travels in ``context["shared"]``.
    """

    takes_reset = True

    def __init__(self, config: Any, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        C, head_size = config.hidden_size, config.head_size
        self.hidden_size = C
        self.head_size = head_size
        self.num_heads = C // head_size
        self.num_layers = config.num_hidden_layers
        self.output_init_gain = config.output_init_gain
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
        self.w1 = nn.Parameter(torch.zeros(C, config.decay_low_rank_dim))
        self.w2 = nn.Parameter(torch.zeros(config.decay_low_rank_dim, C))
        self.a0 = nn.Parameter(torch.zeros(C))
        self.a1 = nn.Parameter(torch.zeros(C, config.a_low_rank_dim))
        self.a2 = nn.Parameter(torch.zeros(config.a_low_rank_dim, C))
        if self.has_value_residual:
            self.v0 = nn.Parameter(torch.zeros(C))
            self.v1 = nn.Parameter(torch.zeros(C, config.v_low_rank_dim))
            self.v2 = nn.Parameter(torch.zeros(config.v_low_rank_dim, C))
        self.g1 = nn.Parameter(torch.zeros(C, config.gate_low_rank_dim))
        self.g2 = nn.Parameter(torch.zeros(config.gate_low_rank_dim, C))
        self.k_k = nn.Parameter(torch.zeros(C))
        self.k_a = nn.Parameter(torch.zeros(C))
        self.r_k = nn.Parameter(torch.zeros(self.num_heads, head_size))

        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(self.num_heads, C, eps=config.group_norm_eps)

    def extra_repr(self) -> str:
        return f"layer={self.layer_idx}, heads={self.num_heads}x{self.head_size}"

    @classmethod
    def state_bytes(cls, config: Any, dtype_bytes: int = 4) -> int:
        # The previous token's normed input in the model dtype, and one (N x N) WKV matrix per head in float32 at least
        # (a float64 model keeps a float64 one).
        heads = config.hidden_size // config.head_size
        return config.hidden_size * dtype_bytes + heads * config.head_size**2 * max(dtype_bytes, 4)

    def init_weights(self) -> None:
        """The RWKV-LM x070 init: RWKV_Tmix_x070's constructor for the vectors and LoRAs, then
        ``generate_init_weight`` for the matrices (orthogonal with per-matrix gains, zero output projection, ln_x
        weights growing with depth), as train.py builds the initial checkpoint."""
        C, N = self.hidden_size, self.head_size
        ratio_0_to_1, ratio_1_to_almost0 = depth_ratios(self.layer_idx, self.num_layers)
        n = torch.arange(C, dtype=torch.float32)
        ddd = n / C
        linear = n / max(C - 1, 1) - 0.5
        # A per-head pattern from -1 to 1 (squared, sign kept), so every head starts with a spread of timescales.
        zigzag = ((n % N) - (N - 1) / 2) / ((N - 1) / 2) if N > 1 else torch.zeros(C)
        zigzag = zigzag * zigzag.abs()
        decay_speed = -6 + 6 * (n / max(C - 1, 1)) ** (1 + ratio_0_to_1**0.3)

        for name, power in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
            init.copy_(getattr(self, name), 1.0 - ddd ** (power * ratio_1_to_almost0))
        init.copy_(self.w0, decay_speed + 0.5 + zigzag * 2.5)  # +0.5 offsets the -0.5 of the decay soft-clamp
        init.copy_(self.a0, -0.19 + zigzag * 0.3 + linear * 0.4)
        init.copy_(self.k_k, 0.71 - linear * 0.1)
        init.constant_(self.k_a, 1.02)
        init.constant_(self.r_k, -0.04)
        lora_in = [self.w1, self.a1, self.g1]
        lora_out = [self.w2, self.a2, self.g2]
        if self.has_value_residual:
            init.copy_(self.v0, 0.73 - linear * 0.4)
            lora_in.append(self.v1)
            lora_out.append(self.v2)
        for weight in lora_in:
            init.zeros_(weight)
        for weight in lora_out:
            _init_lora_out(weight)
        init.orthogonal_(self.receptance.weight, gain=1.0)
        init.orthogonal_(self.key.weight, gain=0.1)
        init.orthogonal_(self.value.weight, gain=1.0)
        init_residual_output(self.output.weight, self.output_init_gain)
        init.constant_(self.ln_x.weight, ((1 + self.layer_idx) / self.num_layers) ** 0.7)
        init.zeros_(self.ln_x.bias)

    def forward(
        self, x: torch.Tensor, *, state: dict | None = None, mask: torch.Tensor | None = None,
        shared: SharedValues | None = None, reset: torch.Tensor | None = None, **context: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # x: (B, T, C), already normed (ln1). Returns the output (B, T, C) and the new attn_shift (B, C) and
        # wkv (B, H, N, N) states.
        B, T, C = x.shape
        H, N = self.num_heads, self.head_size
        state = state or {}
        shared = SharedValues() if shared is None else shared
        if T == 1 and reset is None:
            return self._step(x, state, mask, shared)
        prev, shift_state = token_shift(x, state.get("attn_shift"), mask, reset)
        xx = prev - x
        xr, xw, xk = x + xx * self.x_r, x + xx * self.x_w, x + xx * self.x_k
        xv, xa, xg = x + xx * self.x_v, x + xx * self.x_a, x + xx * self.x_g

        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        if self.has_value_residual:
            if "v_first" not in shared:
                raise ValueError(f"RWKV7TimeMix layer {self.layer_idx} needs v_first from the first time mix")
            v = v + (_v_first(shared, v) - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        else:
            shared["v_first"] = v
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)  # in-context learning rate, (B, T, C)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0)  # unit removal key per head
        k = k * (1 + (a - 1) * self.k_a)
        # The kernel works in float32 on (B, T, H, N) (float64 for a float64 model); the delta rule is
        # S <- S diag(decay) - (S kk) (kk * a)^T + v k^T.
        dtype = torch.promote_types(x.dtype, torch.float32)
        log_decay = -DECAY_LOG_SCALE * torch.sigmoid((self.w0 + torch.tanh(xw @ self.w1) @ self.w2).to(dtype))
        r_h, k_h, v_h, a_h, log_decay = (t.to(dtype).view(B, T, H, N) for t in (r, k, v, a, log_decay))
        kk = kk.to(dtype)
        b_h = kk * a_h
        if mask is not None:
            # Identity step at padding: no decay, nothing written, nothing removed.
            # (v and the removal key too: a non-finite value at a pad would reach the state as NaN * 0.)
            keep = mask[:, :, None, None]
            log_decay = torch.where(keep, log_decay, 0.0)
            k_in, b_h = torch.where(keep, k_h, 0.0), torch.where(keep, b_h, 0.0)
            v_in, a_in = torch.where(keep, v_h, 0.0), torch.where(keep, -kk, 0.0)
        else:
            k_in, v_in, a_in = k_h, v_h, -kk
        wkv_state = state.get("wkv")
        if wkv_state is not None:
            wkv_state = wkv_state.to(dtype)
        y, wkv_state = dispatch("wkv7", r_h, log_decay, k_in, v_in, a_in, b_h, initial_state=wkv_state, reset=reset)

        # Per-head GroupNorm and the bonus in float32 (the kernel's output precision), then back to the model dtype.
        weight, bias = module_weights(self.ln_x, "weight", "bias")  # read without calling it
        y = F.group_norm(y.reshape(B * T, C), H, weight.to(dtype), bias.to(dtype), self.ln_x.eps)
        bonus = (r_h * k_h * self.r_k.to(dtype)).sum(dim=-1, keepdim=True) * v_h  # (B, T, H, N)
        y = (y.view(B, T, C) + bonus.view(B, T, C)).to(x.dtype)
        return self.output(y * g), {"attn_shift": shift_state, "wkv": wkv_state}

    def _step(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, shared: SharedValues
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One token (T == 1), the function of :meth:`forward` in fewer operations: at decode sizes each operation
        costs more in dispatch than in arithmetic. The per-token tensors stay (B, C) / (B, H, N); the six
        token-shift lerps are one ``addcmul`` against the stacked mix vectors; LoRA biases ride in ``addmm``; the
        per-head GroupNorm runs on the (B, C) row directly."""
        B, _, C = x.shape
        H, N = self.num_heads, self.head_size
        x = x[:, 0]  # (B, C)
        last = state.get("attn_shift")
        prev = x.new_zeros(B, C) if last is None else last.to(x.dtype)
        # A padded token carries the previous token's input on unchanged.
        shift_state = x if mask is None else torch.where(mask, x, prev)
        mix = torch.stack((self.x_r, self.x_k, self.x_v, self.x_w, self.x_a, self.x_g))[:, None]  # (6, 1, C)
        xr, xk, xv, xw, xa, xg = torch.addcmul(x, prev - x, mix).unbind(0)

        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        if self.has_value_residual:
            if "v_first" not in shared:
                raise ValueError(f"RWKV7TimeMix layer {self.layer_idx} needs v_first from the first time mix")
            v = torch.lerp(v, _v_first(shared, v)[:, 0], torch.sigmoid(torch.addmm(self.v0, xv @ self.v1, self.v2)))
        else:
            shared["v_first"] = v[:, None]
        a = torch.sigmoid(torch.addmm(self.a0, xa @ self.a1, self.a2))  # (B, C)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = k * self.k_k
        k = k * torch.addcmul(torch.rsub(self.k_a, 1), a, self.k_a)  # k * (1 + (a - 1) * k_a); rsub: no Python __rsub__
        log_decay = torch.sigmoid(torch.addmm(self.w0, torch.tanh(xw @ self.w1), self.w2)) * -DECAY_LOG_SCALE
        dtype = torch.promote_types(x.dtype, torch.float32)  # the kernel and the GroupNorm: float32 at least
        if x.dtype != dtype:
            r, k, v, a, kk, log_decay = (t.to(dtype) for t in (r, k, v, a, kk, log_decay))
        r_h, k_h, v_h, a_h = (t.view(B, 1, H, N) for t in (r, k, v, a))
        kk = kk.view(B, 1, H, N)
        kk = kk / torch.linalg.vector_norm(kk, dim=-1, keepdim=True).clamp_min(1e-12)  # F.normalize, unrolled
        log_decay = log_decay.view(B, 1, H, N)
        b_h = kk * a_h
        k_in, v_in, a_in = k_h, v_h, -kk
        if mask is not None:  # identity step for a padded token, as in forward
            keep = mask.view(B, 1, 1, 1)
            log_decay = torch.where(keep, log_decay, 0.0)
            k_in, b_h = torch.where(keep, k_h, 0.0), torch.where(keep, b_h, 0.0)
            v_in, a_in = torch.where(keep, v_h, 0.0), torch.where(keep, a_in, 0.0)
        wkv_state = state.get("wkv")
        if wkv_state is not None:
            wkv_state = wkv_state.to(dtype)
        y, wkv_state = dispatch("wkv7", r_h, log_decay, k_in, v_in, a_in, b_h, initial_state=wkv_state)

        weight, bias = module_weights(self.ln_x, "weight", "bias")
        if weight.dtype != dtype:
            weight, bias = weight.to(dtype), bias.to(dtype)
        y = F.group_norm(y.view(B, C), H, weight, bias, self.ln_x.eps).view(B, H, N)
        bonus = (r_h * k_h * self.r_k.to(dtype)).sum(dim=-1).view(B, H, 1)
        y = torch.addcmul(y, bonus, v_h.view(B, H, N)).view(B, 1, C).to(x.dtype)
        return self.output(y * g[:, None]), {"attn_shift": shift_state, "wkv": wkv_state}


class RWKV7ChannelMix(Mixer):
    """The x070 channel mix: token-shift lerp, then ``value(relu(key(x))**2)``. It is RWKV-7's MLP, but carries a
    state between tokens, ``ffn_shift`` (B, C), so it follows the mixer protocol."""

    takes_reset = True

    def __init__(self, config: Any, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        hidden_size = config.hidden_size
        self.num_layers = config.num_hidden_layers
        self.output_init_gain = config.output_init_gain
        self.x_k = nn.Parameter(torch.zeros(hidden_size))
        self.key = nn.Linear(hidden_size, config.intermediate_size, bias=False)
        self.value = nn.Linear(config.intermediate_size, hidden_size, bias=False)

    @classmethod
    def state_bytes(cls, config: Any, dtype_bytes: int = 4) -> int:
        return config.hidden_size * dtype_bytes  # the previous token's normed input

    def init_weights(self) -> None:
        ddd = torch.arange(self.x_k.numel(), dtype=torch.float32) / self.x_k.numel()
        init.copy_(self.x_k, 1.0 - ddd ** (depth_ratios(self.layer_idx, self.num_layers)[1] ** 4))
        init.orthogonal_(self.key.weight, gain=1.0)
        init_residual_output(self.value.weight, self.output_init_gain)

    def forward(
        self, x: torch.Tensor, *, state: dict | None = None, mask: torch.Tensor | None = None,
        reset: torch.Tensor | None = None, **context: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # x: (B, T, C), already normed (ln2). Returns the output (B, T, C) and the new ffn_shift state (B, C).
        prev, shift_state = token_shift(x, (state or {}).get("ffn_shift"), mask, reset)
        k = torch.addcmul(x, prev - x, self.x_k)
        return self.value(torch.relu(self.key(k)).square()), {"ffn_shift": shift_state}


def depth_ratios(layer_idx: int, num_layers: int) -> tuple[float, float]:
    # (0 -> 1 over the layers, 1 -> ~0 over the layers). The reference divides by n_layer - 1; one layer gives 0.
    return (layer_idx / (num_layers - 1) if num_layers > 1 else 0.0), 1.0 - layer_idx / num_layers


def init_residual_output(weight: torch.Tensor, gain: float) -> None:
    # x070: zero, so that every block starts as the identity on the residual stream.
    if gain > 0:
        init.orthogonal_(weight, gain=gain)
    else:
        init.zeros_(weight)


def _init_lora_out(weight: torch.Tensor, scale: float = 0.1) -> None:
    # The reference's ortho_init for a (D, C) matrix: gain sqrt(D / C) when D > C.
    rows, cols = weight.shape
    init.orthogonal_(weight, gain=(math.sqrt(rows / cols) if rows > cols else 1.0) * scale)


__all__ = ["DECAY_LOG_SCALE", "RWKV7ChannelMix", "RWKV7TimeMix", "depth_ratios", "init_residual_output", "token_shift"]
