"""Compile every Triton kernel launch of seqzoo's Triton backends for real GPU targets, on a machine without a GPU.

    python -m tests.kernels_triton.aot_compile            # sm_80 and sm_90; exit status 1 on any failure
    python -m tests.kernels_triton.aot_compile wkv7.triton_chunked     # only that module's kernels

The backends' Python wrappers run forward, backward and decode calls on CPU tensors with the kernel launches
replaced by a recorder; each distinct launch (kernel, constexprs, argument dtypes) is then compiled by Triton for
the target and assembled by the ptxas Triton ships, whose report gives registers and spills. A launch fails if it
does not compile or needs more shared memory than the target has. This catches what the interpreter cannot
(unsupported ops, layouts, shared memory), and shows register pressure; it says nothing about speed.

Uses Triton's compiler API (``ASTSource``, ``triton.compile``, ``make_backend``), which is internal: a Triton
version that changes it makes this tool fail loudly rather than pass.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile

import torch

# name -> module of every Triton backend
MODULES = {"causal_conv1d": "causal_conv1d.triton", "selective_scan": "selective_scan.triton", "ssd": "ssd.triton",
           "wkv7": "wkv7.triton", "wkv7_chunked": "wkv7.triton_chunked"}
SHARED_MEMORY_LIMIT = {80: 166912, 90: 232448}  # bytes per block, opt-in maximum (A100, H100)
TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int64: "i64",
         torch.int32: "i32", torch.bool: "i1"}


class _Recorder:
    """Stands in for a JIT kernel: ``kernel[grid](*args, **kwargs)`` records the launch instead of running it."""

    def __init__(self, fn, launches):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.fn, args, kwargs))


def _leaves(*tensors):
    return [t.clone().requires_grad_() for t in tensors]


def exercise(modules) -> None:
    """Forward, backward and decode calls of every op at model-like sizes, in float32 and bfloat16."""
    for dtype in (torch.float32, torch.bfloat16):
        def rnd(*shape, dt=dtype):
            return torch.randn(*shape, dtype=dt)

        conv = modules["causal_conv1d"]
        x, w, b, h0 = _leaves(rnd(2, 70, 96), rnd(96, 4), rnd(96), torch.randn(2, 96, 3))
        y, s = conv.causal_conv1d(x, w, b, initial_state=h0, activation="silu")
        (y.float().sum() + s.sum()).backward()

        scan = modules["selective_scan"]
        u, dl, A, B, C, D, z, h0 = _leaves(rnd(2, 70, 96), torch.rand(2, 70, 96), -torch.rand(96, 16),
                                           rnd(2, 70, 16), rnd(2, 70, 16), torch.randn(96), rnd(2, 70, 96),
                                           torch.randn(2, 96, 16))
        y, s = scan.selective_scan(u, dl, A, B, C, D, z, initial_state=h0)
        (y.float().sum() + s.sum()).backward()
        with torch.no_grad():
            scan.selective_scan(u[:, :1], dl[:, :1], A, B[:, :1], C[:, :1], D, z[:, :1], initial_state=h0)

        ssd = modules["ssd"]
        for state_size in (64, 128):
            x, dt, A, B, C, D, h0 = _leaves(rnd(2, 70, 4, 64), torch.rand(2, 70, 4), -torch.rand(4),
                                            rnd(2, 70, 1, state_size), rnd(2, 70, 1, state_size), torch.randn(4),
                                            torch.randn(2, 4, 64, state_size))
            y, s = ssd.ssd(x, dt, A, B, C, D, initial_state=h0)
            (y.float().sum() + s.sum()).backward()
            with torch.no_grad():
                ssd.ssd(x[:, :1], dt[:, :1], A, B[:, :1], C[:, :1], D, initial_state=h0)

        for wkv7 in (modules["wkv7"], modules["wkv7_chunked"]):
            for head_size in (64, 128):
                *inputs, h0 = _leaves(*(rnd(2, 70, 2, head_size) for _ in range(6)),
                                      torch.randn(2, 2, head_size, head_size))
                y, s = wkv7.wkv7(*inputs, initial_state=h0)
                (y.float().sum() + s.sum()).backward()
                with torch.no_grad():
                    wkv7.wkv7(*inputs, initial_state=h0)  # inference: no saved states


def _signature(fn, args, kwargs):
    signature, constants, options = {}, {}, {}
    named = list(zip(fn.arg_names, args)) + list(kwargs.items())
    for name, value in named:
        if name in ("num_warps", "num_stages"):
            options[name] = value
            continue
        param = fn.params[fn.arg_names.index(name)]
        if param.is_constexpr or value is None:
            signature[name], constants[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + TYPES[value.dtype]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i64" if abs(value) >= 2**31 else "i32"
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            signature[name], constants[name] = "constexpr", value
    return signature, constants, options


def compile_launch(fn, args, kwargs, arch: int) -> tuple[int, str]:
    """(shared memory bytes, ptxas register/spill report) of one launch compiled for sm_<arch>."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    signature, constants, options = _signature(fn, args, kwargs)
    target = GPUTarget("cuda", arch, 32)
    backend = triton.compiler.make_backend(target)
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants), target=target,
                              options=backend.parse_options(options).__dict__)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as ptx:
        ptx.write(compiled.asm["ptx"])
    try:
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        run = subprocess.run([get_ptxas(arch).path, f"-arch={gpu}", "-v", ptx.name, "-o", os.devnull],
                             capture_output=True, text=True)
    finally:
        os.unlink(ptx.name)
    lines = (run.stdout + run.stderr).splitlines()
    report = "; ".join(line.split("info    : ")[-1].strip() for line in lines if "registers" in line or "spill" in line)
    return compiled.metadata.shared, report or "ptxas: " + " ".join(lines)[-200:]


