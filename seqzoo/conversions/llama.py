"""transformers ``LlamaForCausalLM`` (and its relatives ``MistralForCausalLM``, ``Qwen2ForCausalLM``) <-> the seqzoo
Transformer's ``llama`` variant.

The two compute the same function: RoPE (half-split layout), pre-norm RMSNorm, SwiGLU, grouped-query attention. The
weight mapping is a rename (``input_layernorm`` <-> ``attn_norm``, ``post_attention_layernorm`` <-> ``mlp_norm``);
Qwen2's q/k/v biases come with a zero ``o_proj`` bias, because seqzoo's ``attention_bias`` covers all four
projections. What has no seqzoo equivalent is refused with an error naming the field: RoPE scaling
(``rope_parameters.rope_type`` other than ``default``), and a partial rotary factor or a sliding window where the
source's own transformers class computes it. Where that class ignores the field (transformers 5.24's Llama ignores
both, its Mistral and Qwen2 the partial rotary factor), it is left out with a warning, as the class leaves it out.

    from seqzoo.conversions.llama import convert_llama
    model = convert_llama("path/to/llama-folder")            # or a LlamaForCausalLM object, or a Hub repo id
    model.save_pretrained("llama-seqzoo")

From the shell: ``seqzoo convert llama <source> <destination>``; back: ``seqzoo export --to llama <seqzoo> <out>``.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any

import torch

from seqzoo.conversions.checkpoints import (
    Reader,
    SourceWeights,
    build_model,
    conversion_dtype,
    conversion_source,
    load_transformers_source,
    save_converted,
    show,
    valid_token_ids,
)

logger = logging.getLogger("seqzoo")

MODEL_TYPES = ("llama", "mistral", "qwen2")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
# (seqzoo name inside a layer, transformers name): the whole mapping, both ways.
LAYER_NAMES = (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm"),
               *((f"self_attn.{p}", f"self_attn.{p}") for p in PROJECTIONS),
               *((f"mlp.{p}", f"mlp.{p}") for p in MLP_PROJECTIONS))
# Buffers older transformers releases saved with the weights.
IGNORED = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)
# Llama's config flags that give projections biases: (flag, module, its projections). (Mistral and Qwen2 have none.)
BIAS_FLAGS = (("attention_bias", "self_attn", PROJECTIONS), ("mlp_bias", "mlp", MLP_PROJECTIONS))
# The tiny model that asks transformers whether its class reads a field (source_class_reads): one head of the
# source's head_dim (a partial rotary factor is rounded by it), the source's layers (a window may be in some only), and
# more tokens than its window.
PROBE_SIZES = dict(vocab_size=16, num_attention_heads=1, num_key_value_heads=1, intermediate_size=4,
                   pad_token_id=None, bos_token_id=None, eos_token_id=None)
PROBE_WINDOW, PROBE_TOKENS = 2, 6


def rope_theta_of(hf_config: Any) -> float:
    """The RoPE base of a transformers config; refuses a scaled RoPE, which seqzoo does not compute (a partial rotary
    factor: :func:`check_partial_rotary_factor`)."""
    parameters = getattr(hf_config, "rope_parameters", None) or {}
    legacy = getattr(hf_config, "rope_scaling", None) or {}
    rope_type = parameters.get("rope_type", legacy.get("rope_type", legacy.get("type", "default")))
    if rope_type != "default":
        raise ValueError(
            f"the source uses rope_parameters.rope_type={rope_type!r}; seqzoo's Transformer computes plain RoPE "
            f"(rope_type 'default') only, so its logits would differ beyond the original context"
        )
    theta = parameters.get("rope_theta", getattr(hf_config, "rope_theta", None))
    return 10000.0 if theta is None else float(theta)


def source_class_reads(hf_config: Any, setting: dict[str, Any], neutral: dict[str, Any]) -> tuple[bool, str]:
    """(whether, class name): whether transformers' own class for ``hf_config`` computes other logits with the fields
    ``setting`` than with ``neutral`` (the same fields set so that they change nothing), measured on two tiny models
    of that class with the config's layer pattern and the same random weights. Asked of the installed transformers
    rather than assumed per model type: its classes differ in the fields they read (5.24's Llama reads neither
    ``sliding_window`` nor ``partial_rotary_factor``, its Mistral reads ``sliding_window``), and a release may change
    that."""
    from transformers import AutoModelForCausalLM

    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    ids = torch.arange(PROBE_TOKENS)[None] % PROBE_SIZES["vocab_size"]
    logits, name = [], ""
    for changes in (setting, neutral):
        config = copy.deepcopy(hf_config)
        for field, value in {**PROBE_SIZES, "hidden_size": head_dim, "head_dim": head_dim, **changes}.items():
            setattr(config, field, value)
        with torch.random.fork_rng(devices=[]):  # (its initialisation must not move the caller's random stream)
            model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
            logits.append(model.eval()(ids).logits)
        name = type(model).__name__
    return not torch.equal(*logits), name


def partial_rotary_factor_of(hf_config: Any) -> Any:
    """The source's ``partial_rotary_factor`` (where transformers keeps it: in ``rope_parameters``, the legacy
    ``rope_scaling`` or the config itself); 1.0 without one."""
    parameters = getattr(hf_config, "rope_parameters", None) or {}
    legacy = getattr(hf_config, "rope_scaling", None) or {}
    return parameters.get("partial_rotary_factor",
                          legacy.get("partial_rotary_factor", getattr(hf_config, "partial_rotary_factor", 1.0)))


def check_partial_rotary_factor(hf_config: Any) -> None:
    """Refuse a ``partial_rotary_factor`` below 1.0 that the source's transformers class computes (it rotates only
    that share of each head's channels; seqzoo rotates them all); one it ignores is left out, with a warning."""
    factor = partial_rotary_factor_of(hf_config)
    if factor in (None, 1, 1.0):
        return
    neutral = {}  # the factor 1.0 wherever the config holds one
    for field in ("rope_parameters", "rope_scaling"):  # (5.24's rope_scaling is rope_parameters under an old name)
        parameters = getattr(hf_config, field, None)
        if isinstance(parameters, dict) and "partial_rotary_factor" in parameters:
            neutral[field] = {**parameters, "partial_rotary_factor": 1.0}
            break
    if hasattr(hf_config, "partial_rotary_factor"):
        neutral["partial_rotary_factor"] = 1.0
    reads, name = source_class_reads(hf_config, {}, neutral)
    if reads:
        raise ValueError(f"the source uses partial_rotary_factor={factor!r}, and transformers' {name} rotates only "
                         f"that share of each head's channels; seqzoo rotates every channel of a head (1.0)")
    logger.warning("the source's config sets partial_rotary_factor=%r, which transformers' %s ignores (it rotates "
                   "every channel of a head, as the converted model does); left out", factor, name)


