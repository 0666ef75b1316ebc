"""Mutation-found gaps in the tests of the classic models' decode step (``seqzoo.layers.recurrent``: ``InputTable``,
``_BuiltTable``, ``step_stack``; ``seqzoo.models.classic.step_plan``). Each test failed under one deliberate change of
the source that the other tests let pass, and compares with torch.nn's layers or the model's own path without the
input table where it can."""

from __future__ import annotations

import copy
import gc
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from seqzoo.layers.recurrent import InputTable
from seqzoo.models.compat import output_cache
from tests.conftest import tiny_model
from tests.models.test_classic_step import torch_nn_twin


def test_a_weight_replaced_by_another_tensor_over_the_same_storage_is_seen_by_the_next_step():
    # A new Parameter viewing the old one's storage from its start keeps its pointer and, as a view, its version
    # counter: only the tensor's identity tells the cache's table that it is not the weight it was built from.
    model = tiny_model("gru-tiny").set_input_table("always")
    layer = model.model.layers[0]
    prompt, token = torch.tensor([[5, 9, 2, 7], [3, 8, 1, 4]]), torch.tensor([[7], [11]])
    with torch.no_grad():
        cache = output_cache(model(prompt, use_cache=True))
        model(token, cache=cache)
        assert getattr(cache, InputTable.CACHE_ATTRIBUTE) is not None
        copied = copy.deepcopy(cache)
        old = layer.weight_ih.detach()
        rows, cols = old.shape
        layer.weight_ih = nn.Parameter(old.as_strided((rows, cols), (1, rows)))
        assert layer.weight_ih.data_ptr() == old.data_ptr() and layer.weight_ih._version == old._version
        twin = copy.deepcopy(model).set_input_table("never")
        got = model(token, cache=cache).logits
        expected = twin(token, cache=copied).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_switching_the_table_off_lets_the_model_drop_it():
    model = tiny_model("lstm-tiny").set_input_table("always")
    with torch.no_grad():
        cache = output_cache(model(torch.tensor([[5, 9, 2]]), use_cache=True))
        model(torch.tensor([[7]]), cache=cache)
    table = weakref.ref(getattr(cache, InputTable.CACHE_ATTRIBUTE).table)
    del cache
    model.set_input_table("never")
    gc.collect()
    assert table() is None


def test_a_single_token_forward_without_a_cache_starts_each_layer_from_zeros_of_its_own_width():
    # (the embedding narrower than the state: zeros of the input's width would not fit the cells)
    model = tiny_model("lstm-tiny", tie_word_embeddings=False, embedding_size=24)
    twin = torch_nn_twin(model).to(model.dtype)  # (its weights copied from the model's: exact in either)
    tokens = torch.tensor([[5], [17]])
    with torch.no_grad():
        got = model(tokens, use_cache=False).logits
        expected = model.lm_head(twin(F.embedding(tokens, model.model.embed_tokens.weight))[0])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
