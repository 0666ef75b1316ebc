"""Reading a converter's source from the Hub: the files a repository id stands for, downloaded once into the Hub
cache (``snapshot_download``), weights in the format and files transformers itself would read."""

from __future__ import annotations

import json
from pathlib import Path


def download(repo_id: str) -> Path:
    from huggingface_hub import HfApi, snapshot_download

    # (*.py: a tokenizer with code of its own names its module in tokenizer_config.json's auto_map, and the converted
    # folder carries it as a local folder's conversion does; nothing here runs it)
    patterns = ["*.json", "*.txt", "*.model", "*.jinja", "*.py"]
    try:
        files = HfApi().list_repo_files(repo_id)
    except Exception:  # (offline, or not a repository: snapshot_download says which below)
        files = None
    patterns += ["*.safetensors", "*.bin"] if files is None else _weight_files(repo_id, files)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:
        raise ValueError(f"{repo_id!r} is neither a local folder nor a downloadable Hub repo: {err}") from err


def _weight_files(repo_id: str, files: list[str]) -> list[str]:
    """Which weight files of a Hub repository holding ``files`` to download: those transformers reads -- the shards
    ``model.safetensors.index.json`` names, else ``model.safetensors`` -- and ``pytorch_model*.bin`` only where it
    has no safetensors (gpt2 and the Llama-2 -hf repositories hold both formats). A repository may hold more:
    Mistral's keep a copy of the weights in Mistral's own layout (``consolidated.safetensors``), which doubled the
    download, and beside a single ``model.safetensors`` made the conversion fail on its tensors."""
    from huggingface_hub import hf_hub_download

    if "model.safetensors.index.json" in files:
        try:
            weight_map = json.loads(Path(hf_hub_download(repo_id, "model.safetensors.index.json")).read_bytes())
            shards = sorted(set(weight_map["weight_map"].values()))
        except Exception:  # (unreadable: every safetensors file comes, and read_folder_weights names the index)
            return ["*.safetensors"]
        return shards if all(isinstance(shard, str) for shard in shards) else ["*.safetensors"]
    if "model.safetensors" in files:
        return ["model.safetensors"]
    return ["*.safetensors"] if any(name.endswith(".safetensors") for name in files) else ["*.bin"]
