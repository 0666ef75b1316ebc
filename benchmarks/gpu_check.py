"""The one prepared GPU check: installs the carried wheels, then runs the Triton benchmark, the gpu-marked tests and a
greedy-decode check of a tiny model of every family, each step in its own process with its own time limit, and
writes what it found to a few files. Built for one H200 with Python 3.12, torch 2.11, Triton 3.6 and no package
registry; never more than --budget (465 s) plus a few seconds.

On the GPU machine, from the repository root, with the wheel folder .whl carried (see benchmarks/gpu_wheels.txt):

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out "$OUT" --wheels .whl 2>&1 | tee "$OUT/console.log"
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out "$OUT" --wheels .whl --only bench --budget 450 \
        2>&1 | tee "$OUT/console.log"                     # the benchmark alone: about 7 minutes

On a machine without a GPU (CI runs this in tests/kernels_triton/test_gpu_check.py):

    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-check

Steps, in order (a step that fails or times out is recorded and the next one runs; --only picks among bench,
gpu_tests and decode, install and env always run):
  install        pip install --no-index --no-deps --target SITE of every wheel in --wheels, after checking that none
                 would replace torch, triton or a CUDA library; later steps run with PYTHONPATH=SITE:repo.
  env            versions and origins of python, torch, triton, transformers, huggingface_hub, tokenizers, fla; GPU.
  bench_kernels  benchmarks/bench_triton.py --skip-models: wkv7 (with flash-linear-attention's kernels),
                 selective_scan, ssd, causal_conv1d at T = 2048 and 8192, bf16; 150 s per row, up to 250 s.
  bench_models   benchmarks/bench_triton.py --models-only: Mamba, Mamba-2, RWKV-7 at hidden 768, 4 layers: prefill,
                 training step, decode eager and under CUDA graphs; 60 s per row, up to 180 s. Both benchmark
                 processes get their step's limit less 25 s as --budget, print each row as it is measured into
                 bench.log, and skip (and list) the rows they have no time for.
  gpu_tests      the parity tests (tests/kernels_triton/test_parity_*.py), compiled, then python -m pytest -m gpu
                 tests; 120 s per test.
  decode         greedy decoding of a tiny model of every registered family (tests/conftest.py's sizes), eager against
                 CUDA graphs for families with fixed-size recurrent states (one graph replay per token,
                 benchmarks/bench_triton.py's GreedyDecoder) and against torch.compile for attention families (their
                 key/value cache grows, which a captured graph cannot: transformers, hybrids); tokens compared.

Files written to --out (at most 8, as the GPU machine returns): results.json (every step's status, time and
results), results.md (the same for people; its benchmark tables paste into BENCHMARKS.md), install.log, env.log,
bench.log (both benchmark processes, one line per row as measured), gpu_tests.log, decode.log (console.log comes
from the tee above). results.json and results.md are rewritten after every step.

A dry run (CPU) checks the wheels it finds without installing them, runs decode with the graph step replayed
eagerly, runs the gpu-marked kernel tests (which skip) and the benchmark's dry run: the plumbing, in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Distributions a carried wheel must never replace: the machine's own torch, Triton and CUDA libraries.
PROTECTED = ("torch", "triton", "nvidia", "cuda", "pytorch_triton")
# Seconds per step, before the budget; the benchmark runs as two processes (kernels, then models), so that a hang
# in one (a CUDA wait cannot be interrupted from Python) cannot take the other's time.
STEP_CAPS = {"install": 60, "env": 45, "bench_kernels": 250, "bench_models": 180, "gpu_tests": 180, "decode": 150}
STEP_FLOORS = {"install": 20, "env": 15, "bench_kernels": 60, "bench_models": 40, "gpu_tests": 60, "decode": 30}
STEPS = ("bench", "gpu_tests", "decode")  # what --only chooses from; install (with wheels) and env always run
BENCH_MARGIN = 25  # seconds of a bench step's limit not given to the script's own --budget (imports, last write)


# ---- steps that run inside this file, in a child process ----

def child_env() -> dict:
    import importlib

    info = {"python": sys.version.split()[0], "executable": sys.executable}
    for name in ("torch", "triton", "transformers", "huggingface_hub", "tokenizers", "safetensors", "accelerate",
                 "regex", "fla", "seqzoo"):
        try:
            module = importlib.import_module(name)
            info[name] = {"version": getattr(module, "__version__", "?"), "from": str(Path(module.__file__).parent)}
        except Exception as err:  # reported, not raised: a missing optional package is a finding
            info[name] = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
    import torch

    info["cuda"] = torch.version.cuda
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["multiprocessors"] = props.multi_processor_count
    return info


def decode_check(dry_run: bool, steps: int = 10, save=lambda rows: None) -> list[dict]:
    """Greedy tokens of a tiny model of every family: eager against CUDA graphs or torch.compile. Fixed-state
    families go first (compiling the attention ones takes longest); ``save`` gets the rows after each family, so a
    step stopped at its time limit keeps the families it finished."""
    import torch

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_triton import GreedyDecoder, eager_greedy

    from tests.conftest import FAMILIES, tiny_config, tiny_model

    cuda = torch.cuda.is_available() and not dry_run
    device = "cuda" if cuda else "cpu"
    rows = []
    def fixed_state(preset: str) -> bool:
        return all(kind == "recurrent" for kind in tiny_config(preset).cache_layer_kinds)

    # Families with an attention layer (transformers, hybrids) after the fixed-state ones.
    for family, preset in sorted(FAMILIES.items(), key=lambda item: (not fixed_state(item[1]), item[0])):
        row = {"family": family, "preset": preset, "method": "", "result": "", "seconds": None}
        start = time.monotonic()
        try:
            model = tiny_model(preset).to(device)
            generator = torch.Generator().manual_seed(1)
            prompt = torch.randint(3, model.config.vocab_size, (1, 11), generator=generator).to(device)
            expected = eager_greedy(model, prompt, steps)
            try:
                decoder = GreedyDecoder(model, prompt, use_graph=cuda)
            except TypeError:  # a growing key/value cache: no fixed tensors to capture
                decoder = None
            if decoder is not None:
                row["method"] = "CUDA graph (one replay per token)" if cuda else "graph step replayed eagerly"
                tokens = decoder.generate(steps)
            elif cuda:
                row["method"] = "torch.compile (default mode, dynamic shapes)"
                torch._dynamo.reset()
                tokens = eager_greedy(torch.compile(model, dynamic=True), prompt, steps)
                # How many graphs compiled, and whether dynamo gave up on frames (then parts ran eagerly).
                row["dynamo"] = {k: int(v) for k, v in torch._dynamo.utils.counters["stats"].items()}
            else:
                row["method"] = "torch.compile"
                row["result"] = "skipped: dry run (compiling needs minutes on CPU)"
                tokens = None
            if tokens is not None:
                same = torch.equal(tokens, expected)
                first = None if same else int((tokens != expected).nonzero()[0, 1])
                row["result"] = "same tokens" if same else f"DIFFERENT tokens from step {first}"
                row["tokens"], row["eager_tokens"] = tokens.tolist(), expected.tolist()
        except Exception as err:  # one family's failure is recorded; the others still run
            row["result"] = f"failed: {type(err).__name__}: {str(err)[:300]}"
        row["seconds"] = round(time.monotonic() - start, 1)
        print(f"{family:22s} {row['method']:46s} {row['result']}", flush=True)
        rows.append(row)
        save(rows)
    return rows


# ---- the orchestrator ----

def check_wheels(folder: Path) -> tuple[list[Path], list[str]]:
    """The wheels to install and the problems that stop the install (a protected name, a wrong tag, a duplicate)."""
    wheels = sorted(folder.glob("*.whl"))
    problems, seen = [], {}
    for wheel in wheels:
        parts = wheel.name[:-4].split("-")
        if len(parts) < 5:
            problems.append(f"{wheel.name}: not a wheel file name (name-version-python-abi-platform.whl)")
            continue
        name, python, platform = parts[0].lower().replace("_", "-"), parts[-3], parts[-1]
        if any(name.startswith(p.replace("_", "-")) for p in PROTECTED):
            problems.append(f"{wheel.name}: would replace the machine's {name}; carry no torch, triton or CUDA wheels")
        if not (python in ("py3", "py2.py3") or "cp312" in python):
            problems.append(f"{wheel.name}: built for {python}, the GPU machine runs CPython 3.12")
        if platform != "any" and "x86_64" not in platform:
            problems.append(f"{wheel.name}: platform {platform}, the GPU machine is manylinux x86_64")
        if name in seen:
            problems.append(f"{wheel.name}: a second version of {name} (also {seen[name]})")
        seen[name] = wheel.name
        try:
            with zipfile.ZipFile(wheel) as archive:
                archive.testzip()
        except zipfile.BadZipFile as err:
            problems.append(f"{wheel.name}: damaged ({err})")
    return wheels, problems


class Runner:
    def __init__(self, args) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.budget
        self.results = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "dry_run": args.dry_run,
                        "budget_s": args.budget, "steps": {}}
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        self.env["PYTHONUNBUFFERED"] = "1"
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))

    def timeout(self, name: str, later: list[str]) -> int:
        left = self.deadline - time.monotonic() - sum(STEP_FLOORS[n] for n in later)
        return int(max(STEP_FLOORS[name] if left > 0 else 5, min(STEP_CAPS[name], left)))

    def run(self, name: str, command: list[str], later: list[str], log_name: str | None = None,
            append: bool = False, limit: int | None = None) -> dict:
        limit = limit or self.timeout(name, later)
        log = self.out / (log_name or f"{name}.log")
        print(f"== {name} (limit {limit} s): {' '.join(command)}", flush=True)
        start = time.monotonic()
        with open(log, "a" if append else "w") as handle:
            # A session of its own, so that a timeout ends the step's children too (compile workers, pytest).
            proc = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=limit)
                status = "ok" if code == 0 else f"failed (exit {code})"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                status = f"timed out after {limit} s"
        step = {"status": status, "seconds": round(time.monotonic() - start, 1), "limit_s": limit,
                "log": log.name}
        self.results["steps"][name] = step
        print(f"   {status} in {step['seconds']} s; log {log.name}", flush=True)
        self.save()
        return step

    def skip(self, name: str, reason: str) -> None:
        self.results["steps"][name] = {"status": f"skipped: {reason}", "seconds": 0}
        print(f"== {name}: skipped: {reason}", flush=True)
        self.save()

    def child_json(self, name: str) -> Path:
        return self.scratch / f"{name}.json"

    def load(self, path: Path):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            return {"error": f"no results: {type(err).__name__}: {err}"}

    def save(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))
        (self.out / "results.md").write_text(summary_markdown(self.results))


def summary_markdown(results: dict) -> str:
    parts = [f"# GPU check, {results['started']}" + (" (dry run)" if results["dry_run"] else "")]
    env = results.get("env") or {}
    if env and "error" not in env:
        versions = ", ".join(f"{k} {v['version']}" for k, v in env.items() if isinstance(v, dict) and "version" in v)
        parts.append(f"Device: {env.get('gpu') or 'no GPU'}; CUDA {env.get('cuda')}; python {env.get('python')}; "
                     f"{versions}")
    parts.append("| step | status | seconds | limit |\n|---|---|---|---|\n" + "\n".join(
        f"| {name} | {step['status']} | {step['seconds']} | {step.get('limit_s', '-')} |"
        for name, step in results["steps"].items()))
    if results.get("install_problems"):
        parts.append("Wheel problems:\n\n" + "\n".join(f"- {p}" for p in results["install_problems"]))
    if isinstance(results.get("decode"), list):
        parts.append("## Greedy decode, tiny model of every family\n\n| family | preset | method | result | s |\n"
                     "|---|---|---|---|---|\n" + "\n".join(
                         f"| {r['family']} | {r['preset']} | {r['method']} | {r['result']}"
                         + (f" (dynamo: {r['dynamo']})" if r.get("dynamo") else "") + f" | {r['seconds']} |"
                         for r in results["decode"]))
    if results.get("gpu_tests"):
        tests = results["gpu_tests"]
        parts.append(f"## gpu-marked tests\n\n{tests.get('summary') or 'no summary line'}"
                     + "".join(f"\n- {line}" for line in tests.get("failures", [])))
    if results.get("bench_markdown"):
        parts.append("## Benchmark (benchmarks/bench_triton.py)\n\n" + results["bench_markdown"])
    return "\n\n".join(parts) + "\n"


def orchestrate(args) -> int:
    runner = Runner(args)
    try:
        return _orchestrate(args, runner)
    finally:
        # The children's result files were read into results.json; their folder goes.
        shutil.rmtree(runner.scratch, ignore_errors=True)


def _orchestrate(args, runner: Runner) -> int:
    py = sys.executable
    chosen = set(args.only or STEPS)
    runner.results["only"] = sorted(chosen) if args.only else None

    wheels, problems = check_wheels(Path(args.wheels)) if Path(args.wheels).is_dir() else ([], [])
    runner.results["wheels"] = [w.name for w in wheels]
    runner.results["install_problems"] = problems
    # The benchmark first, then the tests, then the decode check: the first GPU run (2026-11-30) spent its time on
    # torch.compile in the decode check and on the long-sequence tests, and the benchmark got none.
    later = ["env"] + [n for n, step in (("bench_kernels", "bench"), ("bench_models", "bench"),
                                         ("gpu_tests", "gpu_tests"), ("decode", "decode")) if step in chosen]
    if not wheels:
        runner.skip("install", f"no wheels in {args.wheels}")
    elif problems:
        runner.skip("install", "the wheels failed their checks (see install_problems)")
    elif args.dry_run:
        runner.skip("install", f"dry run: {len(wheels)} wheels checked (names, tags, archives), not installed")
    else:
        step = runner.run("install", [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                                      "--no-cache-dir", "--upgrade", "--target", args.site, *map(str, wheels)],
                          later)
        if step["status"] == "ok":
            runner.env["PYTHONPATH"] = os.pathsep.join([args.site, runner.env["PYTHONPATH"]])

    later.remove("env")
    runner.run("env", [py, __file__, "--child", "env", "--child-out", str(runner.child_json("env"))], later)
    runner.results["env"] = runner.load(runner.child_json("env"))

    if "bench" in chosen:
        # Two processes, one log: the kernels (wkv7 first: the comparison with flash-linear-attention), then the
        # models (4 layers keep the chunked torch backends' training steps inside their rows' caps). Each gets its
        # step's limit, less a margin, as its own --budget, so it skips rows rather than being killed mid-row.
        runner.results["bench"], markdown = {}, []
        ops = ["wkv7"] if args.dry_run else ["wkv7", "selective_scan", "ssd", "causal_conv1d"]
        # 150 s per kernel row: flash-linear-attention's first call autotunes its forward and backward kernels.
        for part, extra in (("kernels", ["--skip-models", "--row-cap", "150", "--ops", *ops]),
                            ("models", ["--models-only", "--layers", "4", "--model-row-cap", "60"])):
            name = f"bench_{part}"
            later.remove(name)
            limit = runner.timeout(name, later)
            out_json, out_md = runner.child_json(name), runner.scratch / f"{name}.md"
            command = [py, "benchmarks/bench_triton.py", "--json", str(out_json), "--markdown", str(out_md),
                       "--budget", str(max(10, limit - BENCH_MARGIN)), *extra]
            if args.dry_run:
                command += ["--dry-run", "--interpret"] if args.interpret else ["--dry-run"]
            runner.run(name, command, later, log_name="bench.log", append=part == "models", limit=limit)
            runner.results["bench"][part] = runner.load(out_json)
            if out_md.exists():
                markdown.append(out_md.read_text())
            runner.results["bench_markdown"] = "\n\n".join(markdown)
            runner.save()

    if "gpu_tests" in chosen:
        later.remove("gpu_tests")
        # Two pytest runs in one step (one log): the interpreter-sized parity tests, compiled here (odd sizes,
        # padding masks, both wkv7 score forms), then every gpu-marked test.
        options = "-q -rfE -p no:cacheprovider --continue-on-collection-errors -o timeout=120"
        parity = " ".join(sorted(str(p.relative_to(REPO))
                                 for p in (REPO / "tests" / "kernels_triton").glob("test_parity_*.py")))
        marked = "tests/kernels_triton/test_gpu_kernels.py" if args.dry_run else "tests"
        script = (f"{sys.executable} -m pytest {options} {parity}; first=$?; "
                  f"{sys.executable} -m pytest {options} -m gpu {marked}; second=$?; exit $((first | second))")
        runner.run("gpu_tests", ["bash", "-c", script], later)
        log = runner.out / "gpu_tests.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        runner.results["gpu_tests"] = {
            "summary": "; ".join(line.strip("= ") for line in lines
                                 if re.search(r"\d+ (passed|failed|skipped|error)", line) and " in " in line),
            "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))][:60]}
        runner.save()

    if "decode" in chosen:
        later.remove("decode")
        decode = [py, __file__, "--child", "decode", "--child-out", str(runner.child_json("decode"))]
        runner.run("decode", decode + (["--dry-run"] if args.dry_run else []), later)
        runner.results["decode"] = runner.load(runner.child_json("decode"))

    runner.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    runner.save()
    failed = [n for n, s in runner.results["steps"].items() if not s["status"].startswith(("ok", "skipped"))]
    print(f"\nresults in {runner.out}: results.json, results.md; steps not ok: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out",
                        help="folder for the result files (default: $OUT, else ./gpu-check-out)")
    parser.add_argument("--wheels", default=".whl", help="folder of the wheels to install (default .whl)")
    parser.add_argument("--site", default="/tmp/site", help="pip --target folder for the wheels")
    parser.add_argument("--budget", type=int, default=465, help="seconds for all steps together")
    parser.add_argument("--only", nargs="+", choices=STEPS,
                        help="run only these steps (install, with wheels, and env always run), e.g. --only bench")
    parser.add_argument("--dry-run", action="store_true", help="CPU: the plumbing, GPU-only parts skipped")
    parser.add_argument("--interpret", action="store_true",
                        help="with --dry-run: the benchmark also times the Triton backends under Triton's interpreter")
    parser.add_argument("--child", choices=("env", "decode"), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    parts = {"bench": ("bench_kernels", "bench_models"), "gpu_tests": ("gpu_tests",), "decode": ("decode",)}
    least = STEP_FLOORS["install"] + STEP_FLOORS["env"] + sum(
        STEP_FLOORS[n] for step in (args.only or STEPS) for n in parts[step])
    if args.budget < least:
        parser.error(f"--budget {args.budget} is below the {least} s the chosen steps need at least")
    if args.interpret and not args.dry_run:
        parser.error("--interpret goes with --dry-run (on a GPU the Triton backends run compiled)")
    if args.child and not args.child_out:
        parser.error("--child needs --child-out")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        def save(result):
            Path(args.child_out).write_text(json.dumps(result, indent=1, default=str))

        if args.child == "env":
            result = child_env()
        else:
            result = decode_check(args.dry_run, steps=4 if args.dry_run else 10, save=save)
        save(result)
        if args.child == "env":
            print(json.dumps(result, indent=1))
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
