"""Training state on disk without pickle: safetensors for tensors, JSON for everything else.

A checkpoint holds what an exact resume needs, and nothing is read with ``pickle`` (a pickle runs code while it is
read, so a checkpoint folder someone else wrote could run anything with ``torch.load(weights_only=False)``):

==========================  ===========================================================================
``model.safetensors``       the full (unsharded) model state; a tied tensor is stored once
``optimizer.safetensors``   the optimizer's per-parameter tensors keyed ``<parameter name>/<slot>``; its
                            ``param_groups`` and non-tensor state as JSON in the file's metadata
``scheduler.json``          the LR scheduler's ``state_dict()``
``scaler.json``             the fp16 gradient scaler's ``state_dict()`` (fp16 runs only)
``rng_state_<rank>.json``   Python, NumPy and torch (CPU, CUDA) generator states of process ``rank``
==========================  ===========================================================================

The checkpoint's ``trainer_state.json`` (written last, see :mod:`seqzoo.training.checkpoint`) records the size
and SHA-256 of every one of these files. Reading refuses a checkpoint whose files are missing, damaged (checksum,
parse or shape errors) or incomplete, naming the file: a resume is exact or it does not happen.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
from pathlib import Path
from typing import Any, Iterator

import torch

from seqzoo.utils import file_sha256

FORMAT = 2  # 1: accelerate's save_state (pickles); 2: this module
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "scaler.json"
# Files accelerate's save_state wrote (format 1). Reading any of them means unpickling.
LEGACY_FILES = ("optimizer.bin", "scheduler.bin", "scaler.pt", "custom_checkpoint_0.pkl", "random_states_0.pkl")


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed exactly; the message names the file and says what to do."""


class NonFiniteError(FloatingPointError):
    """Training stopped because the weights became (or were about to become) NaN/inf; nothing non-finite was
    saved."""


def nonfinite_names(named: list[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors that hold NaN or inf. One fused norm over all of them is the cheap test (about 1 ms per
    million values); only when it is not finite are the tensors checked one by one, since a 2-norm also overflows
    for huge finite values."""
    named = [(name, t.detach()) for name, t in named if t.is_floating_point() and t.numel()]
    if not named:
        return []
    with torch.no_grad():
        if bool(torch.isfinite(torch.nn.utils.get_total_norm([t for _, t in named], 2.0, foreach=True))):
            return []
        return [name for name, t in named if not bool(torch.isfinite(t).all())]


def require_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """The last guard before weights reach the disk: refuse to write NaN/inf (the training loop checks every step,
    so this only fires if something else changed the weights)."""
    bad = nonfinite_names(list(state.items()))
    if bad:
        raise NonFiniteError(f"refusing to save {what}: {', '.join(bad[:5])} hold NaN or inf")


def rng_file(rank: int) -> str:
    return f"rng_state_{rank}.json"


def file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _write_json(path: Path, value: Any, indent: int | None = 1) -> None:
    path.write_text(json.dumps(value, indent=indent), encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# Writing.


def tied_parameter_names(model: torch.nn.Module) -> dict[str, str]:
    """{name: name it is tied to} for every parameter registered under a second name (a tied head). FSDP gathers
    each name into its own tensor, so storage alone no longer shows the tie."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in first:
            tied[name] = first[id(parameter)]
        else:
            first[id(parameter)] = name
    return tied


def _unique_tensors(state: dict[str, torch.Tensor], tied: dict[str, str]) -> tuple[dict[str, torch.Tensor],
                                                                                  dict[str, str]]:
    """Tensors that share storage or are ``tied`` are stored once; ``aliases`` maps each other name to the stored
    one."""
    stored: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in state.items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype)
        if tied.get(name) in stored:
            aliases[name] = tied[name]
        elif tensor.numel() and key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            stored[name] = tensor.detach().contiguous()
    return stored, aliases


def save_model_state(state: dict[str, torch.Tensor], path: Path, tied: dict[str, str] | None = None) -> None:
    """``tied``: {name: name it is tied to} (:func:`tied_parameter_names`), stored once like shared storage."""
    from safetensors.torch import save_file

    require_finite(state, "a checkpoint")
    stored, aliases = _unique_tensors(state, tied or {})
    save_file(stored, str(path), metadata={"format": str(FORMAT), "aliases": json.dumps(aliases)})


def save_optimizer_state(state: dict[str, Any], path: Path) -> None:
    """``state`` is a full optimizer state dict keyed by parameter name (torch.distributed.checkpoint's form)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param, slots in state["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param}/{slot}"] = value.detach().contiguous()
            else:
                scalars.setdefault(param, {})[slot] = value
    metadata = {"format": str(FORMAT), "param_groups": json.dumps(state["param_groups"]),
                "scalars": json.dumps(scalars)}
    save_file(tensors, str(path), metadata=metadata)


def rng_state() -> dict[str, Any]:
    """This process's generator states as JSON-ready values."""
    import numpy as np

    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"kind": kind, "keys": [int(k) for k in keys], "position": int(position), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": _encode(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_encode(s) for s in torch.cuda.get_rng_state_all()]
    return state


@contextlib.contextmanager
def callers_generators() -> Iterator[None]:
    """The block's caller finds Python's, NumPy's and torch's generators as it left them (CPU, and each CUDA device's
    where CUDA was initialised before the block): a training run seeds them all (accelerate's ``set_seed``) and draws
    from them, and left so, every run moved the caller's random stream to the same place whatever its own seed."""
    import numpy as np

    python, numpy_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _encode(byte_tensor: torch.Tensor) -> str:
    return base64.b64encode(byte_tensor.numpy().tobytes()).decode("ascii")


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)


