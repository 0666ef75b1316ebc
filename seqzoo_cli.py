"""The ``seqzoo`` console script.

It lives outside the ``seqzoo`` package on purpose: importing anything inside the package first runs
``seqzoo/__init__.py``, which imports torch and transformers and registers every architecture (seconds of work).
Here the package's ``__init__`` is held back until the command line has been parsed, so ``seqzoo --help``,
``seqzoo <command> --help``, ``--version`` and argument errors answer at once. Any command then gets the package
exactly as ``import seqzoo`` gives it.
"""

from __future__ import annotations

import importlib.util
import sys


def main() -> int:
    if "seqzoo" in sys.modules:  # already imported (python -m seqzoo, or an embedding program): nothing to defer
        from seqzoo.cli import main as run

        return run()
    spec = importlib.util.find_spec("seqzoo")
    if spec is None or spec.loader is None:
        print("error: the seqzoo package is not importable from this Python", file=sys.stderr)
        return 1
    package = importlib.util.module_from_spec(spec)
    sys.modules["seqzoo"] = package  # seqzoo.cli and the command modules import without running __init__
    initialised = False

    def initialise() -> None:
        nonlocal initialised
        if not initialised:
            initialised = True
            spec.loader.exec_module(package)

    try:
        from seqzoo.cli import main as run

        return run(before_command=initialise)
    finally:
        if not initialised:  # --help, --version or a parse error: leave no half-made package behind
            for name in [m for m in sys.modules if m == "seqzoo" or m.startswith("seqzoo.")]:
                del sys.modules[name]


if __name__ == "__main__":
    sys.exit(main())
