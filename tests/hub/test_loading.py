"""A published checkpoint loads for anyone: natively where seqzoo is imported, with trust_remote_code=True where
only torch and transformers are installed, from a folder and by repo id from the Hub cache (offline) -- and every
way generates the same tokens as seqzoo itself."""

from __future__ import annotations

import json
import re
from functools import lru_cache

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import seqzoo
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


def run_job(tmp_path_factory, hub_cache, hide_seqzoo: bool, checkpoints: list[dict]) -> dict:
    work = tmp_path_factory.mktemp("remote" if hide_seqzoo else "native")
    job = {"hide_seqzoo": hide_seqzoo, "prompt": PROMPT, "new_tokens": NEW_TOKENS, "checkpoints": checkpoints}
    (work / "job.json").write_text(json.dumps(job))
    run_python([str(HERE / "load_checkpoints.py"), "job.json", "result.json"], env=hub_env(hub_cache), cwd=work)
    return json.loads((work / "result.json").read_text())


@pytest.fixture(scope="session")
def without_seqzoo(exports, hub_cache, tmp_path_factory) -> dict:
    """One process in which seqzoo cannot be imported loads every architecture's folder and repo id."""
    checkpoints = [{"arch": arch, "sources": [str(exports[arch]), repo_id(arch)],
                    "snippet": usage_snippets(exports[arch])["remote"]} for arch in ARCHITECTURES]
    return run_job(tmp_path_factory, hub_cache, hide_seqzoo=True, checkpoints=checkpoints)


@pytest.fixture(scope="session")
def with_seqzoo(exports, hub_cache, tmp_path_factory) -> dict:
    """One process with seqzoo loads every repo id natively, runs the card's seqzoo snippet and `seqzoo generate`."""
    checkpoints = [{"arch": arch, "sources": [repo_id(arch)], "snippet": usage_snippets(exports[arch])["native"],
                    "cli_repo_id": repo_id(arch)} for arch in ARCHITECTURES]
    return run_job(tmp_path_factory, hub_cache, hide_seqzoo=False, checkpoints=checkpoints)


def checkpoint_result(results: dict, arch: str) -> dict:
    result = results["checkpoints"][arch]
    assert "error" not in result, f"{arch} failed in the subprocess:\n{result['error']}"
    return result


def assert_same_generation(got: dict, expected: dict) -> None:
    assert got["tokens"] == expected["tokens"]
    torch.testing.assert_close(torch.tensor(got["logits"]), expected["logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loads_natively_without_trust_remote_code(arch, exports, reference):
    spec = seqzoo.get_architecture(arch)
    config = AutoConfig.from_pretrained(exports[arch])
    assert type(config) is spec.config_class
    assert type(reference(arch)["model"]) is spec.causal_lm_class  # seqzoo's class, not the bundled copy
    assert reference(arch)["tokens"][: len(PROMPT)] == list(PROMPT.encode())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_remote_code_without_seqzoo_matches_seqzoo(arch, without_seqzoo, exports, reference):
    assert without_seqzoo["seqzoo_importable"] is False
    result = checkpoint_result(without_seqzoo, arch)
    for source in (str(exports[arch]), repo_id(arch)):
        class_path = result[source]["class"]
        assert class_path.startswith("transformers_modules."), class_path  # the bundled code, not seqzoo
        assert class_path.endswith(f"modeling_{seqzoo.get_architecture(arch).model_type}."
                                   f"{seqzoo.get_architecture(arch).causal_lm_class.__name__}")
        assert_same_generation(result[source], reference(arch))
    assert result["snippet"] == reference(arch)["text"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_repo_id_loads_natively_offline(arch, with_seqzoo, reference):
    result = checkpoint_result(with_seqzoo, arch)
    spec = seqzoo.get_architecture(arch)
    assert result[repo_id(arch)]["class"] == f"{spec.causal_lm_class.__module__}.{spec.causal_lm_class.__name__}"
    assert_same_generation(result[repo_id(arch)], reference(arch))
    assert result["snippet"] == reference(arch)["text"]
    assert result["cli"] == reference(arch)["text"]  # `seqzoo generate org/name ...`
