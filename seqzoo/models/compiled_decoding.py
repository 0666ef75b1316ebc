"""``compile_decoding``'s machinery: each model's own compiled copy of the causal LM's forward, and the decode step
that runs through it, with what a trace skips or cannot raise from run eagerly first."""

from __future__ import annotations

import importlib.util
import logging
import types
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from seqzoo.cache import SeqzooCache
from seqzoo.kernels import one_row_products
from seqzoo.layers.mixer import global_module_hooks
from seqzoo.models.compat import CACHE_ALIASES
from seqzoo.models.inputs import check_mask_values, check_token_ids

logger = logging.getLogger("seqzoo")

ATTRIBUTE = "_compiled_decoding"  # where a model keeps its CompiledDecoding (in its __dict__: not a submodule)


@dataclass(frozen=True)
class CompiledDecoding:
    """What ``compile_decoding()`` keeps on a model: the compiled forward, and each module class's forward then."""

    step: Any
    forwards: dict  # {module class: its forward when a graph first traced it}


def _module_forwards(model: nn.Module) -> dict:
    """Each class among ``model``'s modules, and its forward now."""
    return {type(module): type(module).forward for module in model.modules()}


def _graphs_traced() -> int:
    """How many graphs dynamo has compiled in this process (it counts no other way that a call can read cheaply)."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _may_pass_positions(config: Any, position_ids: Any, cache: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a decode step may reach a position beyond a model's learned / sinusoidal positions
    (``config.max_input_length``), which the eager forward refuses with a clear error and a compiled one would index
    out of range: such a step runs eagerly. Conservative (the cached length bounds the step's position; a left-padded
    row's is smaller), so the eager forward makes the exact check."""
    longest = getattr(config, "max_input_length", None)
    if longest is None:
        return False
    if isinstance(position_ids, torch.Tensor):
        low, high = (int(v) for v in torch.aminmax(position_ids))
        return high >= longest or low < 0
    if cache is None:
        cache = next((kwargs[name] for name in CACHE_ALIASES if kwargs.get(name) is not None), None)
    return isinstance(cache, SeqzooCache) and cache.get_seq_length() >= longest


def fixed_model_options() -> dict[str, Any]:
    """``compile_decoding()``'s keywords for a model that nothing changes once it has decoded its first compiled step,
    as in ``seqzoo generate --compile`` (the command loads the model, lays out its weights, compiles and decodes, and
    runs no other code on it): dynamo's guards on the model's modules, parameters and config, which every compiled
    step otherwise evaluates before it runs, are left out (``torch.compiler.skip_guard_on_all_nn_modules_unsafe``, as
    ``options={"guard_filter_fn": ...}``). The guards on the step's inputs (the ids, the cache's states, a mask) stay,
    so another batch size or cache length still compiles anew. A change to the model after its first compiled step
    (a weight replaced, a layout set, a hook added, a setting changed) would go unseen: the steps would keep running
    the graphs traced before it. At 256 channels and four RWKV-7 blocks, one sequence, that evaluation took about 170
    µs of a 1.5 ms compiled step (BENCHMARKS.md, run AM). {} where this torch has no such filter."""
    unguarded = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
    return {} if unguarded is None else {"options": {"guard_filter_fn": unguarded}}


# torch.compile's backends that need a package of their own: named here, a missing one is refused at once (the
# compile of the first decode step failed, with part of the text generated).
BACKEND_PACKAGES = {"tvm": "tvm", "openxla": "torch_xla", "openxla_eval": "torch_xla", "onnxrt": "onnxruntime",
                    "tensorrt": "torch_tensorrt", "torch_tensorrt": "torch_tensorrt",
                    "ipex": "intel_extension_for_pytorch"}


def backend_installed(backend: str) -> bool:
    """Whether a ``torch.compile`` backend's own package (if it needs one) is installed here."""
    package = BACKEND_PACKAGES.get(backend)
    return package is None or importlib.util.find_spec(package) is not None


def check_backend(backend: Any) -> None:
    """Refuse a ``torch.compile`` backend name whose package is not installed."""
    package = BACKEND_PACKAGES.get(backend) if isinstance(backend, str) else None
    if package is not None and not backend_installed(backend):
        raise ValueError(f"torch.compile's backend {backend!r} needs the package {package!r}, which is not installed "
                         "here; install it, or choose another backend (inductor, the default; aot_eager; eager)")


