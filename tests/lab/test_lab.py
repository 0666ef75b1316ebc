"""The memory lab: `seqzoo lab --smoke` end to end, and the pieces it is built from."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import seqzoo
from seqzoo.cli import main
from seqzoo.lab import findings, recipes
from seqzoo.lab.cli import TASK_NAMES
from seqzoo.lab.folders import LAB_OUTPUTS, prepare_output
from seqzoo.lab.gradients import gradient_profile
from seqzoo.lab.measure import decode_profile, describe_state
from seqzoo.lab.runner import LabConfig, lab_presets, run_lab, solved
from seqzoo.models.compat import output_cache
from seqzoo.training.data import TASKS
from tests.conftest import python_path, tiny_model

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.newest_release_only  # (training, saving and loading are tested on every release elsewhere)
def test_smoke_lab_reports_every_architecture(tmp_path):
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": python_path(ROOT)}
    done = subprocess.run([sys.executable, "-m", "seqzoo", "lab", "--smoke", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    architectures = seqzoo.list_architectures("causal-lm")
    assert results["status"] == "finished" and sorted(results["presets"]) == architectures
    assert {path.name for path in out.iterdir()} <= set(LAB_OUTPUTS)  # all that replacing the report removes
    failed = [f"{r['arch']}/{r['task']}: {r['error']}" for r in results["runs"] if not r["ok"]]
    assert not failed, failed
    smoke = LabConfig.smoke()
    assert len(results["runs"]) == len(architectures) * (len(smoke.tasks) * len(smoke.seeds) + 1)
    for run in results["runs"]:
        if run["task"] != "text":
            assert sorted(int(d) for d in run["accuracy"]) == smoke.distances
            assert sorted(int(d) for d in run["trained_share"]) == smoke.distances
            assert all(0.0 <= share <= 1.0 for share in run["trained_share"].values())

    report = (out / "report.md").read_text()
    assert "**Smoke run**" in report
    # Under each task's table, how much of its evaluation sets training also drew (the smoke copy task's 2 of 8
    # symbols: 64 contents).
    shares = re.findall(r"Evaluation sequences also drawn in training \(lowest–highest over runs\): (.*)\.", report)
    assert len(shares) == len(smoke.tasks)
    assert all(re.fullmatch(r"distance 2 \d+%(–\d+%)?, distance 6 \d+%(–\d+%)?", line) for line in shares), shares
    assert f"Command: `seqzoo lab --smoke --out {out}`" in report  # the exact command that made it
    assert re.search(r"\d+ core\(s\) available; \d+ worker process", report)
    for section in ("## Takeaways", "## How each architecture remembers", "## Summary", "## Gradient health"):
        assert section in report, section
    for name in ("lab-memory.png", "lab-text.png", "lab-cost.png", "lab-gradients.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f"]({name})" in report
    summary = report.split("## Summary")[1].split("\n\n")[1].splitlines()[2:]
    assert sorted(re.match(r"\| \*\*(\w+)\*\*", row).group(1) for row in summary) == architectures
    for row in summary:
        cells = [c.strip() for c in row.strip("|").split("|")]
        params, perplexity = int(cells[2].replace(",", "")), float(cells[5])
        accuracy = float(cells[7].split()[0])
        assert params > 0 and 1.0 < perplexity < 1000 and 0.0 <= accuracy <= 1.0, row
        first_bytes, last_bytes = (int(v.replace(",", "")) for v in cells[3].split("→"))
        assert 0 < first_bytes <= last_bytes, row
    for arch in architectures:
        assert f"- **{arch}** (" in report  # its state, measured
        assert (out / "runs" / arch / "text-s0" / "model.safetensors").is_file()  # text models are kept
        assert not (out / "runs" / arch / "copy-s0" / "model.safetensors").exists()  # task models are not
        assert (out / "runs" / arch / "copy-s0" / "metrics.jsonl").is_file()
        assert f"- **{arch}**: `The ` → `" in report  # a sample from every text model


def test_lab_never_replaces_a_finished_report_silently(tmp_path):
    out = tmp_path / "lab-report"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"status": "finished", "environment": {
        "command": "seqzoo lab", "finished": "2026-01-01 10:00 UTC"}}))
    (out / "report.md").write_text("nineteen minutes of work")
    with pytest.raises(ValueError, match=r"already holds a finished lab report \(`seqzoo lab`, 2026-01-01 .*--force"):
        run_lab(LabConfig.smoke(architectures=["rnn"]), out)
    assert (out / "report.md").read_text() == "nineteen minutes of work"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="exists and is not a seqzoo lab report"):
        run_lab(LabConfig.smoke(architectures=["rnn"]), tmp_path / "mine", force=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    # A results.json of anything else (another tool's, a truncated one) is no lab marker, with --force too.
    for text in ('{"accuracy": 0.93}', '{"status": "running"}', '{"status": "fini', "[1]"):
        (tmp_path / "mine" / "results.json").write_text(text)
        with pytest.raises(ValueError, match="holds a results.json that is not a seqzoo lab's"):
            run_lab(LabConfig.smoke(architectures=["rnn"]), tmp_path / "mine", force=True)
        assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_gradient_reach_is_zero_without_recurrence_and_nonzero_with_attention():
    rnn = tiny_model("rnn-tiny", vocab_size=258, pad_token_id=256, bos_token_id=257, eos_token_id=257)
    with torch.no_grad():
        for layer in rnn.model.layers:
            layer.weight_hh.zero_()  # h_t no longer depends on h_{t-1}
    profile = gradient_profile(rnn, length=12)
    assert len(profile) == 12 and profile[0] > 0 and all(v == 0 for v in profile[1:])
    transformer = tiny_model("transformer-tiny", vocab_size=258, pad_token_id=256, bos_token_id=257,
                             eos_token_id=257)
    assert all(v > 0 for v in gradient_profile(transformer, length=12))


def test_state_is_measured_right_after_the_prompt():
    lstm = tiny_model("lstm-tiny")
    rows = decode_profile(lstm, [8, 40], steps=2)
    assert [r["context"] for r in rows] == [8, 40] and all(r["ms_per_token"] > 0 for r in rows)
    assert rows[0]["state_bytes"] == rows[1]["state_bytes"] == lstm.config.state_bytes_per_sequence()
    transformer = tiny_model("transformer-tiny")
    rows = decode_profile(transformer, [8, 40], steps=2)
    per_token = transformer.config.kv_bytes_per_token()
    assert (rows[0]["state_bytes"], rows[1]["state_bytes"]) == (8 * per_token, 40 * per_token)

    state = describe_state(lstm, 8, 40)
    assert [(t["name"], t["shape"]) for t in state["tensors"]] == [("h", [32]), ("c", [32])]
    assert state["layers"] == 2 and state["bytes"] == {8: 512, 40: 512}
    state = describe_state(transformer, 8, 40)
    assert all("T" in t["shape"] for t in state["tensors"]) and state["bytes"][40] == 5 * state["bytes"][8]
    # (each tensor's shape without the batch, T where the context is: a key is (heads, T, head size))
    keys = output_cache(transformer(input_ids=torch.zeros(1, 8, dtype=torch.long), use_cache=True)).layers[0].keys
    assert keys.shape[2] == 8 and [t["shape"] for t in state["tensors"]] == [[keys.shape[1], "T", keys.shape[3]]] * 2
    assert "the same after 8 and after 40 tokens" in findings.state_line(describe_state(lstm, 8, 40))
    assert "(5×: T is the number of tokens read)" in findings.state_line(state)


def test_lab_picks_the_smallest_presets_and_names_bad_input(tmp_path):
    presets = lab_presets()
    assert sorted(presets) == seqzoo.list_architectures("causal-lm")
    assert presets["lstm"] == "lstm-tiny" and presets["transformer"] == "transformer-tiny"
    with pytest.raises(ValueError, match="unknown architecture 'lstmm'. Did you mean 'lstm'"):
        lab_presets(["lstmm"])
    with pytest.raises(ValueError, match="unknown task 'recall'; allowed: copy"):
        run_lab(LabConfig.smoke(tasks=["recall"]), tmp_path / "x")
    with pytest.raises(ValueError, match="seeds=.* distinct"):
        run_lab(LabConfig.smoke(seeds=[1, 1]), tmp_path / "x")
    with pytest.raises(ValueError, match=r"distances=\[4, 4\] is invalid: a non-empty list of distinct"):
        run_lab(LabConfig.smoke(distances=[4, 4]), tmp_path / "x")
    with pytest.raises(ValueError, match="workers=-1 is invalid"):
        run_lab(LabConfig.smoke(workers=-1), tmp_path / "x")
    with pytest.raises(SystemExit):
        main(["lab", "seq2seq", "--workers", "-2"])
    assert not (tmp_path / "x").exists()


def test_cli_knows_every_task_and_every_architecture_has_a_recipe():
    assert list(TASK_NAMES) == list(TASKS)
    assert set(recipes.LEARNING_RATES) >= set(seqzoo.list_architectures("causal-lm"))
    assert set(recipes.TASK_STEPS) == set(TASKS)


def test_stop_rule_waits_for_a_full_window_of_solved_steps():
    stop = solved(window=3, accuracy=0.9)
    assert [stop({"accuracy": a}) for a in (1.0, 1.0, 0.5, 1.0, 1.0, 1.0)] == [False, False, False, False, False,
                                                                              True]
    stop = solved(window=2, accuracy=0.75)  # a mean exactly at the threshold holds it
    assert [stop({"accuracy": a}) for a in (0.5, 1.0, 0.4)] == [False, True, False]


def test_a_jobs_recipe_trains_what_the_report_describes(tmp_path):
    """Text: evaluated every steps // text_evaluations steps (as the report says); memory: one distance per batch
    in turn; warmup no longer than the run; the job's seed."""
    from seqzoo.lab.runner import job_recipe, make_job

    cfg = LabConfig(text_steps=100, text_evaluations=10, task_steps=10, warmup_steps=20, distances=[16, 4])
    text = job_recipe(make_job(cfg, "lstm", "lstm-tiny", recipes.TEXT, 3, tmp_path))
    assert (text.train.eval_every, text.train.max_steps, text.optim.warmup_steps, text.train.seed) == (10, 100, 20, 3)
    memory = job_recipe(make_job(cfg, "lstm", "lstm-tiny", "copy", 2, tmp_path))
    assert (memory.data.distance_mix, memory.data.distances, memory.optim.warmup_steps, memory.train.seed) == (
        "batch", [4, 16], 10, 2)


