"""The training loop on Accelerate: one process, DDP (``accelerate launch`` / ``torchrun``) or FSDP.

What a step does, whatever the number of processes:

1. the data source builds the *global* batch of this step (a pure function of seed and step);
2. each process takes its rows and splits them into ``gradient_accumulation_steps`` micro-batches;
3. each micro-batch runs forward/backward (in TBPTT chunks for recurrent models), its summed token loss scaled by
   ``num_processes / scored tokens in the global batch`` -- DDP averages gradients over processes, so the result
   is exactly the gradient of the mean token loss over the global batch, as one process would compute it;
4. gradients are clipped (their norm is measured and flagged by :mod:`grad_health`), the optimizer and the
   warmup + cosine/linear schedule step.

The dataloader is not Accelerate's: sharding it by rank changes the sample order with the number of processes,
and then a 2-process run could not reproduce a 1-process one.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.optim.lr_scheduler import LambdaLR

from seqzoo.outputs import (
    OutputError,
    dangling_link,
    describe,
    is_within,
    process_alive,
    release_lock,
    sibling_stem,
    staged_folder,
    take_lock,
    write_atomically,
)
from seqzoo.tokenizer import PAD_TOKEN_ID
from seqzoo.training.building import build_model, check_batch_split, lr_factor, make_optimizer
from seqzoo.training.checkpoint import (
    CHECKPOINTS,
    STATE_FILE,
    CheckpointError,
    check_same_run,
    differences,
    full_model_state,
    list_checkpoints,
    on_every_process,
    read_state,
    resolve_resume,
    restore_training_state,
    rotate_checkpoints,
    save_checkpoint,
    what_is_left,
    without_origin,
)
from seqzoo.training.classification import LabelledTexts, build_label_data, classifier_logits, is_classifier
from seqzoo.training.data import IGNORE, MemoryTask, build_data, document_position_ids
from seqzoo.training.fsdp import gradient_sync_off, is_sharded, seqzoo_shards, shard_on_cpu
from seqzoo.training.grad_health import EXPLODING, OK, GradientHealth
from seqzoo.training.launch import callers_accelerator_state, check_launch, make_accelerator
from seqzoo.training.recipe import DataSection, Recipe
from seqzoo.training.seq2seq import Seq2SeqPairs, build_seq2seq_data, is_seq2seq, seq2seq_logits
from seqzoo.training.state import (
    NonFiniteError,
    callers_generators,
    nonfinite_names,
    require_finite,
    tied_parameter_names,
)
from seqzoo.training.tbptt import (
    backward_sequence,
    chunked_loss_sum,
    supports_tbptt,
    token_loss_sum,
)
from seqzoo.utils import quiet_transformers, strict_json, weights_fingerprint

METRICS_FILE = "metrics.jsonl"
TRAINING_INFO_FILE = "seqzoo_training.json"


logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns: the run's folder, its optimizer steps and training tokens, the final evaluation
    (``eval``), the gradient-health summary, training throughput, every logged row (``history``) and the trained
    model."""

    output_dir: Path
    steps: int
    tokens_seen: int
    eval: dict[str, Any]
    grad_health: dict[str, Any]
    train_tokens_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)
    model: Any = None  # the trained (unwrapped) model, for callers in the same process; sharded under FSDP
    is_main_process: bool = True


# ----------------------------------------------------------------------------------------------------------------
# Evaluation.


@torch.no_grad()
def evaluate(model: Any, eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]], accelerator: Any,
             batch_size: int, chunk: int, packed: bool = False) -> dict[str, Any]:
    """Loss, perplexity and accuracy (of argmax predictions) per evaluation set and over all of them.

    ``packed``: rows of several documents, each scored alone, as in training (``document_position_ids``).

    Every process runs the same number of equally sized batches -- rows appended to fill the last one score
    nothing -- because a wrapped model's forward may talk to the other processes.
    """
    was_training = model.training
    model.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    results: dict[str, Any] = {}
    total = torch.zeros(3, dtype=torch.float64)
    for name, (inputs, targets) in eval_sets.items():
        per_step = world * batch_size
        padding = (-inputs.shape[0]) % per_step
        if padding:
            inputs = torch.cat([inputs, inputs[:1].expand(padding, -1)])
            targets = torch.cat([targets, torch.full((padding, *targets.shape[1:]), IGNORE)])  # (B,) or (B, T)
        sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss, correct, scored
        for start in range(0, inputs.shape[0], per_step):
            rows = slice(start + rank * batch_size, start + (rank + 1) * batch_size)
            x, y = inputs[rows].to(accelerator.device), targets[rows].to(accelerator.device)
            with accelerator.autocast():
                if is_seq2seq(model):
                    loss, correct = token_loss_sum(seq2seq_logits(model, x, y), y)
                elif is_classifier(model):
                    loss, correct = token_loss_sum(classifier_logits(model, x), y)
                elif chunk:
                    loss, correct = chunked_loss_sum(model, x, y, chunk)
                else:
                    position_ids = document_position_ids(x) if packed else None
                    logits = model(input_ids=x, position_ids=position_ids, use_cache=False).logits
                    loss, correct = token_loss_sum(logits, y)
            sums += torch.stack([loss.double(), correct.double(), (y != IGNORE).sum().double()])
        sums = accelerator.reduce(sums, "sum").cpu()
        total += sums
        results[name] = _eval_figures(sums, is_classifier(model))
    model.train(was_training)
    return {**_eval_figures(total, is_classifier(model)), "sets": results}


def _eval_figures(sums: torch.Tensor, classifier: bool = False) -> dict[str, float]:
    """(summed loss, correct, scored) -> mean loss, perplexity (capped so a diverged run still prints), accuracy.
    A classifier's figures are its loss and accuracy over the scored labels (a perplexity over labels means
    nothing)."""
    scored = max(float(sums[2]), 1.0)
    loss = float(sums[0]) / scored
    figures = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": float(sums[1]) / scored,
               "scored_tokens": int(sums[2])}
    if classifier:
        figures.pop("perplexity")
        figures["scored_labels"] = figures.pop("scored_tokens")
    return figures


# ----------------------------------------------------------------------------------------------------------------
# The loop.


def _check_data_given(recipe: Recipe, dataset: Any) -> None:
    """Refuse, before anything is deleted or built, data that the run would not read: a dataset given to a recipe
    that reads its own, or a text column named where no dataset is read (the recipe validates everything else, but
    cannot know about ``train(dataset=...)``)."""
    if recipe.task != "causal-lm" and dataset is not None:
        raise ValueError(f"train(dataset=...) passes text to a language model; a task: {recipe.task} recipe "
                         "reads its data from data.source (jsonl or task)")
    if dataset is not None and recipe.data.source != "pydoc":
        what = {"task": f"the generated task {recipe.data.task!r}"}.get(recipe.data.source,
                                                                          f"data.path={recipe.data.path!r}")
        raise ValueError(f"train(dataset=...) replaces the recipe's data, but data.source={recipe.data.source!r} "
                         f"names data of its own ({what}) that the run would not read: leave data.source at pydoc "
                         "(the default) with a dataset given, or give no dataset")
    column, default = recipe.data.text_column, DataSection().text_column
    if dataset is None and recipe.data.source != "dataset" and column != default:
        raise ValueError(f"data.text_column={column!r} names a dataset's column, but data.source="
                         f"{recipe.data.source!r} reads no dataset: set data.source=dataset (with data.path) or pass "
                         f"train(..., dataset=...), or leave data.text_column at its default ({default!r})")


