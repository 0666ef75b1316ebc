"""The memory lab: tiny models of every architecture on memory tasks and text, compared in one report.

``seqzoo lab`` runs it; :func:`run_lab` is the same from Python.
"""

from seqzoo.lab.runner import LabConfig, lab_presets, run_lab

__all__ = ["LabConfig", "lab_presets", "run_lab"]
