"""SeqzooCache: the one decoding cache of every seqzoo model, one entry per layer.

A recurrent layer's entry is a small dict of named tensors whose first dimension is the batch (``"h"``/``"c"`` for
an LSTM, ``"conv"``/``"ssm"`` for Mamba, ``"attn_shift"``/``"wkv"``/``"ffn_shift"`` for RWKV-7): a constant size,
however long the context. An attention layer's entry is transformers' own ``DynamicLayer``, whose keys and values
grow by one position per token. A hybrid model mixes both kinds, layer by layer.

Why a subclass of ``transformers.Cache`` (decided when the model layer was reshaped around one mixer protocol):
transformers' ``create_causal_mask`` and ``generate()`` expect a real ``Cache`` (mask sizes, beam reordering, batch
selection), and its attention layers already do the K/V bookkeeping, so seqzoo's attention layers keep exactly
transformers' semantics; seqzoo adds the layer kind transformers lacks -- a named recurrent state that is replaced,
not appended to -- and counts the positions it has seen itself, padding included, because generation compares that
count with the length of the attention mask (transformers' own linear-attention layers count nothing, and a cache of
them is never asked its length). transformers' ``LinearAttentionLayer`` is not used: it stores one conv and one
recurrent tensor per state index, in place, with a fixed shape, while seqzoo's mixers return new named states (an
LSTM has ``h`` and ``c``, RWKV-7 three) and truncated backpropagation needs them as autograd values.

The model that owns the cache declares ``_supports_default_dynamic_cache() -> False``, so ``generate()`` builds
none; the first forward builds this one.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import numbers
import warnings
from collections.abc import Iterable
from typing import Any, Iterator, Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer

State = dict[str, torch.Tensor]

ATTENTION = "attention"
RECURRENT = "recurrent"
LAYER_KINDS = (ATTENTION, RECURRENT)


# Where a cache holds the classic models' input table it decodes with (seqzoo.layers.recurrent.InputTable): an
# attribute, not a layer, since it is a function of the model's weights, shared by copies of the cache.
INPUT_TABLE_ATTRIBUTE = "_seqzoo_input_table"
# Where a cache holds the plan of its decode steps (seqzoo.models.classic.step_plan.StepPlan), made after the general
# forward that returned it (the prompt's, or a step's): the modules and weights a step runs, checked again by each.
STEP_PLAN_ATTRIBUTE = "_seqzoo_step_plan"


def removes_nothing(*args: Any, **kwargs: Any) -> bool:
    """Whether a crop's arguments remove no position: ``crop(0)``, as transformers' deferred stop check calls it
    every step (transformers >= 5.23 takes how many positions to remove, as a number <= 0)."""
    values = list(args) + list(kwargs.values())
    return len(values) == 1 and isinstance(values[0], int) and not isinstance(values[0], bool) and values[0] == 0


class StateLayer:
    """One recurrent layer's entry: its named state tensors (None until the layer has run)."""

    is_sliding = False
    is_compileable = False
    is_croppable = False
    # transformers' Cache.early_initialization skips layers that say no.
    supports_early_init = False

    def __init__(self) -> None:
        self.state: State | None = None

    def __repr__(self) -> str:
        names = sorted(self.state) if self.state else []
        return f"StateLayer({', '.join(names)})"

    def tensors(self) -> Iterator[torch.Tensor]:
        yield from (self.state or {}).values()

    def _map(self, fn) -> None:
        if self.state is not None:
            self.state = {name: fn(value) for name, value in self.state.items()}

    def update(self, *args: Any, **kwargs: Any) -> None:
        # transformers' Cache.update(key_states, value_states, layer_idx) reaches here for a recurrent layer, which
        # would otherwise end in an AttributeError that names no layer and no alternative.
        raise ValueError(
            "update(key_states, value_states, layer_idx): that layer of this cache is a recurrent layer, which holds "
            f"a state of named tensors ({', '.join(sorted(self.state or {})) or 'empty so far'}), not keys and "
            "values; read it with cache.layer(layer_idx) and replace it with cache.update_layer(layer_idx, state)")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda value: value.index_select(0, beam_idx.to(value.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda value: value.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        # Indices as transformers' DynamicLayer takes them, a list too (SeqzooCache.batch_select_indices checks them
        # for every layer first, so that none is cut to rows another layer then refuses).
        self._map(lambda value: value[torch.as_tensor(indices, device=value.device)])

    def crop(self, *args: Any, **kwargs: Any) -> None:
        if removes_nothing(*args, **kwargs):
            return  # as transformers' own layers: removing no position is nothing to undo
        raise ValueError(
            f"crop({_called(args, kwargs)}): a recurrent state cannot be rolled back to an earlier position: this "
            "cache holds recurrent layers, so it cannot be cropped; only crop(0), which removes no position, is "
            "accepted (decoding that needs rollback, such as assisted decoding, is refused)"
        )

    def reset(self) -> None:
        self.state = None

    def get_max_length(self) -> int:
        return -1

    def offload(self) -> None:
        self._map(lambda value: value.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        pass  # states move back with the first operation that needs them on the device


class SeqzooCache(Cache):
    """The decoding cache of a seqzoo model: per layer, a recurrent state (a dict of tensors) or growing K/V.

    Build one with :meth:`for_model` (or let the model's first forward build it). ``layer(i)`` is what layer ``i``
    continues from and ``update_layer(i, state)`` stores what it returned; ``get_seq_length()`` counts every
    position seen, padding included.

    ``read_mask``: for a cache with a recurrent layer that ``generate()`` filled, a (rows, positions) bool tensor,
    True where the state read a position as a token, False where it skipped it as padding (the call's mask, extended
    by ones for what it generated, a finished row's pad tokens after its EOS included); None where not known (a
    cache filled by a direct forward, or of attention layers only, which honour any later mask). A later
    ``generate()`` refuses a mask that calls those positions otherwise: a recurrent state cannot unread a token.
    It travels with copies and pickles, follows rows selected or repeated, and ``reset()`` and ``reorder_cache()``
    clear it.
    """

    # (a class default: a cache pickled before the attribute existed unpickles without it)
    read_mask: torch.Tensor | None = None

    def __init__(self, layer_kinds: Sequence[str], model_type: str | None = None,
                 mixer_types: Sequence[str] | None = None) -> None:
        layer_kinds = _names_per_layer(layer_kinds, "layer_kinds", "['recurrent', 'attention']")
        if not layer_kinds:
            raise ValueError("SeqzooCache needs at least one layer")
        bad = [kind for kind in layer_kinds if kind not in LAYER_KINDS]
        if bad:
            raise ValueError(f"unknown cache layer kind(s) {bad}; allowed: {', '.join(LAYER_KINDS)}")
        if mixer_types is not None:
            mixer_types = _names_per_layer(mixer_types, "mixer_types", "['mamba', 'attention']")
            if len(mixer_types) != len(layer_kinds):
                raise ValueError(f"SeqzooCache: mixer_types names {len(mixer_types)} mixer(s) {mixer_types} for "
                                 f"{len(layer_kinds)} layer(s) {layer_kinds}; give one per layer (or None)")
        super().__init__(layers=[DynamicLayer() if kind == ATTENTION else StateLayer() for kind in layer_kinds])
        self.layer_kinds = tuple(layer_kinds)
        self.model_type = model_type
        # Each layer's token mixer (a hybrid's differ): an RNN layer's state would be read by a GRU layer of the
        # same kind and width without an error.
        self.mixer_types = None if mixer_types is None else tuple(mixer_types)
        self.seen_tokens = 0
        self._fits_config: Any = None  # the config check_fits last accepted
        self._layout_config: Any = None  # the config of the model that built it (for_model), when known
        # Set by generate() after a beam search: the rows hold the beams of its last step, not the sequences it
        # returned, so continuing the cache would decode from other states (generate() refuses it).
        self.from_beam_search = False
        # Set by generate() on a cache with a recurrent layer: which of its positions the state read as tokens.
        self.read_mask = None

    @classmethod
    def for_model(cls, model: Any) -> "SeqzooCache":
        """An empty cache laid out for ``model`` (a seqzoo model or its config)."""
        config = getattr(model, "config", model)
        if getattr(config, "cache_layer_kinds", None) is None:
            hint = (f" (a preset name: build it first, SeqzooCache.for_model(seqzoo.create_model({model!r})))"
                    if isinstance(model, str) else "")
            raise TypeError(f"SeqzooCache.for_model takes a seqzoo model or its config (one that says its "
                            f"cache_layer_kinds); got {_described(model)}{hint}")
        mixers = getattr(config, "layer_mixer_types", None)
        cache = cls(config.cache_layer_kinds, config.model_type, mixers() if mixers is not None else None)
        cache._layout_config = config
        return cache

    def __repr__(self) -> str:
        return f"SeqzooCache(layers={self.layers}, seen_tokens={self.seen_tokens})"

    # -- per layer ------------------------------------------------------------------------------------------------

    def _entry(self, idx: int, method: str) -> Any:
        """``self.layers[idx]`` for an int index in range (from the end if negative, as a list's), else an error
        naming ``method``, the index and how many layers there are. A bool is no index (True would be layer 1)."""
        if type(idx) is int:
            try:
                return self.layers[idx]
            except IndexError:
                pass
        count = len(self.layers)
        if isinstance(idx, bool) or not isinstance(idx, numbers.Integral):
            raise TypeError(f"{method}({idx!r}): a layer index is an int from 0 to {count - 1}; got "
                            f"{type(idx).__name__}")
        if not -count <= idx < count:
            raise IndexError(f"{method}({idx}): this cache has {count} layer(s); a layer index is from 0 to "
                             f"{count - 1} (or from -{count}, counting from the end)")
        return self.layers[int(idx)]

    def layer(self, idx: int) -> Any:
        """What layer ``idx`` continues from: its state dict (None before its first call) or its K/V layer."""
        entry = self._entry(idx, "layer")
        return entry.state if isinstance(entry, StateLayer) else entry

    def update_layer(self, idx: int, state: Any) -> None:
        """Store what layer ``idx`` returned. An attention layer updates its K/V in place and returns them.

        A recurrent layer's state is a non-empty dict of named tensors, the batch first, or None (the layer then
        starts from zero). One that replaces a state must have its names -- a layer reads its state by name, and one
        it does not find (a misspelt or missing name) would start from zero without a word -- and each tensor the
        dimensions of the one it replaces past the first, in a floating-point dtype where that one is. The rows (the
        first dimension) are the model's to check against its inputs (a state of one row broadcasts), and a float
        dtype its to cast: a model continues a float32 cache in bf16."""
        entry = self._entry(idx, "update_layer")
        if isinstance(entry, StateLayer):
            held = entry.state
            if state is not held and state is not None:
                if held is None:
                    _check_state(idx, state)
                else:
                    _check_replacement(idx, held, state)
            entry.state = state
        elif state is not entry:
            raise ValueError(f"layer {idx} of this cache is an attention layer; it updates its own keys and values")

    def advance(self, num_positions: int) -> None:
        """Count ``num_positions`` more positions seen (an int >= 0: a model's forward advances by its length)."""
        if type(num_positions) is not int or num_positions < 0:
            num_positions = _count(num_positions)
        self.seen_tokens += num_positions

    def unchanged_on_error(self) -> contextlib.AbstractContextManager:
        """Put the cache back as it was if the body raises part way through the layers (a layer's error, memory
        running out): every recurrent layer's state, every attention layer's keys and values, the position count.
        A forward that fails then leaves the cache as the caller passed it, to continue or retry, instead of some
        layers one token ahead of the others. (Layers replace their state and transformers' ``DynamicLayer``
        concatenates new keys to old ones, so holding the old objects is enough.)"""
        return _RestoredOnError(self)

    def _saved(self) -> tuple:
        """What :meth:`_restore` puts back: each recurrent layer's state (the objects, no copies), each attention
        layer's attributes and the length of its keys (not the keys: holding them would keep every layer's old keys
        and values alive beside the grown ones until the forward ends, twice the cache at its peak), the position
        count, and the layout an empty cache takes from the model that fills it (:meth:`check_fits`): one left empty
        by a failed forward is as free to be filled by another model as before."""
        entries = []
        for entry in self.layers:
            if isinstance(entry, StateLayer):
                entries.append(entry.state)
                continue
            attributes = dict(vars(entry))
            keys = attributes.get("keys")
            length = None
            if attributes.get("is_initialized") and isinstance(keys, torch.Tensor):
                length = keys.shape[-2]
                del attributes["keys"], attributes["values"]
            entries.append((attributes, length))
        layout = (self.model_type, self.mixer_types, self._layout_config, self._fits_config)
        return entries, self.seen_tokens, layout

    def _restore(self, saved: tuple) -> None:
        """Put back what :meth:`_saved` returned (see :meth:`unchanged_on_error`): an attention layer's keys and values
        are cut back to the length they had (transformers' ``DynamicLayer`` only ever appends)."""
        entries, self.seen_tokens, layout = saved
        self.model_type, self.mixer_types, self._layout_config, self._fits_config = layout
        for entry, was in zip(self.layers, entries):
            if isinstance(entry, StateLayer):
                entry.state = was
                continue
            attributes, length = was
            current = vars(entry)
            keys, values = current.get("keys"), current.get("values")
            current.clear()
            current.update(attributes)
            if length is not None:
                current["keys"], current["values"] = keys[..., :length, :], values[..., :length, :]

    def check_fits(self, config: Any, batch: int, where: str) -> None:
        """Raise if this cache was built for another architecture or layout, or holds another batch size."""
        # The layout check reads config properties (slow attribute access in transformers' configs); a decode loop
        # passes the same config every token, and a built model's layer kinds do not change.
        if config is not self._fits_config:
            mixers = getattr(config, "layer_mixer_types", None)
            mixers = tuple(mixers()) if mixers is not None else None
            if (self.model_type not in (None, config.model_type)
                    or tuple(config.cache_layer_kinds) != self.layer_kinds
                    or None not in (self.mixer_types, mixers) and mixers != self.mixer_types):
                built = list(self.mixer_types or self.layer_kinds)
                here = list(mixers if self.mixer_types is not None and mixers else config.cache_layer_kinds)
                raise ValueError(
                    f"{where}: the cache was built for a {self.model_type or 'seqzoo'} model with layers {built}, "
                    f"not this {config.model_type} model with layers {here}; pass a cache this model returned, or "
                    "SeqzooCache.for_model(model)"
                )
            self._check_sizes(config, where)
            if not self.seen_tokens and self.batch_size is None:
                # An empty cache takes the layout of the model that fills it: a cache built for other sizes (or by
                # hand, without a model) is accepted while empty, and must afterwards be checked as this model's.
                self._layout_config = config
                self.model_type = config.model_type
                if mixers is not None:
                    self.mixer_types = mixers
        self._fits_config = config
        cached = self.batch_size
        if cached is not None and cached != batch:
            raise ValueError(
                f"{where}: the cache holds {cached} sequence(s) but the inputs have batch size {batch}; a cache "
                "continues the sequences it was built from (select rows with cache.batch_select_indices)"
            )

    def _check_sizes(self, config: Any, where: str) -> None:
        """Raise if the cache holds states or keys of a model of other sizes than ``config``'s: the same layers with
        another hidden_size, state_size or head layout would otherwise fail inside a kernel with a bare shape error.
        Compared by the bytes a sequence's state and a token's keys and values take, which nearly every such size
        changes (not a head layout of the same width, 4 heads of 8 for 2 of 16: the attention layers compare the
        keys' own shape, :func:`check_kv_layout`)."""
        built = self._layout_config
        if built is None or built is config or not self.seen_tokens:
            return
        try:
            sizes = [(c.state_bytes_per_sequence(), c.kv_bytes_per_token()) for c in (built, config)]
        except NotImplementedError:  # a plugin's config that does not say
            return
        if sizes[0] != sizes[1]:
            (state, kv), (own_state, own_kv) = sizes
            raise ValueError(
                f"{where}: the cache holds the states of a model of other sizes: {state:,} bytes of state per "
                f"sequence and {kv:,} bytes of keys and values per token, where this model's are {own_state:,} and "
                f"{own_kv:,} (another hidden_size, state_size or head layout); pass a cache this model returned, or "
                "SeqzooCache.for_model(model)"
            )

    # -- what transformers asks of a cache -------------------------------------------------------------------------

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The positions this cache has seen, padding included: the same for every layer (``layer_idx`` is
        transformers' argument, and read by nothing here)."""
        return self.seen_tokens

    @property
    def is_linear(self) -> list[bool]:
        """False for every layer, recurrent layers too (transformers asks whether its generate() may skip slicing
        cached prompt tokens off; this cache counts its positions, as an attention cache does)."""
        # transformers >= 5.24 does not slice already-cached prompt tokens off for a cache whose layers are all
        # "linear", because its own linear caches do not count positions. This one does, so it answers like an
        # attention cache and generate() continues from it as on 5.23.
        return [False] * len(self.layers)

    @property
    def is_compileable(self) -> bool:
        """False: transformers' static-cache compilation does not apply (``model.compile_decoding()`` compiles
        seqzoo's decode step)."""
        return False

    @property
    def is_croppable(self) -> bool:
        """Whether :meth:`crop` can remove positions: a cache of attention layers only, of a model whose
        ``config.capabilities.can_crop_cache`` says so (the causal Transformer's)."""
        # Attention layers only, and of a model whose cache can be cropped: an encoder-decoder's cross-attention
        # layers hold the source's keys and values, which a crop of the decoder's positions would cut.
        config = self._layout_config or self._fits_config
        return (all(kind == ATTENTION for kind in self.layer_kinds)
                and (config is None or config.capabilities.can_crop_cache))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Row ``i`` becomes row ``beam_idx[i]`` (beam search), in every layer; the indices as for
        :meth:`batch_select_indices`. :attr:`read_mask` is dropped (unknown from then on) rather than reordered at
        every step of a beam search, whose cache is refused for continuing anyway."""
        super().reorder_cache(self._rows(beam_idx, "reorder_cache"))
        self.read_mask = None

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` names, in that order, in every layer: a 1-d integer tensor or a list or tuple
        of ints, each a row of the cache (from 0). Checked before any layer changes, so that a refused index leaves
        no layer holding other rows than the others (transformers' layers would take an int and drop the batch
        dimension, or a bool and add one)."""
        rows = self._rows(indices, "batch_select_indices")
        super().batch_select_indices(rows)
        if self.read_mask is not None:
            self.read_mask = self.read_mask[rows.to(self.read_mask.device)]

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat each row ``repeats`` times in place (rows 0, 0, 1, 1 for 2), in every layer: an int >= 1 (0 would
        empty the cache)."""
        if type(repeats) is not int or repeats < 1:
            called = f"batch_repeat_interleave({repeats!r}): repeats is how many times each row is repeated, an int"
            if isinstance(repeats, bool) or not isinstance(repeats, numbers.Integral):
                raise TypeError(f"{called} >= 1; got {_described(repeats)}")
            if repeats < 1:
                raise ValueError(f"{called} >= 1 ({repeats} would leave the cache no rows)")
            repeats = int(repeats)
        super().batch_repeat_interleave(repeats)
        if self.read_mask is not None:
            self.read_mask = self.read_mask.repeat_interleave(repeats, dim=0)

    def _rows(self, indices: Any, method: str) -> torch.Tensor:
        """``indices`` as a 1-d integer tensor of rows of this cache, or an error naming ``method``, the value and
        what is allowed. The tensors generate() passes (1-d, int64) take the first branch and one range check: an
        index out of range on a GPU would otherwise end in a device-side assert."""
        allowed = "a 1-d tensor of int64 or int32, or a list or tuple of ints, each a row from 0 to the batch size - 1"
        if isinstance(indices, torch.Tensor):
            if indices.dim() != 1 or indices.dtype not in (torch.int64, torch.int32):
                hint = " (for a mask of rows, pass mask.nonzero().flatten())" if indices.dtype == torch.bool else ""
                raise TypeError(f"{method}(tensor of shape {tuple(indices.shape)} and dtype {indices.dtype}): "
                                f"allowed is {allowed}{hint}")
            rows = indices
        elif isinstance(indices, (list, tuple)):
            bad = [value for value in indices if isinstance(value, bool) or not isinstance(value, numbers.Integral)]
            if bad:
                raise TypeError(f"{method}({indices!r}): {bad[0]!r} is no row index; allowed is {allowed}")
            rows = torch.tensor([int(value) for value in indices], dtype=torch.int64)
        else:
            raise TypeError(f"{method}({indices!r}): got {_described(indices)}; allowed is {allowed} (an int would "
                            "drop the batch dimension: select one row with [i])")
        if not rows.numel():
            raise ValueError(f"{method}({indices!r}): no row is named; a cache keeps at least one row ({allowed})")
        batch = self.batch_size
        if batch is not None:  # (an empty cache holds no rows to select: every layer skips it, as transformers')
            low, high = torch.aminmax(rows)
            if bool((low < 0) | (high >= batch)):  # (one wait for a device, not two)
                raise ValueError(f"{method}: the indices {rows.tolist()} name rows from {int(low)} to {int(high)}, "
                                 f"but this cache holds {batch} row(s): each index is from 0 to {batch - 1}")
        return rows

    def crop(self, *args: Any, **kwargs: Any) -> None:
        """Remove the last positions, as transformers' ``crop`` does (``crop(-n)``: the last ``n``), where
        :attr:`is_croppable`; any other cache (a recurrent layer, which cannot be rolled back, or an encoder-decoder's)
        refuses every crop but one that removes nothing, ``crop(0)``, and changes no layer."""
        # transformers' arguments differ between releases; every layer crops its own, and a recurrent one refuses --
        # before any layer is cut, so that a refused crop leaves the attention layers' keys and values as they were.
        if not self.is_croppable:
            if RECURRENT in self.layer_kinds:
                StateLayer().crop(*args, **kwargs)  # raises, unless no position is to be removed
            elif not removes_nothing(*args, **kwargs):
                raise ValueError(
                    f"crop({_called(args, kwargs)}): this cache was filled by a {self.model_type} model whose cache "
                    "cannot be cropped (config.capabilities.can_crop_cache is False: an encoder-decoder's "
                    "cross-attention layers hold the source's keys and values, not decoded positions, and a crop "
                    "would cut them); only crop(0), which removes no position, is accepted (run the decoder inputs "
                    "to keep afresh instead)")
            return
        super().crop(*args, **kwargs)
        self.seen_tokens = self.layers[0].get_seq_length()

    def reset(self) -> None:
        """Empty every layer and the position count: the cache then decodes as a new one."""
        super().reset()
        self.seen_tokens = 0
        self.from_beam_search = False
        self.read_mask = None
        # A reset cache decodes as a new one: the classic models' input table it held is checked against the weights
        # again on its next step (a fused optimizer's step or a change through .data since leaves no version behind).
        self.__dict__.pop(INPUT_TABLE_ATTRIBUTE, None)
        self.__dict__.pop(STEP_PLAN_ATTRIBUTE, None)

    # -- seqzoo's own ----------------------------------------------------------------------------------------------

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor the cache holds: each recurrent layer's named states, each attention layer's keys and
        values."""
        for entry in self.layers:
            if isinstance(entry, StateLayer):
                yield from entry.tensors()
            elif getattr(entry, "is_initialized", False) and entry.keys is not None:
                yield entry.keys
                yield entry.values

    @property
    def batch_size(self) -> int | None:
        """The rows the cache holds, or None while it holds no tensor (transformers' own caches say -1)."""
        # The first tensor's batch size (what tensors() yields first), read without generators: every decode step
        # asks (check_fits).
        for entry in self.layers:
            if isinstance(entry, StateLayer):
                for value in (entry.state or {}).values():
                    return value.shape[0]
            elif getattr(entry, "is_initialized", False) and entry.keys is not None:
                return entry.keys.shape[0]
        return None

    def __deepcopy__(self, memo: dict) -> "SeqzooCache":
        """``copy.deepcopy(cache)``, which README and ``generate()`` name for continuing one cache more than once; a
        clear error for a cache filled with gradients recorded (torch deep-copies only a graph's leaves, and its own
        error talks of modules and weight_norm)."""
        if any(tensor.requires_grad and not tensor.is_leaf for tensor in self.tensors()):
            raise RuntimeError(
                "copy.deepcopy(cache): this cache holds tensors of an autograd graph (it was filled with gradients "
                "recorded, outside torch.no_grad()), which torch cannot copy; fill it under torch.no_grad() (as "
                "generate() does), or copy a detached one: copy.deepcopy(cache.detach()) (detach() cuts the graph "
                "of this cache in place)"
            )
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        for name, value in self.__dict__.items():
            copied.__dict__[name] = copy.deepcopy(value, memo)
        return copied

    def detach(self) -> "SeqzooCache":
        """Cut the autograd graph here (truncated backpropagation through time)."""
        for entry in self.layers:
            if isinstance(entry, StateLayer):
                entry._map(torch.Tensor.detach)
            elif getattr(entry, "is_initialized", False):
                entry.keys, entry.values = entry.keys.detach(), entry.values.detach()
        return self

    def layer_bytes(self) -> list[int]:
        """Bytes each layer holds per sequence (recurrent state, or K/V so far)."""
        batch = self.batch_size or 1
        sizes = []
        for entry in self.layers:
            tensors = list(entry.tensors()) if isinstance(entry, StateLayer) else (
                [entry.keys, entry.values] if getattr(entry, "is_initialized", False) and entry.keys is not None
                else [])
            sizes.append(sum(t.numel() * t.element_size() for t in tensors) // batch)
        return sizes

    def state_bytes(self) -> int:
        """Bytes held per sequence (all layers)."""
        return sum(self.layer_bytes())

    # -- the RecurrentCache API of seqzoo 0.1, kept for one release ----------------------------------------------

    def get(self, layer_idx: int, name: str) -> torch.Tensor | None:
        """Deprecated: ``cache.layer(layer_idx)[name]``, one named tensor of a recurrent layer's state (None where
        the layer holds no state yet)."""
        _deprecated("get(layer_idx, name)", "layer(layer_idx)[name]")
        return (self._held_state(layer_idx, "get") or {}).get(name)

    def set(self, layer_idx: int, name: str, value: torch.Tensor) -> None:
        """Replace one named tensor of layer ``layer_idx``'s state (or give an empty layer a state of that one name):
        a name the state does not hold is refused, as :meth:`update_layer` refuses it."""
        _deprecated("set(layer_idx, name, value)", "update_layer(layer_idx, {...})")
        held = self._held_state(layer_idx, "set")
        if held is not None and name not in held:
            raise ValueError(
                f"set({layer_idx}, {name!r}, ...): layer {layer_idx} holds a state named {_names(held)}, not "
                f"{name!r}{_did_you_mean(name, held)}: the layer would never read it; set one of those names (a "
                f"state of other names is given whole: update_layer({layer_idx}, None) empties the layer, then "
                f"update_layer({layer_idx}, {{...}}))")
        self.update_layer(layer_idx, {**(held or {}), name: value})

    def _held_state(self, layer_idx: int, method: str) -> State | None:
        entry = self._entry(layer_idx, method)
        if not isinstance(entry, StateLayer):
            raise ValueError(f"{method}({layer_idx}, ...): layer {layer_idx} of this cache is an attention layer, "
                             "which holds keys and values, not named states: read it with layer(layer_idx)")
        return entry.state


def _check_state(idx: int, state: Any) -> None:
    """Refuse a first state for recurrent layer ``idx`` (its entry empty) that no layer could read: not a non-empty
    dict of named tensors with the batch as their first dimension."""
    if not isinstance(state, dict) or not state:
        raise TypeError(f"update_layer({idx}, ...): a recurrent layer's state is a non-empty dict of named tensors "
                        f"(or None, to start the layer from zero); got {_described(state)}")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"update_layer({idx}, ...): state[{name!r}] is {_described(value)}; a state holds "
                            "tensors with the batch as their first dimension")
        if not value.dim():
            raise ValueError(f"update_layer({idx}, ...): state[{name!r}] is a 0-d tensor; a state holds tensors "
                             "with the batch as their first dimension")


def _check_replacement(idx: int, held: State, state: Any) -> None:
    """Refuse a state for recurrent layer ``idx`` that does not fit the one it replaces, ``held`` (see
    :meth:`SeqzooCache.update_layer`). Every decode step stores its new states through here: the common case is
    a comparison of the names and, per tensor, of its shape and dtype."""
    if not isinstance(state, dict) or state.keys() != held.keys():
        if not isinstance(state, dict):
            raise TypeError(f"update_layer({idx}, ...): a recurrent layer's state is a dict of named tensors (or "
                            f"None, to start the layer from zero); got {_described(state)}")
        missing = [name for name in held if name not in state]
        unknown = [name for name in state if name not in held]
        differs = []
        if missing:
            differs.append(f"missing {missing}")
        if unknown:
            differs.append(f"not held {unknown}{_did_you_mean(unknown[0], held)}")
        raise ValueError(
            f"update_layer({idx}, ...): layer {idx} holds a state named {_names(held)}, but the state given is named "
            f"{_names(state)} ({'; '.join(differs)}): the layer reads its state by name, and would start a name it "
            f"does not find from zero; give the same names (update_layer({idx}, None) empties the layer first, for "
            "a state of other names)")
    for name, value in state.items():
        before = held[name]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"update_layer({idx}, ...): state[{name!r}] is {_described(value)}; a state holds "
                            "tensors")
        if value.shape == before.shape and value.dtype == before.dtype:
            continue  # (what a model's step stores)
        if value.shape[1:] != before.shape[1:] or value.dim() != before.dim():
            raise ValueError(
                f"update_layer({idx}, ...): state[{name!r}] has shape {tuple(value.shape)}, where the state it "
                f"replaces has {tuple(before.shape)}: past the rows (the first dimension), a layer's state keeps "
                f"its shape: (rows, {', '.join(str(size) for size in before.shape[1:])})")
        if value.dtype != before.dtype and not (value.is_floating_point() and before.is_floating_point()):
            raise ValueError(
                f"update_layer({idx}, ...): state[{name!r}] is {value.dtype}, where the state it replaces is "
                f"{before.dtype}: a state takes the dtype it has"
                + (" or another floating-point one (the model casts it to its own)"
                   if before.is_floating_point() else ""))


def _called(args: tuple, kwargs: dict) -> str:
    """A call's arguments as written, for an error message."""
    return ", ".join([repr(value) for value in args] + [f"{name}={value!r}" for name, value in kwargs.items()])


def _count(num_positions: Any) -> int:
    """``num_positions`` as :meth:`SeqzooCache.advance` takes it (an int >= 0; a symbolic one while compiling), or
    an error naming it."""
    if isinstance(num_positions, torch.SymInt):
        return num_positions
    if isinstance(num_positions, bool) or not isinstance(num_positions, numbers.Integral):
        raise TypeError(f"advance({num_positions!r}): the number of positions seen is an int >= 0; got "
                        f"{_described(num_positions)}")
    if num_positions < 0:
        raise ValueError(f"advance({num_positions}): the number of positions seen is an int >= 0; a cache cannot "
                         "go back (a cache of attention layers only is cut back with crop)")
    return int(num_positions)


def _names_per_layer(names: Any, argument: str, example: str) -> list:
    """``names`` (one per layer) as a list; a string or a non-iterable is refused, not read letter by letter."""
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise TypeError(f"SeqzooCache: {argument} is a list with one name per layer, e.g. {example}; got "
                        f"{_described(names)}")
    return list(names)


def _described(value: Any) -> str:
    """A value for an error message: its type, and its repr where that is short."""
    shown = repr(value)
    return f"{type(value).__name__} {shown}" if len(shown) <= 60 else type(value).__name__


def _names(state: dict) -> str:
    return ", ".join(repr(name) for name in state) or "nothing"


def _did_you_mean(name: Any, names: Iterable) -> str:
    close = difflib.get_close_matches(name, [str(each) for each in names], n=1) if isinstance(name, str) else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_kv_layout(entry: Any, key: torch.Tensor) -> None:
    """Refuse to continue an attention layer's cached keys and values (a ``DynamicLayer``) with keys ``key``
    ((B, heads, T, head_dim)) of another dtype or head layout than they hold.

    Another dtype: a cache filled by the model in float32 and continued by it in bf16 would otherwise end in torch's
    error about query, key and value dtypes (as in transformers' own models). Casting them would change what the
    cache holds without a word (float32 to bf16 loses precision, and a step that then fails could not put it back);
    a recurrent layer's state is cast, being the step's input alone.

    Another head layout: a cache filled by a model of 4 heads of 8 and continued by one of 2 heads of 16 takes the
    same bytes per token (what :meth:`SeqzooCache.check_fits` compares), and ended in torch's "Sizes of tensors must
    match" inside the layer."""
    cached = entry.keys if getattr(entry, "is_initialized", False) else None
    if not isinstance(cached, torch.Tensor) or not cached.numel():
        return
    if cached.dtype != key.dtype:
        raise ValueError(
            f"the cache holds an attention layer's keys and values in {cached.dtype}, but the model computes them "
            f"in {key.dtype}: continue the cache with the model in the dtype that filled it, or start a new cache "
            "(run the prompt again) after changing the model's dtype")
    if cached.dim() == key.dim() == 4 and (cached.shape[1], cached.shape[-1]) != (key.shape[1], key.shape[-1]):
        raise ValueError(
            f"the cache holds an attention layer's keys of {cached.shape[1]} head(s) of size {cached.shape[-1]}, but "
            f"this layer computes {key.shape[1]} head(s) of size {key.shape[-1]}: the cache was filled by a model "
            "with another head layout (num_key_value_heads, head_dim); pass a cache this model returned, or "
            "SeqzooCache.for_model(model)")


class _RestoredOnError:
    """What :meth:`SeqzooCache.unchanged_on_error` returns: a plain class, not a generator's context manager, since
    every forward enters one (a decode step of a small model in a few hundred microseconds)."""

    __slots__ = ("cache", "saved")

    def __init__(self, cache: SeqzooCache) -> None:
        self.cache = cache
        self.saved = cache._saved()

    def __enter__(self) -> SeqzooCache:
        return self.cache

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> bool:
        if kind is not None:
            self.cache._restore(self.saved)
        return False  # (the error goes on)


def unchanged_on_error(cache: Any) -> contextlib.AbstractContextManager:
    """``cache.unchanged_on_error()`` for a SeqzooCache; nothing to keep for None, nor in a graph dynamo traces (a
    compiled step either runs whole or raises before any state is stored)."""
    if isinstance(cache, SeqzooCache) and not torch.compiler.is_compiling():
        return cache.unchanged_on_error()
    return contextlib.nullcontext()


class RecurrentCache(SeqzooCache):
    """Deprecated name of :class:`SeqzooCache` for an all-recurrent model (seqzoo 0.1); removed in the next
    release."""

    def __init__(self, num_layers: int) -> None:
        _deprecated("RecurrentCache(num_layers)", "SeqzooCache.for_model(model)")
        if num_layers < 1:
            raise ValueError(f"RecurrentCache needs at least one layer, got num_layers={num_layers}")
        super().__init__([RECURRENT] * num_layers)


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"seqzoo: {old} is deprecated and will be removed in the next release; use {new}",
                  FutureWarning, stacklevel=3)


__all__ = ["ATTENTION", "LAYER_KINDS", "RECURRENT", "RecurrentCache", "SeqzooCache", "State", "StateLayer",
           "unchanged_on_error"]
