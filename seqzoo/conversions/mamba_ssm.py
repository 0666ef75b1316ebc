"""Raw ``mamba_ssm`` checkpoints (``MambaLMHeadModel.save_pretrained``: a ``config.json`` with ``d_model``,
``n_layer``, ``ssm_cfg`` ..., and ``pytorch_model.bin``) -> seqzoo Mamba / Mamba-2.

mamba_ssm's mixers have the parameter names and layouts of transformers' (and so seqzoo's); the backbone names
its embedding ``embedding``. ``ssm_cfg["layer"]`` picks Mamba-1 (the default) or Mamba-2, and the other
``ssm_cfg`` entries map to config fields, with mamba_ssm's own defaults where the file leaves them out (Mamba-2:
``d_state=128``, ``headdim=64``). Entries that only steer initialisation or kernels (``use_fast_path``,
``A_init_range``, ``conv_init`` ...) carry nothing. Refused, naming the field: attention layers (``attn_layer_idx``),
MLP blocks (``d_intermediate > 0``), LayerNorm backbones (``rms_norm: false``), Mamba-3, ``d_ssm`` smaller than
the inner width, ``D_has_hdim``, and any ``ssm_cfg`` entry seqzoo does not know.

    from seqzoo.conversions.mamba_ssm import convert_mamba_ssm
    model = convert_mamba_ssm("path/to/mamba-2.8b")          # a folder; or (state_dict, config=dict)

From the shell: ``seqzoo convert mamba-ssm <folder> <destination>``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from seqzoo.conversions.checkpoints import (
    SourceWeights,
    build_model,
    check_destination,
    config_dict,
    conversion_dtype,
    read_folder_weights,
    read_generation_config,
    read_json,
    save_converted,
    valid_token_ids,
)
from seqzoo.conversions.hf_mamba import convert_state_dict

# mamba_ssm name -> (seqzoo field, mamba_ssm's default), per layer kind.
MAMBA1_FIELDS = {
    "d_state": ("state_size", 16), "d_conv": ("conv_kernel", 4), "expand": ("expand", 2),
    "dt_rank": ("time_step_rank", "auto"), "dt_min": ("time_step_min", 0.001), "dt_max": ("time_step_max", 0.1),
    "dt_init": ("time_step_init_scheme", "random"), "dt_scale": ("time_step_scale", 1.0),
    "dt_init_floor": ("time_step_floor", 1e-4), "conv_bias": ("use_conv_bias", True), "bias": ("use_bias", False),
}
MAMBA2_FIELDS = {
    "d_state": ("state_size", 128), "d_conv": ("conv_kernel", 4), "expand": ("expand", 2),
    "headdim": ("head_dim", 64), "ngroups": ("n_groups", 1), "rmsnorm": ("rms_norm", True),
    "norm_before_gate": ("norm_before_gate", False), "dt_min": ("time_step_min", 0.001),
    "dt_max": ("time_step_max", 0.1), "dt_init_floor": ("time_step_floor", 1e-4),
    "dt_limit": ("time_step_limit", (0.0, math.inf)), "bias": ("use_bias", False),
    "conv_bias": ("use_conv_bias", True), "chunk_size": ("chunk_size", 256),
}
# Entries that steer only the initialisation or the kernels, not the function computed.
NO_EFFECT = {"use_fast_path", "use_mem_eff_path", "conv_init", "A_init_range", "process_group", "sequence_parallel"}
# Top-level config.json fields: known and meaningful here, or carrying nothing.
TOP_LEVEL = {"d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx", "attn_cfg",
             "rms_norm", "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings",
             "pad_token_id", "bos_token_id", "eos_token_id"}
# mamba_ssm's MixerModel and Mamba2's gated norm use this eps; config.json does not record it.
NORM_EPSILON = 1e-5


def config_from_mamba_ssm(ssm_config: dict[str, Any], vocab_size: int) -> Any:
    """The seqzoo Mamba / Mamba-2 config of a mamba_ssm ``config.json``; ``vocab_size`` is the embedding's row
    count (the config's vocab_size padded to ``pad_vocab_size_multiple``)."""
    from seqzoo.models.mamba import MambaConfig
    from seqzoo.models.mamba2 import Mamba2Config

    unknown = sorted(set(ssm_config) - TOP_LEVEL)
    if unknown:
        raise ValueError(f"mamba_ssm config has fields seqzoo does not know: {', '.join(unknown)} (known: "
                         f"{', '.join(sorted(TOP_LEVEL))})")
    for name, supported, what in (("attn_layer_idx", [], "attention layers (hybrid models)"),
                                  ("d_intermediate", 0, "MLP blocks after each mixer"),
                                  ("rms_norm", True, "LayerNorm instead of RMSNorm")):
        value = ssm_config.get(name, supported)
        if value != supported and not (name == "attn_layer_idx" and not value):
            raise ValueError(f"mamba_ssm config sets {name}={value!r}: {what}, which seqzoo's Mamba models do not "
                             f"have")
    for name in ("d_model", "n_layer"):
        if name not in ssm_config:
            raise ValueError(f"mamba_ssm config has no {name} (the {'width' if name == 'd_model' else 'layer count'} "
                             f"of the model); MambaLMHeadModel.save_pretrained writes d_model, n_layer and ssm_cfg")
    if not isinstance(ssm_config.get("ssm_cfg") or {}, dict):
        raise ValueError(f"mamba_ssm config has ssm_cfg={ssm_config['ssm_cfg']!r}; expected an object of mixer "
                         f"settings (layer, d_state, d_conv, expand ...)")
    ssm_cfg = dict(ssm_config.get("ssm_cfg") or {})
    layer = ssm_cfg.pop("layer", "Mamba1")
    if layer not in ("Mamba1", "Mamba2"):
        raise ValueError(f"mamba_ssm config has ssm_cfg.layer={layer!r}; seqzoo converts 'Mamba1' and 'Mamba2'")
    fields = MAMBA1_FIELDS if layer == "Mamba1" else MAMBA2_FIELDS
    d_model = ssm_config["d_model"]
    values: dict[str, Any] = {field: default for field, default in fields.values()}
    for name, value in ssm_cfg.items():
        if name in fields:
            values[fields[name][0]] = value
        elif name == "d_ssm":
            inner = ssm_cfg.get("expand", 2) * d_model
            if value is not None and value != inner:
                smaller = isinstance(value, int) and not isinstance(value, bool) and 0 < value < inner
                raise ValueError(f"mamba_ssm config sets ssm_cfg.d_ssm={value!r}, " + (
                    f"less than the inner width {inner}: the rest is a gated MLP that seqzoo's Mamba-2 does not have"
                    if smaller else f"not a width up to the inner width {inner} (expand * d_model); seqzoo converts "
                                    f"d_ssm null or {inner}"))
        elif name == "D_has_hdim":
            if value:
                raise ValueError("mamba_ssm config sets ssm_cfg.D_has_hdim=true (one skip weight per channel); "
                                 "seqzoo's Mamba-2 has one per head")
        elif name not in NO_EFFECT:
            raise ValueError(f"mamba_ssm config has ssm_cfg.{name}={value!r}, which seqzoo does not know (known: "
                             f"{', '.join(sorted([*fields, 'd_ssm', 'D_has_hdim', 'layer', *NO_EFFECT]))})")
    if layer == "Mamba2":
        values["time_step_limit"] = tuple(values["time_step_limit"])
        if not values["rms_norm"]:  # (mamba_ssm reads norm_before_gate only inside the gated RMSNorm)
            values["norm_before_gate"] = False
    values.update(
        vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=ssm_config["n_layer"],
        residual_in_fp32=_flag(ssm_config, "residual_in_fp32"),
        tie_word_embeddings=_flag(ssm_config, "tie_embeddings"), layer_norm_epsilon=NORM_EPSILON,
        **valid_token_ids(ssm_config, vocab_size, "the mamba_ssm config"),
    )
    return (MambaConfig if layer == "Mamba1" else Mamba2Config)(**values)


def _flag(ssm_config: dict[str, Any], name: str) -> bool:
    """A true/false field of a mamba_ssm config (true when absent, mamba_ssm's default for both it has); a string
    such as "false" is refused, since bool() would read it as true."""
    value = ssm_config.get(name, True)
    if not isinstance(value, bool):
        raise ValueError(f"mamba_ssm config has {name}={value!r}; expected true or false")
    return value


def convert_mamba_ssm(source: Any, config: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> Any:
    """A seqzoo Mamba / Mamba-2 with the weights of a mamba_ssm checkpoint: a folder (``config.json`` +
    ``pytorch_model.bin`` or safetensors), or a state dict with its ``config`` dict. ``dtype`` defaults to the
    source's."""
    dtype = conversion_dtype(dtype)
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not (folder / "config.json").is_file():
            raise ValueError(f"{str(source)!r} is not a mamba_ssm checkpoint folder (no config.json)")
        if config is None:
            config = read_json(folder / "config.json", "mamba_ssm config")
        weights: Any = read_folder_weights(folder)
        generation = read_generation_config(folder)
    else:
        weights, generation = SourceWeights.from_dict(source, "the mamba_ssm state dict"), None
        if config is None:
            raise ValueError("a mamba_ssm state dict needs its config (the dict in config.json): pass config=...")
    config = config_dict(config, "the mamba_ssm config")
    if "d_model" not in config or "model_type" in config:
        raise ValueError(f"not a mamba_ssm config (it needs d_model, n_layer, ssm_cfg and no model_type; found "
                         f"{', '.join(sorted(config)[:8])}); a transformers Mamba folder converts with hf-mamba")
    embedding = next((k for k in ("backbone.embedding.weight", "backbone.embeddings.weight") if k in weights), None)
    if embedding is None:
        raise ValueError("the checkpoint has no backbone.embedding.weight: not a mamba_ssm MambaLMHeadModel")
    seqzoo_config = config_from_mamba_ssm(config, weights[embedding].shape[0])
    state = convert_state_dict(dict(weights.items()), seqzoo_config, "the mamba_ssm checkpoint")
    return build_model(seqzoo_config, state, dtype or weights[embedding].dtype, "the mamba_ssm checkpoint", generation)


def convert_mamba_ssm_folder(source: str | Path, destination: str | Path, dtype: torch.dtype | None = None) -> Any:
    """Convert a mamba_ssm folder and save it to ``destination``, with any tokenizer files the folder has."""
    check_destination(source, destination)
    model = convert_mamba_ssm(source, dtype=dtype)
    save_converted(model, source, destination)  # (whole or not at all)
    return model


__all__ = ["config_from_mamba_ssm", "convert_mamba_ssm", "convert_mamba_ssm_folder"]
