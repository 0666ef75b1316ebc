"""Training data and steps for encoder-decoders (``task: seq2seq`` recipes): pairs of texts, tokenized with the
byte tokenizer for source and target alike.

Two sources, each answering the same questions as the language-model sources in :mod:`seqzoo.training.data`
(``train_batch(step, batch_size)``, ``eval_sets()``), with ``inputs`` = the sources (B, S), right-padded with the
pad token, and ``targets`` = the labels (B, T): the target's bytes and the end-of-sequence token, -100 after it:

- ``data.source: jsonl``: a JSON-lines file (or several) of ``{"source": ..., "target": ...}`` objects; the last
  ``eval_fraction`` of the pairs is held out for evaluation.
- ``data.source: task``: a built-in task generated without downloads, at the source lengths ``source_lengths``
  (each training pair draws one; one evaluation set per length):

  ``copy``     ``"fbbadc" -> "fbbadc"``
  ``reverse``  ``"fbbadc" -> "cdabbf"``
  ``sort``     ``"fbbadc" -> "abbcdf"``
  ``digits``   ``"seven two nine" -> "729"`` (a toy translation; the length counts digits)
  ``dates``    ``"March 9, 2024" -> "2024-03-09"`` (reordering; one length)

Sources longer than ``max_source_length`` tokens are cut there, with a warning that counts them.
"""

from __future__ import annotations

import calendar
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from seqzoo.tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID, VOCAB_SIZE, check_trainable_text
from seqzoo.training.data import (
    _EVAL_STREAM,
    IGNORE,
    _generator,
    content_hash,
    epoch_sampler,
    held_out_scored,
    json_lines,
    refuse_repeated_files,
)
from seqzoo.utils import unwrap

logger = logging.getLogger("seqzoo.training")

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _letters(gen: torch.Generator, length: int, symbols: int) -> str:
    return "".join(chr(ord("a") + int(i)) for i in torch.randint(symbols, (length,), generator=gen))


def _digits(gen: torch.Generator, length: int, symbols: int) -> tuple[str, str]:
    digits = [int(i) for i in torch.randint(10, (length,), generator=gen)]
    return " ".join(DIGIT_WORDS[d] for d in digits), "".join(map(str, digits))


def _date(gen: torch.Generator, length: int, symbols: int) -> tuple[str, str]:
    year, month = 1900 + int(torch.randint(200, (1,), generator=gen)), 1 + int(torch.randint(12, (1,), generator=gen))
    day = 1 + int(torch.randint(calendar.monthrange(year, month)[1], (1,), generator=gen))
    return f"{calendar.month_name[month]} {day}, {year}", f"{year:04d}-{month:02d}-{day:02d}"


PairFn = Callable[[torch.Generator, int, int], tuple[str, str]]
SEQ2SEQ_TASKS: dict[str, PairFn] = {
    "copy": lambda gen, n, k: (lambda s: (s, s))(_letters(gen, n, k)),
    "reverse": lambda gen, n, k: (lambda s: (s, s[::-1]))(_letters(gen, n, k)),
    "sort": lambda gen, n, k: (lambda s: (s, "".join(sorted(s))))(_letters(gen, n, k)),
    "digits": _digits,
    "dates": _date,
}
FIXED_LENGTH_TASKS = ("dates",)


def longest_pair(task: str, length: int) -> tuple[int, int]:
    """The most bytes a source and a target of ``task`` at source length ``length`` can hold."""
    if task == "digits":  # the longest digit words, a space between each two
        return length * max(map(len, DIGIT_WORDS)) + length - 1, length
    if task == "dates":  # "September 30, 1999" -> "1999-09-30"
        return max(map(len, calendar.month_name)) + len(" 30, 1999"), len("1999-09-30")
    return length, length


def encode(text: str) -> list[int]:
    """The byte tokenizer's ids of ``text`` (its UTF-8 bytes)."""
    return list(text.encode("utf-8"))


