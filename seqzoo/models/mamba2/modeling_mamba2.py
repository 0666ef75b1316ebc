"""Mamba-2 language model: pre-norm residual blocks of SSD mixers, numerically aligned with transformers'
Mamba2ForCausalLM (same block, norms, residual precision and parameter layouts; see seqzoo/conversions/hf_mamba.py).

The state of every layer (``conv`` and ``ssm``) lives in a :class:`RecurrentCache`, so decoding costs O(1) per token.
"""

from __future__ import annotations

from torch import nn

from seqzoo.layers.mamba2 import GatedRMSNorm, Mamba2Mixer
from seqzoo.layers.norms import RMSNorm
from seqzoo.models.mamba.modeling_mamba import (
    StateSpaceBackbone,
    StateSpaceBlock,
    StateSpacePreTrainedModel,
)
from seqzoo.models.modeling_utils import SeqzooForCausalLM

from .configuration_mamba2 import Mamba2Config


class Mamba2Block(StateSpaceBlock):
    def __init__(self, config: Mamba2Config, layer_idx: int) -> None:
        mixer = Mamba2Mixer(
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
        super().__init__(config, layer_idx, mixer)


class Mamba2PreTrainedModel(StateSpacePreTrainedModel):
    config_class = Mamba2Config
    _no_split_modules = ["Mamba2Block"]
    norm_classes = (RMSNorm, GatedRMSNorm)
    mixer_class = Mamba2Mixer

    def reset_mixer(self, mixer: nn.Module) -> None:
        config = self.config
        mixer.reset_ssm_parameters(config.time_step_min, config.time_step_max, config.time_step_floor)


class Mamba2Model(StateSpaceBackbone, Mamba2PreTrainedModel):
    block_class = Mamba2Block


class Mamba2ForCausalLM(Mamba2PreTrainedModel, SeqzooForCausalLM):
    base_model_class = Mamba2Model


__all__ = ["Mamba2ForCausalLM", "Mamba2Model", "Mamba2PreTrainedModel"]
