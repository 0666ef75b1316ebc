"""What torch.compile (inductor) buys for decoding on CPU: one cached decode step, eager against compiled, timed
interleaved in the same run.

Each preset is built with its own (random) weights; the prompt is 16 tokens, batch 1. The compiled step is
``torch.compile(step, fullgraph=True)`` with the default (inductor) backend, warmed up (compiled) before timing. The
script checks that both give the same logits (1e-4) before timing. Dynamo's default automatic dynamic shapes
compile the step twice (the second time with the token count and, for the Transformer, the cache length symbolic);
the compile time reported is that of the first three steps.

    OMP_NUM_THREADS=1 python benchmarks/bench_compile.py --presets lstm-small mamba-small mamba2-small rwkv7-small
"""

from __future__ import annotations

import argparse
import time

import torch

import seqzoo
from seqzoo.models.compat import output_cache
from timing import compare, machine, table


def bench(preset: str, repeats: int, steps: int) -> list[object]:
    torch._dynamo.reset()  # each preset's step is the same code object: its compiled entries must not pile up
    torch.manual_seed(0)
    model = seqzoo.create_model(preset).eval()
    vocab = model.config.vocab_size
    prompt = torch.randint(3, vocab, (1, 16))

    def step(token, cache):
        return model(token, cache=cache, use_cache=True)

    compiled = torch.compile(step, fullgraph=True)
    with torch.no_grad():
        token = prompt[:, -1:]
        caches = {name: output_cache(model(prompt[:, :-1], use_cache=True)) for name in ("eager", "compiled")}
        start = time.perf_counter()
        for _ in range(3):
            got = compiled(token, caches["compiled"]).logits
        compile_s = time.perf_counter() - start
        for _ in range(3):
            want = step(token, caches["eager"]).logits
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

        def run(fn, name):
            def go():
                for _ in range(steps):
                    fn(token, caches[name])
            return go

        times = compare({"eager": run(step, "eager"), "compiled": run(compiled, "compiled")}, repeats=repeats)
    eager_ms, compiled_ms = (times[k] / steps * 1e3 for k in ("eager", "compiled"))
    return [preset, f"{eager_ms:.2f}", f"{compiled_ms:.2f}", f"{eager_ms / compiled_ms:.2f}x", f"{compile_s:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["lstm-small", "mamba-small", "mamba2-small", "rwkv7-small"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=16, help="decode steps per timed call")
    args = parser.parse_args()
    rows = []
    for preset in args.presets:
        rows.append(bench(preset, args.repeats, args.steps))
        print(rows[-1], flush=True)
    print(machine())
    print(table(["preset", "eager ms/token", "inductor ms/token", "eager / inductor", "compile s"], rows))


if __name__ == "__main__":
    main()
