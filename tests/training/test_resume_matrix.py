"""Exact resume across families and recipe kinds: a run stopped after a checkpoint and resumed ends as the run that
was never stopped, its weights bit for bit, its metrics.jsonl row for row, its checkpoints and final files alike; a
run that ``stop`` ended at a checkpoint's step ends there again when resumed, and a resumed run leaves no more
checkpoints than save_total_limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import seqzoo.training.checkpoint as checkpoint
import seqzoo.training.trainer as trainer
from seqzoo.outputs import OutputError
from seqzoo.training.recipe import recipe_from_dict
from seqzoo.training.trainer import train

W = 8  # every width: the runs are a few steps of a few rows
TASK = {"source": "task", "task": "copy", "distances": [2, 3], "symbols": 4, "items": 2, "eval_samples": 4}
TRAIN = {"max_steps": 4, "batch_size": 2, "eval_every": 2, "save_every": 2, "log_every": 100}
ATTENTION = {"num_attention_heads": 2, "num_key_value_heads": 1}
FAMILIES = {  # (preset, config): dropout where the family has it, so that the RNG state must come back too
    "rnn": ("rnn-tiny", {"embedding_size": W, "dropout": 0.1}),
    "lstm": ("lstm-tiny", {"embedding_size": W, "dropout": 0.1}),
    "gru": ("gru-tiny", {"embedding_size": W, "dropout": 0.1}),
    "transformer": ("transformer-tiny", {**ATTENTION, "dropout": 0.1}),
    "rwkv7": ("rwkv7-tiny", {"head_size": 4}),
    "mamba": ("mamba-tiny", {"state_size": 2}),
    "mamba2": ("mamba2-tiny", {"head_dim": 4, "state_size": 2, "chunk_size": 4}),
    "hybrid": ("hybrid-tiny", {"dropout": 0.1, "mixer_config": {"mamba": {"state_size": 2}, "attention": ATTENTION}}),
}
BILSTM = {"preset": "lstm-tiny", "config": {"hidden_size": W, "embedding_size": W, "bidirectional": True,
                                            "dropout": 0.1}}


def corpus(folder: Path) -> str:
    path = folder / "corpus.txt"
    words = ["alpha", "beta", "gamma", "delta"]
    path.write_text("<|endoftext|>".join(" ".join(words[(i + j) % 4] for j in range(3 + i % 4)) for i in range(14)))
    return str(path)


def family(name: str) -> dict:
    preset, config = FAMILIES[name]
    return {"preset": preset, "config": {"hidden_size": W, **config}}


KINDS = {  # (model, data, task, train) of each recipe kind; data given as a function of the test's folder
    **{f"{name}-task": (family(name), lambda folder: TASK, None, {}) for name in FAMILIES},
    "lstm-text-tbptt-accumulation": (family("lstm"), lambda folder: {"source": "text", "path": corpus(folder),
                                                                     "seq_len": 8, "eval_samples": 2},
                                     None, {"tbptt_chunk": 4, "gradient_accumulation_steps": 2}),
    "transformer-packed-text": (family("transformer"), lambda folder: {
        "source": "text", "path": corpus(folder), "seq_len": 8, "eval_samples": 2, "packing": True}, None, {}),
    "gru-sequence-classification": (family("gru"), lambda folder: {
        "source": "task", "task": "first_letter", "distances": [3, 4], "symbols": 4, "eval_samples": 2},
        "sequence-classification", {}),
    "bilstm-token-classification": (BILSTM, lambda folder: {
        "source": "task", "task": "appears_later", "distances": [4, 6], "eval_samples": 2},
        "token-classification", {}),
    "seq2seq": ({"preset": "seq2seq-bahdanau-tiny", "config": {"hidden_size": W, "dropout": 0.1}}, lambda folder: {
        "source": "task", "task": "reverse", "source_lengths": [2, 3], "eval_samples": 2}, "seq2seq", {}),
}


def make_recipe(folder: Path, model: dict, data: dict, task: str | None = None, **train_fields):
    values = {"name": "run", "output_dir": str(folder / "run"), "model": model, "data": data,
              "optim": {"lr": 0.01, "warmup_steps": 2, "schedule": "linear"}, "train": {**TRAIN, **train_fields}}
    return recipe_from_dict({**values, **({"task": task} if task else {})})


def killed_before_step(monkeypatch, step: int) -> None:
    """The next run dies (as under Ctrl-C) before optimizer step ``step`` (counted from 1)."""
    real = trainer._train_step

    def dies(*args, **kwargs):
        if args[9] == step - 1:
            raise KeyboardInterrupt(f"killed before step {step}")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "_train_step", dies)


def files(folder: Path) -> dict[str, object]:
    """What a run folder holds, file by file: tensors and metadata of safetensors (whose header order varies),
    JSON without its checksums (of those files), other files' bytes."""
    held: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if not path.is_file() or name == "recipe.yaml":
            continue
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as opened:
                held[name] = (opened.metadata(), {key: opened.get_tensor(key) for key in opened.keys()})
        elif path.name in ("trainer_state.json", "seqzoo_training.json"):
            content = json.loads(path.read_text())
            for key in ("state_sha256", "weights_sha256"):
                content.pop(key, None)
            for record in content.get("files", {}).values():
                record.pop("sha256")
            held[name] = content
        else:
            held[name] = path.read_bytes()
    return held


