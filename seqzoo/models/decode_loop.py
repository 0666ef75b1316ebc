"""seqzoo's greedy and sampled decoding loop: what transformers' ``GenerationMixin._sample`` computes, with its
per-token bookkeeping written out for the plain calls it was checked against.

``generate()`` runs its greedy and multinomial modes through ``_sample``, found by name on the model's class, so
``SeqzooForCausalLM._sample`` decides per call: :func:`runs_own_loop` says whether this loop applies, and
:func:`sample` runs it; every other call runs transformers' own. The loop makes the same calls in the same order
where they could matter: transformers' ``_prefill`` for the prompt, ``_update_model_kwargs_for_generation`` and
the model's ``prepare_inputs_for_generation`` for the first new token, the model through its ``__call__`` (so
hooks, wrappers and the lean decode steps all see what they see under transformers' loop), the logits processors
and the stopping criteria as given, the same argmax or softmax-and-multinomial (so a seeded sampler draws the same
tokens), the same padding of finished rows, and a streamer fed as transformers' ``StopCheck`` feeds it.

What it does differently, and why it gives the same result:

- From the second new token on, a step's inputs are those of the first with the new token, the mask grown by a
  column of ones and the position ids moved on by one (from its own copy, as transformers keeps its own), and the
  cache the last output returned; the mask and positions grow right after each forward, where transformers grows
  them. That is what ``_update_model_kwargs_for_generation`` and seqzoo's ``prepare_inputs_for_generation``
  (``generation.decode_step_inputs``) would build, without their general checks at every token. Only where the
  first step's inputs are exactly those keywords (the token, a 2-d mask and (B, 1) position ids where there are
  any, the cache, ``logits_to_keep``, ``use_cache``) and the call passed nothing else; otherwise both methods are
  called at every step, as transformers' loop calls them.
- Where the stopping criteria are transformers' own ``MaxLengthCriteria`` (one that would not warn) and at most one
  ``EosTokenCriteria`` (with the calls transformers defines for their classes), the loop reads the length and the EOS
  tokens at their first check (moving the tokens to the ids' device, as the criterion's call does) and checks the
  new tokens against them, instead of calling the criteria at every token; at every token it checks that the list
  holds the same criteria with the same settings, and calls them from then on if not. On that path it pads the
  tokens of finished rows only once a row has finished (before, the padding changes no token); with other
  criteria, at every token from the second on.
- Greedy decoding with no logits processor (transformers' own empty list) takes the argmax of the logits as the
  model returned them, without transformers' float32 copy: for float32, bfloat16 and float16 logits on the ids'
  device the copy holds the same values, so the same token wins (float64 logits are copied, as 1e-12 apart they may
  tie in float32).
- On such a step, from the second new token on, where the criteria are the ones read, no streamer is given and the
  ids are a plain tensor, the new token is kept aside rather than appended at once: nothing reads the ids until the
  end then. The tokens kept aside are appended, in order, where anything is next to read the ids (a processor,
  criteria called, the input preparation) and at the end. The next forward gets a copy of the token as appended, as
  there.

It runs only on the releases whose ``_sample`` and ``_update_model_kwargs_for_generation`` it was checked against
(by a fingerprint of their source, as ``decode_step_inputs`` is), for token ids on the CPU where the model is,
without ``return_dict_in_generate``, ``use_cache=False``, ``synced_gpus``, chunked prefill or an automatically
compiled forward, and for a model that keeps transformers' ``_update_model_kwargs_for_generation`` and seqzoo's
``prepare_inputs_for_generation`` (peft's prompt tuning, which sets its own on the model while it generates, runs
transformers' loop). ``tests/models/test_decode_loop.py`` holds the two loops to the same tokens and the same
forward calls.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from transformers import GenerationMixin, LogitsProcessorList
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList

from seqzoo.cache import SeqzooCache
from seqzoo.models.compat import GENERATE_CACHE_KWARG, checked_source, output_cache
from seqzoo.models.generation import GENERATE_ONLY_INPUTS, preparation_checked

LOOPS = ("seqzoo", "transformers")

# (GenerationMixin._sample, GenerationMixin._update_model_kwargs_for_generation) as this loop was checked against,
# by source_fingerprint, on each supported release.
_CHECKED_LOOPS = frozenset({
    ("9f5d2e3906df6579", "fb244c4da03341e8"),  # transformers 5.23
    ("a6e4d9f96a55d11b", "aa5e6dcc92d26a5c"),  # 5.24 and 5.25
})
# What generate() hands its decoding loop for a plain call, and what the first step's inputs may hold for the later
# steps to be built from them.
_PLAIN_MODEL_KWARGS = frozenset({GENERATE_CACHE_KWARG, "attention_mask", "position_ids", "logits_to_keep", "use_cache",
                                 *GENERATE_ONLY_INPUTS})  # (the last: a tokenizer for stop strings, never handed on)
_CACHE_KEYS = (GENERATE_CACHE_KWARG, "past_key_values")
_STEP_INPUTS = frozenset({"input_ids", "attention_mask", "position_ids", "logits_to_keep", "use_cache", *_CACHE_KEYS})


def loop_checked() -> bool:
    """Whether :func:`sample` was checked against the installed transformers' loop, as it is now (a method patched
    since, even after a first generate(), or wrapped, is not: transformers' own loop then runs)."""
    return checked_source((GenerationMixin._sample, GenerationMixin._update_model_kwargs_for_generation),
                          _CHECKED_LOOPS, each=True)


