"""Packed rows: a training step (forward + backward) with the documents' resets inside the kernels, against the same
step with the documents unpacked into padded rows of their own (the path hybrids, bidirectional models and the
classic RNNs take). Both paths are forced for every preset, whichever the model takes by default.

    OMP_NUM_THREADS=1 python benchmarks/bench_packing.py

Rows of ``--length`` tokens are filled with documents whose lengths vary (log-normal, median ``--median``, clipped to
[4, length]), marked the way DataCollatorWithFlattening marks them (position ids restarting at 0). Both paths give
the same loss (checked). Unpacking pads every document to the longest of the batch, so its cost grows with the
spread of lengths; the reset path computes no padding. Prints a markdown table of median step times, interleaved.
"""

from __future__ import annotations

import argparse
import contextlib
import math

import torch

import seqzoo
from seqzoo.models.packing import Packing
from timing import compare, machine, table


def packed_rows(rows: int, length: int, median: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list]:
    """input_ids and restarting position_ids (rows, length), and the document lengths of each row."""
    g = torch.Generator().manual_seed(seed)
    ids, positions, documents = [], [], []
    for _ in range(rows):
        lengths, total = [], 0
        while total < length:
            size = int(math.exp(math.log(median) + torch.randn(1, generator=g).item()))
            size = min(max(size, 4), length - total)
            lengths.append(size)
            total += size
        documents.append(lengths)
        positions.append(torch.cat([torch.arange(n) for n in lengths]))
        ids.append(torch.randint(0, 256, (length,), generator=g))
    return torch.stack(ids), torch.stack(positions), documents


@contextlib.contextmanager
def packing_path(resets: bool):
    """Force one path for every model: resets in the kernels (every recurrent mixer passes them on; the classic
    RNNs declare takes_reset False only because unpacking measured faster) or the documents unpacked."""
    original = Packing.takes_resets
    Packing.takes_resets = lambda self, model: resets
    try:
        yield
    finally:
        Packing.takes_resets = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["mamba-small", "rwkv7-small", "lstm-small"])
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--median", type=float, default=64.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    ids, positions, documents = packed_rows(args.rows, args.length, args.median)
    count = sum(len(d) for d in documents)
    longest = max(max(d) for d in documents)
    print(f"{machine()}; {args.rows} rows x {args.length} tokens, {count} documents of 4..{longest} tokens "
          f"(unpacked: {count} x {longest} = {count * longest} token slots)\n")
    rows = []
    for preset in args.presets:
        torch.manual_seed(0)
        model = seqzoo.create_model(preset).train()
        for module in model.modules():  # the same function on both paths: no dropout
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0

        def step(resets):
            with packing_path(resets):
                model.zero_grad(set_to_none=True)
                loss = model(input_ids=ids, position_ids=positions, labels=ids).loss
                loss.backward()
            return loss.detach()

        torch.testing.assert_close(step(True), step(False), rtol=1e-4, atol=1e-5)
        times = compare({"resets": lambda: step(True), "unpack": lambda: step(False)}, repeats=args.repeats,
                        warmup=1)
        rows.append([preset, f"{times['resets'] * 1e3:.0f}", f"{times['unpack'] * 1e3:.0f}",
                     f"{times['unpack'] / times['resets']:.2f}x"])
    print(table(["preset", "resets in kernels (ms)", "unpacked (ms)", "speed-up"], rows))


if __name__ == "__main__":
    main()
