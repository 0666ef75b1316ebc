"""Ops ``rnn``, ``lstm`` and ``gru``: one recurrent layer over a (B, T, I) sequence, torch.nn weight layout."""

from seqzoo.kernels.registry import register_backend, register_op

from . import fused, reference

for _op, _doc in (
    ("rnn", "Elman RNN layer (tanh or relu)"),
    ("lstm", "LSTM layer"),
    ("gru", "GRU layer"),
):
    register_op(_op, _doc, check=getattr(reference, f"check_{_op}_call"))
    register_backend(_op, "reference", getattr(reference, _op), priority=0,
                     description="explicit cell loop in PyTorch; handles any padding mask")
    register_backend(_op, "torch", getattr(fused, _op), priority=10, supports=fused.supports,
                     cache_key=fused.supports_key,
                     description="torch's fused kernels (cuDNN / oneDNN); contiguous padding via packed sequences")
