"""Model cards for published checkpoints, rendered from ``seqzoo/hub_cards/<architecture>.md`` with huggingface_hub.

A template is Markdown with Jinja2 placeholders, rendered by ``huggingface_hub.ModelCard.from_template``; it starts
with the ``{{ card_data }}`` metadata block and arranges the prose about how its architecture remembers around the
sections seqzoo computes for every card (see :func:`card_sections`). An architecture without its own template
(a plugin) gets ``seqzoo/hub_cards/generic.md`` and a logged warning.

The training record
-------------------
Data and evaluation figures come from ``seqzoo_training.json`` in the model folder, which ``seqzoo train`` writes
at the end of training. Every key is optional. The keys below are checked and shown on the card; any other key
(``run_id``, ``grad_health`` ...) is carried into the published repository unchanged::

    {
      "dataset": "roneneldan/TinyStories",     # a Hub dataset id or a name, or a list of them
      "tokens_seen": 52428800,                 # training tokens consumed (int >= 0)
      "steps": 12800,                          # optimizer steps (int >= 0)
      "eval": {                                # measured on held-out data: metric name -> number
        "loss": 1.42, "perplexity": 4.14, "accuracy": 0.61,
        "sets": {"validation": {"loss": 1.42, "perplexity": 4.14}}   # optional: the same, per evaluation set
      },
      "data": {"seq_len": 256, "train_tokens": 1048576},             # any JSON object describing the data
      "recipe": {"learning_rate": 0.0006, "batch_size": 32}          # any JSON object: how it was trained
    }

Datasets go into the card's ``model-index`` with the overall evaluation figures, and those named like Hub datasets
(no ``source:`` prefix) into its ``datasets`` metadata. A published record has its local paths cut to their last
component (:func:`public_training_record`): ``text:/home/me/corpus.txt`` is published as ``text:corpus.txt``.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from seqzoo.json_keys import DuplicateKeyError, unique_json_pairs
from seqzoo.registry import TASKS

logger = logging.getLogger("seqzoo.hub")

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "hub_cards"
GENERIC_TEMPLATE = "generic"
TRAINING_FILE = "seqzoo_training.json"
TRAINING_KEYS = ("dataset", "tokens_seen", "steps", "eval", "data", "recipe")  # checked and shown
DEFAULT_LICENSE = "apache-2.0"
# The license identifiers a Hub card's metadata takes (LICENSES_URL, 2026); the Hub refuses a card with another one
# when it is uploaded. A license without an identifier is "other", named in ``license_name``.
LICENSES_URL = "https://huggingface.co/docs/hub/repositories-licenses"
HUB_LICENSES = frozenset("""
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
    afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
    cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
    cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
    cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl
    gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr
    mpl-2.0 odc-by odbl openmdw-1.0 openmdw-1.1 openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl
    lgpl-lr deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4
    grok2-community gemma unknown other
