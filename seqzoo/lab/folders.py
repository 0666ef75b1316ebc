"""Where the labs write: the guards that keep a report folder from being replaced by mistake, and the removal of
what an earlier report wrote when it is replaced.

``seqzoo lab`` and ``seqzoo lab sweep`` own their folder (:func:`prepare_output`); ``seqzoo lab seq2seq`` and
``bidirectional`` write their report beside others (:func:`check_report_folder`, :func:`remove_previous_report`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from seqzoo.lab.plots import PLOT_FILES
from seqzoo.outputs import dangling_link, holds_lock, process_alive, release_lock, take_lock

# The statuses of a lab's results.json: "running" while it trains and measures, then "finished"; "interrupted"
# (Ctrl-C) or "failed" (an error) when it stopped before its report was written.
STATUSES = ("running", "interrupted", "failed", "finished")


def lab_folder(out: str | os.PathLike) -> Path:
    """A lab's folder ``out``, ``~`` (and ``~user``) at its start read as the home folder, as a recipe's
    ``output_dir`` is: the lab's runs train through recipes, so ``--out=~/lab`` (a shell leaves that ``~``) put the
    runs under the home folder and the results beside them in a folder named ``~``, and the report failed to find
    the runs it had trained."""
    return Path(out).expanduser()


def stopped_status(err: BaseException) -> dict[str, str]:
    """What a lab's results file says when ``err`` stopped it before its report: ``interrupted`` for Ctrl-C, else
    ``failed`` with the error (no longer ``running``, whose live process id refuses the folder)."""
    if isinstance(err, KeyboardInterrupt):
        return {"status": "interrupted"}
    return {"status": "failed", "error": f"{type(err).__name__}: {err}"}


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write a lab's results file whole or not at all (a kill mid-write leaves the previous one), as strict JSON
    (a diverged run's NaN becomes null)."""
    from seqzoo.outputs import write_atomically
    from seqzoo.utils import strict_json

    write_atomically(path, strict_json(results, indent=1))


# The file that claims a folder for one lab while it runs (seqzoo.outputs.take_lock): of two labs started into one
# folder at the same moment one goes on and the other is refused (the results.json marker is written after the folder
# is checked, and both had found it free).
LOCK = ".seqzoo-lab.lock"
# ``seqzoo lab seq2seq`` and ``bidirectional`` write beside other reports (a ``seqzoo lab``'s among them), so each
# claims the folder for its own kind of lab only.
LAB_LOCKS = {"lab": LOCK, "seq2seq lab": ".seqzoo-lab-seq2seq.lock",
             "bidirectional lab": ".seqzoo-lab-bidirectional.lock"}


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that cannot be made a folder: a file, or a link to nothing."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{str(out)!r} is a file; choose a folder for --out")
    dangling = dangling_link(out)
    if dangling is not None:
        raise ValueError(f"--out {str(out)!r}: {dangling}")


def refuse_folders_named_as(out: Path, files: Iterable[str], what: str) -> None:
    """Refuse a folder of the user's in ``out`` under the name of one of the ``files`` a lab writes: never deleted,
    ``--force`` or not (it failed with 'Is a directory' once every run had trained, or every profile was taken)."""
    for name in files:
        if (out / name).is_dir() and not (out / name).is_symlink():
            raise ValueError(f"{str(out / name)!r} is a folder, not this {what} lab's {name}; move it, or pass --out "
                             "NEW_FOLDER")


