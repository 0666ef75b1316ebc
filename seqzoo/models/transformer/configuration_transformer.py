"""Decoder-only Transformer configuration covering the Vaswani, GPT-2 and Llama variants."""

from __future__ import annotations

from typing import Any, ClassVar

from seqzoo.cache import ATTENTION
from seqzoo.models.configuration_utils import (
    SeqzooConfig,
    require_bool,
    require_choice,
    require_float,
    require_int,
    require_plain_rope,
    require_probability,
)

# What each variant means; any field set explicitly overrides its variant's value.
VARIANTS: dict[str, dict[str, Any]] = {
    # Vaswani et al. 2017: sinusoidal positions, post-norm LayerNorm, ReLU MLP, biases, embeddings scaled by sqrt(d).
    "vaswani": dict(position_embedding="sinusoidal", norm_type="layernorm", norm_position="post", mlp_type="standard",
                    hidden_act="relu", attention_bias=True, mlp_bias=True, scale_embeddings=True, layer_norm_eps=1e-5),
    # Radford et al. 2019: learned positions, pre-norm LayerNorm, GELU (tanh approximation), biases.
    "gpt2": dict(position_embedding="learned", norm_type="layernorm", norm_position="pre", mlp_type="standard",
                 hidden_act="gelu_new", attention_bias=True, mlp_bias=True, scale_embeddings=False,
                 layer_norm_eps=1e-5),
    # Touvron et al. 2023: rotary positions, pre-norm RMSNorm, SwiGLU, no biases, grouped-query attention.
    "llama": dict(position_embedding="rope", norm_type="rmsnorm", norm_position="pre", mlp_type="gated",
                  hidden_act="silu", attention_bias=False, mlp_bias=False, scale_embeddings=False,
                  layer_norm_eps=1e-6),
}
ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish")


