"""``seqzoo lab sweep``: the learning-rate sweep behind the lab's recipes (:mod:`seqzoo.lab.recipes`).

Every architecture trains every memory task (all distances at once, as in the lab; one seed) at each rate, for at
most ``steps`` steps with the lab's stop-when-solved rule, and text at each rate. The sweep then proposes, by
rules written down here rather than by taste:

- per architecture, the memory-task rate with the best mean accuracy over tasks and distances (among rates within
  ``TIE`` of the best, the one that needed the fewest steps in all), and the text rate with the lowest perplexity
  (a tie within ``TIE`` goes to the lower rate), both measured on tuning sets (``data.tuning_set``), not on the
  sets the lab reports;
- per task, a step budget: 1.25 times the most steps any architecture needed to solve it (at its chosen rate),
  rounded up to 50, between ``MIN_STEPS`` and the sweep's ``steps``. A run that has not solved its task by then
  would not solve it in the lab's budget anyway; the report shows how far it got.

It is about a hundred short runs: about an hour on 2 idle CPU cores, less with more cores (``--workers``) or on
a GPU (``--device cuda``). The lab's recipes record the command and machine that produced the rates they hold.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from seqzoo.lab.folders import claim_output, lab_folder, prepare_output, stopped_status, write_results
from seqzoo.lab.recipes import TEXT
from seqzoo.lab.runner import LabConfig, lab_presets, longest_first, make_job, run_jobs
from seqzoo.training.data import TASKS
from seqzoo.utils import strict_json

TIE = 0.01  # accuracy (or relative perplexity) within which two rates count as equal
MIN_STEPS = 150
GROWTH = 1.25

@dataclass
class SweepConfig:
    architectures: list[str] | None = None
    rates: list[float] = field(default_factory=lambda: [3e-3, 1e-2, 3e-2])
    steps: int = 600  # most steps of a memory-task run (it stops earlier once solved)
    text_steps: int = 250
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    distances: list[int] = field(default_factory=lambda: [4, 16, 64])
    seed: int = 0
    workers: int = 0
    device: str = "cpu"
    deadline_seconds: float = 0.0  # > 0: stop queueing runs after this long (what ran is still reported)

    def validate(self) -> None:
        if not self.rates or not all(math.isfinite(rate) and 0 < rate < 1 for rate in self.rates):
            raise ValueError(f"--rates {self.rates} is invalid: learning rates in (0, 1)")
        if len({f"{rate:g}" for rate in self.rates}) != len(self.rates):  # (runs are named by f"{rate:g}")
            raise ValueError(f"--rates {self.rates} is invalid: distinct learning rates")
        if not math.isfinite(self.deadline_seconds) or self.deadline_seconds < 0:
            raise ValueError(f"--deadline-minutes {self.deadline_seconds / 60:g} is invalid: minutes >= 0 "
                             "(0: no deadline)")
        if self.steps < MIN_STEPS:
            raise ValueError(f"sweep steps={self.steps} is invalid: at least {MIN_STEPS}")
        # (what the sweep's runs share with the lab's, checked as the lab checks it: an unknown task failed every run
        # one by one, and distances=[] failed on max([]) after the folder had been prepared)
        LabConfig(tasks=self.tasks, distances=self.distances, seeds=[self.seed], task_steps=self.steps,
                  text_steps=self.text_steps, workers=self.workers).validate()
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device {self.device!r} is invalid: cpu or cuda")
        if self.device == "cuda":
            import torch

            # (else every run would train on the CPU, and the report would still say cuda)
            if not torch.cuda.is_available():
                raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")


def sweep_jobs(cfg: SweepConfig, presets: dict[str, str], out: Path) -> list[dict[str, Any]]:
    lab = LabConfig(tasks=cfg.tasks, distances=cfg.distances, seeds=[cfg.seed], task_steps=cfg.steps,
                    text_steps=cfg.text_steps)
    jobs = []
    for arch, preset in presets.items():
        for rate in cfg.rates:
            for task in [*cfg.tasks, TEXT]:
                job = make_job(lab, arch, preset, task, cfg.seed, out)
                # Scored on a tuning set (data.tuning_set): a task's own draws, the text's block before its held-out
                # tail (left out of training too), so the lab's reported sets play no part in choosing its rates.
                job.update(lr=rate, keep_model=False, tuning_set=True)
                job["output_dir"] += f"-lr{rate:g}"
                jobs.append(job)
    return longest_first(jobs, lab)


def run_sweep(cfg: SweepConfig, out: str | Path, log: Callable[[str], None] = print, command: str = "",
              force: bool = False) -> dict[str, Any]:
    cfg.validate()
    presets = lab_presets(cfg.architectures)
    out = lab_folder(out)
    with claim_output(out):  # (two sweeps, or a sweep and a lab, started into one folder: the second is refused)
        return _run_claimed_sweep(cfg, presets, out, log, command, force)


def _run_claimed_sweep(cfg: SweepConfig, presets: dict[str, str], out: Path, log: Callable[[str], None],
                       command: str, force: bool) -> dict[str, Any]:
    from seqzoo.lab.environment import describe_environment

    partial = out / "runs.jsonl"  # one line per finished run: what survives if the sweep is killed
    prepare_output(out, force, log)  # (which keeps an unfinished sweep's runs.jsonl without --force)
    jobs = sweep_jobs(cfg, presets, out)
    workers = LabConfig(workers=cfg.workers).worker_count(len(jobs))  # (never more processes than runs)
    environment = describe_environment(command or "seqzoo lab sweep", workers)
    marker = out / "results.json"
    write_results(marker, {"status": "running", "environment": environment})
    started = time.perf_counter()
    log(f"seqzoo lab sweep: {len(presets)} architectures, {len(jobs)} runs on {workers} worker(s) ({cfg.device})")
    kept: list[bool] = []  # (one per finished run)

    def keep(result: dict[str, Any]) -> None:
        result.pop("losses", None)  # hundreds of runs x every step: too much to keep
        with partial.open("a", encoding="utf-8") as f:
            f.write(strict_json(result) + "\n")
        kept.append(result["ok"])

    try:
        runs = run_jobs(jobs, workers, log, device=cfg.device, on_result=keep,
                        deadline=started + cfg.deadline_seconds if cfg.deadline_seconds else None)
        results = {"status": "finished", "config": asdict(cfg), "presets": presets, "runs": runs,
                   "planned_runs": len(jobs), "environment": environment, "seconds": time.perf_counter() - started}
        results["proposal"] = propose(results)
        (out / "sweep.md").write_text(sweep_report(results), encoding="utf-8")
        write_results(marker, results)  # (last: "finished" only once the report is there)
    except BaseException as err:
        # As the lab: not "running" any more (with this process's pid, a notebook's, that refused the folder for as
        # long as the process lived), and the finished runs stay in runs.jsonl.
        write_results(marker, {**stopped_status(err), "environment": environment})
        if kept:
            log(f"the sweep stopped ({stopped_status(err).get('error', 'interrupted')}) before its report; its "
                f"{len(kept)} finished run(s) are kept in {partial} (a rerun keeps them unless given --force)")
        raise
    log(f"wrote {out / 'sweep.md'}; proposed recipes:\n{json.dumps(results['proposal'], indent=1)}")
    return results


def _memory_runs(runs: list[dict[str, Any]], arch: str, rate: float) -> list[dict[str, Any]]:
    return [r for r in runs if r["ok"] and r["arch"] == arch and r["lr"] == rate and r["task"] != TEXT]


def _mean_accuracy(run: dict[str, Any]) -> float:
    return statistics.mean(run["accuracy"].values())


def _rate_scores(runs: list[dict[str, Any]], arch: str, rates: list[float]
                 ) -> tuple[dict[float, dict[str, dict[str, Any]]], list[str], dict[float, float]]:
    """``arch``'s memory runs by rate and task, the tasks every rate finished, and each rate's mean accuracy over
    those tasks and their distances (what the proposal compares, and the sweep report shows).

    Rates are compared on the tasks that every one of them finished (a deadline, or a failed run, can leave a rate
    without its hardest task, which would flatter its mean)."""
    done = {rate: {r["task"]: r for r in runs_at} for rate in rates if (runs_at := _memory_runs(runs, arch, rate))}
    common = sorted(set.intersection(*(set(tasks) for tasks in done.values()))) if done else []
    scores = {rate: statistics.mean(_mean_accuracy(tasks[task]) for task in common) for rate, tasks in done.items()
              } if common else {}
    return done, common, scores


def propose(results: dict[str, Any]) -> dict[str, Any]:
    """Rates per architecture and steps per task, by the rules in the module docstring."""
    cfg, runs = results["config"], results["runs"]
    rates: dict[str, dict[str, float]] = {}
    needed: dict[str, list[int]] = {task: [] for task in cfg["tasks"]}
    for arch in results["presets"]:
        done, common, scores = _rate_scores(runs, arch, cfg["rates"])
        scores = {rate: score for rate, score in scores.items() if math.isfinite(score)}  # (a diverged rate: none)
        entry: dict[str, float] = {}
        if scores:
            best = max(scores.values())
            near = [rate for rate, score in scores.items() if score >= best - TIE]
            entry["memory"] = min(near, key=lambda rate: (sum(done[rate][task]["steps_run"] for task in common), rate))
            for run in _memory_runs(runs, arch, entry["memory"]):
                if run["steps_run"] < run["steps"]:
                    needed[run["task"]].append(run["steps_run"])
        text = {r["lr"]: r["eval"]["perplexity"] for r in runs
                if r["ok"] and r["arch"] == arch and r["task"] == TEXT and math.isfinite(r["eval"]["perplexity"])}
        if text:
            best_text = min(text.values())
            entry["text"] = min(rate for rate, p in text.items() if p <= best_text * (1 + TIE))
        rates[arch] = entry
    steps = {}
    for task, solved_at in needed.items():
        want = math.ceil(GROWTH * max(solved_at) / 50) * 50 if solved_at else cfg["steps"]
        steps[task] = int(min(cfg["steps"], max(MIN_STEPS, want)))
    return {"task_steps": steps, "learning_rates": rates}


def sweep_report(results: dict[str, Any]) -> str:
    from seqzoo.lab.report import markdown_table

    cfg, runs, env = results["config"], results["runs"], results["environment"]
    parts = [f"# seqzoo lab sweep\n\nCommand: `{env['command']}` · seqzoo {env['seqzoo']}"
             + (f" (git {env['git']})" if env.get("git") else "") + f" · {env['cpu']}, {env['workers']} workers on "
             f"{cfg['device']} · seed {cfg['seed']} · {len(runs)} runs in {results['seconds'] / 60:.1f} min"
             + (f" ({results['planned_runs'] - len(runs)} of {results['planned_runs']} dropped at the deadline: "
                "rates are compared on the tasks every rate finished)"
                if results.get("planned_runs", len(runs)) > len(runs) else "") + "\n\n"
             f"Memory tasks: accuracy at distances {', '.join(map(str, cfg['distances']))} and the steps run (at most "
             f"{cfg['steps']}; fewer: solved). Text: perplexity after {cfg['text_steps']} steps. Both on tuning sets "
             "(`data.tuning_set`), apart from the sets the lab reports: each task's own draws, and the 5% of the text "
             "before its held-out tail, which these runs do not train on."]
    for arch in results["presets"]:
        by_rate, common, scores = _rate_scores(runs, arch, cfg["rates"])
        # (the proposal's score: over the tasks every rate finished, named when some rate lacks one)
        partial = any(set(tasks) != set(common) for tasks in by_rate.values())
        mean_header = "mean accuracy" + ("" if not partial else f" ({', '.join(t.replace('_', ' ') for t in common)} "
                                         "only: what every rate finished)" if common else " (no task every rate "
                                         "finished)")
        header = ["rate"] + [t.replace("_", " ") for t in cfg["tasks"]] + [mean_header, "text perplexity"]
        rows = []
        for rate in cfg["rates"]:
            done = by_rate.get(rate, {})
            row = [f"{rate:g}"]
            for task in cfg["tasks"]:
                run = done.get(task)
                row.append("–" if run is None else
                           " / ".join(f"{a:.2f}" for a in run["accuracy"].values()) + f" ({run['steps_run']})")
            row.append(f"{scores[rate]:.3f}" if rate in scores else "–")
            text = [r["eval"]["perplexity"] for r in runs if r["ok"] and r["arch"] == arch and r["task"] == TEXT
                    and r["lr"] == rate]
            row.append(f"{text[0]:.2f}" if text else "–")
            rows.append(row)
        parts.append(f"## {arch}\n\n" + markdown_table(header, rows))
    parts.append("## Proposed recipes\n\n```json\n" + json.dumps(results["proposal"], indent=1) + "\n```")
    failed = [f"- {r['arch']} {r['task']} lr {r['lr']:g}: {r['error']}" for r in runs if not r["ok"]]
    if failed:
        parts.append("## Failed runs\n\n" + "\n".join(failed))
    return "\n\n".join(parts) + "\n"
