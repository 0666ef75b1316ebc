"""Shared model plumbing: the PreTrainedModel base and the causal-LM head every architecture uses. What loading
checks of a checkpoint is in loading.py, how a layer call is checkpointed in checkpointing.py, what a forward checks
of its inputs in inputs.py, the decode step's lean path in decode_step.py, the causal LM's additions to
transformers' generate() in generation.py, its compiled decode steps in compiled_decoding.py, and how its weights
are laid out and saved in weight_storage.py."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import inspect
import logging
import os
import re
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from seqzoo.cache import STEP_PLAN_ATTRIBUTE, SeqzooCache, unchanged_on_error
from seqzoo.layers.mixer import Mixer, global_module_hooks, has_hooks, plain_module_call
from seqzoo.models.checkpointing import layer_checkpoint_function
from seqzoo.models.compat import (
    CACHE_ALIASES,
    GENERATE_CACHE_KWARG,
    check_kwargs,
    model_output,
    output_cache,
    take_cache,
)
from seqzoo.models.compiled_decoding import ATTRIBUTE as COMPILED
from seqzoo.models.compiled_decoding import check_backend, compile_forward, run_compiled_step, runs_eagerly
from seqzoo.models.configuration_utils import saved_class_name, unknown_loading_keyword
from seqzoo.models.decode_loop import check_loop_name, runs_own_loop, sample
from seqzoo.models.decode_plan import fixed_model
from seqzoo.models.decode_step import call_plainly
from seqzoo.models.generation import (
    cache_expanded_for_generation,
    check_cache_implementation,
    check_continued_cache,
    check_generate_cache,
    check_generate_mask,
    check_generate_tensors,
    check_read_mask,
    decode_step_inputs,
    drop_generate_only_inputs,
    explained_assisted_refusal,
    generation_settings,
    mark_beam_search_cache,
    preparation_takes_cache,
    prompt_padded_on_the_left,
    prompt_put_back,
    prompt_read_mask,
    record_read_mask,
    refuse_continuous_batching,
)
from seqzoo.models.generation_setup import ATTRIBUTE as GENERATION_DEFAULTS
from seqzoo.models.generation_setup import PreparedGeneration, signature_read_once
from seqzoo.models.inputs import (
    FLAG_TYPES,
    check_flag,
    check_logits_to_keep,
    float64_token_loss,
    index_labels,
    resolved_return_dict,
)
from seqzoo.models.loading import (
    check_checkpoint_model_type,
    check_config_file,
    check_finite_weights,
    check_generation_config_file,
    check_loaded_tensors,
    check_other_variants_kept,
    check_weight_files,
    explain_load_error,
    held_load_reports,
    hub_snapshot,
    initialise_anew,
    remove_stale_weights,
    weight_file_states,
)
from seqzoo.models.packing import PACKING_KWARGS, find_packing
from seqzoo.models.weight_storage import (
    check_layout_name,
    contiguous_parameters,
    contiguous_state_dict,
    lay_out,
    layout_weight,
    quantised_weights,
)

logger = logging.getLogger("seqzoo")


class SeqzooPreTrainedModel(PreTrainedModel):
    """Base of every seqzoo model. Its decoding state lives in a :class:`~seqzoo.cache.SeqzooCache`; what it can do
    (constant-size decoding, truncated BPTT, cache cropping, generation) is ``config.capabilities``."""

    base_model_prefix = "model"
    main_input_name = "input_ids"
    _skip_keys_device_placement = ["cache", *CACHE_ALIASES]
    # Keyword arguments this model's forward takes beyond its own parameters: the markers of packed rows
    # (seqzoo/models/packing.py), which every causal architecture reads; checked like the parameters.
    extra_forward_kwargs: tuple[str, ...] = PACKING_KWARGS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A class named for its role and written without a docstring (MambaForSequenceClassification(
        # MambaPreTrainedModel, SeqzooForSequenceClassification)) is documented by its role, the last of its bases:
        # help() would otherwise show the first's, the architecture's base ("The base of every Mamba model class").
        if cls.__doc__ is None and len(cls.__bases__) > 1:
            cls.__doc__ = inspect.getdoc(cls.__bases__[-1])

    @classmethod
    def check_config_class(cls, config: Any) -> None:
        """Refuse a config that is not one of this class's architecture: another family's config built that family's
        layers under this class's name (``LSTMForCausalLM(GRUConfig())``), or failed on an attribute it lacks. By
        model_type, not class: a model loaded through a checkpoint's bundled code takes the bundle's config class."""
        config_class = cls.config_class
        if not isinstance(config, PreTrainedConfig):
            raise TypeError(f"{cls.__name__} takes a config (a {getattr(config_class, '__name__', 'PreTrainedConfig')}"
                            f"); got {type(config).__name__} {config!r:.80}")
        expected = getattr(config_class, "model_type", None)
        if expected and config.model_type != expected:
            raise ValueError(f"{cls.__name__} is a model of {config_class.__name__} (model_type {expected!r}); got a "
                             f"{type(config).__name__} (model_type {config.model_type!r}): build that config's model "
                             "with the Auto classes, e.g. AutoModelForCausalLM.from_config(config)")

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        self.check_config_class(config)
        # A config is validated when built, but a field set since (``config.x = ...``, or a keyword of
        # ``from_pretrained``, which transformers sets on the loaded config) was not: the model would be built from
        # it silently (a hybrid of fewer layers than its mixer_types, a seq2seq model of a combination its config
        # refuses).
        validate = getattr(config, "validate_architecture", None)
        if validate is not None:
            validate()
        super().__init__(config, *args, **kwargs)

    @classmethod
    def _from_config(cls, config: Any, **kwargs: Any) -> Any:
        """transformers' ``_from_config`` (``AutoModel.from_config``), which hands every keyword it does not read to
        the model's ``__init__``: a config field (``from_config(config, dropout=0.3)``) or a misspelt name failed
        there with a bare TypeError naming an internal class."""
        for key in sorted(set(kwargs) - _FROM_CONFIG_OPTIONS):
            if isinstance(config, PreTrainedConfig) and key in _config_fields(config):
                raise config_given_with_keywords(cls, "from_config", config, key, "its argument")
            close = difflib.get_close_matches(key, sorted(_FROM_CONFIG_OPTIONS), n=1)
            raise TypeError(f"{cls.__name__}.from_config got unknown keyword argument {key!r}"
                            f"{f' (did you mean {close[0]!r}?)' if close else ''}: it takes "
                            f"{', '.join(sorted(_FROM_CONFIG_OPTIONS))}; set config fields on the config")
        return super()._from_config(config, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop(GENERATION_DEFAULTS, None)  # (a generating model's kept merge: merged again at the next call)
        return state

    def _set_gradient_checkpointing(self, enable: bool = True,
                                    gradient_checkpointing_func: Any = torch.utils.checkpoint.checkpoint,
                                    **kwargs: Any) -> None:
        super()._set_gradient_checkpointing(enable, layer_checkpoint_function(
            self, enable, gradient_checkpointing_func, kwargs.get("every_n_layers", 1)), **kwargs)

    def takes_step(self, input_ids: Any, inputs_embeds: Any, cache: Any, output_hidden_states: bool | None,
                   kwargs: dict[str, Any]) -> bool:
        """Whether this backbone's ``decode_step(input_ids, attention_mask, cache)`` computes a forward call with these
        arguments (no packed rows): a backbone with a lean decode step overrides both (the classic recurrent one
        does). The causal-LM head then calls ``decode_step`` itself, skipping the backbone's module call, unless
        something hooks that call. The call's ``position_ids`` are not handed on (the recurrent backbones read them
        only to find packed rows, ruled out first), unless the class sets ``decode_step_reads_positions``: then
        ``decode_step`` also takes ``position_ids=`` where the call has them (the Transformer's)."""
        return False

    @property
    def device(self) -> torch.device:
        """The first parameter's device, as transformers' ``device`` (``next(self.parameters())``), found without
        building the parameter generator: ``generate()`` reads it twice per token, at about 30 µs a read."""
        first = _first_parameter(self)
        return super().device if first is None else first.device

    @property
    def _is_stateful(self) -> bool:
        # transformers' generate() (5.23 and 5.24 alike) refuses assisted decoding for a model with _is_stateful:
        # a recurrent state cannot be rolled back to an earlier token, which assisted decoding needs. The refusal is a
        # clear error instead of a failure deep inside.
        return not self.config.capabilities.can_crop_cache

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() builds a DynamicCache (and passes it as cache= / past_key_values=, see seqzoo.models.compat)
        # only when this returns True. seqzoo models build their own SeqzooCache in forward() on the first call and
        # return it; generate() feeds it back on every later step.
        return False

    # The modules of this class's own head: when a checkpoint saved with another head (a causal LM loaded into a
    # classifier) lacks them, they are initialised anew instead of refusing the checkpoint.
    head_modules: tuple[str, ...] = ()

    def _init_weights(self, module: nn.Module) -> None:
        # Every token mixer initialises itself the way its paper does, in whichever architecture it sits; children
        # are initialised before their parents, so the mixer's choices win over an architecture's generic rules.
        if isinstance(module, Mixer):
            module.init_weights()
        elif module is getattr(self, "score", None):  # a classification head: torch.nn.Linear's default scale
            bound = 1.0 / module.in_features**0.5
            init.uniform_(module.weight, -bound, bound)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                *args: Any, **kwargs: Any) -> nn.Embedding:
        """transformers' resize, refused where the new vocabulary would leave out a special token of the config
        (a pad, bos, eos or decoder start id at or above its size): generate() could never end on such an eos, and
        the saved folder did not load (the config refused its own ids); refused for a quantised model too."""
        for name, value in (("new_num_tokens", new_num_tokens), ("pad_to_multiple_of", pad_to_multiple_of)):
            # (transformers rounded a negative multiple down, past the check below, took True as 1, and divided by 0)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"resize_token_embeddings: {name}={value!r} is invalid: expected an integer >= 1, "
                                 "or None")
        quantised = quantised_weights(self)
        if quantised:  # (it failed inside torchao or torch's packed Linear, with the embedding resized already and the
            # head and config not: the model no longer ran)
            raise ValueError(f"{type(self).__name__} is quantised ({'; '.join(quantised[:3])}), and quantised "
                             "weights cannot be resized: resize the float model, then quantise it")
        if new_num_tokens is not None:
            size = new_num_tokens
            if pad_to_multiple_of is not None:
                size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
            config = self.config
            named = {name: getattr(config, name, None) for name in
                     ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")}
            outside = [f"{name}={value!r}" for name, value in named.items() if value is not None and any(
                isinstance(token, int) and token >= size for token in (value if isinstance(value, list) else [value]))]
            if outside:
                raise ValueError(
                    f"resize_token_embeddings({new_num_tokens}) leaves {size} token(s), and the config's "
                    f"{', '.join(outside)} would be outside them; resize to more than the largest of them, or set "
                    "the config's ids first (config.pad_token_id = ...)"
                )
        return super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, *args, **kwargs)

    def save_pretrained(self, save_directory: Any, *args: Any, push_to_hub: bool = False, **kwargs: Any) -> None:
        """transformers' ``save_pretrained``, plus the flat code bundle and ``auto_map`` (as ``seqzoo publish``
        writes them), so the folder loads with the Auto classes and ``trust_remote_code=True`` where seqzoo is not
        installed (the lm-eval command line, a serving tool)."""
        if push_to_hub:
            raise ValueError(
                "save_pretrained(push_to_hub=True) would upload the folder without its model card and tokenizer; "
                "use model.push_to_hub(repo_id, tokenizer=...) or `seqzoo publish FOLDER REPO_ID`"
            )
        options = _save_options(type(self), save_directory, args, kwargs)
        if os.path.isfile(save_directory):  # (transformers logs an error and returns; the bundle's write then failed
            # with a bare NotADirectoryError)
            raise ValueError(f"save_pretrained: {str(save_directory)!r} is a file; give a folder to save into (it is "
                             "made if missing)")
        # (a state_dict passed in, as accelerate's get_state_dict(model) gives, holds the same quantised tensors)
        quantised = quantised_weights(self, kwargs.get("state_dict"))
        if quantised:  # (torchao's int8 tensors, and torch's packed ones, failed deep in transformers, with
            # config.json written)
            raise ValueError(
                f"{type(self).__name__} is quantised ({'; '.join(quantised[:3])}), and quantised weights do not "
                "save with save_pretrained: save the float model, and quantise it again after loading"
            )
        if kwargs.get("state_dict") is not None:
            kwargs["state_dict"] = contiguous_state_dict(kwargs["state_dict"])
        variant, is_main_process = options.get("variant"), options.get("is_main_process", True)
        # A class loaded with trust_remote_code=True has _auto_class set: transformers then copies its own code.
        spec = _own_architecture(self) if self._auto_class is None and is_main_process else None
        if spec is not None:  # (a bundle that cannot be made, an architecture defined in a script run as __main__,
            # is refused before anything is written: it failed with the weights already saved)
            _seqzoo_module("hub.bundle").check_bundle(spec)
        if is_main_process:
            check_other_variants_kept(save_directory, variant)
        before = weight_file_states(save_directory, variant)
        with contiguous_parameters(self):
            super().save_pretrained(save_directory, *args, **kwargs)
        if is_main_process:
            remove_stale_weights(save_directory, variant, before)
        if spec is not None:
            _seqzoo_module("hub.bundle").write_bundle(save_directory, spec)

    def push_to_hub(
        self, repo_id: str, *, tokenizer: Any = None, private: bool | None = None, revision: str | None = None,
        commit_message: str | None = None, token: str | None = None, **kwargs: Any,
    ) -> str:
        """Upload this model as ``seqzoo publish`` does: weights, config with ``auto_map``, the code bundle, the
        tokenizer (``tokenizer``, required: ``seqzoo.byte_tokenizer()`` for seqzoo's byte vocabulary) and the
        model card, in one commit. ``license`` (with ``license_name`` and ``license_link`` for ``"other"``) and
        ``training`` (a training record for the card) are passed on to
        :func:`seqzoo.hub.publish`; transformers' other upload options are refused by name."""
        if self._auto_class is not None:  # the bundled copy, where seqzoo's publisher is absent
            result = super().push_to_hub(repo_id, private=private, revision=revision, commit_message=commit_message,
                                         token=token, **kwargs)
            if tokenizer is not None:  # (transformers' upload of a model takes none: the tokenizer's own, beside it,
                # with the upload's options, and into the model's pull request where it opened one: with
                # create_pr=True the model went up as a pull request and the tokenizer straight to the branch)
                shared = {key: kwargs[key] for key in ("commit_description", "tags") if key in kwargs}
                opened = getattr(result, "pr_revision", None) if kwargs.get("create_pr") else None
                tokenizer.push_to_hub(repo_id, private=private, revision=opened or revision, token=token,
                                      commit_message=commit_message or "Upload tokenizer", **shared)
            return result
        unsupported = sorted(set(kwargs) - {"license", "license_name", "license_link", "training"})
        if unsupported:
            raise TypeError(
                f"{type(self).__name__}.push_to_hub does not take {', '.join(unsupported)}: it publishes as "
                "`seqzoo publish` does and takes tokenizer, private, revision, commit_message, token, license, "
                "license_name, license_link and training; for anything else save the folder and upload it with "
                "huggingface_hub"
            )
        return _seqzoo_module("hub.publishing").publish(
            self, repo_id, tokenizer=tokenizer, private=private, revision=revision, commit_message=commit_message,
            token=token, **kwargs,
        )

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: Any, *args: Any, strict: bool = True, allow_nonfinite: bool = False,
        **kwargs: Any,
    ):
        """transformers' loading, made strict: a checkpoint of another architecture, with missing or mis-shaped
        tensors or tensors the model has no place for (a config.json of fewer layers than the weights; another
        head's tensors are fine), or holding NaN or infinite weights raises ``ValueError`` instead of silently
        initialising weights at random, dropping weights or computing garbage; a damaged weights file raises naming
        the file. ``strict=False`` restores transformers' lenient behaviour for the tensors (missing and mis-shaped
        ones initialised anew, others ignored), ``allow_nonfinite=True`` accepts non-finite weights."""
        for name, value in (("strict", strict), ("allow_nonfinite", allow_nonfinite)):
            if type(value) is not bool:  # (a string "false" from a command line or a YAML file is true)
                raise TypeError(f"{cls.__name__}.from_pretrained: {name} must be True or False; got {value!r}")
        source = pretrained_model_name_or_path
        if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
            # (transformers read the file as a config.json: "It looks like the config file at 'model.safetensors' is
            # not a valid JSON file"; the Auto classes take it for a Hub id)
            raise ValueError(f"{cls.__name__}.from_pretrained: {str(source)!r} is a file; give the folder that holds "
                             "the model's config.json and weights")
        check_config_file(pretrained_model_name_or_path, kwargs)
        config = kwargs.get("config")
        if isinstance(config, PreTrainedConfig) and (config.architectures or not strict):
            # (the Auto classes pass the checkpoint's own config)
            saved_as = saved_class_name(config.architectures, type(config).__name__)
        elif isinstance(config, PreTrainedConfig):
            # A config of the user's, which names no class: the checkpoint's own says what head it was saved with
            # (a tagger's score loaded as a sequence classifier's, silently). A source without one is left to the load.
            try:
                saved_as = check_checkpoint_model_type(cls, pretrained_model_name_or_path, kwargs)
            except OSError:
                saved_as = None
        elif strict:
            saved_as = check_checkpoint_model_type(cls, pretrained_model_name_or_path, kwargs)
        else:
            saved_as = None
        check_generation_config_file(pretrained_model_name_or_path, kwargs)
        check_weight_files(pretrained_model_name_or_path, kwargs)
        want_info = kwargs.pop("output_loading_info", False)
        allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
        # Load leniently and judge here, so the error names every offending tensor with both shapes. (Leniently also
        # with strict=False: its mis-shaped tensors are then re-initialised, as the strict error says.)
        try:
            with held_load_reports() as reports:  # (told once the load is accepted: not before seqzoo's refusal)
                model, info = super().from_pretrained(
                    pretrained_model_name_or_path, *args, output_loading_info=True, ignore_mismatched_sizes=True,
                    **kwargs,
                )
        except Exception as err:
            reports.release()  # (transformers' own error points to its report: "look at the ... above report!")
            explain_load_error(err, pretrained_model_name_or_path)
            unknown = _unknown_init_keyword(err, kwargs)
            if unknown is not None and isinstance(config, PreTrainedConfig) and unknown in _config_fields(config):
                # (transformers applies keywords to the config it loads, not to one given with config=)
                raise config_given_with_keywords(cls, "from_pretrained", config, unknown, "config=") from None
            if unknown is not None:
                config_class = type(config) if isinstance(config, PreTrainedConfig) else cls.config_class
                raise unknown_loading_keyword(config_class, cls, unknown) from None
            raise
        snapshot = hub_snapshot(pretrained_model_name_or_path, kwargs)
        if snapshot is not None:  # a repo id: its files, now in the Hub cache, are checked as a local folder's
            check_config_file(snapshot, kwargs)
            check_generation_config_file(snapshot, kwargs)
            check_weight_files(snapshot, kwargs)
        # What does not fit first: a tensor that was missing or mis-shaped is left uninitialised here, and would
        # otherwise be reported as a non-finite weight of the checkpoint.
        if strict:
            check_loaded_tensors(cls, model, info, pretrained_model_name_or_path, saved_as, allow_mismatch,
                                 _head_module_names())
        if not strict or allow_mismatch:  # (what ignore_mismatched_sizes=True lets through starts anew too)
            initialise_anew(model, info)
        if not allow_nonfinite:
            check_finite_weights(model, pretrained_model_name_or_path)
        reports.release()
        return (model, info) if want_info else model


