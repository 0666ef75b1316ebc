"""The lab's figures (matplotlib, Agg backend: no display needed). matplotlib is the optional ``lab`` extra; without
it the report keeps its tables and says how to get the plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TASK_TITLES = {"copy": "copy", "selective_copy": "selective copy", "associative_recall": "associative recall",
               "induction": "induction head"}


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(archs: list[str]) -> dict[str, Any]:
    plt = _pyplot()
    cycle = plt.get_cmap("tab10")
    return {arch: cycle(i % 10) for i, arch in enumerate(archs)}


def memory_plot(accuracy: dict[str, dict[str, dict[int, float]]], chance: dict[str, float], path: Path) -> None:
    """accuracy[task][arch][distance] -> one panel per task, accuracy against distance."""
    plt = _pyplot()
    tasks = list(accuracy)
    archs = sorted({arch for per_arch in accuracy.values() for arch in per_arch})
    colors = _colors(archs)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 1.2, 3.2), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for arch in archs:
            points = sorted(accuracy[task].get(arch, {}).items())
            if points:
                ax.plot([d for d, _ in points], [a for _, a in points], marker="o", label=arch, color=colors[arch])
        ax.axhline(chance[task], color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_title(TASK_TITLES.get(task, task))
        ax.set_xlabel("distance (tokens)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("answer accuracy")
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle("How far back can each architecture remember? (dotted: chance)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def text_plot(losses: dict[str, list[float]], path: Path) -> None:
    plt = _pyplot()
    colors = _colors(sorted(losses))
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for arch in sorted(losses):
        ax.plot(range(1, len(losses[arch]) + 1), losses[arch], label=arch, color=colors[arch], linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats / byte)")
    ax.set_title("Byte-level LM on the Python documentation", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost_plot(decode: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Decode milliseconds per token and state bytes per sequence against context length."""
    plt = _pyplot()
    colors = _colors(sorted(decode))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.4))
    for arch in sorted(decode):
        contexts = [row["context"] for row in decode[arch]]
        left.plot(contexts, [row["ms_per_token"] for row in decode[arch]], marker="o", label=arch,
                  color=colors[arch])
        right.plot(contexts, [row["state_bytes"] for row in decode[arch]], marker="o", label=arch,
                   color=colors[arch])
    for ax, label in ((left, "decode ms / token (batch 1, 1 thread)"), (right, "state bytes / sequence")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    right.set_yscale("log")
    right.legend(frameon=False, fontsize=8)
    fig.suptitle("What remembering costs at inference", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gradient_plot(profiles: dict[str, dict[str, list[float]]], path: Path) -> None:
    """profiles[label][arch] = gradient norm by distance; one panel per label (e.g. at init, after training)."""
    plt = _pyplot()
    labels = list(profiles)
    archs = sorted({arch for per_arch in profiles.values() for arch in per_arch})
    colors = _colors(archs)
    fig, axes = plt.subplots(1, len(labels), figsize=(4.8 * len(labels), 3.4), squeeze=False)
    for ax, label in zip(axes[0], labels):
        for arch in archs:
            profile = profiles[label].get(arch)
            if profile:
                # An exact zero (no path from that input, or underflow) has no place on a log axis: the line stops.
                ax.plot(range(len(profile)), [v if v > 0 else float("nan") for v in profile], label=arch,
                        color=colors[arch], linewidth=1.2)
        ax.set_yscale("log")
        ax.set_xlabel("distance from the last position (tokens)")
        ax.set_ylabel("‖∂ loss(last) / ∂ input(t)‖")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