def test_a_memory_runs_trained_share_counts_the_steps_it_ran_with_its_seed(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from seqzoo.lab import runner
    from seqzoo.training import trainer
    from seqzoo.training.data import MemoryTask

    sets = {"distance=1": {"accuracy": 0.5}, "distance=2": {"accuracy": 0.25}}
    monkeypatch.setattr(trainer, "train", lambda recipe, **kwargs: SimpleNamespace(  # (stopped, solved, at step 2)
        steps=2, history=[{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}], eval={"sets": sets}, model=None,
        train_tokens_per_second=1.0, grad_health={}))
    cfg = LabConfig(task_steps=40, batch_size=8, distances=[1, 2], symbols=3, items=2, eval_samples=8)
    run = runner.run_job(runner.make_job(cfg, "gru", "gru-tiny", "copy", 5, tmp_path))
    assert run["ok"] and (run["steps"], run["steps_run"]) == (40, 2) and run["accuracy"] == {1: 0.5, 2: 0.25}

    def shares(seed: int, steps: int) -> dict[int, float]:
        task = MemoryTask("copy", [1, 2], symbols=3, items=2, seq_len=None, eval_samples=8, seed=seed,
                          distance_mix="batch")
        return {int(name.split("=")[1]): share for name, share in task.trained_share(steps, 8).items()}

    assert run["trained_share"] == shares(5, 2) and shares(5, 2) not in (shares(0, 2), shares(5, 40))


def test_a_text_run_keeps_every_steps_loss_and_samples_with_its_own_seed(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from seqzoo.lab import runner
    from seqzoo.training import trainer

    history = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0, "eval": {"perplexity": 7.0}},
               {"step": 3, "loss": 1.0, "eval": {"perplexity": 5.0}}]
    monkeypatch.setattr(trainer, "train", lambda recipe, **kwargs: SimpleNamespace(
        steps=3, history=history, eval={"perplexity": 5.0}, model=None, train_tokens_per_second=1.0, grad_health={}))
    sampled = []
    monkeypatch.setattr(runner, "sample_text", lambda model, prompt, tokens, seed: sampled.append(seed) or "x")
    run = runner.run_job(runner.make_job(LabConfig(text_steps=3), "gru", "gru-tiny", recipes.TEXT, 3, tmp_path))
    assert run["ok"] and run["losses"] == [3.0, 2.0, 1.0] and sampled == [3] and run["sample"] == "x"
    assert run["validation"] == [(2, 7.0), (3, 5.0)]


