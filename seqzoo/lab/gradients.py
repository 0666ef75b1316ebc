"""How far back does the gradient reach? ||d loss(last position) / d input(position t)|| for every t.

The classic diagnosis of the vanishing-gradient problem (Hochreiter 1991; Bengio et al. 1994; Pascanu et al.
2013): a recurrent network's gradient with respect to an input ``d`` steps back is a product of ``d`` Jacobians
and shrinks (or grows) geometrically with ``d``; attention reaches every position in one step. The input here
is the token embedding (what the first layer sees), measured with a hook so every architecture is probed alike.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

TABLE_DISTANCES = (0, 1, 4, 16, 64, 256, 1024)


def gradient_profile(model: Any, length: int, batch: int = 8, seed: int = 0) -> list[float]:
    """Mean over ``batch`` random byte sequences of ||d loss_last / d embedding_t||, indexed by distance
    ``length - 1 - t`` (0 = the last position itself)."""
    model.eval()  # dropout off; gradients flow all the same
    generator = torch.Generator().manual_seed(seed)
    high = min(model.config.vocab_size, 256)
    ids = torch.randint(0, high, (batch, length), generator=generator)
    targets = torch.randint(0, high, (batch,), generator=generator)
    captured = {}

    def keep(module: Any, args: Any, output: torch.Tensor) -> None:
        output.retain_grad()
        captured["embeddings"] = output

    hook = model.get_input_embeddings().register_forward_hook(keep)
    try:
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, use_cache=False).logits  # (B, T, V)
        # Each row's loss depends on its own inputs only, so one backward gives every row's gradient.
        F.cross_entropy(logits[:, -1].float(), targets, reduction="sum").backward()
    finally:
        hook.remove()
    norms = captured["embeddings"].grad.float().norm(dim=-1).mean(dim=0)  # (T,)
    model.zero_grad(set_to_none=True)
    return norms.flip(0).tolist()


def table_rows(profiles: dict[str, list[float]]) -> tuple[list[str], list[list[str]]]:
    """Markdown-ready rows: the gradient at chosen distances, relative to the gradient at distance 0."""
    longest = max(len(p) for p in profiles.values())
    distances = [d for d in TABLE_DISTANCES if d < longest]
    if distances[-1] != longest - 1:
        distances.append(longest - 1)
    header = ["architecture", "norm of dL/dx at distance 0"] + [f"d={d} (relative)" for d in distances[1:]]
    rows = []
    for name, profile in profiles.items():
        base = profile[0] if profile[0] > 0 else float("nan")
        rows.append([name, f"{profile[0]:.3g}"] + [f"{profile[d] / base:.2e}" if d < len(profile) else "-"
                                                   for d in distances[1:]])
    return header, rows


# Why an architecture's gradient stops at distance 0 at initialisation, where the reason is known.
ZERO_REACH_REASONS = {
    "rwkv7": "RWKV-7's x070 init, as RWKV-LM's, starts every block's output projections at zero, so each block is "
             "the identity on the residual stream (its large gradient at distance 0 is that of the tiny embedding, "
             "+-1e-4, which ln0 normalises)",
}


def identity_notes(profiles: dict[str, list[float]]) -> list[str]:
    """A line under the table for each architecture whose gradient is exactly zero beyond distance 0, which reads
    like a bug: nothing from an earlier token reaches the last output yet."""
    notes = []
    for name, profile in profiles.items():
        if len(profile) > 1 and not any(profile[1:]):
            reason = ZERO_REACH_REASONS.get(name)
            notes.append(f"\n{name}: exactly 0 beyond distance 0: at initialisation nothing from an earlier token "
                         f"reaches the last output{f'. {reason}' if reason else ''}. The first updates open the path.")
    return notes
