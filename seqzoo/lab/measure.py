"""What a memory costs at inference: decode latency and the state a sequence carries as the context grows."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from seqzoo.models.compat import output_cache
from seqzoo.utils import quiet_transformers


def cache_layers(cache: Any) -> list[dict[str, torch.Tensor]]:
    """The state a seqzoo cache holds, per layer, by name: a recurrent layer's own names (``{"h": ..., "c": ...}``)
    or an attention layer's keys and values (``{"k": ..., "v": ...}``)."""
    from seqzoo.cache import StateLayer

    layers = []
    for entry in cache.layers:
        if isinstance(entry, StateLayer):
            layers.append(dict(entry.state or {}))
        else:
            named = {"k": getattr(entry, "keys", None), "v": getattr(entry, "values", None)}
            layers.append({k: v for k, v in named.items() if isinstance(v, torch.Tensor)})
    return layers


def state_after(model: Any, prompt: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """The per-layer state after reading ``prompt`` (batch 1), exactly ``prompt.shape[1]`` tokens in."""
    with torch.no_grad():
        return cache_layers(output_cache(model(input_ids=prompt, use_cache=True)))


def state_bytes(layers: list[dict[str, torch.Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for layer in layers for t in layer.values())


class _StepClock:
    """A logits processor that only records when generate() reaches it: once per decoded token."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return scores


@torch.no_grad()
def decode_profile(model: Any, contexts: list[int], steps: int = 16, seed: int = 0) -> list[dict[str, float]]:
    """For each context length: the bytes of state one sequence carries after a prompt of that many tokens, and
    the median time of one greedy decode step through ``generate()`` (batch 1) from there."""
    from transformers import LogitsProcessorList

    model.eval()
    generator = torch.Generator().manual_seed(seed)
    high = min(model.config.vocab_size, 256)
    rows = []
    for context in contexts:
        prompt = torch.randint(0, high, (1, context), generator=generator)
        clock = _StepClock()
        with quiet_transformers():  # 4096 + 17 tokens passes max_position_embeddings: transformers reminds, on stderr
            model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=steps + 1,
                           min_new_tokens=steps + 1, do_sample=False, logits_processor=LogitsProcessorList([clock]),
                           pad_token_id=model.config.pad_token_id)
        intervals = [b - a for a, b in zip(clock.times, clock.times[1:])]  # token 2 on: the prompt is not timed
        rows.append({"context": context, "ms_per_token": 1000 * statistics.median(intervals),
                     "state_bytes": state_bytes(state_after(model, prompt))})
    return rows


def describe_state(model: Any, short: int, long: int) -> dict[str, Any]:
    """What one sequence's state is, measured: each tensor per layer (shape without the batch, dtype), which of
    its sizes grow with the context, and the total bytes after ``short`` and ``long`` tokens."""
    generator = torch.Generator().manual_seed(0)
    high = min(model.config.vocab_size, 256)
    model.eval()
    at_short = state_after(model, torch.randint(0, high, (1, short), generator=generator))
    at_long = state_after(model, torch.randint(0, high, (1, long), generator=generator))
    def tensors(index: int) -> list[dict[str, Any]]:
        described = []
        for name, value in at_short[index].items():
            other = at_long[index][name]
            shape = list(value.shape[1:])
            grows = [i for i, (a, b) in enumerate(zip(value.shape[1:], other.shape[1:])) if a != b]
            described.append({"name": name, "shape": ["T" if i in grows else n for i, n in enumerate(shape)],
                              "dtype": str(value.dtype).replace("torch.", "")})
        return described

    # Layers of another kind (a hybrid's attention layers beside its recurrent ones): each kind once, with the
    # layers that have it, so that a growing tensor outside layer 0 is shown too.
    kinds: list[dict[str, Any]] = []
    for index in range(len(at_short)):
        described = tensors(index)
        kind = next((k for k in kinds if k["tensors"] == described), None)
        if kind is None:
            kinds.append({"layers": [index], "tensors": described})
        else:
            kind["layers"].append(index)
    return {"layers": len(at_short), "tensors": kinds[0]["tensors"] if kinds else [],
            "same_in_every_layer": len(kinds) <= 1, "kinds": kinds,
            "bytes": {short: state_bytes(at_short), long: state_bytes(at_long)}}
