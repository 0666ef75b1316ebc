"""A decode step's large matrix products on the CPU, by oneDNN.

torch computes ``F.linear`` of float32 CPU tensors with MKL. For the few rows of a decode step (one per sequence)
and a weight stored by rows, as a model is built, trained and loaded, oneDNN's own product
(``torch.ops.mkldnn._linear_pointwise``, the one torch's inductor uses for frozen CPU models) was measured
1.15-1.5x as fast for matrices of half a million elements and more -- RWKV-7's 768 x 768 maps and its 3072-wide
channel mix, a 65536-token vocabulary head -- on the AMD EPYC host of BENCHMARKS.md's run AI, and slower or the same
for smaller ones, whose call costs a few microseconds more. :func:`linear` runs that product where all of this
holds, and ``F.linear`` otherwise:

- oneDNN is in this torch build and enabled (``torch.backends.mkldnn.enabled``, or its ``flags()`` block: set it
  False and every product is ``F.linear``'s), and its product agreed with ``F.linear`` on a small check the first
  time it was asked for (a torch whose private operator changed is not used);
- seqzoo's products are chosen for that many rows (``seqzoo/kernels/product_choice.py``): by default from one row,
  but from four where MKL runs on an Intel processor, whose MKL product was the faster for one to three rows (run AK:
  oneDNN's 0.68-0.98x of it) and the slower from four (oneDNN's 1.0-2.1x);
- plain strided float32 CPU tensors (no subclass: a quantised weight's own operators must run; no sparse weight),
  a bias (if any) of one packed vector (oneDNN reads it as packed, whatever its strides), no gradient recorded
  (oneDNN's product has no backward), no autocast (``F.linear`` runs in its dtype there), ``F.linear`` not
  replaced since seqzoo was imported (a profiler counting its calls must see them);
- the weight stored by rows (contiguous) with at least :data:`MIN_WEIGHT_ELEMENTS` elements, and at most
  :data:`MAX_ROWS` rows of input (a prompt's thousands of rows stay with MKL's matrix product).

:func:`rows_from` says from how many rows oneDNN multiplies as things are set.

Its results differ from ``F.linear``'s by rounding only (a sum in another order). :func:`scripted_linear` is the same
product for TorchScript (RWKV-7's scripted step), told by its caller whether oneDNN may run.
"""

from __future__ import annotations

from typing import List, Optional, Union  # noqa: UP035 -- TorchScript reads these annotations

import torch
from torch.nn import functional as F

from seqzoo.kernels import product_choice

MIN_WEIGHT_ELEMENTS = 1 << 19  # 512 x 1024, a little under 768 x 768
MAX_ROWS = 16

_F_LINEAR = F.linear  # as torch defines it: one replaced since (a profiler) must be called
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_checked: bool | None = None  # whether oneDNN's product is here and agreed with F.linear; None: not asked yet


def _op_present() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except Exception:  # noqa: BLE001 -- a torch without the namespace, or one that fails to load it: not here
        return False


OP_PRESENT = _op_present()


def _agrees() -> bool:
    """Whether oneDNN's product computes ``F.linear`` here (checked once, on a small product with and without a
    bias: a torch whose private operator changed its arguments or meaning is not used)."""
    global _checked
    if _checked is None:
        _checked = False
        if OP_PRESENT:  # (its result is kept: every decode step asks)
            # (float32 on the CPU whatever the default dtype and device: the check is of the operator, not of them)
            generator = torch.Generator().manual_seed(0)
            x, weight, bias = (torch.randn(*shape, generator=generator, dtype=torch.float32, device="cpu")
                               for shape in ((3, 40), (24, 40), (24,)))
            try:
                with torch.no_grad():
                    _checked = all(
                        torch.allclose(torch.ops.mkldnn._linear_pointwise(x, weight, b, "none", [], ""),
                                       F.linear(x, weight, b), rtol=1e-5, atol=1e-5)
                        for b in (None, bias))
            except Exception:  # noqa: BLE001 -- an operator that refuses these arguments is not used
                _checked = False
    return _checked


