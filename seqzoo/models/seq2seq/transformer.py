"""The Transformer encoder-decoder of Vaswani et al. (2017): sinusoidal positions added to embeddings scaled by
sqrt(d), post-norm residual sub-layers (x = LayerNorm(x + Dropout(sublayer(x)))), ReLU feed-forward layers, and
multi-head scaled dot-product attention -- self-attention in the encoder, masked self-attention then attention over
the source in the decoder.

The decoding cache keeps each decoder layer's self-attention keys and values (transformers' ``DynamicLayer``,
growing by one position per token) and its cross-attention keys and values, computed from the source on the first
step and reused after. Positions count real tokens only, so a left-padded source sees the positions it would see
alone.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from seqzoo.cache import check_kv_layout
from seqzoo.layers.mlp import MLP
from seqzoo.layers.positions import SinusoidalPositions
from seqzoo.layers.seq2seq_attention import MultiHeadAttention
from seqzoo.models.compat import as_returned
from seqzoo.models.inputs import ForwardInputs, position_ids_from_mask, prepare_inputs

from .configuration_seq2seq import Seq2SeqConfig
from .outputs import DecoderOutput, Seq2SeqEncoderOutput
from .recurrent import CheckpointedStack, DecoderStack, check_cached_source, check_sources_not_empty


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask (True: may attend) as the additive mask attention functions take: 0 or the dtype's minimum
    (not -inf, so a row the softmax sees only masked is still finite; the decoder lets a query that would see no
    key, at a left-padded position, see them all)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed,
                                                                                     torch.finfo(dtype).min)


class PostNormSublayer(nn.Module):
    """x -> LayerNorm(x + Dropout(f(x))) around one sub-layer (Vaswani et al., section 5.4)."""

    def __init__(self, config: Seq2SeqConfig, sublayer: nn.Module) -> None:
        super().__init__()
        self.sublayer = sublayer
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def residual(self, x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(update))


class EncoderLayer(nn.Module):
    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.self_attn = PostNormSublayer(config, MultiHeadAttention(config, is_causal=False))
        self.mlp = PostNormSublayer(config, MLP(config.hidden_size, config.intermediate_size, "relu"))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, need_weights: bool):
        attention = self.self_attn.sublayer
        update, weights = attention(x, *attention.key_values(x), mask, need_weights)
        x = self.self_attn.residual(x, update)
        return self.mlp.residual(x, self.mlp.sublayer(x)), weights


class DecoderLayer(nn.Module):
    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.self_attn = PostNormSublayer(config, MultiHeadAttention(config, is_causal=True))
        self.cross_attn = PostNormSublayer(config, MultiHeadAttention(config, is_causal=False))
        self.mlp = PostNormSublayer(config, MLP(config.hidden_size, config.intermediate_size, "relu"))

    def forward(self, x, memory, self_entry, cross_entry, self_mask, cross_mask, need_weights):
        """``self_entry`` / ``cross_entry``: this layer's K/V cache layers (None without a cache)."""
        attention = self.self_attn.sublayer
        key, value = attention.key_values(x)
        if self_entry is not None:
            check_kv_layout(self_entry, key)
            key, value = self_entry.update(key, value)  # every position so far
        update, self_weights = attention(x, key, value, self_mask, need_weights)
        x = self.self_attn.residual(x, update)

        attention = self.cross_attn.sublayer
        if cross_entry is not None and cross_entry.is_initialized:
            key, value = cross_entry.keys, cross_entry.values  # the source's, from the first step
            check_cached_source(key.shape[-2], memory)
        else:
            key, value = attention.key_values(memory)
            if cross_entry is not None:
                cross_entry.update(key, value)
        update, cross_weights = attention(x, key, value, cross_mask, need_weights)
        x = self.cross_attn.residual(x, update)
        return self.mlp.residual(x, self.mlp.sublayer(x)), self_weights, cross_weights


