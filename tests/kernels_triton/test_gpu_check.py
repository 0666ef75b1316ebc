"""benchmarks/gpu_check.py, the one prepared GPU check, in its CPU dry run: every step runs (the wheels checked, not
installed; the decode check with the graph step replayed eagerly; the gpu-marked tests, which skip; the benchmark's
dry run), the result files are written, and a step that overruns its limit is stopped, its children too."""

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import load_benchmark

REPO = Path(__file__).resolve().parents[2]


def _module():
    return load_benchmark("gpu_check")


def _wheel(folder: Path, name: str) -> Path:
    path = folder / name
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("pkg/__init__.py", "")
    return path


def test_dry_run_runs_every_step_and_writes_the_result_files(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "transformers-5.24.0-py3-none-any.whl")
    _wheel(wheels, "regex-2026.11.19-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out),
                             "--wheels", str(wheels)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    data = json.loads((out / "results.json").read_text())
    status = {name: step["status"] for name, step in data["steps"].items()}
    assert status.pop("install").startswith("skipped: dry run: 2 wheels checked"), data["steps"]
    assert status == {"env": "ok", "bench_kernels": "ok", "bench_models": "ok", "gpu_tests": "ok", "decode": "ok"}, \
        data["steps"]
    assert data["env"]["seqzoo"]["version"] and data["env"]["gpu"] is None

    replayed = [row for row in data["decode"] if row["method"] == "graph step replayed eagerly"]
    assert {"lstm", "mamba", "mamba2", "rwkv7"} <= {row["family"] for row in replayed}
    assert all(row["result"] == "same tokens" for row in replayed), data["decode"]
    others = [row for row in data["decode"] if row not in replayed]  # with attention layers: compiled on a GPU only
    assert {"transformer"} <= {row["family"] for row in others}
    assert all(row["result"].startswith("skipped: dry run") for row in others), data["decode"]
    assert " skipped" in data["gpu_tests"]["summary"] and not data["gpu_tests"]["failures"]

    rows = {row["backend"]: row for row in data["bench"]["kernels"]["kernels"]}
    assert rows["chunked"]["fwd_ms"] > 0 and rows["chunked"]["fwd_bwd_ms"] > 0
    assert rows["triton_chunked"]["note"].startswith("needs a GPU") and rows["triton_chunked"]["fwd_ms"] is None
    assert "reference" not in rows  # per-token: never timed
    models = data["bench"]["models"]["models"]
    assert {row["model"] for row in models} == {"Mamba", "Mamba-2", "RWKV-7"}
    assert all(row["train_ms"] > 0 and row["decode_ms"] > 0 for row in models), models
    markdown = (out / "results.md").read_text()
    assert "| wkv7 | 33 | triton_chunked |" in markdown and "## Greedy decode" in markdown
    assert "| RWKV-7 | chunked | 1x9 |" in markdown
    # Both benchmark processes print each row as it is measured, into one log.
    log = (out / "bench.log").read_text()
    assert "row: wkv7 T=33 chunked: fwd" in log and "row: RWKV-7 / chunked: prefill" in log
    # The GPU machine returns at most 8 files; console.log (from tee) is the eighth.
    assert len(list(out.iterdir())) <= 7


def test_only_bench_runs_install_env_and_the_benchmark(tmp_path, monkeypatch):
    module = _module()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "transformers-5.24.0-py3-none-any.whl")
    ran = {}

    def run(self, name, command, later, log_name=None, append=False, limit=None):
        ran[name] = (limit or self.timeout(name, later), command, log_name)
        self.results["steps"][name] = {"status": "ok", "seconds": 0}
        return self.results["steps"][name]

    monkeypatch.setattr(module.Runner, "run", run)
    scratch = tmp_path / "scratch"
    monkeypatch.setattr(module.tempfile, "mkdtemp", lambda prefix: str(scratch.mkdir() or scratch))
    args = module.parse_args(["--out", str(tmp_path / "out"), "--wheels", str(wheels), "--only", "bench",
                              "--budget", "450"])
    assert module.orchestrate(args) == 0
    assert not scratch.exists()  # the children's result files were read; their folder is not left in /tmp
    assert list(ran) == ["install", "env", "bench_kernels", "bench_models"]
    assert ran["bench_kernels"][0] == 250 and ran["bench_kernels"][2] == ran["bench_models"][2] == "bench.log"
    # Each benchmark process gets its step's limit less a margin as its own budget, so it skips, not dies.
    kernels, models = ran["bench_kernels"][1], ran["bench_models"][1]
    assert kernels[kernels.index("--budget") + 1] == str(250 - module.BENCH_MARGIN)
    assert "--skip-models" in kernels and kernels[kernels.index("--ops") + 1] == "wkv7" and "--models-only" in models
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["only"] == ["bench"] and "decode" not in data and "gpu_tests" not in data


def test_wheel_checks_refuse_what_would_break_the_gpu_machine(tmp_path):
    check_wheels = _module().check_wheels
    _wheel(tmp_path, "fla_core-0.6.0-py3-none-any.whl")
    _wheel(tmp_path, "torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl")
    _wheel(tmp_path, "regex-2026.11.19-cp311-cp311-manylinux_2_17_x86_64.whl")
    _wheel(tmp_path, "regex-2026.10.1-cp312-cp312-manylinux_2_17_x86_64.whl")
    (tmp_path / "tokenizers-0.23.2-cp39-abi3-manylinux_2_17_x86_64.whl").write_text("not a zip")
    wheels, problems = check_wheels(tmp_path)
    assert len(wheels) == 5
    text = "\n".join(problems)
    assert "torch" in text and "would replace" in text
    assert "built for cp311" in text and "a second version of regex" in text
    assert "tokenizers-0.23.2-cp39-abi3-manylinux_2_17_x86_64.whl: built for cp39" in text
    assert "fla_core" not in text


def test_a_step_past_its_limit_is_stopped_with_its_children(tmp_path, monkeypatch):
    module = _module()
    monkeypatch.setitem(module.STEP_CAPS, "env", 2)
    monkeypatch.setitem(module.STEP_FLOORS, "env", 2)
    runner = module.Runner(module.parse_args(["--out", str(tmp_path), "--budget", "300"]))
    marker = tmp_path / "grandchild-alive"
    grandchild = tmp_path / "grandchild.py"
    grandchild.write_text(f"import time\ntime.sleep(4)\nopen({str(marker)!r}, 'w')\n")
    child = tmp_path / "child.py"
    child.write_text(f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, {str(grandchild)!r}])\n"
                     "time.sleep(60)\n")
    start = time.monotonic()
    step = runner.run("env", [sys.executable, str(child)], later=[])
    assert step["status"] == "timed out after 2 s" and time.monotonic() - start < 10
    time.sleep(4)
    assert not marker.exists(), "the step's child process outlived the timeout"
    assert json.loads((tmp_path / "results.json").read_text())["steps"]["env"]["status"] == step["status"]


@pytest.mark.parametrize("argv, message", [(["--budget", "10"], "below"), (["--child", "env"], "--child-out"),
                                           (["--only", "bench", "--budget", "100"], "below the 135 s"),
                                           (["--only", "env"], "invalid choice")])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        _module().parse_args(argv)
    assert message in capsys.readouterr().err
