"""What every Triton backend shares: a cheap availability probe and the ``supports()`` checks.

Nothing here imports Triton. ``import seqzoo`` registers the Triton backends through this module, so it must stay
light; the kernels themselves live in ``seqzoo/kernels/<op>/triton.py`` and are imported on first selection.

Availability: Triton is installed and kernels can run, i.e. CUDA is present, or ``TRITON_INTERPRET=1`` asks Triton
to run its kernels on CPU tensors with numpy (slow; for tests). Even then the registry never picks the Triton
backend for CPU tensors on its own: every ``supports()`` below declines them, so under the interpreter the kernels
are reached only through ``seqzoo.kernels.get_kernel(op, "triton")``.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from seqzoo.kernels.reset import refuse_reset

# Inputs the kernels read: half and single precision. float64 stays on the reference and chunked backends, which
# compute in float64; the kernels accumulate in float32.
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_requested() -> bool:
    """Whether ``TRITON_INTERPRET`` is set to a true value, read as Triton reads it when a kernel is decorated
    (``1``, ``y``, ``yes``, ``on``, ``true`` in any case; no spaces), so that seqzoo and Triton never disagree on
    whether kernels are interpreted."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "y", "yes", "on", "true")


def triton_available() -> bool:
    """The Triton backends can run here: Triton is installed, and CUDA or the interpreter is present."""
    return triton_installed() and (interpreter_requested() or torch.cuda.is_available())


def unavailable_reason() -> str:
    """Why the Triton backends cannot run here ("" where they can), naming the extra that installs Triton."""
    if not triton_installed():
        return "Triton is not installed (pip install 'seqzoo[triton]'), and the Triton kernels need a CUDA GPU"
    if not triton_available():
        return "the Triton kernels need a CUDA GPU and torch sees none here (CPU runs use the chunked backends)"
    return ""


def check_tensors(op: str, named: dict[str, torch.Tensor | None]) -> tuple[bool, str]:
    """(ok, reason) for the device and dtype of the tensors the kernel reads; ``None`` entries are skipped."""
    present = {name: t for name, t in named.items() if t is not None}
    for name, t in present.items():
        if t.device.type != "cuda":
            return False, f"needs CUDA tensors (got {t.device.type})"
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        return False, f"needs all tensors on one device, got {sorted(map(str, devices))}"
    for name, t in present.items():
        if t.dtype not in SUPPORTED_DTYPES:
            allowed = ", ".join(str(d).replace("torch.", "") for d in SUPPORTED_DTYPES)
            return False, f"{op}: {name} has dtype {str(t.dtype).replace('torch.', '')}; supported: {allowed}"
    return True, ""


