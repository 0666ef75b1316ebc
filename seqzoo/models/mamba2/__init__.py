from .configuration_mamba2 import Mamba2Config
from .modeling_mamba2 import (
    Mamba2ForCausalLM,
    Mamba2ForSequenceClassification,
    Mamba2ForTokenClassification,
    Mamba2Model,
    Mamba2PreTrainedModel,
)

__all__ = [
    "Mamba2Config",
    "Mamba2ForCausalLM",
    "Mamba2ForSequenceClassification",
    "Mamba2ForTokenClassification",
    "Mamba2Model",
    "Mamba2PreTrainedModel",
]
