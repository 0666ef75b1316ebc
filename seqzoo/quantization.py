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

from torch import nn

from seqzoo.layers.mixer import Mixer


def int8_targets(model: nn.Module) -> list[str]:
    """The names quantise_int8 quantises: each ``nn.Linear`` module and each mixer projection parameter."""
    targets = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            targets.append(name)
        elif isinstance(module, Mixer):
            targets += [f"{name}.{parameter}" for parameter in module.projection_parameters]
    return targets


def quantize_int8(model: nn.Module) -> nn.Module:
    """Quantise ``model`` in place (int8 dynamic activations, int8 weights, per output channel) and return it. For
    inference: the quantised weights take no gradient, and a tied output layer is untied (the embedding stays
    float)."""
    try:
        from torchao.quantization import FqnToConfig, Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as err:
        raise ImportError(f"seqzoo.quantize_int8 needs torchao ({err}); install it with pip install 'seqzoo[quant]'") \
            from err
    config = Int8DynamicActivationInt8WeightConfig()
    targets = int8_targets(model)
    if not targets:
        raise ValueError(f"{type(model).__name__} has no Linear layer or mixer projection to quantise")
    quantize_(model, FqnToConfig({name: config for name in targets}), filter_fn=None)
    return model


__all__ = ["int8_targets", "quantize_int8"]
