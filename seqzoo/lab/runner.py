"""`seqzoo lab`: how does each architecture remember, and at what cost? Measured on a laptop in minutes.

For every registered architecture (its ``-tiny`` preset, else its smallest) the lab

1. trains one model per memory task and distance, and scores its accuracy on held-out sequences (one model
   per distance: a model trained on a mix of distances spends its few steps on the long ones and, for the
   recurrent architectures, learns none of them in the lab's budget);
2. trains one byte-level language model on the Python documentation and scores its validation perplexity;
3. times one decode step after contexts of growing length and weighs the state a sequence carries;
4. measures how far back the gradient reaches, at initialisation and after training.

Every training run is an ordinary :func:`seqzoo.training.train` recipe, so anything the lab shows can be scaled
up with ``seqzoo train``. Runs go to a pool of single-threaded worker processes (one per core): tiny models do
not use two threads well, and one thread per run makes every figure independent of how runs were scheduled.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import shutil
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from seqzoo.training.data import TASKS, task_length

TEXT = "text"


@dataclass
class LabConfig:
    architectures: list[str] | None = None  # None: every registered architecture
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    distances: list[int] = field(default_factory=lambda: [4, 16, 64])
    symbols: int = 8  # content vocabulary of the memory tasks
    items: int = 4  # symbols to copy / key-value pairs / pattern length
    task_steps: int = 250
    text_steps: int = 250
    batch_size: int = 16
    text_seq_len: int = 64
    lr: float = 3e-3
    warmup_steps: int = 20
    eval_samples: int = 128  # per distance
    decode_contexts: list[int] = field(default_factory=lambda: [64, 256, 1024, 4096])
    gradient_length: int = 256
    workers: int = 0  # 0: one per available core, at most 8
    seed: int = 0

    @classmethod
    def smoke(cls, **overrides: Any) -> "LabConfig":
        """Every code path, seconds of work: for CI."""
        values = dict(distances=[2, 6], task_steps=6, text_steps=6, batch_size=8, text_seq_len=32, warmup_steps=2,
                      eval_samples=16, decode_contexts=[16, 64], gradient_length=32, items=2)
        values.update(overrides)
        return cls(**values)

    def validate(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r}; allowed: {', '.join(TASKS)}")
        for name in ("task_steps", "text_steps", "batch_size", "text_seq_len", "eval_samples", "gradient_length",
                     "symbols", "items"):
            if getattr(self, name) < 1:
                raise ValueError(f"lab setting {name}={getattr(self, name)} is invalid: must be >= 1")
        if not self.distances or min(self.distances) < 1:
            raise ValueError(f"lab setting distances={self.distances} is invalid: a non-empty list of integers >= 1")
        if "selective_copy" in self.tasks and min(self.distances) < self.items:
            raise ValueError(f"selective_copy scatters items={self.items} symbols among `distance` blanks: every "
                             f"distance must be >= {self.items}; got distances={self.distances}")

    def worker_count(self, jobs: int) -> int:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(self.workers or min(cores, 8), jobs))


def lab_presets(architectures: list[str] | None = None) -> dict[str, str]:
    """architecture -> the preset the lab trains: ``<arch>-tiny`` if there is one, else the smallest preset."""
    import seqzoo
    from seqzoo.cli import _count_parameters
    from seqzoo.registry import preset_values

    registered = seqzoo.list_architectures("causal-lm")  # the lab's tasks train language models
    chosen = registered if architectures is None else architectures
    for arch in chosen:
        if arch not in registered:
            raise ValueError(f"unknown architecture {arch!r}; registered: {', '.join(registered)}")
    presets = {}
    for arch in chosen:
        names = seqzoo.list_models(f"{arch}-*")
        names = [n for n in names if preset_values(n)[0].name == arch]  # "rnn-*" must not pick up "rnn2-*"
        if not names:
            continue
        if f"{arch}-tiny" in names:
            presets[arch] = f"{arch}-tiny"
        else:
            sizes = {n: _count_parameters(*_spec_and_config(n)) for n in names}
            presets[arch] = min(names, key=lambda n: (sizes[n], n))
    return presets


def _spec_and_config(name: str) -> tuple[Any, Any]:
    from seqzoo.registry import preset_values

    spec, values = preset_values(name)
    return spec, spec.config_class(**values)


# ----------------------------------------------------------------------------------------------------------------
# Jobs: one training run each, described by a plain dict so it can cross into a worker process.


def job_recipe(job: dict[str, Any]) -> Any:
    from seqzoo.training.recipe import recipe_from_dict

    cfg = LabConfig(**job["config"])
    name = f"lab-{job['arch']}-{job['task']}" + (f"-d{job['distance']}" if job["distance"] else "")
    if job["task"] == TEXT:
        data = {"source": "pydoc", "seq_len": cfg.text_seq_len, "eval_samples": cfg.eval_samples}
        steps = cfg.text_steps
    else:
        data = {"source": "task", "task": job["task"], "distances": [job["distance"]], "symbols": cfg.symbols,
                "items": cfg.items, "eval_samples": cfg.eval_samples}
        steps = cfg.task_steps
    return recipe_from_dict({
        "name": name,
        "output_dir": job["output_dir"],
        "model": {"preset": job["preset"]},
        "data": data,
        "optim": {"lr": cfg.lr, "warmup_steps": min(cfg.warmup_steps, steps), "weight_decay": 0.0},
        "train": {"max_steps": steps, "batch_size": cfg.batch_size, "eval_every": 0, "seed": cfg.seed},
    })


def _worker_setup() -> None:
    """A lab worker: CPU (the lab compares architectures on a laptop, also where a GPU exists), one thread."""
    import torch

    os.environ["ACCELERATE_USE_CPU"] = "true"
    torch.set_num_threads(1)
    _quiet_libraries()
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    # A lab killed with SIGTERM/SIGKILL cannot tell its workers; without this each would finish its current run
    # (minutes) before noticing. Ctrl-C reaches them directly (same process group).
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one lab model; never raises (a failure is a result, reported next to the others)."""
    from seqzoo.training.trainer import train

    started = time.perf_counter()
    base = {"arch": job["arch"], "preset": job["preset"], "task": job["task"], "distance": job["distance"]}
    try:
        result = train(job_recipe(job), progress=False, save_model=job["task"] == TEXT)
    except Exception as err:  # noqa: BLE001 -- one architecture's failure must not hide the others' results
        return {**base, "ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
                "seconds": time.perf_counter() - started}
    return {**base, "ok": True, "seconds": time.perf_counter() - started, "steps": result.steps,
            "tokens_per_second": result.train_tokens_per_second, "eval": result.eval,
            "grad_health": result.grad_health, "losses": [r["loss"] for r in result.history if "loss" in r]}