class TransformerConfig(SeqzooConfig):
    r"""
    Decoder-only Transformer. ``variant`` picks a family's defaults; every field below left at ``None`` takes the
    variant's value, and an explicit value overrides it.

    Args:
        variant: ``"llama"`` | ``"gpt2"`` | ``"vaswani"``.
        num_attention_heads: query heads; must divide ``hidden_size`` (as in Llama), also when ``head_dim`` is
            given.
        num_key_value_heads: key/value heads (grouped-query attention); must divide ``num_attention_heads``.
        head_dim: per-head size (default ``hidden_size // num_attention_heads``).
        intermediate_size: MLP width (default 4 * hidden for standard MLPs, ~8/3 * hidden rounded up to a multiple
            of 32 for gated ones).
        max_position_embeddings: longest sequence for learned/sinusoidal positions.
        position_embedding: ``"rope"`` | ``"learned"`` | ``"sinusoidal"``.
        rope_theta: RoPE base.
        norm_type: ``"rmsnorm"`` | ``"layernorm"``;  norm_position: ``"pre"`` | ``"post"``;  layer_norm_eps: their
            epsilon (1e-6 for llama, 1e-5 for gpt2 and vaswani).
        mlp_type: ``"gated"`` | ``"standard"``;  hidden_act: activation name.
        attention_bias, mlp_bias: biases in the projections.
        scale_embeddings: multiply token embeddings by sqrt(hidden_size) (Vaswani).
        dropout: dropout on embeddings and residual branches;  attention_dropout: on attention weights.
    """

    model_type = "seqzoo_transformer"
    mixer_type: ClassVar[str] = "attention"
    mixer_cache_kind: ClassVar[str] = ATTENTION

    variant: str = "llama"
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int = 2048
    position_embedding: str | None = None
    rope_theta: float = 10000.0
    norm_type: str | None = None
    norm_position: str | None = None
    mlp_type: str | None = None
    hidden_act: str | None = None
    attention_bias: bool | None = None
    mlp_bias: bool | None = None
    scale_embeddings: bool | None = None
    layer_norm_eps: float | None = None
    dropout: float = 0.0
    attention_dropout: float = 0.0

    def __post_init__(self, **kwargs: Any) -> None:
        require_choice(self, "variant", VARIANTS)
        for name, value in VARIANTS[self.variant].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if _positive_int(self.num_attention_heads):
            if self.num_key_value_heads is None:
                self.num_key_value_heads = self.num_attention_heads
            if self.head_dim is None and _positive_int(self.hidden_size):
                self.head_dim = self.hidden_size // self.num_attention_heads
        if self.intermediate_size is None and _positive_int(self.hidden_size):
            if self.mlp_type == "gated":
                self.intermediate_size = -(-(8 * self.hidden_size // 3) // 32) * 32
            else:
                self.intermediate_size = 4 * self.hidden_size
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """The config of ``config_dict``; ``variant`` names both this config's field and the weights file's variant
        of transformers' loading (``model.v1.safetensors``), and the Auto classes hand every keyword to the config
        first, asking for what it leaves unused: there, one that names no architecture variant is handed back, for
        the model's loading to read (it was refused as an architecture). One that names an architecture variant is
        this field, as it always was (a weights variant of that name loads through the model's own class)."""
        variant = kwargs.get("variant")
        if variant is not None and variant not in VARIANTS and not kwargs.get("return_unused_kwargs"):
            # (AutoConfig, and a pipeline, which reads the config with its model_kwargs before the model)
            raise ValueError(
                f"TransformerConfig.variant={variant!r} is invalid: allowed values are "
                f"{', '.join(map(repr, VARIANTS))}; for the weights saved with variant={variant!r} "
                f"(model.{variant}.safetensors), load the model (AutoModelForCausalLM.from_pretrained(path, "
                f"variant={variant!r})), and hand a pipeline the loaded model"
            )
        if kwargs.get("return_unused_kwargs") and variant is not None and variant not in VARIANTS:
            kwargs = {key: value for key, value in kwargs.items() if key != "variant"}
            config, unused = super().from_dict(config_dict, **kwargs)
            return config, {**unused, "variant": variant}
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def derived_fields(cls) -> list[tuple[str, Any]]:
        return [*super().derived_fields(), *((name, None) for name in VARIANTS["llama"]), ("num_key_value_heads", None),
                ("head_dim", None), ("intermediate_size", None)]

    def validate_architecture(self) -> None:
        super().validate_architecture()
        require_choice(self, "variant", VARIANTS)
        require_int(self, "num_attention_heads", minimum=1)
        require_int(self, "num_key_value_heads", minimum=1)
        require_int(self, "head_dim", minimum=1)
        require_int(self, "intermediate_size", minimum=1)
        require_int(self, "max_position_embeddings", minimum=1)
        require_choice(self, "position_embedding", ("rope", "learned", "sinusoidal"))
        require_float(self, "rope_theta", minimum=0.0, exclusive_min=True)
        require_plain_rope(self)
        require_choice(self, "norm_type", ("rmsnorm", "layernorm"))
        require_choice(self, "norm_position", ("pre", "post"))
        require_choice(self, "mlp_type", ("gated", "standard"))
        require_choice(self, "hidden_act", ACTIVATIONS)
        for name in ("attention_bias", "mlp_bias", "scale_embeddings"):
            require_bool(self, name)
        require_float(self, "layer_norm_eps", minimum=0.0, exclusive_min=True)
        require_probability(self, "dropout")
        require_probability(self, "attention_dropout")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"TransformerConfig: num_attention_heads={self.num_attention_heads} does not divide "
                f"hidden_size={self.hidden_size}; choose a divisor (head_dim may differ from hidden_size // heads, "
                f"but the heads must divide hidden_size, as in Llama)"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"TransformerConfig: num_key_value_heads={self.num_key_value_heads} must divide "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.position_embedding == "rope" and self.head_dim % 2:
            raise ValueError(f"TransformerConfig: rotary positions need an even head_dim, got {self.head_dim}")

    def unread_fields(self) -> list[tuple[str, Any, str]]:
        rope = [] if self.position_embedding == "rope" else [("rope_theta", 10000.0, "rotary positions: "
                                                              "position_embedding='rope'")]
        return [*super().unread_fields(), *rope]

    def architecture_summary(self) -> str:
        return f"position_embedding={self.position_embedding!r}"

    @property
    def max_input_length(self) -> int | None:
        return None if self.position_embedding == "rope" else self.max_position_embeddings

    def state_bytes_per_sequence(self, dtype_bytes: int = 4) -> int:
        return 0  # no fixed-size state: memory grows with the context, see kv_bytes_per_token

    def kv_bytes_per_token(self, dtype_bytes: int = 4) -> int:
        from seqzoo.layers.attention import SelfAttention

        return self.num_hidden_layers * SelfAttention.kv_bytes_per_token(self, dtype_bytes)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


__all__ = ["TransformerConfig"]
