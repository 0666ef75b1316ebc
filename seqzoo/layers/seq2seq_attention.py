"""Attention over a source sequence, for encoder-decoders.

A decoder state ``s`` (the query) scores every source annotation ``h_j``; the weights are the softmax of the
scores over the source's real positions, and the context is their weighted sum:

    alpha_j = exp(score(s, h_j)) / sum_k exp(score(s, h_k)),    c = sum_j alpha_j h_j

    bahdanau        v^T tanh(W_h h_j + W_s s)     (Bahdanau et al. 2015; s is the previous decoder state)
    luong-concat    v^T tanh(W_h h_j + W_s s)     (Luong et al. 2015, "concat"; s is the current state)
    luong-general   s^T W_a h_j                   (Luong "general")
    luong-dot       s^T h_j                       (Luong "dot")
    scaled-dot      softmax(Q K^T / sqrt(d)) V    (Vaswani et al. 2017, per head; :class:`MultiHeadAttention`)

The part of a score that depends on the source only -- ``W_h h_j``, ``W_a h_j``, ``h_j`` -- is a source's
*keys*, computed once per source (:meth:`SourceAttention.keys`) and kept in the decoding cache. A padded source
position gets a score of -inf, so its weight is exactly 0 and it adds exactly nothing to the context.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from seqzoo.layers.attention import eager_attention_forward

SOURCE_SCORES = ("bahdanau", "luong-dot", "luong-general", "luong-concat")


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dimension (source positions), exactly 0 where ``mask`` (B, S) is False; a row whose
    mask is all False (an empty source) gets all-zero weights, so a context of zeros, not NaN."""
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    # In at least float32 (bf16 / fp16 scores lose the small weights), in float64 when the model is.
    weights = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    if mask is not None:
        weights = weights.masked_fill(~mask.any(dim=-1)[:, None, None], 0.0)
    return weights.to(scores.dtype)


class SourceAttention(nn.Module):
    """One of Bahdanau's or Luong's scores (see the module docstring) between decoder states and a source."""

    def __init__(self, score: str, query_size: int, memory_size: int, attention_size: int) -> None:
        super().__init__()
        if score not in SOURCE_SCORES:
            raise ValueError(f"unknown attention score {score!r}; allowed: {', '.join(SOURCE_SCORES)}")
        if score == "luong-dot" and query_size != memory_size:
            raise ValueError(f"the dot score needs queries and annotations of one width; got {query_size} and "
                             f"{memory_size}")
        self.score = score
        self.additive = score in ("bahdanau", "luong-concat")
        if self.additive:
            self.memory_proj = nn.Linear(memory_size, attention_size, bias=False)  # W_h
            self.query_proj = nn.Linear(query_size, attention_size, bias=False)  # W_s
            self.v = nn.Linear(attention_size, 1, bias=False)
        elif score == "luong-general":
            self.memory_proj = nn.Linear(memory_size, query_size, bias=False)  # W_a

    def extra_repr(self) -> str:
        return f"score={self.score!r}"

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """The source-only part of the score: (B, S, D) annotations -> (B, S, A) keys."""
        return memory if self.score == "luong-dot" else self.memory_proj(memory)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, T, Q) -> context (B, T, D) and weights (B, T, S); ``mask`` (B, S) is False at padding."""
        if self.additive:
            hidden = torch.tanh(keys[:, None, :, :] + self.query_proj(query)[:, :, None, :])  # (B, T, S, A)
            scores = self.v(hidden).squeeze(-1)  # (B, T, S)
        else:
            scores = torch.matmul(query, keys.transpose(1, 2))  # (B, T, S)
        weights = masked_softmax(scores, mask)
        return torch.matmul(weights, memory), weights


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017) whose keys and values come from the queries'
    own sequence (self-attention) or from another one (cross-attention: the source), through transformers'
    attention functions (``attn_implementation="eager" | "sdpa"``; eager whenever the weights are asked for)."""

    def __init__(self, config: Any, is_causal: bool) -> None:
        super().__init__()
        self.config = config  # its _attn_implementation picks the kernel
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.num_key_value_groups = 1  # read by transformers' attention functions
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = is_causal
        width = config.hidden_size
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.o_proj = nn.Linear(width, width)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def key_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, W) -> keys and values (B, H, S, D): what a cache keeps."""
        return self._heads(self.k_proj(source)), self._heads(self.v_proj(source))

    def forward(
        self,
        hidden_states: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states (B, T, W); key, value (B, H, S, D); mask: additive (B, 1, T or 1, S) or None.
        Returns (B, T, W) and, with ``need_weights``, the weights (B, H, T, S)."""
        query = self._heads(self.q_proj(hidden_states))
        implementation = "eager" if need_weights else self.config._attn_implementation
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, weights = attention(self, query, key, value, mask, scaling=self.scaling,
                                    dropout=self.attention_dropout if self.training else 0.0)
        output = self.o_proj(output.reshape(*hidden_states.shape[:2], -1))
        return output, weights if need_weights else None


__all__ = ["MultiHeadAttention", "SOURCE_SCORES", "SourceAttention", "masked_softmax"]
