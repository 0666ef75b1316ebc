"""Checkpoints that survive a crash: atomic writes, run identity, and finding the checkpoint to resume from.

Layout of a run folder::

    <output_dir>/checkpoints/checkpoint-<step>/   accelerator.save_state (model, optimizer, scheduler, RNG states of
                                                  every process) + trainer_state.json (step, data position, run id)
    <output_dir>/checkpoints/checkpoint-<step>.tmp/   a checkpoint being written; never read

Every process writes its part into ``checkpoint-N.tmp``; when all are done the main process writes
``trainer_state.json`` last, flushes everything to disk and renames the folder to ``checkpoint-N``. A rename is
atomic, so a run killed at any moment leaves either the complete new checkpoint or none, and the previous
checkpoint stays loadable.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class _DropTiedWeightsWarning(logging.Filter):
    # Tied embeddings share one tensor; accelerate saves it once and warns on every save. Loading re-ties them
    # (the resume tests check the weights bit for bit), so the warning would only be noise in every run's log.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_DropTiedWeightsWarning())


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


def _fsync_tree(folder: Path) -> None:
    # The rename must not become visible before the files it publishes are on disk (power loss, not just SIGKILL).
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(accelerator: Any, run_dir: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically on all processes; keep the newest ``keep`` checkpoints."""
    folder = Path(run_dir) / CHECKPOINTS
    final = folder / f"checkpoint-{step}"
    tmp = folder / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left over from a run killed while writing
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        _fsync_tree(tmp)
        if final.exists():  # a resumed run passing a step it had already saved before it was killed
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(resume: str | Path | bool, run_dir: str | Path) -> Path:
    """The checkpoint folder ``--resume`` means: the newest one of ``run_dir`` (True), of a run folder, or a
    checkpoint folder itself."""
    if resume is True:
        checkpoints = list_checkpoints(run_dir)
        if not checkpoints:
            raise ValueError(f"--resume: no complete checkpoint in {str(Path(run_dir) / CHECKPOINTS)!r} to resume from")
        return checkpoints[-1][1]
    path = Path(resume)
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


def read_state(checkpoint: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--resume: cannot read {str(checkpoint / STATE_FILE)!r}: {err}") from err


def check_same_run(state: dict[str, Any], run_id: str, recipe: dict[str, Any], checkpoint: Path,
                   num_processes: int, data: dict[str, Any]) -> None:
    """Refuse a checkpoint written by a different recipe, on different data (a text file that changed since), or
    by a different number of processes."""
    from seqzoo.training.recipe import trajectory_fields

    if state.get("run_id") != run_id:
        theirs = trajectory_fields(state.get("recipe", {}))
        ours = trajectory_fields(recipe)
        differ = [f"{k}: {theirs.get(k)!r} (checkpoint) vs {ours.get(k)!r} (this recipe)"
                  for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
        raise ValueError(
            f"--resume: {str(checkpoint)!r} belongs to another run (run id {state.get('run_id')!r}, this recipe is "
            f"{run_id!r}). Fields that differ: {'; '.join(differ) or 'unknown (no recipe stored)'}"
        )
    if state.get("data") != data:
        theirs = state.get("data", {})
        differ = [f"{k}: {theirs.get(k)!r} (checkpoint) vs {data.get(k)!r} (now)"
                  for k in sorted(set(theirs) | set(data)) if theirs.get(k) != data.get(k)]
        raise ValueError(
            f"--resume: the training data changed since {str(checkpoint)!r} was written, so its data position means "
            f"nothing now: {'; '.join(differ)}"
        )
    if state.get("num_processes") != num_processes:
        raise ValueError(
            f"--resume: {str(checkpoint)!r} was written by {state.get('num_processes')} process(es); this run has "
            f"{num_processes}. Resume with the same number of processes (every process restores its own RNG state)"
        )
