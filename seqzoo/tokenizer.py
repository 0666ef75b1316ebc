"""The byte-level tokenizer that ships with seqzoo: every UTF-8 byte is a token, no download, no merges.

Ids 0-255 are the bytes themselves, 256 is ``<|pad|>`` and 257 is ``<|endoftext|>`` (beginning and end of text), so
``vocab_size=258``. It is a plain ``tokenizers`` model saved as tokenizer.json, so ``AutoTokenizer.from_pretrained``
loads it anywhere transformers is installed, with or without seqzoo.
"""

from __future__ import annotations

import json
import numbers
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedConfig, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import LARGE_INTEGER

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN_ID = 256
EOS_TOKEN_ID = 257
VOCAB_SIZE = 258


# The byte tokenizer's special ids, by the config field that names each (its bos is its eos).
BYTE_SPECIAL_IDS = {"pad_token_id": PAD_TOKEN_ID, "bos_token_id": EOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID}


def ids_other_than_bytes(values: dict[str, Any]) -> list[str]:
    """``"name=value"`` for each special token id among ``values`` (a config's fields or a recipe's ``model.config``)
    that the byte tokenizer does not hold. Unset (None) is taken, and an id written as a one-id list (``[257]``, as
    eos lists are written): the tokenizer saved beside a model gives the ids it generates and pads with."""
    return [f"{name}={values[name]!r}" for name, own in BYTE_SPECIAL_IDS.items()
            if name in values and values[name] not in (None, own, [own])]


