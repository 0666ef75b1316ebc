"""What the lab tests of ``--resume`` share: the folder's results and the runs a resume would train."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from seqzoo.lab import runner


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def tasks_a_resume_trains(cfg: Any, out: Path, monkeypatch: pytest.MonkeyPatch,
                          log: Callable[[str], None]) -> list[str]:
    """The tasks ``run_lab(cfg, out, resume=True)`` hands to its workers; the lab is stopped there (Ctrl-C). The list
    goes on recording what later labs of the test hand over (the stand-in stays for the test's duration)."""
    trained = []

    def record_then_stop(jobs, workers, log, on_result, **kwargs):
        trained.extend(job["task"] for job in jobs)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_jobs", record_then_stop)
    with pytest.raises(KeyboardInterrupt):
        runner.run_lab(cfg, out, log=log, resume=True)
    return trained
