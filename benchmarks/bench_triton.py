"""Triton kernels on a GPU: each op's forward and forward+backward against the chunked torch backend on the same GPU,
achieved memory bandwidth against the card's peak and a measured device-to-device copy, flash-linear-attention's
RWKV-7 kernels and mamba_ssm's scans when they import, and model-level prefill, training step and decode (eager and
CUDA graphs; torch.compile with --compile).

    python benchmarks/bench_triton.py                            # on a CUDA GPU; prints markdown for BENCHMARKS.md
    python benchmarks/bench_triton.py --json r.json --markdown r.md
    python benchmarks/bench_triton.py --dry-run                  # CPU, tiny sizes: the plumbing, GPU-only parts skipped
    python benchmarks/bench_triton.py --dry-run --interpret      # ... with the Triton backends under the interpreter

Bandwidth is the minimum traffic of the call (every input read once, every output written once; for the backward
also the output gradient read and the input gradients written) divided by the measured time; it is given against
the data-sheet peak and against a large device-to-device copy measured in the same run. Times are medians of
CUDA-event timings. Rows time every Triton backend of an op (for wkv7 also the chunked kernel with chunks of 16),
the ``chunked`` torch backend and the peers; the last column is each time over the time of the backend the registry
picks for CUDA tensors.

A dry run times only what runs on CPU (the chunked backends, tiny models); the Triton backends, peers and CUDA
graphs are listed with the reason they were skipped. Results go to stdout, and to --json / --markdown files, which
are rewritten after every section so that a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from seqzoo.models.compat import output_cache

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


GPU_SIZES = Sizes(batch=4, lengths=(512, 2048, 4096), channels=1536, scan_state=16, ssd_heads=24, ssd_head_dim=64,
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


def peer_kernels(op: str) -> tuple[dict[str, Callable], list[str]]:
    """Third-party kernels for ``op`` that import here, as functions with seqzoo's signature, and why others don't."""
    peers: dict[str, Callable] = {}
    missing: list[str] = []
    if op == "wkv7":
        try:
            from fla.ops.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7

            # fla keeps the state as (K, V), seqzoo as (V, K); outputs are (B, T, H, V) in both.
            def fla(fn, **options):
                return lambda r, w, k, v, a, b: fn(r=r, w=w, k=k, v=v, a=a, b=b, scale=1.0,
                                                   output_final_state=True, **options)

            peers["fla chunk_rwkv7 (as its RWKV7 layer: chunk 64, safe_gate)"] = fla(
                chunk_rwkv7, safe_gate=True, lower_bound=FLA_LOWER_BOUND, chunk_size=64)
            peers["fla chunk_rwkv7 (defaults)"] = fla(chunk_rwkv7)
            peers["fla fused_recurrent_rwkv7"] = fla(fused_recurrent_rwkv7)
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

            peers["mamba_ssm selective_scan_fn"] = mamba_scan
        except Exception as err:
            missing.append(f"mamba_ssm: {type(err).__name__}: {str(err)[:120]}")
    if op == "ssd":
        try:
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            peers["mamba_ssm mamba_chunk_scan_combined"] = lambda x, dt, A, B, C, D, chunk_size: \
                mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=256, D=D, return_final_states=True)
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


def kernel_entries(op: str, device: torch.device, interpret: bool):
    """(label, function, chunk-size override, skip reason) for every backend and peer timed for ``op``."""
    from seqzoo.kernels import get_kernel
    from seqzoo.kernels.registry import get_op

    gpu = device.type == "cuda" or interpret
    entries = []
    tritons = sorted((b for b in get_op(op).backends.values() if b.name.startswith("triton")),
                     key=lambda b: -b.priority)
    for backend in tritons:
        skip = "" if gpu else "needs a GPU (pass --interpret to run it under Triton's interpreter)"
        entries.append((backend.name, None if skip else get_kernel(op, backend.name), None, skip))
        if backend.name == "triton_chunked":
            entries.append(("triton_chunked (chunks of 16)", None if skip else get_kernel(op, backend.name), 16, skip))
    entries.append(("chunked", get_kernel(op, "chunked"), None, ""))
    if device.type == "cuda":
        peers, missing = peer_kernels(op)
        entries += [(name, fn, None, "") for name, fn in peers.items()]
        entries += [(name.split(":")[0], None, None, f"not importable: {name}") for name in missing]
    return entries, (tritons[0].name if tritons and gpu else "chunked")


def time_backend(fn, call, inputs, dy, sizes, chunk):
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

    fwd = median_seconds(forward, sizes.repeats, sizes.warmup)
    try:
        both, note = median_seconds(forward_backward, sizes.repeats, sizes.warmup), ""
    except (NotImplementedError, RuntimeError) as err:  # some peers have no backward
        both, note = None, f"no backward ({type(err).__name__}: {str(err)[:80]})"
    return fwd, both, note


def kernel_rows(sizes: Sizes, device: torch.device, dtype: torch.dtype, ops, interpret: bool,
                on_op: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    """Rows for every op, length and backend; ``on_op`` sees the rows so far after each op."""
    rows = []
    for op in ops:
        entries, default = kernel_entries(op, device, interpret)
        for length in sizes.lengths:
            inputs, call = op_case(op, sizes, length, dtype, device)
            float_inputs = [t for t in inputs.values() if t.is_floating_point()]
            with torch.no_grad():
                y_ref, _ = call(dict((e[0], e[1]) for e in entries)["chunked"], inputs)
            dy = torch.randn_like(y_ref)
            fwd_bytes = nbytes(float_inputs) + nbytes([y_ref])
            bwd_bytes = 2 * nbytes(float_inputs) + nbytes([dy])
            block = []
            for label, fn, chunk, skip in entries:
                row = {"op": op, "T": length, "backend": label, "fwd_ms": None, "fwd_bwd_ms": None,
                       "fwd_gbps": None, "bwd_gbps": None, "rel_err": None, "note": skip}
                if not skip:
                    try:
                        with torch.no_grad(), wkv7_chunk(chunk):
                            y, _ = call(fn, inputs)
                        row["rel_err"] = ((y.float() - y_ref.float()).abs().max()
                                          / y_ref.float().abs().max()).item()
                        fwd, both, row["note"] = time_backend(fn, call, inputs, dy, sizes, chunk)
                        row.update(fwd_ms=fwd * 1e3, fwd_bwd_ms=None if both is None else both * 1e3,
                                   fwd_gbps=gbps(fwd_bytes, fwd),
                                   bwd_gbps=None if both is None else gbps(bwd_bytes, both - fwd))
                    except Exception as err:  # one failing backend must not hide the others' figures
                        row["note"] = f"failed: {type(err).__name__}: {str(err)[:160]}"
                block.append(row)
            ours = next(r for r in block if r["backend"] == default)
            for row in block:
                row["vs_default"] = [None if not (row[k] and ours[k]) else row[k] / ours[k]
                                     for k in ("fwd_ms", "fwd_bwd_ms")]
            rows += block
            print(f"  {op} T={length}: done", file=sys.stderr, flush=True)
        on_op(rows)
    return rows


def kernel_table(rows: list[dict], bw: dict) -> str:
    body = []
    for r in rows:
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


def model_rows(args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    import seqzoo

    dry = args.dry_run
    cuda = device.type == "cuda"
    overrides = {} if dry else {"hidden_size": args.hidden_size, "num_hidden_layers": args.layers}
    batch, length, steps = (1, 9, 3) if dry else (args.model_batch, args.model_length, args.decode_steps)
    repeats, warmup = (1, 0) if dry else (5, 2)
    rows = []
    for family, (preset, choices) in MODEL_FAMILIES.items():
        if not cuda:  # on CPU the Triton backends cannot run: time the chunked kernels only
            choices = {"chunked": choices["chunked"]}
        torch.manual_seed(0)
        model = seqzoo.create_model(f"{preset}-{'tiny' if dry else 'small'}", **overrides)
        model = model.to(device=device, dtype=dtype).eval()
        vocab = model.config.vocab_size
        ids = torch.randint(3, vocab - 2, (batch, length), device=device)
        prompt = ids[:1, : max(1, length // 4)]
        for label, choice in choices.items():
            row = {"model": family, "kernels": label, "B": batch, "T": length, "prefill_ms": None,
                   "prefill_graph_ms": None, "train_ms": None, "decode_ms": None, "decode_graph_ms": None,
                   "graph_check": "skipped: needs CUDA" if not cuda else "", "decode_compile_ms": None,
                   "compile_check": "not run (pass --compile)" if not args.compile else "", "note": ""}
            try:
                with kernel_backends(choice):
                    def prefill():
                        with torch.no_grad():
                            model(ids, use_cache=False)

                    def train_step():
                        model(ids, labels=ids, use_cache=False).loss.backward()
                        model.zero_grad(set_to_none=True)

                    row["prefill_ms"] = median_seconds(prefill, repeats, warmup) * 1e3
                    row["train_ms"] = median_seconds(train_step, repeats, warmup) * 1e3
                    row["decode_ms"] = median_seconds(lambda: eager_greedy(model, prompt, steps), repeats,
                                                      warmup) / steps * 1e3
                    expected = eager_greedy(model, prompt, steps)
                    if cuda:
                        embeds = model.get_input_embeddings()(ids).detach()
                        row["prefill_graph_ms"] = median_seconds(graphed_prefill(model, embeds), repeats,
                                                                 warmup) * 1e3
                        decoder = GreedyDecoder(model, prompt, use_graph=True)
                        same = torch.equal(decoder.generate(steps), expected)
                        decoder = GreedyDecoder(model, prompt, use_graph=True)
                        row["decode_graph_ms"] = median_seconds(lambda: decoder.generate(steps), repeats,
                                                                warmup) / steps * 1e3
                        row["graph_check"] = "same tokens" if same else "DIFFERENT tokens"
                        if args.compile:
                            row["compile_check"], per_token = compiled_decode(model, prompt, steps, expected,
                                                                              repeats, warmup)
                            row["decode_compile_ms"] = None if per_token is None else per_token * 1e3
                    else:
                        tokens = GreedyDecoder(model, prompt, use_graph=False).generate(steps)
                        row["graph_check"] = ("skipped: needs CUDA; the graph's step replayed eagerly gives the "
                                              + ("same tokens" if torch.equal(tokens, expected) else
                                                 "DIFFERENT tokens"))
            except Exception as err:  # the row says what failed; the other rows still run
                row["note"] = f"failed: {type(err).__name__}: {str(err)[:160]}"
            rows.append(row)
            print(f"  {family} / {label}: done", file=sys.stderr, flush=True)
        del model
        if cuda:
            torch.cuda.empty_cache()
    return rows


def model_tables(rows: list[dict]) -> tuple[str, str]:
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
    """What the run measured so far, as JSON and markdown files rewritten after every section (and after every op of
    the kernel section, with ``final=False``: a run cut short keeps what it measured)."""

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
    bw = bandwidths(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    report = Report(args)
    meta = {"device": name, "torch": torch.__version__, "triton": triton.__version__, "dtype": args.dtype,
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv), **bw}
    report.add("meta", meta, (
        f"device: {name}; torch {torch.__version__}, triton {triton.__version__}; inputs {args.dtype}; peak "
        f"bandwidth {fmt(bw['peak_gbps'], '.0f')} GB/s ({bw['peak_source']}), device-to-device copy "
        f"{fmt(bw['copy_gbps'], '.0f')} GB/s (1 GiB, bytes read + written)\n\ncommand: `{meta['command']}`"))

    def kernel_section(rows: list[dict], final: bool = True) -> None:
        report.add("kernels", rows, (
            f"## Kernels, B={sizes.batch}, {args.dtype}: forward and forward+backward\n\n"
            f"Sizes: conv/selective_scan D={sizes.channels} (N={sizes.scan_state}); ssd H={sizes.ssd_heads} "
            f"P={sizes.ssd_head_dim} N={sizes.ssd_state} G=1; wkv7 H={sizes.wkv_heads} K=V={sizes.wkv_head_size}. "
            "GB/s: minimum traffic / time (% of the data-sheet peak / % of the measured copy). Time / default: "
            "that backend's time over the time of the backend the registry picks for CUDA tensors (forward / "
            "forward+backward); > 1 means the default is faster.\n\n" + kernel_table(rows, bw)), final)

    rows = kernel_rows(sizes, device, dtype, args.ops or OPS, args.interpret,
                       on_op=lambda so_far: kernel_section(so_far, final=False))
    kernel_section(rows)

    if args.skip_models:
        return
    rows = model_rows(args, device, dtype)
    first, second = model_tables(rows)
    where = "tiny presets" if args.dry_run else f"hidden {args.hidden_size}, {args.layers} layers"
    report.add("models", rows, (
        f"## Models ({where}, {args.dtype}): prefill and training step\n\nkernels: `default` is the registry's "
        "choice for CUDA tensors (Triton), the others force a backend.\n\n" + first
        + f"\n\n## Greedy decode ({where}, B=1, ms per token)\n\n" + second))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, one repeat; GPU-only parts skipped")
    parser.add_argument("--interpret", action="store_true",
                        help="with --dry-run: run the Triton backends under Triton's interpreter (slow)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--ops", nargs="+", choices=OPS, help="kernel ops to time (default: all)")
    parser.add_argument("--skip-models", action="store_true", help="kernels only")
    parser.add_argument("--compile", action="store_true",
                        help="also decode under torch.compile(mode='reduce-overhead') (compiles each model: slow)")
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--model-batch", type=int, default=4)
    parser.add_argument("--model-length", type=int, default=2048)
    parser.add_argument("--decode-steps", type=int, default=64)
    parser.add_argument("--json", help="write the results as JSON to this file")
    parser.add_argument("--markdown", help="write the markdown tables to this file")
    args = parser.parse_args(argv)
    if args.interpret and not args.dry_run:
        parser.error("--interpret goes with --dry-run (on a GPU the Triton backends run compiled)")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.interpret:
        # Triton decides between compiling and interpreting when it is imported, and importing seqzoo imports it.
        os.environ["TRITON_INTERPRET"] = "1"
    main(arguments)
