"""Kernel registry: (op, backend) -> function, with selection, availability and logging.

Every op (``lstm``, ``selective_scan``, ``wkv7`` ...) has a ``reference`` backend, a readable pure-PyTorch
implementation that is always available, and may have faster ones (fused torch, chunked torch, Triton, adapters to
installed third-party kernels). All backends of an op share one signature.

Before any backend sees a call, the call itself is checked: a keyword the op does not take (its reference backend's
signature, read once per op) raises a TypeError naming the op, the keyword and those it takes, and the op's own
check (``register_op(..., check=fn)``: real floating-point inputs, valid options) raises for a call no backend may
run, which a ``supports()`` that declined it would otherwise have handed to another backend.

Selection for a call, in order:
  1. an explicit request: :func:`set_backend` / :func:`use_backend` (API) or ``SEQZOO_KERNELS="op=backend,..."``;
     the requested backend must be available and must support the call, otherwise the call raises, naming the
     reason and the valid backends. Nothing falls back silently. A ``SEQZOO_KERNELS`` entry naming an op or backend
     that does not exist makes every selection raise (with a did-you-mean), so a typo is never ignored.
  2. otherwise the highest-priority available backend whose ``supports(...)`` accepts the call.

A backend registered with ``devices`` (``("cuda",)``) accepts only calls whose first tensor is on one of those device
types (checked after its own ``supports()``, and part of its cache key); by default it runs on any device.

The choice is logged once per (op, backend). Implementations given as ``"module:attr"`` strings are imported on
first use, so ``import seqzoo`` never imports Triton or CUDA extensions.

Selection is cached, so a decode step does not pay for probing (2-4 selections per token). Availability is probed
once per backend. A backend whose ``supports()`` looks at the call declares ``cache_key(*args, **kwargs)``: a cheap,
hashable summary of everything its ``supports()`` depends on (dtypes, devices, a head size, whether a mask has
holes), or ``None`` when the call cannot be summarised cheaply (then ``supports()`` runs for that call). The choice
for a call is cached under the keys of every candidate backend, so a cached choice is the one ``supports()`` would
make. A backend with a custom ``supports()`` and no ``cache_key`` is never cached. :func:`set_backend`,
:func:`use_backend`, registering or unregistering a backend, :func:`refresh` and a change of ``SEQZOO_KERNELS``
drop the cache. The hot path takes no lock (a cache that is dropped while a call fills it is simply replaced), so
it adds no graph break under ``torch.compile``. A caller that makes one call again and again (a decode plan) may
keep a choice :func:`select_stamped` made and reuse it while :func:`selection_stamp` returns the stamp that came with
it and the call would be summarised by the same keys: the stamp changes with every setting change that drops the cache.

Third-party packages add backends through the ``seqzoo.kernels`` entry-point group: each entry point is a callable
that receives this module and calls :func:`register_backend`. A plugin that fails is logged and skipped.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from seqzoo.kernels.backend import (
    ENV_VAR,
    Backend,
    CacheKeyFn,
    KernelError,
    Op,
    SupportsFn,
    always_available,
    autocast_device_type,
    check_supports,
    limit_to_devices,
    run_plugin,
    supports_everything,
    to_float32,
    why_unavailable,
)

logger = logging.getLogger("seqzoo.kernels")

ENTRY_POINT_GROUP = "seqzoo.kernels"
CACHE_LIMIT = 4096  # cached choices per state; a stream of ever-new keys (shapes) cannot grow memory without bound


@dataclass
class _Plan:
    """How one op is selected under the current settings: the forced backend (or None) and the candidates in
    priority order, available ones only; ``keyed`` are the candidates whose key is not constant. ``keywords`` are
    the keyword arguments a call may pass (None: any), ``check`` the op's check of a call (see register_op)."""

    forced: str | None
    candidates: tuple[Backend, ...]
    keyed: tuple[Backend, ...]
    cacheable: bool
    keywords: frozenset[str] | None = None
    check: Callable[..., None] | None = None


