"""The lab's figures against the same figures recomputed here: timings, gradient norms, chance levels, and every
table and sentence of the reports from hand-made results whose right answer is known."""

from __future__ import annotations

import math
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from seqzoo.lab import findings, measure
from seqzoo.lab.gradients import gradient_profile, identity_notes, table_rows
from seqzoo.lab.runner import LabConfig
from seqzoo.training.data import TASKS
from tests.conftest import tiny_model

# ----------------------------------------------------------------------------------------------------------------
# measure.py and gradients.py: the measurements.


def test_decode_time_is_the_median_interval_between_decoded_tokens(monkeypatch):
    """A clock that ticks 2, 4, then 100 ms between calls: the median step is 4 ms (the mean would be 35, two
    steps per interval 54)."""
    ticks = [0.002, 0.004, 0.100]
    calls = []

    def clock() -> float:
        calls.append(None)
        return sum(ticks[i % 3] for i in range(len(calls) - 1))

    monkeypatch.setattr(measure, "time", SimpleNamespace(perf_counter=clock))
    rows = measure.decode_profile(tiny_model("lstm-tiny"), [8, 12], steps=5)
    assert len(calls) == 2 * 6  # once per decoded token: steps + 1 per context
    assert [row["ms_per_token"] for row in rows] == [pytest.approx(4.0), pytest.approx(4.0)]


def test_state_bytes_count_each_tensors_own_element_size():
    layers = [{"h": torch.zeros(1, 3, dtype=torch.bfloat16)}, {"k": torch.zeros(1, 2, 5), "v": torch.zeros(1, 2, 5)}]
    assert measure.state_bytes(layers) == 3 * 2 + 2 * 10 * 4


def test_a_state_alike_in_every_layer_is_described_once_per_layer():
    lstm = tiny_model("lstm-tiny")
    state = measure.describe_state(lstm, 8, 40)
    assert state["same_in_every_layer"] is True and state["kinds"] == [{"layers": [0, 1], "tensors": state["tensors"]}]
    assert findings.state_line(state) == ("h (32), c (32) per layer × 2 layers, float32: 512 bytes, the same after 8 "
                                          "and after 40 tokens")


def _reference_profile(model, length: int, batch: int, seed: int) -> list[float]:
    """||d loss(last position) / d embedding(position t)||, one sequence at a time through inputs_embeds, mean over
    the sequences, by distance from the last position (the same draws as gradient_profile's)."""
    generator = torch.Generator().manual_seed(seed)
    high = min(model.config.vocab_size, 256)
    ids = torch.randint(0, high, (batch, length), generator=generator)
    targets = torch.randint(0, high, (batch,), generator=generator)
    norms = []
    for row in range(batch):
        embeddings = model.get_input_embeddings()(ids[row:row + 1]).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeddings, use_cache=False).logits
        (grad,) = torch.autograd.grad(F.cross_entropy(logits[:, -1].float(), targets[row:row + 1]), embeddings)
        norms.append(grad[0].double().pow(2).sum(-1).sqrt())
    mean = torch.stack(norms).mean(0)
    return [mean[length - 1 - distance].item() for distance in range(length)]


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny"])
def test_the_gradient_profile_matches_a_per_sequence_autograd_reference(preset):
    model = tiny_model(preset)
    profile = gradient_profile(model, length=6, batch=3, seed=1)
    assert profile == pytest.approx(_reference_profile(model, 6, 3, 1), rel=1e-4, abs=1e-10)


def test_the_gradient_profile_is_measured_without_dropout():
    """A model handed over in training mode (a text run's model, dropout on) is measured as in evaluation: its
    profile is the reference's of the model in eval mode."""
    model = tiny_model("lstm-tiny", dropout=0.5).train()
    profile = gradient_profile(model, length=6, batch=3, seed=1)
    assert profile == pytest.approx(_reference_profile(model.eval(), 6, 3, 1), rel=1e-4, abs=1e-10)


def test_the_gradient_table_is_relative_to_distance_0_at_the_chosen_distances():
    halving = [2.0 / 2 ** d for d in range(16)]
    header, rows = table_rows({"a": halving, "b": [4.0, 1.0]})
    assert header == ["architecture", "norm of dL/dx at distance 0", "d=1 (relative)", "d=4 (relative)",
                      "d=15 (relative)"]
    assert rows == [["a", "2", "5.00e-01", "6.25e-02", "3.05e-05"], ["b", "4", "2.50e-01", "-", "-"]]
    # The farthest position is a column once, where it is one of the chosen distances too (256 of 257 tokens).
    header, rows = table_rows({"a": [1.0, 0.5, 0.25, 0.125, 0.0625]})
    assert header == ["architecture", "norm of dL/dx at distance 0", "d=1 (relative)", "d=4 (relative)"]
    assert rows == [["a", "1", "5.00e-01", "6.25e-02"]]


def test_only_a_gradient_that_is_zero_at_every_earlier_position_gets_the_note():
    assert identity_notes({"rnn": [1.0, 0.5, 0.0, 0.0]}) == []
    (note,) = identity_notes({"rnn": [1.0, 0.0, 0.0, 0.0]})
    assert note.startswith("\nrnn: exactly 0 beyond distance 0")


def test_the_measurements_read_the_seeded_preset_and_the_saved_text_model(tmp_path, monkeypatch):
    """measure_architectures: the state after the first and the last context, the gradients of the preset built
    under the lab's first seed and of the text model loaded from its run folder (not of the fresh one)."""
    import transformers

    import seqzoo
    from seqzoo.lab import gradients, runner

    def fingerprint(model, length, seed):  # (the profile itself is checked against autograd above)
        return [sum(p.double().sum().item() for p in model.parameters()), length, seed]

    torch.manual_seed(7)
    trained = seqzoo.create_model("gru-tiny")
    loaded = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda folder: loaded.append(folder) or trained)
    monkeypatch.setattr(measure, "decode_profile", lambda model, contexts, seed: [])  # (timed elsewhere)
    monkeypatch.setattr(gradients, "gradient_profile", fingerprint)
    cfg = LabConfig(seeds=[3, 1], decode_contexts=[4, 6, 9], gradient_length=5)
    torch.manual_seed(99)  # (whatever the random state was: the lab seeds its models)
    (row,) = runner.measure_architectures({"gru": "gru-tiny"}, cfg, tmp_path, {"gru": 3}).values()
    torch.manual_seed(3)
    assert row["gradients_init"] == pytest.approx(fingerprint(seqzoo.create_model("gru-tiny"), 5, 3))
    assert row["gradients_trained"] == pytest.approx(fingerprint(trained, 5, 3)) != row["gradients_init"]
    assert loaded == [tmp_path / "runs" / "gru" / "text-s3"] and sorted(row["state"]["bytes"]) == [4, 9]


