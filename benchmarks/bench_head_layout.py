"""The vocabulary head's product with one decode step's rows, the weight stored by rows (as built and loaded) against
by columns (``model.set_head_layout("columns")``), interleaved in one run.

    python benchmarks/bench_head_layout.py                 # hidden 256 / 768 x vocab 300-65536, B = 1, 2, 8
    python benchmarks/bench_head_layout.py --hidden 2048 --vocab 65536 --batch 1 4
    python benchmarks/bench_head_layout.py --hidden 512 --vocab 1536 --set-mb 24   # a model's matrices: see below
    python benchmarks/bench_head_layout.py --onednn       # also by rows through seqzoo's decode-step product

Times ``torch.nn.functional.linear`` of a (B, hidden) input with the (vocab, hidden) weight in each memory order, as
the head of a decode step runs it. One torch thread unless ``--threads`` says otherwise; medians of interleaved
repeats (``timing.py``). Ratio: rows / columns (above 1: by columns is faster).

One weight stays in the caches between calls when it is small. A model's weight matrices do not: each step streams
all of them (``set_weight_layout``). ``--set-mb N`` cycles through as many distinct weights of the shape as fill N
MB, so that each product reads its weight from memory or the last-level cache, as a model's step does.

``--onednn`` adds a third column: the weight by rows through ``seqzoo.kernels.onednn_linear.linear``, the product a
decode step runs where seqzoo's products are chosen (oneDNN's for a weight of 2^19 elements or more and at most 16
rows, ``F.linear`` otherwise; timed so whatever the processor, though by default an Intel one runs ``F.linear``
for one to three rows: ``seqzoo/kernels/product_choice.py``), and its ratio rows / that (above 1: it is faster than
``F.linear`` by rows).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import compare  # noqa: E402

from seqzoo.kernels import onednn_linear, product_choice  # noqa: E402


def measure(hidden: int, vocab: int, batch: int, repeats: int, set_mb: float = 0.0,
            onednn: bool = False) -> tuple[float, ...]:
    count = max(1, int(set_mb * 2**20 // (vocab * hidden * 4)))  # distinct weights, cycled through
    rows = [torch.randn(vocab, hidden) for _ in range(count)]
    columns = [w.t().contiguous().t() for w in rows]  # what set_head_layout("columns") stores: strides (1, vocab)
    x = torch.randn(batch, hidden)
    torch.testing.assert_close(F.linear(x, columns[0]), F.linear(x, rows[0]), rtol=1e-4, atol=1e-4)
    # Each sample runs about as long at every size, and reads every weight of the set at least once.
    calls = max(count, 4_000_000 // (vocab * hidden * batch))
    cases = {
        "rows": lambda: [F.linear(x, rows[i % count]) for i in range(calls)],
        "columns": lambda: [F.linear(x, columns[i % count]) for i in range(calls)],
    }
    with product_choice.products("seqzoo"):  # (oneDNN's product on every processor, Intel's too)
        if onednn:
            torch.testing.assert_close(onednn_linear.linear(x, rows[0]), F.linear(x, rows[0]), rtol=1e-4, atol=1e-4)
            cases["step"] = lambda: [onednn_linear.linear(x, rows[i % count]) for i in range(calls)]
        times = compare(cases, repeats=repeats)
    return tuple(times[name] / calls for name in cases)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 768])
    parser.add_argument("--vocab", type=int, nargs="+", default=[300, 4096, 16384, 32768, 65536])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--onednn", action="store_true",
                        help="also time the weight by rows through the decode step's product (oneDNN's where large)")
    parser.add_argument("--set-mb", type=float, default=0.0,
                        help="cycle through distinct weights filling this many MB (default: one weight)")
    args = parser.parse_args(argv)
    for name in ("hidden", "vocab", "batch"):
        if min(getattr(args, name)) < 1:
            parser.error(f"--{name} takes positive sizes; got {getattr(args, name)}")
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    if not 0 <= args.set_mb <= 4096:
        parser.error(f"--set-mb takes 0-4096 MB; got {args.set_mb}")
    torch.set_num_threads(args.threads)
    cycled = f", weights cycled through {args.set_mb:g} MB" if args.set_mb else ""
    lines = [f"torch {torch.__version__}, Python {platform.python_version()}, {args.threads} torch thread(s)"
             f"{cycled}", "",
             "| hidden | vocab | B | by rows µs | by columns µs | rows / columns |"
             + (" by rows, decode step's product µs | rows / step's |" if args.onednn else ""),
             "|---|---|---|---|---|---|" + ("---|---|" if args.onednn else "")]
    with torch.no_grad():
        for hidden in args.hidden:
            for vocab in args.vocab:
                for batch in args.batch:
                    rows, columns, *step = measure(hidden, vocab, batch, args.repeats, args.set_mb, args.onednn)
                    lines.append(f"| {hidden} | {vocab} | {batch} | {rows * 1e6:.0f} | {columns * 1e6:.0f} | "
                                 f"{rows / columns:.2f}x |"
                                 + "".join(f" {t * 1e6:.0f} | {rows / t:.2f}x |" for t in step))
    report = "\n".join(lines)
    print(report)
    return report


if __name__ == "__main__":
    main()
