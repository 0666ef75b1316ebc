"""`seqzoo train` as real processes: two gloo processes under torchrun match one process and resume exactly from
their checkpoint, and a run killed with SIGKILL resumes from its last checkpoint to bit-identical weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from seqzoo.training.recipe_loading import load_recipe
from seqzoo.training.trainer import train
from tests.conftest import python_path

# Process launch, gloo and signals: nothing here differs between transformers releases (CI's oldest-release pass skips
# it).
pytestmark = pytest.mark.release_independent

ROOT = Path(__file__).resolve().parents[2]


TINY_LSTM = {"preset": "lstm-tiny", "config": {"hidden_size": 16, "embedding_size": 16, "dropout": 0.1}}


def write_recipe(path: Path, model: dict | None = None, **train_fields) -> Path:
    train_section = {"batch_size": 8, "eval_every": 0, "log_every": 1000, **train_fields}
    path.write_text(json.dumps({  # JSON is YAML
        "model": model or TINY_LSTM,
        "data": {"source": "pydoc", "seq_len": 32, "eval_samples": 8},
        "optim": {"lr": 0.01, "warmup_steps": 2},
        "train": train_section,
    }))
    return path


def env() -> dict[str, str]:
    # One thread per process: the in-process reference runs with one thread too, so float sums are ordered alike.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path(ROOT), "TOKENIZERS_PARALLELISM": "false"}


def seqzoo_train(*args: str) -> list[str]:
    return [sys.executable, "-m", "seqzoo", "train", *args, "--no-progress"]


def in_process_reference(recipe_path: Path, output_dir: Path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(load_recipe(str(recipe_path), {"output_dir": str(output_dir)}), progress=False)
    finally:
        torch.set_num_threads(threads)


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_two_gloo_processes_match_one_process_and_resume_exactly(tmp_path):
    # Dropout off: each process draws its own masks, so only a dropout-free run can match one process exactly.
    recipe = write_recipe(tmp_path / "ddp.yaml", max_steps=4, gradient_accumulation_steps=2, tbptt_chunk=8,
                          save_every=2)
    recipe.write_text(recipe.read_text().replace('"dropout": 0.1', '"dropout": 0.0'))
    two = tmp_path / "two"

    def launch(*extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                   "seqzoo", "train", str(recipe), "--output-dir", str(two), "--no-progress", *extra]
        return subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)

    done = launch()
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained lstm-tiny for 4 steps") == 1  # printed by the main process only
    info = json.loads((two / "seqzoo_training.json").read_text())
    assert info["num_processes"] == 2
    checkpoint = two / "checkpoints" / "checkpoint-2"
    assert {"rng_state_0.json", "rng_state_1.json"} <= {p.name for p in checkpoint.iterdir()}

    one = in_process_reference(recipe, tmp_path / "one")
    assert one.steps == 4
    assert losses(two) == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    ours, theirs = load_file(str(two / "model.safetensors")), load_file(str(tmp_path / "one" / "model.safetensors"))
    for key in ours:
        # (atol: Adam turns the all-reduce's summation-order noise into ~1e-6 in weights with near-zero gradients)
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-5, msg=key)
    changed = load_file(str(two / "model.safetensors"))["model.embed_tokens.weight"]
    assert not torch.equal(changed, torch.zeros_like(changed))

    # Back to step 2, as if the run had died there: two processes resume to the same weights, bit for bit.
    shutil.rmtree(two / "checkpoints" / "checkpoint-4")
    (two / "model.safetensors").unlink()
    resumed = launch("--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for key, value in load_file(str(two / "model.safetensors")).items():
        assert torch.equal(value, ours[key]), f"{key} differs after a two-process resume"


def test_sigkill_mid_run_then_resume_gives_bit_identical_weights(tmp_path):
    recipe = write_recipe(tmp_path / "kill.yaml", max_steps=150, save_every=10, tbptt_chunk=8, deterministic=True)
    run = tmp_path / "killed"
    process = subprocess.Popen(seqzoo_train(str(recipe), "--output-dir", str(run)), env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / "checkpoint-20" / "trainer_state.json").exists():
        assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint-20 within 240 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not (run / "model.safetensors").exists(), "killed before the end, so no final model"

    resumed = subprocess.run(seqzoo_train(str(recipe), "--output-dir", str(run), "--resume"), env=env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    reference = in_process_reference(recipe, tmp_path / "uninterrupted")
    assert reference.steps == 150
    ours, theirs = load_file(str(run / "model.safetensors")), load_file(str(tmp_path / "uninterrupted" /
                                                                              "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), f"{key} differs after SIGKILL + resume"
    assert losses(run) == losses(tmp_path / "uninterrupted")


def test_a_run_folder_the_main_process_alone_cannot_write_stops_every_process_with_its_error(tmp_path):
    # Only the main process creates the run folder and writes recipe.yaml and metrics.jsonl: where that failed, the
    # other process learnt of it only from gloo ("Connection closed by peer", reported as an unexpected error to
    # report) once the main one had exited, or under a launcher that does not stop the rest, at the process group's
    # timeout.
    recipe = write_recipe(tmp_path / "r.yaml", max_steps=2)
    (tmp_path / "file").write_text("a file where the run folder's parent goes")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "seqzoo",
               "train", str(recipe), "--output-dir", str(tmp_path / "file" / "run"), "--no-progress"]
    done = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    # (the two processes write to one stderr: one's line may run into the other's, so the text is searched whole)
    stderr = done.stderr
    assert done.returncode != 0 and stderr.count("error: ") == 2, stderr[-3000:]
    assert f"error: cannot write output_dir {str(tmp_path / 'file' / 'run')!r}: {tmp_path / 'file'} is a file, not a " \
        "folder" in stderr, stderr[-3000:]
    assert "error: process 0 failed (its own error says why)" in stderr, stderr[-3000:]
    assert "unexpected" not in stderr, stderr[-3000:]


@pytest.mark.parametrize("fails", [False, True], ids=["finished", "failed"])
def test_seqzoo_train_leaves_the_process_group_before_its_process_ends(monkeypatch, tmp_path, fails):
    # Left to the interpreter's exit, gloo's worker threads can abort a process whose run had finished (SIGABRT,
    # "terminate called without an active exception": rank 0 of a two-process FSDP resume, in CI), and the launcher
    # then reports the whole run failed. Here the run joins a one-process gloo group, as a launched run does.
    import torch.distributed as dist

    from seqzoo.cli import main
    from seqzoo.training import launch, trainer

    # Destroying the group leaves its worker threads running while the model holds it; the one that ran the last
    # collective still needs the GIL to drop that collective's tensors, and gets it while this process waits.
    waits = []
    monkeypatch.setattr(launch, "time", SimpleNamespace(sleep=lambda s: waits.append((s, dist.is_initialized()))))

    def joined_and_trained(recipe, **options):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        if fails:
            raise OSError(28, "No space left on device")
        return SimpleNamespace(is_main_process=False)

    monkeypatch.setattr(trainer, "train", joined_and_trained)
    try:
        code = main(["train", str(write_recipe(tmp_path / "r.yaml")), "--output-dir", str(tmp_path / "run")])
        assert (code != 0) == fails
        # A failed run leaves the group as it is (NCCL's destroy may wait on processes blocked in a collective).
        assert dist.is_initialized() == fails
        assert len(waits) == 1 and waits[0][0] >= 0.05 and waits[0][1] is fails, waits  # (after the destroy)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
