"""Kernel registry: (op, backend) -> function, with selection, availability and logging.

Every op (``lstm``, ``selective_scan``, ``wkv7`` ...) has a ``reference`` backend, a readable pure-PyTorch
implementation that is always available, and may have faster ones (fused torch, chunked torch, Triton, adapters to
installed third-party kernels). All backends of an op share one signature.

Selection for a call, in order:
  1. an explicit request: :func:`set_backend` / :func:`use_backend` (API) or ``SEQZOO_KERNELS="op=backend,..."``;
     the requested backend must be available and must support the call, otherwise the call raises, naming the
     reason and the valid backends. Nothing falls back silently.
  2. otherwise the highest-priority available backend whose ``supports(...)`` accepts the call.

The choice is logged once per (op, backend). Implementations given as ``"module:attr"`` strings are imported on
first use, so ``import seqzoo`` never imports Triton or CUDA extensions.

Third-party packages add backends through the ``seqzoo.kernels`` entry-point group: each entry point is a callable
that receives this module and calls :func:`register_backend`. A plugin that fails is logged and skipped.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

logger = logging.getLogger("seqzoo.kernels")

ENV_VAR = "SEQZOO_KERNELS"
ENTRY_POINT_GROUP = "seqzoo.kernels"

SupportsFn = Callable[..., "tuple[bool, str]"]


def _always_available() -> bool:
    return True


def _supports_everything(*args: Any, **kwargs: Any) -> tuple[bool, str]:
    return True, ""


class KernelError(RuntimeError):
    """A kernel backend was requested that does not exist, is unavailable, or cannot run the call."""


@dataclass
class Backend:
    op: str
    name: str
    impl: Callable[..., Any] | str
    priority: int = 0
    is_available: Callable[[], bool] = _always_available
    supports: SupportsFn = _supports_everything
    description: str = ""
    devices: tuple[str, ...] = ("cpu", "cuda")
    _loaded: Callable[..., Any] | None = field(default=None, repr=False)

    def load(self) -> Callable[..., Any]:
        if self._loaded is None:
            if callable(self.impl):
                self._loaded = self.impl
            else:
                module_name, _, attr = self.impl.partition(":")
                self._loaded = getattr(importlib.import_module(module_name), attr)
        return self._loaded

    def _module_found(self) -> bool:
        # A lazy "module:attr" whose module is not installed cannot run here. This happens to seqzoo's own lazy
        # backends inside the self-contained Hub export, which runs where seqzoo is not installed.
        return callable(self.impl) or importlib.util.find_spec(self.impl.partition(":")[0]) is not None

    def available(self) -> bool:
        try:
            return bool(self.is_available()) and self._module_found()
        except Exception:  # an availability probe must never break selection
            logger.debug("availability check of %s/%s raised", self.op, self.name, exc_info=True)
            return False


@dataclass
class Op:
    name: str
    description: str
    backends: dict[str, Backend] = field(default_factory=dict)


_OPS: dict[str, Op] = {}
_FORCED: dict[str, str] = {}  # set through the API; wins over the environment variable
_LOGGED: set[tuple[str, str]] = set()
_LOCK = threading.RLock()
_plugins_loaded = False


def register_op(name: str, description: str = "") -> Op:
    with _LOCK:
        if name not in _OPS:
            _OPS[name] = Op(name, description)
        elif description and not _OPS[name].description:
            _OPS[name].description = description
        return _OPS[name]


def register_backend(
    op: str,
    name: str,
    impl: Callable[..., Any] | str,
    *,
    priority: int = 0,
    is_available: Callable[[], bool] = _always_available,
    supports: SupportsFn = _supports_everything,
    description: str = "",
    devices: tuple[str, ...] = ("cpu", "cuda"),
    replace: bool = False,
) -> Backend:
    """Add backend ``name`` for ``op``. ``impl`` is a function or a lazy ``"module:attr"`` path."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"backend name must be a non-empty identifier, got {name!r}")
    with _LOCK:
        entry = register_op(op)
        if name in entry.backends and not replace:
            raise ValueError(f"backend {name!r} is already registered for op {op!r}; pass replace=True to override")
        backend = Backend(op, name, impl, priority, is_available, supports, description, tuple(devices))
        entry.backends[name] = backend
        return backend


BUILTIN_OP_PACKAGES = ("rnn_cells", "causal_conv1d", "selective_scan", "ssd", "wkv7")


def _ensure_loaded() -> None:
    # Built-in backends are declared by the op packages, which the layers import as they need them; listing and
    # looking up ops imports every one (inside a Hub bundle, where only its architecture's op packages exist, the
    # others are not importable and simply absent). Plugins come from entry points.
    global _plugins_loaded
    if _plugins_loaded:
        return
    with _LOCK:
        if _plugins_loaded:
            return
        _plugins_loaded = True
        for package in BUILTIN_OP_PACKAGES:
            try:
                importlib.import_module(f"seqzoo.kernels.{package}")
            except ModuleNotFoundError as err:
                if not (err.name or "").startswith("seqzoo"):
                    raise
        _load_entry_point_plugins()


def _load_entry_point_plugins() -> None:
    from importlib.metadata import entry_points

    import sys

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            hook = ep.load()
            hook(sys.modules[__name__])
        except Exception:
            logger.error("seqzoo kernel plugin %r (%s) failed to load and is skipped", ep.name, ep.value, exc_info=True)


