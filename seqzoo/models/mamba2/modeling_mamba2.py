"""Mamba-2 language model: pre-norm residual blocks of SSD mixers, numerically aligned with transformers'
Mamba2ForCausalLM (same block, norms, residual precision and parameter layouts; see seqzoo/conversions/hf_mamba.py).

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
from seqzoo.layers.mamba import CausalDepthwiseConv1d, MambaState, init_linear_like_torch
from seqzoo.layers.mamba2 import GatedRMSNorm, Mamba2Mixer
from seqzoo.layers.norms import RMSNorm
from seqzoo.models.mamba.modeling_mamba import resolve_cache_alias, run_state_space_stack
from seqzoo.models.modeling_utils import SeqzooForCausalLM, SeqzooPreTrainedModel

from .configuration_mamba2 import Mamba2Config


class Mamba2Block(GradientCheckpointingLayer):
    """x + mixer(RMSNorm(x)); the residual stream stays in float32 when ``residual_in_fp32`` (as in transformers)."""

    def __init__(self, config: Mamba2Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mixer = Mamba2Mixer(
            config.hidden_size,
            state_size=config.state_size,
            expand=config.expand,
            head_dim=config.head_dim,
            n_groups=config.n_groups,
            conv_kernel=config.conv_kernel,
            use_conv_bias=config.use_conv_bias,
            use_bias=config.use_bias,
            chunk_size=config.chunk_size,
            time_step_limit=config.time_step_limit,
            rms_norm=config.rms_norm,
            norm_before_gate=config.norm_before_gate,
            layer_norm_epsilon=config.layer_norm_epsilon,
        )

    def forward(
        self, hidden_states: torch.Tensor, state: MambaState | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MambaState]:
        residual = hidden_states.float() if self.residual_in_fp32 else hidden_states
        mixed, new_state = self.mixer(self.norm(hidden_states.to(self.norm.weight.dtype)), state, mask)
        return residual + mixed, new_state


class Mamba2PreTrainedModel(SeqzooPreTrainedModel):
    config_class = Mamba2Config
    supports_gradient_checkpointing = True
    _no_split_modules = ["Mamba2Block"]

    def _init_weights(self, module: nn.Module) -> None:
        # mamba_ssm's scheme, as for Mamba: torch's default init for projections and the convolution, normal
        # embeddings, and the mixer's A / D / dt_bias init (the mixer runs after its children, so it wins).
        config = self.config
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=config.initializer_range)
        elif isinstance(module, (nn.Linear, CausalDepthwiseConv1d)):
            init_linear_like_torch(module)
        elif isinstance(module, (RMSNorm, GatedRMSNorm)):
            init.ones_(module.weight)
        elif isinstance(module, Mamba2Mixer):
            module.reset_ssm_parameters(config.time_step_min, config.time_step_max, config.time_step_floor)
            if config.rescale_prenorm_residual:
                init_linear_like_torch(module.out_proj, scale=config.num_hidden_layers**-0.5)


class Mamba2Model(Mamba2PreTrainedModel):
    def __init__(self, config: Mamba2Config) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Mamba2Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: RecurrentCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        cache_params: RecurrentCache | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        r"""
        attention_mask: (batch, past_length + sequence_length) 0/1; positions with 0 never change any state.
        past_key_values / cache_params: a :class:`RecurrentCache` to continue from (``cache_params`` is the name
            transformers' Mamba-2 uses; either works).
        """
        return run_state_space_stack(self, self.config, input_ids, attention_mask, past_key_values, inputs_embeds,
                                     use_cache, output_hidden_states, cache_params)


class Mamba2ForCausalLM(Mamba2PreTrainedModel, SeqzooForCausalLM):
    base_model_class = Mamba2Model

    def generate(self, *args: Any, cache_params: RecurrentCache | None = None, **kwargs: Any) -> Any:
        """transformers' ``generate``; ``cache_params=`` (transformers' Mamba-2 name) is an alias of
        ``past_key_values`` (generate only slices already-cached prompt tokens off for the latter)."""
        cache = resolve_cache_alias(kwargs.pop("past_key_values", None), cache_params)
        if cache is not None:
            kwargs["past_key_values"] = cache
        return super().generate(*args, **kwargs)


__all__ = ["Mamba2ForCausalLM", "Mamba2Model", "Mamba2PreTrainedModel"]
