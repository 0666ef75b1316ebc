"""Deliberate bugs, one at a time: which does the test suite catch, and with how many failing tests?

    python tests/mutations.py                     # every mutation against its own test subset (~15 min, 2 cores)
    python tests/mutations.py --full              # every mutation against the whole suite (~1 h on 2 cores)
    python tests/mutations.py rng_not_restored    # named mutations only
    python tests/mutations.py --list

Each mutation is applied inside a pytest run (this module is loaded as a pytest plugin, ``-p tests.mutations``,
with the mutation's name in ``SEQZOO_MUTATION``), so nothing is written to the source tree. A mutation is a
monkeypatch anchored on a function by name: either a wrapper around it (``wrap``) or its own source with one exact
piece of text replaced and recompiled (``edit``). When a refactor moves or renames the function, the run stops with
"anchor ... not found" for that mutation; fixing it means changing the anchor string (one line). A mutation whose
anchor resolves but whose text is gone also stops, so a stale mutation never reports "not caught" silently.

The default subset per mutation is the test files that exercise that code (listed in ``tests=``); ``--full`` runs
everything. Not collected by pytest (no ``test_`` prefix) and not part of ``.ci/run``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
ENV = "SEQZOO_MUTATION"


class AnchorError(RuntimeError):
    """A mutation's anchor (function or text) no longer exists: update the anchor."""


def resolve(anchor: str) -> tuple[object, str]:
    """``"package.module:Class.method"`` -> (the object holding the attribute, its name)."""
    module_name, _, path = anchor.partition(":")
    try:
        owner: object = importlib.import_module(module_name)
        *parents, name = path.split(".")
        for part in parents:
            owner = getattr(owner, part)
        getattr(owner, name)
    except (ImportError, AttributeError) as err:
        raise AnchorError(f"anchor {anchor!r} not found ({err})") from err
    return owner, name


def _rebind(original: object, replacement: object) -> None:
    """Point every other reference seqzoo holds to ``original`` at ``replacement``: names imported with
    ``from x import f`` and kernel backends the registry keeps as function objects."""
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("seqzoo") and module is not None:
            for attr, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attr, replacement)
    from seqzoo.kernels import registry

    for op in registry.list_ops():
        for backend in registry.get_op(op).backends.values():
            if backend.impl is original or backend._loaded is original:
                backend.impl, backend._loaded = replacement, None
    registry.refresh()


def _replace(owner: object, name: str, original: object, replacement: object) -> None:
    setattr(owner, name, replacement)
    _rebind(original, replacement)


def wrap(anchor: str, wrapper: Callable[[Callable], Callable]) -> None:
    """Replace the function at ``anchor`` by ``wrapper(original)``."""
    owner, name = resolve(anchor)
    original = inspect.getattr_static(owner, name)
    function = original.__func__ if isinstance(original, (staticmethod, classmethod)) else original
    replaced = wrapper(function)
    if isinstance(original, staticmethod):
        replaced = staticmethod(replaced)
    _replace(owner, name, original, replaced)


def edit(anchor: str, old: str, new: str) -> None:
    """Recompile the function at ``anchor`` with the text ``old`` (which must occur exactly once) replaced.

    The function is compiled alone, so one that calls zero-argument ``super()`` cannot be edited: wrap it."""
    owner, name = resolve(anchor)
    function = inspect.getattr_static(owner, name)
    source = textwrap.dedent(inspect.getsource(function))
    count = source.count(old)
    if count != 1:
        raise AnchorError(f"anchor {anchor!r}: expected the text {old!r} once, found it {count} times")
    namespace: dict[str, object] = {}
    exec(compile(source.replace(old, new), inspect.getsourcefile(function), "exec"), function.__globals__, namespace)
    _replace(owner, name, function, namespace[name])


def wrap_kernel(op: str, backend: str, wrapper: Callable[[Callable], Callable]) -> None:
    """Wrap one kernel backend where the registry holds it (modules' names are not what dispatch calls)."""
    from seqzoo.kernels import registry

    entry = registry.get_op(op).backends[backend]
    entry.impl = wrapper(entry.load())
    entry._loaded = None
    registry.refresh()


# ----------------------------------------------------------------------------------------------------------------
# The mutations. ``tests`` is the subset run by default (paths relative to the repository root).


