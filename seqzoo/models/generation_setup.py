"""The generation config ``generate()`` decodes with, prepared as transformers prepares it, without rebuilding the part
that does not change between calls.

For a call without a ``generation_config``, transformers' ``GenerationMixin._prepare_generation_config`` checks the
model's config for generation fields set on it (no longer supported), deep-copies a new ``GenerationConfig``, merges
into it the model's ``generation_config`` (through ``to_dict``, another deep copy) and then transformers' global
defaults, and applies the call's keyword arguments last. About 190 µs a call on a 2-core CPU, a large part of what
``generate()`` adds for a short answer from a small model (BENCHMARKS.md, "Decode against each family's CPU
runtime"). :func:`prepare_generation_config` keeps the merged config, found by that same code, with a copy of the
``generation_config`` it was merged from, and answers a later call with a copy of it (and the call's keyword
arguments applied by ``GenerationConfig.update``, as there) while the model's ``generation_config`` holds the same
values, of the same types.

It answers only where transformers' method would do just that: no ``generation_config`` passed, the model's a plain
``GenerationConfig`` holding plain values (None, numbers, strings, and lists, tuples and dicts of them), a model
config on which no generation field can be found, and a release of transformers whose method this was checked
against (by a fingerprint of its source). Anything else is prepared by transformers' own method.
``tests/models/test_generation_setup.py`` holds the two to the same result.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedConfig

from seqzoo.models.compat import source_fingerprint

# (GenerationMixin._prepare_generation_config, PreTrainedConfig._get_generation_parameters) as this was checked
# against, by source_fingerprint.
_CHECKED_PREPARATIONS = frozenset({
    "79eaab02b0bcda06",  # transformers 5.23, 5.24 and 5.25
})
# Where a model keeps the merged config and what it was merged from (not saved: __getstate__ drops it).
ATTRIBUTE = "_seqzoo_generation_defaults"
# transformers' GenerationMixin._prepare_attention_mask_for_generation as attention_mask_for_generation was checked
# against.
_CHECKED_MASK_PREPARATIONS = frozenset({
    "f1f29a68a0a95466",  # transformers 5.23, 5.24 and 5.25
})
_FEW_EOS = 64  # (EOS tokens read to Python)
_ATOMIC = frozenset({type(None), bool, int, float, str})
_CONTAINERS = frozenset({list, tuple, dict})


@functools.cache
def preparation_checked() -> bool:
    """Whether :func:`prepare_generation_config` was checked against the installed transformers' method."""
    return (source_fingerprint(GenerationMixin._prepare_generation_config,
                               PreTrainedConfig._get_generation_parameters) in _CHECKED_PREPARATIONS)


def prepare_generation_config(model: nn.Module, generation_config: Any,
                              kwargs: dict[str, Any]) -> tuple[GenerationConfig, dict[str, Any]] | None:
    """What transformers' ``_prepare_generation_config(generation_config, **kwargs)`` returns for ``model``, or None
    where this does not apply (the module's docstring): the caller then calls transformers' method."""
    own = model.generation_config
    if (generation_config is not None or type(own) is not GenerationConfig or not preparation_checked()
            or _may_hold_generation_fields(model.config)):
        return None
    values = vars(own)
    if not all(map(_plain, values.values())):
        return None
    kept = model.__dict__.get(ATTRIBUTE)
    # (same values of the same types: 1 == 1.0 == True, but each may be read differently)
    types = tuple(map(type, values.values()))
    if kept is None or kept[0] != types or kept[1] != values:
        merged = _merged(own)
        if merged is None:
            return None
        kept = (types, copy.deepcopy(values), merged)
        model.__dict__[ATTRIBUTE] = kept
    generation_config = _copy(kept[2])
    # The rest as transformers' method does it, for a call without a generation_config.
    model_kwargs = generation_config.update(**kwargs)
    if generation_config.cache_implementation == "hybrid":
        generation_config.cache_implementation = None
    output_attentions = generation_config.output_attentions
    output_hidden_states = generation_config.output_hidden_states
    model_kwargs.update({"output_attentions": output_attentions} if output_attentions else {})
    model_kwargs.update({"output_hidden_states": output_hidden_states} if output_hidden_states else {})
    return generation_config, model_kwargs


