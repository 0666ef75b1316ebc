"""The protocol every token mixer follows, and the residual block that holds one.

A token mixer is the part of a layer that moves information between positions: an RNN/LSTM/GRU cell, attention,
RWKV-7's time mix, Mamba's selective scan, Mamba-2's SSD. Every one is built the same way and called the same way::

    mixer = MambaMixer(config, layer_idx)
    hidden_states, state = mixer(hidden_states, state=state, mask=mask, **context)

* ``config`` is a config of the mixer's own architecture (a hybrid model hands each mixer one built from its
  ``mixer_config``); ``layer_idx`` is the layer's index among the model's layers of its kind (in a hybrid, among
  the layers of its own mixer).
* ``state`` is this layer's entry of the :class:`~seqzoo.cache.SeqzooCache`: for a recurrent mixer a dict of named
  tensors (None on the first call), returned anew; for attention transformers' K/V layer, updated in place and
  returned.
* ``mask`` is the (B, T) bool padding mask of the current positions (False at padding), or None when nothing is
  padded. A padded position never changes a recurrent state.
* ``context`` carries, by name, what only some mixers need: ``attention_mask`` (the causal mask for attention),
  ``position_embeddings`` (RoPE's cos/sin of the layer's own head size, or None), ``position_ids`` (a hybrid's
  (B, T) positions counting real tokens only), ``shared`` (a :class:`SharedValues` that lives for one forward pass:
  RWKV-7's value residual from its first layer, attention weights when asked for), ``reset`` ((B, T) bool, True
  at the first token of each document of a packed row: the state entering it is zero; a model passes it only when
  every one of its mixers declares ``takes_reset``). A mixer ignores what it does not use.

Each mixer declares the kind of cache entry it keeps (``cache_kind``) and initialises its own parameters in
``init_weights`` (called by the model's ``_init_weights``), so any architecture, hybrids included, initialises a
mixer the way the mixer's paper does.
"""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from seqzoo.cache import RECURRENT
from seqzoo.kernels import registry as kernel_registry


