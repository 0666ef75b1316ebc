"""seqzoo RWKV-7 against an independent re-statement of the published x070 recurrence.

``x070_step`` below is written straight from the formulas of RWKV-LM (RWKV-v7/rwkv_v7_demo.py and
rwkv_v7_demo_rnn.py), one token at a time in float64, reading a state dict with RWKV-LM's ``.pth`` key names. It
imports nothing from seqzoo. A random ``.pth``-style state dict built here is converted with
``seqzoo.conversions.rwkv7`` and must give the same logits (within 1e-4 in float32) and the same greedy tokens.
"""

from __future__ import annotations

import math

import pytest
import torch

from seqzoo.conversions.rwkv7 import convert_rwkv7
from seqzoo.kernels import KernelError, available_backends, use_backend

SIZES = dict(vocab=67, hidden=48, layers=3, head_size=16, ffn=120, decay=8, iclr=12, value=4, gate=20)


def random_x070_checkpoint(vocab=67, hidden=48, layers=3, head_size=16, ffn=120, decay=8, iclr=12, value=4,
                           gate=20, seed=0) -> dict[str, torch.Tensor]:
    """A random state dict with the names and shapes RWKV-LM saves for x070 (vectors as (1, 1, C), layer 0 with
    its unused v0/v1/v2). Magnitudes are chosen so that every term of the recurrence matters."""
    gen = torch.Generator().manual_seed(seed)
    C, H, N = hidden, hidden // head_size, head_size

    def randn(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=gen) * scale + shift

    def unit(*shape):
        return torch.rand(*shape, generator=gen)

    sd = {"emb.weight": randn(vocab, C), "head.weight": randn(vocab, C, scale=C**-0.5)}
    for norm in ("blocks.0.ln0", "ln_out"):
        sd[f"{norm}.weight"], sd[f"{norm}.bias"] = randn(C, scale=0.1, shift=1.0), randn(C, scale=0.1)
    for i in range(layers):
        p = f"blocks.{i}."
        for norm in ("ln1", "ln2"):
            sd[f"{p}{norm}.weight"], sd[f"{p}{norm}.bias"] = randn(C, scale=0.1, shift=1.0), randn(C, scale=0.1)
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            sd[f"{p}att.{name}"] = unit(1, 1, C)
        for prefix, rank in (("w", decay), ("a", iclr), ("v", value)):
            sd[f"{p}att.{prefix}0"] = randn(1, 1, C)
            sd[f"{p}att.{prefix}1"] = randn(C, rank, scale=0.3)
            sd[f"{p}att.{prefix}2"] = randn(rank, C, scale=0.3)
        sd[f"{p}att.g1"], sd[f"{p}att.g2"] = randn(C, gate, scale=0.3), randn(gate, C, scale=0.3)
        sd[f"{p}att.k_k"] = randn(1, 1, C, scale=0.2, shift=0.7)
        sd[f"{p}att.k_a"] = randn(1, 1, C, scale=0.2, shift=1.0)
        sd[f"{p}att.r_k"] = randn(H, N, scale=0.3)
        for name in ("receptance", "key", "value", "output"):
            sd[f"{p}att.{name}.weight"] = randn(C, C, scale=C**-0.5)
        sd[f"{p}att.ln_x.weight"], sd[f"{p}att.ln_x.bias"] = randn(C, scale=0.1, shift=1.0), randn(C, scale=0.1)
        sd[f"{p}ffn.x_k"] = unit(1, 1, C)
        sd[f"{p}ffn.key.weight"] = randn(ffn, C, scale=C**-0.5)
        sd[f"{p}ffn.value.weight"] = randn(C, ffn, scale=ffn**-0.5)
    return sd


# ---- the re-statement: plain per-token formulas, float64 -------------------------------------------------------