@functools.cache
def mask_preparation_checked() -> bool:
    """Whether :func:`attention_mask_for_generation` was checked against the installed transformers' method."""
    return (source_fingerprint(GenerationMixin._prepare_attention_mask_for_generation)
            in _CHECKED_MASK_PREPARATIONS)


def attention_mask_for_generation(inputs_tensor: Any, generation_config: Any,
                                  model_kwargs: dict[str, Any]) -> torch.Tensor | None:
    """What transformers' ``_prepare_attention_mask_for_generation`` returns for a prompt of token ids and one pad
    token, from one comparison with the pad token and a read of the EOS tokens, instead of its eight tensor
    operations (about 50 µs on a 2-core CPU): ones, or where the prompt holds the pad token and it is not an EOS
    token, a 0 at each pad token. None for any other call, which transformers' method then prepares."""
    pad, eos = generation_config._pad_token_tensor, generation_config._eos_token_tensor
    if ("input_ids" in model_kwargs or not mask_preparation_checked() or type(inputs_tensor) is not torch.Tensor
            or inputs_tensor.dim() != 2 or inputs_tensor.dtype not in (torch.int, torch.long)
            or type(pad) is not torch.Tensor or pad.numel() != 1 or pad.device != inputs_tensor.device
            or not (eos is None or (type(eos) is torch.Tensor and eos.numel() <= _FEW_EOS))):
        return None
    padded = inputs_tensor.eq(pad.reshape(()))
    if bool(padded.any()) and (eos is None or pad.item() not in eos.reshape(-1).tolist()):
        return padded.logical_not_().long()
    return torch.ones(inputs_tensor.shape, dtype=torch.long, device=inputs_tensor.device)


def _merged(own: GenerationConfig) -> GenerationConfig | None:
    """A new ``GenerationConfig`` with ``own`` and the global defaults merged in, as transformers' method merges them
    before the call's keyword arguments; None if it holds anything but plain values."""
    merged = copy.deepcopy(GenerationConfig())
    merged.update(**own.to_dict(), defaults_only=True, allow_custom_entries=True)
    merged.update(**own._get_default_generation_params(), defaults_only=True)
    return merged if all(map(_plain, vars(merged).values())) else None


def _copy(config: GenerationConfig) -> GenerationConfig:
    """A copy of ``config`` (plain values only), as ``copy.deepcopy`` copies it, without its general machinery."""
    copied = copy.copy(config)
    values = vars(copied)
    for key, value in values.items():
        if type(value) in _CONTAINERS:
            values[key] = copy.deepcopy(value)
    return copied


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind in _ATOMIC:
        return True
    if kind is dict:
        return all(type(key) in _ATOMIC and _plain(item) for key, item in value.items())
    return kind in (list, tuple) and all(map(_plain, value))


def _may_hold_generation_fields(config: PreTrainedConfig) -> bool:
    """Whether transformers' ``config._get_generation_parameters()`` may find a generation field set on the model's
    config (then its method raises its error): one in the config's own attributes, not None and not a field of its
    class. Also True where such a name could be read some other way (a class attribute or property, an
    ``attribute_map`` alias, a ``__getattr__``, a config of per-layer settings), which transformers' method checks."""
    names = _generation_names(type(config))
    if names is None:
        return True
    values = vars(config)
    if "attribute_map" in values or values.get("_heterogeneity_spec") is not None:
        return True
    return any(values[name] is not None for name in names.intersection(values))


@functools.cache
def _generation_names(cls: type) -> frozenset[str] | None:
    """The generation fields transformers' check looks for on a config of class ``cls`` that are not fields of the
    class; None where one could be read other than from the config's own attributes."""
    if not dataclasses.is_dataclass(cls):
        return None
    names = (frozenset(GenerationConfig._get_default_generation_params()) - {"use_cache"}
             - {field.name for field in dataclasses.fields(cls)})
    attribute_map = getattr(cls, "attribute_map", {})
    if any(hasattr(cls, name) or name in attribute_map for name in names):
        return None
    if any("__getattr__" in vars(klass) for klass in cls.__mro__ if klass is not object):
        return None
    return names


__all__ = ["ATTRIBUTE", "attention_mask_for_generation", "mask_preparation_checked", "prepare_generation_config",
           "preparation_checked"]
