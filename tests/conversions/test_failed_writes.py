"""A conversion or export whose write fails midway (a full disk) leaves its destination as it was and can run again.

Written in place, a full disk left a ``config.json`` and weights that loaded without the tokenizer and with half the
code bundle (convert), or a ``config.json`` without weights (export); the error named no path, and the rerun after
freeing space was refused as a destination that already holds a checkpoint. Every converter now builds its folder
beside the destination and moves it into place when complete (``checkpoints.staged_destination``).

The full disk is a monkeypatched write that raises ENOSPC partway (tests/test_outputs.py also runs a real tmpfs).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os

import pytest
import torch
import transformers.modeling_utils
from safetensors import SafetensorError
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from seqzoo.cli import main as seqzoo_main
from seqzoo.conversions import checkpoints, llama, rwkv7, word_lm
from seqzoo.hub import bundle
from seqzoo.outputs import OutputError
from tests.conversions.test_destination import _hub_snapshot
from tests.conversions.test_peer_layouts import FLA_CONFIG, fla_layout, mamba1_pair, mamba_ssm_folder
from tests.conversions.test_word_lm import random_hidden, reference
from tests.models.test_rwkv7_reference import random_x070_checkpoint

WORLD_VOCAB_SIZE = 65536


def no_space(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def half_a_bundle(folder, spec):
    """seqzoo's save_pretrained after config.json and the weights: the first code file, then a full disk."""
    (folder / "seqzoo_cache.py").write_text("# the first code file of the bundle, cut")
    raise no_space(folder / "seqzoo_layers_attention.py")


def weights_on_a_full_disk(*args, **kwargs):
    # What safetensors raises for a full disk: no OSError, and no path.
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def _fla_folder(folder, vocab=67):
    pth = random_x070_checkpoint(vocab=vocab, hidden=32, layers=2, head_size=16, ffn=72, seed=7)
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in fla_layout(pth).items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({**FLA_CONFIG, "vocab_size": vocab}))
    return folder


def _pth(folder):
    folder.mkdir()
    torch.save(random_x070_checkpoint(vocab=67, hidden=32, layers=2, head_size=16, ffn=72, seed=7), folder / "x.pth")
    return folder / "x.pth"


def _word_lm(folder):
    folder.mkdir()
    ref = reference("lstm", seed=2)
    torch.save(ref.state_dict(), folder / "model.pt")
    (folder / "vocab.txt").write_text("\n".join(["<unk>", "<eos>", *[f"w{i}" for i in range(97)]]) + "\n")
    torch.save(random_hidden(ref, batch=1), folder / "hidden.pt")
    return folder


def _seqzoo_llama(folder):
    source = _hub_snapshot("llama", folder.with_name(folder.name + "-llama"))
    llama.convert_llama_folder(source, folder)
    return folder


