"""What ``SeqzooPreTrainedModel.from_pretrained`` checks of a checkpoint beyond transformers' own loading: that it
holds this architecture, that its generation config, index and weight files are not damaged (transformers ignores
some of those silently, or fails naming no file), what transformers' own loading error means, that the loaded
tensors fit the model (strict loading) and are finite, and fresh values for what a lenient load leaves without
one."""

from __future__ import annotations

import codecs
import contextlib
import difflib
import json
import logging
import math
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig

from seqzoo.json_keys import DuplicateKeyError, unique_json_pairs
from seqzoo.layers.mixer import Mixer
from seqzoo.models.configuration_utils import saved_class_name
from seqzoo.models.weight_storage import offloaded_value

logger = logging.getLogger(__name__)

# What from_pretrained hands on to reading the config.json it checks (a Hub download's options).
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


def check_checkpoint_model_type(cls: type, source: Any, kwargs: dict[str, Any]) -> str | None:
    """Raise unless ``source`` holds a model of ``cls``'s architecture; return the class it was saved as."""
    expected = getattr(cls.config_class, "model_type", None)
    if source is None or not expected:
        return None
    hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    config_dict, _ = PreTrainedConfig.get_config_dict(source, **hub_kwargs)
    found = config_dict.get("model_type")
    if found != expected:
        raise ValueError(
            f"checkpoint {str(source)!r} holds a {found!r} model, not {expected!r} ({cls.__name__}); load it with "
            f"AutoModelForCausalLM.from_pretrained, or with the class of its architecture"
        )
    return saved_class_name(config_dict.get("architectures"), f"checkpoint {str(source)!r}")


def damaged_json_files(folder: Path, names: Any) -> str:
    """Which of ``names`` in ``folder`` are there but not JSON as transformers reads it, with the reason (empty when
    none). A name that is there but no file is damaged too: a link to nothing (a Hub cache's snapshot copied without
    the blobs its links point to) or a folder, which transformers passes over as if the file were absent. So is a file
    that begins with a byte-order mark, which transformers' JSON reading stops at (it then passed over a
    generation_config.json or tokenizer_config.json so written), and one giving a key twice in one object, whose
    first value transformers would drop without a word."""
    found = []
    for name in names:
        path = folder / name
        if _not_a_file(path):
            found.append(f"{name} is damaged ({_not_a_file(path)})")
        elif path.is_file():
            raw = path.read_bytes()
            if raw.startswith(codecs.BOM_UTF8):
                found.append(f"{name} is damaged (it begins with a byte-order mark, which transformers does not read: "
                             "save it as UTF-8 without one)")
                continue
            try:
                value = json.loads(raw.decode("utf-8"), object_pairs_hook=unique_json_pairs)
            except (ValueError, RecursionError) as err:  # (UnicodeDecodeError is a ValueError)
                found.append(f"{name} is damaged ({err})")
                continue
            if not isinstance(value, dict):  # (transformers then fails with a TypeError or AttributeError)
                found.append(f"{name} is damaged (it holds a JSON {type(value).__name__}, not an object)")
    return "; ".join(found)


def _not_a_file(path: Path) -> str:
    """Why ``path``, which is there, is no file: a link to nothing (or a loop of links) or a folder; empty where it
    is a file or absent."""
    if path.is_symlink() and not path.exists():
        return f"a link to {os.readlink(path)!r}, which does not exist"
    if path.exists() and not path.is_file():
        return "a folder, not a file"
    return ""


def check_config_file(source: Any, kwargs: dict[str, Any]) -> None:
    """Refuse a local folder whose config.json transformers read otherwise than it was written: one giving a key
    twice (a hand-edited "dropout" added below the saved one) loaded with the last value, the first dropped silently.
    (One that is no JSON at all transformers refuses itself, naming the file.)"""
    if not isinstance(source, (str, os.PathLike)):
        return
    path = Path(source) / kwargs.get("subfolder", "") / "config.json"
    if path.is_file():
        try:
            json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=unique_json_pairs)
        except DuplicateKeyError as err:
            raise ValueError(f"{str(source)!r}: config.json is damaged ({err}); fix the file, or save or download the "
                             "checkpoint again") from None
        except (ValueError, RecursionError):  # (transformers' own OSError names it: "... is not a valid JSON file")
            pass