""".split())
USAGE_PROMPT = "Once upon a time"
# How a card's first line names the model, by task (its head).
MODEL_KINDS = {"causal-lm": "language model", "sequence-classification": "text classifier",
               "token-classification": "tagger (token classifier)", "seq2seq": "encoder-decoder"}
# What comes after the layers, by task: the classic architectures' cards name it.
OUTPUT_LAYERS = {"causal-lm": "a linear decoder over the vocabulary",
                 "sequence-classification": "a linear classifier over the outputs pooled as `classifier_pooling: "
                                            "{pooling}` says",
                 "token-classification": "a linear classifier over every token's output"}
CONTEXT_EXAMPLE = 4096  # context length at which a card quotes the size of a growing KV cache


def template_path(architecture: str) -> Path:
    """``seqzoo/hub_cards/<architecture>.md``, or the generic template (with a warning) when there is none."""
    path = TEMPLATE_DIR / f"{architecture}.md"
    if path.is_file():
        return path
    logger.warning(
        "no model-card template %s for architecture %r; using the generic one (add seqzoo/hub_cards/%s.md to "
        "describe it)", path, architecture, architecture,
    )
    return TEMPLATE_DIR / f"{GENERIC_TEMPLATE}.md"


def load_training_record(folder: str | Path) -> dict[str, Any] | None:
    """The validated ``seqzoo_training.json`` of a model folder, or None when the folder has none."""
    path = Path(folder) / TRAINING_FILE
    if path.is_symlink() and not path.exists() or path.exists() and not path.is_file():
        # (passed over as if absent: the model was published without its record, and its card without its data)
        raise ValueError(f"{path} is damaged: a {'folder' if path.is_dir() else 'link to nothing'}, not a file; "
                         "put the record written by seqzoo train back, or remove it")
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique_json_pairs)
    except DuplicateKeyError as err:  # (JSON readers keep the last value)
        raise ValueError(f"{path} is damaged: {err}") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err})") from err
    return validate_training_record(record, source=str(path))


def validate_training_record(record: Any, source: str = TRAINING_FILE) -> dict[str, Any]:
    """Check the keys of a training record that cards show (format in the module docstring); return the record."""
    if not isinstance(record, dict):
        raise ValueError(f"{source}: expected a JSON object (keys such as {', '.join(TRAINING_KEYS)}); got {record!r}")
    dataset = record.get("dataset")
    names = [dataset] if isinstance(dataset, str) else dataset
    if dataset is not None and not (
        isinstance(names, list) and names and all(isinstance(n, str) and n.strip() for n in names)
    ):
        raise ValueError(f"{source}: 'dataset' must be a non-empty string or list of strings; got {dataset!r}")
    local = [name for name in names or () if _path_name(name) != name]  # ("text:/home/me/corpus.txt" is named)
    if local:  # (cut to its last component, "corpus.txt" read as a Hub dataset id in the card's metadata)
        raise ValueError(f"{source}: 'dataset' entry {local[0]!r} is a local path: name it as seqzoo train does "
                         f"({', '.join(f'{prefix}:PATH' for prefix in _SOURCE_PREFIXES)}: a text file, a saved "
                         "dataset folder, a JSON-lines file), or give a Hub dataset id")
    for key in ("tokens_seen", "steps"):
        value = record.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{source}: {key!r} must be an integer >= 0; got {value!r}")
    evaluation = record.get("eval")
    if evaluation is not None:
        if not isinstance(evaluation, dict):
            raise ValueError(f"{source}: 'eval' must map metric names to numbers; got {evaluation!r}")
        sets = evaluation.get("sets", {})
        if not isinstance(sets, dict) or not all(isinstance(v, dict) for v in sets.values()):
            raise ValueError(f"{source}: eval 'sets' must map set names to {{metric: number}} objects; got {sets!r}")
        _check_metrics(source, "eval", {k: v for k, v in evaluation.items() if k != "sets"})
        for name, metrics in sets.items():
            _check_metrics(source, f"eval set {name!r}", metrics)
    for key in ("data", "recipe"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            raise ValueError(f"{source}: {key!r} must be a JSON object; got {record[key]!r}")
    return dict(record)


def public_training_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as a published repository carries it: every absolute or home-relative local path in it (the data
    files, the output folder, ``text:/home/me/corpus.txt``) cut to its last component, so that a public card and
    ``seqzoo_training.json`` do not reveal the publisher's folders. The local file keeps the full paths."""
    return _without_local_paths(record)


def _without_local_paths(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_local_paths(item) for item in value]
    if isinstance(value, str):
        prefix, colon, rest = value.partition(":")
        if colon and prefix in _SOURCE_PREFIXES:  # a data name: "text:" and a comma-separated list of paths
            return f"{prefix}:" + ",".join(_path_name(part) for part in rest.split(","))
        return _path_name(value)
    return value


_SOURCE_PREFIXES = ("text", "dataset", "jsonl")  # how seqzoo train names the data it read from local files
# Data names without a prefix that are no Hub dataset: the Python documentation every CPython ships (`pydoc`).
LOCAL_DATASETS = frozenset({"pydoc_data.topics"})


def _path_name(text: str) -> str:
    if text.startswith(("/", "~", "\\\\")) or (len(text) > 2 and text[1] == ":" and text[2] in "/\\"):
        return Path(text.replace("\\", "/")).name or text
    return text


def _check_metrics(source: str, where: str, metrics: dict[str, Any]) -> None:
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{source}: {where} metric {name!r} must be a finite number; got {value!r}")