@dataclass
class _State:
    """Everything selection caches. Replaced as a whole (never cleared in place) when it is invalidated, so a call
    that filled the old one concurrently cannot leave a stale choice in the new one."""

    env: Any  # SEQZOO_KERNELS as it was read (bytes or str; None when unset)
    env_forced: dict[str, str]
    env_error: str | None
    plans: dict[str, _Plan] = field(default_factory=dict)
    chosen: dict[tuple, Backend] = field(default_factory=dict)


_OPS: dict[str, Op] = {}
_FORCED: dict[str, str] = {}  # set through the API; wins over the environment variable
_LOGGED: set[tuple[str, str]] = set()
_SELECTIONS: dict[str, int] = {}  # choices made per op (see selections)
_LOCK = threading.RLock()  # registration and plugin loading only; selection reads without it
_plugins_loaded = False
_state: _State | None = None


def register_op(name: str, description: str = "", check: Callable[..., None] | None = None) -> Op:
    """Declare op ``name``. ``check``, called with every call's arguments before a backend is chosen, raises for a
    call that no backend may run (ValueError naming the argument: an integer input, an invalid option): a
    ``supports()`` that declined such a call would otherwise hand it to another backend, which ran it wrongly.
    Keep it cheap (dtypes, Python values): it runs on every call, decode steps included."""
    # The name must be writable in SEQZOO_KERNELS ("op=backend,..."), as a backend's is.
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"kernel op name must be a non-empty identifier, got {name!r}")
    if check is not None and not callable(check):
        raise ValueError(f"kernel op {name!r}: check must be a function, got {check!r}")
    with _LOCK:
        if name not in _OPS:
            _OPS[name] = Op(name, description, check=check)
            _invalidate()
        else:
            if description and not _OPS[name].description:
                _OPS[name].description = description
            if check is not None and _OPS[name].check is None:
                _OPS[name].check = check
                _invalidate()
        return _OPS[name]


