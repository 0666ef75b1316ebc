"""How a causal LM's weights are stored, for SeqzooForCausalLM's methods that change it or save it: the memory order
of its matrices (``set_head_layout`` / ``set_weight_layout``), contiguous copies for saving a model whose matrices are
laid out by columns, and the values accelerate keeps for weights it offloaded."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def offloaded_value(model: nn.Module, name: str) -> torch.Tensor | None:
    """The value of a state-dict entry that a ``device_map`` offloaded (its parameter is on the meta device), read from
    the store of the accelerate hook that loads it for its module's call (the module or one above it); None where no
    hook holds it."""
    parts = name.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        for hook in offloading_hooks(model.get_submodule(".".join(parts[:depth]))):
            store = getattr(hook, "weights_map", None)
            if store is not None:
                try:
                    return store[".".join(parts[depth:])]
                except KeyError:
                    continue
    return None


def offloading_hooks(module: nn.Module) -> list[Any]:
    """The accelerate hooks on ``module`` that offload its weights (a SequentialHook holds several)."""
    hook = getattr(module, "_hf_hook", None)
    return [part for part in getattr(hook, "hooks", None) or [hook] if getattr(part, "offload", False)]


def check_layout_name(method: str, layout: str) -> None:
    if layout not in ("rows", "columns"):
        raise ValueError(f"{method}: layout must be 'rows' or 'columns', got {layout!r}")


def layout_weight(module: nn.Module, name: str, where: str, wanted: str) -> nn.Parameter:
    """``module``'s parameter ``name``, checked for ``SeqzooForCausalLM.set_head_layout`` / ``set_weight_layout``: a
    plain floating-point 2-d Parameter whose storage this process holds."""
    if torch.nn.utils.parametrize.is_parametrized(module, name):
        raise ValueError(f"{where} computes its weight on every call (a parametrization such as weight_norm): "
                         "there is no stored weight whose order could change")
    if offloading_hooks(module):
        raise ValueError(f"{where} is offloaded by accelerate (cpu_offload / dispatch_model), which keeps its own "
                         "copy of the weight: set the layout before offloading")
    weight = getattr(module, name, None)
    # A tensor subclass (torchao's quantised weights, a DTensor shard) lays itself out: only plain tensors here.
    if (not isinstance(weight, nn.Parameter) or type(weight.data) is not torch.Tensor or weight.dim() != 2
            or not weight.is_floating_point()):
        if weight is None:
            seen = "no weight"
        elif isinstance(weight, nn.Parameter):
            seen = f"a Parameter of {type(weight.data).__name__}"
        else:
            seen = f"a {type(weight).__name__} that is not a Parameter"
        if isinstance(weight, torch.Tensor):
            seen += f", dtype {weight.dtype}, shape {tuple(weight.shape)}"
        raise ValueError(f"{where} has {seen}; a layout applies to {wanted} of plain tensors (a quantised or "
                         "sharded weight keeps its own layout)")
    if weight.is_meta:
        raise ValueError(f"{where}: its weight is on the meta device (offloaded, or not loaded yet)")
    return weight


def lay_out(weight: nn.Parameter, layout: str) -> None:
    # `.data` swaps the storage under the same Parameter, so optimizers, ties and hooks keep their reference.
    # By columns, the (out, in) view's transpose is contiguous: strides (1, out). A gradient already there follows:
    # torch's fused optimizers (fused=True) read a parameter and its gradient as one order, and on the CPU compute
    # wrong values, without an error, where the two differ.
    for tensor in (weight, weight.grad):
        if tensor is not None and tensor.layout is torch.strided:  # (a sparse gradient has no memory order)
            tensor.data = tensor.data.t().contiguous().t() if layout == "columns" else tensor.data.contiguous()


@contextlib.contextmanager
def contiguous_parameters(module: nn.Module) -> Iterator[None]:
    """Parameters stored in another memory order (``set_head_layout("columns")``) held contiguous for a while, then
    put back: transformers' check of tied tensors, while saving, flattens them with ``view``, which that order
    refuses. Only the memory order changes; each Parameter stays the same object."""
    moved = [(parameter, parameter.data) for parameter in module.parameters() if not parameter.is_contiguous()]
    for parameter, data in moved:
        parameter.data = data.contiguous()
    try:
        yield
    finally:
        for parameter, data in moved:
            parameter.data = data


def contiguous_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` with each tensor stored in another memory order replaced by a contiguous copy, one per stored
    tensor: entries that shared one (a tied head and embedding) share the copy, so ties are still found."""
    copies: dict[tuple, torch.Tensor] = {}
    out = {}
    for name, tensor in state_dict.items():
        if type(tensor) is torch.Tensor and not tensor.is_contiguous():
            key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
            if key not in copies:  # a tied head is copied once, not once per name
                copies[key] = tensor.contiguous()
            tensor = copies[key]
        out[name] = tensor
    return out


# torch's own int8 modules (torch.ao.quantization.quantize_dynamic swaps them in); quantisation-aware training's
# fake-quantised ones are float modules, and are not among them.
TORCH_QUANTISED_MODULES = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")


def quantised_weights(model: nn.Module, state_dict: dict[str, Any] | None = None) -> list[str]:
    """What is quantised in ``model``, one description each: torchao's int8 weights (``seqzoo.quantize_int8``; those
    of ``state_dict`` where one is given) and the layers torch's ``quantize_dynamic`` swapped in, whose packed
    weights are no parameters. Empty for a float model."""
    tensors = state_dict.items() if state_dict is not None else model.named_parameters()
    found = [f"{name} holds {type(t).__name__} weights" for name, t in tensors
             if type(t).__module__.split(".")[0] == "torchao"]
    layers: list[str] = []
    for name, module in model.named_modules():
        if type(module).__module__.startswith(TORCH_QUANTISED_MODULES) and not any(
                name.startswith(f"{layer}.") for layer in layers):  # (not the packed weights inside one)
            layers.append(name)
            found.append(f"{name} is a {type(module).__module__}.{type(module).__name__}")
    return found
