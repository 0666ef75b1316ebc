"""A compiled decode step's one-row matrix products, as loops that inductor writes itself.

Decoding one sequence multiplies one row by every weight matrix of the model, once a token: a matrix-vector product
that reads the whole weight from memory and does two operations a weight. torch's inductor hands such a product to
the BLAS library (MKL on the CPU), which for a weight stored by rows -- as a model is built, trained and loaded --
streamed it at 11-17 GB/s on the AMD EPYC host of BENCHMARKS.md's runs T-AJ. Written as the sum over ``k`` of
``x[k] * weight[n, k]``, the same product is a reduction along each weight row's contiguous memory, which inductor
fuses into one vectorised loop of its own: the 65536 x 768 vocabulary head in 7.7 ms where MKL took 15-17 ms by rows
and 9-10 ms by columns (run AJ).

:class:`OneRowProducts` is that rewrite as a graph pass that inductor runs after its decompositions
(``post_grad_custom_pre_pass``): ``compile_decoding()`` adds it where seqzoo's products are chosen
(``seqzoo/kernels/product_choice.py``: by default everywhere but where MKL runs on an Intel processor, whose MKL
product was the faster in run AK) and the caller did not say otherwise. It rewrites ``mm(x, w)`` and
``addmm(bias, x, w)`` where all of this holds, and leaves every other product to inductor as before:

- ``x`` has one row (a static shape: a batch of one sequence decoding one token) and ``w`` is a weight stored by rows
  and transposed (strides ``(1, K)``: the ``weight.t()`` of ``F.linear``); by columns, MKL's product is the faster;
- both are float32 CPU tensors of static shapes, and a bias, if any, is float32 too;
- ``addmm``'s ``beta`` and ``alpha`` are 1.

At two rows and more the loop reads the weight once a row and is slower than MKL's, so batches keep MKL. Values differ
from MKL's by rounding only (a sum in another order). The second operand need not be a parameter: any one laid out so
(a transposed activation too) is read the same way. Every rewrite counts in
``torch._dynamo.utils.counters["seqzoo"]["one_row_products"]``; a graph inductor takes from its caches (with the
rewrite in it) counts nothing, as the pass does not run again.
"""

from __future__ import annotations

from typing import Any

import torch

from seqzoo.kernels import product_choice

try:  # (torch 2.6 and later: a pass inductor runs and keys its caches on)
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
except ImportError:  # pragma: no cover -- an older torch compiles as it always did
    CustomGraphPass = None

aten = torch.ops.aten
AVAILABLE = CustomGraphPass is not None
COUNTER = "one_row_products"


def _static(*sizes: Any) -> bool:
    return all(type(size) is int for size in sizes)


def _float32_cpu(value: Any) -> bool:
    """A traced float32 CPU tensor (a fake one, as inductor's graphs hold: the new nodes' values are made in its
    fake mode)."""
    return (isinstance(value, torch.Tensor) and value.dtype == torch.float32 and value.device.type == "cpu"
            and getattr(value, "fake_mode", None) is not None)


def rewritable(node: torch.fx.Node) -> tuple | None:
    """``(bias or None, x, w)`` of a product node this pass rewrites, else None."""
    if node.op != "call_function":
        return None
    if node.target is aten.mm.default and len(node.args) == 2 and not node.kwargs:
        bias, x, weight = None, *node.args
    elif node.target is aten.addmm.default and len(node.args) == 3 and all(
            value == 1 for value in node.kwargs.values()) and set(node.kwargs) <= {"beta", "alpha"}:
        bias, x, weight = node.args
    else:
        return None
    values = [getattr(arg, "meta", {}).get("val") for arg in (x, weight)]
    if not all(isinstance(arg, torch.fx.Node) for arg in (x, weight)) or not all(map(_float32_cpu, values)):
        return None
    x_value, weight_value = values
    if x_value.dim() != 2 or weight_value.dim() != 2:
        return None
    if not _static(*x_value.shape, *weight_value.shape, *weight_value.stride()):
        return None
    (rows, inner), inner_w = x_value.shape, weight_value.shape[0]
    if rows != 1 or inner != inner_w or weight_value.stride() != (1, inner):
        return None
    if bias is not None:
        bias_value = getattr(bias, "meta", {}).get("val")
        if not isinstance(bias, torch.fx.Node) or not _float32_cpu(bias_value):
            return None
    return bias, x, weight


