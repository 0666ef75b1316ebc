"""Convert an RWKV-LM RWKV-7 "x070" checkpoint (a ``.pth`` state dict) into a seqzoo :class:`RWKV7ForCausalLM`.

seqzoo's RWKV-7 mixers keep the reference's parameter names, so conversion is a key rename (``blocks.{i}.att.`` ->
``model.layers.{i}.attn.``, ``emb`` -> ``model.embed_tokens`` ...) plus flattening the reference's ``(1, 1, C)``
vectors to ``(C,)``. The sizes are read from the tensor shapes. The converted model computes the reference's function
(tests/models/test_rwkv7_reference.py).

    from seqzoo.conversions.rwkv7 import convert_rwkv7
    model = convert_rwkv7("RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth", bos_token_id=0, eos_token_id=0)
    model.save_pretrained("rwkv7-0.1b-seqzoo")

From the shell: ``seqzoo convert rwkv7 <file.pth> <destination>``. The RWKV World tokenizer is not part of the
checkpoint; ``--world-tokenizer`` builds it from the ``rwkv`` package's vocabulary and saves it beside the model
(refused for a checkpoint whose embedding is not the World vocabulary's 65536 rows).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from seqzoo.conversions.checkpoints import check_destination, conversion_dtype, staged_destination

# (seqzoo pattern, reference replacement): the reference key of every seqzoo parameter.
KEY_MAP = (
    (r"^model\.embed_tokens\.", "emb."),
    (r"^model\.embed_norm\.", "blocks.0.ln0."),
    (r"^model\.norm\.", "ln_out."),
    (r"^lm_head\.", "head."),
    (r"^model\.layers\.(\d+)\.attn_norm\.", r"blocks.\1.ln1."),
    (r"^model\.layers\.(\d+)\.ffn_norm\.", r"blocks.\1.ln2."),
    (r"^model\.layers\.(\d+)\.attn\.", r"blocks.\1.att."),
    (r"^model\.layers\.(\d+)\.ffn\.", r"blocks.\1.ffn."),
)
# Layer 0 computes v_first and has no value residual; RWKV-LM still saves its (unused) LoRA.
IGNORED_KEYS = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")
# Keys that identify checkpoints of other RWKV generations or x070 variants, checked in this order.
OTHER_VERSIONS = (
    ("att.time_maa_x", "RWKV-6 (x060)"),
    ("att.time_faaaa", "RWKV-5 (x052)"),
    ("att.gate.weight", "RWKV-5"),
    ("att.time_first", "RWKV-4"),
    ("ffn.s_emb", "RWKV-7 with DeepEmbed (rwkv_v7a / v8 demos)"),
    ("qkv.k_emb", "RWKV-7 with DeepEmbedAttention (rwkv_v7b demo)"),
)
# Keys the sizes are read from.
SHAPE_KEYS = ("emb.weight", "blocks.0.att.r_k", "blocks.0.att.w1", "blocks.0.att.a1", "blocks.0.att.g1",
              "blocks.0.ffn.key.weight")
# The two dimensions of each matrix the sizes are read from, as RWKV-LM saves it.
MATRIX_DIMS = {"emb.weight": "(vocab, n_embd)", "blocks.0.att.r_k": "(heads, head_size)",
               "blocks.0.att.w1": "(n_embd, decay rank)", "blocks.0.att.a1": "(n_embd, a rank)",
               "blocks.0.att.g1": "(n_embd, gate rank)", "blocks.0.ffn.key.weight": "(ffn width, n_embd)",
               "blocks.0.att.v1": "(n_embd, value rank)", "blocks.1.att.v1": "(n_embd, value rank)"}
# Config fields a caller may set; everything else follows from the tensors.
OVERRIDABLE = ("pad_token_id", "bos_token_id", "eos_token_id", "use_cache", "layer_norm_eps", "group_norm_eps")


def load_rwkv7_state_dict(source: str | Path | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of ``source``: a ``.pth`` file saved by RWKV-LM, or a state dict already in memory."""
    if isinstance(source, (str, Path)):
        from seqzoo.conversions.checkpoints import load_torch_file

        state_dict = load_torch_file(source)
    else:
        state_dict = source
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(
            f"an RWKV-7 checkpoint must be a dict of tensor names to tensors (RWKV-LM's .pth); got "
            f"{type(state_dict).__name__}"
        )
    return state_dict


