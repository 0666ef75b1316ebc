"""The lab report: ``report.md`` with tables for every figure, and the PNG plots beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seqzoo.lab import plots
from seqzoo.lab.gradients import table_rows
from seqzoo.training.data import task_length

MEMORY_PNG, TEXT_PNG, COST_PNG, GRADIENTS_PNG = "lab-memory.png", "lab-text.png", "lab-cost.png", "lab-gradients.png"

TASK_NOTES = {
    "copy": "k symbols, then `distance` blanks, then recall all k in order",
    "selective_copy": "k symbols scattered among `distance` blanks, then recall them in order",
    "associative_recall": "k key-value pairs, `distance` blanks, then every key again: answer its value",
    "induction": "cue + k symbols, `distance` random symbols, cue again: continue with the same k symbols",
}


def chance_level(task: str, symbols: int) -> float:
    # Recall answers are values, drawn from the second half of the symbols; every other task draws from all.
    return 1.0 / (symbols - symbols // 2) if task == "associative_recall" else 1.0 / symbols


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def accuracy_by_task(results: dict[str, Any]) -> dict[str, dict[str, dict[int, float]]]:
    """accuracy[task][arch][distance] of every successful memory-task run."""
    table: dict[str, dict[str, dict[int, float]]] = {task: {} for task in results["config"]["tasks"]}
    for run in results["runs"]:
        if run["ok"] and run["task"] in table:
            table[run["task"]].setdefault(run["arch"], {})[run["distance"]] = run["eval"]["accuracy"]
    return table


def _text_runs(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {run["arch"]: run for run in results["runs"] if run["task"] == "text" and run["ok"]}


def _summary(results: dict[str, Any], accuracy: dict[str, dict[str, dict[int, float]]]) -> str:
    cfg, measured, text = results["config"], results["measurements"], _text_runs(results)
    first, last = cfg["decode_contexts"][0], cfg["decode_contexts"][-1]
    header = ["architecture", "preset", "parameters", f"state bytes / seq @ {first} → {last} tokens",
              "training tokens/s", "validation perplexity", f"decode ms/token @ {first} → {last}",
              "memory accuracy (mean)"]
    rows = []
    for arch, preset in results["presets"].items():
        m = measured.get(arch, {})
        decode = m.get("decode", [])
        scores = [a for per_arch in accuracy.values() for a in per_arch.get(arch, {}).values()]
        run = text.get(arch)
        rows.append([
            f"**{arch}**", f"`{preset}`", f"{m['params']:,}" if m else "–",
            f"{decode[0]['state_bytes']:,} → {decode[-1]['state_bytes']:,}" if decode else "–",
            f"{run['tokens_per_second']:,.0f}" if run else "–",
            f"{run['eval']['perplexity']:.2f}" if run else "–",
            f"{decode[0]['ms_per_token']:.2f} → {decode[-1]['ms_per_token']:.2f}" if decode else "–",
            f"{sum(scores) / len(scores):.2f}" if scores else "–",
        ])
    return markdown_table(header, rows)


def _memory_section(results: dict[str, Any], accuracy: dict[str, dict[str, dict[int, float]]]) -> str:
    cfg = results["config"]
    parts = []
    for task, per_arch in accuracy.items():
        lengths = ", ".join(str(task_length(task, d, cfg["items"])) for d in cfg["distances"])
        header = ["architecture"] + [f"distance {d}" for d in cfg["distances"]]
        rows = [[arch] + [f"{per_arch[arch].get(d, float('nan')):.2f}" for d in cfg["distances"]]
                for arch in results["presets"] if arch in per_arch]
        parts.append(f"**{plots.TASK_TITLES.get(task, task)}** — {TASK_NOTES[task]} (k={cfg['items']}; "
                     f"{lengths} tokens; chance {chance_level(task, cfg['symbols']):.2f})\n\n"
                     + markdown_table(header, rows))
    return "\n\n".join(parts)


def _cost_table(results: dict[str, Any]) -> str:
    contexts = results["config"]["decode_contexts"]
    header = ["architecture"] + [f"ms/token @ {c}" for c in contexts] + [f"state bytes @ {c}" for c in contexts]
    rows = []
    for arch, m in results["measurements"].items():
        rows.append([arch] + [f"{row['ms_per_token']:.2f}" for row in m["decode"]]
                    + [f"{row['state_bytes']:,}" for row in m["decode"]])
    return markdown_table(header, rows)


def _gradient_tables(profiles: dict[str, dict[str, list[float]]]) -> str:
    parts = []
    for label, per_arch in profiles.items():
        if per_arch:
            header, rows = table_rows(per_arch)
            parts.append(f"*{label}*\n\n" + markdown_table(header, rows))
    return "\n\n".join(parts)


def _run_name(run: dict[str, Any]) -> str:
    return f"{run['arch']} / {run['task']}" + (f" at distance {run['distance']}" if run["distance"] else "")


def _health_and_failures(results: dict[str, Any]) -> str:
    lines = []
    for run in results["runs"]:
        if run["ok"]:
            flagged = {k: v for k, v in run["grad_health"]["flagged_steps"].items() if v}
            if flagged:
                lines.append(f"- {_run_name(run)}: " + ", ".join(f"{v} {k} step(s)" for k, v in flagged.items()))
    health = "\n".join(lines) or "No run had a vanishing (< 1e-6) or exploding (> 1e3 or non-finite) gradient norm."
    failures = [f"- **{_run_name(r)}** failed: `{r['error']}`" for r in results["runs"] if not r["ok"]]
    text = f"## Gradient health during training\n\n{health}\n"
    if failures:
        text += "\n## Failed runs\n\n" + "\n".join(failures) + "\n"
    return text


def write_report(results: dict[str, Any], out: Path) -> None:
    cfg = results["config"]
    accuracy = accuracy_by_task(results)
    text_runs = _text_runs(results)
    profiles = {"at initialisation": {a: m["gradients_init"] for a, m in results["measurements"].items()},
                "after training on text": {a: m["gradients_trained"] for a, m in results["measurements"].items()
                                           if "gradients_trained" in m}}
    profiles = {label: per_arch for label, per_arch in profiles.items() if per_arch}
    has_plots = plots.matplotlib_available()
    if has_plots:
        plots.memory_plot(accuracy, {t: chance_level(t, cfg["symbols"]) for t in accuracy}, out / MEMORY_PNG)
        if text_runs:
            plots.text_plot({arch: run["losses"] for arch, run in text_runs.items()}, out / TEXT_PNG)
        plots.cost_plot({a: m["decode"] for a, m in results["measurements"].items()}, out / COST_PNG)
        plots.gradient_plot(profiles, out / GRADIENTS_PNG)

    def figure(name: str, alt: str) -> str:
        return f"![{alt}]({name})\n\n" if has_plots and (out / name).exists() else ""

    env, seconds = results["environment"], results["seconds"]
    no_plots = "" if has_plots else "\n> Plots skipped: matplotlib is not installed (`pip install 'seqzoo[lab]'`).\n"
    report = f"""# seqzoo memory lab

