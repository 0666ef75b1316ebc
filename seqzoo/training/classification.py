"""Training data and steps for classifiers (``task: sequence-classification`` and ``task: token-classification``
recipes): labelled texts, tokenized with the byte tokenizer, so a trained model classifies text through
``pipeline("text-classification")`` / ``pipeline("token-classification")`` with the tokenizer saved beside it.

Two sources, each answering the same questions as the other sources (``train_batch(step, batch_size)``,
``eval_sets()``), with ``inputs`` (B, T) the texts' bytes right-padded with the pad token and ``targets`` the labels:
(B,) class ids for sequence classification, (B, T) for tagging:

- ``data.source: jsonl``: JSON-lines file(s) a user supplies; the last ``eval_fraction`` of the rows is held out.

  sequence classification: ``{"text": "a fine film", "label": "positive"}``

  token classification: ``{"tokens": ["Ada", "met", "Bob"], "tags": ["B-PER", "O", "B-PER"]}``: the words are
  joined with single spaces, and each word's tag is the target of its first byte; its other bytes and the spaces
  are -100 (not scored), as transformers' token-classification examples label the first sub-word of each word.

- ``data.source: task``: a built-in task generated without downloads, one evaluation set per distance (words per
  text; each training step takes the distances in turn, so a batch needs no padding):

  ``appears_later`` (token classification): random letters as words; each is tagged ``again`` when the same
  letter occurs later in the text, else ``last``. The letters come from ``distance / 2`` of the alphabet (2 to 26),
  so about half the words are tagged ``again`` at every distance. A left-to-right model cannot know; it can only
  guess from the position.

  ``first_letter`` (sequence classification): random words of ``symbols`` letters; the label is the first word.
  A left-to-right model must carry it through the whole text; a bidirectional encoder's right-to-left direction
  ends on it.

The label names (``id2label``, in id order) are ``data.labels`` when the recipe gives them (a label in the data
that is not among them is an error naming the line), else the distinct labels of the data, sorted. Texts longer
than ``data.seq_len`` bytes are cut there, with a warning that counts them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch

from seqzoo.tokenizer import PAD_TOKEN_ID, VOCAB_SIZE, check_trainable_text
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

LABEL_TASKS = ("sequence-classification", "token-classification")
SPACE = ord(" ")

# A row: (text, label) for sequence classification, (words, tags) for tagging; labels as names until resolved.
Row = tuple[Any, Any]


def _letters(gen: torch.Generator, count: int, symbols: int) -> list[str]:
    return [chr(ord("a") + int(i)) for i in torch.randint(symbols, (count,), generator=gen)]


def appears_later(gen: torch.Generator, distance: int, symbols: int) -> Row:
    words = _letters(gen, distance, min(26, max(2, distance // 2)))
    return words, ["again" if word in words[i + 1:] else "last" for i, word in enumerate(words)]


def first_letter(gen: torch.Generator, distance: int, symbols: int) -> Row:
    words = _letters(gen, distance, symbols)
    return " ".join(words), words[0]


GENERATED_TASKS: dict[str, dict[str, Callable[[torch.Generator, int, int], Row]]] = {
    "token-classification": {"appears_later": appears_later},
    "sequence-classification": {"first_letter": first_letter},
}
GENERATED_LABELS = {"appears_later": ["again", "last"]}  # first_letter: the letters in use


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def encode_words(words: list[str], tags: list[int]) -> tuple[list[int], list[int]]:
    """The bytes of the words joined by spaces, and each word's tag on its first byte (-100 elsewhere)."""
    ids: list[int] = []
    labels: list[int] = []
    for index, (word, tag) in enumerate(zip(words, tags)):
        if index:
            ids.append(SPACE)
            labels.append(IGNORE)
        piece = encode(word)
        ids += piece
        labels += [tag] + [IGNORE] * (len(piece) - 1)
    return ids, labels