class SharedValues:
    """What the layers of one forward pass hand on to each other (RWKV-7's value residual, the attention weights when
    asked for), read and written as a dict's items. Not a dict: hooks that move a module call's arguments to a device
    (accelerate's offloading and ``dispatch_model``) rebuild every dict they find, so a layer's write would not reach
    the next layer; an object of this class passes through them as it is."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._values[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def setdefault(self, key: str, default: Any) -> Any:
        return self._values.setdefault(key, default)


def module_weights(module: nn.Module, *names: str) -> tuple[Any, ...]:
    """``module``'s parameters ``names``, for a mixer that reads them without calling the module (a kernel takes a
    convolution's or a norm's weights directly). Where accelerate offloads the module, its hook loads the weights
    before the module's forward and offloads them again after it, so a module that is never called would be read on
    the meta device: this runs that hook around the read. The tensors read stay usable after (the hook swaps the
    module's parameters, not the tensors). Without accelerate's hook it is a plain read."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return tuple(getattr(module, name) for name in names)
    hook.pre_forward(module)
    try:
        return tuple(getattr(module, name) for name in names)
    finally:
        hook.post_forward(module, None)


class Mixer(nn.Module):
    """Base of every token mixer (see the module docstring for the protocol)."""

    cache_kind: ClassVar[str] = RECURRENT
    # Whether a model runs packed rows through this mixer as they are, with context["reset"] (each document's first
    # token) passed on to its kernels, which start every state from zero there. A model whose every mixer does keeps
    # the packed layout; any other model unpacks the documents into rows of their own (seqzoo/models/packing.py).
    takes_reset: ClassVar[bool] = False
    # Projection weights (applied as x @ W^T) held as plain parameters of the mixer rather than inside an nn.Linear
    # (the classic recurrent cells' weight_ih / weight_hh, which torch's fused kernels take whole): what adapters and
    # quantisation must reach by parameter name (seqzoo/adapters.py, seqzoo/quantization.py), and what a causal LM's
    # set_weight_layout stores by columns with the nn.Linear weights.
    projection_parameters: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        # The kernel registry's one-time work happens here, eagerly, so that a torch.compile trace of the model
        # only reads it.
        kernel_registry.prepare()

    def forward(
        self, hidden_states: torch.Tensor, *, state: Any = None, mask: torch.Tensor | None = None, **context: Any
    ) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def init_weights(self) -> None:
        """Initialise this mixer's parameters (with ``transformers.initialization``, which respects loaded
        weights)."""

    @classmethod
    def state_bytes(cls, config: Any, dtype_bytes: int = 4) -> int:
        """Bytes of fixed-size state one layer of this mixer carries per sequence."""
        return 0

    @classmethod
    def kv_bytes_per_token(cls, config: Any, dtype_bytes: int = 4) -> int:
        """Bytes one layer of this mixer adds to its cache per sequence and token (keys and values)."""
        return 0


class Block(GradientCheckpointingLayer):
    """``norm -> mixer -> residual (-> norm -> MLP -> residual)``, with the mixer, MLP and norms as parameters
    (mamba_ssm's ``Block(dim, mixer_cls, mlp_cls, norm_cls)``).

    ``norm_position="post"`` normalises after each residual sum instead (the original Transformer). The MLP may be a
    :class:`Mixer` itself when it carries state between tokens (RWKV-7's channel mix shifts tokens); its state entries
    sit beside the mixer's in the layer's dict. ``residual_in_fp32`` keeps the residual stream in float32 (Mamba).

    Existing checkpoints name the four parts differently per architecture (``self_attn`` in the Transformer, ``attn``
    and ``ffn`` in RWKV-7); a subclass keeps its names in ``part_names`` (norm, mixer, MLP norm, MLP).
    """

    part_names: ClassVar[tuple[str, str, str, str]] = ("norm", "mixer", "mlp_norm", "mlp")

    def __init__(
        self,
        mixer: Mixer,
        norm: nn.Module | None = None,
        mlp: nn.Module | None = None,
        mlp_norm: nn.Module | None = None,
        *,
        norm_position: str = "pre",
        dropout: float = 0.0,
        residual_in_fp32: bool = False,
    ) -> None:
        super().__init__()
        if norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position must be 'pre' or 'post', got {norm_position!r}")
        for name, module in zip(self.part_names, (norm, mixer, mlp_norm, mlp)):
            setattr(self, name, module)
        self.pre_norm = norm_position == "pre"
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.has_dropout = dropout > 0  # an Identity call per part and token is measurable when decoding
        self.residual_in_fp32 = residual_in_fp32
        # Whether forward checks what the mixer returns (check_mixer_output): a plugin's mixer may return an output
        # the residual sum would broadcast without an error. seqzoo's own mixers return theirs as the protocol says
        # and are not checked, decided here once: forward runs for every decoded token.
        self.checks_mixer_output = not seqzoo_mixer(mixer)

    def forward(
        self, hidden_states: torch.Tensor, *, state: Any = None, mask: torch.Tensor | None = None, **context: Any
    ) -> tuple[torch.Tensor, Any]:
        norm_name, mixer_name, mlp_norm_name, mlp_name = self.part_names
        norm, mixer = getattr(self, norm_name), getattr(self, mixer_name)
        mlp_norm, mlp = getattr(self, mlp_norm_name), getattr(self, mlp_name)
        # (float32 at least: a float64 model keeps its float64 residual stream)
        residual = (hidden_states.to(torch.promote_types(hidden_states.dtype, torch.float32)) if self.residual_in_fp32
                    else hidden_states)
        if self.pre_norm and norm is not None:
            # A float32 residual stream enters the norm in the weights' dtype (as transformers' Mamba does).
            hidden_states = norm(hidden_states.to(norm.weight.dtype) if self.residual_in_fp32 else hidden_states)
        out = mixer(hidden_states, state=state, mask=mask, **context)
        if self.checks_mixer_output:
            check_mixer_output(mixer, out, hidden_states)
        mixed, new_state = out
        hidden_states = residual + (self.dropout(mixed) if self.has_dropout else mixed)
        if not self.pre_norm:
            hidden_states = norm(hidden_states)
        if mlp is None:
            return hidden_states, new_state

        residual = hidden_states
        if self.pre_norm:
            hidden_states = mlp_norm(hidden_states)
        if isinstance(mlp, Mixer):  # a stateful MLP: its state entries join the mixer's
            mixed, mlp_state = mlp(hidden_states, state=state, mask=mask, **context)
            new_state = {**(new_state or {}), **mlp_state}
        else:
            mixed = mlp(hidden_states)
        hidden_states = residual + (self.dropout(mixed) if self.has_dropout else mixed)
        if not self.pre_norm:
            hidden_states = mlp_norm(hidden_states)
        return hidden_states, new_state


def check_mixer_output(mixer: nn.Module, out: Any, hidden_states: torch.Tensor) -> None:
    """Refuse what a plugin's ``mixer`` returned for its input ``hidden_states`` unless it is ``(hidden_states,
    state)`` with hidden states of the input's shape and dtype. The residual sum would broadcast a (B, 1, D), (1, T, D),
    (D,) or 0-d output without an error (one position's or one row's output added to every position or row), and a
    wider or float64 output would fail inside torch, far from the mixer."""
    name = type(mixer).__name__
    if type(out) is not tuple or len(out) != 2:
        # A tensor would be unpacked along its batch dimension: with two rows, row 0's output would be added to every
        # row, without an error.
        raise TypeError(f"{name}.forward must return (hidden_states, state), as every token mixer does "
                        f"(seqzoo.layers.mixer.Mixer); it returned {type(out).__name__}")
    mixed = out[0]
    if not isinstance(mixed, torch.Tensor):
        raise TypeError(f"{name}.forward returned hidden states of type {type(mixed).__name__}; a token mixer returns "
                        "(hidden_states, state) with hidden_states a tensor of its input's shape and dtype")
    if mixed.shape != hidden_states.shape:
        raise ValueError(f"{name}.forward returned hidden states of shape {tuple(mixed.shape)} for an input of shape "
                         f"{tuple(hidden_states.shape)}; a token mixer returns one output per input position, of the "
                         "input's shape (batch, length, hidden_size)")
    # A narrower dtype is promoted by the residual sum (a kernel that runs in bf16 inside a float32 model), and
    # autocast mixes dtypes by design; a wider one outside autocast (float64 in a float32 model) would carry the
    # residual stream into it and fail in the next layer, far from the mixer.
    device = mixed.device.type
    if (torch.promote_types(mixed.dtype, hidden_states.dtype) != hidden_states.dtype
            and not torch.is_autocast_enabled(device)):
        raise TypeError(f"{name}.forward returned hidden states of dtype {mixed.dtype} for an input of "
                        f"{hidden_states.dtype}; a token mixer returns its input's dtype (or a narrower one)")


# Every one of seqzoo's mixers is defined in seqzoo/layers/: "seqzoo.layers." (in a Hub code bundle, where this module
# is "<package>.seqzoo_layers_mixer": "<package>.seqzoo_layers_").
_OWN_MIXER_MODULES = __name__.rpartition("mixer")[0]


def seqzoo_mixer(mixer: nn.Module) -> bool:
    """Whether ``mixer`` is of one of seqzoo's own mixer classes (a plugin's subclass is not, whatever it overrides:
    a recurrent mixer's forward returns what its ``run`` returns); a bidirectional pair when both of its directions
    are."""
    if type(mixer) is BidirectionalMixer:
        return seqzoo_mixer(mixer.left_to_right) and seqzoo_mixer(mixer.right_to_left)
    return type(mixer).__module__.startswith(_OWN_MIXER_MODULES)


class BidirectionalMixer(Mixer):
    """A mixer run left to right and a twin run right to left over the same inputs, joined per position by
    concatenation or sum (the classic BiRNN; Schuster & Paliwal 1997). Its output at a position depends on the
    whole sequence, so a model of such layers encodes but cannot generate, and keeps no state between calls.

    The right-to-left pass reads the time-reversed sequence and mask. A padded position is an identity step in
    every seqzoo mixer, so over a left-padded row the reversed pass starts at the row's last real token, exactly as
    over the row alone. The two directions are separate parameters (``left_to_right``, ``right_to_left``); the
    kernels are the same.
    """

    def __init__(self, left_to_right: Mixer, right_to_left: Mixer, merge: str) -> None:
        super().__init__(None, left_to_right.layer_idx)
        if merge not in ("concat", "sum"):
            raise ValueError(f"merge must be 'concat' or 'sum', got {merge!r}")
        self.left_to_right = left_to_right
        self.right_to_left = right_to_left
        self.merge = merge

    def extra_repr(self) -> str:
        return f"merge={self.merge}"

    def forward(
        self, hidden_states: torch.Tensor, *, state: Any = None, mask: torch.Tensor | None = None,
        shared: SharedValues | None = None, **context: Any,
    ) -> tuple[torch.Tensor, None]:
        if state is not None:
            raise ValueError("a bidirectional layer reads the whole sequence at once; it has no state to continue")
        if context.get("reset") is not None:
            # (takes_reset is False: a model unpacks packed rows for it. Flipped as it is, a reset would fall on each
            # document's last token in the right-to-left pass, not on the first it reads.)
            raise ValueError("a bidirectional layer takes no reset (packed rows): run each document as a row of its "
                             "own, as seqzoo's models do for it")
        shared = SharedValues() if shared is None else shared
        forward, _ = self.left_to_right(hidden_states, mask=mask, shared=shared, **context)
        backward, _ = self.right_to_left(
            hidden_states.flip(1), mask=None if mask is None else mask.flip(1),
            shared=shared.setdefault("right_to_left", SharedValues()), **context,
        )
        backward = backward.flip(1)
        joined = torch.cat([forward, backward], dim=-1) if self.merge == "concat" else forward + backward
        return joined, None


def projection_parameters(module: nn.Module) -> tuple[str, ...]:
    """The names of the weight matrices a mixer keeps as parameters (not ``nn.Linear`` layers) that adapters and
    quantisation treat as projections; () for any other module. A mixer of a model loaded with
    ``trust_remote_code=True`` before seqzoo was imported is an instance of the bundle's copy of :class:`Mixer`,
    another class: it is recognised by the attribute."""
    if isinstance(module, Mixer):
        return module.projection_parameters
    names = getattr(type(module), "projection_parameters", ())
    return names if isinstance(names, tuple) and all(isinstance(name, str) for name in names) else ()


def has_hooks(module: nn.Module) -> bool:
    """Whether ``module(...)`` runs more than ``type(module).forward``: a hook on the module, a forward (accelerate's
    offloading and device-placement hooks wrap it so) or ``_call_impl`` set on the instance, or ``module.compile()``
    (the call then runs the compiled graph). Code that runs a module's operations itself, to save the call, does so only
    when this and :func:`global_module_hooks` are False."""
    own = module.__dict__
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or "forward" in own or "_call_impl" in own
                or own.get("_compiled_call_impl") is not None)