def refuse_double_backward(op: str, backend: str) -> None:
    """Called first in a hand-written backward: autograd runs it with grad mode on exactly when the caller asked
    for a differentiable gradient (``create_graph=True``: double backward, Hessian-vector products, gradient
    penalties), which these kernels do not provide. Without this, a second differentiation silently leaves out
    the kernel's part (its gradients are computed outside autograd) or fails inside torch with no hint."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{op}: the {backend!r} backend has no double backward (create_graph=True); run the op on the "
            f"'reference' backend for that, e.g. with seqzoo.kernels.use_backend({op!r}, 'reference')"
        )


def tensors_key(*tensors: torch.Tensor | None) -> tuple:
    """Device and dtype of each tensor (None kept in place): what :func:`check_tensors` reads, as a cache key."""
    return tuple(None if t is None else (t.device, t.dtype) for t in tensors)


def _last_dim(t: torch.Tensor, dims: int) -> int | None:
    return t.shape[-1] if t.dim() == dims else None


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def speed_up_interpreter() -> None:
    """Two changes to Triton's interpreter that keep its numbers and make the parity tests several times faster.

    1. ``tl.associative_scan`` runs one scan step at a time over whole slices. The interpreter's generic scan calls
       the combine function once per element (numpy scalars), which makes a (16, 16, 16) tile scan take about a
       second. The combine functions of these kernels are elementwise, so applying them to the whole slice at scan
       position i gives the same numbers.
    2. A call of a ``@triton.jit`` helper inside a running kernel (``tl.sum`` is one) skips re-patching
       ``triton.language`` when the modules it uses are already patched: the interpreter repeats the whole patch
       (an ``inspect.getmembers`` walk, about 3 ms) on every such call, and with the patch in place it changes
       nothing. The chunked wkv7 kernels call ``tl.sum`` inside loops.

    Tests and the benchmark's dry run call this after setting ``TRITON_INTERPRET=1``; compiled kernels are
    unaffected. Imports Triton.
    """
    try:  # guarded: this module is part of the self-contained Hub export, which must load where Triton is absent
        import inspect

        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError as err:
        raise RuntimeError("speed_up_interpreter() patches Triton's interpreter: it needs triton and numpy") from err

    if getattr(interpreter.ScanOps, "_seqzoo_vectorized", False):
        return

    patch_lang = interpreter._patch_lang

    def patch_lang_once(fn):
        langs = [v for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)]
        # While patched, a module's builtins (tl.load among them) are the interpreter's plain wrappers.
        if langs and not any(tl.core.is_builtin(lang.load) for lang in langs):
            return interpreter._LangPatchScope()
        return patch_lang(fn)

    def generic_scan(self, inputs):
        data = [arg.handle.data for arg in inputs]
        outputs = [np.empty_like(d) for d in data]
        axis = self.axis

        def at(d, i):
            return np.ascontiguousarray(np.take(d, i, axis=axis))

        def put(i, values):
            for out, value in zip(outputs, values):
                index = [slice(None)] * out.ndim
                index[axis] = i
                out[tuple(index)] = value.handle.data if hasattr(value, "handle") else value

        acc = tuple(self.to_tensor(at(d, 0), arg.dtype) for d, arg in zip(data, inputs))
        put(0, acc)
        for i in range(1, data[0].shape[axis]):
            current = tuple(self.to_tensor(at(d, i), arg.dtype) for d, arg in zip(data, inputs))
            result = self.combine_fn.fn(*acc, *current)
            acc = result if isinstance(result, tuple) else (result,)
            put(i, acc)
        return [self.to_tensor(out, arg.dtype) for out, arg in zip(outputs, inputs)]

    interpreter.ScanOps.generic_scan = generic_scan
    interpreter._patch_lang = patch_lang_once
    interpreter.ScanOps._seqzoo_vectorized = True

# ---- supports() of each op's Triton backend: cheap shape/dtype/device checks, no Triton import. ----

CONV_MAX_WIDTH = 32  # causal_conv1d unrolls its K taps at compile time


def supports_key_causal_conv1d(x, weight, bias=None, *, initial_state=None, activation=None, mask=None, reset=None):
    return tensors_key(x, weight, bias, initial_state), _last_dim(weight, 2), reset is None


def supports_causal_conv1d(x, weight, bias=None, *, initial_state=None, activation=None, mask=None, reset=None):
    """CUDA tensors in float32/float16/bfloat16 and a kernel width K <= 32; any mask and reset."""
    ok, reason = check_tensors("causal_conv1d", {"x": x, "weight": weight, "bias": bias,
                                                 "initial_state": initial_state})
    if not ok:
        return ok, reason
    if weight.dim() == 2 and weight.shape[1] > CONV_MAX_WIDTH:
        return False, f"kernel width K={weight.shape[1]} is larger than the {CONV_MAX_WIDTH} taps the kernel unrolls"
    return True, ""


SCAN_MAX_STATE = 64  # selective_scan keeps (16, 16, N) float32 tiles in registers


def supports_key_selective_scan(u, delta, A, B, C, D=None, z=None, *, initial_state=None, reset=None):
    return tensors_key(u, delta, A, B, C, D, z, initial_state), _last_dim(A, 2), reset is None


def supports_selective_scan(u, delta, A, B, C, D=None, z=None, *, initial_state=None, reset=None):
    """CUDA tensors in float32/float16/bfloat16, real A, state size N <= 64; any reset."""
    ok, reason = check_tensors("selective_scan", {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
                                                  "initial_state": initial_state})
    if not ok:
        return ok, reason
    if A.dim() == 2 and A.shape[1] > SCAN_MAX_STATE:
        return False, (f"state size N={A.shape[1]} is larger than {SCAN_MAX_STATE}, "
                       "the most the kernel keeps in registers")
    return True, ""


SSD_MAX_HEAD_DIM = 128  # the chunk backward holds a whole (L, P) head block
SSD_MAX_STATE = 128


def supports_key_ssd(x, dt, A, B, C, D=None, *, initial_state=None, chunk_size=64, reset=None):
    return tensors_key(x, dt, A, B, C, D, initial_state), _last_dim(x, 4), _last_dim(B, 4), reset is None


def supports_ssd(x, dt, A, B, C, D=None, *, initial_state=None, chunk_size=64, reset=None):
    """CUDA tensors in float32/float16/bfloat16, head dim P <= 128, state size N <= 128; any reset."""
    ok, reason = check_tensors("ssd", {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D,
                                       "initial_state": initial_state})
    if not ok:
        return ok, reason
    if x.dim() == 4 and x.shape[-1] > SSD_MAX_HEAD_DIM:
        return False, f"head dim P={x.shape[-1]} is larger than {SSD_MAX_HEAD_DIM}, the most the kernels tile"
    if B.dim() == 4 and B.shape[-1] > SSD_MAX_STATE:
        return False, f"state size N={B.shape[-1]} is larger than {SSD_MAX_STATE}, the most the kernels tile"
    return True, ""


WKV7_MAX_HEAD_SIZE = 128  # the backward holds a whole (V, K) state per program


def supports_key_wkv7(r, w, k, v, a, b, *, initial_state=None, reset=None):
    return tensors_key(r, w, k, v, a, b, initial_state), _last_dim(r, 4), _last_dim(v, 4), reset is None


def supports_wkv7_chunked(r, w, k, v, a, b, *, initial_state=None, reset=None):
    """``triton_chunked``: no reset input (the fused ``triton`` backend takes one); otherwise as
    :func:`supports_wkv7`."""
    ok, reason = refuse_reset(reset)
    if not ok:
        return False, reason + " (so does the fused triton backend)"
    return supports_wkv7(r, w, k, v, a, b, initial_state=initial_state)


def supports_wkv7(r, w, k, v, a, b, *, initial_state=None, reset=None):
    """CUDA tensors in float32/float16/bfloat16, key and value head sizes <= 128; any reset."""
    ok, reason = check_tensors("wkv7", {"r": r, "w": w, "k": k, "v": v, "a": a, "b": b,
                                        "initial_state": initial_state})
    if not ok:
        return ok, reason
    for name, t in (("key", r), ("value", v)):
        if t.dim() == 4 and t.shape[-1] > WKV7_MAX_HEAD_SIZE:
            return False, (f"{name} head size {t.shape[-1]} is larger than {WKV7_MAX_HEAD_SIZE}, "
                           "the most the kernels hold per program")
    return True, ""