def _check_arguments(recipe: Any, resume: Any, progress: Any, save_model: Any, force: Any, stop: Any) -> None:
    """Refuse, before anything is looked at, an argument of a kind train() does not take: the flags were read by
    truthiness, so ``force="no"`` deleted the run in output_dir, ``resume=1`` stopped in pathlib and ``resume=""``
    started a fresh run."""
    if not isinstance(recipe, Recipe):
        how = f"train(load_recipe({recipe!r}))" if isinstance(recipe, str) else "Recipe(...) builds one"
        raise ValueError(f"train(recipe={recipe!r}) is invalid: expected a Recipe (seqzoo.training.load_recipe "
                         f"reads one from a recipe file, a recipe preset or a model preset: {how})")
    for name, value in (("progress", progress), ("save_model", save_model), ("force", force)):
        if type(value) is not bool:
            raise ValueError(f"train({name}={value!r}) is invalid: expected True or False (a flag is not read by "
                             f"truthiness: {value!r} would count as {bool(value)})")
    if not (resume is None or type(resume) is bool or isinstance(resume, (str, os.PathLike))):
        raise ValueError(f"train(resume={resume!r}) is invalid: expected True (the newest checkpoint in "
                         "output_dir), the path of a run or checkpoint folder (a str or os.PathLike), or None or "
                         "False (a fresh run)")
    if isinstance(resume, (str, os.PathLike)) and not os.fspath(resume):
        # (`seqzoo train ... --resume "$CHECKPOINT"` with the variable unset started a fresh run)
        raise ValueError("train(resume='') is invalid: expected the path of a run or checkpoint folder, not an "
                         "empty one (or True for the newest checkpoint in output_dir, None for a fresh run)")
    if stop is not None and not callable(stop):
        raise ValueError(f"train(stop={stop!r}) is invalid: expected a function of each logged row (a dict) that "
                         "returns True to end training, or None")
    if resume not in (None, False) and force:  # (force is read for a fresh run only: it was ignored, as the CLI says)
        raise ValueError("train(resume=..., force=True) contradict each other: resume continues the run in "
                         "output_dir, force deletes what it holds to start over; give one of them")


# (the whole call: the run's Accelerator is made before its recipe's folders are checked, which may refuse them)
@callers_accelerator_state()
def train(recipe: Recipe, *, resume: str | Path | bool | None = None, dataset: Any = None,
          progress: bool = True, save_model: bool = True,
          stop: Callable[[dict[str, Any]], bool] | None = None, force: bool = False) -> TrainResult:
    """Train what ``recipe`` describes; ``resume`` continues from a checkpoint (True: the newest in output_dir).

    A fresh run needs an empty (or new) output_dir: one holding anything, a finished run without checkpoints too,
    is refused, unless ``force``, which deletes what it holds (the old run's tokenizer or code files would
    otherwise be left beside the new model) once the new run has its data and model, and has done its first step (a
    run that fails before then puts the old one back): a training run's folder only (RUN_FOLDER_MARKS), never one
    holding this run's data. Resuming from a checkpoint elsewhere likewise needs an empty
    output_dir, or that checkpoint's own run folder. The run holds output_dir while it runs (:func:`run_lock`): a
    second run on it, in this process or another, is refused naming the first.

    ``dataset`` (a ``datasets.Dataset`` or any object indexable by column name) replaces the recipe's data
    source. Returns the final evaluation, gradient health and throughput; the model, its tokenizer and
    ``seqzoo_training.json`` are saved in ``recipe.output_dir`` unless ``save_model`` is False (the lab keeps only
    the models worth loading again). ``stop``, called with each step's logged row (step, loss, accuracy, ...),
    ends training early when it returns True: the final evaluation and save happen as after the last step (the lab
    stops a memory-task run once it is solved); resumed with a ``stop`` from a checkpoint of the step where it ended
    the run (the run was stopped before its final save), the run ends there again; ``stop`` is asked of the steps a
    resumed run trains only (one that keeps earlier rows starts afresh). Launched as several processes, call
    ``seqzoo.training.leave_process_group()`` after the last ``train()``, as ``seqzoo train`` does. The run seeds
    Python's, NumPy's and torch's generators from ``train.seed``; the caller's generator states (CUDA's where CUDA
    was initialised before the call), its ``torch.use_deterministic_algorithms`` setting and accelerate's
    AcceleratorState come back when it ends.
    """
    from seqzoo.kernels.registry import check_environment

    _check_arguments(recipe, resume, progress, save_model, force, stop)
    if isinstance(resume, (str, os.PathLike)):  # (~ as in the recipe's output_dir: --resume=~/runs/x, which a shell
        resume = os.path.expanduser(resume)  # leaves, was "'~/runs/x' does not exist" beside --output-dir=~/runs/x)
    t = recipe.train
    check_launch(t.mixed_precision, t.gradient_accumulation_steps)
    # (a misspelt SEQZOO_KERNELS entry was otherwise named at the first kernel call, after the run folder was made, or
    # never, for a model that calls no kernel)
    check_environment()
    _check_data_given(recipe, dataset)
    if recipe.warmup > t.max_steps:
        # (a preset's warmup with a short max_steps override: lstm-pydoc max_steps=20)
        logger.warning("optim.warmup_steps=%d is more than train.max_steps=%d: the learning rate never reaches "
                       "optim.lr=%g (it ends at %.0f%% of it)", recipe.warmup, t.max_steps, recipe.optim.lr,
                       100 * t.max_steps / recipe.warmup)
    accelerator = make_accelerator(t.mixed_precision)
    world = accelerator.num_processes
    micro_batch = check_batch_split(t, world)
    run_dir = Path(recipe.output_dir)
    # (held from before the folder is looked at until the run has ended: two runs started on one output_dir, or two
    # --resume of one run, both found it as they expected, and wrote one folder of two runs' files)
    with _claimed(run_dir, accelerator):
        return _train_claimed(recipe, accelerator, run_dir, micro_batch, resume, dataset, progress, save_model, stop,
                              force)


