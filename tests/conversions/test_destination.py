"""Every converter and exporter refuses, before reading or writing anything, a destination that is the source folder
or already holds a checkpoint: converting a sharded folder into itself used to delete the source's shards and
rewrite its config before failing."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from transformers import MambaConfig as HFMambaConfig
from transformers import MambaForCausalLM as HFMambaForCausalLM

from seqzoo.cli import main as seqzoo_main
from seqzoo.conversions import checkpoints, export, fla_rwkv7, gpt2, hf_mamba, llama, mamba_ssm, rwkv7, word_lm


def fingerprint(folder):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


@pytest.fixture
def sharded_source(tmp_path):
    torch.manual_seed(0)
    model = HFMambaForCausalLM(HFMambaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, state_size=8))
    folder = tmp_path / "hf"
    model.save_pretrained(folder, max_shard_size="20KB")
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    return folder


def test_converting_a_folder_into_itself_is_refused_and_leaves_it_as_it_was(sharded_source, capsys):
    before = fingerprint(sharded_source)
    code = seqzoo_main(["convert", "hf-mamba", str(sharded_source), str(sharded_source), "--dtype", "bfloat16"])
    assert code == 2
    assert "is the source folder: converting there would overwrite the source" in capsys.readouterr().err
    assert fingerprint(sharded_source) == before
    assert json.loads((sharded_source / "config.json").read_text())["model_type"] == "mamba"


def test_a_destination_holding_a_checkpoint_is_refused_and_kept(sharded_source, tmp_path, capsys):
    out = tmp_path / "out"
    assert seqzoo_main(["convert", "hf-mamba", str(sharded_source), str(out)]) == 0
    before = fingerprint(out)
    assert seqzoo_main(["convert", "hf-mamba", str(sharded_source), str(out), "--dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert "already holds a checkpoint (config.json, model.safetensors)" in err and "pass a new or empty folder" in err
    assert fingerprint(out) == before
    # A folder inside the source, or one holding other files, is a fine destination.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("hello")
    for destination in (sharded_source / "seqzoo", tmp_path / "notes"):
        assert seqzoo_main(["convert", "hf-mamba", str(sharded_source), str(destination)]) == 0
        assert (destination / "config.json").is_file()


CONVERTERS = {
    "rwkv7": lambda source, destination: rwkv7.convert_rwkv7_file(source, destination),
    "word-lm": lambda source, destination: word_lm.convert_word_lm_file(source, destination),
    "hf-mamba": lambda source, destination: hf_mamba.convert_hf_mamba_folder(source, destination),
    "llama": lambda source, destination: llama.convert_llama_folder(source, destination),
    "gpt2": lambda source, destination: gpt2.convert_gpt2_folder(source, destination),
    "mamba-ssm": lambda source, destination: mamba_ssm.convert_mamba_ssm_folder(source, destination),
    "fla-rwkv7": lambda source, destination: fla_rwkv7.convert_fla_rwkv7_folder(source, destination),
    "export": lambda source, destination: export.export_native(source, destination, "llama"),
}


@pytest.mark.parametrize("name", sorted(CONVERTERS))
@pytest.mark.parametrize("holds", ["config.json", "model-00001-of-00002.safetensors", "pytorch_model.bin"])
def test_every_converter_checks_its_destination_first(name, holds, tmp_path):
    # The check comes before the source is read: this source does not even exist.
    out = tmp_path / "out"
    out.mkdir()
    (out / holds).write_text("{}")
    with pytest.raises(ValueError, match=rf"already holds a checkpoint \({holds}\)"):
        CONVERTERS[name](tmp_path / "no-such-source", out)
    assert (out / holds).read_text() == "{}"
    with pytest.raises(ValueError, match="is a file; pass a folder"):
        CONVERTERS[name](tmp_path / "no-such-source", out / holds)
    with pytest.raises(ValueError, match="destination '' is an empty name"):  # (Path("") is the current folder)
        CONVERTERS[name](tmp_path / "no-such-source", "")


INDEX = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}


@pytest.mark.parametrize("files, index, weights", [
    (["config.json", "model.safetensors", "pytorch_model.bin"], None, ["model.safetensors"]),  # the safetensors only
    # Mistral's repositories keep a copy in Mistral's layout beside the transformers checkpoint: not downloaded
    (["config.json", "model.safetensors", "consolidated.safetensors"], None, ["model.safetensors"]),
    (["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
      "model-00002-of-00002.safetensors", "consolidated.safetensors"], INDEX,
     ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]),
    (["config.json", "model.safetensors.index.json"], {"weight_map": [1]}, ["*.safetensors"]),  # damaged: named later
    (["config.json", "weights.safetensors"], None, ["*.safetensors"]),
    (["config.json", "pytorch_model.bin"], None, ["*.bin"]),
    (None, None, ["*.safetensors", "*.bin"]),  # the listing failed (offline): snapshot_download decides from its cache
])
def test_a_hub_source_downloads_the_weight_files_transformers_reads(monkeypatch, tmp_path, files, index, weights):
    import huggingface_hub

    from seqzoo.conversions import checkpoints

    def listing(self, repo_id):
        if files is None:
            raise OSError("offline")
        return files

    asked = {}

    def snapshot(repo_id, allow_patterns):
        asked["patterns"] = allow_patterns
        return str(tmp_path)

    def one_file(repo_id, filename):
        assert filename == "model.safetensors.index.json"
        (tmp_path / filename).write_text(json.dumps(index))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", listing)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", one_file)
    assert checkpoints.download("someone/model") == tmp_path
    assert asked["patterns"] == ["*.json", "*.txt", "*.model", "*.jinja", "*.py", *weights]


def test_a_damaged_tokenizer_or_generation_file_is_refused_before_anything_is_written(sharded_source, tmp_path,
                                                                                       capsys):
    """Converters and exporters copy these files as they are: a damaged one would be handed on to the new folder."""
    (sharded_source / "generation_config.json").write_text("[]")
    code = seqzoo_main(["convert", "hf-mamba", str(sharded_source), str(tmp_path / "out")])
    assert code == 2
    assert "generation_config.json is damaged (it holds a JSON list, not an object)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_module_the_source_lacks_is_refused_before_anything_is_written(sharded_source, tmp_path, capsys):
    # tokenizer_config.json's auto_map names the tokenizer's own code; a module the folder lacked was skipped without
    # a word, and the converted folder's tokenizer failed to load later.
    auto_map = {"auto_map": {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}}
    (sharded_source / "tokenizer_config.json").write_text(json.dumps(auto_map))
    out = tmp_path / "out"
    assert seqzoo_main(["convert", "hf-mamba", str(sharded_source), str(out)]) == 2
    err = capsys.readouterr().err
    assert (f"'{sharded_source / 'tokenizer_config.json'}' names tokenizer code in its auto_map "
            f"(tokenization_x.XTokenizer) that '{sharded_source}' does not have (tokenization_x.py)") in err
    assert not out.exists()
    # fla-rwkv7 --world-tokenizer saves seqzoo's tokenizer and copies none of the folder's: not refused for it.
    assert checkpoints.check_destination(sharded_source, out, copies_tokenizer=False) == out
    (sharded_source / "tokenization_x.py").write_text("class XTokenizer: pass\n")
    assert seqzoo_main(["convert", "hf-mamba", str(sharded_source), str(out)]) == 0
    assert (out / "tokenization_x.py").read_text() == "class XTokenizer: pass\n"


def test_tokenizer_code_in_another_hub_repository_is_named_in_a_warning(tmp_path, caplog):
    source, out = tmp_path / "source", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    remote = "someone/tokenizers--tokenization_x.XTokenizer"
    (source / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": [remote, None]}}))
    (source / "x_vocab.txt").write_text("a\nb\n")
    with caplog.at_level("WARNING", logger="seqzoo"):
        copied = checkpoints.copy_tokenizer_files(source, out)
    assert copied == ["tokenizer_config.json", "x_vocab.txt"]
    assert f"names tokenizer code in another Hub repository ({remote}), which is not copied" in caplog.text


@pytest.mark.parametrize("name", sorted(CONVERTERS))
@pytest.mark.parametrize("holds", ["tokenizer.json", "tokenization_rwkv_world.py"])
def test_every_converter_refuses_a_destination_holding_tokenizer_files(name, holds, tmp_path):
    # Stale tokenizer files (of a conversion whose config and weights were removed, or which failed before writing
    # them) stayed beside the new model, and AutoTokenizer read them in place of the new source's tokenizer.
    out = tmp_path / "out"
    out.mkdir()
    (out / holds).write_text("{}")
    (out / "notes.txt").write_text("kept")
    with pytest.raises(ValueError, match=rf"already holds tokenizer files \({holds}\), of an earlier conversion"):
        CONVERTERS[name](tmp_path / "no-such-source", out)
    assert (out / holds).read_text() == "{}" and (out / "notes.txt").read_text() == "kept"


def test_removing_a_refused_checkpoint_means_its_tokenizer_files_too(sharded_source, tmp_path, capsys):
    (sharded_source / "tokenizer.json").write_text('{"model": "old"}')
    out = tmp_path / "out"
    assert seqzoo_main(["convert", "hf-mamba", str(sharded_source), str(out)]) == 0
    assert seqzoo_main(["convert", "hf-mamba", str(sharded_source), str(out)]) == 2
    assert "or remove those files and its tokenizer files (tokenizer.json) first" in capsys.readouterr().err
    for path in out.iterdir():
        if path.name != "tokenizer.json":
            path.unlink()
    assert seqzoo_main(["convert", "hf-mamba", str(sharded_source), str(out)]) == 2
    assert "already holds tokenizer files (tokenizer.json)" in capsys.readouterr().err


def _hub_snapshot(kind, folder):
    """A tiny ``kind`` checkpoint as a Hub repository's snapshot holds it: weights, a tokenizer, a generation config."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    from tests.models.test_transformer_reference import gpt2 as tiny_gpt2
    from tests.models.test_transformer_reference import llama as tiny_llama

    torch.manual_seed(0)
    make = {"llama": tiny_llama, "gpt2": tiny_gpt2,
            "hf-mamba": lambda: HFMambaForCausalLM(HFMambaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1,
                                                                 state_size=8))}[kind]
    make().save_pretrained(folder)
    words = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(99)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=words).save_pretrained(folder)
    GenerationConfig(eos_token_id=[5, 7], do_sample=True, temperature=0.6).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["llama", "gpt2", "hf-mamba"])
