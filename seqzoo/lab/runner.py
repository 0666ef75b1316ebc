"""`seqzoo lab`: how does each architecture remember, and at what cost? Measured on a laptop in minutes.

For every registered architecture (its smallest preset) the lab

1. trains one model per memory task and seed on every distance (one distance per batch, in turn), and scores
   its accuracy at each distance on sequences drawn apart from training. The short distances are the curriculum:
   a model can learn the mechanism where it is easy and carry it to the long ones. A run stops once its training
   accuracy holds 0.99, so the budget goes to the runs that are still learning;
2. trains one byte-level language model on the Python documentation, scores its validation perplexity along the
   way, and samples a continuation from it;
3. times one decode step after contexts of growing length and weighs the state a sequence carries;
4. measures how far back the gradient reaches, at initialisation and after training.

Every training run is an ordinary :func:`seqzoo.training.train` recipe (steps and learning rates from
:mod:`seqzoo.lab.recipes`), so anything the lab shows can be scaled up with ``seqzoo train``. Runs go to a pool
of single-threaded worker processes (one per core, :mod:`seqzoo.lab.workers`): tiny models do not use two threads
well, and one thread per run makes every figure independent of how runs were scheduled.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from seqzoo.lab import recipes
from seqzoo.lab.environment import available_cores, describe_environment
from seqzoo.lab.folders import claim_output, lab_folder, prepare_output, remove_stopped_report, stopped_status
from seqzoo.lab.recipes import SOLVED_ACCURACY, SOLVED_WINDOW, TEXT
from seqzoo.lab.workers import run_in_workers
from seqzoo.outputs import write_atomically
from seqzoo.training.data import TASKS, task_length
from seqzoo.utils import strict_json


@dataclass
class LabConfig:
    """The settings of :func:`run_lab` (``seqzoo lab``'s options fill them; each field's comment says more):
    the architectures, memory tasks, distances and seeds trained, the tasks' content vocabulary (``symbols``) and
    ``items``, training steps, batch size, the text models' sequence length, learning rate and warmup, evaluation
    samples, the decoding contexts timed, the gradient probe's length and the worker processes."""

    architectures: list[str] | None = None  # None: every registered architecture
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    distances: list[int] = field(default_factory=lambda: [4, 16, 64])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # memory-task models; text trains with seeds[0]
    symbols: int = 8  # content vocabulary of the memory tasks
    items: int = 4  # symbols to copy / key-value pairs / pattern length
    task_steps: int | None = None  # None: per task, from the recipes
    text_steps: int | None = None  # None: from the recipes
    batch_size: int = 16
    text_seq_len: int = 64
    lr: float | None = None  # None: per architecture, from the recipes
    warmup_steps: int = 20
    eval_samples: int = 128  # per distance
    text_evaluations: int = 10  # validation perplexity this many times along each text run
    sample_prompt: str = "The "
    sample_tokens: int = 120
    decode_contexts: list[int] = field(default_factory=lambda: [64, 256, 1024, 4096])
    gradient_length: int = 256  # tokens (>= 2) of the sequences the gradient is measured back through
    workers: int = 0  # 0: one per available core, at most 8
    is_smoke: bool = False  # set by smoke(): the report says its figures mean nothing

    @classmethod
    def smoke(cls, **overrides: Any) -> "LabConfig":
        """Every code path, seconds of work: for CI."""
        return cls(**{**SMOKE_SETTINGS, **overrides})

    def validate(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r}; allowed: {', '.join(TASKS)}")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"lab setting tasks={self.tasks} is invalid: a non-empty list of distinct tasks")
        for name in ("batch_size", "text_seq_len", "eval_samples", "items", "text_evaluations", "sample_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"lab setting {name}={getattr(self, name)} is invalid: must be >= 1")
        if self.gradient_length < 2:  # (one token has no earlier input to reach: as `seqzoo lab gradients --length`)
            raise ValueError(f"lab setting gradient_length={self.gradient_length} is invalid: a sequence length >= 2 "
                             "tokens (the gradient is measured from the last token back to the ones before it)")
        # (what every memory-task run's data would refuse, one run at a time, in its worker)
        if self.symbols < 2:
            raise ValueError(f"lab setting symbols={self.symbols} is invalid: must be >= 2")
        if "associative_recall" in self.tasks and self.items > self.symbols // 2:
            raise ValueError(f"lab settings items={self.items}, symbols={self.symbols} are invalid for "
                             f"associative_recall: items <= symbols // 2 distinct keys ({self.symbols // 2} here)")
        for name in ("task_steps", "text_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"lab setting {name}={getattr(self, name)} is invalid: must be >= 1")
        if self.lr is not None and not 0 < self.lr < 1:
            raise ValueError(f"lab setting lr={self.lr} is invalid: must be in (0, 1)")
        if not self.distances or min(self.distances) < 1 or len(set(self.distances)) != len(self.distances):
            raise ValueError(f"lab setting distances={self.distances} is invalid: a non-empty list of distinct "
                             "integers >= 1")
        if self.workers < 0:
            raise ValueError(f"lab setting workers={self.workers} is invalid: >= 1, or 0 for one per core")
        if self.warmup_steps < 0:
            raise ValueError(f"lab setting warmup_steps={self.warmup_steps} is invalid: must be >= 0")
        # (measured after every run has trained: the report compares the first and the last, so that a state that
        # grows with the context shows it)
        contexts = self.decode_contexts
        if len(contexts) < 2 or contexts[0] < 1 or any(a >= b for a, b in zip(contexts, contexts[1:])):
            raise ValueError(f"lab setting decode_contexts={contexts} is invalid: at least two increasing context "
                             "lengths >= 1")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or not all(0 <= s < 2**32 for s in self.seeds):
            raise ValueError(f"lab setting seeds={self.seeds} is invalid: a non-empty list of distinct integers in "
                             "[0, 2**32) (what training's seeding takes)")
        if not self.sample_prompt:
            raise ValueError("lab setting sample_prompt is empty")

    def worker_count(self, jobs: int) -> int:
        return max(1, min(self.workers or min(available_cores(), 8), jobs))

    def steps_for(self, task: str) -> int:
        if task == TEXT:
            return self.text_steps or recipes.TEXT_STEPS
        return self.task_steps or recipes.task_steps(task)

    def lr_for(self, arch: str, task: str) -> float:
        return self.lr or recipes.learning_rate(arch, "text" if task == TEXT else "memory")


SMOKE_SETTINGS: dict[str, Any] = dict(
    distances=[2, 6], seeds=[0, 1], task_steps=6, text_steps=6, batch_size=8, text_seq_len=32, warmup_steps=2,
    eval_samples=16, text_evaluations=2, sample_tokens=8, decode_contexts=[16, 64], gradient_length=32, items=2,
    is_smoke=True)
# The `seqzoo lab` option that sets each setting, for the messages a user of the command reads (--resume's).
SETTING_OPTIONS = {"architectures": "--architectures", "tasks": "--tasks", "distances": "--distances",
                   "seeds": "--seeds", "task_steps": "--steps", "text_steps": "--text-steps", "lr": "--lr",
                   "workers": "--workers", "is_smoke": "--smoke"}


def lab_presets(architectures: list[str] | None = None) -> dict[str, str]:
    """architecture -> the preset the lab trains: the architecture's smallest preset."""
    import seqzoo
    from seqzoo.registry import architecture_presets, in_every_process, smallest_preset

    registered = seqzoo.list_architectures("causal-lm")  # the lab's tasks train language models
    # (by default, those the workers have: one registered in this process only would fail every run there)
    chosen = [arch for arch in registered if in_every_process(arch)] if architectures is None else architectures
    repeated = sorted({arch for arch in chosen if chosen.count(arch) > 1})
    if repeated:  # (else trained once, and the list the user gave silently shortened)
        raise ValueError(f"architecture {', '.join(map(repr, repeated))} given more than once; name each once")
    for arch in chosen:
        if arch not in registered and arch in seqzoo.list_architectures():  # (registered, but it has no LM head)
            raise ValueError(f"architecture {arch!r} has no causal-lm head, and the lab trains language models; those "
                             f"that have one: {', '.join(registered)} (encoder-decoders: `seqzoo lab seq2seq`)")
        if arch not in registered:
            import difflib

            close = difflib.get_close_matches(arch, registered, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown architecture {arch!r}.{hint} Registered: {', '.join(registered)}")
        if not in_every_process(arch):
            # (the workers import seqzoo afresh: every run failed there with "expected a model preset")
            raise ValueError(f"architecture {arch!r} was registered in this process (register_architecture), but the "
                             "lab trains in worker processes of their own, which import seqzoo afresh and do not have "
                             "it: register it through a `seqzoo.models` entry point of an installed package (a "
                             "plugin) to run the lab on it")
    # (one left out by default has no preset; one the caller named raises, with smallest_preset's reason)
    return {arch: smallest_preset(arch) for arch in chosen if architectures is not None or architecture_presets(arch)}


# ----------------------------------------------------------------------------------------------------------------
# Jobs: one training run each, described by a plain dict so it can cross into a worker process.


def make_job(cfg: LabConfig, arch: str, preset: str, task: str, seed: int, out: Path,
             distances: list[int] | None = None) -> dict[str, Any]:
    """One training run: a memory task on ``distances`` (default: the lab's), or text."""
    distances = [] if task == TEXT else sorted(distances or cfg.distances)
    folder = out / "runs" / arch / f"{task}-s{seed}"
    return {"arch": arch, "preset": preset, "task": task, "distances": distances, "seed": seed,
            "steps": cfg.steps_for(task), "lr": cfg.lr_for(arch, task), "config": asdict(cfg),
            "output_dir": str(folder)}


def job_recipe(job: dict[str, Any]) -> Any:
    from seqzoo.training.recipe import recipe_from_dict

    cfg = LabConfig(**job["config"])
    name = f"lab-{job['arch']}-{job['task']}"
    steps = job["steps"]
    if job["task"] == TEXT:
        # The stream (context running on across pydoc topics), as every lab report so far measured it: the text
        # figures stay comparable between reports. At 64-byte windows of topics ~6 kB long, few windows cross a
        # topic anyway.
        data = {"source": "pydoc", "seq_len": cfg.text_seq_len, "eval_samples": cfg.eval_samples, "packing": False}
        eval_every = max(1, steps // cfg.text_evaluations)
    else:
        data = {"source": "task", "task": job["task"], "distances": job["distances"], "distance_mix": "batch",
                "symbols": cfg.symbols,
                "items": cfg.items, "eval_samples": cfg.eval_samples}
        eval_every = job.get("eval_every", 0)
    if job.get("tuning_set"):  # (the sweep: scored on draws apart from the sets the lab reports)
        data["tuning_set"] = True
    return recipe_from_dict({
        "name": name,
        "output_dir": job["output_dir"],
        "model": {"preset": job["preset"]},
        "data": data,
        "optim": {"lr": job["lr"], "warmup_steps": min(cfg.warmup_steps, steps), "weight_decay": 0.0},
        "train": {"max_steps": steps, "batch_size": cfg.batch_size, "eval_every": eval_every, "seed": job["seed"],
                  "save_every": 0},
    })


def solved(window: int = SOLVED_WINDOW, accuracy: float = SOLVED_ACCURACY) -> Callable[[dict[str, Any]], bool]:
    """A stop rule: the mean training accuracy (answer tokens) of the last ``window`` steps is >= ``accuracy``."""
    recent: list[float] = []

    def stop(row: dict[str, Any]) -> bool:
        recent.append(row["accuracy"])
        del recent[:-window]
        return len(recent) == window and sum(recent) / window >= accuracy

    return stop


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one lab model; never raises (a failure is a result, reported next to the others).

    A memory-task run stops once solved (``job["stop_when_solved"]``); a text run keeps its model and writes a
    sample when ``job["keep_model"]``."""
    from seqzoo.training.data import build_data
    from seqzoo.training.trainer import train

    started = time.perf_counter()
    base = {k: job[k] for k in ("arch", "preset", "task", "distances", "seed", "steps", "lr")}
    keep = job.get("keep_model", job["task"] == TEXT)
    try:
        stop = solved() if job.get("stop_when_solved", job["task"] != TEXT) else None
        # (force: the job's own folder, named by the lab, may hold an earlier lab run's job)
        recipe = job_recipe(job)
        result = train(recipe, progress=False, save_model=keep, stop=stop, force=True)
        extra: dict[str, Any] = {"steps_run": result.steps}
        if job["task"] == TEXT:
            extra["validation"] = [(row["step"], row["eval"]["perplexity"]) for row in result.history
                                   if "eval" in row]
        else:
            extra["accuracy"] = {int(name.split("=")[1]): figures["accuracy"]
                                 for name, figures in result.eval["sets"].items()}
            # How much of each evaluation set the run also trained on (the steps it ran: it may stop once solved).
            data = build_data(recipe.data, seed=recipe.train.seed)
            extra["trained_share"] = {int(name.split("=")[1]): share for name, share in
                                      data.trained_share(result.steps, recipe.train.batch_size).items()}
            if job.get("eval_every"):
                extra["curve"] = [(row["step"], row["eval"]["accuracy"]) for row in result.history if "eval" in row]
        if job["task"] == TEXT and keep:
            cfg = LabConfig(**job["config"])
            extra["sample"] = sample_text(result.model, cfg.sample_prompt, cfg.sample_tokens, seed=job["seed"])
    except Exception as err:  # noqa: BLE001 -- one architecture's failure must not hide the others' results
        return {**base, "ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
                "seconds": time.perf_counter() - started}
    return {**base, "ok": True, "seconds": time.perf_counter() - started, "tokens_per_second":
            result.train_tokens_per_second, "eval": result.eval, "grad_health": result.grad_health,
            "losses": [r["loss"] for r in result.history if "loss" in r], **extra}


def sample_text(model: Any, prompt: str, tokens: int, seed: int, temperature: float = 0.7) -> str:
    """A sampled continuation of ``prompt`` (a greedy one from a tiny byte model loops on one word)."""
    import torch

    from seqzoo.tokenizer import byte_tokenizer

    tokenizer = byte_tokenizer()
    inputs = tokenizer(prompt, return_tensors="pt")
    torch.manual_seed(seed)
    model.eval()
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=tokens, do_sample=True, temperature=temperature,
                                top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def run_jobs(jobs: list[dict[str, Any]], workers: int, log: Callable[[str], None], device: str = "cpu",
             deadline: float | None = None,
             on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run ``jobs`` on ``workers`` single-threaded processes; Ctrl-C stops them all and re-raises. With a
    ``deadline`` (a perf_counter time), runs not started by then are dropped."""
    results: list[dict[str, Any]] = []
    started = time.perf_counter()

    def report(result: dict[str, Any]) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)
        what = f"{result['task']} s={result['seed']}"
        if len(jobs) > 1 and len({j["lr"] for j in jobs}) > 1:
            what += f" lr={result['lr']:g} n={result['steps']}"
        elapsed = time.perf_counter() - started
        left = elapsed / len(results) * (len(jobs) - len(results))
        log(f"[{len(results):>{len(str(len(jobs)))}}/{len(jobs)} {_clock(elapsed)}, ~{_clock(left)} left] "
            f"{result['arch']:<12} {what:<28} {_job_summary(result)}")

    run_in_workers(run_job, jobs, workers, report, device=device, deadline=deadline, log=log)
    return results


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def _job_summary(result: dict[str, Any]) -> str:
    if not result["ok"]:
        return f"FAILED: {result['error']}"
    if result["task"] == TEXT:
        figures = f"validation perplexity {result['eval']['perplexity']:.2f}"
    else:
        figures = "accuracy " + " ".join(f"{a:.2f}@{d}" for d, a in result["accuracy"].items())
        figures += f" in {result['steps_run']} steps" + (" (solved)" if result["steps_run"] < result["steps"] else "")
    return f"{figures}  ({result['seconds']:.1f} s, {result['tokens_per_second']:,.0f} tokens/s)"


# ----------------------------------------------------------------------------------------------------------------
# Measurements that need no training run, or the trained text models.


def measure_architectures(presets: dict[str, str], cfg: LabConfig, out: Path,
                          trained: dict[str, int]) -> dict[str, dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM

    import seqzoo
    from seqzoo.lab.gradients import gradient_profile
    from seqzoo.lab.measure import decode_profile, describe_state
    from seqzoo.utils import count_parameters, quiet_transformers

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same single thread the training runs had
    seed = cfg.seeds[0]
    measured = {}
    # No "Loading weights" bar per text model; the caller's progress-bar setting and torch random stream come back
    # after (run_lab turned transformers' bars on for good where its caller had them off, and left torch seeded).
    try:
        with quiet_transformers(bars_only=True), torch.random.fork_rng(devices=[]):
            for arch, preset in presets.items():
                torch.manual_seed(seed)
                model = seqzoo.create_model(preset)
                decode = decode_profile(model, cfg.decode_contexts, seed=seed)
                row: dict[str, Any] = {"params": count_parameters(model), "decode": decode,
                                       "state": describe_state(model, cfg.decode_contexts[0],
                                                               cfg.decode_contexts[-1]),
                                       "gradients_init": gradient_profile(model, cfg.gradient_length, seed=seed)}
                if arch in trained:
                    folder = out / "runs" / arch / f"{TEXT}-s{trained[arch]}"
                    text_model = AutoModelForCausalLM.from_pretrained(folder)
                    row["gradients_trained"] = gradient_profile(text_model, cfg.gradient_length, seed=seed)
                measured[arch] = row
    finally:
        torch.set_num_threads(threads)
    return measured


# ----------------------------------------------------------------------------------------------------------------
# The whole lab.


def build_jobs(cfg: LabConfig, presets: dict[str, str], out: Path) -> list[dict[str, Any]]:
    """Every training run, in report order: architectures, then tasks and seeds, then text."""
    jobs = []
    for arch, preset in presets.items():
        jobs += [make_job(cfg, arch, preset, task, seed, out) for task in cfg.tasks for seed in cfg.seeds]
        jobs.append(make_job(cfg, arch, preset, TEXT, cfg.seeds[0], out))
    return jobs


def longest_first(jobs: list[dict[str, Any]], cfg: LabConfig) -> list[dict[str, Any]]:
    """So that the pool ends on short runs instead of waiting for one long one."""
    def cost(job: dict[str, Any]) -> int:
        length = (cfg.text_seq_len if job["task"] == TEXT
                  else task_length(job["task"], max(job["distances"]), cfg.items))
        return length * job["steps"]

    return sorted(jobs, key=lambda j: -cost(j))


def _key(job: dict[str, Any]) -> tuple[Any, ...]:
    return job["arch"], job["task"], job["seed"]


def run_lab(cfg: LabConfig, out: str | Path, log: Callable[[str], None] = print, command: str = "seqzoo lab",
            force: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train, measure, and write ``report.md``, ``results.json`` and the plots into ``out``.

    ``results.json`` records every training run as it ends, so that a lab interrupted or failed later (in training,
    measuring or the report) loses no finished training; ``resume`` keeps those runs (:func:`resumable_runs`) and
    trains only the rest."""
    cfg.validate()
    presets = lab_presets(cfg.architectures)
    if not presets:
        raise ValueError("no architecture with a preset to train; see `seqzoo list`")
    if resume and force:
        raise ValueError("--resume keeps the runs an unfinished lab in --out recorded and --force replaces them; "
                         "pass one")
    out = lab_folder(out)
    with claim_output(out):  # (two labs started into one folder: the second is refused, before it looks at it)
        return _run_claimed_lab(cfg, presets, out, log, command, force, resume)


def _run_claimed_lab(cfg: LabConfig, presets: dict[str, str], out: Path, log: Callable[[str], None], command: str,
                     force: bool, resume: bool) -> dict[str, Any]:
    from seqzoo.lab.report import draw_plots, write_report

    previous = prepare_output(out, force, log, resume=resume)
    started = time.perf_counter()
    jobs = build_jobs(cfg, presets, out)
    order = {_key(job): i for i, job in enumerate(jobs)}
    runs = resumable_runs(previous, cfg, jobs, out) if previous is not None else []  # (raises touching nothing)
    if previous is not None:
        log(f"resuming the unfinished lab in {out} (status: {previous.get('status')})")
        remove_stopped_report(out)
    # (the report's wall time counts the training of the runs kept: "training" of the stopped lab is its training
    # alone, not the measuring or plots it stopped in, which this lab does again)
    earlier = previous.get("seconds") if runs and previous is not None else None
    earlier_training = earlier.get("training", 0.0) if isinstance(earlier, dict) else 0.0
    earlier_training = earlier_training if isinstance(earlier_training, (int, float)) else 0.0
    kept = {_key(run) for run in runs}
    to_train = [job for job in jobs if _key(job) not in kept]
    workers = cfg.worker_count(len(to_train))
    environment = describe_environment(command, workers)
    if runs:
        # The workers the kept runs trained on (the stopped lab's): with nothing left to train, the report's figures
        # come from them alone, not from the one process this lab would have started.
        before = previous.get("environment", {}).get("workers") if previous is not None else None
        if isinstance(before, int) and not isinstance(before, bool) and before >= 1:
            environment["kept_runs_workers"] = before
            if not to_train:
                environment["workers"] = before
    marker = out / "results.json"
    extra: dict[str, Any] = {"resumed_runs": len(runs)} if runs else {}
    trained_for: list[float] = []  # (this lab's training time, once its training has ended)

    def record(status: str, **more: Any) -> None:
        # (what marks a lab folder, and every finished run: "running" until the report is written, so that the
        # folder is not taken for a finished report)
        seconds = {"training": earlier_training + (trained_for[0] if trained_for else time.perf_counter() - started)}
        write_atomically(marker, strict_json({"status": status, "config": asdict(cfg), "presets": presets,
                                              "runs": runs, "environment": environment, "seconds": seconds,
                                              **extra, **more}, indent=1))

    def keep(run: dict[str, Any]) -> None:
        runs.append(run)
        record("running")

    record("running")
    log(f"seqzoo lab: {len(presets)} architectures ({', '.join(presets.values())}), {len(jobs)} training runs on "
        f"{workers} worker(s) -> {out}" + (f" ({len(runs)} kept from the lab resumed, {len(to_train)} to train)"
                                            if runs else ""))
    try:
        if to_train:
            run_jobs(longest_first(to_train, cfg), workers, log, on_result=keep)
        runs.sort(key=lambda r: order[_key(r)])
        trained_for.append(time.perf_counter() - started)
        training_seconds = earlier_training + trained_for[0]
        record("running")  # (in report order)

        log("measuring decode speed, state size and gradients ...")
        trained = {r["arch"]: r["seed"] for r in runs if r["task"] == TEXT and r["ok"]}
        extra["measurements"] = measure_architectures(presets, cfg, out, trained)
        results = {"status": "finished", "config": asdict(cfg), "presets": presets, "runs": runs,
                   "measurements": extra["measurements"], "environment": environment,
                   "seconds": {"training": training_seconds,
                               "total": earlier_training + time.perf_counter() - started}, **extra}
        results["environment"]["finished"] = time.strftime("%Y-%m-%d %H:%M %Z")
        write_atomically(marker, strict_json({**results, "status": "running"}, indent=1))
        # The wall time the report gives (and results.json keeps) counts the plots: all the work but writing the text.
        draw_plots(results, out)
        results["seconds"]["total"] = earlier_training + time.perf_counter() - started
        results["environment"]["finished"] = time.strftime("%Y-%m-%d %H:%M %Z")
        write_report(results, out, draw=False)
        write_atomically(marker, strict_json(results, indent=1))
    except BaseException as err:
        # Not "running" any more (with this process's pid, a notebook's, that refused the folder for as long as the
        # process lived), and every run that finished is kept.
        interrupted = isinstance(err, KeyboardInterrupt)
        record(**stopped_status(err))
        finished = sum(1 for run in runs if run["ok"])
        if finished:
            log(f"the lab stopped ({'interrupted' if interrupted else f'{type(err).__name__}: {err}'}) before its "
                f"report; its {finished} finished training run(s) are kept in {marker}: run the same command with "
                "--resume to keep them and train only the rest")
        raise
    failed = [r for r in runs if not r["ok"]]
    log(f"wrote {out / 'report.md'} in {_clock(results['seconds']['total'])} (min:s)"
        + (f"; {len(failed)} run(s) FAILED (see the report)" if failed else ""))
    return results


def resumable_runs(previous: dict[str, Any], cfg: LabConfig, jobs: list[dict[str, Any]],
                   out: Path) -> list[dict[str, Any]]:
    """The runs an unfinished lab recorded (``previous``, its results.json) that a resumed one keeps instead of
    training again: those that finished, of a job it has (same architecture, preset, task, distances, seed, steps and
    learning rate), a text run only with its saved model whole (which the measurements load). The settings must be the
    lab's own, but for ``workers``, which changes no figure.

    A run whose figures hold a null (results.json writes a diverged run's NaN as null) is trained again: the report
    needs its figures as they were."""
    earlier = previous.get("config") if isinstance(previous.get("config"), dict) else {}
    mine = asdict(cfg)
    differ = [name for name in mine if name != "workers" and earlier.get(name) != mine[name]]
    if "is_smoke" in differ:  # (the settings only --smoke sets change with it: it names them all)
        differ = [name for name in differ if name in SETTING_OPTIONS or name not in SMOKE_SETTINGS]
    if differ:
        changes = "; ".join(f"{_setting_name(name)} {_setting_value(name, earlier.get(name))} there, "
                            f"{_setting_value(name, mine[name])} here" for name in differ)
        raise ValueError(f"--resume: the unfinished lab in {str(out)!r} ran with other settings ({changes}); resume "
                         "it with its own options, or pass --force (without --resume) to replace it")
    def identity(run: dict[str, Any]) -> str:
        return json.dumps([run.get(k) for k in ("arch", "preset", "task", "distances", "seed", "steps", "lr")])

    wanted = {identity(job): job for job in jobs}
    kept = []
    for run in previous.get("runs", []):
        job = wanted.pop(identity(run), None) if isinstance(run, dict) else None
        if job is None or run.get("ok") is not True or _holds_null(run):
            continue
        if run["task"] == TEXT and not _weights_read(Path(job["output_dir"]) / "model.safetensors"):
            continue
        for figures in ("accuracy", "trained_share"):  # (JSON's keys are strings; the lab's are distances)
            if figures in run:
                run[figures] = {int(distance): value for distance, value in run[figures].items()}
        kept.append(run)
    return kept


def _setting_name(name: str) -> str:
    """A setting as the command line sets it, and as LabConfig names it where that differs: ``--steps
    (task_steps)``, ``--distances``, ``batch_size`` (no option)."""
    option = SETTING_OPTIONS.get(name)
    if option is None:
        return name
    return option if option[2:].replace("-", "_") == name else f"{option} ({name})"


def _setting_value(name: str, value: Any) -> str:
    if name == "is_smoke":  # (a flag)
        return "given" if value else "not given"
    return "not given" if value is None else repr(value)


def _weights_read(path: Path) -> bool:
    """Whether the weights file ``path`` is there and whole: its header parses and its tensors cover the file (one
    cut short by a kill, or a full disk, is trained again rather than failing the measurements on every resume)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            return True
    except (OSError, SafetensorError):
        return False


def _holds_null(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_null(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_null(item) for item in value)
    return value is None
