from .configuration_mamba import MambaConfig
from .modeling_mamba import MambaForCausalLM, MambaModel, MambaPreTrainedModel

__all__ = ["MambaConfig", "MambaForCausalLM", "MambaModel", "MambaPreTrainedModel"]