def check_generation_config_file(source: Any, kwargs: dict[str, Any]) -> None:
    """Refuse a local folder whose generation_config.json is damaged: transformers' from_pretrained ignores it
    (logging at info level) and generates with the model config's defaults, other than what was saved."""
    if kwargs.get("generation_config") is not None or not isinstance(source, (str, os.PathLike)):
        return
    folder = Path(source) / kwargs.get("subfolder", "")
    if folder.is_dir():
        damaged = damaged_json_files(folder, ("generation_config.json",))
        if damaged:
            raise ValueError(f"{str(source)!r}: {damaged}; transformers would ignore it and generate with other "
                             "settings than were saved. Fix or delete the file (or pass generation_config=...)")
        path = folder / "generation_config.json"
        if path.is_file():  # token ids of the wrong type failed inside generate() ("invalid data type 'str'")
            values = json.loads(path.read_bytes())
            vocab_size = _vocab_size(folder, kwargs)
            for name, holds in _GENERATION_TOKEN_IDS.items():
                value = values.get(name)
                ids = value if isinstance(value, list) and holds != "id" else [value]
                if value is not None and (holds == "list" and not isinstance(value, list)
                                          or not all(type(i) is int and i >= 0 for i in ids)):
                    allowed = {"id": "a token id is an integer >= 0",
                               "id or list": f"a token id is an integer >= 0 (or, for {name}, a list of them)",
                               "list": "expected a list of token ids (integers >= 0)"}[holds]
                    raise ValueError(f"{str(path)!r}: {name}={value!r} is invalid: {allowed}; fix or delete the file "
                                     "(or pass generation_config=...)")
                # (an eos outside the vocabulary never ended a generation; a pad outside it failed in the middle of
                # one, naming no file)
                if value is not None and vocab_size is not None and any(i >= vocab_size for i in ids):
                    raise ValueError(f"{str(path)!r}: {name}={value!r} is invalid: token ids must be in [0, "
                                     f"vocab_size={vocab_size}) of the model's config; fix or delete the file (or "
                                     "pass generation_config=...)")
            problem = generation_setting_problem(values)
            if problem:
                raise ValueError(f"{str(path)!r}: {problem}; fix or delete the file (or pass generation_config=...)")
            _warn_unknown_generation_settings(path, values)


def generation_setting_problem(values: dict[str, Any]) -> str | None:
    """The first setting of a generation_config.json's ``values`` of the wrong type or range (_GENERATION_SETTINGS),
    said as "name=value is invalid: expected ..."; None where there is none."""
    for name, (kind, lowest) in _GENERATION_SETTINGS.items():
        value = values.get(name)
        if value is not None and not _is_setting(value, kind, lowest):
            allowed = "true or false" if kind is bool else f"{'an integer' if kind is int else 'a number'}" + (
                f" >= {lowest}" if lowest is not None else "")
            return f"{name}={value!r} is invalid: expected {allowed} (or null)"
    return None


def _warn_unknown_generation_settings(path: Path, values: dict[str, Any]) -> None:
    """Warn of generation_config.json keys that are no setting of transformers' GenerationConfig: transformers keeps
    them as attributes nothing reads, so a misspelt "max_new_token": 5 generated 20 tokens without a word. (A warning,
    not an error: a folder saved by a newer transformers may hold a setting this one lacks.)"""
    from transformers import GenerationConfig

    known = set(GenerationConfig().to_dict())
    for name in values:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            logger.warning("%s: %r is no generation setting of this transformers' GenerationConfig%s; it is not read",
                           path, name, f" (did you mean {close[0]!r}?)" if close else "")


# generation_config.json's token ids, by what each holds: one id, one or a list of them, or a list (a hand-edited
# "forced_eos_token_id": "1" failed inside generate() with "invalid data type 'str'", 999 with an IndexError, and
# "suppress_tokens": "a" with "too many dimensions 'str'", naming no file; one outside the vocabulary was taken).
_GENERATION_TOKEN_IDS = {
    **dict.fromkeys(("bos_token_id", "pad_token_id", "decoder_start_token_id", "forced_bos_token_id"), "id"),
    **dict.fromkeys(("eos_token_id", "forced_eos_token_id"), "id or list"),
    **dict.fromkeys(("suppress_tokens", "begin_suppress_tokens"), "list"),
}

# generation_config.json settings that transformers compares, counts or branches on, by what they must be: a
# hand-edited "num_beams": "2" or "max_new_tokens": "20" failed inside transformers naming no file, "num_beams": 0
# divided by zero, "do_sample": "false" sampled and "max_length": 5.5 was taken.
_GENERATION_SETTINGS: dict[str, tuple[type, int | None]] = {
    **dict.fromkeys(("max_length", "max_new_tokens", "min_length", "min_new_tokens", "top_k", "no_repeat_ngram_size",
                     "encoder_no_repeat_ngram_size"), (int, 0)),
    **dict.fromkeys(("num_beams", "num_beam_groups", "num_return_sequences"), (int, 1)),
    **dict.fromkeys(("do_sample", "use_cache", "renormalize_logits", "remove_invalid_values", "output_scores",
                     "output_logits", "return_dict_in_generate", "output_attentions", "output_hidden_states"),
                    (bool, None)),
    **dict.fromkeys(("temperature", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
                     "repetition_penalty", "encoder_repetition_penalty", "length_penalty", "diversity_penalty",
                     "guidance_scale", "max_time"), (float, None)),
}


