"""What produced a lab report: the command, the code, the libraries and the machine (so a reader can tell whether
a difference between two reports is the code's or the machine's)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any


def describe_environment(command: str, workers: int) -> dict[str, Any]:
    import torch
    import transformers

    from seqzoo.utils import installed_version

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "command": command,
        "seqzoo": installed_version(),
        "git": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": available_cores(),
        "workers": workers,
        "threads_per_worker": 1,
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "started": time.strftime("%Y-%m-%d %H:%M %Z"),
        "pid": os.getpid(),  # a later lab refuses to replace the folder of one still running
        "host": platform.node(),
    }


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str | None:
    """The commit of the seqzoo source tree (``+ local changes`` when it differs), or None for an installed
    package."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + (" + local changes" if dirty else "")
