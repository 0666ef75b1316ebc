"""Classic recurrent layers (Elman RNN, LSTM, GRU) with the torch.nn weight layout; compute goes through the kernel
registry (ops ``rnn``, ``lstm``, ``gru``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from seqzoo.kernels import dispatch

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
STATE_NAMES = {"rnn": ("h",), "lstm": ("h", "c"), "gru": ("h",)}


class RecurrentLayer(nn.Module):
    """One recurrent layer over a (B, T, input_size) sequence, carrying named states ``h`` (and ``c`` for LSTM)."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, nonlinearity: str = "tanh", bias: bool = True):
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"unknown recurrent cell {cell!r}; allowed: {', '.join(GATES)}")
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.nonlinearity = nonlinearity
        rows = GATES[cell] * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(rows))
            self.bias_hh = nn.Parameter(torch.empty(rows))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torch.nn's default: U(-1/sqrt(H), 1/sqrt(H)); the model's _init_weights applies the configured remedies.
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        act = f", nonlinearity={self.nonlinearity}" if self.cell == "rnn" else ""
        return f"{self.cell}, {self.input_size} -> {self.hidden_size}{act}"

    def initial_state(self, batch: int, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        zeros = reference.new_zeros(batch, self.hidden_size)
        return {name: zeros for name in STATE_NAMES[self.cell]}

    def forward(
        self, x: torch.Tensor, state: dict[str, torch.Tensor] | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # x: (B, T, I); mask: (B, T) bool or None; returns y (B, T, H) and the new state.
        if state is None:
            state = self.initial_state(x.shape[0], x)
        weights = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        if self.cell == "lstm":
            y, (h, c) = dispatch("lstm", x, state["h"].to(x.dtype), state["c"].to(x.dtype), *weights, mask=mask)
            return y, {"h": h, "c": c}
        if self.cell == "gru":
            y, h = dispatch("gru", x, state["h"].to(x.dtype), *weights, mask=mask)
        else:
            y, h = dispatch("rnn", x, state["h"].to(x.dtype), *weights, nonlinearity=self.nonlinearity, mask=mask)
        return y, {"h": h}