def get_op(name: str) -> Op:
    _ensure_loaded()
    if name not in _OPS:
        raise KernelError(_unknown(name, sorted(_OPS), "kernel op"))
    return _OPS[name]


def _unknown(value: str, allowed: list[str], what: str) -> str:
    close = difflib.get_close_matches(value, allowed, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"unknown {what} {value!r}; valid: {', '.join(allowed)}.{hint}"


def _parse_env() -> dict[str, str]:
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return {}
    forced: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        op, sep, backend = item.partition("=")
        if not sep or not op.strip() or not backend.strip():
            raise KernelError(f"{ENV_VAR} entry {item!r} is not of the form op=backend (for example 'lstm=reference')")
        forced[op.strip()] = backend.strip()
    return forced


def requested_backend(op: str) -> str | None:
    """The backend explicitly requested for ``op`` (API first, then the environment), or None."""
    if op in _FORCED:
        return _FORCED[op]
    return _parse_env().get(op)


def _check_name(op: str, backend: str) -> Backend:
    entry = get_op(op)
    if backend not in entry.backends:
        raise KernelError(_unknown(backend, sorted(entry.backends), f"kernel backend for op {op!r}:"))
    return entry.backends[backend]


def set_backend(op: str, backend: str | None) -> None:
    """Force ``backend`` for every call of ``op`` (``None`` restores automatic selection)."""
    if backend is None:
        _FORCED.pop(op, None)
        return
    chosen = _check_name(op, backend)
    if not chosen.available():
        raise KernelError(
            f"kernel backend {backend!r} for op {op!r} is not available on this machine; "
            f"available backends: {', '.join(available_backends(op))}"
        )
    _FORCED[op] = backend


@contextlib.contextmanager
def use_backend(op: str, backend: str | None) -> Iterator[None]:
    """Context manager form of :func:`set_backend`."""
    previous = _FORCED.get(op)
    set_backend(op, backend)
    try:
        yield
    finally:
        if previous is None:
            _FORCED.pop(op, None)
        else:
            _FORCED[op] = previous


def available_backends(op: str) -> list[str]:
    entry = get_op(op)
    ordered = sorted(entry.backends.values(), key=lambda b: -b.priority)
    return [b.name for b in ordered if b.available()]


def select(op: str, *args: Any, **kwargs: Any) -> Backend:
    """Pick the backend that will run ``op(*args, **kwargs)`` (see the module docstring for the rules)."""
    entry = get_op(op)
    forced = requested_backend(op)
    if forced is not None:
        backend = _check_name(op, forced)
        if not backend.available():
            raise KernelError(
                f"kernel backend {forced!r} was requested for op {op!r} but is not available on this machine; "
                f"available backends: {', '.join(available_backends(op))}"
            )
        ok, reason = backend.supports(*args, **kwargs)
        if not ok:
            raise KernelError(
                f"kernel backend {forced!r} was requested for op {op!r} but cannot run this call: {reason}. "
                f"Request another backend ({', '.join(available_backends(op))}) or none to select automatically."
            )
        _log_choice(backend, "requested")
        return backend
    reasons = []
    for backend in sorted(entry.backends.values(), key=lambda b: -b.priority):
        if not backend.available():
            continue
        ok, reason = backend.supports(*args, **kwargs)
        if ok:
            _log_choice(backend, "auto")
            return backend
        reasons.append(f"{backend.name}: {reason}")
    raise KernelError(f"no backend of op {op!r} can run this call ({'; '.join(reasons) or 'none registered'})")


def _log_choice(backend: Backend, how: str) -> None:
    key = (backend.op, backend.name)
    if key not in _LOGGED:
        _LOGGED.add(key)
        logger.info("seqzoo kernel %s -> backend %r (%s)", backend.op, backend.name, how)


def dispatch(op: str, *args: Any, **kwargs: Any) -> Any:
    """Run ``op`` on the selected backend."""
    return select(op, *args, **kwargs).load()(*args, **kwargs)


def get_kernel(op: str, backend: str) -> Callable[..., Any]:
    """The function of one named backend (for tests and benchmarks that compare backends directly)."""
    chosen = _check_name(op, backend)
    if not chosen.available():
        raise KernelError(
            f"kernel backend {backend!r} for op {op!r} is not available on this machine; "
            f"available backends: {', '.join(available_backends(op))}"
        )
    return chosen.load()


def list_ops() -> list[str]:
    _ensure_loaded()
    return sorted(_OPS)


def list_kernels() -> list[dict[str, Any]]:
    """One row per (op, backend): availability here, priority, and whether it is the one selected.

    "selected" is the explicitly requested backend, else the highest-priority available backend that runs on
    this machine's default device (CUDA when present, else CPU).
    """
    _ensure_loaded()
    rows = []
    for op_name in sorted(_OPS):
        entry = _OPS[op_name]
        forced = requested_backend(op_name)
        ordered = sorted(entry.backends.values(), key=lambda b: -b.priority)
        default = forced
        if default is None:
            device = _default_device()
            default = next((b.name for b in ordered if b.available() and device in b.devices), None)
        for backend in ordered:
            rows.append(
                {
                    "op": op_name,
                    "backend": backend.name,
                    "priority": backend.priority,
                    "available": backend.available(),
                    "selected": backend.name == default,
                    "forced": forced == backend.name,
                    "description": backend.description,
                }
            )
    return rows


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
