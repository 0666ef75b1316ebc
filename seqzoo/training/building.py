"""The parts of a training run built from its recipe before the loop starts: the model (a preset's, or one saved in
``model.path`` with the head the recipe trains), its AdamW optimizer and the learning-rate schedule, and what
``train()`` refuses of a recipe before it reads any data (``seqzoo train --print-recipe`` runs those checks alone).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from seqzoo.training.data import build_data
from seqzoo.training.recipe import Recipe
from seqzoo.training.tbptt import check_tbptt_config, check_tbptt_supported
from seqzoo.utils import quiet_transformers

logger = logging.getLogger("seqzoo.training")


def check_recipe(recipe: Recipe) -> None:
    """What ``train()`` refuses of a recipe before it reads data, checked without reading any (``seqzoo train
    --print-recipe``): the model config's values (the preset with ``model.config``), ``train.tbptt_chunk`` for a
    model with attention layers, and a ``train.batch_size`` that ``gradient_accumulation_steps`` does not divide
    (the number of processes, also a divisor, is known only at launch). The data's own checks (its vocabulary, a
    row longer than the model takes) wait for the data."""
    import seqzoo

    overrides = {}
    if recipe.data.source == "task" and recipe.task not in ("seq2seq", "sequence-classification",
                                                             "token-classification"):
        # A synthetic task's vocabulary and special ids, which build_model puts under model.config (no data is
        # read: the task is built from the recipe); a dataset's (its labels) wait for the data.
        overrides.update(build_data(recipe.data, recipe.train.seed).model_overrides())
    if recipe.model.path is None:
        check_byte_token_ids(recipe.model.config, overrides)
        overrides.update(recipe.model.config)
        config = seqzoo.get_config(recipe.model.preset, **overrides)
        check_weight_dtype(config)
        check_tbptt_config(config, recipe.train.tbptt_chunk, f"preset {recipe.model.preset!r}")
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(recipe.model.path, trust_remote_code=False)
        check_saved_config(config, recipe.model.path, overrides, None)
        if "pad_token_id" not in overrides:
            _check_saved_tokenizer(recipe.model.path, config.vocab_size)
        check_tbptt_config(config, recipe.train.tbptt_chunk, f"the model saved in {recipe.model.path!r}")
    check_batch_split(recipe.train, None)


def check_batch_split(t: Any, world: int | None) -> int:
    """Refuse a global ``train.batch_size`` that ``world`` processes (None: not known yet, before a launch) times
    ``gradient_accumulation_steps`` do not divide; return the micro-batch of one process."""
    per_micro = (world or 1) * t.gradient_accumulation_steps
    if t.batch_size % per_micro:
        processes = "num_processes" if world is None else f"num_processes ({world})"
        raise ValueError(f"train.batch_size={t.batch_size} (global) must be divisible by {processes} x "
                         f"gradient_accumulation_steps ({t.gradient_accumulation_steps}) = {per_micro}")
    return t.batch_size // per_micro


def check_byte_token_ids(given: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Refuse special token ids in ``model.config`` (``given``) other than the byte tokenizer's, where the data are
    UTF-8 bytes (a generated memory task names its own ids in ``overrides``): batches are padded with its pad token
    and targets end with its EOS, and the tokenizer saved beside the model is it. Another id was taken and read by
    the model alone: a seq2seq model masked its sources at it and its generate() stopped at it."""
    from seqzoo.tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID, ids_other_than_bytes

    differing = [] if "pad_token_id" in overrides else ids_other_than_bytes(given)
    if differing:  # (the rule seqzoo new applies: unset, or the tokenizer's id, alone or as a one-id list)
        raise ValueError(f"recipe field model.config.{differing[0]} is invalid: the data are UTF-8 bytes in seqzoo's "
                         f"byte tokenizer, saved beside the model, whose ids are pad {PAD_TOKEN_ID}, bos and eos "
                         f"{EOS_TOKEN_ID}; leave it unset")


def check_weight_dtype(config: Any) -> None:
    """Refuse ``model.config.dtype`` of half precision: the model is built in it, and AdamW then keeps the weights and
    its moments in it too. In float16 the first update overflowed (the run stopped blaming optim.lr); in bfloat16 the
    run trained and saved a bfloat16 model, its small updates rounded away, while its record said mixed_precision no.
    A saved model (model.path) is loaded in float32 for the same reason."""
    dtype = getattr(torch, config.dtype) if isinstance(config.dtype, str) else config.dtype
    if dtype in (torch.float16, torch.bfloat16):
        raise ValueError(f"recipe field model.config.dtype={str(dtype).removeprefix('torch.')!r} is invalid: expected "
                         "float32 (the default) or float64, the dtype of the weights AdamW updates (in half precision "
                         "its updates overflow or round away); train.mixed_precision=bf16 runs the forward and "
                         "backward in bfloat16 over float32 weights")


