"""Truncated backpropagation through time (Williams & Peng 1990; the recipe of Zaremba et al. 2014).

A long sequence is cut into consecutive chunks. Each chunk runs forward starting from the recurrent state the
previous chunk ended with, then backward; between chunks the state is detached, so gradients flow at most one
chunk back while information still flows forward through the whole sequence. Gradients of all chunks accumulate
into one optimizer step. Activation memory is that of one chunk.

Only models whose every layer carries a fixed-size state (``config.capabilities.supports_tbptt``) can carry it
across chunks. An attention layer's "state" is its KV cache, which grows with the context and cannot be truncated
this way, so asking for TBPTT with a Transformer or a hybrid with attention layers is an error rather than a silent
fall-back to independent windows (which would train a different model than the recipe says).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager

import torch
import torch.nn.functional as F

from seqzoo.cache import SeqzooCache
from seqzoo.models.compat import output_cache
from seqzoo.training.classification import classifier_logits, is_classifier
from seqzoo.training.data import IGNORE, document_position_ids
from seqzoo.training.seq2seq import is_seq2seq, seq2seq_logits
from seqzoo.utils import unwrap


def check_tbptt_supported(model: Any, chunk: int) -> None:
    check_tbptt_config(unwrap(model).config, chunk, type(unwrap(model)).__name__)


def check_tbptt_config(config: Any, chunk: int, name: str) -> None:
    """Refuse ``train.tbptt_chunk`` for a model (called ``name``) built from ``config`` whose layers do not all hand
    a fixed-size state to the next chunk."""
    if chunk > 0 and not config.capabilities.supports_tbptt:
        growing = sorted({t for t, kind in zip(config.layer_mixer_types(), config.cache_layer_kinds)
                          if kind != "recurrent"})
        raise ValueError(
            f"train.tbptt_chunk={chunk} needs every layer to carry a fixed-size state across chunks; "
            f"{name} has {', '.join(growing)} layers, which keep a growing KV cache instead. "
            "Set train.tbptt_chunk=0 for it"
        )


def supports_tbptt(model: Any) -> bool:
    return unwrap(model).config.capabilities.supports_tbptt


def chunk_slices(length: int, chunk: int) -> list[slice]:
    """Consecutive slices covering ``length`` positions; one slice when ``chunk`` is 0 or >= length."""
    if chunk <= 0 or chunk >= length:
        return [slice(0, length)]
    return [slice(start, min(start + chunk, length)) for start in range(0, length, chunk)]


def token_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over scored positions (targets != -100) and the number of correct argmax predictions."""
    # Half-precision logits are scored in float32; a float64 model keeps float64 (its gradients are exact there).
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (B*T, V)
    if flat_logits.dtype != torch.float64:
        flat_logits = flat_logits.float()
    flat_targets = targets.reshape(-1)
    loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE, reduction="sum")
    scored = flat_targets != IGNORE
    correct = (flat_logits.detach().argmax(-1)[scored] == flat_targets[scored]).sum()
    return loss, correct


def chunked_forward(model: Any, input_ids: torch.Tensor, chunk: int,
                    cache: SeqzooCache | None = None) -> tuple[torch.Tensor, SeqzooCache | None]:
    """Logits of ``input_ids`` computed chunk by chunk with the state carried (and detached) between chunks.

    Equals one full-sequence forward (what the TBPTT tests check). Evaluation scores the chunks as they come instead
    (:func:`chunked_loss_sum`): these logits are the whole window's.
    """
    logits = []
    for piece in chunk_slices(input_ids.shape[1], chunk):
        out = model(input_ids=input_ids[:, piece], cache=cache, use_cache=True)
        logits.append(out.logits)
        cache = output_cache(out)
        cache = cache.detach() if isinstance(cache, SeqzooCache) else None
    return torch.cat(logits, dim=1), cache


def chunked_loss_sum(model: Any, input_ids: torch.Tensor, targets: torch.Tensor,
                     chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_loss_sum` of ``input_ids``' logits against ``targets``, computed chunk by chunk with the state
    carried (and detached) between chunks, as training computes them: only one chunk's (B, chunk, vocab) logits are
    held at a time, not the window's (a window of 8,192 tokens read in chunks of 256 held 32x the logits training
    did, 13 GB at a batch of 8 and a vocabulary of 50,000)."""
    cache, loss, correct = None, 0.0, 0
    for piece in chunk_slices(input_ids.shape[1], chunk):
        out = model(input_ids=input_ids[:, piece], cache=cache, use_cache=True)
        piece_loss, piece_correct = token_loss_sum(out.logits, targets[:, piece])
        loss, correct = loss + piece_loss, correct + piece_correct
        cache = output_cache(out)
        cache = cache.detach() if isinstance(cache, SeqzooCache) else None
    return loss, correct


def backward_sequence(
    model: Any,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk: int,
    loss_scale: float,
    backward: Callable[[torch.Tensor], None],
    sync_last: Callable[[bool], ContextManager] = lambda last: nullcontext(),
    last_micro_batch: bool = True,
    packed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward + backward of one micro-batch (B, T), in TBPTT chunks when ``chunk`` > 0.

    ``packed``: the rows hold several documents each, separated by EOS, and each is trained on alone
    (``document_position_ids``; the recipe refuses packing with TBPTT).

    ``backward`` is called with each chunk's summed loss times ``loss_scale``. ``sync_last(is_last)`` gives the
    context to run a chunk in: distributed training synchronises gradients only on the last chunk of the last
    micro-batch of a step. Returns the summed loss and the number of correct predictions (detached).
    """
    if packed and chunk > 0:
        raise ValueError(f"packed rows cannot be trained in TBPTT chunks (chunk={chunk}): a row of several documents "
                         "has no one state to carry into its next chunk")
    total_loss = torch.zeros((), dtype=torch.float32, device=inputs.device)
    total_correct = torch.zeros((), dtype=torch.long, device=inputs.device)
    if is_seq2seq(model):  # inputs are the sources, targets the labels: one pass over whole pairs
        with sync_last(last_micro_batch):
            loss, correct = token_loss_sum(seq2seq_logits(model, inputs, targets), targets)
            backward(loss * loss_scale)
        return loss.detach(), correct
    if is_classifier(model):  # a label per text or per byte: one pass over whole texts
        with sync_last(last_micro_batch):
            loss, correct = token_loss_sum(classifier_logits(model, inputs), targets)
            backward(loss * loss_scale)
        return loss.detach(), correct
    cache = None
    pieces = chunk_slices(inputs.shape[1], chunk)
    for index, piece in enumerate(pieces):
        is_last = last_micro_batch and index == len(pieces) - 1
        with sync_last(is_last):
            if chunk > 0:
                out = model(input_ids=inputs[:, piece], cache=cache, use_cache=True)
            else:
                position_ids = document_position_ids(inputs[:, piece]) if packed else None
                out = model(input_ids=inputs[:, piece], position_ids=position_ids, use_cache=False)
            loss, correct = token_loss_sum(out.logits, targets[:, piece])
            backward(loss * loss_scale)
        if chunk > 0:
            cache = output_cache(out).detach()
        total_loss = total_loss + loss.detach()  # float64 where the loss is (a float64 model)
        total_correct += correct
    return total_loss, total_correct
