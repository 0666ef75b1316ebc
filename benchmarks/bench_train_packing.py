"""Training throughput with data.packing: documents packed into full rows against one document per padded row.

    cd benchmarks && OMP_NUM_THREADS=1 python bench_train_packing.py

One training step (forward + backward, B rows of T tokens) in three layouts of the same documents:

- packed: rows cut from the stream of documents (EOS after each), each document kept alone through position ids
  that restart at every EOS -- what `seqzoo train` does for text by default (data.packing: true);
- padded: one document per row (a longer one split into T-token pieces), right-padded, with an attention mask and
  the padding unscored -- the layout without packing that keeps documents apart;
- stream: the packed rows without markers, the context running on across documents (data.packing: false; what TBPTT
  trains on) -- the price of keeping documents apart, not an alternative to it.

Throughput counts scored text tokens per second (padding excluded), over a few consecutive batches of documents in
a fixed random order. Two corpora: pydoc topics (79 documents, median 1.6 kB) and their paragraphs (2,608
documents, median 114 bytes), the case packing is for.
"""

from __future__ import annotations

import argparse
import os

import torch

import seqzoo
from seqzoo.tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID
from seqzoo.training.data import IGNORE, document_position_ids, pydoc_documents, tokens_from_documents
from seqzoo.training.tbptt import token_loss_sum
from timing import compare, machine, table


def corpora() -> dict[str, list[str]]:
    topics = pydoc_documents()
    paragraphs = [p for topic in topics for p in topic.split("\n\n") if p.strip()]
    return {"pydoc topics": topics, "pydoc paragraphs": paragraphs}


def packed_batches(documents: list[str], count: int, rows: int, length: int) -> list[tuple[torch.Tensor, ...]]:
    """``count`` consecutive (inputs, targets, position ids) batches of the stream of ``documents``."""
    stream = tokens_from_documents(documents).long()[: count * rows * length + 1]
    inputs, targets = stream[:-1].reshape(count, rows, length), stream[1:].reshape(count, rows, length)
    return [(x, y, document_position_ids(x)) for x, y in zip(inputs, targets)]


def padded_batches(documents: list[str], count: int, rows: int, length: int) -> list[tuple[torch.Tensor, ...]]:
    """``count`` batches of one document per row (a longer one split into pieces of at most length + 1 tokens),
    right-padded, with the attention mask, in the order of ``documents``."""
    pieces = []
    for doc in documents:
        tokens = tokens_from_documents([doc]).long()
        pieces += [tokens[start:start + length + 1] for start in range(0, max(len(tokens) - 1, 1), length)]
        if len(pieces) >= count * rows:
            break
    batches = []
    for b in range(count):
        inputs = torch.full((rows, length), PAD_TOKEN_ID)
        targets = torch.full((rows, length), IGNORE)
        mask = torch.zeros(rows, length, dtype=torch.long)
        for r, piece in enumerate(pieces[b * rows:(b + 1) * rows]):
            n = len(piece) - 1
            inputs[r, :n], targets[r, :n], mask[r, :n] = piece[:-1], piece[1:], 1
        batches.append((inputs, targets, mask))
    return batches


def steps(model: torch.nn.Module, batches: list[tuple[torch.Tensor, ...]], layout: str):
    """One training step per batch (forward + backward), in turn: a call trains on all of them."""
    def run() -> None:
        for inputs, targets, extra in batches:
            model.zero_grad(set_to_none=True)
            kwargs = {"packed": {"position_ids": extra}, "padded": {"attention_mask": extra}, "stream": {}}[layout]
            loss, _ = token_loss_sum(model(input_ids=inputs, use_cache=False, **kwargs).logits, targets)
            loss.backward()
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["lstm-small", "transformer-small", "mamba-small"])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batches", type=int, default=4, help="consecutive batches per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.2f}\n")
    rows = []
    for corpus, documents in corpora().items():
        order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(0)).tolist()
        documents = [documents[i] for i in order]
        packed = packed_batches(documents, args.batches, args.rows, args.length)
        padded = padded_batches(documents, args.batches, args.rows, args.length)
        scored = {"packed": sum(y.numel() for _, y, _ in packed),
                  "padded": sum(int((y != IGNORE).sum()) for _, y, _ in padded)}
        scored["stream"] = scored["packed"]
        docs_per_row = sum(int((x == EOS_TOKEN_ID).sum()) for x, _, _ in packed) / (args.batches * args.rows) + 1
        for preset in args.presets:
            torch.manual_seed(0)
            model = seqzoo.create_model(preset).train()
            stream = [(x, y, None) for x, y, _ in packed]
            times = compare({"packed": steps(model, packed, "packed"), "padded": steps(model, padded, "padded"),
                             "stream": steps(model, stream, "stream")}, repeats=args.repeats, warmup=1)
            speed = {name: scored[name] / seconds for name, seconds in times.items()}
            per_step = {name: seconds / args.batches * 1e3 for name, seconds in times.items()}
            rows.append([corpus, f"{docs_per_row:.1f}", preset, f"{per_step['packed']:.0f}",
                         f"{per_step['padded']:.0f}", f"{per_step['stream']:.0f}",
                         f"{scored['padded'] / scored['packed']:.0%}", f"{speed['packed'] / speed['padded']:.2f}x",
                         f"{times['stream'] / times['packed']:.2f}x"])
    print(f"Training steps (forward + backward), B={args.rows} T={args.length}, {args.batches} consecutive batches "
          f"per timed call; medians of {args.repeats}\n")
    print(table(["corpus", "documents per packed row", "model", "packed ms/step", "padded ms/step",
                 "stream ms/step", "padded text / packed text", "text tokens/s packed / padded",
                 "stream / packed time"], rows))
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
