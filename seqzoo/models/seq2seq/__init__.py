from .configuration_seq2seq import Seq2SeqConfig
from .modeling_seq2seq import (
    Seq2SeqForConditionalGeneration,
    Seq2SeqModel,
    Seq2SeqPreTrainedModel,
)

__all__ = ["Seq2SeqConfig", "Seq2SeqForConditionalGeneration", "Seq2SeqModel", "Seq2SeqPreTrainedModel"]
