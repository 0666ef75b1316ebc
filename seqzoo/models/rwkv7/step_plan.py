"""RWKV-7's planned decode step: what the general decode step of one cache runs (the embedding, ``embed_norm``, every
block in one scripted call of ``layers/rwkv7_step.py``, the final norm and a plain vocabulary head), found after the
prompt's forward (or a general step) and kept on the cache, so that each later step checks that those decisions still
hold and runs the operations alone (``models/decode_plan.py`` holds what every family's plan shares).

At 256 channels and four blocks the general step spent about 370 µs of a 1.65 ms step in Python outside the scripted
blocks (the causal LM's and the backbone's argument handling, the cache's error restore, and reading every block's
30 parameters through its modules, with the checks that they are what the script computes). A plan reads the
parameters once. Each step checks that they are still the same tensors in the same modules (by identity: one flat
tuple of every parameter and submodule the blocks' parts and the norms hold), that no part has a hook, a
``__call__`` of its own or another class, that each block's parts are under the names they had, and that each tensor
is still plain float32 (``.data`` may change a parameter's dtype and keep it); it reads each block's settings (eps,
heads, head size, dropout, norm position, value residual) again. A weight changed in place is seen, as in the general
step: the plan holds the tensors, not copies. It changes no result: the same operations on the same tensors, and it
declines (for the general step to run) wherever that step would do anything else."""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn

from seqzoo.cache import SeqzooCache
from seqzoo.kernels import onednn_linear
from seqzoo.layers import rwkv7_step
from seqzoo.layers.mixer import has_hooks, plain_module_call
from seqzoo.layers.rwkv7 import DECAY_LOG_SCALE, RWKV7TimeMix
from seqzoo.layers.rwkv7_step import block_parts, block_settings, block_tensors
from seqzoo.models.decode_plan import DecodePlan, buildable, state_entries

_NAMES = ("attn_shift", "wkv", "ffn_shift")
_NORMS = ("embed_norm", "norm")


def _held(modules: tuple[nn.Module, ...]) -> tuple[Any, ...]:
    """Every parameter (None included) and submodule ``modules`` hold, in their dicts' order: the same objects in the
    same places while this is the same. (A plain loop: faster here than chained maps.)"""
    held: list[Any] = []
    for module in modules:
        held += module._parameters.values()
        held += module._modules.values()
    return tuple(held)


