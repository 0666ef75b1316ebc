"""Kernel registry rules the selection tests left unchecked (each found by editing the registry and seeing no test
fail): registering over a name, removing a requested backend, a failed plugin's ops, spacing in SEQZOO_KERNELS, the
API over the environment, a requested backend that is not available, choices that cannot be cached, logging and
warnings once, nested use_backend, plugin errors, the package's exports, declared devices and integer resets."""

from __future__ import annotations

import inspect
import logging
import sys

import pytest
import torch

import seqzoo.kernels
from seqzoo.kernels import registry
from seqzoo.kernels.registry import (
    KernelError,
    dispatch,
    get_kernel,
    register_backend,
    requested_backend,
    select,
    set_backend,
    unregister_backend,
    use_backend,
)
from tests.conftest import install_plugin
from tests.kernels import test_causal_conv1d, test_ssd
from tests.kernels.test_selection_cache import lstm_call


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    monkeypatch.delenv("SEQZOO_KERNELS", raising=False)


@pytest.fixture
def added():
    """Backends a test registers, taken back afterwards: ``added(op, name, impl, **kwargs)``."""
    names = []

    def add(op, name, impl=None, **kwargs):
        impl = impl if impl is not None else get_kernel(op, "reference")
        backend = register_backend(op, name, impl, **kwargs)
        names.append((op, name))
        return backend

    yield add
    for op, name in names:
        if name in registry.get_op(op).backends:
            unregister_backend(op, name)


def gru_call(length=5):
    (x, h, _c, *_w), _ = lstm_call(length)
    return (x, h, torch.randn(9, 4), torch.randn(9, 3), None, None)


def test_registering_a_taken_name_needs_replace():
    with pytest.raises(ValueError, match="backend 'reference' is already registered for op 'gru'; pass replace=True"):
        register_backend("gru", "reference", get_kernel("gru", "reference"))


def test_unregistering_a_requested_backend_drops_the_request(added):
    added("gru", "mine", priority=-1)
    set_backend("gru", "mine")
    unregister_backend("gru", "mine")
    assert requested_backend("gru") is None
    assert select("gru", *gru_call()).name == "torch"  # (not "unknown kernel backend 'mine'" on every call)


def test_a_kernel_plugin_that_declares_an_op_and_fails_leaves_no_op(tmp_path, monkeypatch):
    source = (
        "def register(registry):\n"
        "    registry.register_op('plugged_op', 'an op of a plugin that then fails')\n"
        "    registry.register_backend('plugged_op', 'reference', lambda x: x)\n"
        "    raise ImportError('missing extension')\n"
    )
    install_plugin(tmp_path, monkeypatch, "opplugin", source, "seqzoo.kernels", {"opper": "register"})
    try:
        registry._load_entry_point_plugins()
        assert "plugged_op" not in registry.list_ops()
    finally:
        registry._OPS.pop("plugged_op", None)
        sys.modules.pop("seqzoo_opplugin", None)


def test_spaces_and_empty_entries_in_the_environment_are_allowed(monkeypatch):
    monkeypatch.setenv("SEQZOO_KERNELS", " lstm = reference , ,gru=reference, ")
    registry.check_environment()
    args, kwargs = lstm_call()
    assert select("lstm", *args, **kwargs).name == "reference"
    assert select("gru", *gru_call()).name == "reference"


