"""GRU language model."""

from seqzoo.models.classic.modeling_classic import (
    ClassicRecurrentForCausalLM,
    ClassicRecurrentModel,
    ClassicRecurrentPreTrainedModel,
)
from seqzoo.models.heads import SeqzooForSequenceClassification, SeqzooForTokenClassification

from .configuration_gru import GRUConfig


class GRUPreTrainedModel(ClassicRecurrentPreTrainedModel):
    config_class = GRUConfig
    _no_split_modules = ["GRUMixer"]


class GRUModel(GRUPreTrainedModel, ClassicRecurrentModel):
    pass


class GRUForCausalLM(GRUPreTrainedModel, ClassicRecurrentForCausalLM):
    base_model_class = GRUModel


class GRUForSequenceClassification(GRUPreTrainedModel, SeqzooForSequenceClassification):
    base_model_class = GRUModel


class GRUForTokenClassification(GRUPreTrainedModel, SeqzooForTokenClassification):
    base_model_class = GRUModel


__all__ = [
    "GRUForCausalLM",
    "GRUForSequenceClassification",
    "GRUForTokenClassification",
    "GRUModel",
    "GRUPreTrainedModel",
]
