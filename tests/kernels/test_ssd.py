"""ssd (Mamba-2): chunked vs reference parity, continuation, identity steps, chunk_size handling, registry, shapes.

bf16 contract (see tolerances.py): both backends run on bf16 inputs and each is compared with the float32 reference
computed from the same bf16-rounded inputs, with bf16-representable loss weights so that every run backpropagates the
same output gradient.
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F

from seqzoo.kernels import dispatch, get_kernel, select, use_backend
from tests.kernels.scan_checks import (
    check_chunked_matches_reference,
    check_float64_matches_reference,
    check_no_tokens,
    check_resets_match_separate_documents,
    check_two_pieces_equal_whole,
    non_contiguous,
    padding_keep,
    scattered_resets,
)
from tests.kernels.tolerances import assert_close

OP = "ssd"
BATCH, HEADS, HEAD_DIM, GROUPS, STATE = 2, 4, 3, 2, 5
SEQUENCE_ARGS = ("x", "dt", "B", "C")


def make_inputs(length, dtype=torch.float32, seed=0, batch=BATCH, heads=HEADS, head_dim=HEAD_DIM, groups=GROUPS,
                state=STATE):
    """Mamba-2-like magnitudes: dt in roughly [0.05, 1.3], A = -exp(N(0, 0.5)), unit-scale x, B, C."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    tensors = {
        "x": randn(batch, length, heads, head_dim),
        "dt": F.softplus(randn(batch, length, heads) - 1.0),
        "A": -torch.exp(0.5 * randn(heads)),
        "B": randn(batch, length, groups, state),
        "C": randn(batch, length, groups, state),
        "D": randn(heads),
    }
    tensors = {name: t.to(dtype) for name, t in tensors.items()}
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    tensors["initial_state"] = randn(batch, heads, head_dim, state).to(state_dtype)
    return tensors


def run(backend, t, chunk_size=16, reset=None):
    fn = get_kernel(OP, backend)
    return fn(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], initial_state=t["initial_state"], chunk_size=chunk_size,
              reset=reset)


@pytest.mark.parametrize("length", [63, 77, 500])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_matches_reference(length, dtype):
    # chunk_size 16: 63 and 77 end in a partial chunk, 500 spans 32 chunks.
    check_chunked_matches_reference(run, make_inputs(length, dtype), dtype)


def hand_step(t):
    """One token by the Mamba-2 formulas, element by element in Python floats (the chunked backend calls the
    reference for T == 1, so the reference cannot be its own check)."""
    batch, _, heads, head_dim = t["x"].shape
    groups, state_size = t["B"].shape[2:]
    y = torch.zeros(batch, 1, heads, head_dim, dtype=torch.float64)
    s = torch.zeros(batch, heads, head_dim, state_size, dtype=torch.float64)
    for b, h, p in itertools.product(range(batch), range(heads), range(head_dim)):
        g = h // (heads // groups)  # heads are split into consecutive groups sharing B and C
        dt, x = float(t["dt"][b, 0, h]), float(t["x"][b, 0, h, p])
        out = 0.0
        for n in range(state_size):
            s[b, h, p, n] = (math.exp(dt * float(t["A"][h])) * float(t["initial_state"][b, h, p, n])
                             + dt * x * float(t["B"][b, 0, g, n]))
            out += float(s[b, h, p, n]) * float(t["C"][b, 0, g, n])
        y[b, 0, h, p] = out + float(t["D"][h]) * x
    return y, s


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_one_token_matches_a_step_written_by_hand(backend):
    tensors = make_inputs(1, torch.float64)
    y, state = run(backend, tensors)
    want_y, want_state = hand_step(tensors)
    assert_close(y, want_y, torch.float64, "output", backend)
    assert_close(state, want_state, torch.float64, "state", backend)


@pytest.mark.parametrize("groups", [1, HEADS])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_groups_and_chunk_sizes_float64(groups, chunk_size):
    tensors = make_inputs(45, torch.float64, groups=groups)
    check_float64_matches_reference(run, tensors, f"chunk_size={chunk_size}", chunk_size=chunk_size)


def test_long_sequence_matches_reference():
    # 2048 tokens in chunks of 64 (32 chunks): values, final state and gradients against the reference, float64.
    g = torch.Generator().manual_seed(0)
    length, heads = 2048, 2
    tensors = make_inputs(length, torch.float64, batch=1, heads=heads, head_dim=2, groups=1, state=3)
    # Mamba-2's initialisation: dt log-uniform in [1e-3, 1e-1], A = -U(1, 16).
    tensors["dt"] = torch.exp(torch.empty(1, length, heads).uniform_(-6.9, -2.3, generator=g)).double()
    tensors["A"] = -torch.empty(heads).uniform_(1.0, 16.0, generator=g).double()
    check_float64_matches_reference(run, tensors, "T=2048", chunk_size=64)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("split", [1, 50, 64])
