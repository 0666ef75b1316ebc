"""A published checkpoint loads for anyone: natively where seqzoo is imported, with trust_remote_code=True where
only torch and transformers are installed, from a folder and by repo id from the Hub cache (offline) -- and every
way generates the same tokens as seqzoo itself."""

from __future__ import annotations

import json
import re

import pytest
import torch
from huggingface_hub import constants
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import seqzoo
from seqzoo.cli import main
from tests.hub.conftest import (
    ARCHITECTURES,
    HERE,
    NEW_TOKENS,
    PROMPT,
    greedy,
    hub_env,
    repo_id,
    run_python,
)

SNIPPET = re.compile(r"```python\n(.*?)```", re.DOTALL)


def usage_snippets(folder) -> dict[str, str]:
    """The card's two code blocks: "native" (imports seqzoo) and "remote" (trust_remote_code=True)."""
    blocks = SNIPPET.findall((folder / "README.md").read_text())
    native = [b for b in blocks if "import seqzoo" in b]
    remote = [b for b in blocks if "trust_remote_code=True" in b and "import seqzoo" not in b]
    assert len(native) == 1 and len(remote) == 1, blocks
    return {"native": native[0], "remote": remote[0]}


@pytest.fixture(scope="session")
def without_seqzoo(exports, toy_export, hub_cache, tmp_path_factory) -> dict:
    """One process in which seqzoo cannot be imported loads every architecture's folder and repo id (offline, from
    the Hub cache), runs each card's trust_remote_code snippet, and loads the toyzoo plugin's folder."""
    checkpoints = [{"arch": arch, "sources": [str(folder), repo_id(arch)], "snippet": usage_snippets(folder)["remote"]}
                   for arch, folder in exports.items()]
    checkpoints.append({"arch": "toyzoo", "sources": [str(toy_export[0])]})
    work = tmp_path_factory.mktemp("without-seqzoo")
    (work / "job.json").write_text(json.dumps({"prompt": PROMPT, "new_tokens": NEW_TOKENS,
                                               "checkpoints": checkpoints}))
    run_python([str(HERE / "load_checkpoints.py"), "job.json", "result.json"], env=hub_env(hub_cache), cwd=work)
    return json.loads((work / "result.json").read_text())


@pytest.fixture
def offline_hub(hub_cache, monkeypatch):
    """This process, offline, reading the test Hub cache: what HF_HUB_OFFLINE=1 and HF_HUB_CACHE do (huggingface_hub
    reads both when it is imported, so the test sets its constants as well)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache / "hub"))


def checkpoint_result(results: dict, arch: str) -> dict:
    result = results["checkpoints"][arch]
    assert "error" not in result, f"{arch} failed in the subprocess:\n{result['error']}"
    return result


def assert_same_generation(got: dict, expected: dict) -> None:
    assert list(got["tokens"]) == list(expected["tokens"])
    torch.testing.assert_close(torch.as_tensor(got["logits"]), expected["logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loads_natively_without_trust_remote_code(arch, exports, reference):
    spec = seqzoo.get_architecture(arch)
    config = AutoConfig.from_pretrained(exports[arch])
    assert type(config) is spec.config_class
    assert type(reference(arch)["model"]) is spec.causal_lm_class  # seqzoo's class, not the bundled copy
    assert reference(arch)["tokens"][: len(PROMPT)] == list(PROMPT.encode())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_remote_code_without_seqzoo_matches_seqzoo(arch, without_seqzoo, exports, reference):
    folder = exports[arch]
    assert without_seqzoo["seqzoo_importable"] is False
    result = checkpoint_result(without_seqzoo, arch)
    for source in (str(folder), repo_id(arch)):
        class_path = result[source]["class"]
        assert class_path.startswith("transformers_modules."), class_path  # the bundled code, not seqzoo
        assert class_path.endswith(f"modeling_{seqzoo.get_architecture(arch).model_type}."
                                   f"{seqzoo.get_architecture(arch).causal_lm_class.__name__}")
        assert_same_generation(result[source], reference(arch))
        lenient = result[source]["lenient"]  # bundled code cannot be updated: unknown keywords only warn
        assert lenient["same_logits"] and any("a_future_generate_flag" in w for w in lenient["warnings"]), lenient
        assert "did you mean 'attention_mask'" in lenient["misspelling"], lenient
    assert result["snippet"] == reference(arch)["text"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_repo_id_loads_natively_offline(arch, offline_hub, exports, reference, capsys):
    snippet = usage_snippets(exports[arch])["native"]
    spec = seqzoo.get_architecture(arch)
    model = AutoModelForCausalLM.from_pretrained(repo_id(arch)).eval()
    assert type(model) is spec.causal_lm_class
    tokens, logits = greedy(model, AutoTokenizer.from_pretrained(repo_id(arch)))
    assert_same_generation({"tokens": tokens, "logits": logits}, reference(arch))

    exec(compile(snippet, "README.md usage snippet", "exec"), {})
    assert capsys.readouterr().out == reference(arch)["text"]
    assert main(["generate", repo_id(arch), PROMPT, "--max-new-tokens", "20", "--no-stream"]) == 0
    assert capsys.readouterr().out == reference(arch)["text"]


def test_plugin_architecture_bundle_loads_without_seqzoo(without_seqzoo, toy_export):
    folder, model = toy_export
    result = checkpoint_result(without_seqzoo, "toyzoo")[str(folder)]
    assert result["class"].startswith("transformers_modules.") and result["class"].endswith(
        "modeling_toyzoo_lstm.ToyForCausalLM")
    tokens, logits = greedy(model, AutoTokenizer.from_pretrained(folder))
    assert_same_generation(result, {"tokens": tokens, "logits": logits})


def test_lazy_kernel_backends_stay_unavailable_in_the_bundle(without_seqzoo):
    """Backends that seqzoo imports on demand ("seqzoo....:fn" strings, e.g. Triton kernels) are not bundled; the
    bundled registry must report them unavailable even where their own probe says yes, and keep every op usable."""
    kernels = without_seqzoo["kernels"]
    assert kernels["ops_without_backend"] == []
    for name, row in kernels["lazy_backends"].items():
        assert row["available"] is False, (name, row)
    seqzoo_lazy = {f"{r['op']}/{r['backend']}" for r in seqzoo.list_kernels()
                   if isinstance(seqzoo.kernels.registry.get_op(r["op"]).backends[r["backend"]].impl, str)}
    assert seqzoo_lazy <= set(kernels["lazy_backends"])  # the check above saw every one the bundles carry
