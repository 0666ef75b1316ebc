"""Edges of the cache and of the padded and packed inputs that a mutation check of seqzoo/cache.py,
seqzoo/models/packing.py and seqzoo/models/inputs.py found unguarded: each test here fails under one deliberate
change of that code (named in its comment) and passes as the code is."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers.cache_utils import DynamicLayer

from seqzoo.cache import SeqzooCache, check_kv_layout
from seqzoo.models.compat import output_cache
from tests.conftest import tiny_model

IDS = torch.tensor([[5, 17, 33, 8, 4, 12], [9, 3, 77, 21, 6, 40]])


def test_a_row_index_equal_to_the_batch_size_is_refused_before_any_layer_changes():
    # (mutant: the range check compares high > batch) one past the last row reached torch's index_select, an
    # IndexError on CPU and a device-side assert on a GPU, naming no cache and no row count.
    model = tiny_model("hybrid-tiny", mixer_types=["attention", "mamba"])
    with torch.no_grad():
        cache = output_cache(model(IDS[:, :5], use_cache=True))
    before = [tensor.clone() for tensor in cache.tensors()]
    for call in (lambda: cache.batch_select_indices([2]), lambda: cache.reorder_cache(torch.tensor([0, 2]))):
        with pytest.raises(ValueError, match=r"holds 2 row\(s\): each index is from 0 to 1"):
            call()
    assert all(torch.equal(a, b) for a, b in zip(before, cache.tensors(), strict=True))


def test_a_crop_of_zero_with_another_argument_is_refused_by_a_recurrent_cache():
    # (mutant: removes_nothing reads only the first of several arguments) transformers' crop takes one argument;
    # crop(0, 5) is no "remove nothing", and a recurrent cache must not take it silently.
    with pytest.raises(ValueError, match=r"^crop\(0, 5\): .*cannot be cropped"):
        SeqzooCache(["recurrent"]).crop(0, 5)


def test_a_cache_holding_a_trainable_initial_state_deep_copies():
    # (mutant: deepcopy refuses every tensor that requires grad) a leaf, such as an initial state the user trains,
    # copies as torch copies it; only a graph's inner tensors are refused.
    cache = SeqzooCache(["recurrent"])
    start = torch.randn(2, 4, requires_grad=True)
    cache.update_layer(0, {"h": start})
    copied = copy.deepcopy(cache)
    assert copied.layer(0)["h"] is not start and torch.equal(copied.layer(0)["h"], start)
    assert copied.layer(0)["h"].requires_grad
    cache.update_layer(0, {"h": start * 2})  # (an inner tensor of a graph)
    with pytest.raises(RuntimeError, match="tensors of an autograd graph"):
        copy.deepcopy(cache)


def test_keys_of_as_many_dimensions_per_head_but_other_heads_are_refused():
    # (mutant: check_kv_layout compares head_dim only) 4 key heads of 8 continued by 2 heads of 8 (a model whose
    # config reports no state bytes passes check_fits) ended in torch's "Sizes of tensors must match".
    layer = DynamicLayer()
    layer.update(torch.randn(1, 4, 3, 8), torch.randn(1, 4, 3, 8))
    check_kv_layout(layer, torch.randn(1, 4, 1, 8))
    with pytest.raises(ValueError, match=r"4 head\(s\) of size 8, but this layer computes 2 head\(s\) of size 8"):
        check_kv_layout(layer, torch.randn(1, 2, 1, 8))


def test_a_negative_layer_index_of_numpy_counts_from_the_end_as_an_int_does():
    # (mutant: the range check of a non-int index starts at 0) np.int64(-1) is an index as -1 is.
    cache = SeqzooCache(["attention", "recurrent"])
    cache.update_layer(1, {"h": torch.zeros(1, 3)})
    assert cache.layer(np.int64(-1)) is cache.layer(-1) is cache.layer(1)
    with pytest.raises(IndexError, match="this cache has 2 layer"):
        cache.layer(np.int64(-3))


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny"])
def test_position_ids_restarting_in_two_tokens_with_a_padding_mask_are_refused(preset):
    # (mutant: the check skips inputs shorter than 3 tokens) two documents of one token each, with a mask, would
    # run as one: the second token read the first's state. Only a one-token decode step cannot restart.
    model = tiny_model(preset)
    with torch.no_grad(), pytest.raises(ValueError, match="position_ids restart between two real tokens"):
        model(IDS[:1, :2], attention_mask=torch.ones(1, 2, dtype=torch.long), position_ids=torch.tensor([[0, 0]]))
