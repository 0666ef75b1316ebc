"""Checkpoints never run code and never resume inexactly: no pickle is read (a planted one never runs), accelerate's
pickle checkpoints are refused, and a missing or damaged state file is refused with its name."""

from __future__ import annotations

import json
import math
import pickle
import shutil
import threading
from pathlib import Path

import pytest
import torch

from seqzoo.outputs import OutputError
from seqzoo.training.checkpoint import SEAL, STATE_FILE, list_checkpoints, state_seal
from seqzoo.training.state import CheckpointError, file_record
from seqzoo.training.trainer import train
from tests.training.test_trainer import make_recipe

DROPOUT_LSTM = {"preset": "lstm-tiny", "config": {"hidden_size": 16, "embedding_size": 16, "dropout": 0.2}}
RUN = dict(model=DROPOUT_LSTM, train={"max_steps": 4, "save_every": 2})


class Planted:
    """A pickle that writes a marker file when it is loaded (what an attacker's would do, harmlessly)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "the pickle ran"))


def plant(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Planted(marker)))


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A 4-step run cut back to what a run killed after step 2 leaves: the checkpoint of step 2, no final model."""
    root = tmp_path_factory.mktemp("saved")
    train(make_recipe(root, **RUN), progress=False)
    run = root / "run"
    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    for path in run.iterdir():
        if path.is_file() and path.name not in ("recipe.yaml", "metrics.jsonl"):
            path.unlink()
    return run


def copy_run(saved_run: Path, tmp_path: Path) -> tuple[object, Path]:
    """A copy of the saved run, the recipe that resumes it, and its checkpoint."""
    shutil.copytree(saved_run, tmp_path / "run")
    return make_recipe(tmp_path, **RUN), list_checkpoints(tmp_path / "run")[-1][1]


def write_state(checkpoint: Path, state: dict, seal: bool = True) -> None:
    """Write ``state`` as the checkpoint's trainer_state.json, sealed again (an edit made with its seal updated, to
    reach the checks behind the seal) unless ``seal`` is False (a plain hand edit, the old seal kept)."""
    if seal:
        state = {k: v for k, v in state.items() if k != SEAL}
        state[SEAL] = state_seal(state)
    (checkpoint / STATE_FILE).write_text(json.dumps(state))


def write_accelerate_checkpoint(checkpoint: Path, recipe) -> None:
    """Rewrite ``checkpoint`` the way seqzoo wrote checkpoints before format 2: accelerate's save_state with the LR
    scheduler registered for checkpointing (custom_checkpoint_0.pkl), and trainer_state.json without a format."""
    from accelerate import Accelerator
    from torch.optim.lr_scheduler import LambdaLR

    from seqzoo.training.building import build_model, lr_factor, make_optimizer
    from seqzoo.training.data import build_data

    state = json.loads((checkpoint / STATE_FILE).read_text())
    for path in checkpoint.iterdir():
        path.unlink()
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(build_model(recipe, build_data(recipe.data, recipe.train.seed)))
    optimizer = accelerator.prepare(make_optimizer(model, recipe))
    scheduler = LambdaLR(optimizer, lambda step: lr_factor(step, recipe))
    accelerator.register_for_checkpointing(scheduler)
    accelerator.save_state(str(checkpoint))
    accelerator._custom_objects.clear()
    del state["format"], state["files"]
    (checkpoint / STATE_FILE).write_text(json.dumps(state))


