from .configuration_mamba import MambaConfig
from .modeling_mamba import (
    MambaForCausalLM,
    MambaForSequenceClassification,
    MambaForTokenClassification,
    MambaModel,
    MambaPreTrainedModel,
)

__all__ = [
    "MambaConfig",
    "MambaForCausalLM",
    "MambaForSequenceClassification",
    "MambaForTokenClassification",
    "MambaModel",
    "MambaPreTrainedModel",
]