class LabelledTexts:
    """Labelled texts as padded id batches; see the module docstring."""

    vocab_size = VOCAB_SIZE

    def __init__(self, task: str, train: Callable[[int, int], list[Row]], eval_sets: dict[str, list[Row]],
                 id2label: list[str], name: str, seq_len: int | None, description: dict[str, Any],
                 num_train: int | None = None, longest: dict[str, int] | None = None) -> None:
        self.task, self._train, self._eval_sets, self.name = task, train, eval_sets, name
        self.id2label, self.seq_len, self.num_train = list(id2label), seq_len, num_train
        self._label_ids = {label: i for i, label in enumerate(self.id2label)}
        self._description = description
        self._truncated_warned = False
        self.rows: list[Row] | None = None  # every row of a file source, for check_fits (set by jsonl_texts)
        self.longest: dict[str, int] = longest or {}  # a generated task's bytes per text at each distance

    def check_fits(self, limit: int) -> None:
        """Refuse, before training, a text longer than the model's ``limit`` positions once data.seq_len has cut it
        (every row of a file, a generated task's texts at each distance): the run would stop at the step that first
        drew it, with no file, setting or fix named."""
        tagging = self.task == "token-classification"
        measured = [(f"row {index}", len((" ".join(text) if tagging else text).encode("utf-8")), "")
                    for index, (text, _) in enumerate(self.rows or [], start=1)]
        measured += [(f"a text at {where}", length, "shorten data.distances, ")
                     for where, length in self.longest.items()]
        for where, length, shorten in measured:
            if min(length, self.seq_len or length) > limit:
                raise ValueError(f"{self.name}: {where} is {length} bytes, longer than the {limit} positions this "
                                 f"model takes (model.config.max_position_embeddings); set data.seq_len={limit} to cut "
                                 f"texts there, {shorten}or raise max_position_embeddings")

    def model_overrides(self) -> dict[str, Any]:
        return {"num_labels": len(self.id2label), "id2label": dict(enumerate(self.id2label)),
                "label2id": dict(self._label_ids)}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "labels": self.id2label, "seq_len": self.seq_len,
                "tokenizer": "seqzoo byte tokenizer (UTF-8 bytes)", **self._description}

    def position(self, samples_seen: int) -> dict[str, int]:
        if self.num_train is None:
            return {"samples_seen": samples_seen}
        epoch, index = divmod(samples_seen, self.num_train)
        return {"samples_seen": samples_seen, "epoch": epoch, "index_in_epoch": index}

    def batch(self, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs (B, T) right-padded with the pad token, targets: (B,) class ids or (B, T) tags and -100)."""
        if self.task == "sequence-classification":
            encoded = [(encode(text), None) for text, _ in rows]
        else:
            encoded = [encode_words(words, [self._label_ids[t] for t in tags]) for words, tags in rows]
        limit = self.seq_len
        if limit is not None and any(len(ids) > limit for ids, _ in encoded):
            if not self._truncated_warned:
                cut = sum(len(ids) > limit for ids, _ in encoded)
                logger.warning("%d of %d texts in a batch of %s are longer than data.seq_len=%d bytes and are cut "
                               "there%s (raise data.seq_len to keep them whole)", cut, len(encoded), self.name, limit,
                               ", with the tags of the words cut off" if self.task == "token-classification" else "")
                self._truncated_warned = True
            encoded = [(ids[:limit], None if tags is None else tags[:limit]) for ids, tags in encoded]
        width = max(len(ids) for ids, _ in encoded)
        inputs = torch.full((len(rows), width), PAD_TOKEN_ID)
        for row, (ids, _) in enumerate(encoded):
            inputs[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        if self.task == "sequence-classification":
            return inputs, torch.tensor([self._label_ids[label] for _, label in rows])
        targets = torch.full((len(rows), width), IGNORE)
        for row, (_, tags) in enumerate(encoded):
            targets[row, : len(tags)] = torch.tensor(tags, dtype=torch.long)
        return inputs, targets

    def train_batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(self._train(step, batch_size))

    def eval_rows(self) -> dict[str, list[Row]]:
        return dict(self._eval_sets)

    def eval_sets(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {name: self.batch(rows) for name, rows in self._eval_sets.items()}


# ----------------------------------------------------------------------------------------------------------------
# The two sources.


def generated_texts(task: str, name: str, distances: list[int], symbols: int, eval_samples: int, seed: int,
                    seq_len: int | None = None, labels: list[str] | None = None) -> LabelledTexts:
    """A built-in task (``GENERATED_TASKS[task]``) at the given distances (words per text)."""
    if name not in GENERATED_TASKS[task]:
        raise ValueError(f"unknown {task} task {name!r}; allowed: {', '.join(GENERATED_TASKS[task])}")
    if not distances or min(distances) < 1:
        raise ValueError(f"distances={distances} is invalid: a non-empty list of integers >= 1")
    if not 2 <= symbols <= 26:
        raise ValueError(f"symbols={symbols} is invalid: the tasks draw from 2 to 26 letters")
    make = GENERATED_TASKS[task][name]
    distances = sorted(distances)
    natural = GENERATED_LABELS.get(name) or [chr(ord("a") + i) for i in range(symbols)]
    if labels is not None and labels != natural:
        raise ValueError(f"data.labels={labels} is invalid for the built-in task {name!r}, whose labels are "
                         f"{natural}: leave data.labels unset")

    def train(step: int, batch_size: int) -> list[Row]:
        gen = _generator(seed, step)
        distance = distances[step % len(distances)]
        return [make(gen, distance, symbols) for _ in range(batch_size)]

    eval_sets, longest = {}, {}
    for distance in distances:
        gen = _generator(seed, _EVAL_STREAM + distance)
        eval_sets[f"distance={distance}"] = [make(gen, distance, symbols) for _ in range(eval_samples)]
        longest[f"distance={distance}"] = 2 * distance - 1  # one-letter words and the spaces between them
    return LabelledTexts(task, train, eval_sets, natural, f"{task}-task:{name}", seq_len,
                         {"generated_task": name, "distances": distances, "symbols": symbols}, longest=longest)


def jsonl_texts(task: str, paths: str | list[str], eval_fraction: float, eval_samples: int, seed: int,
                seq_len: int | None = None, labels: list[str] | None = None) -> LabelledTexts:
    """Labelled rows from JSON-lines files (format in the module docstring); the tail is held out for evaluation."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    refuse_repeated_files(paths)
    located = [row for path in paths for row in read_labelled_jsonl(path, task)]
    id2label = resolve_labels(located, task, labels)
    rows = [row for row, _ in located]
    held_out = max(1, int(len(rows) * eval_fraction))
    if len(rows) - held_out < 1:
        raise ValueError(f"{', '.join(paths)} hold {len(rows)} row(s): too few to hold out {held_out} for evaluation "
                         "and train on the rest")
    train_rows, held = rows[:-held_out], rows[-held_out:]
    eval_rows = [held[i] for i in held_out_scored(held_out, eval_samples)]
    # The held-out rows are the file's tail, not a random draw: a file sorted by label holds out whole classes.
    trained = _label_names(train_rows, task)
    unseen = [label for label in id2label if label not in trained]
    if unseen:
        scored = sorted(_label_names(eval_rows, task) & set(unseen))
        logger.warning("%s: label(s) %s never occur in the %d training rows (the last %d rows are held out for "
                       "evaluation, in file order)%s; shuffle the file if it is sorted by label",
                       ", ".join(paths), ", ".join(map(repr, unseen)), len(train_rows), held_out,
                       f", yet the evaluation rows hold {', '.join(map(repr, scored))}" if scored else "")
    train = epoch_sampler(train_rows, seed)

    data = LabelledTexts(task, train, {"validation": eval_rows}, id2label, "jsonl:" + ",".join(paths), seq_len,
                         {"train_rows": len(train_rows), "eval_rows": len(eval_rows),
                          "sha256": content_hash(train_rows)}, num_train=len(train_rows))
    data.rows = train_rows + eval_rows
    return data


