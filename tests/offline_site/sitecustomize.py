"""Run by Python at the start of every process a test starts (tests/conftest.py puts this folder first on
PYTHONPATH): installs the suite's network guard, then runs the sitecustomize this one hides, if there is one."""

import importlib
import os
import sys

import network_guard

network_guard.install()

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _here]
_this = sys.modules.pop("sitecustomize")
try:
    importlib.import_module("sitecustomize")
except ModuleNotFoundError as error:
    if error.name != "sitecustomize":
        raise
    sys.modules["sitecustomize"] = _this  # (what the import running this file takes out of sys.modules at its end)
