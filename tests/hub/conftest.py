"""Shared fixtures for the Hub tests: one tiny exported checkpoint per registered architecture, a standard Hub cache
holding them as ``seqzoo-test/tiny-<arch>``, and what seqzoo itself generates from each (the reference)."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import seqzoo
from seqzoo.cli import save_with_tokenizer
from seqzoo.hub import build_bundle, export_folder
from seqzoo.registry import ModelSpec, architecture_for_model_type, smallest_preset
from tests.conftest import python_path, tiny_config

# The language models; the encoder-decoders' bundles are tested in tests/seq2seq/test_hub.py.
ARCHITECTURES = seqzoo.list_architectures("causal-lm")
NAMESPACE = "seqzoo-test"
PROMPT = "Once upon a time"
NEW_TOKENS = 8
HERE = Path(__file__).resolve().parent
TRAINING_RECORD = {  # shaped like the record `seqzoo train` writes, including keys cards do not show
    "dataset": "roneneldan/TinyStories",
    "tokens_seen": 1_234_567,
    "steps": 300,
    "eval": {"loss": 2.5, "perplexity": 12.18, "accuracy": 0.31,
             "sets": {"validation": {"loss": 2.5, "perplexity": 12.18}, "long": {"loss": 2.75}}},
    "data": {"seq_len": 128, "train_tokens": 900_000},
    "recipe": {"learning_rate": 0.001, "batch_size": 16},
    "run_id": "run-42",
    "grad_health": {"flagged_steps": {}},
}


# A plugin architecture outside seqzoo, written the ways seqzoo code imports: a module object from a package, an
# `import ... as`, a sibling module object, and a lazy import inside a function. Its bundle must cover them all.
TOY_PLUGIN = {
    "__init__.py": "",
    "configuration_toy.py": """
from seqzoo.models.lstm.configuration_lstm import LSTMConfig


class ToyConfig(LSTMConfig):
    model_type = "toyzoo_lstm"
""",
    "helpers.py": """
SIGN = -1.0


def logit_scale(config):
    return 0.5 + 0.0 * config.hidden_size
""",
    "modeling_toy.py": """
import seqzoo.models.modeling_utils as modeling_utils
from seqzoo.models.lstm import modeling_lstm

from . import helpers
from .configuration_toy import ToyConfig


class ToyModel(modeling_lstm.LSTMModel):
    config_class = ToyConfig


class ToyForCausalLM(modeling_lstm.LSTMForCausalLM):
    config_class = ToyConfig
    base_model_class = ToyModel

    def forward(self, *args, **kwargs):
        from toyzoo.helpers import logit_scale

        output = super().forward(*args, **kwargs)
        output.logits = output.logits * logit_scale(self.config) * helpers.SIGN
        return output


assert issubclass(ToyForCausalLM, modeling_utils.SeqzooForCausalLM)
""",
}


def repo_id(arch: str) -> str:
    return f"{NAMESPACE}/tiny-{arch}"


def tiny_byte_model(arch: str, seed: int = 0):
    """A tiny model of ``arch`` whose vocabulary fits seqzoo's byte tokenizer (258 ids)."""
    torch.manual_seed(seed)
    config = tiny_config(smallest_preset(arch), vocab_size=258, pad_token_id=256, bos_token_id=257,
                         eos_token_id=257)
    return architecture_for_model_type(config.model_type).causal_lm_class(config).eval()


def greedy(model, tokenizer) -> tuple[list[int], torch.Tensor]:
    """Greedy continuation of PROMPT and the logits of the prompt's forward pass."""
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
        logits = model(**inputs).logits
    return tokens[0].tolist(), logits[0]


