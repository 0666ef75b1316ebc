"""The training loop in one process: outputs, accumulation, exact resume after an interrupted checkpoint write,
run identity, gradient health."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import seqzoo.training.checkpoint as checkpoint
import seqzoo.training.tbptt as tbptt
from seqzoo.training.building import check_recipe, lr_factor
from seqzoo.training.checkpoint import list_checkpoints
from seqzoo.training.grad_health import GradientHealth, classify
from seqzoo.training.recipe import recipe_from_dict
from seqzoo.training.trainer import train

SMALL_LSTM = {"preset": "lstm-tiny", "config": {"hidden_size": 16, "embedding_size": 16}}


def make_recipe(tmp_path: Path, name: str = "run", **sections) -> object:
    values = {
        "name": name,
        "output_dir": str(tmp_path / name),
        "model": SMALL_LSTM,
        "data": {"source": "task", "task": "copy", "distances": [2, 5], "symbols": 6, "items": 2,
                 "eval_samples": 16},
        "optim": {"lr": 0.01, "warmup_steps": 2},
        "train": {"max_steps": 6, "batch_size": 8, "eval_every": 3, "log_every": 100},
    }
    for section, body in sections.items():
        values[section] = {**values.get(section, {}), **body} if isinstance(body, dict) else body
    if values["data"].get("source") != "task":  # a corpus reads no task settings (the recipe refuses them)
        for name in ("task", "distances", "symbols", "items"):
            values["data"].pop(name, None)
    return recipe_from_dict(values)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, exact: bool = True, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=atol, msg=key)


def test_text_run_learns_and_saves_model_tokenizer_and_training_info(tmp_path):
    recipe = make_recipe(tmp_path, data={"source": "pydoc", "seq_len": 32, "eval_samples": 8},
                         train={"max_steps": 12, "eval_every": 6})
    result = train(recipe, progress=False)
    out = tmp_path / "run"
    losses = [row["loss"] for row in result.history if "loss" in row]
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.5
    info = json.loads((out / "seqzoo_training.json").read_text())
    assert info["dataset"] == "pydoc_data.topics" and info["steps"] == 12
    assert info["tokens_seen"] == result.tokens_seen == 12 * 8 * 32
    assert math.isclose(info["eval"]["perplexity"], math.exp(info["eval"]["loss"]))
    assert info["recipe"]["train"]["max_steps"] == 12 and info["tokenizer"] == "seqzoo byte tokenizer"
    assert info["grad_health"]["flagged_steps"] == {"vanishing": 0, "exploding": 0, "nonfinite": 0}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval" in r] == [6, 12]
    assert all(r["grad_flag"] == "ok" and r["grad_norm"] > 0 for r in rows if "loss" in r)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert_same_weights(loaded.state_dict(), result.model.state_dict())
    assert (out / "tokenizer.json").exists()


def test_the_saved_tokenizer_truncates_where_the_models_positions_end(tmp_path):
    from transformers import AutoTokenizer

    model = {"preset": "transformer-gpt2-small", "config": {"hidden_size": 16, "num_hidden_layers": 1,
                                                            "num_attention_heads": 2, "intermediate_size": 32,
                                                            "max_position_embeddings": 40}}
    train(make_recipe(tmp_path, model=model, data={"source": "pydoc", "seq_len": 16, "eval_samples": 2},
                      train={"max_steps": 1, "eval_every": 1}), progress=False)
    assert AutoTokenizer.from_pretrained(tmp_path / "run").model_max_length == 40


def test_a_run_leaves_the_callers_random_streams_and_determinism_setting_as_they_were(tmp_path):
    """train() seeds Python's, NumPy's and torch's generators and draws from them; a caller (a notebook, a script
    between two runs) finds its own streams back afterwards, and its torch.use_deterministic_algorithms(True,
    warn_only=True), which came back without warn_only (errors where the caller had asked for warnings)."""
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        recipe = make_recipe(tmp_path, data={"eval_samples": 2},
                             train={"max_steps": 1, "eval_every": 1, "deterministic": True})
        train(recipe, progress=False, save_model=False)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert random.getstate() == before[0]
    assert (np.random.get_state()[1] == before[1]).all() and torch.equal(torch.get_rng_state(), before[2])


def test_a_run_leaves_accelerates_state_as_the_caller_had_it(tmp_path):
    """accelerate keeps one AcceleratorState per process, fixed by its first Accelerator: the run's was left behind,
    so the caller's next Accelerator of another precision (its own, transformers' Trainer(bf16=True)) failed with
    "AcceleratorState has already been initialized and cannot be changed, restart your runtime completely"."""
    from accelerate.state import AcceleratorState

    before = dict(AcceleratorState._shared_state)
    recipe = make_recipe(tmp_path, data={"eval_samples": 2},
                         train={"max_steps": 1, "eval_every": 1, "mixed_precision": "bf16"})
    train(recipe, progress=False, save_model=False)
    assert dict(AcceleratorState._shared_state) == before


def test_task_run_reports_accuracy_per_distance_without_a_tokenizer(tmp_path):
    result = train(make_recipe(tmp_path), progress=False)
    assert set(result.eval["sets"]) == {"distance=2", "distance=5"}
    assert all(0 <= s["accuracy"] <= 1 and s["scored_tokens"] == 16 * 2 for s in result.eval["sets"].values())
    assert result.model.config.vocab_size == 3 + 6
    assert not (tmp_path / "run" / "tokenizer.json").exists()


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    one = train(make_recipe(tmp_path, "one", train={"max_steps": 3}), progress=False)
    four = train(make_recipe(tmp_path, "four", train={"max_steps": 3, "gradient_accumulation_steps": 4}),
                 progress=False)
    # Adam divides by the gradient's own scale, so the summation-order noise of accumulating (~1e-7 relative in
    # the gradients) reaches ~2e-6 in weights whose gradients are near zero (the classic LMs' small top-layer input
    # weights); a lost or doubled micro-batch changes the gradient itself, and the logged losses below.
    assert_same_weights(one.model.state_dict(), four.model.state_dict(), exact=False, atol=1e-5)
    for a, b in zip(one.history, four.history):
        if "loss" in a:
            assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5)


def test_interrupted_checkpoint_write_leaves_the_previous_one_and_resume_is_exact(tmp_path, monkeypatch):
    # Dropout and TBPTT on: resuming must restore the RNG state and the data position, not only the weights.
    sections = dict(model={"preset": "lstm-tiny", "config": {"hidden_size": 16, "embedding_size": 16,
                                                             "dropout": 0.2}},
                    train={"save_every": 2, "tbptt_chunk": 4, "deterministic": True})
    reference = train(make_recipe(tmp_path, "reference", **sections), progress=False)

    real_write = checkpoint.write_training_state

    def dies_while_writing_step_4(accelerator, model, optimizer, scheduler, folder):
        if folder.name == "checkpoint-4.tmp":
            (folder / "model.safetensors").write_bytes(b"half a file")
            raise KeyboardInterrupt("killed while writing a checkpoint")
        return real_write(accelerator, model, optimizer, scheduler, folder)

    recipe = make_recipe(tmp_path, "interrupted", **sections)
    monkeypatch.setattr(checkpoint, "write_training_state", dies_while_writing_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, progress=False)
    monkeypatch.undo()
    run = tmp_path / "interrupted"
    assert [step for step, _ in list_checkpoints(run)] == [2]
    assert (run / "checkpoints" / "checkpoint-4.tmp").is_dir()

    resumed = train(recipe, resume=True, progress=False)
    assert resumed.steps == 6
    assert_same_weights(weights(run), weights(tmp_path / "reference"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 7))  # steps 3-4 of the dead run are gone
    assert [r["loss"] for r in rows if "loss" in r] == [r["loss"] for r in reference.history if "loss" in r]
    assert [step for step, _ in list_checkpoints(run)] == [4, 6]  # save_total_limit=2
    assert not (run / "checkpoints" / "checkpoint-4.tmp").exists()


def test_resuming_an_earlier_checkpoint_keeps_the_new_checkpoints_not_the_old_runs_later_ones(tmp_path, caplog):
    # Resumed from checkpoint-2 of a run that had written 2, 4 and 6: the rotation counted the old checkpoint-6 as
    # the newest and deleted the checkpoint-4 just written (save_total_limit=1), leaving --resume only the old one.
    run = tmp_path / "run"
    reference = train(make_recipe(tmp_path, train={"save_every": 2, "save_total_limit": 3}), progress=False)
    assert [step for step, _ in list_checkpoints(run)] == [2, 4, 6]
    recipe = make_recipe(tmp_path, train={"save_every": 2, "save_total_limit": 1})
    with caplog.at_level("WARNING", logger="seqzoo.training"):
        train(recipe, resume=run / "checkpoints" / "checkpoint-2", progress=False, stop=lambda row: row["step"] == 5)
    assert [step for step, _ in list_checkpoints(run)] == [4]
    assert "this run writes its own steps in place of checkpoint-4, checkpoint-6 (removed)" in caplog.text  # (said)
    resumed = train(recipe, resume=True, progress=False)
    assert [r["step"] for r in resumed.history if "loss" in r] == list(range(1, 7))
    assert [r["loss"] for r in resumed.history if "loss" in r] == [r["loss"] for r in reference.history
                                                                   if "loss" in r]
    assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())


def test_symlinked_checkpoints_are_rotated_by_their_link_and_the_run_goes_on(tmp_path, caplog):
    # Checkpoints moved to another disk and linked back: the rotation's shutil.rmtree refused the link and stopped the
    # run with "cannot write checkpoint ... checkpoint-6 is intact" (both), and no final model.
    reference = train(make_recipe(tmp_path, "reference", train={"save_every": 2}), progress=False)
    run, other_disk = tmp_path / "run", tmp_path / "other-disk"
    train(make_recipe(tmp_path, train={"save_every": 2, "save_total_limit": 3}), progress=False)
    shutil.rmtree(run / "checkpoints" / "checkpoint-6")
    other_disk.mkdir()
    for step in (2, 4):
        shutil.move(run / "checkpoints" / f"checkpoint-{step}", other_disk / f"checkpoint-{step}")
        (run / "checkpoints" / f"checkpoint-{step}").symlink_to(other_disk / f"checkpoint-{step}")
    kept = _files(other_disk)
    recipe = make_recipe(tmp_path, train={"save_every": 2, "save_total_limit": 1})
    with caplog.at_level("WARNING", logger="seqzoo.training"):
        # (from checkpoint-2: step 4 is written in place of the linked checkpoint-4, then the rotation meets the links)
        result = train(recipe, resume=run / "checkpoints" / "checkpoint-2", progress=False)
    assert result.steps == 6 and (run / "model.safetensors").is_file()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["checkpoint-6"]
    assert _files(other_disk) == kept  # (only the links went)
    for step in (2, 4):
        assert (f"checkpoint-{step} was a symbolic link to {other_disk / f'checkpoint-{step}'}: removed the link, kept "
                "the checkpoint it points to") in caplog.text
    assert_same_weights(weights(run), weights(tmp_path / "reference"))
    assert [r["loss"] for r in result.history if "loss" in r] == [r["loss"] for r in reference.history if "loss" in r]


def test_a_checkpoint_the_rotation_cannot_remove_is_named_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    real = checkpoint._remove_checkpoint

    def refuses_checkpoint_2(path):
        if path.name == "checkpoint-2":
            raise PermissionError(13, "Permission denied", str(path))
        real(path)

    monkeypatch.setattr(checkpoint, "_remove_checkpoint", refuses_checkpoint_2)
    with caplog.at_level("WARNING", logger="seqzoo.training"):
        result = train(make_recipe(tmp_path, train={"save_every": 2, "save_total_limit": 1}), progress=False)
    assert result.steps == 6 and (tmp_path / "run" / "model.safetensors").is_file()
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [2, 6]
    folder = tmp_path / "run" / "checkpoints"
    assert (f"checkpoint {folder / 'checkpoint-4'} is written, but the older {folder / 'checkpoint-2'} could not be "
            "removed (Permission denied") in caplog.text


def test_a_full_disk_while_appending_to_the_metrics_names_the_file_and_the_checkpoint_to_resume(tmp_path,
                                                                                                monkeypatch):
    # It said only "No space left on device", where a checkpoint write names its folder and the checkpoint intact.
    import errno
    import io

    from seqzoo.outputs import OutputError

    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open, appends = Path.open, []

    def opening(path, mode="r", *args, **kwargs):
        if path.name == "metrics.jsonl" and mode == "a":
            appends.append(path)
            if len(appends) == 5:  # (step 5's row; checkpoint-4 is written)
                return FullDisk()
        return real_open(path, mode, *args, **kwargs)

    recipe = make_recipe(tmp_path, train={"save_every": 2, "eval_every": 0})
    run = tmp_path / "run"
    monkeypatch.setattr(Path, "open", opening)
    with pytest.raises(OutputError, match=re.escape(
            f"cannot append step 5 to {str(run / 'metrics.jsonl')!r}: No space left on device; the newest complete "
            f"checkpoint, {str(run / 'checkpoints' / 'checkpoint-4')!r}, is intact: continue from it with --resume")):
        train(recipe, progress=False)
    monkeypatch.undo()
    resumed = train(recipe, resume=True, progress=False)
    assert [r["step"] for r in resumed.history if "loss" in r] == list(range(1, 7))


def test_resume_refuses_another_runs_checkpoint_and_fresh_runs_refuse_a_used_folder(tmp_path):
    train(make_recipe(tmp_path, "a", train={"max_steps": 2, "save_every": 2}), progress=False)
    other = make_recipe(tmp_path, "b", optim={"lr": 0.02})
    with pytest.raises(ValueError, match=r"belongs to another run .*optim.lr: 0.01 \(checkpoint\) vs 0.02") as raised:
        train(other, resume=str(tmp_path / "a"), progress=False)
    # The overrides that resume it after all, which do resume it; a larger max_steps would not extend the run.
    assert str(raised.value).endswith(". To resume it, give its values: optim.lr=0.01 train.max_steps=2; "
                                      "train.max_steps also sets the learning-rate schedule, so a run is not extended "
                                      "by raising it")
    resumed = make_recipe(tmp_path, "b", optim={"lr": 0.01}, train={"max_steps": 2})
    carried = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    # (nothing left to train: the history is run a's, carried into b's folder)
    assert train(resumed, resume=str(tmp_path / "a"), progress=False).history == carried
    with pytest.raises(ValueError, match="already holds checkpoints of a run; pass --resume"):
        train(make_recipe(tmp_path, "a", train={"max_steps": 2, "save_every": 2}), progress=False)
    with pytest.raises(ValueError, match=r"--resume: no complete checkpoint in .*: '.*c' does not exist: no run wrote "
                                         r"there\. A run writes to its output_dir, by default runs/<name>") as missing:
        train(make_recipe(tmp_path, "c"), resume=True, progress=False)
    # (where a run started before model preset runs were named after their model and data is; not "start again")
    assert "runs/<preset>-pydoc" in str(missing.value) and "Start the run again" not in str(missing.value)
    (tmp_path / "c" / "checkpoints").mkdir(parents=True)  # (a folder, but no checkpoint in it)
    with pytest.raises(ValueError, match=r"--resume: no complete checkpoint in .*: the run stopped before its first"):
        train(make_recipe(tmp_path, "c"), resume=True, progress=False)
    # As a run interrupted before its first checkpoint leaves it: --resume sends the user to --force (a plain start
    # refused the folder, and sent them back to --resume), and a plain start says so too
    (tmp_path / "c" / "recipe.yaml").write_text("{}")
    (tmp_path / "c" / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"stopped before its first one .*\. Start the run again with --force in "
                                         r"place of --resume"):
        train(make_recipe(tmp_path, "c"), resume=True, progress=False)
    with pytest.raises(ValueError, match=r"holds a run that stopped before its first checkpoint \(only its "
                                         r"checkpoints, metrics.jsonl, recipe.yaml\), which --resume cannot continue; "
                                         r"pass --force"):
        train(make_recipe(tmp_path, "c"), progress=False)
    (tmp_path / "a" / "checkpoints" / "checkpoint-2" / "trainer_state.json").unlink()  # a damaged checkpoint
    with pytest.raises(ValueError, match=r"checkpoint-2 lack\(s\) trainer_state.json, which a complete checkpoint "
                                         "writes last: damaged"):
        train(make_recipe(tmp_path, "a", train={"max_steps": 2, "save_every": 2}), resume=True, progress=False)
    with pytest.raises(ValueError, match="--resume: '.*nowhere' does not exist"):
        train(make_recipe(tmp_path, "c"), resume=str(tmp_path / "nowhere"), progress=False)


def test_a_fresh_run_refuses_a_folder_holding_anything_unless_forced(tmp_path):
    """A finished run without checkpoints, or a folder of other files, is not written over (the old run's files
    would stay beside the new model); --force starts over in it, deleting what it held."""
    train(make_recipe(tmp_path, "a", train={"max_steps": 2, "save_every": 0}), progress=False)
    (tmp_path / "a" / "stale.txt").write_text("of the first run")
    before = weights(tmp_path / "a")
    second = make_recipe(tmp_path, "a", train={"max_steps": 2, "save_every": 0}, optim={"lr": 0.5})
    with pytest.raises(ValueError, match=r"already holds files \(a finished run, or others\); pass --resume .* "
                                         r"--force to start over"):
        train(second, progress=False)
    assert_same_weights(weights(tmp_path / "a"), before)  # nothing touched
    train(second, progress=False, force=True)
    assert not (tmp_path / "a" / "stale.txt").exists()
    assert (tmp_path / "a" / "model.safetensors").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        train(make_recipe(tmp_path, "file"), progress=False)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_force_deletes_the_old_run_only_once_the_new_one_has_its_data_and_model(tmp_path):
    """--force deleted the old run first, then refused the new one (a misspelt config field, a missing data file),
    leaving neither; with the data inside the folder, it deleted the data it was about to read."""
    train(make_recipe(tmp_path, "a", train={"max_steps": 2, "save_every": 0}), progress=False)
    (tmp_path / "a" / "corpus.txt").write_text("the cat sat on the mat. " * 200)
    before = _files(tmp_path / "a")
    corpus = {"source": "text", "path": str(tmp_path / "a" / "corpus.txt"), "seq_len": 16}
    refused = [
        (make_recipe(tmp_path, "a", model={"config": {"hiden_size": 16}}), "unknown config field.*'hiden_size'"),
        (make_recipe(tmp_path, "a", data={"source": "text", "path": str(tmp_path / "nowhere.txt")}),
         "data file .*nowhere.txt' does not exist"),
        (make_recipe(tmp_path, "a", model={"preset": "transformer-tiny", "config": {}}, train={"tbptt_chunk": 4}),
         "train.tbptt_chunk=4 needs every layer to carry a fixed-size state"),
        (make_recipe(tmp_path, "a", data=corpus),
         r"--force would delete '.*a', which holds this run's data \(data.path='.*corpus.txt'\)"),
        (make_recipe(tmp_path, "a", data={**corpus, "path": [str(tmp_path / "a")]}),  # (the folder itself)
         r"which holds this run's data"),
    ]
    for recipe, message in refused:
        with pytest.raises(ValueError, match=message):
            train(recipe, progress=False, force=True)
        assert _files(tmp_path / "a") == before
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat. " * 200)
    train(make_recipe(tmp_path, "a", data={**corpus, "path": str(tmp_path / "corpus.txt")},
                      train={"max_steps": 2, "save_every": 0}), progress=False, force=True)
    assert not (tmp_path / "a" / "corpus.txt").exists() and (tmp_path / "a" / "model.safetensors").is_file()


def test_force_puts_the_old_run_back_when_the_new_one_fails_before_its_first_step_is_done(tmp_path, monkeypatch):
    # (a step that ran out of memory, a numerical error or Ctrl-C at the first step lost the old run with the new)
    import seqzoo.training.trainer as trainer

    train(make_recipe(tmp_path, "a", train={"max_steps": 2, "save_every": 0}), progress=False)
    before = _files(tmp_path / "a")
    real_step, calls = trainer._train_step, []

    def failing_step(*args, fail_at, error, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            raise error
        return real_step(*args, **kwargs)

    recipe = make_recipe(tmp_path, "a", train={"max_steps": 3, "save_every": 0}, optim={"lr": 0.5})
    for error in (RuntimeError("out of memory"), KeyboardInterrupt()):
        calls.clear()
        monkeypatch.setattr(trainer, "_train_step", lambda *a, **k: failing_step(*a, fail_at=1, error=error, **k))
        with pytest.raises(type(error)):
            train(recipe, progress=False, force=True)
        assert _files(tmp_path / "a") == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # (nothing left aside)
    # Past its first step the new run is the one kept: the old one is gone, as --force asked.
    calls.clear()
    monkeypatch.setattr(trainer, "_train_step", lambda *a, **k: failing_step(*a, fail_at=2, error=RuntimeError("x"),
                                                                             **k))
    with pytest.raises(RuntimeError):
        train(recipe, progress=False, force=True)
    assert "model.safetensors" not in _files(tmp_path / "a") and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    monkeypatch.setattr(trainer, "_train_step", real_step)
    train(recipe, progress=False, force=True)
    assert (tmp_path / "a" / "model.safetensors").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["a"]


class Killed(BaseException):
    """SIGKILL (the OOM killer, a preempted machine) as a test can have it: no ``except`` of train() runs."""


def _ended_process_id() -> int:
    """The id of a process that has ended (what a killed run's id is, seen from the next run)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def _as_a_process_that_ended(monkeypatch) -> None:
    """Have the hidden siblings made from now on name a process of this host that has ended as their owner."""
    import seqzoo.training.trainer as trainer

    monkeypatch.setattr(trainer, "_owner_tag", lambda tag=f"{_ended_process_id()}@{socket.gethostname()}": tag)


def _killed_after_the_move_aside(monkeypatch, recipe) -> None:
    """Run ``recipe`` with --force, killed right after the old run was moved aside (before the new run's first step:
    what the process leaves when the OOM killer takes it while the model is prepared or the first step runs)."""
    import seqzoo.training.trainer as trainer

    _as_a_process_that_ended(monkeypatch)
    real = trainer._move_aside

    def moves_then_dies(run_dir):
        real(run_dir)
        raise Killed

    monkeypatch.setattr(trainer, "_move_aside", moves_then_dies)
    with pytest.raises(Killed):
        train(recipe, progress=False, force=True)
    monkeypatch.undo()


def test_a_run_killed_after_force_moved_the_old_run_aside_gets_it_back(tmp_path, monkeypatch, caplog):
    # Killed there, the output folder held only the hidden `.a.replaced-XXXX`: --resume said the run did not exist,
    # and nothing ever put the old run back or named it.
    recipe = make_recipe(tmp_path, "a", train={"max_steps": 4, "save_every": 2})
    train(recipe, progress=False)
    before = _files(tmp_path / "a")
    _killed_after_the_move_aside(monkeypatch, recipe)
    [aside] = list(tmp_path.iterdir())
    assert aside.name.startswith(".a.replaced-") and _files(aside) == before
    with caplog.at_level("WARNING", logger="seqzoo.training"):
        assert train(recipe, resume=True, progress=False).steps == 4
    assert f"put back the run that --force had moved aside to {aside}" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and (tmp_path / "a" / "model.safetensors").is_file()

    # Killed in its first step, the new run had written its recipe and metrics: they go, the old run comes back (a
    # plain start then refuses the folder, as it would have before --force).
    before = _files(tmp_path / "a")
    _killed_after_the_move_aside(monkeypatch, recipe)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "recipe.yaml").write_text(recipe.to_yaml())
    (tmp_path / "a" / "metrics.jsonl").write_text("")
    caplog.clear()
    with caplog.at_level("WARNING", logger="seqzoo.training"):
        with pytest.raises(ValueError, match=r"already holds checkpoints of a run; pass --resume"):
            train(recipe, progress=False)
    assert "(the new run's metrics.jsonl, recipe.yaml deleted)" in caplog.text
    assert _files(tmp_path / "a") == before and [p.name for p in tmp_path.iterdir()] == ["a"]

    # --force again puts it back first, then replaces it as asked.
    _killed_after_the_move_aside(monkeypatch, recipe)
    train(recipe, progress=False, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_a_run_moved_aside_is_named_not_put_back_over_a_run_and_a_killed_deletion_is_finished(tmp_path, monkeypatch,
                                                                                              caplog):
    recipe = make_recipe(tmp_path, "a", train={"max_steps": 2, "save_every": 0})
    train(recipe, progress=False)
    _killed_after_the_move_aside(monkeypatch, recipe)
    [aside] = list(tmp_path.iterdir())
    shutil.copytree(aside, tmp_path / "a")  # (a run of its own in the folder since: it is never replaced)
    before = _files(tmp_path / "a")
    with caplog.at_level("WARNING", logger="seqzoo.training"):
        with pytest.raises(ValueError, match="already holds files"):
            train(recipe, progress=False)
    assert (f"{aside} hold(s) a run that --force moved aside, stopped before the new run's first step was done; "
            "not put back, as the output folder holds files of its own: move it back yourself") in caplog.text
    assert _files(tmp_path / "a") == before and aside.is_dir()
    # Killed while --force deleted the old run after the new run's first step: the next run finishes the deletion,
    # and never puts back the half-deleted run.
    shutil.rmtree(aside)
    real_rmtree = shutil.rmtree

    def dies_half_way(path, *args, **kwargs):
        if Path(path).name.startswith(".a."):
            (Path(path) / "model.safetensors").unlink()
            raise Killed
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", dies_half_way)
    _as_a_process_that_ended(monkeypatch)
    with pytest.raises(Killed):
        train(recipe, progress=False, force=True)
    monkeypatch.undo()
    [doomed] = [p for p in tmp_path.iterdir() if p.name != "a"]
    assert doomed.name.startswith(".a.deleting-")
    caplog.clear()
    with caplog.at_level("WARNING", logger="seqzoo.training"):
        train(recipe, progress=False, force=True)
    assert f"finishing the deletion of {doomed}" in caplog.text and "put back" not in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_of_two_runs_moved_aside_by_killed_force_runs_neither_is_put_back(tmp_path, monkeypatch, caplog):
    # (two --force runs killed before their first step, one after the other: which old run to keep is the user's
    # choice; both are named and kept, none is put back over the output folder)
    import seqzoo.training.trainer as trainer

    _as_a_process_that_ended(monkeypatch)
    run = tmp_path / "a"
    for text in ("first", "second"):
        run.mkdir()
        (run / "recipe.yaml").write_text(text)
        trainer._move_aside(run)
    asides = sorted(tmp_path.iterdir())
    with caplog.at_level("WARNING", logger="seqzoo.training"):
        trainer._put_back_replaced(run)
    assert "2 runs were moved aside, and which one to keep is yours to choose" in caplog.text
    assert sorted(tmp_path.iterdir()) == asides and sorted(_files(p)["recipe.yaml"] for p in asides) == [b"first",
                                                                                                       b"second"]


def test_a_run_moved_aside_by_a_force_run_still_before_its_first_step_is_left_to_that_run(tmp_path, caplog):
    # Nothing told a --force run still before its first step (a model that takes minutes to build) from one killed
    # there: a second run on its output folder deleted the live run's folder and put the old run back, and the live
    # run failed at its first step (FileNotFoundError), its first row appended to the old run's metrics.jsonl.
    import seqzoo.training.trainer as trainer

    recipe = make_recipe(tmp_path, "a", train={"max_steps": 2, "save_every": 0})
    train(recipe, progress=False)
    before = _files(tmp_path / "a")
    aside = trainer._move_aside(tmp_path / "a")  # (by this process, which runs on)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "recipe.yaml").write_text("the new run's\n")
    for arguments in ({}, {"force": True}, {"resume": True}):
        with pytest.raises(ValueError, match=re.escape(
                f"{str(tmp_path / 'a')!r} is being replaced by a --force run that has not done its first step yet "
                f"(process {os.getpid()} of this host moved the old run aside to {str(aside)!r}")):
            train(recipe, progress=False, **arguments)
        assert _files(aside) == before and _files(tmp_path / "a") == {"recipe.yaml": b"the new run's\n"}
    trainer._delete_aside(aside, tmp_path / "a")  # (its first step done: the old run goes, as --force asked)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]

    # The same with the owner in a process of its own, until that process ends: then the old run is put back.
    shutil.rmtree(tmp_path / "a")
    train(recipe, progress=False)
    before = _files(tmp_path / "a")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        aside = tmp_path / f".a.replaced-{owner.pid}@{socket.gethostname()}-x1"
        (tmp_path / "a").rename(aside)
        with pytest.raises(ValueError, match=f"process {owner.pid} of this host moved the old run aside"):
            train(recipe, progress=False, force=True)
        assert _files(aside) == before and not (tmp_path / "a").exists()
    finally:
        owner.kill()
        owner.wait()
    with caplog.at_level("WARNING", logger="seqzoo.training"):
        with pytest.raises(ValueError, match="already holds files"):
            train(recipe, progress=False)
    assert f"put back the run that --force had moved aside to {aside}" in caplog.text
    assert _files(tmp_path / "a") == before and [p.name for p in tmp_path.iterdir()] == ["a"]


def test_a_sibling_whose_process_runs_or_cannot_be_looked_at_is_left_as_it_is(tmp_path, caplog):
    recipe = make_recipe(tmp_path, "a", train={"max_steps": 2, "save_every": 0})
    train(recipe, progress=False)
    host = socket.gethostname()
    siblings = [f".a.deleting-{os.getpid()}@{host}-x1",  # (a run of this process deleting the run it replaced)
                ".a.deleting-123@another-host-x2", ".a.replaced-123@another-host-x3",
                ".a.replaced-x4"]  # (named before seqzoo recorded the process)
    for name in siblings:
        (tmp_path / name).mkdir()
        (tmp_path / name / "recipe.yaml").write_text(name)
    with caplog.at_level("WARNING", logger="seqzoo.training"):
        with pytest.raises(ValueError, match="already holds files"):
            train(recipe, progress=False)
    assert all((tmp_path / name / "recipe.yaml").read_text() == name for name in siblings)
    elsewhere = f"its process, 123 of host 'another-host', cannot be looked at from {host!r}"
    assert (f"{tmp_path / siblings[1]} holds a run that --force was deleting, left as it is: {elsewhere}; once that "
            "run has ended, delete it") in caplog.text
    assert (f"{tmp_path / siblings[2]} holds a run that --force moved aside, left as it is: {elsewhere}; once that "
            "run has ended, move it back yourself to keep it, or delete it") in caplog.text
    assert f"{tmp_path / siblings[3]} holds a run that --force moved aside, left as it is: its name records no " \
        "process" in caplog.text
    assert siblings[0] not in caplog.text and "finishing" not in caplog.text


def test_of_two_runs_that_find_one_abandoned_sibling_one_alone_takes_it(tmp_path, monkeypatch):
    # Both deleted it (the second failed with FileNotFoundError), or both put it back: the second deleted the run the
    # first had just put back.
    import seqzoo.training.trainer as trainer

    ended, host = _ended_process_id(), socket.gethostname()
    doomed = tmp_path / f".a.deleting-{ended}@{host}-x1"
    doomed.mkdir()
    real_state = trainer._owner_state

    def finished_meanwhile(path, run_dir):  # (the other run deletes it once this one has listed it)
        state = real_state(path, run_dir)
        shutil.rmtree(path)
        return state

    monkeypatch.setattr(trainer, "_owner_state", finished_meanwhile)
    trainer._put_back_replaced(tmp_path / "a")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []

    aside = tmp_path / f".a.replaced-{ended}@{host}-x2"
    aside.mkdir()
    (aside / "recipe.yaml").write_text("the old run's\n")
    real_left = trainer._left_before_a_first_step

    def put_back_meanwhile(run_dir):  # (the other run puts it back once this one has looked at the output folder)
        left = real_left(run_dir)
        aside.rename(run_dir)
        return left

    monkeypatch.setattr(trainer, "_left_before_a_first_step", put_back_meanwhile)
    with pytest.raises(ValueError, match=re.escape(
            f"{str(tmp_path / 'a')!r}: another run is putting back the run that --force had moved aside to "
            f"{str(aside)!r}, at the same time as this one; start this run again once it has done so")):
        trainer._put_back_replaced(tmp_path / "a")
    assert _files(tmp_path / "a") == {"recipe.yaml": b"the old run's\n"}
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_a_run_folder_of_a_long_name_is_moved_aside_and_found_by_its_own_runs_alone(tmp_path, monkeypatch):
    # (.NAME.replaced-PID@HOST-XXXX held the whole name: --force on a folder of more than ~200 bytes, which the file
    # system takes, failed with "File name too long"; a long name is cut in the sibling's, and a hash of the whole
    # keeps two names that share their first bytes apart. The cut leaves room for the longest host name, 64 bytes)
    import seqzoo.training.trainer as trainer

    monkeypatch.setattr(trainer.socket, "gethostname", lambda: "h" * 64)
    run, other = tmp_path / ("r" * 250), tmp_path / ("r" * 249 + "s")
    run.mkdir()
    (run / "recipe.yaml").write_text("the old run's\n")
    aside = trainer._move_aside(run)
    assert _files(aside) == {"recipe.yaml": b"the old run's\n"} and len(aside.name) < 255
    trainer._put_back_replaced(other)  # (not its run: left as it is)
    assert [p.name for p in tmp_path.iterdir()] == [aside.name]
    with pytest.raises(ValueError, match="is being replaced by a --force run that has not done its first step yet"):
        trainer._put_back_replaced(run)
    trainer._delete_aside(aside, run)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arguments, message", [
    # (force="no" deleted the run: the flags were read by truthiness)
    ({"force": "no"}, "train(force='no') is invalid: expected True or False (a flag is not read by truthiness: "
                      "'no' would count as True)"),
    ({"force": 1}, "train(force=1) is invalid: expected True or False"),
    ({"save_model": "false"}, "train(save_model='false') is invalid: expected True or False"),
    ({"progress": None}, "train(progress=None) is invalid: expected True or False"),
    # (resume=1 stopped in pathlib; resume="", an unset variable, started a fresh run)
    ({"resume": 1}, "train(resume=1) is invalid: expected True (the newest checkpoint in output_dir), the path of a "
                    "run or checkpoint folder (a str or os.PathLike), or None or False (a fresh run)"),
    ({"resume": ""}, "train(resume='') is invalid: expected the path of a run or checkpoint folder, not an empty one"),
    ({"stop": 5}, "train(stop=5) is invalid: expected a function of each logged row"),
    # (force was read for a fresh run only, and ignored beside resume; the command line refuses the pair)
    ({"resume": True, "force": True}, "train(resume=..., force=True) contradict each other"),
])
def test_train_refuses_an_argument_of_another_kind_before_it_touches_the_run(tmp_path, arguments, message):
    run = tmp_path / "a"  # (a run's folder, as --force deletes one)
    run.mkdir()
    (run / "recipe.yaml").write_text("name: a\n")
    (run / "notes.txt").write_text("mine")
    before = _files(run)
    with pytest.raises(ValueError, match=re.escape(message)):
        train(make_recipe(tmp_path, "a", train={"max_steps": 1, "save_every": 0}), **{"progress": False, **arguments})
    assert _files(run) == before


