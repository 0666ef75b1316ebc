"""How seqzoo meets every supported transformers release: the name of the decoding cache, and the keyword arguments
a model's ``forward`` accepts.

How ``generate()`` names and builds the decoding state (re-check on every new release; the test suite runs the
oldest and the newest supported release, and ``tests/models/test_compat.py`` pins these facts):

* transformers <= 5.23 passes the state to ``forward`` as ``past_key_values=`` (as ``cache_params=`` for a class
  whose name contains "mamba"), reads it back from the output field ``past_key_values``, and passes
  ``cache_position``.
* transformers >= 5.24 passes it as ``cache=`` and reads the output field ``cache``; the old names still work but
  log a deprecation (``ModelOutput`` maps them to ``cache``), and ``cache_position`` is no longer passed (5.24 warns
  when remote code names it in its ``forward`` signature, so seqzoo never does).
* Either way, ``generate()`` builds a ``DynamicCache`` only for a model whose ``_supports_default_dynamic_cache()``
  returns True. seqzoo's recurrent models return False: their ``forward`` builds a
  :class:`~seqzoo.cache.SeqzooCache` on the first call and returns it, and ``generate()`` feeds it back.
* A model with ``_is_stateful = True`` is refused assisted decoding (which must roll a state back) with a clear error.

seqzoo's forwards take the state as ``cache`` and accept the two older names through one alias rule
(:func:`take_cache`); outputs carry it under the field the installed release reads (:data:`OUTPUT_CACHE_FIELD`).

Unknown keyword arguments are never swallowed: a forward raises on any keyword it does not use unless it is on
:data:`PASSTHROUGH_KWARGS`, the documented list of what transformers (generate, Trainer, pipelines) passes to every
model whether or not it uses it. Plugins extend the list with :func:`register_passthrough_kwargs`. That is how the
5.24 rename would have been caught: ``cache=`` would have raised instead of vanishing into ``**kwargs``.

Inside a Hub bundle this module runs without seqzoo installed, and the bundle cannot be updated once published
while newer releases forward every unrecognised ``generate`` keyword to ``forward``. So bundled code is lenient: it
maps the cache aliases, raises on a close misspelling of an argument it knows, and warns once about anything else.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import logging
import warnings
from collections import OrderedDict
from typing import Any, Iterable

import torch
from transformers import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast

logger = logging.getLogger("seqzoo")

CACHE_ARGUMENT = "cache"
CACHE_ALIASES = ("past_key_values", "cache_params")

# Output field that generate() reads the cache back from in the installed release.
OUTPUT_CACHE_FIELD = (
    CACHE_ARGUMENT
    if CACHE_ARGUMENT in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)}
    else "past_key_values"
)
# Keyword under which the installed release's generate() expects a user's cache.
GENERATE_CACHE_KWARG = (
    CACHE_ARGUMENT
    if CACHE_ARGUMENT in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    else "past_key_values"
)
# Keyword under which the installed release's create_causal_mask takes the cache.
_MASK_CACHE_KWARG = (
    CACHE_ARGUMENT if CACHE_ARGUMENT in inspect.signature(create_causal_mask).parameters else "past_key_values"
)

# What transformers passes to a model's forward whether or not the model uses it. Accepted (and ignored where not
# used) by every seqzoo model; anything else that a forward does not name raises.
#   cache_position       generate() on <= 5.23 (seqzoo counts positions in its own caches)
#   num_items_in_batch   Trainer, for the loss under gradient accumulation (used by the causal-LM loss)
#   output_attentions    generate(), pipelines (models without attention return no attention weights)
#   return_dict          the standard ModelOutput switch
PASSTHROUGH_KWARGS: set[str] = {"cache_position", "num_items_in_batch", "output_attentions", "return_dict"}

# Installed seqzoo is the package ``seqzoo``; a Hub bundle holds this file as a flat sibling module under
# ``transformers_modules``, which cannot be updated once published.
STRICT = __name__.startswith("seqzoo.")


def register_passthrough_kwargs(*names: str) -> None:
    """Let every seqzoo model accept (and ignore where unused) these keyword arguments, for plugins whose callers
    pass extra names."""
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"a pass-through keyword argument must be an identifier, got {name!r}")
        PASSTHROUGH_KWARGS.add(name)


def take_cache(cache: Any, kwargs: dict[str, Any]) -> Any:
    """The decoding state passed as ``cache`` or under an older name (popped from ``kwargs``). Two different
    caches at once raise."""
    for alias in CACHE_ALIASES:
        other = kwargs.pop(alias, None)
        if other is None:
            continue
        if cache is not None and cache is not other:
            raise ValueError(
                f"two different caches were passed, as {CACHE_ARGUMENT!r} and as {alias!r}; pass one, as "
                f"{CACHE_ARGUMENT!r} ({', '.join(CACHE_ALIASES)} are older names of the same argument)"
            )
        cache = other
    return cache


_WARNED: set[tuple[str, str]] = set()


def check_kwargs(kwargs: dict[str, Any], known: Iterable[str], where: str) -> dict[str, Any]:
    """Raise on keyword arguments that are neither ``known`` (the caller's own parameters and the extra keywords it
    takes, also used to suggest a spelling) nor on :data:`PASSTHROUGH_KWARGS`; return ``kwargs`` unchanged. Lenient
    inside a Hub bundle."""
    if not kwargs:  # most calls, every decode step of a raw loop
        return kwargs
    known = set(known)
    unknown = [name for name in kwargs if name not in PASSTHROUGH_KWARGS and name not in known]
    if not unknown:
        return kwargs
    # The cache's older names only where the caller takes a cache (a classifier takes none).
    cache_names = {CACHE_ARGUMENT, *CACHE_ALIASES} if CACHE_ARGUMENT in known else set()
    allowed = sorted(known | PASSTHROUGH_KWARGS | cache_names)
    problems = []
    for name in unknown:
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.8 if not STRICT else 0.6)
        if STRICT or close:
            problems.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        elif (where, name) not in _WARNED:
            _WARNED.add((where, name))
            warnings.warn(f"{where} ignores the keyword argument {name!r}, which it does not use", stacklevel=3)
    if problems:
        raise TypeError(
            f"{where} got unexpected keyword argument(s) {', '.join(problems)}. It accepts {', '.join(allowed)}"
        )
    return kwargs


def model_output(output_class: type, cache: Any = None, **fields: Any) -> Any:
    """``output_class(...)`` with the cache under the field the installed release reads (no deprecation logged).

    Built the fast way where that gives the very object the class's own constructor gives (see
    :func:`_output_builder`); by the constructor while ``torch.compile`` traces."""
    fields[OUTPUT_CACHE_FIELD] = cache
    if torch.compiler.is_compiling():  # dynamo traces transformers' outputs through their constructor only
        return output_class(**fields)
    build = _BUILDERS.get(output_class)
    if build is None:
        build = _BUILDERS[output_class] = _output_builder(output_class)
    return build(fields)


_BUILDERS: dict[type, Any] = {}


def _output_builder(output_class: type) -> Any:
    """A function ``fields -> output_class(**fields)``. A transformers ``ModelOutput`` dataclass is built through a
    ``__setattr__`` that lists the dataclass fields on every assignment, and a ``__post_init__`` that checks and
    stores them again: about 60 µs per output, twice per decoded token (backbone and head), when the layers of a
    small model take a few hundred. What that leaves behind is plain: each field as an attribute, the non-None ones
    as dict items in field order. The fast builder writes exactly that. It is used only if, for this class, it
    builds the same object as the constructor (checked here, once, on a sample with every field set), so a release
    that stores anything else falls back to the constructor; and it leaves to the constructor whatever
    ``__post_init__`` treats specially (unknown fields, which raise; a non-tensor first field with all others None,
    which it unpacks)."""
    if not (dataclasses.is_dataclass(output_class) and issubclass(output_class, OrderedDict)):
        return lambda fields: output_class(**fields)
    names = tuple(f.name for f in dataclasses.fields(output_class))
    known = frozenset(names)
    first, rest = names[0], names[1:]

    def fast(fields: dict[str, Any]) -> Any:
        if not known.issuperset(fields) or (
            fields.get(first) is not None and not isinstance(fields[first], torch.Tensor)
            and all(fields.get(name) is None for name in rest)
        ):
            return output_class(**fields)
        output = output_class.__new__(output_class)
        attributes = output.__dict__
        for name in names:
            value = attributes[name] = fields.get(name)
            if value is not None:
                OrderedDict.__setitem__(output, name, value)
        return output

    sample = {name: object() for name in names}
    try:
        built, reference = fast(sample), output_class(**sample)
    except Exception:  # a class the fast path does not understand is built by its constructor
        logger.debug("model outputs of %s are built by its constructor", output_class.__name__, exc_info=True)
        return lambda fields: output_class(**fields)
    same = (type(built) is type(reference) and list(built.items()) == list(reference.items())
            and vars(built).keys() == vars(reference).keys()
            and all(vars(built)[k] is vars(reference)[k] for k in vars(reference)))
    return fast if same else (lambda fields: output_class(**fields))


def as_returned(model: Any, output: Any, return_dict: bool | None) -> Any:
    """A model's ``output`` as transformers' own models return it: the ``ModelOutput``, or, when ``return_dict``
    (else the config's ``return_dict``) is False, its fields that are set, in order, as a tuple (from a backbone,
    ``(last_hidden_state, cache, hidden_states)``). The heads built on a backbone call it with True."""
    return output if (model.config.return_dict if return_dict is None else return_dict) else output.to_tuple()


def output_cache(output: Any) -> Any:
    """The cache of a model output, read without a deprecation on any release."""
    return getattr(output, OUTPUT_CACHE_FIELD, None)


def source_fingerprint(*functions: Any) -> str | None:
    """A short fingerprint of the source of ``functions`` (transformers' methods that seqzoo matches with a faster
    equivalent of its own, used only on the releases whose source it was checked against); None when a source
    cannot be read."""
    digest = hashlib.sha256()
    for function in functions:
        try:
            digest.update(inspect.getsource(function).encode())
        except (OSError, TypeError):
            return None
    return digest.hexdigest()[:16]


def checked_source(functions: tuple, fingerprints: frozenset, each: bool = False) -> bool:
    """Whether ``functions`` are the ones whose sources have these fingerprints (one of them all together, or with
    ``each`` a tuple of one per function), not wrappers of them (whose source ``inspect`` reads from what they wrap);
    remembered by the functions themselves, so a method patched since (or put back) is checked as it is now."""
    key = (functions, fingerprints)
    found = _CHECKED_SOURCES.get(key)
    if found is None:
        read = tuple(map(source_fingerprint, functions)) if each else source_fingerprint(*functions)
        found = all(getattr(function, "__wrapped__", None) is None for function in functions) and read in fingerprints
        _CHECKED_SOURCES[key] = found
    return found


_CHECKED_SOURCES: dict[tuple, bool] = {}


def causal_mask(**kwargs: Any) -> Any:
    """transformers' ``create_causal_mask`` with the cache passed under the name the installed release takes."""
    kwargs[_MASK_CACHE_KWARG] = kwargs.pop(CACHE_ARGUMENT)
    return create_causal_mask(**kwargs)


__all__ = [
    "CACHE_ALIASES",
    "CACHE_ARGUMENT",
    "GENERATE_CACHE_KWARG",
    "OUTPUT_CACHE_FIELD",
    "PASSTHROUGH_KWARGS",
    "STRICT",
    "causal_mask",
    "check_kwargs",
    "model_output",
    "output_cache",
    "register_passthrough_kwargs",
    "source_fingerprint",
    "take_cache",
]
