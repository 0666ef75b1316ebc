"""Elman RNN language model."""

from seqzoo.models.classic.modeling_classic import (
    ClassicRecurrentForCausalLM,
    ClassicRecurrentModel,
    ClassicRecurrentPreTrainedModel,
)

from .configuration_rnn import RNNConfig


class RNNPreTrainedModel(ClassicRecurrentPreTrainedModel):
    config_class = RNNConfig
    _no_split_modules = ["RNNMixer"]


class RNNModel(RNNPreTrainedModel, ClassicRecurrentModel):
    pass


class RNNForCausalLM(RNNPreTrainedModel, ClassicRecurrentForCausalLM):
    base_model_class = RNNModel


__all__ = ["RNNForCausalLM", "RNNModel", "RNNPreTrainedModel"]
