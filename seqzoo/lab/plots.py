"""The lab's figures (matplotlib figures of their own, saved without pyplot: no display needed, and the caller's
pyplot backend and figures untouched). matplotlib is the optional ``lab`` extra; without
it the report keeps its tables and says how to get the plots.

Every architecture keeps one colour, marker and line style in every figure, and lines that would sit on top of
each other (several architectures at accuracy 1.0, two states of the same size) are nudged sideways a little, so
each stays visible. Axes have ticks only where there is data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seqzoo.utils import new_figure

# What a report without its figures says in their place (lab, seq2seq, bidirectional, gradients).
SKIPPED = "Plots skipped: matplotlib is not installed (`pip install 'seqzoo[lab]'`)."

# The report's figures, by file name (written beside report.md in a lab folder).
MEMORY_PNG, TEXT_PNG, COST_PNG, GRADIENTS_PNG = "lab-memory.png", "lab-text.png", "lab-cost.png", "lab-gradients.png"
PLOT_FILES = (MEMORY_PNG, TEXT_PNG, COST_PNG, GRADIENTS_PNG)
TASK_TITLES = {"copy": "copy", "selective_copy": "selective copy", "associative_recall": "associative recall",
               "induction": "induction head"}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1)), (0, (5, 2, 1, 2))]
DODGE = 0.06  # sideways nudge between architectures, as a fraction of a factor of 2 on a log axis


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def styles(archs: list[str]) -> dict[str, dict[str, Any]]:
    """One look per architecture (sorted, so every figure of every report agrees)."""
    import matplotlib

    cycle = matplotlib.colormaps["tab10"]
    return {arch: {"color": cycle(i % 10), "marker": MARKERS[i % len(MARKERS)],
                   "linestyle": LINESTYLES[i % len(LINESTYLES)]} for i, arch in enumerate(sorted(archs))}


def _dodged(xs: list[float], index: int, count: int) -> list[float]:
    """``xs`` on a log-2 axis, shifted by this architecture's slot among ``count``."""
    offset = (index - (count - 1) / 2) * DODGE
    return [x * 2 ** offset for x in xs]


def _log2_ticks(ax: Any, values: list[int]) -> None:
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ax.set_xticks(values)
    ax.set_xticklabels([f"{v:,}" for v in values])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(min(values) / 2 ** 0.5, max(values) * 2 ** 0.5)