def test_two_pieces_equal_whole(backend, split):
    tensors = make_inputs(130, torch.float64)
    check_two_pieces_equal_whole(run, backend, tensors, split, SEQUENCE_ARGS)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_identity_steps_leave_state_unchanged(backend):
    tensors = make_inputs(37)
    tensors["dt"] = torch.zeros_like(tensors["dt"])
    _, final = run(backend, tensors)
    assert torch.equal(final, tensors["initial_state"])


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_identity_steps_are_skipped(backend):
    tensors = make_inputs(40, torch.float64)
    keep = torch.ones(40, dtype=torch.bool)
    keep[:5] = False
    keep[12:15] = False
    keep[33:] = False
    tensors["dt"] = tensors["dt"] * keep[None, :, None]
    y, final = run(backend, tensors)
    compact_y, compact_final = run(backend, {n: t[:, keep] if n in SEQUENCE_ARGS else t for n, t in tensors.items()})
    if backend == "reference":
        assert torch.equal(y[:, keep], compact_y) and torch.equal(final, compact_final)
    else:
        assert_close(y[:, keep], compact_y, torch.float64, "output", "identity steps")
        assert_close(final, compact_final, torch.float64, "state", "identity steps")


def call_args(t):
    return (t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"]), {"initial_state": t["initial_state"]}


def test_registry_selects_chunked_and_can_force_reference(monkeypatch):
    monkeypatch.delenv("SEQZOO_KERNELS", raising=False)
    t = make_inputs(9)
    args, kwargs = call_args(t)
    assert select(OP, *args, **kwargs).name == "chunked"
    monkeypatch.setenv("SEQZOO_KERNELS", f"{OP}=reference")
    assert select(OP, *args, **kwargs).name == "reference"
    monkeypatch.delenv("SEQZOO_KERNELS")
    with use_backend(OP, "reference"):
        assert select(OP, *args, **kwargs).name == "reference"
        y, state = dispatch(OP, *args, **kwargs)
    ref_y, ref_state = get_kernel(OP, "reference")(*args, **kwargs)
    assert torch.equal(y, ref_y) and torch.equal(state, ref_state)
    assert select(OP, *args, **kwargs).name == "chunked"


@pytest.mark.parametrize("length,chunk_size", [(9, 4), (37, 8)])
def test_a_decay_of_exactly_zero_matches_reference(length, chunk_size):
    """A = -inf in one head (decay exp(dt A) = 0: that head forgets its state every step) with T not a multiple of
    the chunk: the padding steps' dt = 0 gave 0 * -inf = nan in the chunked backend, and a nan final state. Values,
    state and every gradient in float64, dt's included (both backends read A = -inf as the most negative rate)."""
    tensors = make_inputs(length, torch.float64)
    tensors["A"] = tensors["A"].clone()
    tensors["A"][1] = -math.inf
    assert length % chunk_size
    check_float64_matches_reference(run, tensors, "A = -inf", common={"chunk_size": chunk_size})
    float32 = {name: t.float() for name, t in tensors.items()}
    for got, want, what in zip(run("chunked", float32, chunk_size), run("reference", float32), ("output", "state")):
        assert got.isfinite().all(), what
        assert_close(got, want, torch.float32, what, "A = -inf")


@pytest.mark.parametrize("chunk_size", [0, -4, "64", 2.5, True, None])
@pytest.mark.parametrize("backend", ["reference", "chunked", None])
def test_invalid_chunk_size_is_refused_by_every_backend(monkeypatch, backend, chunk_size):
    """chunk_size is checked at dispatch, before a backend is chosen: the chunked backend's supports() declined one
    that is no positive int and the registry then ran the call on the reference, which ignored it without a word."""
    monkeypatch.delenv("SEQZOO_KERNELS", raising=False)
    args, kwargs = call_args(make_inputs(9))
    message = re.escape(f"ssd: chunk_size must be a positive integer, got {chunk_size!r} ({type(chunk_size).__name__})")
    with use_backend(OP, backend), pytest.raises(ValueError, match=message):
        dispatch(OP, *args, chunk_size=chunk_size, **kwargs)
    with use_backend(OP, backend), pytest.raises(ValueError, match=message):
        select(OP, *args, chunk_size=chunk_size, **kwargs)
    if backend is not None:  # and each backend called directly
        with pytest.raises(ValueError, match=message):
            get_kernel(OP, backend)(*args, chunk_size=chunk_size, **kwargs)


@pytest.mark.parametrize("backend", ["reference", "chunked", None])
@pytest.mark.parametrize(
    "name,shape",
    [("x", (BATCH, 5, HEADS)), ("dt", (BATCH, 5, HEADS + 1)), ("A", (HEADS, 1)), ("B", (BATCH, 5, 3, STATE)),
     ("C", (BATCH, 5, GROUPS, STATE + 1)), ("D", (HEADS + 1,)), ("initial_state", (BATCH, HEADS, HEAD_DIM, 1))],
)
def test_bad_shape_raises_value_error(backend, name, shape):
    t = make_inputs(5)
    t[name] = torch.zeros(shape)
    args, kwargs = call_args(t)
    call = (lambda *a, **k: dispatch(OP, *a, **k)) if backend is None else get_kernel(OP, backend)
    with pytest.raises(ValueError, match=re.escape(str(tuple(shape)))):
        call(*args, **kwargs)


# Chunks of 16: boundaries at a chunk edge (16, 64) and inside chunks, documents of 1 token, odd lengths, documents
# longer than a chunk; row 0's first document continues the initial state, row 1 starts afresh.
DOCUMENTS = [[1, 15, 45, 39], [37, 1, 26, 35, 1]]


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("chunk_size", [16, 7])
def test_resets_match_separate_documents(backend, chunk_size):
    tensors = make_inputs(100, torch.float64)
    check_resets_match_separate_documents(run, backend, tensors, DOCUMENTS, SEQUENCE_ARGS, chunk_size=chunk_size)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_reset_of_one_token(backend):
    check_resets_match_separate_documents(run, backend, make_inputs(1, torch.float64), [[1], [1]], SEQUENCE_ARGS)


def test_reset_selects_a_backend_that_takes_it(monkeypatch):
    from seqzoo.kernels import triton_support

    monkeypatch.delenv("SEQZOO_KERNELS", raising=False)
    t = make_inputs(9)
    args = [t[n] for n in ("x", "dt", "A", "B", "C", "D")]
    reset = torch.zeros(BATCH, 9, dtype=torch.bool)
    assert select(OP, *args, initial_state=None, reset=reset).name == "chunked"
    ok, reason = triton_support.supports_ssd(*args, reset=reset)
    assert not ok and "CUDA" in reason and "reset" not in reason  # declined for the device, not for the reset


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_bad_reset_raises_value_error(backend):
    with pytest.raises(ValueError, match=re.escape("reset must be (B, T) = (2, 5)")):
        run(backend, make_inputs(5), reset=torch.ones(1, 5, dtype=torch.bool))


# T = 37 in chunks of 8: four full chunks and a partial one.
@pytest.mark.parametrize("omitted", [("D",), ("initial_state",), ("D", "initial_state")])
def test_omitted_optional_inputs_match_reference(omitted):
    tensors = dict(make_inputs(37, torch.float64), **{name: None for name in omitted})
    check_float64_matches_reference(run, tensors, f"without {'/'.join(omitted)}", common={"chunk_size": 8})


@pytest.mark.parametrize("with_resets", [False, True])
def test_padding_different_in_each_row_with_gradients(with_resets):
    # The model pads with identity steps (dt = 0): left padding in row 0, holes and right padding in row 1, with
    # resets in the padding and between; values, final states and every gradient (dt's at the pads included).
    tensors = make_inputs(37, torch.float64)
    tensors["dt"] = tensors["dt"] * padding_keep(BATCH, 37)[..., None]
    common = {"chunk_size": 8, **({"reset": scattered_resets(BATCH, 37)} if with_resets else {})}
    check_float64_matches_reference(run, tensors, "padded rows", common=common)


def test_non_contiguous_inputs_match_reference():
    common = {"chunk_size": 8, "reset": non_contiguous(scattered_resets(BATCH, 37))}
    check_float64_matches_reference(run, make_inputs(37, torch.float64), "non-contiguous", prepare=non_contiguous,
                                    common=common)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_no_tokens_return_the_initial_state(backend, dtype):
    check_no_tokens(run, make_inputs, backend, dtype, (BATCH, 0, HEADS, HEAD_DIM))


def test_a_zero_step_with_a_decay_of_exactly_zero_is_the_identity_on_every_path():
    """dt = 0 is an identity step, also in a head with A = -inf: the reference (and the chunked backend's one-token
    step, which runs its update) computed exp(0 * -inf) = nan, so a prompt decoded token by token gave nan where its
    prefill did not."""
    tensors = make_inputs(4)
    tensors["A"] = tensors["A"].clone()
    tensors["A"][1] = -math.inf
    tensors["dt"] = tensors["dt"].clone()
    tensors["dt"][:, 3] = 0.0  # (the last token: an identity step)
    whole = {backend: run(backend, tensors, 2) for backend in ("reference", "chunked")}
    head = {name: (t[:, :3] if t is not None and t.dim() > 1 and name != "initial_state" else t)
            for name, t in tensors.items()}
    _, state = run("chunked", head, 2)
    step = {name: (t[:, 3:] if t is not None and t.dim() > 1 and name != "initial_state" else t)
            for name, t in tensors.items()}
    step["initial_state"] = state
    stepped = run("chunked", step, 2)
    for got in (*whole["reference"], *whole["chunked"], *stepped):
        assert got.isfinite().all()
    assert_close(stepped[1], whole["reference"][1], torch.float32, "state", "dt = 0 step")
    assert_close(whole["chunked"][1], whole["reference"][1], torch.float32, "state", "dt = 0 step")
