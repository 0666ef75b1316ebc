"""Kernels traced by ``torch.export`` with a dynamic sequence length.

Exporting with ``dynamic_shapes`` (a ``Dim`` on the length) traces the kernels with a symbolic length (a
``torch.SymInt``). A Python loop over the tokens or the chunks would run the example's number of times and fix the
length to the example's. Given a symbolic length the kernels therefore take their per-token form and run its loop
through torch's ``scan`` higher-order op, which the exported program runs for the length it is given:

* the recurrent cells (rnn, lstm, gru): the reference's cell loop (torch's fused ops would not do: ``aten::lstm``
  and its kin decompose into one cell per time step);
* the scans (selective_scan, ssd, wkv7): the chunked backends hand such a call to their reference. A chunk count
  derived from the length (ceil(T / Q), which can be 1, over a padding that can be 0) makes torch's tracer record
  guards on it (whether a view is contiguous), which again fix the length.

Eager calls never take this form (their lengths are ints), and neither does ``torch.compile``: dynamo presents a
size to Python code as an ``int`` even when it is symbolic, so a compiled forward keeps its kernels' usual forms
(and compiles again for a new length) as before; so does ``torch.export(..., strict=True)``, which traces with
dynamo.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def is_symbolic(size: Any) -> bool:
    """Whether ``size`` (a tensor dimension) is symbolic: a ``torch.SymInt`` while ``torch.export`` traces a
    dimension marked dynamic; an int otherwise."""
    return not isinstance(size, int)


def scan(step: Callable, init: Any, xs: Any, dim: int) -> tuple[Any, Any]:
    """``step(carry, x) -> (carry, out)`` over the slices of ``xs`` (a tensor or a tuple of tensors) along ``dim``,
    from ``init`` (contiguous tensors, each its own); returns the last carry and the outputs stacked along ``dim``.
    torch's ``scan`` higher-order op, which a trace records as one node whatever the length; ``step`` must return
    new tensors (an output that is one of its inputs, or the carry again, is refused by torch: return a ``clone()``)."""
    from torch._higher_order_ops.scan import scan as torch_scan

    return torch_scan(step, init, xs, dim=dim)


def over_tokens(step: Callable, carry: Any, per_token: tuple, length: Any) -> tuple[Any, Any]:
    """``step(carry, slices) -> (carry, y)`` over the ``length`` tokens of ``per_token`` (tensors (B, T, ...));
    returns the last carry and the outputs stacked along dim 1, None where ``length`` is 0. A Python loop eagerly,
    torch's ``scan`` for a symbolic length."""
    if is_symbolic(length):
        return scan(step, carry.contiguous(), per_token, dim=1)
    outputs = []
    for t in range(length):
        carry, y = step(carry, [x[:, t] for x in per_token])
        outputs.append(y)
    return carry, (torch.stack(outputs, dim=1) if outputs else None)


__all__ = ["is_symbolic", "over_tokens", "scan"]