def _train_claimed(recipe: Recipe, accelerator: Any, run_dir: Path, micro_batch: int, resume: str | Path | bool | None,
                   dataset: Any, progress: bool, save_model: bool, stop: Callable[[dict[str, Any]], bool] | None,
                   force: bool) -> TrainResult:
    """:func:`train` once this process holds ``run_dir``: its checks of the folder, the data and model, the run."""
    from accelerate.utils import set_seed

    t = recipe.train
    # (before the folder is looked at: the run put back is what it holds)
    on_every_process(accelerator, lambda: _put_back_replaced(run_dir) if accelerator.is_main_process else None)
    if not resume and recipe.model.path is not None and is_within(recipe.model.path, run_dir):
        # (--force would delete the model this run starts from before loading it)
        raise ValueError(f"output_dir {str(run_dir)!r} holds the model this run starts from (model.path="
                         f"{recipe.model.path!r}): a new run writes its model to a folder of its own; choose another "
                         "output_dir (--output-dir)")
    occupied = run_dir.is_dir() and any(run_dir.iterdir())
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"output_dir {str(run_dir)!r} is a file, not a folder; choose another output_dir")
    dangling = dangling_link(run_dir)
    if dangling is not None:
        raise ValueError(f"output_dir {str(run_dir)!r}: {dangling}")
    if not resume and occupied and not force:
        if not list_checkpoints(run_dir) and _stopped_before_a_checkpoint(run_dir):
            raise ValueError(
                f"{str(run_dir)!r} holds a run that stopped before its first checkpoint (only its "
                f"{', '.join(sorted(p.name for p in run_dir.iterdir()))}), which --resume cannot continue; pass "
                "--force to start it over (what it holds is deleted once the new run has done its first step), or "
                "choose another output_dir"
            )
        held = "checkpoints of a run" if list_checkpoints(run_dir) else "files (a finished run, or others)"
        raise ValueError(
            f"{str(run_dir)!r} already holds {held}; pass --resume to continue its run, choose another "
            f"output_dir, or pass --force to start over in it (what it holds is deleted once the new run has done "
            f"its first step)"
        )
    if resume not in (None, False, True) and occupied:
        source = resolve_resume(resume, run_dir)
        # (a checkpoint folder may be a link to another disk: where it is listed counts, as well as where it is)
        if not {run_dir.resolve()} & {*source.resolve().parents, *(source.parent.resolve() / source.name).parents}:
            raise ValueError(
                f"--resume {str(resume)!r}: output_dir {str(run_dir)!r} holds files of another run; resume into an "
                f"empty output_dir, or into the checkpoint's own run folder"
            )
    if not resume and occupied and force:
        home = Path.home()
        if is_within(Path.cwd(), run_dir) or (is_within(run_dir, home) and is_within(home, run_dir)):
            raise ValueError(f"--force would delete {str(run_dir)!r}, which is the current folder, one of its parents "
                             "or the home folder; choose an output_dir of its own (runs/NAME)")
        if run_dir.is_symlink():  # (shutil.rmtree refuses one with an error naming no path)
            raise ValueError(f"--force would delete {str(run_dir)!r}, a symbolic link to {str(run_dir.resolve())!r}; "
                             "pass the folder itself as output_dir, or an output_dir of its own")
        _check_deletable_run(run_dir, recipe)
    delete = not resume and occupied and force and accelerator.is_main_process
    if resume is True and not list_checkpoints(run_dir):
        if not run_dir.exists():  # (starting again here would leave the run's checkpoints where they are)
            raise ValueError(
                f"--resume: no complete checkpoint in {str(run_dir / 'checkpoints')!r} to resume from: "
                f"{str(run_dir)!r} does not exist: no run wrote there. A run writes to its output_dir, by default "
                "runs/<name> (a model preset's run is named after its model and data: runs/gru-tiny-pydoc, "
                "runs/gru-tiny-copy; one started before seqzoo named it so is in runs/<preset>-pydoc, or "
                "runs/<preset>-reverse for an encoder-decoder, after the preset given as the recipe whatever its "
                "data or model.path); pass the folder the run wrote to as --output-dir")
        folder = run_dir / "checkpoints"
        damaged = sorted(p.name for p in folder.glob("checkpoint-*") if p.is_dir() and not p.name.endswith(".tmp"))
        why = (f"{', '.join(damaged)} lack(s) {STATE_FILE}, which a complete checkpoint writes last: damaged, or "
               "not written by seqzoo train" if damaged else
               "this recipe writes none (train.save_every=0)" if t.save_every == 0 else
               f"the run stopped before its first one (written every train.save_every={t.save_every} steps)")
        again = "with --force in place of --resume (it starts over in that folder)" if occupied else \
            "without --resume"
        raise ValueError(f"--resume: no complete checkpoint in {str(run_dir / 'checkpoints')!r} to resume from: "
                         f"{why}. Start the run again {again} (add save_every=N to checkpoint every N steps)")
    checkpoint = resolve_resume(resume, run_dir) if resume else None

    # (the caller's determinism setting and random streams come back when the run ends: a script or notebook calling
    # train() goes on as it was, whatever the run seeded and drew)
    previous_determinism = (torch.are_deterministic_algorithms_enabled(),
                            torch.is_deterministic_algorithms_warn_only_enabled())
    aside: Path | None = None  # (where --force moved the old run, until the new run's first step is done)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    with callers_generators():
        try:
            set_seed(t.seed)  # identical initial weights on every process
            if recipe.task == "seq2seq":
                data = build_seq2seq_data(recipe.data, t.seed)
            elif recipe.task in ("sequence-classification", "token-classification"):
                data = build_label_data(recipe.task, recipe.data, t.seed)
            else:
                data = build_data(recipe.data, t.seed, dataset)
            model = build_model(recipe, data)
            # --force replaces the old run only now, once the new one has its data and model (a recipe, data or model
            # refused above leaves it as it was), and in two moves: the old folder is moved aside, and deleted once the
            # new run's first step is done; a run that fails before that (a step that runs out of memory, Ctrl-C) puts
            # it back. Every process has looked at the folder before any writes to it; a move that fails stops every
            # process, not the main one alone while the others wait at the next barrier.
            moved: list[Path] = []
            on_every_process(accelerator, lambda: moved.append(_move_aside(run_dir)) if delete else None)
            aside = moved[0] if moved else None
            torch.manual_seed(t.seed + accelerator.process_index)  # dropout masks differ between processes
            model, optimizer = _prepare(accelerator, model, recipe)
            scheduler = LambdaLR(optimizer, lambda step: lr_factor(step, recipe))

            def first_step_done() -> None:
                nonlocal aside
                if aside is not None:
                    doomed, aside = aside, None
                    _delete_aside(doomed, run_dir)

            return _run(recipe, accelerator, model, optimizer, scheduler, data, micro_batch, run_dir, checkpoint,
                        progress, save_model, stop, first_step_done)
        except BaseException:
            if aside is not None:  # (the new run's first step never finished: the old run goes back)
                shutil.rmtree(run_dir, ignore_errors=True)
                aside.rename(run_dir)
            raise
        finally:
            torch.use_deterministic_algorithms(previous_determinism[0], warn_only=previous_determinism[1])