def _label_names(rows: list[Row], task: str) -> set[str]:
    return {name for _, labels in rows for name in (labels if task == "token-classification" else [labels])}


def read_labelled_jsonl(path: str | Path, task: str) -> list[tuple[Row, str]]:
    """The rows of one file, each with where it came from (``path:line``), checked field by field."""
    path = Path(path)
    tagging = task == "token-classification"
    expected = '{"tokens": ["word", ...], "tags": ["TAG", ...]}' if tagging else '{"text": "...", "label": "..."}'
    rows = []
    reads = f"a {task} data file holds one JSON object per line, {expected}"
    for number, line, row in json_lines(path, reads, expected):
        where = f"{path}:{number}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object {expected}; got {line[:80]!r}")
        fields = ("tokens", "tags") if tagging else ("text", "label")
        missing = [name for name in fields if name not in row]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(map(repr, missing))}; each line must be {expected} "
                             f"(fields seen: {', '.join(map(repr, row)) or 'none'})")
        rows.append((_checked_row(row, tagging, where), where))
    if not rows:
        raise ValueError(f"{path} holds no rows; each line must be {expected}")
    return rows


def _checked_row(row: dict[str, Any], tagging: bool, where: str) -> Row:
    if not tagging:
        if not isinstance(row["text"], str) or not row["text"]:
            raise ValueError(f"{where}: 'text' must be a non-empty string; got {row['text']!r}")
        if not isinstance(row["label"], str):
            raise ValueError(f"{where}: 'label' must be a label name (a string); got {row['label']!r}")
        check_trainable_text(row["text"], where)
        return row["text"], row["label"]
    tokens, tags = row["tokens"], row["tags"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise ValueError(f"{where}: 'tokens' must be a non-empty list of non-empty strings (the words); got "
                         f"{tokens!r}")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"{where}: 'tags' must be a list of tag names (strings), one per word; got {tags!r}")
    if len(tags) != len(tokens):
        raise ValueError(f"{where}: {len(tokens)} tokens but {len(tags)} tags; each word needs exactly one tag")
    check_trainable_text(" ".join(tokens), where)
    return list(tokens), list(tags)


