"""Checkpoints that survive a crash and never run code: atomic writes, run identity, exact restore.

Layout of a run folder::

    <output_dir>/checkpoints/checkpoint-<step>/   model, optimizer, scheduler (and fp16 scaler) state, every
                                                  process's RNG state (see :mod:`seqzoo.training.state`: safetensors
                                                  and JSON, no pickle) + trainer_state.json (step, data position, run
                                                  id, and the size and SHA-256 of every other file; sealed by a
                                                  SHA-256 of its own fields, so an edited figure is refused)
    <output_dir>/checkpoints/checkpoint-<step>.tmp/   a checkpoint being written; never read

Every process writes its part into ``checkpoint-N.tmp``; when all are done the main process writes
``trainer_state.json`` last, flushes everything to disk and renames the folder to ``checkpoint-N``. A rename is
atomic, so a run killed at any moment leaves either the complete new checkpoint or none, and the previous
checkpoint stays loadable.

Restoring checks every file against the recorded checksums first and refuses, naming the file, anything it cannot
restore exactly. Checkpoints of seqzoo before format 2 (accelerate's ``save_state``: optimizer, scheduler and RNG
states as pickles) are refused without reading them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from seqzoo.outputs import OutputError, describe, fsync_tree, write_errors
from seqzoo.training import state as files
from seqzoo.training.state import CheckpointError

logger = logging.getLogger("seqzoo.training")

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
SEAL = "state_sha256"  # trainer_state.json's SHA-256 of its own other fields: an edited figure is refused, not resumed
# trainer_state.json's format: 2, the files' format (checkpoints written before the seal have none), or 3, the same
# always sealed, so that a seal taken out by hand is refused too.
STATE_FORMAT = 3
_STATE_FORMATS = (files.FORMAT, STATE_FORMAT)
_NAME = re.compile(r"^checkpoint-(\d+)$")
DELETING = ".deleting"  # a checkpoint being deleted: .checkpoint-N.deleting


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first. ``.tmp`` folders and folders without a state file are skipped."""
    folder = Path(run_dir) / CHECKPOINTS
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _NAME.match(path.name)
            if match and (path / STATE_FILE).is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(accelerator: Any, model: Any, optimizer: Any, scheduler: Any, run_dir: str | Path, step: int,
                    state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically on all processes; keep the newest ``keep`` checkpoints. A write that
    fails on any process (the main one writes most files) raises on every process; an older checkpoint that cannot be
    removed once the new one is complete is named in a warning, and the run goes on."""
    folder = Path(run_dir) / CHECKPOINTS
    final = folder / f"checkpoint-{step}"
    tmp = folder / f"checkpoint-{step}.tmp"

    def prepare() -> None:
        if accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # left over from a run killed while writing
                shutil.rmtree(tmp)
            tmp.mkdir()

    def seal() -> None:
        if not accelerator.is_main_process:
            return
        records = {path.name: files.file_record(path) for path in sorted(tmp.iterdir())}
        body = json.loads(json.dumps({**state, "format": STATE_FORMAT, "files": records}))  # as read back
        (tmp / STATE_FILE).write_text(json.dumps({**body, SEAL: state_seal(body)}, indent=2), encoding="utf-8")
        fsync_tree(tmp)
        if final.exists() or final.is_symlink():  # a resumed run passing a step it saved before it was killed
            _remove_checkpoint(final)
        os.replace(tmp, final)

    try:
        on_every_process(accelerator, prepare)
        on_every_process(accelerator, lambda: write_training_state(accelerator, model, optimizer, scheduler, tmp))
        on_every_process(accelerator, seal)
    except write_errors() as err:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk gets its space back
        raise OutputError(f"cannot write checkpoint {str(final)!r}: {describe(err)}; {what_is_left(run_dir)}") from err
    # (after the checkpoint is complete: its write error no longer applies)
    on_every_process(accelerator, lambda: rotate_checkpoints(run_dir, step, keep, final)
                     if accelerator.is_main_process else None)
    return final


def rotate_checkpoints(run_dir: str | Path, step: int, keep: int, written: Path | None) -> None:
    """Keep the newest ``keep`` checkpoints of ``run_dir`` up to ``step`` and none past it, and finish the deletions a
    rotation stopped half-way left: after checkpoint ``written`` of ``step`` is written, and where a resumed run
    starts from ``step`` (``written`` None). An old checkpoint that cannot be removed is named in a warning, and the
    run goes on. On the main process only."""
    folder = Path(run_dir) / CHECKPOINTS
    for left in folder.glob(f".checkpoint-*{DELETING}"):  # (a rotation stopped while it deleted)
        shutil.rmtree(left, ignore_errors=True)
    # Checkpoints past this step were written before a resume from an earlier one: this run rewrites those steps, so
    # they are no part of it, as their rows of metrics.jsonl are not (kept, the rotation below would count them as the
    # newest and delete the checkpoint just written, and a resumed run killed before its first checkpoint was resumed
    # by --resume from one of them, with no row of their steps left).
    saved = list_checkpoints(run_dir)
    later = [path for later_step, path in saved if later_step > step]
    if later:
        logger.warning("resumed before them, this run writes its own steps in place of %s (removed)",
                       ", ".join(path.name for path in later))
    for path in later + [old for _, old in [c for c in saved if c[0] <= step][:-keep]]:
        try:
            _remove_checkpoint(path)
        except OSError as err:  # (the newest checkpoint is complete: the run goes on)
            logger.warning("%sthe %s %s could not be removed (%s); remove it yourself%s",
                           f"checkpoint {written} is written, but " if written is not None else "",
                           "later" if path in later else "older", path, describe(err),
                           ": --resume would continue from it" if path in later else "")


def _remove_checkpoint(path: Path) -> None:
    """Delete the checkpoint folder ``path``. One that is a symbolic link (a checkpoint moved to another disk and
    linked back; shutil.rmtree refuses a link) loses the link only, and a log line says so: the folder it points to
    may be a copy kept on purpose, and is no part of the run folder that the rotation keeps to save_total_limit."""
    if path.is_symlink():
        target = os.readlink(path)
        path.unlink()
        logger.warning("%s was a symbolic link to %s: removed the link, kept the checkpoint it points to (delete it "
                       "yourself if it is not needed)", path, target)
    else:
        # Renamed first, so that it goes in one step: a process reading it (another run resumed from this run's
        # folder, or from this checkpoint) finds it whole or gone, never half deleted, which read as damaged. A
        # process killed while deleting it leaves the hidden .checkpoint-N.deleting, which the next rotation deletes.
        doomed = path.with_name(f".{path.name}{DELETING}")
        os.replace(path, doomed)
        shutil.rmtree(doomed)


def what_is_left(run_dir: str | Path) -> str:
    """For the error of a run stopped by a failed write (a full disk, a read-only folder): the checkpoint that it
    continues from, or that there is none."""
    previous = list_checkpoints(run_dir)
    if previous:
        return (f"the newest complete checkpoint, {str(previous[-1][1])!r}, is intact: continue from it with "
                "--resume once the problem is fixed")
    return "there is no earlier checkpoint to resume from, so the run must start again"


def on_every_process(accelerator: Any, work: Callable[[], None]) -> None:
    """Run ``work`` here, then wait for every process; an exception that ``work`` raised on any process is raised on
    every one (there as it was, on the others as an :class:`OutputError` naming the processes that failed).

    A barrier cannot tell that a process failed: were the main process alone to fail while writing, the others would
    wait at the next barrier or collective until the process group's timeout, or for ever. The sum of one failure flag
    per process is taken instead; no process has it before every process has added its own, so it is the barrier too.
    """
    error: Exception | None = None
    try:
        work()
    except Exception as err:  # (raised below, after the other processes have heard of it)
        error = err
    failed = failed_processes(accelerator, error is not None)
    if error is not None:
        raise error
    if failed:
        raise OutputError(f"process {', '.join(map(str, failed))} failed (its own error says why), so this process "
                          "stopped with it")


def failed_processes(accelerator: Any, failed: bool) -> list[int]:
    """The indices of the processes that pass ``failed=True`` (a collective: every process calls it)."""
    if accelerator.num_processes == 1:
        return [accelerator.process_index] if failed else []
    import torch

    flags = torch.zeros(accelerator.num_processes, device=accelerator.device)
    flags[accelerator.process_index] = float(failed)
    flags = accelerator.reduce(flags, "sum")
    return [rank for rank, flag in enumerate(flags.tolist()) if flag]


def _full_state_options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Full (unsharded) state keyed by parameter name: the same files for one process, DDP and FSDP.
    return StateDictOptions(full_state_dict=True, **kwargs)


def _inner(optimizer: Any) -> Any:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one


def full_model_state(model: Any) -> dict[str, Any]:
    """The whole model's state dict on the main process, gathered from the shards under FSDP (a collective: every
    process calls it; the others get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_state_options(cpu_offload=True))


