"""What every converter shares: reading a source checkpoint one tensor at a time, building the seqzoo model from
mapped tensors without a random init, copying tokenizer files, and the errors that name what did not fit.

Sources are read lazily. A folder's safetensors (one file, or shards with ``model.safetensors.index.json``) are
opened with ``safe_open`` and each tensor is read when the mapping asks for it; ``pytorch_model*.bin`` files are
loaded with ``weights_only=True`` and ``mmap=True``. The seqzoo model is built on the meta device and adopts the
mapped tensors (``assign=True``), so peak memory stays near one copy of the weights.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import logging
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from seqzoo.conversions.downloads import download
from seqzoo.json_keys import unique_json_pairs
from seqzoo.models.configuration_utils import COMPUTE_DTYPES
from seqzoo.outputs import check_named, staged_folder

logger = logging.getLogger("seqzoo")

# The tokenizer files a converted folder takes from its source folder. (Its generation_config.json is the model's:
# every converter reading a folder carries the folder's generation config on the model it returns, whose
# save_pretrained writes it.)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def conversion_dtype(dtype: Any) -> torch.dtype | None:
    """The ``dtype`` argument of a converter as a torch dtype: a ``torch.dtype`` models compute in, one of
    :data:`DTYPES`' names (as ``--dtype`` takes them), or None (the source's). Checked before anything is read:
    anything else is refused, where a name reached ``Tensor.to`` as a device ("Invalid device string: 'bfloat16'")
    after every tensor was read, and an integer dtype failed inside ``load_state_dict``."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype in COMPUTE_DTYPES:  # (float8 is floating point, and computes nothing)
        return dtype
    raise ValueError(f"dtype={dtype!r} is not a dtype to convert to; give a torch dtype (float32, bfloat16, float16 "
                     f"or float64), one of the names {', '.join(map(repr, DTYPES))}, or None for the source's")


class SourceWeights(Mapping):
    """Read-only ``{name: tensor}`` view of a checkpoint whose tensors are read on access (and not kept)."""

    def __init__(self, keys: dict[str, Callable[[], torch.Tensor]], origin: str) -> None:
        self._readers = keys
        self.origin = origin

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._readers[key]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._readers)

    def __len__(self) -> int:
        return len(self._readers)

    def without(self, keys: Any) -> "SourceWeights":
        """The same view less the tensors ``keys`` (none of them is read)."""
        left_out = set(keys)
        return SourceWeights({key: read for key, read in self._readers.items() if key not in left_out}, self.origin)

    @classmethod
    def from_dict(cls, state_dict: Mapping[str, torch.Tensor], origin: str = "the state dict") -> "SourceWeights":
        if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
            raise ValueError(f"{origin} must be a dict of tensor names to tensors; got {type(state_dict).__name__}")
        return cls({key: (lambda value=value: value) for key, value in state_dict.items()}, origin)


