"""wkv7 (RWKV-7 x070): chunked vs reference parity, continuation, identity steps, decoding step, registry, shapes.

bf16 contract (see tolerances.py): both backends run on bf16 inputs and each is compared with the float32 reference
computed from the same bf16-rounded inputs, with bf16-representable loss weights so that every run backpropagates the
same output gradient. Inputs follow the model: a = -kk, b = kk * iclr (kk unit-norm, iclr in (0, 1)), log decay
w in [-exp(-0.5), 0].
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F

from seqzoo.kernels import dispatch, get_kernel, select, use_backend
from seqzoo.kernels.wkv7 import chunked, wkv7_step
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

OP = "wkv7"
BATCH, HEADS, KEY = 2, 2, 8
NAMES = ("r", "w", "k", "v", "a", "b")
MAX_LOG_DECAY = 0.6065306597126334  # exp(-0.5): the model's largest per-step -w


def make_inputs(length, dtype=torch.float32, seed=0, batch=BATCH, heads=HEADS, key=KEY, value=None, decay_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    value = key if value is None else value

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    kk = F.normalize(randn(batch, length, heads, key), dim=-1)
    tensors = {
        "r": randn(batch, length, heads, key) * 0.5,
        "w": -MAX_LOG_DECAY * decay_scale * torch.sigmoid(randn(batch, length, heads, key)),
        "k": randn(batch, length, heads, key) * 0.5,
        "v": randn(batch, length, heads, value),
        "a": -kk,
        "b": kk * torch.sigmoid(randn(batch, length, heads, key)),
    }
    tensors = {name: t.to(dtype) for name, t in tensors.items()}
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    tensors["initial_state"] = (randn(batch, heads, value, key) * 0.5).to(state_dtype)
    return tensors


def run(backend, t, reset=None):
    return get_kernel(OP, backend)(*(t[n] for n in NAMES), initial_state=t["initial_state"], reset=reset)


@pytest.mark.parametrize("length", [63, 77, 500])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_matches_reference(length, dtype):
    # Chunks of 32: 63, 77 and 500 end in a partial chunk.
    check_chunked_matches_reference(run, make_inputs(length, dtype), dtype)


def hand_step(t):
    """One token of the x070 rule, element by element in Python floats: S' = S diag(exp(w)) + (S a) b^T + v k^T,
    y = S' r: an implementation apart from both backends' single-token updates (reference.update, chunked.step)."""
    batch, _, heads, key = t["r"].shape
    value = t["v"].shape[-1]
    y = torch.zeros(batch, 1, heads, value, dtype=torch.float64)
    state = torch.zeros(batch, heads, value, key, dtype=torch.float64)
    for b, h, i in itertools.product(range(batch), range(heads), range(value)):
        row = [float(x) for x in t["initial_state"][b, h, i]]
        removed = sum(row[j] * float(t["a"][b, 0, h, j]) for j in range(key))  # (S a)_i
        out = 0.0
        for j in range(key):
            state[b, h, i, j] = (row[j] * math.exp(float(t["w"][b, 0, h, j])) + removed * float(t["b"][b, 0, h, j])
                                 + float(t["v"][b, 0, h, i]) * float(t["k"][b, 0, h, j]))
            out += float(state[b, h, i, j]) * float(t["r"][b, 0, h, j])
        y[b, 0, h, i] = out
    return y, state


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("value", [KEY, 5])
def test_one_token_matches_a_step_written_by_hand(backend, value):
    tensors = make_inputs(1, torch.float64, value=value)
    y, state = run(backend, tensors)
    want_y, want_state = hand_step(tensors)
    assert_close(y, want_y, torch.float64, "output", backend)
    assert_close(state, want_state, torch.float64, "state", backend)


def test_one_token_gradients_match_reference():
    # The decoding step (elementwise updates, products against the state's transpose) differentiates like the
    # reference's update: every input's gradient and the initial state's, float64.
    check_float64_matches_reference(run, make_inputs(1, torch.float64), "T=1")


@pytest.mark.parametrize("form", ["factored", "pairwise"])
@pytest.mark.parametrize("length,decay_scale", [(77, 1.0), (40, 4.0)])
def test_each_score_form_matches_reference(monkeypatch, form, length, decay_scale):
    # The chunked kernel takes the factored products unless a chunk decays by more than FACTORED_MAX_DECAY; force
    # each form in turn (decay_scale 4: chunk totals near -39, factors up to exp(20)) and compare in float64.
    monkeypatch.setattr(chunked, "FACTORED_MAX_DECAY", float("inf") if form == "factored" else -1.0)
    tensors = make_inputs(length, torch.float64, decay_scale=decay_scale)
    check_float64_matches_reference(run, tensors, form)


def test_strong_decay_takes_the_pairwise_form(monkeypatch):
    # Per-step decays down to exp(-30): a factored chunk would need exp(+-480) and overflow; the guard must route
    # such chunks to the pairwise form.
    calls = []
    pairwise = chunked._scores_pairwise
    monkeypatch.setattr(chunked, "_scores_pairwise", lambda *args: calls.append(1) or pairwise(*args))
    tensors = make_inputs(64, decay_scale=50.0)
    y, state = run("chunked", tensors)
    assert calls and torch.isfinite(y).all() and torch.isfinite(state).all()


@pytest.mark.parametrize("length", [4, 40, 77])
@pytest.mark.parametrize("with_resets", [False, True])
def test_a_decay_of_exactly_zero_matches_reference(length, with_resets):
    """w = -inf (decay exp(w) = 0: those channels forget the state at once), which "w <= 0" allows: the chunked
    backend's cumulative log decays gave -inf - -inf = nan, and every output and the final state were nan. One
    chunk (T = 4), a padded one (40), several (77); in one channel, in a whole head, at the last token. Values,
    state and gradients in float64; values and state in float32 (T = 4 is the bug hunt's case)."""
    tensors = make_inputs(length, torch.float64)
    tensors["w"] = tensors["w"].clone()
    tensors["w"][0, length // 2, 0, 0] = -math.inf
    tensors["w"][1, 1, 1, :] = -math.inf
    tensors["w"][1, -1, 0, 3] = -math.inf
    common = {"reset": scattered_resets(BATCH, length)} if with_resets else {}
    check_float64_matches_reference(run, tensors, "w = -inf", common=common)
    float32 = {name: t.float() for name, t in tensors.items()}
    for got, want, what in zip(run("chunked", float32, **common), run("reference", float32, **common),
                               ("output", "state")):
        assert got.isfinite().all(), what
        assert_close(got, want, torch.float32, what, "w = -inf")


@pytest.mark.parametrize("value,decay_scale", [(5, 1.0), (KEY, 50.0)])
def test_value_size_and_fast_decay_float64(value, decay_scale):
    # V != K, and per-step decays down to exp(-30): ratios stay exp(c_t - c_s) <= 1, nothing overflows.
    tensors = make_inputs(45, torch.float64, value=value, decay_scale=decay_scale)
    check_float64_matches_reference(run, tensors, f"V={value}")


def test_long_sequence_matches_reference():
    # 2048 tokens in chunks of 32 (64 chunks): values, final state and gradients against the reference, float64.
    length = 2048
    assert length // chunked.CHUNK >= 4
    tensors = make_inputs(length, torch.float64, batch=1, heads=1, key=4)
    check_float64_matches_reference(run, tensors, "T=2048")


def test_long_sequence_with_fast_decay_matches_reference():
    # Per-step decays down to exp(-30): every chunk takes the pairwise form, whose products underflow to float64
    # denormals (slow on CPU), hence 1024 tokens (32 chunks). Values and state; this form's gradients are checked
    # at shorter lengths above.
    tensors = make_inputs(1024, torch.float64, batch=1, heads=1, key=4, decay_scale=50.0)
    for got, want, what in zip(run("chunked", tensors), run("reference", tensors), ("output", "state")):
        assert_close(got, want, torch.float64, what, "T=1024 fast decay")


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("split", [1, 50, 64])
def test_two_pieces_equal_whole(backend, split):
    tensors = make_inputs(130, torch.float64)
    check_two_pieces_equal_whole(run, backend, tensors, split, NAMES)


def identity(tensors, keep):
    """w = k = b = 0 where keep is False: the model's padding."""
    out = dict(tensors)
    for name in ("w", "k", "b"):
        out[name] = tensors[name] * keep[None, :, None, None]
    return out


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("length", [1, 37])
def test_identity_steps_leave_state_unchanged(backend, length):
    tensors = identity(make_inputs(length), torch.zeros(length, dtype=torch.bool))
    _, final = run(backend, tensors)
    assert torch.equal(final, tensors["initial_state"])


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_identity_steps_are_skipped(backend):
    tensors = make_inputs(40, torch.float64)
    keep = torch.ones(40, dtype=torch.bool)
    keep[:5] = False
    keep[12:15] = False
    keep[33:] = False
    y, final = run(backend, identity(tensors, keep))
    compact_y, compact_final = run(backend, {n: t[:, keep] if n in NAMES else t for n, t in tensors.items()})
    if backend == "reference":
        assert torch.equal(y[:, keep], compact_y) and torch.equal(final, compact_final)
    else:
        assert_close(y[:, keep], compact_y, torch.float64, "output", "identity steps")
        assert_close(final, compact_final, torch.float64, "state", "identity steps")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_matches_one_token_of_each_backend(dtype):
    tensors = make_inputs(1, dtype)
    y, state = wkv7_step(*(tensors[n][:, 0] for n in NAMES), tensors["initial_state"])
    assert y.dtype == dtype and state.dtype == torch.float32
    ref_y, ref_state = run("reference", tensors)
    assert torch.equal(y, ref_y[:, 0]) and torch.equal(state, ref_state)
    # chunked runs the same update as one rank-2 product: the same values up to rounding.
    chunked_y, chunked_state = run("chunked", tensors)
    assert_close(chunked_y, ref_y, dtype, "output", "chunked T=1")
    assert_close(chunked_state, ref_state, torch.float32, "state", "chunked T=1")
    with pytest.raises(ValueError, match=re.escape(str((BATCH, HEADS, KEY)))):
        wkv7_step(*(tensors[n][:, 0] for n in NAMES), tensors["initial_state"][:, :, 0])


def test_registry_selects_chunked_and_can_force_reference(monkeypatch):
    monkeypatch.delenv("SEQZOO_KERNELS", raising=False)
    t = make_inputs(9)
    args, kwargs = [t[n] for n in NAMES], {"initial_state": t["initial_state"]}
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
    [("r", (BATCH, 5, HEADS)), ("w", (BATCH, 5, HEADS, KEY + 1)), ("k", (BATCH, 4, HEADS, KEY)),
     ("v", (BATCH, 5, HEADS + 1, KEY)), ("a", (BATCH, 5, HEADS, 1)), ("b", (1, 5, HEADS, KEY)),
     ("initial_state", (BATCH, HEADS, KEY, KEY + 1))],
)
def test_bad_shape_raises_value_error(backend, name, shape):
    t = make_inputs(5)
    t[name] = torch.zeros(shape)
    call = (lambda *a, **k: dispatch(OP, *a, **k)) if backend is None else get_kernel(OP, backend)
    with pytest.raises(ValueError, match=re.escape(str(tuple(shape)))):
        call(*(t[n] for n in NAMES), initial_state=t["initial_state"])


# Chunks of 32: boundaries at a chunk edge (32, 64) and inside chunks, documents of 1 token, odd lengths, documents
# longer than a chunk; row 0's first document continues the initial state, row 1 starts afresh.
DOCUMENTS = [[1, 31, 45, 23], [37, 1, 26, 35, 1]]


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_resets_match_separate_documents(backend):
    check_resets_match_separate_documents(run, backend, make_inputs(100, torch.float64), DOCUMENTS, NAMES)


@pytest.mark.parametrize("form", ["factored", "pairwise"])
def test_resets_in_each_score_form(monkeypatch, form):
    monkeypatch.setattr(chunked, "FACTORED_MAX_DECAY", float("inf") if form == "factored" else -1.0)
    tensors = make_inputs(100, torch.float64, decay_scale=4.0)
    check_resets_match_separate_documents(run, "chunked", tensors, DOCUMENTS, NAMES, form)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_reset_of_one_token(backend):
    # T == 1 (the decode path): row 0 continues its state, row 1 resets.
    check_resets_match_separate_documents(run, backend, make_inputs(1, torch.float64), [[1], [1]], NAMES)


def test_reset_in_float32_matches_float64():
    tensors = make_inputs(100, torch.float32)
    reset = torch.zeros(BATCH, 100, dtype=torch.bool)
    reset[:, [5, 32, 70]] = True
    y, state = run("chunked", tensors, reset=reset)
    want_y, want_state = run("reference", {n: t.double() for n, t in tensors.items()}, reset=reset)
    assert_close(y, want_y, torch.float32, "output", "reset")
    assert_close(state, want_state, torch.float32, "state", "reset")


def test_reset_selects_a_backend_that_takes_it(monkeypatch):
    from seqzoo.kernels import triton_support

    monkeypatch.delenv("SEQZOO_KERNELS", raising=False)
    t = make_inputs(9)
    args = [t[n] for n in NAMES]
    reset = torch.zeros(BATCH, 9, dtype=torch.bool)
    assert select(OP, *args, initial_state=None, reset=reset).name == "chunked"
    ok, reason = triton_support.supports_wkv7_chunked(*args, reset=reset)
    assert not ok and "reset" in reason


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("reset", [torch.zeros(BATCH, 4, dtype=torch.bool), torch.zeros(BATCH, 5),
                                   [[True] * 5] * BATCH])
def test_bad_reset_raises_value_error(backend, reset):
    t = make_inputs(5)
    with pytest.raises(ValueError, match="reset must be"):
        run(backend, t, reset=reset)


# T = 45: a chunk of 32 and a partial one.
def test_omitted_initial_state_matches_reference():
    tensors = dict(make_inputs(45, torch.float64), initial_state=None)
    check_float64_matches_reference(run, tensors, "without initial_state")


@pytest.mark.parametrize("with_resets", [False, True])
def test_padding_different_in_each_row_with_gradients(with_resets):
    # The model pads with identity steps (w = k = b = 0): left padding in row 0, holes and right padding in row 1,
    # with resets in the padding and between; values, final states and every gradient (at the pads included).
    tensors = make_inputs(45, torch.float64)
    keep = padding_keep(BATCH, 45)[..., None, None]
    for name in ("w", "k", "b"):
        tensors[name] = tensors[name] * keep
    common = {"reset": scattered_resets(BATCH, 45)} if with_resets else {}
    check_float64_matches_reference(run, tensors, "padded rows", common=common)


@pytest.mark.parametrize("length", [1, 45])
def test_non_contiguous_inputs_match_reference(length):
    reset = scattered_resets(BATCH, length) if length > 1 else torch.tensor([[False], [True]])
    check_float64_matches_reference(run, make_inputs(length, torch.float64), "non-contiguous", prepare=non_contiguous,
                                    common={"reset": non_contiguous(reset)})


def test_chunked_empty_batch_or_heads():
    """A call with no rows (or no heads) returns empty outputs, like the reference; the factored-form check once
    took the minimum of an empty tensor."""
    for shape in ((0, 5, 2, 4), (2, 5, 0, 4)):
        inputs = [torch.randn(*shape, dtype=torch.float64, requires_grad=True) for _ in range(6)]
        y, state = get_kernel("wkv7", "chunked")(*inputs)
        ref_y, ref_state = get_kernel("wkv7", "reference")(*inputs)
        assert y.shape == ref_y.shape and state.shape == ref_state.shape
        (y.sum() + state.sum()).backward()


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_no_tokens_return_the_initial_state(backend, dtype):
    check_no_tokens(run, make_inputs, backend, dtype, (BATCH, 0, HEADS, KEY))
