"""The RWKV World tokenizer as a transformers tokenizer, in one self-contained file.

This file imports only the standard library and transformers: seqzoo saves it beside a converted model (with
``auto_map`` in tokenizer_config.json), so ``AutoTokenizer.from_pretrained(folder, trust_remote_code=True)`` loads
it where seqzoo is not installed; with seqzoo installed it loads without ``trust_remote_code``.

The World vocabulary (65,529 byte strings, ids 1-65529; id 0 is the end of text) is tokenized by greedy longest
match over the UTF-8 bytes, which is what BlinkDL's ``rwkv`` package does. Decoding joins the tokens' bytes and
decodes them as UTF-8, putting U+FFFD where the bytes are not valid UTF-8 (the ``rwkv`` package returns a single
U+FFFD for the whole string then). ``<|endoftext|>`` written in the text is encoded as text, as the ``rwkv`` package
does (``split_special_tokens=True``); id 0 enters only as an id.

Why not a ``tokenizer.json``: greedy longest match is a WordPiece model with an empty continuation prefix over
byte-level symbols, and it matches exactly, but the ``tokenizers`` WordPiece looks up every substring of a word
from the longest down; text without ASCII whitespace (a paragraph of Chinese) is one word, and 1,000 Chinese
characters took 2.9 s (2,000: 20 s) against 1 ms for a trie (one run, shared 2-core machine).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from typing import Any

from transformers import PreTrainedTokenizer

logger = logging.getLogger(__name__)

VOCAB_FILE = "rwkv_world_vocab.json"
END_OF_TEXT = "<|endoftext|>"


def _byte_symbols() -> list[str]:
    # The GPT-2 byte-to-unicode table: every byte gets one printable character, so the vocabulary file is JSON text
    # and a byte string reads as itself where it is printable ASCII.
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


# The embedding rows of every RWKV World model; the ids above the vocabulary's last are no text.
MODEL_ROWS = 65536
# What an unused row decodes to: a token no vocabulary entry is (a symbol string never holds "\x00").
UNUSED_ROW = "\x00unused row"
_REPLACEMENT = "\ufffd".encode()
_WARNED_UNUSED: set[int] = set()

SYMBOLS = _byte_symbols()
# str.translate tables between latin-1 characters (one per byte) and the symbols.
TO_SYMBOLS = {byte: symbol for byte, symbol in enumerate(SYMBOLS)}
FROM_SYMBOLS = {ord(symbol): byte for byte, symbol in enumerate(SYMBOLS)}


def bytes_to_symbols(data: bytes) -> str:
    return data.decode("latin-1").translate(TO_SYMBOLS)


def symbols_to_bytes(text: str) -> bytes:
    return text.translate(FROM_SYMBOLS).encode("latin-1")


def _tokens_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook refusing a token given twice, which json would give the last id alone."""
    vocab: dict[str, Any] = {}
    for token, token_id in pairs:
        if token in vocab:
            raise ValueError(f"token {token!r} is given twice, ids {vocab[token]!r} and {token_id!r}")
        vocab[token] = token_id
    return vocab


