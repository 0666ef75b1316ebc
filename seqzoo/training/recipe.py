"""Training recipes: a YAML file (or a preset in ``seqzoo/configs/``) read into a validated dataclass tree.

A recipe has four sections -- ``model``, ``data``, ``optim``, ``train`` -- plus ``name`` and ``output_dir``.
Every field is checked when the recipe is built; an unknown or badly typed field raises ``ValueError`` naming the
field, the value seen and what is allowed. Where a recipe comes from (a file, a preset) and how command-line
overrides apply is in recipe_loading.py.

``run_id`` hashes the fields that shape the training trajectory, so ``--resume`` can refuse a checkpoint that
another recipe wrote.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from seqzoo.training.recipe_reading import coerce

# The classification tasks a recipe can train (seqzoo.training.classification.LABEL_TASKS; a test keeps them equal).
LABEL_TASKS = ("sequence-classification", "token-classification")
# Config fields only the classification heads read (a causal-lm or seq2seq recipe setting one would be ignored).
CLASSIFIER_FIELDS = frozenset({"num_labels", "id2label", "label2id", "problem_type", "classifier_pooling",
                               "classifier_dropout"})

DATA_SOURCES = ("pydoc", "text", "dataset", "task", "jsonl")
CORPORA = ("pydoc", "text", "dataset")  # the sources of documents that data.packing applies to
# The heads `seqzoo train` trains (seqzoo.registry.TASKS names them).
TRAINED_TASKS = ("causal-lm", "seq2seq", *LABEL_TASKS)
SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISION = ("no", "fp16", "bf16")
# Fields that change what is logged or kept on disk but never the weights a run ends with; a resumed run may
# change them (for example to checkpoint more often).
NOT_IN_RUN_ID = ("name", "output_dir", "data.eval_samples", "train.eval_every", "train.save_every",
                 "train.save_total_limit", "train.log_every", "train.max_nonfinite_steps")
# Fields added after runs were first saved, left out of the run id at their default: a run saved before they
# existed keeps its id, and resumes.
ADDED_LATER = {"data.tuning_set": False, "model.path": None}


DEFAULT_PRESET = "lstm-tiny"  # the model of a recipe that names neither a preset nor a saved model


@dataclass
class ModelSection:
    preset: str | None = None  # a name from seqzoo.list_models(); DEFAULT_PRESET when neither it nor path is given
    config: dict[str, Any] = field(default_factory=dict)  # config field overrides, e.g. {dropout: 0.1}
    # A folder a seqzoo model was saved in (save_pretrained, seqzoo train / new / convert): training starts from its
    # weights, with its saved config and head, instead of building a new model from a preset.
    path: str | None = None

    @property
    def source(self) -> str:
        """Where the model comes from, for messages: the preset's name or the saved model's folder."""
        return self.preset if self.path is None else self.path


@dataclass
class DataSection:
    source: str = "pydoc"  # pydoc | text | dataset | task | jsonl (seq2seq and classification recipes)
    path: str | list[str] | None = None  # text: file(s); dataset: a folder written by datasets' save_to_disk
    text_column: str = "text"  # dataset: the column holding the text
    seq_len: int | None = None  # tokens per training sequence; corpora default to 128, tasks to what they need
    eval_fraction: float = 0.05  # corpora: the tail of the token stream held out for evaluation
    eval_samples: int = 64  # sequences evaluated (per distance for tasks)
    # causal-lm data (a task or a corpus): true -- evaluate on a tuning set instead, apart from training and from the
    # evaluation set a run reports by default, to choose settings on (`seqzoo lab sweep`): a task's own draws; a
    # corpus's eval_fraction before its held-out tail, which training then leaves out too (the tail is not read).
    tuning_set: bool = False
    # corpora: true -- each document is trained on alone (positions restart at every document, so no state or
    # attention crosses into the next one; rows are filled with documents, never padded); false -- the stream: the
    # context runs on across documents (what TBPTT needs). null: true, unless train.tbptt_chunk > 0. A document is
    # a pydoc topic, a text file, or a dataset row; see the README (Training, "Documents and packing").
    packing: bool | None = None
    task: str | None = None  # copy | associative_recall | selective_copy | induction; seq2seq: see below
    distances: list[int] = field(default_factory=lambda: [8, 32])  # tasks: each sample draws one of these
    symbols: int = 16  # tasks: size of the content vocabulary
    items: int = 4  # tasks: symbols to copy, key-value pairs to recall
    distance_mix: str = "sample"  # tasks: each sequence draws a distance (sample), or each step one in turn (batch)
    # task: seq2seq recipes (seqzoo.training.seq2seq): source jsonl (path: {"source", "target"} lines) or task
    # copy | reverse | sort | digits | dates, each training pair drawing one of source_lengths.
    source_lengths: list[int] = field(default_factory=lambda: [4, 8, 16])
    max_source_length: int | None = None  # longer sources are cut (with a warning); None: never
    # task: sequence-classification | token-classification recipes (seqzoo.training.classification): source jsonl
    # (path: {"text", "label"} or {"tokens", "tags"} lines) or task appears_later | first_letter. labels: the label
    # names in id order (id2label); None: the distinct labels of the data, sorted.
    labels: list[str] | None = None


# DataSection fields that only the generated memory tasks (data.source=task) read.
TASK_ONLY_FIELDS = ("distances", "symbols", "items", "distance_mix")


@dataclass
class OptimSection:
    lr: float = 3e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int | None = None  # None: 10% of train.max_steps, at most 100
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    min_lr_ratio: float = 0.1  # where cosine/linear decay ends, as a fraction of lr
    max_grad_norm: float = 1.0  # 0 disables clipping (the norm is still measured)


@dataclass
class TrainSection:
    max_steps: int = 200
    batch_size: int = 32  # global: sequences per optimizer step over all processes and accumulation steps
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    seed: int = 0
    eval_every: int = 100  # 0 = only at the end
    save_every: int = 100  # checkpoint every N steps (what --resume continues from); 0 = no checkpoints
    save_total_limit: int = 2  # checkpoints kept (oldest deleted first)
    log_every: int = 10
    tbptt_chunk: int = 0  # > 0: truncated BPTT in chunks of this many tokens (recurrent architectures only)
    deterministic: bool = False  # torch.use_deterministic_algorithms(True)
    vanishing_grad_norm: float = 1e-6  # a step whose gradient norm falls below this is flagged "vanishing"
    exploding_grad_norm: float = 1e3  # above this (or non-finite) it is flagged "exploding"
    skip_nonfinite_steps: bool = True  # drop the update of a step whose gradient is NaN/inf
    # With skip_nonfinite_steps: up to this many consecutive NaN/inf-gradient steps are skipped, one more stops the
    # run (0: stop at the first). Non-finite weights after a step always stop it. See the README (Training).
    max_nonfinite_steps: int = 3


@dataclass
class Recipe:
    """A training run, as ``seqzoo train`` reads it from a recipe file (one mapping per section) and ``train()``
    takes it. Every field and its default (``seqzoo train NAME --print-recipe`` prints a whole recipe; the README's
    Training section says more):

    Args:
        ``name`` = ``'run'``: the run's name; ``output_dir`` = ``None``: where it writes (None: ``runs/<name>``);
        ``task`` = ``None``: causal-lm | seq2seq | sequence-classification | token-classification (None: what the
            model's architecture does first: causal-lm, or seq2seq for an encoder-decoder).
        ``model.preset`` = ``None``: a name from ``seqzoo list`` (None, and no ``model.path``: lstm-tiny);
        ``model.config`` = ``{}``: config field overrides; ``model.path`` = ``None``: a saved model's folder to
            train further instead.
        ``data.source`` = ``'pydoc'``: pydoc | text | dataset | task | jsonl; ``data.path`` = ``None``: the text
            file(s), the dataset folder (``save_to_disk``) or the JSON-lines file; ``data.text_column`` =
            ``'text'``: a dataset's column of text; ``data.seq_len`` = ``None``: tokens per training sequence (None:
            128 for a corpus, what a task needs); ``data.eval_fraction`` = ``0.05``: a corpus's held-out tail;
            ``data.eval_samples`` = ``64``: sequences evaluated (per distance for tasks); ``data.tuning_set`` =
            ``False``: evaluate on a tuning set instead (``seqzoo lab sweep``); ``data.packing`` = ``None``: each
            document trained on alone (None: True unless ``train.tbptt_chunk`` > 0).
        ``data.task`` = ``None``: a generated task (copy, selective_copy, associative_recall, induction; seq2seq:
            copy, reverse, sort, digits, dates; classification: appears_later, first_letter);
            ``data.distances`` = ``[8, 32]``, ``data.symbols`` = ``16``, ``data.items`` = ``4``,
            ``data.distance_mix`` = ``'sample'``: the memory tasks' distances, content vocabulary, items to copy or
            recall, and whether each sequence (sample) or each step (batch) draws a distance;
            ``data.source_lengths`` = ``[4, 8, 16]``, ``data.max_source_length`` = ``None``: seq2seq sources' lengths
            drawn, and where longer ones are cut (None: never); ``data.labels`` = ``None``: a classifier's label
            names in id order (None: the data's, sorted).
        ``optim.lr`` = ``0.003``, ``optim.weight_decay`` = ``0.01``, ``optim.betas`` = ``[0.9, 0.95]``,
            ``optim.eps`` = ``1e-08``: AdamW's; ``optim.warmup_steps`` = ``None``: (None: 10% of
            ``train.max_steps``, at most 100); ``optim.schedule`` = ``'cosine'``: cosine | linear | constant after
            the warmup; ``optim.min_lr_ratio`` = ``0.1``: where the decay ends, as a fraction of lr;
            ``optim.max_grad_norm`` = ``1.0``: gradient clipping (0: none).
        ``train.max_steps`` = ``200``; ``train.batch_size`` = ``32``: sequences per optimizer step over all processes
            and accumulation steps; ``train.gradient_accumulation_steps`` = ``1``; ``train.mixed_precision`` =
            ``'no'``: no | fp16 | bf16; ``train.seed`` = ``0``; ``train.eval_every`` = ``100`` (0: at the end only);
            ``train.save_every`` = ``100``: checkpoints (0: none); ``train.save_total_limit`` = ``2``: checkpoints
            kept; ``train.log_every`` = ``10``: steps between log lines; ``train.tbptt_chunk`` = ``0``: truncated
            BPTT in chunks of this many tokens (recurrent architectures); ``train.deterministic`` = ``False``:
            ``torch.use_deterministic_algorithms(True)``; ``train.vanishing_grad_norm`` = ``1e-06``,
            ``train.exploding_grad_norm`` = ``1000.0``: the gradient norms below or above which a step is flagged;
            ``train.skip_nonfinite_steps`` = ``True``: drop a NaN/inf-gradient step's update;
            ``train.max_nonfinite_steps`` = ``3``: such steps in a row skipped before the run stops.
    """

    name: str = "run"
    output_dir: str | None = None  # default: runs/<name>
    # causal-lm | seq2seq | sequence-classification | token-classification; default: what the model preset's
    # architecture does (its first head: causal-lm, or seq2seq for an encoder-decoder)
    task: str | None = None
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def __post_init__(self) -> None:
        self._check_types()  # (before output_dir is made from name: a name of None stopped in pathlib)
        if self.output_dir is None:
            self.output_dir = str(Path("runs") / self.name)
        self._expand_home()
        self.validate()

    def _expand_home(self) -> None:
        """``~`` (and ``~user``) at the start of ``output_dir``, ``model.path`` or a ``data.path`` is the home folder,
        as a shell and transformers' ``TrainingArguments`` (its ``output_dir``) read it: unexpanded, a run trained
        into a folder named ``~`` under the current one, and a ``~/corpus.txt`` was not found. Expanded here, once,
        so that the run id, ``recipe.yaml`` and every message name the folder meant."""
        if isinstance(self.output_dir, str):
            self.output_dir = os.path.expanduser(self.output_dir)
        if isinstance(self.model.path, str):
            self.model.path = os.path.expanduser(self.model.path)
        path = self.data.path
        if isinstance(path, str):
            self.data.path = os.path.expanduser(path)
        elif isinstance(path, list):
            self.data.path = [os.path.expanduser(p) if isinstance(p, str) else p for p in path]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def warmup(self) -> int:
        """Warmup steps: ``optim.warmup_steps``, or 10% of ``train.max_steps`` (at most 100) when unset."""
        if self.optim.warmup_steps is not None:
            return self.optim.warmup_steps
        return min(100, self.train.max_steps // 10)

    @property
    def run_id(self) -> str:
        """12 hex digits identifying the training trajectory this recipe describes."""
        canonical = json.dumps(trajectory_fields(self.to_dict()), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def _check_types(self) -> None:
        """Check each field's value against its annotation, as recipe_from_dict checks a recipe file's: a recipe
        built in Python skipped that, so ``max_steps=True`` trained one step, ``batch_size=True`` one row, and a
        truthy string (``deterministic='no'``) turned a flag on. Numbers must be numbers here (YAML's ``3e-3`` is
        text, parsed by recipe_from_dict), and each number field takes its float (``lr=1`` is ``1.0``, as read from
        YAML, so the run id is the same)."""
        for key, annotation in typing.get_type_hints(Recipe).items():
            if key not in SECTIONS:
                setattr(self, key, coerce(getattr(self, key), annotation, key, from_text=False))
        for section, cls in SECTIONS.items():
            body = getattr(self, section)
            _check(isinstance(body, cls), section, body, f"a {cls.__name__}: Recipe({section}={cls.__name__}(...)) "
                   f"(recipe_from_dict builds a recipe from mappings: recipe_from_dict({{{section!r}: {{...}}}}))")
            for name, annotation in typing.get_type_hints(cls).items():
                setattr(body, name, coerce(getattr(body, name), annotation, f"{section}.{name}", from_text=False))

    def validate(self) -> None:
        import seqzoo

        self._check_types()  # (again: a field may have been set since the recipe was built)
        d, o, t = self.data, self.optim, self.train
        _check(isinstance(self.name, str) and self.name != "", "name", self.name, "a non-empty string")
        # (an empty output_dir, from an unset variable in an override, trained into the current folder)
        _check(isinstance(self.output_dir, str) and self.output_dir.strip() != "", "output_dir", self.output_dir,
               "a folder for checkpoints, metrics and the final model (leave it out for runs/<name>)")
        config = self.model.config  # (its keys become keyword arguments; a YAML key `1:` stopped the run)
        _check(isinstance(config, dict) and all(isinstance(key, str) for key in config), "model.config", config,
               "a mapping of names (strings) to values")
        m = self.model
        if m.path is None:
            m.preset = DEFAULT_PRESET if m.preset is None else m.preset
            presets = seqzoo.list_models()
            _check(m.preset in presets, "model.preset", m.preset, f"a model preset, one of {', '.join(presets)}",
                   choices=presets)
            heads = seqzoo.registry.preset_values(m.preset)[0].heads
            if self.task is None:
                self.task = next(iter(heads))
            # (hints from this preset's heads: `task=seq2seq` on an LSTM was asked "did you mean 'seq2seq'?")
            trained = [t for t in heads if t in TRAINED_TASKS]
            _check(self.task in trained, "task", self.task,
                   f"a task model.preset={m.preset!r} has a head for: {', '.join(trained)}", choices=trained)
        else:
            _check(m.preset is None, "model.preset", m.preset, "null with model.path (the model comes from the "
                   "saved folder; a preset builds a new one: give one of the two)")
            _check(not config, "model.config", config, "{} with model.path (a saved model trains with the config it "
                   "was saved with)")
            # (an unset shell variable, `model.path=$MODEL`, would otherwise name the current folder)
            _check(bool(m.path.strip()), "model.path", m.path, "the path of a folder holding a saved model (to "
                   "train the one in the current folder, model.path=.)")
            saved_task = saved_model_task(m.path)
            if self.task is None:
                self.task = saved_task
            _check(self.task == saved_task, "task", self.task, f"{saved_task!r}, the task of the head saved in "
                   f"model.path={m.path!r} (a saved model trains with its own head)")
        _check(d.source in DATA_SOURCES, "data.source", d.source, f"one of {', '.join(DATA_SOURCES)}")
        if d.source in ("text", "dataset", "jsonl"):
            _check(d.path is not None, "data.path", d.path, f"a path (data.source={d.source!r} reads one)")
            _check(d.path != [], "data.path", d.path, f"a path or a non-empty list of paths (data.source={d.source!r} "
                   "reads them)")
            _check(d.source != "dataset" or isinstance(d.path, str), "data.path", d.path,
                   "one folder written by datasets' save_to_disk (data.source='dataset' reads one, not a list)")
        else:  # pydoc and task read no file: a path given with them would be ignored without a word
            _check(d.path is None, "data.path", d.path, f"null with data.source={d.source!r}, which reads no file "
                   "(set data.source=text, dataset or jsonl to train on it)")
        if d.source != "task":  # (a recipe preset switched to a file keeps its task's settings: not read)
            _check(d.task is None, "data.task", d.task, f"null with data.source={d.source!r} (data.task names a "
                   "generated task: set data.source=task to train on it)")
        defaults = DataSection()
        for name, why in self._unread_data_fields().items():
            _check(getattr(d, name) == getattr(defaults, name), f"data.{name}", getattr(d, name),
                   f"its default ({getattr(defaults, name)!r}) {why}")
        if self.task != "causal-lm" or d.labels is not None:
            _check(self.task in LABEL_TASKS or d.labels is None, "data.labels", d.labels,
                   "null: label names belong to task: sequence-classification | token-classification recipes")
        if self.task not in LABEL_TASKS:  # (a config.json field, set here, that no head of this task reads)
            given = sorted(CLASSIFIER_FIELDS & set(self.model.config))
            _check(not given, f"model.config.{given[0] if given else ''}",
                   self.model.config.get(given[0]) if given else None,
                   f"unset with task: {self.task} (only the classification heads read it)")
        if self.task == "seq2seq":
            self._validate_seq2seq_data()
        elif self.task in LABEL_TASKS:
            self._validate_label_data()
        elif d.source == "jsonl":
            _check(False, "data.source", d.source, "pydoc, text, dataset or task (jsonl files train task: seq2seq, "
                   "sequence-classification or token-classification)")
        elif d.source == "task":
            from seqzoo.training.data import TASKS

            _check(d.task in TASKS, "data.task", d.task, f"one of {', '.join(TASKS)}", choices=list(TASKS))
            _check(len(d.distances) > 0 and all(x >= 1 for x in d.distances), "data.distances", d.distances,
                   "a non-empty list of integers >= 1")
            _check(d.symbols >= 2, "data.symbols", d.symbols, "an integer >= 2")
            _check(d.items >= 1, "data.items", d.items, "an integer >= 1")
            _check(d.distance_mix in ("sample", "batch"), "data.distance_mix", d.distance_mix, "sample or batch",
                   choices=["sample", "batch"])
        self._validate_packing()
        _check(d.seq_len is None or d.seq_len >= 1, "data.seq_len", d.seq_len, "an integer >= 1 or null")
        _check(0.0 < d.eval_fraction < 1.0, "data.eval_fraction", d.eval_fraction, "a number in (0, 1)")
        _check(d.eval_samples >= 1, "data.eval_samples", d.eval_samples, "an integer >= 1")
        if d.tuning_set:
            _check(self.task == "causal-lm" and (d.source == "task" or d.source in CORPORA), "data.tuning_set",
                   d.tuning_set, f"false with task {self.task!r} and data.source={d.source!r}: a tuning set is drawn "
                   f"for causal-lm recipes on a generated task or a corpus ({', '.join(CORPORA)})")
            if d.source in CORPORA:  # the tuning block is the eval_fraction before the held-out tail
                _check(d.eval_fraction < 0.5, "data.eval_fraction", d.eval_fraction,
                       "a number in (0, 0.5) with data.tuning_set=true (the tuning set takes the eval_fraction "
                       "before the held-out tail, and training what is left before it)")
        _check(o.lr > 0, "optim.lr", o.lr, "a number > 0")
        _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a number >= 0")
        _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", o.betas,
               "two numbers in [0, 1)")
        _check(o.eps > 0, "optim.eps", o.eps, "a number > 0")
        _check(o.warmup_steps is None or o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps,
               "an integer >= 0, or null (10% of train.max_steps, at most 100)")
        _check(o.schedule in SCHEDULES, "optim.schedule", o.schedule, f"one of {', '.join(SCHEDULES)}",
               choices=list(SCHEDULES))
        _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "a number in [0, 1]")
        if o.schedule == "constant":  # (read by the decay alone: it was taken and ignored)
            _check(o.min_lr_ratio == OptimSection.min_lr_ratio, "optim.min_lr_ratio", o.min_lr_ratio,
                   f"its default ({OptimSection.min_lr_ratio}) with optim.schedule='constant', which decays to no "
                   "lower learning rate (set optim.schedule=cosine or linear)")
        _check(o.max_grad_norm >= 0, "optim.max_grad_norm", o.max_grad_norm, "a number >= 0 (0 = no clipping)")
        _check(t.max_steps >= 1, "train.max_steps", t.max_steps, "an integer >= 1")
        _check(0 <= t.seed < 2**32, "train.seed", t.seed, "an integer in [0, 2**32) (numpy's seeding takes no other)")
        _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "an integer >= 1")
        _check(t.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps",
               t.gradient_accumulation_steps, "an integer >= 1")
        _check(t.mixed_precision in MIXED_PRECISION, "train.mixed_precision", t.mixed_precision,
               f"one of {', '.join(MIXED_PRECISION)}", choices=list(MIXED_PRECISION))
        for name in ("eval_every", "save_every", "tbptt_chunk"):
            _check(getattr(t, name) >= 0, f"train.{name}", getattr(t, name), "an integer >= 0 (0 = off)")
        _check(t.save_total_limit >= 1, "train.save_total_limit", t.save_total_limit, "an integer >= 1")
        _check(t.log_every >= 1, "train.log_every", t.log_every, "an integer >= 1")
        _check(0 <= t.vanishing_grad_norm < t.exploding_grad_norm, "train.vanishing_grad_norm",
               t.vanishing_grad_norm, f"a number in [0, exploding_grad_norm={t.exploding_grad_norm})")
        _check(t.max_nonfinite_steps >= 0, "train.max_nonfinite_steps", t.max_nonfinite_steps,
               "an integer >= 0 (0 = stop at the first non-finite gradient)")
        # (each was taken and read by nothing)
        if not t.skip_nonfinite_steps:
            _check(t.max_nonfinite_steps == TrainSection.max_nonfinite_steps, "train.max_nonfinite_steps",
                   t.max_nonfinite_steps, f"its default ({TrainSection.max_nonfinite_steps}) with "
                   "train.skip_nonfinite_steps=false, which skips no step (a non-finite gradient stops the run)")
        if t.save_every == 0:
            _check(t.save_total_limit == TrainSection.save_total_limit, "train.save_total_limit", t.save_total_limit,
                   f"its default ({TrainSection.save_total_limit}) with train.save_every=0, which writes no "
                   "checkpoint")

    def _unread_data_fields(self) -> dict[str, str]:
        """The data fields this recipe's task and source read nothing of, each with why. Set to other than its
        default, one would be ignored without a word (at its default it is what `--print-recipe` writes, and is
        taken)."""
        d = self.data
        unread = {}
        if d.source != "task":
            unread.update(dict.fromkeys(TASK_ONLY_FIELDS, f"with data.source={d.source!r}, which reads none of the "
                                        "generated tasks' settings (set data.source=task to train on a task)"))
        names = [] if self.task == "seq2seq" else ["source_lengths", "max_source_length"]
        if self.task == "seq2seq" and d.source == "jsonl":
            names.append("source_lengths")  # (the generated pairs draw their lengths; a file has its own)
        if self.task != "causal-lm":
            names += ["items", "distance_mix"] + (["distances"] if self.task == "seq2seq" else [])
        unread.update(dict.fromkeys(names, f"with task {self.task!r} and data.source={d.source!r}, which read(s) no "
                                           "such setting"))
        if self.task == "seq2seq":  # (a pair is as long as it is: max_source_length cuts sources)
            unread["seq_len"] = ("with task 'seq2seq', whose pairs are as long as they are (data.max_source_length "
                                 "cuts sources)")
        if d.source == "task":  # (generated data draws its evaluation sets: there is no fraction to hold out)
            unread["eval_fraction"] = ("with data.source='task', whose evaluation sets are drawn apart "
                                       "(data.eval_samples of them), not held out of the data")
            # Generated tasks that draw no letters, or sources of their own length.
            if (self.task, d.task) in (("seq2seq", "digits"), ("seq2seq", "dates")):
                unread["symbols"] = f"with data.task={d.task!r}, which draws digits or dates, not letters"
            if (self.task, d.task) == ("seq2seq", "dates"):
                unread["source_lengths"] = "with data.task='dates', whose sources are dates of their own length"
            if (self.task, d.task) == ("token-classification", "appears_later"):
                unread["symbols"] = ("with data.task='appears_later', which draws its words from distance / 2 "
                                     "letters")
        return unread

    def _validate_packing(self) -> None:
        d, chunk = self.data, self.train.tbptt_chunk
        corpus = self.task == "causal-lm" and d.source in CORPORA
        if not corpus:
            _check(d.packing is None, "data.packing", d.packing,
                   f"null: packing applies to causal-lm text ({', '.join(CORPORA)}); with data.source="
                   f"{d.source!r} and task {self.task!r} every sample is a row of its own already")
            return
        if d.packing is None:
            d.packing = chunk == 0
        _check(not (d.packing and chunk > 0), "data.packing", d.packing,
               f"false with train.tbptt_chunk={chunk}: TBPTT carries each row's state from chunk to chunk, and a "
               "packed row has no one state to carry (several documents); set data.packing: false to train on the "
               "stream (context runs on across documents), or train.tbptt_chunk: 0")

    def _validate_seq2seq_data(self) -> None:
        from seqzoo.training.seq2seq import SEQ2SEQ_TASKS

        d = self.data
        _check(d.source in ("jsonl", "task"), "data.source", d.source, "jsonl or task (a task: seq2seq recipe "
               "trains on pairs)", choices=["jsonl", "task"])
        if d.source == "task":
            _check(d.task in SEQ2SEQ_TASKS, "data.task", d.task, f"a seq2seq task, one of {', '.join(SEQ2SEQ_TASKS)}",
                   choices=list(SEQ2SEQ_TASKS))
            _check(len(d.source_lengths) > 0 and all(x >= 1 for x in d.source_lengths), "data.source_lengths",
                   d.source_lengths, "a non-empty list of integers >= 1")
            _check(2 <= d.symbols <= 26, "data.symbols", d.symbols, "an integer in [2, 26] (letters)")
        _check(d.max_source_length is None or d.max_source_length >= 1, "data.max_source_length",
               d.max_source_length, "an integer >= 1 or null")
        _check(self.train.tbptt_chunk == 0, "train.tbptt_chunk", self.train.tbptt_chunk,
               "0 for task: seq2seq (encoder-decoders train on whole pairs)")

    def _validate_label_data(self) -> None:
        from seqzoo.training.classification import GENERATED_TASKS

        d, generated = self.data, GENERATED_TASKS[self.task]
        _check(d.source in ("jsonl", "task"), "data.source", d.source, f"jsonl or task (a task: {self.task} recipe "
               "trains on labelled texts)", choices=["jsonl", "task"])
        if d.source == "task":
            _check(d.task in generated, "data.task", d.task, f"a {self.task} task, one of {', '.join(generated)}",
                   choices=list(generated))
            _check(len(d.distances) > 0 and all(x >= 1 for x in d.distances), "data.distances", d.distances,
                   "a non-empty list of integers >= 1 (words per text)")
            _check(2 <= d.symbols <= 26, "data.symbols", d.symbols, "an integer in [2, 26] (letters)")
        if d.labels is not None:
            _check(len(d.labels) >= 2 and len(set(d.labels)) == len(d.labels), "data.labels", d.labels,
                   "a list of at least two distinct label names, in id order")
        given = sorted({"num_labels", "id2label", "label2id"} & set(self.model.config))
        _check(not given, f"model.config.{given[0] if given else ''}", self.model.config.get(given[0]) if given
               else None, "unset: a classifier's labels come from the data, or from data.labels")
        # The recipe trains one class per text (or per tagged byte) with cross-entropy over the class ids; a config
        # saying multi-label or regression would be saved as it is, and the pipelines would score the model so
        # (sigmoid, raw logits) though it was trained with a softmax.
        problem_type = self.model.config.get("problem_type")
        _check(problem_type in (None, "single_label_classification"), "model.config.problem_type", problem_type,
               f"unset or 'single_label_classification' (task: {self.task} trains one class per "
               f"{'text' if self.task == 'sequence-classification' else 'tagged word'} with cross-entropy)")
        _check(self.train.tbptt_chunk == 0, "train.tbptt_chunk", self.train.tbptt_chunk,
               f"0 for task: {self.task} (a classifier reads each text whole)")


def saved_model_task(path: str) -> str:
    """The task a seqzoo model saved in the folder ``path`` was saved for (the head its ``config.json`` names), read
    as JSON (no code runs); a clear error for anything else: no such folder, no config, another library's model, a
    head seqzoo does not train."""
    import seqzoo

    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        why = "" if folder.is_dir() else "; no such folder"
        if folder.is_file():
            why = f"; it is a file: give the folder it is in ({str(folder.parent)!r})"
        elif (folder / "trainer_state.json").is_file():
            why = ("; it is a checkpoint of seqzoo train, which saves no config: give the run's folder once the run "
                   f"finished (it saves its model there), or continue the run with --resume {path}")
        elif (folder / "recipe.yaml").is_file():
            why = ("; it is the folder of a run that has saved no model yet: continue the run with `seqzoo train "
                   f"{folder / 'recipe.yaml'} --resume`")
        elif not folder.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", path):
            why = (f"; no such folder (a Hub repository is not read here: download it first, `hf download {path} "
                   f"--local-dir {path.split('/')[1]}`, and give that folder)")
        raise ValueError(f"recipe field model.path={path!r} is invalid: expected a folder holding a saved model "
                         f"(save_pretrained writes its config.json){why}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError(f"a JSON {type(config).__name__}, not an object")
    except (OSError, ValueError) as err:
        raise ValueError(f"model.path={path!r}: its config.json cannot be read ({err})") from err
    try:
        saved_as, task = seqzoo.registry.saved_head(config)
    except ValueError:
        raise ValueError(f"model.path={path!r} holds a model of type {config.get('model_type')!r}, not one of "
                         "seqzoo's architectures: seqzoo train trains those (`seqzoo convert` turns Llama, Mamba, "
                         "RWKV and torch.nn checkpoints into them)") from None
    if saved_as is None:
        raise ValueError(f"model.path={path!r}: its config.json names no architecture (`architectures`, which "
                         "save_pretrained records), so the head it was saved with is not known; save the model again "
                         "with its save_pretrained")
    if task not in TRAINED_TASKS:
        raise ValueError(f"model.path={path!r} was saved as {saved_as!r}, which names no head seqzoo train trains "
                         f"({', '.join(TRAINED_TASKS)}); save the whole model with its head (its save_pretrained)")
    return task


def _check(ok: bool, name: str, value: Any, allowed: str, choices: list[str] | None = None) -> None:
    if not ok:
        close = difflib.get_close_matches(str(value), choices, n=1) if choices else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"recipe field {name}={value!r} is invalid: expected {allowed}{hint}")


def trajectory_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The recipe as a flat dotted dict, without the fields in NOT_IN_RUN_ID."""
    return {k: v for k, v in flatten(values).items()
            if k not in NOT_IN_RUN_ID and not (k in ADDED_LATER and v == ADDED_LATER[k])}


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "config":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ----------------------------------------------------------------------------------------------------------------
# Building a recipe from plain values (YAML, overrides), with type checks per field.

