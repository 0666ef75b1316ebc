"""The training loop against a plain torch one written here: what `seqzoo train` logs and learns (loss, gradient
norm, learning rate, weights), what evaluate() reports, and what a resume restores beyond the weights."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from seqzoo.training.building import build_model
from seqzoo.training.checkpoint import SEAL, STATE_FILE, list_checkpoints, state_seal
from seqzoo.training.data import build_data
from seqzoo.training.state import CheckpointError, file_record
from seqzoo.training.tbptt import backward_sequence, chunked_forward
from seqzoo.training.trainer import evaluate, train
from tests.conftest import FAMILIES, tiny_model
from tests.training.test_trainer import make_recipe, nan_loss_on_second_call

NO_DROPOUT = {"preset": "lstm-tiny", "config": {"hidden_size": 16, "embedding_size": 16, "dropout": 0.0}}


def scheduled_lr(step: int, lr: float, warmup: int, total: int, schedule: str, floor: float) -> float:
    """Linear warmup to lr over `warmup` steps (the first step at lr/warmup), then constant, or linear/cosine decay
    that would reach lr * floor at step `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / (total - warmup)
    if schedule == "linear":
        return lr * (1 - (1 - floor) * progress)
    return lr * (floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2)


def plain_torch_run(recipe):
    """The same model trained by a textbook loop: mean token cross-entropy over the whole batch, AdamW with weight
    decay on matrices, global-norm clipping, the schedule above. Returns (rows, model)."""
    from accelerate.utils import set_seed

    t, o = recipe.train, recipe.optim
    set_seed(t.seed)  # the initial weights of train()
    data = build_data(recipe.data, t.seed)
    model = build_model(recipe, data).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                   {"params": others, "weight_decay": 0.0}], lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    rows = []
    for step in range(t.max_steps):
        lr = scheduled_lr(step, o.lr, recipe.warmup, t.max_steps, o.schedule, o.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = data.train_batch(step, t.batch_size)
        logits = model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.max_grad_norm or math.inf)
        optimizer.step()
        optimizer.zero_grad()
        scored = targets != -100
        correct = (logits.argmax(-1)[scored] == targets[scored]).sum()
        rows.append({"loss": float(loss.detach()), "grad_norm": float(norm), "lr": lr,
                     "accuracy": float(correct / scored.sum())})
    return rows, model


@pytest.mark.parametrize("schedule,accumulation,cap", [("cosine", 1, 0.0), ("linear", 2, 0.0), ("constant", 2, 0.5)])
def test_the_loop_equals_a_plain_torch_loop(tmp_path, schedule, accumulation, cap):
    recipe = make_recipe(tmp_path, model=NO_DROPOUT,
                         optim={"lr": 0.01, "warmup_steps": 2, "schedule": schedule,
                                **({} if schedule == "constant" else {"min_lr_ratio": 0.3}),  # (no decay to end)
                                "max_grad_norm": cap, "weight_decay": 0.1},
                         train={"max_steps": 6, "eval_every": 0, "gradient_accumulation_steps": accumulation})
    result = train(recipe, progress=False, save_model=False)
    expected, model = plain_torch_run(recipe)
    logged = [row for row in result.history if "loss" in row]
    assert len(logged) == len(expected) == 6
    for step, (ours, theirs) in enumerate(zip(logged, expected)):
        assert ours["step"] == step + 1
        assert ours["lr"] == pytest.approx(theirs["lr"], rel=1e-12), step
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5), step
        assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-4), step
        assert ours["accuracy"] == pytest.approx(theirs["accuracy"], rel=1e-9), step
    assert any(row["accuracy"] > 0 for row in logged)
    # the learning rate peaks at optim.lr at the last warmup step and never goes above it
    assert max(row["lr"] for row in logged) == pytest.approx(0.01, rel=1e-12)
    for (name, a), b in zip(result.model.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    data = build_data(recipe.data, recipe.train.seed)
    assert result.tokens_seen == sum(data.train_batch(step, 8)[0].numel() for step in range(6))


def reference_evaluation(model, eval_sets):
    """Per set and overall: mean token loss and argmax accuracy, one row at a time, in eval mode."""
    model.eval()
    sums, figures = torch.zeros(3, dtype=torch.float64), {}
    with torch.no_grad():
        for name, (inputs, targets) in eval_sets.items():
            s = torch.zeros(3, dtype=torch.float64)
            for x, y in zip(inputs, targets):
                logits = model(input_ids=x[None]).logits[0]
                scored = y != -100
                s += torch.tensor([float(F.cross_entropy(logits, y, ignore_index=-100, reduction="sum")),
                                   float((logits.argmax(-1)[scored] == y[scored]).sum()), float(scored.sum())],
                                  dtype=torch.float64)
            figures[name] = s
            sums += s
    return sums, figures


def test_evaluate_equals_a_row_by_row_evaluation_and_leaves_the_training_mode(tmp_path):
    from accelerate import Accelerator

    dropout = {"preset": "lstm-tiny", "config": {"hidden_size": 16, "embedding_size": 16, "dropout": 0.3}}
    recipe = make_recipe(tmp_path, model=dropout, data={"eval_samples": 5}, train={"max_steps": 2, "eval_every": 0})
    result = train(recipe, progress=False, save_model=False)
    eval_sets = build_data(recipe.data, recipe.train.seed).eval_sets()
    total, per_set = reference_evaluation(result.model, eval_sets)
    # the final evaluation of the run, batched by 8 (5 rows: 3 rows of padding scored nothing)
    for name, sums in [("all", total), *per_set.items()]:
        got = result.eval if name == "all" else result.eval["sets"][name]
        assert got["scored_tokens"] == int(sums[2])
        assert got["loss"] == pytest.approx(float(sums[0] / sums[2]), rel=1e-5), name
        assert got["accuracy"] == pytest.approx(float(sums[1] / sums[2]), rel=1e-9), name
    # called on a model in training mode (as the loop does), batches of 2 (5 = 2 + 2 + 1 + padding)
    model = result.model.train()
    figures = evaluate(model, eval_sets, Accelerator(cpu=True), batch_size=2, chunk=0)
    assert model.training, "evaluate() left the model in eval mode: dropout would be off for the rest of the run"
    assert figures["loss"] == pytest.approx(float(total[0] / total[2]), rel=1e-5)
    assert figures["scored_tokens"] == int(total[2])


@pytest.mark.parametrize("chunk", [0, 4])
def test_backward_sequence_sums_loss_and_correct_predictions_of_every_chunk(chunk):
    model = tiny_model(FAMILIES["lstm"]).eval()
    ids = torch.randint(3, 99, (2, 11))
    with torch.no_grad():
        logits = model(ids).logits
    targets = logits.argmax(-1)  # what the model predicts: every scored position is right, ...
    targets[0, ::3] = (targets[0, ::3] + 1) % logits.shape[-1]  # ... but these
    targets[:, -1] = -100
    loss, correct = backward_sequence(model, ids, targets, chunk, 1.0, lambda x: x.backward())
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)  # the loss of every chunk, summed
    assert int(correct) == 2 * 10 - 4


def test_skipped_steps_still_advance_the_schedule_and_resume(tmp_path, monkeypatch):
    """A skipped (non-finite) step is a step of the schedule: the next step's learning rate is the scheduled one,
    and a checkpoint written after a skipped step resumes (its scheduler position is the step)."""
    nan_loss_on_second_call(monkeypatch)
    recipe = make_recipe(tmp_path, optim={"lr": 0.01, "warmup_steps": 4},
                         train={"max_steps": 4, "eval_every": 0, "save_every": 2})
    result = train(recipe, progress=False)
    rows = [row for row in result.history if "loss" in row]
    assert [row.get("skipped", False) for row in rows] == [False, True, False, False]
    assert [row["lr"] for row in rows] == pytest.approx([0.0025, 0.005, 0.0075, 0.01], rel=1e-12)
    assert result.grad_health["first_flagged_step"]["exploding"] == 2  # (1-based, as logged)
    monkeypatch.undo()
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "checkpoint-4")
    assert train(recipe, resume=True, progress=False).steps == 4


def test_resume_restores_tokens_seen_and_gradient_health_and_starts_from_the_newest_checkpoint(tmp_path):
    sections = {"train": {"max_steps": 6, "save_every": 2, "save_total_limit": 3, "eval_every": 0,
                          "vanishing_grad_norm": 1e2, "exploding_grad_norm": 1e9}}
    reference = train(make_recipe(tmp_path, "reference", **sections), progress=False)
    assert reference.grad_health["flagged_steps"]["vanishing"] == 6  # (every norm is below 100)
    recipe = make_recipe(tmp_path, **sections)
    train(recipe, progress=False, stop=lambda row: row["step"] == 5)  # killed after step 5: checkpoints 2 and 4
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [2, 4]
    for resume in (True, tmp_path / "run"):
        shutil.rmtree(tmp_path / "run" / "checkpoints" / "checkpoint-6", ignore_errors=True)
        trained = []
        resumed = train(recipe, resume=resume, progress=False,
                        stop=lambda row, trained=trained: trained.append(row["step"]) and False)
        assert trained == [5], f"resume={resume!r} trained steps {trained}, not only those after checkpoint-4"
        assert resumed.tokens_seen == reference.tokens_seen
        assert resumed.grad_health == reference.grad_health
        info = json.loads((tmp_path / "run" / "seqzoo_training.json").read_text())
        assert info["tokens_seen"] == reference.tokens_seen and info["grad_health"] == reference.grad_health


def _saved_checkpoint(tmp_path):
    recipe = make_recipe(tmp_path, train={"max_steps": 2, "save_every": 2, "eval_every": 0})
    train(recipe, progress=False)
    for path in (tmp_path / "run").iterdir():
        if path.is_file() and path.name not in ("recipe.yaml", "metrics.jsonl"):
            path.unlink()
    return recipe, list_checkpoints(tmp_path / "run")[-1][1]


def _reseal(checkpoint, state):
    state = {k: v for k, v in state.items() if k != SEAL}
    (checkpoint / STATE_FILE).write_text(json.dumps({**state, SEAL: state_seal(state)}))


def test_a_scheduler_file_of_another_step_is_refused(tmp_path):
    # (edited with its checksum and the seal updated: the schedule position itself must be checked)
    recipe, checkpoint = _saved_checkpoint(tmp_path)
    path = checkpoint / "scheduler.json"
    saved = json.loads(path.read_text())
    saved["last_epoch"] = 1
    path.write_text(json.dumps(saved))
    state = json.loads((checkpoint / STATE_FILE).read_text())
    state["files"]["scheduler.json"] = file_record(path)
    _reseal(checkpoint, state)
    with pytest.raises(CheckpointError, match=r"does not hold this run's LR schedule position at step 2 \(its "
                                              r"last_epoch is 1, expected 2, the checkpoint's step\)"):
        train(recipe, resume=True, progress=False)


def test_a_checkpoint_of_another_number_of_processes_is_refused(tmp_path):
    recipe, checkpoint = _saved_checkpoint(tmp_path)
    state = json.loads((checkpoint / STATE_FILE).read_text())
    state["num_processes"] = 2
    state["files"]["rng_state_1.json"] = state["files"]["rng_state_0.json"]
    shutil.copy(checkpoint / "rng_state_0.json", checkpoint / "rng_state_1.json")
    _reseal(checkpoint, state)
    with pytest.raises(ValueError, match=r"was written by 2 process\(es\); this run has 1"):
        train(recipe, resume=True, progress=False)


def test_a_checkpoint_folder_being_written_is_never_listed(tmp_path):
    folder = tmp_path / "checkpoints"
    for name in ("checkpoint-2", "checkpoint-10", "checkpoint-4.tmp", "checkpoint-7x", "checkpoint-3"):
        (folder / name).mkdir(parents=True)
        (folder / name / STATE_FILE).write_text("{}")  # (.tmp: killed after its state file, before the rename)
    (folder / "checkpoint-5").mkdir()  # no state file: incomplete
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 3, 10]


def test_chunked_forward_hands_on_a_detached_state():
    # (evaluate() runs it under no_grad; called with gradients on, each chunk's graph must end at its border)
    model = tiny_model(FAMILIES["lstm"]).eval()
    ids = torch.randint(3, 99, (2, 9))
    grads = []

    def keep_grad(module, args, out):
        index = len(calls)
        calls.append(index)
        out.register_hook(lambda grad: grads.append((index, float(grad.abs().sum()))))

    calls = []
    handle = model.get_input_embeddings().register_forward_hook(keep_grad)
    logits, cache = chunked_forward(model, ids, 4)
    handle.remove()
    assert not any(t.requires_grad for t in cache.tensors())
    logits[:, -1].sum().backward()  # the last chunk's output reaches no earlier chunk's inputs
    assert [total == 0 for _, total in sorted(grads)] == [True, True, False]


def test_evaluate_in_tbptt_chunks_scores_each_chunk_as_it_comes(monkeypatch):
    """evaluate() with a TBPTT chunk holds one chunk's logits at a time, as training does; it concatenated the whole
    window's (B, T, vocab) logits first (32x training's for a window of 8,192 read in chunks of 256)."""
    from accelerate import Accelerator

    import seqzoo.training.tbptt as tbptt_module
    import seqzoo.training.trainer as trainer_module

    model = tiny_model(FAMILIES["lstm"]).eval()
    ids = torch.randint(3, 99, (3, 11))
    targets = torch.randint(3, 99, (3, 11))
    targets[1, 2::3] = -100
    whole = evaluate(model, {"set": (ids, targets)}, Accelerator(cpu=True), batch_size=3, chunk=0)
    lengths, original = [], tbptt_module.token_loss_sum

    def recording(logits, y):
        lengths.append(logits.shape[1])
        return original(logits, y)

    monkeypatch.setattr(tbptt_module, "token_loss_sum", recording)
    monkeypatch.setattr(trainer_module, "token_loss_sum", recording)
    chunked = evaluate(model, {"set": (ids, targets)}, Accelerator(cpu=True), batch_size=3, chunk=4)
    assert lengths and max(lengths) <= 4, f"evaluate() scored logits of {max(lengths)} positions at once"
    assert chunked["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert chunked["accuracy"] == whole["accuracy"] and chunked["scored_tokens"] == whole["scored_tokens"]
