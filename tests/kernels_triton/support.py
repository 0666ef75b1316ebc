"""Shared pieces of the Triton parity tests: the device they run on, the interpreter check, one parity check.

Without CUDA the kernels run under Triton's interpreter on CPU tensors. Triton decides between compiling and
interpreting when a function is decorated, including its own ``triton.language`` functions, so the interpreter
works only when ``TRITON_INTERPRET=1`` is set before anything imports Triton -- and ``import seqzoo`` imports it
indirectly (transformers imports ``torch._dynamo``, which imports Triton when it is installed). Therefore, on a
machine without CUDA, the parity tests here skip unless the whole run started with ``TRITON_INTERPRET=1``, and
``test_interpreter.py`` starts exactly that run in a subprocess. With CUDA the tests run compiled, in-process.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from seqzoo.kernels import get_kernel
from tests.kernels.tolerances import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (length, dtype) of the parity tests: odd lengths, one of them across several chunks / checkpoint segments; bf16
# once, at the longest (the interpreter is slow, and bf16 adds roundings, not code paths).
CASES = [(1, torch.float32), (7, torch.float32), (33, torch.float32), (33, torch.bfloat16)]
CASE_IDS = ["T1-fp32", "T7-fp32", "T33-fp32", "T33-bf16"]
TRITON_MISSING = importlib.util.find_spec("triton") is None


def interpreter_active() -> bool:
    """TRITON_INTERPRET=1 was set before Triton was imported (its own library functions are interpreted)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import triton.language as tl

    return type(tl.zeros).__name__ == "InterpretedFunction"


def triton_kernel(op: str, backend: str = "triton"):
    """A Triton backend of ``op``, runnable on DEVICE, or a skip saying why it cannot run here."""
    if TRITON_MISSING:
        pytest.skip("triton is not installed (pip install 'seqzoo[triton]')")
    if DEVICE == "cpu" and not interpreter_active():
        pytest.skip("no CUDA: Triton kernels run on CPU only when TRITON_INTERPRET=1 is set before Triton is "
                    "imported; tests/kernels_triton/test_interpreter.py runs these tests that way in a subprocess")
    if DEVICE == "cpu":
        from seqzoo.kernels.triton_support import speed_up_interpreter

        speed_up_interpreter()
    return get_kernel(op, backend)


def leaves(tensors: dict, dtype: torch.dtype, low_precision: tuple[str, ...]):
    """Two sets of leaf tensors from float32 ``tensors``: the backend's (names in ``low_precision`` cast to
    ``dtype``) and the reference's (float32 copies of the same, rounded values)."""
    backend, reference = {}, {}
    for name, t in tensors.items():
        if t is None:
            backend[name] = reference[name] = None
            continue
        t = t.to(DEVICE)
        cast = t.to(dtype) if name in low_precision else t
        backend[name] = cast.detach().requires_grad_(t.is_floating_point())
        reference[name] = cast.detach().float().requires_grad_(t.is_floating_point())
    return backend, reference


def check_parity(name, backend_fn, reference_fn, backend_inputs, reference_inputs, call, dtype, out_dtype, seed=1,
                 tolerances=None):
    """Run ``call(fn, inputs) -> (output, final_state)`` on both backends, backpropagate the same random cotangents
    into output and final state, and compare outputs, final states and the gradient of every input. ``tolerances``
    overrides the shared table's (atol, rtol) for some quantities, where a test says why."""
    out, state = call(backend_fn, backend_inputs)
    ref_out, ref_state = call(reference_fn, reference_inputs)
    assert out.dtype == out_dtype, f"{name}: output dtype {out.dtype}, expected {out_dtype}"
    assert state.dtype == torch.float32, f"{name}: final state must be float32, got {state.dtype}"
    tolerances = tolerances or {}
    assert_close(out, ref_out, dtype, "output", name, tolerances.get("output"))
    assert_close(state, ref_state, dtype, "state", name, tolerances.get("state"))

    generator = torch.Generator(device="cpu").manual_seed(seed)
    d_out = torch.randn(ref_out.shape, generator=generator).to(DEVICE)
    d_state = torch.randn(ref_state.shape, generator=generator).to(DEVICE)
    names = [k for k, v in backend_inputs.items() if v is not None and v.requires_grad]
    grads = torch.autograd.grad((out.float() * d_out).sum() + (state * d_state).sum(),
                                [backend_inputs[k] for k in names], allow_unused=True)
    ref_grads = torch.autograd.grad((ref_out * d_out).sum() + (ref_state * d_state).sum(),
                                    [reference_inputs[k] for k in names], allow_unused=True)
    for key, g, r in zip(names, grads, ref_grads):
        assert g is not None, f"{name}: no gradient reached {key}"
        assert g.dtype == backend_inputs[key].dtype, f"{name}: gradient of {key} has dtype {g.dtype}"
        # Gradients are compared relative to their own scale: they sum over up to T terms.
        scale = max(1.0, r.abs().max().item())
        assert_close(g / scale, r / scale, dtype, "grad", f"{name} d{key}")


def check_double_backward_refused(op, backend, fn, inputs, call):
    """A differentiable gradient (``create_graph=True``) through ``fn`` raises naming the backend: its backward is
    computed outside autograd, so a second derivative would silently leave the kernel's part out."""
    import re

    tensors, _ = leaves(inputs, torch.float32, low_precision=())
    out, _ = call(fn, tensors)
    grads_of = [t for t in tensors.values() if t is not None and t.requires_grad]
    with pytest.raises(RuntimeError, match=re.escape(f"{op}: the {backend!r} backend has no double backward")):
        torch.autograd.grad(out.square().sum(), grads_of, create_graph=True)
    out, _ = call(fn, tensors)  # a plain gradient still runs
    assert all(g is not None for g in torch.autograd.grad(out.square().sum(), grads_of[:1]))