def resolve_labels(located: list[tuple[Row, str]], task: str, labels: list[str] | None) -> list[str]:
    """``id2label`` in id order: ``labels`` (the recipe's), checked against every row, else the data's, sorted."""
    if labels is not None:
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates or len(labels) < 2:
            raise ValueError(f"data.labels={labels} is invalid: at least two distinct label names"
                             + (f" ({', '.join(map(repr, duplicates))} repeated)" if duplicates else ""))
    known = None if labels is None else set(labels)
    seen: set[str] = set()
    for row, where in located:
        names = row[1] if task == "token-classification" else [row[1]]
        for name in names:
            if known is not None and name not in known:
                raise ValueError(f"{where}: {'tag' if task == 'token-classification' else 'label'} {name!r} is not in "
                                 f"data.labels ({', '.join(map(repr, labels))}); add it there or fix the row")
            seen.add(name)
    if labels is not None:
        return list(labels)
    if len(seen) < 2:
        raise ValueError(f"the data holds a single label ({', '.join(map(repr, seen))}): a classifier needs at least "
                         "two; name the others in data.labels")
    return sorted(seen)


def build_label_data(task: str, data: Any, seed: int) -> LabelledTexts:
    """The labelled texts a classification recipe's ``data`` section describes."""
    if data.source == "jsonl":
        return jsonl_texts(task, data.path, data.eval_fraction, data.eval_samples, seed, data.seq_len, data.labels)
    return generated_texts(task, data.task, data.distances, data.symbols, data.eval_samples, seed, data.seq_len,
                           data.labels)


# ----------------------------------------------------------------------------------------------------------------
# Steps: what the training loop runs for a classifier instead of a language model's forward.


def is_classifier(model: Any) -> bool:
    from seqzoo.models.heads import SeqzooForSequenceClassification, SeqzooForTokenClassification
    return isinstance(unwrap(model), (SeqzooForSequenceClassification, SeqzooForTokenClassification))


def classifier_logits(model: Any, inputs: torch.Tensor) -> torch.Tensor:
    """(B, num_labels) or (B, T, num_labels) logits, pad tokens masked out (exact in both directions)."""
    return model(input_ids=inputs, attention_mask=(inputs != PAD_TOKEN_ID).long()).logits


__all__ = ["GENERATED_TASKS", "LABEL_TASKS", "LabelledTexts", "build_label_data", "classifier_logits",
           "encode_words", "generated_texts", "is_classifier", "jsonl_texts", "read_labelled_jsonl",
           "resolve_labels"]
