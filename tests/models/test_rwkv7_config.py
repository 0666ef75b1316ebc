"""RWKV7Config: x070 defaults derived from the hidden size, and bad values rejected with a message that names the
field, the value and what is allowed."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

import seqzoo  # noqa: F401  (registers the architectures)
from seqzoo import HybridConfig
from seqzoo.models.rwkv7 import RWKV7Config


def test_defaults_follow_the_x070_formulas():
    # RWKV-x070-World-0.1B (n_embd 768): D_DECAY_LORA 64, D_AAA_LORA 64, D_MV_LORA 32, D_GATE_LORA 128, ffn 3072.
    config = RWKV7Config(hidden_size=768, num_hidden_layers=12)
    assert (config.decay_low_rank_dim, config.a_low_rank_dim, config.v_low_rank_dim, config.gate_low_rank_dim) == (
        64, 64, 32, 128)
    assert config.intermediate_size == 3072 and config.head_size == 64 and config.num_heads == 12
    assert config.group_norm_eps == 64e-5 and config.layer_norm_eps == 1e-5
    # 1.5B (n_embd 2048): 96, 96, 64, 256.
    big = RWKV7Config(hidden_size=2048)
    assert (big.decay_low_rank_dim, big.a_low_rank_dim, big.v_low_rank_dim, big.gate_low_rank_dim) == (96, 96, 64, 256)
    # Explicit values win over the formulas.
    assert RWKV7Config(hidden_size=768, gate_low_rank_dim=7).gate_low_rank_dim == 7


def test_state_bytes_formula():
    config = RWKV7Config(hidden_size=128, num_hidden_layers=3, head_size=32)
    # per layer: two shift vectors in the model dtype + 4 heads of 32 x 32 float32 WKV matrices
    assert config.state_bytes_per_sequence(4) == 3 * (2 * 128 * 4 + 4 * 32 * 32 * 4)
    assert config.state_bytes_per_sequence(2) == 3 * (2 * 128 * 2 + 4 * 32 * 32 * 4)
    assert config.kv_bytes_per_token() == 0


def test_round_trips_through_auto_config(tmp_path):
    config = RWKV7Config(hidden_size=96, num_hidden_layers=2, head_size=32, v_low_rank_dim=8)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is RWKV7Config and loaded.to_diff_dict() == config.to_diff_dict()


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(hidden_size=100), r"head_size=64 is invalid: it must divide hidden_size=100"),
        (dict(hidden_size=64, head_size=24), r"head_size=24 is invalid: it must divide hidden_size=64"),
        (dict(head_size=0), r"head_size=0 is invalid: must be >= 2"),
        (dict(hidden_size=4, head_size=1), r"head_size=1 is invalid: must be >= 2 \(ln_x, the per-head GroupNorm"),
        (dict(head_size=16.0), r"head_size=16.0 is invalid: expected an integer"),
        (dict(hidden_size=0), r"hidden_size=0 is invalid: must be >= 1"),
        (dict(hidden_size="256"), r"hidden_size='256' is invalid: expected an integer"),
        (dict(num_hidden_layers=0), r"num_hidden_layers=0 is invalid: must be >= 1"),
        (dict(intermediate_size=-4), r"intermediate_size=-4 is invalid: must be >= 1"),
        (dict(decay_low_rank_dim=0), r"decay_low_rank_dim=0 is invalid: must be >= 1"),
        (dict(a_low_rank_dim=2.5), r"a_low_rank_dim=2.5 is invalid: expected an integer"),
        (dict(v_low_rank_dim=True), r"v_low_rank_dim=True is invalid: expected an integer"),
        (dict(gate_low_rank_dim=-1), r"gate_low_rank_dim=-1 is invalid: must be >= 1"),
        (dict(layer_norm_eps=0.0), r"layer_norm_eps=0.0 is invalid: must be > 0.0"),
        (dict(group_norm_eps=-1e-5), r"group_norm_eps=-1e-05 is invalid: must be > 0.0"),
        (dict(group_norm_eps="64e-5"), r"group_norm_eps='64e-5' is invalid: expected a number"),
        (dict(output_init_gain=-0.1), r"output_init_gain=-0.1 is invalid: must be >= 0.0"),
        (dict(vocab_size=258, pad_token_id=258), r"pad_token_id=258 is invalid: token ids must be integers in \[0"),
        (dict(tie_word_embeddings="no"), r"tie_word_embeddings='no' is invalid: expected true or false"),
    ],
)
def test_bad_values_raise_naming_field_value_and_rule(values, message):
    with pytest.raises(ValueError, match=r"RWKV7Config\." + message):
        RWKV7Config(**values)


def test_bad_values_in_a_config_json_raise_on_load(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "seqzoo_rwkv7", "hidden_size": 96, "head_size": 64}')
    with pytest.raises(ValueError, match="head_size=64 is invalid: it must divide hidden_size=96"):
        AutoConfig.from_pretrained(tmp_path)


def test_a_head_of_one_channel_is_refused_in_a_hybrids_rwkv7_layers_too():
    # ln_x normalised a one-channel head to 0 (the WKV state never reached the output), and a one-token forward of
    # one row failed inside torch's group_norm ('Expected more than 1 value per channel when training')
    with pytest.raises(ValueError, match=r"mixer_config\['rwkv7'\]: RWKV7Config\.head_size=1 is invalid: must be >= 2"):
        HybridConfig(hidden_size=4, mixer_types=["rwkv7"], mixer_config={"rwkv7": {"head_size": 1}})
