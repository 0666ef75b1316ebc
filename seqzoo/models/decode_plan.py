"""A decoding cache's plan of its later steps (seqzoo/models/README.md, "The decode step's shortcut"): what the general
decode step of one cache runs, found after the prompt's forward (or a general step) and kept on the cache, so that each
later step checks that those decisions still hold and runs the operations alone.

:class:`DecodePlan` holds what every family's plan shares: the checks of the call (a plain (B, 1) token; no labels,
embeds, positions or hidden states asked for, nor ``use_cache=False``: the caller checks those; no gradients,
autocast, hooks, torch function or dispatch mode, or trace), of the cache (a ``SeqzooCache`` whose methods are
seqzoo's own), of the causal LM's modules (the same backbone, embedding and head, run by torch's own forward and
unhooked, and the backbone's methods the general step goes through), the general step's own checks of the ids, the
cache and the mask in its order (with its errors), the embedding (where the layers read it), the head and the
storing of the new states. A family's plan adds its layers: which states it reads (:meth:`DecodePlan._states`), that
they are unchanged (:meth:`DecodePlan._layers_unchanged`) and how they run (:meth:`DecodePlan._run`). The classic
models' plan is ``models/classic/step_plan.py``, RWKV-7's ``models/rwkv7/step_plan.py``.

A plan changes no result: it runs the same operations on the same tensors, and declines (returns None, for the general
path to run) wherever that path would do anything else.

Inside :func:`fixed_model` (``model.fixed_while_decoding()``), a block in which the caller promises that the model stays
as it is, a plan checks the model's modules once, at its first step in the block, and not at every later one there."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from seqzoo.cache import STEP_PLAN_ATTRIBUTE, SeqzooCache, StateLayer
from seqzoo.kernels import onednn_linear
from seqzoo.kernels import registry as kernel_registry
from seqzoo.layers.mixer import global_module_hooks, has_hooks, plain_module_call
from seqzoo.models.compat import model_output
from seqzoo.models.decode_step import class_runs_plainly, runs_plainly
from seqzoo.models.inputs import check_token_ids, current_padding_mask

# The backbone's methods the general step goes through: a plan is made only where they are its class's own, and one
# that meets another (a patch since, or one set on the instance) drops itself.
BACKBONE_METHODS = ("forward", "takes_step", "decode_step")
_IDS = (torch.int64, torch.int32)  # (the general step converts others, or raises on them)
_PLAIN = (torch.Tensor, nn.Parameter)  # (a tensor subclass, a quantised weight, goes through F.embedding)


class _Block:
    """One fixed_model block: the causal LM it holds fixed while it is open, None once it has ended."""

    __slots__ = ("model",)

    def __init__(self, model: nn.Module) -> None:
        self.model: nn.Module | None = model


# The innermost fixed_model block of this context. A block that ended may still be found here (blocks that ended out of
# order, a context copied while one was open: a task's), but holds no model then, and no plan trusts it.
_FIXED: ContextVar[_Block | None] = ContextVar("seqzoo_fixed_model", default=None)


@contextlib.contextmanager
def fixed_model(lm: nn.Module) -> Iterator[nn.Module]:
    """A block in which ``lm`` (a causal LM) stays as it is: its modules, their parameters and attributes, hooks and
    methods set on them, the training mode and ``output_hidden_states`` of its config. A cache's plan (the classic
    models' and RWKV-7's) checks all of that at its first step in the block, as at every step outside one, and then
    trusts it for its later steps in the same block: the model's checks cost a small model's step 3-7% (BENCHMARKS.md,
    run AN). What is not the model's own is checked at every step: the call (ids, cache, mask; gradients, autocast,
    global module hooks, torch function and dispatch modes, a trace) and what every model shares (a forward or
    ``__call__`` put on a class, ``F.embedding`` replaced). Weights changed in place are read, as outside. A change to
    the model inside the block after a cache's first step there (a weight or module replaced, a hook registered,
    ``train()``, a weight's dtype changed through ``.data``) goes unseen by that cache's steps. The classic models'
    input table checks its values against the weights at the block's first cache and not at its later ones
    (:meth:`DecodePlan._fixed_block`): a weight's values changed in the block through ``.data`` or by a fused optimizer
    go unseen by them until it ends. The block belongs to the context it is entered in (``contextvars``: this thread,
    and a task or a copy of the context made in it) while it is open; once it ends nothing trusts it.
    ``SeqzooForCausalLM.fixed_while_decoding()`` calls this; ``seqzoo generate`` decodes in such a block."""
    block = _Block(lm)
    token = _FIXED.set(block)
    try:
        yield lm
    finally:
        block.model = None  # (ended: trusted by no plan, wherever the context holding it went)
        try:
            _FIXED.reset(token)
        except ValueError:  # (exited from another context, a generator finalised elsewhere: the block is ended)
            pass


def plannable(backbone: nn.Module, own: tuple[Any, ...]) -> bool:
    """What a backbone's ``plan_steps`` asks first: whether its class's ``forward``, ``takes_step`` and
    ``decode_step`` are ``own`` (the class's as defined: a subclass's, or one put on the class since, is called by the
    general path, which a plan would skip), none is set on the instance, and the backbone can generate."""
    return (_class_methods_kept(type(backbone), own) and not _methods_set_on(backbone)
            and backbone.config.capabilities.can_generate)


def _methods_set_on(backbone: nn.Module) -> bool:
    """Whether one of the methods is set on the instance. (A plain loop: ``plannable`` runs in a compiled forward, and
    dynamo traces no ``dict_keys.isdisjoint``.)"""
    attributes = backbone.__dict__
    for name in BACKBONE_METHODS:
        if name in attributes:
            return True
    return False


def _class_methods_kept(cls: type, methods: tuple[Any, ...]) -> bool:
    """Whether ``cls``'s ``forward``, ``takes_step`` and ``decode_step`` are ``methods``."""
    for name, method in zip(BACKBONE_METHODS, methods):
        if getattr(cls, name) is not method:
            return False
    return True