def memory_plot(accuracy: dict[str, dict[str, dict[int, list[float]]]], chance: dict[str, float],
                path: Path) -> None:
    """accuracy[task][arch][distance] = per-seed accuracies -> one panel per task: the mean across seeds, with a bar
    from the lowest to the highest seed."""
    tasks = [task for task in accuracy if accuracy[task]]  # a task none of whose runs succeeded has no panel
    if not tasks:
        return
    archs = sorted({arch for per_arch in accuracy.values() for arch in per_arch})
    look = styles(archs)
    distances = sorted({d for per_arch in accuracy.values() for per_d in per_arch.values() for d in per_d})
    # (at least 8 inches: the title is one line that a single panel's width would cut at both ends)
    fig = new_figure(figsize=(max(8.0, 3.3 * len(tasks) + 1.6), 3.5))
    axes = fig.subplots(1, len(tasks), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, arch in enumerate(archs):
            points = sorted(accuracy[task].get(arch, {}).items())
            if not points:
                continue
            xs = _dodged([d for d, _ in points], i, len(archs))
            means = [sum(v) / len(v) for _, v in points]
            low = [m - min(v) for m, (_, v) in zip(means, points)]
            high = [max(v) - m for m, (_, v) in zip(means, points)]
            ax.errorbar(xs, means, yerr=[low, high], label=arch, capsize=2, linewidth=1.3, markersize=5,
                        elinewidth=0.9, **look[arch])
        ax.axhline(chance[task], color="grey", linestyle=":", linewidth=1)
        _log2_ticks(ax, distances)
        ax.set_title(TASK_TITLES.get(task, task), fontsize=10)
        ax.set_xlabel("distance (tokens)")
        ax.set_ylim(-0.02, 1.04)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("answer accuracy")
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle("How far back can each architecture remember? (mean of seeds; bars: lowest to highest seed; "
                 "dotted: chance)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def text_plot(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """curves[arch] = [(step, validation perplexity), ...]."""
    look = styles(list(curves))
    fig = new_figure(figsize=(6.2, 3.6))
    ax = fig.subplots()
    steps: set[int] = set()
    for arch in sorted(curves):
        points = curves[arch]
        steps.update(s for s, _ in points)
        ax.plot([s for s, _ in points], [p for _, p in points], label=arch, linewidth=1.3, markersize=4, **look[arch])
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation perplexity (per byte)")
    ax.set_xticks(sorted(steps)[1::2] if len(steps) > 6 else sorted(steps))
    ax.set_title("Byte-level LM on the Python documentation", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cost_plot(decode: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Decode milliseconds per token and state bytes per sequence against context length."""
    archs = sorted(decode)
    look = styles(archs)
    contexts = sorted({row["context"] for rows in decode.values() for row in rows})
    fig = new_figure(figsize=(10.5, 3.7))
    left, right = fig.subplots(1, 2)
    for i, arch in enumerate(archs):
        xs = _dodged([row["context"] for row in decode[arch]], i, len(archs))
        left.plot(xs, [row["ms_per_token"] for row in decode[arch]], label=arch, markersize=5, **look[arch])
        right.plot(xs, [row["state_bytes"] for row in decode[arch]], label=arch, markersize=5, **look[arch])
    for ax, label in ((left, "decode ms / token (batch 1, 1 thread)"), (right, "state bytes / sequence")):
        _log2_ticks(ax, contexts)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    right.set_yscale("log")
    right.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("What remembering costs at inference", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def gradient_plot(profiles: dict[str, dict[str, list[float]]], path: Path) -> None:
    """profiles[label][arch] = gradient norm by distance; one panel per label (e.g. at init, after training), each
    relative to the architecture's own gradient at distance 0. An exact zero (no path from that input at all)
    has no place on a log axis: it is drawn on the "exactly 0" line at the bottom."""
    labels = list(profiles)
    archs = sorted({arch for per_arch in profiles.values() for arch in per_arch})
    look = styles(archs)
    fig = new_figure(figsize=(5.0 * len(labels) + 1.4, 3.6))
    axes = fig.subplots(1, len(labels), squeeze=False)
    for ax, label in zip(axes[0], labels):
        relative = {arch: [v / p[0] if p[0] > 0 else 0.0 for v in p] for arch, p in profiles[label].items()}
        positive = [v for rel in relative.values() for v in rel if v > 0]
        floor = min(positive) / 30 if positive else 1e-12
        for arch in archs:
            rel = relative.get(arch)
            if not rel:
                continue
            distances = range(len(rel))
            ax.plot(list(distances), [v if v > 0 else float("nan") for v in rel], label=arch, linewidth=1.3,
                    color=look[arch]["color"], linestyle=look[arch]["linestyle"])
            # Powers of two: markers, not a smear; and where the gradient turns exactly 0 and the last distance,
            # so that a profile that underflows to 0 past the last power of two (the GRU's after ~150 tokens) is
            # marked on the "exactly 0" line instead of ending without a word.
            marks = [d for d in distances if d == 0 or d & (d - 1) == 0 or d == len(rel) - 1
                     or (rel[d] <= 0 < rel[d - 1])]
            alive = [d for d in marks if rel[d] > 0]
            dead = [d for d in marks if rel[d] <= 0]
            ax.plot(alive, [rel[d] for d in alive], linestyle="none", marker=look[arch]["marker"],
                    color=look[arch]["color"], markersize=4)
            ax.plot(dead, [floor] * len(dead), linestyle="none", marker=look[arch]["marker"],
                    color=look[arch]["color"], markersize=5, markerfacecolor="none")
        ax.axhline(floor, color="grey", linewidth=0.8, linestyle=":")
        ax.text(1, floor, " exactly 0 (hollow markers)", fontsize=7, color="grey", va="bottom")
        ax.set_yscale("log")
        ax.set_xlabel("distance back from the last position (tokens)")
        ax.set_ylabel("gradient norm, relative to distance 0")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("How far back does the gradient reach? ‖∂ loss(last) / ∂ input(t)‖ / ‖∂ loss(last) / ∂ input(last)‖",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
