"""What a resume restores of the optimizer around the weights: the fp16 gradient scaler (saved, restored, a foreign
or malformed one refused) and the optimizer's param groups (each group's parameters and settings must be this run's;
the saved learning rate, the schedule's value at the step, is restored as saved)."""

from __future__ import annotations

import json

import pytest
import torch

from seqzoo.training.state import CheckpointError
from tests.training.test_checkpoint_safety import _two_group_step, rewrite


class _OneProcess:
    """What save_checkpoint and restore_training_state ask of accelerate's Accelerator, for one process with an fp16
    gradient scaler (accelerate keeps one only on a GPU; torch's CPU scaler has the same state)."""

    is_main_process, num_processes, process_index = True, 1, 0

    def __init__(self, scaler) -> None:
        self.scaler = scaler

    def wait_for_everyone(self) -> None:
        pass


def _one_scaled_step(scaler):
    from torch.optim.lr_scheduler import LambdaLR

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = LambdaLR(optimizer, lambda step: 1.0)
    scaler.scale(model(torch.ones(4, 3)).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return model, optimizer, scheduler


def test_an_fp16_runs_gradient_scaler_is_saved_and_restored_and_a_foreign_one_refused(tmp_path):
    from seqzoo.training.checkpoint import read_state, restore_training_state, save_checkpoint

    saved = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    model, optimizer, scheduler = _one_scaled_step(saved)
    record = {"step": 1, "tokens_seen": 4, "data_position": {}, "grad_health": {}}
    checkpoint = save_checkpoint(_OneProcess(saved), model, optimizer, scheduler, tmp_path, 1, record, keep=1)
    restored = torch.amp.GradScaler("cpu")
    model, optimizer, scheduler = _one_scaled_step(torch.amp.GradScaler("cpu"))
    restore_training_state(checkpoint, read_state(checkpoint), _OneProcess(restored), model, optimizer, scheduler)
    assert restored.state_dict() == saved.state_dict() and saved.state_dict()["_growth_tracker"] == 1

    rewrite(checkpoint, "scaler.json", lambda path: path.write_text("{}"))
    with pytest.raises(CheckpointError, match=r"scaler.json' does not hold a gradient scaler's state: its keys are "
                                              r"\[\], expected \['_growth_tracker', 'backoff_factor'"):
        restore_training_state(checkpoint, read_state(checkpoint), _OneProcess(torch.amp.GradScaler("cpu")), model,
                               optimizer, scheduler)


@pytest.mark.parametrize("key,value,expected", [
    ("scale", float("nan"), "a finite number above 0"),
    ("scale", float("inf"), "a finite number above 0"),
    ("scale", -512.0, "a finite number above 0"),
    ("scale", "512", "a finite number above 0"),
    ("growth_factor", 1.0, "a finite number above 1"),
    ("backoff_factor", 1.5, "a number above 0 and below 1"),
    ("growth_interval", 0, "an integer of 1 or more"),
    ("growth_interval", 7.0, "an integer of 1 or more"),
    ("_growth_tracker", True, "an integer of 0 or more, below growth_interval"),
    ("_growth_tracker", 7, r"below its growth_interval \(7\)"),
])
def test_a_malformed_gradient_scaler_state_is_refused_by_name(tmp_path, key, value, expected):
    # GradScaler.load_state_dict takes any value: a NaN or negative scale was loaded without a word and made every
    # later step's gradients NaN (or flipped their sign); a float growth_interval failed deep inside a later step.
    from seqzoo.training.checkpoint import read_state, restore_training_state, save_checkpoint

    saved = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    model, optimizer, scheduler = _one_scaled_step(saved)
    record = {"step": 1, "tokens_seen": 4, "data_position": {}, "grad_health": {}}
    checkpoint = save_checkpoint(_OneProcess(saved), model, optimizer, scheduler, tmp_path, 1, record, keep=1)
    rewrite(checkpoint, "scaler.json",
            lambda path: path.write_text(json.dumps({**json.loads(path.read_text()), key: value})))
    restored = torch.amp.GradScaler("cpu")
    with pytest.raises(CheckpointError, match=rf"scaler.json' is damaged: the gradient scaler's {key} is .*"
                                              rf"expected .*{expected}"):
        restore_training_state(checkpoint, read_state(checkpoint), _OneProcess(restored), model, optimizer, scheduler)
    assert restored.state_dict()["scale"] == 2.0 ** 16  # nothing was loaded


def _with_edited_param_groups(tmp_path, edit_groups):
    """A checkpoint of :func:`_two_group_step` whose optimizer file's param groups ``edit_groups(groups)`` rewrote
    (it returns the groups to write), and a fresh run (model, optimizer, scheduler) to restore it into."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from seqzoo.training.checkpoint import save_checkpoint

    model, optimizer, scheduler = _two_group_step()
    record = {"step": 1, "tokens_seen": 4, "data_position": {}, "grad_health": {}}
    checkpoint = save_checkpoint(_OneProcess(None), model, optimizer, scheduler, tmp_path, 1, record, keep=1)

    def edit(path):
        with safe_open(str(path), "pt") as handle:
            tensors, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()
        groups = edit_groups(json.loads(metadata["param_groups"]))
        save_file(tensors, str(path), {**metadata, "param_groups": json.dumps(groups)})

    rewrite(checkpoint, "optimizer.safetensors", edit)
    return checkpoint, _two_group_step()


def _refused_with_edited_param_groups(tmp_path, edit_groups, named):
    """Such a checkpoint is refused with ``named``, and the fresh run's optimizer settings stay as they were."""
    from seqzoo.training.checkpoint import read_state, restore_training_state

    checkpoint, (model, optimizer, scheduler) = _with_edited_param_groups(tmp_path, edit_groups)
    with pytest.raises(CheckpointError, match=r"optimizer.safetensors' does not fit this run's model \(ValueError: "
                                              + named):
        restore_training_state(checkpoint, read_state(checkpoint), _OneProcess(None), model, optimizer, scheduler)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1, 0.0]
    assert [group["lr"] for group in optimizer.param_groups] == [0.1, 0.1]