def test_the_measurements_leave_the_callers_progress_bars_and_random_stream_as_they_were(tmp_path, monkeypatch):
    """measure_architectures (run_lab's last step) turns transformers' progress bars off and seeds torch for its
    models: a caller that had the bars off found them on for good after run_lab, and its torch stream seeded."""
    from transformers.utils import logging as hf_logging

    from seqzoo.lab import gradients, runner

    monkeypatch.setattr(measure, "decode_profile", lambda model, contexts, seed: [])  # (timed elsewhere)
    monkeypatch.setattr(gradients, "gradient_profile", lambda model, length, seed: [1.0])
    cfg = LabConfig(seeds=[3], decode_contexts=[4, 6], gradient_length=5)
    hf_logging.disable_progress_bar()
    try:
        torch.manual_seed(99)
        before = torch.get_rng_state()
        runner.measure_architectures({"gru": "gru-tiny"}, cfg, tmp_path, {})
        assert not hf_logging.is_progress_bar_enabled()
        assert torch.equal(torch.get_rng_state(), before)
    finally:
        hf_logging.enable_progress_bar()


# ----------------------------------------------------------------------------------------------------------------
# findings.py: chance levels and sentences.


@pytest.mark.parametrize("symbols", [8, 9])
@pytest.mark.parametrize("task", list(TASKS))
def test_chance_is_one_over_the_answers_a_task_can_have(task, symbols):
    sequences, answers = TASKS[task](torch.Generator().manual_seed(0), 4000, 3, symbols, 2)
    possible = len(set(sequences[answers].tolist()))
    assert findings.chance_level(task, symbols) == pytest.approx(1 / possible)


def _memory_results(accuracy: dict[str, list[dict[int, float]]], task: str = "copy", ok: dict | None = None) -> dict:
    """One run per architecture and seed (accuracy[arch][seed] = {distance: accuracy})."""
    runs = [{"ok": (ok or {}).get((arch, seed), True), "arch": arch, "task": task, "seed": seed, "steps": 600,
             "accuracy": acc} for arch, per_seed in accuracy.items() for seed, acc in enumerate(per_seed)]
    distances = sorted(next(iter(accuracy.values()))[0])
    seeds = max(len(per_seed) for per_seed in accuracy.values())
    return {"config": {"tasks": [task], "distances": distances, "seeds": list(range(seeds)), "batch_size": 16,
                       "symbols": 8, "decode_contexts": [16, 64], "gradient_length": 8},
            "runs": runs, "presets": {arch: f"{arch}-tiny" for arch in accuracy}, "measurements": {}}


def test_accuracy_by_task_lists_the_seeds_in_seed_order():
    results = _memory_results({"lstm": [{4: 0.1}, {4: 0.2}, {4: 0.3}]})
    results["runs"].reverse()
    assert findings.accuracy_by_task(results) == {"copy": {"lstm": {4: [0.1, 0.2, 0.3]}}}


def test_the_memory_takeaway_sorts_architectures_at_the_longest_distance():
    results = _memory_results({
        "edge": [{4: 1.0, 64: 0.9}], "best": [{4: 1.0, 64: 0.95}], "half": [{4: 1.0, 64: 0.5}],
        "weak": [{4: 1.0, 64: 0.3}], "chance": [{4: 1.0, 64: 0.2}]})
    text = findings.takeaways(results, findings.accuracy_by_task(results))
    # solved: >= 0.9, best first; near chance: within 0.1 of 1/8
    assert text == ("- **copy at distance 64**: solved by best (0.95) and edge (0.90); partly learnt by half (0.50) "
                    "and weak (0.30); near chance (0.12) for chance (0.20).")


def test_the_memory_takeaway_reads_the_seeds_mean_at_the_longest_distance_however_the_distances_were_listed():
    results = _memory_results({"lstm": [{4: 1.0, 64: 0.4}, {4: 1.0, 64: 0.6}]})
    results["config"]["distances"] = [64, 4]  # (LabConfig keeps --distances 64 4 as given)
    assert findings.takeaways(results, findings.accuracy_by_task(results)).startswith(
        "- **copy at distance 64**: solved by none; partly learnt by lstm (0.50).")


def test_a_score_far_below_chance_is_not_called_near_chance():
    """acc <= chance + 0.1 was "near chance", so a diverged run's 0.00 against a chance of 0.12 was called that."""
    results = _memory_results({"diverged": [{4: 0.5, 64: 0.0}], "near": [{4: 1.0, 64: 0.05}],
                               "half": [{4: 1.0, 64: 0.5}]})
    text = findings.takeaways(results, findings.accuracy_by_task(results))
    assert text == ("- **copy at distance 64**: solved by none; partly learnt by half (0.50); near chance (0.12) for "
                    "near (0.05); below chance (0.12) for diverged (0.00).")


def test_a_score_exactly_0_1_from_chance_is_near_chance_on_either_side():
    results = _memory_results({"low": [{4: 1.0, 64: 0.15}], "high": [{4: 1.0, 64: 0.35}]})
    results["config"]["symbols"] = 4  # chance 0.25
    assert findings.takeaways(results, findings.accuracy_by_task(results)) == (
        "- **copy at distance 64**: solved by none; near chance (0.25) for high (0.35) and low (0.15).")


def test_the_partly_learnt_are_listed_by_accuracy_not_by_name():
    results = _memory_results({"alpha": [{4: 1.0, 64: 0.3}], "beta": [{4: 1.0, 64: 0.5}]})
    text = findings.takeaways(results, findings.accuracy_by_task(results))
    assert "partly learnt by beta (0.50) and alpha (0.30)." in text


