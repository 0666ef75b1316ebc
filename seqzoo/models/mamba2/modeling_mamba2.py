"""Mamba-2 language model: pre-norm residual blocks of SSD mixers, numerically aligned with transformers'
Mamba2ForCausalLM. The block, the initialisation and the backbone are Mamba's too (seqzoo/models/state_space.py).

The state of every layer (``conv`` and ``ssm``) lives in a :class:`~seqzoo.cache.SeqzooCache`, so decoding costs
O(1) per token.
"""

from __future__ import annotations

from seqzoo.layers.mamba2 import Mamba2Mixer
from seqzoo.models.heads import SeqzooForSequenceClassification, SeqzooForTokenClassification
from seqzoo.models.modeling_utils import SeqzooForCausalLM
from seqzoo.models.state_space import StateSpaceBlock, StateSpaceModel, StateSpacePreTrainedModel

from .configuration_mamba2 import Mamba2Config


class Mamba2Block(StateSpaceBlock):
    """x + Mamba2Mixer(RMSNorm(x))."""

    mixer_class = Mamba2Mixer


class Mamba2PreTrainedModel(StateSpacePreTrainedModel):
    """The base of every Mamba-2 model class: its config class and mamba_ssm's initialisation."""

    config_class = Mamba2Config
    _no_split_modules = ["Mamba2Block"]


class Mamba2Model(Mamba2PreTrainedModel, StateSpaceModel):
    """Embedding -> [RMSNorm -> SSD mixer, residual] x N -> RMSNorm."""

    block_class = Mamba2Block


class Mamba2ForCausalLM(Mamba2PreTrainedModel, SeqzooForCausalLM):
    base_model_class = Mamba2Model


class Mamba2ForSequenceClassification(Mamba2PreTrainedModel, SeqzooForSequenceClassification):
    base_model_class = Mamba2Model


class Mamba2ForTokenClassification(Mamba2PreTrainedModel, SeqzooForTokenClassification):
    base_model_class = Mamba2Model


__all__ = [
    "Mamba2ForCausalLM",
    "Mamba2ForSequenceClassification",
    "Mamba2ForTokenClassification",
    "Mamba2Model",
    "Mamba2PreTrainedModel",
]