def assert_same_folders(a: Path, b: Path) -> None:
    held_a, held_b = files(a), files(b)
    assert held_a.keys() == held_b.keys()
    for name, content in held_a.items():
        if isinstance(content, tuple):
            assert content[0] == held_b[name][0], name
            assert content[1].keys() == held_b[name][1].keys(), name
            assert all(torch.equal(tensor, held_b[name][1][key]) for key, tensor in content[1].items()), name
        else:
            assert content == held_b[name], name


def uninterrupted(tmp_path: Path, recipe_of, **kwargs) -> Path:
    """Run the recipe once without a stop, in the folder the stopped run uses too (the recipe names it), and move it
    aside to compare."""
    train(recipe_of(), progress=False, **kwargs)
    (tmp_path / "run").rename(tmp_path / "uninterrupted")
    return tmp_path / "uninterrupted"


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_run_stopped_after_a_checkpoint_and_resumed_ends_as_the_uninterrupted_run(tmp_path, monkeypatch, kind):
    model, data_of, task, train_fields = KINDS[kind]

    def recipe_of():
        return make_recipe(tmp_path, model, data_of(tmp_path), task, **train_fields)

    reference = uninterrupted(tmp_path, recipe_of)
    killed_before_step(monkeypatch, 4)  # (step 3 logged past checkpoint-2, evaluated at 2)
    with pytest.raises(KeyboardInterrupt):
        train(recipe_of(), progress=False)
    monkeypatch.undo()
    resumed = train(recipe_of(), resume=True, progress=False)
    assert resumed.steps == 4
    assert_same_folders(reference, tmp_path / "run")


def test_a_run_that_stop_ended_at_a_checkpoint_ends_there_again_when_resumed(tmp_path, monkeypatch):
    # stop ended the run at step 2, a checkpoint's; a full disk then failed its final save. Resumed with the same stop,
    # the run trained on from checkpoint-2 to max_steps (another model, and metrics of 4 steps after the stop's
    # evaluation), as the stop was asked only of the steps the resumed run trained.
    def stop(row):
        return row["step"] == 2

    def recipe_of():
        return make_recipe(tmp_path, family("lstm"), TASK, eval_every=0)

    reference = uninterrupted(tmp_path, recipe_of, stop=stop)

    def full_disk(*args, **kwargs):
        raise OutputError("training finished but the final model could not be saved: No space left on device")

    monkeypatch.setattr(trainer, "_save_final", full_disk)
    with pytest.raises(OutputError):
        train(recipe_of(), progress=False, stop=stop)
    monkeypatch.undo()
    resumed = train(recipe_of(), resume=True, progress=False, stop=stop)
    assert resumed.steps == 2
    assert_same_folders(reference, tmp_path / "run")
    # Resumed without a stop, the run trains on to max_steps.
    assert train(recipe_of(), resume=True, progress=False).steps == 4


