"""The labs' worker pool (``seqzoo.lab.workers``) when it is stopped."""

from __future__ import annotations

import threading
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