def test_accelerate_pickle_checkpoint_is_refused_and_its_planted_pickle_never_runs(saved_run, tmp_path):
    # The row of issue 11: a scheduler pickle planted in someone else's checkpoint ran on --resume.
    recipe, checkpoint = copy_run(saved_run, tmp_path)
    write_accelerate_checkpoint(checkpoint, recipe)
    assert (checkpoint / "custom_checkpoint_0.pkl").is_file() and (checkpoint / "random_states_0.pkl").is_file()
    marker = tmp_path / "pwned"
    plant(checkpoint / "custom_checkpoint_0.pkl", marker)
    with pytest.raises(CheckpointError, match=r"written by an older seqzoo with accelerate's save_state.*pickles "
                                              r"\(custom_checkpoint_0.pkl, optimizer.bin, random_states_0.pkl\).*"
                                              r"Start the run again"):
        train(recipe, resume=True, progress=False)
    assert not marker.exists(), "a pickle in the checkpoint was loaded"


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_pickles_planted_in_a_current_checkpoint_never_run(saved_run, tmp_path, name):
    recipe, checkpoint = copy_run(saved_run, tmp_path)
    marker = tmp_path / "pwned"
    plant(checkpoint / name, marker)
    with pytest.raises(CheckpointError, match=f"pickles \\({name}\\)"):
        train(recipe, resume=True, progress=False)
    assert not marker.exists()


def test_no_file_of_a_checkpoint_is_a_pickle(saved_run):
    checkpoint = list_checkpoints(saved_run)[-1][1]
    names = sorted(path.name for path in checkpoint.iterdir())
    assert names == ["model.safetensors", "optimizer.safetensors", "rng_state_0.json", "scheduler.json", STATE_FILE]
    for path in checkpoint.iterdir():
        head = path.read_bytes()[:2]
        assert head != b"PK" and head[:1] != b"\x80", f"{path.name} looks like a zip or pickle"


def damage(checkpoint: Path, name: str, how: str) -> None:
    path = checkpoint / name
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "flipped":  # one changed byte in the middle: only the checksum can tell
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "unparsable":  # damaged in a way the checksum was updated for (someone edited it by hand)
        path.write_text("{ not json")
        state = json.loads((checkpoint / STATE_FILE).read_text())
        state["files"][name] = file_record(path)
        write_state(checkpoint, state)


@pytest.mark.parametrize("name,how,message", [
    ("rng_state_0.json", "missing", "is missing, so the run cannot be resumed exactly .*random generator states"),
    ("rng_state_0.json", "flipped", "is damaged: its size or SHA-256 differs"),
    ("rng_state_0.json", "unparsable", "cannot be read"),
    ("optimizer.safetensors", "truncated", "is damaged: its size or SHA-256 differs .*optimizer state"),
    ("optimizer.safetensors", "missing", "is missing"),
    ("scheduler.json", "flipped", "is damaged.*LR schedule position"),
    ("scheduler.json", "unparsable", "cannot be read"),
    ("model.safetensors", "flipped", "is damaged.*model weights"),
    ("model.safetensors", "unparsable", "cannot be read"),
    ("optimizer.safetensors", "unparsable", "cannot be read"),
])
def test_missing_or_damaged_state_file_is_refused_by_name(saved_run, tmp_path, name, how, message):
    recipe, checkpoint = copy_run(saved_run, tmp_path)
    damage(checkpoint, name, how)
    with pytest.raises(CheckpointError, match=f"{name}'? {message}" if how != "unparsable" else message) as info:
        train(recipe, resume=True, progress=False)
    assert str(checkpoint / name) in str(info.value)
    assert "does not fit" not in str(info.value), "a damaged file was reported as one of another model"
    assert not (tmp_path / "run" / "model.safetensors").exists(), "the run went on"


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.update(data_position={"samples_seen": 3}), "data position .* does not match step 2"),
    (lambda s: s.pop("files"), "'files' is None, expected a dict"),
    (lambda s: s["files"].pop("rng_state_0.json"), "records no checksum for 'rng_state_0.json'"),
    (lambda s: s.update(step="2"), "'step' is '2', expected a int"),
    (lambda s: s.update(format=4), "has checkpoint format 4; this seqzoo reads formats 2 and 3"),
    (lambda s: s["grad_health"].pop("counts"), "grad_health"),
    (lambda s: s.update(data=[1]), "'data' is \\[1\\], expected a dict"),
    # a check that let a boolean step, a text token count or a non-dict gradient health through (the run would crash
    # later with a bare traceback or count from the wrong figure), or read only newer formats
    (lambda s: s.update(step=True), "'step' is True, expected a int"),  # JSON true is a Python int subclass
    (lambda s: s.update(tokens_seen="12"), "'tokens_seen' is '12', expected a int"),
    (lambda s: s.update(grad_health=[]), r"'grad_health' is \[\], expected a dict"),
    (lambda s: s.update(format=1), "has checkpoint format 1; this seqzoo reads formats 2 and 3"),  # older
])
def test_damaged_trainer_state_is_refused(saved_run, tmp_path, edit, message):
    recipe, checkpoint = copy_run(saved_run, tmp_path)
    state = json.loads((checkpoint / STATE_FILE).read_text())
    edit(state)
    write_state(checkpoint, state)
    with pytest.raises(CheckpointError, match=message):
        train(recipe, resume=True, progress=False)