def check_license(license: Any, license_name: Any = None, license_link: Any = None) -> None:
    """Refuse a license the Hub's card metadata does not take: ``license`` is one of the Hub's identifiers
    (:data:`HUB_LICENSES`), or ``"other"`` with ``license_name`` (an id of the publisher's choosing, such as
    ``my-license-1.0``) and optionally ``license_link`` (a URL, or a file in the repository such as ``LICENSE``)."""
    if not isinstance(license, str) or license not in HUB_LICENSES:
        # (SPDX spells the identifiers in capitals and names the GPLs "-only" / "-or-later")
        lowered = license.strip().lower() if isinstance(license, str) else ""
        spdx = re.sub(r"-(only|or-later)$", "", lowered)
        close = [spdx] if spdx in HUB_LICENSES else difflib.get_close_matches(lowered, sorted(HUB_LICENSES), n=1,
                                                                               cutoff=0.8)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"license {license!r} is not a license identifier of the Hugging Face Hub{hint}: give one of its "
            f"identifiers, such as apache-2.0, mit or cc-by-4.0 (all of them: {LICENSES_URL}), or a license of "
            "another name as license 'other' with its name in license_name (command line: --license other "
            "--license-name my-license-1.0 [--license-link URL])"
        )
    if license == "other":
        if license_name is None:
            raise ValueError(
                "license 'other' needs the license's name: pass license_name (command line: --license-name), an id "
                "such as my-license-1.0, and link its text with license_link (a URL, or a LICENSE file in the "
                f"repository); a license the Hub knows goes in license itself ({LICENSES_URL})"
            )
        if not isinstance(license_name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._+-]*", license_name):
            raise ValueError(
                f"license_name {license_name!r} is not a license id: lowercase letters, digits and . _ + - without "
                "spaces, such as my-license-1.0"
            )
        if license_link is not None and (not isinstance(license_link, str) or not (
                re.fullmatch(r"https?://\S+", license_link) or re.fullmatch(r"[\w.-]+(/[\w.-]+)*", license_link))
                or ".." in license_link.split("/")):
            raise ValueError(
                f"license_link {license_link!r} is neither a URL (https://...) nor the name of a file in the "
                "repository (LICENSE, LICENSE.md)"
            )
    else:
        given = [name for name, value in (("license_name", license_name), ("license_link", license_link))
                 if value is not None]
        if given:
            raise ValueError(
                f"{' and '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} to license 'other'; license "
                f"{license!r} is named by its identifier alone"
            )


def render_model_card(
    model: Any,
    spec: Any,
    *,
    repo_id: str,
    code_files: list[str],
    license: str = DEFAULT_LICENSE,
    license_name: str | None = None,
    license_link: str | None = None,
    training: dict[str, Any] | None = None,
) -> ModelCard:
    """The card of ``model`` (an architecture of ``spec``) published as ``repo_id``, under ``license`` (see
    :func:`check_license`)."""
    check_license(license, license_name, license_link)
    model_name = repo_id.rsplit("/", 1)[-1]
    datasets = _datasets(training)
    evaluation = _overall_metrics(training)
    pipeline_tag = TASKS[spec.task_of(type(model))][1]
    # The metadata's datasets link to Hub datasets: a local source ("text:corpus.txt") is named in the prose only.
    hub_datasets = [name for name in datasets if ":" not in name and name not in LOCAL_DATASETS]
    # The figures are those of the whole validation set, every source of it: the model-index (whose dataset is a Hub
    # dataset's id) carries them where that is one Hub dataset; otherwise the card's prose alone shows them (they
    # were credited to the first source, a local file's name given as a Hub id).
    eval_results = [
        EvalResult(task_type=pipeline_tag, dataset_type=hub_datasets[0], dataset_name=hub_datasets[0],
                   metric_type=name, metric_value=value)
        for name, value in evaluation.items()
    ] if len(datasets) == 1 and datasets == hub_datasets else None
    card_data = ModelCardData(
        license=license,
        license_name=license_name,
        license_link=license_link,
        library_name="seqzoo",
        pipeline_tag=pipeline_tag,
        tags=["seqzoo", spec.name, spec.model_type, "custom_code"],
        datasets=hub_datasets or None,
        model_name=model_name if eval_results else None,  # names the model-index entry; not a key on its own
        eval_results=eval_results or None,
    )
    sections = card_sections(model, spec, repo_id=repo_id, code_files=code_files, training=training)
    return ModelCard.from_template(card_data, template_path=str(template_path(spec.name)), **sections)