def test_train_given_a_recipes_name_says_how_to_read_it():
    # (AttributeError: 'str' object has no attribute 'train')
    with pytest.raises(ValueError, match=re.escape("train(recipe='lstm-tiny') is invalid: expected a Recipe "
                                                   "(seqzoo.training.load_recipe reads one from a recipe file, a "
                                                   "recipe preset or a model preset: "
                                                   "train(load_recipe('lstm-tiny')))")):
        train("lstm-tiny")


def test_force_never_deletes_a_folder_that_holds_no_training_run(tmp_path):
    # (a mistyped --output-dir naming a project: its .git and sources were deleted)
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "src").mkdir()
    (project / "src" / "main.py").write_text("print('mine')")
    (project / "notes.txt").write_text("mine")
    before = _files(project)
    with pytest.raises(ValueError, match=r"--force deletes only the folder of a training run, and '.*project' "
                                         r"holds none of recipe.yaml, metrics.jsonl, checkpoints/, "
                                         r"seqzoo_training.json \(it holds .git/, notes.txt, src/\)"):
        train(make_recipe(tmp_path, "project", train={"max_steps": 1}), progress=False, force=True)
    assert _files(project) == before and (project / ".git").is_dir()
    for mark in ("recipe.yaml", "metrics.jsonl", "seqzoo_training.json", "checkpoints"):  # each one is a run's
        folder = tmp_path / mark.replace(".", "_")
        folder.mkdir()
        (folder / mark).mkdir() if mark == "checkpoints" else (folder / mark).write_text("")
        (folder / "stale.txt").write_text("of an earlier run")
        train(make_recipe(tmp_path, folder.name, train={"max_steps": 1, "save_every": 0}), progress=False,
              force=True)
        assert not (folder / "stale.txt").exists() and (folder / "model.safetensors").is_file()


