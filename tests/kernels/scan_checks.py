"""Checks shared by the scan kernels' parity tests (selective_scan, ssd, wkv7; causal_conv1d uses the first two).

Each test file describes its op with a ``run(backend, tensors) -> (y, final_state)`` function and the names of its
``(batch, time, ...)`` inputs; the checks here are the same for every op.
"""

from __future__ import annotations

import torch

from tests.kernels.tolerances import assert_close


def leaves(tensors, dtype=None):
    """Fresh leaf copies (converted to ``dtype`` when given) that collect gradients; an omitted input (None) stays
    None."""
    return {name: None if t is None else t.detach().to(dtype or t.dtype, copy=True).requires_grad_()
            for name, t in tensors.items()}


def backward(y, state, seed=1, parts=("output", "state")):
    """Backpropagate a random weighting of the output and the final state (of those named in ``parts``)."""
    g = torch.Generator().manual_seed(seed)
    # bf16-representable weights: every run sees the same output gradient whatever its output dtype.
    wy = torch.randn(y.shape, generator=g).bfloat16().double()
    ws = torch.randn(state.shape, generator=g).bfloat16().double()
    terms = {"output": (y.double() * wy).sum(), "state": (state.double() * ws).sum()}
    sum(terms[part] for part in parts).backward()


def non_contiguous(t):
    """The same values in a non-contiguous layout, a slice of a tensor one larger in every dimension: no two
    dimensions merge in a ``view``, so a backend must read strides, not assume a dense layout. Gradients flow to
    ``t``; None stays None."""
    if t is None:
        return None
    return torch.nn.functional.pad(t, (0, 1) * t.dim())[tuple(slice(0, n) for n in t.shape)]