def card_sections(
    model: Any, spec: Any, *, repo_id: str, code_files: list[str], training: dict[str, Any] | None
) -> dict[str, Any]:
    """The template variables: names, parameter counts and the Markdown sections every card shows."""
    config = model.config
    counts = parameter_counts(model)
    dtype = next(model.parameters()).dtype
    return {
        "repo_id": repo_id,
        "model_name": repo_id.rsplit("/", 1)[-1],
        "architecture": spec.name,
        "description": spec.description or spec.name,
        "model_type": spec.model_type,
        "config": config,  # templates may read any field or property: {{ config.hidden_size }}
        "parameters": {key: f"{value:,}" for key, value in counts.items()},
        "memory_table": memory_table(config, counts, dtype,
                                     generates=spec.task_of(type(model)) in ("causal-lm", "seq2seq")),
        "parameters_table": _table(["parameters", "count"], [
            ["total (tied weights counted once)", f"{counts['total']:,}"],
            ["embeddings (token and position tables)", f"{counts['embedding']:,}"],
            ["everything else", f"{counts['total'] - counts['embedding']:,}"],
        ]),
        "config_table": config_table(config),
        "training_section": training_section(training),
        "usage": usage_section(repo_id, spec.task_of(type(model))),
        "heads_section": heads_section(spec, type(model), config),
        "model_kind": MODEL_KINDS.get(spec.task_of(type(model)), "model"),
        "output_layer": OUTPUT_LAYERS.get(spec.task_of(type(model)), "its head").format(
            pooling=getattr(config, "classifier_pooling", None)),
        "files_section": files_section(code_files, generates=spec.task_of(type(model)) in ("causal-lm", "seq2seq")),
    }


def parameter_counts(model: Any) -> dict[str, int]:
    """Total and embedding parameters, and the weights one decoded token multiplies through (``per_token``)."""
    from torch import nn

    parameters = list(model.parameters())  # shared (tied) tensors appear once
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    total = sum(p.numel() for p in parameters)
    embedding = sum(p.numel() for p in parameters if id(p) in embedding_ids)
    # An embedding lookup costs no multiplications, but a head tied to the embedding multiplies through it again.
    head = model.get_output_embeddings()
    tied_head = head.weight.numel() if head is not None and id(head.weight) in embedding_ids else 0
    # An encoder-decoder runs its encoder once per source, not once per decoded token.
    encoder = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else None
    encoder_only = sum(p.numel() for p in encoder.parameters() if id(p) not in embedding_ids) if encoder else 0
    return {"total": total, "embedding": embedding, "per_token": total - embedding - encoder_only + tied_head}


def memory_table(config: Any, counts: dict[str, int], dtype: Any, generates: bool = True) -> str:
    """What the model keeps between tokens, and what one decode step (for a model that does not generate: one token
    read) costs."""
    width = dtype.itemsize
    dtype_name = str(dtype).removeprefix("torch.")
    try:
        state = config.state_bytes_per_sequence(width)
    except NotImplementedError:
        state = None
    kv = config.kv_bytes_per_token(width)
    # An encoder-decoder's state is its decoder's, which reads one way whatever its encoder does.
    bidirectional = bool(getattr(config, "bidirectional", False)) and not getattr(config, "is_encoder_decoder", False)
    rows = []
    if state is None:
        rows.append(["state per sequence", "not reported by this architecture"])
    elif state and bidirectional:  # each direction carries its own state across the text
        both_ways = getattr(config, "bidirectional_state_bytes", None)  # (a plugin's config may not say)
        both = both_ways(width) if both_ways is not None else 2 * state
        rows.append(["state carried per sequence", f"{_bytes(both)} with {dtype_name} weights, both reading "
                     "directions together; the same at every context length"])
    elif state:
        # (a hybrid's recurrent layers keep this fixed part beside the KV cache of its attention layers below)
        beside = "; the KV cache below comes on top" if kv else ""
        rows.append(["state carried per sequence", f"{_bytes(state)} with {dtype_name} weights; the same at every "
                     f"context length{beside}"])
    # An encoder-decoder with recurrent layers caches its attention's keys over the source alone (its Transformer
    # decoder caches source and target tokens alike).
    source_only = getattr(config, "is_encoder_decoder", False) and state
    context = "source token" if source_only else "token of context"
    if kv:
        # (at most the positions the model reads: a 1,024-position model was quoted at 4,096 tokens)
        limit = getattr(config, "max_input_length", None)
        example = CONTEXT_EXAMPLE if not isinstance(limit, int) else min(CONTEXT_EXAMPLE, limit)
        most = f" (its most, {example:,} positions)" if example < CONTEXT_EXAMPLE else ""
        rows.append([f"KV cache per {context}", f"{_bytes(kv)}; {_bytes(kv * example)} at {example:,} tokens{most}"])
    flops = f"≈ {2 * counts['per_token']:,} FLOPs in weight products ({counts['per_token']:,} weights, 2 FLOPs each)"
    if kv and source_only:
        step = f"{flops}, plus attention over the source's keys: grows with the source, not with the tokens decoded"
    elif kv:
        step = f"{flops}, plus attention that reads the KV cache of every earlier token: grows with the context"
    else:
        step = f"{flops}; constant: it does not grow with the context"
    rows.append(["cost per decoded token" if generates else "cost per token read", step])
    return _table(["memory", "size or cost"], rows)


