"""What seqzoo's generating models add to transformers' ``generate()``: the checks that refuse what it would decode
wrongly or fail on obscurely (a cache it cannot continue, a mask of the wrong length, another cache implementation,
assisted decoding of a recurrent model, continuous batching), a right-padded prompt padded on the left, the mark on
a beam search's cache, and the lean preparation of a decode step's inputs (:func:`decode_step_inputs`), checked
against transformers' own.

``SeqzooForCausalLM`` (``modeling_utils.py``) and the encoder-decoders (``seq2seq/modeling_seq2seq.py``) call these
from their ``generate`` and ``prepare_inputs_for_generation``.
"""

from __future__ import annotations

import contextlib
import inspect
import numbers
import os
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.generation import utils as generation_utils

from seqzoo.cache import RECURRENT, SeqzooCache
from seqzoo.models.compat import GENERATE_CACHE_KWARG, output_cache, source_fingerprint


def refuse_continuous_batching(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``init_continuous_batching`` of every seqzoo generating model: refused. transformers' continuous batching
    (``generate_batch``, ``init_continuous_batching``) decodes through a paged key-value cache and paged attention
    inputs, which no seqzoo model reads (a recurrent model has no keys and values to page; the forward refuses the
    paged inputs): without this it fails inside transformers' worker, logged, and ``generate_batch`` returns empty
    outputs."""
    raise NotImplementedError(
        f"{type(self).__name__} does not support continuous batching (generate_batch / init_continuous_batching / "
        "paged attention): seqzoo models decode with their own cache, SeqzooCache. Use generate() on a padded batch"
    )


def check_generate_cache(model: nn.Module, cache: Any, config: Any, kwargs: dict[str, Any]) -> Any:
    """Refuse a cache that ``generate()`` cannot continue rightly; return the ``use_cache`` it runs with.

    - with ``use_cache=False`` (a keyword, or ``config``'s): transformers would feed the whole sequence at every step
      on top of the cache, which already holds its start: wrong tokens, and the cache left holding the sequence
      several times over;
    - a cache a beam search returned (:func:`mark_beam_search_cache`);
    - a cache holding positions with assisted decoding (``assistant_model``, ``prompt_lookup_num_tokens`` or
      ``assistant_early_exit``): transformers' assisted loop feeds the whole prompt on top of it at its first step
      (LlamaForCausalLM's too), so the cache ends up holding the prompt twice and the tokens are wrong;
    - ``prefill_chunk_size`` with ``inputs_embeds`` (transformers' chunks slice the empty ``input_ids``), or for an
      encoder-decoder (whose source mask transformers' chunks cut to the decoder's length);
    and a draft model (``assistant_model``) whose state cannot be cropped, which failed after its first round, and
    ``assistant_early_exit`` (which transformers drafts by changing the model's ``config.num_hidden_layers``)."""
    use_cache = kwargs.get("use_cache", config.use_cache)
    where = f"{type(model).__name__}.generate"
    if cache is not None and use_cache is False:
        raise ValueError(f"{where}: a cache to continue was passed with use_cache=False; pass the cache and leave "
                         "use_cache unset (or True), or pass no cache to decode without one")
    # (transformers decodes assisted with greedy or sampled decoding only: with beams it warns and ignores these)
    beams = kwargs.get("num_beams", config.num_beams) or 1
    assisted = [name for name in _ASSISTED if _asks_for_assisted(name, kwargs.get(name, getattr(config, name, None)))
                ] if beams == 1 else []
    if assisted and getattr(model, "_is_stateful", False):
        # (before the draft's check below, whose advice would not help this model)
        raise ValueError(_assisted_refusal(model))
    if "assistant_early_exit" in assisted:
        # transformers drafts with the model itself, its config's num_hidden_layers set to the exit layer for each
        # draft call (Llama's loop reads it). A seqzoo model runs every layer it holds: the draft's cache, built for
        # fewer layers, failed with an IndexError, and the failure left num_hidden_layers changed on the model's
        # config, so every later forward failed too and save_pretrained wrote a config of fewer layers.
        exit_layer = kwargs.get("assistant_early_exit", getattr(config, "assistant_early_exit", None))
        raise ValueError(f"{where}: assistant_early_exit={exit_layer!r} is not supported: transformers drafts with "
                         "the model's first layers by changing config.num_hidden_layers for each draft, which seqzoo "
                         "models do not read (they run every layer they hold). For assisted decoding, pass "
                         "assistant_model= (a smaller Transformer) or prompt_lookup_num_tokens=")
    assistant = kwargs.get("assistant_model")
    if getattr(assistant, "_is_stateful", False):  # (transformers checks the main model only)
        raise ValueError(f"{where}: assistant_model {type(assistant).__name__} keeps a recurrent state, which "
                         "cannot be rolled back past the draft tokens the main model rejects; use a draft model "
                         "with attention layers only (a Transformer), or prompt_lookup_num_tokens")
    cached = cache.get_seq_length() if isinstance(cache, SeqzooCache) else 0
    if assisted and cached:
        raise ValueError(
            f"{where}: assisted decoding ({'=, '.join(assisted)}=) cannot continue a cache that already holds "
            f"positions ({cached} here): transformers' assisted loop feeds the whole prompt on top of it, which "
            "decodes wrong tokens. Pass the whole sequence without the cache (assisted decoding reads the prompt "
            "anew), or continue the cache without assisted decoding")
    chunk = kwargs.get("prefill_chunk_size", config.prefill_chunk_size)
    if chunk is not None and model.config.is_encoder_decoder:
        # (transformers' chunked prefill cuts the source's attention_mask to the decoder's chunk: its BART fails on the
        # sizes; here it failed "without a cache", which the call never turned off)
        raise ValueError(f"{where}: prefill_chunk_size={chunk} reads a decoder-only model's prompt in chunks; an "
                         "encoder-decoder reads its source in one encoder pass and its decoder prompt in one step "
                         "(transformers' chunked prefill does not apply to encoder-decoders): leave "
                         "prefill_chunk_size unset")
    if chunk is not None and kwargs.get("inputs_embeds") is not None and not model.config.is_encoder_decoder:
        # (transformers' chunked prefill slices input_ids, empty here: the forward then got inputs of length 0)
        raise ValueError(f"{where}: prefill_chunk_size={chunk} reads the prompt from input_ids in chunks, and this "
                         "call passes inputs_embeds; pass input_ids, or leave prefill_chunk_size unset")
    if getattr(cache, "from_beam_search", False):
        raise ValueError(f"{where}: this cache comes from a beam search, whose rows hold the beams of its last step, "
                         "not the sequences it returned (transformers keeps no cache per returned sequence); decode "
                         "the returned sequences without a cache, or continue a cache from greedy or sampled "
                         "decoding")
    return use_cache


# The starts of transformers' refusal of assisted decoding for a model whose state cannot be rolled back: a
# ValueError before the first forward for a model with ``_is_stateful`` (5.23, 5.24); from 5.25 a ValueError after
# the prefill for a cache whose ``is_croppable`` is False ("... requires a cache that can be cropped ..."), or a
# RuntimeError where no cache was prepared (an encoder-decoder's: "... requires a cache").
_STATEFUL_REFUSAL = ("assisted generation is not supported with stateful models",
                     "Assisted decoding requires a cache")


@contextlib.contextmanager
def explained_assisted_refusal(model: nn.Module) -> Iterator[None]:
    """Re-raise transformers' refusal of assisted decoding for a model that keeps a recurrent state ("... not
    supported with stateful models, such as X", or "... requires a cache that can be cropped") with what was asked
    for, why it cannot be done and what can. The refusal is left to transformers, which alone knows when a call
    decodes assisted (an ``assistant_model``, ``prompt_lookup_num_tokens`` or ``assistant_early_exit`` with greedy
    or sampled decoding, not with beam search); any other error, or this one from a later release that words it
    otherwise, passes through unchanged."""
    try:
        yield
    except (ValueError, RuntimeError) as err:
        if not (getattr(model, "_is_stateful", False) and str(err).startswith(_STATEFUL_REFUSAL)):
            raise
        raise ValueError(_assisted_refusal(model)) from err


# What asks generate() for assisted decoding.
_ASSISTED = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit", "use_mtp")


def _asks_for_assisted(name: str, value: Any) -> bool:
    """Whether ``value`` of the :data:`_ASSISTED` setting ``name`` asks for assisted decoding, as transformers'
    ``GenerationConfig.get_generation_mode`` reads it: ``use_mtp`` when true, the others when not None. (A 0 asks too:
    ``assistant_early_exit=0`` drafted with no layers, and read as unset here, it broke the model as any other exit
    layer did.)"""
    return bool(value) if name == "use_mtp" else value is not None


def _assisted_refusal(model: nn.Module) -> str:
    """Why a model that keeps a state which cannot be rolled back does not decode assisted, and what it can do."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        state, instead = "this model's decoding state cannot be rolled back", ""
    else:
        kinds = sorted(set(config.layer_mixer_types()) - {"attention"})
        state = f"this model keeps a recurrent state ({', '.join(kinds)} layers), which cannot be rolled back"
        instead = ", or use a model whose every layer is attention (a Transformer) for assisted decoding"
    return (f"{type(model).__name__}.generate: assisted decoding (assistant_model=, prompt_lookup_num_tokens= or "
            f"assistant_early_exit=) is not supported with stateful models: {state} past the draft tokens it "
            f"rejects. Decode without them (greedy, sampling and beam search work){instead}")


@contextlib.contextmanager
def cache_expanded_for_generation(cache: Any, config: Any, args: tuple, kwargs: dict[str, Any]) -> Iterator[None]:
    """Repeat each row of a cache passed to ``generate()`` as ``generate()`` repeats each prompt, for the body (the
    call of transformers' ``generate``). With ``num_beams`` or ``num_return_sequences`` above 1 it repeats every
    input tensor ``max(num_beams, num_return_sequences)`` times (rows 0, 0, 1, 1, ...), but not a cache object:
    every step then failed with the cache's batch-size error. A cache already holding that many rows is left as it is.
    Should the body raise before any position is decoded, the cache is put back to one row per prompt."""
    expand = max(kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1,
                 kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", 1)) or 1)
    rows = cache.batch_size if isinstance(cache, SeqzooCache) else None
    prompt = args[0] if args else next((kwargs[name] for name in ("input_ids", "inputs", "inputs_embeds",
                                                                  "decoder_input_ids")  # (beside encoder_outputs)
                                        if isinstance(kwargs.get(name), torch.Tensor)), None)
    if expand == 1 or rows is None or not isinstance(prompt, torch.Tensor) or prompt.dim() < 2 \
            or prompt.shape[0] != rows:
        yield
        return
    seen = cache.get_seq_length()
    cache.batch_repeat_interleave(expand)
    try:
        yield
    except BaseException:
        if cache.get_seq_length() == seen and cache.batch_size == rows * expand:
            cache.batch_select_indices(torch.arange(0, rows * expand, expand))
        raise


def mark_beam_search_cache(result: Any, cache: Any, config: Any, kwargs: dict[str, Any]) -> Any:
    """Mark the cache of a beam search (the one passed in, which generate() fills in place, and the one returned)
    so that :func:`check_generate_cache` refuses to continue it; return ``result``."""
    if (kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1) > 1:
        for each in (cache, output_cache(result)):
            if isinstance(each, SeqzooCache):
                each.from_beam_search = True
    return result


# What generate() hands its decoding loop among the model's keyword arguments although only generate() reads it:
# the tokenizer of `stop_strings` / token healing (transformers 5.23 and 5.24 pass it on to the step's inputs, where
# transformers' own models swallow it in **kwargs and seqzoo's forward would refuse it).
def preparation_takes_cache(model: nn.Module) -> bool:
    """Whether the model's ``prepare_inputs_for_generation`` names the cache keyword generate() hands on. Read once
    per function of the model's class; read at each call where the model itself holds one (peft's prompt tuning sets
    a wrapper there, which may not name it)."""
    if "prepare_inputs_for_generation" in vars(model):
        return GENERATE_CACHE_KWARG in inspect.signature(model.prepare_inputs_for_generation).parameters
    function = type(model).prepare_inputs_for_generation
    takes = _TAKES_CACHE.get(function)
    if takes is None:
        takes = _TAKES_CACHE[function] = (
            GENERATE_CACHE_KWARG in inspect.signature(model.prepare_inputs_for_generation).parameters)
    return takes


_TAKES_CACHE: dict[Any, bool] = {}


GENERATE_ONLY_INPUTS = ("tokenizer", "assistant_tokenizer")


def drop_generate_only_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """Take :data:`GENERATE_ONLY_INPUTS` out of a decode step's inputs (in place); return them."""
    for name in GENERATE_ONLY_INPUTS:
        inputs.pop(name, None)
    return inputs


def check_continued_cache(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """Refuse, at generate()'s first step, a cache that already holds as many positions as the inputs or more (with
    the inputs' own attention mask or none, the inputs must be the cached tokens followed by at least one new one):
    transformers then slices ``input_ids[:, -0:]`` or a negative count and feeds tokens the cache has already seen on
    top of it (one cache passed to generate() twice: generate() advances it in place), which decodes garbage
    silently. An encoder-decoder's decoder inputs are not sliced at all: there the count of new ones is set here."""
    if not kwargs.get("is_first_iteration"):
        return
    cache = kwargs.get(GENERATE_CACHE_KWARG)
    cached = cache.get_seq_length() if isinstance(cache, SeqzooCache) else 0
    if not cached:
        return
    input_ids = args[0] if args else kwargs.get("input_ids")
    embeds = kwargs.get("inputs_embeds")
    by_embeds = embeds is not None and not model.config.is_encoder_decoder
    given = (embeds if by_embeds else input_ids).shape[1]
    new = kwargs.get("next_sequence_length")
    if new is None and model.config.is_encoder_decoder:
        new = given - cached
        if new > 0:
            kwargs["next_sequence_length"] = new
    if new is not None and new <= 0:
        name = ("decoder_input_ids" if model.config.is_encoder_decoder else
                "inputs_embeds" if by_embeds else "input_ids")
        raise ValueError(
            f"{type(model).__name__}.generate: the cache already holds {cached} position(s), but {name} has "
            f"{given}: pass the tokens the cache was built from followed by the new ones (generate() advances the "
            "cache it is given in place; to continue one cache more than once, pass copy.deepcopy(cache) each time)"
        )


_TENSOR_INPUTS = ("inputs", "input_ids", "inputs_embeds", "attention_mask", "decoder_input_ids",
                  "decoder_attention_mask")


def check_generate_tensors(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """Refuse a prompt or mask given to ``generate()`` as anything but a tensor (a list of ids failed inside
    transformers with "'list' object has no attribute 'shape'")."""
    for name, value in (("inputs", args[0] if args else None), *((key, kwargs.get(key)) for key in _TENSOR_INPUTS)):
        if value is not None and not isinstance(value, torch.Tensor):
            hint = ("a tokenizer's output is passed as keywords: generate(**inputs)" if isinstance(value, Mapping)
                    else "torch.tensor([[...]]) makes one of a list, or call the tokenizer with return_tensors='pt'")
            shape = "(batch, sequence_length, hidden_size)" if name == "inputs_embeds" else "(batch, sequence_length)"
            raise TypeError(f"{type(model).__name__}.generate: {name} must be a torch.Tensor of shape {shape}; got "
                            f"{type(value).__name__} ({hint})")


def check_generate_mask(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """Refuse a 2-d ``attention_mask`` given to a causal LM's ``generate()`` that is not (batch, prompt length): an
    all-ones mask is dropped by transformers' generate() before any forward sees it (so a mask of another length
    would be ignored silently, and left padding read as tokens), and any other reaches the forward of the first step
    only, named there as if the model had been called directly."""
    mask = kwargs.get("attention_mask")
    prompt = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
    if prompt is None:
        prompt = kwargs.get("inputs_embeds")
    if not (isinstance(mask, torch.Tensor) and isinstance(prompt, torch.Tensor)) or mask.dim() != 2 or prompt.dim() < 2:
        return
    if tuple(mask.shape) != tuple(prompt.shape[:2]):
        name = "inputs_embeds" if prompt is kwargs.get("inputs_embeds") else "input_ids"
        raise ValueError(
            f"{type(model).__name__}.generate: attention_mask has shape {tuple(mask.shape)} but {name} has "
            f"{tuple(prompt.shape[:2])} (batch, sequence_length): the mask needs one entry per prompt token, the "
            "tokens of a cache passed in included"
        )


def generate_pad_id(kwargs: dict[str, Any], config: Any) -> int | None:
    """The pad token id a ``generate()`` call infers a prompt's mask from (its ``pad_token_id``, else ``config``'s):
    an int, or a one-element tensor of one; None for none or anything else (a bool, a float, several ids)."""
    pad = kwargs.get("pad_token_id", config.pad_token_id)
    if isinstance(pad, torch.Tensor):
        pad = pad.item() if pad.numel() == 1 else None
    return int(pad) if isinstance(pad, numbers.Integral) and not isinstance(pad, bool) else None


def generate_eos_ids(kwargs: dict[str, Any], config: Any) -> list[int]:
    """The EOS token ids of a ``generate()`` call (its ``eos_token_id``, else ``config``'s) as a list."""
    eos = kwargs.get("eos_token_id", config.eos_token_id)
    return [] if eos is None else torch.as_tensor(eos).reshape(-1).tolist()


def mask_from_pad_token(ids: torch.Tensor, pad: int, eos: list[int]) -> torch.Tensor | None:
    """transformers' rule for the mask of a prompt passed without one: where the (B, T) token ``ids`` hold the pad
    token and it is not one of the ``eos`` tokens, a long mask with a 0 at each pad token; else None (nothing
    padded, or nothing to tell padding from an end by)."""
    if pad in eos:
        return None
    padded = ids == pad
    return padded.logical_not_().long() if bool(padded.any()) else None


class ReadMask(NamedTuple):
    """How ``generate()`` reads its prompt (:func:`prompt_read_mask`)."""

    mask: torch.Tensor | None  # (B, T) bool, True at each position fed as a token; None: every position is one
    rows: int | None  # B (None where not known: an encoder-decoder's start token alone)
    length: int  # T, the prompt's positions
    source: str  # where the mask comes from, for an error message
    in_sequences: bool  # whether the returned sequences begin with the prompt (not for a prompt of embeddings)


def prompt_read_mask(model: nn.Module, args: tuple, kwargs: dict[str, Any], config: Any) -> ReadMask | None:
    """How ``generate(*args, **kwargs)`` reads its prompt (a causal LM's) or its decoder prompt (an
    encoder-decoder's): which positions it feeds as tokens, as given (before :func:`prompt_padded_on_the_left`
    rolls a right-padded prompt). A causal LM's: the ``attention_mask`` passed, else the one transformers builds from
    the pad token (:func:`mask_from_pad_token`; none where the pad token is unset, or an EOS token, which
    transformers then takes for the pad token). An encoder-decoder's: its ``decoder_attention_mask`` (transformers
    builds none), after the decoder start token that transformers puts first where no row of ``decoder_input_ids``
    begins with it. None where the prompt is not a tensor (refused elsewhere)."""
    if model.config.is_encoder_decoder:
        ids, mask = kwargs.get("decoder_input_ids"), kwargs.get("decoder_attention_mask")
        if ids is None:  # (every row starts from the start token alone)
            return ReadMask(None, None, 1, "no decoder_input_ids", True)
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            return None
        given = isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(ids.shape)
        read = (mask != 0) if given else None
        start = kwargs.get("decoder_start_token_id", config.decoder_start_token_id)
        start = kwargs.get("bos_token_id", config.bos_token_id) if start is None else start
        length = ids.shape[1]
        if start is not None and length and bool(
                (ids[:, 0] != torch.as_tensor(start, device=ids.device).reshape(-1)[:1]).all()):
            length += 1
            read = None if read is None else torch.cat([read.new_ones(read.shape[0], 1), read], dim=1)
        source = "decoder_attention_mask" if given else "no decoder_attention_mask: every position a token"
        return ReadMask(read, ids.shape[0], length, source, True)
    prompt = args[0] if args else next((kwargs[name] for name in ("input_ids", "inputs", "inputs_embeds")
                                        if isinstance(kwargs.get(name), torch.Tensor)), None)
    if not isinstance(prompt, torch.Tensor) or prompt.dim() < 2:
        return None
    in_sequences = prompt.dim() == 2 and prompt.dtype in (torch.int, torch.long)
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor):  # (one of another shape is refused: check_generate_mask, the forward)
        return ReadMask(mask != 0, *mask.shape, "attention_mask", in_sequences) if tuple(mask.shape) == tuple(
            prompt.shape[:2]) else None
    pad = generate_pad_id(kwargs, config)
    if mask is None and in_sequences and pad is not None:
        inferred = mask_from_pad_token(prompt, pad, generate_eos_ids(kwargs, config))
        if inferred is not None:
            return ReadMask(inferred != 0, *inferred.shape,
                            f"no attention_mask: the one generate() builds from pad_token_id={pad}", True)
    return ReadMask(None, *prompt.shape[:2], "no attention_mask: every position a token", in_sequences)


def check_read_mask(model: nn.Module, cache: Any, read: ReadMask | None) -> bool:
    """Refuse, before any layer runs, to continue a cache whose recurrent state read its positions otherwise than
    the mask of this call says (``read``, from :func:`prompt_read_mask`): a position read as a token (a finished
    row's pad token after its EOS, which transformers' loop feeds as a token) cannot be unread, nor padding skipped be
    read, so such a row would continue from another state than the same call without the cache, silently. Compared
    with the cache's :attr:`~seqzoo.cache.SeqzooCache.read_mask`, which :func:`record_read_mask` keeps. Return
    whether every position the cache holds is known and was compared (what the next record may build on): so for
    no cache, which the call then builds."""
    if not isinstance(cache, SeqzooCache):
        return cache is None
    cached = cache.get_seq_length()
    if not cached:
        return True
    record = cache.read_mask
    if read is None or record is None or record.dim() != 2 or record.shape[1] > cached:
        return False
    rows, known = record.shape
    if read.length < known or not read.rows or rows % read.rows:
        # (check_continued_cache refuses a prompt no longer than the cache, the cache's batch check other rows)
        return False
    if read.mask is None:
        differs = ~record
    else:
        said = read.mask[:, :known].repeat_interleave(rows // read.rows, dim=0)  # (rows generate() repeated)
        differs = said != record.to(said.device)
    if bool(differs.any()):
        where = differs.nonzero().tolist()
        shown = "; ".join(f"row {row} position {position}, read as "
                          f"{'a token' if record[row, position] else 'padding'}" for row, position in where[:4])
        more = f" (and {len(where) - 4} more)" if len(where) > 4 else ""
        name = "decoder_attention_mask" if model.config.is_encoder_decoder else "attention_mask"
        raise ValueError(
            f"{type(model).__name__}.generate: the cache's recurrent state read {len(where)} of the {cached} "
            f"position(s) it holds otherwise than this call's mask says ({read.source}): {shown}{more}. A recurrent "
            "state cannot unread a token nor read a position it skipped as padding (generate() feeds a finished "
            "row's pad tokens after its EOS as tokens), so those rows would continue differently from the same call "
            f"without the cache. Pass as {name} the mask the cache was filled with followed by ones for the new "
            "positions: the previous call's mask m extended by ones for what it generated, "
            "torch.cat([m, m.new_ones(m.shape[0], ids.shape[1] - m.shape[1])], dim=1) for ids the sequences "
            "followed by the new tokens (cache.read_mask holds what the cache read, True for a token)")
    return known == cached


def record_read_mask(cache: Any, read: ReadMask | None, checked: bool, result: Any, config: Any,
                     kwargs: dict[str, Any]) -> None:
    """Record on ``cache``, which a ``generate()`` returning ``result`` filled in place, which positions its
    recurrent state read as tokens (:attr:`~seqzoo.cache.SeqzooCache.read_mask`): the prompt's mask ``read``
    followed by ones for each generated token fed (transformers extends the mask by ones, a finished row's pad
    tokens included), its rows repeated as ``generate()`` repeated them. None (not known: no check) where the
    positions the cache held before were not all known and compared (``checked``), after a beam search (its cache
    is refused), or where the cache holds other positions than the prompt's and the tokens fed (a peft prompt's
    virtual tokens). Once per call, after it: no decode step pays for it."""
    if not isinstance(cache, SeqzooCache) or RECURRENT not in cache.layer_kinds:
        return
    cache.read_mask = None
    sequences = result if isinstance(result, torch.Tensor) else getattr(result, "sequences", None)
    if (read is None or not checked or not isinstance(sequences, torch.Tensor) or sequences.dim() != 2
            or (kwargs.get("num_beams", config.num_beams) or 1) > 1):
        return
    fed = sequences.shape[1] - 1 + (0 if read.in_sequences else read.length)
    rows = cache.batch_size
    if cache.get_seq_length() != fed or fed < read.length or rows != sequences.shape[0]:
        return
    if read.mask is None:
        cache.read_mask = torch.ones(rows, fed, dtype=torch.bool, device=sequences.device)
    elif rows % read.mask.shape[0] == 0:
        record = torch.cat([read.mask, read.mask.new_ones(read.mask.shape[0], fed - read.length)], dim=1)
        cache.read_mask = record.repeat_interleave(rows // read.mask.shape[0], dim=0)


def prompt_padded_on_the_left(model: nn.Module, args: tuple, kwargs: dict[str, Any], config: Any,
                              cache: Any) -> tuple[tuple, dict[str, Any], tuple[torch.Tensor, bool, int] | None]:
    """``generate()``'s arguments with a right-padded prompt padded on the left instead, and what
    :func:`prompt_put_back` needs to put the prompt back as it was given in what ``generate()`` returns; where nothing
    is padded on the right, the same objects and None.

    A causal LM continues each row from its last position. Where a row's prompt ends in padding (its
    ``attention_mask`` ends in zeros; without a mask, where it ends in the pad token and transformers' rule would mask
    it: the pad token is no EOS token), that position is a pad, and every model, transformers' own included, would
    continue the row from it (transformers logs a warning for batches above one row and decodes on). Each such row
    of the prompt's ids, embeddings, mask and position ids is rolled right by its count of trailing pads, so the pads
    lead the row; its tokens keep their order and their positions (which seqzoo's models count from the mask), and
    the row decodes exactly what it decodes padded on the left. With a cache passed in, only the positions after
    those it holds are rolled (a pad inside a sequence changes no state). A row that is all padding there is left as
    it is."""
    mask = kwargs.get("attention_mask")
    names = [name for name in ("inputs", "input_ids", "inputs_embeds") if isinstance(kwargs.get(name), torch.Tensor)]
    prompt = args[0] if args and isinstance(args[0], torch.Tensor) else (kwargs[names[0]] if names else None)
    if prompt is None or prompt.dim() < 2 or prompt.shape[1] == 0:
        return args, kwargs, None
    # (the sequences generate() returns begin with the prompt's ids, unless it was given embeddings alone)
    in_sequences = prompt.dim() == 2 and prompt.dtype in (torch.int, torch.long)
    if mask is None:
        pad = generate_pad_id(kwargs, config)
        if not in_sequences or pad is None:
            return args, kwargs, None
        ends_in_pad = int(prompt[0, -1]) == pad if prompt.shape[0] == 1 else bool((prompt[:, -1] == pad).any())
        mask = mask_from_pad_token(prompt, pad, generate_eos_ids(kwargs, config)) if ends_in_pad else None
        if mask is None:
            return args, kwargs, None
    elif not isinstance(mask, torch.Tensor) or mask.dim() != 2 or tuple(mask.shape) != tuple(prompt.shape[:2]):
        return args, kwargs, None  # (check_generate_mask refuses a 2-d mask of another shape; others are the model's)
    elif bool((mask[:, -1] != 0).all()):
        return args, kwargs, None
    cached = cache.get_seq_length() if isinstance(cache, SeqzooCache) else 0
    length = prompt.shape[1] - cached
    if length <= 0:
        return args, kwargs, None  # (check_continued_cache refuses it at the first step)
    real = mask[:, cached:] != 0
    positions = torch.arange(length, device=real.device)
    last = torch.where(real, positions, -1).amax(dim=1)
    shift = torch.where(last >= 0, length - 1 - last, 0)
    index = (positions - shift[:, None]) % length + cached
    index = torch.cat([torch.arange(cached, device=real.device).expand(index.shape[0], cached), index], dim=1)
    kwargs = {name: _rolled(value, index) if name in (*names, "attention_mask", "position_ids") else value
              for name, value in kwargs.items()}
    return ((_rolled(args[0], index), *args[1:]) if args else args), kwargs, (index, in_sequences, cached)


def prompt_put_back(result: Any, cache: Any, rolled: tuple[torch.Tensor, bool, int]) -> Any:
    """``generate()``'s ``result`` (and the ``cache`` it filled, in place) with the prompt that
    :func:`prompt_padded_on_the_left` rolled put back where it was given (``rolled``: where each position came from,
    and whether the sequences begin with the prompt's ids, as they do unless only embeddings were given): the
    sequences' prompt positions, and the keys and values every attention layer holds for them (a recurrent layer's
    state does not depend on where a pad sat), so that the mask the prompt came with, extended by ones, describes the
    returned sequences and a cache continued with them. Rows that ``generate()`` repeated (beams,
    ``num_return_sequences``) are put back as the prompt's row they came from. The cache holds every position of the
    sequences but the last, after any it held before the prompt (peft's prompt tuning puts its virtual tokens there):
    the prompt's positions are counted from the end. With ``return_dict_in_generate``, so are the prompt's positions
    in the ``hidden_states`` and ``attentions`` of its forward, and in the keys every later step's ``attentions``
    read. (``rolled``'s last item: how many of the prompt's positions a cache passed in held.)"""
    index, in_sequences, cached = rolled
    back = torch.empty_like(index).scatter_(1, index, torch.arange(index.shape[1], device=index.device)
                                            .expand(index.shape))
    sequences = result if isinstance(result, torch.Tensor) else getattr(result, "sequences", None)
    prompt = index.shape[1]
    if not isinstance(sequences, torch.Tensor) or sequences.dim() != 2 or sequences.shape[1] < prompt * in_sequences:
        return result
    if in_sequences:
        sequences[:, :prompt] = _rolled(sequences[:, :prompt], back)
    fed = prompt + sequences.shape[1] - prompt * in_sequences - 1  # (the prompt and every new token but the last)
    for each in {id(c): c for c in (cache, output_cache(result)) if isinstance(c, SeqzooCache)}.values():
        for entry in each.layers:
            keys = getattr(entry, "keys", None) if getattr(entry, "is_initialized", False) else None
            if not (isinstance(keys, torch.Tensor) and keys.dim() == 4):
                continue
            start = keys.shape[2] - fed
            if start < 0 or start + prompt > keys.shape[2]:
                continue
            for name in ("keys", "values"):
                held = getattr(entry, name)[:, :, start:start + prompt]
                # (batch, heads, positions, head size): the positions are the second dimension of a row's heads
                held.copy_(_rolled(held.transpose(1, 2), back).transpose(1, 2))
    _outputs_put_back(result, back, cached)
    return result


def _outputs_put_back(result: Any, back: torch.Tensor, cached: int) -> None:
    """The prompt's positions put back (``back``: where each was taken from) in ``result``'s per-step
    ``hidden_states`` and ``attentions``, in place of the tuples: the forward of the prompt's positions after the
    ``cached`` ones, (rows, positions, width) and (rows, heads, positions, keys); and the keys of every step's
    attentions, where the prompt's positions are followed by the s new tokens fed since (none at step 0). Anything of
    another shape (a custom model's outputs) is left as it is."""
    hidden_states, attentions = (getattr(result, name, None) for name in ("hidden_states", "attentions"))
    if not isinstance(result, dict) or not (isinstance(hidden_states, tuple) or isinstance(attentions, tuple)):
        return
    prompt = back.shape[1]
    fed = back[:, cached:] - cached  # (the prompt's forward: its positions after the cached ones)

    def keys_back(weights: Any, step: int) -> Any:
        if not isinstance(weights, torch.Tensor) or weights.dim() != 4:
            return weights
        start = weights.shape[3] - step - prompt  # (step 0: the prompt's last position is the last key)
        if start < 0:
            return weights
        weights = weights.clone()
        held = weights[..., start:start + prompt]  # (rows, heads, queries, prompt): positions put back per row
        held.copy_(_rolled(held.permute(0, 3, 1, 2), back).permute(0, 2, 3, 1))
        return weights

    if isinstance(hidden_states, tuple) and hidden_states and isinstance(hidden_states[0], tuple):
        first = tuple(_rolled(h, fed) if isinstance(h, torch.Tensor) and h.dim() == 3 else h
                      for h in hidden_states[0])
        result["hidden_states"] = (first, *hidden_states[1:])
    if isinstance(attentions, tuple) and attentions and all(isinstance(step, tuple) for step in attentions):
        steps = []
        for step, layers in enumerate(attentions):
            if step == 0:  # (its queries are the prompt's positions too)
                layers = tuple(_rolled(w.transpose(1, 2), fed).transpose(1, 2)
                               if isinstance(w, torch.Tensor) and w.dim() == 4 else w for w in layers)
            steps.append(tuple(keys_back(w, step) for w in layers))
        result["attentions"] = tuple(steps)


def _rolled(tensor: Any, index: torch.Tensor) -> Any:
    """``tensor``'s positions (its second dimension) taken in the order ``index`` (B, T) gives each row, for a tensor
    of B rows or a multiple of B (rows repeated as generate() repeats them: 0, 0, 1, 1, ...), or of one row (a
    position tensor shared by the batch); anything else as it is."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() < 2 or tensor.shape[1] != index.shape[1]:
        return tensor
    rows = tensor.shape[0]
    if rows == 1 and index.shape[0] > 1:
        tensor = tensor.expand(index.shape[0], *tensor.shape[1:])
    elif rows != index.shape[0]:
        if rows % index.shape[0]:
            return tensor
        index = index.repeat_interleave(rows // index.shape[0], dim=0)
    where = index.to(tensor.device).reshape(*index.shape, *[1] * (tensor.dim() - 2)).expand(tensor.shape)
    return tensor.gather(1, where)


def generation_settings(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> SimpleNamespace:
    """The settings of a ``generate(*args, **kwargs)`` call that seqzoo's checks read (:data:`SETTINGS`), before the
    call's keywords (which the checks read first), as transformers merges them: the ``generation_config`` passed
    (a keyword, or the second positional argument) where it sets one, else the model's ``generation_config``; None
    where neither does."""
    passed = kwargs.get("generation_config", args[1] if len(args) > 1 else None)
    own = model.generation_config
    values = {}
    for name in SETTINGS:
        value = getattr(passed, name, None)
        values[name] = value if value is not None else getattr(own, name, None)
    return SimpleNamespace(**values)


SETTINGS = ("num_beams", "num_return_sequences", "use_cache", "cache_implementation", "pad_token_id", "eos_token_id",
            "prompt_lookup_num_tokens", "assistant_early_exit", "use_mtp", "prefill_chunk_size",
            "decoder_start_token_id", "bos_token_id")


def check_cache_implementation(model: nn.Module, config: Any, kwargs: dict[str, Any]) -> None:
    """Refuse a ``cache_implementation`` (a keyword in ``kwargs``, or ``config``'s) other than "dynamic" (what
    SeqzooCache is): seqzoo models decode with their own cache, and transformers would ignore it with a log line.
    ("dynamic" is taken out of the prepared generation config: :func:`without_cache_implementation`.)"""
    implementation = kwargs.get("cache_implementation", getattr(config, "cache_implementation", None))
    if implementation not in (None, "dynamic"):
        raise ValueError(
            f"{type(model).__name__}.generate: cache_implementation={implementation!r} is not supported. seqzoo "
            "models decode with their own cache, SeqzooCache (a fixed-size state per recurrent layer, keys and "
            "values growing per attention layer, like transformers' dynamic cache): leave cache_implementation "
            "unset (or 'dynamic'), or pass cache=SeqzooCache.for_model(model)"
        )


def without_cache_implementation(generation_config: Any) -> Any:
    """``generation_config`` (as ``generate()`` prepared it) without a ``cache_implementation`` of "dynamic", which
    seqzoo's cache is: transformers refuses one beside the cache object seqzoo passes. (Any other was refused
    before: :func:`check_cache_implementation`.)"""
    if getattr(generation_config, "cache_implementation", None) == "dynamic":
        generation_config.cache_implementation = None
    return generation_config


# transformers' prepare_inputs_for_generation as decode_step_inputs was checked against (tests/models/
# test_generate_inputs.py), by a fingerprint of its source (_preparation_fingerprint) on each supported release. On any
# other, such as a later release loading a Hub bundle of this code, every step goes to transformers' method.
_CHECKED_PREPARATIONS = frozenset({
    "fd5e907d7a1b4023",  # transformers 5.23
    "018a76f42a134e27",  # 5.24 and 5.25
})
# The multimodal inputs that method drops after the prefill (None where a release no longer names them).
_MULTIMODAL_INPUTS = getattr(generation_utils, "MULTIMODAL_INPUTS_TO_DROP_OUTSIDE_PREFILL", None)
# Inputs that it slices, converts or drops by name, but for the position ids (sliced below as it slices them): a
# decode step given one (not None) takes that method's own path.
_PREPARED_BY_NAME = frozenset({
    "token_type_ids", "mm_token_type_ids", "moe_mm_token_type_ids", "labels", *(_MULTIMODAL_INPUTS or ()),
})
# What a decode step does not hand on to the forward as it is: those, and the method's own parameters.
_NOT_HANDED_ON = _PREPARED_BY_NAME | {"next_sequence_length", "is_first_iteration", "inputs_embeds", "position_ids"}
# Handed on only when not None.
_HANDED_ON_WHEN_SET = frozenset({GENERATE_CACHE_KWARG, "attention_mask"})


def decode_step_inputs(model: PreTrainedModel, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The inputs of one decode step of ``generate()`` (one new token, continuing a SeqzooCache), as transformers'
    ``prepare_inputs_for_generation`` builds them: the last token, the cache, a mask where there is one, and the
    other keywords handed on (a prompt's embeddings no more: only the first step reads them). None for any other
    call, which that method then prepares: a prefill, several new tokens, an input it slices or converts by name, an
    input on another device than the model, or a release of transformers whose method this was not checked
    against. Its general path checks for all of those at every token (about 30 µs); a test holds the two paths to
    the same output."""
    if (len(args) != 1 or kwargs.get("next_sequence_length") != 1 or kwargs.get("is_first_iteration")
            or not kwargs.get("use_cache", True) or not preparation_checked()):
        return None
    cache = kwargs.get(GENERATE_CACHE_KWARG)
    if not isinstance(cache, SeqzooCache) or cache.is_compileable:
        return None
    if any(kwargs[name] is not None for name in _PREPARED_BY_NAME.intersection(kwargs)):
        return None
    input_ids = args[0]
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.device != model.device:
        return None
    inputs = {"input_ids": input_ids[:, -1:].clone(memory_format=torch.contiguous_format)}
    if (position_ids := kwargs.get("position_ids")) is not None:
        # The attention models' (RoPE); 2-D or 3-D, sliced on the last dimension.
        if position_ids.shape[-1] != 1:
            position_ids = position_ids[..., -1:].clone(memory_format=torch.contiguous_format)
        inputs["position_ids"] = position_ids
    for name, value in kwargs.items():
        if name not in _NOT_HANDED_ON and (value is not None or name not in _HANDED_ON_WHEN_SET):
            inputs[name] = value
    return inputs


def _preparation_fingerprint() -> str | None:
    """A fingerprint of the installed transformers' ``prepare_inputs_for_generation`` (None without its source)."""
    return source_fingerprint(GenerationMixin.prepare_inputs_for_generation)


def preparation_checked() -> bool:
    """Whether :func:`decode_step_inputs` was checked against the installed transformers' method, as it is now: the
    one seqzoo found as it was imported (transformers wraps it itself), with a checked source. One patched since,
    even after a first generate() and with functools.wraps, is another: its own code then runs at every step."""
    global _IMPORTED_FINGERPRINT
    if GenerationMixin.prepare_inputs_for_generation is not _IMPORTED_PREPARATION or _MULTIMODAL_INPUTS is None:
        return False
    if _IMPORTED_FINGERPRINT is None:
        # transformers' own, wrapped by transformers alone: a wrapper set before seqzoo was imported fingerprints as
        # what it wraps (inspect reads the source through __wrapped__), and would be skipped at every step.
        _IMPORTED_FINGERPRINT = (_preparation_fingerprint() or "") if _transformers_own(_IMPORTED_PREPARATION) else ""
    return _IMPORTED_FINGERPRINT in _CHECKED_PREPARATIONS


def _transformers_own(function: Any) -> bool:
    """Whether ``function`` and every function it wraps (``__wrapped__``) have their code in transformers' package
    (a ``functools.wraps`` wrapper takes the wrapped function's ``__module__``, not its code)."""
    import transformers

    package = os.path.dirname(os.path.abspath(transformers.__file__)) + os.sep
    while function is not None:
        code = getattr(function, "__code__", None)
        if code is None or not os.path.abspath(code.co_filename).startswith(package):
            return False
        function = getattr(function, "__wrapped__", None)
    return True


_IMPORTED_PREPARATION = GenerationMixin.prepare_inputs_for_generation
_IMPORTED_FINGERPRINT: str | None = None  # (read at the first call: reading a source takes milliseconds)
