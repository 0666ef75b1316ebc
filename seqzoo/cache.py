"""RecurrentCache: the O(1) state a recurrent model carries between calls.

Each layer owns a small dict of named tensors whose first dimension is the batch (``"h"``/``"c"`` for an LSTM,
``"conv"``/``"ssm"`` for Mamba, ``"shift"``/``"wkv"`` for RWKV-7 ...). Layers of a hybrid that attend keep their
keys and values under ``"k"``/``"v"`` in the same dict. The cache counts every position it has seen, padding
included, because generation compares that count with the length of the attention mask.

It is deliberately not a ``transformers.Cache``: generation only needs ``get_seq_length`` and ``reorder_cache``
from it, and the owning model declares ``_supports_default_dynamic_cache() -> False`` so none is built for it.
"""

from __future__ import annotations

from typing import Iterator

import torch


class RecurrentCache:
    is_compileable = False
    is_croppable = False

    def __init__(self, num_layers: int) -> None:
        if num_layers < 1:
            raise ValueError(f"RecurrentCache needs at least one layer, got num_layers={num_layers}")
        self.layers: list[dict[str, torch.Tensor]] = [{} for _ in range(num_layers)]
        self.seen_tokens = 0

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        names = sorted({name for layer in self.layers for name in layer})
        return f"RecurrentCache(layers={len(self.layers)}, states={names}, seen_tokens={self.seen_tokens})"

    def get(self, layer_idx: int, name: str) -> torch.Tensor | None:
        return self.layers[layer_idx].get(name)

    def set(self, layer_idx: int, name: str, value: torch.Tensor) -> None:
        self.layers[layer_idx][name] = value

    def tensors(self) -> Iterator[torch.Tensor]:
        for layer in self.layers:
            yield from layer.values()

    def advance(self, num_positions: int) -> None:
        self.seen_tokens += num_positions

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    @property
    def is_linear(self) -> list[bool]:
        # transformers >= 5.24 does not slice already-cached prompt tokens off for a cache whose layers are all
        # "linear", because its own linear caches do not count positions. This one does, so it answers like an
        # attention cache, and generate() continues from it exactly as on 5.23.
        return [False] * len(self.layers)

    @property
    def batch_size(self) -> int | None:
        first = next(self.tensors(), None)
        return None if first is None else first.shape[0]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select / reorder batch rows in place (beam search)."""
        for layer in self.layers:
            for name, value in layer.items():
                layer[name] = value.index_select(0, beam_idx.to(value.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        for layer in self.layers:
            for name, value in layer.items():
                layer[name] = value.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def detach(self) -> "RecurrentCache":
        """Cut the autograd graph at this point (truncated backpropagation through time)."""
        for layer in self.layers:
            for name, value in layer.items():
                layer[name] = value.detach()
        return self

    def state_bytes(self) -> int:
        """Bytes held per sequence (all layers, all states)."""
        batch = self.batch_size or 1
        return sum(t.numel() * t.element_size() for t in self.tensors()) // batch
