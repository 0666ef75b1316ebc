"""Hybrid configuration: any registered token mixer per layer (Jamba-, Zamba- and Samba-like stacks of Mamba or
RWKV-7 layers with a few attention layers)."""

from __future__ import annotations

import logging
from typing import Any

from seqzoo.cache import ATTENTION, RECURRENT
from seqzoo.models.configuration_utils import (
    SeqzooConfig,
    loading_config,
    require_bool,
    require_choice,
    require_float,
    require_int,
    require_plain_rope,
    require_probability,
)
from seqzoo.models.mixers import get_mixer, mixer_config
from seqzoo.models.transformer.configuration_transformer import TransformerConfig

logger = logging.getLogger("seqzoo")

ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish")


class HybridConfig(SeqzooConfig):
    r"""
    A stack of pre-norm residual blocks, each ``norm -> mixer -> residual`` with an optional
    ``norm -> MLP -> residual``, where every layer names its own token mixer.

    Args:
        mixer_types: one mixer name per layer, any of ``seqzoo.models.mixers.list_mixers()`` (``"mamba"``,
            ``"mamba2"``, ``"rwkv7"``, ``"attention"``, ``"lstm"``, ``"gru"``, ``"rnn"`` and plugin mixers), e.g.
            ``["mamba", "mamba", "mamba", "attention"] * 2``. (transformers reserves ``layer_types`` for its own
            vocabulary and rewrites "mamba" and "attention" in it when a config is built, hence the other name.)
        num_hidden_layers: ``len(mixer_types)`` (derived when left unset).
        mixer_config: per mixer name, the settings of that mixer, named as in its own architecture's config
            (``{"mamba": {"state_size": 16}, "attention": {"num_attention_heads": 4, "num_key_value_heads": 2}}``);
            anything left out takes that architecture's default. Each mixer is built as if the layers of its kind
            formed a model of their own: its config's ``num_hidden_layers`` counts them, and its layer index is its
            position among them (RWKV-7's first time mix produces the value residual; depth-dependent inits use it).
        mlp_layers: per layer, whether an MLP follows the mixer (default: every layer, as in Jamba).
        mlp_type: ``"gated"`` (SwiGLU) | ``"standard"``;  intermediate_size: MLP width (default as the
            Transformer's);  hidden_act, mlp_bias: the MLP's activation and biases.
        norm_type: ``"rmsnorm"`` | ``"layernorm"``;  norm_eps: its epsilon.
        position_embedding: ``"rope"`` (rotary positions in the attention layers) | ``"none"`` (the recurrent
            layers already know where they are, as in Jamba);  rope_theta: RoPE base.
        dropout: on the embeddings and the residual branches.
    """

    model_type = "seqzoo_hybrid"

    vocab_size: int = 258
    hidden_size: int = 256
    num_hidden_layers: int | None = None
    mixer_types: list[str] | None = None
    mixer_config: dict[str, dict[str, Any]] | None = None
    mlp_layers: list[bool] | None = None
    mlp_type: str = "gated"
    intermediate_size: int | None = None
    hidden_act: str = "silu"
    mlp_bias: bool = False
    norm_type: str = "rmsnorm"
    norm_eps: float = 1e-5
    position_embedding: str = "rope"
    rope_theta: float = 10000.0
    dropout: float = 0.0

    def __post_init__(self, **kwargs: Any) -> None:
        if self.mixer_types is None:
            self.mixer_types = ["mamba", "mamba", "mamba", "attention"] * 2
        if isinstance(self.mixer_types, (list, tuple)):
            self.mixer_types = list(self.mixer_types)
            if self.num_hidden_layers is None:
                self.num_hidden_layers = len(self.mixer_types)
            if self.mlp_layers is None:
                self.mlp_layers = [True] * len(self.mixer_types)
        if isinstance(self.mlp_layers, tuple):  # (a tuple of flags is taken as mixer_types' tuple of names is)
            self.mlp_layers = list(self.mlp_layers)
        if self.mixer_config is None:
            self.mixer_config = {}
        if self.intermediate_size is None:
            self.intermediate_size = self._default_intermediate_size()
        super().__post_init__(**kwargs)

    @classmethod
    def derived_fields(cls) -> list[tuple[str, Any]]:
        return [*super().derived_fields(), ("num_hidden_layers", None), ("mlp_layers", None),
                ("intermediate_size", None)]

    def _default_intermediate_size(self) -> int | None:
        if not isinstance(self.hidden_size, int) or self.hidden_size <= 0:
            return None
        return -(-(8 * self.hidden_size // 3) // 32) * 32 if self.mlp_type == "gated" else 4 * self.hidden_size

    def unread_fields(self) -> list[tuple[str, Any, str]]:
        unread = super().unread_fields()
        if not self.rotary_head_dims():
            unread.append(("rope_theta", 10000.0, "rotary positions in attention layers: position_embedding='rope'"))
        if not any(self.mlp_layers):
            mlp = "the MLPs: mlp_layers"
            unread += [("mlp_type", "gated", mlp), ("intermediate_size", self._default_intermediate_size(), mlp),
                       ("hidden_act", "silu", mlp), ("mlp_bias", False, mlp)]
        return unread

    def architecture_summary(self) -> str:
        return (f"mixer_types={self.mixer_types!r}, position_embedding={self.position_embedding!r}, "
                f"mlp_layers={self.mlp_layers!r}")

    def validate_architecture(self) -> None:
        name = type(self).__name__
        # mixer_types first: the layer count is derived from it, and would otherwise be the field an error names.
        if (not isinstance(self.mixer_types, list) or not self.mixer_types
                or not all(isinstance(kind, str) for kind in self.mixer_types)):
            raise ValueError(f"{name}.mixer_types={self.mixer_types!r} is invalid: expected a non-empty list of "
                             "mixer names, one per layer")
        for idx, kind in enumerate(self.mixer_types):  # (the names first: a misspelt one is the mistake to name)
            try:
                get_mixer(kind)  # unknown names raise with a did-you-mean
            except ValueError as err:
                raise ValueError(f"{name}.mixer_types[{idx}]: {err}") from err
        super().validate_architecture()
        if self.num_hidden_layers != len(self.mixer_types):
            raise ValueError(f"{name}.num_hidden_layers={self.num_hidden_layers} is invalid: mixer_types names "
                             f"{len(self.mixer_types)} layers (num_hidden_layers may be left out: it follows "
                             "mixer_types)")
        if not isinstance(self.mixer_config, dict) or any(
                not isinstance(v, dict) for v in self.mixer_config.values()):
            raise ValueError(f"{name}.mixer_config={self.mixer_config!r} is invalid: expected a mapping from mixer "
                             "name to a mapping of its settings")
        unused = sorted(set(self.mixer_config) - set(self.mixer_types))
        if unused:
            raise ValueError(f"{name}.mixer_config has settings for {unused}, which no layer in mixer_types uses: "
                             "leave them out (with new mixer_types, pass a mixer_config too: a preset's holds the "
                             "settings of its own mixers)")
        if (not isinstance(self.mlp_layers, list) or len(self.mlp_layers) != len(self.mixer_types)
                or any(not isinstance(flag, bool) for flag in self.mlp_layers)):
            raise ValueError(f"{name}.mlp_layers={self.mlp_layers!r} is invalid: expected one true/false per layer "
                             f"({len(self.mixer_types)})")
        require_choice(self, "mlp_type", ("gated", "standard"))
        require_int(self, "intermediate_size", minimum=1)
        require_choice(self, "hidden_act", ACTIVATIONS)
        require_bool(self, "mlp_bias")
        require_choice(self, "norm_type", ("rmsnorm", "layernorm"))
        require_float(self, "norm_eps", minimum=0.0, exclusive_min=True)
        require_choice(self, "position_embedding", ("rope", "none"))
        require_float(self, "rope_theta", minimum=0.0, exclusive_min=True)
        require_plain_rope(self)
        require_probability(self, "dropout")
        for kind in set(self.mixer_types):
            self.mixer_settings(kind)  # each mixer's settings are valid for its architecture
        for kind, head_dim in self.rotary_head_dims().items():
            if head_dim % 2:
                which = "attention" if kind == "attention" else f"{kind!r} mixer's"
                raise ValueError(f"{name}: rotary positions need an even {which} head_dim, got {head_dim} (or "
                                 "position_embedding='none')")

    def rotary_head_dims(self) -> dict[str, int]:
        """The head size of each attention-kind mixer that takes rotary positions, by mixer name: with
        ``position_embedding="rope"``, the built-in attention's and a plugin attention mixer's whose settings name an
        integer ``head_dim`` (each layer is handed the cos/sin of its own head size); {} otherwise. A plugin
        attention mixer without one gets no ``position_embeddings``: it reads ``position_ids`` from its context."""
        if self.position_embedding != "rope":
            return {}
        dims = {}
        for kind in dict.fromkeys(self.mixer_types):
            if get_mixer(kind).cache_kind == ATTENTION:
                head_dim = getattr(self.mixer_settings(kind), "head_dim", None)
                if isinstance(head_dim, int) and not isinstance(head_dim, bool):
                    dims[kind] = head_dim
        return dims

    def mixer_settings(self, kind: str) -> Any:
        """The config the layers of mixer ``kind`` are built from (a config of that mixer's architecture)."""
        spec = get_mixer(kind)
        shared = {"vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
                  "num_hidden_layers": self.mixer_types.count(kind), "initializer_range": self.initializer_range,
                  "tie_word_embeddings": False}
        if self.position_embedding == "none" and spec.config_class is TransformerConfig:
            # No rotary positions here: the attention layers' head_dim need not be even (any non-rope choice of
            # the Transformer's own config skips that check; its positions are not read by the mixer).
            shared["position_embedding"] = "learned"
        settings = self.mixer_config.get(kind, {})
        if kind == "mamba2" and settings.get("rms_norm") is False and "layer_norm_epsilon" in settings:
            # In a hybrid the blocks' norms are the hybrid's (norm_eps): Mamba-2's eps is its gated RMSNorm's alone,
            # which rms_norm=False leaves out (a plain Mamba2Config reads it in its blocks' norms too).
            message = (f"{type(self).__name__}.mixer_config['mamba2'].layer_norm_epsilon="
                       f"{settings['layer_norm_epsilon']!r} is not read: in a hybrid it is the eps of Mamba-2's gated "
                       "RMSNorm alone, which rms_norm=False leaves out (the blocks' norms read norm_eps); leave it out")
            if not loading_config():
                raise ValueError(message)
            logger.warning("%s; loaded as saved", message)
        return mixer_config(spec, shared, settings, type(self).__name__)

    def layer_mixer_types(self) -> list[str]:
        return list(self.mixer_types)

    capability_fields = ("mixer_types", "bidirectional")

    @property
    def cache_layer_kinds(self) -> list[str]:
        return [get_mixer(kind).cache_kind for kind in self.mixer_types]

    def state_bytes_per_sequence(self, dtype_bytes: int = 4) -> int:
        """The fixed-size state of the recurrent layers (attention layers add :meth:`kv_bytes_per_token`)."""
        total = 0
        for kind in set(self.mixer_types):
            spec = get_mixer(kind)
            if spec.cache_kind == RECURRENT:
                total += self.mixer_types.count(kind) * spec.mixer_class.state_bytes(self.mixer_settings(kind),
                                                                                     dtype_bytes)
        return total

    def kv_bytes_per_token(self, dtype_bytes: int = 4) -> int:
        total = 0
        for kind in set(self.mixer_types):
            spec = get_mixer(kind)
            if spec.cache_kind != RECURRENT:
                total += self.mixer_types.count(kind) * spec.mixer_class.kv_bytes_per_token(
                    self.mixer_settings(kind), dtype_bytes)
        return total


__all__ = ["HybridConfig"]
