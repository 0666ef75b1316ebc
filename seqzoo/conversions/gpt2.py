"""transformers ``GPT2LMHeadModel`` <-> the seqzoo Transformer's ``gpt2`` variant.

Learned positions, pre-norm LayerNorm, a GELU MLP, biases everywhere. GPT-2 stores its projections as ``Conv1D``
weights of shape (in, out), the transpose of ``nn.Linear``'s, and q, k and v in one ``c_attn`` matrix; the mapping
transposes and splits (and, exporting, joins). Checkpoints with or without the ``transformer.`` prefix are read
(the original OpenAI weights have none), and the ``attn.bias`` / ``attn.masked_bias`` buffers old releases saved are
skipped. Refused with the field named: ``scale_attn_weights=False``, ``scale_attn_by_inverse_layer_idx=True``,
cross-attention, activations seqzoo lacks.

    from seqzoo.conversions.gpt2 import convert_gpt2
    model = convert_gpt2("path/to/gpt2-folder")              # or a GPT2LMHeadModel object, or a Hub repo id

From the shell: ``seqzoo convert gpt2 <source> <destination>``; back: ``seqzoo export --to gpt2 <seqzoo> <out>``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from seqzoo.conversions.checkpoints import (
    Reader,
    build_model,
    conversion_dtype,
    conversion_source,
    load_transformers_source,
    save_converted,
    valid_token_ids,
)

logger = logging.getLogger("seqzoo")

MODEL_TYPES = ("gpt2",)
IGNORED = (r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias",)


def config_from_gpt2(hf_config: Any) -> Any:
    """The seqzoo TransformerConfig equivalent to a transformers GPT2Config."""
    from seqzoo.models.transformer import TransformerConfig
    from seqzoo.models.transformer.configuration_transformer import ACTIVATIONS

    for name, supported in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                            ("add_cross_attention", False)):
        value = getattr(hf_config, name, supported)
        if value != supported:
            raise ValueError(f"the source sets {name}={value!r}; seqzoo's Transformer computes {name}={supported!r}")
    act = hf_config.activation_function
    if act not in ACTIVATIONS:
        raise ValueError(f"the source uses activation_function={act!r}; seqzoo's Transformer supports "
                         f"{', '.join(ACTIVATIONS)}")
    if hf_config.embd_pdrop != hf_config.resid_pdrop:
        logger.warning("GPT-2 source: embd_pdrop=%s and resid_pdrop=%s differ; seqzoo has one dropout for both and "
                       "takes resid_pdrop (dropout acts in training only)", hf_config.embd_pdrop, hf_config.resid_pdrop)
    hidden = hf_config.n_embd
    return TransformerConfig(
        variant="gpt2",
        vocab_size=hf_config.vocab_size,
        hidden_size=hidden,
        intermediate_size=hf_config.n_inner or 4 * hidden,
        num_hidden_layers=hf_config.n_layer,
        num_attention_heads=hf_config.n_head,
        max_position_embeddings=hf_config.n_positions,
        hidden_act=act,
        layer_norm_eps=hf_config.layer_norm_epsilon,
        dropout=float(hf_config.resid_pdrop),
        attention_dropout=float(hf_config.attn_pdrop),
        initializer_range=hf_config.initializer_range,
        tie_word_embeddings=bool(hf_config.tie_word_embeddings),
        use_cache=hf_config.use_cache,
        **valid_token_ids(hf_config.to_dict(), hf_config.vocab_size, "the gpt2 config"),
    )


def seqzoo_weights(source: Any, config: Any) -> dict[str, torch.Tensor]:
    """GPT-2 tensors -> seqzoo Transformer names. Raises ValueError naming every missing, unexpected or mis-shaped
    tensor."""
    read = Reader(source, IGNORED)
    prefix = "transformer." if read.has("transformer.wte.weight") else ""
    D, V, F = config.hidden_size, config.vocab_size, config.intermediate_size
    out = {"model.embed_tokens.weight": read(f"{prefix}wte.weight", (V, D)),
           "model.embed_positions.weight": read(f"{prefix}wpe.weight", (config.max_position_embeddings, D))}
    for part in ("weight", "bias"):
        out[f"model.norm.{part}"] = read(f"{prefix}ln_f.{part}", (D,))
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = read("lm_head.weight", (V, D))
    elif read.has("lm_head.weight"):  # a tied head saved twice, or a head of its own (build_model decides)
        out["lm_head.weight"] = read("lm_head.weight", (V, D))
    for i in range(config.num_hidden_layers):
        ours, theirs = f"model.layers.{i}.", f"{prefix}h.{i}."
        for norm, hf_norm in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            for part in ("weight", "bias"):
                out[f"{ours}{norm}.{part}"] = read(f"{theirs}{hf_norm}.{part}", (D,))
        # Conv1D: y = x @ W + b with W (in, out); c_attn's output columns are [q | k | v].
        qkv_weight = read(f"{theirs}attn.c_attn.weight", (D, 3 * D))
        qkv_bias = read(f"{theirs}attn.c_attn.bias", (3 * D,))
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"{ours}self_attn.{name}.weight"] = qkv_weight[:, j * D:(j + 1) * D].t()
            out[f"{ours}self_attn.{name}.bias"] = qkv_bias[j * D:(j + 1) * D]
        for name, hf_name, shape in (("self_attn.o_proj", "attn.c_proj", (D, D)), ("mlp.up_proj", "mlp.c_fc", (D, F)),
                                     ("mlp.down_proj", "mlp.c_proj", (F, D))):
            out[f"{ours}{name}.weight"] = read(f"{theirs}{hf_name}.weight", shape).t()
            out[f"{ours}{name}.bias"] = read(f"{theirs}{hf_name}.bias", shape[1:])
    read.finish(f"the weights of {getattr(source, 'origin', 'the source')} do not fit a GPT-2 model of its config")
    return out


def convert_gpt2(source: Any, dtype: torch.dtype | None = None) -> Any:
    """A seqzoo Transformer with the weights of ``source``: a transformers ``GPT2LMHeadModel``, a folder saved from
    one, or a Hub repo id. ``dtype`` defaults to the source's (its embedding's)."""
    dtype = conversion_dtype(dtype)
    hf_config, source_weights, _, generation = load_transformers_source(source, MODEL_TYPES, "convert gpt2")
    config = config_from_gpt2(hf_config)
    weights = seqzoo_weights(source_weights, config)
    dtype = dtype or weights["model.embed_tokens.weight"].dtype
    return build_model(config, weights, dtype, "the gpt2 source", generation)


def convert_gpt2_folder(source: Any, destination: str | Path, dtype: torch.dtype | None = None) -> Any:
    """Convert ``source`` and save it to ``destination`` with the tokenizer and generation-config files of the
    source folder (of the folder a Hub repo id downloads to)."""
    source = conversion_source(source, destination)  # (a Hub repo id: the folder it downloads to)
    model = convert_gpt2(source, dtype)
    save_converted(model, source, destination)  # (whole or not at all)
    return model


def native_config(config: Any) -> Any:
    """transformers' GPT2Config computing what the seqzoo Transformer ``config`` computes; refuses configs with no
    GPT-2 equivalent, naming the field."""
    from transformers import GPT2Config

    wanted = dict(position_embedding="learned", norm_type="layernorm", norm_position="pre", mlp_type="standard",
                  scale_embeddings=False)
    for name, value in wanted.items():
        if getattr(config, name) != value:
            raise ValueError(f"cannot export to gpt2: {name}={getattr(config, name)!r} has no GPT-2 equivalent "
                             f"(GPT-2 needs {name}={value!r})")
    if config.num_attention_heads * config.head_dim != config.hidden_size:
        raise ValueError(f"cannot export to gpt2: num_attention_heads * head_dim = "
                         f"{config.num_attention_heads * config.head_dim} must equal hidden_size={config.hidden_size}")
    return GPT2Config(
        vocab_size=config.vocab_size, n_embd=config.hidden_size, n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads, n_inner=config.intermediate_size, n_positions=config.max_position_embeddings,
        activation_function=config.hidden_act, layer_norm_epsilon=config.layer_norm_eps,
        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.attention_dropout,
        initializer_range=config.initializer_range, tie_word_embeddings=config.tie_word_embeddings,
        use_cache=config.use_cache, pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )


def native_weights(state_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """seqzoo Transformer tensors -> GPT-2 names and layouts. Grouped key/value heads are repeated for every query
    head they serve (GPT-2 has one k and v per head), and biases seqzoo leaves out are zeros."""
    groups = config.num_attention_heads // config.num_key_value_heads

    def linear(key: str) -> tuple[torch.Tensor, torch.Tensor]:
        weight = state_dict[f"{key}.weight"]
        bias = state_dict.get(f"{key}.bias", torch.zeros(weight.shape[0], dtype=weight.dtype))
        return weight, bias

    def kv(key: str) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = linear(key)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(0, (config.num_key_value_heads, -1)).repeat_interleave(groups, 0).flatten(0, 1)

        return heads(weight), heads(bias)

    out = {"transformer.wte.weight": state_dict["model.embed_tokens.weight"],
           "transformer.wpe.weight": state_dict["model.embed_positions.weight"],
           "transformer.ln_f.weight": state_dict["model.norm.weight"],
           "transformer.ln_f.bias": state_dict["model.norm.bias"]}
    out["lm_head.weight"] = state_dict["lm_head.weight"]  # the embedding itself when tied
    for i in range(config.num_hidden_layers):
        ours, theirs = f"model.layers.{i}.", f"transformer.h.{i}."
        for norm, hf_norm in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[f"{theirs}{hf_norm}.weight"] = state_dict[f"{ours}{norm}.weight"]
            out[f"{theirs}{hf_norm}.bias"] = state_dict[f"{ours}{norm}.bias"]
        parts = [linear(f"{ours}self_attn.q_proj"), kv(f"{ours}self_attn.k_proj"), kv(f"{ours}self_attn.v_proj")]
        out[f"{theirs}attn.c_attn.weight"] = torch.cat([w for w, _ in parts]).t().contiguous()
        out[f"{theirs}attn.c_attn.bias"] = torch.cat([b for _, b in parts])
        for name, hf_name in (("self_attn.o_proj", "attn.c_proj"), ("mlp.up_proj", "mlp.c_fc"),
                              ("mlp.down_proj", "mlp.c_proj")):
            weight, bias = linear(f"{ours}{name}")
            out[f"{theirs}{hf_name}.weight"] = weight.t().contiguous()
            out[f"{theirs}{hf_name}.bias"] = bias
    return out


__all__ = ["config_from_gpt2", "convert_gpt2", "convert_gpt2_folder", "native_config", "native_weights",
           "seqzoo_weights"]
