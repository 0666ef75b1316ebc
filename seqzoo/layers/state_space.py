"""What the Mamba and Mamba-2 mixers share: the causal depthwise convolution before the scan, and the time-step
and projection initialisation of mamba_ssm."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init

from seqzoo.kernels import causal_conv1d  # noqa: F401  (the op package registers the op the mixers run)

MambaState = dict[str, torch.Tensor]  # {"conv": (B, channels, K-1), "ssm": (B, ...)}, float32


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """The y with softplus(y) = x, for x > 0 (written to stay accurate for small x)."""
    return x + torch.log(-torch.expm1(-x))


def log_uniform_time_steps(count: int, low: float, high: float, floor: float) -> torch.Tensor:
    """Initial time steps, log-uniform in [low, high] and at least ``floor`` (Mamba's dt init)."""
    dt = torch.exp(torch.rand(count) * (math.log(high) - math.log(low)) + math.log(low))
    return dt.clamp(min=floor)


def depthwise_conv(channels: int, kernel_size: int, bias: bool) -> nn.Conv1d:
    """The parameters of a causal depthwise convolution in nn.Conv1d's layout (weight (C, 1, K), bias (C)), as
    transformers and mamba_ssm checkpoints store them; the mixers run it through the ``causal_conv1d`` op, which
    carries the last K-1 inputs as state and skips padded positions."""
    return nn.Conv1d(channels, channels, kernel_size, groups=channels, padding=kernel_size - 1, bias=bias)


def init_linear_like_torch(linear: nn.Module, scale: float = 1.0) -> None:
    """torch.nn's default init (kaiming-uniform with a=sqrt(5), i.e. U(+-1/sqrt(fan_in))), which mamba_ssm keeps
    for its projections and convolution; ``scale`` shrinks the bound (GPT-2-style residual rescaling)."""
    fan_in = linear.weight[0].numel()
    bound = scale / math.sqrt(fan_in)
    init.uniform_(linear.weight, -bound, bound)
    if getattr(linear, "bias", None) is not None:
        init.zeros_(linear.bias)