def write_training_state(accelerator: Any, model: Any, optimizer: Any, scheduler: Any, folder: Path) -> None:
    """Every process writes its RNG state; the main process writes model, optimizer, scheduler (and scaler)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model_state = full_model_state(model)
    optimizer_state = get_optimizer_state_dict(model, _inner(optimizer), options=_full_state_options(cpu_offload=True))
    if accelerator.is_main_process:
        files.save_model_state(model_state, folder / files.MODEL_FILE, files.tied_parameter_names(model))
        files.save_optimizer_state(optimizer_state, folder / files.OPTIMIZER_FILE)
        files.save_json_state(scheduler.state_dict(), folder / files.SCHEDULER_FILE)
        if accelerator.scaler is not None:
            files.save_json_state(accelerator.scaler.state_dict(), folder / files.SCALER_FILE)
    files.save_rng_state(folder / files.rng_file(accelerator.process_index))


def expected_files(num_processes: int, with_scaler: bool) -> list[str]:
    names = [files.MODEL_FILE, files.OPTIMIZER_FILE, files.SCHEDULER_FILE]
    names += [files.rng_file(rank) for rank in range(num_processes)]
    return names + ([files.SCALER_FILE] if with_scaler else [])


def restore_training_state(checkpoint: Path, state: dict[str, Any], accelerator: Any, model: Any, optimizer: Any,
                           scheduler: Any) -> None:
    """Restore what :func:`write_training_state` wrote, after checking every file against ``trainer_state.json``.

    Raises :class:`CheckpointError` naming the file that is missing, damaged or does not fit this run.
    """
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    scaler = accelerator.scaler
    files.verify_files(checkpoint, state.get("files"), expected_files(accelerator.num_processes, scaler is not None))
    model_file, optimizer_file = checkpoint / files.MODEL_FILE, checkpoint / files.OPTIMIZER_FILE
    try:
        model_state = files.load_model_state(model_file)
        # set_model_state_dict refuses an unexpected key under strict=True but, given a full state dict, keeps a
        # weight the file lacks at its freshly initialised value without a word. (The keys of the local state
        # dict are the same names, and reading them gathers nothing under FSDP.)
        missing = sorted(set(get_model_state_dict(model)) - set(model_state))
        if missing:
            raise ValueError(f"the file holds no {', '.join(missing)}")
        set_model_state_dict(model, model_state, options=_full_state_options(strict=True))
    except CheckpointError:
        raise
    except Exception as err:
        raise _does_not_fit(model_file, err) from err
    try:
        optimizer_state = files.load_optimizer_state(optimizer_file)
        # set_optimizer_state_dict first gives every slot a value (a step with zero gradients) and then loads the
        # file over it: a slot the file lacks (a moment, a step count) would go on from that value without a word,
        # and one of another shape would fail only at the next step. The local state holds the same names, and
        # under FSDP its tensors are DTensors, which report the whole shape.
        ours = get_optimizer_state_dict(model, _inner(optimizer))
        _check_optimizer_slots(optimizer_state["state"], ours["state"])
        _check_optimizer_groups(optimizer_state["param_groups"], ours["param_groups"])
        set_optimizer_state_dict(model, _inner(optimizer), optimizer_state, options=_full_state_options())
    except CheckpointError:
        raise
    except Exception as err:
        raise _does_not_fit(optimizer_file, err) from err
    _restore_scheduler(checkpoint / files.SCHEDULER_FILE, scheduler, state["step"])
    if scaler is not None:
        scaler_file = checkpoint / files.SCALER_FILE
        try:
            saved = files.load_json_state(scaler_file)
            _check_scaler_state(scaler_file, saved, scaler.state_dict())
            scaler.load_state_dict(saved)
        except CheckpointError:
            raise
        except Exception as err:
            raise _does_not_fit(scaler_file, err) from err
    files.restore_rng_state(checkpoint / files.rng_file(accelerator.process_index))


def _check_optimizer_slots(theirs: dict[str, dict[str, Any]], ours: dict[str, dict[str, Any]]) -> None:
    """Refuse a saved optimizer state whose parameters, slots or slot shapes differ from this run's optimizer's."""
    for name in sorted(set(theirs) | set(ours)):
        if name not in ours:
            raise ValueError(f"the file holds optimizer state for {name!r}, which this run's optimizer does not train")
        if name not in theirs:
            raise ValueError(f"the file holds no optimizer state for {name!r}")
        slots, expected = theirs[name], ours[name]
        if set(slots) != set(expected):
            raise ValueError(f"the optimizer state of {name!r} holds slots {sorted(slots)}; this run's optimizer "
                             f"keeps {sorted(expected)}")
        for slot, value in expected.items():
            if _form(slots[slot]) != _form(value):
                raise ValueError(f"the optimizer state {name}/{slot} is {_form(slots[slot])}; this run's optimizer "
                                 f"keeps {_form(value)}")


def _check_optimizer_groups(theirs: Any, ours: list[dict[str, Any]]) -> None:
    """Refuse saved param groups that do not hold this run's parameters, group by group.

    set_optimizer_state_dict matches groups by position and copies each saved group's settings onto this run's: a
    file with one group where this run has two (weight decay and none) gave every bias the decayed group's weight
    decay, without a word; it copied a string or NaN lr, or betas of another length, as silently (the next step then
    failed or turned every weight NaN, blamed on the run). Each group's settings must be this run's (they come from
    the recipe, whose run id --resume has already matched), of the same type, except lr: the saved lr is the
    schedule's value at the checkpoint's step, any finite number of 0 or more (:func:`_check_group_settings`).
    """
    if not isinstance(theirs, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                               for g in theirs):
        raise ValueError(f"the file's param_groups are not a list of groups each with a list of 'params' (got "
                         f"{str(theirs)[:200]})")
    if len(theirs) != len(ours):
        raise ValueError(f"the file holds {len(theirs)} param group(s) of "
                         f"{', '.join(str(len(g['params'])) for g in theirs) or 'no'} parameters; this run's "
                         f"optimizer has {len(ours)}, of {', '.join(str(len(g['params'])) for g in ours)}")
    for index, (group, expected) in enumerate(zip(theirs, ours)):
        if sorted(map(str, group["params"])) != sorted(expected["params"]):
            stray = sorted(set(map(str, group["params"])) - set(expected["params"]))
            absent = sorted(set(expected["params"]) - set(map(str, group["params"])))
            raise ValueError(f"param group {index} of the file holds {len(group['params'])} parameters; this run's "
                             f"optimizer's holds {len(expected['params'])} (in the file only: "
                             f"{', '.join(stray[:4]) or 'none'}; missing from it: {', '.join(absent[:4]) or 'none'})")
        _check_group_settings(index, group, expected)


def _check_group_settings(index: int, group: dict[str, Any], expected: dict[str, Any]) -> None:
    """A saved group's settings against this run's group ``expected``. A setting the file lacks keeps this run's
    value (set_optimizer_state_dict leaves it as it is): a file written by an older torch, which did not store it
    (torch 2.7 added Adam's ``decoupled_weight_decay``); but lr, the schedule's value at the step, which every torch
    stores. One only the file has is refused."""
    if "lr" not in group:
        raise ValueError(f"param group {index} of the file has no lr (the schedule's value at the checkpoint's step)")
    stray = sorted(set(group) - set(expected))
    if stray:
        raise ValueError(f"param group {index} of the file holds settings {stray}, which this run's optimizer does "
                         f"not have (it has {sorted(set(expected) - {'params'})})")
    for key in sorted(set(group) - {"params"}):
        value = group[key]
        if key == "lr":
            if not (_number(value) and 0 <= value < math.inf):
                raise ValueError(f"param group {index} of the file has lr {value!r}; expected a finite number of 0 "
                                 "or more")
        elif not _same(value, expected[key]):
            raise ValueError(f"param group {index} of the file has {key} {value!r}; this run's optimizer has "
                             f"{expected[key]!r} (from the recipe)")


def _same(value: Any, expected: Any) -> bool:
    """Equal and of the same type, element by element (a NaN equals nothing; True is not 1; 0.9 is not '0.9'). A list
    and a tuple are the same (JSON keeps neither apart; an optimizer loaded once holds betas as a list)."""
    if isinstance(expected, (tuple, list)):
        return (isinstance(value, (tuple, list)) and len(value) == len(expected)
                and all(_same(v, e) for v, e in zip(value, expected)))
    return type(value) is type(expected) and value == expected


_SCALER_RULES = {  # GradScaler.state_dict(): what torch's GradScaler accepts for each value
    "scale": ("a finite number above 0", lambda v: _number(v) and 0 < v < math.inf),
    "growth_factor": ("a finite number above 1", lambda v: _number(v) and 1 < v < math.inf),
    "backoff_factor": ("a number above 0 and below 1", lambda v: _number(v) and 0 < v < 1),
    "growth_interval": ("an integer of 1 or more", lambda v: _integer(v) and v >= 1),
    "_growth_tracker": ("an integer of 0 or more, below growth_interval", lambda v: _integer(v) and v >= 0),
}


def _check_scaler_state(path: Path, saved: dict[str, Any], ours: dict[str, Any]) -> None:
    """Refuse a saved fp16 gradient scaler state that torch's GradScaler would load without a word and then scale by
    (a NaN or negative scale makes every step's gradients NaN or flips them) or fail on deep inside a later step."""
    if not ours:  # a disabled scaler loads nothing
        return
    if set(saved) != set(ours):
        raise CheckpointError(f"checkpoint file {str(path)!r} does not hold a gradient scaler's state: its keys are "
                              f"{sorted(saved)}, expected {sorted(ours)}; the run cannot be resumed exactly from it")
    for key, (allowed, fits) in _SCALER_RULES.items():
        if key in saved and not fits(saved[key]):
            raise CheckpointError(f"checkpoint file {str(path)!r} is damaged: the gradient scaler's {key} is "
                                  f"{saved[key]!r}, expected {allowed}; the run cannot be resumed exactly from it")
    if _integer(saved.get("_growth_tracker")) and saved["_growth_tracker"] >= saved["growth_interval"]:
        raise CheckpointError(f"checkpoint file {str(path)!r} is damaged: the gradient scaler's _growth_tracker is "
                              f"{saved['_growth_tracker']}, expected below its growth_interval "
                              f"({saved['growth_interval']}); the run cannot be resumed exactly from it")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _form(value: Any) -> str:
    import torch

    return f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


# Keys of LambdaLR.state_dict() that one torch version stores and another does not, none of which moves the schedule:
# older torch stored `verbose` (print each new lr; gone since), newer torch stores `_is_initial` (True only inside the
# scheduler's constructor, so False in every saved state, as in this run's).
TORCH_VERSION_SCHEDULER_KEYS = frozenset({"verbose", "_is_initial"})


def _restore_scheduler(path: Path, scheduler: Any, step: int) -> None:
    """Load the LR scheduler's state, each value checked first: LambdaLR.load_state_dict copies whatever keys and
    values it is given into the scheduler, and its next lr is ``base_lrs * factor(last_epoch)``. A base_lrs of 100x
    the recipe's lr trained 100x too fast without a word, a string failed as an unexpected TypeError, a NaN stopped
    the run later, blamed on its learning rate. A key that only another torch version writes
    (TORCH_VERSION_SCHEDULER_KEYS) keeps this run's value; any other key of another set is refused, as the state of
    another schedule."""
    saved = files.load_json_state(path)
    ours = scheduler.state_dict()
    saved = {k: v for k, v in saved.items() if k not in TORCH_VERSION_SCHEDULER_KEYS}  # (this run's values kept)

    def refuse(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint file {str(path)!r} does not hold this run's LR schedule position at step "
                               f"{step} ({what}); the run cannot be resumed exactly from it")

    expected = set(ours) - TORCH_VERSION_SCHEDULER_KEYS
    if set(saved) != expected:
        raise refuse(f"its keys are {sorted(saved)}, expected {sorted(expected)}, a LambdaLR's (besides "
                     f"{', '.join(sorted(TORCH_VERSION_SCHEDULER_KEYS))}, which differ with the torch version)")
    if not (_integer(saved["last_epoch"]) and saved["last_epoch"] == step):
        raise refuse(f"its last_epoch is {saved['last_epoch']!r}, expected {step}, the checkpoint's step")
    if not _same(saved["base_lrs"], ours["base_lrs"]):
        raise refuse(f"its base_lrs are {saved['base_lrs']!r}, expected {ours['base_lrs']!r}: the recipe's "
                     "optim.lr for each param group, which the schedule scales at every step")
    groups = len(ours["base_lrs"])
    last = saved["_last_lr"]
    if not (isinstance(last, list) and len(last) == groups and all(_number(v) and 0 <= v < math.inf for v in last)):
        raise refuse(f"its _last_lr is {last!r}, expected {groups} finite number(s) of 0 or more (the lr of each "
                     "param group at the step)")
    if not (_integer(saved["_step_count"]) and saved["_step_count"] >= 1):
        raise refuse(f"its _step_count is {saved['_step_count']!r}, expected an integer of 1 or more")
    for key in sorted(set(saved) - {"last_epoch", "base_lrs", "_last_lr", "_step_count"}):
        if not _same(saved[key], ours[key]):  # lr_lambdas (None each: a lambda is stored as None), the flags
            raise refuse(f"its {key} is {saved[key]!r}, expected {ours[key]!r}")
    scheduler.load_state_dict(saved)


def _does_not_fit(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(f"checkpoint file {str(path)!r} does not fit this run's model ({type(err).__name__}: "
                           f"{err}); the run cannot be resumed exactly from it")


def resolve_resume(resume: str | Path | bool, run_dir: str | Path) -> Path:
    """The checkpoint folder ``--resume`` means: the newest one of ``run_dir`` (True), of a run folder, or a
    checkpoint folder itself (never one still being written, ``checkpoint-N.tmp``)."""
    if resume is True:
        checkpoints = list_checkpoints(run_dir)
        if not checkpoints:
            raise ValueError(f"--resume: no complete checkpoint in {str(Path(run_dir) / CHECKPOINTS)!r} to resume from")
        return checkpoints[-1][1]
    path = Path(resume)
    if path.name.endswith(".tmp") and path.parent.name == CHECKPOINTS:
        # (trainer_state.json is written before the rename: a run stopped between the two leaves a .tmp holding one,
        # whose files may not have reached the disk)
        raise ValueError(f"--resume: {str(path)!r} is a checkpoint that was still being written (a run stopped while "
                         f"saving it); resume from a complete one, or give the run folder to take its newest")
    if (path / STATE_FILE).is_file():
        return path
    checkpoints = list_checkpoints(path)
    if checkpoints:
        return checkpoints[-1][1]
    if not path.exists():
        raise ValueError(f"--resume: {str(path)!r} does not exist")
    raise ValueError(
        f"--resume: {str(path)!r} is neither a checkpoint folder (with {STATE_FILE}) nor a run folder with complete "
        f"checkpoints under {CHECKPOINTS}/"
    )


def state_seal(state: dict[str, Any]) -> str:
    """SHA-256 of ``state`` (trainer_state.json without its seal) in one canonical JSON form."""
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8")).hexdigest()


def read_state(checkpoint: Path) -> dict[str, Any]:
    """``trainer_state.json`` of ``checkpoint``, checked for what a resume reads from it. A checkpoint written in
    accelerate's pickle format is refused without reading any of its pickles."""
    path = checkpoint / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"--resume: cannot read {str(path)!r}: {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"--resume: {str(path)!r} is damaged: expected a JSON object, got {type(state).__name__}")
    legacy = sorted(name for name in files.LEGACY_FILES if (checkpoint / name).exists())
    if "format" not in state or legacy:
        raise CheckpointError(
            f"--resume: {str(checkpoint)!r} was written by an older seqzoo with accelerate's save_state, which "
            f"keeps the optimizer, LR scheduler and RNG states as pickles ({', '.join(legacy) or 'no format field'}). "
            "Loading a pickle can run any code stored in it, so seqzoo no longer reads them, and without them the "
            "run cannot continue exactly. Start the run again (a new output_dir, or delete "
            f"{str(checkpoint.parent)!r}); its final weights will be saved in safetensors as before"
        )
    seal = state.pop(SEAL, None)  # (checkpoints of format 2 written before the seal have none)
    if seal is None and state["format"] == STATE_FORMAT:
        raise CheckpointError(
            f"--resume: {str(path)!r} has lost its seal ({SEAL!r}, the SHA-256 of its fields that every checkpoint "
            f"of format {STATE_FORMAT} holds), so its step, token count and other figures cannot be trusted (edited "
            "by hand or damaged). Resume from an unchanged checkpoint, or start the run again"
        )
    if seal is not None and seal != state_seal(state):
        raise CheckpointError(
            f"--resume: {str(path)!r} was changed after it was written: its fields no longer match the SHA-256 "
            f"recorded in it ({SEAL!r}), so its step, token count and other figures cannot be trusted (edited by "
            "hand or damaged). Resume from an unchanged checkpoint, or start the run again"
        )
    if state["format"] not in _STATE_FORMATS:
        raise CheckpointError(
            f"--resume: {str(path)!r} has checkpoint format {state['format']!r}; this seqzoo reads formats "
            f"{' and '.join(map(str, _STATE_FORMATS))}. Resume it with the seqzoo version that wrote it"
        )
    for key, kind in (("step", int), ("tokens_seen", int), ("data_position", dict), ("grad_health", dict),
                      ("files", dict)):
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise CheckpointError(
                f"--resume: {str(path)!r} is damaged: {key!r} is {state.get(key)!r}, expected a {kind.__name__}"
            )
    return state


def _resume_hint(theirs: dict[str, Any], ours: dict[str, Any]) -> str:
    """How to resume that checkpoint after all: the overrides that give back its values (where each is a value an
    override can hold), and why a larger train.max_steps does not extend a run."""
    keys = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    if not keys or any(k not in theirs or isinstance(theirs[k], dict) for k in keys):
        return ""
    overrides = " ".join(f"{k}={v if isinstance(v, str) and v and ' ' not in v else json.dumps(v)}"
                         for k, v in ((k, theirs[k]) for k in keys))
    steps = ("; train.max_steps also sets the learning-rate schedule, so a run is not extended by raising it"
             if "train.max_steps" in keys else "")
    return f". To resume it, give its values: {overrides}{steps}"


def differences(theirs: dict[str, Any], ours: dict[str, Any], ours_as: str) -> list[str]:
    """Each key whose value differs between a checkpoint's record (``theirs``) and the run's (``ours``, named
    ``ours_as`` in the message), as ``key: value (checkpoint) vs value (ours_as)``, in key order."""
    return [f"{k}: {theirs.get(k)!r} (checkpoint) vs {ours.get(k)!r} ({ours_as})"
            for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]


def _moved_saved_model(theirs: dict[str, Any], ours: dict[str, Any], recorded: Any, now: Any) -> bool:
    """Whether two runs' recipes differ only in ``model.path`` (both a folder) and the checkpoint recorded the config
    of the model its run started from, which is the config of the model there now."""
    differ = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    return differ == ["model.path"] and recorded is not None and without_origin(recorded) == without_origin(now)


def without_origin(config: Any) -> Any:
    """A saved model's config as a checkpoint records it, less the folder transformers read it from
    (``_name_or_path``): the same model moved elsewhere has the same config."""
    return {k: v for k, v in config.items() if k != "_name_or_path"} if isinstance(config, dict) else config


def check_same_run(state: dict[str, Any], run_id: str, recipe: dict[str, Any], checkpoint: Path,
                   num_processes: int, data: dict[str, Any], saved_config: dict[str, Any] | None = None) -> None:
    """Refuse a checkpoint written by a different recipe, on different data (a text file that changed since), or
    by a different number of processes. A run from a saved model (``model.path``) whose folder was moved since is
    the same run where the model's config is the one the checkpoint recorded (``saved_config``): the weights the
    run goes on from are the checkpoint's, not the folder's."""
    from seqzoo.training.recipe import ADDED_LATER, trajectory_fields

    if state.get("run_id") != run_id:
        # (a field left out of the id at its default is shown at that default, not as missing)
        theirs = {**ADDED_LATER, **trajectory_fields(state.get("recipe", {}))}
        ours = {**ADDED_LATER, **trajectory_fields(recipe)}
        if _moved_saved_model(theirs, ours, state.get("saved_config"), saved_config):
            logger.warning("--resume: the run started from the model saved in %r, now model.path=%r, with the same "
                           "config; resuming from %s", theirs["model.path"], ours["model.path"], checkpoint)
        else:
            differ = differences(theirs, ours, "this recipe")
            none_differ = ("none of the recipe fields it records, so its run id or recipe was changed by hand: its "
                           f"{STATE_FILE} is damaged" if isinstance(state.get("recipe"), dict) else
                           "unknown (no recipe stored)")
            raise ValueError(
                f"--resume: {str(checkpoint)!r} belongs to another run (run id {state.get('run_id')!r}, this recipe "
                f"is {run_id!r}). Fields that differ: {'; '.join(differ) or none_differ}" + _resume_hint(theirs, ours)
            )
    theirs = state.get("data", {})
    if not isinstance(theirs, dict):
        raise CheckpointError(f"--resume: {str(checkpoint / STATE_FILE)!r} is damaged: 'data' is {theirs!r}, expected "
                              "a dict")
    # The scored evaluation counts follow eval_samples, which a resumed run may change; a hash is compared only
    # where the checkpoint recorded one (those written before sources recorded their hash have none).
    skip = {"eval_pairs", "eval_rows"} | ({"sha256"} if isinstance(theirs, dict) and "sha256" not in theirs else set())
    if isinstance(theirs, dict):
        theirs = {k: v for k, v in theirs.items() if k not in skip}
    data = {k: v for k, v in data.items() if k not in skip}
    if theirs != data:
        differ = differences(theirs, data, "now")
        raise ValueError(
            f"--resume: the training data changed since {str(checkpoint)!r} was written, so its data position means "
            f"nothing now: {'; '.join(differ)}"
        )
    if state.get("num_processes") != num_processes:
        raise ValueError(
            f"--resume: {str(checkpoint)!r} was written by {state.get('num_processes')} process(es); this run has "
            f"{num_processes}. Resume with the same number of processes (every process restores its own RNG state)"
        )