def read_folder_weights(folder: str | Path) -> SourceWeights:
    """The weights of a checkpoint folder: sharded or single safetensors, else ``pytorch_model*.bin``."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_index(index)
        return _safetensors_weights({key: folder / shard for key, shard in weight_map.items()}, str(folder))
    files = sorted(folder.glob("*.safetensors"))
    if files:
        locations: dict[str, Path] = {}
        for f in files:
            for key in _safetensors_keys(f):
                _refuse_duplicate(key, locations.get(key), f, "model.safetensors.index.json")
                locations[key] = f
        return _safetensors_weights(locations, str(folder))
    bin_index = folder / "pytorch_model.bin.index.json"
    files = sorted({folder / shard for shard in _read_index(bin_index).values()}) if bin_index.is_file() \
        else sorted(folder.glob("pytorch_model*.bin"))
    if files:
        tensors: dict[str, torch.Tensor] = {}
        origins: dict[str, Path] = {}
        for f in files:
            for key, tensor in load_torch_file(f).items():
                _refuse_duplicate(key, origins.get(key), f, "pytorch_model.bin.index.json")
                tensors[key], origins[key] = tensor, f
        return SourceWeights.from_dict(tensors, str(folder))
    raise ValueError(f"{str(folder)!r} holds no weights (model*.safetensors, with or without an index, or "
                     f"pytorch_model*.bin)")


def _refuse_duplicate(key: str, first: Path | None, second: Path, index: str) -> None:
    """Two weight files of one folder that hold the same tensor (a second copy, EMA weights, an older save): which one
    is the checkpoint is not for seqzoo to guess (transformers reads model.safetensors alone, or what the index
    names)."""
    if first is not None:
        raise ValueError(f"tensor {key!r} is in both {first.name!r} and {second.name!r} in {str(second.parent)!r}, and "
                         f"no {index} says which to read; move the file that is not part of the checkpoint out of the "
                         f"folder")


def load_torch_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``torch.save``-d state dict, loaded without running code from the file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {str(path)!r} is empty (0 bytes): damaged or truncated?")
    if _is_safetensors(path):  # a state dict saved with safetensors under a .pth / .pt / .bin name: no pickle at all
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:
            raise ValueError(f"cannot read {str(path)!r} as safetensors (damaged or truncated?): {err}") from err
    if not is_torch_save_file(path):  # (torch's unpickler then failed with "101", "pop from empty list", ...)
        raise ValueError(_NOT_TORCH_SAVE.format(path=str(path)))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:  # not a zip archive: a legacy-format file cannot be memory-mapped
        if "mmap" not in str(err):
            raise _unreadable(path, err) from err
        loaded = _load_weights_only(path)
    except Exception as err:
        raise _weights_only_error(path, err) from err
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        # A training checkpoint often nests the weights ({"state_dict": ..., "optimizer": ...}): name where they are.
        nested = [key for key, value in (loaded.items() if isinstance(loaded, dict) else ())
                  if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values())]
        hint = (f"; its entry {nested[0]!r} is one: save that entry alone, torch.save(checkpoint[{nested[0]!r}], "
                f"...)" if nested else "")
        raise ValueError(f"{str(path)!r} holds a {type(loaded).__name__}, not a state dict (a dict of tensor names "
                         f"to tensors){hint}")
    return loaded


def _is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts as a safetensors file does: an 8-byte little-endian header length (safetensors caps
    it at 100 MB), then a JSON object (a torch.save file starts with a zip's "PK" or a pickle's 0x80). A truncated
    file still starts so, and is then named damaged by the safetensors reader."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= 100_000_000


def is_torch_save_file(path: Path) -> bool:
    """Whether ``path`` starts as a torch.save file does: a zip archive's "PK" (torch >= 1.6) or a pickle's protocol
    opcode 0x80 (the legacy format). Text or another format starts otherwise."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or head[:1] == b"\x80"


