"""`seqzoo lab seq2seq`: the bottleneck. Encoder-decoders without attention (Sutskever et al. 2014), with Bahdanau's
and Luong's attention, and the Transformer, trained with the same budget on tasks whose sources grow longer; their
exact-match accuracy against source length, and heat maps of where each target token looks in its source.

The seeds' picture: a decoder that sees the source only through the encoder's final state loses the long sources
first; attention reads every source position at every step and holds up. Every model is an ordinary
``task: seq2seq`` recipe of :func:`seqzoo.training.train`, trained in a single-threaded worker process (one per
core). The default run costs under 200 CPU-seconds (under two minutes on two idle cores; the report states the CPU
time beside the wall time, which a shared machine stretches); ``larger=True`` (``--larger``) trains longer on more
tasks and longer sources.

Self-contained: :func:`run_seq2seq_lab` writes ``seq2seq.md``, ``seq2seq-results.json`` and the PNGs into its
folder and returns the results with the Markdown section under ``"markdown"``, for the main lab report to include.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

RESULTS_FILE, REPORT_FILE = "seq2seq-results.json", "seq2seq.md"
ACCURACY_PNG = "seq2seq-accuracy.png"
TASK_TITLES = {"reverse": "reversal", "copy": "copy", "sort": "sorting", "digits": "spelled digits → digits",
               "dates": "dates"}
LENGTH_UNITS = {"digits": "digits"}  # else characters
MAP_MAX_SOURCE = 24  # characters of the example each heat map shows


@dataclass
class Seq2SeqLabConfig:
    # name -> preset (and config overrides); the names label the plots.
    models: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "no attention": {"preset": "seq2seq-sutskever-tiny"},
        "bahdanau": {"preset": "seq2seq-bahdanau-tiny"},
        "luong-dot": {"preset": "seq2seq-luong-dot-tiny"},
        "luong-general": {"preset": "seq2seq-luong-general-tiny"},
        "transformer": {"preset": "seq2seq-transformer-tiny"},
    })
    tasks: list[str] = field(default_factory=lambda: ["reverse", "digits"])
    source_lengths: dict[str, list[int]] = field(default_factory=lambda: {
        "reverse": [4, 8, 16], "copy": [4, 8, 16], "sort": [4, 8, 16], "digits": [2, 4, 8]})
    steps: int = 200
    batch_size: int = 32
    lr: float = 3e-3
    symbols: int = 8
    eval_samples: int = 64  # per source length
    workers: int = 0  # 0: one per available core, at most 8
    seed: int = 0
    is_smoke: bool = False  # set by smoke(): the report says its figures mean nothing

    @classmethod
    def larger(cls, **overrides: Any) -> "Seq2SeqLabConfig":
        """All four tasks, longer sources, three times the steps (tens of minutes on two cores)."""
        values = dict(tasks=["reverse", "copy", "sort", "digits"], steps=600, eval_samples=128,
                      source_lengths={"reverse": [4, 8, 16, 32], "copy": [4, 8, 16, 32], "sort": [4, 8, 16, 32],
                                      "digits": [2, 4, 8, 16]})
        values.update(overrides)
        return cls(**values)

    @classmethod
    def smoke(cls, **overrides: Any) -> "Seq2SeqLabConfig":
        """Every code path in seconds: for tests."""
        values = dict(steps=3, eval_samples=4, batch_size=8, source_lengths={"reverse": [2, 4], "copy": [2, 4],
                                                                             "sort": [2, 4], "digits": [1, 2]},
                      is_smoke=True)
        values.update(overrides)
        return cls(**values)

    def validate(self) -> None:
        import seqzoo
        from seqzoo.training.seq2seq import FIXED_LENGTH_TASKS, SEQ2SEQ_TASKS

        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"seq2seq lab setting tasks={self.tasks} is invalid: a non-empty list of distinct tasks")
        for task in self.tasks:
            if task not in SEQ2SEQ_TASKS:
                raise ValueError(f"unknown seq2seq task {task!r}; allowed: {', '.join(SEQ2SEQ_TASKS)}")
            if task in FIXED_LENGTH_TASKS:  # (its one evaluation set has no length: every run failed on reading it)
                grown = [name for name in SEQ2SEQ_TASKS if name not in FIXED_LENGTH_TASKS]
                raise ValueError(f"seq2seq task {task!r} has sources of one length, which the lab cannot grow; the "
                                 f"lab's tasks: {', '.join(grown)}")
            if task not in self.source_lengths:
                raise ValueError(f"no source_lengths for task {task!r}; give them, e.g. {{{task!r}: [4, 8, 16]}}")
            lengths = self.source_lengths[task]  # (an empty list failed every run, then the report on min([]))
            if not lengths or min(lengths) < 1 or len(set(lengths)) != len(lengths):
                raise ValueError(f"seq2seq lab setting source_lengths[{task!r}]={lengths} is invalid: a non-empty list "
                                 "of distinct integers >= 1")
        for name, model in self.models.items():
            if not isinstance(model, dict):
                raise ValueError(f"model {name!r}: {model!r} is invalid: a dict, {{'preset': ..., 'config': {{...}}}} "
                                 "(config optional)")
            unknown = sorted(set(model) - {"preset", "config"})
            if unknown:  # (a misspelt "config" would train the preset as it is, under the name given)
                raise ValueError(f"model {name!r}: unknown key(s) {', '.join(map(repr, unknown))}; a model takes "
                                 "'preset' and optionally 'config' (overrides of the preset's config)")
            if model.get("preset") not in seqzoo.list_models("seq2seq-*"):
                raise ValueError(f"model {name!r}: preset {model.get('preset')!r} is not a seq2seq preset; "
                                 f"available: {', '.join(seqzoo.list_models('seq2seq-*'))}")
        for key in ("steps", "batch_size", "eval_samples"):
            if getattr(self, key) < 1:
                raise ValueError(f"seq2seq lab setting {key}={getattr(self, key)} is invalid: must be >= 1")
        if not 0 < self.lr < 1:  # (else every run failed on it, one by one; nan too)
            raise ValueError(f"seq2seq lab setting lr={self.lr} is invalid: must be in (0, 1)")
        if not 2 <= self.symbols <= 26:  # (the letter tasks' alphabet; every run of one failed on it)
            raise ValueError(f"seq2seq lab setting symbols={self.symbols} is invalid: 2 to 26 letters")
        if self.workers < 0:  # (else taken as one worker)
            raise ValueError(f"seq2seq lab setting workers={self.workers} is invalid: >= 1, or 0 for one per core")

    def worker_count(self, jobs: int) -> int:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(self.workers or min(cores, 8), jobs))


# ----------------------------------------------------------------------------------------------------------------
# One job: train one model on one task, score it, and read its attention on one example.


def job_recipe(job: dict[str, Any]) -> Any:
    from seqzoo.training.recipe import recipe_from_dict
    from seqzoo.training.seq2seq import FIXED_LENGTH_TASKS

    cfg = Seq2SeqLabConfig(**job["config"])
    model = cfg.models[job["model"]]
    task = job["task"]
    return recipe_from_dict({
        "name": f"lab-seq2seq-{job['model'].replace(' ', '-')}-{job['task']}",
        "output_dir": job["output_dir"],
        "task": "seq2seq",
        "model": {"preset": model["preset"], "config": model.get("config", {})},
        # (symbols only for the letter tasks, source lengths only where a task draws them: the recipe refuses
        # what its task would not read)
        "data": {"source": "task", "task": task, "eval_samples": cfg.eval_samples,
                 **({"symbols": cfg.symbols} if task not in ("digits", "dates") else {}),
                 **({} if task in FIXED_LENGTH_TASKS else {"source_lengths": cfg.source_lengths[task]})},
        "optim": {"lr": cfg.lr, "warmup_steps": min(20, cfg.steps), "weight_decay": 0.0},
        # No checkpoints: the lab keeps its figures, not its models (a run is seconds to repeat).
        "train": {"max_steps": cfg.steps, "batch_size": cfg.batch_size, "eval_every": 0, "save_every": 0,
                  "seed": cfg.seed},
    })


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train and score one model; never raises (a failure is a result, reported beside the others)."""
    from seqzoo.models.seq2seq.inspection import attention_map
    from seqzoo.tokenizer import byte_tokenizer
    from seqzoo.training.seq2seq import exact_match, task_pairs
    from seqzoo.training.trainer import train
    from seqzoo.utils import count_parameters

    started, cpu_started = time.perf_counter(), time.process_time()
    base = {"model": job["model"], "task": job["task"]}
    try:
        recipe = job_recipe(job)
        result = train(recipe, progress=False, save_model=False, force=True)  # (its own job folder)
        model = result.model.eval()
        data = task_pairs(recipe.data.task, recipe.data.source_lengths, recipe.data.symbols, recipe.data.eval_samples,
                          recipe.train.seed)
        pairs = data.eval_pairs()
        accuracy = {int(name.split("=")[1]): exact_match(model, examples) for name, examples in pairs.items()}
        trained = data.trained_share(result.steps, recipe.train.batch_size)
        row = {**base, "ok": True, "preset": recipe.model.preset, "steps": result.steps,
               "params": count_parameters(model), "accuracy": accuracy,
               "trained_share": {int(name.split("=")[1]): share for name, share in trained.items()},
               "tokens_per_second": result.train_tokens_per_second, "loss": result.eval["loss"]}
        if model.config.has_attention:
            # The longest source that still reads as a heat map (spelled digits run ~5 characters a digit).
            fitting = [n for n in accuracy if len(pairs[f"length={n}"][0][0]) <= MAP_MAX_SOURCE] or [min(accuracy)]
            source, target = pairs[f"length={max(fitting)}"][0]
            tokenizer = byte_tokenizer()
            generated = attention_map(model, tokenizer, source, max_new_tokens=len(target) + 4)
            row["attention"] = {"source": generated.source_tokens, "target": generated.target_tokens,
                                "weights": generated.weights.tolist(), "expected": target,
                                "generated": generated.target_text,
                                "correct": generated.target_tokens == [*target, "<eos>"]}
    except Exception as err:  # noqa: BLE001 -- one model's failure must not hide the others' results
        return {**base, "ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
                "seconds": time.perf_counter() - started}
    return {**row, "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started}


# ----------------------------------------------------------------------------------------------------------------
# The whole seq2seq lab.


def _run_folder(model: str, task: str) -> str:
    return f"{model}-{task}"


def attention_png(task: str) -> str:
    """The file of ``task``'s attention heat maps."""
    return f"seq2seq-attention-{task}.png"


def run_seq2seq_lab(cfg: Seq2SeqLabConfig, out: str | Path, log: Callable[[str], None] = print, *,
                    force: bool = False) -> dict[str, Any]:
    """Train every model on every task, then write the report section and its figures into ``out`` (a finished
    report there is replaced only with ``force``)."""
    cfg.validate()
    from seqzoo.lab.folders import claim_output, lab_folder

    out = lab_folder(out)
    # (two seq2seq labs on one folder at once, or one with --force while another runs: each had checked the
    # folder, and one deleted or wrote over the runs and results of the other)
    with claim_output(out, "seq2seq lab"):
        return _run_seq2seq_lab_claimed(cfg, out, log, force)


def _run_seq2seq_lab_claimed(cfg: Seq2SeqLabConfig, out: Path, log: Callable[[str], None],
                             force: bool) -> dict[str, Any]:
    """:func:`run_seq2seq_lab` once this process holds ``out``."""
    from seqzoo.lab.folders import (
        check_report_folder,
        record_stopped,
        remove_previous_report,
        write_results,
    )
    from seqzoo.lab.workers import run_lab_jobs

    written = (RESULTS_FILE, REPORT_FILE, ACCURACY_PNG)
    runs = [f"runs/{_run_folder(name, task)}" for task in cfg.tasks for name in cfg.models]
    # (each run trains with force=True in its folder: one there of the user's would be deleted)
    held = check_report_folder(out, RESULTS_FILE, "seq2seq", force, (*written, *map(attention_png, cfg.tasks)),
                               tuple(runs))
    remove_previous_report(out, RESULTS_FILE, written, (attention_png("*"),),
                           lambda run: _run_folder(run["model"], run["task"]), held)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jobs = [{"model": name, "task": task, "config": asdict(cfg),
             "output_dir": str(out / "runs" / _run_folder(name, task))} for task in cfg.tasks for name in cfg.models]
    # The decoders that step in Python first, so the pool ends on quick runs.
    jobs.sort(key=lambda job: "luong" not in job["model"] and job["model"] != "bahdanau")
    workers = cfg.worker_count(len(jobs))
    log(f"seqzoo lab seq2seq: {len(cfg.models)} models x {len(cfg.tasks)} task(s), {len(jobs)} training runs on "
        f"{workers} worker(s) -> {out}")
    order = {(j["model"], j["task"]): i for i, j in enumerate(sorted(jobs, key=lambda j: (
        cfg.tasks.index(j["task"]), list(cfg.models).index(j["model"]))))}
    # Every run is recorded as it ends ("running" until the report is written): a failure later (a run's worker,
    # the report, a full disk) loses no training, and the file says why it stopped.
    marker = out / RESULTS_FILE
    results: dict[str, Any] = {"status": "running", "config": asdict(cfg), "runs": [], "workers": workers,
                               "seconds": 0.0}

    def keep(run: dict[str, Any]) -> None:
        results["runs"].append(run)
        results["seconds"] = time.perf_counter() - started
        write_results(marker, results)

    write_results(marker, results)
    try:
        run_lab_jobs(run_job, jobs, workers, log, lambda run: f"{run['model']:<14} {run['task']:<8}",
                     "exact match by length", keep=keep)
        results["runs"].sort(key=lambda run: order[(run["model"], run["task"])])
        results["seconds"] = time.perf_counter() - started
        write_results(marker, results)
        results["markdown"] = write_report(results, out)
        results["status"] = "finished"
        write_results(marker, results)
    except BaseException as err:
        record_stopped(marker, results, err, log, "seq2seq")
        raise
    log(f"wrote {out / REPORT_FILE} in {results['seconds']:.0f} s")
    return results


def write_report(results: dict[str, Any], out: Path) -> str:
    """``seq2seq.md`` and its figures; returns the Markdown (headed "## Sequence to sequence: the bottleneck")."""
    from seqzoo.lab import plots

    cfg, runs = results["config"], [run for run in results["runs"] if run["ok"]]
    lines = ["## Sequence to sequence: the bottleneck", ""]
    if cfg.get("is_smoke"):
        lines += ["**Smoke run** (`--smoke`): a few steps per model to exercise every code path; the figures mean "
                  "nothing.", ""]
    lines += [f"Each model trained {cfg['steps']} steps of {cfg['batch_size']} pairs (learning rate {cfg['lr']}) on "
              "sources of every length at once, then generated greedily: exact-match accuracy on "
              f"{cfg['eval_samples']} sources per length, drawn apart from training (where a length has few distinct "
              "sources, many were also trained on: the share is under each table). Without attention the decoder "
              "sees the source only through the encoder's final state, so the seeds' picture is that its accuracy "
              "falls first as sources grow, while attention reads every source position at every step.", "",
              *findings(results), ""]
    if not plots.matplotlib_available():
        lines += [f"> {plots.SKIPPED}", ""]
    elif runs:
        accuracy_plot(results, out / ACCURACY_PNG)
        lines += [f"![exact match against source length]({ACCURACY_PNG})", ""]
    for task in cfg["tasks"]:
        lengths = cfg["source_lengths"][task]
        unit = LENGTH_UNITS.get(task, "characters")
        header = ["model", "preset", "parameters", *(f"{n} {unit}" for n in lengths), "train tokens/s", "CPU s"]
        rows = [[f"**{run['model']}**", f"`{run['preset']}`", f"{run['params']:,}",
                 *(f"{run['accuracy'].get(n, run['accuracy'].get(str(n), 0.0)):.2f}" for n in lengths),
                 f"{run['tokens_per_second']:,.0f}", f"{run.get('cpu_seconds', float('nan')):.0f}"]
                for run in runs if run["task"] == task]
        lines += [f"**{TASK_TITLES.get(task, task)}** (exact match by source length)", "",
                  _table(header, rows), ""]
        shares = next((run["trained_share"] for run in runs if run["task"] == task and "trained_share" in run), None)
        if shares:  # (every model of a task trains on the same draws)
            lines += ["Evaluation sources also drawn in training: " + ", ".join(
                f"{n} {unit} {shares.get(n, shares.get(str(n), 0.0)):.0%}" for n in lengths) + ".", ""]
        maps = [run for run in runs if run["task"] == task and "attention" in run]
        if maps and plots.matplotlib_available():
            name = attention_png(task)
            heat_maps(maps, task, out / name)
            lines += [f"![attention heat maps, {TASK_TITLES.get(task, task)}]({name})", ""]
    failed = [run for run in results["runs"] if not run["ok"]]
    if failed:
        lines += ["Failed runs:", ""] + [f"- {run['model']} / {run['task']}: {run['error']}" for run in failed] + [""]
    cpu = sum(run.get("cpu_seconds", 0.0) for run in results["runs"])
    lines.append(f"{len(results['runs'])} runs on {results['workers']} single-threaded worker(s): {cpu:.0f} "
                 f"CPU-seconds of training and scoring, {results['seconds']:.0f} s of wall time (longer than CPU / "
                 "workers when the machine is shared). Training tokens/s counts target tokens, measured while the "
                 "other runs shared the machine: compare them within one report, not across reports.")
    text = "\n".join(lines) + "\n"
    (out / REPORT_FILE).write_text(text, encoding="utf-8")
    return text


def findings(results: dict[str, Any]) -> list[str]:
    """What this run's own numbers show, per task: how no attention fares at the longest sources against the
    attention models, and which models fall short already at the shortest sources (there the bottleneck does not
    bind, so a shortfall says the step budget was too small for that model, not that its memory ran out)."""
    cfg, runs = results["config"], [run for run in results["runs"] if run["ok"]]
    lines = []
    for task in cfg["tasks"]:
        lengths = cfg["source_lengths"][task]
        shortest, longest = min(lengths), max(lengths)
        at = {run["model"]: {int(n): a for n, a in run["accuracy"].items()} for run in runs if run["task"] == task}
        if not at:
            continue
        title = TASK_TITLES.get(task, task)
        unit = LENGTH_UNITS.get(task, "characters")
        undertrained = [name for name, acc in at.items() if acc[shortest] < 0.9]
        baseline = next((name for name in at if cfg["models"][name].get("preset", "").startswith(
            "seq2seq-sutskever")), None)
        text = f"- **{title}**: "
        if baseline is not None:
            better = sorted((name for name in at if name != baseline and at[name][longest] > at[baseline][longest]),
                            key=lambda name: -at[name][longest])
            text += (f"without attention, {at[baseline][shortest]:.2f} at {shortest} {unit} and "
                     f"{at[baseline][longest]:.2f} at {longest}; ")
            text += (f"at {longest} {unit}, " + ", ".join(f"{name} {at[name][longest]:.2f}" for name in better)
                     if better else f"no attention model beats it at {longest} {unit}")
            text += ". "
        if undertrained:
            text += (f"Below 0.9 already at {shortest} {unit}: {', '.join(undertrained)} -- under-trained at "
                     f"{cfg['steps']} steps, so their fall with length does not measure the bottleneck.")
        lines.append(text.rstrip())
    return lines


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def accuracy_plot(results: dict[str, Any], path: Path) -> None:
    from seqzoo.lab.plots import _dodged, styles
    from seqzoo.utils import new_figure

    cfg, runs = results["config"], [run for run in results["runs"] if run["ok"]]
    names = list(cfg["models"])
    looks = styles(names)
    tasks = cfg["tasks"]
    fig = new_figure(figsize=(3.4 * len(tasks) + 1.6, 3.2))
    axes = fig.subplots(1, len(tasks), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for run in (run for run in runs if run["task"] == task):
            points = sorted((int(n), a) for n, a in run["accuracy"].items())
            # Several models at the same accuracy (1.0) would hide each other: each model has its slot.
            ax.plot(_dodged([n for n, _ in points], names.index(run["model"]), len(names)), [a for _, a in points],
                    label=run["model"], **looks[run["model"]])
        ax.set_xscale("log", base=2)
        lengths = cfg["source_lengths"][task]
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()
        ax.set_title(TASK_TITLES.get(task, task), fontsize=10)
        ax.set_xlabel(f"source length ({LENGTH_UNITS.get(task, 'characters')})")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("exact match")
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize=8)
    fig.suptitle(f"Exact match against source length ({cfg['steps']} training steps for every model)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def heat_maps(runs: list[dict[str, Any]], task: str, path: Path) -> None:
    """One panel per model: its attention over one source (across) for each generated token (down)."""
    from seqzoo.utils import new_figure

    source = runs[0]["attention"]["source"]
    rows = max(len(run["attention"]["target"]) for run in runs)
    columns = len(runs) if len(source) <= 16 else 2
    lines = -(-len(runs) // columns)
    fig = new_figure(figsize=((0.22 * len(source) + 0.8) * columns + 0.6, (0.22 * rows + 1.2) * lines + 0.4),
                     layout="constrained")
    axes = fig.subplots(lines, columns, squeeze=False)
    for ax, run in zip(axes.flat, runs):
        attention = run["attention"]
        image = ax.imshow(attention["weights"], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(attention["source"])), attention["source"], fontsize=7)
        ax.set_yticks(range(len(attention["target"])), attention["target"], fontsize=7)
        verdict = "right" if attention.get("correct") else "wrong"
        ax.set_title(f"{run['model']}: {verdict}", fontsize=9)
        ax.set_xlabel("source", fontsize=8)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    for row in axes:
        row[0].set_ylabel("generated", fontsize=8)
    fig.colorbar(image, ax=list(axes.flat), fraction=0.02, pad=0.01, label="attention weight")
    fig.suptitle(f"{TASK_TITLES.get(task, task)}: {''.join(source).replace('␣', ' ')!r} -> expected "
                 f"{runs[0]['attention']['expected']!r}\n(the Transformer: its last layer, heads averaged)", fontsize=9)
    fig.savefig(path, dpi=110)


__all__ = ["Seq2SeqLabConfig", "run_seq2seq_lab", "write_report"]