def available() -> bool:
    """Whether oneDNN's product can run in this process as things are set: it is in this torch and agreed with
    ``F.linear``, and oneDNN is enabled (``torch.backends.mkldnn.enabled``), whatever the gradient and autocast modes
    of the moment (RWKV-7's step has checked those itself; :func:`usable` asks them too), and whatever the choice of
    products (:func:`rows_from` reads it)."""
    return OP_PRESENT and torch._C._get_mkldnn_enabled() and _agrees()


def rows_from() -> int:
    """The fewest rows oneDNN's product multiplies as things are set: the choice of products
    (``product_choice.onednn_rows()``) where it is :func:`available`, else ``product_choice.NEVER``."""
    rows = product_choice.onednn_rows()
    return rows if rows <= MAX_ROWS and available() else product_choice.NEVER


def usable() -> bool:
    """Whether a decode step may run oneDNN's product now: :func:`available`, no gradient is recorded, no autocast is
    on (it would run ``F.linear`` in its lower precision), and ``F.linear`` is torch's own."""
    return (not torch.is_grad_enabled() and not torch._C._is_any_autocast_enabled() and F.linear is _F_LINEAR
            and available())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, by oneDNN where the module docstring's conditions hold. ``x``: (..., in)."""
    # (oneDNN reads the bias as packed: one of other strides or a broadcast one computed other values, or read past its
    # end; a sparse weight has no strides to ask about)
    # (the size first: most heads are smaller, and this runs at every decode step)
    if (type(weight) in _PLAIN and weight.numel() >= MIN_WEIGHT_ELEMENTS and type(x) is torch.Tensor
            and weight.layout == torch.strided and x.layout == torch.strided and weight.dim() == 2
            and weight.dtype == torch.float32 and x.dtype == torch.float32 and weight.device.type == "cpu"
            and x.device.type == "cpu" and weight.is_contiguous() and x.dim() >= 2
            and (bias is None or (type(bias) in _PLAIN and bias.layout == torch.strided
                                  and bias.dtype == torch.float32 and bias.shape == weight.shape[:1]
                                  and bias.device.type == "cpu" and bias.is_contiguous()))
            and usable()):
        rows = x.reshape(-1, x.shape[-1])
        if product_choice.onednn_rows() <= rows.shape[0] <= MAX_ROWS and rows.shape[1] == weight.shape[1]:
            out = torch.ops.mkldnn._linear_pointwise(rows.contiguous(), weight, bias, "none", [], "")
            return out.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


if OP_PRESENT:
    def scripted_linear(x: torch.Tensor, weight: torch.Tensor, rows_from: int) -> torch.Tensor:
        """``F.linear(x, weight)`` of a (B, in) ``x`` without bias, for TorchScript: by oneDNN where B is at least
        ``rows_from`` (the caller's :func:`rows_from`, where :func:`usable` and plain float32 CPU tensors; else
        ``product_choice.NEVER``) and the weight's size, layout and the rows allow."""
        # (TorchScript reads no module constants: MIN_WEIGHT_ELEMENTS and MAX_ROWS written out, held equal by a test)
        if (rows_from <= x.size(0) <= 16 and weight.layout == torch.strided and weight.numel() >= 524288
                and weight.is_contiguous() and x.is_contiguous()):
            no_scalars = torch.jit.annotate(List[Optional[Union[int, float, complex]]], [])
            return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", no_scalars, "")
        # (F.linear's own product for a (B, in) x without bias, less its two dispatch layers: the same values)
        return torch.mm(x, weight.t())
else:
    def scripted_linear(x: torch.Tensor, weight: torch.Tensor, rows_from: int) -> torch.Tensor:
        """``F.linear(x, weight)`` of a (B, in) ``x`` without bias: this torch has no oneDNN product."""
        return torch.mm(x, weight.t())


__all__ = ["MAX_ROWS", "MIN_WEIGHT_ELEMENTS", "OP_PRESENT", "available", "linear", "rows_from", "scripted_linear",
           "usable"]
