"""`seqzoo lab bidirectional`: why reading both ways matters. Every architecture that can be a bidirectional encoder
(RNN, LSTM, GRU, Mamba, Mamba-2, RWKV-7) trained twice with the same budget -- left to right only, and
bidirectional -- on two tasks at growing distances (words per text):

- tagging, ``appears_later``: tag each letter ``again`` if it occurs later in the text, else ``last``. The answer
  lies after the word, so a left-to-right tagger can only guess from the position; a bidirectional one has read the
  rest of the text in its right-to-left pass.
- classification, ``first_letter``: label a text with its first letter. A left-to-right model must carry that
  letter through every word after it; a bidirectional encoder's right-to-left pass ends on it (pooled first+last).

Every model is an ordinary classification recipe of :func:`seqzoo.training.train` on the built-in tasks of
:mod:`seqzoo.training.classification`, trained in a single-threaded worker process (one per core); it trains on
all distances in turn and is scored on held-out texts of each. The default run fits about two minutes on two
cores; ``smoke=True`` runs every code path in seconds.

Self-contained: :func:`run_bidirectional_lab` writes ``bidirectional.md``, ``bidirectional-results.json`` and
``bidirectional.png`` into its folder and returns the results with the Markdown under ``"markdown"``.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

RESULTS_FILE, REPORT_FILE, PLOT_FILE = "bidirectional-results.json", "bidirectional.md", "bidirectional.png"
# Each lab task: the head it trains and how the report names it.
TASKS = {"appears_later": ("token-classification", "tagging: does this letter occur again later?"),
         "first_letter": ("sequence-classification", "classification: the text's first letter")}
DIRECTIONS = ("left to right", "bidirectional")


@dataclass
class BidirectionalLabConfig:
    architectures: list[str] | None = None  # None: every registered architecture that can be bidirectional
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    distances: list[int] = field(default_factory=lambda: [8, 16, 32])  # words per text
    steps: int = 150
    batch_size: int = 32
    lr: float = 1e-2
    symbols: int = 4  # first_letter: letters (classes); appears_later draws from distance / 2 letters
    eval_samples: int = 128  # per distance
    workers: int = 0  # 0: one per available core, at most 8
    seed: int = 0
    is_smoke: bool = False  # set by smoke(): the report says its figures mean nothing

    @classmethod
    def smoke(cls, **overrides: Any) -> "BidirectionalLabConfig":
        """Every code path in seconds: for tests. Its figures mean nothing."""
        values = dict(architectures=["lstm", "mamba"], steps=2, batch_size=4, eval_samples=4, distances=[2, 4],
                      is_smoke=True)
        values.update(overrides)
        return cls(**values)

    def presets(self) -> dict[str, str]:
        """architecture -> the preset trained: its smallest (the memory lab's rule)."""
        import seqzoo
        from seqzoo.lab.runner import lab_presets
        from seqzoo.registry import architecture_presets, in_every_process

        heads = {TASKS[task][0]: task for task in self.tasks if task in TASKS}  # the heads the tasks train

        def lacking(name: str) -> list[str]:
            return [head for head in heads if head not in seqzoo.get_architecture(name).heads]

        encoders = [name for name in seqzoo.list_architectures()
                    if seqzoo.get_architecture(name).config_class.supports_bidirectional]
        able = [name for name in encoders if not lacking(name)]
        for arch in self.architectures or []:
            if arch in seqzoo.list_architectures() and arch not in encoders:
                raise ValueError(f"architecture {arch!r} cannot be a bidirectional encoder in seqzoo; the ones that "
                                 f"can: {', '.join(able)}")
            if arch in encoders and lacking(arch):
                # (a plugin's architecture: one that can be bidirectional, without the heads the lab trains)
                missing = lacking(arch)
                others = [task for head, task in heads.items() if head not in missing]
                raise ValueError(
                    f"architecture {arch!r} can be a bidirectional encoder but has no {' or '.join(missing)} head, "
                    f"which the bidirectional lab's task(s) {', '.join(heads[head] for head in missing)} train: give "
                    f"its ModelSpec heads for {', '.join(map(repr, missing))}"
                    + (f", or run only --tasks {' '.join(others)}" if others else "")
                    + f"; the architectures that have them: {', '.join(able)}")
        return lab_presets(self.architectures
                           or [name for name in able if architecture_presets(name) and in_every_process(name)])

    def validate(self) -> None:
        for task in self.tasks:
            if task not in TASKS:
                raise ValueError(f"unknown bidirectional-lab task {task!r}; allowed: {', '.join(TASKS)}")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks={self.tasks} is invalid: a non-empty list of distinct tasks")
        if not self.distances or min(self.distances) < 2 or len(set(self.distances)) != len(self.distances):
            raise ValueError(f"distances={self.distances} is invalid: a non-empty list of distinct integers >= 2 "
                             "(words)")
        for key in ("steps", "batch_size", "eval_samples"):
            if getattr(self, key) < 1:
                raise ValueError(f"bidirectional lab setting {key}={getattr(self, key)} is invalid: must be >= 1")
        if not 2 <= self.symbols <= 26:
            raise ValueError(f"symbols={self.symbols} is invalid: 2 to 26 letters")
        if not 0 < self.lr < 1:  # (else every run failed on it, one by one; nan too)
            raise ValueError(f"bidirectional lab setting lr={self.lr} is invalid: must be in (0, 1)")
        if self.workers < 0:  # (else taken as one worker)
            raise ValueError(f"bidirectional lab setting workers={self.workers} is invalid: >= 1, or 0 for one per "
                             "core")

    def worker_count(self, jobs: int) -> int:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(self.workers or min(cores, 8), jobs))


