"""seqzoo: sequence models from the Elman RNN to Mamba-2 as Hugging Face transformers models.

``import seqzoo`` registers every built-in architecture (and entry-point plugins) with ``AutoConfig``,
``AutoModel`` and ``AutoModelForCausalLM``.
"""

from seqzoo.adapters import peft_config, peft_targets
from seqzoo.cache import RecurrentCache, SeqzooCache
from seqzoo.conversions.world_tokenizer import register_world_tokenizer
from seqzoo.kernels import list_kernels
from seqzoo.kernels import set_backend as set_kernel_backend
from seqzoo.kernels import use_backend as use_kernel_backend
from seqzoo.models import builtin_architectures
from seqzoo.models.gru import (
    GRUConfig,
    GRUForCausalLM,
    GRUForSequenceClassification,
    GRUForTokenClassification,
    GRUModel,
    GRUPreTrainedModel,
)
from seqzoo.models.hybrid import (
    HybridConfig,
    HybridForCausalLM,
    HybridForSequenceClassification,
    HybridForTokenClassification,
    HybridModel,
    HybridPreTrainedModel,
)
from seqzoo.models.lstm import (
    LSTMConfig,
    LSTMForCausalLM,
    LSTMForSequenceClassification,
    LSTMForTokenClassification,
    LSTMModel,
    LSTMPreTrainedModel,
)
from seqzoo.models.mamba import (
    MambaConfig,
    MambaForCausalLM,
    MambaForSequenceClassification,
    MambaForTokenClassification,
    MambaModel,
    MambaPreTrainedModel,
)
from seqzoo.models.mamba2 import (
    Mamba2Config,
    Mamba2ForCausalLM,
    Mamba2ForSequenceClassification,
    Mamba2ForTokenClassification,
    Mamba2Model,
    Mamba2PreTrainedModel,
)
from seqzoo.models.rnn import (
    RNNConfig,
    RNNForCausalLM,
    RNNForSequenceClassification,
    RNNForTokenClassification,
    RNNModel,
    RNNPreTrainedModel,
)
from seqzoo.models.rwkv7 import (
    RWKV7Config,
    RWKV7ForCausalLM,
    RWKV7ForSequenceClassification,
    RWKV7ForTokenClassification,
    RWKV7Model,
    RWKV7PreTrainedModel,
)
from seqzoo.models.seq2seq import (
    Seq2SeqConfig,
    Seq2SeqForConditionalGeneration,
    Seq2SeqModel,
    Seq2SeqPreTrainedModel,
)
from seqzoo.models.seq2seq.inspection import (
    AttentionMap,
    attention_map,
    seq2seq_generate,
)
from seqzoo.models.transformer import (
    TransformerConfig,
    TransformerForCausalLM,
    TransformerForSequenceClassification,
    TransformerForTokenClassification,
    TransformerModel,
    TransformerPreTrainedModel,
)
from seqzoo.quantization import int8_targets, quantize_int8
from seqzoo.registry import (
    ModelSpec,
    create_model,
    get_architecture,
    get_config,
    list_architectures,
    list_models,
    load_plugins,
    register_architecture,
)
from seqzoo.tokenizer import byte_tokenizer

__version__ = "0.1.0"

for _spec in builtin_architectures():
    register_architecture(_spec, exist_ok=True)
del _spec
register_world_tokenizer()

load_plugins()

__all__ = [
    "AttentionMap",
    "GRUConfig",
    "GRUForCausalLM",
    "GRUForSequenceClassification",
    "GRUForTokenClassification",
    "GRUModel",
    "GRUPreTrainedModel",
    "HybridConfig",
    "HybridForCausalLM",
    "HybridForSequenceClassification",
    "HybridForTokenClassification",
    "HybridModel",
    "HybridPreTrainedModel",
    "LSTMConfig",
    "LSTMForCausalLM",
    "LSTMForSequenceClassification",
    "LSTMForTokenClassification",
    "LSTMModel",
    "LSTMPreTrainedModel",
    "Mamba2Config",
    "Mamba2ForCausalLM",
    "Mamba2ForSequenceClassification",
    "Mamba2ForTokenClassification",
    "Mamba2Model",
    "Mamba2PreTrainedModel",
    "MambaConfig",
    "MambaForCausalLM",
    "MambaForSequenceClassification",
    "MambaForTokenClassification",
    "MambaModel",
    "MambaPreTrainedModel",
    "ModelSpec",
    "RNNConfig",
    "RNNForCausalLM",
    "RNNForSequenceClassification",
    "RNNForTokenClassification",
    "RNNModel",
    "RNNPreTrainedModel",
    "RWKV7Config",
    "RWKV7ForCausalLM",
    "RWKV7ForSequenceClassification",
    "RWKV7ForTokenClassification",
    "RWKV7Model",
    "RWKV7PreTrainedModel",
    "RecurrentCache",
    "Seq2SeqConfig",
    "Seq2SeqForConditionalGeneration",
    "Seq2SeqModel",
    "Seq2SeqPreTrainedModel",
    "SeqzooCache",
    "TransformerConfig",
    "TransformerForCausalLM",
    "TransformerForSequenceClassification",
    "TransformerForTokenClassification",
    "TransformerModel",
    "TransformerPreTrainedModel",
    "attention_map",
    "byte_tokenizer",
    "create_model",
    "get_architecture",
    "get_config",
    "int8_targets",
    "list_architectures",
    "list_kernels",
    "list_models",
    "load_plugins",
    "peft_config",
    "peft_targets",
    "quantize_int8",
    "register_architecture",
    "seq2seq_generate",
    "set_kernel_backend",
    "use_kernel_backend",
]
