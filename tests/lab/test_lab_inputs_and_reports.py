"""`seqzoo lab` and its sub-commands against bad input, and their reports against the runs they describe."""

from __future__ import annotations

import json

import pytest

from seqzoo.cli import main
from seqzoo.lab.runner import LabConfig, lab_presets, run_lab


@pytest.mark.parametrize("rates", [[float("nan")], [1e-2, float("nan")], [float("nan"), 1e-2]])
def test_the_sweep_refuses_a_rate_that_is_not_a_number(tmp_path, monkeypatch, rates):
    from seqzoo.lab import sweep
    from seqzoo.lab.sweep import SweepConfig, run_sweep

    def no_training(*args, **kwargs):
        raise AssertionError("the sweep started training")

    monkeypatch.setattr(sweep, "run_jobs", no_training)
    # (nan passed the range check: every run then failed, and the sweep reported nothing, exit status 0)
    with pytest.raises(ValueError, match=r"--rates .* is invalid: learning rates in \(0, 1\)"):
        run_sweep(SweepConfig(rates=rates), tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("rates", [[1.0], [1e-2, 3.0], [0.0], [-1e-3]])
def test_the_sweep_refuses_a_rate_outside_0_to_1(rates):
    from seqzoo.lab.sweep import SweepConfig

    with pytest.raises(ValueError, match=r"--rates .* is invalid: learning rates in \(0, 1\)"):
        SweepConfig(rates=rates).validate()


def test_the_sweep_refuses_two_rates_written_alike():
    from seqzoo.lab.sweep import SweepConfig

    # (runs are named by f"{rate:g}": two rates written alike would train into one folder)
    with pytest.raises(ValueError, match="distinct learning rates"):
        SweepConfig(rates=[1e-2, 0.01]).validate()


def test_an_architecture_given_twice_is_refused():
    # (the lab refuses a task, seed or distance given twice; an architecture was silently dropped to one)
    with pytest.raises(ValueError, match="'rnn' given more than once"):
        lab_presets(["rnn", "lstm", "rnn"])


def test_a_sweep_with_a_failed_run_exits_non_zero(tmp_path, monkeypatch):
    from seqzoo.lab import sweep

    def fake_run_sweep(cfg, out, command="", force=False):
        return {"runs": [{"ok": True}, {"ok": False, "error": "ValueError: no"}]}

    monkeypatch.setattr(sweep, "run_sweep", fake_run_sweep)
    assert main(["lab", "sweep", "--out", str(tmp_path / "s")]) == 1  # (as `seqzoo lab`, seq2seq, bidirectional)
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: {"runs": [{"ok": True}]})
    assert main(["lab", "sweep", "--out", str(tmp_path / "s")]) == 0


def test_the_sweep_never_starts_or_reports_more_workers_than_runs(tmp_path, monkeypatch):
    from seqzoo.lab import sweep

    seen = {}

    def fake_run_jobs(jobs, workers, log, **kwargs):
        seen["workers"], seen["jobs"] = workers, len(jobs)
        return []

    monkeypatch.setattr(sweep, "run_jobs", fake_run_jobs)
    results = sweep.run_sweep(sweep.SweepConfig(architectures=["rnn"], tasks=["copy"], rates=[1e-2], workers=50),
                              tmp_path / "s", log=lambda line: None)
    assert seen == {"workers": 2, "jobs": 2}
    assert results["environment"]["workers"] == 2
    assert "2 workers on cpu" in (tmp_path / "s" / "sweep.md").read_text()