@pytest.mark.parametrize("change,named", [
    ("merge", r"the file holds 1 param group\(s\) of 4 parameters; this run's optimizer has 2, of 2, 2"),
    ("split", r"the file holds 3 param group\(s\) of 2, 1, 1 parameters; this run's optimizer has 2, of 2, 2"),
    ("move", r"param group 0 of the file holds 3 parameters; this run's optimizer's holds 2 \(in the file only: "
             r"1.bias; missing from it: none\)"),
    ("rename", r"param group 1 of the file holds 2 parameters; this run's optimizer's holds 2 \(in the file only: "
               r"2.bias; missing from it: 1.bias\)"),
    ("garble", r"the file's param_groups are not a list of groups each with a list of 'params'"),
])
def test_an_optimizer_file_whose_param_groups_differ_is_refused(tmp_path, change, named):
    # set_optimizer_state_dict matched groups by position and loaded all of these without a word: one group where
    # this run has two gave every bias the weight decay of the matrices.
    def edit_groups(groups):
        if change == "merge":
            return [{**groups[0], "params": groups[0]["params"] + groups[1]["params"]}]
        if change == "split":
            groups.append({**groups[1], "params": [groups[1]["params"].pop()]})
        elif change == "move":
            groups[0]["params"].append(groups[1]["params"].pop())
        elif change == "rename":
            groups[1]["params"][-1] = "2.bias"
        else:
            return {"params": groups[0]["params"]}
        return groups

    _refused_with_edited_param_groups(tmp_path, edit_groups, named)


@pytest.mark.parametrize("key,value,named", [
    ("lr", "0.1", r"param group 1 of the file has lr '0.1'; expected a finite number of 0 or more"),
    ("lr", float("nan"), r"param group 1 of the file has lr nan; expected a finite number of 0 or more"),
    ("lr", -0.1, r"param group 1 of the file has lr -0.1; expected a finite number of 0 or more"),
    ("betas", [0.9, "0.999"], r"param group 1 of the file has betas \(0.9, '0.999'\); this run's optimizer has "
                              r"\(0.9, 0.999\) \(from the recipe\)"),
    ("betas", [0.9], r"param group 1 of the file has betas \(0.9,\); this run's optimizer has \(0.9, 0.999\)"),
    ("eps", float("inf"), r"param group 1 of the file has eps inf; this run's optimizer has 1e-08"),
    ("weight_decay", 0.1, r"param group 1 of the file has weight_decay 0.1; this run's optimizer has 0.0"),
    ("amsgrad", 0, r"param group 1 of the file has amsgrad 0; this run's optimizer has False"),
    ("momentum", 0.9, r"param group 1 of the file holds settings \['momentum'\], which this run's optimizer does "
                      r"not have \(it has \[.*'eps'"),
    ("lr", None, r"param group 1 of the file has no lr \(the schedule's value at the checkpoint's step\)"),
])
def test_an_optimizer_file_with_a_damaged_or_foreign_group_setting_is_refused(tmp_path, key, value, named):
    # set_optimizer_state_dict copied every saved setting onto the run's groups without a word: a string lr failed
    # at the next step, a NaN one turned every weight NaN, another weight decay trained on silently.
    def edit_groups(groups):
        if value is None:
            del groups[1][key]
        else:
            groups[1][key] = value
        return groups

    _refused_with_edited_param_groups(tmp_path, edit_groups, named)


def test_a_setting_the_optimizer_file_lacks_takes_this_runs_value(tmp_path):
    # A file written by an older torch lacks the settings it did not store (torch 2.7 added Adam's
    # decoupled_weight_decay): the run's own value stands in, as every setting the file has must equal it anyway.
    from seqzoo.training.checkpoint import read_state, restore_training_state

    def edit_groups(groups):
        for group in groups:
            del group["decoupled_weight_decay"], group["eps"]
        return groups

    checkpoint, (model, optimizer, scheduler) = _with_edited_param_groups(tmp_path, edit_groups)
    expected = [group["eps"] for group in optimizer.param_groups]
    restore_training_state(checkpoint, read_state(checkpoint), _OneProcess(None), model, optimizer, scheduler)
    assert [group["decoupled_weight_decay"] for group in optimizer.param_groups] == [True, True]
    assert [group["eps"] for group in optimizer.param_groups] == expected


def test_a_checkpoint_resumes_with_its_saved_learning_rate(tmp_path):
    # The saved lr is the schedule's value at the step: it is restored as saved (the other settings must be the
    # run's own, which the recipe's run id, matched before, fixes).
    from seqzoo.training.checkpoint import read_state, restore_training_state, save_checkpoint

    model, optimizer, scheduler = _two_group_step()
    for group in optimizer.param_groups:
        group["lr"] = 0.05
    record = {"step": 1, "tokens_seen": 4, "data_position": {}, "grad_health": {}}
    checkpoint = save_checkpoint(_OneProcess(None), model, optimizer, scheduler, tmp_path, 1, record, keep=1)
    model, optimizer, scheduler = _two_group_step()
    restore_training_state(checkpoint, read_state(checkpoint), _OneProcess(None), model, optimizer, scheduler)
    assert [group["lr"] for group in optimizer.param_groups] == [0.05, 0.05]