def _call(graph: torch.fx.Graph, fake_mode: Any, target: Any, *args: Any) -> torch.fx.Node:
    """A new node of ``graph`` calling ``target``, with its fake value (what inductor's later passes read)."""
    node = graph.call_function(target, args)
    values = [arg.meta["val"] if isinstance(arg, torch.fx.Node) else arg for arg in args]
    with fake_mode:
        node.meta["val"] = target(*values)
    return node


class OneRowProducts(CustomGraphPass if AVAILABLE else object):
    """The pass (see the module's docstring): called by inductor on each graph after its decompositions."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in list(graph.nodes):
            found = rewritable(node)
            if found is None:
                continue
            bias, x, weight = found
            fake_mode = x.meta["val"].fake_mode
            with graph.inserting_before(node):
                column = _call(graph, fake_mode, aten.unsqueeze.default, x, 2)  # (1, K, 1)
                rows = _call(graph, fake_mode, aten.unsqueeze.default, weight, 0)  # (1, K, N), K contiguous
                products = _call(graph, fake_mode, aten.mul.Tensor, column, rows)
                result = _call(graph, fake_mode, aten.sum.dim_IntList, products, [1])
                if bias is not None:
                    result = _call(graph, fake_mode, aten.add.Tensor, result, bias)
            result.meta.update({key: value for key, value in node.meta.items() if key != "val"})
            node.replace_all_uses_with(result)
            graph.erase_node(node)
            torch._dynamo.utils.counters["seqzoo"][COUNTER] += 1

    def uuid(self) -> Any:
        # (inductor keys its caches on this: a graph compiled by another version of this file is not reused; where
        # the source cannot be read, None: inductor then caches nothing rather than reuse a graph it cannot tell)
        try:
            return get_hash_for_files((__file__,))
        except OSError:
            return None


def with_pass(options: dict[str, Any]) -> dict[str, Any]:
    """``torch.compile``'s keyword ``options`` with :class:`OneRowProducts` among inductor's options, where inductor
    compiles (no backend named, or ``"inductor"``), this torch has the interface, seqzoo's products are chosen over
    torch's (``seqzoo/kernels/product_choice.py``: by default not where MKL runs on an Intel processor), and the
    caller set no ``post_grad_custom_pre_pass`` of their own, neither in ``options``
    (``options={"post_grad_custom_pre_pass": None}`` compiles without it) nor in ``torch._inductor.config`` (which
    inductor's options would override). A ``mode`` becomes the inductor options it stands for (torch takes a mode or
    options, not both); options torch would refuse are returned as given, for torch to refuse."""
    if not AVAILABLE or options.get("backend", "inductor") != "inductor" or not product_choice.seqzoo_products():
        return options
    if torch._inductor.config.post_grad_custom_pre_pass is not None:
        return options
    mode, inductor = options.get("mode"), options.get("options")
    if mode is not None and inductor is not None:
        return options
    if inductor is not None and (not isinstance(inductor, dict) or "post_grad_custom_pre_pass" in inductor):
        return options
    from torch._inductor import list_mode_options

    if mode is not None and (not isinstance(mode, str) or mode not in list_mode_options()):
        return options
    given = dict(list_mode_options(mode, options.get("dynamic")) if mode is not None else inductor or {})
    options = {name: value for name, value in options.items() if name != "mode"}
    options["options"] = {**given, "post_grad_custom_pre_pass": OneRowProducts()}
    return options
