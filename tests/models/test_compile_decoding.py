"""``model.compile_decoding()``: later decode steps run through ``torch.compile`` of the forward, every other call
stays eager, and what is computed does not change. Dynamo traces with the cheap "eager" backend here; what inductor
buys is measured in benchmarks/bench_compile.py and benchmarks/bench_decode.py."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch._dynamo.utils import counters

from seqzoo.kernels import registry as kernel_registry
from seqzoo.models.compat import output_cache
from seqzoo.models.compiled_decoding import fixed_model_options
from tests.conftest import FAMILIES, tiny_model

PROMPT = torch.tensor([[5, 17, 33, 8, 61], [70, 12, 3, 98, 44]])


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("fixed", [False, True], ids=["guarded", "fixed_model_options"])
@pytest.mark.parametrize("family", ["lstm", pytest.param("rwkv7", marks=pytest.mark.newest_release_only),
                                    "transformer"])
def test_compiled_steps_generate_what_eager_steps_do(family, fixed):
    model = tiny_model(FAMILIES[family])
    settings = dict(max_new_tokens=6, do_sample=False)
    with torch.no_grad():
        greedy, beams = model.generate(PROMPT, **settings), model.generate(PROMPT, num_beams=3, **settings)
        assert model.compile_decoding(backend="eager", **(fixed_model_options() if fixed else {})) is model
        assert torch.equal(model.generate(PROMPT, **settings), greedy)
        assert 1 <= graphs() <= 2  # compiled on the first steps, once more with symbolic sizes, then reused
        assert torch.equal(model.generate(PROMPT, num_beams=3, **settings), beams)


@pytest.mark.parametrize("family", [pytest.param("gru", marks=pytest.mark.newest_release_only), "lstm",
                                    pytest.param("rnn", marks=pytest.mark.newest_release_only)])
def test_a_left_padded_batch_decodes_compiled_from_the_first_step(family):
    # The fused cell's first selection for a step with a padding mask happens inside the trace (the kernel registry
    # caches it from eager calls only), where the one-token mask must not be read: fullgraph refused that read.
    model = tiny_model(FAMILIES[family])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    settings = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = model.generate(PROMPT, **settings)
        kernel_registry.refresh()  # no choice cached from those eager steps
        model.compile_decoding(backend="eager")
        assert torch.equal(model.generate(PROMPT, **settings), expected)


def test_only_decode_steps_are_compiled():
    model = tiny_model(FAMILIES["rwkv7"]).compile_decoding(backend="eager")
    with torch.no_grad():
        out = model(PROMPT, use_cache=True)  # a prefill: eager
        model(PROMPT[:, :1])  # one token without a cache: eager
    assert graphs() == 0
    step = model(PROMPT[:, :1], cache=output_cache(out))  # gradients on (training through a step): eager
    assert step.logits.requires_grad and graphs() == 0
    with torch.no_grad():
        compiled = model(PROMPT[:, :1], cache=output_cache(model(PROMPT, use_cache=True)))
    assert graphs() == 1
    torch.testing.assert_close(compiled.logits, step.logits.detach())
    # Back to eager steps; no options without compiling.
    model.compile_decoding(False)
    with torch.no_grad():
        model(PROMPT[:, :1], cache=output_cache(model(PROMPT, use_cache=True)))
    assert graphs() == 1
    with pytest.raises(TypeError, match="takes no torch.compile options; got backend"):
        model.compile_decoding(False, backend="eager")


def test_a_compiled_step_still_refuses_bad_input():
    # The value checks a trace skips run before it, and a check that raises inside the trace raises as in eager.
    model = tiny_model(FAMILIES["lstm"]).compile_decoding(backend="eager")
    with torch.no_grad():
        cache = output_cache(model(PROMPT, use_cache=True))
        with pytest.raises(TypeError, match="cache_positon"):
            model(PROMPT[:, :1], cache=cache, cache_positon=torch.tensor([5]))
        with pytest.raises(ValueError, match=r"token id 500, outside the vocabulary: ids must be in \[0, vocab_size"):
            model(torch.tensor([[500], [3]]), cache=cache)
        with pytest.raises(ValueError, match="attention_mask must hold 1"):
            model(PROMPT[:, :1], cache=cache, attention_mask=torch.full((2, 6), 2))
        with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
            model(torch.tensor([[5.0], [3.0]]), cache=cache)
        before = cache.get_seq_length()
        with pytest.raises(ValueError, match="the cache holds 2 sequence"):  # 3 rows of input
            model(torch.tensor([[5], [3], [4]]), cache=cache)
        assert cache.get_seq_length() == before
        # The cache is intact: the next step is the eager one (a copy decodes eagerly).
        eager = copy.deepcopy(model)
        eager_cache = output_cache(eager(PROMPT, use_cache=True))
        torch.testing.assert_close(model(PROMPT[:, :1], cache=cache).logits,
                                   eager(PROMPT[:, :1], cache=eager_cache).logits)


@pytest.mark.parametrize("variant", ["gpt2", "vaswani"])
def test_a_compiled_step_refuses_positions_beyond_the_table_as_eager(variant):
    # The eager forward checks max_position_embeddings; a trace skips that check, and a compiled step past the table
    # read out of range (an IndexError, or inductor's kernel aborting the process) instead of raising its error.
    model = tiny_model(FAMILIES["transformer"], variant=variant, position_embedding=None, norm_type=None,
                       norm_position=None, mlp_type=None, hidden_act=None, attention_bias=None, mlp_bias=None,
                       scale_embeddings=None, layer_norm_eps=None, max_position_embeddings=8)
    model.compile_decoding(backend="eager")
    with torch.no_grad():
        assert model.generate(PROMPT, max_new_tokens=3, do_sample=False).shape == (2, 8)
        with pytest.raises(ValueError, match="position 8 is beyond max_position_embeddings=8"):
            model.generate(PROMPT, max_new_tokens=5, do_sample=False)


def test_a_copy_decodes_eagerly_with_its_own_weights():
    # The compiled forward belongs to the model it was made for: a deep copy (or a pickle) does not carry it, so a
    # copy whose weights then change decodes with its own weights.
    model = tiny_model(FAMILIES["lstm"]).compile_decoding(backend="eager")
    twin = copy.deepcopy(model)
    assert "_compiled_decoding" not in vars(twin) and "_compiled_decoding" in vars(model)
    assert "_compiled_decoding" not in vars(pickle.loads(pickle.dumps(model)))
    with torch.no_grad():
        twin.lm_head.weight.mul_(2)
        cache, twin_cache = (output_cache(m(PROMPT, use_cache=True)) for m in (model, twin))
        ours, theirs = model(PROMPT[:, :1], cache=cache).logits, twin(PROMPT[:, :1], cache=twin_cache).logits
    assert not torch.allclose(ours, theirs)
    assert graphs() == 1  # the original's step only


def test_each_model_has_its_own_compiled_step(caplog):
    # Dynamo counts compiled graphs per code object against its recompile limit: three models compiled in one
    # process must each get theirs (they share the class's forward), and a model past the limit decodes eagerly,
    # saying so once. (Dynamo's config is patched through its own context: monkeypatch's restore hides the option.)
    models = [tiny_model(FAMILIES["lstm"]).compile_decoding(backend="eager") for _ in range(3)]
    with torch._dynamo.config.patch(recompile_limit=1), torch.no_grad():
        for model in models:
            model(PROMPT[:, :1], cache=output_cache(model(PROMPT, use_cache=True)))
        assert graphs() == 3
        model = models[0]
        three = torch.cat([PROMPT, PROMPT[:1]])  # another batch size: a second graph, past the limit of 1
        with caplog.at_level("WARNING", logger="seqzoo"):
            for _ in range(2):
                got = model(three[:, :1], cache=output_cache(model(three, use_cache=True))).logits
        model.compile_decoding(False)
        want = model(three[:, :1], cache=output_cache(model(three, use_cache=True))).logits
    torch.testing.assert_close(got, want)
    assert graphs() == 3
    warnings = [r for r in caplog.records if "recompile limit" in r.getMessage()]
    assert len(warnings) == 1 and "run eagerly" in warnings[0].getMessage()


def zeroed(module, inputs, output):
    return output * 0 if isinstance(output, torch.Tensor) else (output[0] * 0, *output[1:])


@pytest.mark.parametrize("family", ["lstm", "transformer"])
def test_hooks_and_forwards_put_on_after_the_first_compiled_step_run(family, monkeypatch):
    """A compiled step is what the eager forward computes, also once a hook or a patched forward changes that:
    a hook added on a module (dynamo guards on it when asked), on every module, or a forward put on a module's
    class (not guarded by dynamo: such steps run eagerly)."""
    model = tiny_model(FAMILIES[family]).compile_decoding(backend="eager")
    eager = copy.deepcopy(model)

    def step(m):
        with torch.no_grad():
            return m(PROMPT[:, :1], cache=output_cache(m(PROMPT, use_cache=True))).logits

    torch.testing.assert_close(step(model), step(eager))  # compiled
    assert graphs() == 1
    for where in ("head", "layer"):
        handles = [(m.lm_head if where == "head" else m.model.layers[0]).register_forward_hook(zeroed)
                   for m in (model, eager)]
        hooked = step(model)
        torch.testing.assert_close(hooked, step(eager))
        assert where != "head" or hooked.abs().max() == 0
        for handle in handles:
            handle.remove()
        torch.testing.assert_close(step(model), step(eager))
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, i, output: output * 0 if module is model.lm_head or module is eager.lm_head else output)
    try:
        assert step(model).abs().max() == 0 == step(eager).abs().max()
    finally:
        handle.remove()
    original = torch.nn.Linear.forward
    monkeypatch.setattr(torch.nn.Linear, "forward", lambda self, x: original(self, x) * 0)
    assert step(model).abs().max() == 0 == step(eager).abs().max()
    monkeypatch.setattr(torch.nn.Linear, "forward", original)
    torch.testing.assert_close(step(model), step(eager))
    assert torch._dynamo.config.skip_nnmodule_hook_guards  # dynamo's setting is left as it was


@pytest.mark.parametrize("family", ["lstm", "transformer"])
def test_a_forward_put_on_the_class_of_a_module_added_since_compile_decoding_runs(family):
    # compile_decoding() keeps each module class's forward to see one replaced since; a module of another class put
    # in later (here the head) is traced by a new graph, and a forward put on its class after that must run too (the
    # compiled step had gone on with the one it traced: other logits, no error).
    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) * 3

    model = tiny_model(FAMILIES[family], tie_word_embeddings=False).compile_decoding(backend="eager")
    eager = copy.deepcopy(model)
    settings = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_scores=True)

    def both():
        got, want = model.generate(PROMPT, **settings), eager.generate(PROMPT, **settings)
        assert torch.equal(got.sequences, want.sequences)
        for g, w in zip(got.scores, want.scores):
            torch.testing.assert_close(g, w)

    with torch.no_grad():
        head = Scaled(model.lm_head.in_features, model.lm_head.out_features, bias=False)
        model.lm_head, eager.lm_head = head, copy.deepcopy(head)
        both()
        compiled_graphs = graphs()
        assert compiled_graphs >= 1
        Scaled.forward = lambda self, x: torch.nn.Linear.forward(self, x) * -2
        both()
        assert graphs() == compiled_graphs  # those steps ran eagerly


def test_compile_decoding_refuses_a_backend_whose_package_is_missing_and_an_enabled_that_is_no_bool(monkeypatch):
    """--compile tvm (a backend torch lists) compiled at the first decode step and failed there, with part of the text
    printed; compile_decoding("no") compiled."""
    import importlib.util

    from seqzoo.models import compiled_decoding

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tvm" else real(name, *a))
    model = tiny_model("gru-tiny")
    with pytest.raises(ValueError, match=r"backend 'tvm' needs the package 'tvm', which is not installed"):
        model.compile_decoding(backend="tvm")
    with pytest.raises(TypeError, match=r"enabled must be True or False; got 'no'"):
        model.compile_decoding("no")
    assert compiled_decoding.ATTRIBUTE not in vars(model)
    model.compile_decoding(backend="eager")
    assert compiled_decoding.ATTRIBUTE in vars(model)


@pytest.mark.skipif(not hasattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe"),
                    reason="this torch has no filter of dynamo's guards")
def test_fixed_model_options_leave_out_the_guards_on_the_model():
    """``seqzoo generate --compile``'s options (fixed_model_options): the steps decode as eagerly, and dynamo no longer
    checks the model before each, so a setting changed after the first compiled step goes unseen (as documented),
    where the steps of a plain ``compile_decoding()`` see it."""
    base = tiny_model(FAMILIES["transformer"])
    guarded = copy.deepcopy(base).compile_decoding(backend="eager")
    fixed = copy.deepcopy(base).compile_decoding(backend="eager", **fixed_model_options())

    def step(m):
        with torch.no_grad():
            return m(PROMPT[:, :1], cache=output_cache(m(PROMPT, use_cache=True))).logits

    first = step(base)
    for model in (guarded, fixed):
        torch.testing.assert_close(step(model), first)
    assert graphs() == 2  # (one each)
    for model in (base, guarded, fixed):
        norm = [m for m in model.modules() if isinstance(getattr(m, "eps", None), float)][-1]  # the final norm
        norm.eps = 10.0
    changed = step(base)
    assert not torch.allclose(changed, first, atol=1e-3)
    torch.testing.assert_close(step(guarded), changed)  # traced again
    torch.testing.assert_close(step(fixed), first)  # the graph traced before the change
