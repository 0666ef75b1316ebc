"""SeqzooCache's own API, called directly: what transformers' Cache promises (row selection, repetition, cropping) and
seqzoo's additions (bytes per sequence, layout checks), each on a tiny model's filled cache."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache

from seqzoo.cache import RecurrentCache, SeqzooCache
from seqzoo.models.compat import output_cache
from tests.conftest import tiny_config, tiny_model

IDS = torch.tensor([[5, 17, 33, 8, 4, 12], [9, 3, 77, 21, 6, 40]])


@pytest.mark.parametrize("preset", ["lstm-tiny", "hybrid-tiny"])
def test_selecting_and_repeating_rows_continues_those_rows(preset):
    model = tiny_model(preset)
    with torch.no_grad():
        cache = output_cache(model(IDS[:, :5], use_cache=True))
        full = model(IDS).logits[:, -1]
        cache.batch_select_indices(torch.tensor([1]))
        assert cache.batch_size == 1
        torch.testing.assert_close(model(IDS[1:, 5:], cache=cache).logits[:, -1], full[1:])
        one = output_cache(model(IDS[:1, :5], use_cache=True))
        one.batch_repeat_interleave(2)
        assert one.batch_size == 2
        torch.testing.assert_close(model(IDS[:1, 5:].repeat(2, 1), cache=one).logits[:, -1], full[:1].repeat(2, 1))
        two = output_cache(model(IDS[:, :5], use_cache=True))
        two.batch_repeat_interleave(2)  # rows 0, 0, 1, 1 (not 0, 1, 0, 1)
        torch.testing.assert_close(model(IDS[:, 5:].repeat_interleave(2, 0), cache=two).logits[:, -1],
                                   full.repeat_interleave(2, 0))


def test_rows_are_selected_by_a_list_as_in_transformers_dynamic_cache():
    # A list refused by a recurrent layer would leave the attention layers before it cut to the rows it names.
    reference = DynamicCache()
    reference.update(torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4), 0)
    reference.batch_select_indices([1])
    assert reference.layers[0].keys.shape[0] == 1
    model = tiny_model("hybrid-tiny", mixer_types=["attention", "mamba"])
    with torch.no_grad():
        cache = output_cache(model(IDS[:, :5], use_cache=True))
        cache.batch_select_indices([1])
        assert [tensor.shape[0] for tensor in cache.tensors()] == [1, 1, 1, 1]
        torch.testing.assert_close(model(IDS[1:, 5:], cache=cache).logits[:, -1], model(IDS[1:]).logits[:, -1])


def test_an_empty_cache_takes_every_row_operation_and_stays_empty():
    # generate() may repeat or reorder the rows of a cache no forward has filled yet (transformers' DynamicLayer
    # skips an uninitialized layer alike), and a fresh cache is copied or detached before its first use.
    cache = SeqzooCache(["attention", "recurrent"])
    cache.batch_repeat_interleave(2)
    cache.batch_select_indices(torch.tensor([0]))
    cache.reorder_cache(torch.tensor([0]))
    assert cache.detach() is cache
    for each in (cache, copy.deepcopy(cache)):
        assert each.batch_size is None and list(each.tensors()) == [] and each.layer(1) is None
        assert each.layer_bytes() == [0, 0]
    assert cache.get_max_length() == -1  # as transformers' dynamic layers: no maximum


def test_a_cropped_attention_cache_continues_from_where_it_was_cut():
    model = tiny_model("transformer-tiny")
    with torch.no_grad():
        cache = output_cache(model(IDS, use_cache=True))
        cache.crop(-2)  # transformers >= 5.23: how many positions to remove
        assert cache.get_seq_length() == 4
        torch.testing.assert_close(model(IDS[:, 4:5], cache=cache).logits[:, -1], model(IDS[:, :5]).logits[:, -1])


def test_a_cache_with_a_recurrent_layer_is_not_croppable():
    assert SeqzooCache(["attention", "attention"]).is_croppable
    assert not SeqzooCache(["attention", "recurrent"]).is_croppable
    with pytest.raises(ValueError, match="cannot be cropped"):
        SeqzooCache(["attention", "recurrent"]).crop(-1)


def test_a_refused_crop_names_its_arguments_and_what_is_accepted():
    with pytest.raises(ValueError, match=r"^crop\(-3\): .*cannot be cropped; only crop\(0\), which removes no"):
        SeqzooCache(["recurrent"]).crop(-3)
    with pytest.raises(ValueError, match=r"^crop\(tokens_to_remove=2\): "):
        SeqzooCache(["recurrent"]).crop(tokens_to_remove=2)


def test_cropping_no_position_is_a_no_op_on_every_cache():
    # transformers' own layers return on crop(0) (its deferred stop check calls it every step): nothing to roll back.
    model = tiny_model("hybrid-tiny", mixer_types=["attention", "mamba"])
    with torch.no_grad():
        cache = output_cache(model(IDS[:, :5], use_cache=True))
        before = [tensor.clone() for tensor in cache.tensors()]
        cache.crop(0)
        cache.crop(tokens_to_remove=0)
        assert cache.get_seq_length() == 5
        assert all(torch.equal(a, b) for a, b in zip(before, cache.tensors(), strict=True))
        torch.testing.assert_close(model(IDS[:, 5:], cache=cache).logits[:, -1], model(IDS).logits[:, -1])
    with pytest.raises(ValueError, match="cannot be cropped"):
        cache.crop(False)  # not a count of positions


def test_a_refused_crop_leaves_the_attention_layers_as_they_were():
    # An attention layer before a recurrent one must not be cut before the recurrent one refuses: the cache would
    # continue with keys and values two positions short of its recurrent states and its position count.
    model = tiny_model("hybrid-tiny", mixer_types=["attention", "mamba"])
    with torch.no_grad():
        cache = output_cache(model(IDS[:, :5], use_cache=True))
        with pytest.raises(ValueError, match="cannot be cropped"):
            cache.crop(-2)
        assert cache.layers[0].get_seq_length() == cache.get_seq_length() == 5
        torch.testing.assert_close(model(IDS[:, 5:], cache=cache).logits[:, -1], model(IDS).logits[:, -1])


def test_bytes_are_per_sequence_whatever_the_batch():
    model = tiny_model("hybrid-tiny")
    with torch.no_grad():
        one = output_cache(model(IDS[:1], use_cache=True))
        two = output_cache(model(IDS, use_cache=True))
    assert one.layer_bytes() == two.layer_bytes() and one.state_bytes() > 0


def test_bad_layouts_are_refused_when_built():
    with pytest.raises(ValueError, match="at least one layer"):
        SeqzooCache([])
    with pytest.raises(ValueError, match=r"unknown cache layer kind\(s\) \['lstm'\]; allowed: attention, recurrent"):
        SeqzooCache(["attention", "lstm"])
    cache = SeqzooCache(["attention"])
    with pytest.raises(ValueError, match="layer 0 of this cache is an attention layer"):
        cache.update_layer(0, {"h": torch.zeros(1, 2)})


def test_an_empty_cache_built_for_other_sizes_is_accepted():
    # nothing in it yet, so nothing of the other sizes to misread
    model = tiny_model("lstm-tiny")
    wider = tiny_model("lstm-tiny", hidden_size=2 * model.config.hidden_size,
                       **({"embedding_size": 2 * model.config.embedding_size}
                          if "embedding_size" in model.config.to_dict() else {}))
    cache = SeqzooCache.for_model(wider)
    with torch.no_grad():
        model(IDS, cache=cache)
    assert cache.get_seq_length() == IDS.shape[1]


@pytest.mark.parametrize("preset", ["transformer-tiny", "hybrid-tiny", "seq2seq-transformer-tiny"])
def test_keys_of_another_head_layout_are_refused_naming_both_layouts(preset):
    # 4 heads of 8 and 2 heads of 16 take the same bytes per token, which the check of sizes compares: continuing
    # one model's keys with the other ended in torch's "Sizes of tensors must match" inside the attention layer.
    def model(heads, head_dim):
        layout = dict(num_attention_heads=heads, num_key_value_heads=heads, head_dim=head_dim)
        if preset.startswith("hybrid"):
            mixer_config = tiny_config(preset).mixer_config
            return tiny_model(preset, mixer_config={**mixer_config, "attention": layout})
        if preset.startswith("seq2seq"):
            return tiny_model(preset, num_attention_heads=heads)
        return tiny_model(preset, **layout)

    narrow, wide = model(4, 8), model(2, 16)
    with torch.no_grad():
        if preset.startswith("seq2seq"):
            step = dict(input_ids=IDS, decoder_input_ids=IDS[:, :1])
            cache = output_cache(narrow(**{**step, "decoder_input_ids": IDS[:, :3]}, use_cache=True))
        else:
            step = dict(input_ids=IDS[:, 5:])
            cache = output_cache(narrow(input_ids=IDS[:, :5], use_cache=True))
        seen = cache.get_seq_length()
        with pytest.raises(ValueError, match=r"keys of 4 head\(s\) of size 8, but this layer computes 2 head\(s\) "
                                             r"of size 16"):
            wide(**step, cache=cache)
    assert cache.get_seq_length() == seen  # left as it was


def test_a_cache_of_a_config_that_reports_no_state_bytes_is_continued(monkeypatch):
    # A plugin's config may leave state_bytes_per_sequence unimplemented: the sizes cannot be compared, and another
    # model of that config (one loaded again) continues the cache.
    def unreported(self, dtype_bytes=4):
        raise NotImplementedError

    model, again = tiny_model("lstm-tiny"), tiny_model("lstm-tiny")
    monkeypatch.setattr(type(model.config), "state_bytes_per_sequence", unreported)
    with torch.no_grad():
        cache = output_cache(model(IDS[:, :4], use_cache=True))
        torch.testing.assert_close(again(IDS[:, 4:], cache=cache).logits[:, -1], model(IDS).logits[:, -1])


def test_an_empty_cache_takes_the_layout_of_the_model_that_fills_it():
    # Built for other sizes (or by hand, without a model) and filled by this model, it holds this model's states: a
    # copy of it continues with this model, and a model of the other sizes or another mixer refuses it by name.
    model = tiny_model("rnn-tiny")
    wider = tiny_model("rnn-tiny", hidden_size=2 * model.config.hidden_size)
    with torch.no_grad():
        full = model(IDS).logits[:, -1]
        for cache in (SeqzooCache.for_model(wider), SeqzooCache(["recurrent", "recurrent"])):
            model(IDS[:, :4], cache=cache)
            torch.testing.assert_close(model(IDS[:, 4:], cache=copy.deepcopy(cache)).logits[:, -1], full)
            with pytest.raises(ValueError, match="other sizes|built for a seqzoo_rnn"):
                wider(IDS[:, 4:], cache=cache)
            with pytest.raises(ValueError, match="built for a seqzoo_rnn model"):
                tiny_model("gru-tiny")(IDS[:, 4:], cache=cache)


@pytest.mark.parametrize("preset", ["transformer-tiny", "hybrid-tiny"])
def test_a_left_padded_batch_continues_its_cache_in_a_direct_forward(preset):
    # Without position ids the positions come from the mask of the cached and the current tokens: the current
    # tokens' are its last columns.
    model = tiny_model(preset)
    mask = torch.ones_like(IDS)
    mask[0, :2] = 0
    with torch.no_grad():
        full = model(IDS, attention_mask=mask).logits
        cache = output_cache(model(IDS[:, :4], attention_mask=mask[:, :4], use_cache=True))
        rest = model(IDS[:, 4:], attention_mask=mask, cache=cache).logits
    torch.testing.assert_close(rest, full[:, 4:])


def test_the_deprecated_get_and_set_read_and_write_one_named_state():
    cache = SeqzooCache(["recurrent"])
    h, c = torch.ones(1, 3), torch.zeros(1, 3)
    with pytest.warns(FutureWarning, match=r"get\(layer_idx, name\) is deprecated .* use layer\(layer_idx\)\[name\]"):
        assert cache.get(0, "h") is None
    with pytest.warns(FutureWarning, match=r"set\(layer_idx, name, value\) is deprecated"):
        cache.set(0, "h", h)  # an empty layer: its first state
    assert cache.layer(0) == {"h": h}
    # A name beside the ones a layer holds is refused: a misspelt one would never be read (the layer would start it
    # from zero); a state of several names is given whole.
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match=r"layer 0 holds a state named 'h', not 'c'"):
        cache.set(0, "c", c)
    with pytest.raises(ValueError, match=r"update_layer\(0, None\) empties the layer first"):
        cache.update_layer(0, {"h": h, "c": c})
    cache.update_layer(0, None)
    cache.update_layer(0, {"h": h, "c": c})
    with pytest.warns(FutureWarning):
        cache.set(0, "c", h)  # in its place
        assert cache.get(0, "c") is h
    assert cache.layer(0)["h"] is h


def test_the_deprecated_recurrent_cache_is_a_cache_of_that_many_recurrent_layers():
    with pytest.warns(FutureWarning, match=r"RecurrentCache\(num_layers\) is deprecated"):
        cache = RecurrentCache(3)
    assert isinstance(cache, SeqzooCache) and cache.layer_kinds == ("recurrent",) * 3
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match=r"at least one layer, got num_layers=0"):
        RecurrentCache(0)
