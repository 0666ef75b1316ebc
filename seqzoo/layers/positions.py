"""Position encodings: sinusoidal (Vaswani et al. 2017), learned (GPT-2) and rotary (RoPE, Su et al. 2021)."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_table(num_positions: int, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)), computed in ``dtype``:
    float64 for a float64 model (or where float64 is the default dtype), else float32 (a half-precision default
    would round it)."""
    if dtype != torch.float64:
        dtype = torch.float64 if dtype is None and torch.get_default_dtype() == torch.float64 else torch.float32
    position = torch.arange(num_positions, dtype=dtype)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=dtype) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim, dtype=dtype)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: dim // 2])
    return table


class _KeptInFullPrecision(nn.Module):
    """A module whose buffer ``KEPT`` (a function of the config, not a weight: never saved) stays float32 when the
    model is cast to half precision (.to(torch.bfloat16), .half()). A model built or loaded in bfloat16 computes it
    in float32; one cast after building rounded it, and a later .float() kept the rounded values, so the model's
    logits changed when it was saved and loaded again (by up to 4e-3). Its users cast what they read from it."""
    KEPT: str

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 -- torch.nn.Module's own signature
        original = getattr(self, self.KEPT)
        result = super()._apply(fn, recurse)
        cast = getattr(self, self.KEPT)
        if cast.dtype in _HALF and original.dtype in _FULL:  # (float64 stays: a float64 model's are)
            setattr(self, self.KEPT, original.to(cast.device, torch.float32))  # (where fn put the buffer)
        return result


class SinusoidalPositions(_KeptInFullPrecision):
    KEPT = "table"

    def __init__(self, max_positions: int, dim: int) -> None:
        super().__init__()
        # A function of the config, not a weight: kept out of checkpoints.
        self.register_buffer("table", sinusoidal_table(max_positions, dim), persistent=False)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 -- torch.nn.Module's own signature
        before = self.table.dtype
        result = super()._apply(fn, recurse)
        if self.table.dtype == torch.float64 and before != torch.float64:  # (.double(): exact, not float32's values)
            self.table = sinusoidal_table(*self.table.shape, dtype=torch.float64).to(self.table.device)
        return result

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.table[position_ids]  # (B, T, D), float32 in a half-precision model: cast by the caller


def rope_inv_freq(head_dim: int, theta: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RoPE's (head_dim / 2,) inverse frequencies theta^(-2i / head_dim), computed in ``dtype``."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=dtype) / head_dim))


class RotaryEmbedding(_KeptInFullPrecision):
    """Returns (cos, sin) for the given positions; apply with :func:`apply_rotary`. In float32 (for a half-precision
    model too), in float64 for a float64 model."""

    KEPT = "inv_freq"

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, theta), persistent=False)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 -- torch.nn.Module's own signature
        before = self.inv_freq.dtype
        result = super()._apply(fn, recurse)
        if self.inv_freq.dtype == torch.float64 and before != torch.float64:  # (.double(): exact, not float32's)
            self.inv_freq = rope_inv_freq(self.head_dim, self.theta, torch.float64).to(self.inv_freq.device)
        return result

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq
        if x.dtype == torch.float64 and inv_freq.dtype != torch.float64:
            # A model built or loaded in float64 keeps the float32 buffer its __init__ made (from_pretrained casts
            # parameters, not buffers): its positions are rotated in float64 all the same, as after .double().
            inv_freq = rope_inv_freq(self.head_dim, self.theta, torch.float64)
        freqs = position_ids[..., None].to(inv_freq.dtype) * inv_freq.to(x.device)  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


_HALF = (torch.bfloat16, torch.float16)
_FULL = (torch.float32, torch.float64)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    # q, k: (B, heads, T, D); cos, sin: (B, T, D). Half-split layout, as in Llama/GPT-NeoX checkpoints.
    cos, sin = cos[:, None], sin[:, None]
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