class RWKV7StepPlan(DecodePlan):
    """The modules and tensors one RWKV-7 cache's decode steps run through, as they were after the forward that planned
    them (see :class:`~seqzoo.models.decode_plan.DecodePlan`)."""

    __slots__ = ("block_class", "block_forward", "norms", "parts", "names", "modules", "types", "classes", "held",
                 "tensors", "checked", "heads", "head_size", "channels")

    def __init__(self, lm: nn.Module, backbone: nn.Module, layers: list[nn.Module], block_class: type,
                 block_forward: Any, parts: list[tuple[nn.Module, ...]], tensors: list[list[torch.Tensor]]) -> None:
        super().__init__(lm, backbone, layers)
        self.block_class, self.block_forward = block_class, block_forward
        self.norms = tuple(backbone._modules[name] for name in _NORMS)
        self.parts, self.tensors = tuple(parts), tensors
        self.names = tuple(block.part_names for block in layers)  # (which attribute holds which part, per block)
        # Every module the step stands in for, flat (the backbone's own holds the norms), their classes, and what they
        # hold; the tensors read (the blocks', the norms' weights and biases) for the dtype check.
        self.modules = (backbone, *self.norms, *(module for block in parts for module in block))
        self.types = tuple(map(type, self.modules))
        self.classes = tuple(set(self.types[1:]))  # (the backbone's call is the caller's check)
        self.held = _held(self.modules)
        self.checked = (*(tensor for block in tensors for tensor in block),
                        *(tensor for norm in self.norms for tensor in (norm.weight, norm.bias)))
        attn = parts[0][2]
        self.heads, self.head_size, self.channels = attn.num_heads, attn.head_size, backbone.config.hidden_size

    @classmethod
    def build(cls, lm: nn.Module, backbone: nn.Module, cache: SeqzooCache, block_class: type,
              block_forward: Any) -> RWKV7StepPlan | None:
        """A plan for ``cache``'s later steps, after a general forward (the prompt's or a step's) without gradients on
        the CPU; None where the blocks would not run in one scripted call (``step_blocks``' conditions on the
        modules), the norms not as their one operation, or the embedding or head not as theirs. ``block_class``,
        ``block_forward``: the blocks' class and its forward as defined."""
        if not buildable(lm, backbone, cache) or backbone.embed_tokens.weight.dtype is not torch.float32:
            return None
        layers = list(backbone.layers)
        first = layers[0]._modules.get("attn") if layers else None
        if type(first) is not RWKV7TimeMix:
            return None
        for name in _NORMS:  # (their weights' dtype: _layers_unchanged, below)
            if type(backbone._modules.get(name)) is not nn.LayerNorm:
                return None
        parts, tensors = [], []
        for idx, block in enumerate(layers):
            found = block_parts(block, block_class)
            found_tensors = None if found is None else block_tensors(found)
            if found_tensors is None or block_settings(found, idx, first.num_heads) is None:
                return None
            parts.append(found)
            tensors.append(found_tensors)
        plan = cls(lm, backbone, layers, block_class, block_forward, parts, tensors)
        return plan if plan._layers_unchanged(backbone) else None

    def _layers_unchanged(self, backbone: nn.Module) -> bool:
        """The same modules of the same classes holding the same parameters and submodules (the norms still the
        backbone's), unhooked, called by torch's own ``__call__``, each block's parts under the names it had, and
        every tensor read plain float32."""
        modules = self.modules
        if not all(map(operator.is_, map(type, modules), self.types)) or not self._layer_classes_unchanged():
            return False
        for module in modules:
            if has_hooks(module):
                return False
        for block, names in zip(self.layers, self.names):
            if block.part_names != names:
                return False
        now = _held(modules)
        held = self.held
        return len(now) == len(held) and all(map(operator.is_, now, held)) and rwkv7_step._plain(self.checked)

    def _chunked_chosen(self, x: torch.Tensor, heads: Any, head_size: Any) -> bool:
        """``rwkv7_step.chunked_chosen`` for the step's call, its answer kept while it holds (:meth:`_choice_kept`).
        The call hands the registry six empty probes made like ``x`` (B, 1, C) of the heads and head size (the
        caller checked that they equal the plan's; given as another type than int, they go to the registry's call,
        which refuses them, as there)."""
        read = (x.shape[0], x.dtype, x.device, type(heads), type(head_size))
        if self._choice_kept(read):
            return True
        found, stamp = rwkv7_step.chunked_chosen_stamped(x, heads, head_size)
        if found:
            self._keep_choice(stamp, read)
        return found

    def _layer_classes_unchanged(self) -> bool:
        for cls in self.classes:
            if not plain_module_call(cls):
                return False
        return True

    def _states(self, entries: list, batch: int) -> list | None:
        carried = state_entries(entries, _NAMES)
        if carried is None:
            return None
        shift_shape = (batch, self.channels)
        wkv_shape = (batch, self.heads, self.head_size, self.head_size)
        for shift, wkv, ffn_shift in carried:
            if (shift.shape != shift_shape or ffn_shift.shape != shift_shape or wkv.shape != wkv_shape
                    or not rwkv7_step._plain((shift, wkv, ffn_shift))):
                return None  # (another dtype is cast by the general step; another shape is its to refuse)
        return carried

    def _run(self, backbone: nn.Module, input_ids: torch.Tensor, cache: SeqzooCache, x: torch.Tensor | None,
             carried: list) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]] | None:
        if x is None:
            x = self._embedded(input_ids)
        # (the heads and head size as the general step reads them, from the first time mix: the objects themselves,
        # which it hands on; values other than the states were checked against decline)
        first = self.parts[0][2]
        heads, head_size = first.num_heads, first.head_size
        if (rwkv7_step.stack_declined(self.block_class, self.block_forward) or heads != self.heads
                or head_size != self.head_size):
            return None
        eps = []
        for idx, parts in enumerate(self.parts):
            settings = block_settings(parts, idx, heads)
            if settings is None:
                return None
            eps.append(settings)
        embed_norm, norm = self.norms
        # (the norms over the channels, as the script computes them; nn.LayerNorm's forward, whose class and
        # F.layer_norm stack_declined has checked, would raise on another shape or normalise over more)
        channels = (x.shape[-1],)
        if embed_norm.normalized_shape != channels or norm.normalized_shape != channels:
            return None
        if not self._chunked_chosen(x, heads, head_size):
            return None
        step = rwkv7_step.scripted_normed_step()
        if step is None:
            return None
        shifts, wkvs, ffn_shifts = (list(column) for column in zip(*carried))
        y, shifts, wkvs, ffn_shifts = step(
            x, embed_norm.weight, embed_norm.bias, embed_norm.eps, self.tensors, shifts, wkvs, ffn_shifts, heads, eps,
            DECAY_LOG_SCALE, onednn_linear.rows_from(), norm.weight, norm.bias, norm.eps)
        return y, rwkv7_step.state_dicts(shifts, wkvs, ffn_shifts)
