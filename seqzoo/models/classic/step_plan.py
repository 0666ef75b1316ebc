"""The classic causal LMs' planned decode step: what the general decode step of one cache runs (every layer stacked in
one fused call, layer 0's input looked up in the input table or embedded, a plain vocabulary head), found after the
prompt's forward (or a general step) and kept on the cache, so that each step checks those decisions still hold and
runs the operations alone (``seqzoo/models/decode_plan.py`` holds what every family's plan shares).

At decode sizes a classic model's step is a few small matrix-vector products, and the general path's Python (the
causal LM's and the backbone's argument handling, the cache's error restore, each module's and weight's lookup)
cost it about a quarter of its time (BENCHMARKS.md, run Y). A plan changes no
result: it runs the same operations on the same tensors, and declines, for the general path to run, wherever that
path would do anything else (seqzoo/models/README.md, "The decode step's shortcut")."""

from __future__ import annotations

import torch
from torch import nn

from seqzoo.cache import SeqzooCache
from seqzoo.kernels import registry as kernel_registry
from seqzoo.kernels.rnn_cells import fused
from seqzoo.layers.mixer import has_hooks
from seqzoo.layers.recurrent import FUSED_KERNELS, WEIGHT_NAMES, stack_weights, stackable_class
from seqzoo.models.decode_plan import DecodePlan, buildable, state_entries
from seqzoo.models.decode_plan import _no_plan as _no_plan  # (named so by caches pickled before decode_plan.py)


def _call_read(embedding: torch.Tensor, batch: int, states: list, weights: tuple) -> tuple:
    """What a selection reads of a classic plan's call, besides constants (no mask, no reset, the nonlinearity): the
    type, dtype, shape and device of each tensor -- the embedded token's (batch, 1, the embedding's width, its dtype
    and device), layer 0's states and weights (a weight's dtype or shape may change through ``.data``, the tensor
    staying the same). The op's check reads dtypes, and a backend's ``cache_key`` summarises what its ``supports()``
    reads in such terms (``seqzoo/kernels/registry.py``)."""
    return (batch, embedding.dtype, embedding.shape[-1:], embedding.device,
            *[(type(t), t.dtype, t.shape, t.device) for t in (*states, *weights) if t is not None])


class StepPlan(DecodePlan):
    """The modules and weights one classic cache's decode steps run through, as they were after the forward that
    planned them, and the cell calls they make (see :class:`DecodePlan`)."""

    __slots__ = ("layer_class", "weights", "kind", "names", "select", "extra", "fused", "found", "nonlinearity")

    def __init__(self, lm: nn.Module, backbone: nn.Module, layers: list[nn.Module],
                 weights: list[tuple[torch.Tensor | None, ...]]) -> None:
        super().__init__(lm, backbone, layers)
        self.weights = tuple(weights)
        cls = self.layer_class = type(layers[0])
        nonlinearity = layers[0].nonlinearity if cls.cell == "rnn" else None
        self.kind, self.names, self.fused = nonlinearity or cls.cell, cls.state_names, FUSED_KERNELS[cls.cell]
        self.nonlinearity = nonlinearity
        self.select, self.extra = cls.cell, ({} if nonlinearity is None else {"nonlinearity": nonlinearity})
        # Each layer's parameter dict and the weights it held.
        self.found = tuple((layer, layer._parameters, tuple(zip(WEIGHT_NAMES, w))) for layer, w in zip(layers, weights))

    @classmethod
    def build(cls, lm: nn.Module, backbone: nn.Module, cache: SeqzooCache) -> StepPlan | None:
        """A plan for ``cache``'s later steps, after a general forward (the prompt's or a step's) without gradients
        on the CPU; None where its layers would not run as one stack, or its embedding or head not as their one
        operation."""
        if not buildable(lm, backbone, cache):
            return None
        layers = list(backbone.layers)
        weights = stack_weights(layers)
        if weights is None:
            return None
        return cls(lm, backbone, layers, weights)

    def _states(self, entries: list, batch: int) -> list | None:
        hx = state_entries(entries, self.names)
        if hx is None:
            return None
        for values in hx:
            for value in values:
                if value.dtype is not self.dtype:
                    return None
        return hx

    def _run(self, backbone: nn.Module, input_ids: torch.Tensor, cache: SeqzooCache, x: torch.Tensor | None,
             hx: list) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]] | None:
        read = _call_read(self.embedding.weight, input_ids.shape[0], hx[0], self.weights[0])
        if not self._choice_kept(read):
            # The kernel registry is asked about the embedded token as in the general step (a plugin's or a forced
            # backend's check may read it), and its choice kept while it holds.
            if x is None:
                x = self._embedded(input_ids)
            backend, stamp = kernel_registry.select_stamped(self.select, x, *hx[0], *self.weights[0], mask=None,
                                                           reset=None, **self.extra)
            if backend.load() is not self.fused:
                return None  # (a forced or plugin backend)
            self._keep_choice(stamp, read)
        # Layer 0's input projection by the general step's own lookup, which checks the table against the weights as
        # they are (None: the cells compute it from the embedded token, as there, which is then embedded: with the
        # table, no layer reads it); in a block holding the model fixed, its values once in the block.
        gates = backbone.input_table.gates(self.embedding.weight, input_ids, cache, self.weights[0],
                                           self._fixed_block())
        if gates is None and x is None:
            x = self._embedded(input_ids)
        # (each step, as the general one: a missing bias is zeros of the weights' dtype as they are now)
        params = [fused._params(*w) for w in self.weights]
        y, new = fused.step_layers(self.kind, x, hx, params, None, gates)
        return y, [dict(zip(self.names, layer_new)) for layer_new in new]

    def _layer_classes_unchanged(self) -> bool:
        return stackable_class(self.layer_class)  # (its forward or __call__ replaced on the class: called)

    def _layers_unchanged(self, backbone: nn.Module) -> bool:
        """The same layers' weights, of a class that stacks, unhooked (the input table's lookup checks the table
        against the weights itself)."""
        kind = self.layer_class
        if not self._layer_classes_unchanged():
            return False
        for layer, parameters, weights in self.found:
            if type(layer) is not kind or has_hooks(layer) or (self.nonlinearity is not None
                                                               and layer.nonlinearity != self.nonlinearity):
                return False
            for name, weight in weights:
                if parameters.get(name) is not weight:
                    return False
        return True
