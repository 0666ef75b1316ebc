"""Model registry: architectures (config + model classes), named presets, and entry-point plugins.

Built-in architectures are registered by ``import seqzoo``; each registration also registers the classes with
``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``. Presets are ``seqzoo/configs/<name>.json`` files (package
data, installed with seqzoo) -- each a valid config.json -- plus any presets a plugin declares.

Third-party architectures arrive through the ``seqzoo.models`` entry-point group. An entry point names a callable;
seqzoo calls it with no arguments, and it returns a :class:`ModelSpec` (or a list of them) or registers itself with
:func:`register_architecture`. A plugin that raises is logged with its traceback and skipped.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import logging
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

logger = logging.getLogger("seqzoo")

ENTRY_POINT_GROUP = "seqzoo.models"
PRESET_DIR = Path(__file__).resolve().parent / "configs"


# What a model can be asked to do, each with its transformers Auto class and the Hub's pipeline tag.
TASKS: dict[str, tuple[str, str]] = {
    "causal-lm": ("AutoModelForCausalLM", "text-generation"),
    "sequence-classification": ("AutoModelForSequenceClassification", "text-classification"),
    "token-classification": ("AutoModelForTokenClassification", "token-classification"),
    "seq2seq": ("AutoModelForSeq2SeqLM", "text2text-generation"),
}


_ARCHITECTURE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# What a saved config.json adds to a model's fields: dropped from a preset copied from one.
_SAVED_CONFIG_KEYS = ("architectures", "transformers_version", "auto_map")


@dataclass
class ModelSpec:
    """One architecture: its name (``"lstm"``), config and backbone classes, a head class per task (``heads``:
    task -> class, tasks from :data:`TASKS`), and presets beyond ``seqzoo/configs/`` (name -> config dict).

    ``causal_lm_class`` is the ``"causal-lm"`` head, given on its own for the architectures (and plugins) of
    seqzoo 0.1; it joins ``heads``. The Auto classes, a Hub bundle's ``auto_map`` and a model card's
    ``pipeline_tag`` all come from ``heads``."""

    name: str
    config_class: type
    model_class: type
    causal_lm_class: type | None = None
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    heads: dict[str, type] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The name becomes a folder (the lab's runs/<name>/) and a command-line word: one path component, no "..".
        if not isinstance(self.name, str) or not _ARCHITECTURE_NAME.fullmatch(self.name):
            raise ValueError(f"an architecture's name must be letters, digits, '_', '-' or '.', starting with a letter "
                             f"or digit (it names folders, such as the lab's runs/<name>/), got {self.name!r}")
        given = self.heads.get("causal-lm")
        if self.causal_lm_class is not None and given is not None and given is not self.causal_lm_class:
            raise ValueError(f"architecture {self.name!r}: causal_lm_class {self.causal_lm_class.__name__} and "
                             f"heads['causal-lm'] {given.__name__} differ; give the causal LM once")
        if self.causal_lm_class is not None:
            self.heads = {"causal-lm": self.causal_lm_class, **self.heads}
        self.causal_lm_class = self.heads.get("causal-lm")
        unknown = sorted(set(self.heads) - set(TASKS))
        if unknown:
            raise ValueError(f"architecture {self.name!r}: unknown task(s) {unknown} in heads; tasks are "
                             f"{', '.join(TASKS)}")
        if not self.heads:
            raise ValueError(f"architecture {self.name!r} has no head: give heads={{task: class}}")

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    @property
    def default_task(self) -> str:
        """The task a model of this architecture is built for when none is named: the causal LM where there is
        one (every decoder-only architecture), else its first head (``"seq2seq"`` for an encoder-decoder)."""
        return next(iter(self.heads))

    @property
    def default_head(self) -> type:
        return self.heads[self.default_task]

    def task_saved_as(self, class_name: str | None) -> str | None:
        """The task of the head a checkpoint was saved as (``config.architectures[0]``, a class name that transformers
        records), or None when it names none of this architecture's heads."""
        return next((task for task, head in self.heads.items() if head.__name__ == class_name), None)

    def task_of(self, model_class: type) -> str:
        """The task whose head ``model_class`` is (or subclasses)."""
        for task, head in self.heads.items():
            if issubclass(model_class, head):
                return task
        # The copy of a head that a Hub bundle holds (loaded with trust_remote_code=True) is another class of the
        # same name for the same model_type.
        if getattr(getattr(model_class, "config_class", None), "model_type", None) == self.model_type:
            task = self.task_saved_as(model_class.__name__)
            if task is not None:
                return task
        raise ValueError(f"{model_class.__name__} is not a head of architecture {self.name!r}: its heads are "
                         f"{', '.join(h.__name__ for h in self.heads.values())}")


