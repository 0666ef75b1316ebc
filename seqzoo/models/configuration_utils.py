"""Shared configuration base: the fields every seqzoo architecture has, and validation helpers.

Every field is validated when the config is built (also when it is loaded from a config.json); a bad value raises
``ValueError`` naming the field, the value seen and what is allowed.
"""

from __future__ import annotations

import contextvars
import difflib
import logging
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Iterable

import torch
from transformers import PreTrainedConfig

from seqzoo.cache import ATTENTION, RECURRENT
from seqzoo.models.compat import STRICT, source_fingerprint

logger = logging.getLogger("seqzoo")


@dataclass(frozen=True)
class Capabilities:
    """What a model built from a config can do, derived from its layers (and flags such as bidirectionality), so
    code and tests ask for a capability instead of an architecture's name."""

    constant_state_decode: bool  # O(1) memory and time per decoded token: every layer carries a fixed-size state
    supports_tbptt: bool  # truncated backpropagation through time: every layer hands a state to the next chunk
    can_crop_cache: bool  # the cache can be rolled back (assisted decoding): every layer keeps K/V
    can_generate: bool  # causal: a token's output depends only on earlier tokens

    @classmethod
    def of_layers(cls, cache_layer_kinds: Iterable[str], causal: bool = True) -> "Capabilities":
        kinds = list(cache_layer_kinds)
        recurrent = all(kind == RECURRENT for kind in kinds)
        return cls(
            constant_state_decode=causal and recurrent,
            supports_tbptt=causal and recurrent,
            can_crop_cache=causal and all(kind == ATTENTION for kind in kinds),
            can_generate=causal,
        )


# What ``config.problem_type`` may be (transformers' values; None: inferred from num_labels and the labels' dtype).
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
# What ``config.classifier_pooling`` may be (see seqzoo.models.heads.SeqzooForSequenceClassification).
POOLINGS = ("last", "mean", "first+last")


# The dtypes a model computes in (``dtype=``): torch's float8 types are floating point, but store only.
COMPUTE_DTYPES = frozenset({torch.float32, torch.bfloat16, torch.float16, torch.float64})


