"""Mamba language model: pre-norm residual blocks of selective-scan mixers, numerically aligned with transformers'
MambaForCausalLM. The block, the initialisation and the backbone are Mamba-2's too (seqzoo/models/state_space.py).

The state of every layer (``conv`` and ``ssm``) lives in a :class:`~seqzoo.cache.SeqzooCache`, so decoding costs
O(1) per token.
"""

from __future__ import annotations

from seqzoo.layers.mamba import MambaMixer
from seqzoo.models.heads import SeqzooForSequenceClassification, SeqzooForTokenClassification
from seqzoo.models.modeling_utils import SeqzooForCausalLM
from seqzoo.models.state_space import StateSpaceBlock, StateSpaceModel, StateSpacePreTrainedModel

from .configuration_mamba import MambaConfig


class MambaBlock(StateSpaceBlock):
    """x + MambaMixer(RMSNorm(x))."""

    mixer_class = MambaMixer


class MambaPreTrainedModel(StateSpacePreTrainedModel):
    """The base of every Mamba model class: its config class and mamba_ssm's initialisation."""

    config_class = MambaConfig
    _no_split_modules = ["MambaBlock"]


class MambaModel(MambaPreTrainedModel, StateSpaceModel):
    """Embedding -> [RMSNorm -> selective-scan mixer, residual] x N -> RMSNorm."""

    block_class = MambaBlock


class MambaForCausalLM(MambaPreTrainedModel, SeqzooForCausalLM):
    base_model_class = MambaModel


class MambaForSequenceClassification(MambaPreTrainedModel, SeqzooForSequenceClassification):
    base_model_class = MambaModel


class MambaForTokenClassification(MambaPreTrainedModel, SeqzooForTokenClassification):
    base_model_class = MambaModel


__all__ = [
    "MambaForCausalLM",
    "MambaForSequenceClassification",
    "MambaForTokenClassification",
    "MambaModel",
    "MambaPreTrainedModel",
]
