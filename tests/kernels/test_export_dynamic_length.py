"""Each kernel op exported by torch.export with a dynamic length, the way a model's export calls it (through the
registry), with everything it takes that the model tests do not reach: an initial state, resets (packed
documents) and, for the recurrent cells, a padding mask with holes together with resets. The exported program runs
at other lengths and matches the eager call. Given a symbolic length the ops loop through torch's ``scan``
(seqzoo/kernels/symbolic.py)."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

from seqzoo.kernels import dispatch
from tests.kernels import test_rnn_cells, test_selective_scan, test_ssd, test_wkv7
from tests.kernels.scan_checks import padding_keep, scattered_resets
from tests.kernels.tolerances import assert_close

EXAMPLE_LENGTH = 12
LENGTHS = (17, 33)  # odd, and longer than the example


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()  # (see tests/models/test_export_dynamic.py)
    yield
    torch._dynamo.reset()


def _rnn_inputs(op, length):
    x, states, params = test_rnn_cells.make_inputs(op, length, torch.float32)
    batch = x.shape[0]
    sequences = {"x": x.detach(), "mask": padding_keep(batch, length), "reset": scattered_resets(batch, length)}
    return sequences, {"states": [s.detach() for s in states], "params": [p.detach() for p in params]}


def _rnn_call(op):
    def call(x, mask, reset, states, params):
        return dispatch(op, x, *states, *params, mask=mask, reset=reset)
    return call


def _scan_inputs(module, length):
    tensors = module.make_inputs(length)
    sequences = {name: tensors.pop(name) for name in list(tensors) if name in _sequence_args(module)}
    sequences["reset"] = scattered_resets(module.BATCH, length)
    return sequences, tensors


def _sequence_args(module):
    return getattr(module, "SEQUENCE_ARGS", None) or module.NAMES  # (wkv7's inputs are all (B, T, ...))


def _scan_call(op, order):
    def call(reset, initial_state, **tensors):
        return dispatch(op, *(tensors[name] for name in order), initial_state=initial_state, reset=reset)
    return call


CASES = {
    **{op: (lambda length, op=op: _rnn_inputs(op, length), _rnn_call(op)) for op in ("rnn", "lstm", "gru")},
    "selective_scan": (lambda length: _scan_inputs(test_selective_scan, length),
                       _scan_call("selective_scan", ("u", "delta", "A", "B", "C", "D", "z"))),
    "ssd": (lambda length: _scan_inputs(test_ssd, length), _scan_call("ssd", ("x", "dt", "A", "B", "C", "D"))),
    "wkv7": (lambda length: _scan_inputs(test_wkv7, length), _scan_call("wkv7", test_wkv7.NAMES)),
}


class _Call(torch.nn.Module):
    def __init__(self, call):
        super().__init__()
        self.call = call

    def forward(self, sequences, others):
        return self.call(**sequences, **others)


@pytest.mark.parametrize("op", list(CASES))
def test_kernel_exported_with_a_dynamic_length(op):
    make, call = CASES[op]
    sequences, others = make(EXAMPLE_LENGTH)
    time = Dim("time", min=2, max=256)
    shapes = ({name: {1: time} for name in sequences}, torch.utils._pytree.tree_map(lambda _: None, others))
    exported = torch.export.export(_Call(call), (sequences, others), dynamic_shapes=shapes, strict=False).module()
    for length in LENGTHS:
        sequences, others = make(length)
        got, want = exported(sequences, others), call(**sequences, **others)
        for g, w in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want), strict=True):
            assert_close(g, w, torch.float32, "output", op)