def sliding_layers(hf_config: Any) -> list[int]:
    """The layers the config gives a sliding window: with ``sliding_window`` set, those its ``layer_types`` name
    ``sliding_attention`` (a Qwen2 with ``use_sliding_window``, from layer ``max_window_layers`` on: none where that
    is the number of layers or more), every layer of a config without ``layer_types`` (Mistral, Llama)."""
    if getattr(hf_config, "sliding_window", None) is None:
        return []
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types is None:
        return list(range(hf_config.num_hidden_layers))
    return [i for i, kind in enumerate(layer_types) if kind == "sliding_attention"]


def check_sliding_window(hf_config: Any) -> None:
    """Refuse a ``sliding_window`` that the source's transformers class computes in some layer (seqzoo attends over
    the whole context); one it ignores (5.24's Llama) is left out, with a warning."""
    sliding = sliding_layers(hf_config)
    if not sliding:
        return
    window = hf_config.sliding_window
    reads, name = source_class_reads(hf_config, {"sliding_window": PROBE_WINDOW}, {"sliding_window": PROBE_TOKENS})
    if reads:
        where = "" if getattr(hf_config, "layer_types", None) is None else \
            f" in layers {show([str(i) for i in sliding])} (layer_types)"
        raise ValueError(
            f"the source uses sliding_window={window!r}{where}; seqzoo's Transformer attends over the whole context, "
            f"transformers' {name} over the last {window} tokens only. For a checkpoint that will only see contexts "
            f"of at most {window} tokens (where the two agree), set sliding_window to null in its config.json and "
            f"convert again"
        )
    logger.warning("the source's config sets sliding_window=%r, which transformers' %s ignores in its forward pass "
                   "(it attends over the whole context, as the converted model does); left out. (transformers' "
                   "generate() may still attend to only the last %r tokens when it decodes with its cache, so its "
                   "own generations past that many tokens differ from its forward pass)", window, name, window)


