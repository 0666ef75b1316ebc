"""Triton kernels on a GPU: each op's forward and forward+backward against the chunked torch backend on the same GPU,
achieved memory bandwidth against the card's peak and a measured device-to-device copy, flash-linear-attention's
RWKV-7 kernels and mamba_ssm's scans when they import, and model-level prefill, training step and decode (eager and
CUDA graphs; torch.compile with --compile).

    python benchmarks/bench_triton.py                            # on a CUDA GPU; prints markdown for BENCHMARKS.md
    python benchmarks/bench_triton.py --json r.json --markdown r.md --budget 250 --skip-models
    python benchmarks/bench_triton.py --dry-run                  # CPU, tiny sizes: the plumbing, GPU-only parts skipped
    python benchmarks/bench_triton.py --dry-run --interpret      # ... with the Triton backends under the interpreter

Bandwidth is the minimum traffic of the call (every input read once, every output written once; for the backward
also the output gradient read and the input gradients written) divided by the measured time; it is given against
the data-sheet peak and against a large device-to-device copy measured in the same run. Times are medians of
CUDA-event timings. Rows time every Triton backend of an op, the peers and the ``chunked`` torch backend (never the
per-token ``reference``); the last column is each time over the time of the backend the registry picks for CUDA
tensors. Rows run in tiers over all ops: our backends (compiling only), then the peers (fla autotunes on its first
call), then our extras (wkv7's chunked kernel with chunks of 16), then the peers' (fla's chunk_rwkv7 with its default
chunks of 16, which autotunes a second set of kernels).

Built for a short GPU slot (bench_limits.py): each row has a wall-clock cap (--row-cap, --model-row-cap; compiling and
autotuning included), a row past it keeps what it measured and says so, and that backend skips the op's longer
lengths; with --budget, rows that would start too late are listed as skipped. flash-linear-attention's autotuned
kernels search a reduced space unless --fla-autotune full. Each row is printed when measured, and --json /
--markdown are rewritten after every row, so a run cut short keeps what it measured.

A dry run times only what runs on CPU (the chunked backends, tiny models); the Triton backends, peers and CUDA
graphs are listed with the reason they were skipped.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # --budget counts from here: importing torch, seqzoo and Triton takes seconds

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch

if __name__ == "__main__" and "--interpret" in sys.argv:
    # Triton decides between compiling and interpreting as each kernel is defined, and importing seqzoo defines
    # shared helpers: the choice must be made before that import, or interpreted kernels call compiled helpers.
    os.environ["TRITON_INTERPRET"] = "1"

from seqzoo.models.compat import output_cache  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_limits, also when a test loads this file by path
from bench_limits import Clock, OverTime, reduced_autotune, time_cap  # noqa: E402

OPS = ("causal_conv1d", "selective_scan", "ssd", "wkv7")

# Peak HBM bandwidth in GB/s by device-name fragment (vendor data sheets), most specific first.
PEAK_GBPS = (
    ("H200", 4800), ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350), ("GH200", 4000),
    ("B200", 8000), ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555), ("L40S", 864), ("L40", 864),
    ("L4", 300), ("A10G", 600), ("A10", 600), ("RTX 4090", 1008), ("RTX 3090", 936), ("V100", 900), ("T4", 320),
)
# fla's RWKV7 layer calls chunk_rwkv7 with this bound on the log decay (-exp(-0.5)) and chunks of 64.
FLA_LOWER_BOUND = -0.6065306597126334


@dataclass
class Sizes:
    batch: int
    lengths: tuple[int, ...]
    channels: int  # selective_scan / causal_conv1d channels (Mamba's d_inner)
    scan_state: int  # selective_scan N
    ssd_heads: int
    ssd_head_dim: int
    ssd_state: int
    wkv_heads: int
    wkv_head_size: int
    repeats: int
    warmup: int


GPU_SIZES = Sizes(batch=4, lengths=(2048, 8192), channels=1536, scan_state=16, ssd_heads=24, ssd_head_dim=64,
                  ssd_state=128, wkv_heads=12, wkv_head_size=64, repeats=10, warmup=3)
DRY_SIZES = Sizes(batch=1, lengths=(33,), channels=16, scan_state=16, ssd_heads=2, ssd_head_dim=16, ssd_state=16,
                  wkv_heads=1, wkv_head_size=16, repeats=1, warmup=0)


# ---- timing and bandwidth ----

def median_seconds(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - begin)
    return statistics.median(samples)


def bandwidths(device: torch.device) -> dict:
    """Data-sheet peak and a measured device-to-device copy (GB/s, bytes read + written), with sources."""
    if device.type != "cuda":
        return {"peak_gbps": None, "peak_source": "no GPU", "copy_gbps": None}
    name = torch.cuda.get_device_name(device)
    peak = next((float(gbps) for fragment, gbps in PEAK_GBPS if fragment in name), None)
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)  # 1 GiB, far beyond any L2
    dst = torch.empty_like(src)
    copy = 2 * src.numel() / median_seconds(lambda: dst.copy_(src), repeats=20, warmup=3) / 1e9
    del src, dst
    return {"peak_gbps": peak, "peak_source": f"data sheet ({name})" if peak else f"not in the table ({name})",
            "copy_gbps": copy}


def gbps(num_bytes: int, seconds: float) -> float | None:
    return num_bytes / seconds / 1e9 if seconds and seconds > 0 else None


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def fmt(value, spec=".3f", none="-") -> str:
    return none if value is None or value != value else format(value, spec)


def pct(value, of) -> str:
    return "-" if value is None or not of else f"{100 * value / of:.0f}%"


# ---- one case per op: inputs at a size, and how to call a backend on them ----

def op_case(op: str, sizes: Sizes, length: int, dtype: torch.dtype, device: torch.device):
    """(inputs, call) with inputs in the layouts and dtypes the model layers pass; call(fn, inputs) -> (y, state)."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dt)

    B, T = sizes.batch, length
    if op == "causal_conv1d":
        D = sizes.channels
        inputs = {"x": rnd(B, T, D), "weight": rnd(D, 4, scale=0.5), "bias": rnd(D)}
        return inputs, lambda f, t: f(t["x"], t["weight"], t["bias"], activation="silu")
    if op == "selective_scan":
        D, N = sizes.channels, sizes.scan_state
        delta = torch.nn.functional.softplus(rnd(B, T, D, dt=torch.float32) - 2)
        inputs = {"u": rnd(B, T, D), "delta": delta, "A": -torch.rand(D, N, generator=g).to(device) - 0.5,
                  "B": rnd(B, T, N), "C": rnd(B, T, N), "D": rnd(D, dt=torch.float32), "z": rnd(B, T, D)}
        return inputs, lambda f, t: f(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"])
    if op == "ssd":
        H, P, N = sizes.ssd_heads, sizes.ssd_head_dim, sizes.ssd_state
        dt = torch.nn.functional.softplus(rnd(B, T, H, dt=torch.float32) - 2)
        inputs = {"x": rnd(B, T, H, P), "dt": dt, "A": -torch.rand(H, generator=g).to(device) - 0.5,
                  "B": rnd(B, T, 1, N), "C": rnd(B, T, 1, N), "D": rnd(H, dt=torch.float32)}
        return inputs, lambda f, t: f(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], chunk_size=64)
    if op == "wkv7":
        H, K = sizes.wkv_heads, sizes.wkv_head_size
        kk = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g), dim=-1)
        iclr = torch.rand(B, T, H, K, generator=g)
        # RWKV-7's ranges: log decay in (-exp(-0.5), 0], a = -kk, b = kk * iclr.
        inputs = {"r": rnd(B, T, H, K), "w": (-0.6 * torch.rand(B, T, H, K, generator=g)).to(device, dtype),
                  "k": rnd(B, T, H, K, scale=0.3), "v": rnd(B, T, H, K), "a": (-kk).to(device, dtype),
                  "b": (kk * iclr).to(device, dtype)}
        return inputs, lambda f, t: f(t["r"], t["w"], t["k"], t["v"], t["a"], t["b"])
    raise ValueError(f"unknown op {op!r}; valid: {', '.join(OPS)}")


