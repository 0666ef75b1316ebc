"""``import seqzoo`` never imports a Triton backend, seqzoo works where Triton is not installed, and the Triton
backends decline CPU tensors (so the registry never picks them on CPU, even with the interpreter on).

(Triton itself may still be in sys.modules after ``import seqzoo`` when it is installed: transformers imports
``torch._dynamo``, which imports Triton. What seqzoo controls is that its own kernels load only when selected.)
"""

import subprocess
import sys
import textwrap

import pytest

from tests.kernels_triton.support import TRITON_MISSING

OPS = ("causal_conv1d", "selective_scan", "ssd", "wkv7")


def _run(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_import_seqzoo_loads_no_triton_backend_and_works_without_triton():
    _run(f"""
        import sys
        sys.modules["triton"] = None  # as if Triton were not installed: importing it raises ImportError
        import seqzoo, torch
        from seqzoo.kernels import available_backends, list_kernels, select
        loaded = [m for m in sys.modules if m.startswith("seqzoo.kernels") and m.endswith(".triton")]
        assert not loaded, loaded
        rows = [r for r in list_kernels() if r["backend"] == "triton"]
        assert {{r["op"] for r in rows}} >= {{"causal_conv1d"}}, rows
        for op in {OPS!r}:
            assert "triton" not in available_backends(op) if op in {{r["op"] for r in rows}} else True
        assert select("causal_conv1d", torch.randn(1, 5, 3), torch.randn(3, 4)).name != "triton"
        print("ok")
    """)


@pytest.mark.skipif(TRITON_MISSING, reason="triton is not installed (pip install 'seqzoo[triton]')")
def test_triton_backend_is_available_under_the_interpreter_but_declines_cpu_tensors():
    _run("""
        import os
        os.environ["TRITON_INTERPRET"] = "1"
        import seqzoo, torch, sys
        from seqzoo.kernels import available_backends, list_kernels, select
        for op in {r["op"] for r in list_kernels() if r["backend"] == "triton"}:
            assert "triton" in available_backends(op), op
        x, w = torch.randn(1, 5, 3), torch.randn(3, 4)
        from seqzoo.kernels.registry import get_op
        ok, reason = get_op("causal_conv1d").backends["triton"].supports(x, w)
        assert not ok and reason == "needs CUDA tensors (got cpu)", reason
        assert select("causal_conv1d", x, w).name != "triton"
        assert not [m for m in sys.modules if m.endswith(".triton") and m.startswith("seqzoo")]
        print("ok")
    """)