class Seq2SeqPairs:
    """(source, target) text pairs as padded id batches; see the module docstring."""

    vocab_size = VOCAB_SIZE

    def __init__(self, train: Callable[[int, int], list[tuple[str, str]]], eval_sets: dict[str, list[tuple[str, str]]],
                 name: str, max_source_length: int | None, description: dict[str, Any], num_train: int | None = None,
                 longest: dict[str, tuple[int, int]] | None = None):
        self._train, self._eval_sets, self.name = train, eval_sets, name
        self.max_source_length, self.num_train = max_source_length, num_train
        self._description = description
        self._truncated_warned = False
        self.pairs: list[tuple[str, str]] | None = None  # every pair of a file source, for check_fits (jsonl_pairs)
        # a generated task's longest (source, target) bytes at each of its source lengths, for check_fits
        self.longest: dict[str, tuple[int, int]] = longest or {}

    def check_fits(self, limit: int) -> None:
        """Refuse, before training, a pair longer than the model's ``limit`` positions: a source once
        data.max_source_length has cut it, a target with its EOS (targets are never cut); every pair of a file, the
        longest a generated task draws at each source length. The run would otherwise stop at the step that first
        drew it, with no file, setting or fix named."""
        measured = [(f"pair {index}", len(source.encode("utf-8")), len(target.encode("utf-8")),
                     "shorten or leave out that pair, or ")
                    for index, (source, target) in enumerate(self.pairs or [], start=1)]
        measured += [(f"the longest pair of {where}", source, target, "" if where in FIXED_LENGTH_TASKS
                      else "lower data.source_lengths, or ") for where, (source, target) in self.longest.items()]
        for where, source, target, shorten in measured:
            if min(source, self.max_source_length or source) > limit:
                raise ValueError(f"{self.name}: {where} has a source of {source} tokens, longer than the {limit} "
                                 "positions this model takes (model.config.max_position_embeddings); set "
                                 f"data.max_source_length={limit} to cut sources there, or raise "
                                 "max_position_embeddings")
            if target + 1 > limit:
                raise ValueError(f"{self.name}: {where} has a target of {target + 1} tokens with its EOS, longer than "
                                 f"the {limit} positions this model takes (model.config.max_position_embeddings); "
                                 f"targets are never cut: {shorten}raise max_position_embeddings")

    def model_overrides(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "tokenizer": "seqzoo byte tokenizer (UTF-8 bytes, EOS 257)",
                "max_source_length": self.max_source_length, **self._description}

    def position(self, samples_seen: int) -> dict[str, int]:
        if self.num_train is None:
            return {"samples_seen": samples_seen}
        epoch, index = divmod(samples_seen, self.num_train)
        return {"samples_seen": samples_seen, "epoch": epoch, "index_in_epoch": index}

    def batch(self, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sources (B, S) right-padded with the pad token, labels (B, T): target bytes, EOS, then -100)."""
        sources = [encode(source) for source, _ in pairs]
        limit = self.max_source_length
        if limit is not None and any(len(s) > limit for s in sources):
            cut = sum(len(s) > limit for s in sources)
            if not self._truncated_warned:
                logger.warning("%d of %d sources in a batch of %s are longer than max_source_length=%d tokens and are "
                               "cut there (raise data.max_source_length to keep them whole)", cut, len(sources),
                               self.name, limit)
                self._truncated_warned = True
            sources = [s[:limit] for s in sources]
        targets = [encode(target) + [EOS_TOKEN_ID] for _, target in pairs]
        inputs = torch.full((len(pairs), max(map(len, sources))), PAD_TOKEN_ID)
        labels = torch.full((len(pairs), max(map(len, targets))), IGNORE)
        for row, (source, target) in enumerate(zip(sources, targets)):
            inputs[row, : len(source)], labels[row, : len(target)] = torch.tensor(source), torch.tensor(target)
        return inputs, labels

    def train_batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(self._train(step, batch_size))

    def eval_pairs(self) -> dict[str, list[tuple[str, str]]]:
        return dict(self._eval_sets)

    def eval_sets(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {name: self.batch(pairs) for name, pairs in self._eval_sets.items()}

    def trained_share(self, steps: int, batch_size: int) -> dict[str, float]:
        """For each evaluation set, the share of its sources that ``steps`` training batches of ``batch_size`` also
        drew. A generated task draws training and evaluation pairs independently: where a length has few distinct
        sources (8 symbols, 2 digits: 64), evaluation measures recall of trained pairs, not generalisation."""
        trained = {source for step in range(steps) for source, _ in self._train(step, batch_size)}
        return {name: sum(source in trained for source, _ in pairs) / len(pairs)
                for name, pairs in self._eval_sets.items() if pairs}


def task_pairs(task: str, source_lengths: list[int], symbols: int, eval_samples: int, seed: int,
               max_source_length: int | None = None) -> Seq2SeqPairs:
    """A built-in task (``SEQ2SEQ_TASKS``) at the given source lengths."""
    if task not in SEQ2SEQ_TASKS:
        raise ValueError(f"unknown seq2seq task {task!r}; allowed: {', '.join(SEQ2SEQ_TASKS)}")
    if not source_lengths or min(source_lengths) < 1:
        raise ValueError(f"source_lengths={source_lengths} is invalid: a non-empty list of integers >= 1")
    if not 2 <= symbols <= 26:
        raise ValueError(f"symbols={symbols} is invalid: the letter tasks draw from 2 to 26 letters")
    make = SEQ2SEQ_TASKS[task]
    lengths = [0] if task in FIXED_LENGTH_TASKS else sorted(source_lengths)

    def train(step: int, batch_size: int) -> list[tuple[str, str]]:
        gen = _generator(seed, step)
        choice = torch.randint(len(lengths), (batch_size,), generator=gen).tolist()
        return [make(gen, lengths[c], symbols) for c in choice]

    eval_sets, longest = {}, {}
    for length in lengths:
        gen = _generator(seed, _EVAL_STREAM + length)
        name = task if task in FIXED_LENGTH_TASKS else f"length={length}"
        eval_sets[name] = [make(gen, length, symbols) for _ in range(eval_samples)]
        longest[name] = longest_pair(task, length)
    return Seq2SeqPairs(train, eval_sets, f"seq2seq-task:{task}", max_source_length,
                        {"task": task, "source_lengths": lengths, "symbols": symbols}, longest=longest)


def jsonl_pairs(paths: str | list[str], eval_fraction: float, eval_samples: int, seed: int,
                max_source_length: int | None = None) -> Seq2SeqPairs:
    """Pairs from JSON-lines files of {"source": str, "target": str}; the tail is held out for evaluation."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    refuse_repeated_files(paths)
    pairs = [pair for path in paths for pair in read_jsonl(path)]
    held_out = max(1, int(len(pairs) * eval_fraction))
    if len(pairs) - held_out < 1:
        raise ValueError(f"{', '.join(paths)} hold {len(pairs)} pair(s): too few to hold out {held_out} for "
                         "evaluation and train on the rest")
    train_pairs, held = pairs[:-held_out], pairs[-held_out:]
    eval_pairs = [held[i] for i in held_out_scored(held_out, eval_samples)]
    train = epoch_sampler(train_pairs, seed)

    data = Seq2SeqPairs(train, {"validation": eval_pairs}, "jsonl:" + ",".join(paths), max_source_length,
                        {"train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
                         "sha256": content_hash(train_pairs)}, num_train=len(train_pairs))
    data.pairs = train_pairs + eval_pairs
    return data