def test_the_sweep_reports_the_mean_the_proposal_compared():
    from seqzoo.lab.sweep import propose, sweep_report

    def run(task, rate, accuracy):
        return {"ok": True, "arch": "lstm", "lr": rate, "task": task, "accuracy": {64: accuracy}, "steps_run": 600,
                "steps": 600}

    # 1e-2 was cut (by a deadline) before selective copy: both rates are compared on copy alone, as proposed
    runs = [run("selective_copy", 3e-3, 0.2), run("copy", 3e-3, 1.0), run("copy", 1e-2, 0.9)]
    results = {"config": {"tasks": ["copy", "selective_copy"], "rates": [3e-3, 1e-2], "steps": 600, "device": "cpu",
                          "seed": 0, "distances": [64], "text_steps": 250},
               "presets": {"lstm": "lstm-tiny"}, "runs": runs, "planned_runs": 4, "seconds": 60.0,
               "environment": {"command": "seqzoo lab sweep", "seqzoo": "0", "cpu": "cpu", "workers": 1}}
    results["proposal"] = propose(results)
    assert results["proposal"]["learning_rates"]["lstm"]["memory"] == 3e-3
    table = sweep_report(results)
    assert "| rate | copy | selective copy | mean accuracy (copy only: what every rate finished) |" in table
    # 3e-3: 1.000 on copy (not 0.600, its mean with selective copy, which 1e-2 never ran); 1e-2: 0.900
    assert "| 0.003 | 1.00 (600) | 0.20 (600) | 1.000 |" in table
    assert "| 0.01 | 0.90 (600) | – | 0.900 |" in table
    assert "3 runs in 1.0 min (1 of 4 dropped at the deadline: rates are compared on the tasks every rate" in table
    runs.append(run("selective_copy", 1e-2, 0.4))  # every rate ran every task: the plain mean, plainly labelled
    table = sweep_report(results)
    assert "| mean accuracy | text perplexity |" in table and "| 0.003 | 1.00 (600) | 0.20 (600) | 0.600 |" in table
    assert "4 runs in 1.0 min\n" in table and "dropped at the deadline" not in table


@pytest.mark.newest_release_only  # (a training run)
def test_a_report_trained_at_one_lr_says_so_not_that_the_recipes_chose_it(tmp_path):
    cfg = LabConfig.smoke(architectures=["rnn"], tasks=["copy"], seeds=[0], distances=[2], lr=1e-2, workers=1)
    results = run_lab(cfg, tmp_path / "lab", log=lambda line: None)
    assert {run["lr"] for run in results["runs"]} == {1e-2}
    report = (tmp_path / "lab" / "report.md").read_text()
    assert "default rate" not in report and "has not been run" not in report  # (the recipes' 3e-3: no run had it)
    assert report.count("`--lr 0.01`, one rate for every architecture and run") == 2
    assert json.loads((tmp_path / "lab" / "results.json").read_text())["config"]["lr"] == 1e-2


@pytest.mark.newest_release_only  # (a training run)
def test_the_reports_wall_time_counts_the_plots_and_agrees_with_results_json(tmp_path, monkeypatch):
    """The report's wall time was taken before the plots were drawn (and said so), while results.json's total,
    taken after, counted them: the two disagreed, and the report left drawing out."""
    import re
    import time

    from seqzoo.lab import plots

    drawn = []

    def slow_plot(*args, **kwargs):  # (a stand-in for matplotlib: the time a figure takes, and no file)
        drawn.append(args[-1])
        time.sleep(0.6)

    monkeypatch.setattr(plots, "matplotlib_available", lambda: True)
    for name in ("memory_plot", "text_plot", "cost_plot", "gradient_plot"):
        monkeypatch.setattr(plots, name, slow_plot)
    cfg = LabConfig.smoke(architectures=["rnn"], tasks=["copy"], seeds=[0], distances=[2], workers=1)
    results = run_lab(cfg, tmp_path / "lab", log=lambda line: None)
    assert len(drawn) == 4  # (once each)
    seconds = json.loads((tmp_path / "lab" / "results.json").read_text())["seconds"]
    assert seconds == results["seconds"] and seconds["total"] >= seconds["training"] + 4 * 0.6
    report = (tmp_path / "lab" / "report.md").read_text()
    minutes, secs = map(int, re.search(r"wall time (\d+) min (\d+) s for the training", report).groups())
    assert 60 * minutes + secs == round(seconds["total"])
    assert "wall time {} min {:02d} s for the training, the measurements and the plots (".format(
        *divmod(round(seconds["total"]), 60)) in report


