"""What a load lets through without the checkpoint's values starts as a new model's would, and output_loading_info
says so: a mixer's tensor mis-shaped under ``ignore_mismatched_sizes=True`` (Mamba's convolution was left as the
loader's uninitialised memory, refused as the checkpoint's NaN), a classic LM's top layer given fresh values by a
lenient load (at the mixer's scale, not the smaller one a new model's top layer starts at), and a head started anew
on another head's checkpoint (reported as loaded)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

import seqzoo


@pytest.mark.parametrize("preset", ["mamba-tiny", "mamba2-tiny"])
def test_a_mixers_misshaped_tensor_gets_fresh_values_under_ignore_mismatched_sizes(preset, tmp_path):
    saved = seqzoo.create_model(preset)
    saved.save_pretrained(tmp_path)
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, conv_kernel=3, ignore_mismatched_sizes=True,
                                                        output_loading_info=True)
    assert {key for key, *_ in info["mismatched_keys"]} == {f"model.layers.{i}.mixer.conv1d.weight" for i in (0, 1)}
    for layer, old in zip(loaded.model.layers, saved.model.layers):
        weight = layer.mixer.conv1d.weight  # (channels, 1, 3): torch's Conv1d bound, 1 / sqrt(fan_in = 3)
        assert weight.isfinite().all() and weight.abs().max() <= 1 / math.sqrt(3) and weight.std() > 0.1
        assert torch.equal(layer.mixer.in_proj.weight, old.mixer.in_proj.weight)  # the rest is the checkpoint's


@pytest.mark.parametrize("how", [{"strict": False}, {"ignore_mismatched_sizes": True}])
def test_a_classic_top_layer_given_fresh_values_starts_as_a_new_models(how, tmp_path):
    seqzoo.create_model("lstm-tiny").save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, hidden_size=48, **how)
    top = loaded.model.layers[-1].weight_ih  # a new tied model's top layer: uniform within 1 / hidden_size**1.5
    assert top.abs().max() <= 1 / 48**1.5 and top.std() > 0


def test_a_head_started_anew_on_another_heads_checkpoint_is_reported_missing(tmp_path):
    saved = seqzoo.create_model("gru-tiny", task="sequence-classification", num_labels=3)
    saved.save_pretrained(tmp_path)
    loaded, info = AutoModelForTokenClassification.from_pretrained(tmp_path, ignore_mismatched_sizes=True,
                                                                   output_loading_info=True)
    assert not torch.equal(loaded.score.weight, saved.score.weight)
    assert "score.weight" in info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]