def test_resuming_a_checkpoint_into_a_folder_of_another_run_is_refused(tmp_path):
    steps = {"max_steps": 4, "save_every": 2}
    train(make_recipe(tmp_path, "a", train=steps), progress=False)
    train(make_recipe(tmp_path, "b", train={"max_steps": 2, "save_every": 0}), progress=False)
    before = weights(tmp_path / "b")
    checkpoint = tmp_path / "a" / "checkpoints" / "checkpoint-2"
    with pytest.raises(ValueError, match=r"output_dir '.*b' holds files of another run"):
        train(make_recipe(tmp_path, "b", train=steps), resume=str(checkpoint), progress=False)
    assert_same_weights(weights(tmp_path / "b"), before)
    # into an empty folder, or into the checkpoint's own run folder: fine
    assert train(make_recipe(tmp_path, "c", train=steps), resume=str(checkpoint), progress=False).steps == 4
    assert train(make_recipe(tmp_path, "a", train=steps), resume=str(checkpoint), progress=False).steps == 4


def test_resume_drops_a_metrics_line_cut_short_and_names_a_damaged_one(tmp_path, caplog):
    steps = {"max_steps": 4, "save_every": 2}
    train(make_recipe(tmp_path, "a", train=steps), progress=False)
    metrics = tmp_path / "a" / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(whole + '{"step": 5, "loss": 1.2')  # killed while appending
    resumed = train(make_recipe(tmp_path, "a", train=steps), resume=True, progress=False)
    assert resumed.steps == 4 and "its last line is cut short" in caplog.text
    assert all(json.loads(line)["step"] <= 4 for line in metrics.read_text().splitlines())
    lines = whole.splitlines()
    metrics.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl' line 2 is not a JSON object"):
        train(make_recipe(tmp_path, "a", train=steps), resume=True, progress=False)


