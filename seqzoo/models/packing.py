"""Packed rows: several documents in one row of a batch, each computed exactly as if it were alone.

transformers marks packed rows the way its ``DataCollatorWithFlattening`` writes them: ``position_ids`` that restart
(any step other than +1 begins a new document, ``position_ids_start`` included), and, when asked, ``seq_idx`` (the
document each token belongs to) or ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (cumulative document lengths over the
flattened batch, FlashAttention's convention) with ``max_length_q`` / ``max_length_k``. seqzoo reads any of them;
given together they must agree. As in transformers, the markers mean packing only when no ``attention_mask`` and no
cache to continue from is passed (with a padding mask, ``generate()``'s position ids restart at every left pad).

How a document is kept alone:

* Attention-only models (the Transformer) keep the packed layout and attend through a block-diagonal causal mask
  built from the position ids (transformers' ``create_causal_mask``), in training and in evaluation alike.
* Causal models whose every token mixer takes a reset (``Mixer.takes_reset``: RWKV-7, Mamba, Mamba-2) keep the
  packed layout too: the model passes ``reset`` ((B, T) bool, True at each document's first token) through its
  mixers to the kernels, which start every recurrent state (and every token shift and convolution window) from
  zero there (seqzoo/kernels/reset.py). No padding is computed.
* Every other model with a recurrent layer (hybrids, whose attention layers have no reset; bidirectional models,
  whose right-to-left pass would need the documents' ends; RNN, LSTM and GRU, for which unpacking measured faster
  than torch's fused kernels on packed sequences, see seqzoo/layers/recurrent.py) unpacks the documents into a
  batch of their own, one document per row, right-padded to the longest, runs its layers on that batch, and gathers
  each token's output back to its packed place. Right padding after a document changes none of its outputs in a
  causal model, so the padded batch runs unmasked (the kernels' fast path); a bidirectional model passes the padding
  mask. Cost: the padding up to the longest document of the batch.

A packed forward returns no cache (a row of several documents has no one state to continue from): ``use_cache``
defaults to False for it and ``use_cache=True`` raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPast

from seqzoo.layers.mixer import Mixer
from seqzoo.models.compat import model_output

# The keyword arguments that mark packed rows (DataCollatorWithFlattening's names).
PACKING_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


@dataclass
class Packing:
    """Where each token of a packed (B, T) batch sits in a batch of its documents (N, L)."""

    document: torch.Tensor  # (B, T) int64: the index of each token's document, counted over the whole batch
    offset: torch.Tensor  # (B, T) int64: the token's index within its document
    lengths: torch.Tensor  # (N,) tokens per document
    first_position: torch.Tensor  # (N,) the position id of each document's first token
    starts: torch.Tensor  # (B, T) bool: True at each document's first token (every row's first token included)

    def takes_resets(self, model: nn.Module) -> bool:
        """Whether ``model`` runs these rows as they are, passing :attr:`starts` to its kernels as ``reset``: a causal
        model whose every token mixer takes a reset. Otherwise :meth:`run` unpacks the documents."""
        mixers = [m for m in model.modules() if isinstance(m, Mixer)]
        return model.config.capabilities.can_generate and bool(mixers) and all(m.takes_reset for m in mixers)

    @property
    def num_documents(self) -> int:
        return self.lengths.shape[0]

    def position_ids(self) -> torch.Tensor:
        """(B, T) position ids restarting at every document (from ``first_position``)."""
        return self.first_position[self.document] + self.offset

    def unpack(self, packed: torch.Tensor, fill: Any = 0) -> torch.Tensor:
        """(B, T, ...) -> (N, L, ...), each document in a row of its own, right-padded with ``fill``."""
        length = int(self.lengths.max())
        out = packed.new_full((self.num_documents, length, *packed.shape[2:]), fill)
        return out.index_put((self.document, self.offset), packed)

    def repack(self, unpacked: torch.Tensor) -> torch.Tensor:
        """(N, L, ...) -> (B, T, ...): the inverse of :meth:`unpack` on the real tokens (differentiable)."""
        return unpacked[self.document, self.offset]

    def run(self, model: nn.Module, input_ids, inputs_embeds, output_hidden_states, kwargs) -> BaseModelOutputWithPast:
        """Run a backbone on the unpacked documents and return its outputs in the packed layout."""
        if kwargs.get("output_attentions"):
            raise ValueError(
                "output_attentions=True cannot be combined with packed rows in a model with recurrent layers: the "
                "documents are computed in a batch of their own, whose attention weights have no packed layout. "
                "Pass the documents as separate rows (with an attention_mask) to see them"
            )
        length = int(self.lengths.max())
        mask = None
        if not model.config.capabilities.can_generate:  # a bidirectional model must not read the right padding
            mask = (torch.arange(length, device=self.lengths.device)[None] < self.lengths[:, None]).long()
        positions = self.first_position[:, None] + torch.arange(length, device=self.lengths.device)
        outputs = model(
            input_ids=None if input_ids is None else self.unpack(input_ids, model.config.pad_token_id or 0),
            inputs_embeds=None if inputs_embeds is None else self.unpack(inputs_embeds),
            attention_mask=mask, position_ids=positions, use_cache=False, output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.hidden_states
        return model_output(
            BaseModelOutputWithPast, cache=None, last_hidden_state=self.repack(outputs.last_hidden_state),
            hidden_states=None if hidden_states is None else tuple(self.repack(h) for h in hidden_states),
        )


def find_packing(
    model: nn.Module, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, kwargs: dict
) -> Packing | None:
    """The documents of a packed batch, or None when no row holds more than one. Pops the packing markers off
    ``kwargs`` except ``cu_seq_lens_*`` / ``max_length_*``, which attention kernels may read."""
    seq_idx = kwargs.pop("seq_idx", None)
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    for side, cu in (("q", cu_q), ("k", cu_k)):
        if kwargs.get(f"max_length_{side}") is not None and cu is None:
            raise ValueError(f"{type(model).__name__}: max_length_{side} is the longest document of cu_seq_lens_{side} "
                             f"(as DataCollatorWithFlattening writes them together); got it without cu_seq_lens_{side}")
    if position_ids is None and seq_idx is None and cu_q is None and cu_k is None:
        return None
    given = input_ids if input_ids is not None else inputs_embeds
    if given is None or given.dim() < 2:
        return None  # prepare_inputs names the problem
    batch, length = given.shape[:2]
    name = type(model).__name__
    if position_ids is not None:  # checked whatever they are used for (positions, or documents here)
        position_ids = _check_shape("position_ids", position_ids, batch, length)
    if attention_mask is not None or cache is not None:
        if seq_idx is not None or cu_q is not None or cu_k is not None:
            raise ValueError(
                f"{name}: seq_idx / cu_seq_lens mark packed rows, which take no attention_mask and no cache to "
                "continue from (got " + ("an attention_mask" if attention_mask is not None else "a cache") + "); "
                "pass packed rows without padding, or separate rows with an attention_mask"
            )
        if position_ids is not None and attention_mask is not None and attention_mask.dim() == 2:
            _refuse_packing_with_padding(name, position_ids, attention_mask, batch, length)
        return None
    if torch.compiler.is_compiling():
        if model.config.capabilities.can_crop_cache and position_ids is not None:
            # Attention-only: create_causal_mask builds the block-diagonal mask from the position ids while tracing,
            # but only when there is no cache.
            if use_cache or (use_cache is None and not model.training and model.config.use_cache):
                raise ValueError(
                    f"{name}: position_ids without an attention_mask may mark packed rows, whose block-diagonal mask "
                    "is built only without a cache; pass use_cache=False to a compiled forward of packed rows (or an "
                    "attention_mask for rows that are not packed)"
                )
            return None
        raise ValueError(
            f"{name}: position_ids / seq_idx / cu_seq_lens without an attention_mask may mark packed rows, which a "
            "model with recurrent layers cannot detect while torch.compile traces (the documents' lengths are data); "
            "compile a call without them, or run packed rows eagerly"
        )
    starts = None
    if position_ids is not None:
        step = torch.diff(position_ids, dim=-1)
        starts = _with_row_starts(step != 1)
    if seq_idx is not None:
        seq_idx = _check_shape("seq_idx", seq_idx, batch, length)
        # (mamba_ssm's convention: any change of seq_idx, up or down, begins a document)
        starts = _agree(starts, _with_row_starts(torch.diff(seq_idx, dim=-1) != 0), "seq_idx", name)
    for side, cu in (("q", cu_q), ("k", cu_k)):
        if cu is not None:
            key = f"cu_seq_lens_{side}"
            cu_starts = _starts_from_cu_seq_lens(key, cu, batch, length, given.device)
            _check_max_length(name, side, kwargs.get(f"max_length_{side}"), cu_starts)
            starts = _agree(starts, cu_starts, key, name)
    if bool(starts[:, 1:].any()) is False:
        return None
    if use_cache:
        raise ValueError(
            f"{name}: use_cache=True cannot be combined with packed rows (position_ids restarting, seq_idx or "
            "cu_seq_lens): a row of several documents has no one state to continue from"
        )
    flat = starts.reshape(-1)
    document = (flat.long().cumsum(0) - 1).view(batch, length)
    index = torch.arange(batch * length, device=flat.device)
    start_index = index[flat]
    offset = (index - start_index[document.reshape(-1)]).view(batch, length)
    lengths = torch.bincount(document.reshape(-1), minlength=start_index.shape[0])
    if position_ids is not None:
        first_position = position_ids.reshape(-1)[start_index]
    else:
        first_position = torch.zeros_like(lengths)
    return Packing(document, offset, lengths, first_position, starts)


def _with_row_starts(boundaries: torch.Tensor) -> torch.Tensor:
    """(B, T-1) 'a new document starts here' -> (B, T), with every row's first token a start."""
    return torch.cat([torch.ones_like(boundaries[:, :1]), boundaries], dim=1)


