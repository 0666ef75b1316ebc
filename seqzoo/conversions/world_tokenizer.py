"""Build the RWKV World tokenizer from the vocabulary that BlinkDL's ``rwkv`` package ships.

The vocabulary is read from the installed package (``rwkv/rwkv_vocab_v20230424.txt``; ``pip install rwkv``) at
conversion time and saved with the converted model; seqzoo does not carry a copy. Each line of that file is
``<id> <Python str or bytes literal> <byte length>``; the literal is read with ``ast.literal_eval`` (no code runs)
and its byte length checked.

    from seqzoo.conversions.world_tokenizer import world_tokenizer
    tokenizer = world_tokenizer()
    tokenizer.save_pretrained("rwkv7-world-seqzoo")    # with its code: loads anywhere with trust_remote_code=True
"""

from __future__ import annotations

import ast
import json
import tempfile
from pathlib import Path
from typing import Any

from seqzoo.conversions.tokenization_rwkv_world import (
    END_OF_TEXT,
    MODEL_ROWS,
    VOCAB_FILE,
    RWKVWorldTokenizer,
    bytes_to_symbols,
)

VOCAB_NAME = "rwkv_vocab_v20230424.txt"
WORLD_VOCAB_SIZE = MODEL_ROWS  # the embedding rows of every RWKV World model (ids above 65529 are unused)


def rwkv_vocab_path() -> Path:
    """The World vocabulary file inside the installed ``rwkv`` package."""
    import importlib.util

    spec = importlib.util.find_spec("rwkv")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the RWKV World tokenizer is built from BlinkDL's rwkv package: pip install rwkv")
    path = Path(next(iter(spec.submodule_search_locations))) / VOCAB_NAME
    if not path.is_file():
        raise ValueError(f"the installed rwkv package has no {VOCAB_NAME} (looked in {path.parent})")
    return path


def read_rwkv_vocab(path: str | Path) -> dict[int, bytes]:
    """id -> token bytes of a World vocabulary file."""
    tokens: dict[int, bytes] = {}
    try:  # utf-8-sig: a byte-order mark (Windows editors write one) is no part of the first line
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"World vocabulary file {str(path)!r} is not UTF-8 text ({err})") from err
    for number, line in enumerate(text.splitlines(), 1):
        try:
            token_id, rest = line.split(" ", 1)
            literal, length = rest.rsplit(" ", 1)
            value = ast.literal_eval(literal)
            data = value.encode("utf-8") if isinstance(value, str) else value
            if not isinstance(data, bytes) or len(data) != int(length):
                raise ValueError(f"byte length {len(data) if isinstance(data, bytes) else '?'} != {length}")
            # A repeated id would drop a token silently, an id 0 take the end-of-text id (ids run from 1)
            if int(token_id) in tokens:
                raise ValueError(f"id {token_id} is on an earlier line too")
            if int(token_id) < 1:
                raise ValueError(f"id {token_id} is not a token id (ids start at 1; 0 is the end of text)")
            tokens[int(token_id)] = data
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"{path}:{number} is not a World vocabulary line ('<id> <literal> <length>'): {err}") \
                from err
    return tokens


def world_tokenizer(vocab_path: str | Path | None = None, **kwargs: Any) -> RWKVWorldTokenizer:
    """The World tokenizer over ``vocab_path`` (default: the installed rwkv package's file). Saving it writes
    ``rwkv_world_vocab.json``, its code and ``auto_map``, so the folder loads without seqzoo."""
    tokens = read_rwkv_vocab(vocab_path or rwkv_vocab_path())
    vocab = {END_OF_TEXT: 0}
    for token_id, data in sorted(tokens.items()):
        symbols = bytes_to_symbols(data)
        if symbols in vocab:
            raise ValueError(f"the World vocabulary holds the byte string {data!r} twice (ids {vocab[symbols]} and "
                             f"{token_id})")
        vocab[symbols] = token_id
    with tempfile.TemporaryDirectory() as folder:
        vocab_file = Path(folder) / VOCAB_FILE
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        return RWKVWorldTokenizer(str(vocab_file), model_max_length=1_000_000, **kwargs)


def register_world_tokenizer() -> None:
    """Let AutoTokenizer load saved World tokenizers without ``trust_remote_code`` (``import seqzoo`` calls this):
    registered as the tokenizer class of seqzoo's RWKV-7, found by the class name in tokenizer_config.json."""
    from transformers import AutoTokenizer

    from seqzoo.models.rwkv7 import RWKV7Config

    AutoTokenizer.register(RWKV7Config, RWKVWorldTokenizer, exist_ok=True)


def save_world_tokenizer(destination: str | Path) -> RWKVWorldTokenizer:
    """Save the World tokenizer into ``destination`` (beside a converted model) and return it, whole or not at all,
    as the converters write (:func:`seqzoo.conversions.checkpoints.staged_destination`): its files are written in a
    folder beside ``destination`` and moved in only once all are, so a failure (a full disk, a missing rwkv package)
    leaves ``destination`` as it was. Written in place, a full disk left a tokenizer_config.json naming the World
    tokenizer without its vocabulary, and the model folder's tokenizer no longer loaded."""
    from seqzoo.conversions.checkpoints import staged_destination

    tokenizer = world_tokenizer()
    with staged_destination(destination) as staging:
        tokenizer.save_pretrained(staging)
    return tokenizer


__all__ = ["WORLD_VOCAB_SIZE", "read_rwkv_vocab", "register_world_tokenizer", "rwkv_vocab_path", "save_world_tokenizer",
           "world_tokenizer"]