@dataclass
class Mutation:
    description: str
    apply: Callable[[], None]
    tests: list[str] = field(default_factory=list)
    keyword: str = ""  # a pytest -k expression narrowing the subset (ignored with --full)


def _attention_scale_1_over_d() -> None:
    def wrapper(init):
        def patched(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.scaling = self.head_dim**-1.0

        return patched

    wrap("seqzoo.layers.attention:SelfAttention.__init__", wrapper)


def _classic_dropout_disabled() -> None:
    def wrapper(init):
        def patched(self, config, *args, **kwargs):
            init(self, config, *args, **kwargs)
            import torch

            for name, module in list(self.named_modules()):
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0

        return patched

    wrap("seqzoo.models.classic.modeling_classic:ClassicRecurrentModel.__init__", wrapper)


def _wkv7_zeros_beyond_1000() -> None:
    def wrapper(kernel):
        def patched(*args, **kwargs):
            y, state = kernel(*args, **kwargs)
            y = y.clone()
            y[:, 1000:] = 0
            return y, state

        return patched

    wrap_kernel("wkv7", "chunked", wrapper)


def _no_op(function: Callable) -> Callable:
    def patched(*args, **kwargs):
        return None

    return patched


def _registry_key_ignores_mask() -> None:
    from seqzoo.kernels import registry

    for op in ("rnn", "lstm", "gru"):
        registry.get_op(op).backends["torch"].cache_key = lambda *args, **kwargs: "contiguous"
    registry.refresh()


def _selective_scan_chunked_ignores_initial_state() -> None:
    def wrapper(kernel):
        def patched(*args, initial_state=None, **kwargs):
            return kernel(*args, initial_state=None, **kwargs)

        return patched

    wrap_kernel("selective_scan", "chunked", wrapper)


MUTATIONS: dict[str, Mutation] = {
    "attention_scale_1_over_d": Mutation(
        "attention scores scaled by 1/d instead of 1/sqrt(d)",
        _attention_scale_1_over_d,
        ["tests/models", "tests/conversions"], "transformer or gpt2 or llama or attention",
    ),
    "lstm_forget_bias_dropped": Mutation(
        "the LSTM forget-gate bias is not initialised",
        lambda: edit("seqzoo.layers.recurrent:LSTMMixer.initial_bias_hh", "= self.forget_bias", "= 0.0"),
        ["tests/models/test_classic_reference.py", "tests/models/test_common.py"], "lstm or forget",
    ),
    "classic_dropout_disabled": Mutation(
        "the classic models' dropout does nothing",
        _classic_dropout_disabled,
        ["tests/models/test_classic_reference.py", "tests/models/test_common.py", "tests/training/test_trainer.py"],
    ),
    "grad_clipping_disabled": Mutation(
        "seqzoo train never clips gradients (the norm is still measured)",
        lambda: edit("seqzoo.training.trainer:_train_step", "recipe.optim.max_grad_norm or math.inf", "math.inf"),
        ["tests/training"], "not sigkill and not gloo",
    ),
    "lr_scheduler_never_stepped": Mutation(
        "seqzoo train never steps the LR scheduler (the warmup's first value stays)",
        lambda: edit("seqzoo.training.trainer:_train_step", "    scheduler.step()\n", "    pass\n"),
        ["tests/training"], "not sigkill and not gloo",
    ),
    "wkv7_zeros_beyond_1000": Mutation(
        "chunked wkv7 returns zeros past token 1000",
        _wkv7_zeros_beyond_1000,
        ["tests/kernels/test_wkv7.py", "tests/models/test_rwkv7_model.py", "tests/models/test_rwkv7_reference.py"],
    ),
    "mamba_pad_not_identity": Mutation(
        "Mamba's pad step is not the identity (a small delta at pads)",
        lambda: edit("seqzoo.layers.mamba:MambaMixer.forward", "delta.masked_fill(~mask[..., None], 0.0)",
                     "delta.masked_fill(~mask[..., None], 1e-3)"),
        ["tests/models/test_common.py", "tests/models/test_mamba.py", "tests/models/test_state_exactness.py"],
        "mamba",
    ),
    "mamba2_pad_dt_unmasked": Mutation(
        "Mamba-2's dt is not zeroed at pads",
        lambda: edit("seqzoo.layers.mamba2:Mamba2Mixer.forward", "dt = dt.masked_fill(~mask[..., None], 0.0)",
                     "dt = dt"),
        ["tests/models/test_common.py", "tests/models/test_mamba.py", "tests/models/test_state_exactness.py"],
        "mamba",
    ),
    "beam_reorder_skips_lstm_c": Mutation(
        "beam search reorders the LSTM's h but not its c",
        lambda: edit("seqzoo.cache:StateLayer.reorder_cache",
                     "self._map(lambda value: value.index_select(0, beam_idx.to(value.device)))",
                     "self.state = self.state and {name: value if name == 'c' else value.index_select(0, beam_idx) "
                     "for name, value in self.state.items()}"),
        ["tests/models/test_common.py", "tests/models/test_state_exactness.py"], "lstm",
    ),
    "rng_not_restored": Mutation(
        "resume does not restore the RNG states",
        lambda: wrap("seqzoo.training.state:restore_rng_state", _no_op),
        ["tests/training"], "not gloo",
    ),
    # Our own.
    "optimizer_state_not_restored": Mutation(
        "resume restores the weights but not the optimizer's moments",
        lambda: edit("seqzoo.training.checkpoint:restore_training_state",
                     "set_optimizer_state_dict(model, _inner(optimizer), files.load_optimizer_state(optimizer_file),",
                     "(lambda *a, **k: None)(model, _inner(optimizer), files.load_optimizer_state(optimizer_file),"),
        ["tests/training"], "not sigkill and not gloo",
    ),
    "checksums_not_verified": Mutation(
        "a checkpoint's files are not checked against their recorded SHA-256",
        lambda: wrap("seqzoo.training.state:verify_files", _no_op),
        ["tests/training"], "not sigkill and not gloo",
    ),
    "nonfinite_weight_check_disabled": Mutation(
        "weights are not checked for NaN/inf after an optimizer step",
        lambda: wrap("seqzoo.training.trainer:check_finite_parameters", _no_op),
        ["tests/training"], "not sigkill and not gloo",
    ),
    "registry_key_ignores_mask": Mutation(
        "the kernel registry's cache key of the fused RNN backends ignores the mask (holes get the fused kernel)",
        _registry_key_ignores_mask,
        ["tests/kernels/test_selection_cache.py", "tests/test_registry.py", "tests/kernels/test_rnn_cells.py"],
    ),
    "gru_gates_swapped": Mutation(
        "the reference GRU mixes new and old state the wrong way round: z n + (1 - z) h",
        lambda: edit("seqzoo.kernels.rnn_cells.reference:gru", "(1 - z) * n + z * h", "z * n + (1 - z) * h"),
        ["tests/kernels/test_rnn_cells.py", "tests/models/test_classic_reference.py"],
    ),
    "variant_weights_unchecked": Mutation(
        "from_pretrained(variant=...) reads the plain weight files' names, so a variant's integer tensors load cast",
        lambda: edit("seqzoo.models.loading:check_weight_files", 'variant = kwargs.get("variant")', "variant = None"),
        ["tests/test_bad_forward_input.py"], "variant or integer or subfolder",
    ),
    "subfolder_weights_unchecked": Mutation(
        "from_pretrained(subfolder=...) checks the weights of the folder above the checkpoint",
        lambda: edit("seqzoo.models.loading:check_weight_files", 'folder = Path(source) / kwargs.get("subfolder", "")',
                     "folder = Path(source)"),
        ["tests/test_bad_forward_input.py"], "variant or integer or subfolder",
    ),
    "backbone_ignores_return_dict": Mutation(
        "a backbone returns a ModelOutput when return_dict=False (passed or from the config)",
        lambda: edit("seqzoo.models.compat:as_returned",
                     "return output if (model.config.return_dict if return_dict is None else return_dict) else "
                     "output.to_tuple()", "return output"),
        ["tests/models/test_compat.py", "tests/models/test_heads.py"], "return_dict",
    ),
    "cache_row_list_refused": Mutation(
        "a recurrent cache layer refuses rows selected by a list, after the attention layers before it were cut",
        lambda: edit("seqzoo.cache:SeqzooCache._rows",
                     "rows = torch.tensor([int(value) for value in indices], dtype=torch.int64)",
                     "rows = indices"),
        ["tests/models/test_cache_api.py"],
    ),
    "cache_layout_kept_after_failed_forward": Mutation(
        "an empty cache keeps the layout of a model whose forward failed, and another model is refused it",
        lambda: edit("seqzoo.cache:SeqzooCache._restore",
                     "self.model_type, self.mixer_types, self._layout_config, self._fits_config = layout", "pass"),
        ["tests/models/test_cache_on_error.py"],
    ),
    "bundle_missing_package_unnamed": Mutation(
        "a bundle importing a module of a missing package ends in a bare ModuleNotFoundError",
        lambda: edit("seqzoo.hub.bundle:_is_submodule", "except ModuleNotFoundError:", "except KeyError:"),
        ["tests/hub/test_bundle.py"], "missing_module",
    ),
    "tokenizer_token_lists_unchecked": Mutation(
        "load_tokenizer does not name a wrong special token in additional_special_tokens / extra_special_tokens",
        lambda: edit("seqzoo.tokenizer:_special_tokens_of_wrong_type", "for key in _SPECIAL_TOKEN_LIST_KEYS:",
                     "for key in ():"),
        ["tests/test_tokenizer_edges.py"],
    ),
    "selective_scan_chunked_ignores_initial_state": Mutation(
        "chunked selective_scan starts every call from a zero state",
        _selective_scan_chunked_ignores_initial_state,
        ["tests/kernels/test_selective_scan.py", "tests/models/test_mamba.py"],
    ),
}


def pytest_configure(config) -> None:
    """Plugin hook: apply the mutation named in SEQZOO_MUTATION before any test runs."""
    name = os.environ.get(ENV)
    if name:
        MUTATIONS[name].apply()


# ----------------------------------------------------------------------------------------------------------------
# The driver.


def run(name: str, full: bool, timeout: int) -> tuple[int, int, float, str]:
    """(failed, passed, seconds, problem) of the test run with mutation ``name`` applied."""
    mutation = MUTATIONS[name]
    paths = [] if full else mutation.tests
    missing = [p for p in paths if not (ROOT / p).exists()]
    paths = [p for p in paths if (ROOT / p).exists()]
    keyword = ["-k", mutation.keyword] if mutation.keyword and not full else []
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.mutations",
               *keyword, *paths]
    env = {**os.environ, ENV: name}
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 0, 0, time.monotonic() - started, f"timed out after {timeout} s"
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    if "AnchorError" in output:
        problem = next(line for line in output.splitlines() if "AnchorError" in line)
        return 0, 0, seconds, problem.strip()
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (failed|passed|error)", output.splitlines()[-1]
                                                       if output.strip() else "")}
    problem = f"missing test paths: {', '.join(missing)}" if missing else ""
    if not counts:
        problem = problem or f"no pytest summary (exit {done.returncode}): {output.strip().splitlines()[-1:]}"
    return counts.get("failed", 0) + counts.get("error", 0), counts.get("passed", 0), seconds, problem


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--full", action="store_true", help="run the whole suite for each mutation")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per mutation")
    args = parser.parse_args()
    if args.list:
        for name, mutation in MUTATIONS.items():
            print(f"{name:46s} {mutation.description}")
        return 0
    unknown = [n for n in args.names if n not in MUTATIONS]
    if unknown:
        parser.error(f"unknown mutation(s) {', '.join(unknown)}; --list shows them")
    names = args.names or list(MUTATIONS)
    print("| mutation | caught | failing tests | passing | tests run | seconds |")
    print("|---|---|---|---|---|---|")
    uncaught = 0
    for name in names:
        failed, passed, seconds, problem = run(name, args.full, args.timeout)
        mutation = MUTATIONS[name]
        scope = "all" if args.full else " ".join(mutation.tests) + (f" -k '{mutation.keyword}'"
                                                                      if mutation.keyword else "")
        caught = "yes" if failed and not problem else ("NO" if not problem else f"? {problem}")
        uncaught += caught != "yes"
        print(f"| {name} | {caught} | {failed} | {passed} | {scope} | {seconds:.0f} |", flush=True)
    return 1 if uncaught else 0


if __name__ == "__main__":
    sys.exit(main())