def _quiet_libraries() -> None:
    # A worker's log lines would interleave without saying which run they belong to; the report lists
    # flagged gradients per run instead.
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("seqzoo.training").setLevel(logging.ERROR)


def _run_jobs(jobs: list[dict[str, Any]], workers: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []

    def report(result: dict[str, Any]) -> None:
        results.append(result)
        what = result["task"] + (f" d={result['distance']}" if result["distance"] else "")
        log(f"[{len(results):>{len(str(len(jobs)))}}/{len(jobs)}] {result['arch']:<12} {what:<24} "
            f"{_job_summary(result)}")

    # spawn, not fork: a forked copy of a process that already ran torch threads can deadlock.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_setup) as pool:
        for future in as_completed([pool.submit(run_job, job) for job in jobs]):
            report(future.result())
    return results


def _job_summary(result: dict[str, Any]) -> str:
    if not result["ok"]:
        return f"FAILED: {result['error']}"
    ev = result["eval"]
    if result["task"] == TEXT:
        figures = f"validation perplexity {ev['perplexity']:.2f}"
    else:
        figures = f"accuracy {ev['accuracy']:.2f}"
    return f"{figures}  ({result['seconds']:.1f} s, {result['tokens_per_second']:,.0f} tokens/s)"


# ----------------------------------------------------------------------------------------------------------------
# Measurements that need no training run, or the trained text models.


def measure_architectures(presets: dict[str, str], cfg: LabConfig, out: Path,
                          trained: set[str]) -> dict[str, dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM

    import seqzoo
    from seqzoo.lab.gradients import gradient_profile
    from seqzoo.lab.measure import decode_profile, parameter_count

    from transformers.utils import logging as hf_logging

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same single thread the training runs had
    hf_logging.disable_progress_bar()  # "Loading weights" bars, one per text model
    measured = {}
    try:
        for arch, preset in presets.items():
            torch.manual_seed(cfg.seed)
            model = seqzoo.create_model(preset)
            row: dict[str, Any] = {"params": parameter_count(model),
                                   "decode": decode_profile(model, cfg.decode_contexts, seed=cfg.seed),
                                   "gradients_init": gradient_profile(model, cfg.gradient_length, seed=cfg.seed)}
            if arch in trained:
                text_model = AutoModelForCausalLM.from_pretrained(out / "runs" / arch / TEXT)
                row["gradients_trained"] = gradient_profile(text_model, cfg.gradient_length, seed=cfg.seed)
            measured[arch] = row
    finally:
        torch.set_num_threads(threads)
        hf_logging.enable_progress_bar()
    return measured


# ----------------------------------------------------------------------------------------------------------------
# The whole lab.


def prepare_output(out: Path) -> None:
    """Create ``out``; replace it only if it holds a previous lab report (never someone else's files)."""
    if out.exists() and any(out.iterdir()):
        if not (out / "results.json").is_file():
            raise ValueError(f"{str(out)!r} exists and is not a seqzoo lab report; choose another --out folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def run_lab(cfg: LabConfig, out: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, measure, and write ``report.md``, ``results.json`` and the plots into ``out``."""
    import torch

    from seqzoo.lab.report import write_report

    cfg.validate()
    presets = lab_presets(cfg.architectures)
    if not presets:
        raise ValueError("no architecture with a preset to train; see `seqzoo list`")
    out = Path(out)
    prepare_output(out)
    (out / "results.json").write_text(json.dumps({"status": "running"}))  # marks the folder as a lab report
    started = time.perf_counter()
    jobs = []
    for arch, preset in presets.items():
        for task, distance in [(t, d) for t in cfg.tasks for d in cfg.distances] + [(TEXT, None)]:
            folder = out / "runs" / arch / (f"{task}-d{distance}" if distance else task)
            jobs.append({"arch": arch, "preset": preset, "task": task, "distance": distance, "config": asdict(cfg),
                         "output_dir": str(folder)})
    order = {(j["arch"], j["task"], j["distance"]): i for i, j in enumerate(jobs)}
    # Longest sequences first, so the pool ends on short runs instead of waiting for one long one.
    jobs.sort(key=lambda j: -(cfg.text_seq_len if j["task"] == TEXT else task_length(j["task"], j["distance"],
                                                                                     cfg.items)))
    workers = cfg.worker_count(len(jobs))
    log(f"seqzoo lab: {len(presets)} architectures ({', '.join(presets.values())}), {len(jobs)} training runs on "
        f"{workers} worker(s) -> {out}")
    runs = _run_jobs(jobs, workers, log)
    runs.sort(key=lambda r: order[(r["arch"], r["task"], r["distance"])])
    training_seconds = time.perf_counter() - started

    log("measuring decode speed, state size and gradients ...")
    trained = {r["arch"] for r in runs if r["task"] == TEXT and r["ok"]}
    measured = measure_architectures(presets, cfg, out, trained)
    results = {
        "config": asdict(cfg),
        "presets": presets,
        "runs": runs,
        "measurements": measured,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "platform": platform.platform(), "cores": cfg.worker_count(1 << 30), "workers": workers},
        "seconds": {"training": training_seconds, "total": time.perf_counter() - started},
    }
    write_report(results, out)
    results["seconds"]["total"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1))
    failed = [r for r in runs if not r["ok"]]
    log(f"wrote {out / 'report.md'} in {results['seconds']['total']:.0f} s"
        + (f"; {len(failed)} run(s) FAILED (see the report)" if failed else ""))
    return results