def test_the_cost_takeaways_name_each_state_once_and_give_the_growth_as_measured():
    from seqzoo.lab.findings import _cost_takeaways

    def decode(first, last):
        return {"decode": [{"state_bytes": first, "ms_per_token": 1.0}, {"state_bytes": last, "ms_per_token": 1.5}]}

    cfg = {"decode_contexts": [16, 64]}
    # a hybrid's fixed part plus its growing keys and values: 9,728 -> 22,016 bytes is 2.26x, not "2x"
    lines = _cost_takeaways({"hybrid": decode(9728, 22016), "lstm": decode(512, 512)}, cfg)
    assert lines[0].startswith("hybrid's state (with its KV cache) grows 2.3× from 16 to 64 tokens"), lines
    # one architecture of constant state: named once ("from 512 bytes (lstm) to 512 bytes (lstm)" before)
    assert lines[1] == "lstm's state stays the same size at any context: 512 bytes per sequence.", lines
    assert _cost_takeaways({"transformer": decode(8192, 32768)}, cfg)[0].startswith(
        "transformer's state (with its KV cache) grows 4× from 16 to 64 tokens")  # (a whole factor stays whole)
    lines = _cost_takeaways({"lstm": decode(512, 512), "gru": decode(384, 384)}, cfg)
    # ("Every other state" where no growing one was named before it)
    assert lines == ["Every state stays the same size at any context: from 384 bytes (gru) to 512 bytes (lstm) "
                     "per sequence."]
    lines = _cost_takeaways({"transformer": decode(8192, 32768), "lstm": decode(512, 512), "gru": decode(384, 384)},
                            cfg)
    assert lines[1] == ("Every other state stays the same size at any context: from 384 bytes (gru) to 512 bytes "
                        "(lstm) per sequence.")


def _refuse_bare_constants(name):
    raise AssertionError(f"{name} is not JSON")


