"""The decode step's lean path (seqzoo/models/README.md, "The decode step's shortcut"): whether a forward call is
a plain decode step, its inputs with the forward's own checks, the end of a backbone's step, and the embedding's and
vocabulary head's single operations, run where nothing would see their module call skipped."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from seqzoo.cache import SeqzooCache
from seqzoo.kernels import onednn_linear
from seqzoo.layers.mixer import global_module_hooks, has_hooks, plain_module_call, torch_forward
from seqzoo.models.inputs import checked_token_ids, current_padding_mask


def prepare_step_inputs(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cache: SeqzooCache,
    embedding: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`prepare_inputs` for a decode step in eager mode (``input_ids`` (B, 1) continuing ``cache``, both
    given), with the same checks and errors: the embedded token (B, 1, E) and the (B, 1) padding mask, None when the
    token is not padding. ``embedding``: ``model.embed_tokens``, where the caller has read it already."""
    if embedding is None:
        embedding = model.embed_tokens
    embeds = call_plainly(embedding, checked_token_ids(input_ids, model.config, True))
    cache.check_fits(model.config, input_ids.shape[0], type(model).__name__)
    return embeds, current_padding_mask(model, attention_mask, input_ids.shape[0], 1, cache.get_seq_length(), True)


def is_plain_decode_step(backbone: nn.Module, own_forward: Any, input_ids: Any, inputs_embeds: Any, cache: Any,
                         output_hidden_states: bool | None, kwargs: dict[str, Any]) -> bool:
    """What a backbone's ``takes_step`` answers: whether a forward call (with no packed rows) is the common decode
    step -- a plain (B, 1) token (a ``torch.Tensor``, not a subclass: its ``__torch_function__`` would see the
    embedding's ``F.embedding``) continuing a ``SeqzooCache``, in eval, with no other keyword and no hidden states
    asked for, no torch function mode (it sees the functions the modules call; this looks at no tensor first) -- and
    ``backbone``'s forward is ``own_forward``, the backbone class's forward as defined, kept by its
    module (a subclass with a forward of its own, or a forward put on the class since by a library or a user, is
    always called, since the causal LM's head would skip it)."""
    return (not torch._C._is_torch_function_mode_enabled() and type(backbone).forward is own_forward
            and isinstance(cache, SeqzooCache)
            and type(input_ids) is torch.Tensor and input_ids.dim() == 2
            and input_ids.shape[1] == 1 and inputs_embeds is None and not kwargs and not backbone.training
            and not torch.compiler.is_compiling() and backbone.config.capabilities.can_generate
            and not (backbone.config.output_hidden_states if output_hidden_states is None else output_hidden_states))


def finish_decode_step(cache: SeqzooCache, layers: Any, stepped: Any, hidden_states: torch.Tensor,
                       states: list, mask: torch.Tensor | None, **context: Any) -> torch.Tensor:
    """The end of a backbone's ``decode_step``: its fused step over every layer either ran (``stepped``: the last
    layer's output and each layer's new state) or declined (None: the layers then run one by one from
    ``hidden_states``, given ``context``); the new states are stored and the cache advances by one position. Returns
    the last layer's output."""
    if stepped is None:
        new_states = []
        for layer, state in zip(layers, states):
            hidden_states, state = layer(hidden_states, state=state, mask=mask, reset=None, **context)
            new_states.append(state)
    else:
        hidden_states, new_states = stepped
    for idx, state in enumerate(new_states):
        cache.update_layer(idx, state)
    cache.advance(1)
    return hidden_states


_PLAIN_FORWARDS = {cls: torch_forward(cls) for cls in (nn.Linear, nn.Embedding)}  # as torch defines them


def runs_plainly(module: nn.Module) -> bool:
    """Whether ``module`` is an unhooked ``nn.Embedding`` or ``nn.Linear`` whose call runs the one operation torch
    defines for it (that exact class, not a subclass, nor a peft or quantisation wrapper, with torch's forward and
    ``__call__``), and for an embedding torch's own ``F.embedding``, which its forward looks up at each call (a
    profiler may replace it). (Its callers run only where no torch function mode is on: a mode would see the
    functions the forward calls, F.embedding among them; ``is_plain_decode_step`` and the step plan check.)"""
    return class_runs_plainly(type(module)) and not has_hooks(module) and not global_module_hooks()


def class_runs_plainly(cls: type) -> bool:
    """What :func:`runs_plainly` asks of the module's class and of torch, shared by every module: exactly
    ``nn.Embedding`` or ``nn.Linear``, with torch's forward and ``__call__``, and for an embedding torch's own
    ``F.embedding``."""
    return (_PLAIN_FORWARDS.get(cls) is cls.forward and plain_module_call(cls)
            and (cls is not nn.Embedding or torch.nn.functional.embedding is _F_EMBEDDING))


_PLAIN_WEIGHTS = (torch.Tensor, nn.Parameter)
_F_EMBEDDING = torch.nn.functional.embedding  # (a Python function of torch's: the one nn.Embedding's forward calls)


def call_plainly(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for the decode step's embedding and vocabulary head. An unhooked ``nn.Embedding`` or
    ``nn.Linear`` (that exact class: not a subclass, nor a peft or quantisation wrapper) runs its one operation
    directly, as its forward would: at decode sizes the module call costs a few per cent of the step. (A forward
    replaced on the class since, by a library or a user, is called.) A large head's product runs by oneDNN
    (``seqzoo/kernels/onednn_linear.py``): the same values within rounding."""
    if runs_plainly(module):
        if type(module) is nn.Linear:  # (by oneDNN for a large head: seqzoo/kernels/onednn_linear.py)
            return onednn_linear.linear(x, module.weight, module.bias)
        padding_idx = module.padding_idx
        if (module.max_norm is None and (padding_idx is None or padding_idx >= 0)
                and type(module.weight) in _PLAIN_WEIGHTS):
            # What F.embedding runs then, without its Python checks (nn.Embedding stores padding_idx >= 0).
            return torch.embedding(module.weight, x, -1 if padding_idx is None else padding_idx,
                                   module.scale_grad_by_freq, module.sparse)
        # (a weight of a tensor subclass, a quantised one, takes F.embedding, which its __torch_function__ may
        # handle where it does not handle torch.embedding)
        return torch.nn.functional.embedding(x, module.weight, padding_idx, module.max_norm,
                                             module.norm_type, module.scale_grad_by_freq, module.sparse)
    return module(x)