# Autotuned fla kernels keep num_warps 4/8, num_stages 2/3 and blocks up to the head size (bench_limits.py says
# why); --fla-autotune full keeps fla's own spaces. What was kept is reported in the run's metadata.
FLA_AUTOTUNE: dict = {"mode": "reduced", "max_block": 64, "kernels": []}


def peer_kernels(op: str) -> tuple[dict[str, tuple[Callable, bool]], list[str]]:
    """Third-party kernels for ``op`` that import here, as label -> (function with seqzoo's signature, extra), and
    why others don't. Extra rows are timed after every op's main rows."""
    peers: dict[str, tuple[Callable, bool]] = {}
    missing: list[str] = []
    if op == "wkv7":
        try:
            reduce = FLA_AUTOTUNE["mode"] == "reduced"
            with (reduced_autotune(FLA_AUTOTUNE["max_block"], log=FLA_AUTOTUNE["kernels"]) if reduce
                  else contextlib.nullcontext()):
                from fla.ops.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7

            # fla keeps the state as (K, V), seqzoo as (V, K); outputs are (B, T, H, V) in both.
            def fla(fn, **options):
                return lambda r, w, k, v, a, b: fn(r=r, w=w, k=k, v=v, a=a, b=b, scale=1.0,
                                                   output_final_state=True, **options)

            peers["fla chunk_rwkv7 (as its RWKV7 layer: chunk 64, safe_gate)"] = (fla(
                chunk_rwkv7, safe_gate=True, lower_bound=FLA_LOWER_BOUND, chunk_size=64), False)
            peers["fla fused_recurrent_rwkv7"] = (fla(fused_recurrent_rwkv7), False)
            # Chunks of 16: a second set of autotuned kernels (their keys hold the chunk size), so it comes last.
            peers["fla chunk_rwkv7 (defaults)"] = (fla(chunk_rwkv7), True)
        except Exception as err:  # reported in the output: a missing peer is a finding, not a crash
            missing.append(f"flash-linear-attention: {type(err).__name__}: {str(err)[:120]}")
    if op == "selective_scan":
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            def mamba_scan(u, delta, A, B, C, D, z):
                # mamba_ssm is channels-first: (B, D, L) and (B, N, L); the transposes are part of the timed call.
                y, last = selective_scan_fn(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2),
                                            C.transpose(1, 2), D, z.transpose(1, 2), return_last_state=True)
                return y.transpose(1, 2), last

            peers["mamba_ssm selective_scan_fn"] = (mamba_scan, False)
        except Exception as err:
            missing.append(f"mamba_ssm: {type(err).__name__}: {str(err)[:120]}")
    if op == "ssd":
        try:
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            peers["mamba_ssm mamba_chunk_scan_combined"] = (lambda x, dt, A, B, C, D, chunk_size: \
                mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=256, D=D, return_final_states=True), False)
        except Exception as err:
            missing.append(f"mamba_ssm: {type(err).__name__}: {str(err)[:120]}")
    return peers, missing