class _Embedding(CheckpointedStack):
    """Token embedding * sqrt(d) + sinusoidal position, then dropout."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.scale = math.sqrt(config.hidden_size)
        self.max_positions = config.max_position_embeddings
        self.embed_positions = SinusoidalPositions(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def embed(self, embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling() and int(position_ids.max()) >= self.max_positions:
            raise ValueError(f"position {int(position_ids.max())} is beyond max_position_embeddings="
                             f"{self.max_positions} of this model; pass shorter sequences (in generate(), or fewer "
                             "new tokens: max_new_tokens / max_length)")
        return self.dropout(embeds * self.scale + self.embed_positions(position_ids).to(embeds.dtype))


class TransformerEncoder(_Embedding):
    def __init__(self, config: Seq2SeqConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__(config)
        self.config = config
        self.embed_tokens = embed_tokens
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Seq2SeqEncoderOutput | tuple:
        inputs = prepare_inputs(self, input_ids, inputs_embeds, attention_mask, None, False)
        mask = inputs.padding_mask
        check_sources_not_empty(mask)
        positions = position_ids_from_mask(attention_mask, 0, inputs.length, inputs.embeds.device)
        hidden_states = self.embed(inputs.embeds, positions)  # (B, S, D)
        keys_allowed = None if mask is None else additive_mask(mask[:, None, None, :], hidden_states.dtype)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for idx, layer in enumerate(self.layers):
            hidden_states, weights = self.run_layer(idx, layer, hidden_states, keys_allowed, bool(output_attentions))
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        output = Seq2SeqEncoderOutput(last_hidden_state=hidden_states, hidden_states=all_hidden_states,
                                      attentions=all_attentions)
        return as_returned(self, output, return_dict)  # (a tuple of the fields set when return_dict is False)


class TransformerDecoder(_Embedding, DecoderStack):
    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_decoder_layers))

    def start(self, encoder_outputs: Seq2SeqEncoderOutput) -> None:
        return None  # no state to start from: every cache entry fills on the first step

    def forward(
        self,
        inputs: ForwardInputs,
        memory: torch.Tensor,
        source_mask: torch.Tensor | None,
        entries: list[Any] | None,
        output_attentions: bool,
        output_hidden_states: bool,
    ) -> DecoderOutput:
        """``inputs``: the decoder inputs, checked and embedded, with their 0/1 mask of the cached and current
        positions; ``entries``: the cache's K/V layers (self-attention per layer, then cross-attention per
        layer), or None."""
        embeds, past_length, decoder_attention_mask = inputs.embeds, inputs.past_length, inputs.attention_mask
        batch, length = embeds.shape[:2]
        positions = position_ids_from_mask(decoder_attention_mask, past_length, length, embeds.device)
        hidden_states = self.embed(embeds, positions)  # (B, T, D)
        # Query t (at absolute position past + t) sees keys 0 .. past + t, minus padded ones.
        query_at = torch.arange(past_length, past_length + length, device=embeds.device)
        allowed = torch.arange(past_length + length, device=embeds.device)[None, :] <= query_at[:, None]
        allowed = allowed[None, None].expand(batch, 1, length, past_length + length)
        if decoder_attention_mask is not None:
            allowed = allowed & decoder_attention_mask[:, None, None, -(past_length + length):].bool()
            # A query at a left-padded position sees no key: such a row would be all mask value, which a half-precision
            # score added to it overflows to -inf (a NaN row, whose keys and values poison the next layer's real rows
            # through weight 0 * NaN). Let it see every key; its output is padding, read by no real position.
            allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
        self_mask = additive_mask(allowed, hidden_states.dtype)
        cross_mask = None if source_mask is None else additive_mask(source_mask[:, None, None, :],
                                                                    hidden_states.dtype)
        count = len(self.layers)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        self_attentions, cross_attentions = ((), ()) if output_attentions else (None, None)
        for idx, layer in enumerate(self.layers):
            self_entry, cross_entry = (entries[idx], entries[count + idx]) if entries is not None else (None, None)
            # (with activation checkpointing on, the model runs without a cache: a replayed layer would grow it twice)
            hidden_states, self_weights, cross_weights = self.run_layer(
                idx, layer, hidden_states, memory, self_entry, cross_entry, self_mask, cross_mask, output_attentions)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                self_attentions += (self_weights,)
                cross_attentions += (cross_weights,)
        return DecoderOutput(hidden_states, list(entries) if entries is not None else [],
                             hidden_states=all_hidden_states, self_attentions=self_attentions,
                             cross_attentions=cross_attentions)


__all__ = ["TransformerDecoder", "TransformerEncoder", "additive_mask"]