def check_x070(state_dict: dict[str, torch.Tensor]) -> None:
    """Raise ValueError unless ``state_dict`` looks like an RWKV-7 x070 checkpoint, naming what it is instead."""
    odd = [key for key in state_dict if not isinstance(key, str)]
    if odd:
        raise ValueError(f"the checkpoint has keys that are not tensor names (strings): {', '.join(map(repr, odd[:5]))}"
                         f"; an RWKV-7 x070 checkpoint maps names such as 'emb.weight' to tensors")
    for marker, version in OTHER_VERSIONS:
        found = next((key for key in state_dict if marker in key), None)
        if found is not None:
            raise ValueError(
                f"the checkpoint is {version}, not RWKV-7 x070 (it has {found!r}); seqzoo's rwkv7 converts only "
                f"x070 checkpoints (keys such as blocks.0.att.x_r, blocks.0.att.w0, blocks.0.att.k_k)"
            )
    missing = [key for key in SHAPE_KEYS if key not in state_dict]
    if missing:
        raise ValueError(
            f"the checkpoint is not an RWKV-7 x070 checkpoint: missing {', '.join(map(repr, missing))}"
        )
    for key, dims in MATRIX_DIMS.items():
        if key in state_dict and state_dict[key].dim() != 2:
            raise ValueError(f"the checkpoint's {key} has shape {tuple(state_dict[key].shape)}; expected a matrix "
                             f"{dims}, as RWKV-LM saves x070 checkpoints")


def layer_count(state_dict: dict[str, torch.Tensor]) -> int:
    """How many blocks an x070 state dict holds: one more than its highest ``blocks.{i}.`` index."""
    return 1 + max(int(m.group(1)) for key in state_dict if (m := re.match(r"blocks\.(\d+)\.", key)))


def config_from_state_dict(state_dict: dict[str, torch.Tensor], **overrides: Any) -> Any:
    """The :class:`RWKV7Config` whose sizes match the tensors of an x070 checkpoint."""
    from seqzoo.models.rwkv7 import RWKV7Config

    check_x070(state_dict)
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(
            f"cannot set {', '.join(unknown)} when converting: the checkpoint's tensors fix them; settable fields "
            f"are {', '.join(OVERRIDABLE)}"
        )
    vocab_size, hidden_size = state_dict["emb.weight"].shape
    num_heads, head_size = state_dict["blocks.0.att.r_k"].shape
    if num_heads * head_size != hidden_size:
        raise ValueError(
            f"blocks.0.att.r_k has shape {tuple(state_dict['blocks.0.att.r_k'].shape)} (heads, head_size), but "
            f"heads * head_size must equal the embedding width {hidden_size} (an attention width other than "
            f"n_embd is not supported)"
        )
    value_lora = state_dict.get("blocks.1.att.v1", state_dict.get("blocks.0.att.v1"))
    values: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layer_count(state_dict),
        head_size=head_size,
        intermediate_size=state_dict["blocks.0.ffn.key.weight"].shape[0],
        decay_low_rank_dim=state_dict["blocks.0.att.w1"].shape[1],
        a_low_rank_dim=state_dict["blocks.0.att.a1"].shape[1],
        gate_low_rank_dim=state_dict["blocks.0.att.g1"].shape[1],
        tie_word_embeddings=False,
    )
    if value_lora is not None:
        values["v_low_rank_dim"] = value_lora.shape[1]
    values.update(overrides)
    return RWKV7Config(**values)