class PerArchitecture(dict):
    """arch -> what ``build(arch)`` made. An architecture whose build failed is left out of iteration and raises
    its error when a test asks for it, so one broken architecture fails only its own tests."""

    def __init__(self, build: Callable[[str], Any], architectures: list[str]) -> None:
        super().__init__()
        self.errors: dict[str, Exception] = {}
        for arch in architectures:
            try:
                self[arch] = build(arch)
            except Exception as err:
                self.errors[arch] = err

    def __missing__(self, arch: str) -> Any:
        if arch in self.errors:
            raise RuntimeError(f"building the test checkpoint of {arch!r} failed") from self.errors[arch]
        raise KeyError(arch)


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory) -> PerArchitecture:
    """arch -> a model folder as `seqzoo new` writes it (the lstm one also carries a training record)."""
    root = tmp_path_factory.mktemp("saved")

    def save(arch: str) -> Path:
        save_with_tokenizer(tiny_byte_model(arch), root / arch)
        if arch == "lstm":
            (root / arch / "seqzoo_training.json").write_text(json.dumps(TRAINING_RECORD))
        return root / arch

    return PerArchitecture(save, ARCHITECTURES)


@pytest.fixture(scope="session")
def exports(saved_models, tmp_path_factory) -> PerArchitecture:
    """arch -> the exported Hub folder of its saved model (folder named after the architecture)."""
    root = tmp_path_factory.mktemp("exports")
    return PerArchitecture(lambda arch: export_folder(saved_models[arch], root / arch, repo_id=repo_id(arch)),
                           ARCHITECTURES)


@pytest.fixture(scope="session")
def reference(exports):
    """arch -> what seqzoo generates from the exported folder, loaded natively (computed once, on demand)."""

    @lru_cache(maxsize=None)
    def compute(arch: str) -> dict:
        folder = exports[arch]
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokens, logits = greedy(model, tokenizer)
        inputs = tokenizer(PROMPT, return_tensors="pt")
        with torch.no_grad():
            long = model.generate(**inputs, max_new_tokens=20, do_sample=False)
        return {"model": model, "tokens": tokens, "logits": logits,
                "text": tokenizer.decode(long[0], skip_special_tokens=True) + "\n"}

    return compute


@pytest.fixture(scope="session")
def toy_plugin(tmp_path_factory):
    """The `toyzoo` plugin package, importable while the session lasts: its ModelSpec (not registered)."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "toyzoo").mkdir()
    for name, text in TOY_PLUGIN.items():
        (root / "toyzoo" / name).write_text(text.lstrip())
    sys.path.insert(0, str(root))
    try:
        modeling = importlib.import_module("toyzoo.modeling_toy")
        yield ModelSpec("toyzoo", modeling.ToyConfig, modeling.ToyModel, modeling.ToyForCausalLM)
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name == "toyzoo" or name.startswith("toyzoo.")]:
            del sys.modules[name]


@pytest.fixture(scope="session")
def toy_export(toy_plugin, tmp_path_factory):
    """(folder, model): a toyzoo checkpoint with its code bundle and auto_map, assembled by hand because the
    plugin is not registered with seqzoo."""
    torch.manual_seed(0)
    config = toy_plugin.config_class(vocab_size=258, hidden_size=32, num_hidden_layers=2, pad_token_id=256,
                                     bos_token_id=257, eos_token_id=257)
    model = toy_plugin.causal_lm_class(config).eval()
    folder = tmp_path_factory.mktemp("toy-export") / "toyzoo"
    save_with_tokenizer(model, folder)
    bundle = build_bundle(toy_plugin)
    bundle.write(folder)
    config_json = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config_json, "auto_map": bundle.auto_map}))
    return folder, model


@pytest.fixture(scope="session")
def hub_cache(exports, tmp_path_factory) -> Path:
    """HF_HOME whose hub cache holds every export as `seqzoo-test/tiny-<arch>` at `main`, laid out as
    huggingface_hub does: models--org--name/refs/main holds the commit, snapshots/<commit>/ the files."""
    home = tmp_path_factory.mktemp("hf-home")
    for arch, folder in exports.items():
        repo = home / "hub" / f"models--{repo_id(arch).replace('/', '--')}"
        commit = hashlib.sha1(arch.encode()).hexdigest()
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
        shutil.copytree(folder, repo / "snapshots" / commit)
    return home


def hub_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess that uses ``home`` as its whole Hugging Face home, offline unless overridden."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"), HF_MODULES_CACHE=str(home / "modules"),
               HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost",
               TRANSFORMERS_VERBOSITY="error", PYTHONPATH=python_path(HERE.parent.parent))
    env.update(extra)
    return env


def run_python(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240,
               python: str = sys.executable) -> subprocess.CompletedProcess:
    result = subprocess.run([python, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result
