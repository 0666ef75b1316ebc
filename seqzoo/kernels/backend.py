"""One kernel backend and a call reaching it: its record (:class:`Backend`, :class:`Op`), how it loads a lazy
``"module:attr"`` implementation and probes its availability, how one registered with ``devices`` declines a call on
another device type, how its ``supports()`` answer is checked, how a call's half-precision inputs are cast to float32
under autocast, and how a plugin's kernel that raises is named. The registry (``registry.py``) keeps these records,
selects among them and dispatches; nothing here reads its state.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

logger = logging.getLogger("seqzoo.kernels")

ENV_VAR = "SEQZOO_KERNELS"  # op=backend,...: read by the registry, named in the errors here

SupportsFn = Callable[..., "tuple[bool, str]"]
CacheKeyFn = Callable[..., "Hashable | None"]


def always_available() -> bool:
    return True


def supports_everything(*args: Any, **kwargs: Any) -> tuple[bool, str]:
    return True, ""


class KernelError(RuntimeError):
    """A kernel backend was requested that does not exist, is unavailable, or cannot run the call."""


@dataclass
class Backend:
    op: str
    name: str
    impl: Callable[..., Any] | str
    priority: int = 0
    is_available: Callable[[], bool] = always_available
    supports: SupportsFn = supports_everything
    description: str = ""
    devices: tuple[str, ...] | None = None  # the device types it runs on; None: any
    cache_key: CacheKeyFn | None = None
    # Why ``is_available()`` says no here, in words a user acts on ("Triton is not installed (pip install ...)");
    # None, or "" from it: no reason beyond the backend's name.
    unavailable_reason: Callable[[], str] | None = None
    plugin: str | None = None  # the entry point that registered it ("name (module:attr)"), for errors at call time
    _loaded: Callable[..., Any] | None = field(default=None, repr=False)
    _available: bool | None = field(default=None, repr=False)

    def load(self) -> Callable[..., Any]:
        if self._loaded is None:
            if callable(self.impl):
                self._loaded = self.impl
            else:
                module_name, _, attr = self.impl.partition(":")
                try:
                    self._loaded = getattr(importlib.import_module(module_name), attr)
                except (ImportError, AttributeError) as err:
                    raise KernelError(f"kernel backend {self.name!r} of op {self.op!r} cannot load {self.impl!r}: "
                                      f"{err}") from err
        return self._loaded

    def _module_found(self) -> bool:
        # A lazy "module:attr" whose module is not installed cannot run here. This happens to seqzoo's own lazy
        # backends inside the self-contained Hub export, which runs where seqzoo is not installed.
        return callable(self.impl) or importlib.util.find_spec(self.impl.partition(":")[0]) is not None

    def available(self) -> bool:
        """Whether this backend can run here; probed once (:func:`refresh` probes again)."""
        if self._available is None:
            try:
                self._available = bool(self.is_available()) and self._module_found()
            except Exception as err:  # an availability probe must never break selection, nor fail unseen
                logger.warning("kernel backend %r of op %r counts as unavailable: its availability check raised "
                               "%s: %s", self.name, self.op, type(err).__name__, err, exc_info=True)
                self._available = False
        return self._available


@dataclass
class Op:
    name: str
    description: str
    backends: dict[str, Backend] = field(default_factory=dict)
    # Called with every call's arguments before a backend is chosen (see ``register_op``); None: nothing to check.
    check: Callable[..., None] | None = None


def _call_device(args: tuple, kwargs: dict) -> str | None:
    """The device type of a call: that of its first tensor argument (None when it has none)."""
    for values in (args, kwargs.values()):
        for value in values:
            is_cuda = getattr(value, "is_cuda", None)  # a tensor's (this module imports torch lazily)
            if is_cuda is not None:
                return "cuda" if is_cuda else "cpu" if value.is_cpu else value.device.type
    return None


def limit_to_devices(devices: tuple[str, ...], supports: SupportsFn,
                     cache_key: CacheKeyFn | None) -> tuple[SupportsFn, CacheKeyFn | None]:
    """``supports`` and ``cache_key`` of a backend limited to ``devices``: a call on another device type is declined
    (after the backend's own check, whose reason comes first), and the device type is part of the key."""

    def on_devices(*args: Any, **kwargs: Any) -> tuple[bool, str]:
        answer = supports(*args, **kwargs)
        if type(answer) is not tuple or len(answer) != 2 or not answer[0]:
            return answer  # (a malformed answer is named by check_supports)
        device = _call_device(args, kwargs)
        if device is not None and device not in devices:
            return False, f"runs on {', '.join(devices)} only (its devices), got {device} tensors"
        return answer

    if cache_key is not None:
        def key(*args: Any, **kwargs: Any) -> Hashable | None:
            inner = cache_key(*args, **kwargs)
            return None if inner is None else (_call_device(args, kwargs), inner)
    elif supports is supports_everything:
        def key(*args: Any, **kwargs: Any) -> Hashable | None:
            return (_call_device(args, kwargs),)
    else:
        key = None  # (a custom supports() with no key is never cached, as before)
    return on_devices, key


def why_unavailable(backend: Backend) -> str:
    """Why ``backend`` cannot run here, or "" where nothing more is known: its own reason (the Triton backends name
    the extra to install), or a lazy "module:attr" whose module cannot be found (a misspelt or uninstalled plugin
    module)."""
    reason = backend.unavailable_reason() if backend.unavailable_reason is not None else ""
    if reason:
        return reason
    try:
        found = backend._module_found()
    except Exception:  # find_spec raises where a parent package is missing
        found = False
    return "" if found else f"its module {backend.impl.partition(':')[0]!r} cannot be found"


def check_supports(backend: Backend, args: tuple, kwargs: dict) -> tuple[bool, str]:
    """``backend.supports(...)``, which must answer ``(ok, reason)``; a plugin's that answers otherwise is named."""
    try:
        answer = backend.supports(*args, **kwargs)
    except Exception as err:  # a plugin's check that fails on a call is named, as one that answers wrongly is
        raise KernelError(f"supports() of kernel backend {backend.name!r} (op {backend.op!r}) raised "
                          f"{type(err).__name__}: {err}") from err
    if type(answer) is not tuple or len(answer) != 2:
        raise KernelError(f"supports() of kernel backend {backend.name!r} (op {backend.op!r}) returned {answer!r:.80}; "
                          "it must return (ok, reason): (True, '') or (False, 'why not')")
    return answer


def run_plugin(backend: Backend, args: tuple, kwargs: dict) -> Any:
    """Call a plugin's ``backend``; a kernel that raises is named, with the way around it (its error would otherwise
    reach the user as an unexplained error from inside the model)."""
    try:
        return backend.load()(*args, **kwargs)
    except KernelError:
        raise
    except Exception as err:
        raise KernelError(
            f"kernel backend {backend.name!r} of op {backend.op!r}, from the plugin {backend.plugin}, raised "
            f"{type(err).__name__}: {err}; run without it with {ENV_VAR}={backend.op}=reference (or "
            f"seqzoo.set_kernel_backend({backend.op!r}, 'reference'), `seqzoo generate --kernel "
            f"{backend.op}=reference`) and report it to the plugin's authors"
        ) from err


def autocast_device_type(tensor: Any) -> str | None:
    """The device type of ``tensor`` when autocast is on for it, else None."""
    import torch

    # The cheap test first: every kernel call pays it (reading a tensor's device costs more than a selection).
    if not torch._C._is_any_autocast_enabled() or not isinstance(tensor, torch.Tensor):
        return None
    device_type = tensor.device.type
    return device_type if torch.is_autocast_enabled(device_type) else None


def check_floating(op: str, names: tuple[str, ...], values: tuple) -> None:
    """ValueError unless every tensor of ``values`` (None entries skipped) has a real floating-point dtype, naming
    the first that has not (``names`` are their argument names); TypeError naming one that is not a tensor.

    A kernel computes in floating point and returns its output in its input's dtype: an integer input came back
    truncated (the reference backends cast it), or was declined by one backend's ``supports()`` only to be run by
    another. An op's check (``register_op``) calls this on every call, so the loop reads one dtype per tensor."""
    try:
        for value in values:
            if value is not None and not value.dtype.is_floating_point:
                break
        else:
            return
    except AttributeError:  # (not a tensor: a list, a number, a numpy array, whose dtype has no is_floating_point)
        pass
    for name, value in zip(names, values):
        dtype = getattr(value, "dtype", None)
        if value is not None and not isinstance(getattr(dtype, "is_floating_point", None), bool):
            raise TypeError(f"{op}: {name} must be a tensor, got {type(value).__name__}")
        if value is not None and not dtype.is_floating_point:
            raise ValueError(f"{op}: {name} has dtype {dtype}; the op takes real floating-point tensors (float16, "
                             f"bfloat16, float32 or float64): convert it, e.g. {name}.float()")


def to_float32(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value
