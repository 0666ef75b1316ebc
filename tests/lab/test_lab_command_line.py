"""`seqzoo lab` as a user types it: a bad option value is named as typed (not by the lab setting it fills), and
Ctrl-C while the workers are still starting stops the lab with its one-line message."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqzoo.cli import main
from seqzoo.lab import runner
from seqzoo.lab.runner import LabConfig, run_lab
from tests.conftest import python_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv, message", [
    (["lab", "--steps", "0"], "seqzoo lab: argument --steps: 0 is out of range: a number of training steps >= 1"),
    (["lab", "--smoke", "--text-steps", "-2"],
     "seqzoo lab: argument --text-steps: -2 is out of range: a number of training steps >= 1"),
    (["lab", "--lr", "0"], "seqzoo lab: argument --lr: 0 is out of range: a learning rate in (0, 1)"),
    (["lab", "--lr", "nan"], "seqzoo lab: argument --lr: nan is out of range: a learning rate in (0, 1)"),
    (["lab", "--distances", "0", "4"],
     "seqzoo lab: argument --distances: 0 is out of range: a distance in tokens >= 1"),
    (["lab", "--distances", "4", "16", "4"], "seqzoo lab: argument --distances: 4 given more than once: give each "
                                             "value once"),
    (["lab", "--seeds", "1", "1"], "seqzoo lab: argument --seeds: 1 given more than once"),
    (["lab", "--tasks", "copy", "induction", "copy"], "seqzoo lab: argument --tasks: copy given more than once"),
    (["lab", "gradients", "--length", "1"],
     "seqzoo lab gradients: argument --length: 1 is out of range: a sequence length >= 2 tokens"),
    (["lab", "seq2seq", "--steps", "0"], "seqzoo lab seq2seq: argument --steps: 0 is out of range: a number of "
                                         "training steps >= 1"),
    (["lab", "seq2seq", "--tasks", "reverse", "reverse"], "seqzoo lab seq2seq: argument --tasks: reverse given more "
                                                          "than once"),
    (["lab", "bidirectional", "--steps", "0"], "seqzoo lab bidirectional: argument --steps: 0 is out of range"),
    (["lab", "bidirectional", "--distances", "1"],
     "seqzoo lab bidirectional: argument --distances: 1 is out of range: a number of words >= 2"),
    (["lab", "bidirectional", "--distances", "8", "8"], "seqzoo lab bidirectional: argument --distances: 8 given "
                                                        "more than once"),
    (["lab", "bidirectional", "--tasks", "first_letter", "first_letter"],
     "seqzoo lab bidirectional: argument --tasks: first_letter given more than once"),
    (["lab", "sweep", "--rates", "0.01", "1.5"], "seqzoo lab sweep: argument --rates: 1.5 is out of range: a "
                                                 "learning rate in (0, 1)"),
    (["lab", "sweep", "--rates", "0.01", "0.01"], "seqzoo lab sweep: argument --rates: 0.01 given more than once"),
    # The option given twice adds to its list, so a value in both is a repeat too.
    (["lab", "--distances", "4", "16", "--distances", "4"], "seqzoo lab: argument --distances: 4 given more than once"),
])
def test_a_bad_option_value_is_named_as_typed(argv, message, capsys, monkeypatch):
    """`seqzoo lab --steps 0` said "lab setting task_steps=0 is invalid": the setting the option fills, which the
    user never typed (and --distances 4 4 "lab setting distances=[4, 4]", from inside the lab)."""
    def no_lab(*args, **kwargs):
        raise AssertionError("the lab started with a bad option value")

    for module, name in (("seqzoo.lab.runner", "run_lab"), ("seqzoo.lab.seq2seq", "run_seq2seq_lab"),
                         ("seqzoo.lab.bidirectional", "run_bidirectional_lab"), ("seqzoo.lab.sweep", "run_sweep")):
        monkeypatch.setattr(f"{module}.{name}", no_lab)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {message}"), err
    assert "setting" not in err and "task_steps" not in err


@pytest.mark.parametrize("argv", [
    ["lab"], ["lab", "--smoke"], ["lab", "gradients", "--architectures", "rnn", "--length", "2"], ["lab", "seq2seq"],
    ["lab", "bidirectional"], ["lab", "sweep"],
])
@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_out_folder_is_refused_not_read_as_the_default_or_the_current_folder(argv, name, tmp_path,
                                                                                       monkeypatch, capsys):
    """`seqzoo lab --out "$DIR"` with DIR unset: the lab fell back to lab-report (``args.out or ...``) and
    `seqzoo lab gradients` wrote gradients.md into the current folder (Path("") is "."), without a word."""
    def no_lab(*args, **kwargs):
        raise AssertionError("the lab started with an empty --out")

    for module, function in (("seqzoo.lab.runner", "run_lab"), ("seqzoo.lab.seq2seq", "run_seq2seq_lab"),
                             ("seqzoo.lab.bidirectional", "run_bidirectional_lab"), ("seqzoo.lab.sweep", "run_sweep")):
        monkeypatch.setattr(f"{module}.{function}", no_lab)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", name])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --out: {name!r} is an empty name: give the folder to write to ('.' for the current one)" in err
    assert not any(tmp_path.iterdir())


def test_a_refused_resume_names_the_options_that_differ(tmp_path, monkeypatch, capsys):
    """--resume with other options said "task_steps 6 there, 3 here" and, without --smoke, listed a dozen settings
    no option sets (batch_size, text_seq_len, ...)."""
    def stopped(jobs, workers, log, on_result, **kwargs):
        on_result({"arch": "rnn", "preset": "rnn-tiny", "task": "copy", "distances": [2], "seed": 0, "steps": 6,
                   "lr": jobs[0]["lr"], "ok": True, "accuracy": {2: 1.0}})
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_jobs", stopped)
    out = tmp_path / "lab"
    options = ["--architectures", "rnn", "--tasks", "copy", "--seeds", "0", "--distances", "2", "--out", str(out)]
    with pytest.raises(KeyboardInterrupt):
        run_lab(LabConfig.smoke(architectures=["rnn"], tasks=["copy"], seeds=[0], distances=[2]), out,
                log=lambda line: None)
    cases = [(["--smoke", "--steps", "3"], "(--steps (task_steps) 6 there, 3 here)"),
             (["--smoke", "--lr", "0.01", "--text-steps", "4"],
              "(--text-steps 6 there, 4 here; --lr not given there, 0.01 here)"),
             ([], "(--steps (task_steps) 6 there, not given here; --text-steps 6 there, not given here; --smoke "
                  "(is_smoke) given there, not given here)")]
    capsys.readouterr()
    for argv, changes in cases:
        assert main(["lab", "--resume", *options, *argv]) == 2
        assert f"ran with other settings {changes}; resume it with its own options" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"  # (touched by none)


def _first_line(process: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"`seqzoo lab` printed nothing in {timeout} s"
    return process.stdout.readline()


@pytest.mark.release_independent  # signal handling: the same on every transformers release
@pytest.mark.skipif(not hasattr(os, "killpg"), reason="Ctrl-C as a terminal sends it: to a process group (POSIX)")
def test_ctrl_c_while_the_workers_start_stops_the_lab_with_its_one_line_message(tmp_path):
    """The terminal sends Ctrl-C to its whole process group, workers included. In the first seconds of `seqzoo lab`
    they were still importing torch (they ignore SIGINT only once started), and each printed a traceback, or "Fatal
    Python error: init_import_site" where it was still in Python's start-up, under the lab's own message."""
    out, slow, hit = tmp_path / "lab", tmp_path / "slow-start", tmp_path / "a worker got the Ctrl-C"
    # Every worker's start-up made as slow as on a loaded machine, so that Ctrl-C surely lands in it: a pause in
    # Python's own start-up, where a KeyboardInterrupt is fatal. A worker that gets Ctrl-C there says so in a file
    # first: else the lab's SIGTERM could end it before it ran (and printed) anything on a busy machine, and the
    # test would pass by luck. (The lab itself is no worker: it starts at once.)
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import os, signal, sys, time\n\n"
        "def interrupted(signum, frame):\n"
        f"    open({str(hit)!r}, 'a').close()\n"
        "    raise KeyboardInterrupt\n\n"
        "if '--multiprocessing-fork' in sys.argv:\n"
        "    signal.signal(signal.SIGINT, interrupted)\n"
        "    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(1))  # (after SIGINT's handler)\n"
        "    time.sleep(4)\n"
        "    signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_DFL)\n")
    env = {**os.environ, "PYTHONPATH": python_path(slow, ROOT), "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    # A process group of its own (the terminal's, here), with Ctrl-C's default action whatever started the tests.
    process = subprocess.Popen(
        [sys.executable, "-m", "seqzoo", "lab", "--smoke", "--architectures", "rnn", "--tasks", "copy", "--seeds",
         "0", "--workers", "2", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Printed just before the workers are spawned.
        assert "training runs on 2 worker(s)" in _first_line(process, timeout=120)
        time.sleep(1.0)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        # The lab stopped its workers: nothing of its process group is left.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("a worker outlived the interrupted lab")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert process.returncode == 130, stderr
    assert not hit.exists(), stderr
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr
    assert stderr.strip().splitlines() == ["interrupted; the report folder holds no finished report; run `seqzoo lab` "
                                           "again (`seqzoo lab --resume` with the same options keeps the training "
                                           "runs that finished)"], stderr
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and results["runs"] == []  # (stopped before any run ended)
