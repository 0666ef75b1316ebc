"""The RWKV World tokenizer against BlinkDL's ``rwkv`` package's own tokenizer, and in the places users meet it:
a converted model folder, ``pipeline("text-generation")``, and a Python without seqzoo (``trust_remote_code``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("rwkv", reason="BlinkDL's rwkv package is not installed (pip install rwkv; it is in the dev extra)")

from rwkv.rwkv_tokenizer import TRIE_TOKENIZER  # noqa: E402
from transformers import AutoTokenizer, pipeline  # noqa: E402

from seqzoo.cli import main as seqzoo_main  # noqa: E402
from seqzoo.conversions.world_tokenizer import WORLD_VOCAB_SIZE, rwkv_vocab_path, world_tokenizer  # noqa: E402
from tests.models.test_rwkv7_reference import random_x070_checkpoint  # noqa: E402

CORPUS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Grüße aus Köln — naïve café, façade, Ångström, Ελληνικά, русский текст",
    ("自然语言处理是人工智能领域中的一个重要方向。"
     "它研究能实现人与计算机之间用自然语言进行有效通信的各种理论和方法，") * 12,
    "日本語のテキスト、한국어 문장, ภาษาไทย, العربية, עברית, हिन्दी",
    "emoji 😀🎉 family 👩‍👩‍👧‍👦 flags 🇩🇪🇯🇵 skin 👍🏽 keycap 1️⃣",
    "def fib(n: int) -> int:\n\tif n < 2:\n\t\treturn n\n    return fib(n - 1) + fib(n - 2)  # recursion\n\n\n",
    "    \t  \n\r\n   \u3000 leading and trailing whitespace runs" + " " * 300 + "\n" * 40 + "\t" * 9,
    "<|endoftext|> is text here, as in the rwkv package; so is <s> and [UNK]",
    "x" * 2000 + "=" * 500 + "https://example.com/a/very/long/url?with=query&and=params#fragment" * 5,
    "mixed 中文English混合 text…\n。\n，\n",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    return world_tokenizer()


@pytest.fixture(scope="module")
def reference():
    return TRIE_TOKENIZER(str(rwkv_vocab_path()))


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_encode_and_decode_as_the_rwkv_package(tokenizer, reference, text):
    expected = reference.encode(text)
    ids = tokenizer(text)["input_ids"]
    assert ids == expected
    assert tokenizer.decode(ids) == text == (reference.decode(expected) if expected else "")


def test_vocabulary_and_special_tokens(tokenizer):
    assert tokenizer.vocab_size == 65530 and max(tokenizer.get_vocab().values()) < WORLD_VOCAB_SIZE
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == tokenizer.bos_token_id == 0
    assert tokenizer.decode([0, 33, 34, 35], skip_special_tokens=True) == " !\""
    batch = tokenizer(["a b c", "中文"], padding=True)
    assert batch["input_ids"][1][0] == 0 and batch["attention_mask"][1][0] == 0  # left padding with id 0
    with pytest.raises(ValueError, match="outside the RWKV World vocabulary"):
        tokenizer.decode([70000])


def test_the_models_unused_rows_decode_as_the_replacement_character(tokenizer, caplog):
    # Ids 65530-65535 are rows of every World model's embedding that no text maps to; a model may still pick one,
    # and the error lost the whole text decoded with it (`seqzoo generate` printed nothing of it).
    import logging

    with caplog.at_level(logging.WARNING):
        assert tokenizer.decode([33, 65533, 34, 65535]) == " \ufffd!\ufffd"  # (ids 33 and 34 are " " and "!")
    assert "token id 65533 is one of the World model's unused rows (the vocabulary ends at 65529)" in caplog.text
    assert tokenizer.decode([65529]) != "\ufffd"  # (the vocabulary's last token is text)
    for outside in (65536, -1):
        with pytest.raises(ValueError, match="outside the RWKV World vocabulary .*65530-65535 unused rows"):
            tokenizer.decode([outside])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A random x070 checkpoint with the World vocabulary size, converted with the tokenizer by the CLI."""
    folder = tmp_path_factory.mktemp("world")
    sd = random_x070_checkpoint(vocab=WORLD_VOCAB_SIZE, hidden=32, layers=1, head_size=16, ffn=64, seed=3)
    torch.save(sd, folder / "model.pth")
    assert seqzoo_main(["convert", "rwkv7", str(folder / "model.pth"), str(folder / "out"), "--world-tokenizer",
                        "--set", "bos_token_id=0", "eos_token_id=0", "pad_token_id=0"]) == 0
    return folder / "out"


