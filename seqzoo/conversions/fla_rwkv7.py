"""flash-linear-attention's RWKV-7 checkpoints (``RWKV7ForCausalLM``, model_type ``rwkv7``, as its Hub organisation
publishes them) -> seqzoo RWKV-7.

fla computes the x070 function with its own names: ``attn.r_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj`` for the
reference's ``receptance`` / ``key`` / ``value`` / ``output``, and each low-rank map as a ``LoRA`` module
(``w_lora.lora.0`` = ``w1``ᵀ, ``w_lora.lora.2`` = ``w2``ᵀ with bias ``w0``; the gate LoRA has no bias). The
converter renames those onto RWKV-LM's ``.pth`` layout and goes through the ``.pth`` converter, so both paths
share one mapping into seqzoo. fla's GroupNorm eps is ``head_dim * norm_eps`` (x070's 64e-5 for the defaults).
Checkpoints of fla's first RWKV-7 layout (one ``attn.x_x`` of shape (6, C)) are read too. Refused, naming the
field: hybrid attention layers (``attn``), ``value_dim`` other than ``hidden_size``, ``norm_first: false``,
activations other than ``sqrelu``, a ``num_hidden_layers`` / ``vocab_size`` / ``hidden_size`` the tensors do not have.

    from seqzoo.conversions.fla_rwkv7 import convert_fla_rwkv7
    model = convert_fla_rwkv7("path/to/rwkv7-1.5B-world")     # a folder; or (state_dict, config=dict)

From the shell: ``seqzoo convert fla-rwkv7 <folder> <destination>``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from seqzoo.conversions.checkpoints import (
    SourceWeights,
    check_destination,
    config_dict,
    conversion_dtype,
    generation_inside_vocabulary,
    read_folder_weights,
    read_generation_config,
    read_json,
    save_converted,
    show,
    valid_token_ids,
)
from seqzoo.conversions.rwkv7 import convert_rwkv7, layer_count

LAYER = r"model\.layers\.(\d+)\."
# (fla pattern, RWKV-LM replacement, transpose?) -- every fla tensor, in RWKV-LM's .pth names.
RENAMES = (
    (r"model\.embeddings\.weight", "emb.weight", False),
    (r"model\.norm\.(weight|bias)", r"ln_out.\1", False),
    (r"lm_head\.weight", "head.weight", False),
    (r"model\.layers\.0\.pre_norm\.(weight|bias)", r"blocks.0.ln0.\1", False),
    (LAYER + r"attn_norm\.(weight|bias)", r"blocks.\1.ln1.\2", False),
    (LAYER + r"ffn_norm\.(weight|bias)", r"blocks.\1.ln2.\2", False),
    (LAYER + r"attn\.(x_[rwkvag]|k_k|k_a|r_k)", r"blocks.\1.att.\2", False),
    (LAYER + r"attn\.r_proj\.weight", r"blocks.\1.att.receptance.weight", False),
    (LAYER + r"attn\.k_proj\.weight", r"blocks.\1.att.key.weight", False),
    (LAYER + r"attn\.v_proj\.weight", r"blocks.\1.att.value.weight", False),
    (LAYER + r"attn\.o_proj\.weight", r"blocks.\1.att.output.weight", False),
    (LAYER + r"attn\.g_norm\.(weight|bias)", r"blocks.\1.att.ln_x.\2", False),
    # nn.Linear stores (out, in); the reference multiplies x @ w1 with w1 (C, D), so both LoRA matrices transpose.
    (LAYER + r"attn\.([wavg])_lora\.lora\.0\.weight", r"blocks.\1.att.\g<2>1", True),
    (LAYER + r"attn\.([wavg])_lora\.lora\.2\.weight", r"blocks.\1.att.\g<2>2", True),
    (LAYER + r"attn\.([wav])_lora\.lora\.2\.bias", r"blocks.\1.att.\g<2>0", False),
    (LAYER + r"ffn\.(x_k|key\.weight|value\.weight)", r"blocks.\1.ffn.\2", False),
)
X_X_ORDER = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")  # rows of the first layout's attn.x_x


def check_fla_config(fla_config: dict[str, Any]) -> None:
    """Raise ValueError naming the first field of an fla RWKV-7 config that seqzoo cannot compute."""
    if fla_config.get("model_type", "rwkv7") != "rwkv7":
        raise ValueError(f"not an fla RWKV-7 config: model_type={fla_config.get('model_type')!r} (expected 'rwkv7')")
    hidden = fla_config.get("hidden_size")
    value_dim = fla_config.get("value_dim")
    values = value_dim if isinstance(value_dim, list) else [value_dim]
    checks = (
        ("attn", fla_config.get("attn") is None, "hybrid attention layers"),
        ("norm_first", fla_config.get("norm_first", True) is True, "no LayerNorm on the embedding (ln0)"),
        ("hidden_act", fla_config.get("hidden_act", "sqrelu") == "sqrelu", "a channel mix other than relu(x)^2"),
        ("value_dim", all(v is None or v == hidden for v in values), "a value width other than hidden_size"),
    )
    for name, ok, what in checks:
        if not ok:
            raise ValueError(f"fla RWKV-7 config sets {name}={fla_config.get(name)!r}: {what}, which seqzoo's "
                             f"RWKV-7 does not have")


def pth_state_dict(source: Any, fla_config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """fla RWKV-7 tensors under RWKV-LM ``.pth`` names (LoRA matrices transposed). Raises ValueError naming fla
    tensors that match no rule."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key in source:
        if (m := re.fullmatch(LAYER + r"attn\.x_x", key)) is not None:
            x_x = source[key]
            for row, name in enumerate(X_X_ORDER):
                out[f"blocks.{m.group(1)}.att.{name}"] = x_x[row].reshape(1, 1, -1)
            continue
        for pattern, replacement, transpose in RENAMES:
            if re.fullmatch(pattern, key):
                tensor = source[key]
                out[re.sub(pattern, replacement, key)] = tensor.t() if transpose else tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"the checkpoint has tensors that are not part of fla's RWKV7ForCausalLM: "
                         f"{show(sorted(unknown))}")
    if "head.weight" not in out and fla_config.get("tie_word_embeddings") and "emb.weight" in out:
        out["head.weight"] = out["emb.weight"]
    if fla_config.get("norm_bias", True) is False:  # LayerNorms without bias: zero biases compute the same
        for key in [k for k in out if re.search(r"(ln\d|ln_out|ln_x)\.weight$", k)]:
            out.setdefault(key[: -len("weight")] + "bias", torch.zeros_like(out[key]))
    return out


