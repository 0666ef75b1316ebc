"""seqzoo -> transformers' own classes, for the tools that serve those (vLLM, TGI, llama.cpp's converter).

``export_native(source, destination, target)`` writes a folder that ``LlamaForCausalLM`` / ``GPT2LMHeadModel`` /
``MambaForCausalLM`` / ``Mamba2ForCausalLM`` load with no custom code and that gives the same logits; the source
folder's tokenizer and generation-config files come along. A config with no native equivalent (a Vaswani
Transformer, a Mamba-2 without the gated norm, a classic RNN or RWKV-7, which transformers has no class for) is
refused with the reason.

From the shell: ``seqzoo export --to llama|gpt2|mamba|mamba2 <seqzoo folder> <destination>``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from seqzoo.conversions import gpt2, hf_mamba, llama
from seqzoo.conversions.checkpoints import (
    check_destination,
    copy_tokenizer_files,
    materialize_buffers,
    refuse_adapters,
    require_values,
    staged_destination,
)
from seqzoo.models.weight_storage import contiguous_state_dict, quantised_weights

# target -> (seqzoo model_type it exports from, transformers class name, module with native_config/native_weights)
TARGETS: dict[str, tuple[str, str, Any]] = {
    "llama": ("seqzoo_transformer", "LlamaForCausalLM", llama),
    "gpt2": ("seqzoo_transformer", "GPT2LMHeadModel", gpt2),
    "mamba": ("seqzoo_mamba", "MambaForCausalLM", hf_mamba),
    "mamba2": ("seqzoo_mamba2", "Mamba2ForCausalLM", hf_mamba),
}


def to_native(model: Any, target: str) -> Any:
    """The transformers model (``target``'s class) holding the weights of the seqzoo ``model``."""
    import transformers

    from seqzoo.utils import unwrap

    model = unwrap(model)  # (torch.compile's wrapper: its state dict names every tensor `_orig_mod.<name>`)
    refuse_adapters(model)
    quantised = quantised_weights(model)
    if quantised:  # (torch's packed int8 weights are no tensors: the state dict's copy failed on a dtype)
        raise ValueError(f"{type(model).__name__} is quantised ({'; '.join(quantised[:3])}); an export writes float "
                         "weights for transformers' class: export the float model, and quantise after loading")
    _check_target(model.config.model_type, target)
    model_type, class_name, module = TARGETS[target]
    _check_causal_lm(model, target)
    native_config = module.native_config(model.config)
    # By rows, as transformers builds its models: one stored by columns (set_weight_layout) fails its save's check of
    # tied weights, which flattens them with view().
    state = contiguous_state_dict({k: v.detach() for k, v in model.state_dict().items()})
    require_values(state, f"the {type(model).__name__}")  # (an offloaded model's weights are elsewhere)
    weights = module.native_weights(state, model.config)
    native_class = getattr(transformers, class_name)
    with torch.device("meta"):
        native = native_class(native_config)
    native.load_state_dict(weights, strict=True, assign=True)
    native.tie_weights()
    materialize_buffers(native)
    if getattr(model, "generation_config", None) is not None:  # (how the model generates: its eos ids, lengths)
        native.generation_config = copy.deepcopy(model.generation_config)
    # The weights in the model's dtype; the float32 buffers computed from the config (rotary frequencies) stay float32,
    # as transformers keeps them in a model it loads in half precision: the exported folder loaded again computes
    # with those, and this object computed with rounded ones (logits 4e-3 apart in bfloat16).
    computed = [(module, name, buffer) for module in native.modules() for name, buffer in module._buffers.items()
                if buffer is not None and buffer.dtype == torch.float32 and name in module._non_persistent_buffers_set]
    native.to(model.dtype)
    for module, name, buffer in computed:
        module._buffers[name] = buffer
    return native.eval()


def _check_target(found: Any, target: str) -> None:
    """Refuse an unknown ``target``, or a model of type ``found`` that it cannot hold."""
    if not (isinstance(target, str) and target in TARGETS):  # (a list: "unhashable type")
        raise ValueError(f"unknown export target {target!r}; allowed: {', '.join(TARGETS)}")
    model_type, class_name, _ = TARGETS[target]
    if found != model_type:
        raise ValueError(f"cannot export a {found!r} model to {target}: {class_name} holds {model_type!r} models "
                         f"only (transformers has no native class for every seqzoo architecture)")


def _check_causal_lm(model: Any, target: str) -> None:
    """Refuse a model object that is no causal language model (a backbone, a classifier, a tagger): the export would
    need a vocabulary head it lacks (torch's load_state_dict failed on it, naming missing and unexpected tensors)."""
    from seqzoo.registry import architecture_for_model_type

    causal_lm = architecture_for_model_type(model.config.model_type).causal_lm_class
    # (by name too: a model loaded through its checkpoint's bundled code, trust_remote_code=True, is of the bundle's
    # copy of the class)
    if not isinstance(model, causal_lm) and causal_lm.__name__ not in {klass.__name__ for klass in type(model).__mro__}:
        raise ValueError(f"cannot export a {type(model).__name__} to {target}: {TARGETS[target][1]} is a causal "
                         f"language model, and a {type(model).__name__} is none (a backbone without the vocabulary "
                         f"head, or a model with a task head); export a {causal_lm.__name__}")


def export_native(source: Any, destination: str | Path, target: str) -> Any:
    """Export a seqzoo model (object or saved folder) as a ``target`` folder, written whole or not at all
    (:func:`seqzoo.conversions.checkpoints.staged_destination`); returns the transformers model."""
    check_destination(source, destination)
    model = _load_seqzoo(source, target)
    native = to_native(model, target)
    with staged_destination(destination) as staging:
        native.save_pretrained(staging)
        copy_tokenizer_files(source, staging)
    return native


def _load_seqzoo(source: Any, target: str) -> Any:
    from transformers import AutoModelForCausalLM, PreTrainedModel

    import seqzoo  # noqa: F401  (registers the architectures)
    from seqzoo.utils import unwrap

    source = unwrap(source)  # (torch.compile's wrapper)
    refuse_adapters(source)
    if isinstance(source, PreTrainedModel):
        return source
    if not (isinstance(source, (str, Path)) and (Path(source) / "config.json").is_file()):
        raise ValueError(f"export source {str(source)!r} is not a saved seqzoo model folder (no config.json)")
    try:  # the model type first: a folder of another architecture (or an encoder-decoder) is refused unread
        config = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        config = None  # (from_pretrained names what is wrong with it)
    if isinstance(config, dict):
        _check_target(config.get("model_type"), target)
        _check_saved_as_causal_lm(config, source)
    from seqzoo.utils import quiet_transformers, untrained_weights

    with quiet_transformers():  # (its load report of missing weights is the error below)
        model, loading = AutoModelForCausalLM.from_pretrained(source, output_loading_info=True)
    shown = untrained_weights(model, loading)
    if shown:  # (a backbone saved without its head: the head would be exported untrained)
        raise ValueError(f"export source {str(source)!r} lacks weights of {type(model).__name__} ({shown}): the "
                         "export would hold them untrained; export a folder saved from the whole causal language model")
    return model


def _check_saved_as_causal_lm(config: dict[str, Any], source: Any) -> None:
    """A folder saved as a classifier loads into AutoModelForCausalLM too, with a vocabulary head it never trained
    (tied to the embeddings, or new): refuse it rather than export that head as a language model's."""
    from seqzoo.registry import saved_head

    saved_as, task = saved_head(config)
    if task is not None and task != "causal-lm":
        raise ValueError(f"export source {str(source)!r} holds a {saved_as} (the {task} head), not a causal language "
                         f"model: its vocabulary head would be untrained; export a causal language model's folder")


__all__ = ["TARGETS", "export_native", "to_native"]