def test_training_stops_early_when_told(tmp_path):
    from seqzoo.training import recipe_from_dict, train

    recipe = recipe_from_dict({"output_dir": str(tmp_path), "model": {"preset": "gru-tiny"},
                               "data": {"source": "task", "task": "copy", "distances": [2], "symbols": 4,
                                        "items": 2, "eval_samples": 8},
                               "train": {"max_steps": 50, "batch_size": 4, "save_every": 0}})
    result = train(recipe, progress=False, save_model=False, stop=lambda row: row["step"] >= 3)
    assert result.steps == 3 and result.history[-1]["step"] == 3 and "eval" in result.history[-1]


def _results(accuracy_by_arch: dict[str, float], seeds: int = 3) -> dict:
    runs = [{"ok": True, "arch": arch, "task": "selective_copy", "seed": s, "steps": 600, "steps_run": 600,
             "lr": 0.01, "accuracy": {4: acc, 16: acc, 64: acc}} for arch, acc in accuracy_by_arch.items()
            for s in range(seeds)]
    return {"config": {"tasks": ["selective_copy"], "distances": [4, 16, 64], "seeds": list(range(seeds)),
                       "batch_size": 16, "symbols": 8}, "runs": runs,
            "presets": {arch: f"{arch}-tiny" for arch in accuracy_by_arch}}