# The hidden siblings of a run folder ``NAME`` that --force leaves: ``.NAME.replaced-PID@HOST-XXXX`` holds the old run
# until the new run's first step is done, ``.NAME.deleting-PID@HOST-XXXX`` the old run being deleted after that. The
# name records the process that made it, so that another run touches only one whose process has ended: a --force run
# still building its model looks, from outside, like one killed before its first step.
REPLACED, DELETING = "replaced", "deleting"
ENDED, RUNNING, UNKNOWN = "ended", "running", "unknown"


def _sibling_prefix(run_dir: Path, what: str) -> str:
    return f".{sibling_stem(run_dir.name)}.{what}-"


def _owner_tag() -> str:
    """``PID@HOST`` of this process, recorded in the name of each hidden sibling it makes."""
    return f"{os.getpid()}@{socket.gethostname()}"


def _new_sibling(run_dir: Path, what: str) -> Path:
    """A free name for a hidden sibling of ``run_dir`` owned by this process (not created: a rename makes it, which
    gives it its name and its contents at once)."""
    path = Path(tempfile.mkdtemp(prefix=_sibling_prefix(run_dir, what) + _owner_tag() + "-",
                                 dir=run_dir.resolve().parent))
    path.rmdir()
    return path


def _move_aside(run_dir: Path) -> Path:
    """``run_dir`` renamed to a new hidden sibling (the same file system: one rename), which is returned."""
    aside = _new_sibling(run_dir, REPLACED)
    run_dir.rename(aside)
    return aside


def _delete_aside(aside: Path, run_dir: Path) -> None:
    """Delete the old run that --force moved aside, renamed first: a process killed while deleting it leaves a
    ``.deleting-`` sibling that the next run finishes deleting, never a half-deleted run that it would put back."""
    doomed = aside.with_name(_sibling_prefix(run_dir, DELETING) + aside.name[len(_sibling_prefix(run_dir, REPLACED)):])
    aside.rename(doomed)
    shutil.rmtree(doomed)


def _owner_state(path: Path, run_dir: Path) -> tuple[str, str]:
    """Whether the process that made ``path``, a hidden sibling of ``run_dir``, still runs: (ENDED, ...), (RUNNING,
    "process PID") or (UNKNOWN, why), where it cannot be told: a process of another host, or a sibling whose name
    records none (made before seqzoo recorded its owner)."""
    what = REPLACED if path.name.startswith(_sibling_prefix(run_dir, REPLACED)) else DELETING
    owner = re.fullmatch(r"(\d+)@(.+)-[^-]+", path.name[len(_sibling_prefix(run_dir, what)):])
    if owner is None:
        return UNKNOWN, "its name records no process"
    pid, host = int(owner[1]), owner[2]
    if host != socket.gethostname():
        return UNKNOWN, f"its process, {pid} of host {host!r}, cannot be looked at from {socket.gethostname()!r}"
    if not process_alive(pid):
        return ENDED, f"process {pid} has ended"
    return RUNNING, f"process {pid}"


def run_lock(run_dir: Path) -> Path:
    """The lock file that holds ``run_dir`` for one training run while it runs: ``.NAME.training.lock`` beside the
    folder (it names the folder's owner, ``pid host``), where no check of what the folder holds counts it and --force
    does not move it aside with the old run. Beside the folder a link names, as the run writes there."""
    real = run_dir.resolve()
    return real.parent / f".{sibling_stem(real.name)}.training.lock"


@contextmanager
def _claimed(run_dir: Path, accelerator: Any) -> Iterator[None]:
    """Hold ``run_dir`` for this run (the main process takes :func:`run_lock`; another training run holding it, alive,
    has every process refused, naming it), until the block ends. Folders made above ``run_dir`` for the lock are
    removed again where the run wrote nothing into them (a refused run leaves no empty folder behind)."""
    lock = run_lock(run_dir)
    made = [folder for folder in (lock.parent, *lock.parent.parents) if not folder.exists()]
    taken: list[Path] = []

    def claim() -> None:
        if not accelerator.is_main_process:
            return
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            take_lock(lock, run_dir, "the output_dir of a training run", "another output_dir (--output-dir)")
        except OSError as err:  # (a read-only folder, a file where a folder of the path should be)
            blocker = next((p for p in (lock.parent, *lock.parent.parents) if p.exists() and not p.is_dir()), None)
            if blocker is None and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and run_dir.is_dir():
                # (an output_dir that can be written in a folder that cannot: a volume mounted on a read-only root,
                # which trained before the lock; the run goes on unclaimed, and says so)
                logger.warning("%s: cannot claim it for this run (%s), as the folder it is in cannot be written: a "
                               "second run started on it would not be refused", run_dir, describe(err))
                return
            reason = f"{blocker} is a file, not a folder" if blocker is not None else describe(err)
            raise OutputError(f"cannot write output_dir {str(run_dir)!r}: {reason}") from err
        taken.append(lock)

    try:
        on_every_process(accelerator, claim)
        yield
    finally:
        if taken:
            release_lock(lock)
        for folder in made if accelerator.is_main_process else []:
            with suppress(OSError):  # (not empty: the run wrote there; or gone already)
                folder.rmdir()


