from .configuration_transformer import TransformerConfig
from .modeling_transformer import TransformerForCausalLM, TransformerModel, TransformerPreTrainedModel

__all__ = ["TransformerConfig", "TransformerForCausalLM", "TransformerModel", "TransformerPreTrainedModel"]
