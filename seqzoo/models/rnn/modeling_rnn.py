"""Elman RNN language model."""

from seqzoo.models.classic.modeling_classic import (
    ClassicRecurrentForCausalLM,
    ClassicRecurrentModel,
    ClassicRecurrentPreTrainedModel,
)
from seqzoo.models.heads import SeqzooForSequenceClassification, SeqzooForTokenClassification

from .configuration_rnn import RNNConfig


class RNNPreTrainedModel(ClassicRecurrentPreTrainedModel):
    config_class = RNNConfig
    _no_split_modules = ["RNNMixer"]


class RNNModel(RNNPreTrainedModel, ClassicRecurrentModel):
    pass


class RNNForCausalLM(RNNPreTrainedModel, ClassicRecurrentForCausalLM):
    base_model_class = RNNModel


class RNNForSequenceClassification(RNNPreTrainedModel, SeqzooForSequenceClassification):
    base_model_class = RNNModel


class RNNForTokenClassification(RNNPreTrainedModel, SeqzooForTokenClassification):
    base_model_class = RNNModel


__all__ = [
    "RNNForCausalLM",
    "RNNForSequenceClassification",
    "RNNForTokenClassification",
    "RNNModel",
    "RNNPreTrainedModel",
]