def _save_options(cls: type, save_directory: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The options of transformers' ``save_pretrained`` this call gives, by name. Without ``push_to_hub`` it reads no
    other keyword: one it would drop is refused by name (a misspelt ``max_shard_sise``), except two of transformers
    4's: ``safe_serialization=True`` (what transformers 5 always does: dropped; ``False`` is refused) and
    ``save_function`` (accelerate's examples pass it; dropped with a warning), and a tokenizer's own options that a
    pipeline's save passes to both (``legacy_format``, ``filename_prefix``: dropped here)."""
    signature = inspect.signature(PreTrainedModel.save_pretrained)
    extra = [name for name, p in signature.parameters.items() if p.kind is p.VAR_KEYWORD]
    if kwargs.get("safe_serialization", True) is not True:
        raise ValueError(f"{cls.__name__}.save_pretrained: transformers 5 writes safetensors only "
                         f"(safe_serialization={kwargs['safe_serialization']!r}); for a pickle of the weights use "
                         "torch.save(model.state_dict(), path)")
    if "save_function" in kwargs:
        logger.warning("%s.save_pretrained: save_function is not read by transformers 5, which writes the weights as "
                       "safetensors itself (on the main process: is_main_process=...)", cls.__name__)
    given = {k: v for k, v in kwargs.items() if k not in _TRANSFORMERS_4_SAVE_OPTIONS + _TOKENIZER_SAVE_OPTIONS}
    try:
        bound = signature.bind(None, save_directory, *args, **given)
    except TypeError as err:
        raise TypeError(f"{cls.__name__}.save_pretrained: {err}") from None
    unknown = sorted(bound.arguments.pop(extra[0], {})) if extra else []
    if unknown:
        known = [name for name, p in signature.parameters.items()
                 if p.kind is p.POSITIONAL_OR_KEYWORD and name not in ("self", "save_directory", "push_to_hub")]
        hints = [name + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(name, known, n=1))
                         else "") for name in unknown]
        raise TypeError(f"{cls.__name__}.save_pretrained got unknown keyword argument(s) {', '.join(hints)}; it "
                        f"takes {', '.join(known)}")
    for name in _TRANSFORMERS_4_SAVE_OPTIONS + _TOKENIZER_SAVE_OPTIONS:
        kwargs.pop(name, None)
    return bound.arguments


