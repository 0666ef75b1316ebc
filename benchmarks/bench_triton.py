"""Triton kernels on a GPU: each op's forward and forward+backward against the chunked torch backend on the same GPU,
achieved memory bandwidth against the card's peak, flash-linear-attention's RWKV-7 kernels and mamba_ssm's scans
when they are installed, and model-level prefill, training step and decode (eager, CUDA graphs, torch.compile).

    python benchmarks/bench_triton.py                # on a CUDA GPU; prints markdown tables for BENCHMARKS.md
    python benchmarks/bench_triton.py --dry-run      # CPU, TRITON_INTERPRET=1, tiny sizes: checks that it all runs

Bandwidth is the minimum traffic of the call (every input read once, every output written once; for the backward
also the output gradient read and the input gradients written) divided by the measured time, against the peak from
a table of cards, or measured with a large device-to-device copy for cards not in the table. Times are medians of
CUDA-event timings.

In a dry run the Triton backends are allowed on CPU tensors (Triton interprets them with numpy), every section runs
once at tiny sizes, and times mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
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


def peak_bandwidth_gbps(device: torch.device) -> tuple[float, str]:
    """The card's peak (GB/s) and where the figure comes from."""
    if device.type != "cuda":
        return float("nan"), "no GPU"
    name = torch.cuda.get_device_name(device)
    for fragment, gbps in PEAK_GBPS:
        if fragment in name:
            return float(gbps), f"data sheet ({fragment})"
    src = torch.empty(1 << 28, dtype=torch.uint8, device=device)  # 256 MiB, far beyond any L2
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), repeats=20, warmup=3)
    return 2 * src.numel() / seconds / 1e9, "measured device-to-device copy"


def bandwidth(num_bytes: int, seconds: float, peak: float) -> str:
    if not seconds > 0:
        return "-"
    gbps = num_bytes / seconds / 1e9
    return f"{gbps:.0f} ({100 * gbps / peak:.0f}%)" if peak == peak else f"{gbps:.2f}"


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


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
        inputs = {"r": rnd(B, T, H, K), "w": (-0.6 * torch.rand(B, T, H, K, generator=g)).to(device, dtype),
                  "k": rnd(B, T, H, K, scale=0.3), "v": rnd(B, T, H, K), "a": (-kk).to(device, dtype),
                  "b": (kk * iclr).to(device, dtype)}
        return inputs, lambda f, t: f(t["r"], t["w"], t["k"], t["v"], t["a"], t["b"])
    raise ValueError(f"unknown op {op!r}; valid: {', '.join(OPS)}")


def peer_kernels(op: str) -> dict[str, Callable]:
    """Third-party kernels for ``op`` that are importable here, as functions with seqzoo's signature."""
    peers: dict[str, Callable] = {}
    if op == "wkv7":
        with contextlib.suppress(Exception):
            from fla.ops.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7

            # fla keeps the state as (K, V), seqzoo as (V, K); outputs are (B, T, H, V) in both.
            def fla(fn):
                return lambda r, w, k, v, a, b: fn(r=r, w=w, k=k, v=v, a=a, b=b, scale=1.0,
                                                   output_final_state=True)

            peers["fla chunk_rwkv7"] = fla(chunk_rwkv7)
            peers["fla fused_recurrent_rwkv7"] = fla(fused_recurrent_rwkv7)
    if op == "selective_scan":
        with contextlib.suppress(Exception):
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            def mamba_scan(u, delta, A, B, C, D, z):
                # mamba_ssm is channels-first: (B, D, L) and (B, N, L); the transposes are part of the timed call.
                y, last = selective_scan_fn(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2),
                                            C.transpose(1, 2), D, z.transpose(1, 2), return_last_state=True)
                return y.transpose(1, 2), last

            peers["mamba_ssm selective_scan_fn"] = mamba_scan
    if op == "ssd":
        with contextlib.suppress(Exception):
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            peers["mamba_ssm mamba_chunk_scan_combined"] = lambda x, dt, A, B, C, D, chunk_size: \
                mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=256, D=D, return_final_states=True)
    return peers