How does each architecture remember, and at what cost? Tiny models of every registered architecture, trained
the same way with the same budget (seed {cfg['seed']}), on synthetic memory tasks at growing distances and on
byte-level text. Runs are short: read the figures as a comparison, not as each architecture's best.
{no_plots}
Reproduce: `seqzoo lab` · {len(results['runs'])} training runs in {seconds['training']:.0f} s on
{env['workers']} single-threaded worker(s); Python {env['python']}, torch {env['torch']}, {env['platform']}.

## Summary

{_summary(results, accuracy)}

State bytes are what one sequence carries between tokens (recurrent state, or the KV cache that grows with the
context); decode time is one greedy step at batch 1 on one thread after a prompt of that length.

## Memory: accuracy against distance

{figure(MEMORY_PNG, "accuracy against distance per architecture")}One model per task and distance, each
trained {cfg['task_steps']} steps of {cfg['batch_size']} sequences over {cfg['symbols']} symbols (learning rate
{cfg['lr']:g}, warmup + cosine); accuracy is over the answer tokens of {cfg['eval_samples']} held-out sequences.

{_memory_section(results, accuracy)}

## Language modelling on the Python documentation

{figure(TEXT_PNG, "training loss on text")}{cfg['text_steps']} steps of {cfg['batch_size']} × {cfg['text_seq_len']}
bytes of `pydoc_data.topics` (the documentation every Python ships with); perplexity per byte on the held-out
last 5%. The trained models are in `runs/<architecture>/text/` (`seqzoo generate {out}/runs/lstm/text "def "`).

## Cost at inference

{figure(COST_PNG, "decode time and state size against context length")}{_cost_table(results)}

## Gradients: how far back does learning reach?

{figure(GRADIENTS_PNG, "gradient norm against distance")}‖∂ loss at the last position / ∂ input embedding
at distance d‖, mean over 8 random sequences of {cfg['gradient_length']} bytes, relative to distance 0. A
recurrent network's gradient is a product of one Jacobian per step and fades (or blows up) geometrically; attention
reaches any position in one step. A line that stops has an exactly zero gradient beyond that point (no path from
those inputs at all, or underflow). `seqzoo lab gradients` measures this alone in seconds.

{_gradient_tables(profiles)}

{_health_and_failures(results)}"""
    (out / "report.md").write_text(report)
