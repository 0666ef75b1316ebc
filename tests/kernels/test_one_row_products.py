"""A compiled decode step's one-row products as inductor's own loops (``seqzoo.kernels.one_row_products``): which
products the pass rewrites (one row, a float32 CPU weight stored by rows) and which it leaves to inductor, the same
values as eager within rounding, how ``compile_decoding()`` adds it to torch.compile's options, and a model's
compiled decode against its eager one. These compile with inductor (seconds each); the other compile tests trace
with the "eager" backend."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from seqzoo.kernels import one_row_products, product_choice
from seqzoo.models.compat import output_cache
from tests.conftest import FAMILIES, tiny_model

pytestmark = [pytest.mark.skipif(not one_row_products.AVAILABLE, reason="this torch has no inductor graph passes"),
              pytest.mark.skipif(not any(map(shutil.which, ("g++", "c++", "clang++"))),
                                 reason="inductor compiles C++ on the CPU, and no C++ compiler is here"),
              # (inductor's caches off, as the fixture sets them, turn off dynamo's profile-guided shapes too)
              pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled:UserWarning")]


@pytest.fixture(autouse=True)
def fresh_compile():
    """A fresh dynamo, inductor's caches off (a cached graph does not run the pass again, so counts nothing), and
    seqzoo's products chosen over torch's whatever the processor (seqzoo/kernels/product_choice.py)."""
    torch._dynamo.reset()
    counters.clear()
    with torch._inductor.config.patch(force_disable_caches=True), product_choice.products("seqzoo"):
        yield
    torch._dynamo.reset()


def random(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def compiled_with_pass(fn):
    return torch.compile(fn, **one_row_products.with_pass({"fullgraph": True}))


def rewrites():
    return counters["seqzoo"][one_row_products.COUNTER]


@pytest.mark.parametrize("shape", [(1, 48), (1, 1, 48)])
def test_one_row_products_with_weights_by_rows_are_rewritten(shape):
    up, down = nn.Linear(48, 96), nn.Linear(96, 40, bias=False)
    with torch.no_grad():
        up.bias.copy_(random(96, seed=3))  # (a bias the sum must add)

    def step(x):
        return down(torch.tanh(up(x)))

    x = random(*shape, seed=1)
    with torch.no_grad():
        got, want = compiled_with_pass(step)(x), step(x)
    assert rewrites() == 2
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["two rows", "weight by columns", "float64", "scaled addmm"])
def test_other_products_are_left_to_inductor(case):
    dtype = torch.float64 if case == "float64" else torch.float32
    weight, bias = random(40, 48, seed=2, dtype=dtype), random(40, seed=3, dtype=dtype)
    x = random(2 if case == "two rows" else 1, 48, seed=1, dtype=dtype)
    if case == "weight by columns":
        weight_t = weight.t().contiguous()

        def step(x):
            return torch.addmm(bias, x, weight_t)
    elif case == "scaled addmm":
        def step(x):
            return torch.addmm(bias, x, weight.t(), beta=0.5)
    else:
        def step(x):
            return nn.functional.linear(x, weight, bias)
    with torch.no_grad():
        got, want = compiled_with_pass(step)(x), step(x)
    assert rewrites() == 0
    torch.testing.assert_close(got, want)


def test_a_symbolic_row_count_is_left_to_inductor():
    weight = random(40, 48, seed=2)
    step = torch.compile(lambda x: nn.functional.linear(x, weight),
                         **one_row_products.with_pass({"fullgraph": True, "dynamic": True}))
    with torch.no_grad():
        for rows in (1, 3):
            x = random(rows, 48, seed=rows)
            torch.testing.assert_close(step(x), nn.functional.linear(x, weight))
    assert rewrites() == 0


def test_inductors_cache_tells_a_graph_with_the_pass_from_one_without(tmp_path, monkeypatch):
    """With the caches on: a graph compiled without the pass is not reused where the pass was asked for."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    weight = random(40, 48, seed=2)
    x = random(1, 48, seed=1)

    def step(x):
        return nn.functional.linear(x, weight)

    with torch._inductor.config.patch(force_disable_caches=False), torch.no_grad():
        torch.compile(step, fullgraph=True)(x)
        assert rewrites() == 0
        torch._dynamo.reset()
        compiled_with_pass(step)(x)
    assert rewrites() == 1


