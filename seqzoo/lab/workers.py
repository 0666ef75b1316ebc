"""The labs' worker processes: each training run on a single-threaded process of its own (one per core), spawned
so that a pool of them can run beside a process that already ran torch; Ctrl-C stops them all.

Tiny models do not use two threads well, and one thread per run makes every figure independent of how runs were
scheduled. :func:`run_in_workers` is the pool; :func:`run_lab_jobs` the runs of a lab that writes its report beside
others (``seqzoo lab seq2seq``, ``bidirectional``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterator


def run_in_workers(run: Callable[[dict[str, Any]], dict[str, Any]], jobs: list[dict[str, Any]], workers: int,
                   on_result: Callable[[dict[str, Any]], None], *, device: str = "cpu", deadline: float | None = None,
                   log: Callable[[str], None] = print) -> None:
    """Call ``run(job)`` for every job on ``workers`` lab workers (:func:`_worker_setup`), handing each result to
    ``on_result`` as it comes; ``run`` is a module-level function (the workers are spawned). Ctrl-C, or any failure
    here, drops the queued jobs, stops the running ones now rather than after they finish, and re-raises. With a
    ``deadline`` (a perf_counter time), jobs not started by then are dropped."""
    # spawn, not fork: a forked copy of a process that already ran torch threads can deadlock.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_setup,
                               initargs=(device,))
    try:
        with _sigint_held():  # (the workers start here, spawned by submit)
            futures = [pool.submit(run, job) for job in jobs]
        for future in as_completed(futures):
            if future.cancelled():
                continue
            on_result(future.result())
            if deadline is not None and time.perf_counter() > deadline:
                dropped = sum(f.cancel() for f in futures)
                log(f"deadline reached: {dropped} queued run(s) dropped")
                deadline = None
    except BaseException:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        # (the pool's manager thread, which shutdown(wait=False) forgets without joining: left running, it closed its
        # wake-up pipe while the interpreter's exit wrote to it, "Exception ignored ... OSError: Bad file descriptor")
        manager = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=10)
        if isinstance(manager, threading.Thread):
            manager.join(timeout=10)
        pool.shutdown(wait=True)  # releases the pool's queues (else multiprocessing warns of leaked semaphores)
        raise
    pool.shutdown()


def run_lab_jobs(run: Callable[[dict[str, Any]], dict[str, Any]], jobs: list[dict[str, Any]], workers: int,
                 log: Callable[[str], None], label: Callable[[dict[str, Any]], str],
                 figures: str, keep: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """The runs of a lab that writes its report beside others (``seqzoo lab seq2seq``, ``bidirectional``), each
    handed to ``keep`` (which records it) and logged as it ends (``label(run)``, then its accuracy by key, named
    ``figures``): :func:`run_in_workers`, or with one worker in this process (no worker to start: seconds saved in a
    smoke run), as a worker would run them: one thread, on the CPU."""
    runs: list[dict[str, Any]] = []

    def on_result(result: dict[str, Any]) -> None:
        runs.append(result)
        if keep is not None:
            keep(result)
        read = (" ".join(f"{key}:{accuracy:.2f}" for key, accuracy in sorted(result["accuracy"].items()))
                if result["ok"] else f"FAILED: {result['error']}")
        log(f"[{len(runs):>2}/{len(jobs)}] {label(result)} {figures} {read} ({result['seconds']:.1f} s)")

    if workers > 1:
        run_in_workers(run, jobs, workers, on_result)
        return runs
    import torch

    threads, on_cpu = torch.get_num_threads(), os.environ.get("ACCELERATE_USE_CPU")
    torch.set_num_threads(1)
    os.environ["ACCELERATE_USE_CPU"] = "true"
    try:
        for job in jobs:
            on_result(run(job))
    finally:
        torch.set_num_threads(threads)
        if on_cpu is None:
            os.environ.pop("ACCELERATE_USE_CPU", None)
        else:
            os.environ["ACCELERATE_USE_CPU"] = on_cpu
    return runs


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """SIGINT blocked in this thread while it spawns workers: a spawned process keeps the blocked mask from its
    first instruction, so the terminal's Ctrl-C (sent to every process of its group) cannot reach a worker while
    it imports site, seqzoo and torch (seconds), before it can ignore SIGINT (:func:`_worker_setup`); there a
    KeyboardInterrupt printed the worker's traceback, or "Fatal Python error: init_import_site". A Ctrl-C meanwhile
    is not lost: it stays pending for this process, and stops the lab once unblocked."""
    if not hasattr(signal, "pthread_sigmask"):  # (Windows has no signal mask: its workers start as before)
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _worker_setup(device: str = "cpu") -> None:
    """A lab worker: one thread, on the CPU (the lab compares architectures as a laptop runs them, also where a GPU
    exists) unless ``device`` is "cuda" (the sweep may run there)."""
    # Ctrl-C reaches every process of the terminal's group; the parent alone stops the lab, so a worker neither
    # prints a traceback nor dies half-way through writing a file. (It started with SIGINT blocked, _sigint_held:
    # ignored from here on, it need not stay blocked.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    import torch

    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    torch.set_num_threads(1)
    # tqdm's default lock is a multiprocessing one: a worker stopped by Ctrl-C would leave it behind, and
    # multiprocessing would warn about it after the lab's one-line message. A worker draws no bars anyway.
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    _quiet_libraries()
    threading.Thread(target=_exit_with_parent, daemon=True).start()


def _exit_with_parent() -> None:
    # A lab killed with SIGTERM/SIGKILL (or ended from Windows' Task Manager) cannot tell its workers; without this
    # each would finish its current run (minutes) before noticing. multiprocessing's handle on the parent ends with it
    # on every system, where os.getppid() changes on POSIX alone: Windows keeps an orphan's parent id.
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(1)


def _quiet_libraries() -> None:
    # A worker's log lines would interleave without saying which run they belong to; the report lists
    # flagged gradients per run instead.
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("seqzoo.training").setLevel(logging.ERROR)
    warnings.simplefilter("ignore", FutureWarning)
