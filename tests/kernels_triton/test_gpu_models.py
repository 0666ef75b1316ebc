"""On a GPU: a tiny model of each state-space family gives the same logits, parameter gradients and greedy tokens
with the Triton kernels as with the reference kernels, padded batches included; and greedy decoding works when each
token is one CUDA-graph replay (benchmarks/bench_triton.py's GreedyDecoder). Skipped without CUDA."""

import contextlib
import importlib.util
from pathlib import Path

import pytest
import torch

from seqzoo.kernels import use_backend
from tests.conftest import FAMILIES, tiny_model
from tests.kernels_triton.support import TRITON_MISSING

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(TRITON_MISSING, reason="triton is not installed (pip install 'triton>=3')"),
]

FAMILY_OPS = {"mamba": ("causal_conv1d", "selective_scan"), "mamba2": ("causal_conv1d", "ssd"), "rwkv7": ("wkv7",)}
PRESENT = [family for family in FAMILY_OPS if family in FAMILIES]
# Logits pass through every layer of both backends; float32 kernels differ by accumulation order only.
LOGITS_TOL = dict(atol=1e-4, rtol=1e-4)


@contextlib.contextmanager
def backend(ops, name):
    with contextlib.ExitStack() as stack:
        for op in ops:
            stack.enter_context(use_backend(op, name))
        yield


def _model_and_batch(family):
    model = tiny_model(FAMILIES[family]).cuda()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, 37), generator=generator).cuda()
    mask = torch.ones_like(ids)
    mask[0, :6] = 0  # a left-padded row
    return model, ids, mask


@pytest.mark.parametrize("family", PRESENT)
def test_logits_and_gradients_match_the_reference_kernels(family):
    model, ids, mask = _model_and_batch(family)
    results = {}
    for name in ("reference", "triton"):
        with backend(FAMILY_OPS[family], name):
            model.zero_grad(set_to_none=True)
            out = model(ids, attention_mask=mask, labels=ids)
            out.loss.backward()
            grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
            results[name] = (out.logits.detach(), grads)
    logits, grads = results["triton"]
    ref_logits, ref_grads = results["reference"]
    torch.testing.assert_close(logits, ref_logits, **LOGITS_TOL)
    assert grads.keys() == ref_grads.keys()
    for key in grads:
        scale = max(1.0, ref_grads[key].abs().max().item())
        torch.testing.assert_close(grads[key] / scale, ref_grads[key] / scale, atol=1e-4, rtol=1e-3,
                                   msg=lambda m, key=key: f"{family} gradient of {key}: {m}")


@pytest.mark.parametrize("family", PRESENT)
def test_greedy_generation_matches_the_reference_kernels(family):
    model, ids, mask = _model_and_batch(family)
    kwargs = dict(attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                  pad_token_id=model.config.pad_token_id)
    with torch.no_grad():
        with backend(FAMILY_OPS[family], "reference"):
            expected = model.generate(ids, **kwargs)
        with backend(FAMILY_OPS[family], "triton"):
            tokens = model.generate(ids, **kwargs)
    assert torch.equal(tokens, expected)


def _bench_module():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_triton.py"
    spec = importlib.util.spec_from_file_location("bench_triton", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family", PRESENT)
def test_greedy_decoding_under_cuda_graphs(family):
    bench = _bench_module()
    model, ids, _ = _model_and_batch(family)
    prompt = ids[:1, :16]
    with backend(FAMILY_OPS[family], "triton"):
        expected = bench.eager_greedy(model, prompt, 10)
        tokens = bench.GreedyDecoder(model, prompt, use_graph=True).generate(10)
    assert torch.equal(tokens, expected)