def check_saved_config(config: Any, path: str, overrides: dict[str, Any], data_name: str | None) -> None:
    """Refuse training a model saved in ``path`` on data it cannot read: the config values the data need
    (``overrides``: a generated task's vocabulary and special ids, a labelled set's labels) must be the saved ones
    (a larger vocabulary aside), and data of UTF-8 bytes (every other source) need the byte tokenizer's ids. A saved
    model keeps its config: these values shape its weights or give its tokens their meaning."""
    from seqzoo.tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID, VOCAB_SIZE

    data = f"the data ({data_name})" if data_name else "the recipe's data"
    for key, wanted in overrides.items():
        have = getattr(config, key, None)
        if key == "vocab_size" and have is not None and have >= wanted:
            continue
        if have != wanted:
            raise ValueError(f"the model saved in {path!r} has {key}={have!r} and {data} need {wanted!r}: a saved "
                             "model trains on data of its own vocabulary and labels (train a preset on these data, "
                             "or give data like those it was trained on)")
    if "pad_token_id" not in overrides:  # (a generated task names its own ids; every other source is UTF-8 bytes)
        have = {key: getattr(config, key, None) for key in ("vocab_size", "pad_token_id", "eos_token_id")}
        if (have["vocab_size"] or 0) < VOCAB_SIZE or have["pad_token_id"] != PAD_TOKEN_ID or \
                have["eos_token_id"] != EOS_TOKEN_ID:
            shown = ", ".join(f"{key}={value!r}" for key, value in have.items())
            raise ValueError(
                f"the model saved in {path!r} reads the ids of another tokenizer ({shown}), and {data} are UTF-8 "
                f"bytes in seqzoo's byte tokenizer (vocab_size >= {VOCAB_SIZE}, pad_token_id={PAD_TOKEN_ID}, "
                f"eos_token_id={EOS_TOKEN_ID}): fine-tune it with its own tokenizer, through transformers' Trainer "
                "or a loop of your own")


def build_model(recipe: Recipe, data: Any) -> Any:
    import seqzoo

    overrides = dict(data.model_overrides())
    if recipe.model.path is not None:
        model = _load_saved_model(recipe, data, overrides)
    else:
        check_byte_token_ids(recipe.model.config, overrides)
        overrides.update(recipe.model.config)  # an explicit value wins; the vocabulary check below still applies
        model = seqzoo.create_model(recipe.model.preset, recipe.task, **overrides)
        check_weight_dtype(model.config)
    if model.config.vocab_size < data.vocab_size:
        raise ValueError(
            f"model vocab_size={model.config.vocab_size} is smaller than the data's vocabulary ({data.vocab_size} "
            f"token ids from {data.name}); raise model.config.vocab_size or use another preset"
        )
    check_tbptt_supported(model, recipe.train.tbptt_chunk)
    limit = getattr(model.config, "max_input_length", None)
    if limit is not None and hasattr(data, "check_fits"):  # (a file's rows, before the run rather than mid-run)
        data.check_fits(limit)
    return model


def _load_saved_model(recipe: Recipe, data: Any, overrides: dict[str, Any]) -> Any:
    """The model saved in ``recipe.model.path``, with its head for ``recipe.task`` (checked when the recipe was
    read), refused where it cannot read the data. (A missing, mis-shaped or unexpected weight is refused by the
    load itself: seqzoo's models load strictly, and the recipe took only a seqzoo model.)"""
    import transformers

    from seqzoo.registry import TASKS

    path = recipe.model.path
    auto = getattr(transformers, TASKS[recipe.task][0])
    try:
        with quiet_transformers():
            # In float32, as a preset's model is built, whatever the dtype it was saved in: AdamW's updates of
            # float16 weights overflow at once (train.mixed_precision runs the forward in half precision).
            model = auto.from_pretrained(path, trust_remote_code=False, dtype=torch.float32)
    except (OSError, ValueError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot load the model saved in {path!r} (model.path): {first_line}") from err
    check_saved_config(model.config, path, overrides, getattr(data, "name", None))
    if "pad_token_id" not in overrides:  # (UTF-8 bytes: the folder's tokenizer goes with the trained model)
        _check_saved_tokenizer(path, model.config.vocab_size)
    return model


def _check_saved_tokenizer(path: str, vocab_size: int) -> None:
    """Refuse a tokenizer in ``path`` that is not the byte tokenizer (with tokens, a chat template or settings added),
    before any step: the trained model is saved with it (see ``_save_final``). Tokens added to it are named: the
    data are read as UTF-8 bytes, so a text holding one is trained as its bytes."""
    from seqzoo.tokenizer import VOCAB_SIZE, saved_byte_tokenizer

    tokenizer = saved_byte_tokenizer(path, vocab_size)
    added = [] if tokenizer is None else \
        [token for token, token_id in tokenizer.get_added_vocab().items() if token_id >= VOCAB_SIZE]
    if added:
        logger.warning("the tokenizer saved in %r has tokens added to the byte tokenizer (%s), which the trained model "
                       "is saved with; the data are read as UTF-8 bytes, so their text in the data is trained as its "
                       "bytes, not as these tokens", path, ", ".join(map(repr, added[:5])) +
                       (f" and {len(added) - 5} more" if len(added) > 5 else ""))


def make_optimizer(model: Any, recipe: Recipe) -> torch.optim.Optimizer:
    # Weight decay on matrices only (embeddings included, as in GPT-2); never on biases and norm gains.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    o = recipe.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)


def lr_factor(step: int, recipe: Recipe) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based): linear warmup, then decay."""
    o, total, warmup = recipe.optim, recipe.train.max_steps, recipe.warmup
    if step < warmup:
        return (step + 1) / warmup
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if o.schedule == "linear":
        return 1.0 - (1.0 - o.min_lr_ratio) * progress
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