def without_disabled_biases(hf_config: Any, stated: Any, source: SourceWeights) -> SourceWeights:
    """``source`` less the bias tensors its Llama config turns off. transformers' Llama has biases only where the
    config sets ``attention_bias`` / ``mlp_bias``, and leaves such tensors unloaded (unexpected keys in its load
    report): the converted model leaves them out too, and a warning names them (turned on from the tensors, its logits
    differed from transformers'). A config.json without the flag (``stated``: its fields; written before transformers
    had it) has it off, as transformers reads it; Mistral has no flag, and no biases in transformers."""
    if hf_config.model_type not in ("llama", "mistral"):  # (Qwen2's q/k/v biases are always on)
        return source
    dropped, flags = [], []
    for flag, module, projections in BIAS_FLAGS:
        if not getattr(hf_config, flag, False):
            pattern = re.compile(rf"model\.layers\.\d+\.{module}\.({'|'.join(projections)})\.bias")
            found = [key for key in source if pattern.fullmatch(key)]
            dropped += found
            flags += [f"{flag}={getattr(hf_config, flag, False)!r}" if flag in stated else f"no {flag} (off)"
                      ] if found else []
    if dropped:
        logger.warning("%s: its config has %s, but its weights hold bias tensors (%s); left out, as transformers' "
                       "%s leaves them out (set the flag true in config.json if the model was trained with them)",
                       source.origin, " and ".join(flags), show(dropped),
                       "MistralForCausalLM" if hf_config.model_type == "mistral" else "LlamaForCausalLM")
    return source.without(dropped)


def config_from_llama(hf_config: Any, source: Any = None) -> Any:
    """The seqzoo TransformerConfig equivalent to a Llama / Mistral / Qwen2 config. ``source`` (the weights, read
    lazily) decides the biases: Llama's ``attention_bias`` covers q, k, v and o, Qwen2 has q/k/v biases only (and no
    flag in its config). A Llama source's biases its config turns off are left out first
    (:func:`without_disabled_biases`)."""
    from seqzoo.models.transformer import TransformerConfig
    from seqzoo.models.transformer.configuration_transformer import ACTIVATIONS

    model_type = hf_config.model_type
    rope_theta = rope_theta_of(hf_config)  # (a scaled RoPE is refused before its partial factor is looked at)
    check_partial_rotary_factor(hf_config)
    check_sliding_window(hf_config)
    act = hf_config.hidden_act
    if act not in ACTIVATIONS:
        raise ValueError(f"the source uses hidden_act={act!r}; seqzoo's Transformer supports {', '.join(ACTIVATIONS)}")
    attention_bias = bool(getattr(hf_config, "attention_bias", model_type == "qwen2"))
    mlp_bias = bool(getattr(hf_config, "mlp_bias", False))
    if source is not None:
        attention_bias = any(f"model.layers.0.self_attn.{p}.bias" in source for p in PROJECTIONS)
        mlp_bias = any(f"model.layers.0.mlp.{p}.bias" in source for p in MLP_PROJECTIONS)
    heads = hf_config.num_attention_heads
    values = dict(
        variant="llama",
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        intermediate_size=hf_config.intermediate_size,
        num_hidden_layers=hf_config.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
        head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads,
        max_position_embeddings=hf_config.max_position_embeddings,
        rope_theta=rope_theta,
        hidden_act=act,
        attention_bias=attention_bias,
        mlp_bias=mlp_bias,
        layer_norm_eps=hf_config.rms_norm_eps,
        attention_dropout=float(getattr(hf_config, "attention_dropout", 0.0)),
        initializer_range=hf_config.initializer_range,
        tie_word_embeddings=bool(hf_config.tie_word_embeddings),
        use_cache=hf_config.use_cache,
        **valid_token_ids(hf_config.to_dict(), hf_config.vocab_size, f"the {model_type} config"),
    )
    return TransformerConfig(**values)