def test_a_checkpoint_of_another_vocabulary_is_refused_before_anything_is_written(tmp_path, capsys):
    # A Pile / GPT-NeoX RWKV-7 (50304 rows) would read World ids as its own tokens, silently.
    torch.save(random_x070_checkpoint(vocab=67, hidden=32, layers=1, head_size=16, ffn=64), tmp_path / "pile.pth")
    assert seqzoo_main(["convert", "rwkv7", str(tmp_path / "pile.pth"), str(tmp_path / "out"),
                        "--world-tokenizer"]) == 2
    assert "embedding has 67 rows, but RWKV World models have 65536" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_that_cannot_be_built_leaves_no_half_written_folder(tmp_path, monkeypatch, capsys):
    from seqzoo.conversions import world_tokenizer as module

    def missing():
        raise ValueError("the installed rwkv package has no rwkv_vocab_v20230424.txt")

    monkeypatch.setattr(module, "world_tokenizer", missing)
    torch.save(random_x070_checkpoint(vocab=WORLD_VOCAB_SIZE, hidden=32, layers=1, head_size=16, ffn=64),
               tmp_path / "model.pth")
    assert seqzoo_main(["convert", "rwkv7", str(tmp_path / "model.pth"), str(tmp_path / "out"),
                        "--world-tokenizer"]) == 2
    assert "rwkv_vocab_v20230424.txt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_converted_folder_generates_through_a_pipeline(converted, tokenizer):
    assert sorted(p.name for p in converted.iterdir() if "token" in p.name or "vocab" in p.name) == [
        "rwkv_world_vocab.json", "tokenization_rwkv_world.py", "tokenizer_config.json"]
    loaded = AutoTokenizer.from_pretrained(converted)  # seqzoo is imported: no trust_remote_code needed
    assert loaded("中文 😀 code\n\t")["input_ids"] == tokenizer("中文 😀 code\n\t")["input_ids"]
    generator = pipeline("text-generation", model=str(converted))
    prompt = "The RWKV 语言模型 🚀"
    text = generator(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    direct = generator.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert text == tokenizer.decode(direct[0], skip_special_tokens=True) and text.startswith(prompt)


def test_loads_with_trust_remote_code_where_seqzoo_is_absent(converted, tmp_path):
    # The converted folder, and the bundle `seqzoo publish` builds from it, both carry the tokenizer's code.
    bundle = tmp_path / "bundle"
    assert seqzoo_main(["publish", str(converted), "someone/rwkv7-world", "--dry-run", "--output", str(bundle)]) == 0
    assert (bundle / "tokenization_rwkv_world.py").is_file() and (bundle / "rwkv_world_vocab.json").is_file()
    script = (
        "import json, sys\n"
        "sys.modules['seqzoo'] = None  # import seqzoo now fails\n"
        "from transformers import AutoTokenizer\n"
        "results = []\n"
        "for folder in sys.argv[2:]:\n"
        "    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)\n"
        "    ids = tokenizer(sys.argv[1])['input_ids']\n"
        "    results.append([type(tokenizer).__module__, ids, tokenizer.decode(ids)])\n"
        "print(json.dumps(results))\n"
    )
    text = "seqzoo-free 中文 😀\n\tdef f(): pass"
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script, text, str(converted), str(bundle)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = TRIE_TOKENIZER(str(rwkv_vocab_path())).encode(text)
    for module, ids, decoded in json.loads(result.stdout.strip().splitlines()[-1]):
        assert module.startswith("transformers_modules.") and ids == expected and decoded == text


def test_the_converted_config_takes_the_tokenizers_token_ids(tmp_path, capsys):
    """Without --set, a config with no end-of-text id generated past <|endoftext|>; --set still wins."""
    from transformers import AutoConfig, GenerationConfig

    sd = random_x070_checkpoint(vocab=WORLD_VOCAB_SIZE, hidden=32, layers=2, head_size=16, ffn=72, seed=7)
    torch.save(sd, tmp_path / "model.pth")
    assert seqzoo_main(["convert", "rwkv7", str(tmp_path / "model.pth"), str(tmp_path / "out"),
                        "--world-tokenizer"]) == 0
    for config in (AutoConfig.from_pretrained(tmp_path / "out"), GenerationConfig.from_pretrained(tmp_path / "out")):
        assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 0, 0)
    assert seqzoo_main(["convert", "rwkv7", str(tmp_path / "model.pth"), str(tmp_path / "set"), "--world-tokenizer",
                        "--set", "eos_token_id=5"]) == 0
    config = AutoConfig.from_pretrained(tmp_path / "set")
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 0, 5)

    # fla's RWKV7Config defaults to bos 1, eos 2: with the World tokenizer they become its 0, and that is said.
    from safetensors.torch import save_file

    from tests.conversions.test_peer_layouts import FLA_CONFIG, fla_layout

    (tmp_path / "fla").mkdir()
    save_file({k: v.contiguous() for k, v in fla_layout(sd).items()}, tmp_path / "fla" / "model.safetensors")
    fla_config = {**FLA_CONFIG, "vocab_size": WORLD_VOCAB_SIZE, "bos_token_id": 1, "eos_token_id": 2}
    (tmp_path / "fla" / "config.json").write_text(json.dumps(fla_config))
    capsys.readouterr()
    assert seqzoo_main(["convert", "fla-rwkv7", str(tmp_path / "fla"), str(tmp_path / "from-fla"),
                        "--world-tokenizer"]) == 0
    assert "bos_token_id 1 -> 0, eos_token_id 2 -> 0" in capsys.readouterr().out
    for config in (AutoConfig.from_pretrained(tmp_path / "from-fla"),
                   GenerationConfig.from_pretrained(tmp_path / "from-fla")):
        assert (config.bos_token_id, config.eos_token_id) == (0, 0)