_TRANSFORMERS_4_SAVE_OPTIONS = ("safe_serialization", "save_function")
# A tokenizer's own save options, which transformers' Pipeline.save_pretrained passes to the model's save as well
# (transformers' model save drops them; they apply to the tokenizer saved beside it).
_TOKENIZER_SAVE_OPTIONS = ("legacy_format", "filename_prefix")


# The keywords transformers' _from_config reads itself (the rest it hands to the model's __init__).
_FROM_CONFIG_OPTIONS = frozenset({"dtype", "torch_dtype", "attn_implementation", "experts_implementation"})


def _config_fields(config: PreTrainedConfig) -> set[str]:
    return {f.name for f in dataclasses.fields(config)} | set(config.attribute_map)


def config_given_with_keywords(cls: type, method: str, config: PreTrainedConfig, key: str, how: str) -> TypeError:
    """The error for a config field given as a keyword beside a config object, which nothing applies to it."""
    return TypeError(f"{cls.__name__}.{method} got the keyword {key!r}, a field of {type(config).__name__}, beside a "
                     f"config passed as {how}: keywords are not applied to a config given this way; set it on the "
                     f"config first (config.{key} = ...), or build the config with it")


def _unknown_init_keyword(err: Exception, kwargs: dict[str, Any]) -> str | None:
    """The keyword of ``kwargs`` that a model's ``__init__`` refused in ``err`` (transformers hands the model what
    neither its loading nor the config takes), or None for any other error."""
    match = re.search(r"__init__\(\) got an unexpected keyword argument '([^']+)'", str(err))
    return match.group(1) if type(err) is TypeError and match and match.group(1) in kwargs else None


