"""Parameter-efficient fine-tuning with peft: which weights of a seqzoo model an adapter trains, as a peft config.

    from peft import get_peft_model
    model = get_peft_model(model, seqzoo.peft_config(model))            # LoRA, task type from the model's head
    model = get_peft_model(model, seqzoo.peft_config(model, "ia3"))     # (IA)^3
    model = get_peft_model(model, seqzoo.peft_config(model, "prompt_tuning"))  # a trained soft prompt

Why a function and not entries in peft's ``TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING`` tables: peft offers no
supported way to add to them (they are module-level dicts, and writing into another library's globals at import
would be a side effect of ``import seqzoo``); a table holds one list per ``model_type``, while a hybrid's layers
depend on its config; and the classic RNN/LSTM/GRU keep their weights as parameters of the recurrent layer, which a
table of module names cannot express (LoRA reaches them through ``target_parameters``).

The targets are read from the model itself: every ``nn.Linear`` of the backbone (the task head is left to peft,
which trains a classifier head in full for ``SEQ_CLS`` / ``TOKEN_CLS``) and, for LoRA, every parameter a mixer
lists in ``projection_parameters``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import numbers
import re
import types
import typing
from typing import Any

from torch import nn

from seqzoo.layers.mixer import projection_parameters
from seqzoo.models.weight_storage import quantised_weights

METHODS = ("lora", "ia3", "prompt_tuning")
# seqzoo task (registry.TASKS) -> peft's TaskType name
PEFT_TASK_TYPES = {
    "causal-lm": "CAUSAL_LM",
    "sequence-classification": "SEQ_CLS",
    "token-classification": "TOKEN_CLS",
    "seq2seq": "SEQ_2_SEQ_LM",
}
LORA_DEFAULTS = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
CONFIG_CLASSES = {"lora": "LoraConfig", "ia3": "IA3Config", "prompt_tuning": "PromptTuningConfig"}  # (peft's)


def peft_targets(model: nn.Module) -> dict[str, list[str]]:
    """``target_modules``: the names (last component, as peft matches them; the full name where another module's
    last component is the same) of the backbone's ``nn.Linear`` layers;
    ``target_parameters``: the parameter names the mixers list in ``projection_parameters``. Both sorted."""
    _refuse_wrapped(model)
    heads = tuple(getattr(type(model), "head_modules", ()))
    linears, parameters = [], set()
    for name, module in model.named_modules():
        if name.split(".")[0] in heads:
            continue
        if isinstance(module, nn.Linear):
            linears.append(name)
        else:  # (a bundled model's mixers too: see projection_parameters)
            parameters.update(projection_parameters(module))
    # peft matches a name by its last component; where that component is also the name of a module that is no
    # Linear layer (a Linear in a ModuleList is "0", as is a recurrent layer in another), the full name is given.
    others = {name.rpartition(".")[2] for name, module in model.named_modules() if not isinstance(module, nn.Linear)}
    modules = {name if name.rpartition(".")[2] in others else name.rpartition(".")[2] for name in linears}
    return {"target_modules": sorted(modules), "target_parameters": sorted(parameters)}


def _refuse_wrapped(model: nn.Module) -> None:
    """A model inside torch.compile's wrapper (or DDP's) is refused, naming the order that works: peft adapts the
    wrapper too, but saves the adapter under the wrapper's names (``base_model.model._orig_mod.model...``), which load
    onto no unwrapped model (peft warns of missing adapter keys and the trained adapter is lost); and the head the
    targets leave out, and the task type, are read from the model's class, not the wrapper's."""
    from seqzoo.utils import unwrap

    if unwrap(model) is model:
        return
    raise ValueError(f"{type(model).__name__} wraps {type(unwrap(model)).__name__} (torch.compile or DDP): call "
                     "seqzoo.peft_config and peft.get_peft_model on the model before torch.compile, then compile the "
                     "PeftModel (peft on the compiled wrapper saves its adapter under '_orig_mod.' names, which load "
                     "onto no uncompiled model)")


def _refuse_adapted(model: nn.Module) -> None:
    """A model that already holds peft adapters would list their own modules (``lora_A``, ``base_layer``) as
    targets: refused, naming the way to a second adapter."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not isinstance(model, PeftModel) and not any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        return
    raise ValueError(f"{type(model).__name__} already holds peft adapters: call seqzoo.peft_config on the model "
                     "before peft.get_peft_model (or on a fresh copy of it); the same config adds a second adapter "
                     "with peft_model.add_adapter(name, config)")


