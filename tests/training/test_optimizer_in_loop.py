"""Gradient clipping and the LR schedule act on the optimizer inside `seqzoo train`: what the optimizer sees at each
step -- its learning rate and the norm of the gradients it applies -- is observed, not only the helper functions."""

from __future__ import annotations

import math

import pytest
import torch

import seqzoo.training.trainer as trainer
from seqzoo.training.trainer import lr_factor, train
from tests.training.test_trainer import make_recipe


@pytest.fixture
def optimizer_steps(monkeypatch):
    """Records (learning rate of every group, global norm of the gradients) each time the optimizer steps."""
    seen: list[tuple[list[float], float]] = []
    real = trainer.make_optimizer

    def spied(model, recipe):
        optimizer = real(model, recipe)
        step = optimizer.step

        def recording_step(*args, **kwargs):
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            seen.append(([group["lr"] for group in optimizer.param_groups],
                         float(torch.nn.utils.get_total_norm(grads))))
            return step(*args, **kwargs)

        optimizer.step = recording_step
        return optimizer

    monkeypatch.setattr(trainer, "make_optimizer", spied)
    return seen


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_the_optimizer_steps_with_the_scheduled_learning_rate(optimizer_steps, tmp_path, schedule):
    recipe = make_recipe(tmp_path, optim={"lr": 0.01, "warmup_steps": 3, "schedule": schedule, "min_lr_ratio": 0.2},
                         train={"max_steps": 8, "eval_every": 0})
    result = train(recipe, progress=False)
    assert len(optimizer_steps) == 8
    for step, (lrs, _) in enumerate(optimizer_steps):
        expected = 0.01 * lr_factor(step, recipe)
        assert all(math.isclose(lr, expected, rel_tol=1e-12) for lr in lrs), (step, lrs, expected)
    lrs = [lrs[0] for lrs, _ in optimizer_steps]
    assert lrs[:3] == pytest.approx([0.01 / 3, 0.02 / 3, 0.01]) and lrs[-1] < 0.5 * lrs[2]
    assert [row["lr"] for row in result.history if "lr" in row] == pytest.approx(lrs)  # the log tells the truth


@pytest.mark.parametrize("cap,accumulation", [(0.05, 1), (0.08, 2)])
def test_clipping_caps_the_gradient_the_optimizer_applies(optimizer_steps, tmp_path, cap, accumulation):
    # With accumulation the cap applies to the summed gradient of all micro-batches, once per step.
    recipe = make_recipe(tmp_path, optim={"max_grad_norm": cap},
                         train={"max_steps": 4, "eval_every": 0, "gradient_accumulation_steps": accumulation})
    result = train(recipe, progress=False)
    logged = [row["grad_norm"] for row in result.history if "grad_norm" in row]
    assert all(norm > 2 * cap for norm in logged)  # so the cap binds on every step
    assert len(optimizer_steps) == 4
    for _, applied in optimizer_steps:
        assert applied == pytest.approx(cap, rel=1e-4)


def test_max_grad_norm_zero_applies_the_gradient_unclipped(optimizer_steps, tmp_path):
    recipe = make_recipe(tmp_path, optim={"max_grad_norm": 0.0}, train={"max_steps": 3, "eval_every": 0})
    result = train(recipe, progress=False)
    logged = [row["grad_norm"] for row in result.history if "grad_norm" in row]
    assert [applied for _, applied in optimizer_steps] == pytest.approx(logged, rel=1e-5)
    assert max(logged) > 0.1
