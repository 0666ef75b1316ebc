"""The generation config ``generate()`` decodes with, prepared as transformers prepares it, without rebuilding the part
that does not change between calls; and a prompt's attention mask, from one comparison
(:func:`attention_mask_for_generation`).

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
config on which no generation field can be found, and transformers' methods as this was checked against (by a
fingerprint of their source, and not patched or wrapped since). Anything else is prepared by transformers' own method.
``tests/models/test_generation_setup.py`` holds the two to the same result.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedConfig
from transformers.utils import TransformersKwargs
from transformers.utils.logging import get_verbosity

from seqzoo.models.compat import checked_source
from seqzoo.models.configuration_utils import _seqzoo_config_getattribute
from seqzoo.models.generation import mask_from_pad_token, without_cache_implementation

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
# (GenerationMixin._validate_model_kwargs, _supports_logits_to_keep, _supports_mm_encoder_outputs) as
# SignatureReads was checked against.
_CHECKED_SIGNATURE_READS = frozenset({
    "5f8b9ce3e694504f",  # transformers 5.23, 5.24 and 5.25
})
_FEW_EOS = 64  # (EOS tokens read to Python)
# Token tensors compared here as transformers' isin compares them (it refuses bool ones, and compares floats as such).
_INTEGERS = frozenset({torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8})
_ATOMIC = frozenset({type(None), bool, int, float, str})
_CONTAINERS = frozenset({list, tuple, dict})


def preparation_checked() -> bool:
    """Whether :func:`prepare_generation_config` was checked against the installed transformers' methods, as they are
    now (one patched since, or wrapped, is not)."""
    return checked_source((GenerationMixin._prepare_generation_config, PreTrainedConfig._get_generation_parameters),
                    _CHECKED_PREPARATIONS)




def prepare_generation_config(model: nn.Module, generation_config: Any,
                              kwargs: dict[str, Any]) -> tuple[GenerationConfig, dict[str, Any]] | None:
    """What transformers' ``_prepare_generation_config(generation_config, **kwargs)`` returns for ``model``, or None
    where this does not apply (the module's docstring): the caller then calls transformers' method."""
    own = model.generation_config
    if (generation_config is not None or type(own) is not GenerationConfig or not preparation_checked()
            or _may_hold_generation_fields(model.config)):
        return None
    values = vars(own)
    kept = model.__dict__.get(ATTRIBUTE)
    # The merge's checks of the config log at most once per message, and some messages depend on the verbosity.
    verbosity = get_verbosity()
    if kept is None or kept[0] != verbosity or not _same(kept[1], values):
        if not all(map(_plain, values.values())):
            return None
        values = copy.deepcopy(values)  # (what is merged: another thread may change the config meanwhile)
        merged = _merged(values)
        if merged is None:
            return None
        kept = (verbosity, values, merged)
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


def mask_preparation_checked() -> bool:
    """Whether :func:`attention_mask_for_generation` was checked against the installed transformers' method, as it
    is now."""
    return checked_source((GenerationMixin._prepare_attention_mask_for_generation,), _CHECKED_MASK_PREPARATIONS)


def attention_mask_for_generation(inputs_tensor: Any, generation_config: Any,
                                  model_kwargs: dict[str, Any]) -> torch.Tensor | None:
    """What transformers' ``_prepare_attention_mask_for_generation`` returns for a prompt of token ids and one pad
    token, from one comparison with the pad token and a read of the EOS tokens, instead of its eight tensor
    operations (about 50 µs on a 2-core CPU): ones, or where the prompt holds the pad token and it is not an EOS
    token, a 0 at each pad token. None for any other call, which transformers' method then prepares."""
    pad, eos = generation_config._pad_token_tensor, generation_config._eos_token_tensor
    if ("input_ids" in model_kwargs or not mask_preparation_checked() or type(inputs_tensor) is not torch.Tensor
            or inputs_tensor.dim() != 2 or inputs_tensor.dtype not in (torch.int, torch.long)
            or not inputs_tensor.is_contiguous()  # (transformers' mask then follows the prompt's strides)
            or type(pad) is not torch.Tensor or pad.numel() != 1 or pad.dtype not in _INTEGERS
            or pad.device != inputs_tensor.device
            or not (eos is None or (type(eos) is torch.Tensor and eos.numel() <= _FEW_EOS
                                    and eos.dtype in _INTEGERS))):
        return None
    mask = mask_from_pad_token(inputs_tensor, pad.item(), [] if eos is None else eos.reshape(-1).tolist())
    return torch.ones(inputs_tensor.shape, dtype=torch.long, device=inputs_tensor.device) if mask is None else mask


class PreparedGeneration:
    """A generating model's ``generate()`` set-up, done as above where it applies (before ``GenerationMixin`` in the
    model class's bases); transformers' own methods otherwise."""

    def _prepare_generation_config(self, generation_config: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        prepared = prepare_generation_config(self, generation_config, kwargs)
        if prepared is None:
            prepared = super()._prepare_generation_config(generation_config, **kwargs)
        # (a cache_implementation of "dynamic" is what seqzoo's cache is; transformers refuses one beside the cache
        # object seqzoo's generate() passes it)
        return without_cache_implementation(prepared[0]), prepared[1]

    def _prepare_attention_mask_for_generation(self, inputs_tensor: torch.Tensor, generation_config: Any,
                                               model_kwargs: dict[str, Any]) -> torch.Tensor:
        mask = attention_mask_for_generation(inputs_tensor, generation_config, model_kwargs)
        if mask is not None:
            return mask
        return super()._prepare_attention_mask_for_generation(inputs_tensor, generation_config, model_kwargs)

    # transformers reads the forward's signature (and the input preparation's) through inspect at every generate()
    # call, 20-25 µs each on a 2-core CPU; these three methods answer from the names read once per class.

    def _validate_model_kwargs(self, model_kwargs: dict[str, Any]) -> None:
        if "return_dict" in model_kwargs:
            # (the forward names it, so it passes the check of names, then meets the return_dict=True generate()
            # calls the forward with: a TypeError whose text was the model's whole repr)
            raise ValueError(
                f"{type(self).__name__}.generate: return_dict is a forward argument, which generate() sets itself; "
                "for an output object of the sequences with scores, hidden states or attentions, pass "
                "return_dict_in_generate=True"
            )
        names = None if self.config.is_encoder_decoder else signature_names(self)
        if names is None or not names.accepts(model_kwargs):
            super()._validate_model_kwargs(model_kwargs)  # (which names what it refuses)

    def _supports_logits_to_keep(self) -> bool:
        names = signature_names(self)
        return "logits_to_keep" in names.forward if names is not None else super()._supports_logits_to_keep()

    def _supports_mm_encoder_outputs(self) -> bool:
        names = signature_names(self)
        if names is not None:
            return "mm_encoder_outputs" in names.forward
        return super()._supports_mm_encoder_outputs()


def signature_read_once(function: Any) -> Any:
    """``function`` with its signature read now and kept as its ``__signature__``, which ``inspect.signature`` returns
    without reading the function again: for ``_sample``, whose signature transformers' ``generate()`` reads at every
    call (whether it takes ``inputs_tensor``). Not for a model's ``forward``: a wrapper of the bound method
    (accelerate's hooks, ``functools.wraps``) copies the function's ``__dict__``, and would answer with the unbound
    signature, ``self`` first, to anything binding arguments through it."""
    function.__signature__ = inspect.signature(function)
    return function


@dataclasses.dataclass(frozen=True)
class SignatureNames:
    """The parameter names ``inspect.signature`` reads from a model's bound ``forward``, and what transformers'
    ``_validate_model_kwargs`` accepts from them for a decoder-only model: the input preparation's, and the forward's
    too where the preparation takes ``**kwargs`` or ``**model_kwargs``."""
    forward: frozenset[str]
    accepted: frozenset[str]

    def accepts(self, model_kwargs: dict[str, Any]) -> bool:
        """Whether transformers' check passes these keyword arguments: each None, or a name accepted."""
        return all(value is None or key in self.accepted or key in _ALWAYS_ACCEPTED
                   or key in TransformersKwargs.__optional_keys__ for key, value in model_kwargs.items())


def signature_names(model: nn.Module) -> SignatureNames | None:
    """The names, read once per ``forward`` and ``prepare_inputs_for_generation`` functions of the model's class, or
    None where transformers' methods must read them: either method set on the model itself (accelerate's
    hooks set a wrapped forward there) or transformers' three methods not the ones checked."""
    own = vars(model)
    if "forward" in own or "prepare_inputs_for_generation" in own or not checked_source(
            (GenerationMixin._validate_model_kwargs, GenerationMixin._supports_logits_to_keep,
             GenerationMixin._supports_mm_encoder_outputs), _CHECKED_SIGNATURE_READS):
        return None
    cls = type(model)
    key = (cls.forward, cls.prepare_inputs_for_generation)  # (what the bound methods' signatures are read from)
    names = _SIGNATURE_NAMES.get(key)
    if names is None:
        forward = frozenset(inspect.signature(model.forward).parameters)
        preparation = frozenset(inspect.signature(model.prepare_inputs_for_generation).parameters)
        takes_more = "kwargs" in preparation or "model_kwargs" in preparation
        names = SignatureNames(forward, preparation | forward if takes_more else preparation)
        _SIGNATURE_NAMES[key] = names
    return names


_SIGNATURE_NAMES: dict[tuple, SignatureNames] = {}
# What transformers' _validate_model_kwargs accepts beside the signatures' names and TransformersKwargs' keys.
_ALWAYS_ACCEPTED = frozenset({"debug_io", "mm_encoder_outputs"})


def _merged(values: dict[str, Any]) -> GenerationConfig | None:
    """A new ``GenerationConfig`` with a generation config of these ``values`` and the global defaults merged in, as
    transformers' method merges them before the call's keyword arguments; None if it holds anything but plain
    values."""
    own = GenerationConfig.__new__(GenerationConfig)
    vars(own).update(values)  # (read only: to_dict copies what it hands on)
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


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is None, a number, a string, or a list, tuple or dict of such (nested at most
    :data:`_DEEPEST` deep, which also ends a list holding itself)."""
    kind = type(value)
    if kind in _ATOMIC:
        return True
    if depth >= _DEEPEST:
        return False
    if kind is dict:
        return all(type(key) in _ATOMIC and _plain(item, depth + 1) for key, item in value.items())
    return kind in (list, tuple) and all(_plain(item, depth + 1) for item in value)


_DEEPEST = 8


def _same(kept: dict[str, Any], values: dict[str, Any]) -> bool:
    """Whether ``values`` (a generation config's) are the plain ``kept`` ones: the same names in the same order, with
    the same values of the same types all the way down (1 == 1.0 == True, but each may be read differently). Types
    are compared before values, so nothing but plain values is ever compared."""
    if len(kept) != len(values) or list(kept) != list(values):
        return False
    for a, b in zip(kept.values(), values.values()):
        if type(a) is not type(b) or (type(a) in _CONTAINERS and not _identical(a, b)):
            return False
    return kept == values


def _identical(a: Any, b: Any) -> bool:
    """``a`` (plain) and ``b`` of the same types and values all the way down, in the same order."""
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict:
        return len(a) == len(b) and all(_identical(ka, kb) and _identical(va, vb)
                                        for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    if kind in (list, tuple):
        return len(a) == len(b) and all(map(_identical, a, b))
    return a == b


def _may_hold_generation_fields(config: PreTrainedConfig) -> bool:
    """Whether transformers' ``config._get_generation_parameters()`` may find a generation field set on the model's
    config (then its method raises its error): one in the config's own attributes, not None and not a field of its
    class. Also True where such a name could be read some other way (a class attribute or property, an
    ``attribute_map`` alias, a ``__getattr__`` or another ``__getattribute__``, a config of per-layer settings) or the
    class checks in its own way, which transformers' method then does. (The class is read at every call: it may have
    been changed since the last.)"""
    cls = type(config)
    names = _generation_names(cls)
    values = vars(config)
    if (names is None or cls._get_generation_parameters is not _GENERATION_PARAMETERS
            or "attribute_map" in values or values.get("_heterogeneity_spec") is not None
            or not names.isdisjoint(getattr(cls, "attribute_map", ()))
            or any(hasattr(cls, name) for name in names)):
        return True
    for klass in cls.__mro__:
        own = vars(klass)
        if "__getattr__" in own or own.get("__getattribute__", _OBJECT_READ) not in _PLAIN_READS:
            return True
    return any(values[name] is not None for name in names.intersection(values))


@functools.cache
def _generation_names(cls: type) -> frozenset[str] | None:
    """The generation fields transformers' check looks for that are not fields of ``cls`` (a dataclass's fields are
    fixed when it is made); None for a class that is not a dataclass."""
    if not dataclasses.is_dataclass(cls):
        return None
    return (frozenset(GenerationConfig._get_default_generation_params()) - {"use_cache"}
            - {field.name for field in dataclasses.fields(cls)})


_GENERATION_PARAMETERS = PreTrainedConfig._get_generation_parameters
# The attribute reads of transformers' config classes and seqzoo's own (configuration_utils.py), which read a config's
# attributes and its attribute_map's aliases and nothing else.
_OBJECT_READ = object.__getattribute__
_PLAIN_READS = frozenset({_OBJECT_READ, _seqzoo_config_getattribute,
                          *(vars(klass)["__getattribute__"] for klass in PreTrainedConfig.__mro__
                            if "__getattribute__" in vars(klass))})


__all__ = ["ATTRIBUTE", "PreparedGeneration", "attention_mask_for_generation", "mask_preparation_checked",
           "prepare_generation_config", "preparation_checked"]
