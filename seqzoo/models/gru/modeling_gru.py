"""GRU language model."""

from seqzoo.models.classic.modeling_classic import (
    ClassicRecurrentForCausalLM,
    ClassicRecurrentModel,
    ClassicRecurrentPreTrainedModel,
)

from .configuration_gru import GRUConfig


class GRUPreTrainedModel(ClassicRecurrentPreTrainedModel):
    config_class = GRUConfig
    _no_split_modules = ["GRUMixer"]


class GRUModel(GRUPreTrainedModel, ClassicRecurrentModel):
    pass


class GRUForCausalLM(GRUPreTrainedModel, ClassicRecurrentForCausalLM):
    base_model_class = GRUModel


__all__ = ["GRUForCausalLM", "GRUModel", "GRUPreTrainedModel"]
