"""Activation checkpointing of seqzoo's layers: every checkpointed layer call (transformers'
``GradientCheckpointingLayer`` blocks, the classic loop's mixers) goes through
:func:`checkpoint_with_positional_states`, so that a recurrent state keeps its gradient path under torch's
reentrant checkpoint; a model whose layers share values across layers (RWKV-7's value residual) refuses the
reentrant checkpoint, whose gradient would be wrong."""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint


def layer_checkpoint_function(model: nn.Module, enable: bool, gradient_checkpointing_func: Any,
                              every_n_layers: Any = 1) -> Any:
    """The function ``model``'s checkpointed layer calls go through (``gradient_checkpointing_func`` wrapped by
    :func:`checkpoint_with_positional_states`); raises when enabling a reentrant checkpoint that would drop a
    gradient, an ``every_n_layers`` that is not an integer >= 1, or an option torch's checkpoint does not take
    (each failed at the first training step: a division by zero, or torch handing the option to the layer)."""
    where = f"{type(model).__name__}.activation_checkpointing_enable"
    if enable and (type(every_n_layers) is not int or every_n_layers < 1):
        raise ValueError(f"{where}: every_n_layers={every_n_layers!r} is invalid: expected an integer >= 1 "
                         "(1 checkpoints every layer)")
    options = getattr(gradient_checkpointing_func, "keywords", None) or {}
    unknown = sorted(set(options) - _CHECKPOINT_OPTIONS)
    if enable and unknown and isinstance(gradient_checkpointing_func, functools.partial):
        hints = [name + "".join(f" (did you mean {close!r}?)" for close in
                                difflib.get_close_matches(name, _CHECKPOINT_OPTIONS, n=1)) for name in unknown]
        raise ValueError(f"{where}: torch.utils.checkpoint.checkpoint takes no option {', '.join(hints)}; it takes "
                         f"{', '.join(sorted(_CHECKPOINT_OPTIONS))}")
    # torch's reentrant checkpoint carries gradients only through a layer's positional tensors: RWKV-7's value
    # residual (layer 0's values, handed to the later layers beside the hidden states) would lose its gradient
    # path into layer 0, and every parameter before it would get a wrong gradient without an error.
    keywords = getattr(gradient_checkpointing_func, "keywords", None) or {}
    reentrant = keywords.get("use_reentrant", True) is not False  # (torch's default when not given is True)
    if enable and reentrant and isinstance(gradient_checkpointing_func, functools.partial):
        shared = sorted({type(m).__name__ for m in model.modules() if getattr(m, "has_value_residual", False)})
        if shared:
            raise ValueError(
                f"{type(model).__name__}: activation checkpointing with use_reentrant=True (torch's default when "
                f"use_reentrant is not given) is not supported: {', '.join(shared)} hands layer 0's values on to "
                "the later layers, and a reentrant checkpoint drops their gradient. Pass "
                "{'use_reentrant': False} (transformers' default, and TrainingArguments' "
                "gradient_checkpointing_kwargs)")
    # Every checkpointed layer call (transformers' GradientCheckpointingLayer blocks, the classic loop's mixers)
    # goes through the function returned here: its recurrent states travel as positional tensors.
    return functools.partial(checkpoint_with_positional_states, gradient_checkpointing_func)


def _checkpoint_options() -> frozenset[str]:
    """The options torch's checkpoint takes by name (its keyword parameters, and preserve_rng_state, which it reads
    from its **kwargs); any other it hands on to the checkpointed function."""
    parameters = inspect.signature(checkpoint).parameters.values()
    named = {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return frozenset(named | {"preserve_rng_state"})


_CHECKPOINT_OPTIONS = _checkpoint_options()
_NO_STATE = object()


def checkpoint_with_positional_states(checkpoint: Any, function: Any, *args: Any) -> Any:
    """``checkpoint(function, *args)``, where ``function`` may be a layer call with its recurrent state bound as a
    keyword (``functools.partial(..., state=...)``: transformers' ``GradientCheckpointingLayer`` binds a block's
    keywords so, and the classic loop its mixers'). torch's reentrant checkpoint carries gradients through its
    positional tensors only: a state passed in a dict, or returned in one, lost its gradient path into the layers of
    an earlier call (a cache continued in training, truncated BPTT), and their parameters got wrong gradients without
    an error. So the given state's tensors are passed to ``checkpoint`` positionally, the returned state's come back
    as positional outputs, and the dicts are rebuilt around them. Another state (attention's K/V layer) or a call
    without one is checkpointed as it is."""
    state = function.keywords.get("state", _NO_STATE) if isinstance(function, functools.partial) else _NO_STATE
    if state is not None and not isinstance(state, dict):
        return checkpoint(function, *args)
    names = tuple(state) if state is not None else ()
    returned: list[Any] = []  # the returned state's names (None where it is no dict)
    count = len(args)

    def run(*values: Any) -> tuple[Any, ...]:
        given = dict(zip(names, values[count:])) if state is not None else None
        hidden_states, new_state = function(*values[:count], state=given)
        if not isinstance(new_state, dict):
            returned[:] = [None]
            return hidden_states, new_state
        returned[:] = [tuple(new_state)]
        return (hidden_states, *new_state.values())

    hidden_states, *values = checkpoint(run, *args, *(state[name] for name in names))
    if returned[0] is None:
        return hidden_states, values[0]
    return hidden_states, dict(zip(returned[0], values))
