"""seqzoo's RMSNorm (``seqzoo.layers.norms``) against transformers' ``LlamaRMSNorm``, a reference we did not write: on
the CPU in float32 and float64 it calls torch's ``F.rms_norm`` (one operation instead of four, which shows at decode
sizes), and must give bitwise what the float32 formula gives, gradients included; other dtypes keep the formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from seqzoo.layers import norms
from seqzoo.layers.norms import RMSNorm

SHAPES = [(1, 1, 256), (3, 17, 64), (2, 5, 7), (4, 1, 1000), (129, 33)]


def pair(width: int, dtype: torch.dtype, eps: float = 1e-5) -> tuple[RMSNorm, LlamaRMSNorm]:
    ours, theirs = RMSNorm(width, eps).to(dtype), LlamaRMSNorm(width, eps).to(dtype)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(width, generator=torch.Generator().manual_seed(width)))
        theirs.weight.copy_(ours.weight)
    return ours, theirs


def formula(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """The float32 formula RMSNorm keeps for other dtypes (and for every dtype before F.rms_norm)."""
    h = x.to(torch.promote_types(x.dtype, torch.float32))
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.eps)
    return norm.weight * h.to(x.dtype)


class _Formula(torch.nn.Module):
    def __init__(self, norm: RMSNorm) -> None:
        super().__init__()
        self.norm = norm
        self.weight = norm.weight

    def forward(self, x):
        return formula(self.norm, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_rmsnorm_is_llamas_bitwise_with_gradients(shape, dtype):
    """float64 against the formula: Llama's computes in float32 whatever the input."""
    ours, theirs = pair(shape[-1], dtype)
    if dtype == torch.float64:
        theirs = _Formula(ours)
    x = (torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    outputs, grads = [], []
    for module in (ours, theirs):
        xi = x.clone().requires_grad_()
        y = module(xi)
        outputs.append(y)
        grads.append(torch.autograd.grad(y.float().square().sum(), (xi, module.weight)))
    assert outputs[0].dtype == outputs[1].dtype == dtype
    assert torch.equal(outputs[0], outputs[1])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(ours(x), formula(ours, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rmsnorm_uses_torchs_one_operation_where_it_is_exact(dtype, monkeypatch):
    calls = []
    real = F.rms_norm
    monkeypatch.setattr(norms.F, "rms_norm", lambda *a, **k: calls.append(a[0].dtype) or real(*a, **k))
    ours, _ = pair(64, dtype)
    x = torch.randn(2, 3, 64).to(dtype)
    ours(x)
    ours.float()(x.double())  # (a weight of another dtype than the input: the formula, which promotes)
    assert calls == ([dtype] if dtype in (torch.float32, torch.float64) else [])


def test_rmsnorm_under_autocast_is_the_formulas():
    ours, _ = pair(64, torch.float32)
    x = torch.randn(2, 3, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = ours(x)
    with torch.no_grad():
        assert torch.equal(got, formula(ours, x))