def test_added_tokens_get_new_ids_are_matched_and_decode(tmp_path):
    """get_vocab() left the added tokens out (transformers numbers new ones from its length: a second add_tokens
    reused ids), split_special_tokens skipped every added token when encoding, and decoding read an added token as
    byte symbols (a UnicodeEncodeError for CJK text)."""
    tokenizer = world_tokenizer()
    assert tokenizer.add_tokens(["<|user|>"]) == 1 and tokenizer.add_tokens(["café", "日本語"]) == 2
    ids = tokenizer.convert_tokens_to_ids(["<|user|>", "café", "日本語"])
    assert len(set(ids)) == 3 and min(ids) >= WORLD_VOCAB_SIZE - 6 and len(tokenizer) == max(ids) + 1
    encoded = tokenizer("hi <|user|> café")["input_ids"]
    assert ids[0] in encoded and ids[1] in encoded
    assert tokenizer.decode(encoded) == "hi <|user|> café" and tokenizer.decode([ids[2]]) == "日本語"
    # <|endoftext|> written in a text stays text, as in the rwkv package
    assert 0 not in tokenizer("a <|endoftext|> b")["input_ids"]
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("hi <|user|> café")["input_ids"] == encoded and len(loaded) == len(tokenizer)


def test_added_tokens_match_longest_first_as_transformers_does():
    """Of two added tokens where one starts the other, the longer one matches, as transformers' own Trie splits."""
    from transformers.tokenization_python import Trie

    tokenizer = world_tokenizer()
    tokenizer.add_tokens(["<|user|>", "<|user|>!"])
    trie = Trie()
    for token in ("<|user|>", "<|user|>!"):
        trie.add(token)
    text = "a <|user|>! b <|user|> c<|user|>!!"
    added = {"<|user|>", "<|user|>!"}
    assert [t for t in tokenizer.tokenize(text) if t in added] == [p for p in trie.split(text) if p in added] == [
        "<|user|>!", "<|user|>", "<|user|>!"]


def test_bytes_that_are_not_utf8_decode_as_the_replacement_character(tokenizer, reference):
    """A generation cut inside a character: the valid text stays, U+FFFD marks the cut (Python's errors="replace"
    on the bytes the rwkv package joins)."""
    ids = tokenizer.encode_bytes("a中b".encode()[:3]) + tokenizer.encode_bytes(b"\xffz")
    assert tokenizer.decode(ids) == reference.decodeBytes(ids).decode("utf-8", errors="replace") == "a\ufffd\ufffdz"


def test_a_token_outside_the_vocabulary_is_an_error_not_an_id(tokenizer):
    # There is no unknown token: a silent id (0 is the end of text) would end or corrupt a text.
    with pytest.raises(ValueError, match="'no such token' is not a token of the RWKV World vocabulary"):
        tokenizer.convert_tokens_to_ids("no such token")


def test_save_vocabulary_with_a_prefix(tokenizer, tmp_path):
    (path,) = tokenizer.save_vocabulary(str(tmp_path), "run1")
    assert os.path.basename(path) == "run1-rwkv_world_vocab.json"
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == tokenizer.encoder