def seqzoo_weights(source: Any, config: Any) -> dict[str, torch.Tensor]:
    """transformers Llama-family tensors -> seqzoo Transformer names. A bias the source lacks where seqzoo has one
    (Qwen2's ``o_proj``) is zero. Raises ValueError naming every missing, unexpected or mis-shaped tensor."""
    read = Reader(source, IGNORED)
    D, V, F = config.hidden_size, config.vocab_size, config.intermediate_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    out = {"model.embed_tokens.weight": read("model.embed_tokens.weight", (V, D)),
           "model.norm.weight": read("model.norm.weight", (D,))}
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = read("lm_head.weight", (V, D))
    elif read.has("lm_head.weight"):  # a tied head saved twice, or a head of its own (build_model decides)
        out["lm_head.weight"] = read("lm_head.weight", (V, D))
    shapes = {"self_attn.q_proj": (q, D), "self_attn.k_proj": (kv, D), "self_attn.v_proj": (kv, D),
              "self_attn.o_proj": (D, q), "mlp.gate_proj": (F, D), "mlp.up_proj": (F, D), "mlp.down_proj": (D, F)}
    # A projection whose bias layer 0 holds has one in every layer: missing from another layer, it is named, not
    # taken as zeros (those are for the biases no layer has, Qwen2's o_proj).
    saved_biases = {name for name in shapes if read.has(f"model.layers.0.{name}.bias")}
    for i in range(config.num_hidden_layers):
        ours, theirs = f"model.layers.{i}.", f"model.layers.{i}."
        for norm, hf_norm in LAYER_NAMES[:2]:
            out[f"{ours}{norm}.weight"] = read(f"{theirs}{hf_norm}.weight", (D,))
        for name, shape in shapes.items():
            out[f"{ours}{name}.weight"] = read(f"{theirs}{name}.weight", shape)
            if config.attention_bias if name.startswith("self_attn") else config.mlp_bias:
                key = f"{theirs}{name}.bias"
                out[f"{ours}{name}.bias"] = read(key, shape[:1]) if name in saved_biases else torch.zeros(shape[0])
    read.finish(f"the weights of {getattr(source, 'origin', 'the source')} do not fit a Llama-family model of its "
                f"config")
    return out


def convert_llama(source: Any, dtype: torch.dtype | None = None) -> Any:
    """A seqzoo Transformer with the weights of ``source``: a transformers ``LlamaForCausalLM`` /
    ``MistralForCausalLM`` / ``Qwen2ForCausalLM`` object, a folder saved from one (sharded safetensors are read
    tensor by tensor), or a Hub repo id. ``dtype`` defaults to the source's (its embedding's)."""
    dtype = conversion_dtype(dtype)
    hf_config, source_weights, stated, generation = load_transformers_source(source, MODEL_TYPES, "convert llama")
    source_weights = without_disabled_biases(hf_config, stated, source_weights)
    config = config_from_llama(hf_config, source_weights)
    weights = seqzoo_weights(source_weights, config)
    dtype = dtype or weights["model.embed_tokens.weight"].dtype
    return build_model(config, weights, dtype, f"the {hf_config.model_type} source", generation)


def convert_llama_folder(source: Any, destination: str | Path, dtype: torch.dtype | None = None) -> Any:
    """Convert ``source`` and save it to ``destination`` with the tokenizer and generation-config files of the
    source folder (of the folder a Hub repo id downloads to)."""
    source = conversion_source(source, destination)  # (a Hub repo id: the folder it downloads to)
    model = convert_llama(source, dtype)
    save_converted(model, source, destination)  # (whole or not at all)
    return model


def native_config(config: Any) -> Any:
    """transformers' LlamaConfig computing what the seqzoo Transformer ``config`` computes; refuses configs with
    no Llama equivalent, naming the field."""
    from transformers import LlamaConfig

    wanted = dict(position_embedding="rope", norm_type="rmsnorm", norm_position="pre", mlp_type="gated",
                  scale_embeddings=False)
    for name, value in wanted.items():
        if getattr(config, name) != value:
            raise ValueError(f"cannot export to llama: {name}={getattr(config, name)!r} has no Llama equivalent "
                             f"(Llama needs {name}={value!r})")
    if config.dropout:  # (training only: the logits are the same; a Llama fine-tuned from the export has none)
        logger.warning("export to llama: dropout=%r (on embeddings and residual branches) is left out, since Llama has "
                       "none there (only attention_dropout, which is carried over)", config.dropout)
    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim, hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.layer_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        attention_bias=config.attention_bias, mlp_bias=config.mlp_bias, attention_dropout=config.attention_dropout,
        initializer_range=config.initializer_range, tie_word_embeddings=config.tie_word_embeddings,
        use_cache=config.use_cache, pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )


def native_weights(state_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """seqzoo Transformer tensors -> transformers Llama names (the inverse of :func:`seqzoo_weights`)."""
    renames = {f".{ours}.": f".{theirs}." for ours, theirs in LAYER_NAMES}
    out = {}
    for key, tensor in state_dict.items():
        for ours, theirs in renames.items():
            key = key.replace(ours, theirs)
        out[key] = tensor
    return out


__all__ = ["check_partial_rotary_factor", "check_sliding_window", "config_from_llama", "convert_llama",
           "convert_llama_folder", "native_config", "native_weights", "partial_rotary_factor_of", "rope_theta_of",
           "seqzoo_weights", "sliding_layers", "source_class_reads", "without_disabled_biases"]