def peft_config(model: nn.Module, method: str = "lora", task_type: Any = None, **overrides: Any) -> Any:
    """A peft config that adapts ``model`` (a seqzoo model) with ``method`` ("lora", "ia3" or "prompt_tuning") and no
    other argument.

    ``task_type`` defaults to the model's head (``CAUSAL_LM``, ``SEQ_CLS``, ``TOKEN_CLS``, ``SEQ_2_SEQ_LM``); a
    different one raises. ``overrides`` go to the peft config (``r=16``, ``target_modules=[...]``), each in place of
    that key's default (``target_modules`` leaves the default ``target_parameters`` in place: pass
    ``target_parameters=[]`` to adapt the named modules alone; a listed module name that names no module of the
    model is refused, where peft would go on with the recurrent weights alone, and so is a listed parameter name
    that names no parameter; ``layers_to_transform``, which peft applies to ``target_modules`` alone, is refused
    beside ``target_parameters``). The defaults: LoRA r=8, alpha=16,
    no dropout (peft's LoRA on parameters takes none), every Linear layer of the backbone and the recurrent cells'
    ``weight_ih`` / ``weight_hh``; IA3 scales the output of every Linear layer of the backbone. The classic
    RNN/LSTM/GRU have no Linear layer in their backbone, so for them IA3 is refused (peft's IA3 adapts Linear and
    convolution layers only). Prompt tuning trains ``num_virtual_tokens`` (default 8)
    input embeddings placed before every sequence (an encoder-decoder's source) and leaves every weight alone, so it
    works on every architecture (causal LMs, sequence classifiers, encoder-decoders); there is nothing to merge into
    the weights."""
    try:
        import peft
    except ImportError as err:  # (peft is an extra: a bare "No module named 'peft'" named none)
        raise ImportError(f"seqzoo.peft_config needs peft ({err}); install it with pip install 'seqzoo[peft]'") \
            from err

    from seqzoo.registry import architecture_for_model_type

    if method not in METHODS:
        raise ValueError(f"unknown adapter method {method!r}; seqzoo.peft_config knows {', '.join(METHODS)}")
    _check_override_names(method, overrides)
    _check_override_types(method, overrides)
    _check_name_lists(overrides)
    _refuse_wrapped(model)
    _refuse_adapted(model)
    spec = architecture_for_model_type(getattr(getattr(model, "config", None), "model_type", None))
    expected = PEFT_TASK_TYPES[spec.task_of(type(model))]
    if task_type is not None and str(getattr(task_type, "value", task_type)) != expected:
        raise ValueError(f"task_type={task_type!r} does not fit {type(model).__name__}, whose head needs "
                         f"{expected!r}; pass that, or leave task_type out")
    _check_modules_to_save(model, overrides.get("modules_to_save"), expected)  # (prompt tuning's too)
    if method == "prompt_tuning":
        _refuse_quantised_model(model, method)
        return _prompt_tuning_config(model, expected, overrides)
    targets = peft_targets(model)
    _check_target_modules(model, overrides.get("target_modules"))
    if method == "lora":
        values = {**LORA_DEFAULTS, **targets, "task_type": expected}
        if not values["target_parameters"]:
            values.pop("target_parameters")
        values.update(overrides)
        _check_target_parameters(model, overrides.get("target_parameters"))
        _check_exclude_modules(model, values)
        _check_patterns(model, values)
        _refuse_layers_to_transform_on_parameters(model, values)
        _refuse_options_parameters_do_not_take(values)
        _refuse_quantised_parameters(model, values.get("target_parameters") or ())
        _refuse_quantised_model(model, method)
        config = peft.LoraConfig(**values)
        _refuse_parameters_above_adapted_modules(model, config)
        return config
    if not targets["target_modules"] and "target_modules" not in overrides:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer in its backbone for IA3 to scale: its recurrent weights "
            f"({', '.join(targets['target_parameters'])}) are parameters of the recurrent layer, which peft adapts "
            "only with LoRA (method='lora')"
        )
    _refuse_quantised_model(model, method)
    values = {"target_modules": targets["target_modules"], "feedforward_modules": [], "task_type": expected}
    values.update(overrides)
    _check_exclude_modules(model, values)
    return peft.IA3Config(**values)


