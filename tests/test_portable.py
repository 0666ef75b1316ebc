"""What differs on Windows and macOS, simulated here: Windows' text files (open() without encoding= reads and writes
cp1252, and writes "\\r\\n" for "\\n"), a console or redirected output in cp1252, a checkout with Windows line
ends, Windows' os.open and os.fsync, its process ids (no process looked at), and one folder by two names (macOS's
letter case; a bind mount here)."""

from __future__ import annotations

import builtins
import io
import json
import os

import pytest

import seqzoo
from tests.conftest import tiny_model


@pytest.fixture
def windows_text_files(monkeypatch):
    """open(), Path.read_text / write_text and os.fdopen as on Windows (Python's default there until 3.15): a file
    opened in text mode without an encoding is cp1252, and a "\\n" written is "\\r\\n" on disk."""
    real_open = io.open

    def windows_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True,
                     opener=None):
        if "b" not in mode:
            encoding = "cp1252" if encoding in (None, "locale") else encoding
            if newline is None and any(flag in mode for flag in "wax+"):
                newline = "\r\n"
        return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)

    monkeypatch.setattr(io, "open", windows_open)
    monkeypatch.setattr(builtins, "open", windows_open)


def cp1252_output(monkeypatch):
    """Standard output as Windows gives it redirected to a file or a pipe (``seqzoo lab gradients > out.txt``)."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="cp1252", write_through=True)
    monkeypatch.setattr("sys.stdout", stream)
    return raw


def test_the_lab_report_is_written_as_utf8_on_windows(tmp_path, monkeypatch, windows_text_files):
    """report.md was written in the locale's encoding: on Windows the lab failed at its very end, 'charmap' codec
    can't encode '→' (its summary table's header), after every run had trained; seq2seq.md, bidirectional.md,
    sweep.md and gradients.md were written so too."""
    from seqzoo.lab import plots
    from seqzoo.lab.report import write_report
    from tests.lab.test_lab_figures import _lab_results

    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    write_report(_lab_results(), tmp_path)
    assert "state bytes / seq @ 16 → 256 tokens" in (tmp_path / "report.md").read_bytes().decode("utf-8")


def test_the_model_cards_prose_in_the_lab_report_is_read_as_utf8_on_windows(windows_text_files):
    """hub_cards/*.md (UTF-8) were read in the locale's encoding: on Windows the lab report quoted RWKV-7's card as
    'a 64 Ã— 64 matrix' and the Transformer's with 'â€”' for its dash."""
    from seqzoo.lab.findings import how_it_remembers

    text = how_it_remembers("rwkv7")
    assert "×" in text and "Ã" not in text
    assert "—" in how_it_remembers("transformer")


def test_publishing_reads_a_config_json_as_utf8_on_windows(tmp_path, windows_text_files):
    """A config.json holding text that is not ASCII as it is (labels in Russian, written by an editor or a tool with
    ensure_ascii=False: transformers itself reads it as UTF-8) was read in the locale's encoding: on Windows
    publish / export_folder refused it as 'not valid JSON ... save the model again'."""
    from seqzoo.hub import export_folder

    model = tiny_model("lstm-tiny", vocab_size=258)
    model.save_pretrained(tmp_path / "model")
    seqzoo.byte_tokenizer().save_pretrained(tmp_path / "model")
    config_file = tmp_path / "model" / "config.json"
    config = json.loads(config_file.read_bytes())
    config["label2id"], config["id2label"] = {"сильный": 0, "слабый": 1}, {"0": "сильный", "1": "слабый"}
    config_file.write_bytes(json.dumps(config, ensure_ascii=False).encode("utf-8"))
    out = export_folder(tmp_path / "model", tmp_path / "hub", repo_id="someone/lstm")
    assert json.loads((out / "config.json").read_bytes())["id2label"] == {"0": "сильный", "1": "слабый"}


def test_help_prints_on_a_cp1252_output(monkeypatch):
    """`seqzoo lab --help` redirected on Windows failed with a traceback, 'charmap' codec can't encode characters
    (the gradients command's help: ‖∂ loss(last) / ∂ input(t)‖). Every command's help is ASCII."""
    import argparse

    from seqzoo.cli import build_parser, main

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    assert [p.prog for p in parsers(build_parser()) if not p.format_help().isascii()] == []
    raw = cp1252_output(monkeypatch)
    with pytest.raises(SystemExit) as stopped:
        main(["lab", "--help"])
    assert stopped.value.code == 0 and b"gradients" in raw.getvalue()


def test_an_output_that_cannot_print_is_named_by_its_code_page(monkeypatch):
    """cp1252's codec calls itself 'charmap' in its errors: the line read "the output's encoding is charmap"."""
    from seqzoo.cli import describe_error

    cp1252_output(monkeypatch)
    with pytest.raises(UnicodeEncodeError) as raised:
        print("→")
    assert "the output's encoding is cp1252; set PYTHONIOENCODING=utf-8" in describe_error(raised.value)


def test_lab_gradients_prints_its_table_on_a_cp1252_output(tmp_path, monkeypatch, windows_text_files):
    """`seqzoo lab gradients` redirected on Windows printed 'error: cannot print ...' once its gradients were
    measured, and wrote no gradients.md (the table's header held ‖∂L/∂x‖, its empty cells an en dash)."""
    from seqzoo.cli import main
    from seqzoo.lab import plots

    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)  # (seconds; the figure is no text)
    raw = cp1252_output(monkeypatch)
    out = tmp_path / "g"
    assert main(["lab", "gradients", "--architectures", "lstm", "--length", "8", "--out", str(out)]) == 0
    assert b"norm of dL/dx at distance 0" in raw.getvalue()
    assert "Gradient reach" in (out / "gradients.md").read_bytes().decode("utf-8")


def test_a_bundle_from_a_checkout_with_windows_line_ends_loads(tmp_path, monkeypatch, windows_text_files):
    """seqzoo installed from a checkout with Windows line ends (git's autocrlf): its modules' "\\r\\n" beside the
    rewritten imports' "\\n", written in text mode on Windows, became "\\r\\r\\n", so every bundled file read with a
    blank line after each line, and Mamba-2's (lines ending in a backslash) failed to load with a SyntaxError.
    A bundle's files are the same bytes on every system."""
    from seqzoo.hub import bundle

    real_source_file = bundle._source_file

    def windows_checkout(module):
        path = real_source_file(module)
        copy = tmp_path / "checkout" / f"{module}.py"
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
        return copy

    monkeypatch.setattr(bundle, "_source_file", windows_checkout)
    built = bundle.build_bundle(seqzoo.get_architecture("mamba2"))
    (tmp_path / "bundle").mkdir()
    for path in built.write(tmp_path / "bundle"):
        source = path.read_bytes()
        assert b"\r" not in source, path.name
        compile(source, str(path), "exec")


def test_a_staged_folder_is_flushed_as_windows_allows(tmp_path, monkeypatch):
    """fsync_tree flushed each file through a read-only handle, which Windows' FlushFileBuffers refuses ('Bad file
    descriptor'), and then opened the folder itself, which Windows opens as no file ('Permission denied'): every
    staged write (seqzoo new, convert, export, a run's final save) and every checkpoint failed there."""
    import fcntl
    import stat

    from seqzoo import outputs

    real_open, real_fsync = os.open, os.fsync

    def windows_os_open(path, flags, *args, **kwargs):
        if stat.S_ISDIR(os.stat(path).st_mode):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    def windows_fsync(descriptor):
        if fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(9, "Bad file descriptor")
        real_fsync(descriptor)

    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "weights.bin").write_bytes(b"123")
    (folder / "copied.json").write_text("{}")
    (folder / "copied.json").chmod(0o444)  # (Windows' read-only attribute, which copy2 carries from a source)
    monkeypatch.setattr(os, "open", windows_os_open)
    monkeypatch.setattr(os, "fsync", windows_fsync)
    name, os.name = os.name, "nt"  # (set for the call alone: pathlib and pytest's own reporting read os.name)
    try:
        outputs.fsync_tree(folder)
    finally:
        os.name = name
    assert (folder / "sub" / "weights.bin").read_bytes() == b"123"


@pytest.mark.parametrize("windows", [False, True], ids=["process-id-reused", "windows"])
def test_a_killed_labs_folder_is_taken_once_its_claim_is(tmp_path, monkeypatch, windows):
    """A lab killed leaves its results.json 'running' with its process id. Once the next lab holds the folder (the
    killed lab's lock taken over, or on Windows deleted by the user as its refusal says), that lab has ended; but its
    process id, alive (given to another program, or any on Windows, where seqzoo looks at no process), refused the
    folder for good: 'the folder of a lab still running', with --force and --resume too."""
    import platform

    from seqzoo.lab import folders

    if windows:
        monkeypatch.setattr(folders, "process_alive", lambda pid: True)  # (outputs.process_alive's answer there)
    out = tmp_path / "lab"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"status": "running", "environment": {
        "command": "seqzoo lab", "pid": os.getppid(), "host": platform.node()}}))
    with folders.claim_output(out):
        folders.prepare_output(out, force=True, log=lambda line: None)
    assert not (out / "results.json").exists()


@pytest.fixture
def one_folder_two_names(tmp_path):
    """A folder reachable by two names that no path resolution makes one, as on macOS, whose file system takes
    ``Runs/A`` for ``runs/a`` while Python's resolve() keeps the case given (here a bind mount: it needs root)."""
    import subprocess

    real, other = tmp_path / "real", tmp_path / "other"
    real.mkdir()
    other.mkdir()
    if subprocess.run(["mount", "--bind", str(real), str(other)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount a folder here (needs root in a container)")
    yield real, other
    subprocess.run(["umount", str(other)], check=True)


def test_force_knows_a_run_folder_by_another_name(one_folder_two_names, monkeypatch):
    """--force compared resolved names: a run folder given in another letter case on macOS was not the current
    folder, nor the folder holding the run's data or recipe, so --force deleted the folder the shell stood in, the
    corpus the new run had just read, or the recipe file given."""
    from seqzoo.training import train
    from seqzoo.training.cli import _refuse_deleting_the_recipe
    from tests.training.test_trainer import make_recipe

    real, other = one_folder_two_names
    (real / "a").mkdir()
    (real / "a" / "recipe.yaml").write_text("an earlier run's\n")
    (real / "a" / "corpus.txt").write_text("the cat sat on the mat. " * 200)
    corpus = {"source": "text", "path": str(other / "a" / "corpus.txt"), "seq_len": 16}
    with pytest.raises(ValueError, match=r"which holds this run's data \(data.path="):
        train(make_recipe(real, "a", data=corpus), progress=False, force=True)
    monkeypatch.chdir(other / "a")
    with pytest.raises(ValueError, match="which is the current folder, one of its parents or the home folder"):
        train(make_recipe(real, "a"), progress=False, force=True)
    assert sorted(path.name for path in (real / "a").iterdir()) == ["corpus.txt", "recipe.yaml"]
    # (seqzoo train other/a/mine.yaml --output-dir real/a --force deleted the recipe file given with the old run)
    (real / "a" / "mine.yaml").write_text("model:\n  preset: lstm-tiny\n")
    with pytest.raises(ValueError, match="which holds the recipe file given"):
        _refuse_deleting_the_recipe(str(other / "a" / "mine.yaml"), str(real / "a"))
    _refuse_deleting_the_recipe(str(other / "a" / "recipe.yaml"), str(real / "a"))  # (the run's own: written again)
