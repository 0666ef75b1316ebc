from .configuration_gru import GRUConfig
from .modeling_gru import (
    GRUForCausalLM,
    GRUForSequenceClassification,
    GRUForTokenClassification,
    GRUModel,
    GRUPreTrainedModel,
)

__all__ = [
    "GRUConfig",
    "GRUForCausalLM",
    "GRUForSequenceClassification",
    "GRUForTokenClassification",
    "GRUModel",
    "GRUPreTrainedModel",
]
