"""A checkpoint index names the shards beside it: one naming a file outside its folder ("../x.safetensors", an
absolute path) is refused by from_pretrained and the converters' reader, which read whatever file that was."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

import seqzoo
from seqzoo.conversions.checkpoints import read_folder_weights


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A model saved in shards into model/, its first shard moved up beside the folder and the index pointed there."""
    root = tmp_path_factory.mktemp("sharded")
    seqzoo.create_model("gru-tiny", hidden_size=8, num_hidden_layers=1).save_pretrained(
        root / "model", max_shard_size="2KB")
    index_path = root / "model" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    (root / "model" / first).rename(root / first)
    return root, index_path, index, first


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_an_index_naming_a_shard_outside_its_folder_is_refused(sharded, where):
    root, index_path, index, first = sharded
    outside = f"../{first}" if where == "parent" else str(root / first)
    weight_map = {key: outside if name == first else name for key, name in index["weight_map"].items()}
    index_path.write_text(json.dumps({**index, "weight_map": weight_map}))
    message = rf"model\.safetensors\.index\.json' names shard files outside its folder: '{outside}'; an index names"
    with pytest.raises(ValueError, match=message):
        AutoModelForCausalLM.from_pretrained(root / "model")
    with pytest.raises(ValueError, match=message):
        read_folder_weights(root / "model")


def test_an_index_naming_a_shard_the_folder_lacks_is_named(sharded):
    root, index_path, index, first = sharded
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"names shard files that are not in its folder: '{first}'; save or download"):
        AutoModelForCausalLM.from_pretrained(root / "model")


def test_shards_in_a_subfolder_of_the_index_are_read(tmp_path):
    (tmp_path / "shards").mkdir()
    save_file({"a": torch.ones(2)}, tmp_path / "shards" / "a.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"a": "shards/a.safetensors"}}))
    assert torch.equal(read_folder_weights(tmp_path)["a"], torch.ones(2))


def test_an_index_naming_a_tensor_twice_is_refused(sharded):
    """transformers read the tensor from the shard named last."""
    root, index_path, index, first = sharded
    (root / first).rename(root / "model" / first)
    try:
        key, name = next(iter(index["weight_map"].items()))
        text = json.dumps(index)
        index_path.write_text(text.replace(f'"{key}": "{name}"', f'"{key}": "{first}", "{key}": "{name}"', 1))
        with pytest.raises(ValueError, match=rf"index\.json' is damaged \(key '{key}' is given twice in one object\)"):
            AutoModelForCausalLM.from_pretrained(root / "model")
    finally:
        (root / "model" / first).rename(root / first)
