"""GRU language model configuration (Cho et al. 2014)."""

from __future__ import annotations

from typing import ClassVar

from seqzoo.models.classic.configuration_classic import ClassicRecurrentConfig


class GRUConfig(ClassicRecurrentConfig):
    r"""GRU language model. See :class:`ClassicRecurrentConfig` for the fields."""

    model_type = "seqzoo_gru"
    mixer_type: ClassVar[str] = "gru"


__all__ = ["GRUConfig"]
