"""The labs' worker pool (``seqzoo.lab.workers``) when it is stopped."""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time
from concurrent.futures import process as futures_process

import pytest

from seqzoo.lab import workers


def test_an_interrupted_pool_leaves_no_manager_thread_running():
    # Ctrl-C while the runs go: the pool's manager thread, which shutdown(wait=False) forgets without joining, was
    # still running when the interpreter exited, and closed its wake-up pipe while the exit wrote to it: "Exception
    # ignored ... OSError: Bad file descriptor" under the lab's one-line message (seen once in CI).
    def interrupt(result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        workers.run_in_workers(abs, [-1, -2, -3, -4], 2, interrupt)
    running = [thread for thread in threading.enumerate()
               if isinstance(thread, futures_process._ExecutorManagerThread) and thread.is_alive()]
    assert running == []


def _worker_on_windows(report: int) -> None:
    """A lab worker (its setup, then a long run) on a system that keeps an orphan's parent id, as Windows does."""
    import torch

    parent = os.getppid()
    os.getppid = lambda: parent
    torch.set_num_threads = lambda threads: None  # (no OpenMP call in a forked child of a process that used it)
    workers._worker_setup()
    os.write(report, f"{os.getpid()}\n".encode())
    time.sleep(30)
    os._exit(0)


def _lab_killed(report: int) -> None:
    multiprocessing.get_context("fork").Process(target=_worker_on_windows, args=(report,)).start()
    os._exit(0)  # (as a lab killed: it neither stops nor waits for its worker)


def test_a_worker_exits_with_its_killed_lab_where_the_parent_id_stays():
    """A worker watched os.getppid() for its lab's death, which changes on POSIX alone: on Windows (a lab ended
    from the Task Manager) each worker finished its current run, minutes, before it noticed."""
    read, write = os.pipe()
    lab = multiprocessing.get_context("fork").Process(target=_lab_killed, args=(write,))
    lab.start()
    os.close(write)
    lab.join()
    with os.fdopen(read, "rb") as worker:
        pid = int(worker.readline())
        ended = bool(select.select([worker], [], [], 5)[0]) and worker.read() == b""  # (its end of the pipe closed)
    if not ended:
        os.kill(pid, signal.SIGKILL)
    assert ended, "the worker outlived its lab"
