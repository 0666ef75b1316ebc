"""What an encoder hands to a decoder, and what a decoder hands back to the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput


@dataclass
class Seq2SeqEncoderOutput(ModelOutput):
    """The encoder's output. ``generate()`` computes it once per source and repeats its tensors for beams and
    returned sequences, so every tensor here is batch-first.

    last_hidden_state: (B, S, D) the source annotations the decoder attends to.
    final_state: (B, num_layers, F) a recurrent encoder's final state per layer (its named states, both directions
        concatenated), where the decoder starts from; None for the Transformer.
    hidden_states, attentions: per layer, when asked for (a recurrent encoder has no attention weights).
    """

    last_hidden_state: torch.Tensor | None = None
    final_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class DecoderOutput:
    """One decoder call: its output (B, T, H) for the head, the cache entries to keep (one per cache layer, in
    ``config.cache_layer_kinds`` order), and per layer, when asked for, hidden states and attention weights."""

    output: torch.Tensor
    cache_entries: list[Any]
    hidden_states: tuple[torch.Tensor, ...] | None = None
    self_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


__all__ = ["DecoderOutput", "Seq2SeqEncoderOutput"]
