"""seqzoo: sequence models from the Elman RNN to Mamba-2 as Hugging Face transformers models.

``import seqzoo`` registers every built-in architecture (and entry-point plugins) with ``AutoConfig``,
``AutoModel`` and ``AutoModelForCausalLM``.
"""

from seqzoo.cache import RecurrentCache, SeqzooCache
from seqzoo.kernels import list_kernels
from seqzoo.kernels import set_backend as set_kernel_backend
from seqzoo.kernels import use_backend as use_kernel_backend
from seqzoo.models import builtin_architectures
from seqzoo.models.gru import GRUConfig, GRUForCausalLM, GRUModel, GRUPreTrainedModel
from seqzoo.models.hybrid import HybridConfig, HybridForCausalLM, HybridModel, HybridPreTrainedModel
from seqzoo.models.lstm import LSTMConfig, LSTMForCausalLM, LSTMModel, LSTMPreTrainedModel
from seqzoo.models.mamba import MambaConfig, MambaForCausalLM, MambaModel, MambaPreTrainedModel
from seqzoo.models.mamba2 import Mamba2Config, Mamba2ForCausalLM, Mamba2Model, Mamba2PreTrainedModel
from seqzoo.models.rnn import RNNConfig, RNNForCausalLM, RNNModel, RNNPreTrainedModel
from seqzoo.models.rwkv7 import RWKV7Config, RWKV7ForCausalLM, RWKV7Model, RWKV7PreTrainedModel
from seqzoo.models.seq2seq import (
    Seq2SeqConfig,
    Seq2SeqForConditionalGeneration,
    Seq2SeqModel,
    Seq2SeqPreTrainedModel,
)
from seqzoo.models.seq2seq.inspection import AttentionMap, attention_map, seq2seq_generate
from seqzoo.models.transformer import (
    TransformerConfig,
    TransformerForCausalLM,
    TransformerModel,
    TransformerPreTrainedModel,
)
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

load_plugins()

__all__ = [
    "GRUConfig",
    "GRUForCausalLM",
    "GRUModel",
    "GRUPreTrainedModel",
    "HybridConfig",
    "HybridForCausalLM",
    "HybridModel",
    "HybridPreTrainedModel",
    "LSTMConfig",
    "LSTMForCausalLM",
    "LSTMModel",
    "LSTMPreTrainedModel",
    "MambaConfig",
    "MambaForCausalLM",
    "MambaModel",
    "MambaPreTrainedModel",
    "Mamba2Config",
    "Mamba2ForCausalLM",
    "Mamba2Model",
    "Mamba2PreTrainedModel",
    "RNNConfig",
    "RNNForCausalLM",
    "RNNModel",
    "RNNPreTrainedModel",
    "RWKV7Config",
    "RWKV7ForCausalLM",
    "RWKV7Model",
    "RWKV7PreTrainedModel",
    "Seq2SeqConfig",
    "Seq2SeqForConditionalGeneration",
    "Seq2SeqModel",
    "Seq2SeqPreTrainedModel",
    "TransformerConfig",
    "TransformerForCausalLM",
    "TransformerModel",
    "TransformerPreTrainedModel",
    "AttentionMap",
    "ModelSpec",
    "RecurrentCache",
    "SeqzooCache",
    "attention_map",
    "byte_tokenizer",
    "create_model",
    "get_architecture",
    "get_config",
    "list_architectures",
    "list_kernels",
    "list_models",
    "load_plugins",
    "register_architecture",
    "seq2seq_generate",
    "set_kernel_backend",
    "use_kernel_backend",
]
