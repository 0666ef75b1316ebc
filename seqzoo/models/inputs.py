"""What every model's forward checks and prepares of its inputs, one place for every family: the token ids or
embeddings, the padding mask, the cache (the one passed, checked against the model and the batch, or a new one), the
output flags and the positions. Every error names the value and what is allowed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.loss.loss_utils import ForCausalLMLoss, ForTokenClassification, fixed_cross_entropy

from seqzoo.cache import ATTENTION, SeqzooCache

logger = logging.getLogger("seqzoo")


@dataclass
class ForwardInputs:
    """What a backbone's forward works from, checked: the embeddings of the current positions, the masks, and the
    cache it continues from."""

    embeds: torch.Tensor  # (B, T, E), in the embedding's dtype
    attention_mask: torch.Tensor | None  # as given: (B, past + T) 0/1, or a 4-d mask for attention-only models
    padding_mask: torch.Tensor | None  # (B, T) bool of the current positions, None when nothing is padded
    cache: SeqzooCache | None
    past_length: int

    @property
    def length(self) -> int:
        return self.embeds.shape[1]


def prepare_inputs(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    cache: Any,
    use_cache: bool,
) -> ForwardInputs:
    """Check what a user passes to forward() and embed it. Every error names the value and what is allowed.

    Token ids of any integer dtype are accepted (and cast to int64), and ``inputs_embeds`` are cast to the model's
    dtype, the same in every architecture. Checks that read tensor values (id range, 0/1 masks) are skipped while
    ``torch.compile`` traces, where they would force a graph break."""
    config = model.config
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    values_checked = not torch.compiler.is_compiling()
    if input_ids is not None:
        embeds = model.embed_tokens(checked_token_ids(input_ids, config, values_checked))
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.embedding_dim:
            raise ValueError(
                f"inputs_embeds must have shape (batch, sequence_length, {config.embedding_dim}); got "
                f"{tuple(inputs_embeds.shape)}"
            )
        if not inputs_embeds.dtype.is_floating_point:
            raise ValueError(f"inputs_embeds must be a floating-point tensor, got dtype {inputs_embeds.dtype}")
        _check_not_empty("inputs_embeds", inputs_embeds.shape[:2])
        embeds = inputs_embeds.to(model.embed_tokens.weight.dtype)
    batch, length = embeds.shape[:2]
    cache = _prepare_cache(model, cache, use_cache, batch)
    past_length = cache.get_seq_length() if cache is not None else 0
    padding_mask = current_padding_mask(model, attention_mask, batch, length, past_length, values_checked)
    return ForwardInputs(embeds, attention_mask, padding_mask, cache, past_length)


_WARNED_NO_ATTENTION: set[str] = set()  # the classes output_attentions=True was warned about
# What a forward's true-or-false flags take: a string "no" was true (a ModelOutput, hidden states, a cache returned).
FLAG_TYPES = (bool, type(None))


def check_flag(name: str, value: Any) -> None:
    """Refuse a forward flag (``return_dict``, ``use_cache``, ``output_hidden_states``, ``output_attentions``) that
    is not True, False or None."""
    if type(value) not in FLAG_TYPES:
        raise ValueError(f"{name}={value!r} is invalid: expected True, False or None (None: the config's)")


def check_logits_to_keep(value: Any) -> None:
    """Refuse a ``logits_to_keep`` that is not an int >= 0 (how many last positions; 0: all) or a 1-d integer tensor
    of positions: -1 was read as all positions, 1.5 failed inside torch's indexing naming no argument."""
    if type(value) is int:
        if value < 0:
            raise ValueError(f"logits_to_keep={value} is invalid: expected an int >= 0 (how many last positions to "
                             "compute logits for; 0: all) or a 1-d integer tensor of positions")
        return
    if (not isinstance(value, torch.Tensor) or value.dim() != 1 or value.dtype.is_floating_point
            or value.dtype.is_complex or value.dtype == torch.bool):
        described = (f" (a {value.dim()}-d {value.dtype} tensor)" if isinstance(value, torch.Tensor)
                     else f"={value!r}")
        raise ValueError(f"logits_to_keep{described} is invalid: expected an int >= 0 (how many last positions to "
                         "compute logits for; 0: all) or a 1-d integer tensor of positions")