def test_a_metrics_line_cut_short_that_the_checkpoint_covers_is_named_not_dropped(tmp_path, caplog):
    """A cut line was dropped as lying past the checkpoint whatever its step, and the rows of the steps it covered
    after it went with it (the file cut inside step 2's row, resumed at step 4: the history held steps 1, 5, 6)."""
    steps = {"max_steps": 4, "save_every": 2}
    train(make_recipe(tmp_path, "a", train=steps), progress=False)
    metrics = tmp_path / "a" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    second = next(number for number, line in enumerate(lines) if json.loads(line)["step"] == 2)
    metrics.write_text("\n".join(lines[:second]) + "\n" + lines[second][:25])
    with pytest.raises(ValueError, match=rf"metrics.jsonl' line {second + 1} is cut short: a row of step 2, which the "
                                         r"checkpoint \(step 4\) covers .*repair or delete the line to resume"):
        train(make_recipe(tmp_path, "a", train=steps), resume=True, progress=False)
    metrics.write_text("\n".join(lines) + '\n{"st')  # (its step cut off too: only a whole row past it tells)
    with pytest.raises(ValueError, match=r"cut short: a row that may be one the checkpoint \(step 4\) covers"):
        train(make_recipe(tmp_path, "a", train=steps), resume=True, progress=False)
    metrics.write_text("\n".join(lines[:second]) + "\n")  # the line deleted: resumed, the steps it lacks named
    with caplog.at_level("WARNING", logger="seqzoo.training.trainer"):
        assert train(make_recipe(tmp_path, "a", train=steps), resume=True, progress=False).steps == 4
    assert "logs no row of step(s) 2, 3, 4 of the 4 the checkpoint covers (taken out of the file)" in caplog.text