@pytest.mark.parametrize(
    "lines, message",
    [
        ("1 'a' 1\n2 'bc' 3\n", r"v.txt:2 is not a World vocabulary line .*byte length 2 != 3"),
        ("1 'a' 1\n2 'b' 1\n2 'c' 1\n", r"v.txt:3 .*id 2 is on an earlier line too"),
        ("0 'z' 1\n1 'a' 1\n", r"v.txt:1 .*id 0 is not a token id \(ids start at 1; 0 is the end of text\)"),
        ("1 'a' 1\n2 b'a' 1\n", r"holds the byte string b'a' twice \(ids 1 and 2\)"),
        ("1 'a' 1\n2 print(1) 8\n", r"v.txt:2 is not a World vocabulary line"),
    ],
    ids=["length", "repeated-id", "id-0", "repeated-bytes", "not-a-literal"],
)
def test_a_damaged_vocabulary_file_is_refused_naming_the_line(tmp_path, lines, message):
    # A repeated id dropped a token and an id 0 took the end-of-text id, silently
    (tmp_path / "v.txt").write_text(lines, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        world_tokenizer(tmp_path / "v.txt")


def test_a_small_vocabulary_matches_longest_first_and_names_a_byte_it_lacks(tmp_path):
    (tmp_path / "v.txt").write_text("1 'a' 1\n2 'ab' 2\n", encoding="utf-8")
    tokenizer = world_tokenizer(tmp_path / "v.txt")
    assert tokenizer("aab")["input_ids"] == [1, 2]
    # transformers' split_special_tokens=False: a written <|endoftext|> is then the end-of-text id, not text
    assert tokenizer("a<|endoftext|>ab", split_special_tokens=False)["input_ids"] == [1, 0, 2]
    with pytest.raises(ValueError, match=r"byte 0x63 has no token in the vocabulary"):
        tokenizer("abc")


def test_a_damaged_vocabulary_json_is_refused(tmp_path):
    from seqzoo.conversions.tokenization_rwkv_world import RWKVWorldTokenizer

    (tmp_path / "rwkv_world_vocab.json").write_text(json.dumps({"<|endoftext|>": 0, "a": "1"}))
    with pytest.raises(ValueError, match="must map byte-level token strings to integer ids"):
        RWKVWorldTokenizer(str(tmp_path / "rwkv_world_vocab.json"))
    with pytest.raises(ValueError, match="needs its vocabulary file rwkv_world_vocab.json"):
        RWKVWorldTokenizer(str(tmp_path / "missing.json"))


def test_an_rwkv_package_without_its_vocabulary_is_named(tmp_path, monkeypatch):
    import importlib.machinery
    import importlib.util

    spec = importlib.machinery.ModuleSpec("rwkv", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(ValueError, match=r"the installed rwkv package has no rwkv_vocab_v20230424.txt"):
        rwkv_vocab_path()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install rwkv"):
        rwkv_vocab_path()


def test_a_damaged_tokenizer_file_of_an_fla_folder_is_no_obstacle_to_the_world_tokenizer(tmp_path, capsys):
    """--world-tokenizer copies none of the folder's tokenizer files, yet a damaged tokenizer_config.json there was
    refused as one that "would be copied"."""
    from safetensors.torch import save_file

    from tests.conversions.test_peer_layouts import FLA_CONFIG, fla_layout

    sd = random_x070_checkpoint(vocab=WORLD_VOCAB_SIZE, hidden=32, layers=2, head_size=16, ffn=72, seed=8)
    (tmp_path / "fla").mkdir()
    save_file({k: v.contiguous() for k, v in fla_layout(sd).items()}, tmp_path / "fla" / "model.safetensors")
    (tmp_path / "fla" / "config.json").write_text(json.dumps({**FLA_CONFIG, "vocab_size": WORLD_VOCAB_SIZE}))
    (tmp_path / "fla" / "tokenizer_config.json").write_text('{"auto_map": {"AutoTokenizer": [')
    assert seqzoo_main(["convert", "fla-rwkv7", str(tmp_path / "fla"), str(tmp_path / "copied")]) == 2
    assert "tokenizer_config.json is damaged" in capsys.readouterr().err
    assert seqzoo_main(["convert", "fla-rwkv7", str(tmp_path / "fla"), str(tmp_path / "world"),
                        "--world-tokenizer"]) == 0
    assert json.loads((tmp_path / "world" / "tokenizer_config.json").read_text())  # seqzoo's own