def test_an_environment_value_that_is_not_utf8_is_named(monkeypatch, capsys):
    # Its bytes (0xff here, a surrogate escape in os.environ) were decoded strictly: a bare UnicodeDecodeError that
    # named no variable, from every kernel call and from `seqzoo kernels`.
    from seqzoo.cli import main

    monkeypatch.setenv("SEQZOO_KERNELS", "lstm=reference\udcff")
    with pytest.raises(KernelError, match=r"SEQZOO_KERNELS is not valid UTF-8 text; it is op=backend"):
        registry.check_environment()
    args, kwargs = lstm_call()
    with pytest.raises(KernelError, match="SEQZOO_KERNELS is not valid UTF-8 text"):
        select("lstm", *args, **kwargs)
    assert main(["kernels"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: SEQZOO_KERNELS is not valid UTF-8 text")


def test_the_api_request_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("SEQZOO_KERNELS", "lstm=torch")
    args, kwargs = lstm_call()
    with use_backend("lstm", "reference"):
        assert requested_backend("lstm") == "reference"
        assert select("lstm", *args, **kwargs).name == "reference"
    assert select("lstm", *args, **kwargs).name == "torch"


def test_a_backend_the_environment_requests_that_is_not_available_raises(monkeypatch, added):
    calls = []
    added("lstm", "phantom", lambda *a, **k: calls.append(1), is_available=lambda: False)
    monkeypatch.setenv("SEQZOO_KERNELS", "lstm=phantom")
    args, kwargs = lstm_call()
    with pytest.raises(KernelError, match=r"'phantom' was requested for op 'lstm' but is not available on this "
                                          r"machine; available backends: torch, reference"):
        dispatch("lstm", *args, **kwargs)
    assert not calls


def test_get_kernel_of_a_backend_that_is_not_available_raises(added):
    added("lstm", "phantom", lambda *a, **k: None, is_available=lambda: False)
    with pytest.raises(KernelError, match="'phantom' for op 'lstm' is not available on this machine"):
        get_kernel("lstm", "phantom")


def test_a_backend_that_is_not_available_says_why(monkeypatch, added):
    """A Triton backend requested where Triton is not installed named no reason ("not available on this machine;
    available backends: chunked, reference"): only `seqzoo kernels` named the extra that installs it."""
    from seqzoo.kernels import triton_support

    added("lstm", "phantom", lambda *a, **k: None, is_available=lambda: False,
          unavailable_reason=lambda: "phantom needs its package (pip install phantom)")
    with pytest.raises(KernelError, match=r"'phantom' for op 'lstm' is not available on this machine \(phantom "
                                          r"needs its package \(pip install phantom\)\); available backends"):
        get_kernel("lstm", "phantom")
    monkeypatch.setattr(triton_support, "triton_installed", lambda: False)
    registry.refresh()
    try:
        with pytest.raises(KernelError, match=r"'triton' for op 'wkv7' is not available on this machine \(Triton is "
                                              r"not installed \(pip install 'seqzoo\[triton\]'\)"):
            set_backend("wkv7", "triton")
        row = next(r for r in seqzoo.kernels.list_kernels() if (r["op"], r["backend"]) == ("ssd", "triton"))
        assert row["why_unavailable"].startswith("Triton is not installed (pip install 'seqzoo[triton]')")
    finally:
        monkeypatch.undo()
        registry.refresh()
    with pytest.raises(ValueError, match=r"unavailable_reason must be a function"):
        added("lstm", "phantom2", lambda *a, **k: None, unavailable_reason="no")


def long_only(x, *args, **kwargs):
    return x.shape[1] > 3, "needs more than 3 tokens"


def test_a_supports_without_a_cache_key_runs_for_every_call(added):
    added("lstm", "picky", priority=99, supports=long_only)
    for length, expected in [(5, "picky"), (2, "torch"), (5, "picky"), (2, "torch")]:
        args, kwargs = lstm_call(length)
        assert select("lstm", *args, **kwargs).name == expected, length


def test_a_call_one_of_several_keys_cannot_summarise_is_not_cached(added):
    # Two keyed candidates (the "torch" backend's key and this one's): a None among the keys means "run supports()".
    added("lstm", "picky", priority=99, supports=long_only, cache_key=lambda x, *a, **k: None if x.shape[1] < 9 else 1)
    for length, expected in [(5, "picky"), (2, "torch"), (5, "picky")]:
        args, kwargs = lstm_call(length)
        assert select("lstm", *args, **kwargs).name == expected, length


def test_supports_must_answer_a_pair(added):
    added("lstm", "chatty", priority=99, supports=lambda *a, **k: (True, "", "and more"))
    args, kwargs = lstm_call()
    with pytest.raises(KernelError, match=r"supports\(\) of kernel backend 'chatty' \(op 'lstm'\) returned "
                                          r"\(True, '', 'and more'\); it must return \(ok, reason\)"):
        select("lstm", *args, **kwargs)


def test_each_choice_is_logged_once_whatever_the_cache_keys(caplog, added):
    registry._LOGGED.discard(("ssd", "keyed"))
    added("ssd", "keyed", priority=99, supports=lambda *a, **k: (True, ""),
          cache_key=lambda *a, chunk_size=64, **k: chunk_size)
    args, kwargs = test_ssd.call_args(test_ssd.make_inputs(3))
    with caplog.at_level(logging.INFO, logger="seqzoo.kernels"):
        for chunk_size in (4, 8, 16, 8):  # three keys
            select("ssd", *args, **kwargs, chunk_size=chunk_size)
        registry.refresh()
        select("ssd", *args, **kwargs, chunk_size=4)
    assert sum("seqzoo kernel ssd -> backend 'keyed'" in r.getMessage() for r in caplog.records) == 1


def test_a_misspelt_variable_is_warned_about_once(monkeypatch, caplog):
    monkeypatch.setenv("SEQZOO_KERNEL", "lstm=reference")
    args, kwargs = lstm_call()
    with caplog.at_level(logging.WARNING, logger="seqzoo.kernels"):
        for value in ("gru=reference", "gru=torch", "rnn=reference"):  # each a change: the registry rebuilds
            monkeypatch.setenv("SEQZOO_KERNELS", value)
            select("lstm", *args, **kwargs)
    assert sum("SEQZOO_KERNEL is not read by seqzoo" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("name", ["SEQZOOKERNELS", "SEQ_ZOO_KERNELS"])
def test_a_misspelt_variable_without_the_seqzoo_prefix_is_warned_about(monkeypatch, caplog, name):
    # Only names that began with SEQZOO_ were looked at: these forced nothing, without a word.
    monkeypatch.setenv(name, "lstm=reference")
    monkeypatch.setattr(registry, "_WARNED_ENV", set())
    registry._invalidate()  # (the environment is read again, as in a new process)
    args, kwargs = lstm_call()
    with caplog.at_level(logging.WARNING, logger="seqzoo.kernels"):
        assert select("lstm", *args, **kwargs).name == "torch"
    assert f"{name} is not read by seqzoo; did you mean SEQZOO_KERNELS?" in caplog.text


def test_nested_use_backend_restores_the_outer_request():
    args, kwargs = lstm_call()
    set_backend("lstm", "reference")
    try:
        with use_backend("lstm", "torch"):
            assert select("lstm", *args, **kwargs).name == "torch"
        assert requested_backend("lstm") == "reference"
        assert select("lstm", *args, **kwargs).name == "reference"
    finally:
        set_backend("lstm", None)


@pytest.mark.parametrize("outside", [None, "reference"])
def test_use_backend_blocks_that_end_out_of_order_leave_nothing_forced_behind(outside):
    # Two threads (or generators) each in a block: A ("reference") began first and ended first. A put back what it
    # found (nothing), so B, still open, ran unforced; B then put back A's "reference", forced for good.
    args, kwargs = lstm_call()
    set_backend("lstm", outside)
    try:
        first, second = use_backend("lstm", "reference"), use_backend("lstm", "torch")
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert requested_backend("lstm") == "torch" and select("lstm", *args, **kwargs).name == "torch"
        second.__exit__(None, None, None)
        assert requested_backend("lstm") == outside
    finally:
        set_backend("lstm", None)


def test_requested_backend_names_a_misspelt_environment_entry_or_op(monkeypatch):
    monkeypatch.setenv("SEQZOO_KERNELS", "lstm=torh")
    with pytest.raises(KernelError, match="Did you mean 'torch'"):
        requested_backend("lstm")  # (not None: every lstm call raises)
    monkeypatch.setenv("SEQZOO_KERNELS", "lstm=reference")
    assert requested_backend("lstm") == "reference"
    with pytest.raises(KernelError, match="unknown kernel op 'lstn'.*Did you mean 'lstm'"):
        requested_backend("lstn")  # (not None: "nothing requested" for an op that has a request)


def test_a_kernel_error_from_inside_a_plugin_kernel_is_passed_on_unchanged(added):
    def kernel(*args, **kwargs):
        raise KernelError("kernel backend 'x' was requested for op 'ssd' but is not available")

    added("lstm", "outer", kernel, priority=99).plugin = "outer (seqzoo_outer:register)"
    args, kwargs = lstm_call()
    with pytest.raises(KernelError) as caught:
        dispatch("lstm", *args, **kwargs)
    assert str(caught.value) == "kernel backend 'x' was requested for op 'ssd' but is not available"


def test_the_package_exports_every_public_function():
    public = {name for name, value in vars(seqzoo.kernels).items() if not name.startswith("_")
              and not inspect.ismodule(value)}
    assert set(seqzoo.kernels.__all__) == public
    assert "refresh" in public


# --- declared devices --------------------------------------------------------------------------------------------


def test_a_backend_declared_for_cuda_is_never_given_cpu_tensors(added):
    """It was selected for CPU calls (its devices were only listed), while `seqzoo kernels` showed another one."""
    calls = []
    reference = get_kernel("lstm", "reference")
    added("lstm", "cuda_only", lambda *a, **k: calls.append(1) or reference(*a, **k), priority=99, devices=("cuda",),
          is_available=lambda: True)
    args, kwargs = lstm_call()
    assert select("lstm", *args, **kwargs).name == "torch"
    dispatch("lstm", *args, **kwargs)
    assert not calls
    if not torch.cuda.is_available():
        assert [r["backend"] for r in seqzoo.kernels.list_kernels() if r["op"] == "lstm" and r["selected"]] == ["torch"]
    with use_backend("lstm", "cuda_only"):
        with pytest.raises(KernelError, match=r"'cuda_only' was requested for op 'lstm' but cannot run this call: "
                                              r"runs on cuda only \(its devices\), got cpu tensors") as raised:
            select("lstm", *args, **kwargs)
    # The backends offered instead are those that can run the call, not the refused one.
    assert "Request one that can (torch, reference) or none" in str(raised.value)


def test_a_refused_request_offers_no_backend_that_cannot_run_the_call_either(added, monkeypatch):
    added("lstm", "cuda_only", priority=99, devices=("cuda",))
    monkeypatch.setattr(registry.get_op("lstm").backends["reference"], "supports",
                        lambda *args, **kwargs: (False, "not this one"))
    args, kwargs = lstm_call(2)
    with use_backend("lstm", "cuda_only"), pytest.raises(KernelError) as raised:
        select("lstm", *args, **kwargs)
    assert "Request one that can (torch) or none" in str(raised.value)
    monkeypatch.setattr(registry.get_op("lstm").backends["torch"], "supports",
                        lambda *args, **kwargs: (False, "nor this one"))
    with use_backend("lstm", "cuda_only"), pytest.raises(KernelError) as raised:
        select("lstm", *args, **kwargs)
    assert "No other backend of this op can run it either" in str(raised.value)


@pytest.mark.parametrize("own", [{}, {"supports": lambda *a, **k: (True, ""), "cache_key": lambda *a, **k: "any"}])
def test_the_device_is_part_of_the_cached_choice(added, own):
    added("gru", "cpu_only", priority=99, devices=("cpu",), **own)
    cpu_call = gru_call()
    meta_call = tuple(None if t is None else t.to("meta") for t in cpu_call)
    for call, expected in [(cpu_call, True), (meta_call, False), (cpu_call, True), (meta_call, False)]:
        assert (select("gru", *call).name == "cpu_only") is expected


def test_a_device_bound_backend_adds_no_graph_break_under_torch_compile(added):
    t = test_causal_conv1d.make_inputs(6)
    added("causal_conv1d", "cpu_only", get_kernel("causal_conv1d", "chunked"), priority=99, devices=("cpu",))

    def conv(x, weight, bias):
        return dispatch("causal_conv1d", x, weight, bias)[0] * 2

    registry.refresh()
    compiled = torch.compile(conv, backend="eager", fullgraph=True)  # fullgraph: a graph break raises
    torch.testing.assert_close(compiled(t["x"], t["weight"], t["bias"]), conv(t["x"], t["weight"], t["bias"]))
    assert select("causal_conv1d", t["x"], t["weight"], t["bias"]).name == "cpu_only"


def test_a_backends_own_reason_comes_before_its_devices(added):
    added("lstm", "picky_cuda", priority=99, supports=long_only, devices=("cuda",))
    args, kwargs = lstm_call(2)
    with use_backend("lstm", "picky_cuda"):
        with pytest.raises(KernelError, match="cannot run this call: needs more than 3 tokens"):
            select("lstm", *args, **kwargs)


# --- integer resets ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_an_integer_reset_is_read_as_the_bool_one(backend):
    t = test_ssd.make_inputs(6, torch.float64)
    reset = torch.tensor([[0, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0]])
    expected = test_ssd.run(backend, t, chunk_size=4, reset=reset.bool())
    for got, want in zip(test_ssd.run(backend, t, chunk_size=4, reset=reset), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_a_document_index_is_refused_as_a_reset(backend):
    """mamba_ssm's seq_idx (the document of each token) passed as a reset marked every token of the second and later
    documents as a document's first: every state restarted each token, without a word."""
    t = test_ssd.make_inputs(5)
    seq_idx = torch.tensor([[0, 0, 1, 1, 2], [0, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"ssd: an integer reset must hold only 0 and 1 .* got values \[0, 1, 2\]; "
                                         r"a document index \(seq_idx\) is not a reset"):
        test_ssd.run(backend, t, reset=seq_idx)
    reset = torch.diff(seq_idx, dim=1, prepend=seq_idx[:, :1]) != 0  # (the way the message gives)
    assert reset.tolist()[0] == [False, False, True, False, True]


def op_calls():
    """A valid call of every built-in op: (op, the names of its positional arguments, args, kwargs)."""
    from tests.kernels import test_selective_scan, test_wkv7

    (x, h, c, *w), _ = lstm_call(5)
    yield "lstm", ("x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"), (x, h, c, *w), {}
    yield "gru", ("x", "h0", "weight_ih", "weight_hh"), gru_call()[:4], {"mask": None}
    yield "rnn", ("x", "h0", "weight_ih", "weight_hh"), (x, h, torch.randn(3, 4), torch.randn(3, 3)), {
        "nonlinearity": "relu"}
    t = test_causal_conv1d.make_inputs(6)
    yield "causal_conv1d", ("x", "weight", "bias"), (t["x"], t["weight"], t["bias"]), {
        "initial_state": t["initial_state"], "activation": "silu"}
    t = test_selective_scan.make_inputs(5)
    names = ("u", "delta", "A", "B", "C", "D", "z")
    yield "selective_scan", names, tuple(t[n] for n in names), {"initial_state": t["initial_state"]}
    args, kwargs = test_ssd.call_args(test_ssd.make_inputs(5))
    yield "ssd", ("x", "dt", "A", "B", "C", "D"), args, {**kwargs, "chunk_size": 4}
    t = test_wkv7.make_inputs(5)
    yield "wkv7", test_wkv7.NAMES, tuple(t[n] for n in test_wkv7.NAMES), {"initial_state": t["initial_state"]}


@pytest.fixture
def watched(added):
    """A backend of top priority for each op whose supports() and cache_key() record that they were called."""
    seen = []

    def supports(*args, **kwargs):
        seen.append("supports")
        return True, ""

    def key(*args, **kwargs):
        seen.append("cache_key")
        return 1

    for op in registry.BUILTIN_OPS:
        added(op, "watched", priority=99, supports=supports, cache_key=key)
    return seen


@pytest.mark.parametrize("op", registry.BUILTIN_OPS)
@pytest.mark.parametrize("requested", [None, "reference", "watched"])
def test_an_input_that_is_not_floating_point_is_refused_before_a_backend_is_chosen(watched, op, requested):
    """A kernel computes in floating point and returns its input's dtype: an integer input came back truncated
    (selective_scan and wkv7: the chunked supports() declined it and the reference ran it, casting its output back;
    causal_conv1d's chunked ran it). Every tensor argument but the mask and reset, of every op, refused by name with
    its dtype, before any backend's cache_key() or supports() sees the call, whichever backend is requested."""
    (_, names, args, kwargs), = (call for call in op_calls() if call[0] == op)
    named = dict(zip(names, args), **{k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
    assert len(named) >= 4
    for name, tensor in named.items():
        for dtype in (torch.int64, torch.bool, torch.complex64):
            bad = tensor.to(dtype)
            call_args = tuple(bad if n == name else a for n, a in zip(names, args))
            call_kwargs = {k: bad if k == name else v for k, v in kwargs.items()}
            message = rf"^{op}: {name} has dtype {dtype}; the op takes real floating-point tensors"
            with use_backend(op, requested):
                with pytest.raises(ValueError, match=message):
                    dispatch(op, *call_args, **call_kwargs)
                with pytest.raises(ValueError, match=message):
                    select(op, *call_args, **call_kwargs)
    assert not watched
    assert select(op, *args, **kwargs).name == "watched" and watched  # (and a valid call reaches it)


def test_an_input_that_is_not_a_tensor_is_named():
    (_, names, args, kwargs), = (call for call in op_calls() if call[0] == "wkv7")
    with pytest.raises(TypeError, match=r"^wkv7: k must be a tensor, got list"):
        dispatch("wkv7", args[0], args[1], args[2].tolist(), *args[3:], **kwargs)


MISSPELT = {"lstm": ("maks", "mask"), "gru": ("msk", "mask"), "rnn": ("nonlinerity", "nonlinearity"),
            "causal_conv1d": ("activaton", "activation"), "selective_scan": ("rest", "reset"),
            "ssd": ("chunksize", "chunk_size"), "wkv7": ("intial_state", "initial_state")}


@pytest.mark.parametrize("op", registry.BUILTIN_OPS)
def test_arguments_that_do_not_bind_are_named_as_the_ops(op):
    # The op's check runs first: too few arguments, or one given twice, were named as its check function's
    # ("check_gru_call() missing 1 required positional argument"), where a backend named them as the op's.
    (_, names, args, kwargs), = (call for call in op_calls() if call[0] == op)
    with pytest.raises(TypeError, match=rf"^{op}\(\) missing \d+ required positional argument.*'{names[1]}'"):
        dispatch(op, args[0])
    with pytest.raises(TypeError, match=rf"^{op}\(\) got multiple values for argument '{names[0]}'"):
        dispatch(op, *args, **{names[0]: args[0]}, **kwargs)


@pytest.mark.parametrize("op", registry.BUILTIN_OPS)
def test_a_misspelt_keyword_is_refused_naming_the_op_and_its_keywords(watched, op):
    """A misspelt keyword failed in the first backend's supports_key() or supports() ("supports_key() got an
    unexpected keyword argument 'chunksize'"), naming neither the op nor the keywords it takes."""
    (_, names, args, kwargs), = (call for call in op_calls() if call[0] == op)
    wrong, right = MISSPELT[op]
    takes = ", ".join(name for name, p in inspect.signature(get_kernel(op, "reference")).parameters.items())
    message = (rf"^kernel op '{op}' got the unknown keyword argument '{wrong}' \(did you mean '{right}'\?\); "
               rf"it takes {takes} \(the signature of its reference backend\)$")
    for requested in (None, "reference"):
        with use_backend(op, requested):
            with pytest.raises(TypeError, match=message):
                dispatch(op, *args, **kwargs, **{wrong: None})
            with pytest.raises(TypeError, match=message):
                select(op, *args, **kwargs, **{wrong: None})
    with pytest.raises(TypeError, match=rf"arguments '{wrong}' \(did you mean '{right}'\?\), 'zzz'; it takes"):
        select(op, *args, **kwargs, **{wrong: None, "zzz": 1})
    assert not watched
    # Every parameter of the signature may be passed by name.
    by_name = dict(zip(names[1:], args[1:]), **kwargs)
    assert select(op, args[0], **by_name).name == "watched"


def test_an_ops_check_runs_before_selection_and_a_reference_with_any_keywords_takes_any(monkeypatch):
    """``register_op(..., check=fn)``: fn sees every call before a backend's supports(); an op whose reference
    takes ``**kwargs`` (or has no reference) has no keyword list to hold calls to."""
    monkeypatch.setattr(registry, "_OPS", dict(registry._OPS))
    registry.refresh()
    seen = []

    def check(x, **options):
        seen.append("check")
        if x < 0:
            raise ValueError(f"plugin_op: x must be >= 0, got {x}")

    def supports(x, **options):
        seen.append("supports")
        return True, ""

    registry.register_op("plugin_op", "a test op", check=check)
    with pytest.raises(ValueError, match="check must be a function, got 'nope'"):
        registry.register_op("other_op", check="nope")
    register_backend("plugin_op", "reference", lambda x, **options: x + len(options), supports=supports)
    assert dispatch("plugin_op", 1, anything=2, goes=3) == 3
    assert seen == ["check", "supports"]
    with pytest.raises(ValueError, match="x must be >= 0, got -1"):
        dispatch("plugin_op", -1)
    assert seen == ["check", "supports", "check"]
    monkeypatch.undo()
    registry.refresh()


def test_the_checks_of_a_call_add_no_graph_break_under_torch_compile():
    (_, names, args, kwargs), = (call for call in op_calls() if call[0] == "wkv7")
    args = tuple(a[:, :1] for a in args)  # one token: the step

    def step(*args, initial_state):
        return dispatch("wkv7", *args, initial_state=initial_state, reset=None)[0] * 2

    step(*args, **kwargs)
    compiled = torch.compile(step, backend="eager", fullgraph=True)  # fullgraph: a graph break raises
    torch.testing.assert_close(compiled(*args, **kwargs), step(*args, **kwargs))