@contextlib.contextmanager
def claim_output(out: Path, lab: str = "lab") -> Iterator[None]:
    """Hold ``out`` for one lab (``seqzoo lab``, ``seqzoo lab sweep``; ``lab`` names another kind, whose lock is its
    own, :data:`LAB_LOCKS`) until the block ends: creates the folder and its lock, and refuses a folder another lab
    of that kind holds (naming its process). A lock whose process has ended (killed, the machine restarted) is stale
    and taken over. The lock goes when the block ends, and so does a folder it created if nothing else was written
    there (a refused ``--resume`` leaves no empty folder behind)."""
    check_out_folder(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LAB_LOCKS[lab]
    try:
        take_lock(lock, out, f"the folder of a {lab}", "another --out folder")
        try:
            yield
        finally:
            release_lock(lock)
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            with contextlib.suppress(OSError):  # (another lab's lock arrived meanwhile)
                out.rmdir()


def prepare_output(out: Path, force: bool, log: Callable[[str], None], resume: bool = False) -> dict[str, Any] | None:
    """Create ``out``. A finished report there is replaced only with ``force``; an unfinished run (interrupted or
    crashed) is replaced with a note, unless it recorded finished training runs: those are replaced only with
    ``force``, or kept with ``resume``, which returns that lab's results.json and touches nothing:
    :func:`seqzoo.lab.runner.run_lab` checks that it can resume that lab (its settings) before it removes the stopped
    lab's report and plots (:func:`remove_stopped_report`). A folder that is not a lab report is never touched."""
    import shutil

    check_out_folder(out)
    if resume and not (out.is_dir() and (out / "results.json").is_file()):
        raise ValueError(f"--resume: {str(out)!r} holds no unfinished lab to resume (no results.json); leave out "
                         "--resume to start one there")
    # (the lock of this lab, and the one another lab stages to claim the folder, which it will be refused)
    if out.exists() and any(not path.name.startswith(LOCK) for path in out.iterdir()):
        marker = out / "results.json"
        if not marker.is_file():
            raise ValueError(f"{str(out)!r} exists and is not a seqzoo lab report; choose another --out folder")
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            previous = None
        # Only a lab's own marker (its status and the command that made it) lets the folder be replaced: a
        # results.json of anything else is no sign of a lab report.
        environment = previous.get("environment") if isinstance(previous, dict) else None
        if (not isinstance(previous, dict) or previous.get("status") not in STATUSES
                or not isinstance(environment, dict) or "command" not in environment):
            raise ValueError(f"{str(out)!r} holds a results.json that is not a seqzoo lab's; choose another --out "
                             "folder (nothing in it was touched)")
        if previous.get("status") == "finished" and resume:
            raise ValueError(f"--resume: {str(out)!r} holds a finished lab report, nothing to resume; pass --out "
                             "NEW_FOLDER to keep it, or --force (without --resume) to replace it")
        if previous.get("status") == "finished" and not force:
            made = previous.get("environment", {})
            raise ValueError(
                f"{str(out)!r} already holds a finished lab report (`{made.get('command', 'seqzoo lab')}`, "
                f"{made.get('finished', 'date unknown')}); pass --out NEW_FOLDER to keep it, or --force to replace it")
        owner = environment.get("pid"), environment.get("host")
        # (where this process holds the folder, claim_output, the lab its results.json calls running has ended,
        # whatever its process id names now: another program's, or on Windows, where none is looked at, any; its
        # folder was refused for good there, --force and --resume too)
        if (previous.get("status") == "running" and owner[0] and owner[1] == platform.node()
                and not holds_lock(out / LOCK) and process_alive(owner[0])):
            raise ValueError(f"{str(out)!r} is the folder of a lab still running (process {owner[0]}); wait for it, "
                             "stop it, or choose another --out folder")
        # An unfinished sweep's finished runs, one a line (bytes: a line cut short by a kill is still a run kept).
        partial = out / "runs.jsonl"
        kept = sum(1 for line in partial.read_bytes().splitlines() if line.strip()) if partial.is_file() else 0
        if previous.get("status") != "finished" and kept and not force:
            raise ValueError(f"{str(out)!r} holds an unfinished sweep: {partial} records {kept} finished run(s); "
                             "pass --out NEW_FOLDER to keep them, or --force to replace them")
        # An unfinished lab's finished training runs, recorded in its results.json as each ended.
        status = previous.get("status")
        recorded = previous.get("runs") if status != "finished" and isinstance(previous.get("runs"), list) else []
        trained = sum(1 for run in recorded if isinstance(run, dict) and run.get("ok"))
        if resume:
            if not trained:
                raise ValueError(f"--resume: the unfinished lab in {str(out)!r} ({status}) recorded no finished "
                                 "training run to keep; leave out --resume to start again there")
            return previous
        if trained and not force:
            raise ValueError(f"{str(out)!r} holds an unfinished lab ({status}): its results.json records {trained} "
                             "finished training run(s); run the same `seqzoo lab` command with --resume to keep them "
                             "and train only the rest, or pass --out NEW_FOLDER to keep them, or --force to replace "
                             "them")
        if status != "finished":
            log(f"replacing the unfinished lab run in {out} (status: {status})")
        # Only what a lab wrote: a seq2seq or bidirectional report beside it (or any other file) stays, and so do
        # their run folders under runs/ (a lab's own are runs/<architecture>/). results.json goes last: it is what
        # marks the folder as a lab's, so a replacement stopped half-way (Ctrl-C) can be replaced again with --force.
        for name in sorted(LAB_OUTPUTS, key=lambda name: name == "results.json"):
            path = out / name
            if name == "runs" and path.is_dir() and not path.is_symlink():
                _remove_lab_runs(path, previous)
            elif path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return None


def remove_stopped_report(out: Path) -> None:
    """Before a resumed lab trains (its settings checked): remove what the stopped lab in ``out`` wrote of a report
    (a report or plots it got to before it stopped). Its results.json and runs/ stay: the runs the resumed lab
    keeps."""
    for name in LAB_OUTPUTS:
        path = out / name
        if name not in ("results.json", "runs") and (path.is_file() or path.is_symlink()):
            path.unlink()


def _remove_lab_runs(runs: Path, previous: dict[str, Any]) -> None:
    """Delete the run folders a lab or sweep wrote under ``runs`` (``runs/<architecture>/``: every registered
    architecture, and those the earlier results name), then ``runs`` itself if nothing else is left in it."""
    import shutil

    import seqzoo

    presets = previous.get("presets")
    names = set(seqzoo.list_architectures()) | (set(presets) if isinstance(presets, dict) else set())
    for name in names:
        folder = runs / name
        if Path(name).name == name and name not in ("", ".", "..") and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
    if not any(runs.iterdir()):
        runs.rmdir()


# What `seqzoo lab` and `seqzoo lab sweep` write into their folder (and all that a replacement removes).
LAB_OUTPUTS = ("results.json", "results.json.partial", "report.md", *PLOT_FILES, "runs", "sweep.md", "runs.jsonl")


def check_report_folder(out: Path, results_file: str, what: str, force: bool,
                        files: tuple[str, ...] = (), run_folders: tuple[str, ...] = ()) -> list[str]:
    """The guard of a lab that writes its report beside others (``seqzoo lab seq2seq``, ``bidirectional``): ``out``
    must be a folder, and one holding this lab's ``results_file`` (a finished report, or the runs an unfinished one
    recorded, :func:`record_stopped`), or any of the other ``files`` or ``run_folders`` this run writes (its report,
    figures and runs, which it would write over), is replaced only with ``force``; a folder named as one of the
    ``files`` never is. Returns the names of those ``out`` holds (for :func:`remove_previous_report`)."""
    check_out_folder(out)
    refuse_folders_named_as(out, files, what)
    held = [name for name in (*files, *run_folders) if (out / name).exists() or (out / name).is_symlink()]
    if held and not (out / results_file).is_file() and not force:
        # (a file of the user's under a name the lab writes: it was written over without a word)
        raise ValueError(f"{str(out)!r} already holds {', '.join(held)}, which this {what} lab writes, without its "
                         f"{results_file}; pass --out NEW_FOLDER to keep them, or --force to replace them")
    if (out / results_file).is_file() and not force:
        try:
            previous = json.loads((out / results_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            previous = None
        status = previous.get("status") if isinstance(previous, dict) else None
        if status in ("running", "interrupted", "failed"):  # (one written before statuses was a finished report)
            runs = previous.get("runs")
            done = sum(1 for run in runs if isinstance(run, dict) and run.get("ok")) if isinstance(runs, list) else 0
            stopped = f"{status}: {previous['error']}" if isinstance(previous.get("error"), str) else status
            raise ValueError(f"{str(out)!r} holds an unfinished {what} lab ({stopped}): its {results_file} records "
                             f"{done} finished training run(s); pass --out NEW_FOLDER to keep them, or --force to "
                             "replace them (this lab has no --resume)")
        raise ValueError(f"{str(out)!r} already holds a {what} lab report ({results_file}); pass --out NEW_FOLDER "
                         "to keep it, or --force to replace it")
    return held


def record_stopped(path: Path, results: dict[str, Any], err: BaseException, log: Callable[[str], None],
                   what: str) -> None:
    """Mark the results file ``path`` of a lab that writes its report beside others as stopped by ``err``,
    keeping the ``runs`` of ``results`` (without the report's Markdown, if it got that far), and say so."""
    kept = {name: value for name, value in results.items() if name != "markdown"}
    write_results(path, {**kept, **stopped_status(err)})
    finished = sum(1 for run in results["runs"] if run.get("ok"))
    log(f"the {what} lab stopped ({stopped_status(err).get('error', 'interrupted')}) before its report; its "
        f"{finished} finished training run(s) are kept in {path} (this lab has no --resume)")


def remove_previous_report(out: Path, results_file: str, files: tuple[str, ...], patterns: tuple[str, ...],
                           run_folder: Callable[[dict[str, Any]], str], held: Iterable[str] = ()) -> None:
    """Before a lab that writes its report beside others replaces its own (``--force``): delete what that report
    wrote, so that a run with fewer tasks or models leaves none of the earlier figures or run folders behind. That
    is ``files``, whatever matches ``patterns`` (per-task figures), and the run folder under ``runs/`` of every run
    the earlier results list (``run_folder(run)`` names it; a name that is not a single folder name, as an edited
    file could hold, is left alone, as are runs an unreadable results file no longer lists). ``held``
    (:func:`check_report_folder`'s, without a results file beside them: ``--force`` replaces them) are removed where
    they are files or links: the report and figures are written in place, so a link of such a name to a file
    elsewhere had that file overwritten (a run folder of the user's is replaced by the run that trains into it)."""
    import shutil

    previous = out / results_file
    removed = [out / name for name in held]
    if previous.is_file():
        try:
            runs = json.loads(previous.read_text(encoding="utf-8")).get("runs", [])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            runs = []
        for run in runs if isinstance(runs, list) else []:
            try:
                name = run_folder(run)
            except (KeyError, TypeError, AttributeError):
                continue
            folder = out / "runs" / name
            if name not in ("", ".", "..") and Path(name).name == name and folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)
        removed += [out / name for name in files] + [path for pattern in patterns for path in out.glob(pattern)]
    for path in removed:
        if path.is_file() or path.is_symlink():
            path.unlink()
