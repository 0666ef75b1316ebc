"""LSTM language model."""

from seqzoo.models.classic.modeling_classic import (
    ClassicRecurrentForCausalLM,
    ClassicRecurrentModel,
    ClassicRecurrentPreTrainedModel,
)
from seqzoo.models.heads import SeqzooForSequenceClassification, SeqzooForTokenClassification

from .configuration_lstm import LSTMConfig


class LSTMPreTrainedModel(ClassicRecurrentPreTrainedModel):
    config_class = LSTMConfig
    _no_split_modules = ["LSTMMixer"]


class LSTMModel(LSTMPreTrainedModel, ClassicRecurrentModel):
    pass


class LSTMForCausalLM(LSTMPreTrainedModel, ClassicRecurrentForCausalLM):
    base_model_class = LSTMModel


class LSTMForSequenceClassification(LSTMPreTrainedModel, SeqzooForSequenceClassification):
    base_model_class = LSTMModel


class LSTMForTokenClassification(LSTMPreTrainedModel, SeqzooForTokenClassification):
    base_model_class = LSTMModel


__all__ = [
    "LSTMForCausalLM",
    "LSTMForSequenceClassification",
    "LSTMForTokenClassification",
    "LSTMModel",
    "LSTMPreTrainedModel",
]
