"""RWKV-7 ("Goose", x070) configuration (Peng et al. 2025, BlinkDL/RWKV-LM)."""

from __future__ import annotations

from typing import Any, ClassVar

from seqzoo.models.configuration_utils import SeqzooConfig, require_float, require_int

# The x070 suggestions for the low-rank ("LoRA") widths as functions of the hidden size C, read from
# RWKV-LM RWKV-v7/train_temp/src/model.py (commits d07df1c..b3b4d05, 2025). They reproduce the published World
# models (C=768: 64, 64, 32, 128). Python's round() (half to even) is the reference's.
LOW_RANK_RULES: dict[str, tuple[float, float]] = {
    # field: (factor, exponent) -> max(32, round(factor * C**exponent / 32) * 32)
    "decay_low_rank_dim": (1.8, 0.5),
    "a_low_rank_dim": (1.8, 0.5),
    "v_low_rank_dim": (1.3, 0.5),
    "gate_low_rank_dim": (0.6, 0.8),
}


def default_low_rank_dim(field: str, hidden_size: int) -> int:
    factor, exponent = LOW_RANK_RULES[field]
    return max(32, int(round(factor * hidden_size**exponent / 32) * 32))


class RWKV7Config(SeqzooConfig):
    r"""
    RWKV-7 "x070": a linear-time recurrent LM whose state per head is a matrix updated by a generalised delta rule
    with vector-valued, data-dependent decay. Fields left at ``None`` take the x070 defaults for ``hidden_size``.

    Args:
        vocab_size: vocabulary size.
        hidden_size: model width C (the reference's ``n_embd``; the attention width equals it).
        num_hidden_layers: number of blocks.
        head_size: channels per WKV head (64 in every published model); must divide ``hidden_size``, and be at least
            2 (the per-head GroupNorm of one channel would zero every head's WKV output).
        intermediate_size: channel-mix width (default 4 * hidden_size, as in the released x070 models).
        decay_low_rank_dim: rank of the decay LoRA ``w1 @ w2``.
        a_low_rank_dim: rank of the in-context learning rate LoRA ``a1 @ a2``.
        v_low_rank_dim: rank of the value-residual LoRA ``v1 @ v2`` (layers after the first).
        gate_low_rank_dim: rank of the output gate ``g1 @ g2``.
        layer_norm_eps: eps of the LayerNorms (ln0, ln1, ln2, ln_out).
        group_norm_eps: eps of the per-head GroupNorm ``ln_x`` after the WKV (x070 uses 64e-5, i.e. 1e-5 * 8**2).
        tie_word_embeddings: share the head with the embedding (the reference does not).
        output_init_gain: gain of the orthogonal init of the two projections that write into the residual stream
            (time-mix ``output``, channel-mix ``value``). 0, as in RWKV-LM x070, starts every block as the identity;
            a positive gain makes a fresh model mix across positions from the first step.
        initializer_range: not read: an RWKV-7 model starts as RWKV-LM x070's does (a uniform +-1e-4 embedding and an
            orthogonal head; tied, the orthogonal init for both). Set away from its default (0.02) it is refused, a
            warning where a config.json holds it.
    """

    model_type = "seqzoo_rwkv7"
    mixer_type: ClassVar[str] = "rwkv7"
    supports_bidirectional: ClassVar[bool] = True
    unread_shared_fields: ClassVar[dict[str, str]] = {
        "initializer_range": "the other architectures (an RWKV-7 model starts from RWKV-LM x070's init)"}

    vocab_size: int = 258
    hidden_size: int = 256
    num_hidden_layers: int = 4
    head_size: int = 64
    intermediate_size: int | None = None
    decay_low_rank_dim: int | None = None
    a_low_rank_dim: int | None = None
    v_low_rank_dim: int | None = None
    gate_low_rank_dim: int | None = None
    layer_norm_eps: float = 1e-5
    group_norm_eps: float = 64e-5
    tie_word_embeddings: bool = False
    output_init_gain: float = 0.0

    def __post_init__(self, **kwargs: Any) -> None:
        if isinstance(self.hidden_size, int) and not isinstance(self.hidden_size, bool) and self.hidden_size > 0:
            if self.intermediate_size is None:
                self.intermediate_size = 4 * self.hidden_size
            for field in LOW_RANK_RULES:
                if getattr(self, field) is None:
                    setattr(self, field, default_low_rank_dim(field, self.hidden_size))
        super().__post_init__(**kwargs)

    @classmethod
    def derived_fields(cls) -> list[tuple[str, Any]]:
        return [*super().derived_fields(), ("intermediate_size", None), *((name, None) for name in LOW_RANK_RULES)]

    def validate_architecture(self) -> None:
        super().validate_architecture()
        require_int(self, "head_size")
        if self.head_size < 2:
            # (a one-token forward of one row then failed inside torch's group_norm, 'Expected more than 1 value per
            # channel when training', while longer inputs computed a model whose state was never read)
            raise ValueError(
                f"RWKV7Config.head_size={self.head_size} is invalid: must be >= 2 (ln_x, the per-head GroupNorm, "
                "normalises a head of one channel to 0: the WKV state would never reach the output)"
            )
        if self.hidden_size % self.head_size:
            raise ValueError(
                f"RWKV7Config.head_size={self.head_size} is invalid: it must divide hidden_size={self.hidden_size} "
                f"(the WKV heads split the hidden channels evenly)"
            )
        require_int(self, "intermediate_size", minimum=1)
        for field in LOW_RANK_RULES:
            require_int(self, field, minimum=1)
        require_float(self, "layer_norm_eps", minimum=0.0, exclusive_min=True)
        require_float(self, "group_norm_eps", minimum=0.0, exclusive_min=True)
        require_float(self, "output_init_gain", minimum=0.0)

    @property
    def num_heads(self) -> int:
        return self.hidden_size // self.head_size

    def state_bytes_per_sequence(self, dtype_bytes: int = 4) -> int:
        from seqzoo.layers.rwkv7 import RWKV7ChannelMix, RWKV7TimeMix

        per_layer = RWKV7TimeMix.state_bytes(self, dtype_bytes) + RWKV7ChannelMix.state_bytes(self, dtype_bytes)
        return self.num_hidden_layers * per_layer

    def bidirectional_state_bytes(self, dtype_bytes: int = 4) -> int:
        # A bidirectional block runs its time mix in both directions, but keeps one (left-to-right) channel mix.
        from seqzoo.layers.rwkv7 import RWKV7ChannelMix, RWKV7TimeMix

        if not self.bidirectional:
            return self.state_bytes_per_sequence(dtype_bytes)
        per_layer = 2 * RWKV7TimeMix.state_bytes(self, dtype_bytes) + RWKV7ChannelMix.state_bytes(self, dtype_bytes)
        return self.num_hidden_layers * per_layer


__all__ = ["RWKV7Config"]
