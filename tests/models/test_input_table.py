"""The classic models' input table (``seqzoo.layers.recurrent.InputTable``): layer 0's input projection looked up by
token in a decode step instead of multiplied. The same logits and states as the cells' own projection (and as
torch.nn's layers stepped, in test_classic_step.py); a new cache decodes with the weights as they are, whatever
changed them, and one table serves every cache while they stay; never used where gradients are recorded; and only
where its policy says."""

from __future__ import annotations

import contextvars
import copy
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

from seqzoo.kernels.rnn_cells import fused
from seqzoo.layers.recurrent import InputTable, _BuiltTable
from seqzoo.models.compat import output_cache
from tests.conftest import decode_step_inputs, tiny_model
from tests.models.test_classic_step import VARIANTS

LAST = {}  # the cache of the latest decode()


def decode(model, prompt, prompt_mask, steps, step_masks, grad=False):
    """Prefill, then feed ``steps`` one token at a time; the logits of every step and the final states."""
    with torch.set_grad_enabled(grad):
        cache = output_cache(model(prompt, attention_mask=prompt_mask, use_cache=True))
        mask, logits = prompt_mask, []
        for t in range(steps.shape[1]):
            mask = torch.cat([mask, step_masks[:, t : t + 1]], dim=1)
            out = model(steps[:, t : t + 1], attention_mask=mask, cache=cache, use_cache=True)
            cache = output_cache(out)
            logits.append(out.logits[:, -1])
    LAST["cache"] = cache
    states = [dict(cache.layer(i)) for i in range(model.config.num_hidden_layers)]
    return torch.stack(logits, 1), states


def built_of(cache=None):
    """The table a cache decodes with (None: none), by default the latest decode()'s cache's."""
    return getattr(LAST["cache"] if cache is None else cache, InputTable.CACHE_ATTRIBUTE, None)


def assert_same_decoding(a, b, tol):
    torch.testing.assert_close(a[0], b[0], rtol=tol, atol=tol)
    for state_a, state_b in zip(a[1], b[1]):
        assert state_a.keys() == state_b.keys()
        for name in state_a:
            torch.testing.assert_close(state_a[name], state_b[name], rtol=tol, atol=tol)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_table_decodes_as_the_cells_own_projection(variant, batch):
    preset, overrides = VARIANTS[variant]
    model = tiny_model(preset, **overrides).double()
    args = decode_step_inputs(batch, model.config.vocab_size - 3)  # rows padded in the prompt and in the steps
    expected = decode(model.set_input_table("never"), *args)
    assert built_of() is None
    got = decode(model.set_input_table("always"), *args)
    assert built_of().table.shape == (model.config.vocab_size, model.model.layers[0].weight_ih.shape[0])
    assert_same_decoding(got, expected, 1e-12)
    assert not torch.equal(got[0], decode(tiny_model(preset, seed=1, **overrides).double(), *args)[0])


@pytest.mark.parametrize("missing", ["bias_ih", "bias_hh", "both"])
@pytest.mark.parametrize("preset", ["lstm-tiny", "gru-tiny", "rnn-tiny"])
def test_a_layer_without_biases_takes_the_table(preset, missing):
    model = tiny_model(preset).double()
    layer = model.model.layers[0]
    for name in ("bias_ih", "bias_hh") if missing == "both" else (missing,):
        setattr(layer, name, None)
    args = decode_step_inputs(2, model.config.vocab_size - 3)
    expected = decode(model.set_input_table("never"), *args)
    got = decode(model.set_input_table("always"), *args)
    assert built_of() is not None
    assert_same_decoding(got, expected, 1e-12)