def save_rng_state(path: Path) -> None:
    _write_json(path, rng_state(), indent=None)


def save_json_state(value: dict[str, Any], path: Path) -> None:
    _write_json(path, value)


# ----------------------------------------------------------------------------------------------------------------
# Reading. Every reader raises CheckpointError naming the file.


def verify_files(checkpoint: Path, recorded: Any, expected: list[str]) -> None:
    """Every file in ``expected`` exists and has the size and SHA-256 that ``trainer_state.json`` recorded."""
    state_file = checkpoint / "trainer_state.json"
    if not isinstance(recorded, dict):
        raise CheckpointError(f"{str(state_file)!r} lists no checkpoint files ('files' is {recorded!r}); the "
                              "checkpoint is damaged and cannot be resumed exactly")
    for name in expected:
        path = checkpoint / name
        if name not in recorded:
            raise CheckpointError(f"{str(state_file)!r} records no checksum for {name!r}; the checkpoint is "
                                  "damaged or incomplete and cannot be resumed exactly")
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {str(path)!r} is missing, so the run cannot be resumed exactly "
                                  f"(it holds the {_what(name)})")
        if file_record(path) != recorded[name]:
            raise CheckpointError(f"checkpoint file {str(path)!r} is damaged: its size or SHA-256 differs from what "
                                  f"was recorded when it was written (it holds the {_what(name)}), so the run "
                                  "cannot be resumed exactly")


def _what(name: str) -> str:
    if name.startswith("rng_state_"):
        return f"random generator states of process {name[len('rng_state_'):-len('.json')]}"
    return {MODEL_FILE: "model weights", OPTIMIZER_FILE: "optimizer state", SCHEDULER_FILE: "LR schedule position",
            SCALER_FILE: "fp16 gradient scaler state"}.get(name, "training state")


def _damaged(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(f"checkpoint file {str(path)!r} cannot be read ({type(err).__name__}: {err}); the run "
                           "cannot be resumed exactly from it")


def load_model_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()}
        for alias, name in json.loads(metadata.get("aliases", "{}")).items():
            state[alias] = state[name]
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise _damaged(path, err) from err
    return state


def load_optimizer_state(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            slots: dict[str, dict[str, Any]] = {}
            for key in handle.keys():
                param, _, slot = key.rpartition("/")
                slots.setdefault(param, {})[slot] = handle.get_tensor(key)
        for param, values in json.loads(metadata["scalars"]).items():
            slots.setdefault(param, {}).update(values)
        groups = json.loads(metadata["param_groups"])
    except Exception as err:
        raise _damaged(path, err) from err
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])  # JSON has no tuples; torch's optimizers keep betas as one
    return {"state": slots, "param_groups": groups}


def load_json_state(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise _damaged(path, err) from err
    if not isinstance(value, dict):
        raise _damaged(path, ValueError(f"expected a JSON object, got {type(value).__name__}"))
    return value


def restore_rng_state(path: Path) -> None:
    """Set this process's generators from ``path``; every value is checked before any generator is touched."""
    import numpy as np

    state = load_json_state(path)
    cuda_states = state.get("cuda", [])
    if not isinstance(cuda_states, list):
        raise _damaged(path, ValueError(f"'cuda' holds {type(cuda_states).__name__}, not a list of generator states"))
    _check_gpu_count(path, len(cuda_states))
    try:
        python = state["python"]
        gauss = python["gauss"]
        if gauss is not None and not isinstance(gauss, float):  # random.setstate takes any object here
            raise ValueError(f"python 'gauss' is {gauss!r}: expected a float or null")
        python_state = (int(python["version"]), tuple(int(v) for v in python["state"]), gauss)
        n = state["numpy"]
        keys = np.array(n["keys"], dtype=np.uint32)
        numpy_state = (str(n["kind"]), keys, int(n["position"]), int(n["has_gauss"]), float(n["cached_gaussian"]))
        torch_state = _decode(state["torch"])
        cuda_states = [_decode(s) for s in cuda_states]
        # Malformed states are rejected on throwaway generators before any real one is changed.
        # (random.setstate sets its cached gaussian before it checks the rest of the state)
        random.Random().setstate(python_state)
        torch.Generator().set_state(torch_state)
        np.random.RandomState().set_state(numpy_state)
        for device, cuda_state in enumerate(cuda_states):
            _cuda_generator(device).set_state(cuda_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    except Exception as err:
        raise _damaged(path, err) from err


def _check_gpu_count(path: Path, saved: int) -> None:
    """Refuse ``saved`` CUDA generator states (one per GPU the saving process saw; restored device i from state i)
    where this process sees another number of GPUs (a run saved without a GPU and resumed with one, or the reverse):
    the draws on the GPUs (dropout, say) could not continue as in an uninterrupted run. (They were refused as an
    unreadable file, or, without a GPU here, left unrestored without a word.)"""
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if saved != here:
        raise CheckpointError(
            f"checkpoint file {str(path)!r} holds {saved} CUDA generator state(s), one per GPU the process that "
            f"saved it saw, and this process sees {here} GPU(s): the run cannot be resumed exactly here. Resume it "
            "where each process sees as many GPUs as the one that saved it (CUDA_VISIBLE_DEVICES chooses them; "
            "an empty value hides them all), or start it again with a new output_dir")


def _cuda_generator(device: int) -> torch.Generator:
    """A throwaway generator of CUDA device ``device``, to check a saved state on before the real one is set."""
    return torch.Generator(device=f"cuda:{device}")
