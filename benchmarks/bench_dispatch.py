"""Per-call cost of kernel selection: ``select(op, *args)`` for a decode step of every op, in microseconds.

A decoded token makes 2-4 registry calls per layer (Mamba: conv + scan; RWKV-7: wkv7; LSTM: one), so selection
time adds directly to the per-token latency of small models. The arguments are those of one decode step (batch 1,
one token) of a hidden-64 model, made once; only the selection is timed (median of ``--repeats`` blocks of
``--calls`` calls each). The peer in the same run is a plain Python call of a function with the same arguments
(``baseline``), the floor that any registry pays.

    OMP_NUM_THREADS=1 python benchmarks/bench_dispatch.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from seqzoo.kernels import select


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


def per_call_us(fn, calls: int, repeats: int) -> float:
    for _ in range(calls // 10):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    def baseline(*a, **k):
        return None

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| op | backend | select µs/call | plain call µs/call |")
    print("|---|---|---|---|")
    for op, (a, k) in decode_calls().items():
        chosen = select(op, *a, **k).name
        us = per_call_us(lambda: select(op, *a, **k), args.calls, args.repeats)
        floor = per_call_us(lambda: baseline(*a, **k), args.calls, args.repeats)
        print(f"| {op} | {chosen} | {us:.2f} | {floor:.2f} |")


if __name__ == "__main__":
    main()
