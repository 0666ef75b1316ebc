"""What the lab's numbers say, in sentences: the takeaways, how each architecture's state is built, which published
results the lab reproduces, and what flagged gradients mean. Everything here is computed from ``results`` (the
content of ``results.json``), so the text changes when the numbers do."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Any

SOLVED, NEAR_CHANCE = 0.9, 0.1  # accuracy at or above SOLVED solves a task; within NEAR_CHANCE of chance fails it
CARD_DIR = Path(__file__).resolve().parent.parent / "hub_cards"

# Published qualitative results the lab's tasks are built to show: (task, architectures, paper, claim).
PUBLISHED = [
    ("selective_copy", ["mamba", "mamba2"], "Gu & Dao 2023 (Mamba), the selective copying task",
     "a selective state space model solves selective copying"),
    ("induction", ["transformer"], "Olsson et al. 2022 (induction heads)",
     "attention (two layers) solves the induction task at any distance"),
]


def chance_level(task: str, symbols: int) -> float:
    # Recall answers are values, drawn from the second half of the symbols; every other task draws from all.
    return 1.0 / (symbols - symbols // 2) if task == "associative_recall" else 1.0 / symbols


def accuracy_by_task(results: dict[str, Any]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """accuracy[task][arch][distance] = the accuracies of every successful seed, in seed order."""
    table: dict[str, dict[str, dict[int, list[float]]]] = {task: {} for task in results["config"]["tasks"]}
    for run in sorted(results["runs"], key=lambda r: r["seed"]):
        if run["ok"] and run["task"] in table:
            for distance, accuracy in run["accuracy"].items():
                table[run["task"]].setdefault(run["arch"], {}).setdefault(int(distance), []).append(accuracy)
    return table


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _names(archs: list[str]) -> str:
    if not archs:
        return "none"
    return ", ".join(archs[:-1]) + (" and " if len(archs) > 1 else "") + archs[-1]


def _bytes(n: float) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


# ----------------------------------------------------------------------------------------------------------------
# Published results: reproduced, or said why not (next to the memory figure and in the takeaways).


def reproduction_checks(results: dict[str, Any], accuracy: dict[str, dict[str, dict[int, list[float]]]]
                        ) -> list[dict[str, Any]]:
    checks = []
    for task, archs, paper, claim in PUBLISHED:
        for arch in archs:
            per_distance = accuracy.get(task, {}).get(arch)
            if not per_distance:
                continue
            means = {d: _mean(v) for d, v in sorted(per_distance.items())}
            failing = {d: a for d, a in means.items() if a < SOLVED}
            # (the seeds whose run succeeded: a failed seed is in no mean)
            seeds = max(len(v) for v in per_distance.values())
            checks.append({"task": task, "arch": arch, "paper": paper, "claim": claim, "means": means,
                           "reproduced": not failing, "failing": failing, "seeds": seeds})
    return checks


def reproduction_notes(results: dict[str, Any], accuracy: dict[str, dict[str, dict[int, list[float]]]]) -> str:
    cfg = results["config"]
    lines = []
    for check in reproduction_checks(results, accuracy):
        figures = ", ".join(f"{a:.2f} at {d}" for d, a in check["means"].items())
        steps = sorted({r["steps"] for r in results["runs"]
                        if r["task"] == check["task"] and r["arch"] == check["arch"]})
        if check["reproduced"]:
            seeds = f"{check['seeds']} seed{'s' if check['seeds'] > 1 else ''}"
            lines.append(f"- **Reproduced**: {check['paper']}: {check['claim']}. {check['arch']}: {figures} "
                         f"(mean of {seeds}, every distance >= {SOLVED}).")
        else:
            lines.append(
                f"- **Not reproduced here**: {check['paper']}: {check['claim']}. {check['arch']}: {figures} "
                f"(below {SOLVED} at distance {', '.join(map(str, check['failing']))}). The paper trains for "
                f"hundreds of thousands of steps; this lab trains {'/'.join(map(str, steps))} steps of "
                f"{cfg['batch_size']} sequences at the `{results['presets'][check['arch']]}` size, so what fails here "
                f"is learning the task within the budget, not the architecture's capacity.")
    return "\n".join(lines) if lines else ""


# ----------------------------------------------------------------------------------------------------------------
# Per architecture: how it remembers (the prose of its model card) and what its state is (measured).


def how_it_remembers(arch: str, preset: str | None = None) -> str:
    """The first paragraph of the model card template's "How it remembers" section, if there is one, with its
    ``{{ config.field }}`` placeholders filled from ``preset`` (a paragraph with other placeholders is left out)."""
    path = CARD_DIR / f"{arch}.md"
    if not path.is_file():
        return ""
    match = re.search(r"^## How it remembers[ \t]*\n+(.+?)(?:\n[ \t]*\n|\Z)", path.read_text(encoding="utf-8"),
                      re.S | re.M)
    if not match:
        return ""
    text = match.group(1)
    if preset is not None and "{{" in text:
        from seqzoo.registry import get_config

        config = get_config(preset)

        def fill(found: re.Match) -> str:
            value = getattr(config, found.group(1), None)
            return found.group(0) if value is None else f"{value:,}" if isinstance(value, int) else str(value)

        text = re.sub(r"\{\{\s*config\.(\w+)\s*\}\}", fill, text)
    return "" if "{{" in text else " ".join(text.split())


def state_line(state: dict[str, Any]) -> str:
    """``h (64), c (64) per layer × 2 layers, float32: 1,024 bytes, the same at 64 and 4,096 tokens``."""
    def listed(described: list[dict[str, Any]]) -> str:
        return ", ".join(f"{t['name']} ({' × '.join(map(str, t['shape']))}"
                         f"{'' if t['dtype'] == 'float32' else ', ' + t['dtype']})" for t in described)

    kinds = state.get("kinds") or [{"layers": list(range(state["layers"])), "tensors": state["tensors"]}]
    dtypes = {t["dtype"] for kind in kinds for t in kind["tensors"]}
    if state["same_in_every_layer"]:
        tensors, per_layer = listed(state["tensors"]), "per layer"
    elif "kinds" in state:  # each kind of layer, with the layers that have it
        tensors = "; ".join(f"{listed(kind['tensors'])} in layer{'s' if len(kind['layers']) > 1 else ''} "
                            f"{', '.join(map(str, kind['layers']))}" for kind in kinds)
        per_layer = None
    else:  # (results written before the kinds were recorded)
        tensors, per_layer = listed(state["tensors"]), "in layer 0 (other layers differ)"
    (short, short_bytes), (long, long_bytes) = sorted((int(k), v) for k, v in state["bytes"].items())
    size = (f"{short_bytes:,} bytes, the same after {short:,} and after {long:,} tokens" if short_bytes == long_bytes
            else f"{short_bytes:,} bytes after {short:,} tokens, {long_bytes:,} after {long:,} "
                 f"({_times(long_bytes / short_bytes)}: T is the number of tokens read)")
    dtype = "float32" if dtypes == {"float32"} else "/".join(sorted(dtypes))
    layers = f"{per_layer} × {state['layers']} layers" if per_layer else f"({state['layers']} layers)"
    return f"{tensors} {layers}, {dtype}: {size}"


def architecture_lines(results: dict[str, Any]) -> str:
    lines = []
    for arch, preset in results["presets"].items():
        m = results["measurements"].get(arch)
        if not m:
            continue
        prose = how_it_remembers(arch, preset)
        lines.append(f"- **{arch}** (`{preset}`, {m['params']:,} parameters). " + (f"{prose} " if prose else "")
                     + f"*Its state, measured:* {state_line(m['state'])}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Takeaways.


def takeaways(results: dict[str, Any], accuracy: dict[str, dict[str, dict[int, list[float]]]]) -> str:
    cfg, measured = results["config"], results["measurements"]
    bullets = []
    far = max(cfg["distances"])
    for task, per_arch in accuracy.items():
        at_far = {arch: _mean(v[far]) for arch, v in per_arch.items() if far in v}
        if not at_far:
            continue
        chance = chance_level(task, cfg["symbols"])
        solved = sorted((a for a, acc in at_far.items() if acc >= SOLVED), key=lambda a: -at_far[a])
        failed = sorted(a for a, acc in at_far.items() if abs(acc - chance) <= NEAR_CHANCE)
        below = sorted(a for a, acc in at_far.items() if acc < chance - NEAR_CHANCE)  # (a diverged run, say)
        middle = sorted((a for a in at_far if a not in solved and a not in failed and a not in below),
                        key=lambda a: -at_far[a])
        text = f"**{task.replace('_', ' ')} at distance {far}**: "
        text += (f"solved by {_names([f'{a} ({at_far[a]:.2f})' for a in solved])}" if solved else "solved by none")
        if middle:
            text += f"; partly learnt by {_names([f'{a} ({at_far[a]:.2f})' for a in middle])}"
        if failed:
            text += f"; near chance ({chance:.2f}) for {_names([f'{a} ({at_far[a]:.2f})' for a in failed])}"
        if below:
            text += f"; below chance ({chance:.2f}) for {_names([f'{a} ({at_far[a]:.2f})' for a in below])}"
        bullets.append(text + ".")
    for check in reproduction_checks(results, accuracy):
        if not check["reproduced"]:
            bullets.append(f"{check['arch']} does not reach {SOLVED} on {check['task'].replace('_', ' ')} at "
                           f"distance {', '.join(map(str, check['failing']))} within the lab's budget: "
                           f"{check['paper']} is not reproduced here (see the memory section).")
    bullets += _cost_takeaways(measured, cfg)
    bullets += _text_takeaways(results)
    bullets += _gradient_takeaways(measured, cfg)
    return "\n".join(f"- {b}" for b in bullets)


def _times(ratio: float) -> str:
    """A growth factor as a reader takes it: 4× when whole, 2.3× when not (a hybrid's fixed part and growing keys)."""
    return f"{ratio:.0f}×" if abs(ratio - round(ratio)) < 0.05 else f"{ratio:.1f}×"


def _cost_takeaways(measured: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    first, last = cfg["decode_contexts"][0], cfg["decode_contexts"][-1]
    growing = {a: m["decode"] for a, m in measured.items()
               if m["decode"][-1]["state_bytes"] > m["decode"][0]["state_bytes"]}
    fixed = {a: m["decode"][0]["state_bytes"] for a, m in measured.items() if a not in growing}
    out = []
    for arch, rows in growing.items():
        # (a hybrid's state is its recurrent layers' fixed part and its attention layers' growing keys and values)
        ratio = rows[-1]["state_bytes"] / rows[0]["state_bytes"]
        out.append(f"{arch}'s state (with its KV cache) grows {_times(ratio)} from {first:,} to {last:,} tokens "
                   f"({_bytes(rows[0]['state_bytes'])} → {_bytes(rows[-1]['state_bytes'])}), and its decode step "
                   f"takes {rows[-1]['ms_per_token'] / rows[0]['ms_per_token']:.1f}× as long.")
    if len(fixed) == 1:  # ("from X (a) to X (a)")
        ((only, size),) = fixed.items()
        out.append(f"{only}'s state stays the same size at any context: {_bytes(size)} per sequence.")
    elif fixed:
        smallest, largest = min(fixed, key=fixed.get), max(fixed, key=fixed.get)
        every = "Every other state" if growing else "Every state"
        out.append(f"{every} stays the same size at any context: from {_bytes(fixed[smallest])} "
                   f"({smallest}) to {_bytes(fixed[largest])} ({largest}) per sequence.")
    return out


def _text_takeaways(results: dict[str, Any]) -> list[str]:
    runs = {r["arch"]: r for r in results["runs"] if r["task"] == "text" and r["ok"]}
    if not runs:
        return []
    ranked = sorted(runs, key=lambda a: runs[a]["eval"]["perplexity"])
    figures = ", ".join(f"{a} {runs[a]['eval']['perplexity']:.2f}" for a in ranked)
    return [f"On text, validation perplexity per byte after {runs[ranked[0]]['steps']} steps (one seed; lower is "
            f"better): {figures}."]


def _gradient_takeaways(measured: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    reach = min(64, cfg["gradient_length"] - 1)
    rel = {}
    for arch, m in measured.items():
        profile = m.get("gradients_trained") or m["gradients_init"]
        if profile[0] > 0 and len(profile) > reach:
            rel[arch] = profile[reach] / profile[0]
    if not rel:
        return []
    fading = sorted(a for a, r in rel.items() if 0 < r < 1e-4)
    dead = sorted(a for a, r in rel.items() if r == 0)
    trained = any("gradients_trained" in m for m in measured.values())
    label = "after training on text" if trained else "at initialisation"
    # An architecture whose text run failed has only its profile at initialisation: said where it is listed.
    untrained = {a for a in rel if trained and "gradients_trained" not in measured[a]}
    parts = [f"{a} {rel[a]:.0e}" + (" (at initialisation: its text run failed)" if a in untrained else "")
             for a in sorted(rel, key=lambda a: rel[a], reverse=True) if rel[a] > 0]
    text = (f"Gradient {reach} tokens back, relative to the last token ({label}): {', '.join(parts)}"
            + (f"; exactly 0 for {_names(dead)}" if dead else "") + ".")
    if fading:
        text += (f" {_names(fading)} barely learn{'s' if len(fading) == 1 else ''} from that far back: the vanishing "
                 f"gradient of Hochreiter (1991) and Bengio et al. (1994), measured.")
    return [text]


# ----------------------------------------------------------------------------------------------------------------
# Gradient health: flagged steps, with what they mean.


def gradient_health_notes(results: dict[str, Any]) -> str:
    lines = []
    for run in results["runs"]:
        if not run["ok"]:
            continue
        health = run["grad_health"]
        flagged = {k: v for k, v in health["flagged_steps"].items() if v}
        if not flagged:
            continue
        name = f"{run['arch']} / {run['task']}, seed {run['seed']}"
        # (a non-finite step's update was skipped: a run that skipped one and ended at its best was said to have been
        # set back by it, the NaN in its losses read as never recovering)
        losses = [x for x in run.get("losses") or [] if math.isfinite(x)]
        outcome = (f"accuracy {run['eval']['accuracy']:.2f}" if run["task"] != "text"
                   else f"perplexity {run['eval']['perplexity']:.2f}")
        # Near its best loss: within half again of it, or within 5% of the way down from the first step (a solved
        # run's best is a few thousandths, and a tail at 0.03 from a start at 2.6 was called "well above" it).
        recovered = False
        if losses:
            tail, best = statistics.mean(losses[-10:]), min(losses)
            recovered = tail <= best * 1.5 or tail - best <= 0.05 * (losses[0] - best)
        # (a non-finite step is counted among the exploding ones too, and skipped rather than clipped)
        nonfinite = flagged.pop("nonfinite", 0) if "exploding" in flagged else 0
        if not recovered:
            meaning = "the run ended well above its best loss"
            meaning += ": these steps set it back" if "exploding" in flagged else ""
        elif "exploding" in flagged:
            skipped = " (the non-finite ones were skipped)" if nonfinite else ""
            meaning = (f"clipping capped each of those updates{skipped}, and the run ended near its best loss: large "
                       "raw gradients, not divergence")
        else:  # vanishing steps only: nothing was clipped
            meaning = "those updates barely moved the weights, and the run ended near its best loss anyway"
        first = health.get("first_flagged_step", {})
        counted = [f"{v} {k} step(s) (first at step {first.get(k, '?')}"
                   + (f"; {nonfinite} of them non-finite" if k == "exploding" and nonfinite else "") + ")"
                   for k, v in flagged.items()]
        lines.append(f"- {name}: " + ", ".join(counted)
                     + f"; largest norm {health.get('max_grad_norm', math.nan):.3g}; {meaning} ({outcome}).")
    if not lines:
        return ("No run had a vanishing (< 1e-6) or exploding (> 1e3 or non-finite) gradient norm before clipping.")
    thresholds = "a norm below 1e-6 is flagged vanishing, above 1e3 (or non-finite) exploding"
    return (f"The global gradient norm is measured before clipping (to 1.0) at every step; {thresholds}.\n\n"
            + "\n".join(lines))