def buildable(lm: nn.Module, backbone: nn.Module, cache: SeqzooCache) -> bool:
    """What every plan needs to be made: no gradients, a ``SeqzooCache`` itself (a subclass may store or read states
    its own way: the general step calls it), a plain embedding weight on the CPU, and an embedding and a head that run
    as their one operation (``runs_plainly``)."""
    weight = backbone.embed_tokens._parameters.get("weight")
    return (not torch.is_grad_enabled() and _plain_cache(cache) and type(weight) in _PLAIN and weight.is_cpu
            and runs_plainly(backbone.embed_tokens) and runs_plainly(lm.lm_head))


class DecodePlan:
    """The modules one cache's decode steps run through, as they were after the forward that planned them. :meth:`step`
    runs a later step if everything it was built from is still there and the call is the plain decode step it was
    built for; else it returns None (and drops itself from the cache where the model changed: a new one is built after
    the next general step)."""

    __slots__ = ("backbone", "methods", "embedding", "head", "layers", "dtype", "fixed_in", "chosen")

    def __init__(self, lm: nn.Module, backbone: nn.Module, layers: list[nn.Module]) -> None:
        # The backbone's methods the general step went through, as its class had them (a patch since is called).
        self.backbone, self.methods = backbone, tuple(getattr(type(backbone), name) for name in BACKBONE_METHODS)
        self.embedding, self.head = backbone.embed_tokens, lm.lm_head
        self.layers = tuple(layers)
        self.dtype = self.embedding.weight.dtype
        self.fixed_in: _Block | None = None  # (the fixed_model block in which it last found the model unchanged)
        # A weak reference to the kernel registry's stamp when it last chose the layers' backend for the plan's call
        # (the registry's selection state, with every choice it caches: a plan whose cache lives on after a setting
        # changed does not keep the state it replaced alive), and what a selection reads of that call then
        # (:meth:`_choice_kept`; one tuple: two caches sharing the plan, in two threads, each see a whole one).
        self.chosen: tuple = (None, None)

    def __deepcopy__(self, memo: dict) -> DecodePlan:
        # (a copied cache decodes with the same model: the plan holds no state of the cache)
        return self

    def __reduce__(self) -> tuple:
        # (a pickled cache is saved without the model it decoded with: the next step plans again)
        return _no_plan, ()

    # -- a family's layers ---------------------------------------------------------------------------------------

    def _layers_unchanged(self, backbone: nn.Module) -> bool:
        """Whether the layers' modules and weights are those the plan was built from, as they must be for
        :meth:`_run` (the layers themselves are the backbone's, checked by the caller)."""
        raise NotImplementedError

    def _states(self, entries: list, batch: int) -> list | None:
        """What :meth:`_run` reads of each layer's cached state, or None where the general step must run (a state
        missing, or of another dtype, shape or name than the layers keep)."""
        raise NotImplementedError

    def _run(self, backbone: nn.Module, input_ids: torch.Tensor, cache: SeqzooCache, x: torch.Tensor | None,
             states: list) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]] | None:
        """The layers (and any norm after them) on the token ``input_ids`` (B, 1), embedded: ``x`` (B, 1, E), or None
        where :meth:`step` left it to this (:meth:`_embedded`, where the layers read it): the hidden state the head
        reads and each layer's new state dict; or None where the general step must run (a forced backend, say).
        Changes nothing of the cache."""
        raise NotImplementedError

    def _choice_kept(self, read: tuple) -> bool:
        """Whether the kernel registry's choice for the layers, kept by :meth:`_keep_choice`, still holds: its stamp
        (``registry.selection_stamp()``: no setting changed since) and ``read``, what the op's check and the backends'
        cache keys read of the call (the tensors' types, dtypes, shapes and devices), the same as when it was made.
        The rest of the plan's call is the same at every step."""
        stamp = kernel_registry.selection_stamp()
        kept, kept_read = self.chosen
        return stamp is not None and kept is not None and kept() is stamp and read == kept_read

    def _keep_choice(self, stamp: object | None, read: tuple) -> None:
        """Keep the choice ``registry.select_stamped`` made under ``stamp`` (None: one it does not keep) for a call
        that read ``read``."""
        self.chosen = (None if stamp is None else weakref.ref(stamp), read)

    def _fixed_block(self) -> _Block | None:
        """The open fixed_model block of this context where the plan found its model unchanged at a step (the block
        holds the plan's model: :meth:`step` notes only such a block), or None."""
        fixed = _FIXED.get()
        return fixed if fixed is not None and fixed is self.fixed_in and fixed.model is not None else None

    def _embedded(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The (B, 1, E) embedding of ``input_ids``: the embedding's one operation, without gradients."""
        return torch.embedding(self.embedding.weight, input_ids)

    # -- the step ------------------------------------------------------------------------------------------------

    def step(self, lm: nn.Module, input_ids: Any, attention_mask: Any, cache: SeqzooCache, return_dict: bool | None,
             logits_to_keep: Any) -> Any:
        """The causal LM's forward for a call that passed only these (no labels, embeds, position ids, hidden states
        or other keyword: the caller checked), or None where the general path must run."""
        # (a torch function mode first: it would see the tensor methods the checks call)
        # (a dynamo trace first: it would break its graph at the dispatch stack's length, and run the rest eagerly; a
        # dispatch mode sees every aten operation, the general path's slicing of the one position included)
        if (torch.compiler.is_compiling() or torch._C._is_torch_function_mode_enabled()
                or torch._C._len_torch_dispatch_stack()
                or type(input_ids) is not torch.Tensor or input_ids.dim() != 2 or input_ids.shape[1] != 1
                or not input_ids.shape[0] or input_ids.dtype not in _IDS
                or type(logits_to_keep) is not int  # (any int keeps the one position; a tensor indexes them)
                or torch.is_grad_enabled() or global_module_hooks()
                or torch._C._is_any_autocast_enabled() or not _plain_cache(cache)):
            return None
        backbone = self.backbone
        config = backbone.config
        fixed = _FIXED.get()
        # (in a block holding this model fixed, where this plan found it unchanged: what every model shares only)
        if (fixed is None or fixed.model is not lm or self.fixed_in is not fixed
                or not self._shared_unchanged(backbone)):
            if not self._model_checked(lm, cache, backbone, config):
                return None
            if fixed is not None and fixed.model is lm:
                self.fixed_in = fixed
        batch = input_ids.shape[0]
        # The general step's checks of the ids, the embedding, the checks of the cache and the mask, in its order
        # (decode_step.prepare_step_inputs), with its errors. The embedding raises for no id that passed where its
        # weight is a matrix of at least a row per token; else it runs here, for its error to come first, as there.
        # Otherwise the token is embedded in _run, where the layers read it (the classic models' input table stands
        # in for it).
        check_token_ids(input_ids, config.vocab_size)
        weight = self.embedding.weight
        x = None if weight.dim() == 2 and weight.shape[0] >= config.vocab_size else self._embedded(input_ids)
        cache.check_fits(config, batch, type(backbone).__name__)
        if current_padding_mask(backbone, attention_mask, batch, 1, cache.get_seq_length(), True) is not None:
            return None  # (a padded token: the general step keeps its row's state)
        entries = cache.layers
        states = self._states(entries, batch)
        if states is None:
            return None
        ran = self._run(backbone, input_ids, cache, x, states)
        if ran is None:
            return None
        y, new_states = ran
        head = self.head
        # (by oneDNN for a large head, as the general step's call_plainly: seqzoo/kernels/onednn_linear.py)
        logits = onednn_linear.linear(y, head.weight, head.bias)
        # Nothing above changed the cache: a step that raised leaves it as it was.
        for entry, state in zip(entries, new_states):
            entry.state = state
        cache.seen_tokens += 1
        if not (return_dict if return_dict is not None else lm.config.return_dict):
            return logits, cache
        return model_output(CausalLMOutputWithPast, cache=cache, loss=None, logits=logits, hidden_states=None,
                            attentions=None)

    def _model_checked(self, lm: nn.Module, cache: SeqzooCache, backbone: nn.Module, config: Any) -> bool:
        """Whether the model is as the plan needs it (:meth:`_model_unchanged`), and the backbone decoding: evaluated,
        without hidden states asked for by its config, unhooked, called by torch's own ``__call__``, with the methods
        the general step went through. Drops the plan where the model changed."""
        if not self._model_unchanged(lm, cache):
            return False
        if (config.output_hidden_states or backbone.training or has_hooks(backbone)
                or not plain_module_call(type(backbone)) or not config.capabilities.can_generate):
            return False
        if not _class_methods_kept(type(backbone), self.methods) or _methods_set_on(backbone):
            cache.__dict__.pop(STEP_PLAN_ATTRIBUTE, None)  # (the next general forward plans again, if it may)
            return False
        return True

    def _shared_unchanged(self, backbone: nn.Module) -> bool:
        """What of :meth:`_model_checked` is not the model's own but shared by every model, checked at each step in a
        fixed_model block too: the classes of the embedding, the head and the backbone still called by torch's own
        ``__call__`` and running their forward (the backbone's methods its class's as planned), ``F.embedding`` torch's,
        and the layers' classes (:meth:`_layer_classes_unchanged`)."""
        cls = type(backbone)
        return (_class_methods_kept(cls, self.methods) and class_runs_plainly(type(self.head))
                and class_runs_plainly(type(self.embedding)) and plain_module_call(cls)
                and self._layer_classes_unchanged())

    def _layer_classes_unchanged(self) -> bool:
        """Whether the layers' classes still run as the plan runs them (a forward or ``__call__`` put on one since is
        called)."""
        raise NotImplementedError

    def _model_unchanged(self, lm: nn.Module, cache: SeqzooCache) -> bool:
        """Whether the modules and weights are those the plan was built from, unhooked and run by torch's own forward
        where the plan skips their call. Drops the plan where not. (Global module hooks are the caller's check.)"""
        backbone, head, embedding = self.backbone, self.head, self.embedding
        unchanged = (lm._modules.get("model") is backbone and lm._modules.get("lm_head") is head
                     and backbone._modules.get("embed_tokens") is embedding
                     and runs_plainly(head) and runs_plainly(embedding) and embedding.max_norm is None
                     and tuple(backbone._modules["layers"]._modules.values()) == self.layers
                     and self._layers_unchanged(backbone))
        if unchanged:
            # (a weight whose storage was replaced through .data may be of another dtype, device or size)
            weight = embedding._parameters.get("weight")
            unchanged = type(weight) in _PLAIN and weight.dtype is self.dtype and weight.is_cpu
        if not unchanged:
            cache.__dict__.pop(STEP_PLAN_ATTRIBUTE, None)
        return unchanged


# The cache's methods the general step calls (directly, or through those), as seqzoo defines them: a cache whose class
# is another since it was planned, or that has one of them patched on its class or set on itself, is stepped by them.
_CACHE_METHODS = ("unchanged_on_error", "_saved", "check_fits", "get_seq_length", "layer", "_entry", "update_layer",
                  "advance")
_OWN_CACHE_METHODS = tuple(getattr(SeqzooCache, name) for name in _CACHE_METHODS)


def _plain_cache(cache: Any) -> bool:
    """Whether ``cache`` is a ``SeqzooCache`` itself whose methods the general step calls are seqzoo's own."""
    if type(cache) is not SeqzooCache:
        return False
    own = cache.__dict__
    for name, method in zip(_CACHE_METHODS, _OWN_CACHE_METHODS):
        if getattr(SeqzooCache, name) is not method or name in own:
            return False
    return True


def state_entries(entries: list, names: tuple[str, ...]) -> list[list[torch.Tensor]] | None:
    """Each layer's state tensors by ``names``, from a cache's layers; None where a layer is not a recurrent one with a
    state of exactly these names, each a plain ``torch.Tensor``."""
    found = []
    for entry in entries:
        state = entry.state if type(entry) is StateLayer else None
        if type(state) is not dict or len(state) != len(names):
            return None
        values = [state.get(name) for name in names]
        for value in values:
            if type(value) is not torch.Tensor:
                return None
        found.append(values)
    return found


def _no_plan() -> None:
    return None
