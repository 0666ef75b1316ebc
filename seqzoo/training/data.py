"""Training data that needs no download: synthetic memory tasks and byte-level text corpora.

Every source answers two questions with tensors of shape (batch, seq_len): ``train_batch(step, batch_size)`` --
the global batch of optimizer step ``step`` -- and ``eval_sets()`` -- fixed named evaluation sets. Inputs and
targets are already aligned (``targets[:, t]`` is the token after ``inputs[:, t]``, -100 where nothing is scored),
so a sequence can be cut into chunks for truncated BPTT without losing the targets at chunk borders.

A batch is a pure function of (seed, step). Every process builds the same global batch and takes its own rows, so
one process and N processes train on identical data, and a resumed run needs nothing but the step to continue.

Memory tasks (vocabulary: 0 pad, 1 blank, 2 go/cue, then ``symbols`` content tokens). ``distance`` is the number
of filler tokens between what must be remembered and the moment it is asked for:

- ``copy``: k symbols, ``distance`` blanks, go, then the k symbols again (Hochreiter & Schmidhuber 1997).
- ``selective_copy``: k symbols scattered among ``distance`` blanks (a region of ``distance + k`` tokens), go, then
  the k symbols in order (Gu & Dao 2023). The region holds ``distance`` blanks, as copy's, but they lie around the
  symbols as well as after them: the first symbol is at most ``distance + k`` tokens before go, the last on average
  ``distance / (k + 1)`` blanks before it (none in some samples).
- ``associative_recall``: k key-value pairs, ``distance`` blanks, then every key again in random order, each
  followed by its value -- many queries per sequence (Ba et al. 2016; Arora et al. 2023, MQAR).
- ``induction``: cue, k symbols, ``distance`` random symbols, cue, then the same k symbols (Olsson et al. 2022).

A sample is right-aligned in ``seq_len`` tokens and preceded by blanks, so samples of different distances share
one batch without padding masks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import torch

from seqzoo.json_keys import DuplicateKeyError, unique_json_pairs
from seqzoo.tokenizer import EOS_TOKEN, EOS_TOKEN_ID, PAD_TOKEN, PAD_TOKEN_ID, VOCAB_SIZE, check_utf8

logger = logging.getLogger("seqzoo.training")

IGNORE = -100
PAD, BLANK, GO = 0, 1, 2
FIRST_SYMBOL = 3
DEFAULT_TEXT_SEQ_LEN = 128
_EVAL_STREAM = 1 << 31  # eval sets draw from a random stream no training step reaches
_TUNING_STREAM = 3 << 30  # tuning sets (data.tuning_set) from another, apart from training and the eval sets


def _generator(seed: int, stream: int) -> torch.Generator:
    # torch's CPU generator keeps only the low 32 bits of a seed, so (seed, stream) is hashed into them rather
    # than packed side by side (which would make every seed draw the same batches).
    digest = hashlib.blake2b(f"{seed}/{stream}".encode(), digest_size=4).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


# ----------------------------------------------------------------------------------------------------------------
# Memory tasks: each returns the full token sequences S (B, n + 1) and a bool mask of the tokens that are answers.


def _symbols(gen: torch.Generator, shape: tuple[int, ...], low: int, high: int) -> torch.Tensor:
    return torch.randint(FIRST_SYMBOL + low, FIRST_SYMBOL + high, shape, generator=gen)


def _answers_at_end(batch: int, length: int, count: int) -> torch.Tensor:
    answer = torch.zeros(batch, length, dtype=torch.bool)
    answer[:, length - count:] = True
    return answer


def copy_task(gen: torch.Generator, batch: int, distance: int, symbols: int, items: int):
    content = _symbols(gen, (batch, items), 0, symbols)
    blanks = torch.full((batch, distance), BLANK)
    go = torch.full((batch, 1), GO)
    seq = torch.cat([content, blanks, go, content], dim=1)
    return seq, _answers_at_end(batch, seq.shape[1], items)


def selective_copy_task(gen: torch.Generator, batch: int, distance: int, symbols: int, items: int):
    width = distance + items  # every one of the `distance` blanks is filler, as in copy
    region = torch.full((batch, width), BLANK)
    # Random distinct positions, kept in order: the model must output the symbols in the order they appeared.
    positions = torch.rand(batch, width, generator=gen).argsort(dim=1)[:, :items].sort(dim=1).values
    content = _symbols(gen, (batch, items), 0, symbols)
    region.scatter_(1, positions, content)
    seq = torch.cat([region, torch.full((batch, 1), GO), content], dim=1)
    return seq, _answers_at_end(batch, seq.shape[1], items)


def associative_recall_task(gen: torch.Generator, batch: int, distance: int, symbols: int, items: int):
    half = symbols // 2  # keys come from the first half of the symbols, values from the second
    keys = torch.rand(batch, half, generator=gen).argsort(dim=1)[:, :items] + FIRST_SYMBOL  # distinct per row
    values = _symbols(gen, (batch, items), half, symbols)
    order = torch.rand(batch, items, generator=gen).argsort(dim=1)
    pairs = torch.stack([keys, values], dim=2).reshape(batch, 2 * items)
    queries = torch.stack([keys.gather(1, order), values.gather(1, order)], dim=2).reshape(batch, 2 * items)
    seq = torch.cat([pairs, torch.full((batch, distance), BLANK), queries], dim=1)
    answer = torch.zeros_like(seq, dtype=torch.bool)
    answer[:, -2 * items + 1::2] = True  # the value after each queried key
    return seq, answer


def induction_task(gen: torch.Generator, batch: int, distance: int, symbols: int, items: int):
    pattern = _symbols(gen, (batch, items), 0, symbols)
    noise = _symbols(gen, (batch, distance), 0, symbols)
    cue = torch.full((batch, 1), GO)
    seq = torch.cat([cue, pattern, noise, cue, pattern], dim=1)
    return seq, _answers_at_end(batch, seq.shape[1], items)


TaskFn = Callable[[torch.Generator, int, int, int, int], tuple[torch.Tensor, torch.Tensor]]
TASKS: dict[str, TaskFn] = {
    "copy": copy_task,
    "selective_copy": selective_copy_task,
    "associative_recall": associative_recall_task,
    "induction": induction_task,
}


def task_length(task: str, distance: int, items: int) -> int:
    """Tokens a model reads for one sample (inputs, i.e. the sequence minus its last token)."""
    return {"copy": 2 * items + distance, "selective_copy": 2 * items + distance,
            "associative_recall": 4 * items + distance - 1, "induction": 2 * items + distance + 1}[task]


DISTANCE_MIXES = ("sample", "batch")


class MemoryTask:
    """A synthetic memory task at one or more distances. ``distance_mix="sample"``: each training sample draws its
    distance uniformly (a batch is as long as the longest distance needs); ``"batch"``: each step takes the
    distances in turn, and a batch is only as long as its distance needs (cheaper when distances differ a lot)."""

    def __init__(self, task: str, distances: list[int], symbols: int, items: int, seq_len: int | None,
                 eval_samples: int, seed: int, distance_mix: str = "sample", tuning_set: bool = False) -> None:
        if distance_mix not in DISTANCE_MIXES:
            raise ValueError(f"distance_mix={distance_mix!r} is invalid: one of {', '.join(DISTANCE_MIXES)}")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
        if task == "associative_recall" and items > symbols // 2:
            raise ValueError(
                f"associative_recall with items={items} needs items <= symbols // 2 distinct keys; symbols={symbols} "
                f"allows at most {symbols // 2}"
            )
        needed = max(task_length(task, d, items) for d in distances)
        if seq_len is not None and seq_len < needed:
            raise ValueError(
                f"data.seq_len={seq_len} is shorter than task {task!r} needs at distance {max(distances)} with "
                f"items={items}: {needed} tokens"
            )
        self.task, self.distances, self.symbols, self.items = task, sorted(distances), symbols, items
        self.seq_len = seq_len or needed
        self.fixed_seq_len, self.distance_mix = seq_len, distance_mix
        self.eval_samples, self.seed = eval_samples, seed
        # eval_sets() draws the tuning set instead of the evaluation set (training is the same either way)
        self.tuning_set = tuning_set
        self.vocab_size = FIRST_SYMBOL + symbols
        self.name = f"task:{task}"

    def check_fits(self, limit: int) -> None:
        """Refuse, before training, rows longer than the model's ``limit`` positions (it failed at the first step,
        after --force had deleted the run it replaced, naming a position but no setting)."""
        if self.seq_len > limit:
            raise ValueError(f"{self.name}: rows are {self.seq_len} tokens (data.seq_len, or what data.distances "
                             f"need), longer than the {limit} positions this model takes "
                             "(model.config.max_position_embeddings); raise max_position_embeddings, or shorten "
                             "data.distances")

    def model_overrides(self) -> dict[str, Any]:
        """Config fields a model needs for this vocabulary (the byte tokenizer's special ids do not exist here)."""
        return {"vocab_size": self.vocab_size, "pad_token_id": PAD, "bos_token_id": None, "eos_token_id": None}

    def describe(self) -> dict[str, Any]:
        described = {"name": self.name, "task": self.task, "distances": self.distances, "symbols": self.symbols,
                     "items": self.items, "seq_len": self.seq_len, "vocab_size": self.vocab_size,
                     "distance_mix": self.distance_mix}
        return {**described, "tuning_set": True} if self.tuning_set else described

    def _length(self, distance: int) -> int:
        """Tokens per sequence of a batch of one distance: the recipe's seq_len, else what that distance needs."""
        if self.distance_mix == "sample":
            return self.seq_len
        return self.fixed_seq_len or task_length(self.task, distance, self.items)

    def _samples(self, gen: torch.Generator, distances: torch.Tensor,
                 seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        batch, width = distances.shape[0], (seq_len or self.seq_len) + 1
        seq = torch.full((batch, width), BLANK, dtype=torch.long)
        answer = torch.zeros((batch, width), dtype=torch.bool)
        for distance in distances.unique().tolist():
            rows = (distances == distance).nonzero().squeeze(1)
            part, part_answer = TASKS[self.task](gen, rows.numel(), distance, self.symbols, self.items)
            seq[rows, width - part.shape[1]:] = part
            answer[rows, width - part.shape[1]:] = part_answer
        targets = torch.where(answer[:, 1:], seq[:, 1:], IGNORE)
        return seq[:, :-1].contiguous(), targets

    def position(self, samples_seen: int) -> dict[str, int]:
        """Where training stands in the data (each step draws fresh samples: there are no epochs)."""
        return {"samples_seen": samples_seen}

    def train_batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = _generator(self.seed, step)
        if self.distance_mix == "batch":
            distance = self.distances[step % len(self.distances)]
            return self._samples(gen, torch.full((batch_size,), distance), self._length(distance))
        choice = torch.randint(len(self.distances), (batch_size,), generator=gen)
        return self._samples(gen, torch.tensor(self.distances)[choice])

    def trained_share(self, steps: int, batch_size: int) -> dict[str, float]:
        """For each evaluation set, the share of its sequences that ``steps`` training batches of ``batch_size`` also
        drew (every token the same). Evaluation draws from a stream of its own, apart from training but not held
        out: where a task has few possible contents (copy's k symbols of a small alphabet: 8 ** 4 = 4096), part of
        its accuracy is recall of trained sequences, not generalisation."""
        trained = set()
        for step in range(steps):
            trained.update(_row_keys(*self.train_batch(step, batch_size)))
        return {name: sum(key in trained for key in _row_keys(*pair)) / pair[0].shape[0]
                for name, pair in self.eval_sets().items()}

    def eval_sets(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        sets = {}
        stream = _TUNING_STREAM if self.tuning_set else _EVAL_STREAM
        for distance in self.distances:
            gen = _generator(self.seed, stream + distance)
            sets[f"distance={distance}"] = self._samples(gen, torch.full((self.eval_samples,), distance),
                                                         self._length(distance))
        return sets


def _row_keys(inputs: torch.Tensor, targets: torch.Tensor) -> list[bytes]:
    """Each sample's inputs and targets as one hashable key (rows of another length never match)."""
    return [row.tobytes() for row in torch.cat([inputs, targets], dim=1).numpy()]


# ----------------------------------------------------------------------------------------------------------------
# Byte-level corpora: documents -> one token stream (bytes, EOS after each document) -> windows.


def document_position_ids(inputs: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids that restart at 0 at every EOS token of ``inputs`` and at each row's start.

    In a stream of documents each followed by EOS, a document's EOS is the last target of that document and the
    first input of the next: the next document starts at it, as a sequence starts at its BOS, so its first byte is
    predicted from an empty context. Given to a model as ``position_ids``, these mark packed rows
    (``seqzoo.models.packing``): every document is computed as if it were alone.
    """
    index = torch.arange(inputs.shape[1], device=inputs.device).expand_as(inputs)
    starts = torch.where(inputs == EOS_TOKEN_ID, index, torch.zeros_like(index))
    return index - starts.cummax(dim=1).values


class TokenStream:
    """Non-overlapping windows of a token stream; the last ``eval_fraction`` of it is held out for evaluation. With
    ``tuning_set`` the ``eval_fraction`` before that tail is evaluated instead, and training reads neither.

    Training samples are visited in a fresh random order each epoch (seeded), so batch ``step`` is fixed. With
    ``packing`` a window's documents are kept apart (``document_position_ids``); without it the context runs on
    from one document into the next, as in one long text.
    """

    def __init__(self, tokens: torch.Tensor, name: str, seq_len: int | None, eval_fraction: float,
                 eval_samples: int, seed: int, packing: bool = False, tuning_set: bool = False) -> None:
        self.seq_len = seq_len or DEFAULT_TEXT_SEQ_LEN
        self.packing, self.tuning_set = packing, tuning_set
        self.name, self.seed, self.eval_samples = name, seed, eval_samples
        split = int(len(tokens) * (1 - eval_fraction))
        self.train_tokens, self.eval_tokens = tokens[:split], tokens[split:]
        if tuning_set:  # (the held-out tail stays unread: what a run without tuning_set reports)
            tuning = split - (len(tokens) - split)
            self.train_tokens, self.eval_tokens = tokens[:max(tuning, 0)], tokens[max(tuning, 0):split]
        evaluated = "tuning" if tuning_set else "evaluation"
        for part, what in ((self.train_tokens, "training"), (self.eval_tokens, evaluated)):
            if len(part) < self.seq_len + 1:
                raise ValueError(
                    f"data.seq_len={self.seq_len} is longer than the {what} split of {name} ({len(part):,} tokens "
                    f"of {len(tokens):,}; each sample needs seq_len + 1): use a shorter seq_len or more text"
                )
        self.num_samples = (len(self.train_tokens) - 1) // self.seq_len
        self.vocab_size = VOCAB_SIZE
        # The tokens themselves, not only their count: an edited corpus of the same length is other data.
        self.sha256 = hashlib.sha256(tokens.numpy().tobytes()).hexdigest()
        self._order: tuple[int, torch.Tensor] | None = None

    def model_overrides(self) -> dict[str, Any]:
        return {}

    @property
    def eval_rows(self) -> int:
        """Rows of seq_len (with their next-token targets) that the evaluated part of the stream holds."""
        return (len(self.eval_tokens) - 1) // self.seq_len

    def longest_run(self) -> int:
        """The most positions a training or evaluation row reads: seq_len, or with packing the longest stretch of a
        row that no EOS restarts (``document_position_ids``)."""
        longest = 0
        for tokens in (self.train_tokens, self.eval_tokens):
            covered = (len(tokens) - 1) // self.seq_len * self.seq_len  # (the inputs of whole windows)
            if covered == 0:
                continue
            index = torch.arange(covered)
            starts = index - index % self.seq_len
            if self.packing:
                eos = torch.where(tokens[:covered] == EOS_TOKEN_ID, index, torch.zeros_like(index))
                starts = torch.maximum(starts, eos.cummax(0).values)
            longest = max(longest, int((index - starts).max()) + 1)
        return longest

    def check_fits(self, limit: int) -> None:
        """Refuse, before training, rows that read more positions than the model's ``limit`` (it failed at the first
        step that drew one, after --force had deleted the run it replaced, naming a position but no setting)."""
        longest = self.longest_run()
        if longest > limit:
            why = (f"a document runs on for {longest} tokens in a row of data.seq_len={self.seq_len}" if self.packing
                   else f"rows of data.seq_len={self.seq_len} read one position per token (packing: false)")
            raise ValueError(f"{self.name}: {why}, more than the {limit} positions this model takes "
                             f"(model.config.max_position_embeddings); set data.seq_len={limit} or lower, or raise "
                             "max_position_embeddings")

    def describe(self) -> dict[str, Any]:
        described = {"name": self.name, "seq_len": self.seq_len, "train_tokens": len(self.train_tokens),
                     "eval_tokens": len(self.eval_tokens), "tokenizer": "seqzoo byte tokenizer (UTF-8 bytes, EOS 257)",
                     "packing": self.packing, "sha256": self.sha256}
        return {**described, "tuning_set": True} if self.tuning_set else described

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, torch.randperm(self.num_samples, generator=_generator(self.seed, epoch)))
        return self._order[1]

    def _window(self, tokens: torch.Tensor, index: int) -> torch.Tensor:
        start = index * self.seq_len
        return tokens[start:start + self.seq_len + 1].long()

    def position(self, samples_seen: int) -> dict[str, int]:
        """Where training stands in the data: the epoch, and how far into that epoch's seeded sample order."""
        epoch, index = divmod(samples_seen, self.num_samples)
        return {"samples_seen": samples_seen, "epoch": epoch, "index_in_epoch": index}

    def train_batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for sample in range(step * batch_size, (step + 1) * batch_size):
            epoch, position = divmod(sample, self.num_samples)
            rows.append(self._window(self.train_tokens, int(self._epoch_order(epoch)[position])))
        windows = torch.stack(rows)
        return windows[:, :-1], windows[:, 1:]

    def eval_sets(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        windows = torch.stack([self._window(self.eval_tokens, i)
                               for i in held_out_scored(self.eval_rows, self.eval_samples)])
        return {"validation": (windows[:, :-1], windows[:, 1:])}


_EOS_TEXT = re.compile(re.escape(EOS_TOKEN))


def tokens_from_documents(documents: list[str]) -> torch.Tensor:
    """UTF-8 bytes of each document followed by EOS -- exactly what the byte tokenizer produces for them. The text
    ``<|endoftext|>`` inside a document is EOS, as the tokenizer reads it (a corpus that separates its documents
    with it, as TinyStories' text files do, means that); the text ``<|pad|>``, which the tokenizer would read as
    padding, is refused: nothing should be trained to predict padding."""
    pieces = []
    eos = torch.tensor([EOS_TOKEN_ID], dtype=torch.int16)
    for index, doc in enumerate(documents):
        if PAD_TOKEN in doc:
            raise ValueError(f"document {index} of the corpus holds the text {PAD_TOKEN!r}, which the byte tokenizer "
                             f"reads as its padding token (id {PAD_TOKEN_ID}): remove or rewrite it")
        check_utf8(doc, f"document {index} of the corpus")
        start = 0
        for found in [*_EOS_TEXT.finditer(doc), None]:
            text = doc[start:found.start() if found else len(doc)]
            if text:  # frombuffer refuses an empty buffer (an empty document is its EOS alone)
                pieces.append(torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(torch.int16))
            if found:
                pieces.append(eos)
                start = found.end()
        pieces.append(eos)
    if not pieces:
        raise ValueError("the corpus has no documents")
    return torch.cat(pieces)


def pydoc_documents() -> list[str]:
    """The Python documentation topics that ship with every CPython (``pydoc_data.topics``), in a fixed order."""
    try:
        from pydoc_data.topics import topics
    except ImportError as err:
        raise ValueError(
            "data.source='pydoc' reads pydoc_data.topics, which this Python install lacks (some distributions "
            "split it off); use data.source='text' with a text file instead"
        ) from err
    return [topics[key] for key in sorted(topics)]


def read_text_file(path: str | Path, reads: str = "data.source='text' trains on UTF-8 text files") -> str:
    """A data file's text: UTF-8, a leading byte-order mark dropped (as editors on Windows write it, it is no part
    of the text), no NUL bytes. ``reads`` says, in the errors, what the file should hold."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {str(path)!r} does not exist" if not path.exists()
                         else f"data file {str(path)!r} is not a file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        offset = err.start + 3 * raw.startswith(b"\xef\xbb\xbf")
        line = raw.count(b"\n", 0, offset) + 1  # (a file of a million JSON lines is not searched by offset)
        raise ValueError(
            f"data file {str(path)!r} is not UTF-8 text: byte 0x{raw[offset]:02x} at offset {offset} (line {line}) "
            f"is invalid ({reads})"
        ) from err
    if "\x00" in text:
        first = text.index("\x00")
        line = text.count("\n", 0, first) + 1
        raise ValueError(
            f"data file {str(path)!r} is not text: it holds NUL bytes (first at character {first}, line {line}); "
            f"{reads}"
        )
    return text


def json_lines(path: Path, reads: str, expected: str) -> Iterator[tuple[int, str, Any]]:
    """(line number, line, value) of each line of a JSON-lines data file that is not blank. ``reads`` says, as for
    read_text_file, what the file should hold, ``expected`` what one line is. A key given twice in one object is
    refused: JSON readers keep the last, so a row's second "label" replaced its first without a word."""
    text = read_text_file(path, reads)
    # Lines end at "\n" only: splitlines() also splits at U+2028, U+0085 ..., which JSON strings hold unescaped.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line, object_pairs_hook=unique_json_pairs)
        except DuplicateKeyError as err:
            raise ValueError(f"{path}:{number}: {err}; each line must be {expected}") from None
        except (ValueError, RecursionError) as err:  # (a JSONDecodeError, or arrays nested too deep to read)
            raise ValueError(f"{path}:{number} is not valid JSON ({getattr(err, 'msg', err)}); each line must be "
                             f"{expected}") from err
        yield number, line, value


def dataset_documents(dataset: Any, column: str) -> list[str]:
    """Texts from a ``datasets.Dataset`` (or any object indexable by column name), or a DatasetDict's train split."""
    if hasattr(dataset, "keys") and hasattr(dataset, "column_names") and isinstance(dataset.column_names, dict):
        if "train" not in dataset:
            raise ValueError(f"the DatasetDict has no 'train' split; it has {', '.join(dataset.keys())}")
        dataset = dataset["train"]
    columns = getattr(dataset, "column_names", None)
    if columns is None and isinstance(dataset, dict):
        columns = list(dataset)
    if columns is not None and column not in columns:
        raise ValueError(f"the dataset has no column {column!r} (data.text_column); columns: {', '.join(columns)}")
    try:
        texts = dataset[column]
    except (KeyError, IndexError, TypeError) as err:
        raise ValueError(f"the dataset ({type(dataset).__name__}) cannot be indexed by the column name {column!r} "
                         f"(data.text_column): {type(err).__name__}: {err}") from err
    if isinstance(texts, (str, bytes)):  # iterating would make each character a document
        raise ValueError(f"dataset column {column!r} must be a list of strings (one per document); got one "
                         f"{type(texts).__name__}")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"dataset column {column!r} must hold strings; row {bad} is {type(texts[bad]).__name__}")
    return list(texts)


def load_dataset_folder(path: str) -> Any:
    if not Path(path).exists():
        raise ValueError(f"data.path {path!r} does not exist (data.source='dataset' expects a save_to_disk folder)")
    try:
        import datasets
    except ImportError as err:
        raise ValueError("data.source='dataset' needs the `datasets` package: pip install datasets") from err
    return datasets.load_from_disk(path)


def refuse_repeated_files(paths: list[str]) -> None:
    """A file listed twice in data.path (a text corpus, or JSON Lines rows) would be trained on twice, and where one
    copy falls in the held-out tail, evaluated on what the model trained on."""
    seen: dict[Path, str] = {}
    for path in paths:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise ValueError(f"data.path lists the file {path!r} twice (as {seen[resolved]!r} before): each file is "
                             "read once; a repeated file would be trained on twice, and evaluated on what was trained "
                             "on where a copy falls in the held-out tail")
        seen[resolved] = path


def build_data(data: Any, seed: int, dataset: Any = None) -> MemoryTask | TokenStream:
    """The training data a recipe's ``data`` section describes. ``dataset`` (a datasets object) overrides the
    source for the Python API."""
    if dataset is not None or data.source == "dataset":
        source = dataset if dataset is not None else load_dataset_folder(data.path)
        name = f"dataset:{data.path}" if dataset is None else f"dataset:{type(dataset).__name__}"
        documents = dataset_documents(source, data.text_column)
        if not documents:
            raise ValueError(f"the dataset ({name}) has no rows: its column {data.text_column!r} "
                             "(data.text_column) holds no documents to train on")
        tokens = tokens_from_documents(documents)
    elif data.source == "task":
        return MemoryTask(data.task, data.distances, data.symbols, data.items, data.seq_len, data.eval_samples, seed,
                          data.distance_mix, data.tuning_set)
    elif data.source == "text":
        paths = [data.path] if isinstance(data.path, str) else list(data.path)
        refuse_repeated_files(paths)
        texts = [read_text_file(p) for p in paths]
        blank = next((p for p, text in zip(paths, texts) if not text.strip()), None)
        if blank is not None:  # (it was trained on as a document of its EOS alone, without a word)
            raise ValueError(f"data file {blank!r} holds no text (it is empty, or only whitespace): a truncated copy, "
                             "or another file than meant? Remove it from data.path")
        tokens = tokens_from_documents(texts)
        name = "text:" + ",".join(paths)
    else:
        tokens = tokens_from_documents(pydoc_documents())
        name = "pydoc_data.topics"
    stream = TokenStream(tokens, name, data.seq_len, data.eval_fraction, data.eval_samples, seed,
                         packing=bool(data.packing), tuning_set=data.tuning_set)
    if data.eval_samples > stream.eval_rows and data.eval_samples != type(data).eval_samples:  # (a value given)
        logger.warning("data.eval_samples=%d is more than the %d rows of data.seq_len=%d that the evaluated part of "
                       "%s holds: all %d are evaluated", data.eval_samples, stream.eval_rows, stream.seq_len, name,
                       stream.eval_rows)
    return stream


def content_hash(items: list) -> str:
    """A SHA-256 of the training examples read from files (their repr: strings, numbers and lists of them), which a
    source's ``describe()`` records: ``--resume`` then refuses an edited file even when its counts stayed the same."""
    return hashlib.sha256(repr(items).encode("utf-8")).hexdigest()


def held_out_scored(count: int, scored: int) -> list[int]:
    """Which of ``count`` held-out items (rows, pairs, windows of text) an evaluation of ``scored`` of them reads:
    all of them where ``scored`` covers them, else ``scored`` indices spread evenly from the first on. The first
    ``scored`` alone would be one stretch of the held-out tail (in the lab's text, an ASCII table)."""
    if scored >= count:
        return list(range(count))
    return [index * count // scored for index in range(scored)]


def epoch_sampler(items: list, seed: int):
    """``batch(step, batch_size)``: the step's rows of ``items``, each epoch in a fresh seeded order (so a resumed
    run at step N draws exactly what an uninterrupted run drew)."""
    orders: dict[int, torch.Tensor] = {}

    def batch(step: int, batch_size: int) -> list:
        chosen = []
        for sample in range(step * batch_size, (step + 1) * batch_size):
            epoch, position = divmod(sample, len(items))
            if epoch not in orders:
                orders.clear()
                orders[epoch] = torch.randperm(len(items), generator=_generator(seed, epoch))
            chosen.append(items[int(orders[epoch][position])])
        return chosen

    return batch
