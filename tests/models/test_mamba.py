"""Mamba / Mamba-2 specifics beyond the registry-driven tests: padding in the middle of a cached continuation,
several SSD chunks, O(1) decode state, gradient checkpointing and the norm variants."""

from __future__ import annotations

import pytest
import torch

from seqzoo.models.compat import output_cache
from tests.conftest import tiny_model
from tests.models.test_common import left_pad

# Mamba-2 with chunk_size 4 so that 7-13 token sequences cross several SSD chunks.
VARIANTS = {"mamba": ("mamba-tiny", {}), "mamba2": ("mamba2-tiny", {"chunk_size": 4, "n_groups": 2})}


@pytest.fixture(params=sorted(VARIANTS))
def model(request):
    preset, overrides = VARIANTS[request.param]
    return tiny_model(preset, **overrides)


def states(cache, row):
    return [cache.layer(i)[name][row] for i in range(len(cache)) for name in ("conv", "ssm")]


def test_padding_inside_a_cached_continuation_changes_nothing(model):
    # Two calls, each left-padded per row: row 0 has padding *between* its first and second part, which
    # transformers' Mamba would feed into the state. Each row must end exactly where its tokens alone end.
    first, second = [[5, 17, 33, 8, 61], [9, 3]], [[12, 40], [77, 44, 21, 6]]
    ids1, mask1 = left_pad(first)
    ids2, mask2 = left_pad(second)
    out = model(ids1, attention_mask=mask1, use_cache=True)
    out = model(ids2, attention_mask=torch.cat([mask1, mask2], 1), cache=output_cache(out))
    for row in range(2):
        alone = model(torch.tensor([first[row] + second[row]]), use_cache=True)
        torch.testing.assert_close(out.logits[row, -1], alone.logits[0, -1], atol=1e-5, rtol=1e-4)
        for batched, single in zip(states(output_cache(out), row), states(output_cache(alone), 0)):
            torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


def test_all_padding_row_keeps_a_zero_state(model):
    ids = torch.tensor([[0, 0, 0], [5, 6, 7]])
    out = model(ids, attention_mask=torch.tensor([[0, 0, 0], [1, 1, 1]]), use_cache=True)
    assert all(bool((state == 0).all()) for state in states(output_cache(out), 0))
    assert any(bool((state != 0).any()) for state in states(output_cache(out), 1))


def test_decoding_state_is_constant_size(model):
    out = model(torch.tensor([[5, 17, 33]]), use_cache=True)
    cache = output_cache(out)
    shapes = [tuple(t.shape) for t in cache.tensors()]
    nbytes = cache.state_bytes()
    token = out.logits[:, -1:].argmax(-1)
    for _ in range(20):
        out = model(token, cache=cache)
        token = out.logits[:, -1:].argmax(-1)
    assert [tuple(t.shape) for t in cache.tensors()] == shapes
    assert cache.state_bytes() == nbytes == model.config.state_bytes_per_sequence(4)
    assert all(t.dtype == torch.float32 for t in cache.tensors())


def test_gradient_checkpointing_gives_the_same_gradients(model):
    ids = torch.randint(3, 99, (2, 9))
    model.train()
    model(ids, labels=ids).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    model(ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("overrides", [{"norm_before_gate": True}, {"rms_norm": False}])
def test_mamba2_gate_variants_run_and_differ(overrides):
    ids = torch.tensor([[5, 17, 33, 8, 61, 12, 40]])
    base = tiny_model("mamba2-tiny")
    variant = tiny_model("mamba2-tiny", **overrides)
    assert (variant.model.layers[0].mixer.norm is None) == ("rms_norm" in overrides)
    with torch.no_grad():  # make the gated norm's weight matter before comparing
        for m in (base, variant):
            for layer in m.model.layers:
                if layer.mixer.norm is not None:
                    layer.mixer.norm.weight.copy_(torch.linspace(0.5, 1.5, layer.mixer.norm.weight.numel()))
    assert not torch.allclose(base(ids).logits, variant(ids).logits, atol=1e-4)


def test_init_follows_mamba():
    model = tiny_model("mamba-tiny", time_step_min=0.01, time_step_max=0.02)
    mixer = model.model.layers[0].mixer
    torch.testing.assert_close(mixer.A_log.exp()[0], torch.arange(1, mixer.state_size + 1, dtype=torch.float32))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert bool(((dt >= 0.01 - 1e-6) & (dt <= 0.02 + 1e-6)).all())
    mixer2 = tiny_model("mamba2-tiny").model.layers[1].mixer
    assert torch.equal(mixer2.D, torch.ones_like(mixer2.D))
    torch.testing.assert_close(mixer2.A_log.exp(), torch.arange(1, mixer2.num_heads + 1, dtype=torch.float32))


def test_float64_runs_in_float64_end_to_end(model):
    # residual_in_fp32, the norms and the time steps are "float32 at least": a float64 model must not round its
    # residual stream, norms or time steps to float32 (gradcheck fails at float32 rounding, padding checks blur).
    model = model.double()
    embeds = torch.randn(1, 2, model.config.hidden_size, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e: model(inputs_embeds=e).logits, (embeds,), eps=1e-6, atol=1e-5,
                                      fast_mode=True)



def test_mamba2_time_step_limit_applies_to_tokens_and_leaves_padding_an_identity():
    # The clamp to time_step_limit comes before the mask: a lower limit above 0 must not give padding a time step
    # (which would decay a carried state at every pad).
    model = tiny_model("mamba2-tiny", time_step_limit=(0.5, 0.6))
    first, second = [[5, 17, 33, 8, 61], [9, 3]], [[12, 40], [77, 44, 21, 6]]
    ids1, mask1 = left_pad(first)
    ids2, mask2 = left_pad(second)
    with torch.no_grad():
        out = model(ids1, attention_mask=mask1, use_cache=True)
        out = model(ids2, attention_mask=torch.cat([mask1, mask2], 1), cache=output_cache(out))
        alone = model(torch.tensor([first[0] + second[0]]))
        unlimited = tiny_model("mamba2-tiny")(torch.tensor([first[0] + second[0]]))
    torch.testing.assert_close(out.logits[0, -1], alone.logits[0, -1], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(alone.logits, unlimited.logits, atol=1e-4)  # the limit changes the time steps


@pytest.mark.parametrize("preset", ["mamba-tiny", "mamba2-tiny"])
def test_a_bfloat16_model_scans_with_float32_time_steps(preset, monkeypatch):
    # The time step goes through softplus in float32 (like the state): in bf16 a step of 0.0123 is 0.01233 ...
    from seqzoo.layers import mamba, mamba2

    seen = []
    for module in (mamba, mamba2):
        real = module.dispatch

        def spy(op, *args, _real=real, **kwargs):
            if op in ("selective_scan", "ssd"):
                seen.append(args[1].dtype)
            return _real(op, *args, **kwargs)

        monkeypatch.setattr(module, "dispatch", spy)
    model = tiny_model(preset).to(torch.bfloat16)
    with torch.no_grad():
        model(torch.tensor([[5, 17, 33, 8]]))
    assert seen and all(dtype == torch.float32 for dtype in seen)