def test_a_published_result_at_exactly_the_threshold_is_reproduced_and_the_seed_count_is_the_runs():
    results = _memory_results({"mamba": [{4: 0.9, 16: 0.9, 64: 0.9}, {4: 0.9, 16: 0.9, 64: 0.9}]},
                              task="selective_copy")
    accuracy = findings.accuracy_by_task(results)
    assert [check["reproduced"] for check in findings.reproduction_checks(results, accuracy)] == [True]
    assert "(mean of 2 seeds, every distance >= 0.9)" in findings.reproduction_notes(results, accuracy)


def test_the_reproduction_note_counts_the_seeds_whose_run_succeeded():
    seeds = [{4: 0.95, 16: 0.95}] * 3
    results = _memory_results({"mamba": seeds}, task="selective_copy", ok={("mamba", 1): False})
    del results["runs"][1]["accuracy"]  # (a failed run has no figures)
    notes = findings.reproduction_notes(results, findings.accuracy_by_task(results))
    assert "mamba: 0.95 at 4, 0.95 at 16 (mean of 2 seeds, every distance >= 0.9)." in notes


def test_the_cost_takeaway_gives_the_decode_step_growth_last_over_first():
    decode = [{"state_bytes": 1024, "ms_per_token": 2.0}, {"state_bytes": 2048, "ms_per_token": 2.5},
              {"state_bytes": 4096, "ms_per_token": 3.0}]
    (line,) = findings._cost_takeaways({"transformer": {"decode": decode}}, {"decode_contexts": [16, 32, 64]})
    assert line == ("transformer's state (with its KV cache) grows 4× from 16 to 64 tokens (1.0 KiB → 4.0 KiB), and "
                    "its decode step takes 1.5× as long.")


def test_the_text_takeaway_ranks_perplexity_lowest_first():
    runs = [{"ok": True, "arch": arch, "task": "text", "steps": 300, "eval": {"perplexity": p}}
            for arch, p in (("lstm", 3.5), ("gru", 2.5), ("rnn", 4.0))]
    runs.append({"ok": False, "arch": "mamba", "task": "text", "steps": 300})
    assert findings._text_takeaways({"runs": runs}) == [
        ("On text, validation perplexity per byte after 300 steps (one seed; lower is better): gru 2.50, lstm 3.50, "
         "rnn 4.00.")]


def test_the_gradient_takeaway_reads_the_farthest_measured_position_and_sorts_by_reach():
    length = 32  # shorter than 64: the takeaway reads distance 31, the last one measured
    measured = {"near": {"gradients_init": [1.0] + [0.5] * 30 + [0.2]},
                "faded": {"gradients_init": [1.0] + [1e-5] * 31},
                "weak": {"gradients_init": [1.0] + [1e-3] * 31},
                "none": {"gradients_init": [1.0] + [0.0] * 31}}
    assert findings._gradient_takeaways(measured, {"gradient_length": length}) == [
        ("Gradient 31 tokens back, relative to the last token (at initialisation): near 2e-01, weak 1e-03, faded "
         "1e-05; exactly 0 for none. faded barely learns from that far back: the vanishing gradient of Hochreiter "
         "(1991) and Bengio et al. (1994), measured.")]


def test_the_gradient_takeaway_reads_the_trained_profile_and_calls_below_1e_4_fading():
    measured = {"gru": {"gradients_init": [1.0] + [1e-5] * 8, "gradients_trained": [2.0] + [1e-3] * 8},
                "lstm": {"gradients_init": [1.0] + [5e-4] * 8, "gradients_trained": [1.0] + [5e-5] * 8}}
    (text,) = findings._gradient_takeaways(measured, {"gradient_length": 9})
    assert text == ("Gradient 8 tokens back, relative to the last token (after training on text): gru 5e-04, lstm "
                    "5e-05. lstm barely learns from that far back: the vanishing gradient of Hochreiter (1991) and "
                    "Bengio et al. (1994), measured.")


def test_only_a_gradient_of_exactly_0_is_called_so_and_sizes_keep_their_fraction():
    measured = {"tiny": {"gradients_init": [1.0, 1e-35, 1e-35]}, "none": {"gradients_init": [1.0, 0.0, 0.0]}}
    (text,) = findings._gradient_takeaways(measured, {"gradient_length": 3})
    assert text.startswith("Gradient 2 tokens back, relative to the last token (at initialisation): tiny 1e-35; "
                           "exactly 0 for none.")
    assert [findings._bytes(n) for n in (1536, 3 << 19, 1023)] == ["1.5 KiB", "1.5 MiB", "1023 bytes"]


def test_gradient_health_says_whether_a_run_recovered_from_its_flagged_steps():
    def run(seed, losses):
        return {"ok": True, "arch": "lstm", "task": "copy", "seed": seed, "eval": {"accuracy": 0.5}, "losses": losses,
                "grad_health": {"flagged_steps": {"vanishing": 0, "exploding": 2, "nonfinite": 0},
                                "first_flagged_step": {"exploding": 5}, "max_grad_norm": 2500.0}}

    # seed 0 started high and ended at its best; seed 1 started at its best and ended far above it
    notes = findings.gradient_health_notes({"runs": [run(0, [5.0] * 10 + [1.0] * 10),
                                                     run(1, [1.0] * 10 + [5.0] * 10)]})
    lines = notes.splitlines()[-2:]
    assert lines[0] == ("- lstm / copy, seed 0: 2 exploding step(s) (first at step 5); largest norm 2.5e+03; clipping "
                        "capped each of those updates, and the run ended near its best loss: large raw gradients, not "
                        "divergence (accuracy 0.50).")
    assert lines[1] == ("- lstm / copy, seed 1: 2 exploding step(s) (first at step 5); largest norm 2.5e+03; the run "
                        "ended well above its best loss: these steps set it back (accuracy 0.50).")


