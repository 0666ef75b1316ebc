"""Normalisation layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_FULL = (torch.float32, torch.float64)  # (the dtypes the norm computes in without a cast)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in float32 and cast back, as Llama does."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype, weight = x.dtype, self.weight
        if dtype in _FULL and weight.dtype is dtype and x.is_cpu:
            # torch's one operation: on the CPU it computes the lines below as they do, bitwise, gradients included
            # (tests/models/test_rmsnorm.py), in one call where they make four (at decode sizes the calls cost more
            # than the arithmetic).
            return F.rms_norm(x, weight.shape, weight, self.eps)
        x = x.to(torch.promote_types(dtype, torch.float32))  # float32 at least; float64 stays float64
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(kind: str, hidden_size: int, eps: float, bias: bool = True) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(hidden_size, eps)
    if kind == "layernorm":
        return nn.LayerNorm(hidden_size, eps=eps, bias=bias)
    raise ValueError(f"unknown norm {kind!r}; allowed: 'rmsnorm', 'layernorm'")
