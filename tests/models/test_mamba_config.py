"""Every Mamba / Mamba-2 config field is validated: a bad value raises ValueError naming the field."""

from __future__ import annotations

import math

import pytest
import torch

from seqzoo import Mamba2Config, MambaConfig

MAMBA_BAD = [
    ("state_size", 0), ("state_size", 2.5), ("expand", 0), ("expand", -1), ("conv_kernel", 0),
    ("time_step_rank", 0), ("time_step_rank", "big"), ("use_conv_bias", "yes"), ("use_bias", 1),
    ("time_step_min", 0.0), ("time_step_max", -0.1), ("time_step_floor", -1e-4),
    ("time_step_init_scheme", "xavier"), ("time_step_scale", 0.0), ("residual_in_fp32", None),
    ("layer_norm_epsilon", 0.0), ("rescale_prenorm_residual", "no"), ("hidden_size", 0),
    ("num_hidden_layers", 0), ("vocab_size", 0), ("pad_token_id", 258), ("initializer_range", -0.1),
]

MAMBA2_BAD = [
    ("state_size", 0), ("expand", 0), ("head_dim", 0), ("num_heads", 0), ("n_groups", 0), ("conv_kernel", 0),
    ("use_conv_bias", "yes"), ("use_bias", None), ("chunk_size", 0), ("chunk_size", -64),
    ("time_step_min", 0.0), ("time_step_max", 0.0), ("time_step_floor", -1.0),
    ("time_step_limit", (0.5, 0.1)), ("time_step_limit", (-1.0, 1.0)), ("time_step_limit", (0.0,)),
    ("time_step_limit", "wide"), ("time_step_limit", (0.0, math.nan)), ("rms_norm", "yes"),
    ("norm_before_gate", 0), ("residual_in_fp32", "true"), ("layer_norm_epsilon", -1e-5),
    ("rescale_prenorm_residual", None),
]


@pytest.mark.parametrize("field, value", MAMBA_BAD, ids=[f"{f}={v!r}" for f, v in MAMBA_BAD])
def test_mamba_bad_field_raises_naming_it(field, value):
    with pytest.raises(ValueError, match=field):
        MambaConfig(**{field: value})


@pytest.mark.parametrize("field, value", MAMBA2_BAD, ids=[f"{f}={v!r}" for f, v in MAMBA2_BAD])
def test_mamba2_bad_field_raises_naming_it(field, value):
    with pytest.raises(ValueError, match=field):
        Mamba2Config(**{field: value})


def test_time_step_range_must_be_ordered():
    for cls in (MambaConfig, Mamba2Config):
        with pytest.raises(ValueError, match="time_step_min=0.5.*time_step_max=0.1"):
            cls(time_step_min=0.5, time_step_max=0.1)


def test_mamba2_heads_must_tile_the_inner_size():
    with pytest.raises(ValueError, match=r"num_heads=6 \* head_dim=64 = 384 must equal expand \* hidden_size"):
        Mamba2Config(hidden_size=256, num_heads=6, head_dim=64)
    with pytest.raises(ValueError, match="head_dim=48"):
        Mamba2Config(hidden_size=256, head_dim=48)  # 512 is not a multiple of 48
    with pytest.raises(ValueError, match="n_groups=3 is invalid: must divide num_heads=8"):
        Mamba2Config(hidden_size=256, head_dim=64, n_groups=3)


def test_derived_fields():
    config = MambaConfig(hidden_size=100)
    assert config.time_step_rank == 7 and config.intermediate_size == 200  # ceil(100 / 16), as transformers
    config = Mamba2Config(hidden_size=96, expand=2, head_dim=16, n_groups=3, state_size=8)
    assert config.num_heads == 12 and config.conv_dim == 192 + 2 * 3 * 8


def test_state_bytes_per_sequence():
    config = MambaConfig(hidden_size=32, num_hidden_layers=3, state_size=5, conv_kernel=4, expand=2)
    assert config.state_bytes_per_sequence(4) == 3 * (64 * 3 + 64 * 5) * 4
    config = Mamba2Config(hidden_size=32, num_hidden_layers=2, state_size=8, head_dim=16, n_groups=2, conv_kernel=3)
    # The states stay float32 under bfloat16 weights (the card of a bfloat16 checkpoint claimed half of them).
    expected = 2 * ((64 + 2 * 2 * 8) * 2 + 4 * 16 * 8) * 4
    assert config.state_bytes_per_sequence(2) == config.state_bytes_per_sequence(4) == expected


@pytest.mark.parametrize("preset", ["mamba-tiny", "mamba2-tiny", "hybrid-tiny"])
def test_state_bytes_of_a_bfloat16_model_are_what_its_cache_holds(preset):
    import seqzoo
    from seqzoo.models.compat import output_cache

    model = seqzoo.create_model(preset).to(torch.bfloat16).eval()
    with torch.no_grad():
        cache = output_cache(model(input_ids=torch.tensor([[5, 17, 3, 44]]), use_cache=True))
    held = sum(v.numel() * v.element_size() for i in range(len(cache.layer_kinds)) if isinstance(cache.layer(i), dict)
               for v in cache.layer(i).values())
    assert held == model.config.state_bytes_per_sequence(2)


def test_time_step_limit_survives_save_and_load(tmp_path):
    Mamba2Config(time_step_limit=[0.0, math.inf]).save_pretrained(tmp_path)
    assert Mamba2Config.from_pretrained(tmp_path).time_step_limit == (0.0, math.inf)
