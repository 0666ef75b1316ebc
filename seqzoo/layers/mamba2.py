"""Mamba-2 mixer (Dao & Gu 2024): in_proj -> causal depthwise conv over (x, B, C) -> SSD scan -> gated RMSNorm ->
out_proj.

Parameter names and layouts are those of transformers' ``Mamba2Mixer`` (and mamba_ssm's ``Mamba2``): ``in_proj``
produces [z, x, B, C, dt] in that order, ``conv1d`` has the depthwise (C, 1, K) layout, ``dt_bias``, ``A_log`` and
``D`` are per head. The compute goes through the kernel registry (ops ``causal_conv1d``, ``ssd``).

Padding is exact, as in the Mamba mixer: pad positions are skipped by the convolution and get a time step of
exactly 0, the identity step of the SSD recurrence.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from seqzoo.kernels import dispatch, ssd  # noqa: F401  (the op package registers the op)
from seqzoo.layers.mixer import Mixer, module_weights
from seqzoo.layers.state_space import (
    MambaState,
    depthwise_conv,
    init_linear_like_torch,
    inverse_softplus,
    log_uniform_time_steps,
)


class GatedRMSNorm(nn.Module):
    """RMSNorm over groups of channels, gated by silu(z): ``norm(y * silu(z))`` or ``norm(y) * silu(z)``.

    Normalising per group (one group per B/C group) keeps the layer independent of how heads are split across
    devices in tensor-parallel training, which is why Mamba-2 does it.
    """

    def __init__(self, hidden_size: int, group_size: int, eps: float = 1e-5, norm_before_gate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.group_size = group_size
        self.eps = eps
        self.norm_before_gate = norm_before_gate

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, group_size={self.group_size}, eps={self.eps}, " \
               f"norm_before_gate={self.norm_before_gate}"

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # y, z: (..., E); computed in float32 and cast back, as transformers and mamba_ssm do.
        dtype = y.dtype
        y = y.to(torch.promote_types(dtype, torch.float32))  # float32 at least; float64 stays float64
        gate = F.silu(z.to(y.dtype))
        if not self.norm_before_gate:
            y = y * gate
        groups = y.unflatten(-1, (-1, self.group_size))  # (..., G, E/G)
        y = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        if self.norm_before_gate:
            y = y * gate
        return self.weight * y.to(dtype)


class Mamba2Mixer(Mixer):
    """SSD mixer over (B, T, hidden_size); state ``conv`` (B, E + 2GN, K-1) and ``ssm`` (B, H, P, N)."""

    takes_reset = True

    def __init__(self, config: Any, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.hidden_size = hidden_size = config.hidden_size
        self.state_size = config.state_size
        self.intermediate_size = inner = config.expand * hidden_size
        self.head_dim = config.head_dim
        self.num_heads = inner // config.head_dim
        self.n_groups = config.n_groups
        self.chunk_size = config.chunk_size
        self.time_step_limit = tuple(config.time_step_limit)
        self.conv_dim = inner + 2 * config.n_groups * config.state_size
        self.init_settings = (config.time_step_min, config.time_step_max, config.time_step_floor)
        self.out_proj_scale = config.num_hidden_layers**-0.5 if config.rescale_prenorm_residual else None

        # z (gate), then the conv input x, B, C, then one time step per head -- transformers' packing.
        self.in_proj = nn.Linear(hidden_size, inner + self.conv_dim + self.num_heads, bias=config.use_bias)
        self.conv1d = depthwise_conv(self.conv_dim, config.conv_kernel, bias=config.use_conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads))
        # One scalar decay per head (Mamba-1 had one per channel and state entry): A = -exp(A_log).
        self.A_log = nn.Parameter(torch.empty(self.num_heads))
        self.D = nn.Parameter(torch.empty(self.num_heads))
        self.norm = (
            GatedRMSNorm(inner, inner // config.n_groups, config.layer_norm_epsilon, config.norm_before_gate)
            if config.rms_norm else None
        )
        self.out_proj = nn.Linear(inner, hidden_size, bias=config.use_bias)

    @classmethod
    def state_bytes(cls, config: Any, dtype_bytes: int = 4) -> int:
        # The last K-1 conv inputs of every conv channel (x and each group's B and C), and a head_dim x state_size
        # state per head.
        inner = config.expand * config.hidden_size
        conv = (inner + 2 * config.n_groups * config.state_size) * (config.conv_kernel - 1)
        return (conv + inner * config.state_size) * max(dtype_bytes, 4)  # float32 at least, as for Mamba

    def init_weights(self) -> None:
        """Mamba-2's init: torch's default for the projections and the convolution, A_h = -(h + 1) (transformers'
        choice of mamba_ssm's A range), D = 1, and dt_bias with softplus(dt_bias) log-uniform in
        [time_step_min, time_step_max]."""
        for module in (self.in_proj, self.conv1d, self.out_proj):
            init_linear_like_torch(module)
        if self.out_proj_scale is not None:
            init_linear_like_torch(self.out_proj, scale=self.out_proj_scale)
        if self.norm is not None:
            init.ones_(self.norm.weight)
        init.copy_(self.A_log, torch.log(torch.arange(1, self.num_heads + 1, dtype=torch.float32)))
        init.ones_(self.D)
        dt = log_uniform_time_steps(self.num_heads, *self.init_settings)
        init.copy_(self.dt_bias, inverse_softplus(dt))

    def forward(
        self, hidden_states: torch.Tensor, *, state: MambaState | None = None, mask: torch.Tensor | None = None,
        reset: torch.Tensor | None = None, **context: Any,
    ) -> tuple[torch.Tensor, MambaState]:
        # hidden_states: (B, T, H); mask: (B, T) bool, False at padding, or None; reset: (B, T) bool or None.
        state = state or {}
        batch, length, _ = hidden_states.shape
        groups_n = self.n_groups * self.state_size
        z, xBC, dt = self.in_proj(hidden_states).split([self.intermediate_size, self.conv_dim, self.num_heads], -1)
        conv_weight, conv_bias = module_weights(self.conv1d, "weight", "bias")  # the kernel takes them; never called
        xBC, conv_state = dispatch(
            "causal_conv1d", xBC, conv_weight[:, 0], conv_bias, initial_state=state.get("conv"),
            activation="silu", mask=mask, reset=reset,
        )  # (B, T, E + 2GN)
        x, B, C = xBC.split([self.intermediate_size, groups_n, groups_n], dim=-1)

        compute = torch.promote_types(hidden_states.dtype, torch.float32)  # float32 at least, float64 stays
        dt = F.softplus(dt.to(compute) + self.dt_bias.to(compute))  # (B, T, heads), float32 like the state
        low, high = self.time_step_limit
        if low > 0.0 or high != float("inf"):
            dt = dt.clamp(min=low, max=high)
        if mask is not None:
            dt = dt.masked_fill(~mask[..., None], 0.0)  # the recurrence's identity step
        A = -torch.exp(self.A_log.to(compute))  # (heads,)

        y, ssm_state = dispatch(
            "ssd",
            x.reshape(batch, length, self.num_heads, self.head_dim),
            dt,
            A,
            B.reshape(batch, length, self.n_groups, self.state_size),
            C.reshape(batch, length, self.n_groups, self.state_size),
            self.D.to(compute),
            initial_state=state.get("ssm"),
            chunk_size=self.chunk_size,
            reset=reset,
        )  # y: (B, T, heads, P); ssm_state: (B, heads, P, N)
        y = y.reshape(batch, length, self.intermediate_size)
        y = self.norm(y, z) if self.norm is not None else y * F.silu(z)
        return self.out_proj(y.to(hidden_states.dtype)), {"conv": conv_state, "ssm": ssm_state}