def check_utf8(text: str, where: str) -> None:
    """Refuse text that has no UTF-8 bytes: a lone surrogate (``"\\ud800"``, which a JSON escape or a Python string
    can hold) stopped training with a bare UnicodeEncodeError at the step that first drew it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{where}: the text holds {text[err.start]!r} at character {err.start}, a lone surrogate, "
                         "which has no UTF-8 bytes to train on: remove it or write the character it stood for") from err


def check_trainable_text(text: str, where: str) -> None:
    """Refuse ``text`` of labelled or paired data (``where``: its file and line) that holds ``<|pad|>`` or
    ``<|endoftext|>`` -- training encodes its bytes, but the tokenizer saved beside the model (which pipelines and
    generation use) reads each as one special token, so the model would be trained on another input than it gets --
    or that has no UTF-8 bytes (:func:`check_utf8`)."""
    for token, token_id in ((PAD_TOKEN, PAD_TOKEN_ID), (EOS_TOKEN, EOS_TOKEN_ID)):
        if token in text:
            raise ValueError(f"{where}: the text holds {token!r}, which the saved tokenizer reads as its special token "
                             f"(id {token_id}) while training would read its bytes: remove or rewrite it")
    check_utf8(text, where)


@lru_cache(maxsize=1)
def _byte_symbols() -> dict[int, str]:
    # The GPT-2 byte-to-unicode table: printable bytes map to themselves, the rest to unused code points, so every
    # byte has a visible, distinct symbol inside the BPE vocabulary.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    symbols = dict(zip(printable, map(chr, printable)))
    extra = 0
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return symbols


def byte_tokenizer(model_max_length: int = 1_000_000, padding_side: str = "left") -> PreTrainedTokenizerFast:
    """seqzoo's byte-level tokenizer (ids 0-255 the UTF-8 bytes, 256 pad, 257 EOS); left padding by default, where a
    causal LM generates from the end of every row. ``model_max_length`` is the longest input ``truncation=True``
    keeps: a positive integer (0 cut every text to nothing, a negative one failed at the first call with an
    OverflowError, a string or float with a TypeError)."""
    if isinstance(model_max_length, bool) or not isinstance(model_max_length, numbers.Integral) or model_max_length < 1:
        raise ValueError(f"byte_tokenizer: model_max_length={model_max_length!r} must be a positive integer, the "
                         "longest input in tokens that truncation keeps")
    model_max_length = int(model_max_length)  # (a numpy integer too)
    vocab = {symbol: byte for byte, symbol in _byte_symbols().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([PAD_TOKEN, EOS_TOKEN])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        model_max_length=model_max_length,
        padding_side=padding_side,
    )
    assert tokenizer.pad_token_id == PAD_TOKEN_ID and tokenizer.eos_token_id == EOS_TOKEN_ID
    return tokenizer


def tokenizer_for(model: Any, saved: Any = None) -> PreTrainedTokenizerFast:
    """The byte tokenizer saved beside ``model`` (a model, or its config): its ``model_max_length`` is the longest
    input the model's positions allow (``config.max_input_length``), so that ``truncation=True`` (pipelines, a user's
    own call) cuts an input there instead of passing it on to fail in the model. A causal LM's pads on the left, as
    ``generate()`` wants a batch of prompts; every other model's on the right: an encoder-decoder's, as transformers'
    ``DataCollatorForSeq2Seq`` needs its labels, and a classifier's or a backbone's, so that the token indices a
    token-classification pipeline reports for a batch count from each text's start (seqzoo's models read either side
    alike). Given a config, the model is taken to be its causal LM (or its encoder-decoder).

    ``saved``: the byte tokenizer the model was saved with (:func:`saved_byte_tokenizer`), which is returned, with
    its added tokens, chat template and other settings, and the padding side and length set as above (a model
    without a position limit keeps its ``model_max_length``)."""
    config = getattr(model, "config", model)
    if not isinstance(config, PreTrainedConfig):  # (None, a preset's name: a byte tokenizer for nothing in particular)
        raise TypeError(f"tokenizer_for takes a model or its config; got {type(model).__name__} {model!r:.60} "
                        "(for a preset, tokenizer_for(seqzoo.create_model(name)); seqzoo.byte_tokenizer() is the "
                        "byte tokenizer itself)")
    if getattr(config, "is_encoder_decoder", False):
        side = "right"
    elif config is model:
        side = "left"
    else:
        side = "left" if model.can_generate() else "right"
    longest = getattr(config, "max_input_length", None)
    if saved is not None:
        saved.padding_side = side
        if longest is not None:
            saved.model_max_length = longest
        return saved
    return byte_tokenizer(padding_side=side) if longest is None else byte_tokenizer(longest, padding_side=side)


def _byte_probe() -> str:
    """A text whose UTF-8 bytes are every byte UTF-8 uses: ASCII, and a character of every lead byte with
    continuation bytes 0x80-0xBF."""
    ascii_text = "".join(map(chr, range(128)))
    two = [bytes([lead, cont]) for lead in range(0xC2, 0xE0) for cont in (0x80, 0xBF)]
    two += [bytes([0xC2, cont]) for cont in range(0x80, 0xC0)]
    three = [bytes([lead, 0xA0 if lead == 0xE0 else 0x80, 0x80]) for lead in range(0xE0, 0xF0)]
    four = [bytes([lead, 0x90 if lead == 0xF0 else 0x80, 0x80, 0x80]) for lead in range(0xF0, 0xF5)]
    return ascii_text + b"".join(two + three + four).decode("utf-8")


def byte_tokenizer_problem(tokenizer: Any, vocab_size: int | None = None) -> str:
    """What makes ``tokenizer`` other than seqzoo's byte tokenizer, with whatever tokens, chat template or settings
    were added to it (empty when nothing does): it must encode a text as its UTF-8 bytes and decode them back, hold
    ``<|pad|>`` as its pad token (id 256) and ``<|endoftext|>`` as its eos (257), and have no more tokens than
    ``vocab_size``, the model's embedding rows."""
    name = type(tokenizer).__name__
    if not callable(getattr(tokenizer, "decode", None)) or not hasattr(tokenizer, "pad_token_id"):
        return f"it is a {name}, not a transformers tokenizer"
    probe = _byte_probe()
    expected = list(probe.encode("utf-8"))
    try:
        ids = list(tokenizer(probe, verbose=False)["input_ids"])  # (no warning of a length past model_max_length)
        decoded = tokenizer.decode(expected)
    except Exception as err:  # noqa: BLE001 -- (another tokenizer's failure is the answer: it is not this one)
        return f"{name} failed to encode and decode UTF-8 text ({type(err).__name__}: {err})"
    if ids != expected:
        first = next((i for i, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))
        return (f"{name} encodes a text as other ids than its UTF-8 bytes ({len(ids)} ids for {len(expected)} "
                f"bytes, the first differing at position {first})")
    if decoded != probe:
        return f"{name} decodes UTF-8 bytes as another text"
    for token, (kind, own) in {PAD_TOKEN: ("pad", PAD_TOKEN_ID), EOS_TOKEN: ("eos", EOS_TOKEN_ID)}.items():
        have = (getattr(tokenizer, f"{kind}_token", None), getattr(tokenizer, f"{kind}_token_id", None))
        if have != (token, own):
            return f"its {kind} token is {have[0]!r} (id {have[1]!r}), where the byte tokenizer's is {token!r} ({own})"
    if vocab_size is not None and len(tokenizer) > vocab_size:
        return (f"it has {len(tokenizer)} tokens, more than the {vocab_size} rows of the model's embedding "
                "(vocab_size): resize the model (model.resize_token_embeddings(len(tokenizer)))")
    return ""