def test_a_run_killed_while_rotating_out_its_last_checkpoints_oldest_keeps_save_total_limit(tmp_path, monkeypatch):
    # Killed after checkpoint-4 was written, before checkpoint-2 was rotated out: the resumed run, which writes no
    # checkpoint of its own, ended with checkpoint-2 too (or with a hidden, half-deleted .checkpoint-2.deleting).
    def recipe_of():
        return make_recipe(tmp_path, family("gru"), TASK, save_total_limit=1)

    reference = uninterrupted(tmp_path, recipe_of)
    real = checkpoint._remove_checkpoint

    def killed_at_the_last_rotation(path):
        if (path.parent / "checkpoint-4").is_dir():
            raise KeyboardInterrupt("killed while rotating")
        real(path)

    monkeypatch.setattr(checkpoint, "_remove_checkpoint", killed_at_the_last_rotation)
    with pytest.raises(KeyboardInterrupt):
        train(recipe_of(), progress=False)
    monkeypatch.undo()
    (tmp_path / "run" / "checkpoints" / ".checkpoint-0.deleting").mkdir()  # (as a deletion stopped half-way leaves)
    train(recipe_of(), resume=True, progress=False)
    assert sorted(path.name for path in (tmp_path / "run" / "checkpoints").iterdir()) == ["checkpoint-4"]
    assert_same_folders(reference, tmp_path / "run")


def test_a_resume_may_change_what_is_evaluated_logged_and_kept_and_ends_with_the_same_weights(tmp_path, monkeypatch):
    # The fields the run id leaves out (README: "may change on --resume"): evaluation never draws from the training
    # random streams, so evaluating more often or on other rows changes only the evaluation rows after the resume.
    def recipe_of(**changed):
        data = {**TASK, **changed.pop("data", {})}
        return make_recipe(tmp_path, family("transformer"), data, **changed)

    reference = uninterrupted(tmp_path, recipe_of)
    killed_before_step(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        train(recipe_of(), progress=False)
    monkeypatch.undo()
    changed = {"eval_every": 1, "log_every": 1, "save_every": 1, "save_total_limit": 3, "data": {"eval_samples": 2}}
    resumed = train(recipe_of(**changed), resume=True, progress=False)
    assert [(row["step"], "eval" in row) for row in resumed.history] == [
        (1, False), (2, False), (2, True), (3, False), (3, True), (4, False), (4, True)]
    weights, resumed_weights = (files(folder)["model.safetensors"][1] for folder in (reference, tmp_path / "run"))
    assert weights.keys() == resumed_weights.keys()
    assert all(torch.equal(tensor, resumed_weights[key]) for key, tensor in weights.items())


def test_a_run_resumed_from_an_earlier_checkpoint_and_killed_goes_on_from_there(tmp_path, monkeypatch, caplog):
    # Resumed from checkpoint-2 of a run that had written 2 and 4, and killed before its first checkpoint: its
    # metrics.jsonl held steps 1-3 alone, but checkpoint-4 was still there, so --resume went on from it and the run
    # ended without the rows of step 4 and its evaluation (a warning said so).
    def recipe_of():
        return make_recipe(tmp_path, family("lstm"), TASK, save_total_limit=3, eval_every=0)

    reference = uninterrupted(tmp_path, recipe_of)
    train(recipe_of(), progress=False)
    killed_before_step(monkeypatch, 4)
    with caplog.at_level("WARNING", logger="seqzoo.training"), pytest.raises(KeyboardInterrupt):
        train(recipe_of(), resume=tmp_path / "run" / "checkpoints" / "checkpoint-2", progress=False)
    assert "this run writes its own steps in place of checkpoint-4 (removed)" in caplog.text
    monkeypatch.undo()
    train(recipe_of(), resume=True, progress=False)
    assert_same_folders(reference, tmp_path / "run")
