"""`seqzoo lab` keeps every training run as it ends: a lab stopped later (Ctrl-C, a failure while measuring or
writing the report) loses no training, and `--resume` trains only what is missing."""

from __future__ import annotations

import json

import pytest

from seqzoo.cli import main
from seqzoo.lab import runner
from seqzoo.lab.runner import LabConfig, run_lab
from tests.lab.resume_checks import results as _results
from tests.lab.resume_checks import tasks_a_resume_trains


def test_a_lab_stopped_while_measuring_keeps_its_trained_runs_and_resumes_without_training_them(tmp_path,
                                                                                                 monkeypatch):
    """The runs reached results.json only after the measurements: a measurement that failed (or Ctrl-C there) lost
    every trained run, and the folder said "running" with this process's pid."""
    cfg = LabConfig.smoke(architectures=["rnn"], tasks=["copy"], seeds=[0], distances=[2], workers=1)
    out, lines = tmp_path / "lab", []

    def broken(*args, **kwargs):
        raise RuntimeError("decode timing broke")

    monkeypatch.setattr(runner, "measure_architectures", broken)
    with pytest.raises(RuntimeError, match="decode timing broke"):
        run_lab(cfg, out, log=lines.append)
    written = _results(out)
    assert written["status"] == "failed" and written["error"] == "RuntimeError: decode timing broke"
    assert sorted((run["task"], run["ok"]) for run in written["runs"]) == [("copy", True), ("text", True)]
    assert (out / "runs" / "rnn" / "text-s0" / "model.safetensors").is_file()
    assert any("2 finished training run(s) are kept in" in line and "--resume" in line for line in lines), lines
    # A rerun neither drops them without a word nor takes them without being asked.
    with pytest.raises(ValueError, match=r"unfinished lab \(failed\): its results.json records 2 finished training "
                                         r"run\(s\); run the same `seqzoo lab` command with --resume"):
        run_lab(cfg, out, log=lines.append)
    with pytest.raises(ValueError, match=r"ran with other settings \(--distances \[2\] there, \[3\] here\)"):
        run_lab(LabConfig.smoke(architectures=["rnn"], tasks=["copy"], seeds=[0], distances=[3], workers=1), out,
                log=lines.append, resume=True)

    def no_training(*args, **kwargs):
        raise AssertionError("a resumed lab trained again a run it had kept")

    # Ctrl-C while measuring a resumed lab: still nothing lost.
    monkeypatch.setattr(runner, "run_jobs", no_training)
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "measure_architectures", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_lab(cfg, out, log=lines.append, resume=True)
    assert _results(out)["status"] == "interrupted" and len(_results(out)["runs"]) == 2
    monkeypatch.undo()
    monkeypatch.setattr(runner, "run_jobs", no_training)
    results = run_lab(cfg, out, log=lines.append, resume=True)
    assert results["status"] == "finished" and results["resumed_runs"] == 2
    assert [run["losses"] for run in results["runs"]] == [run["losses"] for run in written["runs"]]
    assert results["runs"][0]["accuracy"].keys() == {2}  # (distances again, not JSON's strings)
    assert results["seconds"]["training"] >= written["seconds"]["training"]
    report = (out / "report.md").read_text()
    assert "2 of the runs were kept from an unfinished lab this one resumed (`--resume`)" in report
    assert _results(out)["status"] == "finished"


def _run(task: str, ok: bool = True) -> dict:
    return {"arch": "rnn", "preset": "rnn-tiny", "task": task, "distances": [2], "seed": 0, "steps": 6, "lr": 3e-3,
            "ok": ok, "accuracy": {2: 0.5}, "losses": [1.0], "seconds": 1.0}


