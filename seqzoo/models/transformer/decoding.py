"""The Transformer's decode step without module calls (seqzoo/models/README.md, "The decode step's shortcut").

At decode sizes a Transformer block costs more in Python than in arithmetic: a 256-wide block makes twelve module calls
a token, each going through ``nn.Module.__call__``'s hook machinery, around operations of a few microseconds.
:func:`step_block` computes what ``TransformerBlock.forward`` computes for one token, calling the same functions in the
same order, but runs each part's forward itself: an unhooked ``nn.Linear`` as ``F.linear`` of its weight and bias (as
``call_plainly`` does), the norms, dropouts and activations through their class's forward (:func:`call_directly`), the
attention through ``SelfAttention.attend`` (transformers' attention function of the configured implementation, on
transformers' K/V layer, as the forward calls them) and the MLP through its ``run``. Its outputs, the cache and the
errors are bitwise those of the module calls: it skips only ``__call__``'s own work, and only where that work is empty.

A part it cannot run so is called as a module: a hooked one (a forward hook, accelerate's offloading hook, a forward set
on the instance, ``module.compile()``), one whose class has a ``__call__`` of its own, an MLP of another class or with a
forward of its own. A block is called whole where it is not exactly a ``TransformerBlock`` with the forward and
``__call__`` it was defined with, is hooked, or holds an attention of another class (or a ``SelfAttention`` with another
forward, or hooked) or a stateful MLP. The caller (``TransformerModel.decode_step``) runs only for a plain decode step,
with no global module hooks and no ``torch.jit`` trace, the conditions under which a module call with no hooks of its
own calls its forward and nothing else.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from seqzoo.layers.attention import SelfAttention
from seqzoo.layers.mixer import Mixer, SharedValues, call_module, has_hooks, plain_module_call, torch_forward
from seqzoo.layers.mlp import MLP, GatedMLP

_ATTENTION_FORWARD = SelfAttention.forward  # as defined: one replaced on the class since is called
# The MLPs' forward and run as defined: the step runs ``run`` only where ``forward`` is the one it mirrors.
_MLP_METHODS = {MLP: (MLP.forward, MLP.run), GatedMLP: (GatedMLP.forward, GatedMLP.run)}
_MLP_LINEARS = {MLP: ("up_proj", "down_proj"), GatedMLP: ("gate_proj", "up_proj", "down_proj")}
_ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
_LINEAR_FORWARD = torch_forward(nn.Linear)  # torch's own (see torch_forward)


def call_directly(module: nn.Module, *args: Any) -> Any:
    """``module(*args)``, without ``nn.Module.__call__`` where the module has no hooks and its class no
    ``__call__`` of its own (the caller has checked that no global module hooks are set and nothing traces):
    ``__call__`` then calls the class's forward and nothing else."""
    cls = type(module)
    if not plain_module_call(cls) or has_hooks(module):
        return module(*args)
    return cls.forward(module, *args)


def _linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # What nn.Linear's forward computes, for a linear map _plain_linears accepted.
    parameters = linear._parameters
    return F.linear(x, parameters["weight"], parameters["bias"])


def _plain_linears(modules: dict[str, Any], names: tuple[str, ...]) -> bool:
    """Whether each of the named submodules is exactly ``nn.Linear``, with torch's forward and ``__call__``, nothing
    :func:`has_hooks` finds, and its weight and bias (or None) as its parameters, not shadowed by attributes of the
    instance: its call then computes :func:`_linear`. (One call for a part's linear maps, whose class is checked
    once.)"""
    if nn.Linear.forward is not _LINEAR_FORWARD or not plain_module_call(nn.Linear):
        return False
    for name in names:
        linear = modules.get(name)
        if type(linear) is not nn.Linear or has_hooks(linear):
            return False
        own, parameters = linear.__dict__, linear._parameters
        if parameters.get("weight") is None or "bias" not in parameters or "weight" in own or "bias" in own:
            return False
    return True


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    cls = type(mlp)
    methods = _MLP_METHODS.get(cls)
    if (methods is not None and methods[0] is cls.forward and methods[1] is cls.run and plain_module_call(cls)
            and not has_hooks(mlp)):
        linears = _MLP_LINEARS[cls]
        # (the class's run: one set on the instance is not what its forward computes)
        return methods[1](mlp, x, _linear if _plain_linears(mlp._modules, linears) else call_module)
    return call_directly(mlp, x)


def step_block(
    layer: nn.Module, block_class: type, block_forward: Any, block_call: Any, hidden_states: torch.Tensor,
    state: Any, attention_mask: Any, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
    shared: SharedValues,
) -> torch.Tensor:
    """``layer``'s output for one token (B, 1, hidden), as ``layer(hidden_states, state=state, ...)`` returns it
    from the Transformer's forward (no attention weights asked for, no attention keywords), with ``state`` (the
    layer's K/V cache entry) updated. Run inline where ``layer`` is exactly ``block_class`` with forward
    ``block_forward`` and ``__call__`` ``block_call`` (as the class was defined), in eval mode (transformers'
    checkpointing wrapper around its forward then runs the forward as is), otherwise called."""
    cls = type(layer)
    if (cls is block_class and cls.forward is block_forward and cls.__call__ is block_call and not layer.training
            and not has_hooks(layer)):
        norm_name, mixer_name, mlp_norm_name, mlp_name = layer.part_names
        norm, attention = getattr(layer, norm_name), getattr(layer, mixer_name)
        mlp_norm, mlp = getattr(layer, mlp_norm_name), getattr(layer, mlp_name)
        if (type(attention) is SelfAttention and SelfAttention.forward is _ATTENTION_FORWARD
                and plain_module_call(SelfAttention) and not has_hooks(attention)
                and not isinstance(mlp, Mixer) and not layer.residual_in_fp32 and norm is not None):
            return _inline_block(layer, norm, attention, mlp_norm, mlp, hidden_states, state, attention_mask,
                                 position_embeddings)
    hidden_states, _ = layer(hidden_states, state=state, attention_mask=attention_mask,
                             position_embeddings=position_embeddings, attention_kwargs={}, output_attentions=False,
                             shared=shared)
    return hidden_states


def _inline_block(layer: nn.Module, norm: nn.Module, attention: SelfAttention, mlp_norm: nn.Module | None,
                  mlp: nn.Module | None, hidden_states: torch.Tensor, state: Any, attention_mask: Any,
                  position_embeddings: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    # Block.forward's steps, for a block of no float32 residual stream and a stateless MLP (see step_block).
    pre_norm = layer.pre_norm
    residual = hidden_states
    if pre_norm:
        hidden_states = call_directly(norm, hidden_states)
    project = _linear if _plain_linears(attention._modules, _ATTENTION_LINEARS) else call_module
    mixed, _ = attention.attend(hidden_states, state, attention_mask, position_embeddings, {}, project)
    hidden_states = residual + (call_directly(layer.dropout, mixed) if layer.has_dropout else mixed)
    if not pre_norm:
        hidden_states = call_directly(norm, hidden_states)
    if mlp is None:
        return hidden_states
    residual = hidden_states
    if pre_norm:
        hidden_states = call_directly(mlp_norm, hidden_states)
    mixed = _mlp(mlp, hidden_states)
    hidden_states = residual + (call_directly(layer.dropout, mixed) if layer.has_dropout else mixed)
    if not pre_norm:
        hidden_states = call_directly(mlp_norm, hidden_states)
    return hidden_states
