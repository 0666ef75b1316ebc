"""``seqzoo lab sweep``: the learning-rate and step-count sweep behind the lab's recipes (:mod:`seqzoo.lab.recipes`).

Every architecture trains every memory task at each rate and each step count (one seed, no early stop), and text
at each rate. The sweep then proposes, by rules written down here rather than by taste:

- per task, the fewest steps after which more steps no longer help any architecture (at its best rate) by more
  than ``ENOUGH`` accuracy;
- per architecture, the memory-task rate with the best mean accuracy over tasks and distances at those steps, and
  the text rate with the lowest validation perplexity (a tie within ``TIE`` goes to the lower rate).

It is a few hundred short runs: about an hour on 2 CPU cores, minutes on a machine with many cores or a GPU
(``--device cuda``). The lab's recipes record the command and machine that produced the rates they hold.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from seqzoo.lab.runner import TEXT, LabConfig, lab_presets, make_job, prepare_output, run_jobs
from seqzoo.training.data import TASKS

ENOUGH = 0.05  # accuracy that more steps must add, for some architecture, to be worth them
TIE = 0.01  # accuracy (or relative perplexity) within which two rates count as equal


@dataclass
class SweepConfig:
    architectures: list[str] | None = None
    rates: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2])
    steps: list[int] = field(default_factory=lambda: [250, 600])
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    distances: list[int] = field(default_factory=lambda: [16, 64])
    mixed_distances: list[int] = field(default_factory=lambda: [4, 16, 64])  # one run per rate on all at once
    long_steps: int = 1500  # the tasks that need the most steps also run this long (queued last)
    long_tasks: list[str] = field(default_factory=lambda: ["selective_copy", "associative_recall"])
    seed: int = 0
    workers: int = 0
    device: str = "cpu"
    deadline_seconds: float = 0.0  # > 0: stop queueing runs after this long (what ran is still reported)

    def validate(self) -> None:
        if not self.rates or min(self.rates) <= 0 or max(self.rates) >= 1:
            raise ValueError(f"--rates {self.rates} is invalid: learning rates in (0, 1)")
        if not self.steps or min(self.steps) < 1:
            raise ValueError(f"sweep steps {self.steps} is invalid: step counts >= 1")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device {self.device!r} is invalid: cpu or cuda")


def sweep_jobs(cfg: SweepConfig, presets: dict[str, str], out: Path) -> list[dict[str, Any]]:
    """The runs, shortest step count first for every architecture, so a deadline cuts the least informative."""
    lab = LabConfig(tasks=cfg.tasks, distances=sorted(set(cfg.distances + cfg.mixed_distances)), seeds=[cfg.seed])
    jobs = []
    for steps in sorted(cfg.steps):
        for arch, preset in presets.items():
            for rate in cfg.rates:
                jobs += [_job(lab, arch, preset, task, distance, rate, steps, cfg, out)
                         for task in cfg.tasks for distance in cfg.distances]
                if steps == min(cfg.steps):
                    jobs.append(_job(lab, arch, preset, TEXT, None, rate, max(steps, 250), cfg, out))
    for arch, preset in presets.items():
        for rate in cfg.rates:
            if cfg.mixed_distances:
                job = _job(lab, arch, preset, "selective_copy", max(cfg.mixed_distances), rate, max(cfg.steps), cfg,
                           out)
                job["train_distances"] = list(cfg.mixed_distances)
                job["output_dir"] += "-mixed"
                jobs.append(job)
    if cfg.long_steps > max(cfg.steps):
        for arch, preset in presets.items():
            for rate in cfg.rates:
                jobs += [_job(lab, arch, preset, task, distance, rate, cfg.long_steps, cfg, out)
                         for task in cfg.long_tasks if task in cfg.tasks for distance in cfg.distances]
    return jobs


def _job(lab: LabConfig, arch: str, preset: str, task: str, distance: int | None, rate: float, steps: int,
         cfg: SweepConfig, out: Path) -> dict[str, Any]:
    job = make_job(lab, arch, preset, task, distance, cfg.seed, out)
    job.update(lr=rate, steps=steps, stop_when_solved=False, keep_model=False)
    job["output_dir"] += f"-lr{rate:g}-n{steps}"
    return job


def run_sweep(cfg: SweepConfig, out: str | Path, log: Callable[[str], None] = print, command: str = "",
              force: bool = False) -> dict[str, Any]:
    from seqzoo.lab.environment import describe_environment

    cfg.validate()
    presets = lab_presets(cfg.architectures)
    out = Path(out)
    prepare_output(out, force, log)
    jobs = sweep_jobs(cfg, presets, out)
    workers = max(1, cfg.workers or LabConfig().worker_count(len(jobs)))
    environment = describe_environment(command or "seqzoo lab sweep", workers)
    (out / "results.json").write_text(json.dumps({"status": "running", "environment": environment}))
    started = time.perf_counter()
    log(f"seqzoo lab sweep: {len(presets)} architectures, {len(jobs)} runs on {workers} worker(s) ({cfg.device})")
    partial = out / "runs.jsonl"  # one line per finished run: what survives if the sweep is killed

    def keep(result: dict[str, Any]) -> None:
        result.pop("losses", None)  # hundreds of runs x every step: too much to keep
        with partial.open("a") as f:
            f.write(json.dumps(result) + "\n")

    runs = run_jobs(jobs, workers, log, device=cfg.device, on_result=keep,
                    deadline=started + cfg.deadline_seconds if cfg.deadline_seconds else None)
    results = {"status": "finished", "config": asdict(cfg), "presets": presets, "runs": runs,
               "environment": environment, "seconds": time.perf_counter() - started}
    results["proposal"] = propose(results)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "sweep.md").write_text(sweep_report(results))
    log(f"wrote {out / 'sweep.md'}; proposed recipes:\n{json.dumps(results['proposal'], indent=1)}")
    return results


def _accuracy(runs: list[dict[str, Any]], arch: str, task: str, rate: float, steps: int) -> float | None:
    values = [r["eval"]["accuracy"] for r in runs if r["ok"] and r["arch"] == arch and r["task"] == task
              and r["lr"] == rate and r["steps"] == steps and not r.get("train_distances")]
    return statistics.mean(values) if values else None


def propose(results: dict[str, Any]) -> dict[str, Any]:
    """Steps per task and rates per architecture, by the rules in the module docstring."""
    cfg, runs = results["config"], results["runs"]
    archs = list(results["presets"])
    task_steps = {}
    for task in cfg["tasks"]:
        def best(arch: str, steps: int) -> float:
            return max((a for rate in cfg["rates"] if (a := _accuracy(runs, arch, task, rate, steps)) is not None),
                       default=0.0)

        candidates = sorted({r["steps"] for r in runs if r["task"] == task and r["ok"]})
        longest = max(candidates, default=max(cfg["steps"]))
        task_steps[task] = next((s for s in candidates
                                 if all(best(a, longest) - best(a, s) <= ENOUGH for a in archs)), longest)
    rates: dict[str, dict[str, float]] = {}
    for arch in archs:
        def memory_score(rate: float) -> float:
            scores = [_accuracy(runs, arch, task, rate, task_steps[task]) for task in cfg["tasks"]]
            scores = [s for s in scores if s is not None]
            return statistics.mean(scores) if scores else -1.0

        text = {r["lr"]: r["eval"]["perplexity"] for r in runs
                if r["ok"] and r["arch"] == arch and r["task"] == TEXT}
        best_memory = max(memory_score(rate) for rate in cfg["rates"])
        memory = min(rate for rate in cfg["rates"] if memory_score(rate) >= best_memory - TIE)
        entry = {"memory": memory}
        if text:
            best_text = min(text.values())
            entry["text"] = min(rate for rate, p in text.items() if p <= best_text * (1 + TIE))
        rates[arch] = entry
    return {"task_steps": task_steps, "learning_rates": rates}


def sweep_report(results: dict[str, Any]) -> str:
    from seqzoo.lab.report import markdown_table

    cfg, runs = results["config"], results["runs"]
    env = results["environment"]
    parts = [f"# seqzoo lab sweep\n\nCommand: `{env['command']}` · seqzoo {env['seqzoo']}"
             + (f" (git {env['git']})" if env.get("git") else "") + f" · {env['cpu']}, {env['workers']} workers on "
             f"{cfg['device']} · seed {cfg['seed']} · {len(runs)} runs in {results['seconds'] / 60:.1f} min\n"]
    for arch in results["presets"]:
        counts = sorted({r["steps"] for r in runs if r["task"] != TEXT})
        header = ["rate"] + [f"{t} @{s}" for s in counts for t in cfg["tasks"]] + ["text ppl"]
        rows = []
        for rate in cfg["rates"]:
            row = [f"{rate:g}"]
            for steps in counts:
                for task in cfg["tasks"]:
                    a = _accuracy(runs, arch, task, rate, steps)
                    row.append("–" if a is None else f"{a:.2f}")
            text = [r["eval"]["perplexity"] for r in runs if r["ok"] and r["arch"] == arch and r["task"] == TEXT
                    and r["lr"] == rate]
            row.append(f"{text[0]:.2f}" if text else "–")
            rows.append(row)
        parts.append(f"## {arch}\n\nAccuracy (mean over distances {', '.join(map(str, cfg['distances']))}) by task "
                     f"and steps; text: validation perplexity.\n\n" + markdown_table(header, rows))
        mixed = [r for r in runs if r["ok"] and r["arch"] == arch and r.get("train_distances")]
        if mixed:
            parts.append("Selective copy trained on distances " + ", ".join(map(str, cfg["mixed_distances"]))
                         + " at once: " + "; ".join(
                             f"rate {r['lr']:g}: " + ", ".join(f"{k} {v['accuracy']:.2f}"
                                                               for k, v in r["eval"]["sets"].items())
                             for r in mixed))
    parts.append("## Proposed recipes\n\n```json\n" + json.dumps(results["proposal"], indent=1) + "\n```")
    failed = [f"- {r['arch']} {r['task']} lr {r['lr']:g}: {r['error']}" for r in runs if not r["ok"]]
    if failed:
        parts.append("## Failed runs\n\n" + "\n".join(failed))
    return "\n\n".join(parts) + "\n"
