"""`seqzoo lab bidirectional`: the smoke run end to end, and the pieces it is built from."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

import seqzoo
from seqzoo.cli import main
from seqzoo.lab import bidirectional
from seqzoo.lab import cli as lab_cli
from seqzoo.lab.bidirectional import BidirectionalLabConfig, job_recipe, summary_sentence
from seqzoo.training.building import build_model
from seqzoo.training.classification import build_label_data

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", [bidirectional.REPORT_FILE, "runs/lstm-TASK-left-to-right/recipe.yaml"])
def test_a_report_of_the_users_under_the_labs_name_is_kept_without_force(tmp_path, name):
    # (without the lab's results file beside it, bidirectional.md was written over without a word, and a training
    # run of the user's where a run of the lab goes was deleted: the lab's runs train with force=True)
    cfg = BidirectionalLabConfig.smoke(workers=1)
    name = name.replace("TASK", cfg.tasks[0])
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text("mine")
    held = name.removesuffix("/recipe.yaml")
    with pytest.raises(ValueError, match=rf"already holds {held}, which this bidirectional lab writes"):
        bidirectional.run_bidirectional_lab(cfg, tmp_path, log=lambda line: None)
    assert (tmp_path / name).read_text() == "mine"


def test_smoke_run_compares_both_directions_of_every_architecture(tmp_path, capsys):
    out = tmp_path / "bi"
    assert main(["lab", "bidirectional", "--smoke", "--workers", "1", "--out", str(out)]) == 0
    results = json.loads((out / "bidirectional-results.json").read_text())
    smoke = BidirectionalLabConfig.smoke()
    assert [(r["arch"], r["task"], r["direction"]) for r in results["runs"]] == [
        (arch, task, direction) for task in smoke.tasks for arch in smoke.architectures
        for direction in ("left to right", "bidirectional")]
    assert all(r["ok"] for r in results["runs"]), [r.get("error") for r in results["runs"]]
    assert all(sorted(map(int, r["accuracy"])) == smoke.distances for r in results["runs"])
    report = (out / "bidirectional.md").read_text()
    assert "**Smoke run**" in report and "reading both ways is worth" in report
    from seqzoo.lab.bidirectional import write_report

    (tmp_path / "plain").mkdir()  # a run of few steps without --smoke is no smoke run
    numbered = {  # (the report is written from the results in memory, whose distances are numbers)
        **results, "config": {**results["config"], "is_smoke": False},
        "runs": [{**run, "accuracy": {int(d): a for d, a in run["accuracy"].items()}} for run in results["runs"]],
        "baselines": {task: {int(d): a for d, a in by.items()} for task, by in results["baselines"].items()}}
    assert "**Smoke run**" not in write_report(numbered, tmp_path / "plain")
    assert f"Command: `seqzoo lab bidirectional --smoke --workers 1 --out {out}`" in report
    assert (out / "bidirectional.png").read_bytes()[:8] == PNG_MAGIC and "](bidirectional.png)" in report
    for run in results["runs"]:
        cells = " | ".join(f"{run['accuracy'][str(d)]:.2f}" for d in smoke.distances)
        assert f"| **{run['arch']}** | `{run['preset']}` | {run['direction']} | {cells} |" in report
    # The commonest-label baseline, counted here from the held-out texts the runs were scored on.
    data = build_label_data("token-classification", job_recipe({
        "arch": "lstm", "preset": "lstm-tiny", "task": "appears_later", "direction": "bidirectional",
        "config": results["config"], "output_dir": str(tmp_path)}).data, smoke.seed)
    for distance in smoke.distances:
        tags = [tag for _, row_tags in data.eval_rows()[f"distance={distance}"] for tag in row_tags]
        share = max(tags.count("again"), tags.count("last")) / len(tags)
        assert results["baselines"]["appears_later"][str(distance)] == pytest.approx(share)
    # Its report is replaced only with --force; then every job starts over in its own folder.
    assert main(["lab", "bidirectional", "--smoke", "--workers", "1", "--out", str(out)]) == 2
    assert "already holds a bidirectional lab report" in capsys.readouterr().err
    assert main(["lab", "bidirectional", "--smoke", "--workers", "1", "--out", str(out), "--force"]) == 0
    assert all(r["ok"] for r in json.loads((out / "bidirectional-results.json").read_text())["runs"])


@pytest.mark.parametrize("task", ["appears_later", "first_letter"])
def test_only_the_bidirectional_run_sees_what_comes_after(task, tmp_path):
    cfg = BidirectionalLabConfig.smoke(architectures=["gru"])
    outputs, configs = {}, {}
    for direction in ("left to right", "bidirectional"):
        recipe = job_recipe({"arch": "gru", "preset": "gru-tiny", "task": task, "direction": direction,
                             "config": vars(cfg), "output_dir": str(tmp_path)})
        torch.manual_seed(0)
        model = build_model(recipe, build_label_data(recipe.task, recipe.data, 0)).eval()
        configs[direction] = model.config
        a, b = torch.tensor([list(b"a b c d")]), torch.tensor([list(b"a b c a")])
        with torch.no_grad():
            outputs[direction] = (model(a).logits, model(b).logits)
    assert not configs["left to right"].bidirectional and configs["bidirectional"].bidirectional
    if task == "appears_later":  # the first word's tag: only a bidirectional tagger sees the last word change
        uni, bi = outputs["left to right"], outputs["bidirectional"]
        assert torch.equal(uni[0][0, 0], uni[1][0, 0]) and not torch.equal(bi[0][0, 0], bi[1][0, 0])
    else:  # each direction pooled where it has read the whole text
        assert configs["left to right"].classifier_pooling == "last"
        assert configs["bidirectional"].classifier_pooling == "first+last"


def test_architectures_that_cannot_read_backwards_are_refused_with_the_ones_that_can():
    presets = BidirectionalLabConfig().presets()
    assert set(presets) == {"rnn", "lstm", "gru", "mamba", "mamba2", "rwkv7"}
    assert all(seqzoo.get_architecture(a).config_class.supports_bidirectional for a in presets)
    with pytest.raises(ValueError, match="'transformer' cannot be a bidirectional encoder in seqzoo; the ones that "
                                         "can: gru, lstm, mamba, mamba2, rnn, rwkv7"):
        BidirectionalLabConfig(architectures=["transformer"]).presets()
    with pytest.raises(ValueError, match="distances=\\[1\\] is invalid"):
        BidirectionalLabConfig(distances=[1]).validate()
    assert lab_cli.BIDIRECTIONAL_TASKS == tuple(bidirectional.TASKS)


def test_the_summary_sentence_reads_the_gap_at_the_longest_distance():
    def run(arch, task, direction, short, long):
        return {"arch": arch, "task": task, "direction": direction, "ok": True, "accuracy": {8: short, 32: long}}

    results = {"config": {"tasks": ["appears_later"], "distances": [8, 32]}, "runs": [
        run("lstm", "appears_later", "left to right", 0.7, 0.7),
        run("lstm", "appears_later", "bidirectional", 1.0, 0.9),
        run("rnn", "appears_later", "left to right", 0.7, 0.6),
        run("rnn", "appears_later", "bidirectional", 0.8, 0.7),
    ]}
    assert ("on tagging at 32 words, reading both ways is worth +0.15 accuracy on average (rnn +0.10 to lstm +0.20)"
            in summary_sentence(results))


def test_the_summary_sentence_reads_the_longest_distance_however_the_distances_were_listed():
    runs = [{"arch": "lstm", "task": "first_letter", "direction": direction, "ok": True, "accuracy": accuracy}
            for direction, accuracy in (("left to right", {8: 0.5, 32: 0.25}), ("bidirectional", {8: 0.5, 32: 1.0}))]
    sentence = summary_sentence({"config": {"tasks": ["first_letter"], "distances": [32, 8]}, "runs": runs})
    assert "on classification at 32 words, reading both ways is worth +0.75 accuracy" in sentence


def test_each_direction_trains_its_own_pooling_with_the_labs_seed(tmp_path):
    cfg = BidirectionalLabConfig(seed=7)
    poolings = {}
    for direction in bidirectional.DIRECTIONS:
        recipe = job_recipe({"arch": "lstm", "preset": "lstm-tiny", "task": "first_letter", "direction": direction,
                             "config": asdict(cfg), "output_dir": str(tmp_path)})
        assert recipe.train.seed == 7 and recipe.model.config["bidirectional"] == (direction == "bidirectional")
        poolings[direction] = recipe.model.config["classifier_pooling"]
    assert poolings == {"left to right": "last", "bidirectional": "first+last"}


def test_the_commonest_label_baseline_counts_every_label_of_the_held_out_texts():
    from collections import Counter

    from seqzoo.training.classification import generated_texts

    cfg = {"tasks": ["appears_later", "first_letter"], "distances": [4, 6], "symbols": 3, "eval_samples": 16,
           "seed": 5}
    table = bidirectional.baselines(cfg)
    for task, head in (("appears_later", "token-classification"), ("first_letter", "sequence-classification")):
        for distance in (4, 6):
            rows = generated_texts(head, task, [distance], 3, 16, 5).eval_rows()[f"distance={distance}"]
            labels = [label for _, tags in rows for label in (tags if isinstance(tags, list) else [tags])]
            assert table[task][distance] == Counter(labels).most_common(1)[0][1] / len(labels)
    assert table["appears_later"] != bidirectional.baselines({**cfg, "seed": 0})["appears_later"]


def test_a_negative_worker_count_or_a_learning_rate_out_of_range_is_refused_before_any_training():
    with pytest.raises(ValueError, match="workers=-1 is invalid: >= 1, or 0 for one per core"):
        BidirectionalLabConfig(workers=-1).validate()  # (was taken as one worker)
    BidirectionalLabConfig(workers=0).validate()
    with pytest.raises(ValueError, match=r"lr=0.0 is invalid: must be in \(0, 1\)"):
        BidirectionalLabConfig(lr=0.0).validate()  # (every run failed on it, one by one)


def test_a_lab_that_fails_after_some_runs_keeps_them_on_disk_and_says_why(tmp_path, monkeypatch):
    """The results were written only once every run had ended: a failure in a later run lost the training done.
    Each run is now recorded (strict JSON) as it ends, and the file says the lab failed and why."""
    calls = []

    def one_run_then_broken(job):
        calls.append(job)
        if len(calls) > 1:
            raise RuntimeError("a worker died")
        return {"arch": job["arch"], "task": job["task"], "direction": job["direction"], "ok": True,
                "accuracy": {8: float("nan")}, "seconds": 0.1}

    monkeypatch.setattr(bidirectional, "run_job", one_run_then_broken)
    out, lines = tmp_path / "bi", []
    cfg = BidirectionalLabConfig.smoke(workers=1)
    with pytest.raises(RuntimeError, match="a worker died"):
        bidirectional.run_bidirectional_lab(cfg, out, log=lines.append)
    kept = json.loads((out / "bidirectional-results.json").read_text())
    assert kept["status"] == "failed" and kept["error"] == "RuntimeError: a worker died"
    assert kept["runs"] == [{"arch": calls[0]["arch"], "task": calls[0]["task"], "direction": calls[0]["direction"],
                             "ok": True, "accuracy": {"8": None}, "seconds": 0.1}]
    assert kept["command"] == "seqzoo lab bidirectional"
    assert any("1 finished training run(s) are kept in" in line for line in lines), lines
    with pytest.raises(ValueError, match=r"holds an unfinished bidirectional lab \(failed: RuntimeError: a worker "
                                         r"died\).*records 1 finished training run\(s\).*--force to replace them"):
        bidirectional.run_bidirectional_lab(cfg, out, log=lines.append)

    # A report that fails keeps every run too.
    def broken_report(results, out):
        raise OSError("disk full")

    monkeypatch.setattr(bidirectional, "run_job", lambda job: {**{k: job[k] for k in ("arch", "task", "direction")},
                                                               "ok": True, "accuracy": {8: 0.5}, "seconds": 0.1})
    monkeypatch.setattr(bidirectional, "write_report", broken_report)
    with pytest.raises(OSError, match="disk full"):
        bidirectional.run_bidirectional_lab(cfg, out, log=lines.append, force=True)
    kept = json.loads((out / "bidirectional-results.json").read_text())
    assert kept["status"] == "failed" and kept["error"] == "OSError: disk full"
    assert len(kept["runs"]) == 2 * len(cfg.architectures) * len(cfg.tasks) and "baselines" in kept


def test_an_encoder_without_the_heads_the_lab_trains_is_told_which_it_lacks(monkeypatch):
    # A plugin's LSTM with a causal-LM head only was "cannot be a bidirectional encoder", which it can be.
    from seqzoo import registry

    monkeypatch.setattr(registry, "_ARCHITECTURES", dict(registry._ARCHITECTURES))
    monkeypatch.setattr(registry, "_PLUGIN_PRESETS", dict(registry._PLUGIN_PRESETS))
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    # (its model_type's AutoConfig registration undone too: registering the test's classes again would be refused)
    monkeypatch.setattr(CONFIG_MAPPING, "_extra_content", dict(CONFIG_MAPPING._extra_content))
    config = type("HeadlessConfig", (seqzoo.LSTMConfig,), {"model_type": "seqzoo_lab_headless"})
    model = type("HeadlessModel", (seqzoo.LSTMModel,), {"config_class": config})
    lm = type("HeadlessForCausalLM", (seqzoo.LSTMForCausalLM,), {"config_class": config, "base_model_class": model})
    tagger = type("HeadlessForTokenClassification", (seqzoo.LSTMForTokenClassification,), {"config_class": config})
    registry.register_architecture(registry.ModelSpec("headless", config, model, lm,
                                                      heads={"token-classification": tagger},
                                                      presets={"headless-tiny": {"hidden_size": 16}}))
    with pytest.raises(ValueError, match=r"architecture 'headless' can be a bidirectional encoder but has no "
                                         r"sequence-classification head, which the bidirectional lab's task\(s\) "
                                         r"first_letter train: give its ModelSpec heads for 'sequence-classification', "
                                         r"or run only --tasks appears_later; the architectures that have them: gru, "
                                         r"lstm, mamba, mamba2, rnn, rwkv7"):
        BidirectionalLabConfig(architectures=["headless"]).presets()
    with pytest.raises(ValueError, match=r"'headless' can be a bidirectional encoder but has no "
                                         r"sequence-classification head, .*first_letter train: give its ModelSpec "
                                         r"heads for 'sequence-classification'; the"):
        BidirectionalLabConfig(architectures=["headless"], tasks=["first_letter"]).presets()
    # The default run leaves it out; with the task it has a head for, it is trained (as an entry point's: one
    # registered in this process only would not reach the workers).
    monkeypatch.setattr(registry, "_ENTRY_POINT_ARCHITECTURES", {"headless"})
    assert "headless" not in BidirectionalLabConfig().presets()
    assert BidirectionalLabConfig(tasks=["appears_later"]).presets()["headless"] == "headless-tiny"