def _is_setting(value: Any, kind: type, lowest: int | None) -> bool:
    """Whether a generation setting read from JSON is of ``kind`` (a float setting takes an integer; true is no
    integer) and at least ``lowest``."""
    if kind is float:
        return type(value) in (int, float) and math.isfinite(value)
    return type(value) is kind and (lowest is None or value >= lowest)


def _vocab_size(folder: Path, kwargs: dict[str, Any]) -> int | None:
    """The vocabulary size a load of ``folder`` gives the model: the keyword's, else config.json's (None where
    neither says one)."""
    size = kwargs.get("vocab_size")
    if size is None:
        config = kwargs.get("config")
        size = None if isinstance(config, (str, os.PathLike)) else getattr(config, "vocab_size", None)
    if size is None:
        try:
            size = json.loads((folder / "config.json").read_bytes()).get("vocab_size")
        except (OSError, ValueError, AttributeError, RecursionError):
            return None
    return size if type(size) is int else None


# safetensors dtype names of floating-point tensors; any other (I8 ... I64, U8, BOOL) in a float parameter's place would
# be cast to the parameter's dtype, keeping the codes and not the values (an embedding of 0.01s reads as zeros).
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2"}


def _with_variant(name: str, variant: str | None) -> str:
    """A weights file's name for a variant, as transformers names it: model.safetensors -> model.v1.safetensors."""
    if not variant:
        return name
    stem, _, extension = name.rpartition(".")
    return f"{stem}.{variant}.{extension}"


def weight_file_states(folder: Any, variant: str | None) -> dict[str, Any]:
    """The state (``os.stat``'s identity and times, or None) of the single weights file and of the checkpoint index
    that a save into ``folder`` with ``variant`` may write: read before the save, for :func:`remove_stale_weights`."""
    states = {}
    for name in ("model.safetensors", "model.safetensors.index.json"):
        try:
            found = os.stat(Path(folder) / _with_variant(name, variant))
            states[name] = (found.st_ino, found.st_mtime_ns, found.st_size)
        except OSError:
            states[name] = None
    return states


