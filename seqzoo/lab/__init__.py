"""The memory lab: tiny models of every architecture on memory tasks and text, compared in one report.

``seqzoo lab`` runs it; :func:`run_lab` is the same from Python.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LabConfig", "lab_presets", "run_lab"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that ``seqzoo lab --help`` (which imports seqzoo.lab.cli) does not load torch.
    if name not in __all__:
        raise AttributeError(f"module 'seqzoo.lab' has no attribute {name!r}")
    from seqzoo.lab import runner

    return getattr(runner, name)