def test_a_diverged_run_is_written_as_strict_json_and_left_out_of_the_proposal(tmp_path, monkeypatch):
    """Runs whose figures went NaN (here every run at rate 0.01): results.json and runs.jsonl hold null there (jq,
    JavaScript and pandas read it), not Python's bare NaN; the proposal takes the rate whose runs are finite (it
    crashed with "min() arg is an empty sequence", all the sweep's training lost, when no rate's were)."""
    from seqzoo.lab import sweep
    from seqzoo.lab.sweep import SweepConfig, run_sweep

    def training(jobs, workers, log, device="cpu", on_result=None, deadline=None):
        runs = []
        for job in jobs:
            bad = job["lr"] == 1e-2
            run = {**job, "ok": True, "steps_run": job["steps"], "losses": [2.0, float("nan") if bad else 1.0],
                   "accuracy": {"4": float("nan") if bad else 0.5},
                   "eval": {"loss": float("nan") if bad else 1.0, "perplexity": float("inf") if bad else 2.7}}
            on_result(dict(run))
            runs.append(run)
        return runs

    monkeypatch.setattr(sweep, "run_jobs", training)
    out = tmp_path / "sweep"
    config = dict(architectures=["rnn"], tasks=["copy"], distances=[4], steps=150, text_steps=10)
    results = run_sweep(SweepConfig(rates=[1e-2, 3e-2], **config), out, log=lambda *_: None)
    assert results["proposal"]["learning_rates"] == {"rnn": {"memory": 3e-2, "text": 3e-2}}
    written = json.loads((out / "results.json").read_text(), parse_constant=_refuse_bare_constants)
    diverged = [run for run in written["runs"] if run["lr"] == 1e-2]
    assert [run["eval"] for run in diverged] == [{"loss": None, "perplexity": None}] * 2
    assert [run["losses"] for run in diverged] == [[2.0, None]] * 2
    lines = [json.loads(line, parse_constant=_refuse_bare_constants)
             for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted(str(line["accuracy"]) for line in lines) == ["{'4': 0.5}"] * 2 + ["{'4': None}"] * 2
    # No rate with finite figures: no rate proposed, and the sweep still finishes.
    results = run_sweep(SweepConfig(rates=[1e-2], **config), tmp_path / "other", log=lambda *_: None)
    assert results["proposal"]["learning_rates"] == {"rnn": {}}


def test_strict_json_writes_every_non_finite_float_as_null():
    from seqzoo.utils import strict_json

    value = {"a": [1.5, float("nan"), (float("inf"), -float("inf"))], "b": {"c": float("nan"), "d": "NaN"}, "e": 3}
    assert json.loads(strict_json(value)) == {"a": [1.5, None, [None, None]], "b": {"c": None, "d": "NaN"}, "e": 3}
    assert strict_json({"x": 1.0}, indent=1) == json.dumps({"x": 1.0}, indent=1)


@pytest.mark.parametrize("contexts", [[], [64], [0, 16], [64, 16], [16, 16, 64]])
def test_the_lab_refuses_decode_contexts_it_cannot_compare_before_any_training(tmp_path, monkeypatch, contexts):
    from seqzoo.lab import runner

    def no_training(*args, **kwargs):
        raise AssertionError("the lab started training")

    monkeypatch.setattr(runner, "run_jobs", no_training)
    # (measured after every run had trained: [] failed on decode_contexts[0], [64] in the report's state line
    # (one context: nothing to unpack), [0, 16] in generate() on an empty prompt -- the runs' results were lost)
    with pytest.raises(ValueError, match=r"decode_contexts=.* is invalid: at least two increasing context lengths"):
        run_lab(LabConfig.smoke(architectures=["rnn"], decode_contexts=contexts), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_lab_refuses_settings_every_run_would_fail_on_before_any_training():
    # (else every run failed on it, one by one, in its worker)
    with pytest.raises(ValueError, match="warmup_steps=-1 is invalid: must be >= 0"):
        LabConfig.smoke(warmup_steps=-1).validate()
    LabConfig.smoke(warmup_steps=0).validate()
    for symbols in (1, 0):
        with pytest.raises(ValueError, match=f"symbols={symbols} is invalid: must be >= 2"):
            LabConfig.smoke(symbols=symbols).validate()
    with pytest.raises(ValueError, match=r"items=5, symbols=8 are invalid for associative_recall: items <= symbols "
                                         r"// 2 distinct keys \(4 here\)"):
        LabConfig.smoke(items=5).validate()
    LabConfig.smoke(items=5, tasks=["copy"]).validate()  # (the other tasks take any number of items)
    # (one token: the report's gradient takeaway read "Gradient 0 tokens back, relative to the last token: 1e+00")
    with pytest.raises(ValueError, match="gradient_length=1 is invalid: a sequence length >= 2 tokens"):
        LabConfig.smoke(gradient_length=1).validate()
    LabConfig.smoke(gradient_length=2).validate()


def test_a_named_architecture_without_a_preset_is_refused_not_left_out(monkeypatch):
    from seqzoo import registry

    presets = registry.architecture_presets
    monkeypatch.setattr(registry, "architecture_presets", lambda arch: [] if arch == "gru" else presets(arch))
    # (a plugin's architecture without presets: named, it was dropped without a word and the lab ran without it)
    with pytest.raises(ValueError, match="architecture 'gru' has no preset"):
        lab_presets(["rnn", "gru"])
    default = lab_presets()
    assert "gru" not in default and default["rnn"] == "rnn-tiny"  # (by default: left out)


@pytest.mark.parametrize("settings, refused", [
    ({"tasks": ["copy", "recall"]}, r"unknown task 'recall'; allowed: copy"),  # (every run failed, one by one)
    ({"distances": []}, r"distances=\[\] is invalid"),  # (max([]) once the folder had been prepared)
    ({"distances": [0, 4]}, r"distances=\[0, 4\] is invalid"),
    ({"text_steps": 0}, r"text_steps=0 is invalid: must be >= 1"),
    ({"seed": -1}, r"seeds=\[-1\] is invalid"),
    ({"workers": -2}, r"workers=-2 is invalid"),  # (else taken as one worker)
])
def test_the_sweep_checks_what_its_runs_share_with_the_lab(settings, refused):
    from seqzoo.lab.sweep import SweepConfig

    with pytest.raises(ValueError, match=refused):
        SweepConfig(**settings).validate()


def test_a_registered_architecture_without_a_language_model_head_is_not_called_unknown(capsys):
    # (`seqzoo list` shows seq2seq; the lab said "unknown architecture 'seq2seq'. Registered: gru, ...")
    with pytest.raises(ValueError, match=r"architecture 'seq2seq' has no causal-lm head, and the lab trains language "
                                         r"models; those that have one: gru, .*`seqzoo lab seq2seq`"):
        lab_presets(["lstm", "seq2seq"])
    assert main(["lab", "gradients", "--architectures", "seq2seq"]) == 2
    assert "has no causal-lm head" in capsys.readouterr().err


def test_an_interrupted_sweep_marks_its_folder_so_that_the_same_process_can_replace_it(tmp_path, monkeypatch):
    from seqzoo.lab import sweep
    from seqzoo.lab.sweep import SweepConfig, run_sweep

    def interrupted(jobs, workers, log, on_result, **kwargs):
        on_result({"arch": "rnn", "task": "copy", "ok": True})
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_jobs", interrupted)
    out, cfg = tmp_path / "sweep", SweepConfig(architectures=["rnn"], tasks=["copy"], distances=[4])
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, out, log=lambda line: None)
    # (it stayed "running" with this process's pid: refused, --force or not, "a lab still running (process N)")
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
    with pytest.raises(ValueError, match="holds an unfinished sweep: .* 1 finished run"):
        run_sweep(cfg, out, log=lambda line: None)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, out, log=lambda line: None, force=True)