@contextlib.contextmanager
def wkv7_chunk(size: int | None):
    """Run the triton_chunked wkv7 kernels with chunks of ``size`` (a tile size; None keeps the default)."""
    if size is None:
        yield
        return
    import importlib

    module = importlib.import_module("seqzoo.kernels.wkv7.triton_chunked")
    saved, module.CHUNK = module.CHUNK, size
    try:
        yield
    finally:
        module.CHUNK = saved


class Entry(NamedTuple):
    label: str
    fn: Callable | None
    chunk: int | None  # triton_chunked's chunk size override
    skip: str  # why it is not timed ("" when it is)
    tier: int  # timing order over all ops: 0 our backends, 1 peers, 2 our extras, 3 peers' extras


def kernel_entries(op: str, device: torch.device, interpret: bool) -> tuple[list[Entry], str]:
    """Every backend and peer timed for ``op``, the registry's CUDA choice first, and that choice's label. The
    per-token ``reference`` backend is never timed (at T = 8192 on a GPU it is seconds per call); ``chunked`` is the
    torch baseline."""
    from seqzoo.kernels import get_kernel
    from seqzoo.kernels.registry import get_op

    gpu = device.type == "cuda" or interpret
    tritons = sorted((b for b in get_op(op).backends.values() if b.name.startswith("triton")),
                     key=lambda b: -b.priority)
    skip = "" if gpu else "needs a GPU (pass --interpret to run it under Triton's interpreter)"
    entries = [Entry(b.name, None if skip else get_kernel(op, b.name), None, skip, 0) for b in tritons]
    entries.append(Entry("chunked", get_kernel(op, "chunked"), None, "", 0))
    peers, missing = peer_kernels(op) if device.type == "cuda" else ({}, [])
    entries += [Entry(name, fn, None, "", 3 if extra else 1) for name, (fn, extra) in peers.items()]
    if any(b.name == "triton_chunked" for b in tritons):
        entries.append(Entry("triton_chunked (chunks of 16)", None if skip else get_kernel(op, "triton_chunked"),
                             16, skip, 2))
    entries += [Entry(name.split(":")[0], None, None, f"not importable: {name}", 1) for name in missing]
    return entries, (tritons[0].name if tritons and gpu else "chunked")


def time_backend(fn, call, inputs, dy, sizes, chunk, row):
    """Forward, then forward+backward, each the median of ``sizes.repeats`` timings, written into ``row`` as soon as
    measured (a row stopped by its cap keeps its forward time)."""
    leaves = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}

    def forward():
        with torch.no_grad(), wkv7_chunk(chunk):
            call(fn, inputs)

    def forward_backward():
        with wkv7_chunk(chunk):
            out, _ = call(fn, leaves)
            torch.autograd.backward([out], [dy])
        for t in leaves.values():
            t.grad = None

    row["stage"] = "forward"
    row["fwd_ms"] = median_seconds(forward, sizes.repeats, sizes.warmup) * 1e3
    row["stage"] = "forward+backward"
    try:
        row["fwd_bwd_ms"] = median_seconds(forward_backward, sizes.repeats, sizes.warmup) * 1e3
    except (NotImplementedError, RuntimeError) as err:  # some peers have no backward
        row["note"] = f"no backward ({type(err).__name__}: {str(err)[:80]})"
    row.pop("stage")


