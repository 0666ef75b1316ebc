"""`seqzoo train` under FSDP2 on CPU, launched with the README's command: two gloo processes shard the model with
torch's ``fully_shard``, match one process, write full-state checkpoints (safetensors + JSON, no pickle) that resume
to the same weights bit for bit, and save the model as one ``save_pretrained`` folder. Families: the Transformer
(attention) and the LSTM (recurrent, trained in TBPTT chunks)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from seqzoo.training.fsdp import seqzoo_shards, shard_on_cpu
from tests.conftest import FAMILIES, tiny_model
from tests.training.test_processes import env, in_process_reference, losses, write_recipe

TINY_TRANSFORMER = {"preset": "transformer-tiny", "config": {"hidden_size": 32, "intermediate_size": 48}}
TINY_LSTM = {"preset": "lstm-tiny", "config": {"hidden_size": 16, "embedding_size": 16, "dropout": 0.0}}


def free_port() -> int:
    # accelerate launch defaults to port 29500, which another test run on the same machine may hold.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SEQZOO = ("-m", "seqzoo")
ACCELERATE_FSDP2_FORCED = (str(Path(__file__).with_name("accelerate_fsdp2_on_cpu.py")),)


def launch_fsdp(recipe: Path, output_dir: Path, *extra: str, program: tuple[str, ...] = SEQZOO
                ) -> subprocess.CompletedProcess:
    # The README's CPU command (with the defaults accelerate would otherwise warn about spelled out).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2",
               "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               *program, "train", str(recipe), "--output-dir", str(output_dir), "--no-progress", *extra]
    return subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)


def assert_close_to_one_process(fsdp: dict[str, torch.Tensor], one: dict[str, torch.Tensor], what: str) -> None:
    assert fsdp.keys() == one.keys(), what
    for key in fsdp:
        assert fsdp[key].shape == one[key].shape, f"{what}: {key} is not the full tensor"
        # The same tolerance as the DDP test: the gradient reduce-scatter sums the two processes' partial sums in
        # another order than one process's backward (relative noise ~1e-7), and Adam's division by sqrt(v) turns
        # that into ~1e-6 absolute in weights whose gradients are near zero.
        torch.testing.assert_close(fsdp[key], one[key], rtol=1e-5, atol=1e-5, msg=f"{what}: {key}")


def run_and_compare(tmp_path: Path, model: dict, program: tuple[str, ...] = SEQZOO, **train_fields
                    ) -> tuple[Path, Path]:
    recipe = write_recipe(tmp_path / "fsdp.yaml", model=model, max_steps=4, gradient_accumulation_steps=2,
                          save_every=2, **train_fields)
    two = tmp_path / "two"
    done = launch_fsdp(recipe, two, program=program)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"trained {model['preset']} for 4 steps") == 1  # printed by the main process only
    info = json.loads((two / "seqzoo_training.json").read_text())
    assert info["num_processes"] == 2 and info["fsdp"] is True  # sharded, not a silent DDP run
    checkpoint = two / "checkpoints" / "checkpoint-2"
    assert {p.suffix for p in checkpoint.iterdir()} == {".safetensors", ".json"}  # nothing that unpickles

    one = tmp_path / "one"
    assert in_process_reference(recipe, one).steps == 4
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    # The checkpoint holds full tensors, the optimizer's Adam moments included, not one process's shards.
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert_close_to_one_process(load_file(str(checkpoint / name)),
                                    load_file(str(one / "checkpoints" / "checkpoint-2" / name)), name)
    with safe_open(str(checkpoint / "optimizer.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["scalars"]) == {}  # every slot (step included) is a full tensor
    final = load_file(str(two / "model.safetensors"))
    assert_close_to_one_process(final, load_file(str(one / "model.safetensors")), "final model")

    # One consolidated save_pretrained folder, named after the model's class (not the FSDP wrapper's).
    from transformers import AutoModelForCausalLM

    config = json.loads((two / "config.json").read_text())
    assert config["architectures"] == json.loads((one / "config.json").read_text())["architectures"]
    loaded = AutoModelForCausalLM.from_pretrained(two).state_dict()
    for key, value in final.items():
        assert torch.equal(loaded[key], value), key
    return two, recipe


def test_fsdp_transformer_matches_one_process_and_resumes_exactly(tmp_path):
    two, recipe = run_and_compare(tmp_path, TINY_TRANSFORMER)
    first, first_losses = load_file(str(two / "model.safetensors")), losses(two)
    # Back to step 2, as if the run had died there: resumed under FSDP, the same weights bit for bit.
    shutil.rmtree(two / "checkpoints" / "checkpoint-4")
    (two / "model.safetensors").unlink()
    resumed = launch_fsdp(recipe, two, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for key, value in load_file(str(two / "model.safetensors")).items():
        assert torch.equal(value, first[key]), f"{key} differs after an FSDP resume"
    assert losses(two) == first_losses


def test_fsdp_lstm_with_tbptt_matches_one_process(tmp_path):
    run_and_compare(tmp_path, TINY_LSTM, tbptt_chunk=8)


def test_accelerates_fsdp2_path_forced_onto_cpu_matches_one_process(tmp_path):
    # The path GPUs take: Accelerate shards model and optimizer in one prepare() call, clips and skips gradient
    # syncs its own way; seqzoo gathers checkpoints and the final model as on CPU.
    run_and_compare(tmp_path, TINY_LSTM, program=ACCELERATE_FSDP2_FORCED, tbptt_chunk=8)


# ----------------------------------------------------------------------------------------------------------------
# What the CPU path refuses (before any process group is needed).


@pytest.mark.parametrize("setting, value, named", [
    ("FSDP_VERSION", "1", "--fsdp_version 1"),
    ("FSDP_OFFLOAD_PARAMS", "true", "--fsdp_offload_params true"),
    ("FSDP_ACTIVATION_CHECKPOINTING", "true", "--fsdp_activation_checkpointing true"),
    ("FSDP_AUTO_WRAP_POLICY", "SIZE_BASED_WRAP", "SIZE_BASED_WRAP"),
])
def test_cpu_fsdp_refuses_settings_it_cannot_honour(monkeypatch, setting, value, named):
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv(setting, value)
    with pytest.raises(ValueError, match="does not implement") as error:
        shard_on_cpu(tiny_model(FAMILIES["lstm"]), "no")
    assert named in str(error.value)


def test_cpu_fsdp_refuses_mixed_precision_and_unknown_layer_classes(monkeypatch):
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(ValueError, match="train.mixed_precision='bf16'"):
        shard_on_cpu(tiny_model(FAMILIES["lstm"]), "bf16")
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "LSTMLayer")
    with pytest.raises(ValueError, match="no module of LSTMForCausalLM is a 'LSTMLayer'.*LSTMMixer"):
        shard_on_cpu(tiny_model(FAMILIES["lstm"]), "no")


def test_fsdp_asked_for_one_process_or_misspelt_is_an_error(monkeypatch):
    from accelerate.utils import DistributedType

    one = SimpleNamespace(distributed_type=DistributedType.NO, num_processes=1)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="1 process.*nothing to shard over"):
        seqzoo_shards(one)
    assert seqzoo_shards(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=2))
    assert not seqzoo_shards(SimpleNamespace(distributed_type=DistributedType.FSDP, num_processes=2))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "1")
    with pytest.raises(ValueError, match="ACCELERATE_USE_FSDP='1': expected 'true' or 'false'"):
        seqzoo_shards(one)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    assert not seqzoo_shards(one)


@pytest.mark.parametrize("policy, units_per_layer", [("TRANSFORMER_BASED_WRAP", True), (None, False)])
def test_cpu_fsdp_units_follow_accelerates_wrap_policy(monkeypatch, policy, units_per_layer):
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    monkeypatch.setenv("FSDP_VERSION", "2")
    if policy:
        monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", policy)
    model = tiny_model(FAMILIES["transformer"])
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        sharded = shard_on_cpu(model, "no")
    finally:
        dist.destroy_process_group()
    units = [m for m in sharded.modules() if isinstance(m, FSDPModule)]
    assert units[0] is sharded
    assert [type(m).__name__ for m in units[1:]] == (["FSDPTransformerBlock"] * 2 if units_per_layer else [])


def test_fsdp_requested_reads_the_flag_in_any_case_as_accelerate_does(monkeypatch):
    # Catches a case-sensitive reading: Accelerate itself compares the lower-cased value and writes "True" in
    # places (accelerate.utils.fsdp_utils), so "True" must ask for FSDP, not be refused or read as false.
    from seqzoo.training.fsdp import fsdp_requested

    for value, expected in (("True", True), ("TRUE", True), ("true", True), ("False", False), ("false", False)):
        monkeypatch.setenv("ACCELERATE_USE_FSDP", value)
        assert fsdp_requested() is expected, value


def test_cpu_fsdp_passes_accelerates_reshard_setting_and_shards_the_root_last(monkeypatch):
    # Catches --fsdp_reshard_after_forward false ignored for the layer units (each would gather its weights again
    # for the backward), and the root wrapped before its layers or twice.
    import torch.distributed.fsdp as fsdp

    calls = []
    monkeypatch.setattr(fsdp, "fully_shard", lambda module, **kw: calls.append((module, kw)) or module)
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    model = tiny_model(FAMILIES["transformer"])
    shard_on_cpu(model, "no")
    assert [type(m).__name__ for m, _ in calls] == ["TransformerBlock"] * 2 + [type(model).__name__]
    assert calls[-1][0] is model and all(kw == {"reshard_after_forward": False} for _, kw in calls)


def test_unknown_wrap_classes_are_answered_with_the_models_own_layer_classes_only():
    # Catches torch's building blocks (Linear, Embedding, ...) offered as wrap units: they are no layers.
    from seqzoo.training.fsdp import layer_classes

    names = layer_classes(tiny_model(FAMILIES["lstm"]))
    assert "LSTMMixer" in names and not {"Linear", "Embedding", "Dropout", "LSTMForCausalLM"} & set(names)


def test_gradient_sync_off_turns_fsdp2_sync_back_on_even_after_an_error():
    # Catches the sync left off after the accumulation context: the last micro-batch's backward would not
    # reduce-scatter and every process would step on its own gradients.
    import torch.distributed as dist

    from seqzoo.training.fsdp import gradient_sync_off

    model = tiny_model(FAMILIES["lstm"])
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)
        seen = []
        model.set_requires_gradient_sync = seen.append
        with pytest.raises(RuntimeError, match="inside"):
            with gradient_sync_off(None, model):
                assert seen == [False]
                raise RuntimeError("inside")
        assert seen == [False, True]
    finally:
        dist.destroy_process_group()


def test_cpu_fsdp_refuses_ignored_modules(monkeypatch):
    # Catches --fsdp_ignored_modules dropped without a word: those modules would be sharded after all.
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_IGNORED_MODULES", "lm_head")
    with pytest.raises(ValueError, match="does not implement: --fsdp_ignored_modules"):
        shard_on_cpu(tiny_model(FAMILIES["lstm"]), "no")