def check_loop_name(loop: str) -> None:
    if loop not in LOOPS:
        raise ValueError(f"set_generate_loop: loop must be one of {', '.join(map(repr, LOOPS))}; got {loop!r}")


def runs_own_loop(model: Any, own_preparation: Any, input_ids: torch.Tensor, generation_config: Any,
                  synced_gpus: bool, model_kwargs: dict[str, Any]) -> bool:
    """Whether ``model``'s ``_sample`` call runs :func:`sample` (see the module's docstring);
    ``own_preparation``: ``SeqzooForCausalLM.prepare_inputs_for_generation`` as defined."""
    return (model.generate_loop == "seqzoo" and loop_checked() and not synced_gpus
            and input_ids.device.type == "cpu" and input_ids.device == model.device
            and not generation_config.return_dict_in_generate
            and model_kwargs.get("use_cache") is True
            and getattr(generation_config, "prefill_chunk_size", None) is None
            and _keeps_method(model, "prepare_inputs_for_generation", own_preparation)
            and _keeps_method(model, "_update_model_kwargs_for_generation",
                              GenerationMixin._update_model_kwargs_for_generation)
            and not model._valid_auto_compile_criteria(model_kwargs, generation_config))


def _keeps_method(model: Any, name: str, function: Any) -> bool:
    """Whether ``model``'s method ``name`` is ``function``: on its class, and on the instance either not set or set
    back to the model's own bound method (as peft's prompt tuning leaves it after a call)."""
    if getattr(type(model), name, None) is not function:
        return False
    own = model.__dict__.get(name)
    return own is None or (getattr(own, "__func__", None) is function and getattr(own, "__self__", None) is model)