def test_gradient_health_calls_a_solved_run_near_zero_loss_recovered():
    """The default lab's RWKV-7 copy runs: one flagged step at step 1, then solved (accuracy 0.99) with a best loss
    of 0.0055 and a last ten steps' mean of 0.0315, from 2.65: 'the run ended well above its best loss: these steps
    set it back' (0.0315 > 1.5 x 0.0055), for 8 of its 12 runs."""
    run = {"ok": True, "arch": "rwkv7", "task": "copy", "seed": 0, "eval": {"accuracy": 0.99},
           "losses": [2.65, 1.0, 0.2, 0.0055] + [0.0315] * 10,
           "grad_health": {"flagged_steps": {"vanishing": 0, "exploding": 1, "nonfinite": 0},
                           "first_flagged_step": {"exploding": 1}, "max_grad_norm": 1480.0}}
    line = findings.gradient_health_notes({"runs": [run]}).splitlines()[-1]
    assert "the run ended near its best loss" in line and "set it back" not in line, line
    # Within 5% of the way down from the first step, not more: a run back half way up from its best (5 -> 1 -> 3),
    # or within 5% of a peak above its first step only (1 -> 3 -> 0.1, ending at 0.2), was set back.
    for losses in ([5.0, 1.0] + [3.0] * 10, [1.0, 3.0, 0.1] + [0.2] * 10):
        line = findings.gradient_health_notes({"runs": [{**run, "losses": losses}]}).splitlines()[-1]
        assert "the run ended well above its best loss: these steps set it back" in line, (losses, line)


# ----------------------------------------------------------------------------------------------------------------
# report.py: every table of report.md from hand-made results.


def _state(bytes_: int, contexts: list[int]) -> dict:
    tensors = [{"name": "h", "shape": [32], "dtype": "float32"}]
    return {"layers": 2, "tensors": tensors, "same_in_every_layer": True,
            "kinds": [{"layers": [0, 1], "tensors": tensors}], "bytes": {contexts[0]: bytes_, contexts[-1]: bytes_}}


def _lab_results() -> dict:
    contexts = [16, 64, 256]
    cfg = asdict(LabConfig(tasks=["copy"], seeds=[0, 1], distances=[2, 6], decode_contexts=contexts, text_steps=100,
                           text_evaluations=10, items=2, symbols=8, gradient_length=8))
    healthy = {"flagged_steps": {"vanishing": 0, "exploding": 0, "nonfinite": 0}, "first_flagged_step": {},
               "max_grad_norm": 1.0}

    def memory(arch, seed, accuracy, lr):
        return {"ok": True, "arch": arch, "preset": f"{arch}-tiny", "task": "copy", "seed": seed, "steps": 600,
                "steps_run": 600, "lr": lr, "accuracy": accuracy, "trained_share": {2: 0.25, 6: 0.0},
                "grad_health": healthy, "losses": [1.0], "eval": {"accuracy": 0.5}, "tokens_per_second": 1.0}

    def text(arch, perplexity, speed, lr):
        return {"ok": True, "arch": arch, "preset": f"{arch}-tiny", "task": "text", "seed": 0, "steps": 100,
                "steps_run": 100, "lr": lr, "eval": {"perplexity": perplexity}, "tokens_per_second": speed,
                "validation": [[10, 9.0], [100, perplexity]], "sample": "abc", "grad_health": healthy, "losses": [1.0]}

    runs = [memory("lstm", 0, {2: 1.0, 6: 0.5}, 3e-3), memory("lstm", 1, {2: 0.8, 6: 0.3}, 3e-3),
            memory("gru", 0, {2: 0.6, 6: 0.2}, 1e-2), memory("gru", 1, {2: 0.4, 6: 0.2}, 1e-2),
            text("lstm", 3.25, 12345.6, 1e-2), text("gru", 2.5, 20000.0, 2e-2)]

    def measured(params, ms, bytes_, init, trained):
        return {"params": params, "state": _state(bytes_, contexts), "gradients_init": init,
                "gradients_trained": trained,
                "decode": [{"context": c, "ms_per_token": t, "state_bytes": bytes_} for c, t in zip(contexts, ms)]}

    return {
        "status": "finished", "config": cfg, "presets": {"lstm": "lstm-tiny", "gru": "gru-tiny"}, "runs": runs,
        "measurements": {"lstm": measured(1234, [1.0, 1.5, 2.0], 512, [1.0] * 8, [2.0] + [1.0] * 7),
                         "gru": measured(999, [0.5, 0.75, 3.0], 384, [3.0] * 8, [4.0] + [1.0] * 7)},
        "environment": {"command": "seqzoo lab", "seqzoo": "0.0", "git": None, "python": "3", "torch": "2",
                        "transformers": "5", "cpu": "cpu", "cores": 2, "workers": 2, "threads_per_worker": 1,
                        "load_average_at_start": None, "started": "then", "finished": "now"},
        "seconds": {"training": 65.0, "total": 125.0}}


