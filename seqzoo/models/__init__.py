"""Hugging Face wrappers, one package per architecture; :func:`builtin_architectures` lists them for the registry."""

from __future__ import annotations

from types import ModuleType

# Every architecture package exports <Prefix>Config, <Prefix>Model and one class per head, named by the task.
HEAD_CLASS_SUFFIXES = {
    "causal-lm": "ForCausalLM",
    "sequence-classification": "ForSequenceClassification",
    "token-classification": "ForTokenClassification",
}


def spec_of(name: str, package: ModuleType, prefix: str, description: str):
    """The ModelSpec of an architecture package that follows seqzoo's naming."""
    from seqzoo.registry import ModelSpec

    heads = {task: getattr(package, prefix + suffix) for task, suffix in HEAD_CLASS_SUFFIXES.items()}
    return ModelSpec(name, getattr(package, f"{prefix}Config"), getattr(package, f"{prefix}Model"), heads=heads,
                     description=description)


def builtin_architectures() -> list:
    """A :class:`~seqzoo.registry.ModelSpec` of every architecture seqzoo ships (``import seqzoo`` registers them)."""
    from seqzoo.models import gru, hybrid, lstm, mamba, mamba2, rnn, rwkv7, seq2seq, transformer
    from seqzoo.registry import ModelSpec

    return [
        spec_of("rnn", rnn, "RNN", "Elman RNN (tanh or relu)"),
        spec_of("lstm", lstm, "LSTM", "LSTM"),
        spec_of("gru", gru, "GRU", "GRU"),
        spec_of("transformer", transformer, "Transformer", "decoder-only Transformer (Vaswani / GPT-2 / Llama)"),
        spec_of("mamba", mamba, "Mamba", "Mamba (selective scan)"),
        spec_of("mamba2", mamba2, "Mamba2", "Mamba-2 (SSD)"),
        spec_of("rwkv7", rwkv7, "RWKV7", 'RWKV-7 "Goose" (x070): generalised delta-rule WKV, data-dependent decay'),
        spec_of("hybrid", hybrid, "Hybrid", "hybrid: any token mixer per layer (Mamba / RWKV-7 with attention, ...)"),
        # An encoder-decoder has one head, for one task.
        ModelSpec("seq2seq", seq2seq.Seq2SeqConfig, seq2seq.Seq2SeqModel,
                  heads={"seq2seq": seq2seq.Seq2SeqForConditionalGeneration},
                  description="encoder-decoder: RNN / LSTM / GRU with Bahdanau or Luong attention (or none), or the "
                              "Vaswani Transformer"),
    ]
