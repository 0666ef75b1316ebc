"""Final outputs appear whole or not at all: `seqzoo new`, `train` and `publish --dry-run` into a read-only folder or
onto a full disk give one `error:` line and leave nothing half-written; a run whose writes fail stays resumable.

A real read-only folder and a real full disk need either a non-root user (chmod) or the right to mount a tiny tmpfs
(root in a container). Where neither works the test skips and says why; the monkeypatched faults always run.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import seqzoo.outputs as outputs
from seqzoo.cli import main
from seqzoo.outputs import OutputError, staged_folder
from seqzoo.training.checkpoint import list_checkpoints


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def readonly_dir(tmp_path):
    folder = tmp_path / "readonly"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    # root ignores permission bits; a tmpfs mounted read-only refuses root too.
    if not _mount_tmpfs(folder, "ro,size=64k"):
        pytest.skip("running as root (chmod does not stop root) and cannot mount a read-only tmpfs here")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def full_disk(tmp_path):
    folder = tmp_path / "full"
    if not _mount_tmpfs(folder, "size=64k"):
        pytest.skip("cannot mount a 64 KiB tmpfs here (needs root in a container); the monkeypatched full-disk "
                    "tests cover the same paths")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def error_line(argv: list[str], capsys) -> str:
    """Run the CLI and return its single error line (SystemExit message, or what main() printed)."""
    try:
        code = main(argv)
        message = capsys.readouterr().err.strip()
        assert code != 0, "the command succeeded"
    except SystemExit as exit_:
        message = str(exit_.code)
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message, message
    return message


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------------------------------------------------------
# staged_folder itself.


def test_staged_folder_appears_in_one_rename_or_not_at_all(tmp_path):
    with staged_folder(tmp_path / "out") as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".out.")
        (staging / "config.json").write_text("{}")
        assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path / "out") == ["config.json"] and leftovers(tmp_path) == ["out"]

    with pytest.raises(RuntimeError, match="boom"), staged_folder(tmp_path / "second") as staging:
        (staging / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("boom")
    assert leftovers(tmp_path) == ["out"]


@pytest.mark.parametrize("name", ["m" * 255, "é" * 127, "日本" * 42], ids=["ascii", "two-byte", "three-byte"])
@pytest.mark.parametrize("merge", [False, True])
def test_staged_folder_into_a_name_of_up_to_255_bytes(tmp_path, name, merge):
    # (the partial folder, .NAME.<random>.partial, was 18 bytes longer than the name: a folder of more than 237 bytes,
    # which the file system takes, failed with "File name too long", after a whole training run)
    with staged_folder(tmp_path / name, merge=merge) as staging:
        assert len(os.fsencode(staging.name)) < 255
        (staging / "config.json").write_text("{}")
    assert leftovers(tmp_path / name) == ["config.json"] and leftovers(tmp_path) == [name]


def test_staged_folder_reads_dot_dot_after_a_link_as_the_file_system_does(tmp_path):
    # (os.path.abspath dropped "link/..": the model went beside the link, where a training run's checkpoints and
    # metrics, written through the file system, went beside the folder the link names: one run in two folders)
    (tmp_path / "other" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "other" / "sub")
    with staged_folder(tmp_path / "link" / ".." / "out") as staging:
        (staging / "config.json").write_text("{}")
    assert leftovers(tmp_path / "other" / "out") == ["config.json"] and leftovers(tmp_path) == ["link", "other"]
    # A name ".." itself (seqzoo new --force link/..): the folder above the one the link names, as the shell's ls.
    with staged_folder(tmp_path / "link" / "..", merge=True) as staging:
        (staging / "notes.txt").write_text("new")
    assert leftovers(tmp_path / "other") == ["notes.txt", "out", "sub"] and leftovers(tmp_path) == ["link", "other"]


def test_the_empty_folder_one_stands_in_named_through_a_link_above_it_receives_the_files(tmp_path, monkeypatch):
    # (abspath kept the link in the name, so the folder was not seen as the one the process stands in, which the
    # rename replaced: the shell was left in a deleted folder, showing nothing)
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path / "real" / "sub")
    here = os.stat(".").st_ino
    with staged_folder(tmp_path / "link" / "sub") as staging:
        (staging / "config.json").write_text("{}")
    assert os.stat(os.getcwd()).st_ino == here and leftovers(Path.cwd()) == ["config.json"]


def test_new_into_a_long_folder_name(tmp_path, capsys):
    assert main(["new", "gru-tiny", str(tmp_path / ("é" * 127))]) == 0
    assert "config.json" in leftovers(tmp_path / ("é" * 127)) and leftovers(tmp_path) == ["é" * 127]


@pytest.mark.parametrize("merge", [False, True])
def test_a_failed_write_removes_the_folders_it_made_on_the_way(tmp_path, merge):
    """'nothing was left there', but the new folders of a nested destination stayed (empty); those that were there
    before stay, and so does one that something else wrote into meanwhile."""
    (tmp_path / "kept").mkdir()
    with pytest.raises(OutputError, match="nothing was left there"), \
            staged_folder(tmp_path / "kept" / "new" / "deep" / "out", merge=merge) as staging:
        (staging / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")
    assert leftovers(tmp_path) == ["kept"] and leftovers(tmp_path / "kept") == []
    with pytest.raises(RuntimeError, match="boom"), staged_folder(tmp_path / "kept" / "a" / "out") as staging:
        (tmp_path / "kept" / "a" / "theirs.txt").write_text("written meanwhile")
        raise RuntimeError("boom")
    assert leftovers(tmp_path / "kept" / "a") == ["theirs.txt"]


def test_merge_renames_config_json_last(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    moved = []
    real_replace = os.replace
    monkeypatch.setattr(outputs.os, "replace", lambda a, b: moved.append(Path(b).name) or real_replace(a, b))
    with staged_folder(run, merge=True) as staging:
        for name in ("config.json", "model.safetensors", "tokenizer.json", "zz.json"):
            (staging / name).write_text(name)
    assert moved[-1] == "config.json" and sorted(moved) == ["config.json", "model.safetensors", "tokenizer.json",
                                                            "zz.json"]
    assert leftovers(run) == ["checkpoints", "config.json", "model.safetensors", "tokenizer.json", "zz.json"]


def test_merge_into_a_folder_with_a_folder_in_the_way_moves_nothing(tmp_path):
    # The folder in the way was found only when its turn came: the files sorted before it (the new weights) had
    # replaced the old ones already, beside the old config.json.
    run = tmp_path / "run"
    (run / "tokenizer.json").mkdir(parents=True)
    (run / "config.json").write_text("old")
    (run / "model.safetensors").write_text("old")
    with pytest.raises(OutputError, match="tokenizer.json: a folder of that name is in the way"):
        with staged_folder(run, merge=True) as staging:
            for name in ("config.json", "model.safetensors", "tokenizer.json"):
                (staging / name).write_text("new")
    assert (run / "config.json").read_text() == "old" and (run / "model.safetensors").read_text() == "old"
    assert leftovers(run) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_replacing_a_model_removes_its_config_json_first_then_its_stale_files(tmp_path, monkeypatch):
    # The new files must never sit beside the old config.json, nor the new config.json beside the old shard index.
    out = tmp_path / "m"
    out.mkdir()
    for name in ("config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors", "notes.txt"):
        (out / name).write_text("old")
    seen, removed = [], []
    real_replace, real_unlink = os.replace, Path.unlink

    def mine(name: str) -> bool:  # (the lock this write holds while it moves its files in, and its staged file)
        return name.startswith(outputs.MERGING)

    def unlink(path, **kw):
        if not mine(path.name):
            removed.append(path.name)
        real_unlink(path, **kw)

    monkeypatch.setattr(Path, "unlink", unlink)
    shown = lambda: [name for name in leftovers(out) if not name.endswith(".partial") and not mine(name)]  # noqa: E731
    monkeypatch.setattr(outputs.os, "replace", lambda a, b: seen.append(shown()) or real_replace(a, b))
    old = ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"]
    with staged_folder(out, merge=True, replaces=old) as staging:
        for name in ("config.json", "model.safetensors"):
            (staging / name).write_text("new")
    assert removed[0] == "config.json" and sorted(removed) == sorted(old)  # a stop midway leaves no model
    assert seen[0] == ["notes.txt"]  # before the first new file moved in: no old model file left
    assert leftovers(out) == ["config.json", "model.safetensors", "notes.txt"]
    assert (out / "config.json").read_text() == "new" and (out / "notes.txt").read_text() == "old"


@pytest.mark.parametrize("left", ["link", "file"])
def test_write_atomically_never_writes_through_what_its_partial_name_holds(tmp_path, left):
    # A link named results.json.partial (in a folder from elsewhere), or the file a killed write left: the text went
    # into the file the link points to (a user's file overwritten), and results.json became that link.
    elsewhere = tmp_path / "notes.txt"
    elsewhere.write_text("mine")
    out = tmp_path / "lab"
    out.mkdir()
    partial = out / "results.json.partial"
    partial.symlink_to(elsewhere) if left == "link" else partial.write_text("x" * 100)
    outputs.write_atomically(out / "results.json", "{}")
    assert elsewhere.read_text() == "mine"
    assert not (out / "results.json").is_symlink() and (out / "results.json").read_text() == "{}"
    assert leftovers(out) == ["results.json"]


def test_a_safetensors_write_error_becomes_one_line(tmp_path):
    from safetensors import SafetensorError

    with pytest.raises(OutputError) as info, staged_folder(tmp_path / "out"):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
                              'space left on device" })')
    assert str(info.value) == f"cannot write {tmp_path / 'out'}: No space left on device; nothing was left there"
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------------------------
# seqzoo new.


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "model.safetensors")


def test_new_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch, capsys):
    # save_pretrained writes config.json first; a failing weights write must not leave it behind.
    import transformers.modeling_utils

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", no_space)
    message = error_line(["new", "lstm-tiny", str(tmp_path / "m")], capsys)
    assert f"cannot write {tmp_path / 'm'}: No space left on device" in message
    assert leftovers(tmp_path) == []


def test_new_into_a_real_full_disk(full_disk, capsys):
    message = error_line(["new", "lstm-tiny", str(full_disk / "m")], capsys)
    assert "No space left on device" in message
    assert leftovers(full_disk) == []


def test_new_into_a_read_only_folder(readonly_dir, capsys):
    message = error_line(["new", "lstm-tiny", str(readonly_dir / "m")], capsys)
    assert f"cannot write {readonly_dir / 'm'}: " in message
    assert "Read-only file system" in message or "Permission denied" in message


def test_new_into_a_link_to_an_empty_folder_fills_that_folder(tmp_path, capsys):
    # (refused with "Not a directory": the link was rmdir'ed as the empty folder it names)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "m").symlink_to(tmp_path / "elsewhere")
    assert main(["new", "lstm-tiny", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m").is_symlink() and "config.json" in leftovers(tmp_path / "elsewhere")
    assert leftovers(tmp_path) == ["elsewhere", "m"]


def test_staged_folder_works_where_the_folder_one_stands_in_was_deleted(tmp_path, monkeypatch):
    (tmp_path / "gone").mkdir()
    monkeypatch.chdir(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    (tmp_path / "out").mkdir()
    with staged_folder(tmp_path / "out") as staging:
        (staging / "config.json").write_text("{}")
    assert leftovers(tmp_path / "out") == ["config.json"]


def test_new_below_a_file_names_the_file(tmp_path, capsys):
    (tmp_path / "notes").write_text("mine")
    message = error_line(["new", "gru-tiny", str(tmp_path / "notes" / "m")], capsys)
    assert message == f"error: cannot write {tmp_path / 'notes' / 'm'}: {tmp_path / 'notes'} is a file, not a folder"
    assert (tmp_path / "notes").read_text() == "mine"


@pytest.mark.parametrize("written", [".", "../here"])
def test_new_into_the_empty_folder_one_stands_in(tmp_path, monkeypatch, capsys, written):
    # "." failed with "cannot write .: Invalid argument"; "../here" replaced the folder by a new one, leaving the
    # shell that stood in it in a deleted folder that shows nothing. ("" is refused as an empty name: test_cli.py)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["new", "gru-tiny", written]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir("."))
    assert leftovers(tmp_path) == ["here"] and not [name for name in os.listdir(".") if name.endswith(".partial")]


def test_new_force_into_a_used_folder_keeps_other_files(tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text('{"model_type": "seqzoo_lstm"}')  # (a model's, without weights: replaced)
    assert main(["new", "gru-tiny", str(out), "--force"]) == 0
    assert {"notes.txt", "config.json", "model.safetensors", "tokenizer.json"} <= set(leftovers(out))
    assert json.loads((out / "config.json").read_text())["model_type"] == "seqzoo_gru"
    assert not [name for name in leftovers(tmp_path) if name.endswith(".partial")]


@pytest.mark.parametrize("settings", ['{"db": "postgres://localhost", "port": 8080}', "port = 8080\n"])
def test_new_force_keeps_a_config_json_that_is_no_models(tmp_path, capsys, settings):
    # (a program's settings in config.json were written over by the new model's, without a word)
    out = tmp_path / "m"
    out.mkdir()
    (out / "config.json").write_text(settings)
    message = error_line(["new", "gru-tiny", str(out), "--force"], capsys)
    assert f"{str(out / 'config.json')!r} is no model's config" in message
    assert (out / "config.json").read_text() == settings and leftovers(out) == ["config.json"]
    # A model's config.json, or one beside weights (a damaged model), is replaced as before.
    (out / "model.safetensors").write_text("damaged")
    assert main(["new", "gru-tiny", str(out), "--force"]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "seqzoo_gru"


def test_new_force_names_a_config_json_nested_too_deep_to_read_as_no_models(tmp_path, capsys):
    # (json.loads raises RecursionError, not a ValueError, for such a file: it is no model's config all the same)
    out = tmp_path / "m"
    out.mkdir()
    (out / "config.json").write_text("[" * 100_000)
    assert "is no model's config" in error_line(["new", "gru-tiny", str(out), "--force"], capsys)
    assert leftovers(out) == ["config.json"]


def test_new_force_over_a_sharded_model_with_an_adapter_loads_exactly_the_new_model(tmp_path, capsys):
    # The old shard index, shards and adapter stayed beside the new model.safetensors: from_pretrained applied the
    # stale adapter (peft) and refused the folder; other tokenizers' files and bundled code of the old architecture
    # stayed too. Files that are not the model's (notes, a README, a subfolder) stay.
    pytest.importorskip("peft")
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    import seqzoo

    out = tmp_path / "m"
    old = seqzoo.create_model("lstm-tiny")
    old.save_pretrained(out, max_shard_size="20KB")
    get_peft_model(old, seqzoo.peft_config(old)).save_pretrained(out)
    for name, text in (("vocab.json", "{}"), ("merges.txt", ""), ("notes.txt", "mine")):
        (out / name).write_text(text)
    (out / "checkpoints").mkdir()
    assert {"model.safetensors.index.json", "adapter_config.json", "modeling_seqzoo_lstm.py"} <= set(leftovers(out))
    assert main(["new", "gru-tiny", str(out), "--force"]) == 0
    printed = capsys.readouterr().out
    assert "removed " in printed and "adapter_config.json" in printed, printed
    left = set(leftovers(out))
    stale = {name for name in left if name.startswith(("model-", "adapter_", "model.safetensors.index"))}
    assert not stale and not {"vocab.json", "merges.txt", "modeling_seqzoo_lstm.py"} & left, left
    assert {"notes.txt", "README.md", "checkpoints", "model.safetensors", "tokenizer.json"} <= left
    loaded = AutoModelForCausalLM.from_pretrained(out)
    torch.manual_seed(0)
    fresh = seqzoo.create_model("gru-tiny")
    assert type(loaded) is type(fresh)
    assert all(torch.equal(value, fresh.state_dict()[key]) for key, value in loaded.state_dict().items())


# ----------------------------------------------------------------------------------------------------------------
# seqzoo publish --dry-run.


def test_publish_dry_run_into_a_read_only_folder(tmp_path, readonly_dir, capsys):
    assert main(["new", "gru-tiny", str(tmp_path / "m")]) == 0
    message = error_line(["publish", str(tmp_path / "m"), "me/gru", "--dry-run", "--output",
                          str(readonly_dir / "bundle")], capsys)
    assert f"cannot write {readonly_dir / 'bundle'}" in message


def test_publish_dry_run_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch, capsys):
    import transformers.modeling_utils

    assert main(["new", "gru-tiny", str(tmp_path / "m")]) == 0
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", no_space)
    (tmp_path / "hub").mkdir()
    message = error_line(["publish", str(tmp_path / "m"), "me/gru", "--dry-run", "--output",
                          str(tmp_path / "hub" / "bundle")], capsys)
    assert "No space left on device" in message and leftovers(tmp_path / "hub") == []


# ----------------------------------------------------------------------------------------------------------------
# seqzoo train.

TRAIN = ["train", "lstm-tiny", "model.config.hidden_size=16", "model.config.embedding_size=16", "data.source=task",
         "data.task=copy", "data.distances=[2, 5]", "data.symbols=6", "data.items=2", "data.eval_samples=8",
         "max_steps=4", "batch_size=8", "save_every=2", "eval_every=0", "warmup_steps=2", "--no-progress"]


def final_weights(run: Path) -> dict:
    return load_file(str(run / "model.safetensors"))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    assert main(TRAIN + ["--output-dir", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def uninterrupted(straight_run):
    return final_weights(straight_run)


def test_a_checkpoint_write_failing_leaves_the_previous_one_and_the_run_resumes(tmp_path, monkeypatch, capsys,
                                                                               uninterrupted):
    import seqzoo.training.state as state

    real = state.save_optimizer_state

    def full_at_step_4(value, path):
        if path.parent.name == "checkpoint-4.tmp":
            path.write_bytes(b"half")
            no_space()
        return real(value, path)

    run = tmp_path / "run"
    monkeypatch.setattr(state, "save_optimizer_state", full_at_step_4)
    message = error_line(TRAIN + ["--output-dir", str(run)], capsys)
    assert f"cannot write checkpoint '{run / 'checkpoints' / 'checkpoint-4'}': No space left on device" in message
    assert f"the newest complete checkpoint, '{run / 'checkpoints' / 'checkpoint-2'}', is intact" in message
    assert leftovers(run / "checkpoints") == ["checkpoint-2"]  # the partial one was removed to free the space
    assert "config.json" not in leftovers(run)

    monkeypatch.undo()
    assert main(TRAIN + ["--output-dir", str(run), "--resume"]) == 0
    for name, tensor in final_weights(run).items():
        assert torch.equal(tensor, uninterrupted[name]), name


def test_the_final_save_failing_leaves_no_half_model_and_the_run_resumes(tmp_path, monkeypatch, capsys,
                                                                         uninterrupted):
    import transformers.modeling_utils

    run = tmp_path / "run"
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", no_space)
    message = error_line(TRAIN + ["--output-dir", str(run)], capsys)
    assert "training finished but the final model could not be saved" in message
    assert "No space left on device" in message and "checkpoint-4'" in message
    assert not [n for n in leftovers(run) if n in ("config.json", "model.safetensors") or n.endswith(".partial")]
    assert [step for step, _ in list_checkpoints(run)] == [2, 4]

    monkeypatch.undo()
    assert main(TRAIN + ["--output-dir", str(run), "--resume"]) == 0
    for name, tensor in final_weights(run).items():
        assert torch.equal(tensor, uninterrupted[name]), name


def test_resume_replaces_a_link_named_recipe_yaml_instead_of_writing_through_it(straight_run, tmp_path):
    # A run folder from elsewhere whose recipe.yaml links to a file of the user's: --resume wrote the recipe into it.
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    (run / "recipe.yaml").unlink()
    (run / "recipe.yaml").symlink_to(notes)
    assert main(TRAIN + ["--output-dir", str(run), "--resume"]) == 0
    assert notes.read_text() == "mine"
    assert not (run / "recipe.yaml").is_symlink() and "task: causal-lm" in (run / "recipe.yaml").read_text()


def test_force_refuses_to_delete_the_recipe_file_given_inside_the_output_folder(straight_run, tmp_path, capsys):
    # (the old run, the recipe given with it, was deleted once the new run's first step was done)
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    mine = run / "mine.yaml"
    mine.write_text("# my sweep\n" + (run / "recipe.yaml").read_text())
    message = error_line(["train", str(mine), "--output-dir", str(run), "--force", "--no-progress"], capsys)
    assert f"--force would delete {str(run)!r}, which holds the recipe file given, {str(mine)!r}" in message
    assert mine.read_text().startswith("# my sweep") and (run / "model.safetensors").is_file()
    # The run's own recipe.yaml is written again by the new run: starting over from it is no loss.
    assert main(["train", str(run / "recipe.yaml"), "--output-dir", str(run), "--force", "--no-progress"]) == 0


def test_force_refuses_to_delete_a_recipe_file_given_by_a_relative_path_or_in_a_subfolder(straight_run, tmp_path,
                                                                                           capsys, monkeypatch):
    # (the paths are compared resolved: `seqzoo train run/mine.yaml --output-dir run` from the folder above, and a
    # recipe kept in a subfolder of the run, are deleted with the run as well; a run that deletes nothing reads it)
    import shutil

    shutil.copytree(straight_run, tmp_path / "run")
    (tmp_path / "run" / "sweeps").mkdir()
    monkeypatch.chdir(tmp_path)
    for given in ("run/mine.yaml", "run/sweeps/mine.yaml"):
        Path(given).write_text("# my sweep\n" + Path("run/recipe.yaml").read_text())
        message = error_line(["train", given, "--output-dir", "run", "--force", "--no-progress"], capsys)
        assert f"--force would delete 'run', which holds the recipe file given, {given!r}" in message
        assert Path(given).read_text().startswith("# my sweep")
    assert main(["train", "run/mine.yaml", "--output-dir", "run", "--print-recipe"]) == 0
    assert "task: causal-lm" in capsys.readouterr().out


def test_train_into_a_read_only_folder(readonly_dir, capsys):
    message = error_line(TRAIN + ["--output-dir", str(readonly_dir / f"run-{uuid.uuid4().hex[:6]}")], capsys)
    assert "Read-only file system" in message or "Permission denied" in message


def test_train_onto_a_real_full_disk(full_disk, capsys):
    # 64 KiB holds the run's recipe and metrics but not its first checkpoint (~70 KB of state).
    run = full_disk / "run"
    message = error_line(TRAIN + ["--output-dir", str(run)], capsys)
    assert f"cannot write checkpoint '{run / 'checkpoints' / 'checkpoint-2'}': No space left on device" in message
    assert "there is no earlier checkpoint" in message
    assert leftovers(run / "checkpoints") == [] and "config.json" not in leftovers(run)


def test_two_writers_merging_into_one_folder_at_once_leave_the_last_ones_model_whole(tmp_path, monkeypatch):
    """Two `seqzoo new --force` (or a converter and `seqzoo new`) into one folder interleaved their renames: the folder
    held the config.json of one beside the weights of the other (and its code files, which the other does not write).
    The second now waits for the first to move its files in, then replaces that model as it does any other."""
    import threading

    out = tmp_path / "model"
    out.mkdir()
    for name in ("config.json", "model.safetensors", "notes.txt"):
        (out / name).write_text("old")
    first_paused, go_on = threading.Event(), threading.Event()
    real_replace = os.replace

    def replace(source, target):
        real_replace(source, target)
        if threading.current_thread().name == "first" and Path(target).name == "model.safetensors":
            first_paused.set()  # (its weights are in, its config.json not yet)
            go_on.wait(5)

    def write(model: str, names: tuple[str, ...]) -> None:
        held = lambda: [p.name for p in out.iterdir() if p.name not in ("notes.txt", outputs.MERGING)]  # noqa: E731
        with staged_folder(out, merge=True, replaces=held) as staging:
            for name in names:
                (staging / name).write_text(model)

    monkeypatch.setattr(outputs.os, "replace", replace)
    first = threading.Thread(target=write, args=("a", ("config.json", "model.safetensors", "modeling_a.py")),
                             name="first")
    second = threading.Thread(target=write, args=("b", ("config.json", "model.safetensors")), name="second")
    first.start()
    assert first_paused.wait(5)
    second.start()
    second.join(0.3)
    waited = second.is_alive()
    go_on.set()
    first.join(5), second.join(5)
    assert waited, "the second writer moved its files in while the first was half-way"
    assert {p.name: p.read_text() for p in out.iterdir()} == {"config.json": "b", "model.safetensors": "b",
                                                              "notes.txt": "old"}


@pytest.mark.parametrize("was", ["new", "empty"])
def test_new_into_a_folder_another_process_filled_meanwhile_says_so_and_keeps_it(tmp_path, monkeypatch, capsys, was):
    """Two `seqzoo new` into one new folder at once: the one to finish second failed with 'Directory not empty',
    which said nothing of the other process."""
    out = tmp_path / "m"
    if was == "empty":
        out.mkdir()
    real = outputs.fsync_tree

    def the_other_finishes_first(folder):
        real(folder)
        out.mkdir(exist_ok=True)
        (out / "config.json").write_text("the other's")

    monkeypatch.setattr(outputs, "fsync_tree", the_other_finishes_first)
    assert error_line(["new", "gru-tiny", str(out)], capsys) == (
        f"error: cannot write {out}: it is no longer empty (another process wrote there while this one was writing); "
        "nothing was left there")
    assert leftovers(out) == ["config.json"] and leftovers(tmp_path) == ["m"]


def test_on_windows_a_lock_owners_process_is_not_signalled(monkeypatch):
    """os.kill(pid, 0) ends the process on Windows (any signal there is TerminateProcess): the liveness check of a
    lock's owner must not call it there, and counts any process id as alive (the refusal names the lock to delete)."""
    from seqzoo import outputs

    def kill(*args):
        raise AssertionError(f"os.kill{args} would end that process on Windows")

    def alive_on_windows(pid):
        name, os.name = os.name, "nt"  # (set for the call alone: pytest's own reporting reads os.name)
        try:
            return outputs.process_alive(pid)
        finally:
            os.name = name

    monkeypatch.setattr(outputs.os, "kill", kill)
    assert alive_on_windows(12345) and alive_on_windows("12345")
    assert not alive_on_windows(None) and not alive_on_windows("edited")


@pytest.mark.parametrize("command", [["new", "gru-tiny"], ["new", "gru-tiny", "--force"], TRAIN + ["--output-dir"],
                                     ["lab", "--smoke", "--out"], ["lab", "seq2seq", "--smoke", "--out"],
                                     ["lab", "bidirectional", "--smoke", "--out"], ["lab", "sweep", "--out"],
                                     ["lab", "gradients", "--out"]],
                         ids=["new", "new --force", "train", "lab", "lab seq2seq", "lab bidirectional", "lab sweep",
                              "lab gradients"])
def test_a_link_to_nothing_as_the_output_folder_is_named_with_where_it_points(tmp_path, capsys, command):
    # (a folder on a drive not mounted: "Not a directory" or "File exists", naming neither the link nor its target)
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "unmounted" / "models")
    message = error_line(command + [str(link)], capsys)
    assert message.endswith(f"{link}': it is a link to {tmp_path / 'unmounted' / 'models'}, which does not exist; "
                            "make that folder, or remove the link") or message == (
        f"error: cannot write {link}: it is a link to {tmp_path / 'unmounted' / 'models'}, which does not exist; "
        "make that folder, or remove the link"), message
    assert sorted(os.listdir(tmp_path)) == ["out"] and link.is_symlink()