class RWKVWorldTokenizer(PreTrainedTokenizer):
    """RWKV World tokenizer: greedy longest match over UTF-8 bytes (a trie walk per token)."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]
    # save_pretrained always writes this file and auto_map beside the vocabulary, so every saved copy (a converted
    # model, a `seqzoo publish` bundle) loads where seqzoo is absent.
    _auto_class = "AutoTokenizer"

    def __init__(self, vocab_file: str, eos_token: str = END_OF_TEXT, pad_token: str = END_OF_TEXT,
                 bos_token: str = END_OF_TEXT, split_special_tokens: bool = True, **kwargs: Any) -> None:
        if not vocab_file or not os.path.isfile(vocab_file):
            raise ValueError(f"the RWKV World tokenizer needs its vocabulary file {VOCAB_FILE} (got {vocab_file!r}); "
                             f"a folder without it has no World tokenizer")
        try:  # (json's own error named no file)
            with open(vocab_file, encoding="utf-8") as f:
                vocab = json.load(f, object_pairs_hook=_tokens_once)
        except (ValueError, RecursionError) as err:  # (not JSON or not UTF-8, a byte-order mark, a token twice)
            raise ValueError(f"{vocab_file} is damaged ({err}); save the tokenizer again") from err
        if not isinstance(vocab, dict) or not all(type(i) is int and i >= 0 for i in vocab.values()):
            raise ValueError(f"{vocab_file} must map byte-level token strings to integer ids >= 0")
        shared = next((i for i, count in Counter(vocab.values()).items() if count > 1), None)
        if shared is not None:  # (decoding would give one of them for both)
            tokens = ", ".join(repr(token) for token, i in vocab.items() if i == shared)
            raise ValueError(f"{vocab_file} is damaged (id {shared} is given to several tokens: {tokens}); save the "
                             "tokenizer again")
        self.encoder: dict[str, int] = vocab
        self.decoder: dict[int, str] = {i: token for token, i in vocab.items()}
        # The trie: one dict per node, byte -> child; a node that ends a token holds its id under the key -1.
        self.trie: dict[int, Any] = {}
        for token, token_id in vocab.items():
            if token == END_OF_TEXT:
                continue
            node = self.trie
            for byte in symbols_to_bytes(token):
                node = node.setdefault(byte, {})
            node[-1] = token_id
        kwargs.setdefault("padding_side", "left")
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(eos_token=eos_token, pad_token=pad_token, bos_token=bos_token,
                         split_special_tokens=split_special_tokens, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def get_vocab(self) -> dict[str, int]:
        # With the added tokens, as transformers' add_tokens numbers new tokens from len(get_vocab()).
        return {**self.encoder, **self.added_tokens_encoder}

    def tokenize(self, text: str, **kwargs: Any) -> list[str]:
        """``<|endoftext|>`` in the text is text (as in the ``rwkv`` package); tokens added with ``add_tokens`` /
        ``add_special_tokens`` are matched (transformers' ``split_special_tokens=True`` would ignore them)."""
        if not kwargs.get("split_special_tokens", self.split_special_tokens):
            return super().tokenize(text, **kwargs)
        added = sorted((t for t in self._added_tokens_encoder if t != END_OF_TEXT), key=len, reverse=True)
        if not added:
            return self._tokenize(text)
        pieces = re.split("(" + "|".join(map(re.escape, added)) + ")", text)
        return [token for i, piece in enumerate(pieces) if piece
                for token in ([piece] if i % 2 else self._tokenize(piece))]

    def encode_bytes(self, data: bytes) -> list[int]:
        """Greedy longest match: at each position, the longest vocabulary entry that starts there."""
        ids, start, length = [], 0, len(data)
        while start < length:
            node, best_end, best_id, i = self.trie, -1, -1, start
            while i < length:
                node = node.get(data[i])
                if node is None:
                    break
                i += 1
                if -1 in node:
                    best_end, best_id = i, node[-1]
            if best_end < 0:  # every single byte is in the World vocabulary; only a damaged file gets here
                raise ValueError(f"byte {data[start]:#04x} has no token in the vocabulary")
            ids.append(best_id)
            start = best_end
        return ids

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return [self.decoder[i] for i in self.encode_bytes(text.encode("utf-8"))]

    def _convert_token_to_id(self, token: str) -> int:
        if token not in self.encoder:
            raise ValueError(f"{token!r} is not a token of the RWKV World vocabulary")
        return self.encoder[token]

    def _convert_id_to_token(self, index: int) -> str:
        if index not in self.decoder:
            if max(self.decoder) < index < MODEL_ROWS:
                # A row of every World model's embedding that no text maps to: a model may still pick it (an
                # untrained or damaged one). Decoded as U+FFFD, as bytes that are no UTF-8 are, with a warning,
                # rather than an error that lost the whole text decoded with it.
                if index not in _WARNED_UNUSED:
                    _WARNED_UNUSED.add(index)
                    logger.warning("token id %d is one of the World model's unused rows (the vocabulary ends at %d): "
                                   "decoded as U+FFFD", index, max(self.decoder))
                return UNUSED_ROW
            raise ValueError(f"token id {index} is outside the RWKV World vocabulary (ids 0-{max(self.decoder)}, "
                             f"and {max(self.decoder) + 1}-{MODEL_ROWS - 1} unused rows of the model)")
        return self.decoder[index]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        added = self._added_tokens_encoder
        data = b"".join(_REPLACEMENT if token == UNUSED_ROW else token.encode("utf-8") if token in added
                        else symbols_to_bytes(token) for token in tokens)
        return data.decode("utf-8", errors="replace")

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.encoder, f, ensure_ascii=False)
        return (path,)
