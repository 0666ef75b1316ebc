"""Time each kernel op's reference backend against its fast one (chunked; torch for rnn/lstm/gru) on this machine.

For every op and sequence length: forward (under no_grad) and forward+backward (gradients for every input), one
warm-up call on a short sequence, then the median of ``--repeats`` timed calls. Sizes are those of a hidden-256
model: Mamba Dm=512, N=16 (conv over 512 channels, K=4); Mamba-2 H=8, P=64, N=64, G=1, chunk 64; RWKV-7 H=4, K=64;
RNN/LSTM/GRU input 256, hidden 256. A reference measurement whose estimate (previous length's time scaled by the
length ratio) exceeds ``--budget`` seconds is skipped. Prints a markdown table; ratio = reference / fast.

    OMP_NUM_THREADS=2 python benchmarks/bench_kernels.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from seqzoo.kernels import get_kernel

BATCH = 2


def conv_inputs(g, length):
    channels, width = 512, 4
    return [torch.randn(BATCH, length, channels, generator=g), torch.randn(channels, width, generator=g) * 0.5,
            torch.randn(channels, generator=g)], {"initial_state": torch.randn(BATCH, channels, width - 1, generator=g),
                                                   "activation": "silu"}


def selective_scan_inputs(g, length):
    channels, state = 512, 16
    delta = torch.exp(torch.empty(BATCH, length, channels).uniform_(-6.9, -2.3, generator=g))
    A = -torch.arange(1, state + 1.0).repeat(channels, 1)
    return [torch.randn(BATCH, length, channels, generator=g), delta, A, torch.randn(BATCH, length, state, generator=g),
            torch.randn(BATCH, length, state, generator=g), torch.ones(channels),
            torch.randn(BATCH, length, channels, generator=g)], {"initial_state": torch.zeros(BATCH, channels, state)}


def ssd_inputs(g, length):
    heads, head_dim, groups, state = 8, 64, 1, 64
    dt = torch.exp(torch.empty(BATCH, length, heads).uniform_(-6.9, -2.3, generator=g))
    B, C = (torch.randn(BATCH, length, groups, state, generator=g) for _ in range(2))
    return [torch.randn(BATCH, length, heads, head_dim, generator=g), dt, -torch.linspace(1.0, 16.0, heads), B, C,
            torch.ones(heads)], {"initial_state": torch.zeros(BATCH, heads, head_dim, state), "chunk_size": 64}


def wkv7_inputs(g, length):
    heads, key = 4, 64
    shape = (BATCH, length, heads, key)
    kk = F.normalize(torch.randn(*shape, generator=g), dim=-1)
    w = -0.6065306597 * torch.sigmoid(torch.randn(*shape, generator=g))
    return [torch.randn(*shape, generator=g) * 0.5, w, torch.randn(*shape, generator=g) * 0.5,
            torch.randn(*shape, generator=g), -kk, kk * torch.sigmoid(torch.randn(*shape, generator=g))], {
        "initial_state": torch.zeros(BATCH, heads, key, key)}


def recurrent_inputs(gates):
    def make(g, length):
        size, hidden = 256, 256
        scale = hidden ** -0.5
        states = [torch.zeros(BATCH, hidden) for _ in range(2 if gates == 4 else 1)]
        weights = [torch.randn(gates * hidden, n, generator=g) * scale for n in (size, hidden)]
        biases = [torch.zeros(gates * hidden) for _ in range(2)]
        return [torch.randn(BATCH, length, size, generator=g), *states, *weights, *biases], {}
    return make


OPS = {
    "causal_conv1d": ("chunked", "D=512, K=4", conv_inputs),
    "selective_scan": ("chunked", "Dm=512, N=16", selective_scan_inputs),
    "ssd": ("chunked", "H=8, P=64, N=64, G=1, chunk 64", ssd_inputs),
    "wkv7": ("chunked", "H=4, K=V=64", wkv7_inputs),
    "rnn": ("torch", "I=H=256, tanh", recurrent_inputs(1)),
    "lstm": ("torch", "I=H=256", recurrent_inputs(4)),
    "gru": ("torch", "I=H=256", recurrent_inputs(3)),
}


def timed(fn, args, kwargs, backward):
    if backward:
        leaves = [a.detach().requires_grad_() for a in args]
        start = time.perf_counter()
        y, state = fn(*leaves, **kwargs)
        states = state if isinstance(state, tuple) else (state,)
        (y.float().sum() + sum(s.float().sum() for s in states)).backward()
        return time.perf_counter() - start
    with torch.no_grad():
        start = time.perf_counter()
        fn(*args, **kwargs)
        return time.perf_counter() - start


def measure(fn, make, length, backward, repeats):
    g = torch.Generator().manual_seed(0)
    warm_args, warm_kwargs = make(g, min(length, 64))
    timed(fn, warm_args, warm_kwargs, backward)
    args, kwargs = make(g, length)
    return statistics.median(timed(fn, args, kwargs, backward) for _ in range(repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=20.0, help="skip a reference run estimated above this (s)")
    args = parser.parse_args()

    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, batch {BATCH}, float32, "
          f"median of {args.repeats}, load average at start {os.getloadavg()[0]:.1f}\n")
    print("| op | sizes | T | pass | reference (ms) | fast backend | fast (ms) | ratio |")
    print("|---|---|---:|---|---:|---|---:|---:|")
    for op in args.ops:
        fast_name, sizes, make = OPS[op]
        reference, fast = get_kernel(op, "reference"), get_kernel(op, fast_name)
        previous = {}
        for length in sorted(args.lengths):
            for backward in (False, True):
                key = "fwd+bwd" if backward else "fwd"
                fast_s = measure(fast, make, length, backward, args.repeats)
                estimate = previous.get(key, (0.0, length))[0] * length / previous.get(key, (0.0, length))[1]
                if estimate > args.budget:
                    ref_cell, ratio = f"skipped (~{estimate:.0f} s)", "-"
                else:
                    ref_s = measure(reference, make, length, backward, args.repeats)
                    previous[key] = (ref_s, length)
                    ref_cell, ratio = f"{ref_s * 1e3:.1f}", f"{ref_s / fast_s:.1f}x"
                row = [op, sizes, length, key, ref_cell, fast_name, f"{fast_s * 1e3:.1f}", ratio]
                print("| " + " | ".join(map(str, row)) + " |", flush=True)


if __name__ == "__main__":
    main()
