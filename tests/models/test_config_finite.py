"""Config validation refuses NaN and infinity in every float field of every architecture -- given as an argument
or read from a config.json -- and still takes infinity where it means something (Mamba-2's time_step_limit high)."""

from __future__ import annotations

import json
import math
import re

import pytest

import seqzoo
from seqzoo.registry import architecture_for_model_type
from tests.conftest import FAMILIES, tiny_config


def float_fields():
    for family, preset in sorted(FAMILIES.items()):
        config = tiny_config(preset)
        for name, value in sorted(config.to_dict().items()):
            if isinstance(value, float):
                yield pytest.param(preset, name, id=f"{family}.{name}")


def test_every_float_field_is_covered():
    # The sweep below must reach the fields issue 11 found unchecked.
    names = {param.values[1] for param in float_fields()}
    assert {"initializer_range", "time_step_max", "time_step_floor", "output_init_gain", "forget_bias",
            "layer_norm_eps", "layer_norm_epsilon", "rope_theta", "dropout"} <= names


@pytest.mark.parametrize("preset,name", list(float_fields()))
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_float_is_refused(preset, name, value):
    with pytest.raises(ValueError, match=rf"\.{name}={value!r} is invalid"):
        tiny_config(preset, **{name: value})


@pytest.mark.parametrize("preset,name", list(float_fields()))
@pytest.mark.parametrize("value", [1e39, -1e39, 1e-50, -1e-50])
def test_a_float_that_float32_cannot_hold_is_refused(preset, name, value):
    """Finite in Python, not in the float32 the weights are made in: 1e39 gave inf weights (NaN logits) or a torch
    error naming no field; 1e-50 became 0 (Mamba's time_step_min: a -inf bias)."""
    with pytest.raises(ValueError, match=re.escape(f".{name}={value!r} is invalid: expected 0 or a magnitude float32 "
                                                   "holds")):
        tiny_config(preset, **{name: value})


@pytest.mark.parametrize("preset,name", list(float_fields())[:3] + [("mamba-tiny", "time_step_max")])
def test_config_json_with_infinity_is_refused(tmp_path, preset, name):
    config = tiny_config(preset)
    config.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    values[name] = math.inf
    (tmp_path / "config.json").write_text(json.dumps(values))  # Python's json writes Infinity
    cls = architecture_for_model_type(config.model_type).config_class
    with pytest.raises(ValueError, match=rf"\.{name}=inf is invalid: expected a finite number"):
        cls.from_pretrained(tmp_path)


def test_mamba2_time_step_limit_takes_infinity_only_as_its_upper_end():
    assert tiny_config("mamba2-tiny", time_step_limit=(0.0, math.inf)).time_step_limit == (0.0, math.inf)
    with pytest.raises(ValueError, match=r"time_step_limit=\(inf, inf\) is invalid.*low finite"):
        tiny_config("mamba2-tiny", time_step_limit=(math.inf, math.inf))
    with pytest.raises(ValueError, match="time_step_limit"):
        tiny_config("mamba2-tiny", time_step_limit=(0.0, math.nan))


def test_create_model_refuses_infinite_init():
    with pytest.raises(ValueError, match=r"initializer_range=inf is invalid: expected a finite number"):
        seqzoo.create_model("transformer-tiny", initializer_range=float("inf"))