def _check_override_names(method: str, overrides: dict[str, Any]) -> None:
    """Each override must be an argument of ``method``'s peft config: peft's TypeError ("LoraConfig.__init__() got an
    unexpected keyword argument 'rank'") named none it takes. ``peft_type`` is refused too: the config class sets its
    own in place of the one given."""
    import peft

    config_class = getattr(peft, CONFIG_CLASSES[method])
    allowed = sorted(f.name for f in dataclasses.fields(config_class) if f.init and f.name != "peft_type")
    unknown = [name for name in overrides if name not in allowed]
    if unknown:
        close = difflib.get_close_matches(unknown[0], allowed, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{method} takes no argument {unknown[0]!r} (peft's {config_class.__name__}).{hint} It takes "
                         f"{', '.join(allowed)}")


def _check_override_types(method: str, overrides: dict[str, Any]) -> None:
    """Each override whose peft annotation is a plain type (int, float, bool, str, a Literal, or a Union of those
    with None) must be of it: ``r="8"`` was taken and failed inside peft's LoRA layer ("'<=' not supported between
    instances of 'str' and 'int'"). Arguments of other annotations (lists, dicts) are left to peft and the checks
    below."""
    import peft

    config_class = getattr(peft, CONFIG_CLASSES[method])
    hints = typing.get_type_hints(config_class)
    for name, value in overrides.items():
        expected = hints.get(name)
        if expected is not None and _fits(value, expected) is False:
            raise ValueError(f"{method}: {name}={value!r} must be {_described(expected)} (peft's "
                             f"{config_class.__name__})")


_PLAIN = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "None"}