def read_jsonl(path: str | Path) -> list[tuple[str, str]]:
    path = Path(path)
    pairs = []
    expected = '{"source": "...", "target": "..."}'
    for number, line, row in json_lines(path, "a seq2seq data file holds one JSON object per line", expected):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("source", "target")):
            raise ValueError(f'{path}:{number}: expected an object with string fields "source" and "target"; '
                             f"got {line[:80]!r}")
        if not row["source"]:  # (an encoder reads no token of it; an empty target is its EOS alone: say nothing)
            raise ValueError(f"{path}:{number}: an empty source cannot be trained on (the encoder has no token to "
                             "read); an empty target can (the model learns to end at once)")
        for field in ("source", "target"):
            check_trainable_text(row[field], f"{path}:{number} ({field})")
        pairs.append((row["source"], row["target"]))
    if not pairs:
        raise ValueError(f"{path} holds no pairs")
    return pairs


def build_seq2seq_data(data: Any, seed: int) -> Seq2SeqPairs:
    """The pairs a ``task: seq2seq`` recipe's ``data`` section describes."""
    if data.source == "jsonl":
        return jsonl_pairs(data.path, data.eval_fraction, data.eval_samples, seed, data.max_source_length)
    return task_pairs(data.task, data.source_lengths, data.symbols, data.eval_samples, seed, data.max_source_length)


# ----------------------------------------------------------------------------------------------------------------
# Steps: what the training loop runs for an encoder-decoder instead of a language model's forward.


def is_seq2seq(model: Any) -> bool:
    return bool(getattr(unwrap(model).config, "is_encoder_decoder", False))


def seq2seq_logits(model: Any, sources: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Teacher-forced logits (B, T, V) of the labels given the sources (pad tokens masked out)."""
    inner = unwrap(model)
    decoder_input_ids = inner.prepare_decoder_input_ids_from_labels(labels)
    mask = (sources != inner.config.pad_token_id).long()
    return model(input_ids=sources, attention_mask=mask, decoder_input_ids=decoder_input_ids, use_cache=False).logits


@torch.no_grad()
def exact_match(model: Any, pairs: list[tuple[str, str]], batch_size: int = 64,
                max_source_length: int | None = None) -> float:
    """Share of sources whose greedy generation is exactly the target (then the end-of-sequence token)."""
    data = Seq2SeqPairs(lambda step, size: [], {}, "exact-match", max_source_length, {})
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        sources, labels = data.batch(chunk)
        mask = (sources != PAD_TOKEN_ID).long()
        output = model.generate(sources, attention_mask=mask, max_new_tokens=labels.shape[1], do_sample=False,
                                pad_token_id=PAD_TOKEN_ID, eos_token_id=EOS_TOKEN_ID)[:, 1:]
        for row, (_, target) in enumerate(chunk):
            want = encode(target) + [EOS_TOKEN_ID]
            correct += output[row, : len(want)].tolist() == want
    model.train(was_training)
    return correct / max(len(pairs), 1)


__all__ = ["SEQ2SEQ_TASKS", "Seq2SeqPairs", "build_seq2seq_data", "exact_match", "is_seq2seq", "jsonl_pairs",
           "read_jsonl", "seq2seq_logits", "task_pairs"]
