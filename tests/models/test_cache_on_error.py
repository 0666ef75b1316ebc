"""A forward that fails part way through the layers (a layer's error, memory running out) leaves the cache it was
given as it was: every recurrent state, every attention layer's keys and values, the position count. Retried, the
step then gives what it would have given the first time (``SeqzooCache.unchanged_on_error``)."""

from __future__ import annotations

import copy

import pytest
import torch

from seqzoo.cache import SeqzooCache, StateLayer
from seqzoo.models.compat import output_cache
from tests.conftest import FAMILIES, SEQ2SEQ_FAMILIES, tiny_model

IDS = torch.tensor([[5, 17, 33, 8, 4, 12], [9, 3, 77, 21, 6, 40]])


class OutOfMemory(RuntimeError):
    """What a layer past the first raises here (as torch's out-of-memory error would)."""


def snapshot(cache: SeqzooCache) -> tuple:
    entries = []
    for entry in cache.layers:
        if isinstance(entry, StateLayer):
            entries.append({name: value.clone() for name, value in (entry.state or {}).items()})
        else:
            entries.append((entry.keys.clone(), entry.values.clone()) if getattr(entry, "is_initialized", False)
                           and entry.keys is not None else None)
    return cache.get_seq_length(), entries


def assert_same(a: tuple, b: tuple) -> None:
    assert a[0] == b[0]
    for x, y in zip(a[1], b[1]):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for name in x:
                assert torch.equal(x[name], y[name]), name
        elif x is None:
            assert y is None
        else:
            assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])


def failing_last_layer(layers):
    """Hook the last layer to raise after it ran (its state or keys already computed, the earlier layers' too)."""
    def fail(*args):
        raise OutOfMemory("out of memory in the last layer")
    return layers[-1].register_forward_hook(fail)


@pytest.mark.parametrize("preset", sorted(set(FAMILIES.values())))
def test_a_causal_lm_step_that_fails_leaves_the_cache_as_it_was(preset):
    model = tiny_model(preset)
    ids = torch.randint(3, 30, (2, 5))
    step = torch.randint(3, 30, (2, 1))
    with torch.no_grad():
        cache = output_cache(model(ids, use_cache=True))
        expected = model(step, cache=copy.deepcopy(cache)).logits
        before = snapshot(cache)
        handle = failing_last_layer(model.model.layers)
        for tokens in (step, torch.cat([step, step], dim=1)):  # a decode step, and several tokens at once
            with pytest.raises(OutOfMemory):
                model(tokens, cache=cache)
            assert_same(snapshot(cache), before)
        handle.remove()
        torch.testing.assert_close(model(step, cache=cache).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["gru-tiny", "rwkv7-tiny", "mamba-tiny", "transformer-tiny"])
def test_a_failure_in_the_head_or_the_loss_leaves_the_cache_as_it_was(preset):
    # After the layers: the vocabulary head (where a long prompt's logits run out of memory) and the labels' check.
    model = tiny_model(preset)
    with torch.no_grad():
        cache = output_cache(model(torch.randint(3, 30, (2, 4)), use_cache=True))
        before = snapshot(cache)
        step = torch.randint(3, 30, (2, 1))
        expected = model(step, cache=copy.deepcopy(cache)).logits
        handle = failing_last_layer([model.lm_head])
        with pytest.raises(OutOfMemory):  # the decode step's shortcut (its head is called as a module here)
            model(step, cache=cache)
        assert_same(snapshot(cache), before)
        handle.remove()
        with pytest.raises(ValueError, match="labels must have shape"):
            model(step, cache=cache, labels=torch.zeros(2, 3, dtype=torch.long))
        assert_same(snapshot(cache), before)
        torch.testing.assert_close(model(step, cache=cache).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["rnn-tiny", "gru-tiny", "rwkv7-tiny", "hybrid-tiny"])
def test_a_cache_whose_later_layer_does_not_fit_is_left_as_it_was(preset):
    # No hook: the decode step's shortcut (classic, RWKV-7) and the general path both meet a state of the wrong width
    # in the last layer, after the first has run.
    model = tiny_model(preset)
    with torch.no_grad():
        cache = output_cache(model(torch.randint(3, 30, (1, 4)), use_cache=True))
        last = len(cache.layers) - 1
        entry = cache.layers[last]
        if isinstance(entry, StateLayer):
            entry.state = {name: torch.cat([value, value], dim=-1) for name, value in entry.state.items()}
        else:
            entry.keys = torch.cat([entry.keys, entry.keys], dim=-1)
        before = snapshot(cache)
        for general in (False, True):
            with pytest.raises((RuntimeError, ValueError)):  # (torch's error, or a kernel's check)
                model(torch.tensor([[5]]), cache=cache, output_hidden_states=general)
            assert_same(snapshot(cache), before)