def check_other_variants_kept(folder: Any, variant: str | None) -> None:
    """Refuse a save into ``folder`` that transformers' clean-up of earlier shards would take another variant's
    shards with: it removes every ``<name>-NNNNN-of-NNNNN`` file whose name starts with the new weights' name without
    its extension, so a save without a variant removes ``model.v1-00001-of-00002.safetensors`` of a ``variant="v1"``
    save, whose index is then left naming files that are gone."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    own = _with_variant("model.safetensors.index.json", variant)
    prefix = _with_variant("model.safetensors", variant).removesuffix(".safetensors")
    for index in sorted(folder.glob("model.safetensors.index*.json")):
        if index.name == own:
            continue
        try:
            weight_map = json.loads(index.read_bytes()).get("weight_map", {})
            files = set(weight_map.values())
        except (OSError, ValueError, AttributeError, TypeError, RecursionError):
            continue  # (a damaged index is named when it is loaded)
        doomed = sorted(name for name in files if isinstance(name, str) and name.startswith(prefix)
                        and re.fullmatch(r".*?-\d{5}-of-\d{5}", name.removesuffix(".safetensors"))
                        and (folder / name).is_file())
        if doomed:
            raise ValueError(
                f"save_pretrained into {str(folder)!r} would delete the shards indexed by {index.name} "
                f"({', '.join(doomed[:3])}{' ...' if len(doomed) > 3 else ''}): transformers' save removes earlier "
                f"shards whose names start with {prefix!r}; save this one into another folder, or with a variant")


def remove_stale_weights(folder: Any, variant: str | None, before: dict[str, Any]) -> None:
    """After a save into ``folder``: remove the single weights file that a sharded save left beside its index (it
    would be loaded instead of the new shards), or the index a single-file save left (its shards transformers'
    save removes). Only a file the save did not write, beside one it did."""
    after = weight_file_states(folder, variant)
    written = [name for name, state in after.items() if state is not None and state != before[name]]
    if len(written) != 1:
        return
    (stale,) = set(after) - set(written)
    if after[stale] is not None:
        path = Path(folder) / _with_variant(stale, variant)
        why = ("it would have been loaded in place of the new shards" if stale == "model.safetensors"
               else "it indexed shards that are gone")
        logger.warning("save_pretrained: removed %s, left in the folder by an earlier save: this save wrote %s, and %s",
                       path, _with_variant(written[0], variant), why)
        path.unlink()


def hub_snapshot(source: Any, kwargs: dict[str, Any]) -> Path | None:
    """The local folder of the Hub cache that a repo id ``source`` loaded from (its ``config.json``'s snapshot, at
    ``revision`` in ``cache_dir``), for the checks a local folder gets; None for a local folder, or where the cache
    holds none."""
    if not isinstance(source, str) or Path(source).is_dir():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        subfolder = kwargs.get("subfolder") or ""
        found = try_to_load_from_cache(source, f"{subfolder}/config.json" if subfolder else "config.json",
                                       cache_dir=kwargs.get("cache_dir"), revision=kwargs.get("revision"))
    except Exception:  # noqa: BLE001 -- not a repo id the cache knows: nothing more to check
        return None
    if not isinstance(found, str):
        return None
    folder = Path(found).parent
    for _ in Path(subfolder).parts:
        folder = folder.parent
    return folder


def check_weight_files(source: Any, kwargs: dict[str, Any]) -> None:
    """Refuse a local folder whose checkpoint index is damaged (transformers fails with a KeyError or TypeError that
    names no file), whose weights (safetensors, or else a pickle) hold integer or boolean tensors (transformers casts
    them silently), or whose weight file or index is a folder or a link to nothing (transformers passes over it, to a
    pytorch_model.bin beside a model.safetensors so damaged: an older save's weights).
    A pre-quantised checkpoint (``quantization_config``) holds integer tensors by design and is left alone, as is a
    file that cannot be read (the load names it). With ``variant="v1"`` the files read are those transformers
    loads, ``model.v1.safetensors`` or ``model.safetensors.index.v1.json`` and its shards."""
    if not isinstance(source, (str, os.PathLike)) or kwargs.get("quantization_config"):
        return
    folder = Path(source) / kwargs.get("subfolder", "")
    if not folder.is_dir():
        return
    try:
        if "quantization_config" in json.loads((folder / "config.json").read_bytes()):
            return
    except (OSError, ValueError, TypeError, RecursionError):
        return  # (a damaged config.json is named by the config loader)
    variant = kwargs.get("variant")
    # (transformers reads the safetensors weights where there are any, else the pickled ones; with
    # use_safetensors=False the pickled ones)
    kinds = (("model.safetensors", "model.safetensors.index.json"),
             ("pytorch_model.bin", "pytorch_model.bin.index.json"))
    for name in (name for pair in kinds[kwargs.get("use_safetensors") is False:] for name in pair):
        path = folder / _with_variant(name, variant)
        if _not_a_file(path):  # (transformers passes over it as if absent: to older pickled weights beside it)
            raise ValueError(f"{str(path)!r} is damaged ({_not_a_file(path)}); transformers would pass over it and "
                             "read other weights or none: save or download the checkpoint again")
    for single, index in kinds[kwargs.get("use_safetensors") is False:]:
        single, index = folder / _with_variant(single, variant), folder / _with_variant(index, variant)
        if single.is_file() or index.is_file():
            break
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            value = json.loads(index.read_bytes().decode("utf-8"), object_pairs_hook=unique_json_pairs)
        except (ValueError, RecursionError) as err:  # (a tensor named twice: transformers reads the last shard named)
            raise ValueError(f"{str(index)!r} is damaged ({err}); save or download the checkpoint again") from None
        weight_map = value.get("weight_map") if isinstance(value, dict) else None
        if not (isinstance(weight_map, dict) and weight_map
                and all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())
                and isinstance(value.get("metadata", {}), dict)):
            raise ValueError(f"{str(index)!r} is damaged: a checkpoint index is a JSON object whose 'weight_map' maps "
                             "tensor names to shard files; save or download the checkpoint again")
        if "metadata" not in value:  # (transformers: KeyError 'metadata')
            raise ValueError(f"{str(index)!r} has no 'metadata' entry, which transformers needs (an empty one will "
                             'do: {"metadata": {}, "weight_map": ...})')
        check_shard_names(index, weight_map.values())
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        return
    odd = []
    for path in files:
        try:
            odd += _non_float_tensors(path)
        except Exception:  # noqa: BLE001 -- missing or damaged (or a pickle of more than tensors): the load names it
            return
    if odd:
        raise ValueError(
            f"the weights of {str(source)!r} hold tensors that are not floating point: {', '.join(odd[:8])}"
            f"{' ...' if len(odd) > 8 else ''}; loading would cast their integer codes to the model's dtype (a damaged "
            "or quantised file). Save or download the checkpoint again"
        )


def check_shard_names(index: Path, names: Any) -> None:
    """Refuse a checkpoint index that names a shard outside its folder (``"../x.safetensors"``, an absolute path:
    transformers read whatever file that was) or one the folder lacks (transformers' FileNotFoundError said nothing of
    the index)."""
    outside = sorted({name for name in names if Path(name).is_absolute() or ".." in Path(name).parts})
    if outside:
        raise ValueError(f"{str(index)!r} names shard files outside its folder: {', '.join(map(repr, outside))}; an "
                         "index names the shards beside it (model-00001-of-00002.safetensors): save or download the "
                         "checkpoint again")
    missing = sorted({name for name in names if not (index.parent / name).is_file()})
    if missing:
        raise ValueError(f"{str(index)!r} names shard files that are not in its folder: {', '.join(map(repr, missing))}"
                         "; save or download the checkpoint again")


def _non_float_tensors(path: Path) -> list[str]:
    """"name (dtype)" of every tensor a weights file holds that is not floating point: read from a safetensors file's
    header, or from the tensors of a pickle (read with ``weights_only=True``, memory-mapped where it can be)."""
    if path.suffix == ".bin":
        # (torch.save's legacy format, which transformers reads too, cannot be memory-mapped: refusing to map it
        # left its integer tensors unchecked. Judged by torch, which knows float types safetensors has no name for,
        # such as float8_e4m3fnuz.)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        return [f"{key} ({_SAFETENSORS_DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype).removeprefix('torch.'))})"
                for key, tensor in state.items() if isinstance(tensor, torch.Tensor) and not tensor.is_floating_point()]
    with open(path, "rb") as handle:  # a safetensors file starts with its header's length (8 bytes) and the header
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size)) if 0 < size <= 100_000_000 else None
    return [f"{key} ({entry['dtype']})" for key, entry in header.items()
            if key != "__metadata__" and entry["dtype"] not in _FLOAT_DTYPES]


# The safetensors names of torch's integer and boolean dtypes, by which a pickle's such tensors are named as a
# safetensors file's are.
_SAFETENSORS_DTYPE_NAMES = {torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                            torch.uint8: "U8", torch.bool: "BOOL"}


class HeldLoadReports(logging.Filter):
    """transformers' load report ("LOAD REPORT ... MISSING: those params were newly initialized"), held back from its
    logger while seqzoo judges the load: a refused load raises without it (it described a load that then did not
    happen), an accepted one logs it as transformers would have (:meth:`release`)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in str(record.msg):
            self.records.append(record)
            return False
        return True

    def release(self) -> None:
        records, self.records = self.records, []
        for record in records:
            logging.getLogger(record.name).handle(record)


@contextlib.contextmanager
def held_load_reports() -> Iterator[HeldLoadReports]:
    """Hold transformers' load report back inside the block (see :class:`HeldLoadReports`)."""
    reports = HeldLoadReports()
    logger = logging.getLogger(_REPORTING_LOGGER)
    logger.addFilter(reports)
    try:
        yield reports
    finally:
        logger.removeFilter(reports)


_REPORTING_LOGGER = "transformers.modeling_utils"  # (the logger transformers' loading reports through)


def initialise_anew(model: nn.Module, info: dict[str, Any]) -> None:
    """Give the tensors that a lenient load (``strict=False``, or ``ignore_mismatched_sizes=True`` for mis-shaped
    ones) left without a value (missing from the checkpoint or mis-shaped in it) fresh values. transformers
    initialises a missing tensor through ``_init_weights``, but only for a module whose own parameters are not all
    loaded (for a model outside its package): a tensor of a mixer's submodule (Mamba's
    convolution, Mamba-2's gated norm, RWKV-7's ``ln_x``), whose initialisation is the mixer's own, would keep
    whatever memory the loader allocated (NaN at times). So an ``nn.Linear`` or ``nn.Embedding`` gets transformers'
    usual values, normal(0, initializer_range) and zero biases (an untied vocabulary head has no other rule), and then
    every mixer holding such a tensor runs its own ``init_weights`` again, its loaded tensors put back after it: its
    missing tensors get what a fresh model's mixer gives them. A classifier's ``score``, initialised by
    ``_init_weights`` itself, keeps its own."""
    std = getattr(model.config, "initializer_range", 0.02)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    keys = {*info.get("missing_keys", []), *(key for key, *_ in info.get("mismatched_keys", []))} - tied
    # (Not FSDP's RAM-efficient loading, which leaves them on meta on every rank but the first, whose values it
    # broadcasts: only a device_map offloads.)
    offloaded = [key for key in sorted(keys) if _is_meta(model, key)] if getattr(model, "hf_device_map", None) else []
    if offloaded:  # (accelerate's offload index has no entry for them: the first forward failed with a KeyError)
        raise ValueError(
            f"strict=False cannot give fresh values to tensors that a device_map offloads ({', '.join(offloaded[:4])}"
            f"{' ...' if len(offloaded) > 4 else ''}), nor can ignore_mismatched_sizes=True: load the checkpoint "
            "that way without offloading, save it, and load the saved folder with the device_map"
        )
    modules: dict[str, nn.Module] = {}
    with torch.no_grad():
        for key in sorted(keys):
            path, _, name = key.rpartition(".")
            try:
                module = model.get_submodule(path)
            except AttributeError:
                continue
            tensor = module._parameters.get(name)
            if (tensor is None or tensor.is_meta or type(module) not in (nn.Linear, nn.Embedding)
                    or module is getattr(model, "score", None)):
                continue
            if name == "weight":
                tensor.normal_(0.0, std)
            elif name == "bias":
                tensor.zero_()
            modules[path] = module
        # Then the architecture's own rule for the module, where it has one (a classic LM's untied decoder: torch's
        # uniform bound, where normal(0, initializer_range), the embedding's scale of 1, gave a first loss of 6.8
        # nats against ln(V) = 5.5; RWKV-7's orthogonal head), its loaded tensors put back after it.
        for path, module in modules.items():
            kept = {name: tensor.clone() for name, tensor in module._parameters.items()
                    if tensor is not None and f"{path}.{name}" not in keys}
            _initialise_loaded(model, module)
            for name, value in kept.items():
                module._parameters[name].copy_(value)
    _replay_mixer_initialisation(model, keys)


def _initialise_loaded(model: nn.Module, module: nn.Module) -> None:
    """Run the model's ``_init_weights`` on ``module`` after a load: transformers' init functions skip a tensor the
    load marked initialised, so the marks (of its submodules' tensors too) are lifted for the call and put back after
    it."""
    tensors = list(module.parameters())
    marks = [getattr(tensor, "_is_hf_initialized", None) for tensor in tensors]
    for tensor in tensors:
        tensor._is_hf_initialized = False
    model._init_weights(module)
    for tensor, mark in zip(tensors, marks):
        if mark is None:
            del tensor._is_hf_initialized
        else:
            tensor._is_hf_initialized = mark


def _is_meta(model: nn.Module, key: str) -> bool:
    try:
        tensor = model.get_parameter(key)
    except AttributeError:
        try:
            tensor = model.get_buffer(key)
        except AttributeError:
            return False
    return tensor.is_meta


def explain_load_error(err: Exception, source: Any) -> None:
    """What transformers' loading of ``source`` raised, explained: a pickle of Python objects that are not tensors,
    or a damaged safetensors file, raises a ``ValueError`` that says so; anything else returns, for the caller to
    raise as it was."""
    if type(err).__name__ == "UnpicklingError" and ("Weights only load failed" in str(err)
                                                    or "Unsupported global" in str(err)):
        # torch's own text advises weights_only=False, which would run the code the file holds
        raise ValueError(
            f"the weights of {str(source)!r} (a pytorch_model*.bin pickle) hold Python "
            "objects other than tensors, which are not loaded because unpickling them runs code from the "
            "file; load only checkpoints you trust, and save weights with safetensors (save_pretrained)"
        ) from None
    if type(err).__name__ == "SafetensorError":
        raise ValueError(
            f"the weights of {str(source)!r} cannot be read, the file is damaged or not a "
            f"safetensors file ({err}); save or download the checkpoint again"
        ) from err


def check_loaded_tensors(cls: type, model: nn.Module, info: dict[str, Any], source: Any, saved_as: str | None,
                         allow_mismatch: bool, heads: set[str]) -> None:
    """Raise unless the strict load of ``source`` into ``model`` (a ``cls``, saved as the class ``saved_as``) fits:
    no missing tensor (another head's own modules aside), no mis-shaped one (unless ``allow_mismatch``), none the
    model has no place for (the modules of ``heads``, every seqzoo head's, aside), and not saved as another head
    whose modules are this head's (a token classifier's ``score`` for a sequence classifier's: as like-shaped as a
    unidirectional model's are, it would load as this head's; with ``allow_mismatch`` this head starts anew
    instead). The error names every offending tensor with both shapes, and a classifier head of another number of
    labels as such."""
    shared = _modules_of_another_head(cls, model, info, saved_as)
    if shared and allow_mismatch:  # (ignore_mismatched_sizes=True: a new head on the checkpoint's backbone)
        with torch.no_grad():
            for name in shared:
                for module in model.get_submodule(name).modules():
                    if not any(tensor.is_meta for tensor in module.parameters(recurse=False)):
                        _initialise_loaded(model, module)
        # output_loading_info reports them as what they now are: tensors given fresh values, not the checkpoint's
        info["missing_keys"] = {*info.get("missing_keys", []),
                                *(key for key in model.state_dict() if key.startswith(tuple(f"{m}." for m in shared)))}
        shared = []
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = sorted(set(info.get("missing_keys", [])) - tied)
    if saved_as not in (None, cls.__name__):  # saved with another head: this head starts fresh
        missing = [key for key in missing if not key.startswith(tuple(f"{m}." for m in cls.head_modules))]
    mismatched = [] if allow_mismatch else sorted(info.get("mismatched_keys", []))
    # Tensors the model has no place for: a checkpoint of more layers than its config says, another layout.
    # Those of another head's modules (a causal LM loaded into a backbone or a classifier) are fine.
    unexpected = sorted(key for key in info.get("unexpected_keys", []) if key.split(".")[0] not in heads)
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if mismatched:
        shown = ", ".join(f"{key} (checkpoint {tuple(a)}, model {tuple(b)})" for key, a, b in mismatched[:8])
        problems.append(f"mis-shaped tensors: {shown}")
    if unexpected:
        problems.append(f"tensors this model has no place for: {', '.join(unexpected[:8])}"
                        f"{' ...' if len(unexpected) > 8 else ''} (does config.json match the weights?)")
    head = tuple(f"{module}." for module in cls.head_modules)
    if shared and not missing and not unexpected and all(key.startswith(head) for key, _, _ in mismatched):
        # Only the head differs, or nothing does: the other head's tensors would be this head's (the tagger's score
        # read at the last token as the text's label), whatever their shapes.
        shapes = f" ({'; '.join(problems)})" if problems else ""
        raise ValueError(
            f"checkpoint {str(source)!r} was saved as {saved_as}, another head whose {', '.join(shared)} would load "
            f"as this {cls.__name__}'s{shapes}; pass ignore_mismatched_sizes=True to start a new head on its "
            f"backbone, or load it as it was saved ({saved_as}, or the Auto class of its task)"
        )
    directions = _directions_differ(missing, unexpected)
    if directions is not None:
        saved, built = directions
        raise ValueError(
            f"checkpoint {str(source)!r} holds a {saved} model's layers ({unexpected[0]} ...), but this "
            f"{cls.__name__} is {built} (bidirectional={built == 'bidirectional'}, given beside the checkpoint or in "
            f"its config), and its layers' weights are laid out otherwise ({missing[0]} ...): load it with the "
            f"bidirectional setting it was saved with, or build the {built} model anew and train it "
            "(strict=False would start every layer anew, keeping only the embedding)"
        )
    if problems:
        labels = getattr(model.config, "num_labels", None)
        if (mismatched and not missing and not unexpected and "score" in cls.head_modules
                and all(key.startswith("score.") for key, _, _ in mismatched)
                and mismatched[0][1][0] != labels):
            # Only the classifier's head differs: a checkpoint classified into another number of labels
            # (num_labels / id2label given beside it), not a damaged one.
            saved = mismatched[0][1][0]
            raise ValueError(
                f"checkpoint {str(source)!r} holds a classifier head of {saved} "
                f"label(s), but this {cls.__name__} has num_labels={labels} (from the num_labels or "
                f"id2label given); load it without them to keep its {saved} labels, or pass "
                "ignore_mismatched_sizes=True to start a new head of "
                f"{labels} label(s) on its backbone ({'; '.join(problems)})"
            )
        other_head = saved_as not in (None, cls.__name__)
        if (mismatched and not missing and not unexpected and (other_head or "score" in cls.head_modules)
                and all(key.startswith(head) for key, _, _ in mismatched)):
            # Only this head's own tensors differ: a checkpoint saved with another head (a token classifier's score
            # is as wide as a position's hidden state, a sequence classifier's as its pooled one), or a setting given
            # beside it that changes the head's shape; not a damaged one.
            why = (f"was saved as {saved_as}, whose head does not fit this {cls.__name__}'s"
                   if other_head else
                   f"holds a head that does not fit this {cls.__name__}'s, as configured (a setting given beside "
                   "it, such as classifier_pooling, changes the head's shape)")
            raise ValueError(
                f"checkpoint {str(source)!r} {why} ({'; '.join(problems)}); pass ignore_mismatched_sizes=True to "
                "start a new head on its backbone, or load it as it was saved"
            )
        raise ValueError(
            f"checkpoint {str(source)!r} does not fit {cls.__name__}: "
            f"{'; '.join(problems)}. Save or download the checkpoint again; or, from Python, pass "
            "strict=False to load it anyway with the missing and mis-shaped weights re-initialised and the "
            "others ignored."
        )


_DIRECTIONS = (".left_to_right.", ".right_to_left.")


def _directions_differ(missing: list[str], unexpected: list[str]) -> tuple[str, str] | None:
    """("one-direction", "bidirectional") where the ``unexpected`` tensors are a one-direction model's layers that
    the ``missing`` ones hold in two directions (a causal LM's checkpoint loaded with ``bidirectional=True``), the
    other way round for the converse; else None."""
    def plain(key: str) -> str:
        for direction in _DIRECTIONS:
            key = key.replace(direction, ".")
        return key

    two = [key for key in missing if any(d in key for d in _DIRECTIONS)]
    if two and any(plain(key) in unexpected for key in two):
        return "one-direction", "bidirectional"
    two = [key for key in unexpected if any(d in key for d in _DIRECTIONS)]
    if two and any(plain(key) in missing for key in two):
        return "bidirectional", "one-direction"
    return None


def _modules_of_another_head(cls: type, model: nn.Module, info: dict[str, Any], saved_as: str | None) -> list[str]:
    """This head's modules (of ``cls.head_modules``) that a checkpoint saved as ``saved_as``, another head class of
    the same architecture (neither a subclass of ``cls`` nor its base, as a class a user derived is), held and loaded
    into ``model``: none for a causal LM's checkpoint loaded into a classifier (its ``lm_head`` is no ``score``), or a
    checkpoint saved as a class that is not imported (nothing to tell it by)."""
    if saved_as in (None, cls.__name__) or not cls.head_modules:
        return []
    # The classes to look among: every subclass of the base that declares head_modules first (SeqzooPreTrainedModel,
    # or its copy in a checkpoint's code bundle), found from cls so that this module imports none of them.
    root = next(klass for klass in reversed(cls.__mro__) if "head_modules" in vars(klass))
    pending, saved = [root], None
    while pending and saved is None:
        klass = pending.pop()
        if klass.__name__ == saved_as and getattr(klass, "config_class", None) is cls.config_class:
            saved = klass
        pending.extend(klass.__subclasses__())
    if saved is None or issubclass(saved, cls) or issubclass(cls, saved):
        return []
    missing = set(info.get("missing_keys", []))
    return [name for name in cls.head_modules if name in saved.head_modules
            and any(key.startswith(f"{name}.") and key not in missing for key in model.state_dict())]


def check_finite_weights(model: nn.Module, source: Any) -> None:
    """Raise if a floating-point weight that ``model`` loaded from ``source`` holds NaN or infinite values."""
    bad = []
    for name, tensor in model.state_dict().items():
        if tensor.is_meta:  # offloaded by a device_map: read back from accelerate's store
            tensor = offloaded_value(model, name)
        if tensor is not None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(name)
    if bad:
        raise ValueError(
            f"checkpoint {str(source)!r} holds NaN or infinite weights in "
            f"{', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}; a model with them computes NaN. Pass "
            "allow_nonfinite=True to load it anyway (to inspect it)"
        )


def _replay_mixer_initialisation(model: nn.Module, keys: set[str]) -> None:
    """Run ``init_weights`` of the nearest mixer holding each of ``keys`` (tensor names) again, putting back every
    other tensor of that mixer as it was loaded (see :func:`initialise_anew`)."""
    owners: dict[str, Mixer] = {}
    for key in keys:
        parts = key.split(".")[:-1]
        for end in range(len(parts), 0, -1):  # the tensor's module, then its parents
            prefix = ".".join(parts[:end])
            try:
                module = model.get_submodule(prefix)
            except AttributeError:
                break
            if isinstance(module, Mixer):
                owners.setdefault(prefix, module)
                break
    with torch.no_grad():
        for prefix, mixer in owners.items():
            tensors = mixer.state_dict()
            if any(tensor.is_meta for tensor in tensors.values()):
                continue  # (offloaded by a device_map: nothing here to write to)
            kept = {name: tensor.clone() for name, tensor in tensors.items() if f"{prefix}.{name}" not in keys}
            # (the model's rule for the mixer, not only the mixer's own: a classic LM's top layer starts smaller)
            _initialise_loaded(model, mixer)
            for name, value in kept.items():
                tensors[name].copy_(value)