SECTIONS = {"model": ModelSection, "data": DataSection, "optim": OptimSection, "train": TrainSection}


def recipe_from_dict(values: dict[str, Any], source: str = "recipe") -> Recipe:
    """The :class:`Recipe` of ``values``, a mapping of sections as a recipe file holds them (``{"train":
    {"max_steps": 100}}``); an unknown key or a value of the wrong type raises ``ValueError`` naming it, and
    ``source`` (the file) in the message."""
    if not isinstance(values, dict):
        raise ValueError(f"{source}: a recipe must be a mapping of sections, got {type(values).__name__}")
    top = {"name", "output_dir", "task", *SECTIONS}
    _reject_unknown(values, top, source, "")
    kwargs: dict[str, Any] = {}
    top_hints = typing.get_type_hints(Recipe)
    for key in ("name", "output_dir", "task"):
        if key in values:
            kwargs[key] = coerce(values[key], top_hints[key], key)
    for section, cls in SECTIONS.items():
        body = values.get(section)
        if body is None:  # (absent, or `train:` with nothing under it; a 0, false, [] or '' is no empty section)
            body = {}
        if not isinstance(body, dict):
            raise ValueError(f"{source}: section {section!r} must be a mapping of fields, got {body!r}")
        _reject_unknown(body, {f.name for f in fields(cls)}, source, f"{section}.")
        hints = typing.get_type_hints(cls)
        kwargs[section] = cls(**{k: coerce(v, hints[k], f"{section}.{k}") for k, v in body.items()})
    return Recipe(**kwargs)


def _reject_unknown(values: dict[str, Any], allowed: set[str], source: str, prefix: str) -> None:
    unknown = sorted(set(values) - allowed, key=str)  # (YAML keys need not be strings: `1: x`)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
        hint = f" Did you mean {prefix}{close[0]}?" if close else ""
        raise ValueError(
            f"{source}: unknown recipe field {prefix}{key!r}.{hint} Allowed in "
            f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(allowed))}"
        )
