"""SeqzooCache operations whose mistakes the model-level tests pass over: beam reordering against a recompute of the
reordered rows, reset() as a new cache, detach() on both kinds of layer, and the layout/batch checks a cache meets
in a forward (each refused by name rather than by a kernel's shape error or, worse, silently)."""

from __future__ import annotations

import pytest
import torch

from seqzoo.cache import INPUT_TABLE_ATTRIBUTE, SeqzooCache
from seqzoo.models.compat import output_cache
from tests.conftest import tiny_model

IDS = torch.tensor([[5, 17, 33, 8, 4, 12], [9, 3, 77, 21, 6, 40], [11, 2, 50, 7, 30, 19]])


@pytest.mark.parametrize("preset", ["lstm-tiny", "hybrid-tiny", "transformer-tiny"])
def test_reorder_cache_continues_the_rows_it_names(preset):
    # transformers' Cache.reorder_cache semantics (beam search): row i of the result is row beam_idx[i] of the cache.
    model = tiny_model(preset)
    order = torch.tensor([2, 0, 0])
    with torch.no_grad():
        cache = output_cache(model(IDS[:, :5], use_cache=True))
        cache.reorder_cache(order)
        assert cache.batch_size == 3
        continued = model(IDS[order, 5:], cache=cache).logits[:, -1]
        torch.testing.assert_close(continued, model(IDS[order]).logits[:, -1])


@pytest.mark.parametrize("preset", ["rnn-tiny", "hybrid-tiny"])
def test_a_reset_cache_decodes_as_a_new_one(preset):
    model = tiny_model(preset)
    with torch.no_grad():
        cache = output_cache(model(IDS[:, :4], use_cache=True))
        cache.from_beam_search = True
        cache.reset()
        assert cache.get_seq_length() == 0 and not cache.from_beam_search
        assert INPUT_TABLE_ATTRIBUTE not in cache.__dict__
        torch.testing.assert_close(model(IDS[:2], cache=cache).logits, model(IDS[:2]).logits)
        assert cache.get_seq_length() == IDS.shape[1]


def test_detach_cuts_every_layer_of_a_hybrid_cache():
    model = tiny_model("hybrid-tiny").train()
    cache = output_cache(model(IDS[:, :4], use_cache=True))
    states = [entry.state for entry in cache.layers if hasattr(entry, "state")]
    keys = [entry for entry in cache.layers if not hasattr(entry, "state")]
    assert states and keys
    assert cache.detach() is cache
    for state in [entry.state for entry in cache.layers if hasattr(entry, "state")]:
        assert all(not value.requires_grad for value in state.values())
    for entry in keys:
        assert not entry.keys.requires_grad and not entry.values.requires_grad


def test_tensors_of_an_attention_cache_are_its_keys_and_values():
    model = tiny_model("transformer-tiny")
    with torch.no_grad():
        cache = output_cache(model(IDS, use_cache=True))
    tensors = list(cache.tensors())
    assert len(tensors) == 2 * len(cache.layers)
    assert all(t.shape[0] == 3 and t.shape[-2] == IDS.shape[1] for t in tensors)


@pytest.mark.parametrize("preset", ["lstm-tiny", "hybrid-tiny"])
def test_a_cache_of_more_rows_than_the_inputs_is_refused(preset):
    model = tiny_model(preset)
    with torch.no_grad():
        cache = output_cache(model(IDS[:2, :5], use_cache=True))
        with pytest.raises(ValueError, match=r"the cache holds 2 sequence\(s\) but the inputs have batch size 1"):
            model(IDS[:1, 5:], cache=cache)


def test_a_hand_built_cache_of_other_layer_kinds_is_refused():
    with pytest.raises(ValueError, match=r"built for a seqzoo model with layers \['attention', 'attention'\]"):
        tiny_model("lstm-tiny")(IDS, cache=SeqzooCache(["attention", "attention"]))


def test_a_cache_naming_another_model_type_is_refused():
    # A cache that records its model type but not its mixers (built by hand): a GRU's states continued by an RNN of
    # the same sizes would run without any shape error.
    gru, rnn = tiny_model("gru-tiny"), tiny_model("rnn-tiny")
    with torch.no_grad():
        filled = output_cache(gru(IDS[:, :4], use_cache=True))
    cache = SeqzooCache(filled.layer_kinds, model_type=gru.config.model_type)
    for idx in range(len(filled.layers)):
        cache.update_layer(idx, filled.layer(idx))
    cache.advance(4)
    with pytest.raises(ValueError, match=f"built for a {gru.config.model_type} model"):
        rnn(IDS[:, 4:], cache=cache)


def test_a_hybrid_cache_of_other_mixers_of_the_same_kinds_is_refused():
    rnn_hybrid = tiny_model("hybrid-tiny", mixer_types=["rnn", "attention"], mixer_config={})
    gru_hybrid = tiny_model("hybrid-tiny", mixer_types=["gru", "attention"], mixer_config={})
    with torch.no_grad():
        cache = output_cache(rnn_hybrid(IDS[:, :4], use_cache=True))
        with pytest.raises(ValueError, match=r"with layers \['rnn', 'attention'\], not this .* \['gru', 'attention'\]"):
            gru_hybrid(IDS[:, 4:], cache=cache)


def test_a_cache_of_other_attention_sizes_is_refused_by_name():
    # Same recurrent state (none), other keys and values per token: named, not torch's shape error inside attention.
    model = tiny_model("transformer-tiny")
    heads = model.config.num_key_value_heads or model.config.num_attention_heads
    other = tiny_model("transformer-tiny", num_key_value_heads=heads // 2 if heads > 1 else 2)
    assert other.config.kv_bytes_per_token() != model.config.kv_bytes_per_token()
    with torch.no_grad():
        cache = output_cache(model(IDS[:, :4], use_cache=True))
        with pytest.raises(ValueError, match="the cache holds the states of a model of other sizes"):
            other(IDS[:, 4:], cache=cache)
