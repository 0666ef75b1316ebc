"""selective_scan (Mamba-1): chunked vs reference parity, continuation, identity steps, registry, shape errors.

bf16 contract (see tolerances.py): both backends run on bf16 inputs and each is compared with the float32 reference
computed from the same bf16-rounded inputs. The loss weights are bf16-representable, so every run backpropagates
the same output gradient and the bound covers only the backend's own rounding.
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F

from seqzoo.kernels import dispatch, get_kernel, select, use_backend
from seqzoo.kernels.selective_scan import chunked
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

OP = "selective_scan"
BATCH, CHANNELS, STATE = 2, 6, 4
SEQUENCE_ARGS = ("u", "delta", "B", "C", "z")  # the (B, T, ...) inputs, split along T


def make_inputs(length, dtype=torch.float32, seed=0, batch=BATCH, channels=CHANNELS, state=STATE):
    """Mamba-like magnitudes: delta in roughly [0.05, 1.3], A = -exp(N(0, 0.5)), unit-scale u, B, C, z."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    tensors = {
        "u": randn(batch, length, channels),
        "delta": F.softplus(randn(batch, length, channels) - 1.0),
        "A": -torch.exp(0.5 * randn(channels, state)),
        "B": randn(batch, length, state),
        "C": randn(batch, length, state),
        "D": randn(channels),
        "z": randn(batch, length, channels),
    }
    tensors = {name: t.to(dtype) for name, t in tensors.items()}
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    tensors["initial_state"] = randn(batch, channels, state).to(state_dtype)
    return tensors


def run(backend, t, reset=None):
    fn = get_kernel(OP, backend)
    return fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], initial_state=t["initial_state"],
              reset=reset)


@pytest.mark.parametrize("length", [63, 77, 500])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_matches_reference(length, dtype):
    check_chunked_matches_reference(run, make_inputs(length, dtype), dtype)


def hand_step(t):
    """One token by the formulas of the Mamba paper, element by element in Python floats: written apart from the
    reference, which the chunked backend itself calls for T == 1."""
    batch, _, channels = t["u"].shape
    state_size = t["A"].shape[1]
    y = torch.zeros(batch, 1, channels, dtype=torch.float64)
    h = torch.zeros(batch, channels, state_size, dtype=torch.float64)
    for b, d in itertools.product(range(batch), range(channels)):
        u, delta = float(t["u"][b, 0, d]), float(t["delta"][b, 0, d])
        out = 0.0
        for n in range(state_size):
            h[b, d, n] = (math.exp(delta * float(t["A"][d, n])) * float(t["initial_state"][b, d, n])
                          + delta * float(t["B"][b, 0, n]) * u)
            out += float(h[b, d, n]) * float(t["C"][b, 0, n])
        z = float(t["z"][b, 0, d])
        y[b, 0, d] = (out + float(t["D"][d]) * u) * z / (1.0 + math.exp(-z))
    return y, h


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_one_token_matches_a_step_written_by_hand(backend):
    tensors = make_inputs(1, torch.float64)
    y, state = run(backend, tensors)
    want_y, want_state = hand_step(tensors)
    assert_close(y, want_y, torch.float64, "output", backend)
    assert_close(state, want_state, torch.float64, "state", backend)


@pytest.mark.parametrize("group_elements", [1, 1 << 30])
def test_many_small_chunks_match_reference(monkeypatch, group_elements):
    # Chunks of 4 with a partial last chunk: exercises the chunk carry and the backward's incoming gradient, with
    # the backward's recompute groups of one chunk each and of all chunks at once.
    monkeypatch.setattr(chunked, "MAX_CHUNK", 4)
    monkeypatch.setattr(chunked, "GROUP_ELEMENTS", group_elements)
    tensors = make_inputs(23, torch.float64)
    check_float64_matches_reference(run, tensors, "selective_scan")


def test_long_sequence_matches_reference():
    # 2048 tokens in chunks of 64 (32 chunks): values, final state and gradients against the reference, float64.
    g = torch.Generator().manual_seed(0)
    length, channels, state = 2048, 3, 4
    assert length // chunked.chunk_length(length) >= 4
    tensors = make_inputs(length, torch.float64, batch=1, channels=channels, state=state)
    # Mamba's initialisation: delta log-uniform in [1e-3, 1e-1], A = -(1..N): memory reaches across chunks.
    tensors["delta"] = torch.exp(torch.empty(1, length, channels).uniform_(-6.9, -2.3, generator=g)).double()
    tensors["A"] = -torch.arange(1, state + 1.0, dtype=torch.float64).repeat(channels, 1)
    check_float64_matches_reference(run, tensors, "T=2048")


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("split", [1, 50, 64])
def test_two_pieces_equal_whole(backend, split):
    tensors = make_inputs(130, torch.float64)
    check_two_pieces_equal_whole(run, backend, tensors, split, SEQUENCE_ARGS)