def kernel_rows(sizes: Sizes, device: torch.device, dtype: torch.dtype, peak: float) -> list[list[object]]:
    from seqzoo.kernels import get_kernel

    rows = []
    for op in OPS:
        backends = {"triton": get_kernel(op, "triton"), "chunked": get_kernel(op, "chunked")}
        backends.update(peer_kernels(op))
        for length in sizes.lengths:
            inputs, call = op_case(op, sizes, length, dtype, device)
            float_inputs = [t for t in inputs.values() if t.is_floating_point()]
            with torch.no_grad():
                y_ref, _ = call(backends["chunked"], inputs)
            dy = torch.randn_like(y_ref)
            fwd_bytes = nbytes(float_inputs) + nbytes([y_ref])
            bwd_bytes = 2 * nbytes(float_inputs) + nbytes([dy])
            times: dict[str, tuple[float, float]] = {}
            for name, fn in backends.items():
                with torch.no_grad():
                    y, _ = call(fn, inputs)
                error = ((y.float() - y_ref.float()).abs().max() / y_ref.float().abs().max()).item()
                leaves = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}

                def forward(fn=fn):
                    with torch.no_grad():
                        call(fn, inputs)

                def forward_backward(fn=fn):
                    out, _ = call(fn, leaves)
                    torch.autograd.backward([out], [dy])
                    for t in leaves.values():
                        t.grad = None

                fwd = median_seconds(forward, sizes.repeats, sizes.warmup)
                try:
                    both = median_seconds(forward_backward, sizes.repeats, sizes.warmup)
                except (NotImplementedError, RuntimeError) as err:  # some peers have no backward
                    both = float("nan")
                    print(f"  {op} {name}: no backward ({type(err).__name__}: {str(err)[:80]})", file=sys.stderr)
                times[name] = (fwd, both)
                bwd = both - fwd
                rows.append([op, length, name, f"{fwd * 1e3:.3f}", f"{both * 1e3:.3f}", bandwidth(fwd_bytes, fwd, peak),
                             bandwidth(bwd_bytes, bwd, peak), f"{error:.1e}"])
            ours = times["triton"]
            for row in rows[-len(backends):]:
                other = times[row[2]]
                row.append(f"{other[0] / ours[0]:.2f}x / {other[1] / ours[1]:.2f}x")
    return rows


# ---- model level ----

@contextlib.contextmanager
def kernel_backend(name: str):
    from seqzoo.kernels import use_backend

    with contextlib.ExitStack() as stack:
        for op in OPS:
            stack.enter_context(use_backend(op, name))
        yield


class GreedyDecoder:
    """Greedy decoding in which one token is one replay of a captured CUDA graph of the whole model step.

    The step reads the token's embedding and the cached states from fixed tensors and writes the next token and the
    new states back into them, so a replay needs no Python or launches per layer. Embeddings go in as
    ``inputs_embeds`` because the model checks the range of ``input_ids`` on the host, which a capture forbids.
    With ``use_graph=False`` the same step runs eagerly (the dry run checks the state handling that way).
    """

    def __init__(self, model, prompt_ids: torch.Tensor, use_graph: bool) -> None:
        self.model = model
        with torch.no_grad():
            out = model(prompt_ids, use_cache=True)
        self.cache = output_cache(out)
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