def test_a_hub_repo_id_converts_as_the_folder_it_downloads_to(kind, tmp_path, monkeypatch, capsys):
    """The downloaded folder was read for the weights, but the tokenizer and generation-config files were looked for
    under the repo id, which is no folder: the converted folder had no tokenizer, and the generation config of the
    model config's defaults (not the repository's end ids and sampling settings)."""
    from transformers import AutoTokenizer

    snapshot = _hub_snapshot(kind, tmp_path / "hub-cache" / "snapshot")
    downloads = []

    def download(repo_id):  # (stands in for snapshot_download: no network in the tests)
        downloads.append(repo_id)
        return snapshot

    monkeypatch.setattr(checkpoints, "download", download)
    assert seqzoo_main(["convert", kind, "someone/tiny", str(tmp_path / "from-hub")]) == 0
    assert seqzoo_main(["convert", kind, str(snapshot), str(tmp_path / "from-folder")]) == 0
    assert downloads == ["someone/tiny"]  # (once)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "from-hub" / name).read_bytes() == (tmp_path / "from-folder" / name).read_bytes()
    assert AutoTokenizer.from_pretrained(tmp_path / "from-hub")("w3 w5").input_ids == [3, 5]
    generation = json.loads((tmp_path / "from-hub" / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["temperature"]) == ([5, 7], 0.6)

    # The downloaded folder's tokenizer files are checked as a local folder's, before anything is written.
    auto_map = {"auto_map": {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}}
    (snapshot / "tokenizer_config.json").write_text(json.dumps(auto_map))
    capsys.readouterr()
    assert seqzoo_main(["convert", kind, "someone/tiny", str(tmp_path / "refused")]) == 2
    assert "names tokenizer code in its auto_map (tokenization_x.XTokenizer)" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    # A destination refused costs no download.
    assert seqzoo_main(["convert", kind, "someone/tiny", str(tmp_path / "from-hub")]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err and len(downloads) == 2


def test_a_damaged_tokenizer_file_that_is_not_copied_is_no_obstacle(sharded_source, tmp_path):
    # fla-rwkv7 --world-tokenizer saves seqzoo's tokenizer and copies none of the folder's files: a damaged
    # tokenizer_config.json there was refused as one that "would be copied".
    (sharded_source / "tokenizer_config.json").write_text('{"auto_map": ')
    with pytest.raises(ValueError, match=r"tokenizer_config.json is damaged .* it would be copied into"):
        checkpoints.check_destination(sharded_source, tmp_path / "out")
    assert checkpoints.check_destination(sharded_source, tmp_path / "out", copies_tokenizer=False) == tmp_path / "out"


@pytest.mark.parametrize("eos, kept", [(100, None), ([2, 100], [2])])
def test_token_ids_outside_the_vocabulary_leave_the_saved_generation_config_too(eos, kept, tmp_path, caplog):
    """config.json drops an end id outside the vocabulary (valid_token_ids); the source's generation_config.json,
    once copied over the one the model wrote, put it back (the model now carries the source's, without it)."""
    from transformers import AutoConfig, GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                 num_attention_heads=2, eos_token_id=eos)).save_pretrained(tmp_path / "src")
    GenerationConfig(bos_token_id=1, eos_token_id=eos, pad_token_id=0, temperature=0.7,
                     do_sample=True).save_pretrained(tmp_path / "src")
    with caplog.at_level("WARNING", logger="seqzoo"):
        llama.convert_llama_folder(tmp_path / "src", tmp_path / "out")
    generation = GenerationConfig.from_pretrained(tmp_path / "out")
    assert generation.eos_token_id == AutoConfig.from_pretrained(tmp_path / "out").eos_token_id == kept
    assert (generation.bos_token_id, generation.pad_token_id, generation.temperature) == (1, 0, 0.7)  # (the rest kept)
    assert f"the generation config of the llama source sets eos_token_id={eos!r}" in caplog.text