def _fits(value: Any, annotation: Any) -> bool | None:
    """Whether ``value`` is of ``annotation``; None where the annotation is not one this checks."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:  # (by type alone: peft lists patterns among them, 'pissa_niter_[number of iters]')
        return any(type(value) is type(choice) for choice in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        found = [_fits(value, member) for member in typing.get_args(annotation)]
        return None if None in found else any(found)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in _PLAIN:
        return isinstance(value, annotation)
    return None


def _described(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return _described(typing.Union[tuple(type(choice) for choice in typing.get_args(annotation))])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_described(member) for member in typing.get_args(annotation))
    return _PLAIN.get(annotation, str(annotation))


_NAME_LISTS = ("target_modules", "target_parameters", "modules_to_save", "exclude_modules")


def _check_name_lists(overrides: dict[str, Any]) -> None:
    """Each of :data:`_NAME_LISTS` given must be a list (tuple, set) of strings: ``target_modules=[1]`` matched
    "layers.1" and failed in peft ("'int' object has no attribute 'split'"), ``modules_to_save=[1]`` failed in
    :func:`_check_modules_to_save`, ``5`` was "not iterable". A string is left to the checks of each key."""
    for key in _NAME_LISTS:
        names = overrides.get(key)
        if names is None or isinstance(names, str):
            continue
        if not isinstance(names, (list, tuple, set, frozenset)) or not all(isinstance(n, str) for n in names):
            also = ", or a regular expression (a string)" if key in ("target_modules", "exclude_modules") else ""
            raise ValueError(f"{key}={names!r} must be a list of names (strings){also}")


def _check_target_modules(model: nn.Module, names: Any) -> None:
    """Each name of a ``target_modules`` list must name a module as peft matches it (the full name, or its last
    components): peft raises only where nothing at all matches, and never where ``target_parameters`` (the classic
    cells' defaults) match, so a misspelt name went unnoticed. A string is a regular expression, left to peft once it
    compiles."""
    if isinstance(names, str):
        _check_expression("target_modules", names)
    if names is None or isinstance(names, str):
        return
    modules = [name for name, _ in model.named_modules() if name]
    unknown = [n for n in names if not any(m == n or m.endswith(f".{n}") for m in modules)]
    if unknown:
        targets = peft_targets(model)
        raise ValueError(f"target_modules {unknown} name no module of {type(model).__name__}; seqzoo's defaults are "
                         f"target_modules={targets['target_modules']}, target_parameters={targets['target_parameters']}"
                         " (seqzoo.peft_targets(model))")


def _check_modules_to_save(model: nn.Module, names: Any, task_type: str) -> None:
    """Each name of ``modules_to_save`` must name a module as peft matches it (the end of its full name): peft says
    nothing of one that matches none, and the module it meant stayed frozen. A string is refused: peft reads it
    character by character, as suffixes, and wraps every module whose name ends in one of its letters (or, for a
    classifier, fails adding its own names to it). For a classifier (SEQ_CLS, TOKEN_CLS) peft adds "classifier" and
    "score" to the list itself, so either is taken whether the model has it or not."""
    if isinstance(names, str):
        raise ValueError(f"modules_to_save must be a list of module names, got the string {names!r} (peft would "
                         f"match each of its characters); pass [{names!r}]")
    if not names:
        return
    modules = [name for name, _ in model.named_modules(remove_duplicate=False) if name]
    added = _PEFT_CLASSIFIER_NAMES if task_type in ("SEQ_CLS", "TOKEN_CLS") else ()
    unknown = [name for name in names
               if name not in added and not any(module.endswith(name) for module in modules)]
    if unknown:
        raise ValueError(f"modules_to_save {unknown} name no module of {type(model).__name__} (peft matches the end "
                         f"of a module's full name); its top-level modules are "
                         f"{[name for name in modules if '.' not in name]}")


_PEFT_CLASSIFIER_NAMES = ("classifier", "score")  # what peft's classifier models add to modules_to_save


def _check_exclude_modules(model: nn.Module, values: dict[str, Any]) -> None:
    """Each name of an ``exclude_modules`` list must name a module that ``target_modules`` adapts, as peft compares
    them (the adapted module's full name or its last components): peft warns only where nothing at all was excluded,
    so a misspelt name, or one naming a module above the adapted ones (``layers.1`` for ``layers.1.mlp.up_proj``),
    left the module adapted beside a name that excluded something. peft does not apply the list to
    ``target_parameters``. A string exclude_modules is a regular expression, left to peft. A string target_modules is
    peft's shorthand ``"all-linear"`` (every Linear layer but the output layer, and a classifier's ``score``) or a
    regular expression a module's full name must match whole. ``target_modules=None`` makes peft look the model type
    up in its own table, which names no seqzoo type: no module is adapted, so no name excludes one."""
    excluded, targets = values.get("exclude_modules"), values.get("target_modules")
    if isinstance(excluded, str):
        _check_expression("exclude_modules", excluded)
    if not excluded or isinstance(excluded, str):
        return
    modules = [name for name, _ in model.named_modules() if name]
    if targets is None:
        modules = []
    elif isinstance(targets, str) and targets.lower() == "all-linear":
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None and values.get("task_type") == "SEQ_CLS":  # (peft's order: score, then classifier)
            head = next((getattr(model, n) for n in ("score", "classifier") if getattr(model, n, None) is not None),
                        None)
        modules = [name for name, module in model.named_modules()
                   if isinstance(module, nn.Linear) and module is not head]
    elif isinstance(targets, str):  # (an expression that compiles: see _check_target_modules)
        modules = [m for m in modules if re.fullmatch(targets, m)]
    else:
        modules = [m for m in modules if any(m == t or m.endswith(f".{t}") for t in targets)]
    unknown = [n for n in excluded if not any(m == n or m.endswith(f".{n}") for m in modules)]
    if unknown:
        example = f", such as {modules[0]!r}," if modules else ""
        raise ValueError(f"exclude_modules {unknown} name no module that target_modules adapts in "
                         f"{type(model).__name__} (peft compares an adapted module's full name{example} "
                         "or its last components, not a module above it; it does not apply to target_parameters, "
                         "which take full names to pick layers)")


def _check_patterns(model: nn.Module, values: dict[str, Any]) -> None:
    """Each key of ``rank_pattern`` / ``alpha_pattern`` must be able to match something: peft matches a key as a
    regular expression against the end of each adapted module's full name (``layers.0.self_attn.q_proj``) or
    parameter's (``layers.0.weight_hh``), after a dot, and keeps ``r`` / ``lora_alpha`` where none matches, without a
    word (a misspelt ``q_prj`` changed nothing). A key that matches no module or parameter of the model is refused,
    as is one that is no regular expression; which of the matched names LoRA adapts is left to peft."""
    names = None
    for option in ("rank_pattern", "alpha_pattern"):
        pattern = values.get(option)
        if not pattern or not isinstance(pattern, dict):
            continue
        if names is None:
            names = [name for name, _ in model.named_modules() if name] + [name for name, _ in model.named_parameters()]
        for key in pattern:
            try:
                re.compile(key)  # (its own error positions first)
                expression = re.compile(rf"(.*\.)?({key})$")
            except (re.error, TypeError) as err:
                raise ValueError(f"{option} key {key!r} is not a valid regular expression ({err}); peft matches it "
                                 "against the end of each adapted module's or parameter's name") from None
            if not any(expression.match(name) for name in names):
                close = difflib.get_close_matches(str(key), sorted({n.rpartition(".")[2] for n in names}), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{option} key {key!r} matches no module or parameter of {type(model).__name__}"
                                 f"{hint}: peft matches it against the end of each adapted module's full name "
                                 "(layers.0.self_attn.q_proj) or parameter's (layers.0.weight_hh), and would keep the "
                                 "default for every one")


def _check_expression(key: str, expression: str) -> None:
    """A string ``target_modules`` / ``exclude_modules`` is a regular expression: peft compiled a bad one only in
    get_peft_model, whose re.error ("missing ), unterminated subpattern at position 0") named neither the key nor the
    value."""
    try:
        re.compile(expression)
    except re.error as err:
        raise ValueError(f"{key}={expression!r} is not a valid regular expression ({err}); peft matches a string "
                         f"{key} against each module's full name, or takes a list of module names") from None


def _check_target_parameters(model: nn.Module, names: Any) -> None:
    """Each name of a ``target_parameters`` list must name a parameter as peft matches it (``module.parameter``, the
    full name or its last components): peft raises only where no module and no parameter at all is matched, so a
    misspelt parameter name next to matching ``target_modules`` (every block model's defaults) adapted nothing of
    it without a word."""
    if names is None or isinstance(names, str):
        return
    parameters = [f"{module_name}.{name}" for module_name, module in model.named_modules()
                  for name, _ in module.named_parameters(recurse=False)]
    unknown = [n for n in names if not any(p == n or p.endswith(f".{n}") for p in parameters)]
    if unknown:
        targets = peft_targets(model)
        raise ValueError(f"target_parameters {unknown} name no parameter of {type(model).__name__} (peft matches "
                         "a parameter's own name, or its full name's last components); seqzoo's defaults are "
                         f"target_modules={targets['target_modules']}, "
                         f"target_parameters={targets['target_parameters']} (seqzoo.peft_targets(model))")


def _refuse_layers_to_transform_on_parameters(model: nn.Module, values: dict[str, Any]) -> None:
    """peft applies ``layers_to_transform`` to ``target_modules`` alone: the ``target_parameters`` (a classic cell's
    recurrent weights, by default) were adapted in every layer, the argument ignored without a word."""
    chosen, names = values.get("layers_to_transform"), values.get("target_parameters")
    if chosen is None or not names or isinstance(names, str):  # (a string: peft refuses it itself)
        return
    full = [f"{module_name}.{name}" for module_name, module in model.named_modules()
            for name, _ in module.named_parameters(recurse=False)
            if any(f"{module_name}.{name}" == n or f"{module_name}.{name}".endswith(f".{n}") for n in names)]
    first = full[0].rpartition(".")[0]
    example = sorted(name for name in full if name.rpartition(".")[0] == first)
    raise ValueError(f"layers_to_transform={chosen!r} applies to target_modules, not to target_parameters "
                     f"{sorted(names)}, which peft adapts in every layer: pick their layers by full name "
                     f"(target_parameters={example} adapts {first} alone), or pass target_parameters=[] to adapt "
                     "the target_modules alone")


def _refuse_options_parameters_do_not_take(values: dict[str, Any]) -> None:
    """Options peft's LoRA on a parameter (a classic cell's ``weight_ih`` / ``weight_hh``) does not apply: ``bias``
    trains the parameters named ``*.bias``, which the cells' ``bias_ih`` / ``bias_hh`` are not (``"all"`` trained the
    head's bias alone, ``"lora_only"`` nothing); the data- and decomposition-based initialisations read a layer's
    ``weight``, which the cell has not (an AttributeError inside peft)."""
    if not values.get("target_parameters"):
        return
    bias = values.get("bias", "none")
    if bias != "none":
        raise ValueError(f"bias={bias!r} trains the parameters whose names end in '.bias', which the recurrent cells' "
                         f"biases (bias_ih, bias_hh) beside target_parameters={list(values['target_parameters'])!r} "
                         "are not: only other biases would train. Leave bias='none' (to train whole modules, name them "
                         "in modules_to_save)")
    init = values.get("init_lora_weights", True)
    if init not in _PARAMETER_INITS or type(init) not in (bool, str):
        raise ValueError(f"init_lora_weights={init!r} initialises from a layer's weight, which the recurrent cells "
                         f"adapted by target_parameters={list(values['target_parameters'])!r} have not (their weights "
                         f"are parameters of the cell); with them use True, False or 'gaussian'")


_PARAMETER_INITS = (True, False, "gaussian")


def _refuse_parameters_above_adapted_modules(model: nn.Module, config: Any) -> None:
    """A ``target_parameters`` entry whose parameter belongs to a module above one that ``target_modules`` adapts
    (RWKV-7's ``w1`` beside its ``receptance``, Mamba's ``A_log`` beside its ``in_proj``): peft 0.22 wraps that module
    for its parameter before it adapts the modules, and then cannot reach the module below it (an AttributeError,
    "ParamWrapper has no attribute 'receptance'", from inside get_peft_model). Refused where the installed peft does
    that (judged by behaviour, see _peft_adapts_modules_below_parameters), naming what works."""
    names = getattr(config, "target_parameters", None)
    if not names or isinstance(names, str) or not config.target_modules or _peft_adapts_modules_below_parameters():
        return
    from peft.tuners.tuners_utils import check_target_module_exists

    owners = [(module_name, f"{module_name}.{name}") for module_name, module in model.named_modules() if module_name
              for name, _ in module.named_parameters(recurse=False)
              if any(f"{module_name}.{name}" == n or f"{module_name}.{name}".endswith(f".{n}") for n in names)]
    for key, _ in model.named_modules():
        found = check_target_module_exists(config, key) if key else None
        if not found or type(found).__name__ == "_ExcludedModule":  # (excluded modules are not adapted)
            continue
        for owner, parameter in owners:
            if key.startswith(f"{owner}."):
                import peft

                raise ValueError(
                    f"target_parameters adapt {parameter}, a parameter of {owner}, and target_modules adapt {key} "
                    f"inside it: peft {peft.__version__} wraps {owner} for its parameter first and then cannot reach "
                    f"{key} (get_peft_model fails). Adapt the two in separate adapters, both configs made before "
                    f"get_peft_model: modules = seqzoo.peft_config(model, target_parameters=[]) (or target_modules "
                    f"naming no module inside {owner}), parameters = seqzoo.peft_config(model, target_modules=[], "
                    f"target_parameters={list(names)!r}); peft_model = get_peft_model(model, modules); "
                    "peft_model.add_adapter('on_parameters', parameters); "
                    "peft_model.base_model.set_adapter(['default', 'on_parameters'])")


@functools.lru_cache(maxsize=None)
def _peft_adapts_modules_below_parameters() -> bool:
    """Whether the installed peft adapts, in one LoRA adapter, a parameter of a module and a Linear layer inside that
    module (0.21 did, adapting the modules first; 0.22 adapts the parameters first and fails). Tried on a two-layer
    toy model, once per process, on a generator of its own: the toy's initialisation drew from the caller's, so a
    seeded get_peft_model after the first peft_config of a process started from other LoRA weights than after any
    later one."""
    import warnings

    import peft
    import torch

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight_own = nn.Parameter(torch.zeros(2, 2))
            self.inner = nn.Linear(2, 2)

    with torch.random.fork_rng(devices=[]):
        root = nn.Module()
        root.holder = Holder()
        config = peft.LoraConfig(r=1, target_modules=["inner"], target_parameters=["weight_own"])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peft.inject_adapter_in_model(config, root)
        except Exception:  # (0.22: an AttributeError; a later refusal of the pair a ValueError: either way not)
            return False
    return True


def _refuse_quantised_parameters(model: nn.Module, names: Any) -> None:
    """peft's LoRA on a parameter adds W + B A to the weight, which a quantised (torchao) weight cannot do: the first
    forward failed inside torchao (NotImplementedError for aten.add)."""
    names = set(names)
    quantised = [f"{module_name}.{name}" for module_name, module in model.named_modules()
                 for name, p in module.named_parameters(recurse=False)
                 if name in names and type(p) not in (nn.Parameter,) and type(p).__module__.split(".")[0] == "torchao"]
    if quantised:
        raise ValueError(f"{type(model).__name__} is quantised ({', '.join(quantised[:3])} hold "
                         f"{type(model.get_parameter(quantised[0])).__name__} weights), and peft's LoRA on a parameter "
                         "cannot add to a quantised weight: add the adapter to the float model (quantise after "
                         "merge_and_unload())")


def _refuse_quantised_model(model: nn.Module, method: str) -> None:
    """torchao's int8 dynamic-activation layers (seqzoo.quantize_int8) pass no gradient to their input: their
    output has no autograd history from it. Every adapter sits before the quantised vocabulary head, so none could
    learn: backward failed with "element 0 of tensors does not require grad" (or, with a float bias after the last
    quantised layer, trained that bias alone)."""
    # (torch's own quantize_dynamic swaps in modules whose int8 operators have no autograd: no adapter got a gradient,
    # and LoRA found no nn.Linear left to adapt)
    quantised = quantised_weights(model)
    if quantised:
        raise ValueError(f"{type(model).__name__} is quantised ({'; '.join(quantised[:3])}), and its int8 layers pass "
                         f"no gradient to their inputs, so no {method} adapter could learn: add the adapter to the "
                         "float model (quantise after merge_and_unload())")


def _prompt_tuning_config(model: nn.Module, task_type: str, overrides: dict[str, Any]) -> Any:
    import peft

    if task_type not in ("CAUSAL_LM", "SEQ_CLS", "SEQ_2_SEQ_LM"):
        # For TOKEN_CLS peft prepends the prompt to the inputs but not to the labels (a mismatch for any model).
        raise ValueError(f"prompt_tuning is offered for causal LMs, sequence classifiers and encoder-decoders; "
                         f"{type(model).__name__} needs {task_type}, for which peft does not line the labels up with "
                         "the prompted inputs (use method='lora')")
    config = model.config
    # peft reads these sizes from the model's config under transformers' names, which only attention models have.
    # A soft prompt uses token_dim alone; the head count and layer count size the past key values of prefix
    # tuning, which this method does not build, and are given so that peft does not ask for them.
    values = {"task_type": task_type, "num_virtual_tokens": 8, "token_dim": config.embedding_dim,
              "num_transformer_submodules": 1, "num_layers": config.num_hidden_layers,
              "num_attention_heads": getattr(config, "num_attention_heads", None) or 1}
    values.update(overrides)
    _check_prompt_sizes(model, values)
    return peft.PromptTuningConfig(**values)


def _check_prompt_sizes(model: nn.Module, values: dict[str, Any]) -> None:
    """Sizes of a soft prompt that cannot run: ``num_virtual_tokens=0`` trained nothing without a word, a negative or
    fractional one failed in torch ("negative dimension"), a ``token_dim`` other than the embedding width failed at the
    first forward ("Sizes of tensors must match"), and a second transformer submodule on a model without a decoder
    made a prompt the attention mask did not fit."""
    count, width = values["num_virtual_tokens"], values["token_dim"]
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
        raise ValueError(f"prompt_tuning: num_virtual_tokens={count!r} must be a positive integer, the length of the "
                         "soft prompt in tokens")
    expected = model.get_input_embeddings().embedding_dim
    if width != expected:
        raise ValueError(f"prompt_tuning: token_dim={width!r} must be the width of {type(model).__name__}'s input "
                         f"embeddings, {expected}, to which the prompt is prepended (leave token_dim out)")
    submodules = values["num_transformer_submodules"]
    if values["task_type"] != "SEQ_2_SEQ_LM" and submodules != 1:
        raise ValueError(f"prompt_tuning: num_transformer_submodules={submodules!r} must be 1 for "
                         f"{values['task_type']}: a second prompt is for an encoder-decoder's decoder")


def adapter_layers(model: Any) -> list[str]:
    """The class names of the peft adapter layers ``model`` holds (a PeftModel, or adapters injected into a model;
    none for a plain or merged model): what converting, exporting or publishing refuses until they are merged."""
    modules = model.modules() if isinstance(model, nn.Module) else ()
    return sorted({type(module).__name__ for module in modules if type(module).__module__.split(".")[0] == "peft"})


def refuse_adapters(model: Any, then: str) -> None:
    """Refuse a model object holding peft adapter layers (a PeftModel, or adapters injected into a model), saying
    what to do ``then``, once they are merged: converted, their weights were named as missing and unexpected tensors
    (``base_layer``, ``lora_A`` ...) or a PeftModel as no model at all; published, a PeftModel saved its adapter
    alone."""
    adapters = adapter_layers(model)
    if adapters:
        raise ValueError(f"{type(model).__name__} holds peft adapter layers ({', '.join(adapters)}); merge them into "
                         f"its weights first (a PeftModel's model.merge_and_unload()), then {then}")


__all__ = ["METHODS", "PEFT_TASK_TYPES", "adapter_layers", "peft_config", "peft_targets", "refuse_adapters"]
