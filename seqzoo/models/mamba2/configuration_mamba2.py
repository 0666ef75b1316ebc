"""Mamba-2 (Dao & Gu 2024) configuration: state-space duality (SSD) layers, field names as in transformers'
Mamba2Config (plus mamba_ssm's ``rms_norm`` / ``norm_before_gate``)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from seqzoo.models.configuration_utils import (
    SeqzooConfig,
    require_bool,
    require_float,
    require_int,
)

# How transformers writes a float JSON cannot hold: {"__float__": "Infinity"}.
_FLOAT_TAG = "__float__"
_TAGGED_FLOATS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _decoded_float(value: Any) -> Any:
    """``value``, or the float a transformers tag such as ``{"__float__": "Infinity"}`` stands for."""
    if isinstance(value, dict) and set(value) == {_FLOAT_TAG} and value[_FLOAT_TAG] in _TAGGED_FLOATS:
        return _TAGGED_FLOATS[value[_FLOAT_TAG]]
    return value


class Mamba2Config(SeqzooConfig):
    r"""
    Mamba-2 language model: embedding -> [RMSNorm -> SSD mixer, residual] x N -> RMSNorm -> head.

    The mixer works on ``expand * hidden_size`` inner channels split into ``num_heads`` heads of ``head_dim``
    channels; each head has one scalar decay and an SSM state of ``head_dim x state_size``. B and C are shared by the
    heads of a group (``n_groups`` groups, like grouped-query attention).

    Args:
        state_size: SSM state size N.
        expand: inner width factor.
        head_dim: channels per head P.
        num_heads: heads H; ``None`` = expand * hidden_size // head_dim. H * P must equal expand * hidden_size.
        n_groups: groups of heads sharing B and C; must divide num_heads.
        conv_kernel: width of the causal depthwise convolution over x, B and C.
        use_conv_bias, use_bias: biases of the convolution / of ``in_proj`` and ``out_proj``.
        chunk_size: chunk length of the SSD algorithm (a speed/memory knob; results do not depend on it beyond
            rounding).
        time_step_min, time_step_max, time_step_floor: initial time steps (log-uniform in [min, max], floored).
        time_step_limit: ``[low, high]`` clamp applied to every time step after the softplus.
        rms_norm: apply the gated RMSNorm before ``out_proj`` (else the output is only gated by silu(z)).
        norm_before_gate: with rms_norm, normalise then gate (``norm(y) * silu(z)``) instead of
            ``norm(y * silu(z))`` (the published checkpoints use False).
        residual_in_fp32: keep the residual stream in float32 when the model runs in lower precision.
        layer_norm_epsilon: epsilon of all RMSNorms.
        rescale_prenorm_residual: scale the init of ``out_proj`` by 1/sqrt(num_hidden_layers).
        initializer_range: std of the normal init of the token embedding.
    """

    model_type = "seqzoo_mamba2"
    mixer_type: ClassVar[str] = "mamba2"
    supports_bidirectional: ClassVar[bool] = True
    # Size-derived fields a test resets when it shrinks a preset (see tests/conftest.py).

    hidden_size: int = 256
    num_hidden_layers: int = 4
    state_size: int = 64
    expand: int = 2
    head_dim: int = 64
    num_heads: int | None = None
    n_groups: int = 1
    conv_kernel: int = 4
    use_conv_bias: bool = True
    use_bias: bool = False
    chunk_size: int = 256
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_limit: tuple[float, float] | list[float] = (0.0, math.inf)
    rms_norm: bool = True
    norm_before_gate: bool = False
    residual_in_fp32: bool = True
    layer_norm_epsilon: float = 1e-5
    rescale_prenorm_residual: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        if self.num_heads is None and _positive_int(self.hidden_size) and _positive_int(self.expand) \
                and _positive_int(self.head_dim):
            self.num_heads = self.expand * self.hidden_size // self.head_dim
        if isinstance(self.time_step_limit, (list, tuple)):
            # config.json stores it as a list, and its infinity tagged as transformers writes it, which only
            # transformers' own file reader decodes (Mamba2Config(**json.load(file)) refused the saved value)
            self.time_step_limit = tuple(_decoded_float(value) for value in self.time_step_limit)
        super().__post_init__(**kwargs)

    @classmethod
    def derived_fields(cls) -> list[tuple[str, Any]]:
        return [*super().derived_fields(), ("num_heads", None)]

    def validate_architecture(self) -> None:
        super().validate_architecture()
        require_int(self, "state_size", minimum=1)
        require_int(self, "expand", minimum=1)
        require_int(self, "head_dim", minimum=1)
        require_int(self, "num_heads", minimum=1)
        require_int(self, "n_groups", minimum=1)
        require_int(self, "conv_kernel", minimum=1)
        require_bool(self, "use_conv_bias")
        require_bool(self, "use_bias")
        require_int(self, "chunk_size", minimum=1)
        require_float(self, "time_step_min", minimum=0.0, exclusive_min=True)
        require_float(self, "time_step_max", minimum=0.0, exclusive_min=True)
        require_float(self, "time_step_floor", minimum=0.0)
        require_bool(self, "rms_norm")
        require_bool(self, "norm_before_gate")
        require_bool(self, "residual_in_fp32")
        require_float(self, "layer_norm_epsilon", minimum=0.0, exclusive_min=True)
        require_bool(self, "rescale_prenorm_residual")
        if self.time_step_min > self.time_step_max:
            raise ValueError(
                f"Mamba2Config.time_step_min={self.time_step_min!r} is invalid: must be <= "
                f"time_step_max={self.time_step_max!r}"
            )
        limit = self.time_step_limit
        if (
            not isinstance(limit, (tuple, list)) or len(limit) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v != v for v in limit)
            or not 0.0 <= limit[0] <= limit[1] or not math.isfinite(limit[0])
        ):
            raise ValueError(
                f"Mamba2Config.time_step_limit={limit!r} is invalid: expected [low, high] with 0 <= low <= high, "
                "low finite (high may be infinity)"
            )
        if self.num_heads * self.head_dim != self.intermediate_size:
            raise ValueError(
                f"Mamba2Config: num_heads={self.num_heads} * head_dim={self.head_dim} = "
                f"{self.num_heads * self.head_dim} must equal expand * hidden_size = {self.expand} * "
                f"{self.hidden_size} = {self.intermediate_size}; pick a head_dim dividing {self.intermediate_size} "
                "and leave num_heads unset"
            )
        if self.num_heads % self.n_groups:
            raise ValueError(
                f"Mamba2Config.n_groups={self.n_groups} is invalid: must divide num_heads={self.num_heads}"
            )

    def unread_fields(self) -> list[tuple[str, Any, str]]:
        gate = [] if self.rms_norm else [("norm_before_gate", False, "the gated RMSNorm: rms_norm=True")]
        return [*super().unread_fields(), *gate]

    def architecture_summary(self) -> str:
        return f"{super().architecture_summary()}, rms_norm={self.rms_norm!r}"

    @property
    def intermediate_size(self) -> int:
        return self.expand * self.hidden_size

    @property
    def conv_dim(self) -> int:
        # The convolution runs over x and over every group's B and C.
        return self.intermediate_size + 2 * self.n_groups * self.state_size

    def state_bytes_per_sequence(self, dtype_bytes: int = 4) -> int:
        from seqzoo.layers.mamba2 import Mamba2Mixer

        return self.num_hidden_layers * Mamba2Mixer.state_bytes(self, dtype_bytes)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


__all__ = ["Mamba2Config"]
