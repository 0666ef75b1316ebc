"""Checkpoint state files without pickle (seqzoo.training.state), unit by unit: what is written reads back as torch,
Python and NumPy gave it, shared storage is stored once but never confused, and a bad file changes nothing."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from seqzoo.training import state


def test_views_of_one_storage_are_stored_once_only_where_they_are_the_same_view(tmp_path):
    """Tensors sharing storage are stored once; views at another offset or with other strides are other tensors."""
    buffer = torch.arange(8.0)
    square = torch.arange(4.0).reshape(2, 2)
    tensors = {"a": buffer[:4], "b": buffer[4:], "same_as_a": buffer[:4], "square": square, "transposed": square.t()}
    path = tmp_path / "model.safetensors"
    state.save_model_state(tensors, path)
    loaded = state.load_model_state(path)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert sorted(handle.keys()) == ["a", "b", "square", "transposed"]  # "same_as_a" is an alias


def test_a_tied_head_is_named_and_stored_once_even_when_gathered_into_its_own_tensor(tmp_path):
    import seqzoo

    tied = seqzoo.create_model("lstm-tiny", tie_word_embeddings=True, hidden_size=16, embedding_size=16)
    untied = seqzoo.create_model("lstm-tiny", tie_word_embeddings=False, hidden_size=16, embedding_size=16)
    names = state.tied_parameter_names(tied)
    # transformers' own record of the tie: the head's weight points at the input embedding's
    head = tied.get_output_embeddings().weight
    embedding = tied.get_input_embeddings().weight
    assert head is embedding and len(names) == 1
    (alias, source), = names.items()
    assert dict(tied.named_parameters(remove_duplicate=False))[alias] is head
    assert dict(tied.named_parameters())[source] is embedding
    assert state.tied_parameter_names(untied) == {}
    # FSDP gathers each name into a tensor of its own: the tie alone says they are one.
    gathered = {name: tensor.clone() for name, tensor in tied.state_dict().items()}
    path = tmp_path / "model.safetensors"
    state.save_model_state(gathered, path, tied=names)
    loaded = state.load_model_state(path)
    assert loaded.keys() == gathered.keys() and torch.equal(loaded[alias], gathered[source])
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert alias not in handle.keys() and source in handle.keys()


def test_an_optimizer_state_reads_back_as_torch_wrote_it(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    names = dict(enumerate(name for name, _ in model.named_parameters()))
    written = optimizer.state_dict()
    by_name = {"state": {names[i]: slots for i, slots in written["state"].items()},
               "param_groups": written["param_groups"]}
    by_name["state"]["weight"]["note"] = 7  # a slot that is no tensor (JSON in the file's metadata)
    path = tmp_path / "optimizer.safetensors"
    state.save_optimizer_state(by_name, path)
    loaded = state.load_optimizer_state(path)
    assert loaded["param_groups"] == written["param_groups"]  # betas a tuple again, as torch keeps it
    assert loaded["state"]["weight"]["note"] == 7
    for name, slots in by_name["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(loaded["state"][name][slot], value), (name, slot)


def test_rng_states_restore_the_cached_gaussians_of_python_and_numpy(tmp_path):
    """random.gauss and NumPy's legacy normal draw two values at a time and keep one: a restore that lost it would
    change the next draw."""
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    random.gauss(0, 1)
    np.random.standard_normal()  # one of a pair: the second is cached
    assert np.random.get_state()[3] == 1 and random.getstate()[2] is not None
    path = tmp_path / "rng_state_0.json"
    state.save_rng_state(path)
    expected = (random.gauss(0, 1), np.random.standard_normal(), torch.randn(()))
    random.seed(2)
    np.random.seed(2)
    torch.manual_seed(2)
    state.restore_rng_state(path)
    assert (random.gauss(0, 1), np.random.standard_normal()) == expected[:2]
    assert torch.equal(torch.randn(()), expected[2])


@pytest.mark.parametrize("part", ["torch", "numpy", "base64", "python", "gauss"])
def test_a_malformed_rng_state_is_refused_before_any_generator_changes(tmp_path, part):
    # python: random.setstate stores the cached gaussian before it refuses a short state, so a check on the real
    # generator changed it; gauss: random.setstate takes any object there, and random.gauss failed later instead.
    random.seed(3)
    state.save_rng_state(tmp_path / "good.json")
    values = json.loads((tmp_path / "good.json").read_text())
    if part == "python":
        values["python"].update(state=values["python"]["state"][:10], gauss=0.25)
    elif part == "gauss":
        values["python"]["gauss"] = "0.25"
    elif part == "torch":
        values["torch"] = values["torch"][:40]  # a valid base64 prefix: too short for torch's generator
    elif part == "numpy":
        values["numpy"]["keys"] = values["numpy"]["keys"][:10]
    else:
        values["torch"] = values["torch"][:8] + "!!" + values["torch"][8:]  # not base64: refused, not skipped
    bad = tmp_path / "rng_state_0.json"
    bad.write_text(json.dumps(values))
    random.seed(4)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    with pytest.raises(state.CheckpointError, match=r"rng_state_0.json' cannot be read"):
        state.restore_rng_state(bad)
    assert random.getstate() == before[0]
    assert (np.random.get_state()[1] == before[1]).all() and torch.equal(torch.get_rng_state(), before[2])


class _FakeCuda:
    """torch.cuda's generator functions for ``count`` GPUs on a CPU-only machine: each device's state a 16-byte
    tensor, what ``set_rng_state_all`` was given recorded, and a throwaway generator that refuses a state of
    another size as torch's CUDA generator does."""

    def __init__(self, monkeypatch, count):
        self.count, self.states, self.set_calls = count, [torch.full((16,), i, dtype=torch.uint8) for i in
                                                          range(count)], []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: self.set_calls.append(list(states)))
        monkeypatch.setattr(state, "_cuda_generator", lambda device: self._Throwaway())

    class _Throwaway:
        def set_state(self, value):
            if value.numel() != 16:
                raise RuntimeError("RNG state is wrong size")