def resolved_return_dict(model: nn.Module, return_dict: Any) -> bool:
    """``return_dict`` as passed (checked), else the config's."""
    if return_dict is None:
        return model.config.return_dict
    check_flag("return_dict", return_dict)
    return return_dict


def attentions_asked(config: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a forward call asks for attention weights: its ``output_attentions`` when given (an explicit False
    wins over the config, as in transformers' models), else the config's."""
    asked = kwargs.get("output_attentions")
    check_flag("output_attentions", asked)
    return bool(config.output_attentions if asked is None else asked)


def note_no_attention_weights(model: nn.Module, kwargs: dict[str, Any]) -> None:
    """A backbone whose every layer keeps a recurrent state, asked for attention weights (``output_attentions=True``,
    or its config's), has none to give: its outputs' ``attentions`` stay None, which is said once per class instead of
    silently (transformers' Llama returns them; its Mamba takes no such argument)."""
    if (attentions_asked(model.config, kwargs)
            and type(model).__name__ not in _WARNED_NO_ATTENTION and not torch.compiler.is_compiling()):
        _WARNED_NO_ATTENTION.add(type(model).__name__)
        logger.warning("output_attentions=True: %s has no attention layers (each layer keeps a recurrent state), so "
                       "its outputs' attentions are None", type(model).__name__)


def checked_token_ids(input_ids: torch.Tensor, config: Any, values_checked: bool) -> torch.Tensor:
    """``input_ids`` checked (shape, dtype, range when ``values_checked``) and in a dtype the embedding takes."""
    if input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must have shape (batch, sequence_length); got a {input_ids.dim()}-d tensor of shape "
            f"{tuple(input_ids.shape)}"
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
    _check_not_empty("input_ids", input_ids.shape)
    if input_ids.dtype not in (torch.int64, torch.int32):  # what the embedding takes
        input_ids = input_ids.long()
    if values_checked:
        check_token_ids(input_ids, config.vocab_size)
    return input_ids


def current_padding_mask(model, attention_mask, batch, length, past_length, values_checked) -> torch.Tensor | None:
    """The (B, T) bool mask of the current positions from a 2-d ``attention_mask`` (checked), None when nothing
    is padded."""
    unpadded = _check_attention_mask(model, attention_mask, batch, length, past_length, values_checked)
    if attention_mask is None or attention_mask.dim() != 2 or unpadded:
        return None
    current = attention_mask[:, -length:].to(torch.bool)
    return None if values_checked and bool(current.all()) else current


def _check_not_empty(name: str, shape: tuple[int, ...]) -> None:
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(
            f"{name} of shape {tuple(shape)} is empty: pass at least one sequence with at least one position"
        )


def _check_attention_mask(model, attention_mask, batch, length, past_length, values_checked) -> bool:
    """Raise on a mask that does not fit the inputs; return True when its values were read and hold no padding."""
    if attention_mask is None:
        return False
    config = model.config
    if attention_mask.dim() == 4:
        if not config.capabilities.can_crop_cache:  # a 4-d mask describes attention only
            raise ValueError(
                f"{type(model).__name__} takes a 2-d padding mask (batch, past_length + sequence_length) of 0/1; "
                f"a 4-d attention mask (got shape {tuple(attention_mask.shape)}) only means something to a model "
                "whose every layer attends"
            )
        return False
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be 2-d (batch, past_length + sequence_length); got shape "
                         f"{tuple(attention_mask.shape)}")
    # A recurrent layer reads only the current positions' columns; an attention layer reads every cached key's.
    shortest = length if config.capabilities.constant_state_decode else past_length + length
    if attention_mask.shape[0] != batch or not shortest <= attention_mask.shape[1] <= past_length + length:
        raise ValueError(
            f"attention_mask of shape {tuple(attention_mask.shape)} does not fit the inputs of shape "
            f"({batch}, {length}) after {past_length} cached position(s): expected (batch, L) with "
            f"{shortest} <= L <= {past_length + length}, the mask of the cached and the current positions"
            + ("" if shortest == length else " (every cached position: attention layers read them all)")
        )
    return check_mask_values(attention_mask) if values_checked else False


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    if 0 < input_ids.numel() <= _FEW_IDS:
        # A decode step's few ids are read at once: one copy to Python instead of a reduction and two reads of it.
        ids = input_ids.reshape(-1).tolist()
        low, high = min(ids), max(ids)
    else:  # torch has no reductions of uint16/32/64 on CPU
        wide = input_ids.dtype in (torch.uint16, torch.uint32, torch.uint64)
        low, high = (int(v) for v in torch.aminmax(input_ids.long() if wide else input_ids))
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"input_ids contain token id {low if low < 0 else high}, outside the vocabulary: ids must be in "
            f"[0, vocab_size={vocab_size})"
        )


_FEW_IDS = 64


def check_label_range(labels: torch.Tensor, bound: int, bound_name: str, what: str) -> None:
    """Raise unless every label is -100 (ignored) or in [0, bound), naming the first that is not. Skipped while
    torch.compile traces (it reads values); outside the range the loss would fail with torch's IndexError on CPU and
    a device-side assert on CUDA."""
    if torch.compiler.is_compiling():
        return
    bad = labels[(labels != -100) & ((labels < 0) | (labels >= bound))]
    if bad.numel():
        raise ValueError(f"labels contain {int(bad[0])}: labels must be {what} in [0, {bound_name}={bound}) or -100 "
                         "(ignored)")


def index_labels(labels: Any, shape: tuple[int, ...], bound: int, bound_name: str, what: str) -> torch.Tensor:
    """``labels`` checked as integer indices of ``shape`` (batch, sequence_length), each -100 (ignored) or in
    [0, bound), and returned as int64, the dtype torch's cross-entropy takes: any integer dtype is accepted, as token
    ids are; anything else gets an error naming what was given instead of torch's own deep in the loss."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a tensor; got {type(labels).__name__}")
    if labels.shape != shape:
        raise ValueError(f"labels must have shape {tuple(shape)} (batch, sequence_length); got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be {what} (an integer tensor, -100 where ignored); got dtype {labels.dtype}")
    labels = labels.long()
    check_label_range(labels, bound, bound_name, what)
    return labels


def float64_token_loss(loss_function: Any, logits: torch.Tensor, labels: torch.Tensor,
                       num_items_in_batch: Any) -> torch.Tensor | None:
    """For float64 ``logits`` under transformers' own causal-LM (``ForCausalLMLoss``: labels shifted left) or
    token-classification loss, that loss computed in float64, else None (the model's ``loss_function`` then runs):
    transformers' casts the logits to float32 first, so a float64 model got a float32 loss (README: a float64 model
    computes in float64 throughout). The same reduction: the mean over scored labels, or their sum divided by
    ``num_items_in_batch``."""
    if logits.dtype != torch.float64:
        return None
    if loss_function is ForCausalLMLoss:
        labels = nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    elif loss_function is not ForTokenClassification:
        return None  # (a loss function of the user's computes as it computes)
    return fixed_cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device),
                               num_items_in_batch, -100)


def check_mask_values(attention_mask: torch.Tensor) -> bool:
    """Raise unless the mask holds only 1 (a token) and 0 (padding); return True when it was found to hold no 0."""
    dtype = attention_mask.dtype
    if dtype == torch.bool:
        return False
    if not (dtype.is_floating_point or dtype.is_complex):
        # An integer mask holds only 0 and 1 when its least value is >= 0 and its greatest <= 1: one reduction
        # (generate() passes the whole growing mask with every token), which also tells whether anything is padded.
        low, high = (int(v) for v in torch.aminmax(attention_mask))
        if low >= 0 and high <= 1:
            return low == 1
    bad = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
    if bad.numel():
        raise ValueError(f"attention_mask must hold 1 (a token) and 0 (padding) only; found {bad[0].item()}")
    return False


_WARNED_CHECKPOINT_CACHE: set[str] = set()  # the classes use_cache=True under checkpointing was warned about


def cache_under_checkpointing(model: nn.Module, checkpointed: bool, cache: Any, use_cache: bool,
                              layers: str = "") -> bool:
    """``use_cache`` for a forward whose layers hold keys and values, checkpointed (``checkpointed``: activation
    checkpointing on, training, gradients enabled) or not. A checkpointed attention layer runs again in the backward
    pass and would add its keys to the cache twice (the backward then failed on mismatched sizes, and the cache held
    every key twice): such a forward keeps no cache (``use_cache=True`` is warned about once per class, as
    transformers' models do) and refuses to continue one. ``layers`` says which layers, for the messages."""
    if not checkpointed:
        return use_cache
    name = type(model).__name__
    if cache is not None:
        raise ValueError(f"{name}: a cache cannot be continued with activation checkpointing on while training"
                         f"{layers}; call model.eval() or torch.no_grad() to decode, or "
                         "gradient_checkpointing_disable()")
    if use_cache and name not in _WARNED_CHECKPOINT_CACHE:
        _WARNED_CHECKPOINT_CACHE.add(name)
        logger.warning("use_cache=True is incompatible with activation checkpointing while training%s: %s runs "
                       "without a cache (use_cache=False)", layers, name)
    return False


def _prepare_cache(model: nn.Module, cache: Any, use_cache: bool, batch: int) -> SeqzooCache | None:
    """The cache this forward continues from and writes to: the one passed (checked against this model and batch),
    a new one when caching, else None. (Recurrent states are replaced, not appended to, and continue under
    checkpointing: truncated backpropagation through time.)"""
    if ATTENTION in model.config.cache_layer_kinds:
        checkpointed = getattr(model, "gradient_checkpointing", False) and model.training and torch.is_grad_enabled()
        use_cache = cache_under_checkpointing(model, checkpointed, cache, use_cache,
                                              " a model with attention layers")
    if cache is None:
        return SeqzooCache.for_model(model.config) if use_cache else None
    if not model.config.capabilities.can_generate:  # (its layers read no state: the cache was advanced, unread)
        raise ValueError(f"{type(model).__name__} is bidirectional: it reads the whole sequence at once and keeps no "
                         "decoding cache; do not pass a cache")
    if not isinstance(cache, SeqzooCache):
        raise ValueError(
            f"cache must be a seqzoo SeqzooCache (what this model returns, or SeqzooCache.for_model(model)); got "
            f"{type(cache).__name__}"
        )
    cache.check_fits(model.config, batch, type(model).__name__)
    return cache


def resolve_output_flags(
    model: nn.Module, use_cache: bool | None, output_hidden_states: bool | None
) -> tuple[bool, bool]:
    """``use_cache`` and ``output_hidden_states`` as passed (checked), else from the config (no cache while
    training)."""
    check_flag("use_cache", use_cache)
    check_flag("output_hidden_states", output_hidden_states)
    config = model.config
    if not config.capabilities.can_generate:  # a bidirectional encoder has no state to carry between calls
        if use_cache:
            raise ValueError(f"{type(model).__name__} is bidirectional: it reads the whole sequence at once and keeps "
                             "no decoding cache; do not pass use_cache=True")
        use_cache = False
    if use_cache is None:
        use_cache = config.use_cache and not model.training
    if output_hidden_states is None:
        output_hidden_states = config.output_hidden_states
    return use_cache, output_hidden_states


def position_ids_from_mask(
    attention_mask: torch.Tensor | None, past_length: int, length: int, device: torch.device
) -> torch.Tensor:
    """Positions of the current tokens. With a 2-d padding mask they count real tokens only, so a left-padded row
    sees the same positions as the prompt alone."""
    if attention_mask is not None and attention_mask.dim() == 2:
        positions = attention_mask.long().cumsum(-1) - 1
        positions = positions.clamp(min=0)
        return positions[:, -length:]
    return torch.arange(past_length, past_length + length, device=device)[None]
