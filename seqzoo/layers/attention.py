"""Multi-head self-attention with grouped-query heads, dispatched through transformers' AttentionInterface, so
``attn_implementation="eager" | "sdpa" | "flash_attention_2" | "flex_attention"`` (and registered custom ones) work
as users know them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from seqzoo.cache import ATTENTION, check_kv_layout
from seqzoo.layers.mixer import Mixer, SharedValues, call_module
from seqzoo.layers.positions import apply_rotary

logger = logging.getLogger("seqzoo")
_WARNED_NO_WEIGHTS: set[str] = set()  # the implementations output_attentions=True was warned about


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    # (B, kv_heads, T, D) -> (B, kv_heads * groups, T, D)
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, Tq, Tk)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # a 4-d mask passed by the user, True where a query attends (as sdpa)
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    # (in float32 at least: float64 scores cast down would turn their mask value into -inf, a padded row to NaN)
    weights = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, Tq, H, D)
    return output, weights


class SelfAttention(Mixer):
    """Multi-head causal self-attention with grouped-query heads. Its cache entry is transformers' K/V layer, which
    grows by one position per token; ``attention_mask`` (the causal mask that ``create_causal_mask`` built) and
    ``position_embeddings`` (RoPE's cos/sin, or None) come in the context."""

    cache_kind = ATTENTION

    def __init__(self, config: Any, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.config = config
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)

    @classmethod
    def kv_bytes_per_token(cls, config: Any, dtype_bytes: int = 4) -> int:
        return 2 * config.num_key_value_heads * config.head_dim * dtype_bytes

    def forward(
        self,
        hidden_states: torch.Tensor,
        *,
        state: Any = None,
        mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        output_attentions: bool = False,
        shared: SharedValues | None = None,
        **context: Any,
    ) -> tuple[torch.Tensor, Any]:
        output, weights = self.attend(hidden_states, state, attention_mask, position_embeddings,
                                      attention_kwargs or {}, call_module)
        if output_attentions and shared is not None:  # (B, H, T, past + T); None from kernels that never form them
            if (weights is None and not torch.compiler.is_compiling()
                    and self.config._attn_implementation not in _WARNED_NO_WEIGHTS):
                _WARNED_NO_WEIGHTS.add(self.config._attn_implementation)
                logger.warning("output_attentions=True: attn_implementation=%r forms no attention weights, so the "
                               "attentions are None; use attn_implementation='eager' to see them",
                               self.config._attn_implementation)
            shared.setdefault("attentions", []).append(weights)
        return output, state

    def attend(
        self,
        hidden_states: torch.Tensor,
        state: Any,
        attention_mask: torch.Tensor | None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
        attention_kwargs: dict[str, Any],
        project: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attention's output (B, T, hidden) and weights (None from kernels that never form them), with ``state``
        (the layer's cached keys and values, or None) updated. ``project(linear, x)`` runs each projection:
        :func:`call_module` (``linear(x)``) in :meth:`forward`; the Transformer's decode step
        (``models/transformer/decoding.py``) passes a function that runs a plain ``nn.Linear``'s one operation
        without its module call."""
        input_shape = hidden_states.shape[:-1]
        shape = (*input_shape, -1, self.head_dim)
        query = project(self.q_proj, hidden_states).view(shape).transpose(1, 2)  # (B, H, T, D)
        key = project(self.k_proj, hidden_states).view(shape).transpose(1, 2)  # (B, KV, T, D)
        value = project(self.v_proj, hidden_states).view(shape).transpose(1, 2)
        if position_embeddings is not None:
            query, key = apply_rotary(query, key, *position_embeddings)
        if state is not None:
            check_kv_layout(state, key)
            key, value = state.update(key, value)  # all positions so far

        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **attention_kwargs,
        )
        return project(self.o_proj, output.reshape(*input_shape, -1).contiguous()), weights