def _load_weights_only(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise _weights_only_error(path, err) from err


def weights_only_refusal(err: Exception) -> str | None:
    """Why ``torch.load(..., weights_only=True)`` refused a file: ``"format"`` (no torch.save file: text, another
    format, or damaged), ``"pickle"`` (it holds pickled Python objects), or None (another error). torch's own text
    says "Weights only load failed" for both and advises ``weights_only=False``, which would run code from the file:
    callers say what was wrong in their own words instead."""
    text = str(err)
    if "Unsupported operand" in text:  # no pickle opcode where one should be
        return "format"
    if "Weights only load failed" in text or "Unsupported global" in text:
        return "pickle"
    return None


_NOT_TORCH_SAVE = ("{path!r} is not a PyTorch checkpoint (no torch.save file: text, or another format?) or it is "
                   "damaged; give the file saved with torch.save(model.state_dict(), f)")


def _weights_only_error(path: Path, err: Exception) -> ValueError:
    refusal = weights_only_refusal(err)
    if refusal == "format":
        return ValueError(_NOT_TORCH_SAVE.format(path=str(path)))
    if refusal == "pickle":
        return ValueError(
            f"{str(path)!r} holds pickled Python objects (a whole model saved with torch.save(model, f)?), which "
            f"seqzoo does not load because unpickling runs code from the file. In the program that trained it, "
            f"save the weights instead:  torch.save(model.state_dict(), {path.stem + '-state_dict.pt'!r})"
        )
    return _unreadable(path, err)


def _unreadable(path: Path, err: Exception) -> ValueError:
    # torch says little: "[Errno 22] Invalid argument" for a truncated zip, nothing at all for some damaged files
    return ValueError(f"cannot read {str(path)!r} as a PyTorch checkpoint (damaged or truncated?): "
                      f"{str(err).strip() or type(err).__name__}")


def require_floating_point(tensors: Mapping[str, torch.Tensor], origin: str) -> None:
    """Refuse integer (quantized), float8 or boolean weights: casting them to the model's dtype would keep their codes,
    not the values they stand for (float8 checkpoints hold their scales in other tensors)."""
    odd = [f"{key} ({str(tensor.dtype).removeprefix('torch.')})" for key, tensor in tensors.items()
           if not tensor.is_floating_point() or tensor.dtype.itemsize == 1]  # (float8: scaled codes, as int8's)
    if odd:
        raise ValueError(f"{origin} holds tensors that are not floating point, or float8: {show(odd)}; seqzoo "
                         f"converts floating-point weights (float32, bfloat16, float16 ...): dequantize a quantized "
                         f"checkpoint first")


def require_values(tensors: Mapping[str, torch.Tensor], origin: str) -> None:
    """Refuse tensors on the meta device, which have a shape and no values: a transformers model loaded with
    ``device_map`` offloading keeps its offloaded weights there (loaded at each call by accelerate's hooks), as does
    one built under ``init_empty_weights``. The checks on the values failed on them with "Tensor.item() cannot be
    called on meta tensors"."""
    meta = [key for key, tensor in tensors.items() if tensor.is_meta]
    if meta:
        raise ValueError(f"{origin} holds tensors without values (on the meta device): {show(meta)}; a model loaded "
                         "with device_map offloading, or built under init_empty_weights, keeps its weights elsewhere: "
                         "convert the folder it was loaded from (read tensor by tensor), or the model loaded whole")


def require_finite(tensors: Mapping[str, torch.Tensor], origin: str, dtype: torch.dtype) -> None:
    """Refuse NaN or infinite weights (in ``dtype``, the one converted to: float16 overflows past 65504): the
    converted folder would compute NaN, and ``from_pretrained`` refuses it, long after the conversion said nothing."""
    bad = [key for key, tensor in tensors.items() if not bool(torch.isfinite(tensor).all())]
    if bad:
        raise ValueError(f"{origin} holds NaN or infinite weights in {dtype}: {show(bad)}; a model with them computes "
                         f"NaN (a damaged checkpoint, or values beyond {dtype}'s range: convert to a wider --dtype)")


def _read_index(path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique_json_pairs)["weight_map"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise ValueError(f"{str(path)!r} is not a checkpoint index (a JSON object with a 'weight_map'): {err}") from err
    bad = (f"a {type(weight_map).__name__}" if not isinstance(weight_map, dict) else
           next((f"{key!r}: {shard!r}" for key, shard in weight_map.items() if not isinstance(shard, str)), None))
    if bad:
        raise ValueError(f"{str(path)!r} is not a checkpoint index: its weight_map must map tensor names to shard file "
                         f"names, got {bad}")
    from seqzoo.models.loading import check_shard_names

    check_shard_names(path, weight_map.values())
    return weight_map


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except Exception as err:
        raise ValueError(f"cannot read {str(path)!r} as safetensors (damaged or truncated?): {err}") from err


def _safetensors_weights(locations: dict[str, Path], origin: str) -> SourceWeights:
    from safetensors import safe_open

    handles: dict[Path, Any] = {}

    def reader(key: str, path: Path) -> Callable[[], torch.Tensor]:
        def read() -> torch.Tensor:
            try:
                if path not in handles:
                    handles[path] = safe_open(path, framework="pt")
                return handles[path].get_tensor(key)
            except Exception as err:
                raise ValueError(f"cannot read tensor {key!r} from {str(path)!r}: {err}") from err
        return read

    return SourceWeights({key: reader(key, path) for key, path in locations.items()}, origin)


class Reader:
    """Reads source tensors for a mapping, checking each one's shape, and collects every problem (missing,
    mis-shaped, left unused) so that one error names them all. A tensor that is missing or mis-shaped reads as
    zeros of the expected shape, so the mapping runs to the end."""

    def __init__(self, source: Mapping[str, torch.Tensor], ignored: tuple[str, ...] = ()) -> None:
        self.source = source
        self.ignored = ignored  # regular expressions of source keys that carry nothing (buffers, unused LoRAs)
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.misshaped: list[str] = []

    def has(self, key: str) -> bool:
        return key in self.source

    def __call__(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        self.used.add(key)
        if key not in self.source:
            self.missing.append(key)
            return torch.zeros(shape)
        tensor = self.source[key]
        if tuple(tensor.shape) != tuple(shape):
            self.misshaped.append(f"{key} (source {tuple(tensor.shape)}, expected {tuple(shape)})")
            return torch.zeros(shape, dtype=tensor.dtype)
        return tensor

    def finish(self, message: str) -> None:
        """Raise ValueError(message: problems) if any tensor was missing, mis-shaped or not used."""
        import re

        unexpected = sorted(key for key in self.source
                            if key not in self.used and not any(re.fullmatch(p, key) for p in self.ignored))
        problems = []
        if self.missing:
            problems.append(f"missing tensors {show(self.missing)}")
        if unexpected:
            problems.append(f"unexpected tensors {show(unexpected)}")
        if self.misshaped:
            problems.append(f"mis-shaped tensors {show(self.misshaped)}")
        if problems:
            raise ValueError(f"{message}: {'; '.join(problems)}")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``: a key given twice in one object (which json, and transformers, would read as the
    last value) is refused, as anything else that is no JSON object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique_json_pairs)
    except (OSError, ValueError, RecursionError) as err:
        raise ValueError(f"cannot read {what} {str(path)!r}: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{what} {str(path)!r} must hold a JSON object, got {type(value).__name__}")
    return value


def config_dict(config: Any, what: str) -> dict[str, Any]:
    """The ``config=`` given with a state dict, as the dict of its config.json: a dict as it is, a config object's
    ``to_dict()`` (fla's RWKV7Config, any transformers config), a dataclass's fields (mamba_ssm's MambaConfig).
    Anything else is refused, naming its type: the object had reached ``.get`` (AttributeError) or ``in``
    (TypeError), and a string was read letter by letter as the config's keys."""
    import dataclasses

    if isinstance(config, Mapping):
        return dict(config)
    if callable(getattr(config, "to_dict", None)) and not isinstance(config, type):
        return config.to_dict()
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    raise ValueError(f"{what} must be the dict of the checkpoint's config.json (or its config object); got "
                     f"{type(config).__name__} {config!r:.60}")


# What a saved checkpoint folder holds: writing a model into a folder that has one would replace it (and a sharded
# source's shards would be deleted by save_pretrained before anything else fails).
CHECKPOINT_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")
# What a tokenizer is read from: left in a destination by an earlier conversion (whose config and weights were
# removed, or which failed before writing them), these would stay beside the new model and AutoTokenizer would read
# them in place of the new source's tokenizer (a stale tokenizer.json over the new vocabulary files, say).
TOKENIZER_READS = (*TOKENIZER_FILES, "tokenization_*.py")


def check_destination(source: Any, destination: str | Path, copies_tokenizer: bool = True) -> Path:
    """Refuse, before anything is read or written, a destination that is the source folder or holds a checkpoint
    already (a config.json or weights: writing the model there would replace them, and ``save_pretrained`` deletes a
    sharded checkpoint's old shards), and (``copies_tokenizer``: the source folder's tokenizer and generation-config
    files are to be copied) a source folder holding one of them damaged, or whose tokenizer could not be copied whole
    (see :func:`tokenizer_code_files`); returns the destination as a Path."""
    check_named(destination, "destination")
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise ValueError(f"destination {str(destination)!r} is a file; pass a folder (new or empty) to write to")
    target = destination.resolve()
    if isinstance(source, (str, Path)) and Path(source).is_dir() and Path(source).resolve() == target:
        raise ValueError(f"destination {str(destination)!r} is the source folder: converting there would overwrite "
                         "the source; pass a new folder")
    if target.is_dir():
        found = sorted({path.name for pattern in CHECKPOINT_FILES for path in target.glob(pattern)})
        tokenizer = sorted({path.name for pattern in TOKENIZER_READS for path in target.glob(pattern)})
        if found:
            also = f" and its tokenizer files ({show(tokenizer, 4)})" if tokenizer else ""
            raise ValueError(f"destination {str(destination)!r} already holds a checkpoint ({', '.join(found[:4])}"
                             f"{' ...' if len(found) > 4 else ''}); writing there would replace it: pass a new or "
                             f"empty folder, or remove those files{also} first")
        if tokenizer:
            raise ValueError(f"destination {str(destination)!r} already holds tokenizer files ({show(tokenizer, 4)}), "
                             "of an earlier conversion?: they would stay beside the converted model, and AutoTokenizer "
                             "would read them in place of the new source's tokenizer; pass a new or empty folder, or "
                             "remove those files first")
    if copies_tokenizer and isinstance(source, (str, Path)) and Path(source).is_dir():
        # The tokenizer files are copied as they are, and the generation config read: a damaged one would be handed
        # on. (Where none is copied, as with fla-rwkv7 --world-tokenizer, the files are no concern of the conversion.)
        from seqzoo.models.loading import damaged_json_files

        damaged = damaged_json_files(Path(source), [name for name in (*TOKENIZER_FILES, "generation_config.json")
                                                    if name.endswith(".json")])
        if damaged:
            raise ValueError(f"{str(source)!r}: {damaged}, and it would be copied into {str(destination)!r} as it is; "
                             "fix or delete the file, or copy it again from where the model came from")
        tokenizer_code_files(Path(source))
    return destination


def local_source(source: Any) -> Any:
    """``source`` with a Hub repo id replaced by the folder it downloads to (into the Hub cache, once); a model
    object, a folder or a file as it is."""
    if isinstance(source, (str, Path)) and not Path(source).exists():
        try:
            return download(str(source))
        except ValueError as err:
            near = _near_folders(Path(source))
            if not near:
                raise
            raise ValueError(f"{err} (no folder {str(source)!r} here either: did you mean "
                             f"{', '.join(map(repr, near))}?)") from err.__cause__
    return source


def _near_folders(path: Path) -> list[str]:
    """Folders beside ``path`` whose names are close to its name (a mistyped local source)."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        siblings = [p.name for p in parent.iterdir() if p.is_dir()] if parent.is_dir() else []
    except OSError:
        return []
    return [str(parent / name) for name in difflib.get_close_matches(path.name, siblings, n=3)]


def conversion_source(source: Any, destination: str | Path) -> Any:
    """The source of a conversion into the folder ``destination``, checked with it (:func:`check_destination`), and
    a Hub repo id replaced by the folder it downloads to: that folder's tokenizer files are then checked and copied,
    and its generation config read, as a local folder's (given the repo id, which is no folder, they were left
    behind). The destination is checked before the download, so that one refused costs none."""
    check_destination(source, destination)
    folder = local_source(source)
    if folder is not source:
        check_destination(folder, destination)
    return folder


@contextlib.contextmanager
def staged_destination(destination: str | Path) -> Iterator[Path]:
    """An empty folder beside ``destination`` (checked by :func:`check_destination`) to write a conversion's whole
    output into, moved into place only once every file is written (:func:`seqzoo.outputs.staged_folder`). A failure
    midway (a full disk, a read-only folder, any error) leaves ``destination`` as it was, so the same command runs
    again: written in place, a full disk left a ``config.json`` and weights that loaded, without the tokenizer and
    half the code bundle, and the rerun was refused as a destination holding a checkpoint. A write failure raises
    :class:`seqzoo.outputs.OutputError`, an OSError naming the destination and the reason ("No space left on
    device"); safetensors' own error named neither."""
    destination = Path(destination)
    if destination.is_symlink():  # staged beside the folder it names: a rename cannot cross filesystems
        destination = destination.resolve()
    # A folder holding other files, which check_destination lets through (notes, the vocab.txt given to --vocab),
    # keeps them: the new files join them one rename each, config.json last.
    keeps_files = destination.is_dir() and any(destination.iterdir())
    with staged_folder(destination, merge=keeps_files) as staging:
        yield staging


def save_converted(model: Any, source: Any, destination: str | Path) -> None:
    """Save the converted ``model`` (with the generation config it carries) to ``destination`` with the tokenizer files
    of the source folder ``source`` (:func:`copy_tokenizer_files`), whole or not at all (:func:`staged_destination`)."""
    with staged_destination(destination) as staging:
        model.save_pretrained(staging)
        copy_tokenizer_files(source, staging)


def tokenizer_code_files(folder: Path) -> tuple[list[str], list[str]]:
    """(modules, elsewhere) of a tokenizer with its own code: the files of the modules tokenizer_config.json's
    ``auto_map`` names for ``AutoTokenizer``, and its references to code in another Hub repository
    (``repo--module.Class``, which ``trust_remote_code`` fetches from there). Raises ValueError for a module the folder
    lacks: the copied tokenizer_config.json would name code the converted folder does not have, and its tokenizer
    would fail to load."""
    config_path = folder / "tokenizer_config.json"
    if not config_path.is_file():
        return [], []
    auto_map = read_json(config_path, "tokenizer config").get("auto_map") or {}
    refs = auto_map.get("AutoTokenizer", []) if isinstance(auto_map, dict) else auto_map
    refs = [ref for ref in ([refs] if isinstance(refs, str) else refs) if isinstance(ref, str)]
    elsewhere = [ref for ref in refs if "--" in ref]
    modules = list(dict.fromkeys(ref.split(".")[0] + ".py" for ref in refs if "--" not in ref))
    missing = [name for name in modules if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{str(config_path)!r} names tokenizer code in its auto_map "
                         f"({', '.join(ref for ref in refs if '--' not in ref)}) that {str(folder)!r} does not have "
                         f"({', '.join(missing)}): the converted folder's tokenizer would fail to load. Put the "
                         "module beside it (from where the model came from), or remove auto_map from "
                         "tokenizer_config.json if the tokenizer needs no code of its own")
    return modules, elsewhere


def copy_tokenizer_files(source: Any, destination: Path, names: tuple[str, ...] = TOKENIZER_FILES) -> list[str]:
    """Copy the tokenizer files a source folder has; returns the names copied."""
    if not (isinstance(source, (str, Path)) and Path(source).is_dir()):
        return []
    folder = Path(source)
    wanted = list(names)
    # A tokenizer with its own code names its module in auto_map; the module and its vocabulary come along.
    modules, elsewhere = tokenizer_code_files(folder)
    if elsewhere:
        logger.warning("%s names tokenizer code in another Hub repository (%s), which is not copied: the converted "
                       "folder's tokenizer loads it from there (AutoTokenizer.from_pretrained with "
                       "trust_remote_code=True, online)", folder / "tokenizer_config.json", ", ".join(elsewhere))
    wanted += modules
    if modules or elsewhere:
        wanted += [p.name for p in folder.glob("*vocab*") if p.is_file()]
    copied = []
    for name in dict.fromkeys(wanted):
        if (folder / name).is_file():
            shutil.copy2(folder / name, destination / name)
            copied.append(name)
    return copied


def valid_token_ids(values: dict[str, Any], vocab_size: int, origin: str) -> dict[str, Any]:
    """pad/bos/eos ids of a source config, with those outside the vocabulary dropped (and said so; of a list of eos
    ids, only those outside it go: the others still end a text, as in the source). A value that is no token id at all
    (a string, a float, a bool, an empty list) is a damaged config: it raises, naming the field."""
    kept = {}
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = values.get(name)
        ids = value if isinstance(value, (list, tuple)) else [value]
        if value is not None and (not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
            raise ValueError(f"{origin} sets {name}={value!r}: a token id is an integer (or a list of integers for "
                             f"eos_token_id), or null")
        if value is None or all(0 <= i < vocab_size for i in ids):
            kept[name] = list(value) if isinstance(value, tuple) else value
        elif isinstance(value, (list, tuple)) and any(0 <= i < vocab_size for i in ids):
            # A list of end ids (eos_token_id): only those outside the vocabulary go; the others still end a text.
            inside = [i for i in ids if 0 <= i < vocab_size]
            logger.warning("%s sets %s=%r, with ids outside its vocabulary of %d (%s); the converted config keeps "
                           "the others, %r", origin, name, value, vocab_size,
                           ", ".join(str(i) for i in ids if i not in inside), inside)
            kept[name] = inside
        else:
            logger.warning("%s sets %s=%r, outside its vocabulary of %d; the converted config leaves it unset",
                           origin, name, value, vocab_size)
            kept[name] = None
    return kept


def head_is_tied(config: Any, head: torch.Tensor | None, embedding: torch.Tensor | None, origin: str) -> bool:
    """Whether the converted model ties its head to the embedding: as the source config says, unless the source
    also holds a head that differs from its embedding. transformers then loads that checkpoint untied, with the
    file's head (and a warning); so does seqzoo: ``config.tie_word_embeddings`` is set to False, said in a warning.
    (Dropping the file's head for the embedding would compute other logits than the source, silently.)"""
    if not getattr(config, "tie_word_embeddings", False):
        return False
    if head is None or embedding is None or (head.shape == embedding.shape and torch.equal(head, embedding)):
        return True
    logger.warning("%s: its config ties the head to the embedding (tie_word_embeddings), but it holds an "
                   "lm_head.weight that differs from the embedding; converted untied with that head, as transformers "
                   "loads it", origin)
    config.tie_word_embeddings = False
    return False


def build_model(config: Any, weights: dict[str, torch.Tensor], dtype: torch.dtype, origin: str,
                generation: Any = None) -> Any:
    """The seqzoo causal LM of ``config`` holding copies of ``weights`` (seqzoo names; the dict is emptied) cast to
    ``dtype``, in eval mode, generating with the source's ``generation`` config where it has one (its token ids
    outside the vocabulary dropped, as from the config). Raises ValueError naming every missing, unexpected or
    mis-shaped tensor. A tied head may be left out."""
    from seqzoo.registry import architecture_for_model_type

    require_values(weights, origin)
    # Integer (quantized) tensors cast to ``dtype`` would keep their codes, not the values they stand for.
    require_floating_point(weights, origin)
    tied = head_is_tied(config, weights.get("lm_head.weight"), weights.get("model.embed_tokens.weight"), origin)
    if tied:
        weights.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = architecture_for_model_type(config.model_type).causal_lm_class(config)
    expected = model.state_dict()
    required = {k: v for k, v in expected.items() if not (tied and k == "lm_head.weight")}
    check_tensors(weights, required, f"the weights of {origin} do not fit the seqzoo {config.model_type} model "
                                     f"of the sizes read from it")
    # Copies, one tensor at a time: the model must not share memory with a source the caller still holds (a model
    # object, a state dict), and each source tensor is released as soon as it is copied.
    state = {}
    for key in list(weights):
        state[key] = weights.pop(key).to(dtype, copy=True).contiguous()
    require_finite(state, origin, dtype)
    if tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        model.tie_weights()
    materialize_buffers(model)
    if generation is not None:
        model.generation_config = generation_inside_vocabulary(generation, config.vocab_size, origin)
    return model.eval()


def generation_inside_vocabulary(generation: Any, vocab_size: int, origin: str) -> Any:
    """A copy of the transformers GenerationConfig ``generation`` without its pad/bos/eos ids outside a vocabulary
    of ``vocab_size`` (:func:`valid_token_ids`; an id that is no token id at all is named)."""
    generation = copy.deepcopy(generation)
    kept = valid_token_ids(generation.to_dict(), vocab_size, f"the generation config of {origin}")
    for name, ids in kept.items():
        setattr(generation, name, ids)
    return generation


def check_tensors(found: Mapping[str, torch.Tensor], expected: Mapping[str, Any], message: str) -> None:
    problems = []
    missing = sorted(set(expected) - set(found))
    if missing:
        problems.append(f"missing tensors {show(missing)}")
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        problems.append(f"unexpected tensors {show(unexpected)}")
    shapes = [f"{key} (source {tuple(found[key].shape)}, expected {tuple(expected[key].shape)})"
              for key in sorted(set(expected) & set(found)) if tuple(found[key].shape) != tuple(expected[key].shape)]
    if shapes:
        problems.append(f"mis-shaped tensors {show(shapes)}")
    if problems:
        raise ValueError(f"{message}: {'; '.join(problems)}")


def materialize_buffers(model: torch.nn.Module) -> None:
    """Give values to the buffers a model built on the meta device still lacks, with the model's own init."""
    # Non-persistent buffers (rotary frequencies, the sinusoidal table) are functions of the config, absent from
    # checkpoints: compute them with the model's own init, module by module.
    for module in model.modules():
        if any(buffer.is_meta for buffer in module.buffers(recurse=False)):
            module.to_empty(device="cpu", recurse=False)
            model._init_weights(module)
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:
        raise RuntimeError(f"conversion left tensors without values: {show(left)}")


def show(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f" ... ({len(items)} in all)" if len(items) > limit else "")


__all__ = ["CHECKPOINT_FILES", "DTYPES", "Reader", "SourceWeights", "TOKENIZER_FILES", "TOKENIZER_READS",
           "TransformersSource", "build_model", "check_destination", "check_tensors", "config_dict",
           "conversion_dtype", "conversion_source", "copy_tokenizer_files", "download", "generation_inside_vocabulary",
           "head_is_tied", "is_torch_save_file", "load_torch_file", "load_transformers_source", "local_source",
           "materialize_buffers", "read_folder_weights", "read_generation_config", "read_json", "refuse_adapters",
           "require_floating_point", "require_values", "save_converted", "show", "staged_destination",
           "tokenizer_code_files", "valid_token_ids", "weights_only_refusal"]


class TransformersSource(NamedTuple):
    """A transformers checkpoint as :func:`load_transformers_source` reads it."""

    config: Any  # its transformers config
    weights: SourceWeights  # read lazily
    # The fields its config.json sets (of a model object, every field of its config): where transformers reads a
    # field's default, a converter may read the tensors instead (Qwen2's config has no attention_bias at all).
    stated: frozenset[str]
    # Its GenerationConfig (a model object's, a folder's generation_config.json), or None: how the source generates
    # (Llama 3's second end-of-text id is there only), which the converted model keeps.
    generation: Any


def load_transformers_source(source: Any, model_types: tuple[str, ...], command: str) -> TransformersSource:
    """The config, lazily read weights and stated config fields of a transformers model object, a folder saved from
    one, or a Hub repo id, refusing any ``model_type`` outside ``model_types`` with an error that names it."""
    from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
    from transformers import AutoConfig, PreTrainedModel

    from seqzoo.utils import unwrap

    source = unwrap(source)  # (torch.compile's wrapper: its state dict names every tensor `_orig_mod.<name>`)
    refuse_adapters(source)
    if isinstance(source, PreTrainedModel):
        _require_model_type(getattr(source.config, "model_type", None), model_types, command)
        _refuse_quantized(getattr(source.config, "quantization_config", None), type(source).__name__, command)
        weights = SourceWeights.from_dict({k: v.detach() for k, v in source.state_dict().items()},
                                          type(source).__name__)
        return TransformersSource(source.config, weights, frozenset(source.config.to_dict()),
                                  getattr(source, "generation_config", None))
    if not isinstance(source, (str, Path)):
        raise ValueError(f"source must be a transformers model, a folder or a Hub repo id; got {type(source).__name__}")
    if Path(source).is_file():  # (else looked up as a Hub repo id, which failed offline after five retries)
        raise ValueError(f"{str(source)!r} is a file; give the folder that holds the model's config.json and "
                         "weights, or its Hub repo id")
    folder = Path(local_source(source))
    if not (folder / "config.json").is_file():
        raise ValueError(f"{str(source)!r} has no config.json; expected a folder saved by save_pretrained")
    values = read_json(folder / "config.json", "config")
    if "model_type" not in values and "d_model" in values and "n_layer" in values:
        raise ValueError(f"{str(folder / 'config.json')!r} has no model_type but mamba_ssm's fields (d_model, "
                         f"n_layer): a raw mamba_ssm checkpoint, which `seqzoo convert mamba-ssm` converts, not "
                         f"{command}")
    _require_model_type(values.get("model_type"), model_types, command)
    _refuse_quantized(values.get("quantization_config"), repr(str(folder / "config.json")), command)
    try:
        config = AutoConfig.from_pretrained(folder)
    except (StrictDataclassFieldValidationError, StrictDataclassClassValidationError) as err:
        # transformers' configs check field types: '"hidden_size": "32"' in config.json fails here
        raise ValueError(f"{str(folder / 'config.json')!r} has a value of the wrong type or range: "
                         f"{' '.join(str(err).split())}") from err
    return TransformersSource(config, read_folder_weights(folder), frozenset(values), read_generation_config(folder))


def read_generation_config(folder: Path) -> Any:
    """The GenerationConfig of ``folder``'s generation_config.json, or None without one; a file transformers cannot
    read is named, and so is a setting of the wrong type or range that seqzoo's loading refuses in a saved folder
    (transformers takes "do_sample": "false", which samples, and "num_beams": 0, which divides by zero in
    generate())."""
    from transformers import GenerationConfig

    from seqzoo.models.loading import generation_setting_problem

    path = folder / "generation_config.json"
    if not path.is_file():
        return None
    try:
        generation = GenerationConfig.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{str(path)!r} is no generation config transformers reads: {' '.join(str(err).split())}"
                         ) from err
    problem = generation_setting_problem(read_json(path, "generation config"))
    if problem:
        raise ValueError(f"{str(path)!r}: {problem}; fix or delete the file, or copy it again from where the model "
                         "came from")
    return generation


def refuse_adapters(source: Any) -> None:
    """Refuse a model object holding peft adapter layers, which a conversion cannot read (seqzoo.adapters)."""
    from seqzoo.adapters import refuse_adapters as refuse

    refuse(source, "convert the merged model")


def _refuse_quantized(quantization: Any, where: str, command: str) -> None:
    """A quantised checkpoint holds integer codes and scale tensors, which the float models cannot take: refused by
    its ``quantization_config`` before any weight is read (else it fails as "unexpected tensors")."""
    if quantization is None:
        return
    method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(
        quantization, "quant_method", None)
    method = getattr(method, "value", method)  # (transformers' QuantizationMethod enum)
    raise ValueError(f"{where} is quantised (quantization_config, quant_method {method!r}); {command} converts "
                     "float checkpoints only: convert the unquantised checkpoint, or dequantise it first (load it "
                     "with transformers, call model.dequantize() and save_pretrained), then quantise the seqzoo "
                     "model (seqzoo.quantize_int8)")


def _require_model_type(model_type: Any, allowed: tuple[str, ...], command: str) -> None:
    if model_type not in allowed:
        raise ValueError(f"cannot convert a {model_type!r} model with {command}: the source must have model_type "
                         f"{' or '.join(map(repr, allowed))}")
