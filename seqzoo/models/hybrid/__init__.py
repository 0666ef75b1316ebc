from .configuration_hybrid import HybridConfig
from .modeling_hybrid import (
    HybridForCausalLM,
    HybridForSequenceClassification,
    HybridForTokenClassification,
    HybridModel,
    HybridPreTrainedModel,
)

__all__ = [
    "HybridConfig",
    "HybridForCausalLM",
    "HybridForSequenceClassification",
    "HybridForTokenClassification",
    "HybridModel",
    "HybridPreTrainedModel",
]