def test_cuda_generator_states_are_saved_and_restored_device_by_device(tmp_path, monkeypatch):
    cuda = _FakeCuda(monkeypatch, 2)
    path = tmp_path / "rng_state_0.json"
    state.save_rng_state(path)
    assert len(json.loads(path.read_text())["cuda"]) == 2
    state.restore_rng_state(path)
    assert len(cuda.set_calls) == 1 and [torch.equal(a, b) for a, b in zip(cuda.set_calls[0], cuda.states)] == [
        True, True]


@pytest.mark.parametrize("saved, here", [(0, 1), (2, 0), (2, 1), (1, 2)])
def test_a_run_resumed_on_another_number_of_gpus_is_refused_naming_them(tmp_path, monkeypatch, saved, here):
    """A checkpoint of a CPU run resumed on a GPU machine was refused as unreadable ('0 CUDA generator states for 1
    devices'), and one of a GPU run resumed without a GPU left the GPU generators unrestored without a word; both
    are refused with what differs and how to resume, before any generator changes."""
    _FakeCuda(monkeypatch, saved)
    path = tmp_path / "rng_state_0.json"
    state.save_rng_state(path)
    cuda = _FakeCuda(monkeypatch, here)
    random.seed(6)
    before = random.getstate()
    with pytest.raises(state.CheckpointError, match=rf"holds {saved} CUDA generator state\(s\), .* sees {here} "
                       r"GPU\(s\): the run cannot be resumed exactly here.*CUDA_VISIBLE_DEVICES"):
        state.restore_rng_state(path)
    assert random.getstate() == before and cuda.set_calls == []


def test_a_malformed_cuda_state_is_refused_before_any_generator_changes(tmp_path, monkeypatch):
    cuda = _FakeCuda(monkeypatch, 1)
    path = tmp_path / "rng_state_0.json"
    state.save_rng_state(path)
    values = json.loads(path.read_text())
    values["cuda"][0] = values["cuda"][0][:8]  # valid base64, 6 bytes: too short for a CUDA generator
    path.write_text(json.dumps(values))
    random.seed(7)
    before = random.getstate()
    with pytest.raises(state.CheckpointError, match="wrong size"):
        state.restore_rng_state(path)
    assert random.getstate() == before and cuda.set_calls == []
    values["cuda"] = "AAAA"
    path.write_text(json.dumps(values))
    with pytest.raises(state.CheckpointError, match="'cuda' holds str, not a list"):
        state.restore_rng_state(path)


def test_file_records_hash_the_whole_file(tmp_path):
    import hashlib

    one, other = tmp_path / "one.bin", tmp_path / "other.bin"
    content = bytes(range(256)) * 12_000  # ~3 MB: past the first block that is read
    one.write_bytes(content)
    other.write_bytes(content[:-1] + b"\x00")
    assert state.file_record(one) == {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    assert state.file_record(one) != state.file_record(other)


def test_a_missing_or_foreign_state_file_is_named_with_what_it_holds(tmp_path):
    (tmp_path / "scheduler.json").write_text("[1, 2]")
    record = {"scheduler.json": state.file_record(tmp_path / "scheduler.json")}
    state.verify_files(tmp_path, record, ["scheduler.json"])
    with pytest.raises(state.CheckpointError, match=r"scheduler.json' cannot be read \(ValueError: expected a JSON "
                                                    r"object, got list\)"):
        state.load_json_state(tmp_path / "scheduler.json")
    with pytest.raises(state.CheckpointError, match=r"trainer_state.json' lists no checkpoint files \('files' is "
                                                    r"\['scheduler.json'\]\)"):
        state.verify_files(tmp_path, ["scheduler.json"], ["scheduler.json"])
    record["rng_state_12.json"] = record["scheduler.json"]
    with pytest.raises(state.CheckpointError, match=r"rng_state_12.json' is missing, .*\(it holds the random "
                                                    r"generator states of process 12\)"):
        state.verify_files(tmp_path, record, ["scheduler.json", "rng_state_12.json"])