def test_a_run_resumed_into_a_folder_of_its_own_starts_from_the_other_run_s_history(tmp_path, caplog):
    """Its metrics.jsonl began after the checkpoint, and nothing said so; without any history, it is said."""
    steps = {"max_steps": 4, "save_every": 2}
    train(make_recipe(tmp_path, "a", train=steps), progress=False)
    checkpoint = tmp_path / "a" / "checkpoints" / "checkpoint-2"
    train(make_recipe(tmp_path, "b", train=steps), resume=str(checkpoint), progress=False)
    a = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    early = [row for row in a if row["step"] <= 2]
    assert b[:len(early)] == early and {row["step"] for row in b} == {1, 2, 3, 4}
    (tmp_path / "a" / "metrics.jsonl").unlink()
    with caplog.at_level("WARNING", logger="seqzoo.training.trainer"):
        train(make_recipe(tmp_path, "c", train=steps), resume=str(checkpoint), progress=False)
    assert "logs no row of step(s) 1, 2 of the 2 the checkpoint covers (the file is missing)" in caplog.text
    assert {json.loads(line)["step"] for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()} == {3, 4}


def test_a_world_size_that_is_no_number_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "abc")
    with pytest.raises(ValueError, match="WORLD_SIZE='abc' is invalid: expected the number of processes"):
        train(make_recipe(tmp_path, "a"), progress=False)


def test_runs_of_another_mixed_precision_follow_in_one_process(tmp_path):
    # accelerate fixes its state at the first Accelerator of a process; the second run failed ("restart your runtime").
    steps = {"max_steps": 1, "save_every": 0}
    assert train(make_recipe(tmp_path, "a", train=steps), progress=False).steps == 1
    bf16 = train(make_recipe(tmp_path, "b", train={**steps, "mixed_precision": "bf16"}), progress=False)
    assert bf16.steps == 1 and json.loads((tmp_path / "b" / "seqzoo_training.json").read_text())["recipe"]["train"][
        "mixed_precision"] == "bf16"
    assert train(make_recipe(tmp_path, "c", train=steps), progress=False).steps == 1


def test_a_warmup_longer_than_the_run_is_said(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="seqzoo.training.trainer"):
        train(make_recipe(tmp_path, "a", optim={"warmup_steps": 8}, train={"max_steps": 2, "save_every": 0}),
              progress=False)
    assert "optim.warmup_steps=8 is more than train.max_steps=2: the learning rate never reaches" in caplog.text
    assert "(it ends at 25% of it)" in caplog.text