def sample(model: Any, input_ids: torch.Tensor, logits_processor: Any, stopping_criteria: Any,
           generation_config: Any, streamer: Any, model_kwargs: dict[str, Any]) -> torch.Tensor:
    """Greedy or multinomial decoding from ``input_ids`` (the prompt, as ``generate()`` prepared it) as transformers'
    ``_sample`` decodes without ``return_dict_in_generate``; returns the prompt and the new tokens."""
    pad_token_id = generation_config._pad_token_tensor
    if pad_token_id is not None:
        pad_token_id = pad_token_id.to(input_ids.device)
    has_eos_stopping_criteria = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
    batch_size = input_ids.shape[0]
    unfinished_sequences = torch.ones(batch_size, dtype=torch.long, device=input_ids.device)
    # Finished rows' tokens are padded once a row may have finished: while none has, padding changes no token.
    pad_finished = False
    stop: _PlainStopping | None | bool = False  # read at the first check, where transformers first calls the criteria
    plain = set(model_kwargs) <= _PLAIN_MODEL_KWARGS  # (use_cache is True: runs_own_loop)
    step: _StepInputs | None = None  # where later steps are built on the last
    model_forward = model.__call__  # (as transformers' loop calls it: a __call__ set on the instance included)

    outputs = model._prefill(input_ids, generation_config, model_kwargs,
                             is_first_iteration=not generation_config.is_assistant)
    # New tokens not yet appended to input_ids: what only a processor, a criterion called, the input preparation or
    # the caller reads (``deferred`` below), appended where one of them is next to read it and at the end.
    pending: list[torch.Tensor] = []
    with model._optimize_model_for_decode():
        while True:
            if step is None:
                model_kwargs = model._update_model_kwargs_for_generation(
                    outputs, model_kwargs, is_encoder_decoder=model.config.is_encoder_decoder)
            else:
                step.advance(outputs)
            logits = outputs.logits[:, -1]
            if (not generation_config.do_sample and _bare_scores(logits_processor) and type(logits) is torch.Tensor
                    and logits.dtype in _EXACT_IN_FLOAT32 and logits.device == input_ids.device):
                # Greedy without processors: the argmax of the logits as they are picks the token transformers' float32
                # copy picks (every value of these dtypes is a float32; nothing changes them in between).
                next_tokens = torch.argmax(logits, dim=-1)
                bare = True
                del logits  # (a view of the output's logits, freed with it below)
            else:
                if pending:
                    input_ids, pending = _appended(input_ids, pending), []
                logits = logits.to(copy=True, dtype=torch.float32, device=input_ids.device)
                scores = logits_processor(input_ids, logits)
                if generation_config.do_sample:
                    probs = torch.nn.functional.softmax(scores, dim=-1)
                    next_tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
                else:
                    next_tokens = torch.argmax(scores, dim=-1)
                bare = False
            del outputs  # (as transformers frees it before the next forward: a prompt's logits may be large)
            if has_eos_stopping_criteria and (pad_finished or pad_token_id is None):
                next_tokens = next_tokens * unfinished_sequences + pad_token_id * (1 - unfinished_sequences)
            # A later step whose token no processor, criterion, streamer or input preparation reads: kept aside.
            deferred = (bare and step is not None and streamer is None and type(input_ids) is torch.Tensor
                        and type(stop) is _PlainStopping and stop.holds(stopping_criteria))
            if deferred:
                pending.append(next_tokens)
            else:
                if pending:
                    input_ids, pending = _appended(input_ids, pending), []
                input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
                if stop is False:
                    stop = _PlainStopping.read(stopping_criteria, input_ids.device)
                if stop is not None and not stop.holds(stopping_criteria):
                    stop = None  # (changed by a processor or criterion: called from now on)
            if stop is None:
                unfinished_sequences = unfinished_sequences & ~stopping_criteria(input_ids, None)
                pad_finished = True
                finished = bool(unfinished_sequences.max() == 0)
            elif input_ids.shape[1] + len(pending) >= stop.max_length:
                finished = True
            elif stop.eos_tokens is not None:
                unfinished_sequences = unfinished_sequences & ~torch.isin(next_tokens, stop.eos_tokens)
                running = int(unfinished_sequences.sum())
                pad_finished, finished = running < batch_size, running == 0
            else:
                finished = False
            if streamer is not None:
                streamer.put(next_tokens.cpu())
            if finished:
                break
            if step is None:
                inputs = model.prepare_inputs_for_generation(input_ids, next_sequence_length=1, **model_kwargs)
                if plain and _builds_on(inputs, model_kwargs, batch_size):
                    step = _StepInputs(inputs, model_kwargs)
            else:
                # (the token as appended: a criterion called or a streamer may have changed it in place since)
                inputs = step.with_token(next_tokens[:, None] if deferred else input_ids[:, -1:])
            outputs = model_forward(**inputs, return_dict=True)
    if pending:
        input_ids = _appended(input_ids, pending)
    if streamer is not None:
        streamer.end()
    return input_ids


def _appended(input_ids: torch.Tensor, tokens: list[torch.Tensor]) -> torch.Tensor:
    """``input_ids`` with the (B,) ``tokens`` appended in order, as one token at a time would append them."""
    return torch.cat([input_ids, torch.stack(tokens, dim=1)], dim=-1)


def _bare_scores(logits_processor: Any) -> bool:
    """Whether ``logits_processor`` is transformers' own list, empty, with transformers' own ``__call__`` (which
    returns the scores it is given)."""
    return type(logits_processor) is LogitsProcessorList and _own_call(LogitsProcessorList) and not logits_processor


def _own_call(cls: type) -> bool:
    """Whether ``cls.__call__`` is the method transformers defines for the class, by where its code was defined (not
    one set on it since, before or after seqzoo was imported, nor a wrapper of it defined elsewhere)."""
    call = cls.__call__
    own = _OWN_CALLS.get((cls, call))  # (by class too: one class's own call set on another is not that one's)
    if own is None:
        code, module = getattr(call, "__code__", None), sys.modules.get(cls.__module__)
        own = (code is not None and module is not None and code.co_filename == getattr(module, "__file__", None)
               and getattr(call, "__qualname__", None) == f"{cls.__qualname__}.__call__")
        _OWN_CALLS[(cls, call)] = own
    return own


_OWN_CALLS: dict[tuple[type, Any], bool] = {}
_EXACT_IN_FLOAT32 = (torch.float32, torch.bfloat16, torch.float16)


