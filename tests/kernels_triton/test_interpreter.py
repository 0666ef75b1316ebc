"""Runs this directory's parity tests on CPU under Triton's interpreter, in a subprocess started with
TRITON_INTERPRET=1 (see support.py for why it has to be a fresh process)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.kernels_triton.support import TRITON_MISSING

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.mark.skipif(TRITON_MISSING, reason="triton is not installed (pip install 'seqzoo[triton]')")
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the parity tests run compiled in this process")
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="this process already is the interpreter run")
def test_parity_under_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    files = sorted(str(p.relative_to(REPO)) for p in HERE.glob("test_parity_*.py"))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu", *files],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"Triton parity tests failed under TRITON_INTERPRET=1:\n{tail}"
    summary = [line for line in result.stdout.splitlines() if line.strip()][-1]  # "13 passed, 2 deselected in 8s"
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, \
        f"the interpreter run skipped tests it should have run:\n{tail}"


@pytest.mark.skipif(TRITON_MISSING, reason="triton is not installed (pip install 'seqzoo[triton]')")
@pytest.mark.parametrize("value", ["1", "y", "Y", "yes", "On", "TRUE", "true", " 1 ", "1 ", "0", "no", "t", "2", ""])
def test_seqzoo_reads_triton_interpret_as_triton_does(value, monkeypatch):
    """seqzoo took " 1 " for true and "y" for false, Triton the other way round: the kernels were then chosen as
    interpretable while Triton compiled them (or the reverse)."""
    from triton._C.libtriton import getenv_bool

    from seqzoo.kernels.triton_support import interpreter_requested

    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert interpreter_requested() == getenv_bool("TRITON_INTERPRET", False)
