"""Limits that keep a benchmark inside a short, fixed GPU slot: a wall-clock cap per measured row, a budget for a
whole section, and a reduced autotuning space for third-party Triton kernels.

The first GPU run (2026-11-30) spent its whole 109 s benchmark step inside the first block of rows without timing
one: flash-linear-attention autotunes every kernel of ``chunk_rwkv7`` on its first call (chunk_o_fwd alone has
3 x 3 x 5 x 3 = 135 configurations, each compiled and timed), then again for every other chunk size. With a cap per
row a slow row costs its cap and says so; the reduced space makes fla's first call take tens of seconds, not
minutes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time


class OverTime(BaseException):
    """Raised inside a row that ran past its cap. A BaseException so that a peer's ``except Exception`` (fla's,
    transformers', ours around optional features) cannot swallow it."""


@contextlib.contextmanager
def time_cap(seconds: float | None):
    """Raise OverTime in the block once ``seconds`` of wall time have passed (SIGALRM; main thread only, else no
    cap). Python handles the signal between bytecodes: a running CUDA kernel or a compiler pass ends first."""
    if seconds is None or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    if seconds <= 0:
        raise OverTime(seconds)

    def expire(signum, frame):
        raise OverTime(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Clock:
    """A section's budget (None: unlimited) and the cap of each of its rows: the smaller of ``row_cap`` and what is
    left of the budget."""

    def __init__(self, budget: float | None, row_cap: float | None, least: float = 3.0) -> None:
        self.end = None if budget is None else time.monotonic() + budget
        self.budget, self.row_cap, self.least = budget, row_cap, least

    def left(self) -> float | None:
        return None if self.end is None else self.end - time.monotonic()

    def cap(self) -> float | None:
        left = self.left()
        caps = [c for c in (self.row_cap, left) if c is not None]
        return min(caps) if caps else None

    def out_of_time(self) -> bool:
        left = self.left()
        return left is not None and left < self.least


@contextlib.contextmanager
def reduced_autotune(max_block: int, warps=(4, 8), stages=(2, 3), log: list | None = None):
    """While importing a third-party package: its ``triton.autotune`` kernels keep only the configurations with
    num_warps in ``warps``, num_stages in ``stages`` and block sizes (BK, BV, BT, ... keyword values) at most
    ``max_block`` (the head size: larger blocks only mask). A kernel none of whose configurations pass keeps them
    all. ``log`` gets (kernel name, configurations, kept) for each decorated kernel."""
    import triton

    original = triton.autotune

    def autotune(configs, key, *args, **kwargs):
        kept = [c for c in configs
                if c.num_warps in warps and c.num_stages in stages
                and all(not (name.startswith("B") and isinstance(value, int) and value > max_block)
                        for name, value in c.kwargs.items())]
        decorate = original(kept or configs, key, *args, **kwargs)

        def wrapped(fn):
            if log is not None:
                inner = fn
                while hasattr(inner, "fn"):
                    inner = inner.fn
                log.append((getattr(inner, "__name__", "?"), len(configs), len(kept or configs)))
            return decorate(fn)

        return wrapped

    triton.autotune = autotune
    try:
        yield
    finally:
        triton.autotune = original
