"""benchmarks/bench_limits.py and its use in benchmarks/bench_triton.py: a row past its cap is stopped, keeps what it
measured and says so, and its backend skips the longer lengths while the other backends still run; rows that would
start too late are skipped; a third-party package's autotuning space is reduced as documented."""

import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_limits import Clock, OverTime, reduced_autotune, time_cap  # noqa: E402

from tests.conftest import load_benchmark  # noqa: E402


def _bench():
    return load_benchmark("bench_triton", register=True)  # dataclasses look the module up while it runs


def test_time_cap_stops_a_block_and_is_cleared_after():
    start = time.monotonic()
    with pytest.raises(OverTime):
        with time_cap(0.2):
            time.sleep(3)
    assert time.monotonic() - start < 1.5
    with time_cap(0.2):
        pass
    time.sleep(0.4)  # an alarm left armed would raise here
    with pytest.raises(OverTime):
        with time_cap(0):
            pass


def test_over_time_is_not_swallowed_by_a_generic_handler():
    with pytest.raises(OverTime):
        with time_cap(0.1):
            try:
                time.sleep(2)
            except Exception:  # what a peer's own code might do
                pass


def test_clock_caps_rows_by_what_is_left():
    clock = Clock(budget=10, row_cap=60)
    assert 9 < clock.cap() <= 10 and not clock.out_of_time()
    assert Clock(budget=2, row_cap=60).out_of_time()
    assert Clock(budget=None, row_cap=None).cap() is None


def test_a_slow_backend_is_stopped_and_skips_longer_lengths(monkeypatch):
    bench = _bench()
    import seqzoo  # noqa: F401  (registers the kernels)
    from seqzoo.kernels import get_kernel

    chunked = get_kernel("wkv7", "chunked")

    def slow(*args, **kwargs):
        time.sleep(60)  # (stopped after 3 s; the bounds leave room for a loaded machine)
        return chunked(*args, **kwargs)

    entries = [bench.Entry("slow", slow, None, "", 0), bench.Entry("chunked", chunked, None, "", 0)]
    monkeypatch.setattr(bench, "kernel_entries", lambda op, device, interpret: (entries, "chunked"))
    sizes = bench.Sizes(**{**bench.DRY_SIZES.__dict__, "lengths": (9, 17)})
    seen = []
    start = time.monotonic()
    rows = bench.kernel_rows(sizes, torch.device("cpu"), torch.float32, ["wkv7"], False, Clock(None, 3),
                             on_row=lambda so_far: seen.append(len(so_far)))
    assert time.monotonic() - start < 30
    by = {(r["backend"], r["T"]): r for r in rows}
    assert by[("slow", 9)]["note"].startswith("skipped: over 3 s (in ") and by[("slow", 9)]["fwd_ms"] is None
    assert by[("slow", 17)]["note"] == "skipped: over 3 s at T=9"
    assert by[("chunked", 9)]["fwd_ms"] > 0 and by[("chunked", 17)]["fwd_bwd_ms"] > 0
    assert seen == [1, 2, 3, 4]  # the caller saw every row as it was measured


def test_rows_that_would_start_too_late_are_skipped():
    bench = _bench()
    import seqzoo  # noqa: F401  (registers the kernels)

    cpu = torch.device("cpu")
    rows = bench.kernel_rows(bench.DRY_SIZES, cpu, torch.float32, ["wkv7"], False, Clock(1, 60))
    timed = [r for r in rows if not r["note"].startswith("needs a GPU")]
    assert timed and all(r["note"].startswith("skipped: out of time (section budget 1 s)") for r in timed), rows
    assert all(r["fwd_ms"] is None for r in rows)
    args = bench.parse_args(["--dry-run"])
    models = bench.model_rows(args, cpu, torch.float32, Clock(1, 60))
    assert len(models) == 3 and all(r["note"].startswith("skipped: out of time") for r in models), models


def test_reduced_autotune_keeps_the_documented_space():
    triton = pytest.importorskip("triton")
    import triton.language as tl

    original = triton.autotune
    configs = [triton.Config({"BK": bk}, num_warps=w, num_stages=s)
               for bk in (32, 64, 128) for w in (2, 4, 8, 16) for s in (2, 3, 4)]
    log = []
    with reduced_autotune(64, log=log):
        @triton.autotune(configs=configs, key=["n"])
        @triton.jit
        def kernel(x_ptr, n, BK: tl.constexpr):
            tl.store(x_ptr + tl.arange(0, BK), tl.zeros((BK,), tl.float32))

        @triton.autotune(configs=[triton.Config({}, num_warps=1)], key=["n"])
        @triton.jit
        def narrow(x_ptr, n):
            pass

    kept = {(c.kwargs["BK"], c.num_warps, c.num_stages) for c in kernel.configs}
    assert kept == {(bk, w, s) for bk in (32, 64) for w in (4, 8) for s in (2, 3)}
    assert len(narrow.configs) == 1  # nothing passes: the kernel keeps its own space
    assert log == [("kernel", 36, 8), ("narrow", 1, 1)]
    assert triton.autotune is original