def _head_module_names() -> set[str]:
    """The head modules of every seqzoo model class (``lm_head``, ``score``, a plugin's): a checkpoint saved with one
    of them loads into a class with another head, or into a backbone, without them."""
    names, pending = set(), [SeqzooPreTrainedModel]
    while pending:
        klass = pending.pop()
        names.update(klass.head_modules)
        pending.extend(klass.__subclasses__())
    return names


class SeqzooForCausalLM(SeqzooPreTrainedModel, PreparedGeneration, GenerationMixin):
    """Embedding backbone (``self.model``) + linear head over the vocabulary (``self.lm_head``)."""

    head_modules = ("lm_head",)

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    base_model_class: type[nn.Module]

    def __init__(self, config: Any) -> None:
        self.check_config_class(config)  # (before its capabilities are read)
        if not config.capabilities.can_generate:
            raise ValueError(
                f"{type(self).__name__} needs a causal model, but this config is bidirectional: every position's "
                "output depends on the tokens after it, so it cannot predict the next token. Use it as an encoder: "
                "AutoModelForSequenceClassification or AutoModelForTokenClassification"
            )
        super().__init__(config)
        self.model = self.base_model_class(config)
        self.lm_head = nn.Linear(config.output_dim, config.vocab_size, bias=getattr(config, "decoder_bias", False))
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        r"""
        cache: the decoding state to continue from (``past_key_values`` and ``cache_params`` are accepted as older
            names of the same argument).
        labels: (batch, sequence_length) token ids; shifted inside, -100 is ignored.
        logits_to_keep: if an int > 0, compute logits only for the last that many positions (generation).
        kwargs: only what :data:`seqzoo.models.compat.PASSTHROUGH_KWARGS` lists, or what the backbone names in
            ``extra_forward_kwargs``; anything else raises.
        """
        # (type checks only, and only the flags' own types on a decode step: a flag given as a string "no" was true,
        # and logits_to_keep=-1 kept every position)
        if (type(logits_to_keep) is not int or logits_to_keep < 0 or type(use_cache) not in FLAG_TYPES
                or type(return_dict) not in FLAG_TYPES or type(output_hidden_states) not in FLAG_TYPES):
            check_logits_to_keep(logits_to_keep)
            for name, flag in (("use_cache", use_cache), ("return_dict", return_dict),
                               ("output_hidden_states", output_hidden_states)):
                check_flag(name, flag)
        compiled = self.__dict__.get(COMPILED)
        if (compiled is not None and input_ids is not None and input_ids.shape[-1] == 1 and labels is None
                and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and (cache is not None or any(kwargs.get(name) is not None for name in CACHE_ALIASES))
                and not runs_eagerly(self)):
            args = (input_ids, attention_mask, position_ids, cache, inputs_embeds, labels, use_cache,
                    output_hidden_states, return_dict, logits_to_keep)
            check_kwargs({k: v for k, v in kwargs.items() if k not in CACHE_ALIASES}, forward_parameters(self),
                         f"{type(self).__name__}.forward")
            return run_compiled_step(self, compiled, args, kwargs)
        cache = take_cache(cache, kwargs)
        # A decode step of a cache planned by an earlier forward, its prompt's or a step's (classic/step_plan.py).
        plan = cache.__dict__.get(STEP_PLAN_ATTRIBUTE) if isinstance(cache, SeqzooCache) else None
        if (plan is not None and not kwargs and labels is None and inputs_embeds is None and position_ids is None
                and not output_hidden_states and (use_cache if use_cache is not None else self.config.use_cache)):
            output = plan.step(self, input_ids, attention_mask, cache, return_dict, logits_to_keep)
            if output is not None:
                return output
        if kwargs:
            check_kwargs(kwargs, forward_parameters(self), f"{type(self).__name__}.forward")
        return_dict = resolved_return_dict(self, return_dict)
        backbone = self.model
        # Looked up on the class: a module put in the backbone's place (a wrapper, perhaps one that hands attribute
        # reads on to the backbone it wraps) is always called.
        takes_step = getattr(type(backbone), "takes_step", None)
        stepped = (labels is None and not kwargs and takes_step is not None
                   and (use_cache if use_cache is not None else self.config.use_cache)
                   and takes_step(backbone, input_ids, inputs_embeds, cache, output_hidden_states, kwargs)
                   and not global_module_hooks() and not has_hooks(backbone) and plain_module_call(type(backbone))
                   and find_packing(backbone, input_ids, inputs_embeds, attention_mask, position_ids, cache,
                                    use_cache, kwargs) is None)
        # A step that fails (in the head or the loss too: the logits of a long prompt are where memory runs out)
        # leaves the cache it was given as it was, to retry or continue (the backbone keeps it so for its layers).
        with unchanged_on_error(cache):
            if stepped:
                # A decode step the backbone runs itself: called directly, since nothing hooks its module call.
                positions = ({"position_ids": position_ids} if position_ids is not None
                             and getattr(type(backbone), "decode_step_reads_positions", False) else {})
                hidden_states = backbone.decode_step(input_ids, attention_mask, cache, **positions)
                new_cache, all_hidden_states, attentions = cache, None, None
            else:
                outputs: BaseModelOutputWithPast = backbone(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    cache=cache,
                    inputs_embeds=inputs_embeds,
                    use_cache=use_cache,
                    output_hidden_states=output_hidden_states,
                    return_dict=True,
                    **{k: v for k, v in kwargs.items() if k != "num_items_in_batch"},
                )
                hidden_states = outputs.last_hidden_state
                new_cache = output_cache(outputs)
                all_hidden_states, attentions = outputs.hidden_states, getattr(outputs, "attentions", None)
            if isinstance(logits_to_keep, int):
                hidden_states = hidden_states[:, -logits_to_keep:] if logits_to_keep > 0 else hidden_states
            else:
                hidden_states = hidden_states[:, logits_to_keep]
            logits = call_plainly(self.lm_head, hidden_states) if stepped else self.lm_head(hidden_states)

            loss = None
            if labels is not None:
                labels = index_labels(labels, logits.shape[:2], self.config.vocab_size, "vocab_size", "token ids")
                loss = float64_token_loss(self.loss_function, logits, labels, kwargs.get("num_items_in_batch"))
                if loss is None:
                    loss = self.loss_function(
                        logits=logits, labels=labels, vocab_size=self.config.vocab_size,
                        num_items_in_batch=kwargs.get("num_items_in_batch"),
                    )
        # The plan of the cache's later decode steps, made once after its prefill or its first step (each planned
        # step checks that it is a plain decode step of the model the plan was made from).
        plan_steps = getattr(type(backbone), "plan_steps", None)
        if (plan_steps is not None and isinstance(new_cache, SeqzooCache)
                and new_cache.__dict__.get(STEP_PLAN_ATTRIBUTE) is None
                and not torch._C._is_torch_function_mode_enabled()):  # (a mode would see the plan read its tensors)
            plan = plan_steps(backbone, self, new_cache)
            if plan is not None:
                new_cache.__dict__[STEP_PLAN_ATTRIBUTE] = plan

        if not return_dict:
            output = (logits, new_cache, all_hidden_states)
            output = tuple(v for v in output if v is not None)
            return (loss, *output) if loss is not None else output
        return model_output(
            CausalLMOutputWithPast,
            cache=new_cache,
            loss=loss,
            logits=logits,
            hidden_states=all_hidden_states,
            attentions=attentions,
        )

    def compile_decoding(self, enabled: bool = True, **options: Any) -> SeqzooForCausalLM:
        """Run every later decode step of this model (one token per row, continuing a cache, gradients off: what
        ``generate()`` and a hand-written cached loop do) through ``torch.compile`` of this forward; every other
        call stays eager. ``options`` go to ``torch.compile`` (default ``fullgraph=True``, inductor).

        On CPU, inductor fuses each layer's chain of small operations, which costs more in dispatch than in
        arithmetic at decode sizes. BENCHMARKS.md ("Decode against each family's CPU runtime") gives the speed-up
        and the compile time, paid once per process on the first steps (up to minutes for a large model on a small
        CPU), and again for each new kind of step (the first after a prompt, a batch of one, a padding mask, the
        first change of batch size or cache length): a few ordinary ``generate()`` calls reach dynamo's limit of 8
        graphs, after which a new kind of step runs eagerly (one warning).
        ``compile_decoding(False)`` returns to eager steps. Returns the model.

        With inductor, one sequence's matrix products by float32 weights stored by rows (the model as built) are
        written as inductor's own reduction loops rather than handed to MKL (``seqzoo/kernels/one_row_products.py``,
        a graph pass added to inductor's options; a ``mode`` becomes the options it stands for), where seqzoo's
        products are chosen over torch's when this is called (``seqzoo.kernels.product_choice``: by default
        everywhere but where MKL runs on an Intel processor, whose MKL product was the faster). Another backend, or
        a ``post_grad_custom_pre_pass`` of your own, in ``options={...}`` (``None``: none) or in
        ``torch._inductor.config``, compiles without it.

        Before each compiled step dynamo checks the model's modules, parameters and config against those it traced
        (its guards). Where nothing changes the model once it decodes, ``compile_decoding(**fixed_model_options())``
        (``seqzoo.models.compiled_decoding``; what ``seqzoo generate --compile`` does) leaves those checks out, about
        170 µs of a 1.5 ms step of a small RWKV-7 (BENCHMARKS.md, run AM); a change made after the first compiled
        step then goes unseen."""
        if type(enabled) is not bool:  # (a string "no" is true)
            raise TypeError(f"compile_decoding: enabled must be True or False; got {enabled!r}")
        if not enabled:
            if options:
                raise TypeError(f"compile_decoding(False) takes no torch.compile options; got {', '.join(options)}")
            self.__dict__.pop(COMPILED, None)
            return self
        check_backend(options.get("backend"))
        self.__dict__[COMPILED] = compile_forward(self, {"fullgraph": True, **options})
        return self

    def fixed_while_decoding(self) -> contextlib.AbstractContextManager[SeqzooForCausalLM]:
        """A block in which you promise that this model stays as it is, for faster eager decode steps::

            with model.fixed_while_decoding():
                output = model.generate(input_ids, max_new_tokens=64)

        The classic models' and RWKV-7's cached steps check at every token that the model's modules, weights, hooks,
        methods and mode are those they planned with (seqzoo/models/README.md, "The decode step's shortcut"). In the
        block they check it at a cache's first step there and not at its later ones: 3-7% of a small model's step
        (BENCHMARKS.md, run AN). The classic models' input table's values are checked against the weights at the
        block's first new cache, not at each new cache (BENCHMARKS.md, run AX: a server holding its model fixed saves
        that check on every request). The other families' steps are unchanged. Each call's own checks stay (ids, cache,
        mask, gradients, autocast, global hooks, torch function modes), and so do the checks of what every model
        shares (a forward or ``__call__`` put on a class, ``F.embedding`` replaced); weights changed in place are read
        as outside. A change made to the model inside the block after a cache's first step there (a weight or module
        replaced, a hook or a forward set on one of its modules, ``train()``, a weight's dtype changed through
        ``.data``, ``config.output_hidden_states``) goes unseen by that cache's steps until the block ends, and a
        weight's values changed inside the block without a trace on the tensor (through ``.data``, by a fused
        optimizer) go unseen by the input table of the block's later caches too.
        ``seqzoo generate`` decodes in such a block. It belongs to the context it is entered in (``contextvars``: this
        thread, and tasks or copies of the context made in it) while it is open, and may be nested; once it ends,
        nothing trusts it. Yields the model."""
        return fixed_model(self)

    def set_head_layout(self, layout: str) -> SeqzooForCausalLM:
        """How the vocabulary head's weight is stored in memory: ``"rows"`` (contiguous (vocab, hidden), as built,
        trained and loaded) or ``"columns"`` (its transpose contiguous, as BlinkDL's ``rwkv`` package holds it).

        Only the memory order changes: the parameter stays the same object with the same shape, values, name and
        gradient behaviour (an embedding tied to it changes with it), and ``save_pretrained`` writes the same file.
        On a CPU the product of one or two rows with a head of 4096 tokens or more ran 1.1-3.1x faster by columns,
        and that of eight rows 0.75-1.5x as fast (BENCHMARKS.md, "The vocabulary head's layout"): use ``"columns"``
        to decode one sequence at a time, and keep ``"rows"`` for batched decoding and training.
        :meth:`set_weight_layout` lays out every weight matrix of the model the same way.

        The order lasts while the parameter does: what puts a new one in its place starts by rows again (loading,
        ``resize_token_embeddings``, ``load_state_dict(..., assign=True)``). Set it after those, and before
        accelerate offloads the head. A gradient already there is laid out with the weight, but an optimizer's state
        (Adam's moments) keeps the order it was made in: torch's fused optimizers (``fused=True``) then compute wrong
        values on the CPU, without an error, and so does state loaded with ``optimizer.load_state_dict`` (it keeps
        the order it was saved in). Set the order before an optimizer's first step and do not resume a fused
        optimizer's state saved in the other order, or train with torch's default implementation, which reads each
        tensor in its own order. Returns the model."""
        check_layout_name("set_head_layout", layout)
        head = self.get_output_embeddings()
        weight = layout_weight(head, "weight", f"set_head_layout: the vocabulary head ({type(head).__name__})",
                                "a floating-point (vocab, hidden) Parameter")
        lay_out(weight, layout)
        return self

    def set_weight_layout(self, layout: str) -> SeqzooForCausalLM:
        """How the weight matrices that a decode step multiplies by are stored: ``"rows"`` (contiguous (out, in), as
        built, trained and loaded) or ``"columns"``: each matrix whose output is at least as wide as its input (the
        vocabulary head, up-projections, square maps) by columns, its transpose contiguous, as BlinkDL's ``rwkv``
        package holds its matrices, and the narrower ones (down-projections) by rows, which is faster for them. The
        matrices are the weight of every ``nn.Linear`` (the vocabulary head's included; an embedding tied to it
        changes with it) and the mixers' ``projection_parameters`` (the classic cells' ``weight_ih`` /
        ``weight_hh``). Other parameters (embeddings, convolutions, RWKV-7's low-rank maps, which are multiplied the
        other way round, norms) keep their order.

        Only the memory order changes, as with :meth:`set_head_layout`: the same Parameters, values, names and
        gradients, and ``save_pretrained`` writes the same file. On the 2-core CPU, a step of one sequence ran up to
        1.48x faster this way, and the product of one row with a matrix streamed from memory 1.15-1.8x faster by
        columns when the output is 1.5-6 times as wide as the input, 0.75-0.93x as fast when it is narrower
        (BENCHMARKS.md, "Every weight matrix by columns"): use ``"columns"`` to decode one sequence at a time on a
        CPU, and keep ``"rows"`` for training.

        Every matrix is checked before any changes: a quantised or sharded weight (a tensor subclass), a weight a
        parametrization computes (weight_norm, some adapters) or one accelerate offloads is refused by name. The
        order lasts while the parameters do, and a fused optimizer with state from before the change computes wrong
        values (see :meth:`set_head_layout`). Returns the model."""
        check_layout_name("set_weight_layout", layout)
        head = self.get_output_embeddings()
        weights: dict[int, nn.Parameter] = {}
        for name, module in self.named_modules():
            names = ("weight",) if isinstance(module, nn.Linear) or module is head else ()
            for parameter_name in (*names, *getattr(type(module), "projection_parameters", ())):
                where = f"set_weight_layout: {name or 'the model'}.{parameter_name} ({type(module).__name__})"
                weight = layout_weight(module, parameter_name, where, "a floating-point 2-d Parameter")
                weights[id(weight)] = weight
        for weight in weights.values():
            lay_out(weight, "columns" if layout == "columns" and weight.shape[0] >= weight.shape[1] else "rows")
        return self

    def __getstate__(self) -> dict[str, Any]:
        # As torch drops what Module.compile() sets: a copy or a pickle decodes eagerly (the compiled forward is
        # this model's own: a copy holding it would decode with the original's weights).
        state = super().__getstate__()
        state.pop(COMPILED, None)
        return state

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = decode_step_inputs(self, args, kwargs)
        if inputs is None:
            check_continued_cache(self, args, kwargs)
            inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        drop_generate_only_inputs(inputs)
        if GENERATE_CACHE_KWARG != "past_key_values" and inputs.get(GENERATE_CACHE_KWARG) is not None:
            # Callers written for the older name read the step's cache as past_key_values (peft's prompt tuning
            # decides from it whether to prepend the soft prompt again); the forward takes the same object under
            # both names.
            inputs["past_key_values"] = inputs[GENERATE_CACHE_KWARG]
        return inputs

    # generate() validates its keyword arguments against this method's signature: keep transformers' own.
    prepare_inputs_for_generation.__signature__ = inspect.signature(GenerationMixin.prepare_inputs_for_generation)

    def _prepare_position_ids_for_generation(self, inputs_tensor: torch.Tensor, model_kwargs: dict) -> Any:
        """None for a model whose every layer keeps a recurrent state: it reads position ids only to find the
        documents of a packed row, which generate() never passes (a row of one document, or padding under a mask),
        so the ids generate() would build, grow by one and slice at every step would change nothing but the time.
        Position ids a caller passes to generate() are still handed on. Attention layers read them (RoPE)."""
        if self.config.capabilities.constant_state_decode:
            return None
        return super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)

    init_continuous_batching = refuse_continuous_batching

    # Which loop generate()'s greedy and sampled modes run (set_generate_loop).
    generate_loop = "seqzoo"

    def set_generate_loop(self, loop: str) -> SeqzooForCausalLM:
        """Which loop ``generate()`` decodes with in its greedy and sampled modes: ``"seqzoo"`` (the default;
        ``models/decode_loop.py``) makes the calls transformers' loop makes and gives the same tokens, but builds each
        step's inputs from the last step's instead of through transformers' general preparation at every token
        (20-65 µs a token less on a 2-core CPU: BENCHMARKS.md, run AB); ``"transformers"``: transformers' own
        ``_sample``. seqzoo's loop steps aside by itself for what it was not checked against (another release of
        transformers, ``return_dict_in_generate``, tokens off the CPU ...). Not saved with the model. Returns the
        model."""
        check_loop_name(loop)
        self.generate_loop = loop
        return self

    @signature_read_once  # (generate() reads it at every call: whether it takes ``inputs_tensor``)
    def _sample(self, input_ids: torch.Tensor, logits_processor: Any, stopping_criteria: Any, generation_config: Any,
                synced_gpus: bool = False, streamer: Any = None, **model_kwargs: Any) -> Any:
        # generate() runs its greedy and multinomial modes through the model class's _sample: seqzoo's loop where it
        # applies (models/decode_loop.py), else transformers' own.
        if runs_own_loop(self, SeqzooForCausalLM.prepare_inputs_for_generation, input_ids, generation_config,
                         synced_gpus, model_kwargs):
            return sample(self, input_ids, logits_processor, stopping_criteria, generation_config, streamer,
                          model_kwargs)
        return super()._sample(input_ids, logits_processor, stopping_criteria, generation_config,
                               synced_gpus=synced_gpus, streamer=streamer, **model_kwargs)

    def generate(self, *args: Any, cache: Any = None, **kwargs: Any) -> Any:
        """transformers' ``generate``; a cache to continue from may be passed as ``cache`` on every supported
        release (or under its older names ``past_key_values`` / ``cache_params``). A right-padded prompt is decoded
        padded on the left (:func:`~seqzoo.models.generation.prompt_padded_on_the_left`), and put back as it was
        given in the returned sequences and cache."""
        check_generate_tensors(self, args, kwargs)
        cache = take_cache(cache, kwargs)
        config = generation_settings(self, args, kwargs)
        check_cache_implementation(self, config, kwargs)
        check_generate_mask(self, args, kwargs)
        read = prompt_read_mask(self, args, kwargs, config)  # (as given, before a right-padded prompt is rolled)
        args, kwargs, rolled = prompt_padded_on_the_left(self, args, kwargs, config, cache)
        takes_cache = preparation_takes_cache(self)
        use_cache = check_generate_cache(self, cache, config, kwargs)
        checked = check_read_mask(self, cache, read)
        if cache is None and use_cache is not False and takes_cache:
            # generate() builds no cache for a model that declines the default DynamicCache, but some of its modes
            # (assisted decoding) need one before the first forward. Not when a wrapper has replaced the step's
            # input preparation with one that does not name the cache (peft's prompt tuning): generate() would
            # refuse the keyword there, and the first forward builds the cache instead.
            cache = SeqzooCache.for_model(self)
        if cache is not None:
            # Under the name the installed release looks for, so that it slices the already-cached prompt tokens off.
            kwargs[GENERATE_CACHE_KWARG] = cache
        with cache_expanded_for_generation(cache, config, args, kwargs), explained_assisted_refusal(self):
            result = super().generate(*args, **kwargs)
        if rolled is not None:
            result = prompt_put_back(result, cache, rolled)
        record_read_mask(cache, read, checked, result, config, kwargs)
        return mark_beam_search_cache(result, cache, config, kwargs)