def global_module_hooks() -> bool:
    """Whether every module call runs more than its module's own hooks and forward: hooks registered for every
    module (``torch.nn.modules.module.register_module_forward_hook`` ...), or ``nn.Module.__call__`` /
    ``nn.Module._call_impl`` not torch's own (a profiler or a library that patches them to see every call)."""
    hooks = torch.nn.modules.module
    module = nn.Module
    return bool(hooks._global_forward_hooks or hooks._global_forward_pre_hooks or hooks._global_backward_hooks
                or hooks._global_backward_pre_hooks or module.__call__ is not _TORCH_MODULE_CALL
                or module._call_impl is not _TORCH_CALL_IMPL)


def _torchs_method(name: str, qualname: str) -> Any:
    # ``nn.Module.<name>`` where it is the function of torch's module.py named ``qualname`` (a patch made before seqzoo
    # was imported is another function), else a sentinel no method is.
    function = vars(nn.Module).get(name)
    code = getattr(function, "__code__", None)
    if (code is None or getattr(function, "__qualname__", None) != qualname
            or _stem(code.co_filename) != _stem(getattr(sys.modules[nn.Module.__module__], "__file__", None) or "")):
        return _NOT_TORCHS
    return function


def plain_module_call(cls: type) -> bool:
    """Whether calling an instance of ``cls`` goes through torch's own ``nn.Module.__call__`` and ``_call_impl`` (not a
    ``__call__`` or ``_call_impl`` of the class's own, nor one put on it or on ``nn.Module``): with no hooks
    (:func:`has_hooks`, :func:`global_module_hooks`) the call then runs the class's forward and nothing else."""
    return cls.__call__ is _TORCH_MODULE_CALL and cls._call_impl is _TORCH_CALL_IMPL