def kernel_rows(sizes: Sizes, device: torch.device, dtype: torch.dtype, ops, interpret: bool, clock: Clock,
                on_row: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    """Rows for every op, length and backend, by tier over all ops: our backends (compiling only: the figures every
    op needs), the peers (fla autotunes on its first call), our extras, the peers' extras. ``on_row`` sees the rows
    so far after each row. A row past its cap keeps what it measured and says so; that backend then skips the longer
    lengths of its op. Rows that would start with less than a few seconds of the budget left are skipped."""
    plan = {op: kernel_entries(op, device, interpret) for op in ops}
    rows: list[dict] = []
    over: dict[tuple[str, str], str] = {}  # (op, backend) -> why its longer lengths are skipped
    for tier in range(4):
        for op in ops:
            entries, default = plan[op]
            for length in sizes.lengths:
                todo = [e for e in entries if e.tier == tier]
                if not todo:
                    continue
                inputs, call = op_case(op, sizes, length, dtype, device)
                float_inputs = [t for t in inputs.values() if t.is_floating_point()]
                y_ref = dy = None
                for entry in todo:
                    row = {"op": op, "T": length, "backend": entry.label, "default": entry.label == default,
                           "fwd_ms": None, "fwd_bwd_ms": None, "fwd_gbps": None, "bwd_gbps": None,
                           "rel_err": None, "note": entry.skip, "seconds": None}
                    start = time.monotonic()
                    if not entry.skip and (op, entry.label) in over:
                        row["note"] = over[(op, entry.label)]
                    elif not entry.skip and clock.out_of_time():
                        row["note"] = f"skipped: out of time (section budget {clock.budget:.0f} s)"
                    elif not entry.skip:
                        cap = clock.cap()
                        try:
                            with time_cap(cap):
                                if y_ref is None:  # the chunked backend's output: the error reference
                                    with torch.no_grad():
                                        y_ref, _ = call(dict((e.label, e.fn) for e in entries)["chunked"], inputs)
                                    dy = torch.randn_like(y_ref)
                                with torch.no_grad(), wkv7_chunk(entry.chunk):
                                    y, _ = call(entry.fn, inputs)
                                row["rel_err"] = ((y.float() - y_ref.float()).abs().max()
                                                  / y_ref.float().abs().max()).item()
                                time_backend(entry.fn, call, inputs, dy, sizes, entry.chunk, row)
                        except OverTime:
                            stage = row.pop("stage", "its first call (compiling, autotuning) or the chunked reference")
                            row["note"] = f"skipped: over {cap:.3g} s (in {stage})"
                            over[(op, entry.label)] = f"skipped: over {cap:.3g} s at T={length}"
                        except Exception as err:  # one failing backend must not hide the others' figures
                            row.pop("stage", None)
                            row["note"] = f"failed: {type(err).__name__}: {str(err)[:160]}"
                        fwd, both = row["fwd_ms"], row["fwd_bwd_ms"]
                        fwd_bytes = nbytes(float_inputs) + (nbytes([y_ref]) if y_ref is not None else 0)
                        bwd_bytes = 2 * nbytes(float_inputs) + (nbytes([dy]) if dy is not None else 0)
                        row["fwd_gbps"] = gbps(fwd_bytes, fwd / 1e3) if fwd else None
                        row["bwd_gbps"] = gbps(bwd_bytes, (both - fwd) / 1e3) if fwd and both else None
                    row["seconds"] = round(time.monotonic() - start, 1)
                    rows.append(row)
                    add_ratios(rows)
                    print(f"  row: {op} T={length} {entry.label}: fwd {fmt(row['fwd_ms'])} ms, fwd+bwd "
                          f"{fmt(row['fwd_bwd_ms'])} ms, {row['seconds']} s {row['note']}", flush=True)
                    on_row(rows)
                del inputs, y_ref, dy
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Each row's times over those of the registry's CUDA choice for the same op and length."""
    defaults = {(r["op"], r["T"]): r for r in rows if r["default"]}
    for row in rows:
        ours = defaults.get((row["op"], row["T"]))
        row["vs_default"] = [None if not (ours and row[k] and ours[k]) else row[k] / ours[k]
                             for k in ("fwd_ms", "fwd_bwd_ms")]


def kernel_table(rows: list[dict], bw: dict) -> str:
    body = []
    order = list(dict.fromkeys(r["op"] for r in rows))  # ops in the order they ran; extra rows join their op
    for r in sorted(rows, key=lambda r: (order.index(r["op"]), r["T"])):
        ratio = r.get("vs_default", [None, None])
        body.append([r["op"], r["T"], r["backend"], fmt(r["fwd_ms"]), fmt(r["fwd_bwd_ms"]),
                     f"{fmt(r['fwd_gbps'], '.0f')} ({pct(r['fwd_gbps'], bw['peak_gbps'])} / "
                     f"{pct(r['fwd_gbps'], bw['copy_gbps'])})",
                     fmt(r["bwd_gbps"], ".0f"), fmt(r["rel_err"], ".1e"),
                     f"{fmt(ratio[0], '.2f')}x / {fmt(ratio[1], '.2f')}x", r["note"]])
    return table(["op", "T", "backend", "fwd ms", "fwd+bwd ms", "fwd GB/s (% peak / % copy)", "bwd GB/s",
                  "max|y - chunked| / max|y|", "time / default", "note"], body)


# ---- model level ----

@contextlib.contextmanager
def kernel_backends(choice: dict[str, str]):
    from seqzoo.kernels import use_backend

    with contextlib.ExitStack() as stack:
        for op, name in choice.items():
            stack.enter_context(use_backend(op, name))
        yield


class GreedyDecoder:
    """Greedy decoding in which one token is one replay of a captured CUDA graph of the whole model step.

    The step reads the token's embedding and the cached states from fixed tensors and writes the next token and the
    new states back into them, so a replay needs no Python or launches per layer. Embeddings go in as
    ``inputs_embeds`` because the model checks the range of ``input_ids`` on the host, which a capture forbids.
    Needs fixed-size recurrent states in every layer (a key/value cache grows). With ``use_graph=False`` the step runs
    eagerly (the dry run checks the state handling that way).
    """

    def __init__(self, model, prompt_ids: torch.Tensor, use_graph: bool) -> None:
        self.model = model
        with torch.no_grad():
            out = model(prompt_ids, use_cache=True)
        self.cache = output_cache(out)
        if not all(isinstance(self.cache.layer(i), dict) for i in range(len(self.cache.layers))):
            raise TypeError(f"GreedyDecoder needs fixed-size recurrent states in every layer, got {self.cache!r}")
        self.token = out.logits[:, -1:].argmax(-1)  # (B, 1), read and written by every step
        # The fixed state tensors every step reads and overwrites.
        self.fixed = {(i, name): value.clone() for i in range(len(self.cache.layers))
                      for name, value in self.cache.layer(i).items()}
        self._point_cache_at_fixed()
        self.graph = None
        if use_graph:
            saved = {key: value.clone() for key, value in self.fixed.items()}
            token = self.token.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # compile the kernels and settle the allocator before capturing
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream().wait_stream(stream)
            for key, value in saved.items():
                self.fixed[key].copy_(value)
            self.token.copy_(token)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._step()

    def _step(self) -> None:
        with torch.no_grad():
            embeds = self.model.get_input_embeddings()(self.token)
            logits = self.model(inputs_embeds=embeds, cache=self.cache, use_cache=True).logits
            for (i, name), fixed in self.fixed.items():
                fixed.copy_(self.cache.layer(i)[name])
            self._point_cache_at_fixed()
            self.token.copy_(logits[:, -1:].argmax(-1))

    def _point_cache_at_fixed(self) -> None:
        for i in range(len(self.cache.layers)):
            self.cache.update_layer(i, {name: self.fixed[(i, name)] for name in self.cache.layer(i)})

    def generate(self, steps: int) -> torch.Tensor:
        tokens = [self.token.clone()]
        for _ in range(steps - 1):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
            tokens.append(self.token.clone())
        return torch.cat(tokens, dim=1)


def eager_greedy(model, prompt_ids: torch.Tensor, steps: int) -> torch.Tensor:
    with torch.no_grad():
        out = model(prompt_ids, use_cache=True)
        cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
        tokens = [token]
        for _ in range(steps - 1):
            out = model(token, cache=cache, use_cache=True)
            cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
            tokens.append(token)
    return torch.cat(tokens, dim=1)


def graphed_prefill(model, embeds: torch.Tensor):
    """A CUDA graph of ``model(inputs_embeds=embeds)`` without gradients; returns its replay function."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(2):
            model(inputs_embeds=embeds, use_cache=False)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        model(inputs_embeds=embeds, use_cache=False)
    return graph.replay


def compiled_decode(model, prompt, steps, expected, repeats, warmup) -> tuple[str, float | None]:
    """Greedy decoding with the model's forward under torch.compile(mode="reduce-overhead") (CUDA graphs by
    inductor). Reports failures instead of raising: whether this works is one of the things measured."""
    try:
        compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
        tokens = eager_greedy(compiled, prompt, steps)
        note = "same tokens" if torch.equal(tokens, expected) else "DIFFERENT tokens"
        return note, median_seconds(lambda: eager_greedy(compiled, prompt, steps), repeats, warmup) / steps
    except Exception as err:
        return f"failed: {type(err).__name__}: {str(err)[:100]}", None


MODEL_FAMILIES = {  # label -> (preset, the backend choices compared: label -> {op: backend})
    "Mamba": ("mamba", {"default": {}, "chunked": {"causal_conv1d": "chunked", "selective_scan": "chunked"}}),
    "Mamba-2": ("mamba2", {"default": {}, "chunked": {"causal_conv1d": "chunked", "ssd": "chunked"}}),
    "RWKV-7": ("rwkv7", {"default": {}, "triton (fused recurrent)": {"wkv7": "triton"},
                         "chunked": {"wkv7": "chunked"}}),
}


def model_rows(args, device: torch.device, dtype: torch.dtype, clock: Clock,
               on_row: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    """Every family with the registry's kernels first, then the forced backends. Each row has its own cap (a row
    stopped by it keeps the phases it finished); rows that would start with too little of the budget left are
    skipped, and say so."""
    import seqzoo

    dry = args.dry_run
    cuda = device.type == "cuda"
    overrides = {} if dry else {"hidden_size": args.hidden_size, "num_hidden_layers": args.layers}
    batch, length, steps = (1, 9, 3) if dry else (args.model_batch, args.model_length, args.decode_steps)
    repeats, warmup = (1, 0) if dry else (args.model_repeats, 1)
    models: dict[str, torch.nn.Module] = {}
    plan = []
    for first in (True, False):
        for family, (preset, choices) in MODEL_FAMILIES.items():
            if not cuda:  # on CPU the Triton backends cannot run: time the chunked kernels only
                choices = {"chunked": choices["chunked"]}
            plan += [(family, preset, label, choice) for i, (label, choice) in enumerate(choices.items())
                     if (i == 0) == first]
    rows = []
    for family, preset, label, choice in plan:
        row = {"model": family, "kernels": label, "B": batch, "T": length, "prefill_ms": None,
               "prefill_graph_ms": None, "train_ms": None, "decode_ms": None, "decode_graph_ms": None,
               "graph_check": "skipped: needs CUDA" if not cuda else "", "decode_compile_ms": None,
               "compile_check": "not run (pass --compile)" if not args.compile else "", "note": "",
               "seconds": None}
        start = time.monotonic()
        cap = clock.cap()
        phase = "building the model"
        if clock.out_of_time():
            row["note"] = f"skipped: out of time (section budget {clock.budget:.0f} s)"
        else:
            try:
                with time_cap(cap), kernel_backends(choice):
                    if family not in models:
                        torch.manual_seed(0)
                        model = seqzoo.create_model(f"{preset}-{'tiny' if dry else 'small'}", **overrides)
                        models[family] = model.to(device=device, dtype=dtype).eval()
                    model = models[family]
                    vocab = model.config.vocab_size
                    ids = torch.randint(3, vocab - 2, (batch, length), device=device,
                                        generator=torch.Generator(device=device).manual_seed(0))
                    prompt = ids[:1, : max(1, length // 4)]

                    def prefill():
                        with torch.no_grad():
                            model(ids, use_cache=False)

                    def train_step():
                        model(ids, labels=ids, use_cache=False).loss.backward()
                        model.zero_grad(set_to_none=True)

                    phase = "prefill"
                    row["prefill_ms"] = median_seconds(prefill, repeats, warmup) * 1e3
                    phase = "training step"
                    row["train_ms"] = median_seconds(train_step, repeats, warmup) * 1e3
                    phase = "eager decode"
                    row["decode_ms"] = median_seconds(lambda: eager_greedy(model, prompt, steps), repeats,
                                                      warmup) / steps * 1e3
                    expected = eager_greedy(model, prompt, steps)
                    if cuda:
                        phase = "CUDA-graph decode"
                        decoder = GreedyDecoder(model, prompt, use_graph=True)
                        same = torch.equal(decoder.generate(steps), expected)
                        decoder = GreedyDecoder(model, prompt, use_graph=True)
                        row["decode_graph_ms"] = median_seconds(lambda: decoder.generate(steps), repeats,
                                                                warmup) / steps * 1e3
                        row["graph_check"] = "same tokens" if same else "DIFFERENT tokens"
                        if not choice:
                            # Only the registry's (Triton) kernels: the chunked torch backends read values on the
                            # host (the factored-score check), which a capture forbids, and a failed capture can
                            # leave the device unusable for the rows after it.
                            phase = "CUDA-graph prefill"
                            embeds = model.get_input_embeddings()(ids).detach()
                            row["prefill_graph_ms"] = median_seconds(graphed_prefill(model, embeds), repeats,
                                                                     warmup) * 1e3
                        if args.compile:
                            phase = "torch.compile decode"
                            row["compile_check"], per_token = compiled_decode(model, prompt, steps, expected,
                                                                              repeats, warmup)
                            row["decode_compile_ms"] = None if per_token is None else per_token * 1e3
                    else:
                        tokens = GreedyDecoder(model, prompt, use_graph=False).generate(steps)
                        row["graph_check"] = ("skipped: needs CUDA; the graph's step replayed eagerly gives the "
                                              + ("same tokens" if torch.equal(tokens, expected) else
                                                 "DIFFERENT tokens"))
            except OverTime:
                row["note"] = f"stopped: over {cap:.3g} s (in {phase})"
            except Exception as err:  # the row says what failed; the other rows still run
                row["note"] = f"failed in {phase}: {type(err).__name__}: {str(err)[:160]}"
            model = None
            if cuda:
                torch.cuda.empty_cache()
        row["seconds"] = round(time.monotonic() - start, 1)
        rows.append(row)
        print(f"  row: {family} / {label}: prefill {fmt(row['prefill_ms'], '.2f')} ms, train "
              f"{fmt(row['train_ms'], '.2f')} ms, decode {fmt(row['decode_ms'], '.2f')} / graph "
              f"{fmt(row['decode_graph_ms'], '.2f')} ms/token, {row['seconds']} s {row['note']}", flush=True)
        on_row(rows)
    return rows


def model_tables(rows: list[dict]) -> tuple[str, str]:
    order = {family: i for i, family in enumerate(MODEL_FAMILIES)}
    rows = sorted(rows, key=lambda r: order.get(r["model"], 0))  # each family's rows together, as they ran
    tokens = {id(r): r["B"] * r["T"] for r in rows}
    first = table(
        ["model", "kernels", "B x T", "prefill ms", "prefill ms (CUDA graph)", "training step ms",
         "k tokens/s (training)", "note"],
        [[r["model"], r["kernels"], f"{r['B']}x{r['T']}", fmt(r["prefill_ms"], ".2f"),
          fmt(r["prefill_graph_ms"], ".2f"), fmt(r["train_ms"], ".2f"),
          fmt(None if not r["train_ms"] else tokens[id(r)] / r["train_ms"], ".1f"), r["note"]] for r in rows])
    second = table(
        ["model", "kernels", "eager ms/token", "CUDA graph ms/token", "graph check",
         "torch.compile reduce-overhead ms/token", "compile check"],
        [[r["model"], r["kernels"], fmt(r["decode_ms"], ".2f"), fmt(r["decode_graph_ms"], ".2f"), r["graph_check"],
          fmt(r["decode_compile_ms"], ".2f"), r["compile_check"]] for r in rows])
    return first, second


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(x) for x in row) + " |" for row in rows])


def allow_triton_on_cpu() -> None:
    """--interpret only: let the registry run the Triton backends on CPU tensors (under the interpreter)."""
    from seqzoo.kernels.registry import get_op, refresh
    from seqzoo.kernels.triton_support import speed_up_interpreter

    speed_up_interpreter()
    for op in OPS:
        for backend in get_op(op).backends.values():
            if backend.name.startswith("triton"):
                backend.supports = lambda *args, **kwargs: (True, "")
    refresh()  # selection is cached: drop choices made with the old supports()


class Report:
    """What the run measured so far, as JSON and markdown files rewritten after every row (``final=False``) and
    every section: a run cut short keeps what it measured."""

    def __init__(self, args) -> None:
        self.args, self.data, self.sections = args, {}, {}

    def add(self, key, value, markdown: str, final: bool = True) -> None:
        self.data[key] = value
        self.sections[key] = markdown
        if final:
            print(markdown + "\n", flush=True)
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump(self.data, f, indent=1, default=str)
        if self.args.markdown:
            with open(self.args.markdown, "w") as f:
                f.write("\n\n".join(self.sections.values()) + "\n")


def main(args) -> None:
    import triton

    import seqzoo  # noqa: F401  (registers the kernels)

    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.interpret:
        allow_triton_on_cpu()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or pass --dry-run to check the script on CPU")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    if args.lengths:
        sizes = Sizes(**{**sizes.__dict__, "lengths": tuple(args.lengths)})
    FLA_AUTOTUNE.update(mode=args.fla_autotune, max_block=sizes.wkv_head_size)
    started = STARTED
    bw = bandwidths(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    report = Report(args)
    meta = {"device": name, "torch": torch.__version__, "triton": triton.__version__, "dtype": args.dtype,
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv), **bw,
            "budget_s": args.budget, "row_cap_s": args.row_cap, "fla_autotune": FLA_AUTOTUNE}

    def meta_section() -> None:
        kernels = FLA_AUTOTUNE["kernels"]
        tuned = (f"; flash-linear-attention autotuned over a reduced space (num_warps 4/8, num_stages 2/3, blocks <= "
                 f"{FLA_AUTOTUNE['max_block']}): {sum(k[2] for k in kernels)} of {sum(k[1] for k in kernels)} "
                 f"configurations in {len(kernels)} kernels" if kernels else "")
        report.add("meta", meta, (
            f"device: {name}; torch {torch.__version__}, triton {triton.__version__}; inputs {args.dtype}; peak "
            f"bandwidth {fmt(bw['peak_gbps'], '.0f')} GB/s ({bw['peak_source']}), device-to-device copy "
            f"{fmt(bw['copy_gbps'], '.0f')} GB/s (1 GiB, bytes read + written){tuned}\n\n"
            f"command: `{meta['command']}`"), final=False)

    meta_section()
    print(f"device: {name}; peak {fmt(bw['peak_gbps'], '.0f')} GB/s, copy {fmt(bw['copy_gbps'], '.0f')} GB/s",
          flush=True)

    def kernel_section(rows: list[dict], final: bool = True) -> None:
        report.add("kernels", rows, (
            f"## Kernels, B={sizes.batch}, {args.dtype}: forward and forward+backward\n\n"
            f"Sizes: conv/selective_scan D={sizes.channels} (N={sizes.scan_state}); ssd H={sizes.ssd_heads} "
            f"P={sizes.ssd_head_dim} N={sizes.ssd_state} G=1; wkv7 H={sizes.wkv_heads} K=V={sizes.wkv_head_size}. "
            "GB/s: minimum traffic / time (% of the data-sheet peak / % of the measured copy). Time / default: "
            "that backend's time over the time of the backend the registry picks for CUDA tensors (forward / "
            "forward+backward); > 1 means the default is faster. Each row is capped at "
            f"{fmt(args.row_cap, '.0f', 'no')} s, compiling and autotuning included.\n\n" + kernel_table(rows, bw)),
            final)

    if not args.models_only:
        budget = None if args.budget is None else args.budget - (time.monotonic() - started)
        clock = Clock(budget if args.skip_models or budget is None else budget * args.kernel_share, args.row_cap)
        rows = kernel_rows(sizes, device, dtype, args.ops or OPS, args.interpret, clock,
                           on_row=lambda so_far: kernel_section(so_far, final=False))
        meta_section()
        kernel_section(rows)
    if args.skip_models:
        return

    where = "tiny presets" if args.dry_run else f"hidden {args.hidden_size}, {args.layers} layers"

    def model_section(rows: list[dict], final: bool = True) -> None:
        first, second = model_tables(rows)
        report.add("models", rows, (
            f"## Models ({where}, {args.dtype}): prefill and training step\n\nkernels: `default` is the registry's "
            "choice for CUDA tensors (Triton), the others force a backend.\n\n" + first
            + f"\n\n## Greedy decode ({where}, B=1, ms per token)\n\n" + second), final)

    budget = None if args.budget is None else args.budget - (time.monotonic() - started)
    rows = model_rows(args, device, dtype, Clock(budget, args.model_row_cap),
                      on_row=lambda so_far: model_section(so_far, final=False))
    model_section(rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, one repeat; GPU-only parts skipped")
    parser.add_argument("--interpret", action="store_true",
                        help="with --dry-run: run the Triton backends under Triton's interpreter (slow)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--ops", nargs="+", choices=OPS, help="kernel ops to time, in this order (default: all)")
    parser.add_argument("--lengths", nargs="+", type=int, help="kernel sequence lengths (default: 2048 8192 on a GPU)")
    parser.add_argument("--skip-models", action="store_true", help="kernels only")
    parser.add_argument("--models-only", action="store_true", help="the model tables only")
    parser.add_argument("--budget", type=float,
                        help="seconds for the whole run: rows that would start with less than 3 s left are skipped "
                             "and say so (default: no limit)")
    parser.add_argument("--kernel-share", type=float, default=0.6,
                        help="with --budget and both sections: the kernels' share of it (default 0.6)")
    parser.add_argument("--row-cap", type=float, default=60.0,
                        help="seconds per kernel row (one backend at one length, compiling and autotuning "
                             "included); a row past it is stopped, says so, and that backend skips the longer "
                             "lengths (default 60; 0: no cap)")
    parser.add_argument("--model-row-cap", type=float, default=60.0,
                        help="seconds per model row (one family with one kernel choice; default 60; 0: no cap)")
    parser.add_argument("--fla-autotune", choices=("reduced", "full"), default="reduced",
                        help="flash-linear-attention's autotuning space: reduced (num_warps 4/8, num_stages 2/3, "
                             "blocks <= the head size; tens of seconds) or fla's own (minutes per chunk size)")
    parser.add_argument("--compile", action="store_true",
                        help="also decode under torch.compile(mode='reduce-overhead') (compiles each model: slow)")
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--model-batch", type=int, default=4)
    parser.add_argument("--model-length", type=int, default=2048)
    parser.add_argument("--decode-steps", type=int, default=64)
    parser.add_argument("--model-repeats", type=int, default=3, help="timed repeats per model figure (default 3)")
    parser.add_argument("--json", help="write the results as JSON to this file (rewritten after every row)")
    parser.add_argument("--markdown", help="write the markdown tables to this file (rewritten after every row)")
    args = parser.parse_args(argv)
    if args.interpret and not args.dry_run:
        parser.error("--interpret goes with --dry-run (on a GPU the Triton backends run compiled)")
    if args.skip_models and args.models_only:
        parser.error("--skip-models and --models-only leave nothing to run; pass at most one")
    if args.lengths and min(args.lengths) < 2:
        parser.error(f"--lengths must be at least 2 (a prefill), got {args.lengths}")
    if not 0 < args.kernel_share < 1:
        parser.error(f"--kernel-share must be between 0 and 1, got {args.kernel_share}")
    if args.budget is not None and args.budget <= 0:
        parser.error(f"--budget must be positive, got {args.budget}")
    args.row_cap = args.row_cap or None
    args.model_row_cap = args.model_row_cap or None
    return args


if __name__ == "__main__":
    main(parse_args())
