"""Timing helpers shared by the benchmark scripts: interleaved repeats and medians.

Peers are timed in alternation (A, B, A, B, ...) rather than one after the other, so a slow drift of the machine
(another process, thermal state) lands on both sides of a ratio instead of biasing it.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from seqzoo.models.compat import output_cache


def _once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(fns: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, measured interleaved."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(_once(fn))
    return {name: statistics.median(values) for name, values in samples.items()}



def decode_ms_per_token(model: torch.nn.Module, context: int, steps: int) -> float:
    """Median time of one cached decode step after a ``context``-token prefill."""
    with torch.no_grad():
        out = model(torch.randint(0, 256, (1, context)), use_cache=True)
        cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
        samples = []
        for _ in range(steps):
            start = time.perf_counter()
            out = model(token, cache=cache, use_cache=True)
            samples.append(time.perf_counter() - start)
            cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
    return statistics.median(samples) * 1e3


def machine() -> str:
    import platform

    threads = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()}, {threads} torch threads, torch {torch.__version__}"


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)
