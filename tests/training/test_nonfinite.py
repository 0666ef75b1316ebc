"""No non-finite model is ever written: weights are checked after every optimizer step, runs of NaN gradients stop
after train.max_nonfinite_steps, and a stopped run resumes from its last checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import seqzoo.training.tbptt as tbptt
import seqzoo.training.trainer as trainer
from seqzoo.training.checkpoint import list_checkpoints
from seqzoo.training.state import NonFiniteError, require_finite, save_model_state
from seqzoo.training.trainer import train
from tests.training.test_trainer import make_recipe


def nan_loss_from_call(monkeypatch, first_bad_call):
    real = tbptt.token_loss_sum
    calls = {"n": 0}

    def loss(logits, targets):
        calls["n"] += 1
        value, correct = real(logits, targets)
        return (value * float("nan"), correct) if calls["n"] >= first_bad_call else (value, correct)

    monkeypatch.setattr(tbptt, "token_loss_sum", loss)


def assert_no_final_model(run):
    assert not (run / "model.safetensors").exists() and not (run / "config.json").exists()


def test_infinite_learning_rate_stops_before_anything_non_finite_is_saved_and_the_run_resumes(tmp_path, monkeypatch):
    # Gradients stay finite; the update is not (inf * m / sqrt(v)). The recipe refuses lr=inf, so the schedule
    # is made to return it from the third step on.
    recipe = make_recipe(tmp_path, train={"max_steps": 4, "save_every": 1, "eval_every": 0})
    real_factor = trainer.lr_factor
    monkeypatch.setattr(trainer, "lr_factor", lambda step, r: float("inf") if step >= 2 else real_factor(step, r))
    with pytest.raises(NonFiniteError, match=r"step 3: after the optimizer step \d+ parameter tensor\(s\) hold NaN "
                                             r"or inf \(model\.embed_tokens\.weight.*learning rate of inf"):
        train(recipe, progress=False)
    run = tmp_path / "run"
    assert [step for step, _ in list_checkpoints(run)] == [1, 2]
    for _, folder in list_checkpoints(run):
        assert all(torch.isfinite(t).all() for t in load_file(str(folder / "model.safetensors")).values())
    assert_no_final_model(run)

    # checkpoint-2 already holds the learning rate of step 3 (inf) in its optimizer state; resume from step 1.
    shutil.rmtree(list_checkpoints(run)[-1][1])
    monkeypatch.setattr(trainer, "lr_factor", real_factor)
    resumed = train(recipe, resume=True, progress=False)
    straight = train(make_recipe(tmp_path, "straight", train={"max_steps": 4, "save_every": 1, "eval_every": 0}),
                     progress=False)
    assert resumed.steps == 4
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_consecutive_nonfinite_gradients_stop_after_max_nonfinite_steps(tmp_path, monkeypatch):
    nan_loss_from_call(monkeypatch, first_bad_call=2)
    recipe = make_recipe(tmp_path, train={"max_steps": 6, "eval_every": 0, "max_nonfinite_steps": 2})
    with pytest.raises(NonFiniteError, match=r"step 4: the gradient norm was NaN/inf on 3 consecutive steps, more "
                                             r"than train.max_nonfinite_steps=2"):
        train(recipe, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row.get("skipped", False) for row in rows] == [False, True, True]
    assert_no_final_model(tmp_path / "run")


def test_max_nonfinite_steps_zero_stops_at_the_first(tmp_path, monkeypatch):
    nan_loss_from_call(monkeypatch, first_bad_call=3)
    with pytest.raises(NonFiniteError, match="step 3: the gradient norm was NaN/inf on 1 consecutive"):
        train(make_recipe(tmp_path, train={"max_steps": 6, "eval_every": 0, "max_nonfinite_steps": 0}),
              progress=False)


def test_a_finite_step_resets_the_count(tmp_path, monkeypatch):
    real = tbptt.token_loss_sum
    calls = {"n": 0}

    def every_other_step_nan(logits, targets):
        calls["n"] += 1
        value, correct = real(logits, targets)
        return (value * float("nan"), correct) if calls["n"] % 2 == 0 else (value, correct)

    monkeypatch.setattr(tbptt, "token_loss_sum", every_other_step_nan)
    recipe = make_recipe(tmp_path, train={"max_steps": 6, "eval_every": 0, "max_nonfinite_steps": 1})
    result = train(recipe, progress=False)  # eval forwards also count calls, so check the train rows only
    assert sum(row.get("skipped", False) for row in result.history) >= 2
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_applying_a_nan_gradient_stops_the_run(tmp_path, monkeypatch):
    # skip_nonfinite_steps off: the NaN update is applied, and the weight check stops the run at that step.
    nan_loss_from_call(monkeypatch, first_bad_call=2)
    recipe = make_recipe(tmp_path, train={"max_steps": 4, "eval_every": 0, "skip_nonfinite_steps": False})
    with pytest.raises(NonFiniteError, match=r"step 2: after the optimizer step .* gradient norm of nan"):
        train(recipe, progress=False)
    assert_no_final_model(tmp_path / "run")


def test_cli_prints_one_error_line(tmp_path, monkeypatch, capsys):
    from seqzoo.cli import main

    nan_loss_from_call(monkeypatch, first_bad_call=1)
    assert main(["train", "lstm-tiny", "data.source=task", "data.task=copy", "data.distances=[2]", "max_steps=3",
                 "max_nonfinite_steps=0", "batch_size=4", "--output-dir", str(tmp_path / "cli"), "--no-progress"]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: step 1: the gradient norm was NaN/inf") and "\n" not in message


def test_writers_refuse_non_finite_tensors(tmp_path):
    weights = {"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")]), "c": torch.arange(3)}
    with pytest.raises(NonFiniteError, match="refusing to save a checkpoint: b hold NaN or inf"):
        save_model_state(weights, tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors").exists()
    require_finite({"huge": torch.full((4,), 3e38)}, "x")  # finite, though its 2-norm overflows
    with pytest.raises(NonFiniteError, match="inf"):
        require_finite({"inf": torch.tensor([float("-inf")])}, "the final model")