def test_a_run_id_changed_by_hand_is_named_as_such(saved_run, tmp_path):
    recipe, checkpoint = copy_run(saved_run, tmp_path)
    state = json.loads((checkpoint / STATE_FILE).read_text())
    state.pop("run_id")
    write_state(checkpoint, state)  # (resealed: what is left to catch it is the run check)
    with pytest.raises(ValueError, match="Fields that differ: none of the recipe fields it records, so its run id or "
                                         "recipe was changed by hand"):
        train(recipe, resume=True, progress=False)


@pytest.mark.parametrize("edit", [
    lambda s: s.update(tokens_seen=s["tokens_seen"] + 1000),  # every field a resume reads but cannot check
    lambda s: s["grad_health"]["counts"].update(exploding=5),
    lambda s: s.update(extra=1),
], ids=["tokens_seen", "grad_health", "extra_field"])
def test_a_hand_edited_trainer_state_is_refused(saved_run, tmp_path, edit):
    recipe, checkpoint = copy_run(saved_run, tmp_path)
    state = json.loads((checkpoint / STATE_FILE).read_text())
    edit(state)
    write_state(checkpoint, state, seal=False)
    with pytest.raises(CheckpointError, match=r"trainer_state.json' was changed after it was written"):
        train(recipe, resume=True, progress=False)
    assert not (tmp_path / "run" / "model.safetensors").exists(), "the run went on"


def test_a_reformatted_or_unsealed_trainer_state_resumes(saved_run, tmp_path):
    """The seal covers the values, not the layout; a checkpoint written before the seal (format 2, none) still
    resumes."""
    recipe, checkpoint = copy_run(saved_run, tmp_path)
    state = json.loads((checkpoint / STATE_FILE).read_text())
    assert state["format"] == 3 and SEAL in state
    (checkpoint / STATE_FILE).write_text(json.dumps(dict(reversed(state.items())), indent=4))
    train(recipe, resume=True, progress=False)
    shutil.rmtree(tmp_path / "run")
    recipe, checkpoint = copy_run(saved_run, tmp_path)
    unsealed = {k: v for k, v in state.items() if k != SEAL}
    (checkpoint / STATE_FILE).write_text(json.dumps({**unsealed, "format": 2}))
    train(recipe, resume=True, progress=False)


def test_a_seal_taken_out_by_hand_is_refused(saved_run, tmp_path):
    """A checkpoint of format 3 is always sealed: an edited figure whose seal was deleted with it is refused too."""
    recipe, checkpoint = copy_run(saved_run, tmp_path)
    state = json.loads((checkpoint / STATE_FILE).read_text())
    edited = {k: v for k, v in state.items() if k != SEAL}
    edited["tokens_seen"] += 1000
    (checkpoint / STATE_FILE).write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match=r"trainer_state.json' has lost its seal \('state_sha256', the SHA-256 "
                                              r"of its fields that every checkpoint of format 3 holds\)"):
        train(recipe, resume=True, progress=False)
    assert not (tmp_path / "run" / "model.safetensors").exists(), "the run went on"


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(saved_run, tmp_path):
    # Dropout draws from the restored RNG: a resume that lost it would differ from the uninterrupted run.
    recipe, _ = copy_run(saved_run, tmp_path)
    resumed = train(recipe, resume=True, progress=False)
    straight = train(make_recipe(tmp_path, "straight", **RUN), progress=False)
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(a, b), name


