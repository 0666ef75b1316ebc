"""A bundle exported under one transformers release loads under another, where seqzoo is not installed, with the
same logits and greedy tokens as the native model.

A published checkpoint lives for years and is loaded with whatever transformers its user has. ``.ci/run`` builds a
second environment with torch and the other end of the supported range (and no seqzoo), points
``SEQZOO_OTHER_TRANSFORMERS_PYTHON`` at its python, and runs the suite once on the newest and once on the oldest
release, so both directions are checked. Without the variable the test skips; under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers

from seqzoo.hub.bundle import RECORD_FILE
from tests.hub.conftest import HERE, NEW_TOKENS, PROMPT, hub_env, run_python

OTHER_PYTHON = "SEQZOO_OTHER_TRANSFORMERS_PYTHON"


@pytest.fixture(scope="session")
def other_python() -> str:
    path = os.environ.get(OTHER_PYTHON)
    if not path:
        why = (f"{OTHER_PYTHON} is not set: point it at the python of an environment holding torch and another "
               "supported transformers release, without seqzoo (.ci/run builds one)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, and {why}")
        pytest.skip(why)
    return path


@pytest.fixture(scope="session")
def under_other_release(exports, other_python, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("other-release")
    checkpoints = [{"arch": arch, "sources": [str(folder)]} for arch, folder in exports.items()]
    (work / "job.json").write_text(json.dumps({"prompt": PROMPT, "new_tokens": NEW_TOKENS,
                                               "checkpoints": checkpoints}))
    run_python([str(HERE / "load_checkpoints.py"), "job.json", "result.json"],
               env=hub_env(work / "hf-home"), cwd=work, python=other_python, timeout=600)
    return json.loads((work / "result.json").read_text())


def test_the_other_environment_is_another_release_without_seqzoo(under_other_release):
    assert not under_other_release["seqzoo_importable"]
    assert under_other_release["transformers_version"] != transformers.__version__


def test_bundles_match_the_native_model_under_the_other_release(exports, reference, under_other_release):
    for arch in exports:
        got = under_other_release["checkpoints"][arch]
        assert "error" not in got, f"{arch}:\n{got.get('error')}"
        remote = got[str(exports[arch])]
        native = reference(arch)
        assert remote["tokens"] == native["tokens"], arch
        torch.testing.assert_close(torch.tensor(remote["logits"]), native["logits"], rtol=1e-5, atol=1e-5,
                                   msg=lambda m, arch=arch: f"{arch}: {m}")


def test_the_bundle_records_the_release_it_was_exported_with(exports):
    for arch, folder in exports.items():
        record = json.loads((folder / RECORD_FILE).read_text())
        assert record["exported_with"]["transformers"] == transformers.__version__, arch
        # the torch release, without the build's local tag (+cpu, +cu128): the same release on every machine
        assert record["exported_with"]["torch"] == torch.__version__.partition("+")[0], arch
        assert record["tested_transformers"].startswith(("<", ">")), record
