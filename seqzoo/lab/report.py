"""The lab report: ``report.md`` with takeaways, tables for every figure, and the PNG plots beside it."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from seqzoo.lab import plots
from seqzoo.lab.findings import (
    accuracy_by_task,
    architecture_lines,
    chance_level,
    gradient_health_notes,
    reproduction_notes,
    takeaways,
)
from seqzoo.lab.gradients import table_rows
from seqzoo.lab.plots import COST_PNG, GRADIENTS_PNG, MEMORY_PNG, TEXT_PNG
from seqzoo.lab.recipes import SOLVED_ACCURACY, SOLVED_WINDOW, TEXT, rates_source
from seqzoo.training.data import task_length

TASK_NOTES = {
    "copy": "k symbols, then `distance` blanks, then recall all k in order",
    "selective_copy": "k symbols scattered among `distance` blanks, then recall them in order",
    "associative_recall": "k key-value pairs, `distance` blanks, then every key again: answer its value",
    "induction": "cue + k symbols, `distance` random symbols, cue again: continue with the same k symbols",
}


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def spread(values: list[float]) -> str:
    """``0.93 (0.88–0.97)``: the mean across seeds, then the lowest and highest seed; one seed: the value."""
    mean = sum(values) / len(values)
    if len(values) == 1 or max(values) - min(values) < 0.005:
        return f"{mean:.2f}"
    return f"{mean:.2f} ({min(values):.2f}–{max(values):.2f})"


def text_runs(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {run["arch"]: run for run in results["runs"] if run["task"] == "text" and run["ok"]}


def memory_mean_by_seed(results: dict[str, Any], arch: str) -> list[float]:
    """Per seed whose every memory task ran: the mean accuracy over every task and distance (a seed with a failed
    run is left out: its other tasks alone would be another mean, and must not be paired with another seed's)."""
    tasks = results["config"]["tasks"]
    by_seed: dict[int, dict[str, dict[Any, float]]] = {}
    for run in results["runs"]:
        if run["ok"] and run["arch"] == arch and run["task"] in tasks:
            by_seed.setdefault(run["seed"], {})[run["task"]] = run["accuracy"]
    return [statistics.mean(a for task in tasks for a in per_task[task].values())
            for seed, per_task in sorted(by_seed.items()) if all(task in per_task for task in tasks)]


def _summary(results: dict[str, Any], accuracy: dict[str, dict[str, dict[int, list[float]]]]) -> str:
    cfg, measured, text = results["config"], results["measurements"], text_runs(results)
    first, last = cfg["decode_contexts"][0], cfg["decode_contexts"][-1]
    header = ["architecture", "preset", "parameters", f"state bytes / seq @ {first} → {last} tokens",
              "training tokens/s", "validation perplexity", f"decode ms/token @ {first} → {last}",
              "memory accuracy (mean; seeds' range)"]
    rows = []
    for arch, preset in results["presets"].items():
        m = measured.get(arch, {})
        decode = m.get("decode", [])
        by_seed = memory_mean_by_seed(results, arch)
        run = text.get(arch)
        rows.append([
            f"**{arch}**", f"`{preset}`", f"{m['params']:,}" if m else "–",
            f"{decode[0]['state_bytes']:,} → {decode[-1]['state_bytes']:,}" if decode else "–",
            f"{run['tokens_per_second']:,.0f}" if run else "–",
            f"{run['eval']['perplexity']:.2f}" if run else "–",
            f"{decode[0]['ms_per_token']:.2f} → {decode[-1]['ms_per_token']:.2f}" if decode else "–",
            spread(by_seed) if by_seed else "–",
        ])
    return markdown_table(header, rows)


def _memory_section(results: dict[str, Any], accuracy: dict[str, dict[str, dict[int, list[float]]]]) -> str:
    cfg = results["config"]
    parts = []
    for task, per_arch in accuracy.items():
        lengths = ", ".join(str(task_length(task, d, cfg["items"])) for d in cfg["distances"])
        steps = {r["steps"] for r in results["runs"] if r["task"] == task}
        header = ["architecture"] + [f"distance {d}" for d in cfg["distances"]]
        rows = [[arch] + [spread(per_arch[arch][d]) if d in per_arch[arch] else "–" for d in cfg["distances"]]
                for arch in results["presets"] if arch in per_arch]
        parts.append(f"**{plots.TASK_TITLES.get(task, task)}** — {TASK_NOTES[task]} (k={cfg['items']}; "
                     f"{lengths} tokens; {'/'.join(map(str, sorted(steps)))} steps; chance "
                     f"{chance_level(task, cfg['symbols']):.2f})\n\n" + markdown_table(header, rows)
                     + _trained_share_line(results, task, cfg["distances"]))
    return "\n\n".join(parts)


def _trained_share_line(results: dict[str, Any], task: str, distances: list[int]) -> str:
    """What share of each distance's evaluation sequences the runs of ``task`` also drew in training (the lowest and
    the highest over runs, which stop at different steps); nothing for results written before it was recorded."""
    shares: dict[int, list[float]] = {}
    for run in results["runs"]:
        if run["task"] == task and run.get("ok") and "trained_share" in run:
            for distance, share in run["trained_share"].items():
                shares.setdefault(int(distance), []).append(share)
    if not shares:
        return ""
    cells = []
    for distance in distances:
        if distance in shares:
            low, high = min(shares[distance]), max(shares[distance])
            cells.append(f"distance {distance} {low:.0%}" + (f"–{high:.0%}" if f"{high:.0%}" != f"{low:.0%}" else ""))
    return ("\n\nEvaluation sequences also drawn in training (lowest–highest over runs): " + ", ".join(cells)
            + ".")


def _recipe_table(results: dict[str, Any]) -> str:
    header = ["architecture", "learning rate (memory tasks)", "learning rate (text)"]
    rows = []
    for arch in results["presets"]:
        rates = {r["task"] == "text": r["lr"] for r in results["runs"] if r["arch"] == arch}
        rows.append([arch, f"{rates.get(False, float('nan')):g}", f"{rates.get(True, float('nan')):g}"])
    return markdown_table(header, rows)


def _cost_table(results: dict[str, Any]) -> str:
    contexts = results["config"]["decode_contexts"]
    header = ["architecture"] + [f"ms/token @ {c}" for c in contexts] + [f"state bytes @ {c}" for c in contexts]
    rows = []
    for arch, m in results["measurements"].items():
        rows.append([arch] + [f"{row['ms_per_token']:.2f}" for row in m["decode"]]
                    + [f"{row['state_bytes']:,}" for row in m["decode"]])
    return markdown_table(header, rows)


def _text_section(results: dict[str, Any]) -> str:
    cfg, runs = results["config"], text_runs(results)
    if not runs:
        return "No text model trained successfully."
    header = ["architecture", "validation perplexity", "training tokens/s", "learning rate", "steps"]
    rows = [[arch, f"{run['eval']['perplexity']:.2f}", f"{run['tokens_per_second']:,.0f}", f"{run['lr']:g}",
             run["steps"]] for arch, run in sorted(runs.items(), key=lambda kv: kv[1]["eval"]["perplexity"])]
    samples = "\n".join(f"- **{arch}**: `{cfg['sample_prompt']}` → `{_one_line(run.get('sample', ''))}`"
                        for arch, run in runs.items())
    return (markdown_table(header, rows) + f"\n\nWhat each text model writes after `{cfg['sample_prompt']}` "
            f"({cfg['sample_tokens']} bytes, sampled at temperature 0.7; newlines shown as ⏎):\n\n" + samples)


def _one_line(text: str) -> str:
    return text.replace("\n", "⏎").replace("`", "'")


def _gradient_tables(profiles: dict[str, dict[str, list[float]]]) -> str:
    parts = []
    for label, per_arch in profiles.items():
        if per_arch:
            header, rows = table_rows(per_arch)
            parts.append(f"*{label}*\n\n" + markdown_table(header, rows))
    return "\n\n".join(parts)


def _run_name(run: dict[str, Any]) -> str:
    return f"{run['arch']} / {run['task']}, seed {run['seed']}"


def _failures(results: dict[str, Any]) -> str:
    failures = [f"- **{_run_name(r)}** failed: `{r['error']}`" for r in results["runs"] if not r["ok"]]
    return ("\n## Failed runs\n\n" + "\n".join(failures) + "\n") if failures else ""


def _provenance(results: dict[str, Any]) -> str:
    env, cfg, seconds = results["environment"], results["config"], results["seconds"]
    load = env.get("load_average_at_start")
    minutes, secs = divmod(int(round(seconds["total"])), 60)
    lines = [
        f"- Command: `{env['command']}`",
        f"- Code: seqzoo {env['seqzoo']}" + (f" (git {env['git']})" if env.get("git") else "")
        + f"; Python {env['python']}, torch {env['torch']}, transformers {env['transformers']}",
        f"- Machine: {env['cpu']}, {env['cores']} core(s) available; {env['workers']} worker process(es) of "
        f"{env['threads_per_worker']} thread each"
        # (a resumed lab's kept runs trained in the stopped lab, on its workers)
        + (f" ({kept} for the runs kept from the lab it resumed)"
           if (kept := env.get("kept_runs_workers")) not in (None, env["workers"]) else "")
        + (f"; load average {load[0]:.1f} when the lab started (other work on the machine slows every timing)"
           if load else ""),
        f"- Seeds: {', '.join(map(str, cfg['seeds']))} (memory tasks); {cfg['seeds'][0]} (text, decode, gradients)",
        f"- {len(results['runs'])} training runs; wall time {minutes} min {secs:02d} s for the training, the "
        f"measurements and the plots ({env['started']} → {env.get('finished', '?')})"
        + (f"; {resumed} of the runs were kept from an unfinished lab this one resumed (`--resume`), their training "
           "time counted" if (resumed := results.get("resumed_runs")) else ""),
    ]
    return "\n".join(lines)


def _rates_source(cfg: dict[str, Any]) -> str:
    """Where the runs' learning rates came from: ``--lr`` (one rate for every run) or the lab's recipes."""
    if cfg.get("lr") is not None:
        return f"`--lr {cfg['lr']:g}`, one rate for every architecture and run, in place of the lab's recipes"
    return rates_source()


def _gradient_profiles(results: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    profiles = {"at initialisation": {a: m["gradients_init"] for a, m in results["measurements"].items()},
                "after training on text": {a: m["gradients_trained"] for a, m in results["measurements"].items()
                                           if "gradients_trained" in m}}
    return {label: per_arch for label, per_arch in profiles.items() if per_arch}


def draw_plots(results: dict[str, Any], out: Path) -> None:
    """The report's PNG figures into ``out`` (none without matplotlib; the report then says so)."""
    if not plots.matplotlib_available():
        return
    accuracy = accuracy_by_task(results)
    runs = text_runs(results)
    plots.memory_plot(accuracy, {t: chance_level(t, results["config"]["symbols"]) for t in accuracy},
                      out / MEMORY_PNG)
    if runs:
        plots.text_plot({arch: run["validation"] for arch, run in runs.items()}, out / TEXT_PNG)
    plots.cost_plot({a: m["decode"] for a, m in results["measurements"].items()}, out / COST_PNG)
    plots.gradient_plot(_gradient_profiles(results), out / GRADIENTS_PNG)


def write_report(results: dict[str, Any], out: Path, draw: bool = True) -> None:
    """``report.md`` into ``out``, with the plots (``draw`` False: drawn already, by :func:`draw_plots`, so that the
    wall time the report gives can count them)."""
    cfg = results["config"]
    # (the runner evaluates a text run every steps // text_evaluations steps, then once more at its end)
    text_steps = next((run["steps"] for run in results["runs"] if run["task"] == TEXT), cfg["text_evaluations"])
    text_eval_every = max(1, text_steps // cfg["text_evaluations"])
    accuracy = accuracy_by_task(results)
    runs = text_runs(results)
    profiles = _gradient_profiles(results)
    has_plots = plots.matplotlib_available()
    if draw:
        draw_plots(results, out)

    def figure(name: str, alt: str) -> str:
        return f"![{alt}]({name})\n\n" if has_plots and (out / name).exists() else ""

    smoke = ("\n> **Smoke run** (`--smoke`): every code path with a handful of steps. Its figures mean nothing.\n"
             if cfg.get("is_smoke") else "")
    no_plots = "" if has_plots else f"\n> {plots.SKIPPED}\n"
    notes = reproduction_notes(results, accuracy)
    seed = cfg["seeds"][0]  # (where no text run succeeded, no folder holds a model to point at)
    trained_models = (f" The trained models\nare in `runs/<architecture>/text-s{seed}/` (`seqzoo generate "
                      f"{out}/runs/{next(iter(runs))}/text-s{seed} \"def \"`)." if runs else "")
    report = f"""# seqzoo memory lab

How does each architecture remember, and at what cost? The smallest model of every registered architecture,
trained on synthetic memory tasks at growing distances and on byte-level text (learning rates: {_rates_source(cfg)}),
every memory-task model with {len(cfg['seeds'])} seeds. Runs are short: read
the figures as what each architecture learns *quickly*, not as its best.
{smoke}{no_plots}
{_provenance(results)}

## Takeaways

{takeaways(results, accuracy)}

## How each architecture remembers

{architecture_lines(results)}

## Summary

{_summary(results, accuracy)}

State bytes are what one sequence carries between tokens (recurrent state, or the KV cache that grows with the
context), measured right after a prompt of that length; decode time is the median of 16 greedy steps through
`generate()` at batch 1 on one thread after that prompt. Timings depend on the machine and its load; everything
else comes back the same on a re-run on the same machine and library versions, up to float rounding in threaded
kernels.

## Memory: accuracy against distance

{figure(MEMORY_PNG, "accuracy against distance per architecture")}One model per task and seed, trained on every
distance (one distance per batch, in turn) with batches of {cfg['batch_size']} sequences over {cfg['symbols']}
symbols (warmup + cosine decay; the step budget per task is below, and a run stops early once its training accuracy
holds {SOLVED_ACCURACY:.0%} over {SOLVED_WINDOW} steps); accuracy is over the answer tokens of {cfg['eval_samples']}
sequences per distance drawn apart from training (a seed of their own; not held out: where a task has few possible
contents, as copy's ({cfg['items']} symbols drawn from {cfg['symbols']}), some also occur in training, and the share
is under each table). Cells give the mean over seeds {', '.join(map(str, cfg['seeds']))} and, in
brackets, the lowest and the highest seed.

{notes}

Learning rates (from {_rates_source(cfg)}):

{_recipe_table(results)}

{_memory_section(results, accuracy)}

## Language modelling on the Python documentation

{figure(TEXT_PNG, "validation perplexity against training step")}Batches of {cfg['batch_size']} ×
{cfg['text_seq_len']} bytes of `pydoc_data.topics` (the documentation every Python ships with), read as one stream
(`data.packing: false`: the context runs on from one topic into the next); perplexity per byte
on {cfg['eval_samples']} windows of {cfg['text_seq_len']} bytes spread evenly over the held-out last 5%, every
{text_eval_every} steps along each run and at its end; seed {cfg['seeds'][0]}.{trained_models}

{_text_section(results)}

## Cost at inference

{figure(COST_PNG, "decode time and state size against context length")}{_cost_table(results)}

## Gradients: how far back does learning reach?

{figure(GRADIENTS_PNG, "relative gradient norm against distance")}‖∂ loss at the last position / ∂ input embedding
at distance d‖, mean over 8 random sequences of {cfg['gradient_length']} bytes, relative to distance 0 (plot and
tables alike). A recurrent network's gradient is a product of one Jacobian per step and fades (or blows up)
geometrically; attention reaches any position in one step. An exact zero means no path at all from that input to
the last prediction (RWKV-7 initialises its output projections to zero, as RWKV-LM does, so at initialisation
every block adds nothing and the last prediction sees only the last token). `seqzoo lab gradients` measures this
alone in seconds.

{_gradient_tables(profiles)}

## Gradient health during training

{gradient_health_notes(results)}
{_failures(results)}"""
    (out / "report.md").write_text(report, encoding="utf-8")