def test_fp16_on_the_cpu_is_refused_rather_than_run_in_float32(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("fp16 runs with a gradient scaler on a GPU")
    with pytest.raises(ValueError, match="mixed_precision=fp16 needs a GPU: on the CPU it would train in float32"):
        train(make_recipe(tmp_path, "a", train={"mixed_precision": "fp16"}), progress=False)
    assert not (tmp_path / "a").exists()


def test_resume_refuses_a_text_file_that_changed(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    data = {"source": "text", "path": str(corpus), "seq_len": 16, "eval_samples": 2}
    recipe = make_recipe(tmp_path, "text", data=data, train={"max_steps": 2, "save_every": 2})
    train(recipe, progress=False)
    state = json.loads((tmp_path / "text" / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["data_position"] == {"samples_seen": 16, "epoch": 0, "index_in_epoch": 16}
    assert "saved_config" not in state  # (a preset's run: the recipe gives its config, there is no saved one)
    corpus.write_text("a different text " * 30)
    changed = r"the training data changed since .*train_tokens: 1710 \(checkpoint\) vs 485 \(now\)"
    with pytest.raises(ValueError, match=changed):
        train(recipe, resume=True, progress=False)
    # An edit that keeps the length (the same number of tokens) is other data too: the tokens' hash says so.
    corpus.write_text("THE quick brown fox jumps over the lazy dog. " + "the quick brown fox jumps over the lazy dog. "
                      * 39)
    with pytest.raises(ValueError, match=r"the training data changed since .*sha256: "):
        train(recipe, resume=True, progress=False)


def test_resume_refuses_an_edited_jsonl_file_and_takes_another_eval_samples(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    lines = [json.dumps({"source": f"ab{i}", "target": f"{i}ba"}) for i in range(40)]
    pairs.write_text("\n".join(lines) + "\n")
    recipe = dict(task="seq2seq", model={"preset": "seq2seq-bahdanau-tiny", "config": {}},
                  data={"source": "jsonl", "path": str(pairs), "eval_samples": 2},
                  train={"max_steps": 4, "save_every": 2, "batch_size": 4})
    train(make_recipe(tmp_path, "s", **recipe), progress=False)
    (tmp_path / "s" / "checkpoints" / "checkpoint-4").rename(tmp_path / "s" / "checkpoints" / "kept-4")
    # eval_samples may change on resume (the number of scored pairs with it)
    other = {**recipe, "data": {**recipe["data"], "eval_samples": 1}}
    assert train(make_recipe(tmp_path, "s", **other), resume=True, progress=False).steps == 4
    shutil.rmtree(tmp_path / "s" / "checkpoints" / "checkpoint-4")
    pairs.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # the same pairs, in another order
    with pytest.raises(ValueError, match=r"the training data changed since .*sha256: "):
        train(make_recipe(tmp_path, "s", **recipe), resume=True, progress=False)


def test_force_never_deletes_the_current_folder_or_one_above_it(tmp_path, monkeypatch):
    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    (work / "thesis.tex").write_text("important")
    monkeypatch.chdir(work)
    for folder in (".", "..", str(work)):
        recipe = make_recipe(tmp_path, "x", output_dir=folder, train={"max_steps": 1})
        with pytest.raises(ValueError, match="--force would delete .*the current folder, one of its parents"):
            train(recipe, progress=False, force=True)
    assert (work / "thesis.tex").read_text() == "important"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.md").write_text("mine")
    (tmp_path / "link").symlink_to(other, target_is_directory=True)
    with pytest.raises(ValueError, match="--force would delete .*link', a symbolic link to"):
        train(make_recipe(tmp_path, "link", train={"max_steps": 1}), progress=False, force=True)
    assert (other / "notes.md").read_text() == "mine"


def test_several_processes_asked_of_accelerate_but_one_started_is_refused(tmp_path, monkeypatch):
    # `accelerate launch --cpu --num_processes 2` (no --multi_gpu) starts one process with MASTER_ADDR set and no
    # WORLD_SIZE: the run trained alone while the user thought two shared it.
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="accelerate launch was asked for several processes but started one"):
        train(make_recipe(tmp_path, "a"), progress=False)


def test_bad_batch_split_and_tbptt_on_a_transformer_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"train.batch_size=6 \(global\) must be divisible by num_processes \(1\) x "
                                         r"gradient_accumulation_steps \(4\) = 4"):
        train(make_recipe(tmp_path, train={"batch_size": 6, "gradient_accumulation_steps": 4}), progress=False)
    with pytest.raises(ValueError, match="train.tbptt_chunk=4 needs every layer to carry a fixed-size state"):
        train(make_recipe(tmp_path, model={"preset": "transformer-tiny", "config": {}},
                          train={"tbptt_chunk": 4}), progress=False)
    with pytest.raises(ValueError, match=r"model vocab_size=5 is smaller than the data's vocabulary \(9 token ids"):
        train(make_recipe(tmp_path, model={"preset": "lstm-tiny", "config": {"vocab_size": 5}}), progress=False)


def nan_loss_on_second_call(monkeypatch):
    """Make the training loss NaN at the second call of ``token_loss_sum`` (the second step, without accumulation)."""
    real = tbptt.token_loss_sum
    calls = {"n": 0}

    def nan_on_second_step(logits, targets):
        calls["n"] += 1
        loss, correct = real(logits, targets)
        return (loss * float("nan"), correct) if calls["n"] == 2 else (loss, correct)

    monkeypatch.setattr(tbptt, "token_loss_sum", nan_on_second_step)


def test_gradient_health_flags_and_skips_nonfinite_steps(tmp_path, monkeypatch):
    assert classify(1e-9, 1e-6, 1e3) == "vanishing" and classify(5e3, 1e-6, 1e3) == "exploding"
    assert classify(float("nan"), 1e-6, 1e3) == "exploding" and classify(1.0, 1e-6, 1e3) == "ok"

    nan_loss_on_second_call(monkeypatch)
    recipe = make_recipe(tmp_path, train={"max_steps": 3, "eval_every": 0, "vanishing_grad_norm": 1e2,
                                          "exploding_grad_norm": 1e9})
    result = train(recipe, progress=False)
    flags = [row["grad_flag"] for row in result.history if "loss" in row]
    assert flags == ["vanishing", "exploding", "vanishing"]  # every finite norm here is below 100
    assert [row.get("skipped", False) for row in result.history if "loss" in row] == [False, True, False]
    assert result.grad_health["flagged_steps"] == {"vanishing": 2, "exploding": 1, "nonfinite": 1}
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_gradient_health_bounds_counts_and_state_follow_their_definition(caplog):
    # Catches: a norm equal to a threshold flagged (the bounds are "below" and "above"), a NaN norm taken as the
    # largest norm, the non-finite streak not reset by a finite step or not counted up, a later flag overwriting
    # the first flagged step, a warning for every flagged step instead of the first and every 100th, and a
    # state_dict/load_state_dict round trip that loses any figure (a resumed run would report other counts).
    assert classify(1e-6, 1e-6, 1e3) == "ok" and classify(1e3, 1e-6, 1e3) == "ok"
    assert classify(float("inf"), 1e-6, 1e3) == "exploding" and classify(float("-inf"), 1e-6, 1e3) == "exploding"
    norms = [2.0, float("nan"), 5e3, 1e-9, float("inf"), float("nan"), 7.0, 1e-8, float("nan"), float("inf")]
    with caplog.at_level("WARNING", logger="seqzoo.training"):
        health = GradientHealth(vanishing=1e-6, exploding=1e3)
        flags = [health.record(step, norm) for step, norm in enumerate(norms, start=1)]
    assert flags == ["ok", "exploding", "exploding", "vanishing", "exploding", "exploding", "ok", "vanishing",
                     "exploding", "exploding"]
    assert health.counts == {"vanishing": 2, "exploding": 6, "nonfinite": 5}
    assert health.first_step == {"exploding": 2, "vanishing": 4}
    assert health.max_norm == 5e3 and health.nonfinite_streak == 2
    assert caplog.text.count("step 2: gradient norm nan is exploding") == 1
    assert caplog.text.count("is exploding") == 1 and caplog.text.count("is vanishing") == 1  # first flags only
    assert health.summary() == {"thresholds": {"vanishing_below": 1e-6, "exploding_above": 1e3},
                                "flagged_steps": {"vanishing": 2, "exploding": 6, "nonfinite": 5},
                                "first_flagged_step": {"exploding": 2, "vanishing": 4}, "max_grad_norm": 5e3}

    # Resumed from its state (through JSON, as a checkpoint stores it), a run counts on as if never interrupted.
    resumed = GradientHealth(vanishing=1e-6, exploding=1e3)
    resumed.load_state_dict(json.loads(json.dumps(health.state_dict())))
    assert resumed.state_dict() == health.state_dict()
    for step, norm in enumerate([float("nan"), 1e4], start=len(norms) + 1):
        assert resumed.record(step, norm) == health.record(step, norm)
    assert resumed.state_dict() == health.state_dict() and resumed.nonfinite_streak == 0
    with caplog.at_level("WARNING", logger="seqzoo.training"):
        caplog.clear()
        for step in range(100):
            health.record(100 + step, 1e-9)
    assert caplog.text.count("is vanishing") == 1 and "100 step(s) flagged so far" in caplog.text  # 100th only


def test_a_skipped_step_is_logged_as_strict_json_and_read_back_as_nan(tmp_path, monkeypatch):
    # Python writes NaN as the bare word NaN by default, which is no JSON: jq, JavaScript and pandas' strict readers
    # refuse the file. A non-finite figure is written null and read back as NaN when a run resumes.
    nan_loss_on_second_call(monkeypatch)
    steps = {"max_steps": 4, "save_every": 2, "eval_every": 0}
    train(make_recipe(tmp_path, "a", train=steps), progress=False)
    metrics = tmp_path / "a" / "metrics.jsonl"

    def refuse(word):
        raise ValueError(f"not JSON: {word}")

    def step_rows():
        return [row for row in map(lambda line: json.loads(line, parse_constant=refuse),
                                   metrics.read_text().splitlines()) if "eval" not in row]

    rows = step_rows()
    assert [row["loss"] is None for row in rows] == [False, True, False, False]
    assert rows[1]["skipped"] is True and rows[1]["grad_norm"] is None
    checkpoint = tmp_path / "a" / "checkpoints" / "checkpoint-2"  # just after the skipped step
    resumed = train(make_recipe(tmp_path, "a", train=steps), resume=str(checkpoint), progress=False)
    history = [row for row in resumed.history if "eval" not in row]
    assert resumed.steps == 4 and [row["step"] for row in history] == [1, 2, 3, 4]
    assert math.isnan(history[1]["loss"]) and math.isnan(history[1]["grad_norm"])
    assert all(math.isfinite(row["loss"]) for i, row in enumerate(history) if i != 1)
    assert [row["loss"] is None for row in step_rows()] == [False, True, False, False]  # rewritten too


def test_schedule_warms_up_then_decays_to_the_floor():
    recipe = recipe_from_dict({"optim": {"warmup_steps": 4, "min_lr_ratio": 0.1}, "train": {"max_steps": 20}})
    factors = [lr_factor(s, recipe) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(factors[4:], factors[5:])) and math.isclose(factors[-1], 0.1 + 0.9 * 0.5 * (
        1 + math.cos(math.pi * 15 / 16)))


def test_a_launch_asking_for_other_mixed_precision_is_refused_not_ignored(tmp_path, monkeypatch):
    # `accelerate launch --mixed_precision bf16` sets this; the recipe's "no" went to Accelerator and won silently.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ValueError, match=r"the launch asks for mixed precision 'bf16'.*mixed_precision=bf16"):
        train(make_recipe(tmp_path, "a", train={"max_steps": 1, "save_every": 0}), progress=False)
    steps = {"max_steps": 1, "save_every": 0, "mixed_precision": "bf16"}
    assert train(make_recipe(tmp_path, "b", train=steps), progress=False).steps == 1  # the two agree
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate launch's default: the recipe decides
    assert train(make_recipe(tmp_path, "c", train=steps), progress=False).steps == 1


def test_a_launch_asking_for_other_gradient_accumulation_is_refused_not_applied_twice(tmp_path, monkeypatch):
    # `accelerate launch --gradient_accumulation_steps 4` (or a shell that kept it) sets this, and Accelerate divided
    # every loss by it on top of the run's own scaling: gradients (their logged norm, the clipping) 4 times too small
    # while the run's records said 1.
    def norms(name):
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [row["grad_norm"] for row in rows if "grad_norm" in row]

    steps = {"max_steps": 2, "save_every": 0, "log_every": 1, "eval_every": 0, "gradient_accumulation_steps": 2}
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    with pytest.raises(ValueError, match=r"the launch asks for gradient accumulation '4'.*"
                                         r"train.gradient_accumulation_steps=2.*override train.gradient_acc"):
        train(make_recipe(tmp_path, "a", train=steps), progress=False)
    assert not (tmp_path / "a").exists()
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")  # the two agree: the run accumulates once
    train(make_recipe(tmp_path, "b", train=steps), progress=False)
    monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    train(make_recipe(tmp_path, "c", train=steps), progress=False)
    assert norms("b") == norms("c") and len(norms("c")) == 2


def test_a_model_compiled_by_accelerate_launch_is_saved_under_its_own_names(tmp_path, monkeypatch):
    # `accelerate launch --dynamo_backend ...` compiles the prepared model; its state dict said `_orig_mod.<name>`.
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "EAGER")
    AcceleratorState._reset_state()  # (the first Accelerator of a process fixes its dynamo setting)
    try:
        result = train(make_recipe(tmp_path, "a", train={"max_steps": 1, "save_every": 0}), progress=False)
    finally:
        AcceleratorState._reset_state()  # later runs in this process compile nothing
    names = set(weights(tmp_path / "a"))
    assert names and not any(name.startswith("_orig_mod.") for name in names)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a").state_dict()
    for key, value in weights(tmp_path / "a").items():
        assert torch.equal(loaded[key], value), key
    assert not hasattr(result.model, "_orig_mod")


def test_a_run_from_a_saved_model_starts_from_its_weights_and_refuses_data_it_cannot_read(tmp_path):
    """model.path: the model trained on is the saved one (compared with transformers' own from_pretrained of the
    folder), it learns on from there, and data of another vocabulary, or bytes for a model of a task's ids, are
    refused before any step."""
    from seqzoo.training.building import build_model
    from seqzoo.training.data import build_data

    first = train(make_recipe(tmp_path, "first", train={"max_steps": 30}), progress=False)
    saved = tmp_path / "first"
    values = {"name": "again", "output_dir": str(tmp_path / "again"), "model": {"path": str(saved)},
              "data": {"source": "task", "task": "copy", "distances": [2, 5], "symbols": 6, "items": 2,
                       "eval_samples": 16},
              "optim": {"lr": 0.01, "warmup_steps": 2}, "train": {"max_steps": 3, "batch_size": 8, "log_every": 100}}
    recipe = recipe_from_dict(values)
    model = build_model(recipe, build_data(recipe.data, recipe.train.seed))
    assert_same_weights(model.state_dict(), AutoModelForCausalLM.from_pretrained(saved).state_dict())
    again = train(recipe, progress=False)
    first_losses = [row["loss"] for row in first.history if "loss" in row]
    again_losses = [row["loss"] for row in again.history if "loss" in row]
    assert again_losses[0] < first_losses[0] - 0.3  # (it starts trained: a fresh model starts near log(vocab))
    info = json.loads((tmp_path / "again" / "seqzoo_training.json").read_text())
    assert info["recipe"]["model"] == {"preset": None, "config": {}, "path": str(saved)}
    with pytest.raises(ValueError, match=r"the model saved in .*first' has vocab_size=\d+ and the data \(.*\) need "
                       r"\d+: a saved model trains on data of its own vocabulary"):
        train(recipe_from_dict({**values, "output_dir": str(tmp_path / "wider"),
                                "data": {**values["data"], "symbols": 20}}), progress=False)
    with pytest.raises(ValueError, match=r"reads the ids of another tokenizer \(vocab_size=\d+, pad_token_id=\d+, "
                       r"eos_token_id=None\), and the data \(pydoc.*\) are UTF-8 bytes in seqzoo's byte tokenizer"):
        train(recipe_from_dict({**values, "output_dir": str(tmp_path / "bytes"),
                                "data": {"source": "pydoc", "seq_len": 16}}), progress=False)
    assert not (tmp_path / "wider").exists() and not (tmp_path / "bytes").exists()  # (refused before any output)
    from safetensors.torch import save_file

    tensors = weights(saved)
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(saved / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"cannot load the model saved in .*first' \(model.path\): .* does not "
                       rf"fit LSTMForCausalLM: missing tensors: {re.escape(dropped)}"):
        build_model(recipe, build_data(recipe.data, recipe.train.seed))


def saved_lm(tmp_path: Path, name: str = "saved", dtype: torch.dtype = torch.float32) -> Path:
    """A small LSTM language model of the copy task's vocabulary, saved as save_pretrained saves it."""
    import seqzoo

    folder = tmp_path / name
    seqzoo.create_model("lstm-tiny", hidden_size=16, embedding_size=16, vocab_size=9, pad_token_id=0,
                        bos_token_id=None, eos_token_id=None).to(dtype).save_pretrained(folder)
    return folder


def from_saved(tmp_path: Path, path: Path, name: str = "again", **train_values) -> object:
    return recipe_from_dict({
        "name": name, "output_dir": str(tmp_path / name), "model": {"path": str(path)},
        "data": {"source": "task", "task": "copy", "distances": [2, 5], "symbols": 6, "items": 2, "eval_samples": 8},
        "optim": {"lr": 0.01, "warmup_steps": 1},
        "train": {"max_steps": 2, "batch_size": 8, "eval_every": 0, "log_every": 100, **train_values}})


def test_force_never_deletes_the_saved_model_a_run_starts_from(tmp_path):
    # `seqzoo train runs/x/recipe.yaml model.path=runs/x` writes to runs/x, the recipe's output_dir: refused as a
    # used folder, --force deleted the saved model before loading it (then a Hub lookup of its name failed).
    saved = saved_lm(tmp_path)
    link = tmp_path / "latest"
    link.symlink_to(saved)  # (runs/latest -> runs/x: the same folder by another name)
    for path, output_dir, force in [(saved, saved, True), (saved, tmp_path, True), (link, saved, True),
                                    (saved, saved, False)]:  # the model's folder, one above it; without --force too
        recipe = from_saved(tmp_path, path)
        recipe.output_dir = str(output_dir)
        with pytest.raises(ValueError, match=rf"output_dir '.*' holds the model this run starts from \(model.path="
                           rf"'.*{path.name}'\): .* choose another output_dir"):
            train(recipe, force=force, progress=False)
        assert (saved / "config.json").is_file() and (saved / "model.safetensors").is_file()
    assert train(from_saved(tmp_path, saved), progress=False).steps == 2  # (a folder of its own)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_model_saved_in_half_precision_trains_in_float32(tmp_path, dtype):
    # from_pretrained keeps the saved dtype: AdamW on float16 weights made them inf at the first step, on bfloat16
    # the run trained (and saved) in bfloat16 without a word.
    result = train(from_saved(tmp_path, saved_lm(tmp_path, dtype=dtype)), progress=False)
    assert result.steps == 2 and {p.dtype for p in result.model.parameters()} == {torch.float32}
    assert json.loads((tmp_path / "again" / "config.json").read_text())["dtype"] == "float32"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_preset_built_in_half_precision_is_refused_before_the_run(tmp_path, dtype):
    # model.config.dtype builds the weights in it: AdamW made float16 weights inf at the first step (the error blamed
    # optim.lr), and trained and saved bfloat16 ones, their small updates rounded away, while the record said
    # mixed_precision no.
    recipe = make_recipe(tmp_path, model={"preset": "lstm-tiny", "config": {"dtype": dtype}})
    refused = rf"model.config.dtype='{dtype}' is invalid: expected float32 .* train.mixed_precision=bf16"
    with pytest.raises(ValueError, match=refused):
        check_recipe(recipe)  # (seqzoo train --print-recipe)
    with pytest.raises(ValueError, match=refused):
        train(recipe, progress=False)
    assert not (tmp_path / "run").exists()
    float64 = make_recipe(tmp_path, model={"preset": "lstm-tiny", "config": {"dtype": "float64"}},
                          train={"max_steps": 1, "save_every": 0})
    result = train(float64, progress=False, save_model=False)
    assert {p.dtype for p in result.model.parameters()} == {torch.float64}


def test_resuming_a_run_from_a_saved_model_refuses_a_saved_folder_that_changed(tmp_path):
    saved = saved_lm(tmp_path)
    recipe = from_saved(tmp_path, saved, max_steps=4, save_every=2)
    train(recipe, progress=False, stop=lambda row: row["step"] == 3)  # (killed after checkpoint-2)
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "dropout": 0.5}))
    with pytest.raises(ValueError, match=r"--resume: the model saved in model.path='.*saved' changed since "
                       r"'.*checkpoint-2' was written \(its config: dropout: 0.0 \(checkpoint\) vs 0.5 \(now\)\)"):
        train(recipe, resume=True, progress=False)
    (saved / "config.json").write_text(json.dumps({**config, "note": "added"}))  # a field it did not have
    with pytest.raises(ValueError, match=r"\(its config: note: None \(checkpoint\) vs 'added' \(now\)\)"):
        train(recipe, resume=True, progress=False)
    (saved / "config.json").write_text(json.dumps(config))  # put back: it resumes
    assert train(recipe, resume=True, progress=False).steps == 4


