"""Mamba language model: pre-norm residual blocks of selective-scan mixers, numerically aligned with transformers'
MambaForCausalLM (same block, norms, residual precision and parameter layouts; see seqzoo/conversions/hf_mamba.py).

The state of every layer (``conv`` and ``ssm``) lives in a :class:`RecurrentCache`, so decoding costs O(1) per token.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast

from seqzoo.cache import RecurrentCache
from seqzoo.layers.mamba import CausalDepthwiseConv1d, MambaMixer, MambaState, init_linear_like_torch
from seqzoo.layers.norms import RMSNorm
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

from .configuration_mamba import MambaConfig

STATE_NAMES = ("conv", "ssm")


class StateSpaceBlock(GradientCheckpointingLayer):
    """x + mixer(RMSNorm(x)); the residual stream stays in float32 when ``residual_in_fp32`` (as in transformers).
    Shared by Mamba and Mamba-2, which differ only in their mixer."""

    def __init__(self, config: Any, layer_idx: int, mixer: nn.Module) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mixer = mixer

    def forward(
        self, hidden_states: torch.Tensor, state: MambaState | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MambaState]:
        residual = hidden_states.float() if self.residual_in_fp32 else hidden_states
        mixed, new_state = self.mixer(self.norm(hidden_states.to(self.norm.weight.dtype)), state, mask)
        return residual + mixed, new_state


class MambaBlock(StateSpaceBlock):
    def __init__(self, config: MambaConfig, layer_idx: int) -> None:
        mixer = MambaMixer(
            config.hidden_size,
            state_size=config.state_size,
            expand=config.expand,
            conv_kernel=config.conv_kernel,
            time_step_rank=config.time_step_rank,
            use_conv_bias=config.use_conv_bias,
            use_bias=config.use_bias,
        )
        super().__init__(config, layer_idx, mixer)


def run_state_space_stack(
    model: nn.Module,
    config: Any,
    input_ids: torch.LongTensor | None,
    attention_mask: torch.Tensor | None,
    cache: Any,
    inputs_embeds: torch.Tensor | None,
    use_cache: bool | None,
    output_hidden_states: bool | None,
) -> BaseModelOutputWithPast:
    """The backbone forward shared by Mamba and Mamba-2: embed, run the blocks with their cached states, norm."""
    _, length = check_inputs(config, input_ids, inputs_embeds, attention_mask)
    use_cache, output_hidden_states = resolve_output_flags(model, use_cache, output_hidden_states)
    cache: RecurrentCache | None = new_recurrent_cache(config, cache, use_cache or cache is not None)
    mask = padding_mask_for(attention_mask, length)

    hidden_states = model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
    all_hidden_states = (hidden_states,) if output_hidden_states else None
    for idx, layer in enumerate(model.layers):
        state = None
        if cache is not None and cache.get(idx, "ssm") is not None:
            state = {name: cache.get(idx, name) for name in STATE_NAMES}
        hidden_states, new_state = layer(hidden_states, state, mask)  # (B, T, H), float32 if residual_in_fp32
        if cache is not None:
            for name in STATE_NAMES:
                cache.set(idx, name, new_state[name])
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
    if cache is not None:
        cache.advance(length)
    # Normalise the (possibly float32) residual stream, then return to the model's dtype for the head.
    hidden_states = model.norm(hidden_states).to(model.norm.weight.dtype)
    return model_output(
        BaseModelOutputWithPast, cache=cache, last_hidden_state=hidden_states, hidden_states=all_hidden_states
    )


class StateSpacePreTrainedModel(SeqzooPreTrainedModel):
    """mamba_ssm's initialisation, shared by Mamba and Mamba-2: torch's default init for projections and the
    convolution, normal embeddings, unit norms, and the mixer's own A / D / time-step init. Children are initialised
    before their parents, so the mixer's choices (its time-step projection, the out_proj rescaling) win over the
    generic Linear rule. Subclasses name their norm and mixer classes and how to reset the mixer."""

    supports_gradient_checkpointing = True
    norm_classes: tuple[type[nn.Module], ...] = (RMSNorm,)
    mixer_class: type[nn.Module]

    def reset_mixer(self, mixer: nn.Module) -> None:
        raise NotImplementedError

    def _init_weights(self, module: nn.Module) -> None:
        config = self.config
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=config.initializer_range)
        elif isinstance(module, (nn.Linear, CausalDepthwiseConv1d)):
            init_linear_like_torch(module)
        elif isinstance(module, self.norm_classes):
            init.ones_(module.weight)
        elif isinstance(module, self.mixer_class):
            self.reset_mixer(module)
            if config.rescale_prenorm_residual:
                init_linear_like_torch(module.out_proj, scale=config.num_hidden_layers**-0.5)


class MambaPreTrainedModel(StateSpacePreTrainedModel):
    config_class = MambaConfig
    _no_split_modules = ["MambaBlock"]
    mixer_class = MambaMixer

    def reset_mixer(self, mixer: nn.Module) -> None:
        config = self.config
        mixer.reset_ssm_parameters(
            config.time_step_min, config.time_step_max, config.time_step_floor,
            config.time_step_init_scheme, config.time_step_scale,
        )


class StateSpaceBackbone:
    """The Mamba / Mamba-2 backbone: embedding, ``block_class`` blocks, final RMSNorm. Mixed into each
    architecture's ``<Arch>Model`` (which brings its own ``PreTrainedModel`` base and config class)."""

    block_class: type[nn.Module]

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(self.block_class(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: RecurrentCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        r"""
        attention_mask: (batch, past_length + sequence_length) 0/1; positions with 0 never change any state.
        cache: a :class:`RecurrentCache` to continue from (``cache_params``, the name transformers' Mamba and
            Mamba-2 used, and ``past_key_values`` are accepted too).
        """
        cache = backbone_cache_argument(self, cache, kwargs)
        return run_state_space_stack(self, self.config, input_ids, attention_mask, cache, inputs_embeds,
                                     use_cache, output_hidden_states)


class MambaModel(StateSpaceBackbone, MambaPreTrainedModel):
    block_class = MambaBlock


class MambaForCausalLM(MambaPreTrainedModel, SeqzooForCausalLM):
    base_model_class = MambaModel


__all__ = ["MambaForCausalLM", "MambaModel", "MambaPreTrainedModel"]
