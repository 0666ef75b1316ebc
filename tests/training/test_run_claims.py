"""A training run holds its output_dir while it runs (``.NAME.training.lock`` beside it): a second run started on
that folder, by mistake or side by side, is refused naming the first's process and the lock; a lock left by a
process that has ended is taken over."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

import pytest

import seqzoo.training.trainer as trainer
from seqzoo.outputs import OutputError, take_lock
from seqzoo.training.trainer import run_lock, train
from tests.training.test_trainer import _ended_process_id, _files, make_recipe


def _refusal(run_dir, pid: int) -> str:
    lock = run_lock(run_dir)
    return re.escape(f"{str(run_dir)!r} is the output_dir of a training run still running (process {pid}); wait "
                     "for it, stop it, or choose another output_dir (--output-dir) (if none runs, the process id "
                     f"being another program's now, delete {lock})")


def test_a_run_started_on_the_output_dir_of_a_run_going_on_is_refused_naming_it(tmp_path, monkeypatch):
    """Two runs on one output_dir both found it empty (or both --resume found their checkpoint) and both trained into
    it: one folder held the recipe.yaml of one, the final model and seqzoo_training.json of the other, checkpoints of
    both and their metrics rows interleaved, and the other run failed writing a checkpoint the first had renamed."""
    recipe = make_recipe(tmp_path, "a", train={"max_steps": 2, "save_every": 1})
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "a")  # (the same folder by another name)
    refused = []
    real = trainer.build_model

    def second_runs_start_now(*args, **kwargs):  # (the first run has checked the folder and not yet written to it)
        monkeypatch.setattr(trainer, "build_model", real)
        for output_dir, arguments in ((tmp_path / "a", {}), (tmp_path / "a", {"force": True}),
                                      (tmp_path / "a", {"resume": True}), (link, {})):
            second = make_recipe(tmp_path, "a", train={"max_steps": 2, "save_every": 1, "seed": 7})
            second.output_dir = str(output_dir)
            with pytest.raises(ValueError, match=_refusal(output_dir, os.getpid())):
                train(second, progress=False, **arguments)
            refused.append(arguments)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "build_model", second_runs_start_now)
    train(recipe, progress=False)
    assert len(refused) == 4
    folder = tmp_path / "a"
    assert "seed: 0" in (folder / "recipe.yaml").read_text()
    assert [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2, 2]
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert json.loads((folder / "seqzoo_training.json").read_text())["recipe"]["train"]["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "link"]  # (the lock goes with its run)


@pytest.mark.parametrize("owner", ["ended", "this process's id, not held"])
def test_a_lock_left_by_a_process_that_ended_is_taken_over(tmp_path, owner):
    """A run killed (SIGKILL, the machine restarted) leaves its lock; the next run takes it over. In a container
    started again a program is given the same process id: a lock naming this process, which it does not hold, is
    one so left."""
    recipe = make_recipe(tmp_path, "a", train={"max_steps": 1, "save_every": 0, "eval_every": 0})
    pid = _ended_process_id() if owner == "ended" else os.getpid()
    run_lock(tmp_path / "a").write_text(f"{pid} {platform.node()}\n")
    assert train(recipe, progress=False).steps == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_lock_of_another_host_or_held_here_is_named_and_kept(tmp_path):
    recipe = make_recipe(tmp_path, "a", train={"max_steps": 1, "save_every": 0, "eval_every": 0})
    lock = run_lock(tmp_path / "a")
    lock.write_text("123 another-host\n")
    with pytest.raises(ValueError, match=re.escape(
            f"{str(tmp_path / 'a')!r} is the output_dir of a training run running on another-host (process 123); "
            f"wait for it or choose another output_dir (--output-dir) (if none runs there, delete {lock})")):
        train(recipe, progress=False)
    assert lock.read_text() == "123 another-host\n" and not (tmp_path / "a").exists()
    lock.unlink()
    take_lock(lock, tmp_path / "a", "the output_dir of a training run", "another output_dir (--output-dir)")
    try:  # (a train() of this process, in another thread)
        with pytest.raises(ValueError, match=_refusal(tmp_path / "a", os.getpid())):
            train(recipe, progress=False, force=True)
    finally:
        trainer.release_lock(lock)
    # A run refused after its claim leaves no folder it made for the lock.
    nested = make_recipe(tmp_path / "new" / "deeper", "a", train={"max_steps": 1})
    with pytest.raises(ValueError, match="does not exist: no run wrote there"):
        train(nested, progress=False, resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [] and _files(tmp_path) == {}


def test_a_checkpoint_rotated_out_by_the_run_still_writing_it_is_named_as_removed(tmp_path, monkeypatch):
    """--resume runs/a into a folder of its own, while runs/a trains on: its next save removed the checkpoint this run
    had chosen (save_total_limit) while this run built its data and model, and the resume failed as if the
    checkpoint were damaged, "cannot read '.../trainer_state.json': No such file or directory"."""
    from seqzoo.training.checkpoint import list_checkpoints

    a = make_recipe(tmp_path, "a", train={"max_steps": 2, "save_every": 2, "save_total_limit": 1, "eval_every": 0})
    train(a, progress=False)
    [(_, chosen)] = list_checkpoints(tmp_path / "a")
    lock = run_lock(tmp_path / "a")
    real = trainer.build_model

    def the_run_saves_again_meanwhile(*args, **kwargs):
        chosen.rename(chosen.with_name("checkpoint-4"))  # (written, and the older one rotated out)
        lock.write_text(f"{os.getpid()} {platform.node()}\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "build_model", the_run_saves_again_meanwhile)
    b = make_recipe(tmp_path, "b", train={"max_steps": 2, "save_every": 2, "save_total_limit": 1, "eval_every": 0})
    with pytest.raises(ValueError, match=re.escape(
            f"--resume: checkpoint {str(chosen)!r} was removed after this run chose it: the run in "
            f"{str(tmp_path / 'a')!r} went on writing checkpoints and keeps only its newest (train.save_total_limit), "
            f"or it was deleted (a run trains there now: {lock} is held); resume again to continue from the newest "
            "one there")):
        train(b, progress=False, resume=str(tmp_path / "a"))


def test_an_output_dir_in_a_folder_that_cannot_be_written_trains_unclaimed(tmp_path, monkeypatch, caplog):
    """A volume mounted on a read-only root (--output-dir /output) trains as before the lock, with a warning."""
    import errno

    recipe = make_recipe(tmp_path, "a", train={"max_steps": 1, "save_every": 0, "eval_every": 0})
    (tmp_path / "a").mkdir()

    def read_only(lock, *args):
        raise PermissionError(errno.EROFS, "Read-only file system", str(lock.with_name(lock.name + ".1")))

    monkeypatch.setattr(trainer, "take_lock", read_only)
    with caplog.at_level("WARNING", logger="seqzoo.training"):
        assert train(recipe, progress=False).steps == 1
    assert f"{tmp_path / 'a'}: cannot claim it for this run (Read-only file system" in caplog.text
    with pytest.raises(OutputError, match=re.escape(f"cannot write output_dir {str(tmp_path / 'b')!r}: Read-only")):
        train(make_recipe(tmp_path, "b", train={"max_steps": 1}), progress=False)  # (a folder it would have to make)


def test_a_checkpoint_is_rotated_out_in_one_step_so_a_reader_finds_it_whole_or_gone(tmp_path, monkeypatch):
    """The rotation deleted a checkpoint file by file: a run resuming from it meanwhile found it half deleted and was
    told it was damaged ("is missing ..."); it is renamed away first, then deleted, and what a killed deletion leaves
    goes at the next rotation."""
    import shutil

    import seqzoo.training.checkpoint as checkpoint

    a = make_recipe(tmp_path, "a", train={"max_steps": 2, "save_every": 2, "eval_every": 0})
    train(a, progress=False)
    chosen = tmp_path / "a" / "checkpoints" / "checkpoint-2"
    real_rmtree = shutil.rmtree

    def halfway(path, *args, **kwargs):  # (the rotation of the run still training in a, stopped half-way)
        (Path(path) / "model.safetensors").unlink()

    def rotated_meanwhile(*args, **kwargs):
        monkeypatch.setattr(checkpoint.shutil, "rmtree", halfway)
        checkpoint._remove_checkpoint(chosen)
        monkeypatch.setattr(checkpoint.shutil, "rmtree", real_rmtree)
        return real(*args, **kwargs)

    real = trainer.build_model
    monkeypatch.setattr(trainer, "build_model", rotated_meanwhile)
    b = make_recipe(tmp_path, "b", train={"max_steps": 2, "save_every": 2, "eval_every": 0})
    with pytest.raises(ValueError, match=re.escape(f"--resume: checkpoint {str(chosen)!r} was removed after this run "
                                                   "chose it")):
        train(b, progress=False, resume=str(chosen))
    assert (tmp_path / "a" / "checkpoints" / ".checkpoint-2.deleting").is_dir()  # (whole or gone: gone)

    # A deletion stopped half-way (a full disk, a kill) is finished by the next rotation.
    monkeypatch.undo()
    first = []

    def fails_once(path, *args, **kwargs):
        if not first:
            first.append(path)
            raise OSError(5, "Input/output error", str(path))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", fails_once)
    train(make_recipe(tmp_path, "c", train={"max_steps": 3, "save_every": 1, "save_total_limit": 1, "eval_every": 0}),
          progress=False)
    assert Path(first[0]).name == ".checkpoint-1.deleting"
    assert sorted(p.name for p in (tmp_path / "c" / "checkpoints").iterdir()) == ["checkpoint-3"]
