"""How a training run starts its processes: what it refuses of the launch (``accelerate launch`` / ``torchrun``
flags and environment that the run would otherwise drop without a word) and the Accelerator it trains with.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Iterator

import torch


def check_launch(mixed_precision: str, accumulation: int = 1) -> None:
    """Refuse a launch whose run would not be what it says: fp16 where Accelerate runs it as float32, one process
    where several were asked for, a launch's mixed precision or gradient accumulation the recipe's would override."""
    if mixed_precision == "fp16" and (_launched_on_cpu_only() or not _has_accelerator()):
        # Accelerate sets up neither fp16 autocast nor a gradient scaler on the CPU: the run would train in float32
        # while its records said fp16 (and skip no non-finite step, which the scaler handles where there is one).
        raise ValueError("train.mixed_precision=fp16 needs a GPU: on the CPU it would train in float32; use bf16 "
                         "(CPU autocast) or no")
    _refuse_one_process_of_many()
    _refuse_launch_precision(mixed_precision)
    _refuse_launch_accumulation(accumulation)


def make_accelerator(mixed_precision: str) -> Any:
    """The run's Accelerator, in the precision its recipe names (an earlier run's in this process forgotten), joined
    to the other CPU processes of a launch over gloo."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    _forget_an_earlier_runs_precision(mixed_precision)
    # One step per update for Accelerate: the run accumulates its micro-batches itself, scaling each loss by what it
    # scores (Accelerate's own count, from ACCELERATE_GRADIENT_ACCUMULATION_STEPS, divided every loss again).
    return Accelerator(mixed_precision=mixed_precision, cpu=_launched_on_cpu_only(),
                       gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1))


@contextlib.contextmanager
def callers_accelerator_state() -> Iterator[None]:
    """accelerate's AcceleratorState (one per process, fixed by its first Accelerator) as the block's caller had it:
    a ``train()`` left its run's behind, so the caller's next Accelerator of another precision (its own, or
    transformers' ``Trainer(bf16=True)``) failed with accelerate's "restart your runtime completely". The process
    state (the process group) stays."""
    from accelerate.state import AcceleratorState

    before = dict(AcceleratorState._shared_state)
    try:
        yield
    finally:
        AcceleratorState._shared_state.clear()
        AcceleratorState._shared_state.update(before)


def _forget_an_earlier_runs_precision(mixed_precision: str) -> None:
    """accelerate keeps one AcceleratorState per process, fixed by its first Accelerator: a second ``train()`` in
    one process (a notebook, a script looping over recipes) with another ``mixed_precision`` failed with accelerate's
    "restart your runtime". That state alone is dropped then; the process state (the process group) is kept."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def _refuse_one_process_of_many() -> None:
    """`accelerate launch --num_processes N` on a machine without GPUs (with or without --cpu) starts ONE process
    unless told --multi_gpu (its "simple launcher" expects mpirun for several CPU processes). It still sets
    MASTER_ADDR for the N it was asked for, but no WORLD_SIZE: the run would train alone while the user thinks N
    processes share it."""
    if ("ACCELERATE_USE_CPU" in os.environ and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ
            and not any(name in os.environ for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))):
        raise ValueError(
            "accelerate launch was asked for several processes but started one (unless it sees several GPUs, "
            "accelerate starts several processes only with --multi_gpu, or under mpirun; --cpu alone starts one). "
            "Launch with `accelerate launch "
            "--multi_gpu --num_processes N -m seqzoo train ...` or `torchrun --nproc_per_node N -m seqzoo train ...`"
        )


def _refuse_launch_accumulation(accumulation: int) -> None:
    """`accelerate launch --gradient_accumulation_steps N` (or a shell that kept it) puts
    ACCELERATE_GRADIENT_ACCUMULATION_STEPS in the environment, where Accelerate divides every loss by it: the run's
    gradients (their norm, the clipping) were N times too small while its records said the recipe's accumulation.
    The run accumulates as its recipe says; a launch that asks for another count is refused naming both."""
    launched = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "").strip()
    if launched and launched != str(accumulation):
        raise ValueError(
            f"the launch asks for gradient accumulation {launched!r} (accelerate launch --gradient_accumulation_steps,"
            f" or the environment: ACCELERATE_GRADIENT_ACCUMULATION_STEPS={launched}), but the recipe says "
            f"train.gradient_accumulation_steps={accumulation}, which is what seqzoo train runs: add the override "
            f"train.gradient_accumulation_steps={launched}, or unset ACCELERATE_GRADIENT_ACCUMULATION_STEPS"
        )


def _refuse_launch_precision(mixed_precision: str) -> None:
    """`accelerate launch --mixed_precision bf16` (or `accelerate config`) puts ACCELERATE_MIXED_PRECISION in the
    environment; seqzoo passes the recipe's train.mixed_precision to Accelerator, which then wins, so the launch's
    choice would be dropped without a word (transformers' Trainer honours it where its own flags are unset)."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    if launched not in ("no", mixed_precision):
        raise ValueError(
            f"the launch asks for mixed precision {launched!r} (accelerate launch --mixed_precision, or accelerate "
            f"config: ACCELERATE_MIXED_PRECISION={launched}), but the recipe says train.mixed_precision="
            f"{mixed_precision!r}, which is what seqzoo train runs: add the override mixed_precision={launched}, or "
            "launch with --mixed_precision no"
        )


def _launched_on_cpu_only() -> bool:
    # Accelerate runs torchrun-launched processes as independent single-process runs unless told they are CPU
    # processes (then it joins them over gloo); `accelerate launch --cpu` says so itself, torchrun does not.
    world = os.environ.get("WORLD_SIZE", "1")
    if not world.strip().isdigit():
        raise ValueError(f"the environment variable WORLD_SIZE={world!r} is invalid: expected the number of processes "
                         "(torchrun and accelerate launch set it; unset it for a single-process run)")
    launched = int(world) > 1 or "LOCAL_RANK" in os.environ
    return launched and not torch.cuda.is_available()


def _has_accelerator() -> bool:
    """Whether a device Accelerate runs fp16 on (with its autocast and gradient scaler) is present."""
    xpu, mps = getattr(torch, "xpu", None), getattr(torch.backends, "mps", None)
    return (torch.cuda.is_available() or (xpu is not None and xpu.is_available())
            or (mps is not None and mps.is_available()))


def leave_process_group(*, failed: bool = False) -> None:
    """End a launched run's part in its process group before the interpreter shuts down. A gloo worker thread that
    ran the run's last collective drops its tensors after the collective has returned, and needs the GIL to do so;
    if the process is already shutting down by then, the thread is stopped inside a destructor and the process
    aborts ("terminate called without an active exception", SIGABRT) with the run finished and saved, which the
    launcher reports as a failed run (rank 0 or 1 of the two-process FSDP tests: 2 in 30 resumes on transformers
    5.25, and in CI on 5.24). Destroying the group does not stop those threads while the model holds it, so the
    GIL is then given up long enough for them to finish. After a run that ``failed`` the group is left as it is
    (NCCL's destroy may wait on processes still blocked in a collective this one will not join) and only the wait
    is kept. ``train()`` keeps the group for another run in the same process; ``seqzoo train``, whose process ends
    with the run, calls this."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if not failed:
            dist.destroy_process_group()
        time.sleep(_WORKER_GRACE_S)


_WORKER_GRACE_S = 0.1
