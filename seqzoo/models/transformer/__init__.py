from .configuration_transformer import TransformerConfig
from .modeling_transformer import (
    TransformerForCausalLM,
    TransformerForSequenceClassification,
    TransformerForTokenClassification,
    TransformerModel,
    TransformerPreTrainedModel,
)

__all__ = [
    "TransformerConfig",
    "TransformerForCausalLM",
    "TransformerForSequenceClassification",
    "TransformerForTokenClassification",
    "TransformerModel",
    "TransformerPreTrainedModel",
]