class _PlainStopping:
    """transformers' own ``MaxLengthCriteria`` (one that would not warn of passing ``max_position_embeddings`` on the
    way) and at most one ``EosTokenCriteria``, read instead of called at every token: the length they stop at and
    the EOS tokens, checked at every token to be still what was read."""

    __slots__ = ("members", "length", "max_length", "limit", "eos", "eos_tokens")

    @classmethod
    def read(cls, stopping_criteria: Any, device: torch.device) -> _PlainStopping | None:
        """The criteria read, or None for any others (called at every token)."""
        kinds = [type(criterion) for criterion in stopping_criteria]
        if kinds not in ([MaxLengthCriteria], [MaxLengthCriteria, EosTokenCriteria],
                         [EosTokenCriteria, MaxLengthCriteria]) or not all(map(_own_call, _CRITERIA_CLASSES)):
            return None  # (a __call__ set on one of the classes is called)
        by_kind = {type(criterion): criterion for criterion in stopping_criteria}
        length, eos = by_kind[MaxLengthCriteria], by_kind.get(EosTokenCriteria)
        if length.max_position_embeddings is not None and length.max_length - 1 > length.max_position_embeddings:
            return None
        if eos is not None:  # (on the tokens' device, as its call puts it)
            eos.eos_token_id = eos.eos_token_id.to(device)
        return cls(tuple(stopping_criteria), length, eos)

    def __init__(self, members: tuple, length: MaxLengthCriteria, eos: EosTokenCriteria | None) -> None:
        self.members, self.length, self.eos = members, length, eos
        self.max_length, self.limit = length.max_length, length.max_position_embeddings
        self.eos_tokens = None if eos is None else eos.eos_token_id

    def holds(self, stopping_criteria: Any) -> bool:
        """Whether the criteria are still the ones read, with the same settings and transformers' calls."""
        return (len(stopping_criteria) == len(self.members) and all(map(_own_call, _CRITERIA_CLASSES))
                and all(a is b for a, b in zip(stopping_criteria, self.members))
                and self.length.max_length == self.max_length and self.length.max_position_embeddings == self.limit
                and (self.eos is None or self.eos.eos_token_id is self.eos_tokens))


_CRITERIA_CLASSES = (StoppingCriteriaList, MaxLengthCriteria, EosTokenCriteria)


class _StepInputs:
    """A decode step's inputs built on the last step's: what transformers' ``_update_model_kwargs_for_generation``
    (right after each forward) and ``prepare_inputs_for_generation`` would hand the next forward, from the first
    step's ``inputs`` as the model's method prepared them (:func:`_builds_on`). The position ids are kept apart, as
    transformers keeps its own: the forward gets a copy."""

    __slots__ = ("inputs", "positions")

    def __init__(self, inputs: dict[str, Any], model_kwargs: dict[str, Any]) -> None:
        self.inputs = dict(inputs)
        positions = model_kwargs.get("position_ids")
        self.positions = None if positions is None else positions[..., -1:]

    def advance(self, outputs: Any) -> None:
        """After a forward: the cache it returned, the mask grown by a column of ones, the next position."""
        inputs = self.inputs
        cache = output_cache(outputs)
        if cache is not None:
            for key in _CACHE_KEYS:
                if key in inputs:
                    inputs[key] = cache
        if (mask := inputs.get("attention_mask")) is not None:
            # (a column of ones appended, as transformers' torch.cat of the mask and new_ones appends it, in one
            # operation; a tensor subclass is concatenated as there)
            inputs["attention_mask"] = (torch.constant_pad_nd(mask, (0, 1), 1) if type(mask) is torch.Tensor
                                        else torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1))
        if self.positions is not None:
            self.positions = self.positions + 1

    def with_token(self, tokens: torch.Tensor) -> dict[str, Any]:
        """The next forward's inputs: contiguous copies of the (B, 1) new ``tokens`` (sliced as transformers slices
        them) and of the position ids."""
        self.inputs["input_ids"] = tokens.clone(memory_format=torch.contiguous_format)
        if self.positions is not None:
            self.inputs["position_ids"] = self.positions.clone(memory_format=torch.contiguous_format)
        return self.inputs


def _builds_on(inputs: dict[str, Any], model_kwargs: dict[str, Any], batch_size: int) -> bool:
    """Whether the first step's ``inputs`` are the plain ones later steps are built from (module docstring)."""
    if not preparation_checked() or not set(inputs) <= _STEP_INPUTS:
        return False
    cache = model_kwargs.get(GENERATE_CACHE_KWARG)
    tokens, mask, positions = inputs.get("input_ids"), inputs.get("attention_mask"), inputs.get("position_ids")
    kept_positions = model_kwargs.get("position_ids")
    return (isinstance(cache, SeqzooCache) and all(inputs[key] is cache for key in _CACHE_KEYS if key in inputs)
            and isinstance(tokens, torch.Tensor) and tokens.shape == (batch_size, 1)
            and (mask is None or (mask is model_kwargs.get("attention_mask") and mask.dim() == 2))
            and (positions is None) == (kept_positions is None)
            and (positions is None or (isinstance(positions, torch.Tensor) and positions.shape == (batch_size, 1)
                                       and kept_positions.dim() == 2)))


__all__ = ["LOOPS", "check_loop_name", "loop_checked", "runs_own_loop", "sample"]
