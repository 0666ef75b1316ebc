"""A model folder's JSON files are judged as transformers reads them (UTF-8 text without a byte-order mark), and a key
given twice in one object is named: transformers passed over a generation_config.json or tokenizer_config.json
written with a byte-order mark (generating 20 tokens where 7 were saved; a tokenizer without its special tokens and
padding side), failed with a bare JSONDecodeError naming no file on a tokenizer.json so written, passed over a
tokenizer_config.json that is a folder or a link to nothing, and took the last of a key given twice."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

import seqzoo
from seqzoo.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved")
    seqzoo.create_model("gru-tiny", hidden_size=8, num_hidden_layers=1).save_pretrained(path)
    return path


def _rewritten(path, text, encoding="utf-8"):
    """Write ``text`` over ``path``; put the file back as it was when the block ends."""
    import contextlib

    @contextlib.contextmanager
    def rewritten():
        saved = path.read_bytes()
        path.write_text(text, encoding=encoding)
        try:
            yield
        finally:
            path.write_bytes(saved)

    return rewritten()


def test_a_generation_config_with_a_byte_order_mark_is_named(folder):
    path = folder / "generation_config.json"
    values = {**json.loads(path.read_text()), "max_new_tokens": 7}
    with _rewritten(path, json.dumps(values), encoding="utf-8-sig"):  # (as Windows' Notepad saves it)
        with pytest.raises(ValueError, match=r"generation_config\.json is damaged \(it begins with a byte-order mark"):
            AutoModelForCausalLM.from_pretrained(folder)


def test_a_key_given_twice_in_a_generation_config_or_config_json_is_named(folder):
    path = folder / "generation_config.json"
    text = path.read_text().rstrip().rstrip("}") + ', "max_new_tokens": 2, "max_new_tokens": 5}'
    with _rewritten(path, text):
        with pytest.raises(ValueError, match=r"generation_config\.json is damaged \(key 'max_new_tokens' is given "
                                             r"twice in one object\)"):
            AutoModelForCausalLM.from_pretrained(folder)
    path = folder / "config.json"
    assert '"dropout": 0.0' in path.read_text()
    with _rewritten(path, path.read_text().replace('"dropout": 0.0', '"dropout": 0.0, "dropout": 0.5')):
        with pytest.raises(ValueError, match=r"config\.json is damaged \(key 'dropout' is given twice in one object\)"):
            AutoModelForCausalLM.from_pretrained(folder)


@pytest.fixture
def tokenizer_folder(tmp_path):
    seqzoo.byte_tokenizer().save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", ["tokenizer_config.json", "tokenizer.json"])
def test_a_tokenizer_file_with_a_byte_order_mark_is_named(tokenizer_folder, name):
    path = tokenizer_folder / name
    path.write_text(path.read_text(), encoding="utf-8-sig")
    with pytest.raises(ValueError, match=rf"tokenizer cannot be read: {name} is damaged \(it begins with a byte-order"):
        load_tokenizer(tokenizer_folder)


@pytest.mark.parametrize("damage", ["folder", "link", "twice"])
def test_a_damaged_tokenizer_config_is_named_not_passed_over(tokenizer_folder, damage):
    """A tokenizer_config.json that is a folder or a link to nothing loaded a tokenizer without its pad and eos
    tokens, padding on the right."""
    path = tokenizer_folder / "tokenizer_config.json"
    text = path.read_text()
    path.unlink()
    if damage == "folder":
        path.mkdir()
    elif damage == "link":
        path.symlink_to(tokenizer_folder / "gone.json")
    else:
        path.write_text(text.rstrip().rstrip("}") + ', "padding_side": "right", "padding_side": "left"}')
    message = {"folder": r"\(a folder, not a file\)", "link": r"\(a link to .*gone\.json', which does not exist\)",
               "twice": r"\(key 'padding_side' is given twice in one object\)"}[damage]
    with pytest.raises(ValueError, match=rf"tokenizer cannot be read: tokenizer_config\.json is damaged {message}"):
        load_tokenizer(tokenizer_folder)


@pytest.mark.parametrize("text, message", [
    ("", r"is damaged \(Expecting value"),  # (json's bare JSONDecodeError named no file)
    ('\ufeff{"<|endoftext|>": 0, "a": 1}', r"is damaged \(Unexpected UTF-8 BOM"),
    # (json gave the token its last id: "a" encoded as 2, and id 1 decoded as "a" still)
    ('{"<|endoftext|>": 0, "a": 1, "b": 2, "a": 2}', r"is damaged \(token 'a' is given twice, ids 1 and 2\)"),
    ('{"<|endoftext|>": 0, "a": 1, "b": 1}', r"is damaged \(id 1 is given to several tokens: 'a', 'b'\)"),
    ('{"<|endoftext|>": 0, "a": -1}', r"must map byte-level token strings to integer ids >= 0"),
])
def test_a_damaged_world_vocabulary_json_is_named(tmp_path, text, message):
    from seqzoo.conversions.tokenization_rwkv_world import RWKVWorldTokenizer

    path = tmp_path / "rwkv_world_vocab.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"rwkv_world_vocab\.json {message}"):
        RWKVWorldTokenizer(str(path))


def test_a_world_vocabulary_text_file_with_a_byte_order_mark_reads_as_without(tmp_path):
    from seqzoo.conversions.world_tokenizer import read_rwkv_vocab

    lines = "1 'a' 1\n2 b'\\xff' 1\n"
    (tmp_path / "plain.txt").write_text(lines, encoding="utf-8")
    (tmp_path / "marked.txt").write_text(lines, encoding="utf-8-sig")
    assert read_rwkv_vocab(tmp_path / "marked.txt") == read_rwkv_vocab(tmp_path / "plain.txt") == {1: b"a", 2: b"\xff"}
    (tmp_path / "latin1.txt").write_bytes(b"1 'caf\xe9' 4\n")
    with pytest.raises(ValueError, match=r"World vocabulary file '.*latin1\.txt' is not UTF-8 text"):
        read_rwkv_vocab(tmp_path / "latin1.txt")