@pytest.mark.parametrize("kind", ["tanh", "relu", "lstm", "gru"])
def test_step_layers_with_input_gates_equals_its_own_projection(kind):
    """The kernel's own contract: layer 0's projection given (as the input bias of a cell with an empty input) or
    computed, for one row and for several rows with different tokens and a padded row."""
    gen = torch.Generator().manual_seed(0)
    gates, hidden, width = {"lstm": 4, "gru": 3}.get(kind, 1), 6, 5
    params = [[torch.randn(gates * hidden, size, generator=gen, dtype=torch.float64)
               for size in (width if i == 0 else hidden, hidden)]
              + [torch.randn(gates * hidden, generator=gen, dtype=torch.float64) for _ in range(2)] for i in range(2)]
    for batch, mask in ((1, None), (3, torch.tensor([[True], [False], [True]]))):
        x = torch.randn(batch, 1, width, generator=gen, dtype=torch.float64)
        hx = [[torch.randn(batch, hidden, generator=gen, dtype=torch.float64)
               for _ in range(2 if kind == "lstm" else 1)] for _ in range(2)]
        projection = F.linear(x[:, 0], params[0][0], params[0][2])
        y, new = fused.step_layers(kind, x, hx, params, mask, projection)
        y_ref, new_ref = fused.step_layers(kind, x, hx, params, mask)
        torch.testing.assert_close(y, y_ref, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(new, new_ref, rtol=1e-13, atol=1e-13)
        y_off, _ = fused.step_layers(kind, x, hx, params, mask, projection + 0.1)
        assert not torch.allclose(y_off, y_ref)  # the given projection is what layer 0 reads


def _bits(t):
    # (torch.equal takes -0.0 for +0.0: the integer view tells them apart)
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("kind, cell", [("tanh", torch.rnn_tanh_cell), ("relu", torch.rnn_relu_cell)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("biases", ["both", "none"])
@pytest.mark.parametrize("by_columns", [False, True])
def test_elman_layer0_with_input_gates_is_the_cell_bit_for_bit(kind, cell, dtype, biases, by_columns):
    """An Elman stack whose layer 0 is given its projection runs act(linear(h, weight_hh, bias_hh) + gates) for that
    layer itself: bit for bit what torch's cells give with the projection as the input bias of an empty input, then
    layer 1 on its output, and a padded row keeping both layers' states (two layers, one row and three, weights by
    rows and by columns, both biases or neither, as ``_params`` lists them)."""
    gen = torch.Generator().manual_seed(1)
    hidden = 64

    def matrix():
        weight = (torch.randn(hidden, hidden, generator=gen) / 4).to(dtype)
        return weight.t().contiguous().t() if by_columns else weight

    def vector():
        return torch.randn(hidden, generator=gen).to(dtype)

    for batch, mask in ((1, None), (3, torch.tensor([[True], [False], [True]]))):
        params = [fused._params(matrix(), matrix(), *((vector(), vector()) if biases == "both" else (None, None)))
                  for _ in range(2)]
        hx = [[torch.randn(batch, hidden, generator=gen).to(dtype)] for _ in range(2)]
        gates = torch.randn(batch, hidden, generator=gen).to(dtype)
        x = torch.randn(batch, 1, hidden, generator=gen).to(dtype)  # (not read: layer 0's projection is given)
        y, new = fused.step_layers(kind, x, hx, params, mask, gates)
        bias_hh = params[0][3] if biases == "both" else None
        first = cell(gates.new_empty(batch, 0), hx[0][0], gates.new_empty(hidden, 0), params[0][1], gates, bias_hh)
        second = cell(first, hx[1][0], *params[1])
        expected_new, expected_y = [first, second], second
        if mask is not None:
            expected_new = [torch.where(mask, n, old[0]) for n, old in zip(expected_new, hx)]
            expected_y = torch.where(mask, second, torch.zeros_like(second))
        assert torch.equal(_bits(y[:, 0]), _bits(expected_y))
        assert [len(states) for states in new] == [1, 1]
        for got, expected in zip(new, expected_new):
            assert torch.equal(_bits(got[0]), _bits(expected))


def _fused_optimizer_step(model):
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    torch.optim.AdamW(model.parameters(), lr=0.1, fused=True).step()


CHANGES = {
    "embedding in place": lambda m: m.model.embed_tokens.weight.mul_(1.5),
    "weight_ih in place": lambda m: m.model.layers[0].weight_ih.add_(0.05),
    "bias_ih in place": lambda m: m.model.layers[0].bias_ih.add_(0.3),
    "load_state_dict": lambda m: m.load_state_dict(tiny_model("gru-tiny", seed=1).state_dict()),
    "embedding replaced": lambda m: m.resize_token_embeddings(m.config.vocab_size + 4),
    "dtype changed": lambda m: m.double(),
    # Changes that leave a weight's version and storage as they were: through .data (peft's merge_and_unload), and
    # a fused optimizer's step (transformers' default optimizer, adamw_torch_fused).
    "embedding through .data": lambda m: m.model.embed_tokens.weight.data.mul_(1.5),
    "weight_ih through .data": lambda m: m.model.layers[0].weight_ih.data.add_(0.05),
    "bias_ih through .data": lambda m: m.model.layers[0].bias_ih.data.add_(0.3),
    "bias_ih removed": lambda m: setattr(m.model.layers[0], "bias_ih", None),
    "fused optimizer step": _fused_optimizer_step,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_new_cache_reads_the_weights_as_they_are_whatever_changed_them(change):
    model = tiny_model("gru-tiny").set_input_table("always")
    args = decode_step_inputs(2, model.config.vocab_size - 3)
    decode(model, *args)
    before = built_of()
    assert before is not None
    with torch.no_grad():
        CHANGES[change](model)
    twin = copy.deepcopy(model).set_input_table("never")
    got = decode(model, *args)
    after = built_of()  # (read before the twin's decode() replaces the latest cache)
    assert_same_decoding(got, decode(twin, *args), 1e-5)
    assert after is not None and after is not before


@pytest.mark.parametrize("change", ["embedding in place", "weight_ih in place", "bias_ih in place",
                                    "load_state_dict", "dtype changed"])
def test_a_cache_takes_a_new_table_when_a_weight_changes_in_a_way_it_can_see(change):
    """Between two steps of one cache: a change through the tensor itself bumps its version, and one that replaces
    its storage moves it; the next step reads a table built again (a copy of the cache, made before, continues the
    same way)."""
    model = tiny_model("gru-tiny").set_input_table("always")
    prompt = decode_step_inputs(2, model.config.vocab_size - 3)[0]
    token = torch.tensor([[7], [7]])  # one token, stepped before and after the change
    with torch.no_grad():
        cache = output_cache(model(prompt, use_cache=True))
        model(token, cache=cache, use_cache=True)
        before = built_of(cache)
        copied = copy.deepcopy(cache)
        CHANGES[change](model)
        twin = copy.deepcopy(model).set_input_table("never")
        got = model(token, cache=cache, use_cache=True).logits
        expected = twin(token, cache=copied, use_cache=True).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert built_of(cache) is not before


def test_one_table_serves_every_cache_while_the_weights_stay():
    """Built once: every later cache checks the weights (tensors, storage, version, values) and takes it; a change
    that leaves no version behind is found by its values."""
    model = tiny_model("lstm-tiny").set_input_table("always")
    args = decode_step_inputs(2, model.config.vocab_size - 3)
    decode(model, *args)
    first = built_of()
    for _ in range(3):
        decode(model, *args)
        assert built_of() is first
    with torch.no_grad():
        model.model.layers[0].weight_ih.data[3, 1] += 0.25  # one value, through .data: no version, same storage
    decode(model, *args)
    assert built_of() is not first
    torch.testing.assert_close(built_of().table, F.linear(
        model.model.embed_tokens.weight, model.model.layers[0].weight_ih, model.model.layers[0].bias_ih))
    # Changes that keep every sum (through .data: no version): two values of a row swapped, two embedding rows.
    weight_ih, embedding = model.model.layers[0].weight_ih.data, model.model.embed_tokens.weight.data
    for index, swapped in (((3, [1, 2]), (3, [2, 1])), (([4, 9],), ([9, 4],))):
        second = built_of()
        data = weight_ih if len(index) == 2 else embedding
        data[index] = data[swapped]
        decode(model, *args)
        assert built_of() is not second


def test_steps_that_record_gradients_do_not_use_the_table():
    model = tiny_model("lstm-tiny").set_input_table("always")
    args = decode_step_inputs(2, model.config.vocab_size - 3)
    logits, _ = decode(model, *args, grad=True)
    assert built_of() is None
    logits.sum().backward()
    # Through the embedding of the stepped tokens and layer 0's input weights (a table would cut both off).
    steps = args[2]
    assert model.model.embed_tokens.weight.grad[steps[0, -1]].abs().sum() > 0
    assert model.model.layers[0].weight_ih.grad.abs().sum() > 0


def test_inference_mode_steps_use_it_and_inference_weights_do_not():
    model = tiny_model("gru-tiny").set_input_table("always")
    args = decode_step_inputs(2, model.config.vocab_size - 3)
    expected = decode(copy.deepcopy(model).set_input_table("never"), *args)
    with torch.inference_mode():
        got = decode(model, *args)
        assert built_of() is not None
    assert_same_decoding(got, expected, 1e-6)
    with torch.inference_mode():  # weights made here cannot say when they change: the cells' own projection
        fresh = tiny_model("gru-tiny").set_input_table("always")
        decode(fresh, *args)
    assert built_of() is None


def test_auto_builds_the_table_for_a_vocabulary_at_most_twice_the_embedding_width():
    args = decode_step_inputs(1, 90)
    small = tiny_model("gru-tiny", hidden_size=50)  # vocabulary 99 <= 2 x 50
    large = tiny_model("gru-tiny", hidden_size=49)  # 99 > 2 x 49
    twice = tiny_model("gru-tiny", hidden_size=50, vocab_size=100)  # 100 == 2 x 50: at most twice
    decode(twice, *args)
    assert built_of() is not None
    for model, built in ((small, True), (large, False)):
        assert model.config.vocab_size == 99
        assert model.model.input_table.policy == "auto"
        decode(model, *args)
        assert (built_of() is not None) is built
    decode(large.set_input_table("always"), *args)
    assert built_of() is not None
    decode(small.set_input_table("never"), *args)
    assert built_of() is None


def test_a_policy_that_does_not_exist_is_refused_and_the_table_is_never_saved(tmp_path):
    model = tiny_model("rnn-tiny")
    with pytest.raises(ValueError, match=r"one of 'auto', 'always', 'never'; got 'on'"):
        model.set_input_table("on")
    assert model.set_input_table("always") is model
    decode(model, *decode_step_inputs(1, 90))
    assert built_of() is not None
    assert set(model.state_dict()) == set(tiny_model("rnn-tiny").state_dict())
    model.save_pretrained(tmp_path)
    assert type(model).from_pretrained(tmp_path).model.input_table.policy == "auto"


@pytest.mark.parametrize("embedding", ["hooked", "max_norm"])
def test_an_embedding_that_does_more_than_look_up_is_read_by_the_cells(embedding):
    """A hook that changes the embedding's output, or ``max_norm`` (which rescales the rows it looks up), makes the
    embedding's output differ from its weight's rows: layer 0 must read the output."""
    model = tiny_model("lstm-tiny")
    if embedding == "hooked":
        model.model.embed_tokens.register_forward_hook(lambda module, args, out: out * 2.0)
    else:
        model.model.embed_tokens.max_norm = 0.5
    args = decode_step_inputs(2, model.config.vocab_size - 3)
    expected = decode(copy.deepcopy(model).set_input_table("never"), *args)
    got = decode(model.set_input_table("always"), *args)
    assert built_of() is None
    assert_same_decoding(got, expected, 1e-6)


def test_the_table_is_used_on_the_cpu_only():
    """On CUDA torch's LSTM / GRU cells hand the input bias to a fused kernel that takes a 1-d bias only."""
    table = InputTable()
    table.set_policy("always")
    weights = [torch.empty(12, 4, device="meta"), torch.empty(12, 4, device="meta"), None, None]
    ids = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        assert table.gates(torch.empty(10, 4, device="meta"), ids, object(), weights) is None
        cpu = [torch.randn(12, 4), torch.randn(12, 4), None, None]
        assert table.gates(torch.randn(10, 4), ids, type("Cache", (), {})(), cpu).shape == (1, 12)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16])
def test_gates_are_the_tokens_table_rows_and_ids_outside_raise(dtype):
    """One row or several, each token's row of the table, whatever the ids' integer dtype; an id outside the
    vocabulary raises the lookup's error, a negative one included (not read from the end)."""
    table = InputTable()
    table.set_policy("always")
    embedding, weights = torch.randn(10, 4), [torch.randn(12, 4), torch.randn(12, 4), torch.randn(12), None]
    cache = type("Cache", (), {})()
    expected = F.linear(embedding, weights[0], weights[2])
    with torch.no_grad():
        for ids in ([[3]], [[0]], [[9]], [[9], [0], [3]]):
            got = table.gates(embedding, torch.tensor(ids, dtype=dtype), cache, weights)
            assert torch.equal(got, expected[[row[0] for row in ids]])
        for bad in (-1, 10):
            with pytest.raises(IndexError, match="out of range"):
                table.gates(embedding, torch.tensor([[bad]], dtype=dtype), cache, weights)


def test_a_copied_cache_shares_its_table_and_copies_no_weights():
    model = tiny_model("gru-tiny").double().set_input_table("always")
    prompt, mask, steps, _ = decode_step_inputs(2, model.config.vocab_size - 3)
    with torch.no_grad():
        cache = output_cache(model(prompt, use_cache=True))
        model(steps[:, :1], cache=cache, use_cache=True)
        copied = copy.deepcopy(cache)
        held = getattr(cache, InputTable.CACHE_ATTRIBUTE)
        assert getattr(copied, InputTable.CACHE_ATTRIBUTE) is held
        assert held.sources[0][0]() is model.model.embed_tokens.weight  # (the model's own, not a copy)
        assert built_of(copied) is held
        first = model(steps[:, 1:2], cache=cache, use_cache=True).logits
        second = model(steps[:, 1:2], cache=copied, use_cache=True).logits
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_each_generate_call_reads_the_weights_it_has_then():
    """transformers' Trainer steps a fused AdamW by default, which leaves the weights' versions as they were: a
    generate() after training must not read rows from before it."""
    model = tiny_model("gru-tiny", hidden_size=50)  # the default policy builds it (vocabulary 99 <= 2 x 50)
    prompt = torch.tensor([[5, 9, 2, 7]])
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=model.config.pad_token_id, output_scores=True,
                  return_dict_in_generate=True)
    model.generate(prompt, **kwargs)
    _fused_optimizer_step(model)
    got = model.generate(prompt, **kwargs)
    expected = copy.deepcopy(model).set_input_table("never").generate(prompt, **kwargs)
    assert torch.equal(got.sequences, expected.sequences)
    torch.testing.assert_close(torch.stack(got.scores), torch.stack(expected.scores), rtol=1e-5, atol=1e-5)


def test_a_reset_cache_checks_the_weights_again():
    """``cache.reset()`` makes a cache new: generate(past_key_values=cache) after a fused optimizer's step (which
    leaves the weights' versions as they were) must not decode with the table from before it."""
    model = tiny_model("gru-tiny", hidden_size=50)
    prompt = torch.tensor([[5, 9, 2, 7]])
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=model.config.pad_token_id, output_scores=True,
                  return_dict_in_generate=True)
    cache = output_cache(model.generate(prompt, **kwargs))
    assert built_of(cache) is not None
    _fused_optimizer_step(model)
    cache.reset()
    assert built_of(cache) is None
    got = model.generate(prompt, past_key_values=cache, **kwargs)
    expected = copy.deepcopy(model).set_input_table("never").generate(prompt, **kwargs)
    assert torch.equal(got.sequences, expected.sequences)
    torch.testing.assert_close(torch.stack(got.scores), torch.stack(expected.scores), rtol=1e-5, atol=1e-5)