def rewrite(checkpoint: Path, name: str, write) -> None:
    """Replace checkpoint file ``name`` by ``write(path)`` with its record and seal updated: a file that is whole
    but no longer fits, which only the restore itself can refuse."""
    path = checkpoint / name
    write(path)
    state = json.loads((checkpoint / STATE_FILE).read_text())
    state["files"][name] = file_record(path)
    write_state(checkpoint, state)


@pytest.mark.parametrize("change,named", [("drop", r"ValueError: the file holds no model.layers.1.weight_ih\)"),
                                          ("add", r'RuntimeError: (.|\n)*Unexpected key.*"model.extra"')])
def test_a_model_file_without_one_of_the_weights_or_with_another_is_refused(saved_run, tmp_path, change, named):
    # torch's set_model_state_dict, given a full state dict, keeps a weight the file lacks at its fresh
    # initialisation even with strict=True: the run went on with that weight reset. A weight the model does not
    # have is refused by strict=True (catches a non-strict load).
    from safetensors import safe_open
    from safetensors.torch import save_file

    recipe, checkpoint = copy_run(saved_run, tmp_path)

    def drop_a_weight(path):
        with safe_open(str(path), "pt") as handle:  # (its metadata names the tied weights stored once)
            tensors, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()
        if change == "add":
            tensors["model.extra"] = torch.zeros(2)
        save_file({k: v for k, v in tensors.items() if k != "model.layers.1.weight_ih" or change == "add"}, str(path),
                  metadata)

    rewrite(checkpoint, "model.safetensors", drop_a_weight)
    with pytest.raises(CheckpointError, match=r"model.safetensors' does not fit this run's model \(" + named):
        train(recipe, resume=True, progress=False)


@pytest.mark.parametrize("change,named", [
    ("drop_step", r"the optimizer state of 'model.layers.1.weight_ih' holds slots \['exp_avg', 'exp_avg_sq'\]; this "
                  r"run's optimizer keeps \['exp_avg', 'exp_avg_sq', 'step'\]"),
    ("reshape", r"the optimizer state model.layers.1.weight_ih/exp_avg is a tensor of shape \(2, 2\); this run's "
                r"optimizer keeps a tensor of shape \(\d+, \d+\)"),
    ("add", r"the file holds optimizer state for 'model.extra', which this run's optimizer does not train"),
    ("drop_parameter", r"the file holds no optimizer state for 'model.layers.1.weight_ih'"),
])
def test_an_optimizer_file_without_a_slot_or_with_another_shape_or_parameter_is_refused(saved_run, tmp_path, change,
                                                                                          named):
    # set_optimizer_state_dict fills every slot before it loads the file: a slot the file lacked went on from that
    # filler (a step count of 1, a zero moment) without a word, a slot of another shape failed only at the next
    # step, and state for a parameter the model lacks was ignored.
    from safetensors import safe_open
    from safetensors.torch import save_file

    recipe, checkpoint = copy_run(saved_run, tmp_path)

    def edit(path):
        with safe_open(str(path), "pt") as handle:
            tensors, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()
        key = "model.layers.1.weight_ih/" + ("step" if change == "drop_step" else "exp_avg")
        if change == "drop_step":
            del tensors[key]
        elif change == "drop_parameter":
            tensors = {k: v for k, v in tensors.items() if not k.startswith("model.layers.1.weight_ih/")}
        elif change == "reshape":
            tensors[key] = torch.zeros(2, 2)
        else:
            tensors["model.extra/exp_avg"] = torch.zeros(2)
        save_file(tensors, str(path), metadata)

    rewrite(checkpoint, "optimizer.safetensors", edit)
    with pytest.raises(CheckpointError, match=r"optimizer.safetensors' does not fit this run's model \(ValueError: "
                                              + named):
        train(recipe, resume=True, progress=False)


def test_a_scheduler_file_with_keys_of_another_scheduler_is_refused(saved_run, tmp_path):
    # LambdaLR.load_state_dict copies any key it is given onto the scheduler: an extra one must be refused first.
    recipe, checkpoint = copy_run(saved_run, tmp_path)

    def add_a_key(path):
        path.write_text(json.dumps({**json.loads(path.read_text()), "gamma": 0.5}))

    rewrite(checkpoint, "scheduler.json", add_a_key)
    with pytest.raises(CheckpointError, match=r"does not hold this run's LR schedule position at step 2 \(.*'gamma'"):
        train(recipe, resume=True, progress=False)


