"""Fields given beside a saved config (``from_pretrained(folder, variant="gpt2")``): what the file holds at the value
its own fields derive is derived again from the given ones, as a config built with them derives it; what the file
set otherwise stays, as a field set by hand does. (transformers sets the keywords on the config after building it
from the file: the derived fields kept the file's architecture.)"""

from __future__ import annotations

import pytest
from transformers import AutoConfig

import seqzoo
from tests.conftest import tiny_config

CASES = [
    # (preset, keywords, the fields that follow them)
    ("transformer-tiny", {"variant": "gpt2"}, ("position_embedding", "norm_type", "mlp_type", "hidden_act",
                                               "attention_bias", "layer_norm_eps", "intermediate_size")),
    ("transformer-tiny", {"hidden_size": 128}, ("head_dim", "intermediate_size")),
    ("hybrid-tiny", {"mlp_type": "standard"}, ("intermediate_size",)),
    ("hybrid-tiny", {"mixer_types": ["mamba", "attention", "mamba"],
                     "mixer_config": {"mamba": {"state_size": 4}}}, ("num_hidden_layers", "mlp_layers")),
    ("lstm-tiny", {"bidirectional": True}, ("classifier_pooling",)),
    ("lstm-tiny", {"hidden_size": 48}, ("embedding_size",)),
    ("mamba-tiny", {"hidden_size": 128}, ("time_step_rank",)),
    ("mamba2-tiny", {"expand": 4}, ("num_heads",)),
    ("rwkv7-tiny", {"hidden_size": 128, "head_size": 32}, ("intermediate_size", "decay_low_rank_dim")),
    ("seq2seq-sutskever-tiny", {"attention": "luong-dot"}, ("input_feeding",)),
    ("seq2seq-bahdanau-tiny", {"bos_token_id": 1}, ("decoder_start_token_id",)),
    ("seq2seq-bahdanau-tiny", {"hidden_size": 96}, ("embedding_size", "attention_size")),
    ("seq2seq-transformer-tiny", {"hidden_size": 96}, ("embedding_size", "intermediate_size", "initializer_range")),
]


@pytest.mark.parametrize("preset, given, derived", CASES, ids=[f"{c[0]}-{'-'.join(c[1])}" for c in CASES])
def test_fields_given_beside_a_saved_config_derive_what_the_file_derived(tmp_path, preset, given, derived):
    seqzoo.get_config(preset).save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path, **given)
    built = seqzoo.get_config(preset, **given)
    changed = [name for name in derived if getattr(built, name) != getattr(seqzoo.get_config(preset), name)]
    assert changed, "the case must move a derived field"
    assert {name: getattr(loaded, name) for name in derived} == {name: getattr(built, name) for name in derived}


def test_a_field_the_file_set_by_hand_stays_when_another_is_given(tmp_path):
    """Grouped-query attention saved with 2 key/value heads keeps them when the heads are given; MHA's follow."""
    tiny_config("transformer-tiny", num_attention_heads=4, num_key_value_heads=2).save_pretrained(tmp_path / "gqa")
    assert AutoConfig.from_pretrained(tmp_path / "gqa", num_attention_heads=8).num_key_value_heads == 2
    tiny_config("transformer-tiny", num_attention_heads=4, num_key_value_heads=None).save_pretrained(tmp_path / "mha")
    assert AutoConfig.from_pretrained(tmp_path / "mha", num_attention_heads=8).num_key_value_heads == 8
    # a field given beside them is the user's, not derived
    loaded = AutoConfig.from_pretrained(tmp_path / "mha", variant="gpt2", position_embedding="rope")
    assert (loaded.position_embedding, loaded.norm_type) == ("rope", "layernorm")


def test_a_weights_variant_given_to_the_auto_classes_reaches_a_transformers_loading(tmp_path):
    """TransformerConfig has a field named variant, and the Auto classes hand every keyword to the config first:
    save_pretrained(variant="v1") loaded with TransformerForCausalLM but not with AutoModelForCausalLM, whose config
    refused 'v1' as an architecture."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    model = seqzoo.create_model("transformer-tiny").eval()
    model.save_pretrained(tmp_path, variant="v1")
    ids = torch.tensor([[5, 6, 7]])
    for loader in (AutoModelForCausalLM, AutoModelForSequenceClassification):
        loaded = loader.from_pretrained(tmp_path, variant="v1")
        assert loaded.config.variant == "llama"
    assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path, variant="v1")(ids).logits, model(ids).logits)
    # a name that is both is the architecture's, as it always was (through transformers' public config API too)
    config, unused = AutoConfig.from_pretrained(tmp_path, variant="gpt2", return_unused_kwargs=True)
    assert (config.variant, config.position_embedding, unused) == ("gpt2", "learned", {})
    with pytest.raises(ValueError, match=r"variant='v1' is invalid: allowed values are 'vaswani', 'gpt2', 'llama'; "
                                         r"for the weights saved with variant='v1'"):
        AutoConfig.from_pretrained(tmp_path, variant="v1")
    assert AutoConfig.from_pretrained(tmp_path, variant="gpt2").position_embedding == "learned"