_ARCHITECTURES: dict[str, ModelSpec] = {}
_PLUGIN_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {}
_ENTRY_POINT_ARCHITECTURES: set[str] = set()  # registered by a seqzoo.models entry point (load_plugins)
_plugins_loaded = False


def _same_architecture(a: ModelSpec, b: ModelSpec) -> bool:
    return a.config_class is b.config_class and a.model_class is b.model_class and a.heads == b.heads


def register_architecture(spec: ModelSpec, *, exist_ok: bool = False) -> ModelSpec:
    """Register ``spec`` and its classes with transformers' Auto classes. Everything is checked before anything is
    registered, so a refused spec leaves no trace. Without ``exist_ok``, an architecture name, a ``model_type`` or a
    preset name that is already taken (by a built-in, another plugin, transformers itself, or another library's
    ``AutoConfig.register``) raises instead of silently replacing what was there; registering the same classes again
    is allowed."""
    import transformers
    from transformers import AutoConfig, AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES

    if not spec.model_type:
        raise ValueError(f"architecture {spec.name!r}: its config class must set model_type")
    for cls in (spec.model_class, *spec.heads.values()):
        own = getattr(cls, "config_class", None)
        if own is not None and own is not spec.config_class:
            raise ValueError(f"architecture {spec.name!r}: {cls.__name__}.config_class is {own.__name__}, not the "
                             f"spec's config class {spec.config_class.__name__}")
    previous = _ARCHITECTURES.get(spec.name)
    if not exist_ok:
        if previous is not None and not _same_architecture(previous, spec):
            raise ValueError(f"architecture {spec.name!r} is already registered "
                             f"({previous.config_class.__module__}.{previous.config_class.__name__})")
        if spec.model_type in CONFIG_MAPPING_NAMES:
            raise ValueError(f"architecture {spec.name!r}: model_type {spec.model_type!r} is transformers' own "
                             f"({CONFIG_MAPPING_NAMES[spec.model_type]}); pick another name")
        for other in _ARCHITECTURES.values():
            if other.name != spec.name and other.model_type == spec.model_type:
                raise ValueError(f"architecture {spec.name!r}: model_type {spec.model_type!r} is already used by "
                                 f"architecture {other.name!r}")
        # (another library's registration, which AutoConfig.register(..., exist_ok=True) below replaced without a word
        # for the whole process: its configs then loaded as this architecture's)
        taken = CONFIG_MAPPING[spec.model_type] if spec.model_type in CONFIG_MAPPING else spec.config_class
        if taken is not spec.config_class:
            raise ValueError(f"architecture {spec.name!r}: model_type {spec.model_type!r} is registered with "
                             f"AutoConfig by {taken.__module__}.{taken.__qualname__}; pick another name")
        files = _file_presets()
        for preset in spec.presets:
            owner = _PLUGIN_PRESETS.get(preset, (spec.name,))[0]
            if preset in files or owner != spec.name:
                raise ValueError(f"architecture {spec.name!r}: preset {preset!r} is already defined by "
                                 f"{'seqzoo/configs/' + preset + '.json' if preset in files else repr(owner)}")
    for preset, values in spec.presets.items():
        _check_preset(spec, preset, values)
    AutoConfig.register(spec.model_type, spec.config_class, exist_ok=True)
    AutoModel.register(spec.config_class, spec.model_class, exist_ok=True)
    for task, head in spec.heads.items():
        getattr(transformers, TASKS[task][0]).register(spec.config_class, head, exist_ok=True)
    causal_lm = spec.heads.get("causal-lm")
    if causal_lm is not None and spec.model_type not in CONFIG_MAPPING_NAMES:
        # transformers' Trainer shifts the labels it smooths (label_smoothing_factor) only for a model whose class
        # name is among this table's values (the Auto registration above does not add it): without the entry a
        # causal LM would be trained, with label smoothing, to predict the token it reads instead of the next one.
        # (The names dict is only read for model types of CONFIG_MAPPING_NAMES by the lazy Auto mappings.)
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[spec.model_type] = causal_lm.__name__
    _ARCHITECTURES[spec.name] = spec
    for preset, values in spec.presets.items():
        _PLUGIN_PRESETS[preset] = (spec.name, dict(values))
    return spec


