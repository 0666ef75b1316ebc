"""`seqzoo lab seq2seq`: every code path of the bottleneck lab, in seconds."""

import json
import re
from dataclasses import asdict

import pytest

from seqzoo.lab.seq2seq import REPORT_FILE, RESULTS_FILE, Seq2SeqLabConfig, job_recipe, run_seq2seq_lab


def test_smoke_seq2seq_lab_writes_its_report_and_keeps_a_finished_one(tmp_path):
    out = tmp_path / "s2s"
    cfg = Seq2SeqLabConfig.smoke(tasks=["reverse"], workers=1)
    results = run_seq2seq_lab(cfg, out, log=lambda line: None)
    failed = [f"{run['model']}: {run['error']}" for run in results["runs"] if not run["ok"]]
    assert not failed, failed
    assert {run["model"] for run in results["runs"]} == set(cfg.models)
    report = (out / REPORT_FILE).read_text()
    assert "seq2seq-accuracy.png" in report and "seq2seq-attention-reverse.png" in report
    assert (out / "seq2seq-accuracy.png").stat().st_size > 0
    assert json.loads((out / RESULTS_FILE).read_text())["config"]["tasks"] == ["reverse"]
    assert "CPU-seconds" in report and "- **reversal**: without attention" in report  # the run's own findings
    # The smoke banner comes from --smoke, not from the number of steps.
    from seqzoo.lab.seq2seq import write_report

    assert "**Smoke run** (`--smoke`)" in report
    (tmp_path / "plain").mkdir()
    assert "**Smoke run**" not in write_report({**results, "config": {**results["config"], "is_smoke": False}},
                                               tmp_path / "plain")
    # (at 2 characters of 8 symbols, 3 steps of 8 pairs draw some of the 4 evaluation sources)
    assert re.search(r"Evaluation sources also drawn in training: 2 characters \d+%, 4 characters \d+%\.", report)
    assert all(run["cpu_seconds"] > 0 for run in results["runs"])
    # The lab keeps figures, not checkpoints (2 MB per run every 100 steps in a default run).
    job = {"model": "bahdanau", "task": "reverse", "config": asdict(cfg), "output_dir": str(tmp_path / "job")}
    assert job_recipe(job).train.save_every == 0
    maps = [run["attention"] for run in results["runs"] if "attention" in run]
    assert maps and all(m["correct"] == (m["generated"] == m["expected"]) for m in maps)
    with pytest.raises(ValueError, match="already holds a seq2seq lab report.*--force"):
        run_seq2seq_lab(cfg, out, log=lambda line: None)


@pytest.mark.parametrize("name", [REPORT_FILE, "seq2seq-attention-reverse.png", "runs/bahdanau-reverse/recipe.yaml"])
def test_a_file_under_a_name_the_lab_writes_is_kept_without_force(tmp_path, name):
    # Without the lab's results file beside it, a report or figure of that name was written over without a word, and
    # a training run's folder where a run of the lab goes was deleted (the lab's runs train with force=True).
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text("mine")
    held = name.removesuffix("/recipe.yaml")
    with pytest.raises(ValueError, match=rf"already holds {held}, which this seq2seq lab writes, .*--force"):
        run_seq2seq_lab(Seq2SeqLabConfig.smoke(tasks=["reverse"], workers=1), tmp_path, log=lambda line: None)
    assert (tmp_path / name).read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name.split("/")[0]]


