"""The ``reset`` input every scan op takes: where a new document begins inside a row.

``reset`` is a (B, T) tensor, bool or 0/1 integers, True at a document's first token: the state entering that token
is zero, as if the row started there (for ``causal_conv1d``: no tap of the window reaches across it, the inputs
before it read as zeros). ``initial_state`` therefore reaches only the tokens before a row's first reset, and the
final state is the state of the row's last document. ``None`` (the default) resets nothing. Packed rows
(several documents in one row, ``DataCollatorWithFlattening``) pass the position where each document starts.

A reset at a padded position (a mask of 0 in ``causal_conv1d`` and the recurrent cells, an identity step in the
scans) still resets: the padded step carries the zero state on, so the next real token starts a fresh document.

Every backend takes it except wkv7's ``triton_chunked``, whose ``supports()`` declines a call with one
(:func:`refuse_reset`), so the registry picks another; and the fused rnn/lstm/gru backend, which takes it only
without padding.

The chunked backends never put a zero decay into a log-space cumulative sum (log 0 = -inf, and -inf - -inf is nan):
they keep the cumulative decays of the data and multiply the terms that would cross a reset by 0 (the masks
below), or, in a step-by-step scan, multiply the step's decay by 0.
"""

from __future__ import annotations

import torch


def check_reset(op: str, reset, batch: int, length: int) -> torch.Tensor | None:
    """``reset`` as a (B, T) bool tensor, or None; ValueError naming the problem for anything else."""
    if reset is None:
        return None
    if not isinstance(reset, torch.Tensor):
        raise ValueError(f"{op}: reset must be a (B, T) = ({batch}, {length}) tensor or None, "
                         f"got {type(reset).__name__}")
    if tuple(reset.shape) != (batch, length):
        raise ValueError(f"{op}: reset must be (B, T) = ({batch}, {length}), got shape {tuple(reset.shape)}")
    if reset.is_floating_point() or reset.is_complex():
        raise ValueError(f"{op}: reset must be bool (or integer 0/1), got dtype {reset.dtype}")
    if reset.dtype != torch.bool and reset.numel() and not bool(((reset == 0) | (reset == 1)).all()):
        # (a document index, such as mamba_ssm's seq_idx [0, 0, 1, 1, 2], would otherwise mark every token after the
        # first document as one that begins a document)
        raise ValueError(f"{op}: an integer reset must hold only 0 and 1 (True at a document's first token), got "
                         f"values {reset.unique().tolist()[:6]}; a document index (seq_idx) is not a reset: pass "
                         f"torch.diff(seq_idx, dim=1, prepend=seq_idx[:, :1]) != 0")
    return reset.to(torch.bool)


def check_mask(op: str, mask, batch: int, length: int) -> None:
    """ValueError naming the problem unless ``mask`` (a padding mask) is None or (B, T)."""
    if mask is not None and tuple(mask.shape) != (batch, length):
        raise ValueError(f"{op}: mask must be (B, T) = ({batch}, {length}), got shape {tuple(mask.shape)}")


def chunk_segments(reset_blocks: torch.Tensor):
    """For resets laid out in chunks, (..., Q) bool, the masks a chunked kernel multiplies its terms by:

    * ``same`` (..., Q, Q): [t, s] True when s and t lie in the same document of the chunk (no reset in (s, t]);
    * ``first`` (..., Q): the token is reached by the chunk's start state (no reset at or before it in the chunk);
    * ``last`` (..., Q): the token reaches the chunk's end state (no reset after it in the chunk);
    * ``open`` (...): no reset in the chunk, so the start state reaches the end state.
    """
    segment = reset_blocks.long().cumsum(dim=-1)  # (..., Q): documents begun inside the chunk up to t
    same = segment.unsqueeze(-1) == segment.unsqueeze(-2)
    first = segment == 0
    last = segment == segment[..., -1:]
    return same, first, last, first[..., -1]


def refuse_reset(reset) -> tuple[bool, str]:
    """``supports()`` of a backend that has no reset input: declines a call with one, so the registry picks a
    backend that has (never silently ignored)."""
    if reset is not None:
        return False, "takes no reset input (document boundaries inside a row); the op's other backends do"
    return True, ""