def test_a_run_whose_saved_model_folder_moved_resumes_exactly_and_a_moved_other_model_is_refused(tmp_path, caplog):
    # The run id names model.path; a folder moved (or renamed) since is still the run's where it holds a model of
    # the config the checkpoint recorded: the weights the run goes on from are the checkpoint's.
    saved = saved_lm(tmp_path)
    whole = train(from_saved(tmp_path, saved, name="whole", max_steps=4, save_every=2), progress=False).model
    train(from_saved(tmp_path, saved, max_steps=4, save_every=2), progress=False, stop=lambda row: row["step"] == 3)
    moved = saved.rename(tmp_path / "moved")
    other = saved_lm(tmp_path, name="other")  # another model at the old place's name: not the run's (config below)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "dropout": 0.5}))
    with pytest.raises(ValueError, match=r"belongs to another run .* model.path: '.*saved' \(checkpoint\) vs "
                                         r"'.*other' \(this recipe\)"):
        train(from_saved(tmp_path, other, max_steps=4, save_every=2), resume=True, progress=False)
    with pytest.raises(ValueError, match=r"belongs to another run .* train.max_steps"):  # (another field too)
        train(from_saved(tmp_path, moved, max_steps=5, save_every=2), resume=True, progress=False)
    with caplog.at_level("WARNING", logger="seqzoo.training"):
        resumed = train(from_saved(tmp_path, moved, max_steps=4, save_every=2), resume=True, progress=False)
    assert "now model.path=" in caplog.text and resumed.steps == 4
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_a_saved_models_config_is_compared_only_where_the_checkpoint_records_it_and_not_its_transformers_version(
        tmp_path, monkeypatch):
    import transformers.configuration_utils as configuration_utils

    saved = saved_lm(tmp_path)
    recipe = from_saved(tmp_path, saved, max_steps=4, save_every=2)
    with monkeypatch.context() as patch:  # (config.to_dict() stamps every config with the running version)
        patch.setattr(configuration_utils, "__version__", "4.0.0")
        train(recipe, progress=False, stop=lambda row: row["step"] == 3)
    assert train(recipe, resume=True, progress=False).steps == 4  # transformers upgraded between the two: resumes
    # A checkpoint written before saved_config was recorded resumes unchecked.
    state_file = tmp_path / "again" / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state.pop(checkpoint.SEAL)
    state.pop("saved_config")
    state_file.write_text(json.dumps({**state, checkpoint.SEAL: checkpoint.state_seal(state)}))
    assert train(recipe, resume=True, progress=False).steps == 4