# ----------------------------------------------------------------------------------------------------------------
# One job: train one model, one direction, one task; score it per distance.


def job_recipe(job: dict[str, Any]) -> Any:
    from seqzoo.training.recipe import recipe_from_dict

    cfg = BidirectionalLabConfig(**job["config"])
    task = TASKS[job["task"]][0]
    bidirectional = job["direction"] == "bidirectional"
    model_config: dict[str, Any] = {"bidirectional": bidirectional}
    if task == "sequence-classification":  # each direction pooled where it has read the whole text
        model_config["classifier_pooling"] = "first+last" if bidirectional else "last"
    return recipe_from_dict({
        "name": f"lab-bidirectional-{job['arch']}-{job['task']}-{'bi' if bidirectional else 'uni'}",
        "output_dir": job["output_dir"],
        "task": task,
        "model": {"preset": job["preset"], "config": model_config},
        "data": {"source": "task", "task": job["task"], "distances": cfg.distances, "eval_samples": cfg.eval_samples,
                 # (appears_later draws from distance / 2 letters: the recipe refuses a symbols it would not read)
                 **({"symbols": cfg.symbols} if job["task"] == "first_letter" else {})},
        "optim": {"lr": cfg.lr, "warmup_steps": min(10, cfg.steps), "weight_decay": 0.0},
        "train": {"max_steps": cfg.steps, "batch_size": cfg.batch_size, "eval_every": 0, "save_every": 0,
                  "seed": cfg.seed},
    })


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train and score one model; never raises (a failure is a result, reported beside the others)."""
    from seqzoo.training.trainer import train

    started, cpu = time.perf_counter(), time.process_time()
    base = {key: job[key] for key in ("arch", "preset", "task", "direction")}
    try:
        result = train(job_recipe(job), progress=False, save_model=False, force=True)  # (its own job folder)
        accuracy = {int(name.split("=")[1]): figures["accuracy"] for name, figures in result.eval["sets"].items()}
        row = {**base, "ok": True, "steps": result.steps, "accuracy": accuracy,
               "params": sum(p.numel() for p in result.model.parameters())}
    except Exception as err:  # noqa: BLE001 -- one model's failure must not hide the others' results
        return {**base, "ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
                "seconds": time.perf_counter() - started}
    return {**row, "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}


# ----------------------------------------------------------------------------------------------------------------
# The whole lab.


def _run_folder(arch: str, task: str, direction: str) -> str:
    return f"{arch}-{task}-{direction.replace(' ', '-')}"


def run_bidirectional_lab(cfg: BidirectionalLabConfig, out: str | Path, command: str = "seqzoo lab bidirectional",
                          log: Callable[[str], None] = print, force: bool = False) -> dict[str, Any]:
    """Train every (architecture, task, direction), then write the report and its figure into ``out`` (a report
    there is replaced only with ``force``)."""
    cfg.validate()
    from seqzoo.lab.folders import claim_output, lab_folder

    out = lab_folder(out)
    # (two bidirectional labs on one folder at once, or one with --force while another runs: each had checked the
    # folder, and one deleted or wrote over the runs and results of the other)
    with claim_output(out, "bidirectional lab"):
        return _run_bidirectional_lab_claimed(cfg, out, command, log, force)


def _run_bidirectional_lab_claimed(cfg: BidirectionalLabConfig, out: Path, command: str, log: Callable[[str], None],
                                   force: bool) -> dict[str, Any]:
    """:func:`run_bidirectional_lab` once this process holds ``out``."""
    presets = cfg.presets()
    from seqzoo.lab.folders import (
        check_report_folder,
        record_stopped,
        remove_previous_report,
        write_results,
    )
    from seqzoo.lab.workers import run_lab_jobs

    written = (RESULTS_FILE, REPORT_FILE, PLOT_FILE)
    runs = [f"runs/{_run_folder(arch, task, direction)}" for task in cfg.tasks for arch in presets
            for direction in DIRECTIONS]
    # (each run trains with force=True in its folder: one there of the user's would be deleted)
    held = check_report_folder(out, RESULTS_FILE, "bidirectional", force, written, tuple(runs))
    remove_previous_report(out, RESULTS_FILE, written, (), lambda run: _run_folder(
        run["arch"], run["task"], run["direction"]), held)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jobs = [{"arch": arch, "preset": preset, "task": task, "direction": direction, "config": asdict(cfg),
             "output_dir": str(out / "runs" / _run_folder(arch, task, direction))}
            for task in cfg.tasks for arch, preset in presets.items() for direction in DIRECTIONS]
    workers = cfg.worker_count(len(jobs))
    log(f"seqzoo lab bidirectional: {len(presets)} architectures x {len(cfg.tasks)} task(s) x 2 directions, "
        f"{len(jobs)} training runs on {workers} worker(s) -> {out}")
    order = {(j["arch"], j["task"], j["direction"]): i for i, j in enumerate(jobs)}
    # Every run is recorded as it ends ("running" until the report is written): a failure later (a run's worker,
    # the report, a full disk) loses no training, and the file says why it stopped.
    marker = out / RESULTS_FILE
    results: dict[str, Any] = {"status": "running", "config": asdict(cfg), "presets": presets, "runs": [],
                               "workers": workers, "command": command, "seconds": 0.0}

    def keep(run: dict[str, Any]) -> None:
        results["runs"].append(run)
        results["seconds"] = time.perf_counter() - started
        write_results(marker, results)

    write_results(marker, results)
    try:
        run_lab_jobs(run_job, jobs, workers, log, lambda run: f"{run['arch']:<7} {run['task']:<14} "
                     f"{run['direction']:<13}", "accuracy by distance", keep=keep)
        results["runs"].sort(key=lambda run: order[(run["arch"], run["task"], run["direction"])])
        results["seconds"] = time.perf_counter() - started
        results["baselines"] = baselines(results["config"])
        write_results(marker, results)
        results["markdown"] = write_report(results, out)
        results["status"] = "finished"
        write_results(marker, results)
    except BaseException as err:
        record_stopped(marker, results, err, log, "bidirectional")
        raise
    log(f"wrote {out / REPORT_FILE} in {results['seconds']:.0f} s")
    return results


def baselines(cfg: dict[str, Any]) -> dict[str, dict[int, float]]:
    """baseline[task][distance]: the accuracy of always answering the commonest label of the held-out set."""
    from collections import Counter

    from seqzoo.training.classification import generated_texts

    table = {}
    for task in cfg["tasks"]:
        head = TASKS[task][0]
        data = generated_texts(head, task, cfg["distances"], cfg["symbols"], cfg["eval_samples"], cfg["seed"])
        table[task] = {}
        for name, rows in data.eval_rows().items():
            labels = Counter(tag for _, tags in rows for tag in tags) if head == "token-classification" else \
                Counter(label for _, label in rows)
            table[task][int(name.split("=")[1])] = max(labels.values()) / sum(labels.values())
    return table


def gaps(results: dict[str, Any]) -> dict[str, dict[str, dict[int, float]]]:
    """gap[task][arch][distance] = bidirectional accuracy - left-to-right accuracy."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    by_key = {(r["arch"], r["task"], r["direction"]): r for r in results["runs"] if r["ok"]}
    for (arch, task, direction), run in by_key.items():
        other = by_key.get((arch, task, "left to right"))
        if direction != "bidirectional" or other is None:
            continue
        table.setdefault(task, {})[arch] = {int(d): run["accuracy"][d] - other["accuracy"][d] for d in run["accuracy"]}
    return table