# kind -> (build the source in a folder, the command line given the source and the destination, the failing write,
# what the converted folder holds)
KINDS = {
    "llama": (lambda f: _hub_snapshot("llama", f), lambda s, o: ["convert", "llama", str(s), str(o)],
              "bundle", ["tokenizer.json", "generation_config.json"]),
    "gpt2": (lambda f: _hub_snapshot("gpt2", f), lambda s, o: ["convert", "gpt2", str(s), str(o)],
             "bundle", ["tokenizer.json"]),
    "hf-mamba": (lambda f: _hub_snapshot("hf-mamba", f), lambda s, o: ["convert", "hf-mamba", str(s), str(o)],
                 "bundle", ["tokenizer.json"]),
    "mamba-ssm": (lambda f: mamba_ssm_folder(f, *mamba1_pair()), lambda s, o: ["convert", "mamba-ssm", str(s), str(o)],
                  "bundle", []),
    "fla-rwkv7": (_fla_folder, lambda s, o: ["convert", "fla-rwkv7", str(s), str(o)], "bundle", []),
    "rwkv7": (_pth, lambda s, o: ["convert", "rwkv7", str(s), str(o)], "bundle", []),
    "word-lm": (_word_lm, lambda s, o: ["convert", "word-lm", str(s / "model.pt"), str(o), "--vocab",
                                        str(s / "vocab.txt"), "--hidden", str(s / "hidden.pt")],
                "hidden state", ["tokenizer.json", "hidden_state.safetensors"]),
    "export": (_seqzoo_llama, lambda s, o: ["export", "--to", "llama", str(s), str(o)], "weights",
               ["tokenizer.json", "generation_config.json"]),
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    made = {}

    def source(kind):
        if kind not in made:
            made[kind] = KINDS[kind][0](tmp_path_factory.mktemp("sources") / kind)
        return made[kind]

    return source


def fingerprint(folder):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def fail(monkeypatch, write):
    if write == "bundle":
        monkeypatch.setattr(bundle, "write_bundle", half_a_bundle)
    elif write == "weights":
        monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", weights_on_a_full_disk)
    else:  # the hidden state, the last file word-lm writes
        def hidden_on_a_full_disk(hidden, config, path):
            raise no_space(path)

        monkeypatch.setattr(word_lm, "save_hidden_state", hidden_on_a_full_disk)


@pytest.mark.parametrize("destination", ["new", "holding notes"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_full_disk_midway_leaves_the_destination_as_it_was_and_the_rerun_works(kind, destination, sources,
                                                                                   tmp_path, monkeypatch, capsys):
    _, argv, write, extra = KINDS[kind]
    source = sources(kind)
    out = tmp_path / "out"
    if destination == "holding notes":  # (a folder with other files is a fine destination: they stay)
        out.mkdir()
        (out / "notes.txt").write_text("the user's own")
    before = fingerprint(out) if out.exists() else None
    capsys.readouterr()  # (what building the source printed)
    with monkeypatch.context() as patch:
        fail(patch, write)
        assert seqzoo_main(argv(source, out)) == 2
    assert (fingerprint(out) if out.exists() else None) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == (["out"] if out.exists() else [])  # no partial folder
    # (a file of the partial folder named by its path in the destination; safetensors names none)
    named = {"bundle": out / "seqzoo_layers_attention.py", "hidden state": out / "hidden_state.safetensors"}
    reason = f"No space left on device ({named[write]})" if write in named else "No space left on device"
    assert capsys.readouterr().err.strip() == f"error: cannot write {out}: {reason}; nothing was left there"

    assert seqzoo_main(argv(source, out)) == 0, capsys.readouterr().err
    written = {path.name for path in out.iterdir()}
    assert {"config.json", "model.safetensors", *extra} <= written
    assert ("notes.txt" in written) == (destination == "holding notes")
    assert destination == "new" or (out / "notes.txt").read_text() == "the user's own"
    if kind != "export":  # (the export has transformers' own class: no code bundle)
        assert "auto_map" in json.loads((out / "config.json").read_text())
    AutoModelForCausalLM.from_pretrained(out)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_the_python_functions_raise_an_output_error_naming_the_destination(sources, tmp_path, monkeypatch):
    # (the CLI saves an RWKV-LM checkpoint itself, with or without the World tokenizer: convert_rwkv7_file is the
    # function's own path)
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        fail(patch, "bundle")
        with pytest.raises(OutputError, match=rf"^cannot write {out}: No space left on device .*; nothing was left"):
            rwkv7.convert_rwkv7_file(sources("rwkv7"), out)
    assert list(tmp_path.iterdir()) == []
    rwkv7.convert_rwkv7_file(sources("rwkv7"), out)
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "seqzoo_rwkv7"


def test_a_copy_of_the_tokenizer_failing_leaves_no_model_without_its_tokenizer(sources, tmp_path, monkeypatch,
                                                                              capsys):
    # The last step of a folder converter: the model is written whole, then the source's tokenizer is copied.
    real_copy = checkpoints.shutil.copy2

    def copy(source, destination, **kwargs):
        if str(destination).endswith("tokenizer_config.json"):
            raise no_space(destination)
        return real_copy(source, destination, **kwargs)

    monkeypatch.setattr(checkpoints.shutil, "copy2", copy)
    out, source = tmp_path / "out", sources("llama")
    capsys.readouterr()
    assert seqzoo_main(["convert", "llama", str(source), str(out)]) == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err.strip() == (f"error: cannot write {out}: No space left on device "
                                               f"({out / 'tokenizer_config.json'}); nothing was left there")


def test_a_read_only_parent_names_the_folder_that_cannot_be_written(sources, tmp_path, monkeypatch, capsys):
    # The partial folder mkdtemp failed to make has a random name that exists nowhere: the folder it was to be made
    # in is named instead.
    import tempfile

    def read_only(prefix, suffix, dir):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir, prefix + "k2x9q1" + suffix))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    out, source = tmp_path / "out", sources("llama")
    capsys.readouterr()
    assert seqzoo_main(["convert", "llama", str(source), str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: cannot write {out}: {os.strerror(errno.EROFS)} "
                                               f"({tmp_path})")


def test_a_destination_that_is_a_link_to_a_folder_receives_the_files(sources, tmp_path):
    # Staged beside the folder the link names (a rename cannot cross filesystems); the link stays a link.
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    assert seqzoo_main(["convert", "llama", str(sources("llama")), str(tmp_path / "link")]) == 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "config.json").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link", "real"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "link")
    assert AutoTokenizer.from_pretrained(tmp_path / "link")("w3 w5").input_ids == [3, 5]
    assert model.config.vocab_size == 99


@pytest.mark.parametrize("kind", ["rwkv7", "fla-rwkv7"])
def test_the_world_tokenizer_is_written_with_the_model_or_neither_is(kind, tmp_path, monkeypatch, capsys):
    pytest.importorskip("rwkv", reason="BlinkDL's rwkv package is not installed (pip install rwkv)")
    from seqzoo.conversions.tokenization_rwkv_world import RWKVWorldTokenizer

    if kind == "rwkv7":
        source = tmp_path / "src" / "model.pth"
        source.parent.mkdir()
        torch.save(random_x070_checkpoint(vocab=WORLD_VOCAB_SIZE, hidden=32, layers=1, head_size=16, ffn=64, seed=3),
                   source)
    else:
        source = _fla_folder(tmp_path / "src", vocab=WORLD_VOCAB_SIZE)
    argv = ["convert", kind, str(source), str(tmp_path / "out"), "--world-tokenizer"]
    with monkeypatch.context() as patch:  # the tokenizer's files, written after the whole model
        def vocabulary_on_a_full_disk(self, save_directory, filename_prefix=None):
            raise no_space(os.path.join(save_directory, "rwkv_world_vocab.json"))

        patch.setattr(RWKVWorldTokenizer, "save_vocabulary", vocabulary_on_a_full_disk)
        assert seqzoo_main(argv) == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["src"]
    assert capsys.readouterr().err.strip() == (f"error: cannot write {tmp_path / 'out'}: No space left on device "
                                               f"({tmp_path / 'out' / 'rwkv_world_vocab.json'}); nothing was left "
                                               "there")
    assert seqzoo_main(argv) == 0
    written = {path.name for path in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "rwkv_world_vocab.json"} <= written


@pytest.mark.parametrize("destination", ["new", "a model folder"])
def test_save_world_tokenizer_failing_midway_leaves_the_destination_as_it_was(destination, sources, tmp_path,
                                                                              monkeypatch):
    """The public helper wrote in place: a full disk after tokenizer_config.json left a model folder whose tokenizer
    config named the World tokenizer without its vocabulary (and the folder's own tokenizer config replaced)."""
    pytest.importorskip("rwkv", reason="BlinkDL's rwkv package is not installed (pip install rwkv)")
    from seqzoo.conversions.tokenization_rwkv_world import RWKVWorldTokenizer
    from seqzoo.conversions.world_tokenizer import save_world_tokenizer

    out = tmp_path / "out"
    if destination == "a model folder":  # (a converted model with its source's tokenizer: the helper's use)
        assert seqzoo_main(["convert", "llama", str(sources("llama")), str(out)]) == 0
        assert (out / "tokenizer_config.json").is_file()
    before = fingerprint(out) if out.exists() else None
    written = []

    def vocabulary_on_a_full_disk(self, save_directory, filename_prefix=None):
        written.extend(os.listdir(save_directory))  # (what save_pretrained wrote before it)
        raise no_space(os.path.join(save_directory, "rwkv_world_vocab.json"))

    with monkeypatch.context() as patch:
        patch.setattr(RWKVWorldTokenizer, "save_vocabulary", vocabulary_on_a_full_disk)
        with pytest.raises(OutputError, match=rf"^cannot write {out}: No space left on device "
                                              rf"\({out / 'rwkv_world_vocab.json'}\); nothing was left there$"):
            save_world_tokenizer(out)
    assert "tokenizer_config.json" in written, "the failure must come halfway, after a file is written"
    assert (fingerprint(out) if out.exists() else None) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == (["out"] if out.exists() else [])  # no partial folder

    tokenizer = save_world_tokenizer(out)
    assert AutoTokenizer.from_pretrained(out)("Hello").input_ids == tokenizer("Hello").input_ids
    if before is not None:  # (the model's files stay beside it)
        after = fingerprint(out)
        assert {name: after[name] for name in ("config.json", "model.safetensors")} == \
            {name: before[name] for name in ("config.json", "model.safetensors")}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