def config_table(config: Any) -> str:
    """The architecture's own config fields (not transformers' generic ones) and their values."""
    from transformers import PreTrainedConfig

    generic = {f.name for f in fields(PreTrainedConfig)}
    values = config.to_dict()
    rows = [["model_type", f"`{config.model_type}`"]]
    for f in fields(config):
        if f.name not in generic and f.name in values:
            rows.append([f.name, f"`{json.dumps(values[f.name])}`"])
    return _table(["field", "value"], rows)


def training_section(training: dict[str, Any] | None) -> str:
    no_record = (f"This checkpoint was published without a training record (`{TRAINING_FILE}`), so its training data "
                 "and quality are unknown. An untrained checkpoint generates noise.")
    if not training:
        return no_record
    lines = []
    model_section = (training.get("recipe") or {}).get("model")  # ("recipe" is any JSON object: "model" may be text)
    started_from = model_section.get("path") if isinstance(model_section, dict) else None
    if isinstance(started_from, str):  # (seqzoo train's model.path: the figures below are that run's only)
        lines += [f"Trained further from a saved model (`{started_from}`): the data, tokens and steps below are "
                  "those of this last run only, not of the training the saved model had before.", ""]
    # (a key given as null is no figure: validate_training_record lets it pass, so the card leaves it out)
    if _datasets(training):
        lines.append(f"- Data: {', '.join(f'`{name}`' for name in _datasets(training))}")
    if training.get("tokens_seen") is not None:
        lines.append(f"- Tokens seen: {training['tokens_seen']:,}")
    if training.get("steps") is not None:
        lines.append(f"- Optimizer steps: {training['steps']:,}")
    overall = _overall_metrics(training)
    if overall:
        lines += ["", "Evaluation on held-out data:", "",
                  _table(["metric", "value"], [[name, f"{value:.4g}"] for name, value in overall.items()])]
    sets = (training.get("eval") or {}).get("sets") or {}
    if sets:
        metrics = sorted({metric for values in sets.values() for metric in values})
        rows = [[name] + [f"{values[m]:.4g}" if m in values else "" for m in metrics] for name, values in sets.items()]
        lines += ["", "Per evaluation set:", "", _table(["set"] + metrics, rows)]
    for key, title in (("data", "Data details"), ("recipe", "Recipe")):
        if training.get(key):
            lines += ["", f"{title}:", "",
                      _table(["setting", "value"], [[k, f"`{json.dumps(v)}`"] for k, v in training[key].items()])]
    # A record whose every key is null or empty holds no figure: the card says so rather than leave the section blank
    # (not that there is no record: the published folder holds it).
    return "\n".join(lines).strip() or (
        f"This checkpoint's training record (`{TRAINING_FILE}`) gives no data, steps or evaluation, so its training "
        "data and quality are unknown. An untrained checkpoint generates noise.")


def _overall_metrics(training: dict[str, Any] | None) -> dict[str, float]:
    evaluation = (training or {}).get("eval") or {}
    return {name: value for name, value in evaluation.items() if name != "sets"}