class SeqzooConfig(PreTrainedConfig):
    """Fields common to all seqzoo architectures (HF names; their defaults, where an architecture sets its own, are
    its config class's: ``LSTMConfig().num_hidden_layers``), and:

    Args:
        vocab_size: vocabulary size (default 258: seqzoo's byte tokenizer, 256 bytes, pad and EOS).
        hidden_size: the model's width (of each recurrent layer's state in the recurrent families).
        num_hidden_layers: number of layers.
        initializer_range: std of the normal init of the token embedding (and of whatever else each architecture
            says; default 0.02, 1.0 in the classic recurrent LMs).
        tie_word_embeddings: share the output layer's weight with the token embedding (default True; False for
            RWKV-7).
        use_cache: whether a forward not told otherwise returns the decoding cache (default True; never while
            the model is in training mode).
        pad_token_id, bos_token_id, eos_token_id: special token ids, each in ``[0, vocab_size)`` or None (default);
            ``eos_token_id`` may be a list of ids.
        bidirectional: run every layer left to right and right to left and join the two (an encoder for
            classification and tagging; it cannot generate). For the recurrent families only.
        bidirectional_merge: ``"concat"`` (the classic BiRNN; RNN, LSTM and GRU, whose next layer reads both) or
            ``"sum"`` (every family; blocks with a residual stream keep its width). Default: ``"concat"`` for the
            RNN, LSTM, GRU and the encoder-decoders, else ``"sum"``.
        classifier_pooling: what sequence classification reads: ``"last"`` real token (where a causal model has
            seen everything), ``"mean"`` of the real tokens, or ``"first+last"`` side by side (a bidirectional
            encoder's two directions each see everything at one end). Default: ``"first+last"`` for a
            bidirectional model, else ``"last"``.
        classifier_dropout: dropout before the classification heads' ``score`` (None: none).
    """

    model_type = ""
    # The token mixer of every layer (a hybrid lists one per layer instead) and the kind of cache entry it keeps.
    mixer_type: ClassVar[str] = ""
    mixer_cache_kind: ClassVar[str] = RECURRENT
    # Whether a right-to-left pass is well defined for this architecture's layers (a recurrence can run either
    # way; causal attention and a hybrid's attention layers are the Transformer's, kept causal here).
    supports_bidirectional: ClassVar[bool] = False
    # Whether the architecture is an encoder-decoder (what its is_encoder_decoder must say).
    encoder_decoder: ClassVar[bool] = False
    # Fields every seqzoo config has that this architecture never reads, each with what does read it (RWKV-7 starts
    # from x070's own init, without initializer_range): refused set away from the default as unread_fields says,
    # and left out of the config a hybrid builds for such a mixer (seqzoo.models.mixers.mixer_config).
    unread_shared_fields: ClassVar[dict[str, str]] = {}
    # Output fields Trainer's evaluation leaves out of the gathered predictions (the decoding cache, by every name).
    keys_to_ignore_at_inference = ["cache", "past_key_values", "cache_params"]

    vocab_size: int = 258
    hidden_size: int = 256
    num_hidden_layers: int = 2
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    bidirectional: bool = False
    bidirectional_merge: str = "sum"
    classifier_pooling: str | None = None  # None: "first+last" for a bidirectional model, else "last"
    classifier_dropout: float | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        # ``kwargs`` holds what the config's fields do not name: transformers' own keywords, or a mistake.
        check_unknown_keywords(self, kwargs)
        # Another architecture's model_type would be stored on the config and read by part of the code, while the
        # class (and config.json, which transformers writes from the class) says this one. While a config.json
        # loads, transformers already warns of a mismatch, and the class decides.
        given_type = kwargs.get("model_type")
        if given_type is not None and given_type != type(self).model_type and not loading_config() and STRICT:
            _fail(self, "model_type", given_type, f"a {type(self).__name__} is {type(self).model_type!r}; to build "
                  f"another architecture, use its config class (or AutoConfig.for_model({given_type!r}, ...))")
        labels = kwargs.get("num_labels")
        # (checked as given: transformers turns num_labels into id2label first, -1 into 0 labels, "3" into a TypeError)
        if labels is not None and (isinstance(labels, bool) or not isinstance(labels, int) or labels < 1):
            _fail(self, "num_labels", labels, "expected an integer >= 1")
        # (checked as given: transformers looks a dtype name up on torch, an unknown one as a bare AttributeError)
        for name, dtype in (("dtype", self.dtype), ("torch_dtype", kwargs.get("torch_dtype"))):
            found = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
            # (float8 is floating point, and computes nothing)
            if dtype is not None and not (isinstance(found, torch.dtype) and found in COMPUTE_DTYPES):
                _fail(self, name, dtype, "expected a floating-point dtype: float32, bfloat16, float16 or float64")
        saved_class_name(self.architectures, type(self).__name__)
        # (transformers keeps dtype and drops a torch_dtype given beside it, without a word)
        torch_dtype = kwargs.get("torch_dtype")
        if self.dtype is not None and torch_dtype is not None and _as_dtype(self.dtype) != _as_dtype(torch_dtype):
            message = (f"{type(self).__name__}: dtype={self.dtype!r} and torch_dtype={torch_dtype!r} disagree "
                       "(transformers would keep dtype and drop torch_dtype); give dtype only")
            refuse_unless_loading(message, "loaded with dtype")
        # transformers' own keywords, checked as given: attn_implementation=5 failed inside transformers on a
        # .startswith, and per_layer_config (a heterogeneous config) on an int() of a field's name
        implementation = kwargs.get("attn_implementation")
        if implementation is not None and not isinstance(implementation, str):
            _fail(self, "attn_implementation", implementation, "expected the name of an attention implementation "
                  "(a string such as 'eager' or 'sdpa') or null")
        if kwargs.get("per_layer_config") is not None:
            _fail(self, "per_layer_config", kwargs["per_layer_config"], "seqzoo does not support per-layer configs "
                  "(transformers' heterogeneous configs); leave it out")
        # (transformers reads both with .items(): a list of names failed there with a bare AttributeError)
        for name, example in (("id2label", "{0: 'negative', 1: 'positive'}"),
                              ("label2id", "{'negative': 0, 'positive': 1}")):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                _fail(self, name, getattr(self, name), f"expected a dict such as {example}")
        # (transformers replaces a label2id given without id2label by LABEL_0, LABEL_1 ... without a word)
        label2id_alone = self.label2id if self.id2label is None else None
        given_id2label = self.id2label
        super().__post_init__(**kwargs)
        check_labels(self, label2id_alone, labels, given_id2label)
        self.validate_architecture()
        self.check_fields_read()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """transformers' ``from_dict`` (what ``from_pretrained`` and ``AutoConfig`` load through), where a field this
        seqzoo does not know, or one this model does not read, is a warning, not an error: a config.json saved by a
        later seqzoo, or before a check, still loads. The keywords given beside the file (``from_pretrained(path,
        rope_theta=5e5)``), which transformers sets on the config after building it, are the user's, and are
        checked as a config built with them would be."""
        # transformers drops a keyword that is no attribute of the config unless the caller asks for what is left
        # (AutoModel.from_pretrained does, and hands it to the model, which refuses what it does not take):
        # AutoConfig.from_pretrained(path, hiden_size=512) loaded the file's config without a word.
        wants_unused = kwargs.pop("return_unused_kwargs", False)
        token, given = _LOADING.set(True), _GIVEN_BESIDE.set(frozenset(kwargs))
        try:
            config_dict = cls._derived_anew(config_dict, kwargs)
            config, unused = super().from_dict(config_dict, return_unused_kwargs=True, **kwargs)
            if isinstance(config, SeqzooConfig) and set(kwargs) - set(unused):
                config.check_keywords_set_after_loading(set(kwargs) - set(unused))
        finally:
            _LOADING.reset(token)
            _GIVEN_BESIDE.reset(given)
        if unused and not wants_unused:
            refuse_unused_keywords(config, unused)
        return (config, unused) if wants_unused else config

    @classmethod
    def derived_fields(cls) -> list[tuple[str, Any]]:
        """The fields a config derives from others when they are unset, as (name, its unset value): a bidirectional
        model's classifier pooling, an architecture's sizes and variant defaults. Subclasses add their own."""
        return [("classifier_pooling", None)]

    @classmethod
    def _derived_anew(cls, config_dict: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """``config_dict`` as the config is built from with fields given beside it (``kwargs``): a derived field the
        file holds at the value its own other fields derive is derived again, from the given ones
        (``AutoConfig.from_pretrained(llama_folder, variant="gpt2")`` kept RoPE and RMSNorm, and a bidirectional
        model kept a one-direction model's "last" pooling); one set otherwise in the file stays, as a field set by
        hand does."""
        # (seqzoo's own fields: transformers' generic ones, dtype and the label names, derive nothing here)
        names = {f.name for f in fields(cls)} - {f.name for f in fields(PreTrainedConfig)}
        given = {key: value for key, value in kwargs.items() if key in names}
        derived = [(name, unset) for name, unset in cls.derived_fields()
                   if name in config_dict and name not in given and config_dict[name] != unset]
        if not given or not derived:
            return config_dict
        try:  # (what the file's own fields derive; a file that does not build is named by the load itself)
            own = super().from_dict({**config_dict, **dict(derived)})
        except Exception:  # noqa: BLE001
            return config_dict
        anew = {name: unset for name, unset in derived if getattr(own, name, unset) == config_dict[name]}
        return {**config_dict, **given, **anew} if anew else config_dict

    def check_keywords_set_after_loading(self, given: set[str]) -> None:
        """Check the fields ``given`` as keywords beside a config.json, once transformers has set them: their values
        as a config built with them would be (``from_pretrained(path, hidden_size=-1)``; the file's own values were
        checked as it loaded), and that the model reads them. An ``id2label`` given alone replaces the file's
        ``label2id`` by its inverse, as a config built with it would hold (transformers kept the file's, naming
        other classes); label names given are checked as a config built with them would be."""
        # (transformers sets a model_type given beside the file on the instance: an LSTMConfig that said seqzoo_gru)
        if "model_type" in given and self.model_type != type(self).model_type and STRICT:
            _fail(self, "model_type", self.model_type, f"a {type(self).__name__} is {type(self).model_type!r}; to load "
                  "another architecture, use its config class (or AutoConfig.from_pretrained)")
        if "id2label" in given and "label2id" not in given and self.id2label is not None:
            self.label2id = {label: index for index, label in self.id2label.items()}
        self.validate_architecture()
        self.check_fields_read(only=given)
        if given & {"id2label", "label2id", "num_labels"}:
            token = _LOADING.set(False)  # (the caller's keywords: refused, not warned about as a file's values)
            try:
                check_labels(self)
            finally:
                _LOADING.reset(token)

    def unread_fields(self) -> list[tuple[str, Any, str]]:
        """The fields a model of this config does not read, as (name, its default, what reads it). Set away from its
        default, such a field would be ignored: refused when the config is built (a warning while a config.json
        loads). Subclasses add their own to the list."""
        unread = [(name, getattr(type(self), name), owner) for name, owner in self.unread_shared_fields.items()]
        if not self.bidirectional:
            unread.append(("bidirectional_merge", type(self).bidirectional_merge,
                           "a bidirectional model: bidirectional=True"))
        return unread

    def architecture_summary(self) -> str:
        """The fields that decide which others a model of this config reads, for the message naming an unread one."""
        return f"bidirectional={self.bidirectional!r}"

    def check_fields_read(self, only: set[str] | None = None) -> None:
        """Refuse a field set away from its default that this model never reads (:meth:`unread_fields`): the model
        would be built without it, and the user believe it was. While a config.json loads it is a warning instead (a
        checkpoint saved before the check still loads, and computes what it always computed); checked when the config
        is built, not when it is saved (a loaded config that warned is saved as it was). ``only``: check just these
        fields, strictly (keywords a user set on a loaded config)."""
        loading = only is None and (loading_config() or not STRICT)
        beside = _GIVEN_BESIDE.get() if loading else frozenset()  # (refused once the config is built)
        unread = [f"{name}={getattr(self, name)!r} (read only by {owner})" for name, default, owner
                  in self.unread_fields() if getattr(self, name) != default and (only is None or name in only)
                  and name not in beside]
        if not unread:
            return
        name = type(self).__name__
        if loading:
            logger.warning("%s: the config sets %s, which a model of %s does not read; it is kept on the config and "
                           "ignored", name, ", ".join(unread), self.architecture_summary())
            return
        one = len(unread) == 1
        raise ValueError(f"{name}: {', '.join(unread)} {'is' if one else 'are'} not read by a model of "
                         f"{self.architecture_summary()}; leave {'it' if one else 'them'} at the default, or choose "
                         f"an architecture that reads {'it' if one else 'them'}")

    def validate_architecture(self) -> None:
        """Raise ValueError on the first invalid field. Subclasses extend this and call super()."""
        # Every float field of every architecture (and of plugins) must be finite: an inf init range, norm eps or
        # time step gives NaN weights or logits without an error. Fields that may hold infinity are containers.
        # And within float32's range, where the weights are made: 1e39 became inf there, and 1e-50 became 0 (then a
        # log of it -inf), or torch refused it with an error naming no field.
        for name, value in vars(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                _fail(self, name, value, "expected a finite number")
            if isinstance(value, float) and not (value == 0 or _FLOAT32_TINY <= abs(value) <= _FLOAT32_MAX):
                _fail(self, name, value, f"expected 0 or a magnitude float32 holds, {_FLOAT32_TINY:g} to "
                      f"{_FLOAT32_MAX:g}")
        require_int(self, "vocab_size", minimum=1)
        require_int(self, "hidden_size", minimum=1)
        require_int(self, "num_hidden_layers", minimum=1)
        require_float(self, "initializer_range", minimum=0.0)
        require_bool(self, "tie_word_embeddings")
        require_bool(self, "use_cache")
        # transformers' generic fields that a seqzoo model reads: each as transformers reads it (a string "no" for
        # return_dict was true; is_encoder_decoder=True on a decoder-only model broke generate() obscurely)
        require_bool(self, "output_hidden_states")
        require_bool(self, "output_attentions")
        require_bool(self, "return_dict")
        require_bool(self, "is_encoder_decoder")
        if self.is_encoder_decoder and not self.encoder_decoder:
            _fail(self, "is_encoder_decoder", self.is_encoder_decoder, f"a {type(self).__name__} is a decoder-only "
                  "model (seqzoo's encoder-decoders: Seq2SeqConfig)")
        if self.chunk_size_feed_forward != 0:  # (transformers' chunking of a feed-forward, which no seqzoo block runs)
            _fail(self, "chunk_size_feed_forward", self.chunk_size_feed_forward, "seqzoo's blocks do not chunk their "
                  "feed-forward; expected 0")
        for name in ("pad_token_id", "bos_token_id"):
            require_token_id(self, name)
        require_bool(self, "bidirectional")
        require_choice(self, "bidirectional_merge", self.bidirectional_merges)
        if self.classifier_pooling is None:  # (at the last token the right-to-left direction has read one token)
            self.classifier_pooling = "first+last" if self.bidirectional else "last"
        require_choice(self, "classifier_pooling", POOLINGS)
        if self.classifier_dropout is not None:
            require_probability(self, "classifier_dropout")
        require_choice(self, "problem_type", PROBLEM_TYPES)
        require_int(self, "num_labels", minimum=1)
        if self.bidirectional and not self.supports_bidirectional:
            raise ValueError(
                f"{type(self).__name__}.bidirectional=True is invalid: "
                f"{f'{self.mixer_type} layers run' if self.mixer_type else 'this architecture runs'} left to right "
                "only here (bidirectional encoders: the RNN, LSTM, GRU, Mamba, Mamba-2 and RWKV-7 models)"
            )
        eos = self.eos_token_id
        # (None is valid only as the whole value: inside a list generate() failed on it with a bare TypeError)
        for token in () if eos is None else eos if isinstance(eos, (list, tuple)) else [eos]:
            if not (_is_int(token) and 0 <= token < self.vocab_size):
                raise ValueError(
                    f"{type(self).__name__}.eos_token_id={eos!r} is invalid: token ids must be integers in "
                    f"[0, vocab_size={self.vocab_size}) (or null for none, as the whole value, not in a list)"
                )

    def layer_mixer_types(self) -> list[str]:
        """The token mixer of each layer (``"lstm"``, ``"attention"``, ``"mamba"`` ...)."""
        return [self.mixer_type] * self.num_hidden_layers

    @property
    def cache_layer_kinds(self) -> list[str]:
        """The kind of cache entry of each layer: recurrent state or growing keys and values."""
        return [self.mixer_cache_kind] * self.num_hidden_layers

    # How a bidirectional layer joins its two directions. Blocks with a residual stream sum them (a concatenation
    # would widen the stream); the classic recurrent LMs may also concatenate, as the classic BiRNN does.
    bidirectional_merges: ClassVar[tuple[str, ...]] = ("sum",)

    # The fields (beside the class) that ``capabilities`` is derived from, through ``cache_layer_kinds``: a read
    # looks them up instead of deriving it again (attribute reads on a transformers config cost microseconds each,
    # and a forward asks several times). A subclass that derives its cache layer kinds from other fields declares
    # its own list; one that overrides ``cache_layer_kinds`` without declaring one is derived on every read.
    capability_fields: ClassVar[tuple[str, ...] | None] = ("num_hidden_layers", "bidirectional")

    @property
    def capabilities(self) -> Capabilities:
        cls = type(self)
        fields = _capability_fields(cls)
        if fields is None:
            return self.derive_capabilities()
        # The fields' current values, so that a changed config is never answered from the cache. Eagerly the instance
        # dict is read directly: vars() goes through transformers' __getattribute__ (a third of this read's time),
        # which dynamo traces where it cannot trace object.__getattribute__.
        values = vars(self) if torch.compiler.is_compiling() else object.__getattribute__(self, "__dict__")
        key = [cls]
        try:
            for name in fields:
                value = values.get(name)
                key.append(value if type(value) in _SCALARS else _frozen(value))
            key = tuple(key)
            found = _CAPABILITIES.get(key)
        except TypeError:  # a value that cannot be a key (an unhashable object in a field): derive it
            return self.derive_capabilities()
        if found is None:
            found = self.derive_capabilities()
            if len(_CAPABILITIES) >= 1024:
                _CAPABILITIES.clear()
            _CAPABILITIES[key] = found
        return found

    def derive_capabilities(self) -> Capabilities:
        """What :attr:`capabilities` returns, derived from the layers (uncached)."""
        return Capabilities.of_layers(self.cache_layer_kinds, causal=not self.bidirectional)

    @property
    def directions(self) -> int:
        """Feature blocks a layer outputs side by side: 2 for a bidirectional layer that concatenates."""
        return 2 if self.bidirectional and self.bidirectional_merge == "concat" else 1

    @property
    def embedding_dim(self) -> int:
        """Width of the token embedding (what ``inputs_embeds`` must have as its last dimension)."""
        return self.hidden_size

    @property
    def output_dim(self) -> int:
        """Width of the backbone's output, the input of the LM head."""
        return self.hidden_size

    @property
    def max_input_length(self) -> int | None:
        """The longest sequence the model takes (a table of learned or sinusoidal positions ends there); None where
        nothing but memory limits it. The tokenizer saved beside a model truncates there (``truncation=True``)."""
        return None

    # Bytes of recurrent state one sequence carries between tokens (excluding any KV cache). Used by model cards,
    # the lab and the benchmarks; architectures with a growing KV cache report their per-token cost instead.
    def state_bytes_per_sequence(self, dtype_bytes: int = 4) -> int:
        raise NotImplementedError

    def kv_bytes_per_token(self, dtype_bytes: int = 4) -> int:
        return 0

    def bidirectional_state_bytes(self, dtype_bytes: int = 4) -> int:
        """Bytes of state a bidirectional model carries across the text per sequence, both reading directions
        together: by default each direction keeps its own copy of every layer's state. An architecture whose
        bidirectional layers double only part of their state (RWKV-7: the time mix, not the channel mix) says so."""
        return (2 if self.bidirectional else 1) * self.state_bytes_per_sequence(dtype_bytes)


# Reading a field of a transformers config goes through two Python ``__getattribute__`` methods (transformers'
# own, which maps ``attribute_map`` aliases, and its heterogeneity mixin's, which guards per-layer fields of a
# heterogeneous config), each calling ``super()``: 1.2-2.4 µs a read on this project's CPU, against 0.5-1.0 µs for
# the same answer read directly. A decode step reads a config field about eight times (generate() a few more), the
# Transformer's about twenty. So seqzoo's configs answer a read themselves when the config is not heterogeneous and
# dynamo is not tracing, with the same alias mapping; else through transformers' chain. Only on the releases whose
# chain this was checked against (tests/models/test_config_reads.py), recognised by a fingerprint of its source: on
# any other, such as a later release loading a Hub bundle of this code, transformers' own method answers every read.
_CHECKED_ATTRIBUTE_READS = frozenset({
    "e4f8f0e5e930bf2c",  # transformers 5.23, 5.24 and 5.25
})
_TRANSFORMERS_GETATTRIBUTE = PreTrainedConfig.__getattribute__
_object_getattribute = object.__getattribute__


def _attribute_read_fingerprint() -> str | None:
    """A fingerprint of every ``__getattribute__`` that transformers' config base defines, in its MRO's order."""
    return source_fingerprint(*(klass.__getattribute__ for klass in PreTrainedConfig.__mro__
                                if klass is not object and "__getattribute__" in vars(klass)))


def _seqzoo_config_getattribute(self: PreTrainedConfig, key: str) -> Any:
    """What transformers' ``PreTrainedConfig.__getattribute__`` answers, without its ``super()`` calls."""
    # (dynamo first: it traces object.__getattribute__ of such an object through this method again, endlessly)
    if torch.compiler.is_compiling() or _object_getattribute(self, "__dict__").get("_heterogeneity_spec") is not None:
        return _TRANSFORMERS_GETATTRIBUTE(self, key)
    if key != "attribute_map":
        attribute_map = _object_getattribute(self, "attribute_map")
        if key in attribute_map:
            key = attribute_map[key]
    return _object_getattribute(self, key)


if _attribute_read_fingerprint() in _CHECKED_ATTRIBUTE_READS:
    SeqzooConfig.__getattribute__ = _seqzoo_config_getattribute
    # Dynamo must never take this method's own frame to compile: after a graph break it runs the rest of a forward
    # with its frame callback set, and converting this frame reads the config again through it, endlessly
    # (RecursionError). Inside a trace the method is still inlined (is_compiling() above).
    try:  # (a private torch function: without it, a graph break in a compiled forward is what it was)
        from torch._dynamo.eval_frame import skip_code

        skip_code(_seqzoo_config_getattribute.__code__)
    except (ImportError, AttributeError):
        pass


# Keywords a seqzoo config takes beyond its fields: those transformers' config reads or drops itself, and what its
# config.json carries besides the fields (5.23 and 5.24 read the same ones).
TRANSFORMERS_KEYWORDS = frozenset({
    "model_type", "transformers_version", "architectures", "auto_map", "quantization_config", "name_or_path",
    "_name_or_path", "_commit_hash", "torch_dtype", "dtype", "num_labels", "output_attentions", "attn_implementation",
    "experts_implementation", "per_layer_config", "_attn_implementation_internal", "_experts_implementation_internal",
    "rope_scaling", "rope_theta", "_from_auto", "_from_pipeline",
})
_LOADING = contextvars.ContextVar("seqzoo_config_loading", default=False)
# The keywords given beside a config.json that loads (checked strictly once it is built: not warned about as the
# file's values while it builds, which transformers builds it with).
_GIVEN_BESIDE = contextvars.ContextVar("seqzoo_config_given_beside", default=frozenset())


def _generation_keywords() -> frozenset[str]:
    """The generation parameters transformers drops from a config's keywords (they belong in generation_config)."""
    try:
        from transformers import GenerationConfig

        return frozenset(GenerationConfig._get_default_generation_params())
    except (ImportError, AttributeError):  # a release without the list drops none of them itself
        return frozenset()


_GENERATION_KEYWORDS = _generation_keywords()


def check_labels(config: Any, label2id_alone: Any = None, num_labels: Any = None, id2label: Any = None) -> None:
    """Refuse label names that a classifier's users would read wrongly: ``id2label`` keyed by other ids than the
    classes ``0 .. num_labels - 1`` (a pipeline fails on the class it has no name for), a ``label2id`` that is not
    its inverse (training data labelled through it would train other classes than the pipelines name), or a
    ``label2id`` given alone or a ``num_labels`` given beside an ``id2label`` of another length (transformers
    replaces the names by ``LABEL_0``, ``LABEL_1`` ...). A config.json that holds them still loads, with a warning.
    ``label2id_alone``, ``num_labels``, ``id2label``: as given to the constructor."""
    name = type(config).__name__
    problems = []
    if num_labels is not None and id2label is not None and num_labels != len(id2label):
        problems.append(f"{name}: num_labels={num_labels} and id2label={id2label!r} ({len(id2label)} names) "
                        "disagree (transformers would replace the names by LABEL_0, LABEL_1 ...): give one of them, "
                        "or both alike")
    if label2id_alone is not None:
        problems.append(f"{name}.label2id={label2id_alone!r} is given without id2label, which transformers then "
                        "fills with LABEL_0, LABEL_1 ... and label2id with those: give id2label ({id: name}) too")
    id2label = config.id2label or {}
    if sorted(id2label) != list(range(len(id2label))):
        problems.append(f"{name}.id2label={id2label!r} is invalid: its keys must be the class ids 0 .. "
                        f"num_labels - 1 = {len(id2label) - 1}, one name each")
    elif not all(isinstance(label, str) and label for label in id2label.values()):
        # (config.json keeps a name as it is in id2label but as a string key in label2id: a name 1 came back as "1")
        problems.append(f"{name}.id2label={id2label!r} is invalid: each class's name must be a non-empty string")
    elif len(set(id2label.values())) != len(id2label):
        problems.append(f"{name}.id2label is invalid: the names of id2label={id2label!r} repeat, so no label2id "
                        "maps each to its id and a pipeline's answers could not be told apart; name each class once")
    elif config.label2id is not None and label2id_alone is None:
        inverse = {label: index for index, label in id2label.items()}
        try:
            given = {label: int(index) for label, index in config.label2id.items()}
        except (AttributeError, TypeError, ValueError):
            given = None
        if given != inverse:
            problems.append(f"{name}.label2id={config.label2id!r} is invalid: it must map each name of id2label "
                            f"to its id ({inverse!r})")
    if not problems:
        return
    if loading_config():
        logger.warning("%s; loaded as saved", "; ".join(problems))
        return
    raise ValueError("; ".join(problems))


def loading_config() -> bool:
    """Whether a config is being built from a loaded config.json (inside :meth:`SeqzooConfig.from_dict`)."""
    return _LOADING.get()


_WARNED_UNKNOWN: set[tuple[str, tuple[tuple[str, str], ...]]] = set()


def check_unknown_keywords(config: PreTrainedConfig, kwargs: dict[str, Any]) -> None:
    """Refuse a keyword that is no field of ``config``'s class, nor an alias, nor one transformers reads itself: it
    would be stored on the config and read by nothing (``LSTMConfig(hiden_size=512)`` built a 256-wide model).
    While a config.json loads (``from_pretrained``, ``AutoConfig``) it is a warning instead, so that a config saved
    by a later seqzoo, with a field this one does not know, still loads (and the user learns that it is not read).
    Code bundled into a published checkpoint (``STRICT`` False) always warns: it cannot be updated when a later
    transformers builds configs with a keyword of its own."""
    cls = type(config)
    known = {f.name for f in fields(cls)}
    if "rope_theta" not in known:
        refuse_rope_keywords(config, kwargs)
    # transformers' __post_init__ drops generation parameters without a word (LSTMConfig(temperature=0.3) sampled at
    # 1.0); a config.json saved by an older transformers may hold them, and loads as transformers loads it.
    generation = sorted(key for key in kwargs if key in _GENERATION_KEYWORDS and key not in known)
    if generation and not loading_config() and STRICT:
        raise generation_keywords_error(f"{cls.__name__}", generation)
    unknown = sorted(key for key in kwargs if key not in known and key not in cls.attribute_map
                     and key not in TRANSFORMERS_KEYWORDS and key not in _GENERATION_KEYWORDS)
    if not unknown:
        return
    names, hints = _own_fields_and_hints(cls, unknown)
    if loading_config() or not STRICT:
        # Warned once per class and set of fields with their values in a process: one command loads a folder's
        # config.json several times (the config, the model, the tokenizer each read it); another file's are named.
        seen = (cls.__name__, tuple((key, repr(kwargs[key])) for key in unknown))
        # A key naming what the class defines (a value it computes, such as Mamba's intermediate_size, which
        # transformers' MambaConfig writes; a method) cannot be stored on the config: transformers' setattr failed on
        # a property without a setter, and a method would be replaced by the value. Dropped, and said so.
        defined = [key for key in unknown if hasattr(cls, key)]
        dropped = [f"{key}={kwargs.pop(key)!r}{_computed(config, key)}" for key in defined]
        kept = [hint for key, hint in zip(unknown, hints) if key not in defined]
        if seen in _WARNED_UNKNOWN:
            return
        _WARNED_UNKNOWN.add(seen)
        if kept:
            logger.warning("%s: the config has field(s) %s that this seqzoo does not know; they are kept on the "
                           "config, but nothing reads them (a config saved by a later seqzoo, or edited by hand?)",
                           cls.__name__, ", ".join(kept))
        if dropped:
            logger.warning("%s: the config has key(s) %s naming what the class defines itself, not a field; the "
                           "saved value(s) are not read (a config written by another library, or edited by hand?)",
                           cls.__name__, ", ".join(dropped))
        return
    raise TypeError(f"{cls.__name__} got unknown keyword argument(s) {', '.join(hints)}; its own fields are "
                    f"{', '.join(names)}")


def generation_keywords_error(owner: str, keys: Iterable[str]) -> TypeError:
    """The error for generation parameters given where a config is built: a config does not hold them."""
    keys = list(keys)
    return TypeError(f"{owner} got generation parameter(s) {', '.join(map(repr, keys))}, which a config does not hold "
                     "(transformers would drop them): pass them to generate(), or set them on the model's "
                     "generation_config (a transformers GenerationConfig)")


def refuse_rope_keywords(config: PreTrainedConfig, kwargs: dict[str, Any]) -> None:
    """Refuse ``rope_theta`` / ``rope_scaling`` given to a config whose models have no rotary positions (LSTM, Mamba,
    Seq2Seq ...): transformers takes them as its own keywords and stores them, and nothing reads them. While a
    config.json loads it is a warning, as for any field its model does not read (``check_fields_read``)."""
    given = [f"{key}={kwargs[key]!r}" for key in ("rope_theta", "rope_scaling") if kwargs.get(key) is not None]
    if not given:
        return
    name = type(config).__name__
    message = (f"{name}: {', '.join(given)} {'is' if len(given) == 1 else 'are'} not read by a model of {name}, which "
               "has no rotary positions (RoPE: TransformerConfig, HybridConfig); leave "
               f"{'it' if len(given) == 1 else 'them'} out")
    refuse_unless_loading(message)


def refuse_unless_loading(message: str, then: str = "kept on the config and ignored") -> None:
    """Raise ``message`` where a config is built; while a config.json loads (or outside strict checking) log it as a
    warning saying what happens instead (``then``): a saved file is read as transformers reads it."""
    if loading_config() or not STRICT:
        logger.warning("%s (%s)", message, then)
        return
    raise ValueError(message)


def _computed(config: PreTrainedConfig, key: str) -> str:
    """What a property of ``config`` computes, said in a warning ("" for a method, or a value not computable yet)."""
    if not isinstance(getattr(type(config), key), property):
        return ""
    try:
        return f" (this config computes {getattr(config, key)!r})"
    except Exception:  # noqa: BLE001 -- a property reading a field its __post_init__ derives later
        return ""


def refuse_unused_keywords(config: PreTrainedConfig, unused: dict[str, Any]) -> None:
    """Refuse keywords given beside a config.json that are no field of the config (transformers would drop them);
    a warning in code bundled into a published checkpoint (``STRICT`` False), as :func:`check_unknown_keywords`."""
    cls = type(config)
    names, hints = _own_fields_and_hints(cls, sorted(unused))
    message = (f"{cls.__name__}.from_pretrained got unknown keyword argument(s) {', '.join(hints)}, which would be "
               f"dropped; its own fields are {', '.join(names)}")
    if not STRICT:
        logger.warning("%s", message)
        return
    raise TypeError(message)


def unknown_loading_keyword(config_class: type, model_class: type, key: str) -> TypeError:
    """The error for a keyword of ``model_class.from_pretrained`` that is neither a field of ``config_class`` nor an
    option of transformers' loading (transformers hands it to the model's ``__init__``, whose own TypeError names
    neither)."""
    names, hints = _own_fields_and_hints(config_class, [key])
    return TypeError(f"{model_class.__name__}.from_pretrained got unknown keyword argument {hints[0]}: it is neither "
                     f"a field of {config_class.__name__} nor an option of transformers' from_pretrained; the "
                     f"config's own fields are {', '.join(names)}")


def _own_fields_and_hints(cls: type, keys: list[str]) -> tuple[list[str], list[str]]:
    """The fields ``cls`` adds to transformers' config (and its aliases), and each of ``keys`` with a did-you-mean."""
    names = sorted({f.name for f in fields(cls)} - {f.name for f in fields(PreTrainedConfig)} | set(cls.attribute_map))
    hints = []
    for key in keys:
        close = difflib.get_close_matches(key, names, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return names, hints


_CAPABILITIES: dict[tuple, Capabilities] = {}


def forget_capabilities() -> None:
    """Derive every config's capabilities anew at its next read (a mixer name re-registered as another mixer)."""
    _CAPABILITIES.clear()
_SCALARS = frozenset({int, bool, float, str, type(None)})  # hashable as they are
_FIELDS_OF: dict[type, tuple[str, ...] | None] = {}


def _capability_fields(cls: type) -> tuple[str, ...] | None:
    """``cls.capability_fields``, or None when a class overrides ``cache_layer_kinds`` below the class that declared
    them (its capabilities may read fields the list does not name)."""
    if cls in _FIELDS_OF:
        return _FIELDS_OF[cls]
    fields = cls.capability_fields
    for klass in cls.__mro__:
        if "capability_fields" in vars(klass):
            break
        if "cache_layer_kinds" in vars(klass):
            fields = None
            break
    _FIELDS_OF[cls] = fields
    return fields


def _frozen(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return (type(value), *(_frozen(item) for item in value))
    if isinstance(value, dict):
        return (dict, *sorted((key, _frozen(item)) for key, item in value.items()))
    hash(value)
    return value


def saved_class_name(architectures: Any, owner: str) -> str | None:
    """The head class a checkpoint was saved as: the first name of ``architectures``, which transformers records as
    a list (None when it records none). Anything else is refused, naming ``owner``: a string was read by its first
    letter, so a tagger's checkpoint loaded as a sequence classifier without the saved-head check."""
    if architectures is None or (isinstance(architectures, (list, tuple)) and not architectures):
        return None
    if not isinstance(architectures, (list, tuple)) or not all(isinstance(n, str) and n for n in architectures):
        raise ValueError(f"{owner}: architectures={architectures!r} is invalid: expected a list of class names, such "
                         "as ['LSTMForCausalLM'] (transformers records a list), or null")
    return architectures[0]


def _as_dtype(dtype: Any) -> Any:
    """A dtype given by name or as a torch.dtype, as the torch.dtype (names checked already)."""
    return getattr(torch, dtype, dtype) if isinstance(dtype, str) else dtype


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
_FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)


def _fail(config: Any, name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{type(config).__name__}.{name}={value!r} is invalid: {allowed}")


# The largest integer size a config takes: a size beyond it (hidden_size=2**63) was stored and saved, then failed
# inside torch.empty with an error naming no field.
MAX_SIZE = 2**31 - 1


def require_int(config: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> None:
    value = getattr(config, name)
    if not _is_int(value):
        _fail(config, name, value, "expected an integer")
    if minimum is not None and value < minimum:
        _fail(config, name, value, f"must be >= {minimum}")
    if maximum is not None and value > maximum:
        _fail(config, name, value, f"must be <= {maximum}")
    if value > MAX_SIZE:
        _fail(config, name, value, f"must be <= {MAX_SIZE} (2**31 - 1, the largest size seqzoo builds)")


def require_float(
    config: Any, name: str, minimum: float | None = None, maximum: float | None = None, exclusive_min: bool = False
) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(config, name, value, "expected a number")
    if not math.isfinite(value):
        _fail(config, name, value, "expected a finite number")
    if minimum is not None and (value <= minimum if exclusive_min else value < minimum):
        _fail(config, name, value, f"must be {'>' if exclusive_min else '>='} {minimum}")
    if maximum is not None and value > maximum:
        _fail(config, name, value, f"must be <= {maximum}")


def require_probability(config: Any, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        _fail(config, name, value, "must be a probability in [0, 1]")


def require_bool(config: Any, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, bool):
        _fail(config, name, value, "expected true or false")


def require_choice(config: Any, name: str, choices: Iterable[str]) -> None:
    value = getattr(config, name)
    choices = list(choices)
    if value not in choices:
        close = difflib.get_close_matches(str(value), [c for c in choices if isinstance(c, str)], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        _fail(config, name, value, f"allowed values are {', '.join(map(repr, choices))}{hint}")


def require_token_id(config: Any, name: str) -> None:
    value = getattr(config, name)
    if value is not None and not (_is_int(value) and 0 <= value < config.vocab_size):
        _fail(config, name, value, f"token ids must be integers in [0, vocab_size={config.vocab_size}) or null")


def require_plain_rope(config: Any) -> None:
    """Refuse RoPE scaling (``rope_scaling`` / ``rope_parameters``, which transformers' config takes as its own
    keywords): seqzoo computes plain RoPE from ``rope_theta`` only, so a scaled RoPE would be silently ignored."""
    parameters = getattr(config, "rope_parameters", None)
    if not isinstance(parameters, dict) or not parameters:
        return
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    name = type(config).__name__
    # Read by nothing where rope_theta is not read (learned or sinusoidal positions), or beside rope_type 'default'
    # (a scaling factor): refused as an unread field is, a warning while a config.json loads.
    unread = [f"rope_scaling={parameters!r} (read only by {owner})" for field, _, owner in config.unread_fields()
              if field == "rope_theta"]
    extra = sorted(set(parameters) - {"rope_type", "type", "rope_theta"})
    if rope_type == "default" and extra:
        unread.append(f"rope_scaling={parameters!r} (its {', '.join(map(repr, extra))} read only by a scaled RoPE, "
                      "which seqzoo does not compute)")
    if unread:
        message = (f"{name}: {unread[0]} is not read by a model of {config.architecture_summary()}; remove "
                   "rope_scaling / rope_parameters from the config")
        refuse_unless_loading(message)
    if rope_type != "default":
        raise ValueError(
            f"{name}: rope_scaling / rope_parameters with rope_type={rope_type!r} is not supported: seqzoo computes "
            f"plain RoPE (rope_type 'default') from rope_theta only; remove it from the config"
        )
    theta = parameters.get("rope_theta")
    if theta is not None and float(theta) != float(config.rope_theta):
        raise ValueError(
            f"{name}: rope_parameters sets rope_theta={theta!r} but the config's rope_theta is {config.rope_theta!r};"
            f" seqzoo reads the field rope_theta: set that instead"
        )
