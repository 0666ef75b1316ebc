"""Small helpers that several parts of seqzoo share (the CLI, the lab, training, conversions).

Nothing here imports torch at module level: the command line parses its arguments before torch is loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Callable

# Numbers JSON does not accept but people type: ".5", "5.", "+3", "1.E-3".
_LOOSE_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def installed_version() -> str:
    """seqzoo's version as installed (``pip install -e .`` included), without importing the package."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("seqzoo")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def unwrap(model: Any) -> Any:
    """The model inside DDP/FSDP/compile wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


def count_parameters(model: Any) -> int:
    """Parameters of ``model``; a tied weight is one tensor and counts once (``parameters()`` yields it once)."""
    return sum(p.numel() for p in model.parameters())


def parse_value(raw: str) -> Any:
    """A command-line value: JSON (``64``, ``1e-3``, ``true``, ``null``, ``[8, 32]``, ``"7"``; also ``.5``), a flow
    list or mapping (``[mamba, attention]``, ``{dropout: 0.1}``), else the text itself (``gpt2``, ``no``).

    Only structured YAML is read as YAML: a bare ``no``, ``on`` or ``1e-3`` means what it says (YAML 1.1 would
    turn them into False, True and the string "1e-3").
    """
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    if _LOOSE_NUMBER.fullmatch(raw.strip()):
        return float(raw)
    lowered = raw.strip().lower()
    if lowered in ("true", "false", "null"):
        return json.loads(lowered)
    if raw.strip()[:1] in ("[", "{"):
        import yaml

        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ValueError(f"{raw!r} looks like a list or mapping but does not parse: {err}") from err
        if isinstance(value, (list, dict)):
            return value
    return raw


def parse_overrides(items: list[str], what: str = "override") -> dict[str, Any]:
    """``["hidden_size=64", "lr=1e-3", "variant=gpt2", "distances=[8, 32]"]`` -> ``{key: typed value}``.

    The one parser for every ``key=value`` list on the command line (config overrides, recipe overrides, kernel
    choices); values are read with :func:`parse_value`. A repeated key is an error, not a silent last-one-wins.
    """
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{what} {item!r} is not of the form key=value")
        if key in values:
            raise ValueError(f"{what} {key!r} is given twice ({values[key]!r} and {raw!r}); give it once")
        values[key] = parse_value(raw)
    return values


def new_figure(**options: Any) -> Any:
    """A matplotlib ``Figure`` (``options``: figsize, layout ...) drawn and saved by a canvas of its own (``savefig``
    picks the writer from the file's suffix), made without pyplot: the caller's pyplot stays as it was, its backend
    and its open figures. (``matplotlib.use("Agg")``, which the lab's figures and ``AttentionMap.plot`` called,
    switched a notebook's inline backend, or an interactive one, to Agg for the rest of the session.)"""
    from matplotlib.figure import Figure

    return Figure(**options)


class quiet_transformers:
    """Silence transformers' warnings, log lines and progress bars for a block (they would land in the middle of
    streamed text, or print a bar for saving one small file); with ``bars_only=True`` only its progress bars (a
    "Loading weights" bar above a command's one error line)."""

    def __init__(self, bars_only: bool = False) -> None:
        self.bars_only = bars_only

    def __enter__(self) -> None:
        import warnings

        from transformers.utils import logging as hf_logging

        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        self._verbosity = hf_logging.get_verbosity()
        self._bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        if not self.bars_only:
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            hf_logging.set_verbosity_error()

    def __exit__(self, *exc: Any) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._verbosity)
        if self._bars:
            hf_logging.enable_progress_bar()
        self._warnings.__exit__(*exc)


def bounded_int(low: int, high: int | None, allowed: str) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high) (no upper bound where ``high`` is None), else argparse's error
    naming the value and ``allowed``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value >= high):
            raise argparse.ArgumentTypeError(f"{text} is out of range: {allowed}")
        return value

    return parse


# --seed: what torch.manual_seed takes (else torch says only "Overflow when unpacking long long"); a training run's
# seed also goes through numpy's seeding (accelerate's set_seed), which takes [0, 2**32).
seed_value = bounded_int(-(2**63), 2**64, "a seed is an integer in [-2**63, 2**64)")
training_seed = bounded_int(0, 2**32, "a training seed is an integer in [0, 2**32)")


def untrained_weights(model: Any, loading: dict[str, Any]) -> str:
    """The weights ``from_pretrained(..., output_loading_info=True)`` initialised anew because the checkpoint lacks
    them (tied ones aside), shown as a short list; empty when none: a backbone saved without its head loads into a
    causal LM with a random head, which transformers only reports."""
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = sorted(set(loading.get("missing_keys", [])) - tied)
    return ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")


def file_sha256(path: Any) -> str:
    """The SHA-256 of the file at ``path``, read a MiB at a time (a checkpoint's files, a model's weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# The weight files save_pretrained writes: model.safetensors, or its shards (model-00001-of-00002.safetensors), and
# the pickled pytorch_model*.bin of older folders.
_WEIGHT_FILE = re.compile(r"(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)")


def weights_fingerprint(folder: Any) -> dict[str, str]:
    """{file name: SHA-256} of the weight files of a saved model ``folder``: what a training record written beside
    them holds (``weights_sha256``), so that weights saved there again since (fine-tuned, or another model) are not
    published with the record of the run that wrote it."""
    return {path.name: file_sha256(path) for path in sorted(Path(folder).iterdir())
            if path.is_file() and _WEIGHT_FILE.fullmatch(path.name)}


def strict_json(value: Any, **kwargs: Any) -> str:
    """``json.dumps(value, **kwargs)`` as strict JSON: a non-finite float (a diverged run's NaN loss, a skipped
    step's) is written as null, which jq, JavaScript and pandas read, where Python's default bare ``NaN`` is not
    JSON. Dicts, lists and tuples are followed."""
    return json.dumps(_finite_or_none(value), allow_nan=False, **kwargs)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value
