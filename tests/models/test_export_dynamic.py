"""torch.export of a causal LM with a dynamic sequence length (and batch size): the exported program runs at other
lengths than the example's and gives the eager model's logits, with and without a padding mask.

A recurrent kernel given a symbolic length runs its loop over the tokens through torch's ``scan`` instead of a
Python loop (which would fix the length to the example's); seqzoo/kernels/symbolic.py."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

from tests.conftest import FAMILIES, tiny_model


@pytest.fixture(autouse=True)
def fresh_dynamo():
    # torch's scan traces its step function with dynamo, whose cache outlives an export: a step traced for a static
    # batch size by an earlier export would fix the batch size of a later one (torch 2.13).
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# The families whose export used to fix the length (each kernel op and each recurrent modeling file), and the
# Transformer, which always exported with a dynamic length. On the oldest supported transformers, one stack of each
# kind (as in test_compile.py).
EXPORTED = ["rnn", "lstm", "gru", "rwkv7", "mamba", "mamba2", "hybrid", "transformer"]
ON_EVERY_RELEASE = {"lstm", "hybrid", "transformer"}
EXAMPLE_LENGTH = 8


def _ids(batch, length, seed):
    return torch.randint(3, 99, (batch, length), generator=torch.Generator().manual_seed(seed))


def _padded_mask(batch, length):
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, :3] = 0  # a left-padded row, as generate() pads
    mask[-1, length - 2:] = 0  # a right-padded one, as a training batch pads
    return mask


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("family", [family if family in ON_EVERY_RELEASE else
                                    pytest.param(family, marks=pytest.mark.newest_release_only)
                                    for family in EXPORTED])
def test_export_with_a_dynamic_length_runs_at_other_lengths(family, masked):
    model = tiny_model(FAMILIES[family])
    dims = {0: Dim("batch", min=1, max=8), 1: Dim("seq", min=2, max=64)}
    example = {"input_ids": _ids(2, EXAMPLE_LENGTH, 0), "use_cache": False}
    shapes = {"input_ids": dims, "use_cache": None}
    if masked:
        example["attention_mask"] = _padded_mask(2, EXAMPLE_LENGTH)
        shapes["attention_mask"] = dims
    exported = torch.export.export(model, (), example, dynamic_shapes=shapes, strict=False).module()

    for length in (5, 3 * EXAMPLE_LENGTH - 1):  # odd, and longer than the example
        inputs = {"input_ids": _ids(3, length, length), "use_cache": False}
        if masked:
            inputs["attention_mask"] = _padded_mask(3, length)
        torch.testing.assert_close(exported(**inputs).logits, model(**inputs).logits)
