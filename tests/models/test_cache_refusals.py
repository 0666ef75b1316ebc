"""What SeqzooCache refuses of a caller who edits or steers it by hand: a state that does not fit the one it replaces
(a misspelt name restarted the layer from zero without a word), rows named by a value that is no list of rows, a
count of positions or a layer index that is no such thing, and a layout that is no list of layers. Each refusal names
the method, the value and what is allowed, and leaves the cache as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache, LlamaConfig

from seqzoo.cache import SeqzooCache
from seqzoo.models.compat import output_cache
from tests.conftest import tiny_model

IDS = torch.tensor([[5, 17, 33, 8, 4, 12], [9, 3, 77, 21, 6, 40], [11, 2, 50, 7, 30, 19]])


def filled(preset, **overrides):
    model = tiny_model(preset, **overrides)
    with torch.no_grad():
        cache = output_cache(model(IDS[:, :5], use_cache=True))
    return model, cache


def snapshot(cache):
    return [tensor.clone() for tensor in cache.tensors()], cache.get_seq_length()


def assert_unchanged(cache, before):
    tensors, seen = before
    assert cache.get_seq_length() == seen
    after = list(cache.tensors())
    assert len(after) == len(tensors)
    assert all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(after, tensors))


def continues(model, cache):
    """Check that (a copy of) ``cache`` still continues its rows as a recompute of the whole sequences does."""
    with torch.no_grad():
        torch.testing.assert_close(model(IDS[:, 5:], cache=copy.deepcopy(cache)).logits[:, -1],
                                   model(IDS).logits[:, -1])


# -- a state edited by hand -------------------------------------------------------------------------------------------

RECURRENT = ["lstm-tiny", "gru-tiny", "mamba-tiny", "mamba2-tiny", "rwkv7-tiny", "hybrid-tiny"]


@pytest.mark.parametrize("preset", RECURRENT)
def test_a_state_of_other_names_is_refused_naming_both(preset):
    # Mamba, Mamba-2 and RWKV-7 read state.get(name): a misspelt name restarted the layer from zero without a word;
    # the LSTM and GRU ended in a bare KeyError at the next forward.
    model, cache = filled(preset)
    held = cache.layer(0)
    last = sorted(held)[-1]
    before = snapshot(cache)
    typo = {(name + "_typo" if name == last else name): value for name, value in held.items()}
    with pytest.raises(ValueError, match=rf"^update_layer\(0, \.\.\.\): layer 0 holds a state named .*'{last}'.*, "
                                         rf"but the state given is named .*'{last}_typo'.* \(missing \['{last}'\]; "
                                         rf"not held \['{last}_typo'\]\)"):
        cache.update_layer(0, typo)
    with pytest.raises(ValueError, match=rf"\(missing \['{last}'\]\)"):
        cache.update_layer(0, {name: value for name, value in held.items() if name != last})
    with pytest.raises(ValueError, match=r"\(not held \['extra'\]\)"):
        cache.update_layer(0, {**held, "extra": held[last]})
    with pytest.raises(ValueError, match=r"named nothing"):
        cache.update_layer(0, {})
    assert cache.layer(0) is held
    assert_unchanged(cache, before)
    continues(model, cache)


@pytest.mark.parametrize("preset", ["mamba-tiny", "rwkv7-tiny", "lstm-tiny"])
def test_the_deprecated_set_refuses_a_name_the_layer_does_not_hold(preset):
    model, cache = filled(preset)
    held = cache.layer(0)
    name = sorted(held)[-1]
    with pytest.warns(FutureWarning), pytest.raises(
            ValueError, match=rf"^set\(0, '{name}x', \.\.\.\): layer 0 holds a state named .*, not '{name}x' "
                              rf"\(did you mean '{name}'\?\).*update_layer\(0, \{{\.\.\.\}}\)"):
        cache.set(0, name + "x", held[name] + 5)
    assert cache.layer(0) is held
    with pytest.warns(FutureWarning):
        cache.set(0, name, held[name].clone())  # a name it holds: replaced, and continued from
    continues(model, cache)


@pytest.mark.parametrize("preset", ["lstm-tiny", "mamba-tiny", "rwkv7-tiny"])
def test_a_state_of_another_shape_or_a_non_float_dtype_is_refused_naming_both(preset):
    model, cache = filled(preset)
    held = cache.layer(0)
    name = sorted(held)[0]
    shape = tuple(held[name].shape)
    rest = ", ".join(str(size) for size in shape[1:])
    before = snapshot(cache)
    narrower = {**held, name: held[name][:, :-1]}
    with pytest.raises(ValueError, match=rf"^update_layer\(0, \.\.\.\): state\['{name}'\] has shape "
                                         rf"{re_shape((shape[0], shape[1] - 1, *shape[2:]))}, where the state it "
                                         rf"replaces has {re_shape(shape)}: .*\(rows, {rest}\)"):
        cache.update_layer(0, narrower)
    with pytest.raises(ValueError, match=rf"has shape {re_shape((1, *shape))}"):
        cache.update_layer(0, {**held, name: held[name][None]})  # (one more dimension)
    with pytest.raises(ValueError, match=rf"^update_layer\(0, \.\.\.\): state\['{name}'\] is torch.int64, where the "
                                         r"state it replaces is torch.float32: .*floating-point"):
        cache.update_layer(0, {**held, name: held[name].long()})
    with pytest.raises(TypeError, match=rf"state\['{name}'\] is list"):
        cache.update_layer(0, {**held, name: held[name].tolist()})
    with pytest.raises(TypeError, match=r"a recurrent layer's state is a dict of named tensors .*; got int 5"):
        cache.update_layer(0, 5)
    assert cache.layer(0) is held
    assert_unchanged(cache, before)
    continues(model, cache)


def re_shape(shape):
    return r"\(" + ", ".join(str(size) for size in shape) + r"\)"


@pytest.mark.parametrize("preset", ["lstm-tiny", "mamba-tiny"])
def test_what_a_model_may_continue_from_is_still_accepted(preset):
    # Another float dtype (the model casts it: a float32 cache continued in bf16), other rows (the model checks them
    # against its inputs; a state of one row broadcasts), None (the layer starts from zero), and any names for an
    # empty layer (the model's own first write).
    model, cache = filled(preset)
    held = cache.layer(0)
    cache.update_layer(0, {name: value.double() for name, value in held.items()})
    cache.update_layer(0, {name: value.float() for name, value in held.items()})
    continues(model, cache)
    cache.update_layer(0, {name: value[:1] for name, value in held.items()})
    cache.update_layer(0, None)
    cache.update_layer(0, held)
    continues(model, cache)
    empty = SeqzooCache.for_model(model)
    empty.update_layer(0, {"anything": torch.zeros(2, 3)})
    assert sorted(empty.layer(0)) == ["anything"]


def test_a_first_state_that_no_layer_could_read_is_refused():
    cache = SeqzooCache(["recurrent"])
    with pytest.raises(TypeError, match=r"^update_layer\(0, \.\.\.\): a recurrent layer's state is a non-empty dict "
                                        r"of named tensors \(or None, to start the layer from zero\); got int 5"):
        cache.update_layer(0, 5)
    with pytest.raises(TypeError, match=r"non-empty dict .*; got dict \{\}"):
        cache.update_layer(0, {})
    with pytest.raises(TypeError, match=r"state\['h'\] is float 1.0; a state holds tensors with the batch as "):
        cache.update_layer(0, {"h": 1.0})
    with pytest.raises(ValueError, match=r"state\['h'\] is a 0-d tensor"):
        cache.update_layer(0, {"h": torch.tensor(1.0)})
    assert cache.layer(0) is None


# -- rows ------------------------------------------------------------------------------------------------------------

ROW_PRESETS = [("lstm-tiny", {}), ("hybrid-tiny", {"mixer_types": ["attention", "mamba"]}), ("transformer-tiny", {})]

BAD_ROWS = [
    # (method, argument, error, what the message says)
    ("batch_select_indices", 0, TypeError, r"batch_select_indices\(0\): got int 0; allowed is a 1-d tensor"),
    ("batch_select_indices", True, TypeError, r"batch_select_indices\(True\): got bool True; allowed"),
    ("batch_select_indices", torch.tensor(True), TypeError, r"tensor of shape \(\) and dtype torch.bool"),
    ("batch_select_indices", torch.tensor([True, False, True]), TypeError, r"mask.nonzero\(\).flatten\(\)"),
    ("batch_select_indices", torch.tensor([0.0, 1.0]), TypeError, r"dtype torch.float32\): allowed is a 1-d tensor "
                                                                  r"of int64 or int32, or a list or tuple of ints"),
    ("batch_select_indices", torch.tensor([[0, 1]]), TypeError, r"tensor of shape \(1, 2\)"),
    ("batch_select_indices", [0, 5], ValueError, r"indices \[0, 5\] name rows from 0 to 5, but this cache holds 3 "
                                                 r"row\(s\): each index is from 0 to 2"),
    ("batch_select_indices", [], ValueError, r"no row is named"),
    ("batch_select_indices", [True, 0], TypeError, r"True is no row index"),
    ("batch_select_indices", [0, 1.0], TypeError, r"1.0 is no row index"),
    ("reorder_cache", torch.tensor([0, 1, 5]), ValueError, r"^reorder_cache: the indices \[0, 1, 5\]"),
    ("reorder_cache", torch.tensor([-1, 0, 1]), ValueError, r"rows from -1 to 1, but this cache holds 3"),
    ("reorder_cache", torch.tensor([0.0, 1.0, 2.0]), TypeError, r"^reorder_cache\(tensor of shape \(3,\) and dtype "
                                                                r"torch.float32\)"),
    ("batch_repeat_interleave", 0, ValueError, r"^batch_repeat_interleave\(0\): .*an int >= 1 \(0 would leave the "
                                               r"cache no rows\)"),
    ("batch_repeat_interleave", -1, ValueError, r"an int >= 1"),
    ("batch_repeat_interleave", True, TypeError, r"batch_repeat_interleave\(True\): .*; got bool True"),
    ("batch_repeat_interleave", 2.0, TypeError, r"; got float 2.0"),
]


@pytest.mark.parametrize("preset, overrides", ROW_PRESETS, ids=[preset for preset, _ in ROW_PRESETS])
def test_rows_named_by_anything_but_a_list_of_rows_are_refused_before_any_layer_changes(preset, overrides):
    # transformers' layers took an int (dropping the batch dimension), a bool (adding one) and repeats of 0 (an
    # empty cache); a hybrid's attention layer, cut before its recurrent layer refused, held other rows.
    model, cache = filled(preset, **overrides)
    before = snapshot(cache)
    for method, argument, error, message in BAD_ROWS:
        with pytest.raises(error, match=message):
            getattr(cache, method)(argument)
        assert_unchanged(cache, before)
    continues(model, cache)


def test_rows_named_by_a_list_or_a_tuple_are_those_transformers_dynamic_cache_takes_as_a_tensor():
    model, cache = filled("transformer-tiny")
    reference = DynamicCache()
    for idx, entry in enumerate(cache.layers):
        reference.update(entry.keys.clone(), entry.values.clone(), idx)
    cache.reorder_cache([2, 0, 1])
    reference.reorder_cache(torch.tensor([2, 0, 1]))
    cache.batch_select_indices((2, 0))
    reference.batch_select_indices(torch.tensor([2, 0]))
    cache.batch_select_indices(torch.tensor([1], dtype=torch.int32))
    reference.batch_select_indices(torch.tensor([1]))
    for ours, theirs in zip(cache.layers, reference.layers, strict=True):
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)


def test_a_recurrent_cache_reordered_by_a_list_continues_those_rows():
    model, cache = filled("lstm-tiny")
    cache.reorder_cache([2, 0, 0])
    with torch.no_grad():
        torch.testing.assert_close(model(IDS[[2, 0, 0], 5:], cache=cache).logits[:, -1],
                                   model(IDS[[2, 0, 0]]).logits[:, -1])


# -- positions and layer indices --------------------------------------------------------------------------------------

def test_a_count_of_positions_that_is_no_count_is_refused():
    model, cache = filled("lstm-tiny")
    with pytest.raises(TypeError, match=r"^advance\(True\): the number of positions seen is an int >= 0; got bool"):
        cache.advance(True)
    with pytest.raises(ValueError, match=r"^advance\(-10\): the number of positions seen is an int >= 0"):
        cache.advance(-10)
    with pytest.raises(TypeError, match=r"^advance\('1'\): .*; got str '1'"):
        cache.advance("1")
    with pytest.raises(TypeError, match=r"got float 1.0"):
        cache.advance(1.0)
    assert cache.get_seq_length() == 5
    cache.advance(0)
    continues(model, cache)


@pytest.mark.parametrize("method", ["layer", "update_layer"])
def test_a_layer_index_out_of_range_or_of_another_type_is_refused_naming_the_layers(method):
    cache = SeqzooCache(["recurrent", "attention"])
    call = (lambda idx: cache.layer(idx)) if method == "layer" else (lambda idx: cache.update_layer(idx, None))
    with pytest.raises(IndexError, match=rf"^{method}\(99\): this cache has 2 layer\(s\); a layer index is from 0 to "
                                         r"1 \(or from -2, counting from the end\)"):
        call(99)
    with pytest.raises(IndexError, match=r"this cache has 2 layer\(s\)"):
        call(-3)
    for bad in ("0", True, 0.0):
        with pytest.raises(TypeError, match=rf"^{method}\({bad!r}\): a layer index is an int from 0 to 1; got "
                                            rf"{type(bad).__name__}"):
            call(bad)
    assert cache.layer(-1) is cache.layers[1]  # from the end, as a list's


def test_a_filled_layer_given_no_dict_is_refused_and_the_cache_continues():
    # update_layer(0, 5) was stored, and the next forward failed with AttributeError: 'int' object has no 'values'.
    model, cache = filled("lstm-tiny")
    with pytest.raises(TypeError, match=r"^update_layer\(0, \.\.\.\): a recurrent layer's state is a dict of named "
                                        r"tensors \(or None, to start the layer from zero\); got int 5"):
        cache.update_layer(0, 5)
    continues(model, cache)


# -- layouts ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("given, shown", [(None, "NoneType None"), ("lstm-tiny", "str 'lstm-tiny'"),
                                          (torch.nn.Linear(2, 2), "Linear"), (LlamaConfig(), "LlamaConfig")])
def test_a_cache_for_anything_but_a_seqzoo_model_or_config_is_refused_naming_it(given, shown):
    with pytest.raises(TypeError, match=rf"^SeqzooCache.for_model takes a seqzoo model or its config .*; got "
                                        rf"{shown}"):
        SeqzooCache.for_model(given)
    if isinstance(given, str):
        with pytest.raises(TypeError, match=r"seqzoo.create_model\('lstm-tiny'\)"):
            SeqzooCache.for_model(given)


def test_a_layout_that_is_no_list_of_layers_is_refused():
    with pytest.raises(TypeError, match=r"^SeqzooCache: layer_kinds is a list with one name per layer, e\.g\. "
                                        r"\['recurrent', 'attention'\]; got str 'recurrent'"):
        SeqzooCache("recurrent")  # read letter by letter, it was refused as the kinds 'r', 'e', 'c', ...
    with pytest.raises(TypeError, match=r"layer_kinds is a list .*; got NoneType None"):
        SeqzooCache(None)
    with pytest.raises(TypeError, match=r"mixer_types is a list .*; got str 'rnn'"):
        SeqzooCache(["recurrent"], mixer_types="rnn")
    with pytest.raises(ValueError, match=r"mixer_types names 2 mixer\(s\) \['rnn', 'gru'\] for 1 layer\(s\)"):
        SeqzooCache(["recurrent"], mixer_types=["rnn", "gru"])
    assert SeqzooCache(("recurrent", "attention")).layer_kinds == ("recurrent", "attention")
    assert copy.deepcopy(SeqzooCache(iter(["recurrent"]), mixer_types=("rnn",))).mixer_types == ("rnn",)


def test_the_deprecated_get_and_set_of_an_attention_layer_are_refused_by_name():
    # (a DynamicLayer is no dict of named states: set ended in "'DynamicLayer' object is not a mapping")
    cache = SeqzooCache(["recurrent", "attention"])
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match=r"^set\(1, \.\.\.\): layer 1 of this cache is "
                                                                      r"an attention layer"):
        cache.set(1, "h", torch.zeros(1, 2))
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match=r"^get\(1, \.\.\.\): layer 1 .* attention"):
        cache.get(1, "h")
    assert cache.layer(1) is cache.layers[1] and not cache.layers[1].is_initialized


def test_transformers_update_of_a_recurrent_layer_is_refused_naming_what_to_call():
    # Cache.update(key_states, value_states, layer_idx) ended in AttributeError: 'StateLayer' object has no
    # attribute 'update'.
    model, cache = filled("hybrid-tiny")
    key = torch.zeros(3, 2, 1, 16)
    with pytest.raises(ValueError, match=r"recurrent layer, which holds a state of named tensors \(conv, ssm\), not "
                                         r"keys and values; .*cache.update_layer\(layer_idx, state\)"):
        cache.update(key, key, 0)
    continues(model, cache)
