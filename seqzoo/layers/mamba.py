"""Mamba mixer (Gu & Dao 2023): in_proj -> causal depthwise conv -> selective scan, gated by silu(z) -> out_proj.

Parameter names and layouts are those of transformers' ``MambaMixer`` (and mamba_ssm's ``Mamba``), so a checkpoint
converts by renaming keys. The compute goes through the kernel registry (ops ``causal_conv1d``, ``selective_scan``).

Padding is exact: a position with mask 0 is skipped by the convolution (it enters no window and leaves the conv
state alone) and gets a time step of exactly 0, which is the identity step of the scan (exp(0 * A) = 1, nothing is
added). So pad positions never change any state, also when a padded batch continues from a cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from seqzoo.kernels import dispatch

MambaState = dict[str, torch.Tensor]  # {"conv": (B, channels, K-1), "ssm": (B, ...)}, float32


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """The y with softplus(y) = x, for x > 0 (written to stay accurate for small x)."""
    return x + torch.log(-torch.expm1(-x))


def log_uniform_time_steps(count: int, low: float, high: float, floor: float) -> torch.Tensor:
    """Initial time steps, log-uniform in [low, high] and at least ``floor`` (Mamba's dt init)."""
    dt = torch.exp(torch.rand(count) * (math.log(high) - math.log(low)) + math.log(low))
    return dt.clamp(min=floor)


def init_linear_like_torch(linear: nn.Module, scale: float = 1.0) -> None:
    """torch.nn's default init (kaiming-uniform with a=sqrt(5), i.e. U(+-1/sqrt(fan_in))), which mamba_ssm keeps
    for its projections and convolution; ``scale`` shrinks the bound (GPT-2-style residual rescaling)."""
    fan_in = linear.weight[0].numel()
    bound = scale / math.sqrt(fan_in)
    init.uniform_(linear.weight, -bound, bound)
    if getattr(linear, "bias", None) is not None:
        init.zeros_(linear.bias)


class CausalDepthwiseConv1d(nn.Module):
    """Causal depthwise convolution over (B, T, C) inputs, carrying the last K-1 inputs as its state.

    ``weight`` has nn.Conv1d's depthwise layout (C, 1, K), as transformers and mamba_ssm checkpoints store it.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}"

    def forward(
        self,
        x: torch.Tensor,
        state: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        activation: str | None = "silu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (B, T, C); state: (B, C, K-1) or None (zeros); mask: (B, T) bool or None. Returns y (B, T, C), state.
        return dispatch(
            "causal_conv1d", x, self.weight[:, 0], self.bias, initial_state=state, activation=activation, mask=mask
        )


class MambaMixer(nn.Module):
    """Selective state-space mixer over (B, T, hidden_size); state ``conv`` (B, E, K-1) and ``ssm`` (B, E, N)."""

    def __init__(
        self,
        hidden_size: int,
        state_size: int = 16,
        expand: int = 2,
        conv_kernel: int = 4,
        time_step_rank: int | None = None,
        use_conv_bias: bool = True,
        use_bias: bool = False,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.state_size = state_size
        self.intermediate_size = expand * hidden_size
        self.time_step_rank = time_step_rank or math.ceil(hidden_size / 16)
        inner = self.intermediate_size

        # x (the scanned signal) and z (the output gate), side by side.
        self.in_proj = nn.Linear(hidden_size, 2 * inner, bias=use_bias)
        self.conv1d = CausalDepthwiseConv1d(inner, conv_kernel, bias=use_conv_bias)
        # The selective part: per-token time step (through a low-rank bottleneck), B and C.
        self.x_proj = nn.Linear(inner, self.time_step_rank + 2 * state_size, bias=False)
        self.dt_proj = nn.Linear(self.time_step_rank, inner, bias=True)
        # A = -exp(A_log) stays negative, so every step decays the state; stored as a log for that reason.
        self.A_log = nn.Parameter(torch.empty(inner, state_size))
        self.D = nn.Parameter(torch.empty(inner))
        self.out_proj = nn.Linear(inner, hidden_size, bias=use_bias)

    def reset_ssm_parameters(
        self,
        time_step_min: float,
        time_step_max: float,
        time_step_floor: float,
        time_step_init_scheme: str = "random",
        time_step_scale: float = 1.0,
    ) -> None:
        """Mamba's init of A (S4D-real: A[:, n] = -(n + 1)), D (ones) and the time-step projection."""
        A = torch.arange(1, self.state_size + 1, dtype=torch.float32).expand(self.intermediate_size, -1)
        init.copy_(self.A_log, torch.log(A))
        init.ones_(self.D)
        std = self.time_step_rank**-0.5 * time_step_scale
        if time_step_init_scheme == "constant":
            init.constant_(self.dt_proj.weight, std)
        else:
            init.uniform_(self.dt_proj.weight, -std, std)
        # The bias is set so that softplus(bias) lands in [time_step_min, time_step_max] at init.
        dt = log_uniform_time_steps(self.intermediate_size, time_step_min, time_step_max, time_step_floor)
        init.copy_(self.dt_proj.bias, inverse_softplus(dt))

    def forward(
        self, hidden_states: torch.Tensor, state: MambaState | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MambaState]:
        # hidden_states: (B, T, H); mask: (B, T) bool, False at padding, or None.
        state = state or {}
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, T, E) each
        x, conv_state = self.conv1d(x, state.get("conv"), mask, activation="silu")  # (B, T, E)

        time_step, B, C = self.x_proj(x).split([self.time_step_rank, self.state_size, self.state_size], dim=-1)
        delta = F.softplus(self.dt_proj(time_step).float())  # (B, T, E), float32 like the state
        if mask is not None:
            delta = delta.masked_fill(~mask[..., None], 0.0)  # the scan's identity step
        A = -torch.exp(self.A_log.float())  # (E, N)

        y, ssm_state = dispatch(
            "selective_scan", x, delta, A, B, C, self.D.float(), z, initial_state=state.get("ssm")
        )  # y: (B, T, E); ssm_state: (B, E, N)
        return self.out_proj(y.to(hidden_states.dtype)), {"conv": conv_state, "ssm": ssm_state}
