"""RWKV-7 ("x070") backbone and causal LM: embedding -> ln0 -> [ln1 -> time mix, ln2 -> channel mix] x L -> ln_out.

Numerically this is the published reference (RWKV-LM ``RWKV-v7/rwkv_v7_demo.py``); tests/models/
test_rwkv7_reference.py checks it against an independent per-token re-statement of the formulas. The O(1) state of
each layer lives in a :class:`~seqzoo.cache.RecurrentCache` under ``attn_shift``, ``wkv`` and ``ffn_shift``. The
cross-layer ``v_first`` (layer 0's values) is not state: every forward recomputes it from layer 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast

from seqzoo.layers.rwkv7 import RWKV7ChannelMix, RWKV7TimeMix
from seqzoo.models.compat import model_output
from seqzoo.models.modeling_utils import (
    SeqzooForCausalLM,
    SeqzooPreTrainedModel,
    backbone_cache_argument,
    check_inputs,
    new_recurrent_cache,
    resolve_output_flags,
    padding_mask_for,
)

from .configuration_rwkv7 import RWKV7Config

STATE_NAMES = ("attn_shift", "wkv", "ffn_shift")


class RWKV7Block(GradientCheckpointingLayer):
    def __init__(self, config: RWKV7Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # reference: ln1
        self.attn = RWKV7TimeMix(
            config.hidden_size, config.head_size, config.decay_low_rank_dim, config.a_low_rank_dim,
            config.v_low_rank_dim, config.gate_low_rank_dim, layer_idx, config.group_norm_eps,
        )
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # reference: ln2
        self.ffn = RWKV7ChannelMix(config.hidden_size, config.intermediate_size, layer_idx)

    def forward(
        self,
        hidden_states: torch.Tensor,
        v_first: torch.Tensor | None,
        state: dict[str, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        # hidden_states: (B, T, C); state: this layer's cached tensors or None; mask: (B, T) bool or None.
        state = state or {}
        attn, v_first, attn_shift, wkv = self.attn(
            self.attn_norm(hidden_states), v_first, state.get("attn_shift"), state.get("wkv"), mask
        )
        hidden_states = hidden_states + attn
        ffn, ffn_shift = self.ffn(self.ffn_norm(hidden_states), state.get("ffn_shift"), mask)
        hidden_states = hidden_states + ffn
        return hidden_states, v_first, {"attn_shift": attn_shift, "wkv": wkv, "ffn_shift": ffn_shift}


class RWKV7PreTrainedModel(SeqzooPreTrainedModel):
    config_class = RWKV7Config
    supports_gradient_checkpointing = True
    _no_split_modules = ["RWKV7Block"]

    def _init_weights(self, module: nn.Module) -> None:
        """The RWKV-LM x070 init: RWKV_Tmix_x070 / RWKV_CMix_x070 constructors for the vectors and LoRAs, then
        ``generate_init_weight`` for the matrices (orthogonal with per-matrix gains, zero output projections, tiny
        embedding, ln_x weights growing with depth), as train.py builds the initial checkpoint."""
        config = self.config
        if isinstance(module, RWKV7TimeMix):
            _init_time_mix(module, config.num_hidden_layers)
            _init_residual_output(module.output.weight, config.output_init_gain)
        elif isinstance(module, RWKV7ChannelMix):
            ddd = torch.arange(module.x_k.numel(), dtype=torch.float32) / module.x_k.numel()
            init.copy_(module.x_k, 1.0 - ddd ** (_depth_ratios(module.layer_idx, config.num_hidden_layers)[1] ** 4))
            init.orthogonal_(module.key.weight, gain=1.0)
            _init_residual_output(module.value.weight, config.output_init_gain)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            if config.tie_word_embeddings:
                # The shared matrix serves as the head too, where its init matters; ln0 makes the embedding's
                # scale irrelevant.
                _init_head(module.weight, config)
            else:
                # A tiny embedding (ln0 normalises it anyway) lets the embedding learn fast (RWKV-LM README).
                init.uniform_(module.weight, -1e-4, 1e-4)
        elif module is getattr(self, "lm_head", None) and not config.tie_word_embeddings:
            # Matched by identity: transformers skips modules without parameters of their own (the CausalLM
            # itself), so the head is initialised when the nn.Linear is visited, with self the CausalLM.
            _init_head(module.weight, config)


def _depth_ratios(layer_idx: int, num_layers: int) -> tuple[float, float]:
    # (0 -> 1 over the layers, 1 -> ~0 over the layers). The reference divides by n_layer - 1; one layer gives 0.
    return (layer_idx / (num_layers - 1) if num_layers > 1 else 0.0), 1.0 - layer_idx / num_layers


def _init_head(weight: torch.Tensor, config: RWKV7Config) -> None:
    vocab, hidden = config.vocab_size, config.hidden_size
    init.orthogonal_(weight, gain=0.5 * math.sqrt(vocab / hidden) if vocab > hidden else 0.5)


def _init_residual_output(weight: torch.Tensor, gain: float) -> None:
    # x070: zero, so that every block starts as the identity on the residual stream.
    if gain > 0:
        init.orthogonal_(weight, gain=gain)
    else:
        init.zeros_(weight)


def _init_lora_out(weight: torch.Tensor, scale: float = 0.1) -> None:
    # The reference's ortho_init for a (D, C) matrix: gain sqrt(D / C) when D > C.
    rows, cols = weight.shape
    init.orthogonal_(weight, gain=(math.sqrt(rows / cols) if rows > cols else 1.0) * scale)


def _init_time_mix(module: RWKV7TimeMix, num_layers: int) -> None:
    C, N = module.hidden_size, module.head_size
    ratio_0_to_1, ratio_1_to_almost0 = _depth_ratios(module.layer_idx, num_layers)
    n = torch.arange(C, dtype=torch.float32)
    ddd = n / C
    linear = n / max(C - 1, 1) - 0.5
    # A per-head pattern from -1 to 1 (squared, sign kept), so every head starts with a spread of timescales.
    zigzag = ((n % N) - (N - 1) / 2) / ((N - 1) / 2) if N > 1 else torch.zeros(C)
    zigzag = zigzag * zigzag.abs()
    decay_speed = -6 + 6 * (n / max(C - 1, 1)) ** (1 + ratio_0_to_1**0.3)

    for name, power in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
        init.copy_(getattr(module, name), 1.0 - ddd ** (power * ratio_1_to_almost0))
    init.copy_(module.w0, decay_speed + 0.5 + zigzag * 2.5)  # +0.5 offsets the -0.5 of the decay soft-clamp
    init.copy_(module.a0, -0.19 + zigzag * 0.3 + linear * 0.4)
    init.copy_(module.k_k, 0.71 - linear * 0.1)
    init.constant_(module.k_a, 1.02)
    init.constant_(module.r_k, -0.04)
    lora_in = [module.w1, module.a1, module.g1]
    lora_out = [module.w2, module.a2, module.g2]
    if module.has_value_residual:
        init.copy_(module.v0, 0.73 - linear * 0.4)
        lora_in.append(module.v1)
        lora_out.append(module.v2)
    for weight in lora_in:
        init.zeros_(weight)
    for weight in lora_out:
        _init_lora_out(weight)
    init.orthogonal_(module.receptance.weight, gain=1.0)
    init.orthogonal_(module.key.weight, gain=0.1)
    init.orthogonal_(module.value.weight, gain=1.0)
    init.constant_(module.ln_x.weight, ((1 + module.layer_idx) / num_layers) ** 0.7)
    init.zeros_(module.ln_x.bias)


class RWKV7Model(RWKV7PreTrainedModel):
    def __init__(self, config: RWKV7Config) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)  # reference: emb
        self.embed_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # reference: blocks.0.ln0
        self.layers = nn.ModuleList(RWKV7Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # reference: ln_out
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
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        cache = backbone_cache_argument(self, cache, kwargs)
        _, length = check_inputs(self.config, input_ids, inputs_embeds, attention_mask)
        use_cache, output_hidden_states = resolve_output_flags(self, use_cache, output_hidden_states)
        cache = new_recurrent_cache(self.config, cache, use_cache or cache is not None)
        mask = padding_mask_for(attention_mask, length)

        hidden_states = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        hidden_states = self.embed_norm(hidden_states)  # (B, T, C)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        v_first = None
        for idx, layer in enumerate(self.layers):
            state = None
            if cache is not None and cache.get(idx, "wkv") is not None:
                state = {name: cache.get(idx, name) for name in STATE_NAMES}
            hidden_states, v_first, new_state = layer(hidden_states, v_first, state, mask)
            if cache is not None:
                for name, value in new_state.items():
                    cache.set(idx, name, value)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        hidden_states = self.norm(hidden_states)
        if cache is not None:
            cache.advance(length)
        return model_output(
            BaseModelOutputWithPast, cache=cache, last_hidden_state=hidden_states, hidden_states=all_hidden_states
        )


class RWKV7ForCausalLM(RWKV7PreTrainedModel, SeqzooForCausalLM):
    base_model_class = RWKV7Model


__all__ = ["RWKV7ForCausalLM", "RWKV7Model", "RWKV7PreTrainedModel"]
