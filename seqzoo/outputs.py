"""Final outputs that appear whole or not at all, and write errors that say what happened.

``seqzoo new``, ``seqzoo train``, ``seqzoo publish --dry-run``, ``seqzoo convert`` and ``seqzoo export`` build
their folder in a temporary sibling (``.<name>.<random>.partial``, on the same filesystem) and move it into place
only when every file is written:

- a destination that does not exist, or an empty folder, is replaced by one rename (atomic) -- but the folder the
  process stands in (``seqzoo new lstm-tiny .``), which receives the files as below; a link to a folder stands for
  the folder it names, staged beside that folder; ``..`` is read as the file system reads it (:func:`physical_path`);
- an existing folder that keeps other files (a training run's folder holds ``checkpoints/`` and
  ``metrics.jsonl``; ``seqzoo new --force``) receives the files one rename each, ``config.json`` last, so a
  folder never shows a ``config.json`` whose weights are missing or half-written; a second process merging into the
  same folder meanwhile waits until the first has moved its files in (``.seqzoo-writing.lock`` in the folder);
- a model written over another (``seqzoo new --force``, ``replaces=``) first removes the old model's files that the
  new one does not write (a shard index and its shards, an adapter, another tokenizer's files), its ``config.json``
  first: a folder shows either no ``config.json`` or one that loads exactly the new model.

A failed write (a read-only folder, a full disk) removes the partial folder and raises :class:`OutputError`, an
``OSError`` whose message names the destination and the reason in one line (a file of the partial folder by the path
it was to have: the partial folder's random name is gone by the time the message is read).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

LAST = "config.json"  # the file whose presence makes a folder a model folder


class OutputError(OSError):
    """An output could not be written; nothing partial was left at the destination."""


def write_errors() -> tuple[type[BaseException], ...]:
    """What a failed write raises: OSError from Python, SafetensorError from the safetensors writer (a Rust
    io::Error, e.g. ``StorageFull``, that is not an OSError)."""
    from safetensors import SafetensorError

    return OSError, SafetensorError


def describe(err: BaseException) -> str:
    """One line for a failed write: ``[Errno 28] No space left on device: 'x'`` -> ``No space left on device ('x')``."""
    if isinstance(err, OSError) and err.strerror:
        where = err.filename if err.filename is not None else None
        return f"{err.strerror} ({where})" if where else err.strerror
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    # safetensors reports the OS error inside its own message: "... I/O error: ... (os error 28)".
    code = re.search(r"(?:os error|code:) (\d+)", text)
    return os.strerror(int(code.group(1))) if code else text


def dangling_link(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be made a folder where it is a link to nothing (a folder on a drive not mounted, one
    deleted since): the rename over it or ``mkdir`` failed with "Not a directory" or "File exists", naming neither
    the link nor where it points. None where it is not such a link."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"it is a link to {os.readlink(path)}, which does not exist; make that folder, or remove the link"
    return None


def check_named(destination: str | os.PathLike, what: str) -> None:
    """Refuse an empty or blank folder name (an unset shell variable, ``seqzoo new lstm-tiny "$DIR"``):
    ``Path("")`` is the current folder, where the output would land, and with ``--force`` replace its model, unasked.
    ``"."`` names the current folder on purpose and is taken."""
    if isinstance(destination, str) and not destination.strip():
        raise ValueError(f"{what} {destination!r} is an empty name; pass the folder to write to (new or empty)")


SIBLING_STEM_BYTES = 100  # a hidden sibling's name holds its folder's name and up to ~90 bytes more, within 255


def sibling_stem(name: str) -> str:
    """``name`` as a hidden sibling's name holds it (``.NAME.<random>.partial``, a run's ``.NAME.replaced-...``): a
    name of more than 100 bytes (a folder name may have 255) is cut to 80 and given a hash of the whole, so that the
    sibling's name stays within the file system's 255 bytes and still tells two long names apart."""
    encoded = os.fsencode(name)
    if len(encoded) <= SIBLING_STEM_BYTES:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:16]
    return f"{encoded[:80].decode('utf-8', 'ignore')}~{digest}"  # (a letter cut in two is left out)


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first) that are empty, as a failed write found the path before it made them."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # (not empty: something else was written there meanwhile; or gone already)
            return


def physical_path(path: str | os.PathLike) -> Path:
    """``path`` made absolute as the file system reads it: its folder with links followed, then its own name (a link
    of that name stays one). ``os.path.abspath`` dropped ``..`` with the name before it, so ``link/../out``, which
    every file operation (and so a training run's checkpoints) reads as the folder beside the one the link names,
    was written beside the link. ``"."``, ``""`` and a name ``..`` are their folder (none names one to stage
    beside)."""
    path = Path(path).absolute()
    if path.name in ("", ".."):
        return Path(os.path.realpath(path))
    return Path(os.path.realpath(path.parent)) / path.name


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or inside it, as the file system has it: each existing folder on ``path``'s way
    up is compared with ``folder`` as a file (``os.path.samestat``), so that another name for the same folder counts:
    another letter case on macOS (whose file system takes ``Runs/A`` for ``runs/a``, and whose path resolution keeps
    the case given), a bind mount. Compared by resolved names where ``folder`` does not exist."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    try:
        seen = folder.stat()
    except OSError:
        return folder == path or folder in path.parents
    for above in (path, *path.parents):
        with contextlib.suppress(OSError):
            if os.path.samestat(above.stat(), seen):
                return True
    return False


@contextlib.contextmanager
def staged_folder(destination: str | os.PathLike, *, merge: bool = False,
                  replaces: Iterable[str] | Callable[[], Iterable[str]] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``destination``; on success move its files into ``destination``.

    ``merge=False``: ``destination`` must be missing or an empty folder, and appears in one rename. ``merge=True``:
    files are renamed into an existing folder one by one, ``config.json`` last (see the module docstring).
    ``replaces``: names of files in ``destination`` (the model it held, see ``seqzoo.hub.publishing.model_files``)
    that are removed before the new files move in, unless a new file takes their name; a function giving them is
    called once this process holds the folder, so that what another process moved in meanwhile is replaced too.
    """
    try:
        destination = physical_path(destination)
        if destination.is_symlink() and destination.is_dir():
            # A link to a folder: the files go into the folder it names, staged beside that folder (its rmdir failed
            # with "Not a directory", and the rename would replace the link, not fill the folder)
            destination = destination.resolve()
        if not merge and destination.is_dir() and Path.cwd().is_relative_to(destination):
            merge = True  # (replacing the folder a shell stands in would leave it in a deleted one, showing nothing)
    except FileNotFoundError:  # (the folder the process stands in was deleted: a relative path fails below)
        destination = Path(destination)
    dangling = dangling_link(destination)
    if dangling is not None:
        raise OutputError(f"cannot write {destination}: {dangling}")
    parent = destination if merge else destination.parent
    # (the folders of the path made here: a failed write removes them again, where they are still empty)
    made = [folder for folder in (parent, *parent.parents) if not folder.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{sibling_stem(destination.name)}.", suffix=".partial", dir=parent))
    except OSError as err:
        # A file where a folder of the path should be: "File exists (/x/file)" said neither which nor why.
        blocker = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
        # mkdtemp names the partial folder it tried to make; the folder it could not make it in is what to fix.
        tried = Path(os.fsdecode(err.filename)) if isinstance(err.filename, (str, os.PathLike)) else parent
        shown = _named_as(err, tried, parent) if tried.parent == parent and tried.name.endswith(".partial") else err
        reason = f"{blocker} is a file, not a folder" if blocker is not None else describe(shown)
        _remove_empty(made)
        raise OutputError(f"cannot write {destination}: {reason}") from err
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private to the user; a model folder is not
        fsync_tree(staging)  # the rename must not become visible before the files are on disk
        if merge:
            with _merging(destination):
                _move_files(staging, destination, tuple(replaces() if callable(replaces) else replaces))
        else:
            try:
                if destination.exists():
                    destination.rmdir()  # raises unless empty: a non-empty destination is the caller's mistake
                os.replace(staging, destination)
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # (the callers found it new or empty: another process has written there since, two `seqzoo new`
                # into one folder at once; the first to finish keeps it whole, and this one says so)
                raise OutputError(f"cannot write {destination}: it is no longer empty (another process wrote there "
                                  "while this one was writing); nothing was left there") from err
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(made)
        if isinstance(err, write_errors()) and not isinstance(err, OutputError):
            reason = describe(_named_as(err, staging, destination))
            raise OutputError(f"cannot write {destination}: {reason}; nothing was left there") from err
        raise


MERGING = ".seqzoo-writing.lock"  # in a folder while files are renamed into it (see _merging)
MERGE_WAIT_SECONDS = 60.0


@contextlib.contextmanager
def _merging(destination: Path) -> Iterator[None]:
    """Hold ``destination`` while files are renamed into it (:data:`MERGING`): two processes merging into one folder
    at once (two ``seqzoo new --force``, a converter and ``seqzoo new``) interleaved their renames, and the folder held
    one's ``config.json`` beside the other's weights. A second writer waits for the first (renames take milliseconds,
    up to :data:`MERGE_WAIT_SECONDS`), then moves its own files in: the last to write is the model the folder holds."""
    lock = destination / MERGING
    waited_until = time.monotonic() + MERGE_WAIT_SECONDS
    while True:
        try:
            take_lock(lock, destination, "the folder of a seqzoo command", "another folder")
            break
        except ValueError:
            if time.monotonic() > waited_until:
                raise
            time.sleep(0.05)
    try:
        yield
    finally:
        release_lock(lock)


def _named_as(err: BaseException, partial: Path, shown_as: Path) -> BaseException:
    """``err`` naming ``shown_as`` (or the file in it) where it named the partial folder ``partial`` (or the file in
    it): that folder's random name is gone by the time the message is read."""
    if not (isinstance(err, OSError) and isinstance(err.filename, (str, os.PathLike))):
        return err
    path = Path(os.fsdecode(err.filename))
    if path != partial and partial not in path.parents:
        return err
    return OSError(err.errno, err.strerror, str(shown_as / path.relative_to(partial)))


def _move_files(staging: Path, destination: Path, replaces: tuple[str, ...] = ()) -> None:
    names = sorted(p.name for p in staging.iterdir())
    ordered = [n for n in names if n != LAST] + ([LAST] if LAST in names else [])
    for name in ordered:  # every name before any file moves: new weights beside the old config.json otherwise
        target = destination / name
        if target.is_dir() and not (staging / name).is_dir():
            raise OutputError(f"cannot write {target}: a folder of that name is in the way")
    # The old model's config.json goes first (the folder is no model while its files go), then what the new model
    # does not overwrite: a stale shard index or adapter would be read with the new weights.
    stale = [n for n in replaces if n not in names or n == LAST]
    for name in sorted(stale, key=lambda n: n != LAST):
        target = destination / name
        if target.is_symlink() or target.is_file():
            target.unlink()
    for name in ordered:
        target = destination / name
        if (staging / name).is_dir() and target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(staging / name, target)
    staging.rmdir()


def fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and the folder itself to disk (power loss, not just a killed process). On
    Windows a file is flushed through a handle that may write (FlushFileBuffers refuses a read-only one: "Bad file
    descriptor"), one it holds read-only (copied with that attribute) is left to it, and the folder is not flushed:
    Windows opens no folder as a file ("Permission denied"). Both failed every staged write and checkpoint there."""
    windows = os.name == "nt"
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not (windows and not os.access(path, os.W_OK)):
            with open(path, "r+b" if windows else "rb") as handle:
                os.fsync(handle.fileno())
    if windows:
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a file beside it, then renamed over it): a process killed while
    writing leaves the file it had (a lab's marker, a run's metrics.jsonl), not a truncated one. The file beside it
    is made anew ("x": never opened through a link of that name, which would write the text into the file it points
    to, nor into one left by a killed process)."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    with open(partial, "x", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)


# A claim: a lock file (``pid host``) that holds a folder for one process while it writes there (``seqzoo lab``'s
# ``.seqzoo-lab.lock`` in its folder, ``seqzoo train``'s ``.NAME.training.lock`` beside its output_dir), made whole or
# not at all, so that of two processes started on one folder at the same moment one goes on and the other is refused
# (each had checked the folder and found it free). A lock whose process has ended (killed, the machine restarted) is
# stale and taken over.
_HELD: set[Path] = set()  # the locks this process holds


def take_lock(lock: Path, folder: Path, held_as: str, elsewhere: str) -> None:
    """Create ``lock``, claiming ``folder`` for this process, or raise ValueError naming the process that holds it
    and the lock (``held_as``, "the folder of a lab", and ``elsewhere``, what to choose instead, word the message). A
    lock naming this process's id that this process does not hold is stale too: left by an earlier process given the
    same id (in a container started again, the same program gets the same process id)."""
    mine = f"{os.getpid()} {platform.node()}\n"
    staged = lock.with_name(f"{lock.name}.{os.getpid()}")
    staged.write_text(mine, encoding="utf-8")
    try:
        for _ in range(5):
            try:
                _create_whole(staged, lock, mine)
                _HELD.add(lock)
                return
            except FileExistsError:
                pass
            seen = _read_lock(lock)
            if seen is None:  # (released between the two calls)
                continue
            pid, host = _lock_owner(seen)
            if host is not None and host != platform.node():
                raise ValueError(f"{str(folder)!r} is {held_as} running on {host} (process {pid}); wait "
                                 f"for it or choose {elsewhere} (if none runs there, delete {lock})")
            if process_alive(pid) and (str(pid) != str(os.getpid()) or lock in _HELD):
                raise ValueError(f"{str(folder)!r} is {held_as} still running (process {pid}); wait for "
                                 f"it, stop it, or choose {elsewhere} (if none runs, the process id being another "
                                 f"program's now, delete {lock})")
            # Stale (its process ended): moved aside, then checked, for another process may have taken it over since.
            aside = lock.with_name(f"{lock.name}.stale.{os.getpid()}")
            try:
                os.replace(lock, aside)
            except FileNotFoundError:
                continue
            moved = _read_lock(aside)
            if moved != seen:  # (a live lock taken since: put back)
                with contextlib.suppress(FileExistsError):
                    _create_whole(aside, lock, moved or "")
                aside.unlink(missing_ok=True)
                raise ValueError(f"{str(folder)!r} is {held_as} still running (process "
                                 f"{_lock_owner(moved or '')[0]}); wait for it, stop it, or choose {elsewhere}")
            aside.unlink(missing_ok=True)
        raise ValueError(f"could not claim {str(folder)!r}: other processes start and stop there at this moment; "
                         f"choose {elsewhere}")
    finally:
        staged.unlink(missing_ok=True)


def _create_whole(staged: Path, lock: Path, text: str) -> None:
    """Create ``lock`` holding ``text`` (written to ``staged`` already), or raise FileExistsError: a hard link, which
    makes it with its text in one step (the check and the claim too); on a file system without hard links, created
    exclusively and then written."""
    try:
        os.link(staged, lock)
    except FileExistsError:
        raise
    except OSError:  # (no hard links there: EPERM, ENOTSUP)
        descriptor = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)


def holds_lock(lock: Path) -> bool:
    """Whether this process holds ``lock`` (:func:`take_lock`)."""
    return lock in _HELD


def release_lock(lock: Path) -> None:
    """Remove ``lock``, which :func:`take_lock` made."""
    _HELD.discard(lock)
    lock.unlink(missing_ok=True)


def _read_lock(lock: Path) -> str | None:
    try:
        return lock.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None


def _lock_owner(text: str) -> tuple[str | None, str | None]:
    """``pid host`` -> (pid, host); an unreadable lock (an edited file) names no process, and counts as stale."""
    pid, _, host = text.strip().partition(" ")
    return (pid or None), (host or None)


def process_alive(pid: object) -> bool:
    """Whether process ``pid`` (of this host) exists; False for no process id at all (an edited file). On Windows,
    where ``os.kill`` ends the process it names whatever the signal, any process id counts as alive: a lock left by
    a process that has ended is then named for the user to delete rather than taken over."""
    if os.name == "nt":
        try:
            return int(pid) > 0
        except (ValueError, TypeError):
            return False
    try:
        os.kill(int(pid), 0)  # (signal 0: only asks whether the process exists)
    except PermissionError:  # a process of another user
        return True
    except (ProcessLookupError, OverflowError, ValueError, TypeError):
        return False
    return True

