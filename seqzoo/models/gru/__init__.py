from .configuration_gru import GRUConfig
from .modeling_gru import GRUForCausalLM, GRUModel, GRUPreTrainedModel

__all__ = ["GRUConfig", "GRUForCausalLM", "GRUModel", "GRUPreTrainedModel"]