def test_report_says_which_published_result_it_does_not_reproduce():
    results = _results({"mamba": 0.95, "mamba2": 0.5})
    accuracy = findings.accuracy_by_task(results)
    notes = findings.reproduction_notes(results, accuracy)
    assert "**Reproduced**" in notes and "mamba: 0.95 at 4" in notes
    assert "**Not reproduced here**" in notes and "mamba2: 0.50 at 4" in notes and "600 steps" in notes
    checks = {c["arch"]: c["reproduced"] for c in findings.reproduction_checks(results, accuracy)}
    assert checks == {"mamba": True, "mamba2": False}


def test_lab_gradients_command(tmp_path, capsys, monkeypatch):
    code = main(["lab", "gradients", "--out", str(tmp_path), "--length", "16", "--architectures", "rnn",
                 "transformer"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| rnn |" in printed and "| transformer |" in printed
    assert (tmp_path / "gradients.png").read_bytes()[:8] == PNG_MAGIC
    assert "d=15 (relative)" in (tmp_path / "gradients.md").read_text()
    # a second run keeps the first one's report unless --force
    assert main(["lab", "gradients", "--out", str(tmp_path), "--length", "8", "--architectures", "rnn"]) == 2
    assert "already holds gradients.md and gradients.png; pass --out NEW_FOLDER" in capsys.readouterr().err
    assert "d=15 (relative)" in (tmp_path / "gradients.md").read_text()
    # Without matplotlib (the lab extra) gradients.png, which --out's help promises, was left out without a word.
    from seqzoo.lab import plots

    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    assert main(["lab", "gradients", "--out", str(tmp_path), "--length", "8", "--architectures", "rnn",
                 "--force"]) == 0
    skipped = "Plots skipped: matplotlib is not installed (`pip install 'seqzoo[lab]'`)."
    assert skipped in capsys.readouterr().out
    assert "d=7 (relative)" in (tmp_path / "gradients.md").read_text()
    assert f"> {skipped}" in (tmp_path / "gradients.md").read_text()
    assert main(["lab", "gradients", "--architectures", "nope"]) == 2  # a clear error, not a traceback
    assert "exactly 0" not in printed  # both reach back
    with pytest.raises(SystemExit):  # a seed training cannot take is named by argparse, before any work
        main(["lab", "bidirectional", "--seed", "-1"])
    assert "argument --seed: -1 is out of range: a training seed is an integer in [0, 2**32)" in capsys.readouterr().err


def test_lab_gradients_replaces_links_of_its_file_names_instead_of_writing_through_them(tmp_path, capsys):
    # A link gradients.md to a file elsewhere was written through with --force (the file it points to overwritten),
    # and a link to no file yet was not seen as held: the report was written outside --out without --force.
    out = tmp_path / "g"
    out.mkdir()
    (tmp_path / "notes.md").write_text("mine")
    (out / "gradients.md").symlink_to(tmp_path / "notes.md")
    (out / "gradients.png").symlink_to(tmp_path / "elsewhere.png")
    argv = ["lab", "gradients", "--out", str(out), "--length", "4", "--architectures", "rnn"]
    assert main(argv) == 2
    assert "already holds gradients.md and gradients.png" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    assert (tmp_path / "notes.md").read_text() == "mine" and not (tmp_path / "elsewhere.png").exists()
    assert not (out / "gradients.md").is_symlink() and "Gradient reach" in (out / "gradients.md").read_text()


def test_lab_gradients_explains_a_gradient_that_stops_at_distance_0(tmp_path, capsys):
    """RWKV-7's blocks start as the identity (x070 init): nothing reaches back yet, which the report says."""
    assert main(["lab", "gradients", "--out", str(tmp_path), "--length", "8", "--architectures", "rwkv7"]) == 0
    assert "rwkv7: exactly 0 beyond distance 0" in capsys.readouterr().out
    assert "starts every block's output projections at zero" in (tmp_path / "gradients.md").read_text()


def test_lab_gradients_refuses_a_file_as_its_folder_before_any_work(tmp_path, capsys, monkeypatch):
    from seqzoo.lab import gradients

    monkeypatch.setattr(gradients, "gradient_profile", None)  # would fail if reached
    (tmp_path / "a-file").write_text("mine")
    assert main(["lab", "gradients", "--out", str(tmp_path / "a-file")]) == 2
    assert "is a file; choose a folder for --out" in capsys.readouterr().err
    assert (tmp_path / "a-file").read_text() == "mine"


def test_only_a_smoke_config_is_marked_as_one_and_the_card_prose_is_whole():
    # A full run's report must not carry the smoke banner (a field shadowed by the smoke() constructor once did).
    assert LabConfig().is_smoke is False and LabConfig.smoke().is_smoke is True
    from seqzoo.lab.findings import how_it_remembers

    mamba = how_it_remembers("mamba", "mamba-tiny")
    assert "128 channels" in mamba and mamba.endswith(".") and "{{" not in mamba
    assert how_it_remembers("gru").endswith("at token 10 and at token 10,000.")  # the whole paragraph


def test_replacing_a_lab_report_keeps_what_the_lab_did_not_write(tmp_path):
    out = tmp_path / "lab-report"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"status": "interrupted", "environment": {"command": "seqzoo lab"}}))
    (out / "runs").mkdir()
    (out / "bidirectional.md").write_text("another lab's report, written beside it")
    prepare_output(out, force=False, log=lambda _: None)
    assert sorted(p.name for p in out.iterdir()) == ["bidirectional.md"]
    # A lab still running there (this process) is never replaced, with --force neither.
    (out / "results.json").write_text(json.dumps({"status": "running", "environment": {
        "command": "seqzoo lab", "pid": os.getpid(), "host": platform.node()}}))
    with pytest.raises(ValueError, match="a lab still running"):
        prepare_output(out, force=True, log=lambda _: None)
    # A marker without a process id (an edited one) is no running lab: the folder is replaced as an unfinished run.
    (out / "results.json").write_text(json.dumps({"status": "running", "environment": {
        "command": "seqzoo lab", "pid": "abc", "host": platform.node()}}))
    prepare_output(out, force=False, log=lambda _: None)
    assert not (out / "results.json").exists()
    with pytest.raises(ValueError, match=r"seeds=\[-1\] is invalid"):
        LabConfig.smoke(seeds=[-1]).validate()