def usage_section(repo_id: str, task: str = "causal-lm") -> str:
    """Two snippets that run as written (the tests execute both) and, for generating models, the command-line
    equivalent. Which Auto class and pipeline they use comes from the task table (seqzoo.registry.TASKS)."""
    auto_class, pipeline_tag = TASKS[task]

    def snippet(first_line: str, flag: str) -> str:
        head = (f"{first_line}from transformers import {auto_class}, AutoTokenizer"
                + (", pipeline" if task not in ("causal-lm", "seq2seq") else "") + "\n\n"
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{flag})\n'
                f'model = {auto_class}.from_pretrained("{repo_id}"{flag})\n')
        if task in ("causal-lm", "seq2seq"):
            return head + (
                f'inputs = tokenizer("{USAGE_PROMPT}", return_tensors="pt")\n'
                "output = model.generate(**inputs, max_new_tokens=20, do_sample=False)\n"
                "print(tokenizer.decode(output[0], skip_special_tokens=True))\n"
            )
        return head + (
            f'classify = pipeline("{pipeline_tag}", model=model, tokenizer=tokenizer)\n'
            f'print(classify("{USAGE_PROMPT}"))\n'
        )

    native = snippet("import seqzoo  # registers the seqzoo architectures with transformers\n", "")
    # AutoTokenizer reads config.json as well, and without the flag it would stop to ask about the auto_map.
    remote = snippet("", ", trust_remote_code=True")
    text = (
        "With seqzoo installed (from its source tree: `pip install -e .`; seqzoo is not on PyPI), its own classes "
        "and kernels load the checkpoint:\n\n"
        f"```python\n{native}```\n\n"
        "With only `torch` and `transformers`, the code bundled in this repository loads it:\n\n"
        f"```python\n{remote}```"
    )
    if task in ("causal-lm", "seq2seq"):
        text += f"\n\nFrom the command line: `seqzoo generate {repo_id} \"{USAGE_PROMPT}\" --max-new-tokens 40`."
    return text


def heads_section(spec: Any, model_class: type, config: Any) -> str:
    """Which head this checkpoint is, its labels, and every head its architecture offers (the registry's table)."""
    task = spec.task_of(model_class)
    lines = [f"This checkpoint is `{model_class.__name__}`, the `{task}` head (pipeline `{TASKS[task][1]}`)."]
    if getattr(config, "bidirectional", False) and task != "seq2seq":
        lines[0] += (" It is a bidirectional encoder: every layer reads the text left to right and right to left, so "
                     "it sees the whole text at once and cannot generate.")
    if task in ("sequence-classification", "token-classification"):
        labels = ", ".join(f"{i} `{name}`" for i, name in sorted(config.id2label.items()))
        lines.append(f"Its labels (`id2label`): {labels}.")
    rows = [[f"`{name}`", f"`{head.__name__}`", f"`{TASKS[name][0]}`", f"`{TASKS[name][1]}`"]
            for name, head in spec.heads.items()]
    lines += ["", f"The {spec.name} architecture offers these heads; the checkpoint's backbone loads into any of them "
              "that its configuration allows (a bidirectional one only into the classification heads), and the head "
              "it lacks starts newly initialised:", "", _table(["task", "class", "Auto class", "pipeline"], rows)]
    return "\n".join(lines)


def files_section(code_files: list[str], generates: bool = True) -> str:
    listed = ", ".join(f"`{name}`" for name in sorted(code_files))
    generation = "`generation_config.json`, " if generates else ""  # transformers writes none for a classifier
    return (
        f"`config.json` (with `auto_map`), `model.safetensors`, {generation}the tokenizer files, and "
        f"the self-contained code that seqzoo bundled for `trust_remote_code=True`: {listed}. The bundle carries "
        "seqzoo's PyTorch kernels; GPU kernels that seqzoo loads on demand need seqzoo installed. "
        "`seqzoo_bundle.json` records the seqzoo, transformers and torch versions the code was exported with and "
        "the transformers releases that seqzoo version is tested against."
    )


def _datasets(training: dict[str, Any] | None) -> list[str]:
    dataset = (training or {}).get("dataset")
    if dataset is None:
        return []
    return [dataset] if isinstance(dataset, str) else list(dataset)


def _bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count:,} bytes ({count / size:.1f} {unit})"
    return f"{count:,} bytes"


def _table(header: list[str], rows: list[list[str]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


__all__ = [
    "DEFAULT_LICENSE",
    "HUB_LICENSES",
    "TRAINING_FILE",
    "check_license",
    "load_training_record",
    "render_model_card",
    "template_path",
    "validate_training_record",
]