def _first_parameter(module: nn.Module) -> nn.Parameter | None:
    """What ``next(module.parameters())`` yields (own parameters first, then each child's in registration order), or
    None for a module without parameters."""
    for parameter in module._parameters.values():
        if parameter is not None:
            return parameter
    for child in module._modules.values():
        if child is not None:
            found = _first_parameter(child)
            if found is not None:
                return found
    return None


def forward_parameters(module: nn.Module) -> tuple[str, ...]:
    """The keyword arguments ``module.forward`` names, plus those its backbone forwards (``extra_forward_kwargs``)."""
    cls = type(module)
    names = _FORWARD_PARAMETERS.get(cls)
    if names is None:
        parameters = list(inspect.signature(cls.forward).parameters.values())[1:]  # after self
        # Named parameters only: `**kwargs` is where the unknown ones land, not a keyword called "kwargs".
        names = tuple(p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
        names += tuple(module.extra_forward_kwargs)
        _FORWARD_PARAMETERS[cls] = names
    return names


_FORWARD_PARAMETERS: dict[type, tuple[str, ...]] = {}


def _seqzoo_module(name: str) -> Any:
    # By name, so that the code bundle, which follows every import statement, does not take seqzoo's publishing
    # code along: a bundled model saves and uploads through transformers' own remote-code support instead.
    return importlib.import_module(f"seqzoo.{name}")


def _own_architecture(model: nn.Module) -> Any:
    """The registered architecture of ``model``, or None (with a warning) for a model seqzoo does not know, whose
    folder then carries no code bundle."""
    registry = _seqzoo_module("registry")
    try:
        return registry.architecture_for_model_type(model.config.model_type)
    except ValueError:
        logger.warning("%s (model_type %r) is not a registered seqzoo architecture, so its saved folder carries no "
                       "code bundle and loads only where its code is imported; register it with "
                       "seqzoo.register_architecture", type(model).__name__, model.config.model_type)
        return None


def backbone_cache_argument(model: nn.Module, cache: Any, kwargs: dict[str, Any]) -> Any:
    """A backbone forward's first step: the cache under any of its names, and no keyword argument it does not use."""
    cache = take_cache(cache, kwargs)
    check_kwargs(kwargs, forward_parameters(model), f"{type(model).__name__}.forward")
    return cache