def padding_keep(batch, length):
    """(B, T) bool, True at real tokens, different in every row: row 0 left-padded, row 1 with holes (every third
    token, its first included) and right padding, any further rows unpadded."""
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[0, : length // 3] = False
    keep[1, ::3] = False
    keep[1, length - length // 4:] = False
    return keep


def scattered_resets(batch, length):
    """(B, T) bool resets for :func:`padding_keep`'s rows: row 0 one in its padding and one after, row 1 at its
    first token, at a hole (position 3) and late; any further rows none."""
    reset = torch.zeros(batch, length, dtype=torch.bool)
    reset[0, [length // 6, length // 2]] = True
    reset[1, [0, 3, length - 5]] = True
    return reset


def slice_time(tensors, start, stop, sequence_args):
    return {name: t[:, start:stop] if name in sequence_args else t for name, t in tensors.items()}


def check_two_pieces_equal_whole(run, backend, tensors, split, sequence_args):
    """Running [0, split) then [split, T) from the first piece's final state gives the whole run: exactly for the
    reference (the same step-by-step arithmetic), within float64 rounding for the chunked paths."""
    whole_y, whole_state = run(backend, tensors)
    first_y, first_state = run(backend, slice_time(tensors, 0, split, sequence_args))
    second = slice_time(tensors, split, None, sequence_args)
    second["initial_state"] = first_state
    second_y, second_state = run(backend, second)
    check_continued(backend, torch.cat([first_y, second_y], dim=1), second_state, whole_y, whole_state)


def check_continued(backend, y, state, whole_y, whole_state):
    """A run continued from an earlier piece's final state equals the whole run: exactly for the reference,
    within float64 rounding for the chunked paths."""
    if backend == "reference":
        assert torch.equal(y, whole_y) and torch.equal(state, whole_state)
    else:
        assert_close(y, whole_y, torch.float64, "output", "continued")
        assert_close(state, whole_state, torch.float64, "state", "continued")


def check_chunked_matches_reference(run, tensors, dtype):
    """``chunked`` (and, in bf16, ``reference`` itself) against the reference computed in float32 from the same
    inputs: outputs, final state and every input's gradient, within the dtype's tolerances."""
    expected = leaves(tensors, torch.float32)
    ref_y, ref_state = run("reference", expected)
    backward(ref_y, ref_state)
    backends = ["chunked", "reference"] if dtype == torch.bfloat16 else ["chunked"]
    for backend in backends:
        actual = leaves(tensors)
        y, state = run(backend, actual)
        assert y.dtype == dtype and state.dtype == torch.float32
        assert_close(y, ref_y, dtype, "output", f"{backend} y")
        assert_close(state, ref_state, dtype, "state", f"{backend} state")
        backward(y, state)
        for name, leaf in actual.items():
            assert leaf.grad is not None, name
            assert_close(leaf.grad, expected[name].grad, dtype, "grad", f"{backend} d{name}")


def check_no_tokens(run, make_inputs, backend, dtype, output_shape, **extra):
    """T == 0 (an empty chunk of a longer run): no outputs, of ``output_shape`` and the inputs' dtype, and the initial
    state handed back unchanged, with an empty reset (and whatever ``extra`` adds, a mask)."""
    tensors = make_inputs(0, dtype)
    batch = output_shape[0]
    y, state = run(backend, tensors, reset=torch.zeros(batch, 0, dtype=torch.bool), **extra)
    assert y.shape == output_shape and y.dtype == dtype
    assert state.dtype == tensors["initial_state"].dtype
    assert torch.equal(state, tensors["initial_state"])


def check_float64_matches_reference(run, tensors, label, common=None, parts=("output", "state"), prepare=None,
                                    **chunked_kwargs):
    """``chunked`` (called with ``chunked_kwargs``) against ``reference`` in float64: outputs, final state and
    every given input's gradient. ``common``: keyword arguments of both runs (a mask, resets); ``parts``: what the
    loss reads (the output, the final state or both); ``prepare``: applied to each of the chunked run's inputs (a
    different layout of the same values), whose gradients must still reach the leaves."""
    common = common or {}
    expected, actual = leaves(tensors), leaves(tensors)
    ref = run("reference", expected, **common)
    chunked_inputs = actual if prepare is None else {name: prepare(t) for name, t in actual.items()}
    out = run("chunked", chunked_inputs, **common, **chunked_kwargs)
    for got, want, what in zip(out, ref, ("output", "state")):
        assert_close(got, want, torch.float64, what, label)
    backward(*ref, parts=parts)
    backward(*out, parts=parts)
    for name, given in tensors.items():
        if given is None:
            continue
        got, want = actual[name].grad, expected[name].grad
        if want is None:  # the loss does not reach this input (C when only the final state is read): zero or None
            assert got is None or not got.any(), f"{label} d{name}: the reference has none"
            continue
        assert got is not None, f"{label} d{name} missing"
        assert_close(got, want, torch.float64, "grad", f"{label} d{name}")


def reset_from_documents(documents, length):
    """(B, T) bool, True at each document's first token, from per-row document lengths. Row 0's first document
    is not marked: it continues the initial state, while every other row starts afresh at its first token."""
    reset = torch.zeros(len(documents), length, dtype=torch.bool)
    for row, lengths in enumerate(documents):
        assert sum(lengths) == length, (row, lengths)
        reset[row, torch.tensor([0, *lengths[:-1]]).cumsum(0)] = True
    reset[0, 0] = False
    return reset


def check_resets_match_separate_documents(run, backend, tensors, documents, sequence_args, label="",
                                          dtype=torch.float64, **kwargs):
    """``backend`` on rows holding several documents, with ``reset`` at each document's first token, against the
    reference on each document alone (from the row's initial state for row 0's first document, from zeros for every
    other): outputs, each row's final state (its last document's) and every input's gradient, within ``dtype``'s
    tolerances (the tensors' dtype). ``run(backend, tensors, reset=None, **kwargs)``."""
    length = next(tensors[name] for name in sequence_args).shape[1]
    reset = reset_from_documents(documents, length).to(next(iter(tensors.values())).device)
    actual, expected = leaves(tensors), leaves(tensors)
    y, state = run(backend, actual, reset=reset, **kwargs)
    outputs, finals = [], []
    for row, lengths in enumerate(documents):
        start, pieces = 0, []
        for index, size in enumerate(lengths):
            piece = {name: t[row:row + 1, start:start + size] if name in sequence_args else t
                     for name, t in expected.items()}
            piece["initial_state"] = expected["initial_state"][row:row + 1]
            if index > 0 or row > 0:
                piece["initial_state"] = torch.zeros_like(piece["initial_state"])
            piece_y, carried = run("reference", piece)
            pieces.append(piece_y)
            start += size
        outputs.append(torch.cat(pieces, dim=1))
        finals.append(carried)
    want_y, want_state = torch.cat(outputs), torch.cat(finals)
    assert_close(y, want_y, dtype, "output", f"{backend} {label}")
    assert_close(state, want_state, dtype, "state", f"{backend} {label}")
    backward(y, state)
    backward(want_y, want_state)
    for name, leaf in actual.items():
        assert leaf.grad is not None, name
        assert_close(leaf.grad, expected[name].grad, dtype, "grad", f"{backend} {label} d{name}")
