"""Per-call cost of kernel selection: ``select(op, *args)`` for a decode step of every op, in microseconds.

A decoded token makes 2-4 registry calls per layer (Mamba: conv + scan; RWKV-7: wkv7; LSTM: one), so selection
time adds directly to the per-token latency of small models. The arguments are those of one decode step (batch 1,
one token) of a hidden-64 model, made once; only the selection is timed (median of ``--repeats`` blocks of
``--calls`` calls each, interleaved). Peers in the same run: a plain Python call of a function with the same
arguments (the floor any registry pays), and with ``--against COMMIT`` the registry module of that commit, loaded
from git under another name and given the same backends (the "before" of a change to the registry).

    OMP_NUM_THREADS=1 python benchmarks/bench_dispatch.py --against ec8b0dd
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from seqzoo.kernels import registry, select

ROOT = Path(__file__).resolve().parent.parent


def registry_at(commit: str):
    """seqzoo/kernels/registry.py as of ``commit``, imported as a separate module holding today's backends."""
    source = subprocess.run(["git", "show", f"{commit}:seqzoo/kernels/registry.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as folder:  # the module is executed from it, then it goes
        path = Path(folder) / "registry_before.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("registry_before", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["registry_before"] = module
        spec.loader.exec_module(module)
    accepted = inspect.signature(module.register_backend).parameters
    for op in registry.list_ops():
        module.register_op(op, registry.get_op(op).description)
        for b in registry.get_op(op).backends.values():
            fields = {"priority": b.priority, "is_available": b.is_available, "supports": b.supports,
                      "description": b.description, "devices": b.devices, "cache_key": b.cache_key}
            module.register_backend(op, b.name, b.impl, **{k: v for k, v in fields.items() if k in accepted})
    module._plugins_loaded = True
    return module


def decode_calls() -> dict[str, tuple[tuple, dict]]:
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    hidden, inner, state, heads, head = 64, 128, 16, 2, 32
    weights = [r(4 * hidden, hidden), r(4 * hidden, hidden), r(4 * hidden), r(4 * hidden)]
    mask = torch.ones(1, 1, dtype=torch.bool)
    return {
        "lstm": ((r(1, 1, hidden), r(1, 1, hidden), r(1, 1, hidden), *weights), {"mask": mask}),
        "gru": ((r(1, 1, hidden), r(1, 1, hidden), *[w[: 3 * hidden] for w in weights]), {"mask": mask}),
        "causal_conv1d": ((r(1, 1, inner), r(inner, 4), r(inner)),
                          {"initial_state": r(1, inner, 3), "activation": "silu", "mask": mask}),
        "selective_scan": ((r(1, 1, inner), r(1, 1, inner).abs(), -r(inner, state).abs(), r(1, 1, state),
                            r(1, 1, state), r(inner), r(1, 1, inner)), {"initial_state": r(1, inner, state)}),
        "ssd": ((r(1, 1, heads, head), r(1, 1, heads).abs(), -r(heads).abs(), r(1, 1, 1, state), r(1, 1, 1, state),
                 r(heads)), {"initial_state": r(1, heads, head, state), "chunk_size": 64}),
        "wkv7": ((r(1, 1, heads, head), -r(1, 1, heads, head).abs(), r(1, 1, heads, head), r(1, 1, heads, head),
                  r(1, 1, heads, head), r(1, 1, heads, head)), {"initial_state": r(1, heads, head, head)}),
    }


def per_call_us(fns: dict, calls: int, repeats: int) -> dict[str, float]:
    """Median microseconds per call of each function, blocks of ``calls`` calls interleaved across functions."""
    for fn in fns.values():
        for _ in range(calls // 10):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--against", metavar="COMMIT", help="also time the registry of this git commit")
    args = parser.parse_args()
    before = registry_at(args.against) if args.against else None

    def baseline(*a, **k):
        return None

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.calls} calls x {args.repeats}")
    header = ["op", "backend", "select µs/call"] + ([f"at {args.against} µs/call", "speed-up"] if before else [])
    print("| " + " | ".join(header + ["plain call µs/call"]) + " |")
    print("|" + "---|" * (len(header) + 1))
    for op, (a, k) in decode_calls().items():
        chosen = select(op, *a, **k).name
        fns = {"now": lambda: select(op, *a, **k), "floor": lambda: baseline(*a, **k)}
        if before:
            assert before.select(op, *a, **k).name == chosen
            fns["before"] = lambda: before.select(op, *a, **k)
        us = per_call_us(fns, args.calls, args.repeats)
        extra = [f"{us['before']:.2f}", f"{us['before'] / us['now']:.1f}x"] if before else []
        print("| " + " | ".join([op, chosen, f"{us['now']:.2f}", *extra, f"{us['floor']:.2f}"]) + " |")


if __name__ == "__main__":
    main()