def _check_preset(spec: ModelSpec, preset: str, values: Any) -> None:
    """Refuse a preset of ``spec`` that does not build its config, naming the preset: found later, it broke every
    listing of the presets (``seqzoo list``, the lab) with an error naming neither the preset nor the plugin."""
    # A preset copied from another architecture's config.json would name that model_type, and the config built from
    # it would make create_model build that architecture's model.
    if not isinstance(values, dict) or values.get("model_type", spec.model_type) != spec.model_type:
        raise ValueError(f"architecture {spec.name!r}: preset {preset!r} must be a dict of "
                         f"{spec.config_class.__name__} fields (a model_type in it must be {spec.model_type!r}), got "
                         f"{values!r:.120}")
    fields_given = {key: value for key, value in values.items() if key not in ("model_type", *_SAVED_CONFIG_KEYS)}
    try:
        spec.config_class(**fields_given)
    except Exception as err:  # (a misspelt field is a TypeError, a bad value a ValueError)
        raise ValueError(f"architecture {spec.name!r}: preset {preset!r} does not build a "
                         f"{spec.config_class.__name__}: {err}") from err


def load_plugins(force: bool = False) -> None:
    """Load architectures from the ``seqzoo.models`` entry points (once, unless ``force``)."""
    global _plugins_loaded
    if _plugins_loaded and not force:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        registered = []
        before = set(_ARCHITECTURES)
        try:
            result = ep.load()()
            for spec in result if isinstance(result, (list, tuple)) else [result]:
                if spec is not None:
                    register_architecture(spec)
                    registered.append(spec.name)
        except Exception:
            # (each architecture is checked before it registers: those the plugin listed before the failing one
            # are in place, and said so)
            kept = (f"; the architecture(s) it registered before the failure stay: {', '.join(registered)}"
                    if registered else "")
            logger.error("seqzoo model plugin %r (%s) failed to load and the rest of it is skipped%s", ep.name,
                         ep.value, kept, exc_info=True)
        finally:  # (also those a plugin registered itself, with register_architecture)
            _ENTRY_POINT_ARCHITECTURES.update(set(_ARCHITECTURES) - before)


def in_every_process(name: str) -> bool:
    """Whether a new process that imports seqzoo has architecture ``name`` (registered) as this one does: seqzoo's
    own and an entry point's do; one registered by a call to :func:`register_architecture` in this process (a script,
    a notebook, a module not imported there) does not, so work handed to another process (the lab's workers) cannot
    build it."""
    spec = get_architecture(name)
    return name in _ENTRY_POINT_ARCHITECTURES or spec.config_class.__module__.partition(".")[0] == "seqzoo"


def list_architectures(task: str | None = None) -> list[str]:
    """Names of the registered architectures; with ``task``, those with a head for it (``"causal-lm"``: the
    language models, ``"seq2seq"``: the encoder-decoders)."""
    if task is not None and not (isinstance(task, str) and task in TASKS):  # (a list: "unhashable type")
        raise ValueError(_unknown("task", task, list(TASKS)))
    return sorted(name for name, spec in _ARCHITECTURES.items() if task is None or task in spec.heads)


def get_architecture(name: str) -> ModelSpec:
    """The registered architecture ``name`` (``"lstm"``; the names of :func:`list_architectures`) as its
    :class:`ModelSpec`; an unknown name raises ``ValueError`` with a did-you-mean."""
    if not (isinstance(name, str) and name in _ARCHITECTURES):  # (a list: "unhashable type")
        raise ValueError(_unknown("architecture", name, list_architectures()))
    return _ARCHITECTURES[name]


def architecture_for_model_type(model_type: str) -> ModelSpec:
    for spec in _ARCHITECTURES.values():
        if spec.model_type == model_type:
            return spec
    allowed = sorted(spec.model_type for spec in _ARCHITECTURES.values())
    raise ValueError(_unknown("model_type", model_type, allowed))


def saved_head(config: Any) -> tuple[str | None, str | None]:
    """(the class name, the task) of the head a seqzoo checkpoint was saved as, from its config (an object, or
    config.json's dict): transformers records the class in ``architectures``; the task is None when that names none
    of the architecture's heads. Raises ValueError for a model_type seqzoo does not register."""
    from seqzoo.models.configuration_utils import saved_class_name

    read = config.get if isinstance(config, dict) else lambda name: getattr(config, name, None)
    saved_as = saved_class_name(read("architectures"), f"the config of model_type {read('model_type')!r}")
    return saved_as, architecture_for_model_type(read("model_type")).task_saved_as(saved_as)


def _file_presets() -> dict[str, Path]:
    return {path.stem: path for path in sorted(PRESET_DIR.glob("*.json"))}


