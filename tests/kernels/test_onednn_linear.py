"""A decode step's large matrix products by oneDNN (``seqzoo.kernels.onednn_linear``): the same numbers as
``F.linear`` within rounding, run only where its conditions hold (the profiler shows which product ran), and a
model's decode step through it against its full-sequence forward and its Python path."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from seqzoo.kernels import onednn_linear, product_choice
from seqzoo.layers import rwkv7_step
from seqzoo.models.compat import output_cache
from tests.conftest import tiny_model

pytestmark = [pytest.mark.skipif(not onednn_linear.OP_PRESENT, reason="this torch has no oneDNN linear"),
              # (torch.backends.mkldnn.flags() warns that TF32 on oneDNN is for Intel GPUs, whatever it is asked)
              pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN:UserWarning"),
              pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state:UserWarning")]


@pytest.fixture(autouse=True)
def checked():
    """seqzoo's products chosen over torch's whatever the processor (seqzoo/kernels/product_choice.py), and oneDNN's
    product checked against F.linear before a test counts the products it runs."""
    with product_choice.products("seqzoo"):
        with torch.no_grad():
            assert onednn_linear.usable()
        yield

ONEDNN_EVENT = "mkldnn::_linear_pointwise"


def ran_onednn(fn, *args):
    """``fn(*args)`` and how many of oneDNN's products it ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        out = fn(*args)
    return out, sum(event.key == ONEDNN_EVENT for event in profiler.key_averages() for _ in range(event.count))


