"""Mamba mixer (Gu & Dao 2023): in_proj -> causal depthwise conv -> selective scan, gated by silu(z) -> out_proj.

Parameter names and layouts are those of transformers' ``MambaMixer`` (and mamba_ssm's ``Mamba``), so a checkpoint
converts by renaming keys. The compute goes through the kernel registry (ops ``causal_conv1d``, ``selective_scan``).

Padding is exact: a position with mask 0 is skipped by the convolution (it enters no window and leaves the conv
state alone) and gets a time step of exactly 0, which is the identity step of the scan (exp(0 * A) = 1, nothing is
added). So pad positions never change any state, also when a padded batch continues from a cache.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from seqzoo.kernels import dispatch, selective_scan  # noqa: F401  (the op package registers the op)
from seqzoo.layers.mixer import Mixer, module_weights
from seqzoo.layers.state_space import (
    MambaState,
    depthwise_conv,
    init_linear_like_torch,
    inverse_softplus,
    log_uniform_time_steps,
)


class MambaMixer(Mixer):
    """Selective state-space mixer over (B, T, hidden_size); state ``conv`` (B, E, K-1) and ``ssm`` (B, E, N)."""

    takes_reset = True

    def __init__(self, config: Any, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        hidden_size = config.hidden_size
        self.hidden_size = hidden_size
        self.state_size = state_size = config.state_size
        self.intermediate_size = inner = config.expand * hidden_size
        self.time_step_rank = config.time_step_rank
        self.init_settings = (config.time_step_min, config.time_step_max, config.time_step_floor,
                              config.time_step_init_scheme, config.time_step_scale)
        self.out_proj_scale = config.num_hidden_layers**-0.5 if config.rescale_prenorm_residual else None

        # x (the scanned signal) and z (the output gate), side by side.
        self.in_proj = nn.Linear(hidden_size, 2 * inner, bias=config.use_bias)
        self.conv1d = depthwise_conv(inner, config.conv_kernel, bias=config.use_conv_bias)
        # The selective part: per-token time step (through a low-rank bottleneck), B and C.
        self.x_proj = nn.Linear(inner, self.time_step_rank + 2 * state_size, bias=False)
        self.dt_proj = nn.Linear(self.time_step_rank, inner, bias=True)
        # A = -exp(A_log) stays negative, so every step decays the state; stored as a log for that reason.
        self.A_log = nn.Parameter(torch.empty(inner, state_size))
        self.D = nn.Parameter(torch.empty(inner))
        self.out_proj = nn.Linear(inner, hidden_size, bias=config.use_bias)

    @classmethod
    def state_bytes(cls, config: Any, dtype_bytes: int = 4) -> int:
        # The last K-1 conv inputs of every inner channel, and an N-wide SSM state per inner channel.
        # Both are kept in float32 at least, whatever the weights' dtype (the scan computes in float32).
        inner = config.expand * config.hidden_size
        return inner * (config.conv_kernel - 1 + config.state_size) * max(dtype_bytes, 4)

    def init_weights(self) -> None:
        """Mamba's init: torch's default for the projections and the convolution, A (S4D-real: A[:, n] = -(n + 1)),
        D (ones) and the time-step projection."""
        for module in (self.in_proj, self.conv1d, self.x_proj, self.dt_proj, self.out_proj):
            init_linear_like_torch(module)
        if self.out_proj_scale is not None:
            init_linear_like_torch(self.out_proj, scale=self.out_proj_scale)
        time_step_min, time_step_max, time_step_floor, scheme, scale = self.init_settings
        A = torch.arange(1, self.state_size + 1, dtype=torch.float32).expand(self.intermediate_size, -1)
        init.copy_(self.A_log, torch.log(A))
        init.ones_(self.D)
        std = self.time_step_rank**-0.5 * scale
        if scheme == "constant":
            init.constant_(self.dt_proj.weight, std)
        else:
            init.uniform_(self.dt_proj.weight, -std, std)
        # The bias is set so that softplus(bias) lands in [time_step_min, time_step_max] at init.
        dt = log_uniform_time_steps(self.intermediate_size, time_step_min, time_step_max, time_step_floor)
        init.copy_(self.dt_proj.bias, inverse_softplus(dt))

    def forward(
        self, hidden_states: torch.Tensor, *, state: MambaState | None = None, mask: torch.Tensor | None = None,
        reset: torch.Tensor | None = None, **context: Any,
    ) -> tuple[torch.Tensor, MambaState]:
        # hidden_states: (B, T, H); mask: (B, T) bool, False at padding, or None; reset: (B, T) bool or None.
        state = state or {}
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, T, E) each
        conv_weight, conv_bias = module_weights(self.conv1d, "weight", "bias")  # the kernel takes them; never called
        x, conv_state = dispatch(
            "causal_conv1d", x, conv_weight[:, 0], conv_bias, initial_state=state.get("conv"),
            activation="silu", mask=mask, reset=reset,
        )  # (B, T, E)

        time_step, B, C = self.x_proj(x).split([self.time_step_rank, self.state_size, self.state_size], dim=-1)
        compute = torch.promote_types(hidden_states.dtype, torch.float32)  # float32 at least, float64 stays
        delta = F.softplus(self.dt_proj(time_step).to(compute))  # (B, T, E), float32 like the state
        if mask is not None:
            delta = delta.masked_fill(~mask[..., None], 0.0)  # the scan's identity step
        A = -torch.exp(self.A_log.to(compute))  # (E, N)

        y, ssm_state = dispatch(
            "selective_scan", x, delta, A, B, C, self.D.to(compute), z, initial_state=state.get("ssm"), reset=reset
        )  # y: (B, T, E); ssm_state: (B, E, N)
        return self.out_proj(y.to(hidden_states.dtype)), {"conv": conv_state, "ssm": ssm_state}