@pytest.mark.parametrize("length", [9, 37])
def test_a_decay_of_exactly_zero_matches_reference(length):
    """A = -inf in one channel and state index (decay exp(delta A) = 0: that entry forgets its state every step)
    with T not a multiple of the chunk (4 for T = 9, 8 for T = 37): the padding steps' delta = 0 gave 0 * -inf = nan
    in the chunked backend, and a nan final state. Values, state and every gradient in float64, delta's included:
    the reference reads A = -inf as the most negative finite rate, and the chunked backward's delta gradient, which
    multiplied by A itself (0 * -inf), was nan there."""
    tensors = make_inputs(length, torch.float64)
    tensors["A"] = tensors["A"].clone()
    tensors["A"][1, 2] = -math.inf
    assert length % chunked.chunk_length(length)
    check_float64_matches_reference(run, tensors, "A = -inf")
    float32 = {name: t.float() for name, t in tensors.items()}
    for got, want, what in zip(run("chunked", float32), run("reference", float32), ("output", "state")):
        assert got.isfinite().all(), what
        assert_close(got, want, torch.float32, what, "A = -inf")


@pytest.mark.parametrize("shape", [(0, CHANNELS, STATE), (BATCH, CHANNELS, 0), (BATCH, 0, STATE)])
def test_an_empty_dimension_runs_forward_and_backward(shape):
    """An empty batch, state or channel dimension: the chunked backward divided its step-buffer budget by the
    product of the sizes (ZeroDivisionError); the reference gives empty outputs and zero gradients."""
    batch, channels, state = shape
    tensors = make_inputs(9, torch.float64, batch=batch, channels=channels, state=state)
    check_float64_matches_reference(run, tensors, f"shape {shape}")


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_identity_steps_leave_state_unchanged(backend):
    tensors = make_inputs(37)
    tensors["delta"] = torch.zeros_like(tensors["delta"])
    _, final = run(backend, tensors)
    assert torch.equal(final, tensors["initial_state"])


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_identity_steps_are_skipped(backend):
    # delta = 0 at left padding, holes and right padding gives the outputs and state of the compacted sequence.
    tensors = make_inputs(40, torch.float64)
    keep = torch.ones(40, dtype=torch.bool)
    keep[:5] = False
    keep[12:15] = False
    keep[33:] = False
    tensors["delta"] = tensors["delta"] * keep[None, :, None]
    y, final = run(backend, tensors)
    compact = {name: t[:, keep] if name in SEQUENCE_ARGS else t for name, t in tensors.items()}
    compact_y, compact_final = run(backend, compact)
    if backend == "reference":
        assert torch.equal(y[:, keep], compact_y) and torch.equal(final, compact_final)
    else:
        assert_close(y[:, keep], compact_y, torch.float64, "output", "identity steps")
        assert_close(final, compact_final, torch.float64, "state", "identity steps")


def test_registry_selects_chunked_and_can_force_reference(monkeypatch):
    monkeypatch.delenv("SEQZOO_KERNELS", raising=False)
    t = make_inputs(9)
    args = (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"])
    kwargs = {"initial_state": t["initial_state"]}
    assert select(OP, *args, **kwargs).name == "chunked"
    monkeypatch.setenv("SEQZOO_KERNELS", f"{OP}=reference")
    assert select(OP, *args, **kwargs).name == "reference"
    monkeypatch.delenv("SEQZOO_KERNELS")
    with use_backend(OP, "reference"):
        assert select(OP, *args, **kwargs).name == "reference"
        y, state = dispatch(OP, *args, **kwargs)
    ref_y, ref_state = run("reference", t)
    assert torch.equal(y, ref_y) and torch.equal(state, ref_state)
    assert select(OP, *args, **kwargs).name == "chunked"


@pytest.mark.parametrize("backend", ["reference", "chunked", None])
@pytest.mark.parametrize(
    "name,shape",
    [("u", (BATCH, 5)), ("delta", (BATCH, 5, CHANNELS + 1)), ("A", (CHANNELS + 1, STATE)), ("B", (BATCH, 5, STATE + 1)),
     ("C", (BATCH, 4, STATE)), ("D", (CHANNELS, 1)), ("z", (BATCH, 5, 1)), ("initial_state", (BATCH, CHANNELS, 1))],
)
def test_bad_shape_raises_value_error(backend, name, shape):
    t = make_inputs(5)
    t[name] = torch.zeros(shape)
    call = (lambda *a, **k: dispatch(OP, *a, **k)) if backend is None else get_kernel(OP, backend)
    with pytest.raises(ValueError, match=re.escape(str(tuple(shape)))):
        call(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], initial_state=t["initial_state"])


