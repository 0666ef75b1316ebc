from .configuration_rnn import RNNConfig
from .modeling_rnn import RNNForCausalLM, RNNModel, RNNPreTrainedModel

__all__ = ["RNNConfig", "RNNForCausalLM", "RNNModel", "RNNPreTrainedModel"]
