"""A weight file or index that is there but no file (a link to nothing, as a Hub cache's snapshot copied without its
blobs leaves; a folder) is refused by name: transformers passed over it as if absent, and loaded the pickled weights
of an older save beside it without a word."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import seqzoo


def _tiny():
    return seqzoo.create_model("gru-tiny", hidden_size=8, num_hidden_layers=1)


@pytest.mark.parametrize("damage", ["link", "folder"])
@pytest.mark.parametrize("name", ["model.safetensors", "model.safetensors.index.json"])
def test_a_weight_file_that_is_no_file_is_refused_not_passed_over(tmp_path, damage, name):
    _tiny().save_pretrained(tmp_path)
    torch.save(_tiny().state_dict(), tmp_path / "pytorch_model.bin")  # an older save's weights, left beside
    (tmp_path / "model.safetensors").unlink()
    if damage == "link":
        (tmp_path / name).symlink_to("../blobs/gone")
    else:
        (tmp_path / name).mkdir()
    message = {"link": r"\(a link to '../blobs/gone', which does not exist\)",
               "folder": r"\(a folder, not a file\)"}[damage]
    with pytest.raises(ValueError, match=rf"{name}' is damaged {message}; transformers would pass over it"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=False)  # (the pickle asked for: read alone)


def test_a_file_given_for_the_models_folder_is_named(tmp_path):
    """transformers read the weights file as a config.json ("It looks like the config file at ... is not a valid
    JSON file")."""
    _tiny().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"GRUForCausalLM.from_pretrained: '.*model\.safetensors' is a file; give the "
                                         r"folder that holds the model's config\.json and weights"):
        seqzoo.GRUForCausalLM.from_pretrained(tmp_path / "model.safetensors")


def test_a_file_given_for_the_tokenizers_folder_is_named(tmp_path):
    """transformers took it for a Hub id ("Repo id must be in the form 'repo_name' or 'namespace/repo_name'")."""
    from seqzoo.tokenizer import load_tokenizer

    seqzoo.byte_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"load_tokenizer: '.*tokenizer\.json' is a file; give the folder that holds"):
        load_tokenizer(tmp_path / "tokenizer.json")
