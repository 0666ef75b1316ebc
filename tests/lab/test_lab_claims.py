"""`seqzoo lab`'s folder under stress: two labs started into one folder at once, a `--force` replacement stopped
half-way, a resumed lab whose kept text model is damaged, and the provenance figures of a resumed lab."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import pytest

from seqzoo.lab import report, runner
from seqzoo.lab.folders import LOCK, claim_output, prepare_output
from seqzoo.lab.runner import LabConfig, run_lab
from tests.lab.resume_checks import results as _results
from tests.lab.resume_checks import tasks_a_resume_trains


def _cfg(**overrides) -> LabConfig:
    return LabConfig.smoke(**{"architectures": ["rnn"], "tasks": ["copy"], "seeds": [0], "distances": [2],
                              "workers": 1, **overrides})


def _quiet(line: str) -> None:
    pass


def test_a_lab_started_while_another_prepares_the_same_folder_is_refused_naming_it(tmp_path, monkeypatch):
    """Both checked the empty folder before either wrote its results.json: both exited 0, and one lab's report and
    runs were silently replaced by the other's."""
    out, refusals = tmp_path / "lab", []
    real = runner.prepare_output

    def second_lab_starts_now(*args, **kwargs):
        previous = real(*args, **kwargs)
        if not refusals:  # (the first lab has checked the folder and not yet written its marker)
            refusals.append("the second lab was not refused")
            with pytest.raises(ValueError) as refused:
                run_lab(_cfg(), out, log=_quiet)
            refusals[0] = str(refused.value)
        return previous

    def stopped(jobs, workers, log, on_result, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "prepare_output", second_lab_starts_now)
    monkeypatch.setattr(runner, "run_jobs", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_lab(_cfg(), out, log=_quiet)
    assert refusals == [f"{str(out)!r} is the folder of a lab still running (process {os.getpid()}); wait for it, "
                        "stop it, or choose another --out folder (if none runs, the process id being another "
                        f"program's now, delete {out / LOCK})"]
    assert _results(out)["status"] == "interrupted" and not (out / LOCK).exists()  # (released when it stopped)


def test_a_stale_claim_is_taken_over_and_a_live_one_refuses_a_resume(tmp_path, monkeypatch):
    out = tmp_path / "lab"
    out.mkdir()
    # A lab killed (SIGKILL) leaves its claim behind: its process is gone, so the folder is free.
    (out / LOCK).write_text(f"999999999 {platform.node()}\n")

    def one_run_then_stopped(jobs, workers, log, on_result, **kwargs):
        on_result(_fake_run(jobs[0]))
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_jobs", one_run_then_stopped)
    with pytest.raises(KeyboardInterrupt):
        run_lab(_cfg(), out, log=_quiet)
    assert _results(out)["status"] == "interrupted" and not (out / LOCK).exists()
    # Two `--resume` of one stopped lab: the second is refused while the first holds the folder.
    with claim_output(out):
        with pytest.raises(ValueError, match=rf"is the folder of a lab still running \(process {os.getpid()}\)"):
            run_lab(_cfg(), out, log=_quiet, resume=True)
    assert _results(out)["status"] == "interrupted"
    # A refused --resume into a new folder leaves none behind (the claim made it).
    with pytest.raises(ValueError, match="holds no unfinished lab to resume"):
        run_lab(_cfg(), tmp_path / "new", log=_quiet, resume=True)
    assert not (tmp_path / "new").exists()


def test_a_force_replacement_stopped_half_way_can_be_replaced_again(tmp_path, monkeypatch):
    """prepare_output deleted results.json first: Ctrl-C while it deleted the rest left a folder that --force
    refused ("not a seqzoo lab report") and --resume could not take (no results.json)."""
    out = tmp_path / "lab"
    (out / "runs" / "rnn" / "copy-s0").mkdir(parents=True)
    (out / "report.md").write_text("the earlier report")
    (out / "results.json").write_text(json.dumps({"status": "finished", "runs": [],
                                                  "environment": {"command": "seqzoo lab"}}))

    def interrupted(path, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_output(out, force=True, log=_quiet)
    monkeypatch.undo()
    assert _results(out)["status"] == "finished"  # (still marked as a lab's: replaceable)
    prepare_output(out, force=True, log=_quiet)
    assert list(out.iterdir()) == []


def _fake_run(job: dict) -> dict:
    """A finished run of ``job`` as a worker reports it (a text run saves a model the measurements can load)."""
    import torch
    from safetensors.torch import save_file

    run = {k: job[k] for k in ("arch", "preset", "task", "distances", "seed", "steps", "lr")}
    if job["task"] == "text":
        Path(job["output_dir"]).mkdir(parents=True, exist_ok=True)
        save_file({"weight": torch.zeros(256)}, str(Path(job["output_dir"]) / "model.safetensors"))
        return {**run, "ok": True, "seconds": 0.1, "eval": {"perplexity": 9.0}, "validation": [[6, 9.0]]}
    return {**run, "ok": True, "seconds": 0.1, "accuracy": {2: 0.5}, "losses": [1.0], "steps_run": 6}


def test_a_kept_text_run_whose_weights_are_cut_short_trains_again(tmp_path, monkeypatch):
    """Only the file's presence was checked: a resumed lab kept the run, and its measurements failed loading the
    model on every --resume."""
    out = tmp_path / "lab"

    def every_run(jobs, workers, log, on_result, **kwargs):
        for job in jobs:
            on_result(_fake_run(job))

    def broken(*args, **kwargs):
        raise RuntimeError("measuring broke")

    monkeypatch.setattr(runner, "run_jobs", every_run)
    monkeypatch.setattr(runner, "measure_architectures", broken)
    with pytest.raises(RuntimeError, match="measuring broke"):
        run_lab(_cfg(), out, log=_quiet)
    weights = out / "runs" / "rnn" / "text-s0" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # (a kill, or a full disk, while it was written)
    assert tasks_a_resume_trains(_cfg(), out, monkeypatch, _quiet) == ["text"]
    assert [run["task"] for run in _results(out)["runs"]] == ["copy"]


def test_a_resumed_lab_reports_the_training_time_and_the_workers_of_the_runs_it_kept(tmp_path, monkeypatch):
    """The stopped lab's "training" seconds counted its measuring (and plotting), and a resumed lab with nothing left
    to train said "1 worker process(es)" though its runs had trained on 2."""
    out, pause = tmp_path / "lab", 1.0

    def every_run(jobs, workers, log, on_result, **kwargs):
        for job in jobs:
            on_result(_fake_run(job))

    def slow_then_broken(*args, **kwargs):
        time.sleep(pause)
        raise RuntimeError("measuring broke")

    monkeypatch.setattr(runner, "run_jobs", every_run)
    monkeypatch.setattr(runner, "measure_architectures", slow_then_broken)
    with pytest.raises(RuntimeError, match="measuring broke"):
        run_lab(_cfg(workers=2), out, log=_quiet)
    stopped = _results(out)
    assert stopped["environment"]["workers"] == 2 and stopped["seconds"]["training"] < pause / 2
    with pytest.raises(RuntimeError, match="measuring broke"):  # (resumed: every run kept, none to train)
        run_lab(_cfg(workers=0), out, log=_quiet, resume=True)
    resumed = _results(out)
    assert resumed["resumed_runs"] == 2 and resumed["environment"]["workers"] == 2
    assert resumed["seconds"]["training"] < pause / 2
    # A lab resumed on other workers than the stopped one's says both.
    line = report._provenance({**resumed, "environment": {**resumed["environment"], "workers": 1},
                               "seconds": {"training": 1.0, "total": 2.0}})
    assert "1 worker process(es) of 1 thread each (2 for the runs kept from the lab it resumed)" in line


def test_only_a_text_run_that_finished_has_its_trained_model_measured(tmp_path, monkeypatch):
    """The measurements load each text model that trained (of the run's seed); a failed text run has no model to
    load, and its architecture is measured at initialisation alone."""
    seen = []

    def runs(jobs, workers, log, on_result, **kwargs):
        for job in jobs:
            run = _fake_run(job)
            on_result(run if job["arch"] == "rnn" else {**run, "ok": False, "error": "RuntimeError: diverged"})

    def measured(presets, cfg, out, trained):
        seen.append(trained)
        raise RuntimeError("measured")

    monkeypatch.setattr(runner, "run_jobs", runs)
    monkeypatch.setattr(runner, "measure_architectures", measured)
    with pytest.raises(RuntimeError, match="measured"):
        run_lab(_cfg(architectures=["rnn", "gru"], seeds=[4, 1]), tmp_path / "lab", log=_quiet)
    assert seen == [{"rnn": 4}]


def _home_and_stopped_runs(tmp_path, monkeypatch):
    """For the tests of a leading ~ in --out: a home folder and a current folder of their own, a list of the folders
    the lab's runs were to train in, and a stand-in for the runs' launcher that records them and stops the lab."""
    home, here, folders = tmp_path / "home", tmp_path / "here", []
    home.mkdir(), here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)

    def stopped(*args, **kwargs):
        jobs = next(arg for arg in args if isinstance(arg, list))
        folders.extend(Path(job["output_dir"]) for job in jobs)
        raise KeyboardInterrupt

    return home, here, folders, stopped


def test_a_lab_folder_starting_with_a_tilde_holds_its_runs_and_its_results(tmp_path, monkeypatch):
    """--out=~/lab (a shell leaves that ~): the runs train through recipes, which read a leading ~ as the home folder,
    so they went to ~/lab/runs while results.json went to a folder named ~ under the current one, and the lab's
    measurements then failed to find the text run it had trained (as the seq2seq lab's report its runs)."""
    import seqzoo.lab.workers as workers
    from seqzoo.lab.seq2seq import Seq2SeqLabConfig, run_seq2seq_lab

    home, here, folders, stopped = _home_and_stopped_runs(tmp_path, monkeypatch)
    monkeypatch.setattr(runner, "run_jobs", stopped)
    monkeypatch.setattr(workers, "run_lab_jobs", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_lab(_cfg(), "~/lab", log=_quiet)
    with pytest.raises(KeyboardInterrupt):
        run_seq2seq_lab(Seq2SeqLabConfig.smoke(tasks=["reverse"], workers=1), "~/s2s", log=_quiet)
    assert _results(home / "lab")["status"] == "interrupted" and (home / "s2s" / "seq2seq-results.json").is_file()
    assert folders and all(folder.is_relative_to(home / "lab" / "runs") or folder.is_relative_to(home / "s2s" / "runs")
                           for folder in folders)
    assert list(here.iterdir()) == []


@pytest.mark.parametrize("lab", ["seq2seq", "bidirectional"])
def test_force_replaces_a_link_named_as_a_report_instead_of_writing_through_it(tmp_path, monkeypatch, lab):
    """--force over a link of the report's name to a file elsewhere (a folder from elsewhere, without the lab's
    results file): the report was written into the file the link named, a user's file overwritten, as a link named
    gradients.md was by `seqzoo lab gradients`. The link is replaced, and so is one of a figure's name."""
    import seqzoo.lab.workers as workers
    from seqzoo.lab import bidirectional, plots, seq2seq

    module = {"seq2seq": seq2seq, "bidirectional": bidirectional}[lab]
    cfg = seq2seq.Seq2SeqLabConfig.smoke(tasks=["reverse"], workers=1) if lab == "seq2seq" else \
        bidirectional.BidirectionalLabConfig.smoke(architectures=["lstm"], tasks=["first_letter"], workers=1)
    run = seq2seq.run_seq2seq_lab if lab == "seq2seq" else bidirectional.run_bidirectional_lab
    figure = seq2seq.ACCURACY_PNG if lab == "seq2seq" else bidirectional.PLOT_FILE
    monkeypatch.setattr(workers, "run_lab_jobs", lambda *args, **kwargs: None)  # (a report of no runs)
    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "notes.md").write_text("mine")
    (out / module.REPORT_FILE).symlink_to(tmp_path / "notes.md")
    (out / figure).symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(ValueError, match="--force to replace them"):
        run(cfg, out, log=_quiet)
    run(cfg, out, log=_quiet, force=True)
    assert (tmp_path / "notes.md").read_text() == "mine" and not (tmp_path / "elsewhere.png").exists()
    assert not (out / module.REPORT_FILE).is_symlink() and (out / module.REPORT_FILE).read_text().startswith("## ")
    assert not (out / figure).is_symlink()


@pytest.mark.parametrize("lab", ["seq2seq", "bidirectional", "gradients"])
def test_force_keeps_a_folder_of_the_users_named_as_a_report_and_says_so_before_any_run(tmp_path, monkeypatch, capsys,
                                                                                         lab):
    """A folder of the user's named as the report (seq2seq.md/, gradients.md/): --force failed on it with 'Is a
    directory' once every run had trained (seq2seq, bidirectional) or every profile was taken (gradients). It is
    refused first, and kept; a run folder of that lab's name is still the lab's to replace."""
    import seqzoo.lab.gradients as gradients
    import seqzoo.lab.workers as workers
    from seqzoo.cli import main
    from seqzoo.lab import bidirectional, seq2seq

    monkeypatch.setattr(workers, "run_lab_jobs", None)  # (fails if reached)
    monkeypatch.setattr(gradients, "gradient_profile", None)
    report = {"seq2seq": seq2seq.REPORT_FILE, "bidirectional": bidirectional.REPORT_FILE,
              "gradients": "gradients.md"}[lab]
    (tmp_path / report).mkdir()
    (tmp_path / report / "keep.txt").write_text("mine")
    assert main(["lab", lab, "--out", str(tmp_path), "--force"]) == 2
    assert f"{str(tmp_path / report)!r} is a folder, not this" in capsys.readouterr().err
    assert (tmp_path / report / "keep.txt").read_text() == "mine"


def test_the_bidirectional_sweep_and_gradients_labs_read_a_tilde_in_their_folder_as_the_home_folder(tmp_path,
                                                                                                     monkeypatch):
    """The same --out=~/... for the three other lab commands (one lab_folder for all five): their runs under the home
    folder, their results there too, and nothing in a folder named ~ under the current one."""
    import seqzoo.lab.sweep as sweep
    import seqzoo.lab.workers as workers
    from seqzoo.cli import main
    from seqzoo.lab import plots
    from seqzoo.lab.bidirectional import BidirectionalLabConfig, run_bidirectional_lab
    from seqzoo.lab.sweep import SweepConfig, run_sweep

    home, here, folders, stopped = _home_and_stopped_runs(tmp_path, monkeypatch)
    monkeypatch.setattr(sweep, "run_jobs", stopped)
    monkeypatch.setattr(workers, "run_lab_jobs", stopped)
    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)  # (the figure takes seconds; not the point)
    with pytest.raises(KeyboardInterrupt):
        run_bidirectional_lab(BidirectionalLabConfig.smoke(architectures=["lstm"], workers=1), "~/bi", log=_quiet)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(SweepConfig(architectures=["rnn"], tasks=["copy"], distances=[2], rates=[0.01], workers=1),
                  "~/sweep", log=_quiet)
    assert main(["lab", "gradients", "--out", "~/grad", "--length", "4", "--architectures", "rnn"]) == 0
    assert (home / "bi" / "bidirectional-results.json").is_file() and _results(home / "sweep")["status"] == \
        "interrupted" and (home / "grad" / "gradients.md").is_file()
    assert folders and all(folder.is_relative_to(home / "bi" / "runs") or folder.is_relative_to(home / "sweep")
                           for folder in folders)
    assert list(here.iterdir()) == []