# T = 100 runs in chunks of 16: boundaries at a chunk edge (16, 64) and inside chunks, documents of 1 token, odd
# lengths, documents longer than a chunk; row 0's first document continues the initial state, row 1 starts afresh.
DOCUMENTS = [[1, 15, 45, 39], [37, 1, 26, 35, 1]]


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_resets_match_separate_documents(backend):
    assert chunked.chunk_length(100) == 16
    check_resets_match_separate_documents(run, backend, make_inputs(100, torch.float64), DOCUMENTS, SEQUENCE_ARGS)


def test_resets_with_one_chunk_per_backward_group(monkeypatch):
    monkeypatch.setattr(chunked, "GROUP_ELEMENTS", 1)
    check_resets_match_separate_documents(run, "chunked", make_inputs(100, torch.float64), DOCUMENTS, SEQUENCE_ARGS)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_reset_of_one_token(backend):
    check_resets_match_separate_documents(run, backend, make_inputs(1, torch.float64), [[1], [1]], SEQUENCE_ARGS)


def test_reset_selects_a_backend_that_takes_it(monkeypatch):
    from seqzoo.kernels import triton_support

    monkeypatch.delenv("SEQZOO_KERNELS", raising=False)
    t = make_inputs(9)
    args = [t[n] for n in ("u", "delta", "A", "B", "C", "D", "z")]
    reset = torch.zeros(BATCH, 9, dtype=torch.bool)
    assert select(OP, *args, initial_state=None, reset=reset).name == "chunked"
    ok, reason = triton_support.supports_selective_scan(*args, reset=reset)
    assert not ok and "CUDA" in reason and "reset" not in reason  # declined for the device, not for the reset


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_bad_reset_raises_value_error(backend):
    with pytest.raises(ValueError, match=re.escape("reset must be (B, T) = (2, 5)")):
        run(backend, make_inputs(5), reset=torch.zeros(BATCH, 4, dtype=torch.bool))


def test_double_backward_through_the_chunked_backend_is_refused_by_name():
    # Its backward is hand-written (outside autograd): a create_graph=True gradient would miss the kernel's part or
    # fail inside torch with no hint. The reference backend differentiates twice.
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 9, 3, generator=g, requires_grad=True)
    rest = (torch.rand(1, 9, 3, generator=g), -torch.rand(3, 2, generator=g), torch.randn(1, 9, 2, generator=g),
            torch.randn(1, 9, 2, generator=g))
    y, _ = get_kernel("selective_scan", "chunked")(u, *rest)
    with pytest.raises(RuntimeError, match="'chunked' backend has no double backward.*'reference'"):
        torch.autograd.grad(y.square().sum(), u, create_graph=True)
    y, _ = get_kernel("selective_scan", "reference")(u, *rest)
    (grad,) = torch.autograd.grad(y.square().sum(), u, create_graph=True)
    grad.square().sum().backward()
    assert u.grad is not None and u.grad.abs().sum() > 0


# T = 37 runs in chunks of 8: four full chunks and a partial one.
@pytest.mark.parametrize("omitted", [("D",), ("z",), ("initial_state",), ("D", "z", "initial_state")])
def test_omitted_optional_inputs_match_reference(omitted):
    tensors = dict(make_inputs(37, torch.float64), **{name: None for name in omitted})
    check_float64_matches_reference(run, tensors, f"without {'/'.join(omitted)}")


@pytest.mark.parametrize("with_resets", [False, True])
def test_padding_different_in_each_row_with_gradients(with_resets):
    # The model pads with identity steps (delta = 0): left padding in row 0, holes and right padding in row 1, with
    # resets in the padding and between; values, final states and every gradient (delta's at the pads included).
    tensors = make_inputs(37, torch.float64)
    tensors["delta"] = tensors["delta"] * padding_keep(BATCH, 37)[..., None]
    common = {"reset": scattered_resets(BATCH, 37)} if with_resets else {}
    check_float64_matches_reference(run, tensors, "padded rows", common=common)


@pytest.mark.parametrize("parts", [("output",), ("state",)])
def test_gradients_of_the_output_alone_and_of_the_final_state_alone(parts):
    # The backward is hand-written: an unused output arrives as a zero (or absent) gradient.
    check_float64_matches_reference(run, make_inputs(37, torch.float64), "+".join(parts), parts=parts)


def test_non_contiguous_inputs_match_reference():
    check_float64_matches_reference(run, make_inputs(37, torch.float64), "non-contiguous", prepare=non_contiguous,
                                    common={"reset": non_contiguous(scattered_resets(BATCH, 37))})


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_no_tokens_return_the_initial_state(backend, dtype):
    check_no_tokens(run, make_inputs, backend, dtype, (BATCH, 0, CHANNELS))
