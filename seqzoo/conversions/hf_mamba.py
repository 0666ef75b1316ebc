"""Convert transformers' ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` into seqzoo Mamba / Mamba-2.

seqzoo's mixers keep transformers' parameter names and layouts, so conversion is a config translation plus a key
rename (``backbone.`` -> ``model.``, ``embeddings`` -> ``embed_tokens``, ``norm_f`` -> ``norm``). The converted
model computes the same function: logits agree to float32 rounding.

    from seqzoo.conversions.hf_mamba import convert_hf_mamba
    model = convert_hf_mamba("path/to/mamba-130m-hf")      # or a MambaForCausalLM object
    model.save_pretrained("mamba-130m-seqzoo")

From the shell: ``seqzoo convert hf-mamba <source> <destination>``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from seqzoo.conversions.checkpoints import (
    build_model,
    conversion_dtype,
    conversion_source,
    head_is_tied,
    load_transformers_source,
    require_values,
    save_converted,
    valid_token_ids,
)

logger = logging.getLogger("seqzoo")

SUPPORTED_MODEL_TYPES = ("mamba", "mamba2")

# (pattern, replacement) applied in order to every transformers key. mamba_ssm-era checkpoints name the embedding
# ``embedding`` (transformers renames it on load, and so do we).
KEY_RENAMES = (
    (r"^backbone\.embeddings?\.", "model.embed_tokens."),
    (r"^backbone\.norm_f\.", "model.norm."),
    (r"^backbone\.layers\.", "model.layers."),
)


def _fields(hf_config: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(hf_config, name) for name in names if hasattr(hf_config, name)}


COMMON_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "state_size", "expand", "conv_kernel",
                 "use_bias", "use_conv_bias", "layer_norm_epsilon", "residual_in_fp32", "time_step_min",
                 "time_step_max", "time_step_floor", "rescale_prenorm_residual", "initializer_range",
                 "tie_word_embeddings", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id")


def config_from_hf(hf_config: Any) -> Any:
    """The seqzoo config (MambaConfig or Mamba2Config) equivalent to a transformers Mamba / Mamba2 config."""
    from seqzoo.models.mamba import MambaConfig
    from seqzoo.models.mamba2 import Mamba2Config

    model_type = _require_supported(getattr(hf_config, "model_type", None))
    act = getattr(hf_config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"source config has hidden_act={act!r}; seqzoo's Mamba mixers support only 'silu'")
    values = _fields(hf_config, COMMON_FIELDS)
    # ids outside the vocabulary are dropped with a warning, as the llama / gpt2 / mamba-ssm converters do
    values.update(valid_token_ids(values, values["vocab_size"], f"the {model_type} config"))
    if model_type == "mamba":
        values.update(_fields(hf_config, ("time_step_rank", "time_step_scale", "time_step_init_scheme")))
        inner = getattr(hf_config, "intermediate_size", values["expand"] * values["hidden_size"])
        if inner != values["expand"] * values["hidden_size"]:
            raise ValueError(
                f"source config has intermediate_size={inner}, but seqzoo derives it as expand * hidden_size = "
                f"{values['expand'] * values['hidden_size']}; the two must agree"
            )
        return MambaConfig(**values)
    values.update(_fields(hf_config, ("num_heads", "head_dim", "n_groups", "chunk_size")))
    values["time_step_limit"] = tuple(getattr(hf_config, "time_step_limit", (0.0, float("inf"))))
    # transformers' Mamba2Mixer always applies a gated RMSNorm, norm(y * silu(z)), whatever its config says, and a
    # checkpoint in its format computes that: Mamba-Codestral's config.json carries a stale norm_before_gate: true
    # (mamba_ssm, which trained it, gates before the norm too). The converted model computes what transformers does.
    for name, transformers_value in (("rms_norm", True), ("norm_before_gate", False)):
        value = getattr(hf_config, name, transformers_value)
        if value != transformers_value:
            logger.warning("source config sets %s=%r, which transformers' Mamba2ForCausalLM ignores (it always "
                           "computes norm(y * silu(z))); converted as transformers computes it, %s=%r",
                           name, value, name, transformers_value)
        values[name] = transformers_value
    return Mamba2Config(**values)


def convert_state_dict(state_dict: dict[str, torch.Tensor], config: Any,
                       origin: str = "the source") -> dict[str, torch.Tensor]:
    """Rename transformers' keys to seqzoo's. Raises ValueError naming every missing, unexpected or mis-shaped
    tensor (compared with a seqzoo model of ``config``); ``origin`` names the source in warnings."""
    from seqzoo.registry import architecture_for_model_type

    renamed = {}
    for key, value in state_dict.items():
        new_key = key
        for pattern, replacement in KEY_RENAMES:
            new_key = re.sub(pattern, replacement, new_key)
        renamed[new_key] = value
    with torch.device("meta"):
        expected = architecture_for_model_type(config.model_type).causal_lm_class(config).state_dict()
    require_values(renamed, origin)  # (before head_is_tied compares the head with the embedding)
    tied = head_is_tied(config, renamed.get("lm_head.weight"), renamed.get("model.embed_tokens.weight"), origin)
    if tied:
        renamed.pop("lm_head.weight", None)  # the head is the embedding; the source may store it twice
    required = {k: v for k, v in expected.items() if not (tied and k == "lm_head.weight")}

    problems = []
    missing = sorted(set(required) - set(renamed))
    if missing:
        problems.append(f"missing tensors {_show(missing)}")
    unexpected = sorted(set(renamed) - set(required))
    if unexpected:
        problems.append(f"unexpected tensors {_show(unexpected)}")
    shapes = [f"{key} (source {tuple(renamed[key].shape)}, expected {tuple(required[key].shape)})"
              for key in sorted(set(required) & set(renamed)) if renamed[key].shape != required[key].shape]
    if shapes:
        problems.append(f"mis-shaped tensors {_show(shapes)}")
    if problems:
        raise ValueError(f"the source weights do not fit a {config.model_type} model of its config: "
                         f"{'; '.join(problems)}")
    return renamed


def convert_hf_mamba(source: Any, dtype: torch.dtype | None = None) -> Any:
    """A seqzoo Mamba / Mamba-2 causal LM with the weights of ``source``: a transformers ``MambaForCausalLM`` /
    ``Mamba2ForCausalLM`` object, a folder saved from one (sharded safetensors are read tensor by tensor), or a Hub
    repo id. ``dtype`` defaults to the source's."""
    dtype = conversion_dtype(dtype)
    hf_config, source_weights, _, generation = load_transformers_source(source, SUPPORTED_MODEL_TYPES, "hf-mamba")
    config = config_from_hf(hf_config)
    origin = f"the {hf_config.model_type} source"
    weights = convert_state_dict(dict(source_weights.items()), config, origin)
    dtype = dtype or weights["model.embed_tokens.weight"].dtype
    return build_model(config, weights, dtype, origin, generation)