def _edit_scheduler(checkpoint: Path, **values) -> None:
    """Rewrite the checkpoint's scheduler.json with ``values`` set (a value of None: the key removed), resealed."""

    def edit(path):
        state = json.loads(path.read_text())
        state.update(values)
        path.write_text(json.dumps({k: v for k, v in state.items() if v is not None}))

    rewrite(checkpoint, "scheduler.json", edit)


@pytest.mark.parametrize("key,value,named", [
    ("base_lrs", [1.0, 1.0], r"its base_lrs are \[1.0, 1.0\], expected \[0.01, 0.01\]: the recipe's optim.lr "
                             r"for each param group"),  # (100x the lr)
    ("base_lrs", ["0.01", "0.01"], r"its base_lrs are \['0.01', '0.01'\], expected \[0.01, 0.01\]"),
    ("base_lrs", [math.nan, math.nan], r"its base_lrs are \[nan, nan\]"),
    ("base_lrs", [0.01], r"its base_lrs are \[0.01\], expected \[0.01, 0.01\]"),
    ("_last_lr", [math.inf, 0.0], r"its _last_lr is \[inf, 0.0\], expected 2 finite number\(s\) of 0 or more"),
    ("last_epoch", "2", r"its last_epoch is '2', expected 2"),
    ("_step_count", 0, r"its _step_count is 0, expected an integer of 1 or more"),
    ("lr_lambdas", [{"x": 1}, None], r"its lr_lambdas is \[\{'x': 1\}, None\], expected \[None, None\]"),
])
def test_a_scheduler_file_whose_values_are_not_this_runs_schedule_is_refused(saved_run, tmp_path, key, value, named):
    # LambdaLR.load_state_dict copies every value as it is: base_lrs [1.0, 1.0] against the recipe's 0.01 trained at
    # 100x the learning rate without a word, a string stopped the run with an unexpected TypeError, a NaN stopped it
    # at the next step, blamed on "a learning rate of nan".
    recipe, checkpoint = copy_run(saved_run, tmp_path)
    _edit_scheduler(checkpoint, **{key: value})
    with pytest.raises(CheckpointError, match=r"checkpoint file '.*scheduler.json' does not hold this run's LR "
                                              r"schedule position at step 2 \(" + named):
        train(recipe, resume=True, progress=False)


def test_a_scheduler_file_of_an_older_torch_resumes_exactly(saved_run, tmp_path):
    # torch 2.4's LambdaLR state has `verbose` and no `_is_initial`: refused as "does not hold this run's LR schedule
    # position" (a run checkpointed under an older torch, resumed under a supported one). The keys that differ only
    # by torch version are tolerated, the run resumes as from its own file; another key is still refused.
    recipe, checkpoint = copy_run(saved_run, tmp_path)
    straight = train(recipe, resume=True, progress=False)
    shutil.rmtree(tmp_path / "run")
    recipe, checkpoint = copy_run(saved_run, tmp_path)
    _edit_scheduler(checkpoint, verbose=False, _is_initial=None)
    resumed = train(recipe, resume=True, progress=False)
    assert [row["lr"] for row in resumed.history if "lr" in row] == [row["lr"] for row in straight.history
                                                                     if "lr" in row]
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(a, b), name
    shutil.rmtree(tmp_path / "run")
    recipe, checkpoint = copy_run(saved_run, tmp_path)
    _edit_scheduler(checkpoint, verbose=False, T_max=10)  # (CosineAnnealingLR's)
    with pytest.raises(CheckpointError, match=r"its keys are \[.*'T_max'.*\], expected \[.*\], a LambdaLR's "
                                              r"\(besides _is_initial, verbose, which differ with the torch version\)"):
        train(recipe, resume=True, progress=False)