def test_torch_save_of_the_model_holds_no_table(tmp_path):
    model = tiny_model("gru-tiny").set_input_table("always")
    decode(model, *decode_step_inputs(1, 90))
    assert model.model.input_table.built is not None
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert loaded.model.input_table.built is None and loaded.model.input_table.policy == "always"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_sees_a_change_its_own_precision_would_round_away(dtype):
    """The values are compared through products with the probe; in bf16 / fp16 those would round away a change of a
    weight whose probe entry is small, so they are computed in float64."""
    model = tiny_model("lstm-tiny", embedding_size=1024, tie_word_embeddings=False, num_hidden_layers=1)
    model = model.to(dtype).set_input_table("always")
    args = decode_step_inputs(1, model.config.vocab_size - 3)
    decode(model, *args)
    first = built_of()
    probe = torch.randn(1024, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    column = int(probe.abs().argmin())  # the probe's smallest entry, as _BuiltTable draws it
    model.model.layers[0].weight_ih.data[5, column] += 0.3
    decode(model, *args)
    assert built_of() is not first


class HandlesFunctionalEmbedding(torch.Tensor):
    """An embedding weight of a subclass (as a quantised one's) whose own lookup is what F.embedding dispatches to:
    its rows are not what a product with the weight gives."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is F.embedding:
            with torch._C.DisableTorchFunctionSubclass():
                return F.embedding(*args, **(kwargs or {})) + 0.5
        return super().__torch_function__(func, types, args, kwargs)


def test_an_embedding_weight_of_a_subclass_is_read_by_the_cells():
    model = tiny_model("gru-tiny", tie_word_embeddings=False)
    embedding = model.model.embed_tokens
    embedding.weight = torch.nn.Parameter(embedding.weight.detach().as_subclass(HandlesFunctionalEmbedding),
                                          requires_grad=False)
    args = decode_step_inputs(2, model.config.vocab_size - 3)
    expected = decode(model.set_input_table("never"), *args)
    got = decode(model.set_input_table("always"), *args)
    assert built_of() is None
    torch.testing.assert_close(got[0].as_subclass(torch.Tensor), expected[0].as_subclass(torch.Tensor), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_a_step_of_token_ids_of_another_integer_dtype_takes_the_table(dtype):
    model = tiny_model("lstm-tiny").set_input_table("always")
    prompt, _, steps, _ = decode_step_inputs(2, model.config.vocab_size - 3)
    results = []
    for ids in (steps, steps.to(dtype)):
        with torch.no_grad():
            cache = output_cache(model(prompt, use_cache=True))
            results.append(torch.stack([model(ids[:, t : t + 1], cache=cache).logits[:, -1] for t in range(4)], 1))
        assert built_of(cache) is not None
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)


def test_a_saved_cache_holds_its_states_not_the_weights_its_table_was_built_from(tmp_path):
    # torch.save(cache) wrote the input table and the embedding and weight_ih it refers to (157 kB for 1 kB of
    # state); the cache is saved without them, and the loaded one builds its table again at its next step.
    model = tiny_model("lstm-tiny").eval().set_input_table("always")
    with torch.no_grad():
        cache = output_cache(model(torch.tensor([[5, 6, 7]]), use_cache=True))
        model(torch.tensor([[8]]), cache=cache, use_cache=True)
    assert built_of(cache) is not None
    state = sum(t.numel() * t.element_size() for t in cache.tensors())
    torch.save(cache, tmp_path / "cache.pt")
    assert (tmp_path / "cache.pt").stat().st_size < state + 20_000
    loaded = torch.load(tmp_path / "cache.pt", weights_only=False)
    assert built_of(loaded) is None
    with torch.no_grad():
        expected = model(torch.tensor([[9]]), cache=cache, use_cache=True).logits
        got = model(torch.tensor([[9]]), cache=loaded, use_cache=True).logits
    assert torch.equal(got, expected) and built_of(loaded) is not None


@pytest.mark.parametrize("where", ["embedding", "weight_ih"])
def test_a_weight_holding_a_nan_does_not_build_the_table_for_every_cache(where):
    """NaN != NaN: the values' check compares bit patterns, so one table still serves every cache; a change of the
    NaN's value is still seen."""
    model = tiny_model("gru-tiny").set_input_table("always")
    args = decode_step_inputs(2, model.config.vocab_size - 3)
    data = (model.model.embed_tokens.weight if where == "embedding" else model.model.layers[0].weight_ih).data
    data[-1, 0] = float("nan")  # (the embedding's last row: a token the steps never feed)
    decode(model, *args)
    first = built_of()
    decode(model, *args)
    assert built_of() is first
    data[-1, 0] = 1.0
    decode(model, *args)
    assert built_of() is not first


def test_the_models_table_keeps_no_weight_alive_that_the_model_replaced():
    # The model holds its latest table between decodes; it held the weights it was built from too, so weights replaced
    # since (load_state_dict(assign=True), resize_token_embeddings) stayed in memory until the next decode on the CPU,
    # and for good where the model was moved to another device (where no table is built).
    model = tiny_model("lstm-tiny").set_input_table("always")
    prompt = torch.tensor([[5, 17, 33]])
    model.generate(prompt, max_new_tokens=2, do_sample=False)
    assert model.model.input_table.built is not None
    replaced = [weakref.ref(model.model.embed_tokens.weight), weakref.ref(model.model.layers[0].weight_ih)]
    model.load_state_dict(tiny_model("lstm-tiny", seed=1).state_dict(), assign=True)
    gc.collect()
    assert [ref() for ref in replaced] == [None, None]
    fresh = tiny_model("lstm-tiny", seed=1).set_input_table("always")
    torch.testing.assert_close(model.generate(prompt, max_new_tokens=4, do_sample=False, output_scores=True,
                                              return_dict_in_generate=True).scores,
                               fresh.generate(prompt, max_new_tokens=4, do_sample=False, output_scores=True,
                                              return_dict_in_generate=True).scores, rtol=0, atol=0)


# -- in a block holding the model fixed (model.fixed_while_decoding()) ----------------------------------------------


@pytest.fixture
def value_checks(monkeypatch):
    """The table each check of its values against the weights was made on (``_BuiltTable.same_values``)."""
    calls = []
    real = _BuiltTable.same_values

    def counted(self, sources):
        calls.append(self)
        return real(self, sources)

    monkeypatch.setattr(_BuiltTable, "same_values", counted)
    return calls


def planned_decode(model, prompt, steps):
    """A prefill, then ``steps`` (B, T) fed one token at a time without a mask (the steps the cache's plan runs): the
    logits of every step and the final states."""
    with torch.no_grad():
        cache = output_cache(model(prompt, use_cache=True))
        logits = [model(steps[:, t : t + 1], cache=cache, use_cache=True).logits[:, -1] for t in range(steps.shape[1])]
    LAST["cache"] = cache
    return torch.stack(logits, 1), [dict(cache.layer(i)) for i in range(model.config.num_hidden_layers)]


PLAIN = (torch.tensor([[3, 9, 14, 2, 30], [7, 7, 1, 0, 12]]), torch.tensor([[5, 8, 21, 4], [2, 19, 6, 11]]))


def test_in_a_block_holding_the_model_fixed_its_values_are_checked_at_the_first_cache_only(value_checks):
    """The caller promises the model stays as it is in the block: the first cache there checks the table's values (or
    builds it), the block's later caches take it on the weights' tensors, storage and version alone. Every cache
    outside a block, and the first of each new block, checks again. The same logits as without the table."""
    model = tiny_model("gru-tiny").set_input_table("always")
    expected = planned_decode(copy.deepcopy(model).set_input_table("never"), *PLAIN)
    planned_decode(model, *PLAIN)  # (built outside a block: no check)
    table = built_of()
    for block in range(2):
        with model.fixed_while_decoding():
            for _ in range(3):
                assert_same_decoding(planned_decode(model, *PLAIN), expected, 1e-5)
                assert built_of() is table
        assert len(value_checks) == block + 1
    for count in (4, 5):
        planned_decode(model, *PLAIN)
        assert len(value_checks) == count - 1 and built_of() is table


def test_a_table_built_in_the_block_is_not_checked_again_there(value_checks):
    model = tiny_model("lstm-tiny").set_input_table("always")
    with model.fixed_while_decoding():
        planned_decode(model, *PLAIN)
        table = built_of()
        planned_decode(model, *PLAIN)
    assert value_checks == [] and built_of() is table


@pytest.mark.parametrize("change", ["weight_ih through .data", "fused optimizer step"])
def test_a_change_the_version_does_not_show_is_seen_at_the_next_blocks_first_cache(change, value_checks):
    """Made between two blocks, or inside one (which breaks the block's promise: unseen until it ends), a change
    that leaves the weights' versions as they were is read by the first cache after the block."""
    model = tiny_model("gru-tiny").set_input_table("always")
    with model.fixed_while_decoding():
        planned_decode(model, *PLAIN)
    with torch.no_grad():
        CHANGES[change](model)
    twin = copy.deepcopy(model).set_input_table("never")
    with model.fixed_while_decoding():
        assert_same_decoding(planned_decode(model, *PLAIN), planned_decode(twin, *PLAIN), 1e-5)
        before = model.model.input_table.built
        with torch.no_grad():
            model.model.layers[0].weight_ih.data.add_(0.05)  # (inside the block, after its first cache)
        twin = copy.deepcopy(model).set_input_table("never")
        planned_decode(model, *PLAIN)
        assert built_of() is before  # (unseen in the block, as fixed_while_decoding() says)
    assert_same_decoding(planned_decode(model, *PLAIN), planned_decode(twin, *PLAIN), 1e-5)
    assert built_of() is not before


def test_a_change_through_the_weight_itself_is_seen_in_the_block():
    model = tiny_model("rnn-tiny").set_input_table("always")
    with model.fixed_while_decoding():
        planned_decode(model, *PLAIN)
        before = built_of()
        with torch.no_grad():
            model.model.layers[0].weight_ih.add_(0.05)  # (its version moves)
        twin = copy.deepcopy(model).set_input_table("never")
        assert_same_decoding(planned_decode(model, *PLAIN), planned_decode(twin, *PLAIN), 1e-5)
        assert built_of() is not before


def test_a_block_holding_another_model_or_one_that_ended_trusts_nothing(value_checks):
    model = tiny_model("gru-tiny").set_input_table("always")
    other = tiny_model("gru-tiny", seed=1)
    planned_decode(model, *PLAIN)
    with other.fixed_while_decoding():
        planned_decode(model, *PLAIN)
        planned_decode(model, *PLAIN)
    assert len(value_checks) == 2
    with model.fixed_while_decoding():
        planned_decode(model, *PLAIN)
        copied = contextvars.copy_context()  # (holds the block, which ends below)
    assert len(value_checks) == 3
    copied.run(planned_decode, model, *PLAIN)
    assert len(value_checks) == 4


def test_a_cache_stepped_in_a_block_that_ended_checks_the_values_of_the_table_it_takes_then(value_checks):
    """A cache planned in a block, stepped on in a context copied while the block was open (its task's) after the
    block ended: the table it takes then (built in the block for another cache) is checked against the weights, for
    the block's promise ended with it."""
    model = tiny_model("gru-tiny").set_input_table("always")
    with model.fixed_while_decoding():
        with torch.no_grad():
            cache = output_cache(model(PLAIN[0], use_cache=True))
            model(PLAIN[1][:, :1], cache=cache, use_cache=True)
            model.model.layers[0].weight_ih.add_(0.05)  # (its version moves: the next cache builds another table)
        planned_decode(model, *PLAIN)
        copied = contextvars.copy_context()
    assert value_checks == []
    with torch.no_grad():
        model.model.layers[0].weight_ih.data.add_(0.05)  # (after the block: no version)
    twin = copy.deepcopy(model).set_input_table("never")
    twin_cache = copy.deepcopy(cache)
    step = PLAIN[1][:, 1:2]
    with torch.no_grad():
        got = copied.run(model, step, cache=cache, use_cache=True).logits
        expected = twin(step, cache=twin_cache, use_cache=True).logits
    assert len(value_checks) == 1
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
