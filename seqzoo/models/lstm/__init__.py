from .configuration_lstm import LSTMConfig
from .modeling_lstm import LSTMForCausalLM, LSTMModel, LSTMPreTrainedModel

__all__ = ["LSTMConfig", "LSTMForCausalLM", "LSTMModel", "LSTMPreTrainedModel"]