def test_every_process_has_an_rng_file_and_the_fp16_scaler_one_is_expected():
    # Catches a list of expected files that names only the first process's RNG state: a checkpoint of two
    # processes missing rank 1's file would resume with that process's generators unrestored.
    from seqzoo.training.checkpoint import expected_files

    assert expected_files(3, False) == ["model.safetensors", "optimizer.safetensors", "scheduler.json",
                                        "rng_state_0.json", "rng_state_1.json", "rng_state_2.json"]
    assert expected_files(1, True)[-1] == "scaler.json"


def test_the_data_check_compares_every_recorded_field_but_the_evaluation_counts(tmp_path):
    # Catches: eval_pairs or eval_rows compared (a resumed run may change eval_samples), a data hash skipped where
    # the checkpoint recorded one (an edited file of the same size and name would resume at a meaningless position),
    # one required where it recorded none, or only the names of the fields compared rather than their values.
    from seqzoo.training.checkpoint import check_same_run

    def check(theirs, now, processes=1):
        state = {"run_id": "r", "data": theirs, "num_processes": 1}
        check_same_run(state, "r", {}, tmp_path, processes, now)

    recorded = {"source": "text", "bytes": 100, "sha256": "aa", "eval_pairs": 8, "eval_rows": 4}
    check(recorded, {**recorded, "eval_pairs": 16, "eval_rows": 32})
    check({k: v for k, v in recorded.items() if k != "sha256"}, recorded)  # written before hashes were recorded
    for changed in ({"sha256": "bb"}, {"bytes": 101}):
        with pytest.raises(ValueError, match=f"training data changed.*{next(iter(changed))}"):
            check(recorded, {**recorded, **changed})
    with pytest.raises(ValueError, match="written by 1 process.*this run has 2"):
        check(recorded, recorded, processes=2)


@pytest.mark.parametrize("text,message", [("{ not json", "cannot read .*trainer_state.json': Expecting property"),
                                          ("[1, 2]", "trainer_state.json' is damaged: expected a JSON object")])
def test_an_unreadable_trainer_state_is_refused_by_name(saved_run, tmp_path, text, message):
    # Catches a JSON syntax error of trainer_state.json (or another JSON value than an object) escaping as a
    # bare traceback instead of a CheckpointError naming the file.
    recipe, checkpoint = copy_run(saved_run, tmp_path)
    (checkpoint / STATE_FILE).write_text(text)
    with pytest.raises(CheckpointError, match=message):
        train(recipe, resume=True, progress=False)


def test_resume_names_a_folder_that_is_neither_a_checkpoint_nor_a_run(saved_run, tmp_path):
    # The checkpoints/ folder itself (one level too deep) holds no trainer_state.json and no checkpoints/ of its own.
    recipe, _ = copy_run(saved_run, tmp_path)
    folder = tmp_path / "run" / "checkpoints"
    with pytest.raises(ValueError, match=rf"--resume: '{folder}' is neither a checkpoint folder \(with "
                                         r"trainer_state.json\) nor a run folder with complete checkpoints"):
        train(recipe, resume=str(folder), progress=False)


def test_resume_refuses_a_checkpoint_that_was_still_being_written(saved_run, tmp_path):
    # A run stopped between writing trainer_state.json and renaming the folder leaves checkpoint-N.tmp holding one;
    # such a folder is never read, even when named (its files may not have reached the disk).
    recipe, checkpoint = copy_run(saved_run, tmp_path)
    unfinished = checkpoint.with_name(checkpoint.name + ".tmp")
    shutil.copytree(checkpoint, unfinished)
    with pytest.raises(ValueError, match=rf"--resume: '{unfinished}' is a checkpoint that was still being written"):
        train(recipe, resume=str(unfinished), progress=False)


def _two_group_step():
    """A model and optimizer grouped as seqzoo's trainer groups them: matrices with weight decay, the rest without."""
    from torch.optim.lr_scheduler import LambdaLR

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=0.1)
    scheduler = LambdaLR(optimizer, lambda step: 1.0)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