def summary_sentence(results: dict[str, Any]) -> str:
    """What the run shows, from its own figures."""
    cfg, table = results["config"], gaps(results)
    parts = []
    for task in cfg["tasks"]:
        if task not in table:
            continue
        longest = max(cfg["distances"])
        values = {arch: per[longest] for arch, per in table[task].items() if longest in per}
        if not values:
            continue
        mean = sum(values.values()) / len(values)
        low, high = min(values, key=values.get), max(values, key=values.get)
        parts.append(f"on {TASKS[task][1].split(':')[0]} at {longest} words, reading both ways is worth "
                     f"{mean:+.2f} accuracy on average ({low} {values[low]:+.2f} to {high} {values[high]:+.2f})")
    if not parts:
        return "No pair of runs finished, so nothing can be compared."
    return ("With the same budget, " + "; ".join(parts) + ". The tagger's answer lies after each word, where a "
            "left-to-right model never looks; the classifier's lies at the start, which a left-to-right model must "
            "carry through the whole text and a bidirectional one reads last in its right-to-left pass.")


def write_report(results: dict[str, Any], out: Path) -> str:
    """``bidirectional.md`` and its figure; returns the Markdown."""
    from seqzoo.lab import plots
    from seqzoo.lab.report import markdown_table

    cfg, runs = results["config"], [run for run in results["runs"] if run["ok"]]
    lines = ["## Bidirectional encoders: reading the whole text", ""]
    if cfg.get("is_smoke"):
        lines += ["**Smoke run**: a few steps per model to exercise every code path; the figures mean nothing.", ""]
    lines += [f"Each model trained {cfg['steps']} steps of {cfg['batch_size']} texts (learning rate {cfg['lr']}), the "
              f"distances {', '.join(map(str, cfg['distances']))} words in turn, then tagged or classified "
              f"{cfg['eval_samples']} held-out texts per distance. Left to right and bidirectional models are the same "
              "preset with `bidirectional` false or true (a classifier pools its last token left to right, its first "
              "and last bidirectional).", "", summary_sentence(results), ""]
    if not plots.matplotlib_available():
        lines += [f"> {plots.SKIPPED}", ""]
    elif runs:
        accuracy_plot(results, out / PLOT_FILE)
        lines += [f"![accuracy against distance, left to right and bidirectional]({PLOT_FILE})", ""]
    for task in cfg["tasks"]:
        header = ["architecture", "preset", "direction", *(f"{d} words" for d in cfg["distances"]), "seconds"]
        rows = [[f"**{run['arch']}**", f"`{run['preset']}`", run["direction"],
                 *(f"{_accuracy(run, d):.2f}" for d in cfg["distances"]), f"{run['seconds']:.0f}"]
                for run in runs if run["task"] == task]
        base = results["baselines"][task]
        rows.append(["commonest label", "", "always", *(f"{base[d]:.2f}" for d in cfg["distances"]), ""])
        lines += [f"**{TASKS[task][1]}** (accuracy by distance; task `{task}`)", "", markdown_table(header, rows), ""]
    failed = [run for run in results["runs"] if not run["ok"]]
    if failed:
        lines += ["Failed runs:", ""] + [f"- {r['arch']} / {r['task']} / {r['direction']}: {r['error']}"
                                         for r in failed] + [""]
    lines.append(f"{len(results['runs'])} runs on {results['workers']} single-threaded worker(s) in "
                 f"{results['seconds']:.0f} s. Command: `{results['command']}`")
    text = "\n".join(lines) + "\n"
    (out / REPORT_FILE).write_text(text, encoding="utf-8")
    return text


