"""Mamba (Gu & Dao 2023) configuration: selective state-space layers, field names as in transformers' MambaConfig."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from seqzoo.models.configuration_utils import (
    SeqzooConfig,
    require_bool,
    require_choice,
    require_float,
    require_int,
)


class MambaConfig(SeqzooConfig):
    r"""
    Mamba language model: embedding -> [RMSNorm -> selective-scan mixer, residual] x N -> RMSNorm -> head.

    Args:
        state_size: SSM state size N per channel.
        expand: inner width factor; the mixer works on ``expand * hidden_size`` channels.
        conv_kernel: width K of the causal depthwise convolution before the scan.
        time_step_rank: rank of the low-rank time-step projection; ``"auto"`` = ceil(hidden_size / 16), resolved
            to an integer when the config is built (as transformers does).
        use_conv_bias: give the convolution a bias.
        use_bias: give ``in_proj`` / ``out_proj`` a bias.
        time_step_min, time_step_max: range of the initial time steps (log-uniform).
        time_step_floor: smallest initial time step.
        time_step_init_scheme: ``"random"`` (uniform) or ``"constant"`` init of the time-step projection weight.
        time_step_scale: scale of that init (std = time_step_rank**-0.5 * time_step_scale).
        residual_in_fp32: keep the residual stream in float32 when the model runs in lower precision.
        layer_norm_epsilon: epsilon of the RMSNorms.
        rescale_prenorm_residual: scale the init of ``out_proj`` by 1/sqrt(num_hidden_layers) (GPT-2 scheme).
        initializer_range: std of the normal init of the token embedding.
    """

    model_type = "seqzoo_mamba"
    mixer_type: ClassVar[str] = "mamba"
    supports_bidirectional: ClassVar[bool] = True
    # Size-derived fields a test resets when it shrinks a preset (see tests/conftest.py).

    hidden_size: int = 256
    num_hidden_layers: int = 4
    state_size: int = 16
    expand: int = 2
    conv_kernel: int = 4
    time_step_rank: int | str = "auto"
    use_conv_bias: bool = True
    use_bias: bool = False
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_init_scheme: str = "random"
    time_step_scale: float = 1.0
    residual_in_fp32: bool = True
    layer_norm_epsilon: float = 1e-5
    rescale_prenorm_residual: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        if self.time_step_rank == "auto" and _positive_int(self.hidden_size):
            self.time_step_rank = math.ceil(self.hidden_size / 16)
        super().__post_init__(**kwargs)

    @classmethod
    def derived_fields(cls) -> list[tuple[str, Any]]:
        return [*super().derived_fields(), ("time_step_rank", "auto")]

    def validate_architecture(self) -> None:
        super().validate_architecture()
        require_int(self, "state_size", minimum=1)
        require_int(self, "expand", minimum=1)
        require_int(self, "conv_kernel", minimum=1)
        require_int(self, "time_step_rank", minimum=1)
        require_bool(self, "use_conv_bias")
        require_bool(self, "use_bias")
        require_float(self, "time_step_min", minimum=0.0, exclusive_min=True)
        require_float(self, "time_step_max", minimum=0.0, exclusive_min=True)
        require_float(self, "time_step_floor", minimum=0.0)
        if self.time_step_min > self.time_step_max:
            raise ValueError(
                f"MambaConfig.time_step_min={self.time_step_min!r} is invalid: must be <= "
                f"time_step_max={self.time_step_max!r}"
            )
        require_choice(self, "time_step_init_scheme", ("random", "constant"))
        require_float(self, "time_step_scale", minimum=0.0, exclusive_min=True)
        require_bool(self, "residual_in_fp32")
        require_float(self, "layer_norm_epsilon", minimum=0.0, exclusive_min=True)
        require_bool(self, "rescale_prenorm_residual")

    @property
    def intermediate_size(self) -> int:
        return self.expand * self.hidden_size

    def state_bytes_per_sequence(self, dtype_bytes: int = 4) -> int:
        from seqzoo.layers.mamba import MambaMixer

        return self.num_hidden_layers * MambaMixer.state_bytes(self, dtype_bytes)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


__all__ = ["MambaConfig"]