def list_models(pattern: str | None = None) -> list[str]:
    """Names of all presets, optionally filtered by a shell-style pattern (``"lstm-*"``, ``"*tiny"``)."""
    if pattern is not None and not isinstance(pattern, str):
        raise TypeError(f"list_models(pattern) takes a shell-style pattern string such as 'lstm-*'; got "
                        f"{type(pattern).__name__} {pattern!r}")
    names = set(_PLUGIN_PRESETS)
    for name, path in _file_presets().items():
        model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type")
        if any(spec.model_type == model_type for spec in _ARCHITECTURES.values()):
            names.add(name)
    names = sorted(names)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def preset_values(name: str) -> tuple[ModelSpec, dict[str, Any]]:
    """The architecture of preset ``name`` and its config values."""
    if not isinstance(name, str):  # (a config object: "unhashable type")
        how = (" (for a config, AutoModelForCausalLM.from_config(config), or the head's Auto class)"
               if hasattr(name, "model_type") else "")
        raise TypeError(f"a model preset is named by a string such as 'lstm-tiny'; got {type(name).__name__}{how}")
    if name in _PLUGIN_PRESETS:
        arch, values = _PLUGIN_PRESETS[name]
        values = dict(values)
        values.pop("model_type", None)  # (checked at registration: the architecture's own)
        spec = get_architecture(arch)
    else:
        path = _file_presets().get(name)
        if path is None or name not in list_models():
            raise ValueError(_unknown("model preset", name, list_models()))
        values = json.loads(path.read_text(encoding="utf-8"))
        spec = architecture_for_model_type(values.pop("model_type"))
    for key in _SAVED_CONFIG_KEYS:
        values.pop(key, None)
    return spec, values


def get_config(name: str, **overrides: Any) -> Any:
    """The config of preset ``name`` with ``overrides`` applied; unknown field names raise."""
    spec, values = preset_values(name)
    # Dataclass fields, num_labels and attn_implementation, which transformers' configs take as properties.
    allowed = {f.name for f in fields(spec.config_class)} - {"transformers_version", "architectures"} | {
        "num_labels", "attn_implementation"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"unknown config field(s) {', '.join(hints)} for preset {name!r} ({spec.config_class.__name__})"
        )
    values.update(overrides)
    return spec.config_class(**values)


def create_model(name: str, task: str | None = None, **overrides: Any) -> Any:
    """A randomly initialised model of preset ``name`` with the head of ``task`` (default the architecture's
    :attr:`ModelSpec.default_task`: the causal LM, or seq2seq for an encoder-decoder; e.g.
    ``create_model("lstm-small", dropout=0.2)``, ``create_model("lstm-small", "token-classification",
    num_labels=5)``)."""
    config = get_config(name, **overrides)
    spec = architecture_for_model_type(type(config).model_type)  # (an instance's model_type may be another's)
    task = spec.default_task if task is None else task
    if task not in spec.heads:
        raise ValueError(_unknown(f"task for architecture {spec.name!r}:", task, list(spec.heads)))
    # _from_config, as AutoModel*.from_config does: it builds the weights in config.dtype (a ``dtype=`` override)
    # and applies config's attn_implementation; calling the class would build float32 whatever the config says.
    return spec.heads[task]._from_config(config)


def architecture_presets(architecture: str) -> list[str]:
    """The presets of ``architecture`` (``"rnn"`` -> rnn-tiny, rnn-relu-small, ...; never another architecture's)."""
    get_architecture(architecture)  # an unknown name raises with the registered ones
    return [name for name in list_models() if preset_values(name)[0].name == architecture]


def preset_parameter_count(name: str, **overrides: Any) -> int:
    """Parameters of preset ``name``, counted on the meta device (no memory allocated, no weights initialised)."""
    import torch

    from seqzoo.utils import count_parameters

    config = get_config(name, **overrides)
    with torch.device("meta"):
        model = architecture_for_model_type(type(config).model_type).default_head(config)
    return count_parameters(model)


def smallest_preset(architecture: str | None = None, *, among: list[str] | None = None) -> str:
    """The preset with the fewest parameters: of ``architecture``, or ``among`` the given names (ties: by name).

    The one rule every "a small model of each architecture" place uses (the lab, ``seqzoo demo``, the tests).
    """
    names = list(among) if among is not None else architecture_presets(architecture or "")
    if not names:
        raise ValueError(f"architecture {architecture!r} has no preset; add seqzoo/configs/{architecture}-tiny.json or "
                         f"declare presets in its ModelSpec")
    return min(names, key=lambda name: (preset_parameter_count(name), name))


def _unknown(what: str, value: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(value, allowed, n=3) if isinstance(value, str) else []
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"unknown {what} {value!r}.{hint} Available: {', '.join(allowed)}"