@pytest.mark.parametrize("preset", sorted(SEQ2SEQ_FAMILIES.values()))
def test_a_seq2seq_step_that_fails_leaves_the_cache_as_it_was(preset):
    model = tiny_model(preset)
    ids = torch.randint(3, 30, (2, 5))
    target = torch.randint(3, 30, (2, 3))
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=ids)
        cache = output_cache(model(encoder_outputs=encoded, decoder_input_ids=target, use_cache=True))
        step = torch.randint(3, 30, (2, 1))
        expected = model(encoder_outputs=encoded, decoder_input_ids=step, cache=copy.deepcopy(cache)).logits
        before = snapshot(cache)
        for failing in (model.model.decoder.layers, [model.lm_head]):
            handle = failing_last_layer(failing)
            with pytest.raises(OutOfMemory):
                model(encoder_outputs=encoded, decoder_input_ids=step, cache=cache)
            assert_same(snapshot(cache), before)
            handle.remove()
        torch.testing.assert_close(model(encoder_outputs=encoded, decoder_input_ids=step, cache=cache).logits,
                                   expected, rtol=0, atol=0)


def test_what_the_cache_keeps_is_restored_whatever_the_body_raised():
    cache = SeqzooCache(["recurrent", "attention"])
    cache.update_layer(0, {"h": torch.ones(1, 2)})
    cache.layers[1].update(torch.ones(1, 1, 2, 4), torch.ones(1, 1, 2, 4))
    cache.advance(2)
    before = snapshot(cache)
    with pytest.raises(KeyboardInterrupt):
        with cache.unchanged_on_error():
            cache.update_layer(0, {"h": torch.zeros(1, 2)})
            cache.layers[1].update(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4))
            cache.advance(1)
            raise KeyboardInterrupt
    assert_same(snapshot(cache), before)
    with cache.unchanged_on_error():  # without an error, what the body did stays
        cache.advance(1)
    assert cache.get_seq_length() == 3


def test_an_empty_cache_a_failed_forward_left_is_free_for_another_model():
    # An empty cache takes the layout of the model that fills it; one whose forward failed filled nothing, and another
    # model of the same layer kinds must not be told the cache was built for the first.
    cache = SeqzooCache(["recurrent", "recurrent"])
    gru, rnn = tiny_model("gru-tiny"), tiny_model("rnn-tiny")
    with torch.no_grad():
        handle = failing_last_layer(gru.model.layers)
        with pytest.raises(OutOfMemory):
            gru(IDS, cache=cache)
        handle.remove()
        assert cache.model_type is None and cache.mixer_types is None
        torch.testing.assert_close(rnn(IDS, cache=cache).logits, rnn(IDS).logits, rtol=0, atol=0)
        with pytest.raises(ValueError, match="built for a seqzoo_rnn model"):
            gru(IDS, cache=cache)


@pytest.mark.parametrize("preset", ["transformer-tiny", "hybrid-tiny"])
def test_what_is_kept_does_not_hold_the_old_keys_and_values(preset):
    # Keeping the layers' old keys for a rollback would hold twice the cache at the peak of every step: only their
    # lengths are kept, so each layer's old keys are freed once it has grown them.
    import gc
    import weakref

    model = tiny_model(preset)
    with torch.no_grad():
        cache = output_cache(model(torch.randint(3, 30, (1, 8)), use_cache=True))
        attention = [entry for entry in cache.layers if not isinstance(entry, StateLayer)]
        old = [weakref.ref(entry.keys) for entry in attention] + [weakref.ref(entry.values) for entry in attention]
        alive = []

        def at_last_layer(*args):
            gc.collect()
            alive.extend(ref() is not None for ref in old)

        handle = model.model.layers[-1].register_forward_hook(at_last_layer)
        model(torch.tensor([[5]]), cache=cache)
        handle.remove()
    assert alive and not any(alive)


@pytest.mark.parametrize("preset", ["transformer-tiny", "hybrid-tiny", "seq2seq-transformer-tiny", "lstm-tiny"])
def test_a_cache_continued_by_the_model_in_another_dtype(preset):
    """Filled in float32, continued in bf16: an attention layer's keys and values are refused by name, before the
    cache changes (torch's error about query, key and value dtypes came from inside attention); a recurrent state is
    the step's input and is cast, as before."""
    model = tiny_model(preset)
    ids = torch.randint(3, 30, (1, 4))
    with torch.no_grad():
        if preset.startswith("seq2seq"):
            encoded = model.get_encoder()(input_ids=ids)
            cache = output_cache(model(encoder_outputs=encoded, decoder_input_ids=ids[:, :2], use_cache=True))
            bf16 = copy.deepcopy(model).to(torch.bfloat16)
            encoded = bf16.get_encoder()(input_ids=ids)
            step = lambda: bf16(encoder_outputs=encoded, decoder_input_ids=ids[:, 2:3], cache=cache)  # noqa: E731
        else:
            cache = output_cache(model(ids, use_cache=True))
            bf16 = copy.deepcopy(model).to(torch.bfloat16)
            step = lambda: bf16(torch.tensor([[5]]), cache=cache)  # noqa: E731
        before = snapshot(cache)
        if preset == "lstm-tiny":
            assert step().logits.dtype == torch.bfloat16
            return
        with pytest.raises(ValueError, match=r"holds an attention layer's keys and values in torch.float32, but the "
                                             r"model computes them in torch.bfloat16"):
            step()
        assert_same(snapshot(cache), before)