def test_the_pass_joins_inductors_options():
    with_pass = one_row_products.with_pass
    default = with_pass({"fullgraph": True})
    assert default["fullgraph"] is True
    assert isinstance(default["options"]["post_grad_custom_pre_pass"], one_row_products.OneRowProducts)
    named = with_pass({"backend": "inductor", "options": {"max_autotune": False}})
    assert named["options"]["max_autotune"] is False and "post_grad_custom_pre_pass" in named["options"]
    # A mode becomes its options (torch takes one or the other).
    moded = with_pass({"mode": "max-autotune-no-cudagraphs"})
    assert "mode" not in moded and moded["options"]["max_autotune"] is True
    assert "post_grad_custom_pre_pass" in moded["options"]
    # Left as given: another backend, the caller's own pass (None: none), and what torch itself refuses.
    for options in ({"backend": "eager"}, {"backend": "aot_eager", "mode": "default"},
                    {"options": {"post_grad_custom_pre_pass": None}},
                    {"mode": "max-autotune", "options": {}}, {"mode": "fastest"}, {"options": "fast"}):
        assert with_pass(options) == options
    # And where torch's own products are chosen (by default where MKL runs on Intel's processors).
    with product_choice.products("torch"):
        for options in ({"fullgraph": True}, {"mode": "max-autotune-no-cudagraphs"}):
            assert with_pass(options) == options


def test_a_pass_set_in_inductors_config_is_kept_and_runs():
    """Inductor's options override its config: a pass of the caller's set there is left to run, without ours."""
    ran = []

    class Theirs(one_row_products.CustomGraphPass):
        def __call__(self, graph):
            ran.append(graph)

        def uuid(self):
            return "theirs"

    weight, x = random(40, 48, seed=2), random(1, 48, seed=1)
    with torch._inductor.config.patch(post_grad_custom_pre_pass=Theirs()):
        options = one_row_products.with_pass({"fullgraph": True})
        assert options == {"fullgraph": True}
        with torch.no_grad():
            torch.testing.assert_close(torch.compile(lambda x: nn.functional.linear(x, weight), **options)(x),
                                       nn.functional.linear(x, weight))
    assert ran and rewrites() == 0


@pytest.mark.newest_release_only
def test_a_compiled_rwkv7_decodes_as_eager_with_its_products_rewritten():
    model = tiny_model(FAMILIES["rwkv7"])
    ids = torch.tensor([[5, 17, 33, 8, 61]])
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=4, do_sample=False)
        eager_cache = output_cache(model(ids, use_cache=True))
        eager = model(want[:, 5:6], cache=eager_cache, use_cache=True).logits
        model.compile_decoding()
        got = model.generate(ids, max_new_tokens=4, do_sample=False)
        cache = output_cache(model(ids, use_cache=True))
        compiled = model(want[:, 5:6], cache=cache, use_cache=True).logits
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert rewrites() > 0


def test_compile_decoding_reads_the_product_choice_when_it_compiles(monkeypatch):
    """The choice in force when ``compile_decoding()`` is called decides the options: the pass with seqzoo's
    products, torch.compile's own options with torch's (the pass's graphs are compiled above; torch.compile is not
    run here, only asked)."""
    asked = []

    def compile_asked(function, **options):
        asked.append(options)
        return function

    monkeypatch.setattr(torch, "compile", compile_asked)
    model = tiny_model(FAMILIES["rwkv7"])
    model.compile_decoding()
    with product_choice.products("torch"):
        model.compile_decoding()
    model.compile_decoding(mode="max-autotune-no-cudagraphs")
    ours, theirs, moded = asked
    assert isinstance(ours["options"]["post_grad_custom_pre_pass"], one_row_products.OneRowProducts)
    assert "post_grad_custom_pre_pass" not in theirs.get("options", {})
    assert "mode" not in moded and moded["options"]["max_autotune"] is True