def _accuracy(run: dict[str, Any], distance: int) -> float:
    return run["accuracy"].get(distance, run["accuracy"].get(str(distance), float("nan")))


def accuracy_plot(results: dict[str, Any], path: Path) -> None:
    """A column per task, a row per direction: accuracy against distance, one line per architecture."""
    from seqzoo.lab.plots import _dodged, _log2_ticks, styles
    from seqzoo.utils import new_figure

    cfg, runs = results["config"], [run for run in results["runs"] if run["ok"]]
    archs = sorted({run["arch"] for run in runs})
    look = styles(archs)
    fig = new_figure(figsize=(4.2 * len(cfg["tasks"]) + 1.8, 6.0))
    axes = fig.subplots(2, len(cfg["tasks"]), sharey=True, sharex=True, squeeze=False)
    for column, task in enumerate(cfg["tasks"]):
        base = sorted((int(d), a) for d, a in results["baselines"][task].items())
        for row, direction in enumerate(DIRECTIONS):
            ax = axes[row][column]
            for run in (r for r in runs if r["task"] == task and r["direction"] == direction):
                points = sorted((int(d), a) for d, a in run["accuracy"].items())
                # Several runs at the same accuracy (1.0) would hide each other: each architecture has its slot.
                ax.plot(_dodged([d for d, _ in points], archs.index(run["arch"]), len(archs)),
                        [a for _, a in points], label=run["arch"], **look[run["arch"]])
            ax.plot([d for d, _ in base], [a for _, a in base], color="grey", linewidth=1.0, linestyle=(0, (2, 2)),
                    label="commonest label, always")
            _log2_ticks(ax, cfg["distances"])
            ax.set_ylim(-0.02, 1.04)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(TASKS[task][1], fontsize=9)
            if column == 0:
                ax.set_ylabel(f"{direction}\naccuracy (held out)", fontsize=9)
            if row == 1:
                ax.set_xlabel("distance (words per text)")
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.0), frameon=False, fontsize=8)
    fig.suptitle("The same models read left to right only (top) and both ways (bottom)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


__all__ = ["BidirectionalLabConfig", "run_bidirectional_lab", "write_report"]