def test_each_run_is_recorded_as_it_ends_and_a_rerun_keeps_or_replaces_them_only_when_told(tmp_path, monkeypatch):
    cfg = LabConfig.smoke(architectures=["rnn"], tasks=["copy"], seeds=[0], distances=[2], workers=1)
    out, seen = tmp_path / "lab", []

    def stopped(jobs, workers, log, on_result, **kwargs):
        if seen:
            raise AssertionError("a rerun replaced the runs kept, without --resume or --force")
        on_result(_run("copy"))
        seen.append(_results(out)["runs"])  # (on disk before the next run ends)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_jobs", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_lab(cfg, out, log=lambda line: None)
    assert [run["task"] for run in seen[0]] == ["copy"]
    assert _results(out)["status"] == "interrupted" and len(_results(out)["runs"]) == 1
    with pytest.raises(ValueError, match=r"records 1 finished training run\(s\).*--resume.*--force to replace them"):
        run_lab(cfg, out, log=lambda line: None)
    with pytest.raises(ValueError, match="--resume keeps the runs .* and --force replaces them; pass one"):
        run_lab(cfg, out, log=lambda line: None, resume=True, force=True)

    # --resume trains only what is missing (the text run here) and keeps the copy run it recorded.
    trained = tasks_a_resume_trains(cfg, out, monkeypatch, lambda line: None)
    assert trained == ["text"]
    assert [run["task"] for run in _results(out)["runs"]] == ["copy"]
    # A failed run is a result, not training to keep: no failed run alone makes a folder to resume.
    (out / "results.json").write_text(json.dumps({**_results(out), "runs": [_run("copy", ok=False)]}))
    with pytest.raises(ValueError, match="recorded no finished training run to keep"):
        run_lab(cfg, out, log=lambda line: None, resume=True)
    with pytest.raises(KeyboardInterrupt):  # (--force replaces it, as before)
        run_lab(cfg, out, log=lambda line: None, force=True)
    assert sorted(trained[1:]) == ["copy", "text"]


def test_resume_names_what_it_cannot_resume(tmp_path):
    cfg = LabConfig.smoke(architectures=["rnn"])
    with pytest.raises(ValueError, match=r"--resume: '.*nowhere' holds no unfinished lab to resume"):
        run_lab(cfg, tmp_path / "nowhere", log=lambda line: None, resume=True)
    assert not (tmp_path / "nowhere").exists()
    done = tmp_path / "done"
    done.mkdir()
    (done / "results.json").write_text(json.dumps({"status": "finished", "environment": {"command": "seqzoo lab"}}))
    with pytest.raises(ValueError, match="--resume: .* holds a finished lab report, nothing to resume"):
        run_lab(cfg, done, log=lambda line: None, resume=True)


def test_seqzoo_lab_resume_reaches_the_lab(monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "run_lab", lambda cfg, out, **kwargs: calls.append(kwargs) or {"runs": []})
    assert main(["lab", "--resume", "--out", "mine"]) == 0
    assert calls[0]["resume"] is True and calls[0]["force"] is False


def test_a_refused_resume_touches_nothing_of_the_stopped_lab(tmp_path, monkeypatch):
    # prepare_output deleted the stopped lab's report and plots before the settings were compared: a --resume with
    # other settings was refused after the files were gone.
    from seqzoo.lab.plots import PLOT_FILES

    cfg = LabConfig.smoke(architectures=["rnn"], tasks=["copy"], seeds=[0], distances=[2], workers=1)
    out = tmp_path / "lab"

    def stopped(jobs, workers, log, on_result, **kwargs):
        on_result(_run("copy"))
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_jobs", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_lab(cfg, out, log=lambda line: None)
    # What a lab stopped while writing its report (after its plots) leaves beside its results.json.
    written = {name: f"the stopped lab's {name}" for name in ("report.md", PLOT_FILES[0])}
    for name, text in written.items():
        (out / name).write_text(text)
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    other = LabConfig.smoke(architectures=["rnn"], tasks=["copy"], seeds=[0], distances=[3], workers=1)
    with pytest.raises(ValueError, match=r"ran with other settings \(--distances \[2\] there, \[3\] here\)"):
        run_lab(other, out, log=lambda line: None, resume=True)
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before
    # Resumed with its own settings, the stopped lab's report and plots go (the new ones replace them).
    with pytest.raises(KeyboardInterrupt):
        run_lab(cfg, out, log=lambda line: None, resume=True)
    assert not any((out / name).exists() for name in written) and (out / "results.json").is_file()