def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def x070_time_mix(z, p, i, x, state, v_first):
    H, N = z[p + "r_k"].shape
    xx = state["att_x"] - x
    state["att_x"] = x
    xr, xw, xk, xv, xa, xg = (x + xx * z[p + name] for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
    r = z[p + "receptance.weight"] @ xr
    k = z[p + "key.weight"] @ xk
    v = z[p + "value.weight"] @ xv
    decay = torch.exp(-0.606531 * torch.sigmoid(z[p + "w0"] + torch.tanh(xw @ z[p + "w1"]) @ z[p + "w2"]))
    a = torch.sigmoid(z[p + "a0"] + (xa @ z[p + "a1"]) @ z[p + "a2"])
    g = torch.sigmoid(xg @ z[p + "g1"]) @ z[p + "g2"]
    kk = (k * z[p + "k_k"]).view(H, N)
    kk = kk / kk.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = k * (1 + (a - 1) * z[p + "k_a"])
    if i == 0:
        v_first = v
    else:
        v = v + (v_first - v) * torch.sigmoid(z[p + "v0"] + (xv @ z[p + "v1"]) @ z[p + "v2"])
    # S (H, value, key): S = S diag(w) + S (-kk)^T (kk * a) + v^T k;  y = S r
    S = state["wkv"]
    S = (S * decay.view(H, 1, N) + S @ (-kk).view(H, N, 1) @ (kk * a.view(H, N)).view(H, 1, N)
         + v.view(H, N, 1) @ k.view(H, 1, N))
    state["wkv"] = S
    y = (S @ r.view(H, N, 1)).view(H, N)
    mean = y.mean(-1, keepdim=True)
    y = (y - mean) / torch.sqrt(((y - mean) ** 2).mean(-1, keepdim=True) + 64e-5)
    y = y.reshape(-1) * z[p + "ln_x.weight"] + z[p + "ln_x.bias"]
    y = y + ((r * k).view(H, N) * z[p + "r_k"]).sum(-1, keepdim=True).mul(v.view(H, N)).reshape(-1)
    return z[p + "output.weight"] @ (y * g), v_first


def x070_channel_mix(z, p, x, state):
    k = x + (state["ffn_x"] - x) * z[p + "x_k"]
    state["ffn_x"] = x
    return z[p + "value.weight"] @ torch.relu(z[p + "key.weight"] @ k) ** 2


def x070_step(z, token, states):
    """Logits after one token; ``states`` (one dict per layer) is updated in place."""
    x = layer_norm(z["emb.weight"][token], z["blocks.0.ln0.weight"], z["blocks.0.ln0.bias"])
    v_first = None
    for i, state in enumerate(states):
        b = f"blocks.{i}."
        out, v_first = x070_time_mix(z, b + "att.", i, layer_norm(x, z[b + "ln1.weight"], z[b + "ln1.bias"]),
                                     state, v_first)
        x = x + out
        x = x + x070_channel_mix(z, b + "ffn.", layer_norm(x, z[b + "ln2.weight"], z[b + "ln2.bias"]), state)
    return z["head.weight"] @ layer_norm(x, z["ln_out.weight"], z["ln_out.bias"])


def x070_prepare(sd):
    z = {k: v.double().squeeze() if k.split(".")[-1] in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0",
                                                            "v0", "k_k", "k_a") else v.double()
         for k, v in sd.items()}
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    H, N = z["blocks.0.att.r_k"].shape
    C = H * N
    states = [dict(att_x=torch.zeros(C, dtype=torch.float64), ffn_x=torch.zeros(C, dtype=torch.float64),
                   wkv=torch.zeros(H, N, N, dtype=torch.float64)) for _ in range(layers)]
    return z, states


def x070_logits(sd, tokens):
    z, states = x070_prepare(sd)
    return torch.stack([x070_step(z, t, states) for t in tokens])


def x070_greedy(sd, prompt, new_tokens):
    z, states = x070_prepare(sd)
    for t in prompt:
        logits = x070_step(z, t, states)
    out = []
    for _ in range(new_tokens):
        out.append(int(logits.argmax()))
        logits = x070_step(z, out[-1], states)
    return out


# ---- the tests -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint():
    return random_x070_checkpoint(**SIZES)


@pytest.fixture(scope="module")
def model(checkpoint):
    return convert_rwkv7(checkpoint, dtype=torch.float32)


def test_decay_formula_is_the_softplus_clamp():
    # The demo's two spellings of the decay agree: exp(-exp(-softplus(-z) - 0.5)) == exp(-e^-0.5 * sigmoid(z)).
    z = torch.linspace(-20, 20, 101, dtype=torch.float64)
    clamp_form = torch.exp(-torch.exp(-torch.nn.functional.softplus(-z) - 0.5))
    torch.testing.assert_close(clamp_form, torch.exp(-math.exp(-0.5) * torch.sigmoid(z)), rtol=0, atol=1e-15)


def wkv7_backends() -> list[str]:
    try:
        return available_backends("wkv7")
    except KernelError:  # the op is not registered: the model tests below fail and say so
        return []


@pytest.mark.parametrize("backend", wkv7_backends())
def test_logits_match_the_reference(checkpoint, model, backend):
    tokens = torch.randint(0, SIZES["vocab"], (29,), generator=torch.Generator().manual_seed(1)).tolist()
    expected = x070_logits(checkpoint, tokens)
    with use_backend("wkv7", backend), torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0]
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.double(), expected, atol=1e-4, rtol=0)


def test_greedy_generation_matches_the_reference(checkpoint, model):
    prompts = [[5, 17, 33, 8, 61, 12, 40], [9, 3, 27]]
    new_tokens = 12
    expected = [x070_greedy(checkpoint, prompt, new_tokens) for prompt in prompts]
    # Alone, and as rows of one left-padded batch.
    for prompt, want in zip(prompts, expected):
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        assert out[0, len(prompt):].tolist() == want
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    assert out[:, width:].tolist() == expected


def test_layer_zero_value_lora_is_dropped(checkpoint, model):
    names = dict(model.named_parameters())
    assert "model.layers.0.attn.v1" not in names
    torch.testing.assert_close(names["model.layers.1.attn.v1"], checkpoint["blocks.1.att.v1"], rtol=0, atol=0)
    assert model.config.v_low_rank_dim == SIZES["value"]
    assert model.config.intermediate_size == SIZES["ffn"]
