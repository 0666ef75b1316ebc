from .configuration_hybrid import HybridConfig
from .modeling_hybrid import HybridForCausalLM, HybridModel, HybridPreTrainedModel

__all__ = ["HybridConfig", "HybridForCausalLM", "HybridModel", "HybridPreTrainedModel"]