def check_filter(only: tuple[str, ...]) -> None:
    """Refuse a module filter that names no Triton backend module (a typo, or ``--help``): it would compile nothing
    and report "0 distinct launches, 0 failures", a pass."""
    modules = [f"seqzoo.kernels.{path}" for path in MODULES.values()]
    unknown = [name for name in only if not any(module.endswith(name) for module in modules)]
    if unknown:
        raise SystemExit(f"error: {', '.join(map(repr, unknown))} is the ending of no Triton backend module; allowed: "
                         f"{', '.join(MODULES.values())} (or an ending of one, e.g. 'triton_chunked'), or nothing "
                         "for every backend")


def main(archs=(80, 90), only: tuple[str, ...] = ()) -> int:
    check_filter(only)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    import seqzoo  # noqa: F401

    launches = []
    modules = {}
    for op, path in MODULES.items():
        module = importlib.import_module(f"seqzoo.kernels.{path}")
        for name, value in list(vars(module).items()):
            if type(value).__name__ == "JITFunction" and name.endswith("_kernel"):
                setattr(module, name, _Recorder(value, launches))
        modules[op] = module
    exercise(modules)

    failures, seen = 0, set()
    for fn, args, kwargs in launches:
        if only and not any(fn.fn.__module__.endswith(name) for name in only):
            continue
        key = (fn.__name__, tuple(sorted((k, str(v)) for k, v in kwargs.items())),
               tuple(str(a.dtype) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args))
        if key in seen:
            continue
        seen.add(key)
        config = {k: str(v).replace("triton.language.", "") for k, v in kwargs.items()
                  if k in ("BT", "BD", "BN", "BP", "BV", "BVS", "BK", "L", "Q", "DOT_DTYPE", "PRECISION", "num_warps")}
        for arch in archs:
            try:
                shared, report = compile_launch(fn, args, kwargs, arch)
            except Exception as err:  # every failure is reported, then the exit status says it failed
                failures += 1
                print(f"FAIL sm_{arch} {fn.__name__} {config}: {type(err).__name__}: {str(err)[:2000]}")
                continue
            status = "OK  "
            if shared > SHARED_MEMORY_LIMIT[arch]:
                failures += 1
                status = "SMEM"
            print(f"{status} sm_{arch} {fn.__name__:24s} {config} shared={shared} | {report}")
    print(f"{len(seen)} distinct launches, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    # Optional arguments: module-name endings to compile alone (e.g. "triton_chunked"); default every backend.
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    sys.exit(main(only=tuple(sys.argv[1:])))