@pytest.mark.parametrize("lab", ["seq2seq", "bidirectional"])
def test_a_report_lab_started_while_another_writes_its_folder_is_refused_naming_it(tmp_path, monkeypatch, lab):
    """`seqzoo lab seq2seq` and `bidirectional` claimed no folder: a second one on the folder of one still training
    (with --force, as the first's 'unfinished' refusal asks) deleted the first's results and runs, and both then
    trained the same run folders and wrote one results file."""
    import seqzoo.lab.workers as workers
    from seqzoo.lab.bidirectional import BidirectionalLabConfig, run_bidirectional_lab
    from seqzoo.lab.seq2seq import Seq2SeqLabConfig, run_seq2seq_lab

    def start(force=False):
        if lab == "seq2seq":
            return run_seq2seq_lab(Seq2SeqLabConfig.smoke(tasks=["reverse"], workers=1), out, log=_quiet, force=force)
        return run_bidirectional_lab(BidirectionalLabConfig.smoke(architectures=["lstm"], workers=1), out, log=_quiet,
                                     force=force)

    out, refusals = tmp_path / "lab", []
    lock = out / f".seqzoo-lab-{lab}.lock"

    def second_lab_starts_now(*args, **kwargs):  # (the first has checked the folder and trains)
        monkeypatch.setattr(workers, "run_lab_jobs", stopped)
        for force in (False, True):
            with pytest.raises(ValueError) as refused:
                start(force)
            refusals.append(str(refused.value))
        raise KeyboardInterrupt

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workers, "run_lab_jobs", second_lab_starts_now)
    with pytest.raises(KeyboardInterrupt):
        start()
    assert refusals == 2 * [f"{str(out)!r} is the folder of a {lab} lab still running (process {os.getpid()}); wait "
                            "for it, stop it, or choose another --out folder (if none runs, the process id being "
                            f"another program's now, delete {lock})"]
    [results] = [path for path in out.iterdir() if path.name.endswith("results.json")]
    assert json.loads(results.read_text())["status"] == "interrupted" and not lock.exists()