def convert_hf_mamba_folder(source: Any, destination: str | Path, dtype: torch.dtype | None = None) -> Any:
    """Convert ``source`` and save it to ``destination`` with safetensors, plus the source's tokenizer and
    generation config files when it is a folder (or a Hub repo id, whose downloaded folder) that has them. Returns
    the converted model."""
    source = conversion_source(source, destination)  # (a Hub repo id: the folder it downloads to)
    model = convert_hf_mamba(source, dtype)
    save_converted(model, source, destination)  # (whole or not at all)
    return model


def native_config(config: Any) -> Any:
    """transformers' MambaConfig / Mamba2Config computing what the seqzoo ``config`` computes; refuses what
    transformers' mixers ignore (a Mamba-2 without the gated norm, or normalising before the gate)."""
    from transformers import Mamba2Config as HFMamba2Config
    from transformers import MambaConfig as HFMambaConfig

    values = {name: getattr(config, name) for name in COMMON_FIELDS}
    values["hidden_act"] = "silu"
    if config.model_type == "seqzoo_mamba":
        values.update(time_step_rank=config.time_step_rank, time_step_scale=config.time_step_scale,
                      time_step_init_scheme=config.time_step_init_scheme, intermediate_size=config.intermediate_size)
        return HFMambaConfig(**values)
    for name, transformers_value in (("rms_norm", True), ("norm_before_gate", False)):
        if getattr(config, name) != transformers_value:
            raise ValueError(f"cannot export to mamba2: {name}={getattr(config, name)!r}, but transformers' "
                             f"Mamba2ForCausalLM always computes {name}={transformers_value!r}")
    values.update(num_heads=config.num_heads, head_dim=config.head_dim, n_groups=config.n_groups,
                  chunk_size=config.chunk_size, time_step_limit=tuple(config.time_step_limit))
    return HFMamba2Config(**values)


def native_weights(state_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """seqzoo Mamba / Mamba-2 tensors -> transformers names (the inverse of :data:`KEY_RENAMES`)."""
    renames = (("model.embed_tokens.", "backbone.embeddings."), ("model.norm.", "backbone.norm_f."),
               ("model.layers.", "backbone.layers."))
    out = {}
    for key, tensor in state_dict.items():
        for ours, theirs in renames:
            if key.startswith(ours):
                key = theirs + key[len(ours):]
        out[key] = tensor
    return out


def _require_supported(model_type: Any) -> str:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"cannot convert a {model_type!r} model with hf-mamba: the source must be a transformers Mamba or "
            f"Mamba-2 model (model_type {' or '.join(map(repr, SUPPORTED_MODEL_TYPES))})"
        )
    return model_type


def _show(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f" ... ({len(items)} in all)" if len(items) > limit else "")


__all__ = ["config_from_hf", "convert_hf_mamba", "convert_hf_mamba_folder", "convert_state_dict", "native_config",
           "native_weights"]