def test_the_memory_plot_leaves_out_tasks_without_a_successful_run(tmp_path):
    from seqzoo.lab import plots

    if not plots.matplotlib_available():
        pytest.skip("matplotlib is not installed")
    plots.memory_plot({"copy": {}}, {"copy": 0.125}, tmp_path / "none.png")  # every run failed: no figure
    assert not (tmp_path / "none.png").exists()
    plots.memory_plot({"copy": {}, "induction": {"lstm": {4: [0.5, 0.7]}}}, {"copy": 0.125, "induction": 0.125},
                      tmp_path / "one.png")
    assert (tmp_path / "one.png").read_bytes()[:8] == PNG_MAGIC


def test_the_gradient_takeaway_marks_a_profile_at_initialisation():
    """An architecture whose text run failed has no trained profile; its figure is the one at initialisation, and
    the takeaway (labelled "after training on text") says so beside it."""
    profile = [1.0] + [1e-3] * 70
    measured = {"gru": {"gradients_init": profile, "gradients_trained": profile},
                "lstm": {"gradients_init": [1.0] + [1e-2] * 70}}
    (text,) = findings._gradient_takeaways(measured, {"gradient_length": 128})
    assert "(after training on text)" in text and "lstm 1e-02 (at initialisation: its text run failed)" in text
    assert "gru 1e-03," in text or text.rstrip(".").endswith("gru 1e-03")


