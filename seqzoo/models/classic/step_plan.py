"""The classic causal LMs' planned decode step: what the general decode step of one cache runs (every layer stacked in
one fused call, layer 0's input looked up in the input table or embedded, a plain vocabulary head), found after the
prompt's forward (or a general step) and kept on the cache, so that each step checks those decisions still hold and
runs the operations alone.

At decode sizes a classic model's step is a few small matrix-vector products, and the general path's Python (the
causal LM's and the backbone's argument handling, the cache's error restore, each module's and weight's lookup)
cost it about a quarter of its time (BENCHMARKS.md, run Y). A plan changes no
result: it runs the same operations on the same tensors, and declines, for the general path to run, wherever that
path would do anything else (seqzoo/models/README.md, "The decode step's shortcut")."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from seqzoo.cache import STEP_PLAN_ATTRIBUTE, SeqzooCache, StateLayer
from seqzoo.kernels import registry as kernel_registry
from seqzoo.kernels.rnn_cells import fused
from seqzoo.layers.mixer import global_module_hooks, has_hooks, plain_module_call
from seqzoo.layers.recurrent import FUSED_KERNELS, WEIGHT_NAMES, stack_weights, stackable_class
from seqzoo.models.compat import model_output
from seqzoo.models.decode_step import runs_plainly
from seqzoo.models.inputs import check_token_ids, current_padding_mask


class StepPlan:
    """The modules and weights one cache's decode steps run through, as they were after the forward that planned them,
    and the cell calls they make. :meth:`step` runs a later step if everything it was built from is still there and the
    call is the plain decode step it was built for; else it returns None (and drops itself from the cache where the
    model changed: a new one is built after the next general step)."""

    __slots__ = ("backbone", "methods", "embedding", "head", "layers", "layer_class", "weights", "kind", "names",
                 "select", "extra", "dtype", "fused", "found", "nonlinearity")

    def __init__(self, lm: nn.Module, backbone: nn.Module, layers: list[nn.Module],
                 weights: list[tuple[torch.Tensor | None, ...]]) -> None:
        # The backbone's methods the general step went through, as its class had them (a patch since is called).
        self.backbone, self.methods = backbone, tuple(getattr(type(backbone), name) for name in _BACKBONE_METHODS)
        self.embedding, self.head = backbone.embed_tokens, lm.lm_head
        self.layers, self.weights = tuple(layers), tuple(weights)
        cls = self.layer_class = type(layers[0])
        nonlinearity = layers[0].nonlinearity if cls.cell == "rnn" else None
        self.kind, self.names, self.fused = nonlinearity or cls.cell, cls.state_names, FUSED_KERNELS[cls.cell]
        self.nonlinearity = nonlinearity
        self.select, self.extra = cls.cell, ({} if nonlinearity is None else {"nonlinearity": nonlinearity})
        self.dtype = self.embedding.weight.dtype
        # Each layer's parameter dict and the weights it held.
        self.found = tuple((layer, layer._parameters, tuple(zip(WEIGHT_NAMES, w))) for layer, w in zip(layers, weights))

    @classmethod
    def build(cls, lm: nn.Module, backbone: nn.Module, cache: SeqzooCache) -> StepPlan | None:
        """A plan for ``cache``'s later steps, after a general forward (the prompt's or a step's) without gradients
        on the CPU; None where its layers would not run as one stack, or its embedding or head not as their one
        operation."""
        weight = backbone.embed_tokens._parameters.get("weight")
        if (torch.is_grad_enabled() or type(cache) is not SeqzooCache or type(weight) not in _PLAIN
                or not weight.is_cpu):
            return None  # (a cache's subclass may store or read states its own way: the general step calls it)
        layers = list(backbone.layers)
        weights = stack_weights(layers)
        if weights is None or not runs_plainly(backbone.embed_tokens) or not runs_plainly(lm.lm_head):
            return None
        return cls(lm, backbone, layers, weights)

    def __deepcopy__(self, memo: dict) -> StepPlan:
        # (a copied cache decodes with the same model: the plan holds no state of the cache)
        return self

    def __reduce__(self) -> tuple:
        # (a pickled cache is saved without the model it decoded with: the next step plans again)
        return _no_plan, ()

    def step(self, lm: nn.Module, input_ids: Any, attention_mask: Any, cache: SeqzooCache, return_dict: bool | None,
             logits_to_keep: Any) -> Any:
        """The causal LM's forward for a call that passed only these (no labels, embeds, position ids, hidden states
        or other keyword: the caller checked), or None where the general path must run."""
        # (a torch function mode first: it would see the tensor methods the checks call)
        if (torch._C._is_torch_function_mode_enabled() or type(input_ids) is not torch.Tensor or input_ids.dim() != 2
                or input_ids.shape[1] != 1
                or not input_ids.shape[0] or input_ids.dtype not in _IDS
                or type(logits_to_keep) is not int  # (any int keeps the one position; a tensor indexes them)
                or torch.is_grad_enabled() or global_module_hooks() or torch.compiler.is_compiling()
                or torch._C._is_any_autocast_enabled()
                or not self._model_unchanged(lm, cache)):
            return None
        backbone = self.backbone
        config = backbone.config
        if (config.output_hidden_states or backbone.training or has_hooks(backbone)
                or not plain_module_call(type(backbone))):
            return None
        cls, attributes = type(backbone), backbone.__dict__
        for name, method in zip(_BACKBONE_METHODS, self.methods):
            if getattr(cls, name) is not method or name in attributes:
                cache.__dict__.pop(STEP_PLAN_ATTRIBUTE, None)  # (the next general forward plans again, if it may)
                return None
        batch = input_ids.shape[0]
        # The general step's checks of the ids, the cache and the mask, and its errors.
        check_token_ids(input_ids, config.vocab_size)
        cache.check_fits(config, batch, type(backbone).__name__)
        if current_padding_mask(backbone, attention_mask, batch, 1, cache.get_seq_length(), True) is not None:
            return None  # (a padded token: the general step keeps its row's state)
        entries = cache.layers
        hx = []
        for entry in entries:
            state = entry.state if type(entry) is StateLayer else None
            if state is None:
                return None
            values = [state.get(name) for name in self.names]
            for value in values:
                if type(value) is not torch.Tensor or value.dtype is not self.dtype:
                    return None
            hx.append(values)
        # The embedded token, which the kernel registry is asked about as in the general step (a plugin's or a forced
        # backend's check may read it), and layer 0's input unless the table stands in for it.
        x = torch.embedding(self.embedding.weight, input_ids)  # (the embedding's one operation, without gradients)
        backend = kernel_registry.select(self.select, x, *hx[0], *self.weights[0], mask=None, reset=None,
                                         **self.extra)
        if backend.load() is not self.fused:
            return None  # (a forced or plugin backend)
        # Layer 0's input projection by the general step's own lookup, which checks the table against the weights as
        # they are (None: the cells compute it from the embedded token, as there).
        gates = backbone.input_table.gates(self.embedding.weight, input_ids, cache, self.weights[0])
        # (each step, as the general one: a missing bias is zeros of the weights' dtype as they are now)
        params = [fused._params(*w) for w in self.weights]
        y, new = fused.step_layers(self.kind, x, hx, params, None, gates)
        head = self.head
        logits = torch.nn.functional.linear(y, head.weight, head.bias)
        # Nothing above changed the cache: a step that raised leaves it as it was.
        for entry, layer_new in zip(entries, new):
            entry.state = dict(zip(self.names, layer_new))
        cache.seen_tokens += 1
        if not (return_dict if return_dict is not None else lm.config.return_dict):
            return logits, cache
        return model_output(CausalLMOutputWithPast, cache=cache, loss=None, logits=logits, hidden_states=None,
                            attentions=None)

    def _model_unchanged(self, lm: nn.Module, cache: SeqzooCache) -> bool:
        """Whether the modules and weights are those the plan was built from, unhooked and run by torch's own forward
        where the plan skips their call (the input table's lookup checks the table against the weights itself).
        Drops the plan where not. (Global module hooks are the caller's check.)"""
        backbone, head, embedding = self.backbone, self.head, self.embedding
        unchanged = (lm._modules.get("model") is backbone and lm._modules.get("lm_head") is head
                     and backbone._modules.get("embed_tokens") is embedding
                     and runs_plainly(head) and runs_plainly(embedding) and embedding.max_norm is None
                     and tuple(backbone._modules["layers"]._modules.values()) == self.layers)
        kind = self.layer_class
        unchanged = unchanged and stackable_class(kind)  # (its forward or __call__ replaced on the class: called)
        if unchanged:
            for layer, parameters, weights in self.found:
                if type(layer) is not kind or has_hooks(layer) or (self.nonlinearity is not None
                                                                   and layer.nonlinearity != self.nonlinearity):
                    unchanged = False
                    break
                for name, weight in weights:
                    if parameters.get(name) is not weight:
                        unchanged = False
                        break
                if not unchanged:
                    break
        if unchanged:
            # (a weight whose storage was replaced through .data may be of another dtype, device or size; the table's
            # lookup checks the table against the weights itself)
            weight = embedding._parameters.get("weight")
            unchanged = type(weight) in _PLAIN and weight.dtype is self.dtype and weight.is_cpu
        if not unchanged:
            cache.__dict__.pop(STEP_PLAN_ATTRIBUTE, None)
        return unchanged


_BACKBONE_METHODS = ("forward", "takes_step", "decode_step")
_IDS = (torch.int64, torch.int32)  # (the general step converts others, or raises on them)
_PLAIN = (torch.Tensor, nn.Parameter)  # (a tensor subclass, a quantised weight, goes through F.embedding)


def _no_plan() -> None:
    return None
