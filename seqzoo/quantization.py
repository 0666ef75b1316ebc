"""Int8 dynamic quantisation of a seqzoo model through torchao: int8 weights, activations quantised per token at
run time, for every ``nn.Linear`` and every projection a mixer holds as a plain parameter (the classic RNN / LSTM /
GRU cells' ``weight_ih`` and ``weight_hh``).

    model = seqzoo.quantize_int8(model)        # needs torchao (pip install 'seqzoo[quant]')

Why torchao: ``torch.ao.quantization.quantize_dynamic`` is deprecated in torch 2.13 (it warns, and points to
torchao), and it swaps only ``nn.Linear`` / ``nn.LSTM`` / ``nn.GRU`` modules, while seqzoo's recurrent layers keep
their weights as parameters of a mixer. torchao's ``FqnToConfig`` quantises parameters by name; the quantised
weight is a tensor subclass that implements ``F.linear``, so the recurrent cells run in the reference backend (whose
projections are ``F.linear``; torch's fused kernels take plain float weights and decline it, see
``seqzoo/kernels/rnn_cells/fused.py``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from seqzoo.layers.mixer import projection_parameters
from seqzoo.models.weight_storage import quantised_weights

# The weight dtypes torchao's int8 quantisation takes (float64 is not among them).
INT8_WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def int8_targets(model: nn.Module) -> list[str]:
    """The names quantise_int8 quantises: each ``nn.Linear`` module and each mixer projection parameter."""
    targets = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            targets.append(name)
        else:  # (a bundled model's mixers too: see projection_parameters)
            targets += [f"{name}.{parameter}" for parameter in projection_parameters(module)]
    return targets


def quantize_int8(model: nn.Module) -> nn.Module:
    """Quantise ``model`` in place (int8 dynamic activations, int8 weights, per output channel) and return it. For
    inference: the quantised weights take no gradient, and a tied output layer is untied (the embedding stays
    float). A model holding peft adapters is refused (merge them first), as is one quantised already or one of
    float64 weights (torchao takes float32, bfloat16 and float16).
    A quantised model is for inference in its process: torchao's int8 weights do not save with ``save_pretrained``
    (save the float model, and quantise after loading it)."""
    from seqzoo.adapters import adapter_layers

    adapters = adapter_layers(model)
    if adapters:
        raise ValueError(f"{type(model).__name__} holds peft adapter layers ({', '.join(adapters)}), whose own "
                         "Linear layers would be quantised too and cannot run so; merge them into the model first "
                         "(model = model.merge_and_unload()), then quantise")
    packed = [found for found in quantised_weights(model) if " is a " in found]
    if packed:  # (torch's quantize_dynamic: its layers are no nn.Linear, and a second scheme would run beside them)
        raise ValueError(f"{type(model).__name__} is quantised already ({'; '.join(packed[:3])}); quantise a float "
                         "model once")
    targets = int8_targets(model)
    if not targets:
        raise ValueError(f"{type(model).__name__} has no Linear layer or mixer projection to quantise")
    modules = dict(model.named_modules())
    kinds = {name: type(_target_tensor(model, modules, name)) for name in targets}
    quantised = [name for name, kind in kinds.items() if kind not in (torch.Tensor, nn.Parameter)]
    # accelerate's offloading (from_pretrained(device_map=..., offload_folder=...), cpu_offload) leaves meta tensors
    # in the model and loads the float weights into them at each call: torchao quantised the meta tensors, and the
    # first forward failed inside accelerate's hook (TypeError: new() received an invalid combination of arguments).
    offloaded = [name for name in targets if _target_tensor(model, modules, name).device.type == "meta"]
    if offloaded:
        raise ValueError(f"{type(model).__name__} is offloaded ({', '.join(offloaded[:3])} are on the meta device, "
                         "loaded at each call by accelerate's hooks), and offloaded weights cannot be quantised: load "
                         "the model whole (without device_map offloading), then quantise it")
    if quantised:
        raise ValueError(f"{type(model).__name__} is quantised already ({', '.join(quantised[:3])} hold "
                         f"{kinds[quantised[0]].__name__} weights); quantise a float model once")
    # (torchao asserted it deep inside its quantisation: "AssertionError: Unsupported input dtype: torch.float64")
    unsupported = [name for name in targets if _target_tensor(model, modules, name).dtype not in INT8_WEIGHT_DTYPES]
    if unsupported:
        dtype = _target_tensor(model, modules, unsupported[0]).dtype
        raise ValueError(f"{type(model).__name__} holds {dtype} weights ({', '.join(unsupported[:3])}), and torchao's "
                         f"int8 quantisation takes {', '.join(map(str, INT8_WEIGHT_DTYPES))} weights: convert the "
                         "model first (model.float()), then quantise it")
    try:
        from torchao.quantization import FqnToConfig, Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as err:
        raise ImportError(f"seqzoo.quantize_int8 needs torchao ({err}); install it with pip install 'seqzoo[quant]'") \
            from err
    config = Int8DynamicActivationInt8WeightConfig()
    quantize_(model, FqnToConfig({name: config for name in targets}), filter_fn=None)
    # (on the backbone too: a training loop that calls model.model directly, as a custom head does, is refused alike)
    # (the embedding module looked up once: its weight's dtype is what each call reads, a method call less a token)
    hook = functools.partial(_refuse_training, embeddings=model.get_input_embeddings())
    for module in {model, getattr(model, "base_model", model)}:
        module.register_forward_pre_hook(hook)
    return model


def _refuse_training(model: nn.Module, args: Any, embeddings: nn.Module) -> None:
    # torchao's int8 dynamic-activation layers pass no gradient to their inputs: a training step's backward failed
    # with "element 0 of tensors does not require grad", or trained only what lies above the last quantised layer.
    if model.training and torch.is_grad_enabled():
        raise RuntimeError(f"{type(model).__name__} is quantised to int8 (seqzoo.quantize_int8), for inference: its "
                           "int8 layers pass no gradient to their inputs, so it cannot train. Call model.eval() or "
                           "run under torch.no_grad() to use it; to train, train the float model and quantise it "
                           "after")
    # A model converted after quantising (model.double()) fed float64 activations to the int8 layers, which failed
    # inside torchao ("AssertionError: Unsupported input dtype: torch.float64").
    dtype = embeddings.weight.dtype
    if dtype not in INT8_WEIGHT_DTYPES:
        raise RuntimeError(f"{type(model).__name__} is quantised to int8 (seqzoo.quantize_int8), and its embeddings "
                           f"have been converted to {dtype} since; torchao's int8 layers take "
                           f"{', '.join(map(str, INT8_WEIGHT_DTYPES))} activations: convert the float model, then "
                           "quantise it")


def _target_tensor(model: nn.Module, modules: dict[str, nn.Module], target: str) -> Any:
    """The tensor an :func:`int8_targets` name stands for (``modules``: the model's, by name): a Linear layer's
    weight, or a mixer's parameter."""
    return modules[target].weight if isinstance(modules.get(target), nn.Linear) else model.get_parameter(target)


__all__ = ["int8_targets", "quantize_int8"]