def model_rows(args, device: torch.device, dtype: torch.dtype) -> tuple[list[list[object]], list[list[object]]]:
    import seqzoo

    dry = args.dry_run
    presets = {"Mamba": "mamba-tiny" if dry else "mamba-small", "Mamba-2": "mamba2-tiny" if dry else "mamba2-small",
               "RWKV-7": "rwkv7-tiny" if dry else "rwkv7-small"}
    overrides = {} if dry else {"hidden_size": args.hidden_size, "num_hidden_layers": args.layers}
    batch, length, steps = (1, 9, 3) if dry else (args.model_batch, args.model_length, args.decode_steps)
    repeats, warmup = (1, 0) if dry else (5, 2)
    throughput, decode = [], []
    for family, preset in presets.items():
        torch.manual_seed(0)
        model = seqzoo.create_model(preset, **overrides).to(device=device, dtype=dtype).eval()
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab - 2, (batch, length), device=device)
        labels = ids.clone()
        result = {}
        for backend in ("triton", "chunked"):
            with kernel_backend(backend):
                def prefill():
                    with torch.no_grad():
                        model(ids, use_cache=False)

                def train_step():
                    model(ids, labels=labels, use_cache=False).loss.backward()
                    model.zero_grad(set_to_none=True)

                prompt = ids[:1, : max(1, length // 4)]
                result[backend] = (
                    median_seconds(prefill, repeats, warmup),
                    median_seconds(train_step, repeats, warmup),
                    median_seconds(lambda: eager_greedy(model, prompt, steps), repeats, warmup) / steps,
                )
        for label, index in (("prefill (no grad)", 0), ("training step (fwd+bwd)", 1)):
            ours, other = result["triton"][index], result["chunked"][index]
            throughput.append([family, label, f"{batch}x{length}", f"{ours * 1e3:.2f}", f"{other * 1e3:.2f}",
                               f"{other / ours:.2f}x", f"{batch * length / ours / 1e3:.1f}"])

        prompt = ids[:1, : max(1, length // 4)]
        with kernel_backend("triton"):
            expected = eager_greedy(model, prompt, steps)
            graph_note = "skipped (no CUDA)"
            per_token_graph = float("nan")
            if device.type == "cuda":
                try:
                    decoder = GreedyDecoder(model, prompt, use_graph=True)
                    tokens = decoder.generate(steps)
                    same = torch.equal(tokens, expected)
                    decoder = GreedyDecoder(model, prompt, use_graph=True)
                    per_token_graph = median_seconds(lambda: decoder.generate(steps), repeats, warmup) / steps
                    graph_note = "same tokens" if same else "DIFFERENT tokens"
                except Exception as err:  # report, do not hide: the table says why there is no figure
                    graph_note = f"failed: {type(err).__name__}: {str(err)[:100]}"
            else:
                tokens = GreedyDecoder(model, prompt, use_graph=False).generate(steps)
                graph_note = "eager replay of the graph step: " + ("same tokens" if torch.equal(tokens, expected)
                                                                     else "DIFFERENT tokens")
            compile_note, per_token_compiled = "skipped (dry run)", float("nan")
            if not dry:
                compile_note, per_token_compiled = compiled_decode(model, prompt, steps, expected, repeats, warmup)
        decode.append([family, f"{result['triton'][2] * 1e3:.2f}", f"{result['chunked'][2] * 1e3:.2f}",
                       f"{per_token_graph * 1e3:.2f}", graph_note, f"{per_token_compiled * 1e3:.2f}", compile_note])
    return throughput, decode


def compiled_decode(model, prompt, steps, expected, repeats, warmup) -> tuple[str, float]:
    """Greedy decoding with the model's forward under torch.compile(mode="reduce-overhead") (CUDA graphs by
    inductor). Reports failures instead of raising: whether this works is one of the things measured."""
    compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
    try:
        tokens = eager_greedy(compiled, prompt, steps)
        note = "same tokens" if torch.equal(tokens, expected) else "DIFFERENT tokens"
        return note, median_seconds(lambda: eager_greedy(compiled, prompt, steps), repeats, warmup) / steps
    except Exception as err:
        return f"failed: {type(err).__name__}: {str(err)[:100]}", float("nan")


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(x) for x in row) + " |" for row in rows])


def allow_triton_on_cpu() -> None:
    """Dry run only: let the registry run the Triton backends on CPU tensors (under the interpreter)."""
    from seqzoo.kernels.registry import get_op
    from seqzoo.kernels.triton_support import vectorize_interpreter_scans

    vectorize_interpreter_scans()
    for op in OPS:
        get_op(op).backends["triton"].supports = lambda *args, **kwargs: (True, "")


def main(args) -> None:
    import triton

    import seqzoo  # noqa: F401  (registers the kernels)

    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        allow_triton_on_cpu()
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or pass --dry-run to check the script on CPU")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    peak, source = peak_bandwidth_gbps(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter, dry run)"
    print(f"device: {name}; peak bandwidth {peak:.0f} GB/s ({source}); torch {torch.__version__}, "
          f"triton {triton.__version__}; inputs {args.dtype}\n")

    print(f"## Kernels, B={sizes.batch}: forward and forward+backward (ms), achieved GB/s (% of peak)\n")
    print(f"Sizes: conv/selective_scan D={sizes.channels} (N={sizes.scan_state}); ssd H={sizes.ssd_heads} "
          f"P={sizes.ssd_head_dim} N={sizes.ssd_state} G=1; wkv7 H={sizes.wkv_heads} K=V={sizes.wkv_head_size}. "
          "Last column: that backend's time / triton's (forward / forward+backward); > 1 means triton is faster.\n")
    print(table(["op", "T", "backend", "fwd ms", "fwd+bwd ms", "fwd GB/s", "bwd GB/s", "max|y - chunked| / max|y|",
                 "time / triton"], kernel_rows(sizes, device, dtype, peak)))

    throughput, decode = model_rows(args, device, dtype)
    print(f"\n## Models ({'tiny presets' if args.dry_run else f'hidden {args.hidden_size}, {args.layers} layers'}, "
          f"{args.dtype}): triton vs chunked kernels\n")
    print(table(["model", "workload", "B x T", "triton ms", "chunked ms", "chunked / triton", "k tokens/s (triton)"],
                throughput))
    print("\n## Greedy decode, B=1, ms per token\n")
    print(table(["model", "eager triton", "eager chunked", "CUDA graph (triton)", "graph check",
                 "torch.compile reduce-overhead (triton)", "compile check"], decode))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, TRITON_INTERPRET=1, tiny sizes, one repeat")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--model-batch", type=int, default=4)
    parser.add_argument("--model-length", type=int, default=2048)
    parser.add_argument("--decode-steps", type=int, default=64)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.dry_run:
        # Triton decides between compiling and interpreting when it is imported, and importing seqzoo imports it.
        os.environ["TRITON_INTERPRET"] = "1"
    main(arguments)