def _table_after(report: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table after ``heading``, its header first."""
    lines = report.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


@pytest.fixture
def lab_report(tmp_path, monkeypatch):
    from seqzoo.lab import plots
    from seqzoo.lab.report import write_report

    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    write_report(_lab_results(), tmp_path)
    return (tmp_path / "report.md").read_text()


def test_the_summary_table_row_by_row(lab_report):
    rows = _table_after(lab_report, "## Summary")
    assert rows[0] == ["architecture", "preset", "parameters", "state bytes / seq @ 16 → 256 tokens",
                       "training tokens/s", "validation perplexity", "decode ms/token @ 16 → 256",
                       "memory accuracy (mean; seeds' range)"]
    # per seed, the mean over distances: lstm 0.75 and 0.55, gru 0.40 and 0.30
    assert rows[1] == ["**lstm**", "`lstm-tiny`", "1,234", "512 → 512", "12,346", "3.25", "1.00 → 2.00",
                       "0.65 (0.55–0.75)"]
    assert rows[2] == ["**gru**", "`gru-tiny`", "999", "384 → 384", "20,000", "2.50", "0.50 → 3.00",
                       "0.35 (0.30–0.40)"]


def test_the_report_points_at_a_trained_text_model_only_where_one_trained(tmp_path, monkeypatch, lab_report):
    """With every text run failed, the report still said "The trained models are in runs/<architecture>/text-s0/"
    and gave a `seqzoo generate` command for runs/lstm/text-s0, a folder with no model in it."""
    from seqzoo.lab import plots
    from seqzoo.lab.report import write_report

    assert f'`seqzoo generate {tmp_path}/runs/lstm/text-s0 "def "`' in lab_report
    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    results = _lab_results()
    for run in results["runs"]:
        if run["task"] == "text":
            run.update(ok=False, error="RuntimeError: diverged")
    for measured in results["measurements"].values():
        del measured["gradients_trained"]
    (tmp_path / "failed").mkdir()
    write_report(results, tmp_path / "failed")
    report = (tmp_path / "failed" / "report.md").read_text()
    assert "No text model trained successfully." in report
    assert "trained models" not in report and "seqzoo generate" not in report
    assert "- **gru / text, seed 0** failed: `RuntimeError: diverged`" in report


def test_a_spread_gives_the_seeds_range_unless_it_rounds_away():
    from seqzoo.lab.report import spread

    assert spread([0.9]) == "0.90"
    assert spread([0.9, 0.904]) == "0.90"  # (a range that rounds to one figure says nothing)
    assert spread([0.80, 0.84]) == "0.82 (0.80–0.84)"


def test_the_summary_gives_the_state_at_the_first_and_the_last_context_and_the_failed_runs(tmp_path, monkeypatch):
    from seqzoo.lab import plots
    from seqzoo.lab.report import write_report

    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    results = _lab_results()
    for row, size in zip(results["measurements"]["lstm"]["decode"], [512, 1024, 2048]):  # (a state that grows)
        row["state_bytes"] = size
    results["runs"].append({"ok": False, "arch": "gru", "preset": "gru-tiny", "task": "copy", "seed": 2,
                            "steps": 600, "lr": 1e-2, "error": "RuntimeError: out of memory"})
    write_report(results, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert _table_after(report, "## Summary")[1][3] == "512 → 2,048"
    assert "## Failed runs\n\n- **gru / copy, seed 2** failed: `RuntimeError: out of memory`\n" in report


def test_the_memory_table_and_its_caption(lab_report):
    from seqzoo.training.data import copy_task

    # tokens read: the whole sequence but its last token
    lengths = [copy_task(torch.Generator(), 1, d, 8, 2)[0].shape[1] - 1 for d in (2, 6)]
    assert f"(k=2; {lengths[0]}, {lengths[1]} tokens; 600 steps; chance 0.12)" in lab_report
    rows = _table_after(lab_report, "**copy** —")
    assert rows == [["architecture", "distance 2", "distance 6"], ["lstm", "0.90 (0.80–1.00)", "0.40 (0.30–0.50)"],
                    ["gru", "0.50 (0.40–0.60)", "0.20"]]


def test_the_memory_caption_gives_the_step_budget_and_the_means_and_shares_read_every_value(tmp_path, monkeypatch):
    """A run that stopped once solved is captioned with the task's budget, not the steps it ran; a seed's summary is
    the mean (not the median) over its tasks and distances; the trained share the lowest and highest in any order."""
    from seqzoo.lab import plots
    from seqzoo.lab.report import _trained_share_line, memory_mean_by_seed, write_report

    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    results = _lab_results()
    results["runs"][0]["steps_run"] = 120
    write_report(results, tmp_path)
    assert "(k=2; 6, 10 tokens; 600 steps; chance 0.12)" in (tmp_path / "report.md").read_text()
    runs = [{"ok": True, "arch": "lstm", "task": task, "seed": 0, "accuracy": accuracy}
            for task, accuracy in (("copy", {2: 0.0, 6: 0.1}), ("induction", {2: 1.0}))]
    assert memory_mean_by_seed({"config": {"tasks": ["copy", "induction"]}, "runs": runs}, "lstm") == [
        pytest.approx(1.1 / 3)]
    shares = [{"task": "copy", "ok": True, "trained_share": {"2": share}} for share in (0.5, 0.25, 0.375)]
    assert _trained_share_line({"runs": shares}, "copy", [2]).endswith(": distance 2 25%–50%.")


def test_the_learning_rate_and_cost_tables(lab_report):
    assert _table_after(lab_report, "Learning rates (from") == [
        ["architecture", "learning rate (memory tasks)", "learning rate (text)"], ["lstm", "0.003", "0.01"],
        ["gru", "0.01", "0.02"]]
    assert _table_after(lab_report, "## Cost at inference") == [
        ["architecture", "ms/token @ 16", "ms/token @ 64", "ms/token @ 256", "state bytes @ 16", "state bytes @ 64",
         "state bytes @ 256"],
        ["lstm", "1.00", "1.50", "2.00", "512", "512", "512"], ["gru", "0.50", "0.75", "3.00", "384", "384", "384"]]


def test_the_text_section_and_the_provenance(lab_report):
    # 100 text steps, 10 evaluations: every 10 steps (not 600 // 10, the memory runs' budget)
    assert "held-out last 5%, every\n10 steps along each run" in lab_report
    assert _table_after(lab_report, "## Language modelling") == [
        ["architecture", "validation perplexity", "training tokens/s", "learning rate", "steps"],
        ["gru", "2.50", "20,000", "0.02", "100"], ["lstm", "3.25", "12,346", "0.01", "100"]]
    assert "wall time 2 min 05 s for the training, the measurements and the plots" in lab_report


def test_the_gradient_tables_keep_initialisation_and_training_apart(lab_report):
    section = lab_report.split("## Gradients")[1]
    assert [row[:2] for row in _table_after(section, "*at initialisation*")[1:]] == [["lstm", "1"], ["gru", "3"]]
    assert [row[:2] for row in _table_after(section, "*after training on text*")[1:]] == [["lstm", "2"], ["gru", "4"]]


# ----------------------------------------------------------------------------------------------------------------
# sweep.py: the proposal's rules.


def _sweep_results(runs: list[dict], rates: list[float], tasks: list[str] | None = None) -> dict:
    return {"config": {"tasks": tasks or ["copy"], "rates": rates, "steps": 600, "device": "cpu", "seed": 0,
                       "distances": [4, 64], "text_steps": 250},
            "presets": {"lstm": "lstm-tiny"}, "runs": runs, "planned_runs": len(runs), "seconds": 60.0,
            "environment": {"command": "seqzoo lab sweep", "seqzoo": "0", "cpu": "cpu", "workers": 1}}


def _sweep_run(rate, accuracy, steps_run=600, task="copy"):
    return {"ok": True, "arch": "lstm", "lr": rate, "task": task, "accuracy": accuracy, "steps_run": steps_run,
            "steps": 600}


def _text_run(rate, perplexity):
    return {"ok": True, "arch": "lstm", "lr": rate, "task": "text", "eval": {"perplexity": perplexity}}


def test_the_sweep_proposes_the_quickest_rate_among_near_ties_by_mean_accuracy():
    from seqzoo.lab.sweep import propose

    # by mean over distances 1e-2 (0.70) beats 3e-3 (0.60, though it reaches 1.0 at distance 4)
    runs = [_sweep_run(3e-3, {4: 1.0, 64: 0.2}), _sweep_run(1e-2, {4: 0.7, 64: 0.7})]
    assert propose(_sweep_results(runs, [3e-3, 1e-2]))["learning_rates"]["lstm"]["memory"] == 1e-2
    # within TIE (0.01) of the best, the rate that needed fewer steps
    runs = [_sweep_run(3e-3, {4: 1.0, 64: 1.0}, steps_run=600), _sweep_run(1e-2, {4: 1.0, 64: 0.991}, steps_run=200)]
    assert propose(_sweep_results(runs, [3e-3, 1e-2]))["learning_rates"]["lstm"]["memory"] == 1e-2
    # ... and among as many steps, the lower rate
    runs = [_sweep_run(3e-3, {4: 1.0, 64: 1.0}, steps_run=300), _sweep_run(1e-2, {4: 1.0, 64: 1.0}, steps_run=300)]
    assert propose(_sweep_results(runs, [3e-3, 1e-2]))["learning_rates"]["lstm"]["memory"] == 3e-3


def test_the_sweep_step_budget_is_a_quarter_more_than_the_slowest_solve_rounded_up_to_50():
    from seqzoo.lab.sweep import propose

    # lstm solved copy (stopped early) at 130 steps: 1.25 x 130 = 162.5 -> 200; gru, which ran all 600 steps
    # without solving it, does not count; the task nobody solved keeps the sweep's 600
    runs = [_sweep_run(3e-3, {4: 1.0}, steps_run=130), _sweep_run(3e-3, {4: 0.5}, task="induction"),
            {**_sweep_run(3e-3, {4: 0.5}), "arch": "gru"}]
    results = _sweep_results(runs, [3e-3], tasks=["copy", "induction"])
    results["presets"]["gru"] = "gru-tiny"
    assert propose(results)["task_steps"] == {"copy": 200, "induction": 600}
    # a task solved quickly still gets MIN_STEPS (150), not 1.25 x 40 -> 50
    runs = [_sweep_run(3e-3, {4: 1.0}, steps_run=40)]
    assert propose(_sweep_results(runs, [3e-3]))["task_steps"] == {"copy": 150}


def test_the_sweep_text_rate_is_the_lowest_within_one_percent_of_the_best_perplexity():
    from seqzoo.lab.sweep import propose

    runs = [_text_run(3e-3, 2.02), _text_run(1e-2, 2.0), _text_run(3e-2, 2.01)]
    assert propose(_sweep_results(runs, [3e-3, 1e-2, 3e-2]))["learning_rates"]["lstm"]["text"] == 3e-3
    runs = [_text_run(3e-3, 2.5), _text_run(1e-2, 2.0), _text_run(3e-2, 2.01)]
    assert propose(_sweep_results(runs, [3e-3, 1e-2, 3e-2]))["learning_rates"]["lstm"]["text"] == 1e-2


def test_the_sweep_report_lists_the_failed_runs():
    from seqzoo.lab.sweep import propose, sweep_report

    runs = [_sweep_run(3e-3, {4: 1.0}), {"ok": False, "arch": "lstm", "lr": 1e-2, "task": "copy",
                                         "error": "RuntimeError: boom"}]
    results = _sweep_results(runs, [3e-3, 1e-2])
    results["proposal"] = propose(results)
    assert sweep_report(results).endswith("## Failed runs\n\n- lstm copy lr 0.01: RuntimeError: boom\n")


def test_the_sweep_report_shows_each_rates_own_text_perplexity():
    from seqzoo.lab.sweep import propose, sweep_report

    runs = [_sweep_run(3e-3, {4: 1.0, 64: 0.5}), _sweep_run(1e-2, {4: 0.9, 64: 0.7}), _text_run(3e-3, 3.0),
            _text_run(1e-2, 2.0)]
    results = _sweep_results(runs, [3e-3, 1e-2])
    results["proposal"] = propose(results)
    table = sweep_report(results)
    assert "| 0.003 | 1.00 / 0.50 (600) | 0.750 | 3.00 |" in table
    assert "| 0.01 | 0.90 / 0.70 (600) | 0.800 | 2.00 |" in table


def test_the_sweep_trains_every_rate(tmp_path):
    from seqzoo.lab.sweep import SweepConfig, sweep_jobs

    jobs = sweep_jobs(SweepConfig(tasks=["copy"], rates=[3e-3, 1e-2]), {"rnn": "rnn-tiny"}, tmp_path)
    assert sorted((job["task"], job["lr"]) for job in jobs) == [("copy", 3e-3), ("copy", 1e-2), ("text", 3e-3),
                                                                ("text", 1e-2)]


# ----------------------------------------------------------------------------------------------------------------
# seq2seq.py: its findings and tables from hand-made results.


def _seq2seq_results() -> dict:
    models = {"no attention": {"preset": "seq2seq-sutskever-tiny"}, "bahdanau": {"preset": "seq2seq-bahdanau-tiny"},
              "luong-dot": {"preset": "seq2seq-luong-dot-tiny"}, "transformer": {"preset": "seq2seq-transformer-tiny"}}
    accuracy = {"no attention": {4: 0.95, 8: 0.5, 16: 0.1}, "bahdanau": {4: 1.0, 8: 0.9, 16: 0.6},
                "luong-dot": {4: 0.5, 8: 0.2, 16: 0.1}, "transformer": {4: 1.0, 8: 1.0, 16: 0.9}}
    runs = [{"ok": True, "model": name, "task": "reverse", "preset": models[name]["preset"], "params": 1000 + i,
             "accuracy": accuracy[name], "trained_share": {4: 0.5, 8: 0.0, 16: 0.0}, "tokens_per_second": 100.0,
             "cpu_seconds": 10.0 * (i + 1), "steps": 200} for i, name in enumerate(models)]
    cfg = {"models": models, "tasks": ["reverse"], "source_lengths": {"reverse": [4, 8, 16]}, "steps": 200,
           "batch_size": 32, "lr": 3e-3, "symbols": 8, "eval_samples": 64, "workers": 2, "seed": 0, "is_smoke": False}
    return {"config": cfg, "runs": runs, "workers": 2, "seconds": 50.0}


def test_the_seq2seq_findings_compare_attention_with_the_bottleneck_at_the_longest_sources():
    from seqzoo.lab.seq2seq import findings as seq2seq_findings

    assert seq2seq_findings(_seq2seq_results()) == [
        ("- **reversal**: without attention, 0.95 at 4 characters and 0.10 at 16; at 16 characters, transformer "
         "0.90, bahdanau 0.60. Below 0.9 already at 4 characters: luong-dot -- under-trained at 200 steps, so their "
         "fall with length does not measure the bottleneck.")]


def test_the_seq2seq_table_and_its_cpu_time(tmp_path, monkeypatch):
    from seqzoo.lab import plots
    from seqzoo.lab.seq2seq import write_report

    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    report = write_report(_seq2seq_results(), tmp_path)
    rows = _table_after(report, "**reversal**")
    assert rows[0] == ["model", "preset", "parameters", "4 characters", "8 characters", "16 characters",
                       "train tokens/s", "CPU s"]
    assert rows[2] == ["**bahdanau**", "`seq2seq-bahdanau-tiny`", "1,001", "1.00", "0.90", "0.60", "100", "20"]
    assert "Evaluation sources also drawn in training: 4 characters 50%, 8 characters 0%, 16 characters 0%." in report
    assert "4 runs on 2 single-threaded worker(s): 100 CPU-seconds" in report  # 10 + 20 + 30 + 40


def test_each_seq2seq_task_gives_its_own_trained_share(tmp_path, monkeypatch):
    from seqzoo.lab import plots
    from seqzoo.lab.seq2seq import write_report

    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    results = _seq2seq_results()
    results["config"]["tasks"] = ["digits", "reverse"]
    results["config"]["source_lengths"]["digits"] = [2]
    results["runs"].insert(0, {**results["runs"][0], "task": "digits", "accuracy": {2: 1.0},
                               "trained_share": {2: 0.75}})
    report = write_report(results, tmp_path)
    assert "Evaluation sources also drawn in training: 2 digits 75%." in report
    assert "Evaluation sources also drawn in training: 4 characters 50%, 8 characters 0%, 16 characters 0%." in report


def test_reports_without_matplotlib_say_how_to_get_their_figures(tmp_path, monkeypatch):
    """Without matplotlib (the lab extra) the seq2seq and bidirectional reports left their figures out without a
    word; the lab's report.md said how to get them (`seqzoo lab gradients`: tests/lab/test_lab.py)."""
    from seqzoo.lab import bidirectional, plots, seq2seq

    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    skipped = "Plots skipped: matplotlib is not installed (`pip install 'seqzoo[lab]'`)."
    assert f"> {skipped}" in seq2seq.write_report(_seq2seq_results(), tmp_path)
    config = {"steps": 10, "batch_size": 4, "lr": 0.01, "distances": [4], "eval_samples": 8, "tasks": []}
    results = {"config": config, "runs": [], "baselines": {}, "workers": 1, "seconds": 1.0, "command": "seqzoo"}
    assert f"> {skipped}" in bidirectional.write_report(results, tmp_path)


def test_gradient_health_counts_a_non_finite_step_once_and_reads_vanishing_steps_as_such():
    def run(flags, first, losses, norm):
        return {"ok": True, "arch": "gru", "task": "text", "seed": 0, "eval": {"perplexity": 3.0}, "losses": losses,
                "grad_health": {"flagged_steps": {"vanishing": 0, "exploding": 0, "nonfinite": 0, **flags},
                                "first_flagged_step": first, "max_grad_norm": norm}}

    # The trainer counts a NaN/inf norm as exploding *and* non-finite (one step), and skips its update.
    (line,) = findings.gradient_health_notes({"runs": [run({"exploding": 3, "nonfinite": 2}, {"exploding": 7},
                                                          [2.0, 1.0], 5e3)]}).splitlines()[2:]
    assert line == ("- gru / text, seed 0: 3 exploding step(s) (first at step 7; 2 of them non-finite); largest norm "
                    "5e+03; clipping capped each of those updates (the non-finite ones were skipped), and the run "
                    "ended near its best loss: large raw gradients, not divergence (perplexity 3.00).")
    # The non-finite step's own loss in the history (its update skipped): the run is read from its finite losses (it
    # was said to have been set back, the NaN read as never recovering); one without a finite loss did not recover.
    for losses, meaning in (([2.0, math.nan, 1.5, math.inf, 1.0], "and the run ended near its best loss"),
                            ([math.nan], "the run ended well above its best loss: these steps set it back"),
                            ([], "the run ended well above its best loss: these steps set it back")):
        (line,) = findings.gradient_health_notes({"runs": [run({"exploding": 2, "nonfinite": 2}, {"exploding": 2},
                                                               losses, 5e3)]}).splitlines()[2:]
        assert meaning in line, (losses, line)
    # Vanishing steps alone: nothing was clipped, and no gradient was large.
    (line,) = findings.gradient_health_notes({"runs": [run({"vanishing": 4}, {"vanishing": 2}, [2.0, 1.0],
                                                           0.5)]}).splitlines()[2:]
    assert line == ("- gru / text, seed 0: 4 vanishing step(s) (first at step 2); largest norm 0.5; those updates "
                    "barely moved the weights, and the run ended near its best loss anyway (perplexity 3.00).")
    (line,) = findings.gradient_health_notes({"runs": [run({"vanishing": 4}, {"vanishing": 2}, [1.0, 5.0],
                                                           0.5)]}).splitlines()[2:]
    assert line.endswith("; largest norm 0.5; the run ended well above its best loss (perplexity 3.00).")


def _fake_training(monkeypatch, eval_figures: dict, steps: int = 3) -> list:
    """``train`` replaced by one that returns ``eval_figures`` and a stand-in model; returns the recipes it got."""
    from seqzoo.training import trainer

    recipes = []
    model = torch.nn.Linear(2, 3)  # 9 parameters
    model.config = SimpleNamespace(has_attention=True)

    def train(recipe, **kwargs):
        recipes.append(recipe)
        return SimpleNamespace(model=model, steps=steps, train_tokens_per_second=5.0, eval=eval_figures)

    monkeypatch.setattr(trainer, "train", train)
    return recipes


def test_a_seq2seq_job_scores_each_length_maps_the_longest_fitting_source_and_counts_trained_sources(
        tmp_path, monkeypatch):
    from seqzoo.lab import seq2seq
    from seqzoo.models.seq2seq import inspection
    from seqzoo.training import seq2seq as seq2seq_training

    recipes = _fake_training(monkeypatch, {"loss": 0.5})
    # exact match "measured" as the source length / 100: each length's figure must land under that length
    monkeypatch.setattr(seq2seq_training, "exact_match", lambda model, pairs, **kw: len(pairs[0][0]) / 100)
    mapped = []

    def attention_map(model, tokenizer, source, max_new_tokens):  # a model that reverses perfectly
        mapped.append(source)
        return SimpleNamespace(source_tokens=list(source), target_tokens=[*source[::-1], "<eos>"],
                               weights=torch.zeros(len(source) + 1, len(source)), target_text=source[::-1])

    monkeypatch.setattr(inspection, "attention_map", attention_map)
    cfg = seq2seq.Seq2SeqLabConfig(tasks=["reverse"], source_lengths={"reverse": [4, 16, 32]}, symbols=2, steps=3,
                                   batch_size=8, eval_samples=4)
    row = seq2seq.run_job({"model": "bahdanau", "task": "reverse", "config": asdict(cfg),
                           "output_dir": str(tmp_path)})
    assert row["ok"], row.get("traceback")
    assert row["accuracy"] == {4: 0.04, 16: 0.16, 32: 0.32} and row["params"] == 9 and row["steps"] == 3
    # the heat map: the longest source of at most 24 characters (16), and a perfect reversal is "correct"
    assert [len(source) for source in mapped] == [16] and row["attention"]["correct"] is True
    # the share of each length's evaluation sources that the 3 training batches of 8 also drew
    data = seq2seq_training.task_pairs("reverse", [4, 16, 32], 2, 4, cfg.seed)
    drawn = {bytes(t for t in row_ids.tolist() if t < 256).decode() for step in range(3)
             for row_ids in data.train_batch(step, 8)[0]}
    assert row["trained_share"] == {int(name.split("=")[1]): sum(s in drawn for s, _ in pairs) / len(pairs)
                                    for name, pairs in data.eval_pairs().items()}
    assert row["trained_share"][4] > 0  # (else the count above would not tell batch sizes apart)
    assert recipes[0].train.batch_size == 8


def test_a_seq2seq_job_maps_a_source_of_exactly_24_characters_and_a_generation_running_on_is_wrong(
        tmp_path, monkeypatch):
    from seqzoo.lab import seq2seq
    from seqzoo.models.seq2seq import inspection
    from seqzoo.training import seq2seq as seq2seq_training

    _fake_training(monkeypatch, {"loss": 0.5})
    monkeypatch.setattr(seq2seq_training, "exact_match", lambda model, pairs, **kw: 0.0)
    mapped = []

    def attention_map(model, tokenizer, source, max_new_tokens):  # the reversal, then one character too many
        mapped.append(source)
        return SimpleNamespace(source_tokens=list(source), target_tokens=[*source[::-1], "a", "<eos>"],
                               weights=torch.zeros(len(source) + 2, len(source)), target_text=source[::-1] + "a")

    monkeypatch.setattr(inspection, "attention_map", attention_map)
    cfg = seq2seq.Seq2SeqLabConfig(tasks=["reverse"], source_lengths={"reverse": [3, 24, 32]}, symbols=2, steps=3,
                                   batch_size=8, eval_samples=4)
    row = seq2seq.run_job({"model": "bahdanau", "task": "reverse", "config": asdict(cfg),
                           "output_dir": str(tmp_path)})
    assert [len(source) for source in mapped] == [24] and row["attention"]["correct"] is False
    data = seq2seq_training.task_pairs("reverse", [3, 24, 32], 2, 4, cfg.seed)
    assert row["trained_share"] == {int(name.split("=")[1]): share for name, share in
                                    data.trained_share(3, 8).items()} != {
        int(name.split("=")[1]): share for name, share in data.trained_share(2, 8).items()}


def test_a_bidirectional_job_reports_each_distances_accuracy(tmp_path, monkeypatch):
    from seqzoo.lab.bidirectional import BidirectionalLabConfig, run_job

    _fake_training(monkeypatch, {"loss": 1.0, "sets": {"distance=2": {"accuracy": 0.25, "loss": 1.5},
                                                       "distance=4": {"accuracy": 0.75, "loss": 0.5}}})
    cfg = BidirectionalLabConfig.smoke()
    row = run_job({"arch": "lstm", "preset": "lstm-tiny", "task": "first_letter", "direction": "bidirectional",
                   "config": asdict(cfg), "output_dir": str(tmp_path)})
    assert row["ok"], row.get("traceback")
    assert row["accuracy"] == {2: 0.25, 4: 0.75} and row["params"] == 9 and row["steps"] == 3


def test_the_lab_figures_leave_the_callers_matplotlib_backend_and_figures(tmp_path):
    """The lab's figures (run_lab, run_seq2seq_lab and run_bidirectional_lab draw them in the caller's process) are
    figures of their own: matplotlib.use("Agg") switched a notebook's or a window's backend for the session."""
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from seqzoo.lab import plots

    previous = matplotlib.get_backend()
    plt.switch_backend("svg")  # (the caller's, other than Agg)
    try:
        figures = plt.get_fignums()
        plots.text_plot({"gru": [(1, 9.0), (2, 5.0)]}, tmp_path / "text.png")
        assert (tmp_path / "text.png").stat().st_size > 0
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == figures
    finally:
        plt.switch_backend(previous)


def test_the_gradient_plot_marks_a_profile_that_turns_exactly_0_past_the_last_power_of_two(tmp_path, monkeypatch):
    """The GRU's gradient underflows to exactly 0 about 150 tokens back, past the last power of two (128) of a
    256-token profile: its line ended there with no hollow marker on the "exactly 0" line, as if unmeasured."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from seqzoo.lab import plots

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kwargs: drawn.append(figure))
    profile = [1.0, 0.5, 0.1, 0.01, 0.001, 0.0, 0.0]  # exactly 0 at distances 5 and 6, past 4
    plots.gradient_plot({"after training": {"gru": profile}}, tmp_path / "gradients.png")
    (axes,) = drawn[0].axes
    hollow = [line for line in axes.lines if line.get_markerfacecolor() == "none"]
    assert [list(line.get_xdata()) for line in hollow] == [[5, 6]]