def _check_shape(key: str, value: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.shape[1] != length \
            or value.shape[0] not in (1, batch):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        also = f" or (1, {length})" if batch != 1 else ""
        raise ValueError(f"{key} must have shape ({batch}, {length}) (batch, sequence_length){also}; got {shape}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise ValueError(f"{key} must be an integer tensor, got dtype {value.dtype}")
    return value.long().expand(batch, length)  # (uint8 differences wrap around)


def _starts_from_cu_seq_lens(key: str, cu: Any, batch: int, length: int, device: torch.device) -> torch.Tensor:
    cu = torch.as_tensor(cu, device=device).reshape(-1)
    if cu.dtype.is_floating_point or cu.dtype.is_complex or cu.dtype == torch.bool:
        raise ValueError(f"{key} must be an integer tensor, got dtype {cu.dtype}")
    cu = cu.long()
    total = batch * length
    if cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != total or bool((cu.diff() <= 0).any()):
        raise ValueError(
            f"{key} must rise strictly from 0 to {total} (the batch's {batch} x {length} tokens, flattened): the "
            f"cumulative lengths of the documents; got {cu.tolist()}"
        )
    starts = torch.zeros(total, dtype=torch.bool, device=device)
    starts[cu[:-1]] = True
    starts = starts.view(batch, length)
    if not bool(starts[:, 0].all()):
        row = int((~starts[:, 0]).nonzero()[0])
        raise ValueError(
            f"{key}={cu.tolist()} has a document run on from row {row - 1} into row {row} of the batch's {batch} rows "
            f"of {length} tokens; every row must begin a document (its first token's flattened index, a multiple of "
            f"{length}, among the cumulative lengths)"
        )
    return starts


def _check_max_length(name: str, side: str, given: Any, starts: torch.Tensor) -> None:
    """``max_length_q`` / ``max_length_k``, where given, must hold the longest document ``starts`` marks: attention
    kernels that read it (FlashAttention's varlen calls) size their work by it."""
    if given is None:
        return
    if isinstance(given, torch.Tensor) and given.numel() == 1 and not given.dtype.is_floating_point:
        given = int(given)
    if isinstance(given, bool) or not isinstance(given, int):
        raise ValueError(f"{name}: max_length_{side} must be an integer (the longest document's length); "
                         f"got {given!r}")
    flat = starts.reshape(-1).nonzero().reshape(-1)
    longest = int(torch.diff(flat, append=flat.new_tensor([starts.numel()])).max())
    if given < longest:
        raise ValueError(f"{name}: max_length_{side}={given} is shorter than the longest document of "
                         f"cu_seq_lens_{side}, {longest} tokens; it must be at least that (DataCollatorWithFlattening "
                         "writes the longest document's length)")


def _agree(starts: torch.Tensor | None, other: torch.Tensor, key: str, name: str) -> torch.Tensor:
    if starts is not None and not torch.equal(starts, other):
        raise ValueError(f"{name}: {key} marks other document boundaries than the arguments before it "
                         "(position_ids restarting, seq_idx, cu_seq_lens); pass markers of the same documents")
    return other


def _refuse_packing_with_padding(name, position_ids, attention_mask, batch, length) -> None:
    """Packed documents with a padding mask are ambiguous (transformers then ignores the packing); refuse them rather
    than let a recurrent state run on from one document into the next."""
    if torch.compiler.is_compiling() or position_ids.dim() != 2 or position_ids.shape[-1] != length or length < 2:
        return  # (one token, a decode step, cannot restart: the check would cost a tenth of a small model's step)
    real = attention_mask[:, -length:].bool()
    if real.shape != (batch, length):
        return  # (a mask of another shape: prepare_inputs names it)
    # Each real token against the last real one before it in its row (pads between them or not): its position id
    # follows on by one (counting real tokens, as generate() numbers a mask with holes) or by the distance between
    # them (counting every position); anything else restarts, where a pad would hide a document's start.
    index = torch.arange(length, device=real.device).expand(batch, length)
    last_real = torch.where(real, index, -1).cummax(dim=1).values
    before = torch.cat([last_real.new_full((batch, 1), -1), last_real[:, :-1]], dim=1)
    positions = position_ids.expand(batch, length).long()
    step = positions - positions.gather(1, before.clamp(min=0))
    restart = real & (before >= 0) & (step != 1) & (step != index - before)
    if bool(restart.any()):
        raise ValueError(
            f"{name}: position_ids restart between two real tokens of a row while an attention_mask is passed; "
            "packed rows (several documents in a row) take no attention_mask. Pass them without one, or pass the "
            "documents as separate padded rows"
        )


__all__ = ["PACKING_KWARGS", "Packing", "find_packing"]
