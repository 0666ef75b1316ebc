"""LSTM language model."""

from seqzoo.models.classic.modeling_classic import (
    ClassicRecurrentForCausalLM,
    ClassicRecurrentModel,
    ClassicRecurrentPreTrainedModel,
)

from .configuration_lstm import LSTMConfig


class LSTMPreTrainedModel(ClassicRecurrentPreTrainedModel):
    config_class = LSTMConfig
    _no_split_modules = ["LSTMMixer"]


class LSTMModel(LSTMPreTrainedModel, ClassicRecurrentModel):
    pass


class LSTMForCausalLM(LSTMPreTrainedModel, ClassicRecurrentForCausalLM):
    base_model_class = LSTMModel


__all__ = ["LSTMForCausalLM", "LSTMModel", "LSTMPreTrainedModel"]
