"""causal_conv1d: chunked vs reference parity, exact padding semantics, continuation, registry, shape errors.

bf16 contract (see tolerances.py): both backends run on bf16 inputs and each is compared with the float32 reference
computed from the same bf16-rounded inputs, with bf16-representable loss weights.
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
    backward,
    check_continued,
    check_float64_matches_reference,
    check_no_tokens,
    check_resets_match_separate_documents,
    leaves,
    non_contiguous,
    reset_from_documents,
)
from tests.kernels.tolerances import assert_close

OP = "causal_conv1d"
BATCH, CHANNELS, WIDTH = 4, 5, 4


def make_inputs(length, dtype=torch.float32, seed=0, batch=BATCH, channels=CHANNELS, width=WIDTH):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    tensors = {"x": randn(batch, length, channels), "weight": randn(channels, width) * 0.5, "bias": randn(channels)}
    tensors = {name: t.to(dtype) for name, t in tensors.items()}
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    tensors["initial_state"] = randn(batch, channels, width - 1).to(state_dtype)
    return tensors


def run(backend, t, activation="silu", mask=None, reset=None):
    fn = get_kernel(OP, backend)
    return fn(t["x"], t["weight"], t["bias"], initial_state=t["initial_state"], activation=activation, mask=mask,
              reset=reset)


def padding_mask(length, batch=BATCH):
    """Row 0 unpadded, row 1 left-padded, row 2 right-padded, row 3 with holes (and a padded start)."""
    mask = torch.ones(batch, length, dtype=torch.bool)
    if length > 1:
        mask[1, : length // 3] = False
        mask[2, length - length // 4:] = False
        mask[3, ::3] = False
    return mask


def hand_step(t, activation, mask):
    """One token element by element in Python floats: the window is the state (oldest first) then x, and a padded
    token changes nothing and outputs 0. (The chunked backend calls the reference for T == 1.)"""
    batch, _, channels = t["x"].shape
    width = t["weight"].shape[1]
    y = torch.zeros(batch, 1, channels, dtype=torch.float64)
    state = t["initial_state"].clone().double()
    for b, d in itertools.product(range(batch), range(channels)):
        if mask is not None and not bool(mask[b, 0]):
            continue
        window = [float(v) for v in t["initial_state"][b, d]] + [float(t["x"][b, 0, d])]
        v = float(t["bias"][d]) + sum(float(t["weight"][d, j]) * window[j] for j in range(width))
        y[b, 0, d] = v / (1.0 + math.exp(-v)) if activation == "silu" else v
        state[b, d] = torch.tensor(window[1:], dtype=torch.float64)
    return y, state


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("masked", [False, True])
def test_one_token_matches_a_step_written_by_hand(backend, activation, masked):
    tensors = make_inputs(1, torch.float64)
    mask = torch.tensor([[True], [False], [True], [False]]) if masked else None
    y, state = run(backend, tensors, activation, mask)
    want_y, want_state = hand_step(tensors, activation, mask)
    assert_close(y, want_y, torch.float64, "output", backend)
    assert_close(state, want_state, torch.float64, "state", backend)


@pytest.mark.parametrize("length", [63, 77, 500])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_matches_reference(length, dtype, masked):
    mask = padding_mask(length) if masked else None
    tensors = make_inputs(length, dtype)
    expected = leaves(tensors, torch.float32)
    ref_y, ref_state = run("reference", expected, mask=mask)
    backward(ref_y, ref_state)
    backends = ["chunked", "reference"] if dtype == torch.bfloat16 else ["chunked"]
    for backend in backends:
        actual = leaves(tensors)
        y, state = run(backend, actual, mask=mask)
        assert y.dtype == dtype and state.dtype == torch.float32
        assert_close(y, ref_y, dtype, "output", f"{backend} y")
        assert_close(state, ref_state, dtype, "state", f"{backend} state")
        backward(y, state)
        for name, leaf in actual.items():
            assert leaf.grad is not None, name
            assert_close(leaf.grad, expected[name].grad, dtype, "grad", f"{backend} d{name}")


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.long, torch.float32])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_padding_equals_the_compacted_sequence(backend, width, mask_dtype, activation):
    length = 23
    tensors = make_inputs(length, torch.float64, width=width)
    mask = padding_mask(length)
    mask[0, 5:9] = False  # a hole in an otherwise unpadded row
    y, final = run(backend, tensors, activation, mask.to(mask_dtype))
    assert torch.equal(y[~mask], torch.zeros_like(y[~mask]))
    for row in range(BATCH):
        alone = {
            "x": tensors["x"][row:row + 1, mask[row]],
            "weight": tensors["weight"],
            "bias": tensors["bias"],
            "initial_state": tensors["initial_state"][row:row + 1],
        }
        alone_y, alone_final = run(backend, alone, activation)
        assert_close(y[row, mask[row]], alone_y[0], torch.float64, "output", f"row {row}")
        assert_close(final[row], alone_final[0], torch.float64, "state", f"row {row}")


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_padding_leaves_state_unchanged(backend):
    tensors = make_inputs(9)
    mask = torch.zeros(BATCH, 9, dtype=torch.bool)
    mask[0, 4] = True  # one real token in row 0; rows 1..3 fully padded
    y, final = run(backend, tensors, mask=mask)
    assert torch.equal(final[1:], tensors["initial_state"][1:])
    assert torch.equal(y[1:], torch.zeros_like(y[1:]))
    expected = torch.cat([tensors["initial_state"][0, :, 1:], tensors["x"][0, 4, :, None]], dim=-1)
    assert torch.equal(final[0], expected)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("split", [1, 2, 50])
@pytest.mark.parametrize("masked", [False, True])
def test_two_pieces_equal_whole(backend, split, masked):
    length = 130
    tensors = make_inputs(length, torch.float64)
    mask = padding_mask(length) if masked else None
    whole_y, whole_state = run(backend, tensors, mask=mask)
    first = dict(tensors, x=tensors["x"][:, :split])
    first_y, first_state = run(backend, first, mask=None if mask is None else mask[:, :split])
    second = dict(tensors, x=tensors["x"][:, split:], initial_state=first_state)
    second_y, second_state = run(backend, second, mask=None if mask is None else mask[:, split:])
    check_continued(backend, torch.cat([first_y, second_y], dim=1), second_state, whole_y, whole_state)


@pytest.mark.parametrize("masked", [False, True])
def test_long_sequence_matches_reference(masked):
    # 2048 tokens with left/right padding and holes: values, final state and gradients against the reference.
    tensors = make_inputs(2048, torch.float64, channels=2)
    mask = padding_mask(2048) if masked else None
    expected, actual = leaves(tensors), leaves(tensors)
    ref = run("reference", expected, mask=mask)
    out = run("chunked", actual, mask=mask)
    for got, want, what in zip(out, ref, ("output", "state")):
        assert_close(got, want, torch.float64, what, "T=2048")
    backward(*ref)
    backward(*out)
    for name in tensors:
        assert_close(actual[name].grad, expected[name].grad, torch.float64, "grad", f"T=2048 d{name}")


def test_registry_selects_chunked_and_can_force_reference(monkeypatch):
    monkeypatch.delenv("SEQZOO_KERNELS", raising=False)
    t = make_inputs(9)
    args = (t["x"], t["weight"], t["bias"])
    kwargs = {"initial_state": t["initial_state"], "activation": "silu", "mask": padding_mask(9)}
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


@pytest.mark.parametrize("backend", ["reference", "chunked", None])
@pytest.mark.parametrize(
    "name,shape",
    [("x", (BATCH, 5)), ("weight", (CHANNELS + 1, WIDTH)), ("weight", (CHANNELS, 1, WIDTH)), ("bias", (CHANNELS, 1)),
     ("initial_state", (BATCH, CHANNELS, WIDTH)), ("mask", (BATCH, 6))],
)
def test_bad_shape_raises_value_error(backend, name, shape):
    t = make_inputs(5)
    t["mask"] = torch.ones(BATCH, 5, dtype=torch.bool)
    t[name] = torch.zeros(shape)
    call = (lambda *a, **k: dispatch(OP, *a, **k)) if backend is None else get_kernel(OP, backend)
    with pytest.raises(ValueError, match=re.escape(str(tuple(shape)))):
        call(t["x"], t["weight"], t["bias"], initial_state=t["initial_state"], mask=t["mask"])


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_unknown_activation_raises(backend):
    t = make_inputs(5)
    with pytest.raises(ValueError, match="'relu'"):
        run(backend, t, activation="relu")


# Documents of 1 and 2 tokens (shorter than the K - 1 = 3 inputs a window reaches back, also last in a row, where
# the final state must not reach into the document before), odd lengths, longer ones; row 0's first document
# continues the initial state, the other rows start afresh. Row 2's last document begins in its right padding.
DOCUMENTS = [[1, 2, 9, 11], [3, 18, 2], [20, 3], [12, 1, 9, 1]]


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("width", [1, 2, 4])
def test_resets_match_separate_documents(backend, width):
    tensors = make_inputs(23, torch.float64, width=width)
    check_resets_match_separate_documents(run, backend, tensors, DOCUMENTS, ("x",), f"K={width}")


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_reset_of_one_token(backend):
    check_resets_match_separate_documents(run, backend, make_inputs(1, torch.float64), [[1]] * BATCH, ("x",))


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_resets_with_padding_equal_the_compacted_sequence(backend):
    # A reset at a padded position still starts a document: the next real token reads nothing before it.
    tensors = make_inputs(23, torch.float64)
    reset = reset_from_documents(DOCUMENTS, 23)
    mask = padding_mask(23)
    mask[0, 11:13] = False  # row 0's third document begins at a padded position (index 12)
    assert reset[0, 12] and not mask[0, 12]
    y, final = run(backend, tensors, mask=mask, reset=reset)
    for row in range(BATCH):
        keep = mask[row]
        # The compacted row: each real token keeps its document (the resets counted over the whole row).
        document = reset[row].long().cumsum(0)[keep]
        compact_reset = document != F.pad(document[:-1], (1, 0))  # a new document, or the first after the history
        one = {"x": tensors["x"][row:row + 1, keep], "weight": tensors["weight"], "bias": tensors["bias"],
               "initial_state": tensors["initial_state"][row:row + 1]}
        want_y, want_final = run(backend, one, reset=compact_reset[None])
        if int(reset[row].sum()) > int(document[-1]):  # a reset after the last real token
            want_final = torch.zeros_like(want_final)
        assert_close(y[row:row + 1, keep], want_y, torch.float64, "output", f"row {row}")
        assert torch.equal(y[row, ~keep], torch.zeros_like(y[row, ~keep]))
        assert_close(final[row:row + 1], want_final, torch.float64, "state", f"row {row}")


def test_reset_selects_a_backend_that_takes_it(monkeypatch):
    from seqzoo.kernels import triton_support

    monkeypatch.delenv("SEQZOO_KERNELS", raising=False)
    t = make_inputs(9)
    reset = torch.zeros(BATCH, 9, dtype=torch.bool)
    assert select(OP, t["x"], t["weight"], t["bias"], reset=reset).name == "chunked"
    ok, reason = triton_support.supports_causal_conv1d(t["x"], t["weight"], t["bias"], reset=reset)
    assert not ok and "CUDA" in reason and "reset" not in reason  # declined for the device, not for the reset


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_bad_reset_raises_value_error(backend):
    with pytest.raises(ValueError, match="reset must be bool"):
        run(backend, make_inputs(5), reset=torch.zeros(BATCH, 5))


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("omitted", [("bias",), ("initial_state",), ("bias", "initial_state")])
def test_omitted_optional_inputs_match_reference(width, omitted):
    tensors = dict(make_inputs(37, torch.float64, width=width), **{name: None for name in omitted})
    check_float64_matches_reference(run, tensors, f"K={width} without {'/'.join(omitted)}",
                                    common={"mask": padding_mask(37)})


@pytest.mark.parametrize("width", [1, 2, 4])
def test_padding_with_resets_with_gradients(width):
    # Left and right padding, holes and resets (one in row 2's right padding) together: values, final states and
    # every gradient, float64.
    common = {"mask": padding_mask(23), "reset": reset_from_documents(DOCUMENTS, 23)}
    check_float64_matches_reference(run, make_inputs(23, torch.float64, width=width), f"K={width}", common=common)


@pytest.mark.parametrize("length", [1, 23])
def test_non_contiguous_inputs_match_reference(length):
    reset = reset_from_documents(DOCUMENTS, 23) if length == 23 else torch.tensor([[False], [True], [True], [False]])
    common = {"mask": non_contiguous(padding_mask(length)), "reset": non_contiguous(reset)}
    check_float64_matches_reference(run, make_inputs(length, torch.float64), "non-contiguous", prepare=non_contiguous,
                                    common=common)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_no_tokens_return_the_initial_state(backend, dtype):
    check_no_tokens(run, make_inputs, backend, dtype, (BATCH, 0, CHANNELS), mask=torch.ones(BATCH, 0, dtype=torch.bool))
