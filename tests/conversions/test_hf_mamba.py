"""Parity of the hf-mamba converter: tiny random transformers Mamba / Mamba-2 models, built here (no download)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from transformers import Mamba2Config as HFMamba2Config
from transformers import Mamba2ForCausalLM as HFMamba2ForCausalLM
from transformers import MambaConfig as HFMambaConfig
from transformers import MambaForCausalLM as HFMambaForCausalLM

import seqzoo
from seqzoo.cli import main as seqzoo_main
from seqzoo.conversions.hf_mamba import convert_hf_mamba

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def hf_mamba(**overrides):
    torch.manual_seed(0)
    config = HFMambaConfig(**{**SMALL, "state_size": 8, "conv_kernel": 3, **overrides})
    return HFMambaForCausalLM(config).eval()


def hf_mamba2(**overrides):
    torch.manual_seed(0)
    # 4 heads of 16 in 2 groups; chunk_size 4 makes transformers' torch path run several chunks on 11 tokens.
    config = HFMamba2Config(**{**SMALL, "state_size": 8, "num_heads": 4, "head_dim": 16, "n_groups": 2,
                               "chunk_size": 4, "tie_word_embeddings": False, **overrides})
    model = HFMamba2ForCausalLM(config).eval()
    with torch.no_grad():  # transformers inits the gated norm to ones; make it matter
        for layer in model.backbone.layers:
            layer.mixer.norm.weight.uniform_(0.5, 1.5)
    return model


SOURCES = {"mamba": hf_mamba, "mamba2": hf_mamba2}
IDS = torch.tensor([[5, 17, 33, 8, 61, 12, 40, 3, 77, 44, 21], [9, 3, 77, 44, 21, 6, 90, 13, 50, 51, 52]])


def greedy(model, ids, **kwargs):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                          pad_token_id=0, **kwargs)


@pytest.mark.parametrize("arch", sorted(SOURCES))
def test_converted_model_matches_transformers(arch):
    source = SOURCES[arch]()
    model = convert_hf_mamba(source)
    assert type(model) is seqzoo.get_architecture(arch).causal_lm_class
    with torch.no_grad():
        expected = source(IDS).logits
        actual = model(IDS).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    # Decoding from the cache (seqzoo) vs transformers' own cached generation.
    assert torch.equal(greedy(model, IDS), greedy(source, IDS))


@pytest.mark.parametrize("field, value", [("norm_before_gate", True), ("rms_norm", False)])
def test_mamba2_norm_fields_that_transformers_ignores_convert_as_transformers_computes(field, value, caplog):
    # Mamba-Codestral's config.json says norm_before_gate: true, which transformers' Mamba2 never reads: its logits
    # are those of norm(y * silu(z)), and so must the converted model's be.
    source = hf_mamba2()
    setattr(source.config, field, value)
    model = convert_hf_mamba(source)
    assert (model.config.norm_before_gate, model.config.rms_norm) == (False, True)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, source(IDS).logits, atol=1e-4, rtol=1e-4)
    assert f"source config sets {field}={value!r}, which transformers' Mamba2ForCausalLM ignores" in caplog.text


@pytest.mark.parametrize("arch", sorted(SOURCES))
def test_convert_folder_from_cli(arch, tmp_path):
    source = SOURCES[arch]()
    source.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    assert seqzoo_main(["convert", "hf-mamba", str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert loaded.config.model_type == f"seqzoo_{arch}"
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, source(IDS).logits, atol=1e-4, rtol=1e-4)


def test_config_fields_carry_over():
    source = hf_mamba(time_step_rank=3, expand=3, use_bias=True, residual_in_fp32=False, time_step_scale=0.5)
    config = convert_hf_mamba(source).config
    assert (config.time_step_rank, config.expand, config.use_bias, config.residual_in_fp32) == (3, 3, True, False)
    assert config.time_step_scale == 0.5  # (the dt init's scale: a model trained on from the conversion uses it)
    source2 = hf_mamba2(time_step_limit=(0.01, 0.5))
    config2 = convert_hf_mamba(source2).config
    assert config2.time_step_limit == (0.01, 0.5) and config2.n_groups == 2 and config2.chunk_size == 4


@pytest.mark.parametrize("overrides, message", [
    (dict(hidden_act="gelu"), r"hidden_act='gelu'; seqzoo's Mamba mixers support only 'silu'"),
    (dict(intermediate_size=100), r"intermediate_size=100, but seqzoo derives it as expand \* hidden_size = 64"),
], ids=["activation", "inner-width"])
def test_config_fields_seqzoo_does_not_compute_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        convert_hf_mamba(hf_mamba(**overrides))


def test_a_token_id_outside_the_vocabulary_is_dropped_with_a_warning(caplog):
    # As the llama / gpt2 / mamba-ssm converters do (it was refused outright, by the seqzoo config's check).
    with caplog.at_level("WARNING", logger="seqzoo"):
        config = convert_hf_mamba(hf_mamba(eos_token_id=150)).config
    assert config.eos_token_id is None and config.bos_token_id == 1 and "eos_token_id" in caplog.text


def test_stray_weight_files_holding_the_same_tensors_are_refused(tmp_path):
    # transformers reads model.safetensors alone; merging every *.safetensors let the file sorting last win.
    hf_mamba().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: torch.zeros_like(v) for k, v in weights.items()}, tmp_path / "model_init.safetensors")
    with pytest.raises(ValueError, match="in both 'model.safetensors' and 'model_init.safetensors'.*index"):
        convert_hf_mamba(tmp_path)


def test_wrong_architecture_is_named(tmp_path):
    raw = tmp_path / "raw"  # mamba_ssm's own config.json: no model_type
    raw.mkdir()
    (raw / "config.json").write_text(json.dumps({"d_model": 32, "n_layer": 2, "vocab_size": 99, "ssm_cfg": {}}))
    with pytest.raises(ValueError, match="a raw mamba_ssm checkpoint, which `seqzoo convert mamba-ssm` converts"):
        convert_hf_mamba(raw)
    seqzoo.create_model("lstm-tiny").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'seqzoo_lstm'.*'mamba'"):
        convert_hf_mamba(tmp_path)
    with pytest.raises(ValueError, match="seqzoo_lstm"):
        convert_hf_mamba(seqzoo.create_model("lstm-tiny"))


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    hf_mamba().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["backbone.layers.1.mixer.A_log"]
    weights["backbone.layers.0.mixer.D"] = torch.ones(5)
    weights["backbone.layers.0.mixer.extra"] = torch.ones(2)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing tensors model\.layers\.1\.mixer\.A_log") as err:
        convert_hf_mamba(tmp_path)
    assert "model.layers.0.mixer.D (source (5,), expected (64,))" in str(err.value)
    assert "unexpected tensors model.layers.0.mixer.extra;" in str(err.value)


def test_folder_without_weights_or_config(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        convert_hf_mamba(tmp_path)
    hf_mamba().config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds no weights"):
        convert_hf_mamba(tmp_path)
