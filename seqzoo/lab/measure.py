"""What a memory costs at inference: decode latency and state bytes per sequence as the context grows."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from seqzoo.models.compat import output_cache


@torch.no_grad()
def decode_profile(model: Any, contexts: list[int], steps: int = 16, seed: int = 0) -> list[dict[str, float]]:
    """Median milliseconds of one greedy decode step (batch 1) after a prompt of each context length, and the
    bytes the cache holds for the sequence at that point."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    high = min(model.config.vocab_size, 256)
    rows = []
    for context in contexts:
        prompt = torch.randint(0, high, (1, context), generator=generator)
        out = model(input_ids=prompt, use_cache=True)
        cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
        timings = []
        for _ in range(steps):
            start = time.perf_counter()
            out = model(input_ids=token, cache=cache, use_cache=True)
            timings.append(time.perf_counter() - start)
            cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
        rows.append({"context": context, "ms_per_token": 1000 * statistics.median(timings),
                     "state_bytes": cache.state_bytes()})
    return rows


def parameter_count(model: Any) -> int:
    # Tied weights are one tensor: parameters() yields each shared parameter once.
    return sum(p.numel() for p in model.parameters())