def reference_key(seqzoo_key: str) -> str:
    for pattern, replacement in KEY_MAP:
        if re.match(pattern, seqzoo_key):
            return re.sub(pattern, replacement, seqzoo_key)
    raise KeyError(f"no RWKV-LM name for seqzoo parameter {seqzoo_key!r}")


def convert_state_dict(state_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """seqzoo-named tensors for a model of ``config``. Raises ValueError naming every missing, unexpected or
    mis-shaped tensor."""
    from seqzoo.models.rwkv7 import RWKV7ForCausalLM

    with torch.device("meta"):
        expected = RWKV7ForCausalLM(config).state_dict()
    converted, problems, used = {}, [], set(IGNORED_KEYS)
    missing, shapes = [], []
    for key, target in expected.items():
        source_key = reference_key(key)
        used.add(source_key)
        if source_key not in state_dict:
            missing.append(source_key)
            continue
        tensor = state_dict[source_key]
        # The reference stores per-channel vectors as (1, 1, C); seqzoo as (C,).
        if target.dim() == 1 and tensor.dim() == 3 and tensor.shape[:2] == (1, 1):
            tensor = tensor.reshape(-1)
        if tensor.shape != target.shape:
            shapes.append(f"{source_key} (source {tuple(state_dict[source_key].shape)}, expected "
                          f"{tuple(target.shape)})")
            continue
        converted[key] = tensor.contiguous()
    unexpected = sorted(set(state_dict) - used)
    if missing:
        problems.append(f"missing tensors {_show(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_show(unexpected)}")
    if shapes:
        problems.append(f"mis-shaped tensors {_show(shapes)}")
    if problems:
        raise ValueError(f"the checkpoint does not fit an RWKV-7 x070 model of the sizes read from it: "
                         f"{'; '.join(problems)}")
    return converted


def convert_rwkv7(
    source: str | Path | dict[str, torch.Tensor], dtype: torch.dtype | None = None, **config_overrides: Any
) -> Any:
    """A seqzoo RWKV-7 causal LM with the weights of ``source`` (a ``.pth`` path or a state dict). ``dtype``
    defaults to the checkpoint's (the embedding's); ``config_overrides`` may set token ids and norm eps values."""
    from seqzoo.conversions.checkpoints import require_finite, require_floating_point, require_values
    from seqzoo.models.rwkv7 import RWKV7ForCausalLM

    dtype = conversion_dtype(dtype)
    state_dict = load_rwkv7_state_dict(source)
    config = config_from_state_dict(state_dict, **config_overrides)
    require_values(state_dict, "the checkpoint")
    require_floating_point(state_dict, "the checkpoint")
    weights = convert_state_dict(state_dict, config)
    dtype = dtype or state_dict["emb.weight"].dtype
    # Built on the meta device, so no time is spent on an init the checkpoint replaces; assign=True adopts copies of
    # the checkpoint's tensors as the parameters (copies: the caller may hold the state dict).
    with torch.device("meta"):
        model = RWKV7ForCausalLM(config)
    weights = {k: v.to(dtype, copy=True) for k, v in weights.items()}
    require_finite(weights, "the checkpoint", dtype)
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()


def convert_rwkv7_file(
    source: str | Path, destination: str | Path, dtype: torch.dtype | None = None, **config_overrides: Any
) -> Any:
    """Convert ``source`` and save it to ``destination`` (safetensors + config.json), whole or not at all
    (:func:`seqzoo.conversions.checkpoints.staged_destination`). Returns the model."""
    check_destination(source, destination)
    model = convert_rwkv7(source, dtype, **config_overrides)
    with staged_destination(destination) as staging:
        model.save_pretrained(staging)
    return model


def _show(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f" ... ({len(items)} in all)" if len(items) > limit else "")


__all__ = ["check_x070", "config_from_state_dict", "convert_rwkv7", "convert_rwkv7_file", "convert_state_dict",
           "load_rwkv7_state_dict", "reference_key"]
