"""Position-wise feed-forward layers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers.activations import ACT2FN


class MLP(nn.Module):
    """fc -> activation -> fc (Vaswani et al. 2017; GPT-2)."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str, bias: bool = True) -> None:
        super().__init__()
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act_fn = ACT2FN[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(x)))

    def run(self, x: torch.Tensor, project: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """:meth:`forward`'s operations, with ``project(linear, x)`` running each projection (the Transformer's
        decode step, ``models/transformer/decoding.py``; ``forward`` keeps its own line, which TorchScript can
        script)."""
        return project(self.down_proj, self.act_fn(project(self.up_proj, x)))


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU with activation "silu" (Shazeer 2020; Llama)."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act_fn = ACT2FN[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    def run(self, x: torch.Tensor, project: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """:meth:`forward`'s operations, with ``project(linear, x)`` running each projection (see
        ``MLP.run``)."""
        return project(self.down_proj, self.act_fn(project(self.gate_proj, x)) * project(self.up_proj, x))