def test_a_name_given_twice_is_refused_before_any_work(tmp_path):
    from seqzoo.lab.bidirectional import BidirectionalLabConfig, run_bidirectional_lab
    from seqzoo.lab.seq2seq import Seq2SeqLabConfig, run_seq2seq_lab
    from seqzoo.lab.sweep import SweepConfig, run_sweep

    # (each would train the same run twice, into one folder, and report it twice)
    with pytest.raises(ValueError, match="tasks=.* distinct"):
        run_lab(LabConfig.smoke(tasks=["copy", "copy"]), tmp_path / "x")
    with pytest.raises(ValueError, match="tasks=.* distinct"):
        run_seq2seq_lab(Seq2SeqLabConfig.smoke(tasks=["reverse", "reverse"]), tmp_path / "x")
    with pytest.raises(ValueError, match="distances=.* distinct"):
        run_bidirectional_lab(BidirectionalLabConfig.smoke(distances=[4, 4]), tmp_path / "x")
    with pytest.raises(ValueError, match="distinct learning rates"):
        run_sweep(SweepConfig(rates=[1e-2, 0.01]), tmp_path / "x")
    with pytest.raises(ValueError, match="--deadline-minutes -1 is invalid"):
        run_sweep(SweepConfig(deadline_seconds=-60), tmp_path / "x")
    if not torch.cuda.is_available():  # (else every run trained on the CPU, under a report that said cuda)
        with pytest.raises(ValueError, match="--device cuda: no CUDA device is available here"):
            run_sweep(SweepConfig(device="cuda"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_summary_pairs_each_seed_with_itself_when_a_run_failed():
    from seqzoo.lab.report import memory_mean_by_seed

    def run(task, seed, accuracy, ok=True):
        return {"ok": ok, "arch": "lstm", "task": task, "seed": seed, "accuracy": {4: accuracy}}

    runs = [run("copy", 0, 0.2), run("copy", 1, 0.0, ok=False), run("copy", 2, 1.0),
            run("induction", 0, 0.2), run("induction", 1, 0.4), run("induction", 2, 1.0)]
    # seed 1 (its copy run failed) is left out; seed 2's mean is its own, not copy s2 with induction s1
    assert memory_mean_by_seed({"config": {"tasks": ["copy", "induction"]}, "runs": runs}, "lstm") == [0.2, 1.0]


def test_the_sweep_compares_rates_on_the_tasks_each_of_them_finished():
    from seqzoo.lab.sweep import propose

    def run(task, rate, accuracy):
        return {"ok": True, "arch": "lstm", "lr": rate, "task": task, "accuracy": {64: accuracy}, "steps_run": 600,
                "steps": 600}

    # 3e-3 is better on copy; 1e-2 was cut (by a deadline) before the harder selective copy
    runs = [run("selective_copy", 3e-3, 0.6), run("copy", 3e-3, 1.0), run("copy", 1e-2, 0.95)]
    results = {"config": {"tasks": ["copy", "selective_copy"], "rates": [3e-3, 1e-2], "steps": 600},
               "presets": {"lstm": "lstm-tiny"}, "runs": runs}
    assert propose(results)["learning_rates"]["lstm"]["memory"] == 3e-3


def test_a_rerun_never_drops_an_unfinished_sweeps_runs_without_force(tmp_path):
    from seqzoo.lab.sweep import SweepConfig, run_sweep

    out = tmp_path / "sweep"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"status": "running", "environment": {"command": "seqzoo lab sweep",
                                                                                       "pid": None}}))
    (out / "runs.jsonl").write_text('{"arch": "lstm"}\n')
    with pytest.raises(ValueError, match="unfinished sweep: .* 1 finished run"):
        run_sweep(SweepConfig(architectures=["lstm"]), out)
    assert (out / "runs.jsonl").read_text() == '{"arch": "lstm"}\n'


def test_no_lab_replaces_an_unfinished_sweeps_runs_without_force_even_a_damaged_record(tmp_path):
    """The guard sat in run_sweep alone: `seqzoo lab --out SWEEP_FOLDER` (the whole lab) replaced an unfinished
    sweep's folder, runs.jsonl with it, without --force; and a runs.jsonl with a line of other bytes (a write cut
    short) failed the sweep's guard with a bare UnicodeDecodeError."""
    from seqzoo.lab.sweep import SweepConfig, run_sweep

    out = tmp_path / "sweep"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"status": "interrupted", "environment": {"command": "seqzoo lab "
                                                                                           "sweep", "pid": None}}))
    record = b'{"arch": "lstm"}\n{"arch": "rnn", "task": "co\xff\xfe'
    (out / "runs.jsonl").write_bytes(record)
    with pytest.raises(ValueError, match="unfinished sweep: .* 2 finished run.*--force to replace them"):
        run_lab(LabConfig.smoke(architectures=["rnn"]), out, log=lambda line: None)
    with pytest.raises(ValueError, match="unfinished sweep: .* 2 finished run"):
        run_sweep(SweepConfig(architectures=["lstm"]), out, log=lambda line: None)
    assert (out / "runs.jsonl").read_bytes() == record
    prepare_output(out, force=True, log=lambda line: None)  # (--force replaces it)
    assert not (out / "runs.jsonl").exists()


def test_an_option_before_a_lab_subcommand_is_refused_not_dropped(tmp_path, capsys):
    # argparse gave `--out X` to `seqzoo lab`, and `gradients`' own default replaced it
    assert main(["lab", "--out", str(tmp_path / "x"), "gradients"]) != 0
    assert "--out " in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["lab", "--smoke", "seq2seq"]) != 0
    assert "`seqzoo lab seq2seq --smoke ...`" in capsys.readouterr().err
    # An option the sub-command does not have: moving it would fail as well, so the error says so.
    assert main(["lab", "--smoke", "--out", str(tmp_path / "x"), "gradients"]) != 0
    err = capsys.readouterr().err
    assert "`seqzoo lab gradients` has no --smoke" in err and "--out" not in err.split("has no")[1], err