def convert_fla_rwkv7(source: Any, config: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> Any:
    """A seqzoo RWKV-7 with the weights of an fla ``RWKV7ForCausalLM`` checkpoint: a folder (``config.json`` +
    safetensors or ``pytorch_model*.bin``), or a state dict with its ``config`` dict. ``dtype`` defaults to the
    source's."""
    dtype = conversion_dtype(dtype)
    if isinstance(source, (str, Path)):
        if not (Path(source) / "config.json").is_file():
            raise ValueError(f"{str(source)!r} is not an fla checkpoint folder (no config.json)")
        config = config if config is not None else read_json(Path(source) / "config.json", "fla config")
        weights: Any = read_folder_weights(source)
        generation = read_generation_config(Path(source))
    else:
        generation = None
        if config is None:
            raise ValueError("an fla RWKV-7 state dict needs its config (the dict in config.json): pass config=...")
        weights = SourceWeights.from_dict(source, "the fla RWKV-7 state dict")
    config = config_dict(config, "the fla RWKV-7 config")
    check_fla_config(config)
    state_dict = pth_state_dict(weights, config)
    if "blocks.0.att.r_k" not in state_dict or "emb.weight" not in state_dict:
        raise ValueError("not an fla RWKV-7 checkpoint: missing model.embeddings.weight or "
                         "model.layers.0.attn.r_k")
    embedding = state_dict["emb.weight"]
    vocab = embedding.shape[0]
    # fla builds its model from these fields, so a mismatch means the folder lacks tensors (a shard, the last layers)
    # or the config is another checkpoint's; the sizes read from the tensors alone would make a smaller model, silently.
    found = {"num_hidden_layers": layer_count(state_dict)}
    if embedding.dim() == 2:  # (any other shape is named by the x070 checks)
        found.update(vocab_size=vocab, hidden_size=embedding.shape[1])
    wrong = [f"{name}={config[name]!r} (the tensors hold {value})" for name, value in found.items()
             if config.get(name) is not None and config[name] != value]
    if wrong:
        raise ValueError(f"the fla config does not fit its tensors: {', '.join(wrong)}; is a shard or a layer missing "
                         f"from the checkpoint, or is the config another checkpoint's?")
    eps = config.get("norm_eps", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"fla RWKV-7 config sets norm_eps={eps!r}; expected a positive number (fla's default is 1e-5)")
    head_size = state_dict["blocks.0.att.r_k"].shape[1]
    try:
        model = convert_rwkv7(state_dict, dtype, layer_norm_eps=eps, group_norm_eps=head_size * eps,
                              **valid_token_ids(config, vocab, "the fla config"))
    except ValueError as err:
        raise ValueError(f"{err} (names in RWKV-LM's layout: fla's model.layers.N.attn.* is blocks.N.att.*, "
                         f"attn_norm ln1, ffn_norm ln2, pre_norm ln0)") from err
    if generation is not None:  # (a folder's generation_config.json: how the source generates)
        model.generation_config = generation_inside_vocabulary(generation, vocab, "the fla checkpoint")
    return model


def convert_fla_rwkv7_folder(source: str | Path, destination: str | Path, dtype: torch.dtype | None = None) -> Any:
    """Convert an fla folder and save it to ``destination`` with the folder's tokenizer files (fla's World-tokenizer
    checkpoints ship their own tokenizer code; ``seqzoo convert fla-rwkv7 --world-tokenizer`` builds seqzoo's)."""
    check_destination(source, destination)
    model = convert_fla_rwkv7(source, dtype=dtype)
    save_converted(model, source, destination)  # (whole or not at all)
    return model


__all__ = ["check_fla_config", "convert_fla_rwkv7", "convert_fla_rwkv7_folder", "pth_state_dict"]
