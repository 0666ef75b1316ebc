"""``save_pretrained`` / ``from_pretrained`` options: a save into a folder that holds an earlier save leaves nothing of
it that would be loaded instead; options that would be dropped, misspelt or of the wrong type are refused by name."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import tiny_model

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


@pytest.fixture
def models():
    return tiny_model("lstm-tiny", seed=1).eval(), tiny_model("lstm-tiny", seed=2).eval()


def loads_as(folder, model, **kwargs):
    loaded = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    with torch.no_grad():
        return torch.equal(loaded(IDS).logits, model(IDS).logits)


@pytest.mark.parametrize("variant", [None, "v1"])
def test_a_save_replaces_an_earlier_one_of_the_other_form(models, tmp_path, caplog, variant):
    first, second = models
    single = "model.safetensors" if variant is None else "model.v1.safetensors"
    index = "model.safetensors.index.json" if variant is None else "model.safetensors.index.v1.json"
    first.save_pretrained(tmp_path, variant=variant)
    with caplog.at_level(logging.WARNING):
        second.save_pretrained(tmp_path, max_shard_size="20KB", variant=variant)  # (sharded)
    assert not (tmp_path / single).exists() and (tmp_path / index).exists()
    assert f"removed {tmp_path / single}" in caplog.text
    assert loads_as(tmp_path, second, variant=variant)  # (not the earlier single file)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        first.save_pretrained(tmp_path, variant=variant)
    assert (tmp_path / single).exists() and not (tmp_path / index).exists()
    assert not list(tmp_path.glob("model-*-of-*"))  # (transformers removes the shards)
    assert f"removed {tmp_path / index}" in caplog.text
    assert loads_as(tmp_path, first, variant=variant)


def test_a_save_of_the_same_form_or_another_variant_removes_nothing(models, tmp_path, caplog):
    first, second = models
    first.save_pretrained(tmp_path)
    second.save_pretrained(tmp_path, max_shard_size="20KB", variant="v1")
    with caplog.at_level(logging.WARNING):
        second.save_pretrained(tmp_path, max_shard_size="20KB", variant="v1")
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "model.safetensors.index.v1.json").exists()
    assert "removed" not in caplog.text
    assert loads_as(tmp_path, first) and loads_as(tmp_path, second, variant="v1")
    # transformers' clean-up would take the v1 shards with a sharded save without a variant: refused, nothing lost
    for kwargs in ({}, {"max_shard_size": "20KB"}):
        with pytest.raises(ValueError, match="would delete the shards indexed by model.safetensors.index.v1.json "
                                             r"\(model.v1-00001-of-00005.safetensors"):
            first.save_pretrained(tmp_path, **kwargs)
    assert loads_as(tmp_path, first) and loads_as(tmp_path, second, variant="v1")
    first.save_pretrained(tmp_path, variant="v2", max_shard_size="20KB")  # ("model.v2" starts no v1 shard's name)
    assert loads_as(tmp_path, first, variant="v2") and loads_as(tmp_path, second, variant="v1")
    second.save_pretrained(tmp_path / "other", is_main_process=False)  # (only the main process writes or removes)
    assert not (tmp_path / "other" / "model.safetensors").exists()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"max_shard_sise": "20KB"}, TypeError,
     "unknown keyword argument(s) max_shard_sise (did you mean 'max_shard_size'"),
    ({"commit_message": "x"}, TypeError, "it takes is_main_process, state_dict, max_shard_size, variant"),
    ({"safe_serialization": False}, ValueError, "writes safetensors only (safe_serialization=False)"),
    ({"safe_serialization": 0}, ValueError, "safe_serialization=0"),
])
def test_save_options_that_would_be_dropped_are_refused(models, tmp_path, kwargs, error, message):
    pattern = f"LSTMForCausalLM.save_pretrained.*{message}".replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(error, match=pattern):
        models[0].save_pretrained(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


def test_save_options_of_transformers_4_that_change_nothing_are_taken(models, tmp_path, caplog):
    models[0].save_pretrained(tmp_path / "safe", safe_serialization=True)
    assert loads_as(tmp_path / "safe", models[0])
    with caplog.at_level(logging.WARNING):
        models[0].save_pretrained(tmp_path / "accelerate", save_function=torch.save, is_main_process=True)
    assert "save_function is not read by transformers 5" in caplog.text
    assert loads_as(tmp_path / "accelerate", models[0])
    # a tokenizer's options, which transformers' Pipeline.save_pretrained passes to the model's save too
    models[0].save_pretrained(tmp_path / "pipeline", legacy_format=False, filename_prefix="x")
    assert loads_as(tmp_path / "pipeline", models[0])
    with pytest.raises(TypeError, match="save_pretrained: .*multiple values for argument 'is_main_process'"):
        models[0].save_pretrained(tmp_path, True, is_main_process=True)


@pytest.mark.parametrize("name", ["strict", "allow_nonfinite"])
@pytest.mark.parametrize("value", ["false", 1, None])
def test_loading_switches_are_booleans(models, tmp_path, name, value):
    models[0].save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=f"from_pretrained: {name} must be True or False; got {value!r}"):
        AutoModelForCausalLM.from_pretrained(tmp_path, **{name: value})


def test_nonfinite_weights_stay_refused_unless_allowed_by_a_boolean(models, tmp_path):
    with torch.no_grad():
        models[0].lm_head.weight[0, 0] = float("nan")
    models[0].save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="non-finite|NaN"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    AutoModelForCausalLM.from_pretrained(tmp_path, allow_nonfinite=True)


def test_an_unknown_loading_keyword_is_named_with_the_configs_fields(models, tmp_path):
    models[0].save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"LSTMForCausalLM.from_pretrained got unknown keyword argument 'dropuot' "
                                        r"\(did you mean 'dropout'\?\): it is neither a field of LSTMConfig .* "
                                        r"fields are .*hidden_size"):
        AutoModelForCausalLM.from_pretrained(tmp_path, dropuot=0.1)
    assert AutoModelForCausalLM.from_pretrained(tmp_path, dropout=0.1).config.dropout == 0.1


def test_a_file_to_save_into_is_refused_before_anything_is_written(models, tmp_path):
    # transformers logs an error and returns for a path that is a file; the code bundle's write then failed with a
    # bare NotADirectoryError
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(ValueError, match=r"save_pretrained: '.*notes.txt' is a file; give a folder to save into"):
        models[0].save_pretrained(notes)
    assert notes.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