def test_print_recipe_checks_a_saved_model_as_train_does(tmp_path):
    """check_recipe (`seqzoo train --print-recipe`) on model.path: the saved config against a generated task's
    vocabulary and special ids, and train.tbptt_chunk against the saved model's layers, before any data are read."""
    import seqzoo
    from seqzoo.training.building import check_recipe

    saved = saved_lm(tmp_path)
    check_recipe(from_saved(tmp_path, saved))
    wider = from_saved(tmp_path, saved)
    wider.data.symbols = 20
    with pytest.raises(ValueError, match=r"the model saved in '.*saved' has vocab_size=9 and the recipe's data need "
                       r"\d+: a saved model trains on data of its own vocabulary"):
        check_recipe(wider)
    attention = tmp_path / "attention"
    seqzoo.create_model("transformer-tiny", vocab_size=9, pad_token_id=0, bos_token_id=None,
                        eos_token_id=None).save_pretrained(attention)
    check_recipe(from_saved(tmp_path, attention))
    with pytest.raises(ValueError, match=r"train.tbptt_chunk=2 needs every layer .* the model saved in "
                       r"'.*attention' has attention layers"):
        check_recipe(from_saved(tmp_path, attention, tbptt_chunk=2))


def test_a_saved_models_ids_are_checked_against_the_data_one_by_one():
    from types import SimpleNamespace

    from seqzoo.training.building import check_saved_config

    task = {"vocab_size": 9, "pad_token_id": 0, "bos_token_id": None, "eos_token_id": None}  # a generated task's
    check_saved_config(SimpleNamespace(**{**task, "vocab_size": 12}), "m", task, "copy")  # a larger vocabulary: fine
    for key, value in {"vocab_size": 8, "pad_token_id": 1, "eos_token_id": 2}.items():
        with pytest.raises(ValueError, match=rf"'m' has {key}={value} and the data \(copy\) need {task[key]}"):
            check_saved_config(SimpleNamespace(**{**task, key: value}), "m", task, "copy")
    byte = {"vocab_size": 258, "pad_token_id": 256, "eos_token_id": 257}  # seqzoo's byte tokenizer's
    check_saved_config(SimpleNamespace(**byte), "m", {}, "pydoc")
    check_saved_config(SimpleNamespace(**{**byte, "vocab_size": 300}), "m", {}, "pydoc")
    for key, value in {"vocab_size": 257, "pad_token_id": 0, "eos_token_id": 1}.items():
        with pytest.raises(ValueError, match=rf"'m' reads the ids of another tokenizer \(.*{key}={value}"):
            check_saved_config(SimpleNamespace(**{**byte, key: value}), "m", {}, "pydoc")


def test_resume_path_starting_with_a_tilde_is_read_under_the_home_folder(tmp_path, monkeypatch):
    # (output_dir=~/runs/a is the home folder's, as documented; --resume=~/runs/a, which a shell leaves as it is,
    # was refused: "'~/runs/a' does not exist")
    monkeypatch.setenv("HOME", str(tmp_path))
    fields = {"max_steps": 1, "save_every": 1, "eval_every": 0}
    train(make_recipe(tmp_path, "a", train=fields), progress=False, save_model=False)
    assert train(make_recipe(tmp_path, "b", train=fields), resume="~/a", progress=False, save_model=False).steps == 1
    assert (tmp_path / "b" / "metrics.jsonl").read_text() == (tmp_path / "a" / "metrics.jsonl").read_text()