def test_a_hub_repo_ids_tokenizer_code_is_downloaded_with_it(tmp_path, monkeypatch):
    """The download fetched no *.py, so a repository whose tokenizer has code of its own (tokenizer_config.json's
    auto_map, as early Yi revisions) was refused for lacking the module the download had left out. snapshot_download
    is emulated as it works: the repository's files that match the patterns asked for."""
    import fnmatch
    import shutil

    import huggingface_hub

    remote = _hub_snapshot("llama", tmp_path / "remote")
    (remote / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["tokenization_yi.YiTokenizer", None]}}))
    (remote / "tokenization_yi.py").write_text("# the tokenizer's code (never run here)\n")

    class Api:
        def list_repo_files(self, repo_id):
            return sorted(path.name for path in remote.iterdir())

    def snapshot_download(repo_id, allow_patterns=None):
        snapshot = tmp_path / "cache" / "snapshots" / "abc"
        snapshot.mkdir(parents=True, exist_ok=True)
        for path in remote.iterdir():
            if any(fnmatch.fnmatch(path.name, pattern) for pattern in allow_patterns):
                shutil.copy(path, snapshot / path.name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert seqzoo_main(["convert", "llama", "someone/yi-like", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "tokenization_yi.py").read_text() == "# the tokenizer's code (never run here)\n"


@pytest.mark.parametrize("command", ["rwkv7", "word-lm --hidden"])
def test_a_checkpoint_whose_pickle_would_run_code_is_refused_and_runs_nothing(tmp_path, capsys, command):
    # A .pth / hidden-state file from elsewhere whose pickle calls open() while it is read (weights_only=False would).
    import torch

    from seqzoo.cli import main

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"emb.weight": torch.zeros(4, 2), "payload": Payload()}, tmp_path / "planted.pth")
    if command == "rwkv7":
        argv = ["convert", "rwkv7", str(tmp_path / "planted.pth"), str(tmp_path / "out")]
    else:
        parts = {"encoder": torch.nn.Embedding(10, 4), "rnn": torch.nn.LSTM(4, 4), "decoder": torch.nn.Linear(4, 10)}
        torch.save({f"{name}.{key}": value for name, part in parts.items() for key, value in part.state_dict().items()},
                   tmp_path / "weights.pt")
        argv = ["convert", "word-lm", str(tmp_path / "weights.pt"), str(tmp_path / "out"), "--hidden",
                str(tmp_path / "planted.pth")]
    assert main(argv) == 2
    assert "pickled Python objects" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()