def torch_forward(cls: type) -> Any:
    """``cls.forward`` where it is the function torch's own source defines for that class, else a sentinel that is
    no function. Code that runs a torch module's operation itself instead of calling the module (the decode step's
    embedding, head, norms) does so only when the class's forward is this: a forward put on the class by a library
    or a user, also before seqzoo was imported, is called. (A patch is a function of another file, a
    ``functools.wraps`` wrapper too.)"""
    forward = vars(cls).get("forward")
    module = sys.modules.get(cls.__module__)
    code = getattr(forward, "__code__", None)
    if (code is None or module is None or getattr(forward, "__module__", None) != cls.__module__
            or getattr(forward, "__qualname__", None) != f"{cls.__qualname__}.forward"
            or _stem(code.co_filename) != _stem(getattr(module, "__file__", None) or "")):
        return _NOT_TORCHS
    return forward


def _stem(path: str) -> str:
    # The file's name without folder or suffix: an install of compiled files only (no .py beside the .pyc) keeps the
    # path the source had when it was compiled in co_filename, and the .pyc's in __file__.
    return os.path.splitext(os.path.basename(path))[0]


_NOT_TORCHS = object()
_TORCH_MODULE_CALL = _torchs_method("__call__", "Module._wrapped_call_impl")
_TORCH_CALL_IMPL = _torchs_method("_call_impl", "Module._call_impl")


def call_module(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``: how ``SelfAttention.forward`` runs its projections through ``attend``; the Transformer's decode
    step passes a function that runs a plain ``nn.Linear``'s one operation in its place (a function, not
    ``operator.call``, which dynamo does not trace through)."""
    return module(x)


def build_mixer(mixer_class: type[Mixer], config: Any, layer_idx: int) -> Mixer:
    """``mixer_class(config, layer_idx)``, or a left-to-right and right-to-left pair of them when the config asks
    for a bidirectional model."""
    if not config.bidirectional:
        return mixer_class(config, layer_idx)
    return BidirectionalMixer(mixer_class(config, layer_idx), mixer_class(config, layer_idx),
                              config.bidirectional_merge)


__all__ = ["BidirectionalMixer", "Block", "Mixer", "build_mixer", "call_module", "global_module_hooks", "has_hooks",
           "plain_module_call", "torch_forward"]
