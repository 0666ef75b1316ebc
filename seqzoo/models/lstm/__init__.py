from .configuration_lstm import LSTMConfig
from .modeling_lstm import (
    LSTMForCausalLM,
    LSTMForSequenceClassification,
    LSTMForTokenClassification,
    LSTMModel,
    LSTMPreTrainedModel,
)

__all__ = [
    "LSTMConfig",
    "LSTMForCausalLM",
    "LSTMForSequenceClassification",
    "LSTMForTokenClassification",
    "LSTMModel",
    "LSTMPreTrainedModel",
]