def test_force_removes_the_attention_maps_of_every_task_of_the_earlier_report(tmp_path, monkeypatch):
    # (a rerun with fewer tasks leaves none of the earlier report's figures beside the new one: a task's heat maps
    # are named after it, so every seq2seq-attention-*.png goes)
    import seqzoo.lab.workers as workers
    from seqzoo.lab import plots

    (tmp_path / RESULTS_FILE).write_text('{"status": "finished", "runs": []}')
    (tmp_path / "seq2seq-attention-copy.png").write_bytes(b"the earlier report's")
    (tmp_path / "notes.png").write_bytes(b"mine")
    monkeypatch.setattr(workers, "run_lab_jobs", lambda *args, **kwargs: None)  # (a report of no runs)
    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    run_seq2seq_lab(Seq2SeqLabConfig.smoke(tasks=["reverse"], workers=1), tmp_path, log=lambda line: None, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.png", RESULTS_FILE, REPORT_FILE]


def test_the_command_line_offers_the_tasks_whose_sources_grow(capsys):
    """`dates` was listed, then refused after start-up for want of source lengths no option could give."""
    from seqzoo.cli import main
    from seqzoo.lab.cli import SEQ2SEQ_LAB_TASKS

    assert set(SEQ2SEQ_LAB_TASKS) == set(Seq2SeqLabConfig.larger().source_lengths)
    for make in (Seq2SeqLabConfig, Seq2SeqLabConfig.smoke):  # `--smoke --tasks copy` too
        assert set(SEQ2SEQ_LAB_TASKS) <= set(make().source_lengths)
    with pytest.raises(SystemExit):
        main(["lab", "seq2seq", "--tasks", "dates"])
    assert "invalid choice: 'dates' (choose from 'reverse', 'copy', 'sort', 'digits')" in capsys.readouterr().err


@pytest.mark.parametrize("settings, error", [
    # (an empty list failed every run, then the report itself on min([]): the results were never written)
    ({"source_lengths": {"reverse": [], "digits": [2]}}, r"source_lengths\['reverse'\]=\[\] is invalid"),
    ({"source_lengths": {"reverse": [0, 4], "digits": [2]}}, r"source_lengths\['reverse'\]=\[0, 4\] is invalid"),
    ({"source_lengths": {"reverse": [4, 4], "digits": [2]}}, r"a non-empty list of distinct integers >= 1"),
    # (a misspelt "config" trained the preset unchanged, under the name the overrides were given)
    ({"models": {"big": {"preset": "seq2seq-bahdanau-tiny", "confg": {"hidden_size": 64}}}},
     r"model 'big': unknown key\(s\) 'confg'; a model takes 'preset' and optionally 'config'"),
    ({"workers": -2}, r"workers=-2 is invalid: >= 1, or 0 for one per core"),  # (was taken as one worker)
    ({"lr": float("nan")}, r"lr=nan is invalid: must be in \(0, 1\)"),  # (every run failed on it)
    ({"symbols": 27}, r"symbols=27 is invalid: 2 to 26 letters"),
    # (its evaluation set is named "dates", not "length=N": every run failed with an IndexError reading it)
    ({"tasks": ["dates"], "source_lengths": {"dates": [4]}}, r"task 'dates' has sources of one length, which the "
                                                             r"lab cannot grow; the lab's tasks: .*reverse"),
    ({"models": {"b": "seq2seq-bahdanau-tiny"}}, r"model 'b': 'seq2seq-bahdanau-tiny' is invalid: a dict"),
])
def test_the_seq2seq_lab_refuses_settings_it_would_drop_or_fail_on(tmp_path, settings, error):
    with pytest.raises(ValueError, match=error):
        run_seq2seq_lab(Seq2SeqLabConfig.smoke(**settings), tmp_path / "x", log=lambda line: None)
    assert not (tmp_path / "x").exists()
    Seq2SeqLabConfig.smoke(models={"big": {"preset": "seq2seq-bahdanau-tiny", "config": {}}}).validate()


def test_a_report_that_fails_loses_none_of_the_runs(tmp_path, monkeypatch):
    # The results were written after the report: a report that failed (a plot, a full disk) lost every run.
    import seqzoo.lab.seq2seq as lab

    def broken(results, out):
        raise RuntimeError("the report failed")

    monkeypatch.setattr(lab, "write_report", broken)
    cfg = Seq2SeqLabConfig.smoke(tasks=["reverse"], workers=1, models={"plain": {"preset": "seq2seq-sutskever-tiny"}})
    with pytest.raises(RuntimeError, match="the report failed"):
        run_seq2seq_lab(cfg, tmp_path / "s2s", log=lambda line: None)
    kept = json.loads((tmp_path / "s2s" / RESULTS_FILE).read_text())
    assert [(run["model"], run["ok"]) for run in kept["runs"]] == [("plain", True)]
    assert kept["status"] == "failed" and kept["error"] == "RuntimeError: the report failed"


@pytest.mark.parametrize("stop, status", [(RuntimeError("a worker died"), "failed"), (KeyboardInterrupt(),
                                                                                      "interrupted")])
def test_a_lab_stopped_after_some_runs_keeps_them_on_disk_and_says_why(tmp_path, monkeypatch, stop, status):
    """The results were written only once every run had ended: a failure in a later run (or Ctrl-C) lost the
    training done, and the folder held no sign of it."""
    import seqzoo.lab.seq2seq as lab

    calls = []

    def one_run_then_stopped(job):
        calls.append(job["model"])
        if len(calls) > 1:
            raise stop
        return {"model": job["model"], "task": job["task"], "ok": True, "accuracy": {2: float("nan")}, "seconds": 0.1}

    monkeypatch.setattr(lab, "run_job", one_run_then_stopped)
    cfg = Seq2SeqLabConfig.smoke(tasks=["reverse"], workers=1)
    out, lines = tmp_path / "s2s", []
    with pytest.raises(type(stop)):
        run_seq2seq_lab(cfg, out, log=lines.append)
    kept = json.loads((out / RESULTS_FILE).read_text())  # (strict JSON: the NaN is a null)
    assert kept["runs"] == [{"model": calls[0], "task": "reverse", "ok": True, "accuracy": {"2": None},
                             "seconds": 0.1}]
    assert kept["status"] == status and kept.get("error") == ("RuntimeError: a worker died" if status == "failed"
                                                              else None)
    assert any("1 finished training run(s) are kept in" in line for line in lines), lines
    with pytest.raises(ValueError, match=rf"holds an unfinished seq2seq lab \({status}.*records 1 finished training "
                                         r"run\(s\); pass --out NEW_FOLDER to keep them, or --force"):
        run_seq2seq_lab(cfg, out, log=lines.append)


def test_one_worker_runs_the_jobs_here_as_a_worker_would_and_logs_each(monkeypatch):
    import os

    import torch

    from seqzoo.lab.workers import run_lab_jobs

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    threads, seen, lines = torch.get_num_threads(), [], []

    def run(job):
        seen.append((torch.get_num_threads(), os.environ.get("ACCELERATE_USE_CPU")))
        return {"name": job["name"], "ok": job["name"] != "b", "error": "boom", "accuracy": {4: 0.5, 2: 1.0},
                "seconds": 1.25}

    runs = run_lab_jobs(run, [{"name": "a"}, {"name": "b"}], 1, lines.append, lambda r: f"{r['name']:<3}", "by length")
    assert [r["name"] for r in runs] == ["a", "b"] and seen == [(1, "true")] * 2
    assert lines == ["[ 1/2] a   by length 2:1.00 4:0.50 (1.2 s)", "[ 2/2] b   by length FAILED: boom (1.2 s)"]
    assert torch.get_num_threads() == threads and "ACCELERATE_USE_CPU" not in os.environ  # (put back)