def test_a_lab_replacing_its_report_beside_others_deletes_only_what_that_report_wrote(tmp_path):
    """``seqzoo lab seq2seq --force`` (and ``bidirectional``) with fewer tasks: the earlier report's figures and run
    folders go, so none is left beside the new report; other files, other runs and anything outside stay."""
    from seqzoo.lab.folders import remove_previous_report

    out = tmp_path / "lab"
    (out / "runs").mkdir(parents=True)
    runs = [{"model": "bahdanau", "task": "digits"}, {"model": "transformer", "task": "reverse"},
            {"model": "..", "task": "x"}, {"model": "../../outside", "task": "y"}, {"task": "no model"}, "not a run"]
    (out / "seq2seq-results.json").write_text(json.dumps({"runs": runs}))
    for name in ("bahdanau-digits", "transformer-reverse", "luong-dot-copy"):
        (out / "runs" / name).mkdir()
        (out / "runs" / name / "metrics.jsonl").write_text("{}")
    (tmp_path / "outside-y").mkdir()
    for name in ("seq2seq.md", "seq2seq-attention-digits.png", "seq2seq-attention-reverse.png", "report.md",
                 "notes.txt"):
        (out / name).write_text("x")
    remove_previous_report(out, "seq2seq-results.json", ("seq2seq-results.json", "seq2seq.md", "absent.png"),
                           ("seq2seq-attention-*.png",), lambda run: f"{run['model']}-{run['task']}")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.md", "runs"]
    assert [p.name for p in (out / "runs").iterdir()] == ["luong-dot-copy"]  # a run the results did not list
    assert (tmp_path / "outside-y").is_dir()
    # No earlier report: nothing is touched; an unreadable one: its files go, its runs (unknown) stay.
    remove_previous_report(out, "seq2seq-results.json", ("report.md",), (), lambda run: "luong-dot-copy")
    assert (out / "report.md").exists()
    (out / "seq2seq-results.json").write_text("{not json")
    remove_previous_report(out, "seq2seq-results.json", ("seq2seq-results.json",), (), lambda run: "luong-dot-copy")
    assert not (out / "seq2seq-results.json").exists() and (out / "runs" / "luong-dot-copy").is_dir()


def test_the_trained_share_line_gives_the_range_over_runs_and_nothing_for_older_results():
    from seqzoo.lab.report import _trained_share_line

    runs = [{"task": "copy", "ok": True, "trained_share": {"4": 0.25, "16": 0.5}},
            {"task": "copy", "ok": True, "trained_share": {"4": 0.375, "16": 0.5}},
            {"task": "copy", "ok": False, "trained_share": {"4": 1.0, "16": 1.0}},  # a failed run counts for nothing
            {"task": "induction", "ok": True, "trained_share": {"4": 0.0, "16": 0.0}}]
    line = _trained_share_line({"runs": runs}, "copy", [4, 16])
    assert line == "\n\nEvaluation sequences also drawn in training (lowest–highest over runs): distance 4 25%–38%, " \
                   "distance 16 50%."
    older = [{"task": "copy", "ok": True, "accuracy": {"4": 1.0}}]  # a results.json written before it was recorded
    assert _trained_share_line({"runs": older}, "copy", [4]) == ""


def test_the_sweep_scores_rates_on_tuning_sets_and_the_lab_on_its_own(tmp_path):
    # The sweep chooses the lab's rates: on the sets the lab then reports, the choice would flatter them.
    from seqzoo.lab.runner import job_recipe, make_job
    from seqzoo.lab.sweep import SweepConfig, sweep_jobs

    jobs = sweep_jobs(SweepConfig(tasks=["copy"], rates=[3e-3]), {"rnn": "rnn-tiny"}, tmp_path)
    assert {job["task"] for job in jobs} == {"copy", "text"}
    # every rate's run of a task writes to a folder of its own
    two_rates = sweep_jobs(SweepConfig(tasks=["copy"], rates=[3e-3, 1e-2]), {"rnn": "rnn-tiny"}, tmp_path)
    assert len({job["output_dir"] for job in two_rates}) == len(two_rates) == 4
    assert all(job_recipe(job).data.tuning_set is True for job in jobs)
    lab = LabConfig.smoke(architectures=["rnn"])
    assert all(job_recipe(make_job(lab, "rnn", "rnn-tiny", task, 0, tmp_path)).data.tuning_set is False
               for task in ("copy", "text"))


def test_replacing_a_lab_report_keeps_the_run_folders_of_reports_beside_it(tmp_path):
    """runs/ is shared: ``seqzoo lab --force`` deletes the lab's runs/<architecture>/ only, not the run folders of a
    seq2seq or bidirectional report written beside it."""
    out = tmp_path / "lab-report"
    (out / "runs" / "lstm" / "copy-s0").mkdir(parents=True)
    (out / "runs" / "bahdanau-reverse").mkdir()
    (out / "runs" / "bahdanau-reverse" / "metrics.jsonl").write_text("{}\n")
    (out / "results.json").write_text(json.dumps({"status": "finished", "presets": {"lstm": "lstm-tiny"},
                                                  "environment": {"command": "seqzoo lab"}}))
    prepare_output(out, force=True, log=lambda _: None)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["bahdanau-reverse"]
    assert (out / "runs" / "bahdanau-reverse" / "metrics.jsonl").is_file()


