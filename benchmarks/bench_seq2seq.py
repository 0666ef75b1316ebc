"""Training speed of the encoder-decoders: what stepping the decoder token by token in Python costs.

Bahdanau's decoder and Luong's with input feeding need step t-1's attention to form step t's input, so they run one
recurrent kernel call per layer and target token; Sutskever's decoder (no attention) and Luong's without input
feeding run the whole target through each layer's kernel at once. Every recurrent model here is the same 2-layer
LSTM encoder-decoder (hidden 64, or --hidden) with only ``attention`` / ``input_feeding`` changed; the Transformer
is the seq2seq-transformer preset at the same width and depth. One training step = forward, backward and an AdamW
step on a batch of --batch pairs, source and target --length tokens each; timed interleaved.

    OMP_NUM_THREADS=1 python benchmarks/bench_seq2seq.py

Prints target tokens per second and the ratio to the decoder without attention (> 1: faster).
"""

from __future__ import annotations

import argparse

import torch

import seqzoo
from timing import compare, machine, table

VARIANTS = {
    "no attention (Sutskever)": ("seq2seq-sutskever-tiny", {"attention": "none"}),
    "luong-general, no input feeding": ("seq2seq-sutskever-tiny", {"attention": "luong-general",
                                                                   "input_feeding": False}),
    "luong-general + input feeding": ("seq2seq-sutskever-tiny", {"attention": "luong-general",
                                                                 "input_feeding": True}),
    "luong-dot + input feeding": ("seq2seq-sutskever-tiny", {"attention": "luong-dot", "input_feeding": True}),
    "bahdanau": ("seq2seq-sutskever-tiny", {"attention": "bahdanau"}),
    "transformer": ("seq2seq-transformer-tiny", {}),
}


def train_step(name: str, hidden: int, batch: int, length: int):
    preset, overrides = VARIANTS[name]
    torch.manual_seed(0)
    model = seqzoo.create_model(preset, hidden_size=hidden, dropout=0.0, **overrides).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sources = torch.randint(0, 256, (batch, length))
    labels = torch.randint(0, 256, (batch, length))

    def step() -> None:
        loss = model(input_ids=sources, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, model.config.steps_in_python if not model.config.is_transformer else False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}; hidden {args.hidden}, batch {args.batch}\n")
    for length in args.lengths:
        steps, stepping = {}, {}
        for name in VARIANTS:
            steps[name], stepping[name] = train_step(name, args.hidden, args.batch, length)
        seconds = compare(steps, repeats=args.repeats, warmup=1)
        base = seconds["no attention (Sutskever)"]
        rows = [[name, "token by token" if stepping[name] else "whole target", f"{seconds[name] * 1e3:.1f}",
                 f"{args.batch * length / seconds[name]:,.0f}", f"{base / seconds[name]:.2f}"] for name in VARIANTS]
        print(f"source and target length {length}:\n")
        print(table(["decoder", "decoder runs", "ms / step", "target tokens/s", "vs no attention"], rows))
        print()


if __name__ == "__main__":
    main()
