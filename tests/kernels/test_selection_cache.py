"""Kernel selection: cached choices are the ones supports() would make, every setting change drops the cache,
availability is probed once, SEQZOO_KERNELS typos raise with a did-you-mean, and selection adds no graph break
under torch.compile."""

from __future__ import annotations

import pytest
import torch

from seqzoo.cli import main
from seqzoo.kernels import registry
from seqzoo.kernels.registry import KernelError, get_op, register_backend, select, unregister_backend, use_backend
from tests.kernels import test_causal_conv1d, test_selective_scan, test_ssd, test_wkv7


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    monkeypatch.delenv("SEQZOO_KERNELS", raising=False)


def lstm_call(length=5, mask=None, dtype=torch.float32):
    x = torch.randn(2, length, 4, dtype=dtype)
    h = torch.zeros(2, 3, dtype=dtype)
    w = [torch.randn(12, 4, dtype=dtype), torch.randn(12, 3, dtype=dtype), torch.zeros(12, dtype=dtype),
         torch.zeros(12, dtype=dtype)]
    return (x, h, h, *w), {"mask": mask}


def masks(length):
    yield None
    yield torch.ones(2, length, dtype=torch.bool)
    left = torch.ones(2, length, dtype=torch.bool)
    left[0, : length // 2] = False
    yield left
    if length > 2:
        holes = torch.ones(2, length, dtype=torch.bool)
        holes[0, 1] = False
        yield holes


def variants():
    """(op, args, kwargs) calls whose supports() answers differ: masks with and without holes, one token and many;
    and calls of other dtypes and chunk sizes. (An integer input or an invalid chunk size is refused before any
    supports() runs: tests/kernels/test_registry_rules.py, test_ssd.py.)"""
    for length in (1, 5):
        for mask in masks(length):
            (x, h, c, *w), kwargs = lstm_call(length, mask)
            yield "lstm", (x, h, c, *w), kwargs
            yield "gru", (x, h, *w), kwargs
            yield "rnn", (x, h, *w), kwargs
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        t = test_selective_scan.make_inputs(4, torch.float64)
        t["u"] = t["u"].to(dtype)
        yield "selective_scan", (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"]), {
            "initial_state": t["initial_state"]}
        t = test_wkv7.make_inputs(3)
        t["k"] = t["k"].to(dtype)
        yield "wkv7", tuple(t[n] for n in test_wkv7.NAMES), {"initial_state": t["initial_state"]}
    for chunk_size in (16, 1, 4, 16):
        args, kwargs = test_ssd.call_args(test_ssd.make_inputs(5))
        yield "ssd", args, {**kwargs, "chunk_size": chunk_size}
    for length in (1, 6):
        t = test_causal_conv1d.make_inputs(length)
        for mask in (None, test_causal_conv1d.padding_mask(length)):
            yield "causal_conv1d", (t["x"], t["weight"], t["bias"]), {"initial_state": t["initial_state"], "mask": mask}


def uncached(op, args, kwargs):
    state = registry._current()
    return registry._choose(op, registry._plan(state, op), args, kwargs).name


def test_every_cached_choice_is_the_one_supports_makes():
    calls = list(variants())
    expected = [uncached(op, a, k) for op, a, k in calls]
    assert {"reference", "torch"} <= set(expected)  # the variants really change the answers
    assert expected.count("reference") >= 3
    for order in (calls, calls[::-1], calls * 2):  # cache hits in every order
        registry.refresh()
        for op, args, kwargs in order:
            assert select(op, *args, **kwargs).name == uncached(op, args, kwargs), op


@pytest.mark.parametrize("op", ["lstm", "gru", "rnn", "causal_conv1d", "selective_scan", "ssd", "wkv7"])
def test_every_key_covers_what_supports_reads(op):
    # Any two calls with the same key get the same supports() answer from that backend.
    calls = [(a, k) for o, a, k in variants() if o == op]
    assert len(calls) >= 3
    for backend in get_op(op).backends.values():
        if backend.cache_key is None:
            continue
        answers: dict = {}
        for args, kwargs in calls:
            key = backend.cache_key(*args, **kwargs)
            if key is not None:
                answers.setdefault(key, set()).add(backend.supports(*args, **kwargs)[0])
        assert all(len(found) == 1 for found in answers.values()), (backend.name, answers)


def test_selection_is_cached(monkeypatch):
    args, kwargs = lstm_call(1)
    select("lstm", *args, **kwargs)
    torch_backend = get_op("lstm").backends["torch"]
    calls = []
    monkeypatch.setattr(torch_backend, "supports", lambda *a, **k: calls.append(1) or (True, ""))
    registry.refresh()
    for _ in range(5):
        assert select("lstm", *args, **kwargs).name == "torch"
    assert len(calls) == 1
    holes = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    for _ in range(3):  # a mask with possible holes cannot be keyed cheaply: supports() runs every time
        select("lstm", *lstm_call(5, holes)[0], mask=holes)
    assert len(calls) == 4


def test_availability_is_probed_once_until_refresh():
    probes = []
    register_backend("gru", "probed", registry.get_kernel("gru", "reference"), priority=-1,
                     is_available=lambda: probes.append(1) or True)
    try:
        args = lstm_call(1)[0]
        gru_args = (args[0], args[1], torch.randn(9, 4), torch.randn(9, 3), None, None)
        for _ in range(5):
            select("gru", *gru_args)
            registry.available_backends("gru")
        assert len(probes) == 1
        registry.refresh()
        select("gru", *gru_args)
        assert len(probes) == 2
    finally:
        unregister_backend("gru", "probed")


def test_an_availability_check_that_raises_is_said(caplog):
    # A plugin's probe that raises leaves its backend unavailable, with a warning naming it and the error (it was a
    # debug line: the backend was never chosen and nothing said why).
    def probe():
        raise RuntimeError("no such library")

    register_backend("gru", "broken_probe", registry.get_kernel("gru", "reference"), priority=-1, is_available=probe)
    try:
        with caplog.at_level("WARNING", logger="seqzoo.kernels.registry"):
            assert "broken_probe" not in registry.available_backends("gru")
        assert "'broken_probe' of op 'gru' counts as unavailable" in caplog.text
        assert "RuntimeError: no such library" in caplog.text
    finally:
        unregister_backend("gru", "broken_probe")


def test_every_setting_change_drops_the_cache(monkeypatch):
    args, kwargs = lstm_call(1)
    assert select("lstm", *args, **kwargs).name == "torch"
    with use_backend("lstm", "reference"):
        assert select("lstm", *args, **kwargs).name == "reference"
    assert select("lstm", *args, **kwargs).name == "torch"
    registry.set_backend("lstm", "reference")
    try:
        assert select("lstm", *args, **kwargs).name == "reference"
    finally:
        registry.set_backend("lstm", None)
    assert select("lstm", *args, **kwargs).name == "torch"
    monkeypatch.setenv("SEQZOO_KERNELS", "lstm=reference")
    assert select("lstm", *args, **kwargs).name == "reference"
    monkeypatch.setenv("SEQZOO_KERNELS", "gru=reference")
    assert select("lstm", *args, **kwargs).name == "torch"
    register_backend("lstm", "newer", registry.get_kernel("lstm", "reference"), priority=99)
    try:
        assert select("lstm", *args, **kwargs).name == "newer"
    finally:
        unregister_backend("lstm", "newer")
    assert select("lstm", *args, **kwargs).name == "torch"


def test_a_stamp_holds_until_a_setting_changes(monkeypatch):
    # select_stamped's stamp is what selection_stamp() returns until anything selection reads changes: a decode
    # plan reuses its choice while they are the same object (models/classic/step_plan.py).
    args, kwargs = lstm_call(1)

    def stamped():
        backend, stamp = registry.select_stamped("lstm", *args, **kwargs)
        assert stamp is not None and registry.selection_stamp() is stamp
        return backend.name, stamp

    name, stamp = stamped()
    assert name == "torch" and stamped() == (name, stamp)
    changes = [
        lambda: registry.set_backend("lstm", "reference"),
        lambda: registry.set_backend("lstm", None),
        lambda: monkeypatch.setenv("SEQZOO_KERNELS", "gru=reference"),
        lambda: monkeypatch.setenv("SEQZOO_KERNELS", "lstm=reference"),
        lambda: monkeypatch.delenv("SEQZOO_KERNELS"),
        lambda: register_backend("lstm", "newer", registry.get_kernel("lstm", "reference"), priority=-1),
        lambda: unregister_backend("lstm", "newer"),
        registry.refresh,
    ]
    names = []
    for change in changes:
        change()
        assert registry.selection_stamp() is not stamp
        name, stamp = stamped()
        names.append(name)
    assert names == ["reference", "torch", "torch", "reference", "torch", "torch", "torch", "torch"]
    with use_backend("lstm", "reference"):
        assert registry.selection_stamp() is not stamp
        assert stamped()[0] == "reference"
    assert registry.selection_stamp() is None and stamped()[0] == "torch"


def test_a_choice_the_registry_does_not_keep_has_no_stamp():
    holes = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert registry.select_stamped("lstm", *lstm_call(5, holes)[0], mask=holes)[1] is None  # (a key of None)
    args, kwargs = lstm_call(1)
    # A backend whose supports() has no cache_key: every call of the op chooses.
    register_backend("lstm", "unkeyed", registry.get_kernel("lstm", "reference"), priority=-1,
                     supports=lambda *a, **k: (True, ""))
    try:
        assert registry.select_stamped("lstm", *args, **kwargs) == (get_op("lstm").backends["torch"], None)
    finally:
        unregister_backend("lstm", "unkeyed")
    assert registry.select_stamped("lstm", *args, **kwargs)[1] is not None


@pytest.mark.parametrize("value,message", [
    ("lstn=torch", r"SEQZOO_KERNELS entry 'lstn=torch': unknown kernel op 'lstn'; valid: .* Did you mean 'lstm'"),
    ("lstm=torh", r"SEQZOO_KERNELS entry 'lstm=torh': unknown kernel backend for op 'lstm': 'torh'; valid: "
                  r"reference, torch\. Did you mean 'torch'"),
    ("lstm=fast", r"unknown kernel backend for op 'lstm': 'fast'; valid: reference, torch\."),
    ("lstm", r"SEQZOO_KERNELS entry 'lstm' is not of the form op=backend"),
    ("lstm=reference,lstm=torch", r"SEQZOO_KERNELS names op 'lstm' twice \('reference' and 'torch'\); give it once"),
    # (the same backend twice was taken: a typo for another op, lstm for gru, is likelier than a repeat)
    ("lstm=reference,lstm=reference", r"names op 'lstm' twice \('reference' and 'reference'\); give it once"),
])
def test_a_misspelt_environment_entry_raises_on_every_selection(monkeypatch, value, message):
    monkeypatch.setenv("SEQZOO_KERNELS", f"gru=reference,{value}")
    t = test_wkv7.make_inputs(2)
    with pytest.raises(KernelError, match=message):  # even for an op the entry does not name
        select("wkv7", *(t[n] for n in test_wkv7.NAMES), initial_state=t["initial_state"])
    with pytest.raises(KernelError, match=message):
        registry.check_environment()


def test_seqzoo_kernels_shows_a_misspelt_entry_as_an_error(monkeypatch, capsys):
    monkeypatch.setenv("SEQZOO_KERNELS", "wvk7=chunked")
    assert main(["kernels"]) == 2
    out, err = capsys.readouterr()
    assert "selective_scan" in out  # the table still prints
    assert err.strip() == ("error: SEQZOO_KERNELS entry 'wvk7=chunked': unknown kernel op 'wvk7'; valid: "
                           "causal_conv1d, gru, lstm, rnn, selective_scan, ssd, wkv7. Did you mean 'wkv7'?")
    monkeypatch.delenv("SEQZOO_KERNELS")
    assert main(["kernels"]) == 0


def test_seqzoo_kernels_fails_when_a_forced_backend_is_not_available(monkeypatch, capsys):
    """Every call of the op would raise, so the listing must not end as if all were well."""
    if "triton" in registry.available_backends("wkv7"):
        pytest.skip("triton runs here")
    monkeypatch.setenv("SEQZOO_KERNELS", "wkv7=triton")
    assert main(["kernels"]) == 2
    out, err = capsys.readouterr()
    assert "forced" in out and err.strip() == ("error: SEQZOO_KERNELS requests backend 'triton' for op 'wkv7', which "
                                               "is not available here; every wkv7 call would raise")


@pytest.mark.parametrize("kwargs,message", [({"priority": "100"}, "backend priority must be an int, got '100'"),
                                            ({"name": 5}, "backend name must be a non-empty identifier, got 5"),
                                            ({"op": "gruu"}, r"unknown kernel op 'gruu' for backend 'mine'\. Did you "
                                                             r"mean 'gru'\?.*register_op\('gruu'\) first"),
                                            ({"impl": 42}, "impl must be a function or a lazy 'module:attribute' path"),
                                            ({"impl": "seqzoo.kernels"}, "impl must be a function or a lazy"),
                                            ({"impl": "a:b:c"}, "impl must be a function or a lazy"),
                                            ({"name": "a=b"}, "backend name must be a non-empty identifier"),
                                            ({"priority": True}, "backend priority must be an int, got True"),
                                            ({"devices": ()}, r"devices must be a non-empty tuple of device types"),
                                            ({"devices": "cuda"}, r"devices must be a non-empty tuple")])
def test_register_backend_checks_its_name_and_priority(kwargs, message):
    """A priority given as a string registered, then broke every later selection of the op, built-in ones too."""
    args = {"op": "gru", "name": "mine", "impl": registry.get_kernel("gru", "reference"), "priority": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        register_backend(args.pop("op"), args.pop("name"), args.pop("impl"), **args)
    assert "mine" not in {b["backend"] for b in registry.list_kernels()}
    assert "gruu" not in {b["op"] for b in registry.list_kernels()}


def test_generate_with_an_unknown_kernel_backend_is_one_error_line(tmp_path, capsys):
    assert main(["new", "lstm-tiny", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "m"), "hi", "--kernel", "lstm=fast", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown kernel backend for op 'lstm': 'fast'; valid: reference, torch."


def test_generate_kernel_choices_hold_for_that_command_only(tmp_path, capsys):
    """`seqzoo generate --kernel` left its backend forced in the process: a Python caller of main() then ran every
    model on it (and lost the backend it had forced itself)."""
    assert main(["new", "lstm-tiny", str(tmp_path / "m")]) == 0
    generate = ["generate", str(tmp_path / "m"), "hi", "--max-new-tokens", "2", "--no-stream"]
    assert main([*generate, "--kernel", "lstm=reference"]) == 0
    assert registry.requested_backend("lstm") is None
    with use_backend("lstm", "torch"):  # (the caller's own choice comes back, after a success and a failure)
        assert main([*generate, "--kernel", "lstm=reference", "gru=reference"]) == 0
        assert (registry.requested_backend("lstm"), registry.requested_backend("gru")) == ("torch", None)
        assert main([*generate[:2], "", "--kernel", "lstm=reference"]) == 2  # (an empty prompt, refused)
        assert "the prompt is empty" in capsys.readouterr().err
        assert registry.requested_backend("lstm") == "torch"


@pytest.mark.parametrize("warm", [True, False])
def test_selection_adds_no_graph_break_under_torch_compile(warm, monkeypatch):
    # (with a SEQZOO_* variable set, as CI sets one, the registry's rebuild looks it over: not while compiling)
    monkeypatch.setenv("SEQZOO_UNRELATED_SETTING", "1")
    t = test_causal_conv1d.make_inputs(6)

    def conv(x, weight, bias):
        return registry.dispatch("causal_conv1d", x, weight, bias)[0] * 2

    registry.refresh()
    if warm:
        conv(t["x"], t["weight"], t["bias"])
    compiled = torch.compile(conv, backend="eager", fullgraph=True)  # fullgraph: a graph break raises
    torch.testing.assert_close(compiled(t["x"], t["weight"], t["bias"]), conv(t["x"], t["weight"], t["bias"]))


def test_the_cache_stays_bounded(monkeypatch):
    monkeypatch.setattr(registry, "CACHE_LIMIT", 8)
    args, kwargs = test_ssd.call_args(test_ssd.make_inputs(3))
    register_backend("ssd", "keyed", registry.get_kernel("ssd", "reference"), priority=-1,
                     supports=lambda *a, **k: (True, ""), cache_key=lambda *a, chunk_size=64, **k: chunk_size)
    try:
        for chunk_size in range(1, 21):  # every chunk size is a new key
            select("ssd", *args, **kwargs, chunk_size=chunk_size)
        assert 0 < len(registry._current().chosen) <= 8
    finally:
        unregister_backend("ssd", "keyed")


def test_an_entry_for_a_built_in_op_absent_here_is_ignored(monkeypatch):
    # A Hub bundle holds only its architecture's ops: SEQZOO_KERNELS set for other models must not break it.
    monkeypatch.setattr(registry, "_OPS", {name: op for name, op in registry._OPS.items() if name != "lstm"})
    registry.refresh()
    monkeypatch.setenv("SEQZOO_KERNELS", "lstm=torch,wkv7=reference")
    t = test_wkv7.make_inputs(2)
    assert select("wkv7", *(t[n] for n in test_wkv7.NAMES), initial_state=t["initial_state"]).name == "reference"
    monkeypatch.setenv("SEQZOO_KERNELS", "lsmt=torch")
    with pytest.raises(KernelError, match="unknown kernel op 'lsmt'"):
        registry.check_environment()
    monkeypatch.undo()
    registry.refresh()


def test_a_plugin_backend_that_cannot_load_or_answers_supports_wrongly_is_named():
    """Both failed with a bare AttributeError / TypeError that named neither the backend nor the op."""
    t = test_wkv7.make_inputs(2)
    args = [t[n] for n in test_wkv7.NAMES]
    for name, impl, supports, message in [
        ("unloadable", "seqzoo.kernels:nope", None, r"kernel backend 'unloadable' of op 'wkv7' cannot load "
                                                    r"'seqzoo.kernels:nope'"),
        ("yesman", registry.get_kernel("wkv7", "reference"), lambda *a, **k: True,
         r"supports\(\) of kernel backend 'yesman' \(op 'wkv7'\) returned True; it must return \(ok, reason\)"),
    ]:
        extra = {} if supports is None else {"supports": supports}
        register_backend("wkv7", name, impl, priority=99, **extra)
        try:
            with pytest.raises(KernelError, match=message):
                registry.dispatch("wkv7", *args, initial_state=t["initial_state"])
        finally:
            unregister_backend("wkv7", name)
    registry.dispatch("wkv7", *args, initial_state=t["initial_state"])  # and the built-in ones run again


def test_restoring_automatic_selection_of_a_misspelt_op_raises():
    """set_backend(op, None) with a typo would leave the real op's forced backend in place without a word."""
    from seqzoo.kernels import requested_backend, set_backend

    set_backend("lstm", "reference")
    try:
        with pytest.raises(KernelError, match="Did you mean 'lstm'"):
            set_backend("lstn", None)
        with pytest.raises(KernelError, match="unknown kernel op"):
            with use_backend("lstn", None):
                pass
        assert requested_backend("lstm") == "reference"
    finally:
        set_backend("lstm", None)
    assert requested_backend("lstm") is None
