"""Hybrid language model: embedding -> [norm -> mixer -> residual (-> norm -> MLP -> residual)] x N -> norm, with
any registered token mixer per layer (``config.mixer_types``).

Recurrent layers keep a fixed-size state and attention layers their growing keys and values, side by side in one
:class:`~seqzoo.cache.SeqzooCache`. Padding is exact in both: a recurrent layer skips pad positions, an attention
layer masks them and its positions count real tokens only.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast

from seqzoo.cache import ATTENTION, RECURRENT, unchanged_on_error
from seqzoo.layers.attention import SelfAttention
from seqzoo.layers.mixer import Block, SharedValues
from seqzoo.layers.mlp import MLP, GatedMLP
from seqzoo.layers.norms import RMSNorm, make_norm
from seqzoo.layers.positions import RotaryEmbedding, rope_inv_freq
from seqzoo.models.compat import as_returned, model_output
from seqzoo.models.compat import causal_mask as causal_mask_for
from seqzoo.models.heads import SeqzooForSequenceClassification, SeqzooForTokenClassification
from seqzoo.models.inputs import attentions_asked, position_ids_from_mask, prepare_inputs, resolve_output_flags
from seqzoo.models.mixers import BUILTIN_MIXERS, get_mixer
from seqzoo.models.modeling_utils import SeqzooForCausalLM, SeqzooPreTrainedModel, backbone_cache_argument
from seqzoo.models.packing import find_packing

from .configuration_hybrid import HybridConfig

logger = logging.getLogger("seqzoo")


class HybridBlock(Block):
    def __init__(self, config: HybridConfig, layer_idx: int) -> None:
        kind = config.mixer_types[layer_idx]
        # Each mixer sees a config of its own architecture and its position among the layers of its kind.
        mixer = get_mixer(kind).mixer_class(config.mixer_settings(kind), config.mixer_types[:layer_idx].count(kind))
        if isinstance(mixer, SelfAttention):
            mixer.config = config  # the attention implementation is chosen on the model's own config
        mlp = mlp_norm = None
        if config.mlp_layers[layer_idx]:
            mlp_class = GatedMLP if config.mlp_type == "gated" else MLP
            mlp = mlp_class(config.hidden_size, config.intermediate_size, config.hidden_act, bias=config.mlp_bias)
            mlp_norm = make_norm(config.norm_type, config.hidden_size, config.norm_eps)
        super().__init__(mixer, norm=make_norm(config.norm_type, config.hidden_size, config.norm_eps), mlp=mlp,
                         mlp_norm=mlp_norm, dropout=config.dropout)
        # For a plugin's recurrent mixer, whether its state_bytes says it carries a state (check_state checks what it
        # returns before the cache stores it); None for the others (the built-in mixers return theirs as the cache
        # expects, attention updates its own K/V layer).
        spec = get_mixer(kind)
        self.mixer_name = kind
        settings = config.mixer_settings(kind)
        self.keeps_state = (None if spec.cache_kind != RECURRENT or spec in BUILTIN_MIXERS
                            else spec.mixer_class.state_bytes(settings) > 0)
        # What its state_bytes declares per sequence: asked with the bytes per value of the first state it returns,
        # once per size (check_state), from the settings it was built with.
        self.declared_state_bytes: dict[int, int | None] = {}
        self.declared_state = (None if self.keeps_state is None
                               else functools.partial(spec.mixer_class.state_bytes, settings))  # (size) -> bytes


def check_state(layer: HybridBlock, state: Any, batch: int) -> None:
    """Refuse a plugin mixer's state the cache cannot hold: the next step would continue from nothing (a None state
    restarts from zero, without an error) or fail far from the mixer (a tensor, or tensors without the batch
    dimension first, read as another number of sequences)."""
    where = f"the {layer.mixer_name!r} mixer ({type(layer.mixer).__name__})"
    if state is None and layer.keeps_state:
        raise TypeError(f"{where} returned no state (None), but its state_bytes says it carries one: a cached "
                        "step would start from zero; return a dict of named (batch, ...) tensors")
    if state is None:
        return
    if not isinstance(state, dict) or not state:
        raise TypeError(f"{where} returned a state of type {type(state).__name__}; a recurrent mixer returns a "
                        "non-empty dict of named (batch, ...) tensors (or None when it keeps nothing)")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{where} returned state[{name!r}] of type {type(value).__name__}; a state holds "
                            "tensors only")
        if value.dim() == 0 or value.shape[0] != batch:
            raise ValueError(f"{where} returned state[{name!r}] of shape {tuple(value.shape)} for a batch of "
                             f"{batch}; every state tensor has the batch as its first dimension")
    sizes = {value.element_size() for value in state.values()}
    declared = None
    if len(sizes) == 1 and layer.declared_state is not None:
        size = sizes.pop()
        if size not in layer.declared_state_bytes:
            try:
                layer.declared_state_bytes[size] = layer.declared_state(size)
            except Exception:  # (a plugin's state_bytes that cannot answer for this size: nothing to compare)
                layer.declared_state_bytes[size] = None
        declared = layer.declared_state_bytes[size]
    held = sum(value[0].numel() * value.element_size() for value in state.values())
    if declared is not None and held != declared and type(layer.mixer).__name__ not in _WARNED_STATE_BYTES:
        # (what the model card, `seqzoo list` and the lab report come from; the decoding itself is right)
        _WARNED_STATE_BYTES.add(type(layer.mixer).__name__)
        logger.warning("%s holds %d bytes of state per sequence, but its state_bytes says %d: the sizes seqzoo "
                       "reports for this model (its card, `seqzoo list`, the lab) are off; its state_bytes should "
                       "return what the state it returns takes", where, held, declared)


_WARNED_STATE_BYTES: set[str] = set()  # the plugin mixers whose state_bytes was found wrong


class HybridPreTrainedModel(SeqzooPreTrainedModel):
    config_class = HybridConfig
    supports_gradient_checkpointing = True
    _no_split_modules = ["HybridBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        # As Jamba does: normal embeddings, MLPs and heads, unit norms. The mixers initialise themselves (super),
        # after this rule has visited their own projections, as children come before their parents.
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (RMSNorm, nn.LayerNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, RotaryEmbedding):
            # (in the buffer's dtype: float64 where .double() made it so, else float32)
            init.copy_(module.inv_freq, rope_inv_freq(module.head_dim, self.config.rope_theta, module.inv_freq.dtype))


class HybridModel(HybridPreTrainedModel):
    """Embedding -> dropout -> [norm -> the layer's own mixer -> residual (-> norm -> MLP -> residual)] x N -> norm,
    one mixer per entry of ``config.mixer_types``. Returns the normalised output of the last layer."""

    def __init__(self, config: HybridConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        # Rotary positions for the attention-kind layers, one table per head size (config.rotary_head_dims): the
        # built-in attention's is rotary_emb, a plugin attention mixer's of another size one of other_rotary; each
        # layer is handed the cos/sin of its own size (rotary_dims), None where it takes none. (None where there is no
        # other size: the built-in hybrids' module trees stay as they were.)
        head_dims = config.rotary_head_dims()
        self.rotary_emb = None
        if "attention" in head_dims:
            self.rotary_emb = RotaryEmbedding(head_dims["attention"], config.rope_theta)
        others = [dim for dim in dict.fromkeys(head_dims.values()) if dim != head_dims.get("attention")]
        self.other_rotary = (nn.ModuleDict({str(dim): RotaryEmbedding(dim, config.rope_theta) for dim in others})
                             if others else None)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(HybridBlock(config, i) for i in range(config.num_hidden_layers))
        self.rotary_dims = [head_dims.get(kind) for kind in config.mixer_types]  # each layer's (None: no rotary)
        # Whether a layer attends (a plugin's attention mixer too, under any name): those need the causal mask. Read
        # once here, not derived from the config on every forward.
        self.attends = ATTENTION in config.cache_layer_kinds
        self.norm = make_norm(config.norm_type, config.hidden_size, config.norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        r"""
        attention_mask: (batch, past_length + sequence_length) 0/1; positions with 0 never change a recurrent
            layer's state and are never attended to.
        cache: a :class:`~seqzoo.cache.SeqzooCache` to continue from (``past_key_values`` and ``cache_params`` are
            accepted as older names of the same argument).
        kwargs: only what :data:`seqzoo.models.compat.PASSTHROUGH_KWARGS` lists, or the markers of packed rows
            (``seqzoo/models/packing.py``); anything else raises.
        """
        cache = backbone_cache_argument(self, cache, kwargs)
        packing = find_packing(self, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, kwargs)
        if packing is not None:  # several documents in a row: each runs alone (see seqzoo/models/packing.py)
            output = packing.run(self, input_ids, inputs_embeds, output_hidden_states, kwargs)
            return as_returned(self, output, return_dict)
        use_cache, output_hidden_states = resolve_output_flags(self, use_cache, output_hidden_states)
        inputs = prepare_inputs(self, input_ids, inputs_embeds, attention_mask, cache, use_cache)
        cache, mask = inputs.cache, inputs.padding_mask  # the padding mask is for the recurrent layers
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask, inputs.past_length, inputs.length,
                                                  inputs.embeds.device)
        causal_mask = None
        if self.attends:
            causal_mask = causal_mask_for(config=self.config, inputs_embeds=inputs.embeds,
                                          attention_mask=attention_mask, cache=cache, position_ids=position_ids)
        rotary = {}  # head size -> (cos, sin)
        if self.rotary_emb is not None:
            rotary[2 * self.rotary_emb.inv_freq.numel()] = self.rotary_emb(inputs.embeds, position_ids)
        for dim, table in (self.other_rotary or {}).items():
            rotary[int(dim)] = table(inputs.embeds, position_ids)

        hidden_states = self.dropout(inputs.embeds)  # (B, T, D)
        all_hidden_states = () if output_hidden_states else None  # the input of every layer, then the output
        shared = SharedValues()  # what layers hand on: RWKV-7's value residual, attention weights when asked
        output_attentions = attentions_asked(self.config, kwargs)
        with unchanged_on_error(cache):  # (a layer that fails leaves the cache as it was)
            for idx, layer in enumerate(self.layers):
                if output_hidden_states:
                    all_hidden_states += (hidden_states,)
                state = cache.layer(idx) if cache is not None else None
                hidden_states, state = layer(hidden_states, state=state, mask=mask, attention_mask=causal_mask,
                                             position_embeddings=rotary.get(self.rotary_dims[idx]),
                                             position_ids=position_ids, shared=shared,
                                             output_attentions=output_attentions)
                if cache is not None:
                    if layer.keeps_state is not None:
                        check_state(layer, state, hidden_states.shape[0])
                    cache.update_layer(idx, state)
        if cache is not None:
            cache.advance(inputs.length)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)  # after the final norm, as transformers' models do
        output = model_output(
            BaseModelOutputWithPast, cache=cache, last_hidden_state=hidden_states, hidden_states=all_hidden_states,
            attentions=tuple(shared.get("attentions", [])) if output_attentions else None,
        )
        return as_returned(self, output, return_dict)


class HybridForCausalLM(HybridPreTrainedModel, SeqzooForCausalLM):
    base_model_class = HybridModel


class HybridForSequenceClassification(HybridPreTrainedModel, SeqzooForSequenceClassification):
    base_model_class = HybridModel


class HybridForTokenClassification(HybridPreTrainedModel, SeqzooForTokenClassification):
    base_model_class = HybridModel


__all__ = [
    "HybridForCausalLM",
    "HybridForSequenceClassification",
    "HybridForTokenClassification",
    "HybridModel",
    "HybridPreTrainedModel",
]
