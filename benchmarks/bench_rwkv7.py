"""RWKV-7 benchmark: seqzoo RWKV-7 (rwkv7-small) against the seqzoo Transformer (transformer-small, same width and
depth) in the same run -- forward at 256 / 1024 / 4096 tokens and decode cost per token at 256 vs 4096 context --
and the model-level cost of the wkv7 kernel backends (chunked vs the sequential reference).

    OMP_NUM_THREADS=2 python benchmarks/bench_rwkv7.py

Prints markdown tables of median times (interleaved repeats, see timing.py). Ratios are Transformer / RWKV-7 and
reference / chunked (> 1 means RWKV-7, resp. the chunked kernel, is faster).
"""

from __future__ import annotations

import argparse

import torch

import seqzoo
from seqzoo.kernels import available_backends, use_backend
from timing import compare, decode_ms_per_token, machine, table


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    # The x070 init zeroes the output projections, so the WKV output would not reach the logits and the backend
    # comparison below would be vacuous; a non-zero gain changes no timing.
    return {"RWKV-7": seqzoo.create_model("rwkv7-small", output_init_gain=0.5).eval(),
            "Transformer": seqzoo.create_model("transformer-small").eval()}


def forward_rows(pair: dict[str, torch.nn.Module], repeats: int) -> list[list[object]]:
    rows = []
    with torch.no_grad():
        for length in (256, 1024, 4096):
            ids = torch.randint(0, 256, (1, length))
            times = compare({name: (lambda m=model: m(ids, use_cache=False)) for name, model in pair.items()},
                            repeats=repeats if length < 4096 else max(3, repeats // 2), warmup=1)
            rwkv, transformer = times["RWKV-7"], times["Transformer"]
            rows.append([f"forward B=1 T={length}", f"{rwkv * 1e3:.1f}", f"{transformer * 1e3:.1f}",
                         f"{transformer / rwkv:.2f}x"])
    return rows


def decode_rows(pair: dict[str, torch.nn.Module], steps: int) -> list[list[object]]:
    rows = []
    for name, model in pair.items():
        short, long = (decode_ms_per_token(model, context, steps) for context in (256, 4096))
        params = sum(p.numel() for p in model.parameters())
        config = model.config
        state = (f"{config.state_bytes_per_sequence() / 1024:.0f} KiB fixed" if config.state_bytes_per_sequence()
                 else f"{config.kv_bytes_per_token() * 4096 / 1024:.0f} KiB KV at 4096")
        rows.append([name, f"{params / 1e6:.2f}M", state, f"{short:.2f}", f"{long:.2f}", f"{long / short:.2f}x"])
    return rows


def kernel_rows(model: torch.nn.Module, repeats: int) -> list[list[object]]:
    backends = available_backends("wkv7")
    rows = []
    with torch.no_grad():
        for length in (256, 1024):
            ids = torch.randint(0, 256, (1, length))

            def forward(backend):
                def run():
                    with use_backend("wkv7", backend):
                        return model(ids, use_cache=False)
                return run

            logits = {backend: forward(backend)().logits for backend in backends}
            # The backends interleaved in one comparison, as every other ratio here.
            times = compare({backend: forward(backend) for backend in backends}, repeats=repeats, warmup=1)
            for backend in backends:
                if backend == "reference":
                    continue
                diff = (logits[backend] - logits["reference"]).abs().max().item()
                rows.append([f"RWKV-7 forward T={length}", backend, f"{times[backend] * 1e3:.1f}",
                             f"{times['reference'] * 1e3:.1f}", f"{times['reference'] / times[backend]:.2f}x",
                             f"{diff:.1e}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--decode-steps", type=int, default=64)
    args = parser.parse_args()
    pair = models()
    print(f"machine: {machine()}; wkv7 backends: {', '.join(available_backends('wkv7'))}\n")
    attention = pair["Transformer"].config._attn_implementation
    print(f"rwkv7-small (hidden 256, 4 layers, 4 heads of 64) vs transformer-small (hidden 256, 4 layers, Llama "
          f"variant, {attention} attention), vocab 258, random init\n")
    print(table(["workload", "RWKV-7 ms", "Transformer ms", "Transformer / RWKV-7"],
                forward_rows(pair, args.repeats)))
    print(f"\nDecode cost per token (median of {args.decode_steps} cached steps, B=1) at 256 vs 4096 context\n")
    print(table(["model", "params", "state per sequence", "ms/token @256", "ms/token @4096", "4096 / 256"],
                decode_rows(pair, args.decode_steps)))
    print("\nwkv7 backends at model level (rwkv7-small, B=1, no cache); max |logit difference| to the reference\n")
    print(table(["workload", "backend", "ms", "reference ms", "reference / backend", "max |diff|"],
                kernel_rows(pair["RWKV-7"], args.repeats)))


if __name__ == "__main__":
    main()