def _put_back_replaced(run_dir: Path) -> None:
    """Put back the old run that --force moved aside (:func:`_move_aside`) where the process was killed before the new
    run's first step was done (SIGKILL: the OOM killer, a preempted machine), which no ``except`` can: the output
    folder then held nothing, or only what the new run writes before its first step, and ``--resume`` said the run
    did not exist. Where the output folder holds a run of its own, or several runs were moved aside, none is put
    back, but each is named in a warning (it is never deleted).

    Only a sibling whose process has ended on this host is put back or deleted: a --force run still before its first
    step (a model that takes minutes to build) has this run refused, and a sibling of another host's process is named
    in a warning and left. Each is renamed to this process's name before it is touched, so that of two runs that
    find it, one alone puts it back or deletes it."""
    parent = run_dir.resolve().parent
    if not parent.is_dir():
        return
    replaced, deleting = _sibling_prefix(run_dir, REPLACED), _sibling_prefix(run_dir, DELETING)
    siblings = sorted(path for path in parent.iterdir() if path.name.startswith((replaced, deleting)))
    states = {path: _owner_state(path, run_dir) for path in siblings}
    running = [path for path in siblings if path.name.startswith(replaced) and states[path][0] == RUNNING]
    if running:
        raise ValueError(
            f"{str(run_dir)!r} is being replaced by a --force run that has not done its first step yet ("
            f"{states[running[0]][1]} of this host moved the old run aside to {str(running[0])!r}, and puts it back "
            "if it fails before then); wait for that run to finish or stop it, or choose another output_dir. If no "
            f"such run is going on (the process id is another program's now), move {str(running[0])!r} back to "
            f"{str(run_dir)!r} yourself, or delete it")
    for path in siblings:
        state, why = states[path]
        if state == UNKNOWN:
            logger.warning("%s: %s holds a run that --force %s, left as it is: %s; once that run has ended, %s",
                           run_dir, path, "moved aside" if path.name.startswith(replaced) else "was deleting", why,
                           "move it back yourself to keep it, or delete it" if path.name.startswith(replaced) else
                           "delete it")
    for path in [path for path in siblings if path.name.startswith(deleting) and states[path][0] == ENDED]:
        logger.warning("%s: finishing the deletion of %s, the run that --force replaced (its new run had done its "
                       "first step when the process was stopped)", run_dir, path)
        claimed = _new_sibling(run_dir, DELETING)
        try:
            path.rename(claimed)
        except FileNotFoundError:  # (another run is finishing it)
            continue
        shutil.rmtree(claimed)
    aside = [path for path in siblings
             if path.name.startswith(replaced) and states[path][0] == ENDED and path.is_dir()]
    if not aside:
        return
    left = _left_before_a_first_step(run_dir)
    if len(aside) == 1 and left is not None:
        claimed = _new_sibling(run_dir, REPLACED)
        try:
            aside[0].rename(claimed)
        except FileNotFoundError as err:
            raise ValueError(f"{str(run_dir)!r}: another run is putting back the run that --force had moved aside to "
                             f"{str(aside[0])!r}, at the same time as this one; start this run again once it has "
                             "done so") from err
        if run_dir.exists():
            shutil.rmtree(run_dir)
        claimed.rename(run_dir)
        logger.warning("%s: put back the run that --force had moved aside to %s: the process was stopped before the "
                       "new run's first step was done%s", run_dir, aside[0],
                       f" (the new run's {', '.join(left)} deleted)" if left else "")
        return
    why = (f"{len(aside)} runs were moved aside, and which one to keep is yours to choose" if len(aside) > 1 else
           "the output folder holds files of its own")
    logger.warning("%s: %s hold(s) a run that --force moved aside, stopped before the new run's first step was done; "
                   "not put back, as %s: move it back yourself to keep it, or delete it", run_dir,
                   ", ".join(map(str, aside)), why)


def _left_before_a_first_step(run_dir: Path) -> list[str] | None:
    """The names in ``run_dir`` where it holds at most what a run writes before its first step is done (nothing, or
    its recipe and metrics: nothing to keep); None where it holds anything else (a run of its own, other files)."""
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        return None
    if not run_dir.exists():
        return []
    names = sorted(path.name for path in run_dir.iterdir())
    if not names or (_stopped_before_a_checkpoint(run_dir) and not list_checkpoints(run_dir)):
        return names
    return None


# What a training run writes into its folder (recipe.yaml and metrics.jsonl first): --force deletes a folder holding
# one of them, never one that holds none (a mistyped --output-dir naming a project, a model folder).
RUN_FOLDER_MARKS = ("recipe.yaml", METRICS_FILE, "checkpoints", TRAINING_INFO_FILE)