def test_a_hybrids_state_line_shows_the_growing_layer_too():
    import seqzoo

    state = describe_state(seqzoo.create_model("hybrid-tiny"), 8, 40)
    line = findings.state_line(state)
    assert "k (" in line and "T" in line and "in layer 1" in line and "in layer 0" in line


@pytest.mark.parametrize("command, module, runner, folder", [
    ("seq2seq", "seqzoo.lab.seq2seq", "run_seq2seq_lab", "lab-seq2seq"),
    ("bidirectional", "seqzoo.lab.bidirectional", "run_bidirectional_lab", "lab-bidirectional"),
])
def test_a_smoke_run_of_a_lab_subcommand_writes_to_its_own_folder(monkeypatch, command, module, runner, folder):
    # (into the real report's folder, it made the real run refuse that folder for a report whose figures mean nothing)
    import importlib

    written = []
    monkeypatch.setattr(importlib.import_module(module), runner,
                        lambda cfg, out, **kwargs: written.append(str(out)) or {"runs": []})
    assert main(["lab", command, "--smoke"]) == 0 and main(["lab", command]) == 0
    assert written == [f"{folder}-smoke", folder]


def test_seqzoo_lab_hands_each_option_to_the_lab_and_fails_when_a_run_failed(monkeypatch):
    """`seqzoo lab` itself (its sub-commands had tests, the command did not): every option reaches LabConfig under
    its own name, --smoke keeps its small settings where no option replaces them, and a failed run fails the
    command."""
    from seqzoo.lab import runner

    calls = []

    def lab(cfg, out, command, force, resume):
        assert resume is False
        calls.append((cfg, out, command, force))
        return {"runs": [{"ok": True}, {"ok": len(calls) > 1}]}

    monkeypatch.setattr(runner, "run_lab", lab)
    argv = ["lab", "--smoke", "--architectures", "rnn", "gru", "--tasks", "copy", "--distances", "3", "5", "--seeds",
            "7", "--steps", "11", "--text-steps", "13", "--lr", "0.02", "--workers", "1"]
    assert main(argv) == 1
    cfg, out, command, force = calls[0]
    assert (cfg.architectures, cfg.tasks, cfg.distances, cfg.seeds) == (["rnn", "gru"], ["copy"], [3, 5], [7])
    assert (cfg.task_steps, cfg.text_steps, cfg.lr, cfg.workers) == (11, 13, 0.02, 1)
    assert cfg.is_smoke and cfg.batch_size == LabConfig.smoke().batch_size
    assert (out, command, force) == ("lab-report-smoke", "seqzoo " + " ".join(argv), False)
    assert main(["lab", "--out", "mine", "--force"]) == 0
    cfg, out, _, force = calls[1]
    assert cfg == LabConfig() and (out, force) == ("mine", True)


def test_a_sweep_that_fails_marks_its_folder_failed_and_keeps_its_finished_runs(tmp_path, monkeypatch):
    """Only Ctrl-C marked the folder: any other error (a run's worker pool broken, the report) left it "running"
    with this process's id, which refused a rerun there for as long as the process (a notebook's) lived."""
    from seqzoo.lab import sweep
    from seqzoo.lab.sweep import SweepConfig, run_sweep

    def one_run_then_broken(jobs, workers, log, device="cpu", deadline=None, on_result=None):
        on_result({"arch": "lstm", "task": "copy", "ok": True, "losses": [1.0], "accuracy": {4: float("nan")}})
        raise RuntimeError("the pool broke")

    monkeypatch.setattr(sweep, "run_jobs", one_run_then_broken)
    out, lines = tmp_path / "sweep", []
    with pytest.raises(RuntimeError, match="the pool broke"):
        run_sweep(SweepConfig(architectures=["lstm"]), out, log=lines.append)
    written = json.loads((out / "results.json").read_text())
    assert written["status"] == "failed" and written["error"] == "RuntimeError: the pool broke"
    assert written["environment"]["command"] == "seqzoo lab sweep"
    kept = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert kept == [{"arch": "lstm", "task": "copy", "ok": True, "accuracy": {"4": None}}]  # (strict JSON)
    assert any("1 finished run(s) are kept in" in line for line in lines), lines
    # Not taken for a running sweep: a rerun here is refused only for the runs it would drop.
    with pytest.raises(ValueError, match="unfinished sweep: .* 1 finished run"):
        run_sweep(SweepConfig(architectures=["lstm"]), out, log=lines.append)

    def broken_report(results):
        raise OSError("disk full")

    monkeypatch.setattr(sweep, "run_jobs", lambda *args, **kwargs: [])
    monkeypatch.setattr(sweep, "sweep_report", broken_report)
    with pytest.raises(OSError, match="disk full"):
        run_sweep(SweepConfig(architectures=["lstm"]), out, log=lines.append, force=True)
    assert json.loads((out / "results.json").read_text())["error"] == "OSError: disk full"
