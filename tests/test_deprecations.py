"""seqzoo's own calls into transformers raise no deprecation notice, so a rename is caught the day it is announced
(transformers 5.24 announced the cache rename through its logger, and seqzoo decoded from empty states)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import python_path

HERE = Path(__file__).resolve().parent


def test_no_deprecation_notice_from_seqzoo_calls(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TRANSFORMERS_VERBOSITY="warning",
               PYTHONPATH=python_path(HERE.parent))
    result_file = tmp_path / "result.json"
    run = subprocess.run([sys.executable, str(HERE / "deprecation_probe.py"), str(result_file)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    result = json.loads(result_file.read_text())
    assert not result["failures"], "\n".join(result["failures"].values())
    assert len(result["families"]) >= 7
    assert not result["notices"], json.dumps(result["notices"], indent=2)