def compile_forward(model: nn.Module, options: dict[str, Any]) -> CompiledDecoding:
    """``torch.compile`` (with ``options``) of a copy of the forward of ``model``'s class, bound to ``model``."""
    # Dynamo keeps its compiled graphs, and counts them against its recompile limit (8), per code object: every
    # seqzoo causal LM shares its class's forward, so each model compiles a copy of it, and a process holding
    # several compiled models (or one decoding at several batch sizes) does not run out.
    forward = type(model).forward
    own = types.FunctionType(forward.__code__.replace(), forward.__globals__, forward.__name__,
                             forward.__defaults__, forward.__closure__)
    own.__kwdefaults__ = forward.__kwdefaults__
    # What the graphs are traced through (a forward put on a module's class later is not seen by dynamo's guards,
    # so such a step runs eagerly; see run_compiled_step, which adds the classes of modules put in later).
    # (torch.compile takes guard_filter_fn out of the options dict it is given: it gets a copy, the caller's stays)
    if isinstance(options.get("options"), dict):
        options = {**options, "options": dict(options["options"])}
    # (inductor writes one sequence's products with weights stored by rows as its own loops: one_row_products)
    return CompiledDecoding(torch.compile(types.MethodType(own, model), **one_row_products.with_pass(options)),
                            _module_forwards(model))


def run_compiled_step(model: nn.Module, compiled: CompiledDecoding, args: tuple,
                      kwargs: dict[str, Any]) -> Any:
    """A decode step of a model whose steps were compiled (``compile_decoding``): the same forward, traced. ``args``:
    the forward's arguments in its order, up to ``logits_to_keep``; ``kwargs``: the others (checked by the caller).
    What a trace skips (checks that read tensor values) or cannot raise from runs here first.

    Hooks: dynamo re-traces a step when a module's own hooks change only if told to guard on them
    (``skip_nnmodule_hook_guards``, True by default: a hook added after the first step would be silently left
    out), so every call here asks for those guards. Hooks on every module and a forward put on a module's class
    since are not guarded by dynamo at all: such a step runs eagerly, and the hook or the new forward runs."""
    input_ids, attention_mask = args[:2]
    if (not (input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool)
            and not global_module_hooks()
            and all(cls.forward is forward for cls, forward in compiled.forwards.items())
            and not _may_pass_positions(model.config, args[2], args[3], kwargs)):
        check_token_ids(input_ids, model.config.vocab_size)
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
            check_mask_values(attention_mask)
        config = torch._dynamo.config
        skipped = config.skip_nnmodule_hook_guards
        config.skip_nnmodule_hook_guards = False
        traced = _graphs_traced()
        try:
            return compiled.step(*args, **kwargs)
        except torch._dynamo.exc.Unsupported:
            pass  # the trace stopped before anything ran (fullgraph: a check that raises for this input)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            if not model.__dict__.get("_warned_recompile_limit"):
                model.__dict__["_warned_recompile_limit"] = True
                logger.warning(
                    "%s.compile_decoding: dynamo's recompile limit (torch._dynamo.config.recompile_limit = %d) "
                    "is reached for this model's decode step: steps that no compiled graph fits (a shape not "
                    "compiled yet, or a hook the graph depends on that changed) run eagerly. Raise the limit to "
                    "compile them too", type(model).__name__, torch._dynamo.config.recompile_limit)
        finally:
            config.skip_nnmodule_hook_guards = skipped
            if _graphs_traced() != traced:
                # A new graph may have traced a module put in since compile_decoding(), of a class not kept yet:
                # its forward now is the one later steps check (the classes kept have theirs, checked above).
                for cls, forward in _module_forwards(model).items():
                    compiled.forwards.setdefault(cls, forward)
    # Eagerly: the forward raises the check's own error (or computes the step). The model keeps its compiled forward
    # meanwhile, for other threads' steps (taking it off the model for this step made another thread's eager step
    # fail with a KeyError, and put it back after compile_decoding(False) had taken it off).
    token = _EAGER_STEP.set(model)
    try:
        return type(model).forward(model, *args, **kwargs)
    finally:
        _EAGER_STEP.reset(token)


# The model whose decode step this context (thread) runs eagerly in run_compiled_step: its forward runs the step
# itself, not through the compiled forward (runs_eagerly).
_EAGER_STEP: ContextVar[nn.Module | None] = ContextVar("seqzoo_eager_compiled_step", default=None)


def runs_eagerly(model: nn.Module) -> bool:
    """Whether this context is running a decode step of ``model`` eagerly for run_compiled_step."""
    return _EAGER_STEP.get() is model