def _stopped_before_a_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds only what a run writes before its first checkpoint (its recipe, its metrics, an empty
    or unfinished checkpoints/ folder): a run interrupted early, which --resume cannot continue."""
    names = {path.name for path in run_dir.iterdir()}
    return "recipe.yaml" in names and names <= {"recipe.yaml", METRICS_FILE, "checkpoints"}


def _check_deletable_run(run_dir: Path, recipe: Recipe) -> None:
    """Raise unless ``run_dir``, which --force is about to delete, holds a training run and none of this run's
    data files."""
    if not any((run_dir / name).exists() for name in RUN_FOLDER_MARKS):
        held = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir())
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        marks = ", ".join(name + "/" * (name == "checkpoints") for name in RUN_FOLDER_MARKS)
        raise ValueError(f"--force deletes only the folder of a training run, and {str(run_dir)!r} holds none of "
                         f"{marks} (it holds {shown}); choose another output_dir (--output-dir), or empty that "
                         "folder yourself")
    paths = recipe.data.path if isinstance(recipe.data.path, list) else [recipe.data.path]
    inside = [path for path in paths if path is not None and is_within(path, run_dir)]
    if inside:
        raise ValueError(f"--force would delete {str(run_dir)!r}, which holds this run's data (data.path="
                         f"{inside[0]!r}); move the data out of it, or choose another output_dir (--output-dir)")


def _prepare(accelerator: Any, model: Any, recipe: Recipe) -> tuple[Any, Any]:
    """Wrap the model for this launch (DDP, FSDP) and build its optimizer over the wrapped parameters."""
    if seqzoo_shards(accelerator):  # FSDP on CPU, which Accelerate leaves to us
        model = shard_on_cpu(model, recipe.train.mixed_precision)
        return model, accelerator.prepare(make_optimizer(model, recipe))
    if accelerator.is_fsdp2:  # Accelerate's FSDP2 swaps the optimizer's parameters for their shards itself
        return accelerator.prepare(model, make_optimizer(model, recipe))
    model = accelerator.prepare(model)  # DDP and FSDP1 wrap the model before the optimizer sees its parameters
    return model, accelerator.prepare(make_optimizer(model, recipe))


def _run(recipe: Recipe, accelerator: Any, model: Any, optimizer: Any, scheduler: Any, data: Any, micro_batch: int,
         run_dir: Path, checkpoint: Path | None, progress: bool, save_model: bool,
         stop: Callable[[dict[str, Any]], bool] | None = None,
         first_step_done: Callable[[], None] | None = None) -> TrainResult:
    from tqdm.auto import tqdm

    t = recipe.train
    world = accelerator.num_processes
    run_id = recipe.run_id
    health = GradientHealth(t.vanishing_grad_norm, t.exploding_grad_norm)
    step, tokens_seen = 0, 0
    stopped = False
    history: list[dict[str, Any]] = []
    saved_config = _saved_config(recipe, _uncompiled(accelerator.unwrap_model(model)))
    if checkpoint is not None:
        with _removed_meanwhile(checkpoint):
            state = read_state(checkpoint)
        check_same_run(state, run_id, recipe.to_dict(), checkpoint, world, data.describe(), saved_config)
        _check_same_saved_config(state, saved_config, recipe, checkpoint)
        step, tokens_seen = state["step"], state["tokens_seen"]
        # (stop ended the run at this checkpoint's step, and the run was stopped before its final save: resumed with a
        # stop function it ends there too, where it trained on to max_steps, another model than the run's)
        stopped = stop is not None and state.get("stopped") is True
        if state["data_position"] != data.position(step * t.batch_size):
            raise CheckpointError(
                f"--resume: {str(checkpoint / STATE_FILE)!r} is damaged: data position {state['data_position']!r} "
                f"does not match step {step} ({data.position(step * t.batch_size)!r})"
            )
        try:
            health.load_state_dict(state["grad_health"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"--resume: {str(checkpoint / STATE_FILE)!r} is damaged: grad_health "
                                  f"{state['grad_health']!r} ({type(err).__name__}: {err})") from err
        with _removed_meanwhile(checkpoint):
            restore_training_state(checkpoint, state, accelerator, model, optimizer, scheduler)
        if t.save_every:  # (a run killed while rotating out its last checkpoint's oldest left it, which no later save
            # of a run resumed there rotates: it ended with one checkpoint more than save_total_limit, or a half-deleted
            # hidden one; and the checkpoints past this one go with their rows of metrics.jsonl, below)
            on_every_process(accelerator, lambda: rotate_checkpoints(run_dir, step, t.save_total_limit, None)
                             if accelerator.is_main_process else None)
    metrics_path = run_dir / "metrics.jsonl"

    def prepare_run_dir() -> None:  # (on the main process; a failure there reaches every process)
        nonlocal history
        if not accelerator.is_main_process:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        # (whole, and never through a link of that name in a run folder from elsewhere, which --resume wrote into)
        write_atomically(run_dir / "recipe.yaml", recipe.to_yaml())
        # (a killed run may have logged steps past its checkpoint; a run resumed from another run's checkpoint, into
        # a folder of its own, starts from that run's rows)
        history = _read_history(_history_of(checkpoint, metrics_path), up_to=step)
        # Whole or not at all: truncating it in place, a run killed here would lose the history it resumes with.
        write_atomically(metrics_path, "".join(_json_line(row) for row in history))

    on_every_process(accelerator, prepare_run_dir)

    chunk = t.tbptt_chunk
    eval_chunk = chunk if supports_tbptt(model) else 0
    packed = getattr(data, "packing", False)  # corpora only: tasks, pairs and labelled texts are one sample a row
    eval_sets = data.eval_sets()
    model.train()
    talk = progress and accelerator.is_main_process
    bar = tqdm(total=t.max_steps, initial=step, disable=not talk, desc=recipe.name, dynamic_ncols=True)
    if talk and checkpoint is not None:
        bar.write(f"resumed from {checkpoint} at step {step} of {t.max_steps}"
                  + (" (where stop ended the run: nothing left to train)" if stopped else ""))
    train_seconds, train_tokens, first_step = 0.0, 0, step
    last_eval: dict[str, Any] | None = None
    while step < t.max_steps and not stopped:
        started = time.perf_counter()
        inputs, targets = data.train_batch(step, t.batch_size)  # (B, T) global batch
        row = _train_step(recipe, accelerator, model, optimizer, scheduler, inputs, targets, micro_batch, health,
                          step, packed)
        step += 1
        read = tokens_read(data, inputs, targets)
        tokens_seen += read
        train_seconds += time.perf_counter() - started
        train_tokens += read
        row = {"step": step, **row, "tokens_seen": tokens_seen}
        if not isinstance(data, (MemoryTask, LabelledTexts)):
            row.pop("accuracy")  # next-byte accuracy of text says little; the eval reports it anyway
        _record(row, history, metrics_path, accelerator)
        if first_step_done is not None and step == first_step + 1 and accelerator.is_main_process:
            first_step_done()
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", gnorm=f"{row['grad_norm']:.2g}",
                        refresh=False)
        if talk and (step % t.log_every == 0 or row["grad_flag"] == EXPLODING):
            left = train_seconds / (step - first_step) * (t.max_steps - step)
            bar.write(f"step {step}/{t.max_steps}  loss {row['loss']:.4f}  lr {row['lr']:.3e}  grad_norm "
                      f"{row['grad_norm']:.3g}  eta {int(left) // 60}:{int(left) % 60:02d}"
                      + (f"  [{row['grad_flag']}]" if row["grad_flag"] != OK else ""))
        # (asked before the evaluation and the checkpoint: a run that stop ends is evaluated at that step, and its
        # checkpoint of that step says so, for a resume)
        stopped = stop is not None and step < t.max_steps and stop(row)
        if (t.eval_every and step % t.eval_every == 0) or step == t.max_steps or stopped:
            last_eval = evaluate(model, eval_sets, accelerator, micro_batch, eval_chunk, packed)
            _record({"step": step, "eval": last_eval}, history, metrics_path, accelerator)
            if talk:
                bar.write(f"step {step}/{t.max_steps}  eval loss {last_eval['loss']:.4f}  "
                          + (f"perplexity {last_eval['perplexity']:.3f}  " if "perplexity" in last_eval else "")
                          + f"accuracy {last_eval['accuracy']:.3f}")
        if t.save_every and step % t.save_every == 0:
            save_checkpoint(accelerator, model, optimizer, scheduler, run_dir, step, {
                "run_id": run_id, "recipe": recipe.to_dict(), "step": step, "tokens_seen": tokens_seen,
                "data_position": data.position(step * t.batch_size), "data": data.describe(),
                "num_processes": world, "grad_health": health.state_dict(),
                **({} if saved_config is None else {"saved_config": saved_config}),
                **({"stopped": True} if stopped else {}),
            }, keep=t.save_total_limit)
    bar.close()

    if last_eval is None:  # resumed from the final checkpoint, or one where stop ended the run: nothing left to train
        last_eval = evaluate(model, eval_sets, accelerator, micro_batch, eval_chunk, packed)
    if save_model:
        final_model = _save_final(accelerator, model, recipe, data, run_dir, step, tokens_seen, last_eval, health)
    else:
        final_model = _uncompiled(accelerator.unwrap_model(model))
    return TrainResult(output_dir=run_dir, steps=step, tokens_seen=tokens_seen, eval=last_eval,
                       grad_health=health.summary(),
                       train_tokens_per_second=train_tokens / train_seconds if train_seconds else 0.0,
                       history=history, model=final_model, is_main_process=accelerator.is_main_process)


@contextmanager
def _removed_meanwhile(checkpoint: Path) -> Iterator[None]:
    """Name a checkpoint that was removed after --resume chose it, where reading it fails: the newest checkpoint of a
    run still training elsewhere (``--resume runs/a`` into a folder of its own) goes at that run's next save, rotated
    out by its save_total_limit, while this run builds its data and model. Its read failed as if the checkpoint were
    damaged ("cannot read .../trainer_state.json: No such file or directory")."""
    try:
        yield
    except (CheckpointError, OSError) as err:
        if checkpoint.is_dir():
            raise
        folder = checkpoint.parent.parent
        lock = run_lock(folder)
        held = f" (a run trains there now: {lock} is held)" if lock.exists() else ""
        raise CheckpointError(f"--resume: checkpoint {str(checkpoint)!r} was removed after this run chose it: the run "
                              f"in {str(folder)!r} went on writing checkpoints and keeps only its newest "
                              f"(train.save_total_limit), or it was deleted{held}; resume again to continue from the "
                              "newest one there") from err


def _saved_config(recipe: Recipe, model: Any) -> dict[str, Any] | None:
    """The config of the model a model.path run started from, as JSON reads it back (None for a preset's run,
    whose config the recipe gives): a checkpoint records it, since the run id names the folder, not what it holds."""
    if recipe.model.path is None:
        return None
    values = {k: v for k, v in model.config.to_dict().items() if k != "transformers_version"}
    return json.loads(json.dumps(values, sort_keys=True, default=str))


def _check_same_saved_config(state: dict[str, Any], saved_config: dict[str, Any] | None, recipe: Recipe,
                             checkpoint: Path) -> None:
    """Refuse resuming a model.path run whose saved folder now holds a model of another config (the run would go
    on with, and save, a config it did not start with)."""
    theirs, ours = without_origin(state.get("saved_config")), without_origin(saved_config)
    if ours is None or theirs is None or theirs == ours:  # (a checkpoint recording none: not checked)
        return
    differ = differences(theirs, ours, "now")
    raise ValueError(f"--resume: the model saved in model.path={recipe.model.path!r} changed since {str(checkpoint)!r} "
                     f"was written (its config: {'; '.join(differ)}); put back the model the run started from to "
                     "resume, or start a new run")


def tokens_read(data: Any, inputs: torch.Tensor, targets: torch.Tensor) -> int:
    """The tokens one global batch gives the model (what ``tokens_seen`` and the throughput count): a padded batch's
    inputs less their padding, and a seq2seq batch's targets too, which its decoder reads (each scored label: the
    bytes and the end-of-sequence token); every token of a corpus's or a memory task's rows, which hold no padding."""
    if isinstance(data, (Seq2SeqPairs, LabelledTexts)):
        read = int((inputs != PAD_TOKEN_ID).sum())
        return read + int((targets != IGNORE).sum()) if isinstance(data, Seq2SeqPairs) else read
    return inputs.numel()


def _train_step(recipe: Recipe, accelerator: Any, model: Any, optimizer: Any, scheduler: Any,
                inputs: torch.Tensor, targets: torch.Tensor, micro_batch: int, health: GradientHealth,
                step: int, packed: bool = False) -> dict[str, Any]:
    """One optimizer step on the global batch (inputs, targets); returns the figures logged for it."""
    t = recipe.train
    world, rank = accelerator.num_processes, accelerator.process_index
    scored = int((targets != IGNORE).sum())
    local = slice(rank * micro_batch * t.gradient_accumulation_steps,
                  (rank + 1) * micro_batch * t.gradient_accumulation_steps)
    sums = torch.zeros(2, device=accelerator.device)  # summed loss, correct predictions (this process)
    for micro in range(t.gradient_accumulation_steps):
        rows = slice(local.start + micro * micro_batch, local.start + (micro + 1) * micro_batch)
        loss_sum, correct = backward_sequence(
            model,
            inputs[rows].to(accelerator.device),
            targets[rows].to(accelerator.device),
            t.tbptt_chunk,
            loss_scale=world / max(scored, 1),
            backward=accelerator.backward,
            sync_last=lambda last: nullcontext() if last else gradient_sync_off(accelerator, model),
            last_micro_batch=micro == t.gradient_accumulation_steps - 1,
            packed=packed,
        )
        sums += torch.stack([loss_sum, correct.float()])
    # max_norm=inf measures the norm without clipping.
    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), recipe.optim.max_grad_norm or math.inf))
    flag = health.record(step + 1, grad_norm)
    # Under fp16 the gradient scaler already skips steps with inf/NaN gradients (and lowers its scale) by design;
    # those steps neither count as skipped here nor towards max_nonfinite_steps.
    skipped = t.skip_nonfinite_steps and not math.isfinite(grad_norm) and t.mixed_precision != "fp16"
    if skipped and health.nonfinite_streak > t.max_nonfinite_steps:
        raise NonFiniteError(
            f"step {step + 1}: the gradient norm was NaN/inf on {health.nonfinite_streak} consecutive steps, more "
            f"than train.max_nonfinite_steps={t.max_nonfinite_steps}; each was skipped, but the run is not "
            "recovering. The weights are still finite and every checkpoint written is intact. Lower optim.lr, "
            "check the data, or raise train.max_nonfinite_steps and continue with --resume"
        )
    lr = scheduler.get_last_lr()[0]
    if not skipped:
        optimizer.step()
        check_finite_parameters(model, accelerator, step + 1, grad_norm, lr)
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    sums = accelerator.reduce(sums, "sum")
    row = {"loss": float(sums[0]) / max(scored, 1), "accuracy": float(sums[1]) / max(scored, 1), "lr": lr,
           "grad_norm": grad_norm, "grad_flag": flag}
    if skipped:
        row["skipped"] = True
    return row


def check_finite_parameters(model: Any, accelerator: Any, step: int, grad_norm: float, lr: float) -> None:
    """Raise NonFiniteError if any parameter holds NaN/inf after optimizer step ``step``.

    A finite gradient does not make a finite update (an infinite learning rate, an optimizer overflow), so the
    weights themselves are checked, before anything can save them.
    """
    # FSDP keeps a shard of each parameter per process (possibly empty); each process checks its own.
    bad = nonfinite_names([(name, p.to_local() if hasattr(p, "to_local") else p)
                           for name, p in model.named_parameters()])
    if accelerator.num_processes > 1:  # FSDP shards differ per process; every process must stop together
        total = accelerator.reduce(torch.tensor([float(len(bad))], device=accelerator.device), "sum")
        if float(total) and not bad:
            bad = ["(on another process)"]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteError(
            f"step {step}: after the optimizer step {len(bad)} parameter tensor(s) hold NaN or inf ({shown}), with "
            f"a gradient norm of {grad_norm:.4g} and a learning rate of {lr:.4g}. The run stopped before saving "
            "anything from this step; every checkpoint written is intact. Lower optim.lr (or check the optimizer "
            "settings) and start again, or continue with --resume if the cause is gone"
        )


def _record(row: dict[str, Any], history: list[dict[str, Any]], path: Path, accelerator: Any) -> None:
    """Keep ``row`` in ``history`` and append it to ``path`` (metrics.jsonl). A failed append (a full disk) says which
    file, and what the run continues from: the line it cut short lies past the newest checkpoint, and --resume
    drops it (:func:`_read_history`)."""
    history.append(row)
    if accelerator.is_main_process:
        try:
            with path.open("a", encoding="utf-8") as handle:
                handle.write(_json_line(row))
        except OSError as err:
            what = f"the evaluation of step {row['step']}" if "eval" in row else f"step {row['step']}"
            raise OutputError(f"cannot append {what} to {str(path)!r}: {describe(err)}; "
                              f"{what_is_left(path.parent)}") from err


def _json_line(row: dict[str, Any]) -> str:
    """One metrics.jsonl line, strict JSON (a skipped step's NaN loss written as null: see strict_json)."""
    return strict_json(row) + "\n"


def _as_figures(value: Any) -> Any:
    """A row read back from metrics.jsonl: null figures (written for NaN / inf) become NaN again."""
    if value is None:
        return math.nan
    return {key: _as_figures(item) for key, item in value.items()} if isinstance(value, dict) else value


def _history_of(checkpoint: Path | None, metrics_path: Path) -> Path:
    """Where a resumed run's history is read from: its own metrics.jsonl, or where it has none and the checkpoint is
    another run's (``<run>/checkpoints/<checkpoint>``), that run's."""
    if checkpoint is None or metrics_path.exists() or checkpoint.parent.name != CHECKPOINTS:
        return metrics_path
    theirs = checkpoint.parent.parent / METRICS_FILE
    return theirs if theirs.is_file() else metrics_path


_ROW_STEP = re.compile(r'\{"step": (\d+)[,}]')  # (how _json_line begins a row)


def _read_history(path: Path, up_to: int) -> list[dict[str, Any]]:
    """The logged rows of ``path`` (metrics.jsonl) up to step ``up_to``, the checkpoint resumed from. A last line
    cut short (the run killed, or the disk full, while appending it) is dropped where it lies past the checkpoint
    (every row of a step is appended before the step's checkpoint is written): by the step it begins with, or where
    that is cut off too, by a whole row past the checkpoint before it. A cut line of a step the checkpoint covers,
    and any other damaged line, is an error naming the file and the line. Steps the checkpoint covers that no row
    logs (the file deleted, rows taken out) are warned about: the resumed history lacks them."""
    if up_to == 0:
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            begun = _ROW_STEP.match(line)
            past = (int(begun.group(1)) > up_to if begun is not None
                    else any(row["step"] > up_to for row in rows))
            if number == len(lines) and past:
                logger.warning("%s: its last line is cut short (%s); dropped, it lies past the checkpoint", path, err)
                continue
            where = (f"a row of step {begun.group(1)}, which the checkpoint (step {up_to}) covers" if begun
                     else f"a row that may be one the checkpoint (step {up_to}) covers")
            cut = f"cut short: {where}" if number == len(lines) else "not a JSON object"
            raise ValueError(f"{str(path)!r} line {number} is {cut} ({err}); repair or delete the line to resume "
                             "(deleted, the resumed history lacks it)") from err
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ValueError(f"{str(path)!r} line {number} is not a logged row with a step; repair or delete the "
                             "line to resume")
        rows.append(_as_figures(row))
    rows = [row for row in rows if row["step"] <= up_to]
    logged = {row["step"] for row in rows if "eval" not in row}
    missing = [step for step in range(1, up_to + 1) if step not in logged]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        logger.warning("%s logs no row of step(s) %s of the %d the checkpoint covers (%s): the resumed history, and "
                       "the metrics.jsonl it writes, lack them", path, shown, up_to,
                       "the file is missing" if not path.is_file() else "taken out of the file")
    return rows


def _figures(evaluation: dict[str, Any]) -> dict[str, float]:
    return {k: evaluation[k] for k in ("loss", "perplexity", "accuracy") if k in evaluation}


def _uncompiled(model: Any) -> Any:
    """The module inside torch.compile's wrapper: `accelerate launch --dynamo_backend ...` compiles the prepared
    model, whose own state dict names every tensor `_orig_mod.<name>` (which from_pretrained cannot load)."""
    return getattr(model, "_orig_mod", model)


def _save_final(accelerator: Any, model: Any, recipe: Recipe, data: Any, run_dir: Path, step: int, tokens_seen: int,
                last_eval: dict[str, Any], health: GradientHealth) -> Any:
    """save_pretrained (+ the byte tokenizer for text data: a model.path run's is the folder's, with its added tokens,
    chat template and settings, checked before the run) and seqzoo_training.json, which model cards read."""
    from accelerate.utils import DistributedType

    from seqzoo.tokenizer import VOCAB_SIZE, saved_byte_tokenizer, tokenizer_for

    accelerator.wait_for_everyone()
    unwrapped = _uncompiled(accelerator.unwrap_model(model))
    if is_sharded(model):
        state_dict = full_model_state(model)  # a collective: gathered on the main process, empty on the others
        # Gathering gives each name of a tied weight its own copy; shared again, save_pretrained stores it once.
        for name, target in tied_parameter_names(unwrapped).items():
            if target in state_dict:
                state_dict[name] = state_dict[target]
    else:
        state_dict = accelerator.get_state_dict(model)
        compiled = "_orig_mod."
        if state_dict and all(name.startswith(compiled) for name in state_dict):
            state_dict = {name[len(compiled):]: value for name, value in state_dict.items()}

    def save() -> None:  # (on the main process; a failure there reaches every process)
        if not accelerator.is_main_process:
            return
        require_finite(state_dict, "the final model")
        # Memory tasks use their own small vocabulary, which the byte tokenizer does not describe.
        with_tokenizer = not isinstance(data, MemoryTask) and unwrapped.config.vocab_size >= VOCAB_SIZE
        saved = None if not with_tokenizer or recipe.model.path is None else \
            saved_byte_tokenizer(recipe.model.path, unwrapped.config.vocab_size)
        info = {
            "dataset": data.name,
            "data": data.describe(),
            "tokenizer": "seqzoo byte tokenizer" if with_tokenizer else None,
            "tokens_seen": tokens_seen,
            "steps": step,
            "eval": {**_figures(last_eval), "sets": {k: _figures(v) for k, v in last_eval["sets"].items()}},
            "grad_health": health.summary(),
            "num_processes": accelerator.num_processes,
            "fsdp": is_sharded(model) or accelerator.distributed_type == DistributedType.FSDP,
            "run_id": recipe.run_id,
            "recipe": recipe.to_dict(),
        }
        try:
            # The run folder keeps checkpoints/ and metrics.jsonl: the model's files are renamed into it one by
            # one from a staging folder, config.json last (see seqzoo.outputs).
            with staged_folder(run_dir, merge=True) as staging:
                with quiet_transformers():  # no "Writing model shards" bar under the run's own progress
                    unwrapped.save_pretrained(staging, state_dict=state_dict)
                if with_tokenizer:
                    tokenizer_for(unwrapped, saved).save_pretrained(staging)
                # (the weights the record describes: publishing refuses it beside weights saved there since)
                info["weights_sha256"] = weights_fingerprint(staging)
                (staging / TRAINING_INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        except OutputError as err:
            raise OutputError(f"training finished but the final model could not be saved: {err}; "
                              f"{what_is_left(run_dir)}") from err

    on_every_process(accelerator, save)
    return unwrapped
