"""torch.compile(fullgraph=True) of a forward and of a decode step, and torch.export of the forward, for every family:
no graph break (fullgraph raises on the first), and the compiled code computes what eager does. Dynamo traces
with the cheap "eager" backend here; what inductor buys is measured in benchmarks/bench_compile.py."""

from __future__ import annotations

import pytest
import torch

from seqzoo.models.compat import output_cache
from tests.conftest import FAMILIES, tiny_model

IDS = torch.tensor([[5, 17, 33, 8, 61, 40, 9], [70, 12, 3, 98, 44, 27, 15]])


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# On the oldest supported transformers, one family of each kind of layer stack is traced (the Transformer, a hybrid,
# and the LSTM for the recurrent families, whose paths through transformers' code are the same as the LSTM's).
TRACED_ON_EVERY_RELEASE = {"transformer", "hybrid", "lstm"}


@pytest.mark.parametrize("family", [family if family in TRACED_ON_EVERY_RELEASE else
                                    pytest.param(family, marks=pytest.mark.newest_release_only)
                                    for family in sorted(FAMILIES)])
def test_compiled_forward_and_decode_step_have_no_graph_break(family):
    model = tiny_model(FAMILIES[family])
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(IDS, use_cache=False).logits, model(IDS, use_cache=False).logits)

    # One decode step after a prompt, each side from its own cache (attention caches grow in place).
    eager_cache = output_cache(model(IDS[:, :-1], use_cache=True))
    compiled_cache = output_cache(model(IDS[:, :-1], use_cache=True))
    step = torch.compile(lambda ids, cache: model(ids, cache=cache, use_cache=True), fullgraph=True, backend="eager")
    got = step(IDS[:, -1:], compiled_cache)
    want = model(IDS[:, -1:], cache=eager_cache, use_cache=True)
    torch.testing.assert_close(got.logits, want.logits)
    assert output_cache(got).get_seq_length() == output_cache(want).get_seq_length() == IDS.shape[1]


@pytest.mark.parametrize("family", ["lstm", "mamba", "transformer"])
def test_decoding_compiles_at_most_twice(family):
    """The first compiled step is specialised to the token count; dynamo's automatic dynamic shapes make the second
    general, and no later step compiles again (a recompile per token would make compiled decoding useless)."""
    from torch._dynamo.utils import counters

    model = tiny_model(FAMILIES[family])
    cache = output_cache(model(IDS[:1], use_cache=True))
    step = torch.compile(lambda ids, cache: model(ids, cache=cache, use_cache=True), fullgraph=True, backend="eager")
    counters.clear()
    token = IDS[:1, -1:]
    for _ in range(6):
        token = step(token, cache).logits[:, -1:].argmax(-1)
    assert counters["stats"]["unique_graphs"] <= 2


# One family per modeling file and kernel op (every family exports; tracing each costs seconds on CI's CPUs).
EXPORTED = ["lstm", "gru", "mamba", "mamba2", "rwkv7", "transformer-gpt2", "hybrid-rwkv7"]


@pytest.mark.parametrize("family", EXPORTED)
def test_export_of_the_forward(family):
    model = tiny_model(FAMILIES[family])
    exported = torch.export.export(model, (IDS,), {"use_cache": False})
    other = torch.tensor([[9, 8, 7, 6, 5, 4, 3], [11, 22, 33, 44, 55, 66, 77]])
    torch.testing.assert_close(exported.module()(other, use_cache=False).logits,
                               model(other, use_cache=False).logits)


def test_compiled_rwkv7_takes_the_form_exact_for_any_decay():
    """wkv7's chunked kernel picks its factored or pairwise form from the decays' values; compiled code cannot
    branch on data without a graph break, so it takes the pairwise form, equal to eager within float32 rounding."""
    from seqzoo.kernels import use_backend
    from tests.kernels.test_wkv7 import NAMES, make_inputs

    def kernel(*tensors, initial_state):
        from seqzoo.kernels import dispatch

        return dispatch("wkv7", *tensors, initial_state=initial_state)

    for decay_scale in (1.0, 40.0):  # the second is too strong for the factored form
        t = make_inputs(40, decay_scale=decay_scale)
        with use_backend("wkv7", "chunked"):
            want = kernel(*(t[n] for n in NAMES), initial_state=t["initial_state"])
            got = torch.compile(kernel, fullgraph=True, backend="eager")(*(t[n] for n in NAMES),
                                                                         initial_state=t["initial_state"])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_a_model_compiled_before_any_eager_call(tmp_path):
    """In a fresh process the kernel registry's first selection (loading the op packages, probing backends, logging
    the choice) would happen inside the trace; building a mixer does that work eagerly instead."""
    import subprocess
    import sys

    code = (
        "import logging, torch\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from tests.conftest import FAMILIES, tiny_model\n"
        "model = tiny_model(FAMILIES['lstm'])\n"
        "ids = torch.tensor([[5, 17, 33, 8]])\n"
        "torch.compile(model, fullgraph=True, backend='eager')(ids, use_cache=False)\n"
        "model(ids, use_cache=False)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert result.returncode == 0, result.stderr[-3000:]
    # The choice is logged once, by the first eager call after the compiled one.
    assert result.stderr.count("seqzoo kernel lstm -> backend") == 1, result.stderr[-3000:]


@pytest.mark.parametrize("family", ["lstm", "mamba", "hybrid"])
def test_a_padded_batch_compiles_without_a_graph_break(family):
    # The kernels read a padding mask's values to pick a form (fused RNN packing, the conv's all-valid shortcut);
    # inside a trace they take the form exact for any mask instead of a data-dependent branch.
    model = tiny_model(FAMILIES[family])
    ids = torch.tensor([[5, 17, 33, 8, 61, 40, 9], [0, 0, 0, 70, 12, 3, 98]])
    mask = (ids != 0).long()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    for m in (mask, torch.ones_like(mask)):
        torch.testing.assert_close(compiled(ids, attention_mask=m, use_cache=False).logits,
                                   model(ids, attention_mask=m, use_cache=False).logits)


def test_a_graph_break_in_a_compiled_forward_runs_the_rest_eagerly():
    # After a graph break dynamo converts the frames that run next; the config's attribute reads must not be one
    # (converting that frame read the config through it again: RecursionError).
    model = tiny_model(FAMILIES["lstm"])
    model.model.layers[0].register_forward_hook(lambda module, inputs, output: torch._dynamo.graph_break())
    torch.testing.assert_close(torch.compile(model, backend="eager")(IDS, use_cache=False).logits,
                               model(IDS, use_cache=False).logits)
