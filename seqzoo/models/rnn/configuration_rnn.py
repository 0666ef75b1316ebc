"""Elman RNN configuration (Elman 1990): h_t = act(W_ih x_t + W_hh h_{t-1} + b)."""

from __future__ import annotations

from typing import ClassVar

from seqzoo.models.classic.configuration_classic import ClassicRecurrentConfig
from seqzoo.models.configuration_utils import require_choice

NONLINEARITIES = ("tanh", "relu")


class RNNConfig(ClassicRecurrentConfig):
    r"""
    Elman RNN language model. See :class:`ClassicRecurrentConfig` for the shared fields.

    Args:
        nonlinearity: ``"tanh"`` (Elman's) or ``"relu"`` (IRNN-style, best with orthogonal/identity init).
    """

    model_type = "seqzoo_rnn"
    mixer_type: ClassVar[str] = "rnn"

    nonlinearity: str = "tanh"

    def validate_architecture(self) -> None:
        super().validate_architecture()
        require_choice(self, "nonlinearity", NONLINEARITIES)


__all__ = ["RNNConfig"]
