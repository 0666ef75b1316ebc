"""LSTM language model configuration (Hochreiter & Schmidhuber 1997; forget gate: Gers et al. 2000)."""

from __future__ import annotations

from typing import ClassVar

from seqzoo.models.classic.configuration_classic import ClassicRecurrentConfig
from seqzoo.models.configuration_utils import require_float


class LSTMConfig(ClassicRecurrentConfig):
    r"""
    LSTM language model. See :class:`ClassicRecurrentConfig` for the shared fields.

    Args:
        forget_bias: initial bias of the forget gate (1.0 is the classic remedy for early vanishing gradients;
            0 gives torch.nn's default).
    """

    model_type = "seqzoo_lstm"
    mixer_type: ClassVar[str] = "lstm"

    forget_bias: float = 1.0

    def validate_architecture(self) -> None:
        super().validate_architecture()
        require_float(self, "forget_bias")


__all__ = ["LSTMConfig"]