def test_an_architecture_registered_in_this_process_only_is_refused_before_anything_is_written(tmp_path,
                                                                                                 monkeypatch):
    # The spawned workers import seqzoo afresh and did not have it: every run failed there with "recipe field
    # model.preset='inproc-tiny' is invalid: expected a model preset", and a report of failures was written.
    import seqzoo
    from seqzoo import registry

    monkeypatch.setattr(registry, "_ARCHITECTURES", dict(registry._ARCHITECTURES))
    monkeypatch.setattr(registry, "_PLUGIN_PRESETS", dict(registry._PLUGIN_PRESETS))
    monkeypatch.setattr(registry, "_ENTRY_POINT_ARCHITECTURES", set(registry._ENTRY_POINT_ARCHITECTURES))
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    # (its model_type's AutoConfig registration undone too: registering the test's classes again would be refused)
    monkeypatch.setattr(CONFIG_MAPPING, "_extra_content", dict(CONFIG_MAPPING._extra_content))
    config = type("InprocConfig", (seqzoo.LSTMConfig,), {"model_type": "seqzoo_lab_inproc"})
    model = type("InprocModel", (seqzoo.LSTMModel,), {"config_class": config})
    lm = type("InprocForCausalLM", (seqzoo.LSTMForCausalLM,), {"config_class": config, "base_model_class": model})
    registry.register_architecture(registry.ModelSpec("inproc", config, model, lm,
                                                      presets={"inproc-tiny": {"hidden_size": 16}}))
    assert not registry.in_every_process("inproc") and registry.in_every_process("lstm")
    with pytest.raises(ValueError, match=r"architecture 'inproc' was registered in this process "
                                         r"\(register_architecture\), but the lab trains in worker processes of their "
                                         r"own, which import seqzoo afresh and do not have it: register it through a "
                                         r"`seqzoo.models` entry point"):
        run_lab(LabConfig.smoke(architectures=["inproc"], tasks=["copy"], seeds=[0], distances=[2], workers=1),
                tmp_path / "lab", log=lambda line: None)
    assert not (tmp_path / "lab").exists()
    assert "inproc" not in lab_presets()  # (the default: every architecture the workers have)
    registry._ENTRY_POINT_ARCHITECTURES.add("inproc")  # (as load_plugins records an entry point's)
    assert lab_presets(["inproc"]) == {"inproc": "inproc-tiny"} and "inproc" in lab_presets()
