"""Every Triton kernel launch compiles for sm_80 and sm_90 and fits their shared memory, checked without a GPU by
``aot_compile.py`` (Triton's compiler and the ptxas it ships). About 2.5 minutes on 2 cores with a cold Triton
cache, so it is opt-in: set SEQZOO_TRITON_AOT=1."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels_triton.support import TRITON_MISSING

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(TRITON_MISSING, reason="triton is not installed (pip install 'seqzoo[triton]')")
@pytest.mark.skipif(os.environ.get("SEQZOO_TRITON_AOT") != "1",
                    reason="opt-in (about 2.5 minutes): set SEQZOO_TRITON_AOT=1 to compile every kernel for sm_80/90")
def test_every_kernel_compiles_for_ampere_and_hopper():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "tests.kernels_triton.aot_compile"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-8000:]
    assert "0 failures" in result.stdout


@pytest.mark.parametrize("only", [("--help-me",), ("wkv8",), ("triton_chunked", "ssd.triton_x")])
def test_a_filter_naming_no_backend_module_is_refused(only):
    # It used to compile nothing and report "0 distinct launches, 0 failures" with exit status 0: a pass.
    from tests.kernels_triton.aot_compile import main

    with pytest.raises(SystemExit, match="ending of no Triton backend module; allowed: causal_conv1d.triton"):
        main(only=only)


def test_a_filter_naming_a_backend_module_passes_the_check():
    from tests.kernels_triton.aot_compile import check_filter

    check_filter(("triton_chunked", "wkv7.triton", "ssd.triton", "triton"))
    check_filter(())