def random(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("x_shape", [(1, 1024), (16, 1024), (3, 1, 1024), (2, 2, 1024)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_a_large_weight_runs_by_onednn_with_f_linears_numbers(x_shape, with_bias):
    x, weight = random(*x_shape), random(768, 1024, seed=1)
    bias = random(768, seed=2) if with_bias else None
    with torch.no_grad():
        out, calls = ran_onednn(onednn_linear.linear, x, weight, bias)
    assert calls == 1
    assert out.shape == (*x_shape[:-1], 768)
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-5, atol=1e-4)


def test_the_scripted_product_has_the_same_bounds_as_the_python_one():
    """TorchScript reads no module constants: the scripted product writes them out. Both run oneDNN exactly at
    MIN_WEIGHT_ELEMENTS and MAX_ROWS, and F.linear one element or one row beyond."""
    scripted = torch.jit.script(onednn_linear.scripted_linear)
    inner = 1024
    at_bound = random(onednn_linear.MIN_WEIGHT_ELEMENTS // inner, inner)
    below = random(onednn_linear.MIN_WEIGHT_ELEMENTS // inner - 1, inner)
    rows, too_many = random(onednn_linear.MAX_ROWS, inner), random(onednn_linear.MAX_ROWS + 1, inner)
    with torch.no_grad():
        for weight, x, expected in ((at_bound, rows, 1), (below, rows, 0), (at_bound, too_many, 0)):
            for fn, args in ((scripted, (x, weight, 1)), (onednn_linear.linear, (x, weight))):
                out, calls = ran_onednn(fn, *args)
                assert calls == expected, (fn, weight.shape, x.shape)
                torch.testing.assert_close(out, F.linear(x, weight), rtol=1e-5, atol=1e-4)
        # told no by its caller, or from more rows than it has
        assert ran_onednn(scripted, rows, at_bound, product_choice.NEVER)[1] == 0
        assert ran_onednn(scripted, rows[:3], at_bound, 4)[1] == 0
        assert ran_onednn(scripted, rows[:4], at_bound, 4)[1] == 1


def stays_with_f_linear(x, weight, bias=None):
    out, calls = ran_onednn(onednn_linear.linear, x, weight, bias)
    assert calls == 0
    torch.testing.assert_close(out, F.linear(x, weight, bias))


@pytest.mark.parametrize("choice", ["auto", "seqzoo", "torch"])
def test_the_rows_oneDNN_multiplies_follow_the_choice_of_products(choice, monkeypatch):
    # By default where MKL runs on an Intel processor, oneDNN multiplies four rows and more, MKL fewer (run AK); on
    # another processor, or with seqzoo's chosen, from one row; with torch's chosen, none.
    monkeypatch.setattr(product_choice, "_mkl_on_intel", True)  # (as on an Intel processor with MKL)
    weight = random(768, 1024, seed=1)
    want = {"auto": product_choice.INTEL_ONEDNN_ROWS, "seqzoo": 1, "torch": product_choice.NEVER}[choice]
    with product_choice.products(choice), torch.no_grad():
        assert onednn_linear.rows_from() == want
        for rows in (1, 2, 3, 4, 8, 16):
            calls = ran_onednn(onednn_linear.linear, random(rows, 1024), weight)[1]
            assert calls == (rows >= want), (choice, rows)
    monkeypatch.setattr(product_choice, "_mkl_on_intel", False)
    with product_choice.products(choice):
        assert onednn_linear.rows_from() == (product_choice.NEVER if choice == "torch" else 1)
        with torch.backends.mkldnn.flags(enabled=False):
            assert onednn_linear.rows_from() == product_choice.NEVER


def test_f_linear_runs_where_the_conditions_do_not_hold(monkeypatch):
    x, weight = random(2, 1024), random(768, 1024, seed=1)
    # gradients recorded: oneDNN's product has no backward
    weight.requires_grad_(True)
    stays_with_f_linear(x, weight)
    weight = weight.detach()
    with torch.no_grad():
        stays_with_f_linear(x, random(255, 1024))  # a small weight
        stays_with_f_linear(x, random(1024, 768).t())  # stored by columns
        stays_with_f_linear(random(17, 1024), weight)  # a prompt's rows
        stays_with_f_linear(x.double(), weight.double())
        stays_with_f_linear(x.bfloat16(), weight.bfloat16())
        stays_with_f_linear(x, weight.as_subclass(Marked))  # a quantised weight is a subclass with operators of its own
        with torch.backends.mkldnn.flags(enabled=False):
            stays_with_f_linear(x, weight)
        with product_choice.products("torch"):  # torch's own product chosen, for every row count
            stays_with_f_linear(x, weight)
            stays_with_f_linear(random(16, 1024), weight)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # F.linear runs in bf16 there
            out, calls = ran_onednn(onednn_linear.linear, x, weight)
            assert calls == 0 and out.dtype == torch.bfloat16
        # a profiler or a library counting F.linear's calls sees every one
        seen = []
        real = F.linear
        monkeypatch.setattr(F, "linear", lambda *args: seen.append(1) or real(*args))
        out, calls = ran_onednn(onednn_linear.linear, x, weight)
        assert calls == 0 and seen == [1]
        monkeypatch.setattr(F, "linear", real)
        assert ran_onednn(onednn_linear.linear, x, weight)[1] == 1


def test_a_bias_oneDNN_would_misread_and_a_sparse_weight_stay_with_f_linear():
    """oneDNN reads a bias as packed: one of other strides computed other logits, a broadcast one read past its end.
    A sparse weight has no strides: asking whether it is contiguous raised, with oneDNN off too."""
    x, weight = random(2, 1024), random(768, 1024, seed=1)
    with torch.no_grad():
        for bias in (random(768, 2, seed=2)[:, 0], random(1536, seed=2)[::2], torch.ones(1).expand(768),
                     random(1, seed=2)):
            stays_with_f_linear(x, weight, bias)
        for enabled in (True, False):
            with torch.backends.mkldnn.flags(enabled=enabled):
                stays_with_f_linear(x, weight.to_sparse_csr())
        scripted = torch.jit.script(onednn_linear.scripted_linear)
        out, calls = ran_onednn(scripted, x, weight.to_sparse_csr(), True)
        assert calls == 0
        torch.testing.assert_close(out, F.linear(x, weight), rtol=1e-5, atol=1e-4)


def test_the_first_check_holds_whatever_the_default_dtype(monkeypatch):
    """The operator's check at first use builds float32 tensors itself: run first under another default dtype, it
    passed the operator over for the whole process."""
    monkeypatch.setattr(onednn_linear, "_checked", None)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            assert onednn_linear.usable()
    finally:
        torch.set_default_dtype(before)


class Marked(torch.Tensor):
    """A tensor subclass, as quantised weights are (torchao's)."""


def test_an_operator_that_computes_something_else_is_not_used(monkeypatch):
    """The first use checks oneDNN's product against F.linear: a torch whose private operator changed meaning is
    not used."""
    monkeypatch.setattr(onednn_linear, "_checked", None)
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda x, w, b, *rest: real(x, w, b, *rest) * 2)
    x, weight = random(2, 1024), random(768, 1024, seed=1)
    with torch.no_grad():
        assert not onednn_linear.usable()
        torch.testing.assert_close(onednn_linear.linear(x, weight), F.linear(x, weight))
    monkeypatch.setattr(onednn_linear, "_checked", None)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", real)
    with torch.no_grad():
        assert onednn_linear.usable()


def wide_rwkv7(seed=0):
    """An RWKV-7 wide enough (768 channels, a 3072-wide channel mix, a 700 x 768 head) for its step's products to
    run by oneDNN, every parameter random."""
    model = tiny_model("rwkv7-tiny", seed=seed, hidden_size=768, num_hidden_layers=2, head_size=64,
                       intermediate_size=3072, vocab_size=700)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            scale = 0.5 if parameter.dim() == 1 else parameter.shape[-1] ** -0.5
            parameter.copy_(torch.randn(parameter.shape, generator=gen) * scale)
    return model


def test_rwkv7s_decode_step_by_onednn_equals_its_full_sequence_and_its_python_path(monkeypatch):
    model = wide_rwkv7()
    tokens = torch.randint(0, 700, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(tokens)
    mask[1, :2] = 0

    def decode():
        with torch.no_grad():
            cache = output_cache(model(tokens[:, :3], attention_mask=mask[:, :3], use_cache=True))
            logits = []
            for t in range(3, tokens.shape[1]):
                out = model(tokens[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache, use_cache=True)
                logits.append(out.logits[:, -1])
        return torch.stack(logits, 1)

    fast, calls = ran_onednn(decode)
    # every step: four 768 x 768 maps and the two of the channel mix in each of two blocks, and the head
    assert calls == 4 * (2 * 6 + 1)
    with product_choice.products("torch"):  # the scripted step told so too
        mkl, calls = ran_onednn(decode)
    assert calls == 0
    torch.testing.assert_close(fast, mkl, rtol=1e-5, atol=5e-5)
    monkeypatch.setattr(product_choice, "_mkl_on_intel", True)  # (as on an Intel processor with MKL)
    with product_choice.products("auto"):  # two rows: MKL's there; four rows: oneDNN's
        assert ran_onednn(decode)[1] == 0
        tokens, mask = tokens.repeat(2, 1), mask.repeat(2, 1)
        assert ran_onednn(decode)[1] == 4 * (2 * 6 + 1)
        tokens, mask = tokens[:2], mask[:2]
    with torch.no_grad():
        full = model(tokens, attention_mask=mask).logits[:, 3:]
    torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(rwkv7_step, "scripted_stack_step", lambda: None)  # the blocks in Python, F.linear's
    with torch.backends.mkldnn.flags(enabled=False):
        slow, calls = ran_onednn(decode)
    assert calls == 0
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=5e-5)