def saved_byte_tokenizer(folder: Any, vocab_size: int | None = None) -> PreTrainedTokenizerFast | None:
    """The tokenizer saved in ``folder`` (:func:`load_tokenizer`) for a model trained further from it (``seqzoo train
    model.path=folder``), where it is seqzoo's byte tokenizer with what was added to it (tokens, a chat template,
    settings; :func:`byte_tokenizer_problem`); None where the folder holds no tokenizer. Another tokenizer is refused:
    a model trained on UTF-8 bytes beside it would be served with other ids than it was trained on, and a byte
    tokenizer saved in its place would lose it."""
    folder = Path(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    tokenizer = load_tokenizer(folder)
    problem = byte_tokenizer_problem(tokenizer, vocab_size)
    if problem:
        raise ValueError(f"the tokenizer saved in {str(folder)!r} is not seqzoo's byte tokenizer: {problem}. The data "
                         "are trained as UTF-8 bytes in the byte tokenizer's ids, and the model is saved with the "
                         "tokenizer of its folder (its added tokens and chat template): fine-tune a model of another "
                         "tokenizer with it, through transformers' Trainer, or save "
                         "seqzoo.tokenizer.tokenizer_for(model) into the folder in its place")
    return tokenizer


def _refuse_tokenizer_code(folder: Path) -> None:
    """Refuse a folder whose tokenizer_config.json names a tokenizer class defined by a module in the folder
    (``auto_map``) other than seqzoo's own: transformers asks on a terminal whether to run it, or, for a folder
    whose config.json is a seqzoo model's (registered, so "local code"), passes over ``auto_map`` and fails on a file
    of another tokenizer (an fla RWKV-7 folder's ``RwkvTokenizer``)."""
    try:
        auto_map = json.loads((folder / "tokenizer_config.json").read_bytes()).get("auto_map") or {}
        named = auto_map.get("AutoTokenizer") if isinstance(auto_map, dict) else None
    except (OSError, ValueError, AttributeError, RecursionError):
        return  # (no file, or a damaged one: transformers' loading names it)
    named = [entry for entry in (named if isinstance(named, list) else [named]) if isinstance(entry, str)]
    foreign = [entry for entry in named if entry.rpartition(".")[2] not in _OWN_TOKENIZER_CLASSES]
    if foreign:
        raise _tokenizer_code_refused(folder, f"{', '.join(foreign)}, ")


def _tokenizer_code_refused(where: Any, classes: str = "") -> ValueError:
    """The error for a tokenizer defined by Python code in ``where`` (``classes``: the classes ``auto_map`` names,
    followed by ", "), which seqzoo does not run."""
    return ValueError(f"{where}'s tokenizer is defined by Python code in it ({classes}auto_map in "
                      "tokenizer_config.json), which seqzoo does not run; load it yourself with "
                      "AutoTokenizer.from_pretrained(..., trust_remote_code=True) if you trust that code")


# The tokenizer classes seqzoo saves with their code (auto_map) and registers with AutoTokenizer.
_OWN_TOKENIZER_CLASSES = frozenset({"RWKVWorldTokenizer"})
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Keys holding several special tokens: a list, or (extra_special_tokens) an object of named ones.
_SPECIAL_TOKEN_LIST_KEYS = ("additional_special_tokens", "extra_special_tokens")


def _is_special_token(value: Any, plain_object: bool) -> bool:
    """Whether ``value`` is a special token as transformers reads one: its text, or an object holding it as its
    ``"content"`` and marked ``"__type": "AddedToken"`` (as save_pretrained writes one). Where ``plain_object``
    (special_tokens_map.json's single tokens and extra_special_tokens list), transformers reads an object with
    ``AddedToken(**value)``, so it needs no ``"__type"``; it needs its content everywhere."""
    if isinstance(value, str):
        return True
    return (isinstance(value, dict) and isinstance(value.get("content"), str)
            and (plain_object or value.get("__type") == "AddedToken"))


def _special_tokens_of_wrong_type(folder: Path) -> str:
    """The special tokens of ``folder``'s tokenizer_config.json / special_tokens_map.json that are neither a text nor
    an object holding one (``"eos_token": 5``, ``"additional_special_tokens": [5]``), named with their file (empty
    when none)."""
    found = []
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            values = json.loads((folder / name).read_bytes())
        except (OSError, ValueError, RecursionError):
            continue  # (missing, or damaged: named by damaged_json_files)
        if not isinstance(values, dict):
            continue
        legacy = name == "special_tokens_map.json"
        for key in _SPECIAL_TOKEN_KEYS:
            value = values.get(key)
            if value is not None and not _is_special_token(value, plain_object=legacy):
                found.append(f"{name} has {key}={json.dumps(value)}")
        for key in _SPECIAL_TOKEN_LIST_KEYS:
            value = values.get(key)
            tokens = list(value.values()) if isinstance(value, dict) else value
            plain = legacy and key == "extra_special_tokens" and isinstance(value, list)
            if value is not None and not (isinstance(tokens, list)
                                          and all(_is_special_token(token, plain) for token in tokens)):
                found.append(f"{name} has {key}={json.dumps(value)}")
    return "; ".join(found)


def _tokenizer_damaged(folder: Path, damaged: str) -> ValueError:
    return ValueError(f"{folder}'s tokenizer cannot be read: {damaged}; save the tokenizer again "
                      "(tokenizer.save_pretrained(folder))")


def _model_max_length_of_wrong_type(folder: Path) -> str:
    """tokenizer_config.json's model_max_length where it is no integer >= 1 (``"model_max_length": "512"``; a float
    above transformers' LARGE_INTEGER, 1e20, such as the 1e30 some tools write for "no limit", works: transformers
    then never truncates at it, where a 512.0 failed in every truncating call, "'float' object cannot be interpreted
    as an integer"), named with its file (empty otherwise)."""
    try:
        value = json.loads((folder / "tokenizer_config.json").read_bytes()).get("model_max_length")
    except (OSError, ValueError, RecursionError, AttributeError):
        return ""  # (missing, or damaged: named by damaged_json_files)
    if value is None or (type(value) is int and value >= 1) or (type(value) is float and value > LARGE_INTEGER):
        return ""
    return f"tokenizer_config.json has model_max_length={json.dumps(value)}"


def load_tokenizer(source: Any) -> PreTrainedTokenizerFast:
    """``AutoTokenizer.from_pretrained(source, trust_remote_code=False)``, with a clear error for a local folder that
    holds no tokenizer (transformers would otherwise talk about sentencepiece or tiktoken not being installed) or one
    defined by code in the folder."""
    from transformers import AutoTokenizer

    if not isinstance(source, (str, os.PathLike)) or not str(source):
        # (None was looked up on the Hub as a repository named "None", retried for about 30 s)
        raise TypeError(f"load_tokenizer takes a folder or a Hub repository id (a str or a path); got {source!r:.60}")
    folder = Path(source)
    if folder.is_absolute() and not folder.exists():  # (an absolute path is no Hub id: transformers said it was one)
        raise ValueError(f"load_tokenizer: no folder {str(folder)!r} here")
    if folder.is_file():  # (transformers read it as a Hub id: "Repo id must be in the form 'repo_name' or ...")
        raise ValueError(f"load_tokenizer: {str(folder)!r} is a file; give the folder that holds the tokenizer's files "
                         f"({' and '.join(TOKENIZER_FILES)}), such as {str(folder.parent)!r}")
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"{folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); save the model's tokenizer into it with "
            "tokenizer.save_pretrained(folder) (seqzoo.byte_tokenizer() is seqzoo's byte-level one; `seqzoo new` and "
            "`seqzoo train` save it)"
        )
    if folder.is_dir():
        from seqzoo.models.loading import damaged_json_files

        # (transformers passes over a tokenizer_config.json that is a folder or a link to nothing, or written with a
        # byte-order mark, and loads the tokenizer without its special tokens and padding side; tokenizer.json, which
        # may be large, is read only where the load fails)
        damaged = damaged_json_files(folder, ("tokenizer_config.json", "special_tokens_map.json"))
        if damaged:
            raise _tokenizer_damaged(folder, damaged)
        _refuse_tokenizer_code(folder)
        length = _model_max_length_of_wrong_type(folder)
        if length:  # (it loaded, and every call that pads or truncates failed: "'>' not supported between ...")
            raise ValueError(f"{folder}'s tokenizer cannot be read: {length}; it is the number of tokens the model "
                             "reads at most, an integer >= 1 (or a number above 1e20: no limit): save the tokenizer "
                             "again (tokenizer.save_pretrained(folder))")
    try:
        # (never transformers' interactive "run the custom code? [y/N]" prompt, nor code from the folder: seqzoo's own
        # tokenizer classes are registered, and load without it)
        return AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as err:
        if "trust_remote_code" in str(err):  # (a Hub repository's, read by transformers)
            raise _tokenizer_code_refused(folder if folder is not None else source) from None
        from seqzoo.models.loading import damaged_json_files

        damaged = damaged_json_files(folder, (*TOKENIZER_FILES, "special_tokens_map.json")) if folder else None
        if damaged:  # (the tokenizers library's error names no file: "expected value at line 1 column 1")
            raise _tokenizer_damaged(folder, damaged) from err
        wrong = _special_tokens_of_wrong_type(folder) if folder is not None else ""
        if wrong:  # (transformers' TypeError names the token, not the file nor what it holds)
            raise ValueError(f"{folder}'s tokenizer cannot be read: {wrong}; a special token is its text "
                             '("<|endoftext|>"), or an object {"__type": "AddedToken", "content": ...}: save the '
                             'tokenizer again '
                             "(tokenizer.save_pretrained(folder))") from err
        if folder is not None and not (folder / "tokenizer.json").is_file() and "Couldn't instantiate" in str(err):
            # (transformers' text begins "Couldn't instantiate the backend tokenizer from one of:" and goes on
            # about sentencepiece and tiktoken)
            raise ValueError(f"{folder} has tokenizer_config.json but no tokenizer.json (or another vocabulary file "
                             "its tokenizer class reads); copy it from where the model came from, or save the "
                             "tokenizer again (tokenizer.save_pretrained(folder))") from err
        raise