class _ThreadedProcesses:
    """Accelerators of ``world`` processes run as threads of this one: ``wait_for_everyone`` and ``reduce`` return
    only when every thread has reached them, as the collectives do; a thread left waiting for one that never comes
    raises BrokenBarrierError after ``timeout`` seconds (a real process would wait for the process group's timeout,
    or for ever)."""

    def __init__(self, world: int, timeout: float = 2.0) -> None:
        self.barrier = threading.Barrier(world, timeout=timeout)
        self.parts: list = [None] * world
        self.processes = [_ThreadedProcess(self, rank, world) for rank in range(world)]

    def run(self, work) -> list:
        """``work(accelerator)`` on every process at once; what each returned or raised, by rank."""
        outcomes: list = [None] * len(self.processes)

        def one(process):
            try:
                outcomes[process.process_index] = work(process)
            except BaseException as err:  # noqa: BLE001 (the outcome under test)
                outcomes[process.process_index] = err

        threads = [threading.Thread(target=one, args=(process,)) for process in self.processes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        return outcomes


class _ThreadedProcess:
    scaler, device = None, "cpu"

    def __init__(self, group: _ThreadedProcesses, rank: int, world: int) -> None:
        self.group, self.process_index, self.num_processes, self.is_main_process = group, rank, world, rank == 0

    def wait_for_everyone(self) -> None:
        self.group.barrier.wait()

    def reduce(self, tensor, reduction):
        assert reduction == "sum"
        self.group.parts[self.process_index] = tensor.clone()
        self.group.barrier.wait()
        total = torch.stack(self.group.parts).sum(0)
        self.group.barrier.wait()  # every process has read the parts before any writes the next ones
        return total


def test_a_failure_on_one_process_reaches_every_process():
    from seqzoo.training.checkpoint import on_every_process

    def fail_on(rank):
        def work(process):
            def part():
                if process.process_index == rank:
                    raise PermissionError(13, "Permission denied", "x")
            on_every_process(process, part)
            return "done"
        return work

    assert _ThreadedProcesses(3).run(fail_on(None)) == ["done"] * 3
    main, second, third = _ThreadedProcesses(3).run(fail_on(0))
    assert isinstance(main, PermissionError)
    for other in (second, third):
        assert isinstance(other, OutputError) and str(other).startswith("process 0 failed")
    assert [str(e)[:16] for e in _ThreadedProcesses(2).run(fail_on(1))] == ["process 1 failed", "[Errno 13] Permi"]


@pytest.mark.parametrize("fails", ["preparing", "writing", "sealing"])
def test_a_checkpoint_the_main_process_alone_fails_to_write_stops_every_process(tmp_path, monkeypatch, fails):
    # Only the main process creates the folder, writes the model, optimizer and scheduler files and seals the
    # checkpoint: a full disk or a read-only folder there raised on it alone, and the other processes waited at the
    # next barrier (here: BrokenBarrierError after the fake's timeout; in a real run, the process group's timeout).
    from seqzoo.training import checkpoint as checkpoints
    from seqzoo.training.checkpoint import save_checkpoint

    run = tmp_path / "run"
    if fails == "preparing":
        run.mkdir()
        (run / "checkpoints").write_text("a file where the folder goes")
    else:
        def full_disk(*args):
            raise OSError(28, "No space left on device")

        target = "save_optimizer_state" if fails == "writing" else "fsync_tree"
        monkeypatch.setattr(checkpoints.files if fails == "writing" else checkpoints, target, full_disk)
    record = {"step": 1, "tokens_seen": 4, "data_position": {}, "grad_health": {}}

    def save(process):
        model, optimizer, scheduler = _two_group_step()
        return save_checkpoint(process, model, optimizer, scheduler, run, 1, record, keep=1)

    main, other = _ThreadedProcesses(2).run(save)
    assert isinstance(main, OutputError) and "cannot write checkpoint" in str(main)
    assert isinstance(other, OutputError), other
    assert str(other).startswith(f"cannot write checkpoint '{run / 'checkpoints' / 'checkpoint-1'}': process 0 failed")
    assert not list_checkpoints(run) and not (run / "checkpoints" / "checkpoint-1.tmp").exists()
