"""On a GPU: a tiny model of each state-space family gives the same logits, parameter gradients and greedy tokens
with the Triton kernels as with the reference kernels, padded batches included; and greedy decoding works when each
token is one CUDA-graph replay (benchmarks/bench_triton.py's GreedyDecoder). Skipped without CUDA."""

import contextlib

import pytest
import torch

from seqzoo.kernels import use_backend
from tests.conftest import FAMILIES, load_benchmark, tiny_model
from tests.kernels_triton.support import TRITON_MISSING

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(TRITON_MISSING, reason="triton is not installed (pip install 'seqzoo[triton]')"),
]

# case -> (family, {op: Triton backend}); RWKV-7 once with each wkv7 kernel (decoding runs the fused step in both).
CASES = {"mamba": ("mamba", {"causal_conv1d": "triton", "selective_scan": "triton"}),
         "mamba2": ("mamba2", {"causal_conv1d": "triton", "ssd": "triton"}),
         "rwkv7": ("rwkv7", {"wkv7": "triton"}),
         "rwkv7-chunked": ("rwkv7", {"wkv7": "triton_chunked"})}
PRESENT = [case for case, (family, _) in CASES.items() if family in FAMILIES]
# Logits pass through every layer of both backends; float32 kernels differ by accumulation order only.
LOGITS_TOL = dict(atol=1e-4, rtol=1e-4)


@contextlib.contextmanager
def backend(case, name=None):
    """The case's Triton backends, or ``name`` (e.g. "reference") for each of its ops."""
    with contextlib.ExitStack() as stack:
        for op, triton_name in CASES[case][1].items():
            stack.enter_context(use_backend(op, name or triton_name))
        yield


def _model_and_batch(case):
    model = tiny_model(FAMILIES[CASES[case][0]]).cuda()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, 37), generator=generator).cuda()
    mask = torch.ones_like(ids)
    mask[0, :6] = 0  # a left-padded row
    return model, ids, mask


@pytest.mark.parametrize("case", PRESENT)
def test_logits_and_gradients_match_the_reference_kernels(case):
    model, ids, mask = _model_and_batch(case)
    results = {}
    for name in ("reference", None):
        with backend(case, name):
            model.zero_grad(set_to_none=True)
            out = model(ids, attention_mask=mask, labels=ids)
            out.loss.backward()
            grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
            results[name or "triton"] = (out.logits.detach(), grads)
    logits, grads = results["triton"]
    ref_logits, ref_grads = results["reference"]
    torch.testing.assert_close(logits, ref_logits, **LOGITS_TOL)
    assert grads.keys() == ref_grads.keys()
    for key in grads:
        scale = max(1.0, ref_grads[key].abs().max().item())
        torch.testing.assert_close(grads[key] / scale, ref_grads[key] / scale, atol=1e-4, rtol=1e-3,
                                   msg=lambda m, key=key: f"{case} gradient of {key}: {m}")


@pytest.mark.parametrize("case", PRESENT)
def test_greedy_generation_matches_the_reference_kernels(case):
    model, ids, mask = _model_and_batch(case)
    kwargs = dict(attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                  pad_token_id=model.config.pad_token_id)
    with torch.no_grad():
        with backend(case, "reference"):
            expected = model.generate(ids, **kwargs)
        with backend(case):
            tokens = model.generate(ids, **kwargs)
    assert torch.equal(tokens, expected)


def _bench_module():
    # Registered before it runs: its dataclasses look their module up in sys.modules (Python 3.12 fails otherwise,
    # which the first GPU run found).
    return load_benchmark("bench_triton", register=True)


@pytest.mark.parametrize("case", PRESENT)
def test_greedy_decoding_under_cuda_graphs(case):
    bench = _bench_module()
    model, ids, _ = _model_and_batch(case)
    prompt = ids[:1, :16]
    with backend(case):
        expected = bench.eager_greedy(model, prompt, 10)
        tokens = bench.GreedyDecoder(model, prompt, use_graph=True).generate(10)
    assert torch.equal(tokens, expected)
