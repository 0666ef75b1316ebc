"""The token mixers a hybrid model can stack, by name: built-in ones and plugins from the ``seqzoo.mixers`` entry
points.

A :class:`MixerSpec` names a :class:`~seqzoo.layers.mixer.Mixer` class, the config class whose fields the mixer
reads, and which of those fields a hybrid's ``mixer_config`` may set. A hybrid builds each mixer from a config of
that class, holding the hybrid's shared sizes and its ``mixer_config`` entry, validated as that architecture
validates its own config. A plugin's entry point returns a MixerSpec (or a list); a plugin that fails to load is
logged with its traceback and skipped.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedConfig

from seqzoo.cache import LAYER_KINDS
from seqzoo.layers.attention import SelfAttention
from seqzoo.layers.mamba import MambaMixer
from seqzoo.layers.mamba2 import Mamba2Mixer
from seqzoo.layers.mixer import Mixer
from seqzoo.layers.recurrent import GRUMixer, LSTMMixer, RNNMixer
from seqzoo.layers.rwkv7 import RWKV7TimeMix
from seqzoo.models.classic.configuration_classic import ClassicRecurrentConfig
from seqzoo.models.configuration_utils import forget_capabilities
from seqzoo.models.gru.configuration_gru import GRUConfig
from seqzoo.models.lstm.configuration_lstm import LSTMConfig
from seqzoo.models.mamba.configuration_mamba import MambaConfig
from seqzoo.models.mamba2.configuration_mamba2 import Mamba2Config
from seqzoo.models.rnn.configuration_rnn import RNNConfig
from seqzoo.models.rwkv7.configuration_rwkv7 import RWKV7Config
from seqzoo.models.transformer.configuration_transformer import TransformerConfig

logger = logging.getLogger("seqzoo")

ENTRY_POINT_GROUP = "seqzoo.mixers"

# What a hybrid sets itself in the config of each of its mixers (HybridConfig.mixer_settings; embedding_size for the
# classic recurrent configs in mixer_config below; position_embedding for the Transformer's attention without rotary
# positions): never a mixer's own setting. (hybrid_fields: those of one config class.)
HYBRID_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "initializer_range", "tie_word_embeddings",
                 "embedding_size", "position_embedding")


def hybrid_fields(config_class: type) -> tuple[str, ...]:
    """The fields a hybrid sets itself in a mixer config of ``config_class`` (see :data:`HYBRID_FIELDS`): the last
    two only for the classes it sets them on, so a plugin's own ``position_embedding`` stays the plugin's."""
    fields = HYBRID_FIELDS[:5]
    if isinstance(config_class, type) and issubclass(config_class, ClassicRecurrentConfig):
        fields += ("embedding_size",)
    if config_class is TransformerConfig:
        fields += ("position_embedding",)
    return fields


@dataclass(frozen=True)
class MixerSpec:
    """One token mixer a hybrid can use: ``name`` (what ``mixer_types`` says), its class, the config class whose
    fields it reads, and the names of those fields a hybrid's ``mixer_config[name]`` may set."""

    name: str
    mixer_class: type
    config_class: type
    fields: tuple[str, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip():
            raise TypeError(f"a mixer's name must be a non-empty string without surrounding spaces, got {self.name!r}")
        if not (isinstance(self.mixer_class, type) and issubclass(self.mixer_class, Mixer)):
            raise TypeError(f"mixer {self.name!r}: mixer_class must be a seqzoo.layers.mixer.Mixer subclass")
        # Refused here, not at a model's first forward (a bare NotImplementedError, or the cache's error that names
        # no mixer).
        if self.mixer_class.forward is Mixer.forward:
            raise TypeError(f"mixer {self.name!r}: {self.mixer_class.__name__} defines no forward; a mixer's forward "
                            "takes (hidden_states, *, state, mask, **context) and returns (hidden_states, state)")
        if self.mixer_class.cache_kind not in LAYER_KINDS:
            raise TypeError(f"mixer {self.name!r}: {self.mixer_class.__name__}.cache_kind="
                            f"{self.mixer_class.cache_kind!r}; allowed: {', '.join(map(repr, LAYER_KINDS))}")
        if not (isinstance(self.config_class, type) and issubclass(self.config_class, PreTrainedConfig)):
            raise TypeError(f"mixer {self.name!r}: config_class must be a transformers config class (a seqzoo "
                            f"architecture's config), got {self.config_class!r}")
        # A plain string would be read as its letters ("head_size" -> 'h', 'e', ...), every real field refused.
        if isinstance(self.fields, str) or not all(isinstance(f, str) for f in self.fields):
            raise TypeError(f"mixer {self.name!r}: fields must be a tuple of field names, got {self.fields!r}")
        object.__setattr__(self, "fields", tuple(self.fields))
        # (else every hybrid that set one failed with "got multiple values for keyword argument")
        shared = hybrid_fields(self.config_class)
        taken = [f for f in self.fields if f in shared]
        if taken:
            raise TypeError(f"mixer {self.name!r}: fields {taken} are set by the hybrid itself (from its own config), "
                            f"so a hybrid's mixer_config cannot set them; a mixer's fields may be any but "
                            f"{', '.join(shared)}")
        # Its fields: a dataclass's, and the named parameters of its __init__ (a config written in transformers'
        # older style, which sets its fields there: transformers keeps such an __init__).
        parameters = inspect.signature(self.config_class.__init__).parameters.values()
        known = {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if dataclasses.is_dataclass(self.config_class):
            known |= {f.name for f in dataclasses.fields(self.config_class)}
        unknown = [f for f in self.fields if f not in known]
        if unknown:
            raise TypeError(f"mixer {self.name!r}: fields {unknown} are not fields of {self.config_class.__name__} "
                            "(a dataclass field, or a parameter of its __init__)")

    @property
    def cache_kind(self) -> str:
        return self.mixer_class.cache_kind


_CLASSIC = ("orthogonal_init",)
_TIME_STEPS = ("time_step_min", "time_step_max", "time_step_floor")
BUILTIN_MIXERS = (
    MixerSpec("rnn", RNNMixer, RNNConfig, (*_CLASSIC, "nonlinearity"), "Elman RNN"),
    MixerSpec("lstm", LSTMMixer, LSTMConfig, (*_CLASSIC, "forget_bias"), "LSTM"),
    MixerSpec("gru", GRUMixer, GRUConfig, _CLASSIC, "GRU"),
    MixerSpec("attention", SelfAttention, TransformerConfig,
              ("num_attention_heads", "num_key_value_heads", "head_dim", "attention_bias", "attention_dropout"),
              "causal self-attention (grouped-query heads), K/V cache"),
    MixerSpec("rwkv7", RWKV7TimeMix, RWKV7Config,
              ("head_size", "decay_low_rank_dim", "a_low_rank_dim", "v_low_rank_dim", "gate_low_rank_dim",
               "group_norm_eps", "output_init_gain"),
              "RWKV-7 time mix (generalised delta rule)"),
    MixerSpec("mamba", MambaMixer, MambaConfig,
              ("state_size", "expand", "conv_kernel", "time_step_rank", "use_conv_bias", "use_bias", *_TIME_STEPS,
               "time_step_init_scheme", "time_step_scale", "rescale_prenorm_residual"),
              "Mamba selective scan"),
    MixerSpec("mamba2", Mamba2Mixer, Mamba2Config,
              ("state_size", "expand", "head_dim", "n_groups", "conv_kernel", "use_conv_bias", "use_bias",
               "chunk_size", *_TIME_STEPS, "time_step_limit", "rms_norm", "norm_before_gate", "layer_norm_epsilon",
               "rescale_prenorm_residual"),
              "Mamba-2 SSD"),
)

_MIXERS: dict[str, MixerSpec] = {spec.name: spec for spec in BUILTIN_MIXERS}
_plugins_loaded = False


def register_mixer(spec: MixerSpec, *, exist_ok: bool = False) -> MixerSpec:
    if not isinstance(spec, MixerSpec):
        raise TypeError(f"register_mixer takes a seqzoo.models.mixers.MixerSpec, got {type(spec).__name__} "
                        f"{spec!r:.80}")
    if not exist_ok:
        _check_name_free(spec)
    _MIXERS[spec.name] = spec
    # A config's capabilities are kept per mixer names: a name now meaning another mixer (re-registered with
    # exist_ok=True, a plugin reworked in a notebook, or one taken out of the registry and registered anew) must be
    # derived anew, or a hybrid naming it kept the old mixer's (a recurrent state where the new one is attention:
    # assisted decoding refused, no position ids built).
    forget_capabilities()
    return spec


def _check_name_free(spec: MixerSpec) -> None:
    # An equal spec (the same classes and fields, e.g. a plugin loaded again) is no clash; a different one under a
    # taken name (a built-in's, or another plugin's) would silently change every hybrid that names it.
    taken = _MIXERS.get(spec.name)
    if taken is not None and taken != spec:
        raise ValueError(f"mixer {spec.name!r} is already registered ({taken.mixer_class.__module__}."
                         f"{taken.mixer_class.__name__}); pick another name")


def load_mixer_plugins(force: bool = False) -> None:
    """Register the mixers of the ``seqzoo.mixers`` entry points (once, unless ``force``)."""
    global _plugins_loaded
    if _plugins_loaded and not force:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            result = ep.load()()
            specs = list(result) if isinstance(result, (list, tuple)) else [result]
            for spec in specs:  # all checked first: a plugin that is skipped leaves none of its mixers behind
                if not isinstance(spec, MixerSpec):
                    raise TypeError(f"the entry point returned {type(spec).__name__} {spec!r:.80}, not a MixerSpec")
                _check_name_free(spec)
            for spec in specs:
                register_mixer(spec)
        except Exception:
            logger.error("seqzoo mixer plugin %r (%s) failed to load and is skipped", ep.name, ep.value, exc_info=True)


def list_mixers() -> list[str]:
    load_mixer_plugins()
    return sorted(_MIXERS)


def get_mixer(name: str) -> MixerSpec:
    load_mixer_plugins()
    if not isinstance(name, str):
        raise ValueError(f"a mixer is named by a string; got {name!r} (available: {', '.join(sorted(_MIXERS))})")
    if name not in _MIXERS:
        close = difflib.get_close_matches(str(name), sorted(_MIXERS), n=1)
        hint = (f" (did you mean {close[0]!r}?)" if close else
                " (a plugin's mixer is registered by its package's seqzoo.mixers entry point, or by "
                "seqzoo.models.mixers.register_mixer before the model or config is built or loaded)")
        raise ValueError(f"unknown mixer {name!r}{hint}; available: {', '.join(sorted(_MIXERS))}")
    return _MIXERS[name]


def mixer_config(spec: MixerSpec, shared: dict[str, Any], settings: dict[str, Any], where: str) -> Any:
    """The config a hybrid's mixer of ``spec`` is built from: the hybrid's shared fields plus its own settings,
    validated by the mixer's config class (a bad value raises naming the field)."""
    unknown = sorted(set(settings) - set(spec.fields))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, spec.fields, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"{where}: unknown setting(s) {', '.join(hints)} for the {spec.name!r} mixer; it takes "
                         f"{', '.join(spec.fields)}")
    # (a shared field the mixer's architecture never reads, RWKV-7's initializer_range, is the hybrid's alone)
    unread = getattr(spec.config_class, "unread_shared_fields", {})
    values = {name: value for name, value in shared.items() if name not in unread}
    if issubclass(spec.config_class, ClassicRecurrentConfig):
        values["embedding_size"] = values["hidden_size"]  # inside a hybrid every layer reads hidden_size inputs
    try:
        return spec.config_class(**values, **settings)
    except ValueError as err:
        raise ValueError(f"{where}: mixer_config[{spec.name!r}]: {err}") from err


__all__ = ["BUILTIN_MIXERS", "HYBRID_FIELDS", "MixerSpec", "get_mixer", "hybrid_fields", "list_mixers",
           "load_mixer_plugins", "mixer_config", "register_mixer"]
