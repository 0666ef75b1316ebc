"""Training throughput with data.packing: documents packed into full rows against one document per padded row.

    cd benchmarks && OMP_NUM_THREADS=1 python bench_train_packing.py

One training step (forward + backward, B rows of T tokens) in three layouts of the same documents:

- packed: rows cut from the stream of documents (EOS after each), each document kept alone through position ids
  that restart at every EOS -- what `seqzoo train` does for text by default (data.packing: true);
- padded: one document per row (a longer one split into T-token pieces), right-padded, with an attention mask and
  the padding unscored -- the layout without packing that keeps documents apart;
- stream: the packed rows without markers, the context running on across documents (data.packing: false; what TBPTT
  trains on) -- the price of keeping documents apart, not an alternative to it.

Throughput counts scored text tokens per second (padding excluded). Two corpora: pydoc topics (79 documents,
median 1.6 kB) and their paragraphs (2,608 documents, median 114 bytes), the case packing is for.
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


def packed_batch(documents: list[str], rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    stream = tokens_from_documents(documents).long()[: rows * length + 1]
    return stream[:-1].reshape(rows, length), stream[1:].reshape(rows, length)


def padded_batch(documents: list[str], rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``rows`` pieces of at most length + 1 tokens, one document (or a piece of a long one) per row."""
    pieces = []
    for doc in documents:
        tokens = tokens_from_documents([doc]).long()
        pieces += [tokens[start:start + length + 1] for start in range(0, max(len(tokens) - 1, 1), length)]
        if len(pieces) >= rows:
            break
    inputs = torch.full((rows, length), PAD_TOKEN_ID)
    targets = torch.full((rows, length), IGNORE)
    mask = torch.zeros(rows, length, dtype=torch.long)
    for r, piece in enumerate(pieces[:rows]):
        n = len(piece) - 1
        inputs[r, :n], targets[r, :n], mask[r, :n] = piece[:-1], piece[1:], 1
    return inputs, targets, mask


def step(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, **kwargs):
    def run() -> None:
        model.zero_grad(set_to_none=True)
        loss, _ = token_loss_sum(model(input_ids=inputs, use_cache=False, **kwargs).logits, targets)
        loss.backward()
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["lstm-small", "transformer-small", "mamba-small"])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.2f}\n")
    rows = []
    for corpus, documents in corpora().items():
        order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(0)).tolist()
        documents = [documents[i] for i in order]
        inputs, targets = packed_batch(documents, args.rows, args.length)
        positions = document_position_ids(inputs)
        pad_inputs, pad_targets, pad_mask = padded_batch(documents, args.rows, args.length)
        scored = {"packed": targets.numel(), "padded": int((pad_targets != IGNORE).sum())}
        docs_per_row = (inputs == EOS_TOKEN_ID).sum().item() / args.rows + 1
        for preset in args.presets:
            torch.manual_seed(0)
            model = seqzoo.create_model(preset).train()
            times = compare({
                "packed": step(model, inputs, targets, position_ids=positions),
                "padded": step(model, pad_inputs, pad_targets, attention_mask=pad_mask),
                "stream": step(model, inputs, targets),
            }, repeats=args.repeats, warmup=1)
            speed = {name: scored.get(name, targets.numel()) / seconds for name, seconds in times.items()}
            rows.append([corpus, f"{docs_per_row:.1f}", preset, f"{times['packed'] * 1e3:.0f}",
                         f"{times['padded'] * 1e3:.0f}", f"{times['stream'] * 1e3:.0f}",
                         f"{scored['padded'] / targets.numel():.0%}", f"{speed['packed'] / speed['padded']:.2f}x",
                         f"{times['stream'] / times['packed']:.2f}x"])
    print(f"One training step (forward + backward), B={args.rows} T={args.length}; medians of {args.repeats}\n")
    print(table(["corpus", "documents per packed row", "model", "packed ms", "padded ms", "stream ms",
                 "padded rows' text share", "text tokens/s packed / padded", "stream / packed time"], rows))
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