def register_backend(
    op: str,
    name: str,
    impl: Callable[..., Any] | str,
    *,
    priority: int = 0,
    is_available: Callable[[], bool] = always_available,
    supports: SupportsFn = supports_everything,
    cache_key: CacheKeyFn | None = None,
    description: str = "",
    devices: tuple[str, ...] | None = None,
    unavailable_reason: Callable[[], str] | None = None,
    replace: bool = False,
) -> Backend:
    """Add backend ``name`` for ``op`` (declared with :func:`register_op`: a misspelt op would otherwise become a new
    one whose backend no call ever selects). ``impl`` is a function or a lazy ``"module:attr"`` path; ``cache_key``
    summarises what ``supports`` reads from a call (see the module docstring). ``devices`` (``("cuda",)``) limits
    the backend to calls whose first tensor is on one of those device types: it is not selected for another (and,
    requested, raises naming the device); ``None`` (the default) runs on any device. ``unavailable_reason`` says
    why ``is_available`` answers no here (what to install), for the error a request for it raises and for
    ``seqzoo kernels``."""
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"backend name must be a non-empty identifier, got {name!r}")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ValueError(f"backend priority must be an int, got {priority!r}")
    lazy_path = isinstance(impl, str) and impl.count(":") == 1 and all(
        part.replace(".", "").replace("_", "").isalnum() for part in impl.split(":"))
    if not callable(impl) and not lazy_path:
        raise ValueError(f"backend {name!r}: impl must be a function or a lazy 'module:attribute' path, got {impl!r}")
    for what, fn in (("is_available", is_available), ("supports", supports), ("cache_key", cache_key),
                     ("unavailable_reason", unavailable_reason)):
        if fn is not None and not callable(fn):
            raise ValueError(f"backend {name!r}: {what} must be a function, got {fn!r}")
    if devices is not None and (isinstance(devices, str) or not isinstance(devices, (tuple, list)) or not devices
                                or not all(isinstance(d, str) and d for d in devices)):
        raise ValueError(f"backend {name!r}: devices must be a non-empty tuple of device types such as ('cuda',), "
                         f"or None for any device, got {devices!r}")
    with _LOCK:
        if op not in _OPS:
            close = difflib.get_close_matches(str(op), sorted(_OPS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown kernel op {op!r} for backend {name!r}.{hint} Registered ops: "
                             f"{', '.join(sorted(_OPS))}; declare a new op with register_op({op!r}) first")
        entry = _OPS[op]
        if name in entry.backends and not replace:
            raise ValueError(f"backend {name!r} is already registered for op {op!r}; pass replace=True to override")
        if devices is not None:
            devices = tuple(devices)
            supports, cache_key = limit_to_devices(devices, supports, cache_key)
        backend = Backend(op, name, impl, priority, is_available, supports, description, devices, cache_key,
                          unavailable_reason)
        entry.backends[name] = backend
        _invalidate()
        return backend


def unregister_backend(op: str, name: str) -> None:
    """Remove backend ``name`` of ``op`` (a plugin's or a test's); a forced request for it is dropped too. A name
    that is not registered raises (a misspelt one would leave the backend in place, and selected)."""
    with _LOCK:
        _check_name(op, name)
        get_op(op).backends.pop(name, None)
        if _FORCED.get(op) == name:
            _FORCED.pop(op)
        _invalidate()


def refresh() -> None:
    """Forget every cached availability probe and choice (after installing a package or changing the device)."""
    with _LOCK:
        for entry in _OPS.values():
            for backend in entry.backends.values():
                backend._available = None
        _invalidate()


def _invalidate() -> None:
    global _state
    _state = None


BUILTIN_OP_PACKAGES = ("rnn_cells", "causal_conv1d", "selective_scan", "ssd", "wkv7")
# The ops those packages declare. A Hub bundle holds only its architecture's: a SEQZOO_KERNELS entry for another
# built-in op is then not a typo but an op that is not here, and is ignored.
BUILTIN_OPS = ("rnn", "lstm", "gru", "causal_conv1d", "selective_scan", "ssd", "wkv7")


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
            module = _op_package_module(package)
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as err:
                if err.name != module and not (err.name or "").startswith("seqzoo"):
                    raise
        _load_entry_point_plugins()


# Inside a Hub bundle this module is a flat sibling (``<bundle>.seqzoo_kernels_registry``) and so are the op
# packages: an installed seqzoo is other code (another version, or one that fails to import), and importing it would
# also register seqzoo's classes with transformers, so that later trust_remote_code loads got those instead.
_BUNDLED = not __name__.startswith("seqzoo.")


def _op_package_module(package: str) -> str:
    if not _BUNDLED:
        return f"seqzoo.kernels.{package}"
    parent = __name__.rpartition(".")[0]
    return f"{parent}.seqzoo_kernels_{package}" if parent else f"seqzoo_kernels_{package}"


def _load_entry_point_plugins() -> None:
    import sys
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        # What the plugin had registered before it failed is taken back: "skipped" means none of it stays (a
        # backend registered before the failure would otherwise be selected, as the plugin's author never tested).
        before = {name: dict(entry.backends) for name, entry in _OPS.items()}
        try:
            hook = ep.load()
            hook(sys.modules[__name__])
            for entry in _OPS.values():
                for backend in entry.backends.values():
                    if backend is not before.get(entry.name, {}).get(backend.name):
                        backend.plugin = f"{ep.name} ({ep.value})"
        except Exception:
            for name in [name for name in _OPS if name not in before]:
                del _OPS[name]
            for name, backends in before.items():
                _OPS[name].backends = backends
            for op, backend in list(_FORCED.items()):
                if op not in _OPS or backend not in _OPS[op].backends:
                    del _FORCED[op]
            _invalidate()
            logger.error("seqzoo kernel plugin %r (%s) failed to load and is skipped", ep.name, ep.value, exc_info=True)


def get_op(name: str) -> Op:
    _ensure_loaded()
    if not (isinstance(name, str) and name in _OPS):  # (a list: "unhashable type")
        raise KernelError(_unknown(name, sorted(_OPS), "kernel op"))
    return _OPS[name]


def _unknown(value: str, allowed: list[str], what: str) -> str:
    close = difflib.get_close_matches(value, allowed, n=3) if isinstance(value, str) else []
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"unknown {what} {value!r}; valid: {', '.join(allowed)}.{hint}"


def _parse_env(raw: str) -> dict[str, str]:
    """``SEQZOO_KERNELS`` -> {op: backend}; every op and backend must exist (KernelError otherwise)."""
    forced: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        op, sep, backend = item.partition("=")
        op, backend = op.strip(), backend.strip()
        if not sep or not op or not backend:
            raise KernelError(f"{ENV_VAR} entry {item!r} is not of the form op=backend (for example 'lstm=reference')")
        if op not in _OPS and op in BUILTIN_OPS:
            continue
        try:
            _check_name(op, backend)
        except KernelError as err:
            raise KernelError(f"{ENV_VAR} entry {item!r}: {err}") from None
        if op in forced:  # (the same backend twice too: a typo for another op is likelier than a repeat)
            raise KernelError(f"{ENV_VAR} names op {op!r} twice ({forced[op]!r} and {backend!r}); give it once")
        forced[op] = backend
    return forced


# Reading os.environ costs about a microsecond per call (it encodes the key and decodes the value); the mapping
# it wraps is read directly where it exists (CPython on POSIX keeps it as ``os.environ._data``, byte keys).
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(ENV_VAR) if _ENV_DATA is not None else None


def _raw_env() -> Any:
    return _ENV_DATA.get(_ENV_KEY) if _ENV_DATA is not None else os.environ.get(ENV_VAR)


def _current() -> _State:
    """The selection state for the current ``SEQZOO_KERNELS``; rebuilt when it changed or was invalidated."""
    state = _state
    raw = _raw_env()
    if state is not None and state.env == raw:
        return state
    return _rebuild(raw)


_WARNED_ENV: set[str] = set()  # (the command line adds the names it has warned about)


def _warn_misspelt_env() -> None:
    """A warning (once per name) for a variable that looks like a misspelt ``SEQZOO_KERNELS`` (``SEQZOO_KERNEL``,
    ``seqzoo_kernels``): nothing reads it, so the backends it names would otherwise not be forced, without a word.
    (The command line warns about every unknown ``SEQZOO_*`` name; a script that imports seqzoo gets this.)"""
    for name in list(os.environ):
        # (whatever its prefix: SEQZOOKERNELS and SEQ_ZOO_KERNELS are as misspelt, and no SEQZOO_* warning names them)
        if (name != ENV_VAR and name not in _WARNED_ENV
                and difflib.get_close_matches(name.upper(), [ENV_VAR], n=1, cutoff=0.8)):
            _WARNED_ENV.add(name)
            logger.warning("the environment variable %s is not read by seqzoo; did you mean %s?", name, ENV_VAR)


def _rebuild(raw: Any) -> _State:
    global _state
    _ensure_loaded()
    if not _compiling():  # (difflib is not traceable; an eager call has warned, or will)
        _warn_misspelt_env()
    try:
        text = raw.decode() if isinstance(raw, bytes) else (raw or "").encode("utf-8", "surrogateescape").decode()
        forced, error = _parse_env(text), None
    except UnicodeError:  # (a bare codec error, naming no variable, from every kernel call)
        forced, error = {}, f"{ENV_VAR} is not valid UTF-8 text; it is op=backend,... (for example 'lstm=reference')"
    except KernelError as err:
        forced, error = {}, str(err)
    state = _State(raw, forced, error)
    _state = state
    return state


def check_environment() -> None:
    """Raise KernelError if ``SEQZOO_KERNELS`` names an op or backend that does not exist or is malformed, or
    ``SEQZOO_PRODUCTS`` names no choice of who multiplies a decode step's rows (``product_choice``)."""
    from seqzoo.kernels import product_choice

    error = _current().env_error or product_choice.environment_error()
    if error is not None:
        raise KernelError(error)


def requested_backend(op: str) -> str | None:
    """The backend explicitly requested for ``op`` (API first, then the environment), or None."""
    _ensure_loaded()
    if not isinstance(op, str) or (op not in _OPS and op not in BUILTIN_OPS):  # a misspelt op would answer "nothing
        # requested"
        raise KernelError(_unknown(op, sorted(_OPS), "kernel op"))
    if op in _FORCED:
        return _FORCED[op]
    check_environment()
    return _current().env_forced.get(op)


def _check_name(op: str, backend: str) -> Backend:
    entry = get_op(op)
    if not (isinstance(backend, str) and backend in entry.backends):
        raise KernelError(_unknown(backend, sorted(entry.backends), f"kernel backend for op {op!r}:"))
    return entry.backends[backend]


def _available(op: str, backend: str, requested: str = "for op {op!r} is") -> Backend:
    """The named backend of ``op``, which must exist and be available here (else a KernelError naming why and the
    backends that are); ``requested`` words the error."""
    chosen = _check_name(op, backend)
    if not chosen.available():
        reason = why_unavailable(chosen)
        raise KernelError(
            f"kernel backend {backend!r} {requested.format(op=op)} not available on this machine"
            f"{f' ({reason})' if reason else ''}; available backends: {', '.join(available_backends(op))}"
        )
    return chosen


def set_backend(op: str, backend: str | None) -> None:
    """Force ``backend`` for every call of ``op`` (``None`` restores automatic selection)."""
    with _LOCK:
        if backend is None:
            _ensure_loaded()
            if not isinstance(op, str) or (op not in _OPS and op not in BUILTIN_OPS):  # a typo would leave the real
                # op's request in force
                raise KernelError(_unknown(op, sorted(_OPS), "kernel op"))
            _FORCED.pop(op, None)
        else:
            _available(op, backend)
            _FORCED[op] = backend
        _invalidate()


@contextlib.contextmanager
def use_backend(op: str, backend: str | None) -> Iterator[None]:
    """Context manager form of :func:`set_backend`: ``backend`` for ``op`` while the block runs, then what was in
    force before the first block still open for ``op`` began. The setting is process-wide (calls in every thread see
    it); blocks that end out of order (two threads, generators) each leave the latest block still open in force, and
    the last to end restores the setting from before them all (each block put back what it found, so the first to end
    left the other's request forced for good)."""
    with _LOCK:
        blocks = _BLOCKS.setdefault(op, [])
        if not blocks:
            _BEFORE_BLOCKS[op] = _FORCED.get(op)
        set_backend(op, backend)
        mine = (object(), backend)
        blocks.append(mine)
    try:
        yield
    finally:
        with _LOCK:
            blocks.remove(mine)
            value = blocks[-1][1] if blocks else _BEFORE_BLOCKS.pop(op, None)
            if value is None:
                _FORCED.pop(op, None)
            else:
                _FORCED[op] = value
            _invalidate()


# The use_backend blocks open per op (a token and the backend each asked for), and what was forced before the first.
_BLOCKS: dict[str, list[tuple[object, str | None]]] = {}
_BEFORE_BLOCKS: dict[str, str | None] = {}


def available_backends(op: str) -> list[str]:
    """The backends of ``op`` that can run on this machine, highest priority first."""
    entry = get_op(op)
    ordered = sorted(entry.backends.values(), key=lambda b: -b.priority)
    return [b.name for b in ordered if b.available()]


def _plan(state: _State, op: str) -> _Plan:
    plan = state.plans.get(op)
    if plan is not None:
        return plan
    entry = get_op(op)
    forced = _FORCED.get(op) or state.env_forced.get(op)
    if forced is not None:
        backend = _available(op, forced, "was requested for op {op!r} but is")
        candidates: tuple[Backend, ...] = (backend,)
    else:
        ordered = sorted(entry.backends.values(), key=lambda b: -b.priority)
        candidates = tuple(b for b in ordered if b.available())
    keyed = tuple(b for b in candidates if b.cache_key is not None)
    cacheable = all(b.cache_key is not None or b.supports is supports_everything for b in candidates)
    plan = _Plan(forced, candidates, keyed, cacheable, _keywords(entry), entry.check)
    state.plans[op] = plan
    return plan


_KEYWORDS: dict[Callable[..., Any], frozenset[str] | None] = {}  # a function -> the keywords it takes (read once)


def _keywords(entry: Op) -> frozenset[str] | None:
    """The keyword arguments a call of op ``entry`` may pass: the parameters of its reference backend (every
    backend of an op shares its signature), or None (any) where it has none or takes ``**kwargs``. A signature is
    read once per function: reading one costs more than a whole selection."""
    reference = entry.backends.get("reference")
    if reference is None or not callable(reference.impl):  # (a plugin's lazy reference is not imported for this)
        return None
    if reference.impl not in _KEYWORDS:
        names = _signature_keywords(reference.impl)
        _KEYWORDS[reference.impl] = None if names is None else frozenset(names)
    return _KEYWORDS[reference.impl]


def _signature_keywords(fn: Callable[..., Any]) -> tuple[str, ...] | None:
    """The parameters of ``fn`` that a call may pass by name, in order; None where it takes ``**kwargs`` (or its
    signature cannot be read)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # (a builtin without a readable signature)
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in parameters if p.kind in named)


def _refuse_keywords(op: str, keywords: frozenset[str], kwargs: dict) -> None:
    """TypeError naming the op, the keywords of a call that it does not take, and those it does (a misspelt keyword
    failed inside a backend's ``supports_key()``, naming neither the op nor the keyword's right spelling)."""
    unknown = [name for name in kwargs if name not in keywords]
    hints = [f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
             for name in unknown for close in [difflib.get_close_matches(str(name), keywords, n=1)]]
    reference = _OPS[op].backends.get("reference") if op in _OPS else None
    ordered = (reference is not None and callable(reference.impl) and _signature_keywords(reference.impl)
               or sorted(keywords))
    raise TypeError(f"kernel op {op!r} got the unknown keyword argument{'s' if len(unknown) > 1 else ''} "
                    f"{', '.join(hints)}; it takes {', '.join(ordered)} (the signature of its reference backend)")


def select(op: str, *args: Any, **kwargs: Any) -> Backend:
    """Pick the backend that will run ``op(*args, **kwargs)`` (see the module docstring for the rules)."""
    return _select(op, args, kwargs)[0]


def select_stamped(op: str, *args: Any, **kwargs: Any) -> tuple[Backend, object | None]:
    """:func:`select`, and a stamp of what the choice was made under: an object that :func:`selection_stamp` returns
    while nothing that selection reads has changed (``SEQZOO_KERNELS``, a backend forced or released, a backend or op
    registered, the probes reset); None where the choice is not one the registry keeps (an op with a backend whose
    ``supports()`` has no ``cache_key()``, or a call whose key is None), which the next call must make again.

    A caller that makes the same call again and again (a decode plan) may keep the backend and reuse it while
    :func:`selection_stamp` is the stamp and nothing the op's check or a backend's ``cache_key`` reads of the call has
    changed (the caller's to compare: the tensors' types, dtypes, shapes and devices, and the keywords): the kept
    choice would then be made again."""
    return _select(op, args, kwargs)


def selection_stamp() -> object | None:
    """The stamp :func:`select_stamped` returns for a choice it keeps, as things are now (see there); None where the
    next selection must read the settings again. A fraction of a selection's cost."""
    state = _state
    return None if state is None or state.env != _raw_env() else state


def _select(op: str, args: tuple, kwargs: dict) -> tuple[Backend, _State | None]:
    """The backend chosen, and the selection state it was chosen under where the choice is one its cache keeps (else
    None)."""
    # The hot path of every kernel call: plain reads, no lock, no generator.
    state = _state
    if state is None or state.env != _raw_env():
        state = _current()
    if state.env_error is not None:
        raise KernelError(state.env_error)
    plan = state.plans.get(op) or _plan(state, op)
    # The call itself first, so that no backend's cache_key() or supports() sees a call that none may run.
    if kwargs and plan.keywords is not None and not plan.keywords.issuperset(kwargs):
        _refuse_keywords(op, plan.keywords, kwargs)
    if plan.check is not None:
        try:
            plan.check(*args, **kwargs)
        except TypeError as err:
            if err.__traceback__ is None or err.__traceback__.tb_next is not None:
                raise  # (raised by the check itself, naming the argument)
            # Arguments that do not bind (too few, one given twice): named as the op's, as a backend would name them.
            raise TypeError(str(err).replace(f"{plan.check.__name__}()", f"{op}()")) from None
    key = None
    if plan.cacheable:
        keyed = plan.keyed
        if not keyed:
            key = op
        elif len(keyed) == 1:
            part = keyed[0].cache_key(*args, **kwargs)
            key = None if part is None else (op, part)
        else:
            parts = [b.cache_key(*args, **kwargs) for b in keyed]
            key = None if None in parts else (op, *parts)
        if key is not None:
            chosen = state.chosen.get(key)
            if chosen is not None:
                return chosen, state
    chosen = _choose(op, plan, args, kwargs)
    if key is None or _compiling():  # (left to the first eager call, which also logs the choice)
        return chosen, None
    if len(state.chosen) >= CACHE_LIMIT:
        state.chosen.clear()
    state.chosen[key] = chosen
    return chosen, state


def _choose(op: str, plan: _Plan, args: tuple, kwargs: dict) -> Backend:
    _SELECTIONS[op] = _SELECTIONS.get(op, 0) + 1
    if plan.forced is not None:
        (backend,) = plan.candidates
        ok, reason = check_supports(backend, args, kwargs)
        if not ok:
            able = [name for name in available_backends(op)
                    if name != backend.name and check_supports(get_op(op).backends[name], args, kwargs)[0]]
            raise KernelError(
                f"kernel backend {plan.forced!r} was requested for op {op!r} but cannot run this call: {reason}. "
                + (f"Request one that can ({', '.join(able)}) or none to select automatically."
                   if able else "No other backend of this op can run it either.")
            )
        _log_choice(backend, "requested")
        return backend
    reasons = []
    for backend in plan.candidates:
        ok, reason = check_supports(backend, args, kwargs)
        if ok:
            _log_choice(backend, "auto")
            return backend
        reasons.append(f"{backend.name}: {reason}")
    raise KernelError(f"no backend of op {op!r} can run this call ({'; '.join(reasons) or 'none registered'})")


def _log_choice(backend: Backend, how: str) -> None:
    key = (backend.op, backend.name)
    if key not in _LOGGED and not _compiling():  # dynamo cannot trace a logger: the next eager choice logs it
        _LOGGED.add(key)
        logger.info("seqzoo kernel %s -> backend %r (%s)", backend.op, backend.name, how)


def selections(op: str) -> int:
    """How many times a backend of ``op`` was chosen in this process (a cached choice is not chosen again; after
    ``set_backend``, which clears the cache, the next call chooses anew). Compared before and after a run, it tells a
    forced backend of an op the model never called from one that ran (``seqzoo generate --kernel``)."""
    return _SELECTIONS.get(op, 0)


def prepare() -> None:
    """Do now what the first selection would otherwise do inside a ``torch.compile`` trace, which cannot take a
    lock, import a module or probe a device without a graph break: load the op packages and plugins, read
    ``SEQZOO_KERNELS`` and probe every backend's availability. Every mixer calls it when it is built."""
    _current()
    for entry in list(_OPS.values()):
        for backend in list(entry.backends.values()):
            if backend.available() and not callable(backend.impl) and _on_this_machine(backend):
                try:
                    backend.load()
                except Exception:  # raised again, with its traceback, if this backend is ever selected
                    logger.debug("loading %s/%s ahead failed", backend.op, backend.name, exc_info=True)


def _on_this_machine(backend: Backend) -> bool:
    # Only backends that can run on this machine's default device are imported ahead (Triton's modules, which need
    # a GPU, stay unimported on a CPU machine), and listed as selected.
    return backend.devices is None or _default_device() in backend.devices


def _compiling() -> bool:
    import torch

    return torch.compiler.is_compiling()


def dispatch(op: str, *args: Any, **kwargs: Any) -> Any:
    """Run ``op`` on the selected backend.

    Under ``torch.autocast`` every kernel is one of autocast's float32 ops: it runs with autocast off, on its
    half-precision floating inputs cast to float32, and returns float32. Otherwise the caller's autocast would reach
    into the kernel's internal math (matmuls of decays and triangular solves that need float32, and ops with no
    bfloat16 implementation on CPU such as ``triangular_solve`` and oneDNN's LSTM)."""
    device_type = autocast_device_type(args[0]) if args else None
    if device_type is None:
        backend = select(op, *args, **kwargs)
        if backend.plugin is None:  # (seqzoo's own: called here, one frame and no try on the decode path)
            return backend.load()(*args, **kwargs)
        return run_plugin(backend, args, kwargs)
    import torch

    args = tuple(to_float32(a) for a in args)
    kwargs = {k: to_float32(v) for k, v in kwargs.items()}
    with torch.autocast(device_type, enabled=False):
        backend = select(op, *args, **kwargs)
        if backend.plugin is None:
            return backend.load()(*args, **kwargs)
        return run_plugin(backend, args, kwargs)


def get_kernel(op: str, backend: str) -> Callable[..., Any]:
    """The function of one named backend (for tests and benchmarks that compare backends directly)."""
    return _available(op, backend).load()


def list_ops() -> list[str]:
    """The names of the kernel ops (``selective_scan``, ``ssd``, ``wkv7`` ...), plugins' included."""
    _ensure_loaded()
    return sorted(_OPS)


def list_kernels() -> list[dict[str, Any]]:
    """One row per (op, backend): availability here, priority, and whether it is the one selected.

    "selected" is the explicitly requested backend, else the highest-priority available backend that runs on
    this machine's default device (CUDA when present, else CPU). A malformed ``SEQZOO_KERNELS`` is left out of
    the rows; :func:`check_environment` reports it.
    """
    _ensure_loaded()
    env_forced = _current().env_forced
    rows = []
    for op_name in sorted(_OPS):
        entry = _OPS[op_name]
        forced = _FORCED.get(op_name) or env_forced.get(op_name)
        ordered = sorted(entry.backends.values(), key=lambda b: -b.priority)
        default = forced
        if default is None:
            default = next((b.name for b in ordered if b.available() and _on_this_machine(b)), None)
        for backend in ordered:
            rows.append(
                {
                    "op": op_name,
                    "backend": backend.name,
                    "priority": backend.priority,
                    "available": backend.available(),
                    "why_unavailable": "" if backend.available() else why_unavailable(backend),
                    "runs_here": _on_this_machine(backend),  # (on this machine's default device)
                    "selected": backend.name == default,
                    "forced": forced == backend.name,
                    "description": backend.description,
                }
            )
    return rows


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
