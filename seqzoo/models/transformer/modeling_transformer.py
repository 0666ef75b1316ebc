"""Decoder-only Transformer (Vaswani / GPT-2 / Llama variants by config) on transformers' attention and caches."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast

from seqzoo.cache import SeqzooCache, unchanged_on_error
from seqzoo.layers.attention import SelfAttention
from seqzoo.layers.mixer import Block, SharedValues
from seqzoo.layers.mlp import MLP, GatedMLP
from seqzoo.layers.norms import make_norm
from seqzoo.layers.positions import RotaryEmbedding, SinusoidalPositions, rope_inv_freq
from seqzoo.models.compat import as_returned, model_output
from seqzoo.models.compat import causal_mask as causal_mask_for
from seqzoo.models.decode_step import is_plain_decode_step, prepare_step_inputs
from seqzoo.models.heads import SeqzooForSequenceClassification, SeqzooForTokenClassification
from seqzoo.models.inputs import attentions_asked, position_ids_from_mask, prepare_inputs, resolve_output_flags
from seqzoo.models.modeling_utils import SeqzooForCausalLM, SeqzooPreTrainedModel, backbone_cache_argument
from seqzoo.models.packing import PACKING_KWARGS, find_packing

from .configuration_transformer import TransformerConfig
from .decoding import step_block


class TransformerBlock(Block):
    """``attn_norm -> self_attn -> residual -> mlp_norm -> mlp -> residual`` (pre-norm; post-norm normalises after
    each residual sum instead, as Vaswani et al.)."""

    part_names = ("attn_norm", "self_attn", "mlp_norm", "mlp")

    def __init__(self, config: TransformerConfig, layer_idx: int) -> None:
        bias = config.norm_type == "layernorm"
        mlp_class = GatedMLP if config.mlp_type == "gated" else MLP
        super().__init__(
            SelfAttention(config, layer_idx),
            norm=make_norm(config.norm_type, config.hidden_size, config.layer_norm_eps, bias),
            mlp=mlp_class(config.hidden_size, config.intermediate_size, config.hidden_act, bias=config.mlp_bias),
            mlp_norm=make_norm(config.norm_type, config.hidden_size, config.layer_norm_eps, bias),
            norm_position=config.norm_position,
            dropout=config.dropout,
        )


class TransformerPreTrainedModel(SeqzooPreTrainedModel):
    config_class = TransformerConfig
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerBlock"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # The packing markers: cu_seq_lens / max_length are passed on to the attention kernels (flash attention reads
    # them); seq_idx is turned into position ids (seqzoo/models/packing.py).
    extra_forward_kwargs = PACKING_KWARGS

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif hasattr(module, "weight") and module.__class__.__name__ in ("RMSNorm", "LayerNorm"):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, RotaryEmbedding):
            # (in the buffer's dtype: float64 where .double() made it so, else float32)
            init.copy_(module.inv_freq, rope_inv_freq(module.head_dim, self.config.rope_theta, module.inv_freq.dtype))
        elif isinstance(module, SinusoidalPositions):
            from seqzoo.layers.positions import sinusoidal_table

            init.copy_(module.table, sinusoidal_table(*module.table.shape, dtype=module.table.dtype))


class TransformerModel(TransformerPreTrainedModel):
    """Embedding (+ learned or sinusoidal positions) -> dropout -> [Transformer block] x N -> final norm (pre-norm
    stacks; post-norm blocks end in one). Returns the last block's output, normalised."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions: nn.Module | None = None
        self.rotary_emb: RotaryEmbedding | None = None
        if config.position_embedding == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        elif config.position_embedding == "sinusoidal":
            self.embed_positions = SinusoidalPositions(config.max_position_embeddings, config.hidden_size)
        else:
            self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.embed_scale = math.sqrt(config.hidden_size) if config.scale_embeddings else 1.0
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(TransformerBlock(config, i) for i in range(config.num_hidden_layers))
        # Post-norm blocks end in a norm already; pre-norm stacks need a final one.
        self.norm = (
            make_norm(config.norm_type, config.hidden_size, config.layer_norm_eps, config.norm_type == "layernorm")
            if config.norm_position == "pre" else None
        )
        self.gradient_checkpointing = False
        self.post_init()

    def _layer_inputs(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, cache: Any, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, Any, tuple[torch.Tensor, torch.Tensor] | None]:
        """The first layer's input (the scaled embeddings, plus absolute positions where the model has them), the
        causal mask ``create_causal_mask`` builds, and RoPE's (cos, sin) or None: for :meth:`forward` and
        :meth:`decode_step` alike."""
        if position_ids.dtype != torch.long:  # (a position table indexed by int16 fails, by uint8 reads a mask)
            position_ids = position_ids.long()  # (other dtypes were refused by find_packing's check)
        if self.embed_positions is not None and not torch.compiler.is_compiling():
            low, high = (int(v) for v in torch.aminmax(position_ids))
            if high >= self.config.max_position_embeddings:
                raise ValueError(
                    f"position {high} is beyond max_position_embeddings="
                    f"{self.config.max_position_embeddings} of this model; pass shorter sequences (in generate(), "
                    "or fewer new tokens: max_new_tokens / max_length)"
                )
            if low < 0:  # (a sinusoidal table would read its last rows, a learned one raise an IndexError)
                raise ValueError(f"position_ids contain {low}: positions must be in [0, max_position_embeddings="
                                 f"{self.config.max_position_embeddings})")
        causal_mask = causal_mask_for(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        hidden_states = inputs_embeds * self.embed_scale  # (B, T, D)
        if self.embed_positions is not None:
            hidden_states = hidden_states + self.embed_positions(position_ids).to(hidden_states.dtype)
        rotary = self.rotary_emb(hidden_states, position_ids) if self.rotary_emb is not None else None
        hidden_states = self.dropout(hidden_states)
        return hidden_states, causal_mask, rotary

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
        attention_mask: (batch, past_length + sequence_length) 0/1; positions with 0 are never attended
            to.
        cache: a :class:`~seqzoo.cache.SeqzooCache` to continue from (``past_key_values`` and ``cache_params`` are
            accepted as older names of the same argument).
        kwargs: only what :data:`seqzoo.models.compat.PASSTHROUGH_KWARGS` lists, or the markers of packed rows
            (``seqzoo/models/packing.py``); anything else raises.
        """
        cache = backbone_cache_argument(self, cache, kwargs)
        packing = find_packing(self, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, kwargs)
        if packing is not None:
            # Several documents in a row stay packed: the position ids restart at each, and create_causal_mask turns
            # them into a block-diagonal causal mask (with no cache, in training and evaluation alike).
            use_cache = False
            if position_ids is None:
                position_ids = packing.position_ids()
        use_cache, output_hidden_states = resolve_output_flags(self, use_cache, output_hidden_states)
        inputs = prepare_inputs(self, input_ids, inputs_embeds, attention_mask, cache, use_cache)
        cache, inputs_embeds = inputs.cache, inputs.embeds
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask, inputs.past_length, inputs.length,
                                                  inputs_embeds.device)
        hidden_states, causal_mask, rotary = self._layer_inputs(inputs_embeds, attention_mask, cache, position_ids)

        attention_kwargs = {k: v for k, v in kwargs.items() if k in self.extra_forward_kwargs}
        output_attentions = attentions_asked(self.config, kwargs)
        shared = SharedValues()  # the attention weights of each layer, when asked for
        all_hidden_states = () if output_hidden_states else None  # the input of every layer, then the output
        with unchanged_on_error(cache):  # (a layer that fails leaves the cache as it was)
            for idx, layer in enumerate(self.layers):
                if output_hidden_states:
                    all_hidden_states += (hidden_states,)
                hidden_states, _ = layer(
                    hidden_states,
                    state=cache.layer(idx) if cache is not None else None,
                    attention_mask=causal_mask,
                    position_embeddings=rotary,
                    attention_kwargs=attention_kwargs,
                    output_attentions=output_attentions,
                    shared=shared,
                )
        if cache is not None:
            cache.advance(inputs.length)
        if self.norm is not None:
            hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)  # after the final norm, as transformers' models do
        output = model_output(
            BaseModelOutputWithPast,
            cache=cache,  # (a cache passed is returned, advanced, whatever use_cache says: as LlamaModel does)
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=tuple(shared["attentions"]) if output_attentions else None,
        )
        return as_returned(self, output, return_dict)

    decode_step_reads_positions = True  # (see SeqzooPreTrainedModel.takes_step)

    def takes_step(self, input_ids: Any, inputs_embeds: Any, cache: Any, output_hidden_states: bool | None,
                   kwargs: dict[str, Any]) -> bool:
        """Whether a forward call (with no packed rows, a cache kept) is the common decode step
        :meth:`decode_step` runs: a plain one (``is_plain_decode_step``), with no attention weights asked for and
        nothing tracing the model with ``torch.jit``."""
        return (is_plain_decode_step(self, _MODEL_FORWARD, input_ids, inputs_embeds, cache, output_hidden_states,
                                     kwargs)
                and not self.config.output_attentions and not torch.jit.is_tracing())

    def decode_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cache: SeqzooCache,
                    position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The forward of a call :meth:`takes_step` accepts, without the general plumbing: the same checks and errors,
        the same mask and positions (``position_ids`` as given, else from the mask), then every block through
        ``decoding.step_block`` (the block's own operations without their module calls, where nothing would see them
        skipped). Returns the (B, 1, D) output of the final norm (of the last block, post-norm); ``cache`` holds the new
        keys and values and has advanced by one position."""
        embeds, _ = prepare_step_inputs(self, input_ids, attention_mask, cache)
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask, cache.get_seq_length(), 1, embeds.device)
        hidden_states, causal_mask, rotary = self._layer_inputs(embeds, attention_mask, cache, position_ids)
        shared = SharedValues()
        for idx, layer in enumerate(self.layers):
            hidden_states = step_block(layer, TransformerBlock, _BLOCK_FORWARD, _BLOCK_CALL, hidden_states,
                                       cache.layer(idx), causal_mask, rotary, shared)
        cache.advance(1)
        return self.norm(hidden_states) if self.norm is not None else hidden_states


# As defined: one replaced on the class since is called (see takes_step and decoding.step_block).
_MODEL_FORWARD = TransformerModel.forward
_BLOCK_FORWARD = TransformerBlock.forward
_BLOCK_CALL = TransformerBlock.__call__


class TransformerForCausalLM(TransformerPreTrainedModel, SeqzooForCausalLM):
    base_model_class = TransformerModel


class TransformerForSequenceClassification(TransformerPreTrainedModel, SeqzooForSequenceClassification):
    base_model_class = TransformerModel


class TransformerForTokenClassification(TransformerPreTrainedModel, SeqzooForTokenClassification):
    base_model_class = TransformerModel
