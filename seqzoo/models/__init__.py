"""Hugging Face wrappers, one package per architecture; :func:`builtin_architectures` lists them for the registry."""

from __future__ import annotations


def builtin_architectures() -> list:
    from seqzoo.models.gru import GRUConfig, GRUForCausalLM, GRUModel
    from seqzoo.models.hybrid import HybridConfig, HybridForCausalLM, HybridModel
    from seqzoo.models.lstm import LSTMConfig, LSTMForCausalLM, LSTMModel
    from seqzoo.models.mamba import MambaConfig, MambaForCausalLM, MambaModel
    from seqzoo.models.mamba2 import Mamba2Config, Mamba2ForCausalLM, Mamba2Model
    from seqzoo.models.rnn import RNNConfig, RNNForCausalLM, RNNModel
    from seqzoo.models.rwkv7 import RWKV7Config, RWKV7ForCausalLM, RWKV7Model
    from seqzoo.models.transformer import TransformerConfig, TransformerForCausalLM, TransformerModel
    from seqzoo.registry import ModelSpec

    return [
        ModelSpec("rnn", RNNConfig, RNNModel, RNNForCausalLM, description="Elman RNN (tanh or relu)"),
        ModelSpec("lstm", LSTMConfig, LSTMModel, LSTMForCausalLM, description="LSTM"),
        ModelSpec("gru", GRUConfig, GRUModel, GRUForCausalLM, description="GRU"),
        ModelSpec("transformer", TransformerConfig, TransformerModel, TransformerForCausalLM,
                  description="decoder-only Transformer (Vaswani / GPT-2 / Llama variants)"),
        ModelSpec("mamba", MambaConfig, MambaModel, MambaForCausalLM, description="Mamba (selective scan)"),
        ModelSpec("mamba2", Mamba2Config, Mamba2Model, Mamba2ForCausalLM, description="Mamba-2 (SSD)"),
        ModelSpec("hybrid", HybridConfig, HybridModel, HybridForCausalLM,
                  description="hybrid: any token mixer per layer (Mamba / RWKV-7 layers with attention, ...)"),
        ModelSpec("rwkv7", RWKV7Config, RWKV7Model, RWKV7ForCausalLM,
                  description='RWKV-7 "Goose" (x070): generalised delta-rule WKV, data-dependent decay'),
    ]
