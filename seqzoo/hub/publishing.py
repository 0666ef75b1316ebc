"""Export a seqzoo checkpoint as a self-contained Hub repository, and publish it through huggingface_hub.

The exported folder holds ``config.json`` (with ``auto_map``), ``model.safetensors``, ``generation_config.json``,
the tokenizer files, the flat code bundle (:mod:`seqzoo.hub.bundle`), ``README.md`` (the model card,
:mod:`seqzoo.hub.cards`) and, when the model has one, its ``seqzoo_training.json``. Where seqzoo is imported the
folder loads with seqzoo's own classes; elsewhere ``trust_remote_code=True`` loads the bundled copy.

Nothing is left half-written: :func:`export_folder` builds beside its destination and renames the finished folder
into place (:func:`seqzoo.outputs.staged_folder`; a failed write raises ``OutputError``), and :func:`publish`
builds in a temporary folder that is removed whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from seqzoo.hub.bundle import (
    BUNDLED_MARK,
    RECORD_FILE,
    build_bundle,
    bundle_record,
    plugin_mixers,
    write_bundle,
)
from seqzoo.hub.cards import (
    DEFAULT_LICENSE,
    TRAINING_FILE,
    check_license,
    load_training_record,
    public_training_record,
    render_model_card,
    validate_training_record,
)
from seqzoo.outputs import check_named, staged_folder
from seqzoo.utils import quiet_transformers, unwrap, weights_fingerprint


class PublishError(RuntimeError):
    """Publishing failed: no token, the Hub refused, or the connection broke. The message says which and why."""


@dataclass
class _Checkpoint:
    model: Any
    spec: Any
    tokenizer: Any
    training: dict[str, Any] | None
    # Files of the source folder that belong to the model and go with it: the initial hidden state `seqzoo convert
    # word-lm --hidden` saved (left out, a republish deleted it from the repository as a stale model file).
    extra_files: tuple[Path, ...] = ()


def export_folder(
    source: str | os.PathLike | Any,
    output: str | os.PathLike,
    *,
    repo_id: str,
    license: str = DEFAULT_LICENSE,
    license_name: str | None = None,
    license_link: str | None = None,
    tokenizer: Any = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Build the folder that :func:`publish` would upload as ``repo_id``, at ``output`` (which must not exist or
    be empty), without uploading. ``source`` is a saved model folder or a seqzoo model (then pass ``tokenizer``).
    ``license`` is a Hub license identifier, or ``"other"`` with ``license_name`` and optionally ``license_link``
    (:func:`seqzoo.hub.cards.check_license`)."""
    check_named(output, "output")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"output {output} already exists and is not an empty folder; choose a new path")
    _validate_repo_id(repo_id)
    licensing = _licensing(license, license_name, license_link)
    checkpoint = _load_checkpoint(source, tokenizer, training)
    with staged_folder(output) as staging:  # built beside the destination and renamed into place when complete
        _write_folder(checkpoint, staging, repo_id=repo_id, licensing=licensing)
    return output


def publish(
    source: str | os.PathLike | Any,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    license: str = DEFAULT_LICENSE,
    license_name: str | None = None,
    license_link: str | None = None,
    tokenizer: Any = None,
    training: dict[str, Any] | None = None,
) -> str:
    """Export ``source`` and upload it to the Hub model repository ``repo_id`` in one commit; return its URL.

    The repository is created if missing (``private`` applies only then). ``revision`` names the branch to
    commit to, created from ``main`` if missing. Over an earlier checkpoint in the repository, the commit also
    deletes the files of a model that one had and this one does not write (weight files of another layout, a peft
    adapter, tokenizer files, a generation config, code seqzoo bundled for it, its ``seqzoo_training.json``: the names
    :func:`model_files` lists); the owner's other files stay. The token is ``token``, else ``HF_TOKEN``, else
    the one saved by ``hf auth login``. The Hub endpoint is ``HF_ENDPOINT`` (https://huggingface.co by default).
    ``license``, ``license_name`` and ``license_link`` are checked before anything is uploaded (as in
    :func:`export_folder`).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    _validate_repo_id(repo_id)
    licensing = _licensing(license, license_name, license_link)
    token = _write_token(token, repo_id)
    checkpoint = _load_checkpoint(source, tokenizer, training)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="seqzoo-publish-") as staging:
        files = _write_folder(checkpoint, Path(staging), repo_id=repo_id, licensing=licensing)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(Path(staging) / name))
                      for name in files]
        message = commit_message or f"Publish a seqzoo {checkpoint.spec.name} checkpoint"
        with _hub_errors(api.endpoint, repo_id, "creating the repository", may_have_committed=False):
            api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None and revision != "main":
            with _hub_errors(api.endpoint, repo_id, f"creating the branch {revision!r}", may_have_committed=False):
                api.create_branch(repo_id, branch=revision, exist_ok=True)
        # Publishing over an earlier checkpoint replaces it: what the earlier one left that this one does not write
        # (weights in another layout, an adapter, another tokenizer, another architecture's code, a training record)
        # would otherwise stay beside the new files and be read with them. The owner's other files stay.
        with _hub_errors(api.endpoint, repo_id, "reading the repository", may_have_committed=False):
            existing = [sibling.rfilename for sibling in api.model_info(repo_id, revision=revision).siblings or []]
            left = [name for name in existing if name not in files]
            stale = [name for name in left if "/" not in name
                     and (_WEIGHT_FILE.fullmatch(name) or _MODEL_FILE.fullmatch(name))]
            code = [name for name in left if "/" not in name and name.endswith(".py")]
            stale += _bundled_files(api, repo_id, revision, code, Path(staging) / ".old")
        operations += [CommitOperationDelete(path_in_repo=name) for name in sorted(stale)]
        with _hub_errors(api.endpoint, repo_id, "uploading the files", may_have_committed=True):
            info = api.create_commit(repo_id, operations, commit_message=message, revision=revision)
    return info.commit_url


def refresh_code(
    repo_id: str,
    *,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Rewrite the code of the existing Hub repository ``repo_id`` with this seqzoo's bundle, in one commit; return
    its URL. Weights, tokenizer, card and every other file stay as they are; config.json changes only in its
    ``auto_map``, and ``seqzoo_bundle.json`` records the new code's versions. Bundled files the new code no longer
    needs are deleted.

    Code published by an older seqzoo may not work with a newer transformers (bundles exported before seqzoo
    handled transformers 5.24 decode from an empty state there); this brings such a repository up to date without
    re-uploading its weights."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    import seqzoo  # noqa: F401  (registers the architectures)
    from seqzoo.registry import architecture_for_model_type

    _validate_repo_id(repo_id)
    api = HfApi(token=_write_token(token, repo_id))
    with tempfile.TemporaryDirectory(prefix="seqzoo-refresh-") as staging:
        folder = Path(staging)
        with _hub_errors(api.endpoint, repo_id, "reading the repository", may_have_committed=False):
            existing = [sibling.rfilename for sibling in api.model_info(repo_id, revision=revision).siblings or []]
            if "config.json" not in existing:
                raise PublishError(f"{repo_id!r} has no config.json, so it holds no model whose code could be "
                                   "refreshed")
            downloaded = api.hf_hub_download(repo_id, "config.json", revision=revision, local_dir=folder / "old")
        try:
            config = json.loads(Path(downloaded).read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise PublishError(f"{repo_id!r}: its config.json is not valid JSON ({err}), so it holds no model whose "
                               "code could be refreshed; publish the model again") from err
        if not isinstance(config, dict):
            raise PublishError(f"{repo_id!r}: its config.json must hold a JSON object (a model's configuration); got "
                               f"a {type(config).__name__}, so it holds no model whose code could be refreshed")
        try:
            spec = architecture_for_model_type(config.get("model_type"))
        except ValueError as err:
            raise PublishError(f"{repo_id!r} does not hold a seqzoo model this seqzoo knows: {err}") from err
        try:  # (a hybrid's plugin mixers are bundled with it, as save_pretrained bundles them)
            mixers = plugin_mixers(spec, config)
        except ValueError as err:
            raise PublishError(f"{repo_id!r}: {err}; install the plugin that registers it to refresh this "
                               "repository's code") from err
        bundle = build_bundle(spec, mixers)
        packages = {origin.partition(".")[0] for origin in bundle.origins.values()}
        candidates = sorted(
            name for name in existing
            if "/" not in name and name.endswith(".py") and name[:-3] not in bundle.files
            and name.startswith((*(f"{package}_" for package in packages), "configuration_", "modeling_"))
        )
        with _hub_errors(api.endpoint, repo_id, "reading the repository", may_have_committed=False):
            stale = _bundled_files(api, repo_id, revision, candidates, folder / "old")
        files = [path.name for path in bundle.write(folder)]
        (folder / RECORD_FILE).write_text(json.dumps(bundle_record(), indent=2) + "\n", encoding="utf-8")
        files.append(RECORD_FILE)
        if config.get("auto_map") != bundle.auto_map:
            config["auto_map"] = bundle.auto_map
            (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            files.append("config.json")
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
        operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
        message = commit_message or f"Refresh the bundled code with seqzoo {seqzoo.__version__}"
        with _hub_errors(api.endpoint, repo_id, "uploading the code", may_have_committed=True):
            info = api.create_commit(repo_id, operations, commit_message=message, revision=revision)
    return info.commit_url


# The weight files transformers reads (one file or shards with their index), which a new checkpoint replaces: also
# those of a variant (``from_pretrained(variant="fp16")`` reads ``model.fp16.safetensors``, its shards
# ``model.fp16-00001-of-00002.safetensors`` and their index ``model.safetensors.index.fp16.json``), which a new
# checkpoint, written without one, leaves as the earlier model's weights.
_VARIANT = r"(\.[^/]+?)?"
_WEIGHT_FILE = re.compile(rf"(model|pytorch_model){_VARIANT}(-\d+-of-\d+)?\.(safetensors|bin)"
                          rf"|(model\.safetensors|pytorch_model\.bin)\.index{_VARIANT}\.json")


def is_weight_file(name: str) -> bool:
    """Whether ``name`` is a weights file (or a shard, or their index) transformers reads as a model's."""
    return _WEIGHT_FILE.fullmatch(name) is not None


def _bundled_files(api: Any, repo_id: str, revision: str | None, names: list[str], folder: Path) -> list[str]:
    """Which of the repository's Python files ``names`` seqzoo bundled (they open with its note), downloading each
    into ``folder``; a module of the owner's is not one of them."""
    return [name for name in names
            if _is_bundled_file(Path(api.hf_hub_download(repo_id, name, revision=revision, local_dir=folder)))]


def _is_bundled_file(path: Path) -> bool:
    head = path.read_bytes()[:600].decode("utf-8", errors="replace")
    return head.startswith("# ") and BUNDLED_MARK in head.partition("\n")[0]


# The other files a loader reads by name as part of a model: its config and generation config, a peft adapter
# (which from_pretrained applies to the model beside it), the tokenizer (a converted RWKV's included), seqzoo's
# records of the model (training, bundled code). Not a vocab.txt: no tokenizer seqzoo writes or converts has one, and
# it is the word list a user keeps for `seqzoo convert word-lm --vocab` (which the README calls no obstacle there).
_MODEL_FILE = re.compile(r"(generation_)?config\.json|adapter_config\.json|adapter_model\.(safetensors|bin)"
                         r"|tokenizer(_config)?\.json|special_tokens_map\.json|added_tokens\.json|vocab\.json"
                         r"|merges\.txt|tokenizer\.model|chat_template\.(jinja|json)"
                         r"|rwkv_world_vocab\.json|tokenization_rwkv_world\.py|hidden_state\.safetensors"
                         rf"|{re.escape(TRAINING_FILE)}|{re.escape(RECORD_FILE)}")


# The model's files that publishing carries from a source folder as they are (beside those it writes itself).
CARRIED_FILES = ("hidden_state.safetensors",)


def check_carried_hidden_state(path: Path, config: Any) -> None:
    """Refuse a ``hidden_state.safetensors`` that is no hidden state of the model published with it: it is uploaded
    as it is, so a damaged file, another model's state, or a link to any other file (a private key) would go up."""
    from seqzoo.conversions.word_lm import load_hidden_state
    from seqzoo.models.classic.configuration_classic import ClassicRecurrentConfig

    if not isinstance(config, ClassicRecurrentConfig):
        raise ValueError(f"{str(path)!r}: a saved hidden state goes with an Elman RNN, LSTM or GRU (seqzoo convert "
                         f"word-lm --hidden), not with a {type(config).__name__} model; remove it before publishing")
    load_hidden_state(path, config)  # (a ValueError naming the file where it is none of this model's)


def model_files(folder: str | os.PathLike) -> list[str]:
    """The names of the files in ``folder`` that make up a model (weights or shards and their index, config, adapter,
    tokenizer, seqzoo's records and the code it bundled), which a model written over it must replace or remove: left
    beside the new model, a stale shard index or adapter is read with it. Other files (notes, data, a README,
    subfolders such as checkpoints/) are not the model's."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        path.name for path in folder.iterdir()
        if (path.is_file() or path.is_symlink())
        and (_WEIGHT_FILE.fullmatch(path.name) or _MODEL_FILE.fullmatch(path.name)
             or (path.suffix == ".py" and path.is_file() and _is_bundled_file(path)))
    )


def _write_token(token: str | None, repo_id: str) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise PublishError(
            f"no Hugging Face token, so nothing can be uploaded to {repo_id!r}: set HF_TOKEN to a token with write "
            "access, or run `hf auth login` (tokens: https://huggingface.co/settings/tokens)"
        )
    return token


def build_hub_folder(
    source: str | os.PathLike | Any,
    folder: str | os.PathLike,
    *,
    repo_id: str,
    license: str = DEFAULT_LICENSE,
    license_name: str | None = None,
    license_link: str | None = None,
    tokenizer: Any = None,
    training: dict[str, Any] | None = None,
) -> list[str]:
    """Write the Hub files of ``source`` into the existing folder ``folder``; return the file names."""
    _validate_repo_id(repo_id)
    licensing = _licensing(license, license_name, license_link)
    return _write_folder(_load_checkpoint(source, tokenizer, training), Path(folder), repo_id=repo_id,
                         licensing=licensing)


def _licensing(license: Any, license_name: Any, license_link: Any) -> dict[str, Any]:
    check_license(license, license_name, license_link)  # (before any model is loaded or request made)
    return {"license": license, "license_name": license_name, "license_link": license_link}


def _load_checkpoint(source: Any, tokenizer: Any, training: dict[str, Any] | None) -> _Checkpoint:
    import seqzoo  # noqa: F401  (registers the architectures, so a config.json resolves to seqzoo's classes)
    from seqzoo.adapters import refuse_adapters
    from seqzoo.models.configuration_utils import saved_class_name
    from seqzoo.registry import architecture_for_model_type

    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ValueError(
                f"{folder} is not a saved model folder (it has no config.json); pass a folder written by "
                "save_pretrained, `seqzoo new` or `seqzoo train`"
            )
        if (folder / "adapter_config.json").is_file():  # (transformers loads it onto the model, then saves it alone)
            raise ValueError(
                f"{folder} holds a peft adapter (adapter_config.json) beside the model: merge it into the weights "
                "first (PeftModel.from_pretrained(model, folder).merge_and_unload(), then save_pretrained into a "
                "folder of its own) and publish that, or publish the adapter alone with peft's push_to_hub"
            )
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{config_file} is not valid JSON ({err}); save the model again") from err
        if not isinstance(config, dict):
            raise ValueError(f"{config_file} must hold a JSON object (a model's configuration); got {config!r:.60}")
        spec = architecture_for_model_type(config.get("model_type"))
        # The head the folder was saved with (transformers records its class name); else the architecture's default
        # head: the causal LM, or the seq2seq head of an encoder-decoder, which has no causal LM to fall back on.
        task = spec.task_saved_as(saved_class_name(config.get("architectures"), str(config_file)))
        head = spec.heads[task] if task is not None else spec.default_head
        with quiet_transformers():  # (its load report would print above the error that a misfit raises)
            model, info = head.from_pretrained(folder, dtype="auto", output_loading_info=True)
        # Tensors of another head load as "unexpected" and would be left out of the published weights.
        dropped = sorted(info.get("unexpected_keys") or [])
        if dropped:
            raise ValueError(
                f"{folder}: its weights hold {', '.join(dropped[:8])}, which {head.__name__} has no place for, so "
                f"publishing would leave them out; set 'architectures' in {config_file} to the class the model was "
                f"saved as (one of {', '.join(cls.__name__ for cls in spec.heads.values())})"
            )
        # Tensors the head needs that the folder lacks (an untied vocabulary head of a folder saved from the backbone
        # alone) are newly initialised, and would be published as if trained (the load report saying so is quieted).
        new = sorted(info.get("missing_keys") or [])
        if new:
            raise ValueError(
                f"{folder}: its weights lack {', '.join(new[:8])}{' ...' if len(new) > 8 else ''}, which "
                f"{head.__name__} needs, so publishing would upload them newly initialised (random); publish a "
                f"folder saved from the whole model with its head (its save_pretrained)"
            )
        if tokenizer is None:
            from seqzoo.tokenizer import byte_tokenizer_problem, load_tokenizer, tokenizer_for

            tokenizer = load_tokenizer(folder)
            # A byte tokenizer saved by seqzoo before 2026-12-01 pads a classifier's and an encoder-decoder's rows
            # on the left and truncates nowhere: it is published with the padding side and length seqzoo saves
            # beside this model now, as `seqzoo train model.path=` saves it.
            if not byte_tokenizer_problem(tokenizer, model.config.vocab_size):
                tokenizer = tokenizer_for(model, tokenizer)
        if training is None:
            training = load_training_record(folder)
            if training is not None:
                check_record_describes(folder, config, training)
        extra_files = tuple(folder / name for name in CARRIED_FILES if (folder / name).is_file())
        for path in extra_files:
            check_carried_hidden_state(path, model.config)
    else:
        extra_files = ()
        model = unwrap(source)  # (torch.compile's wrapper: the model it compiles is the one to publish)
        refuse_adapters(model, "publish the merged model, or publish the adapter alone with peft's push_to_hub")
        spec = architecture_for_model_type(getattr(getattr(model, "config", None), "model_type", None))
        if tokenizer is None:
            raise ValueError("publishing a model object needs its tokenizer: pass tokenizer=... "
                             "(seqzoo.byte_tokenizer() for seqzoo's byte-level vocabulary)")
    vocab_size = getattr(model.config, "vocab_size", None)
    if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
        # (the repository would load, and its card's usage snippet fail: "token id ... outside the vocabulary")
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens, more than the {vocab_size} rows of the model's embedding "
            f"(vocab_size): the ids it gives past {vocab_size - 1} have no embedding, so the published model could "
            "not read its own tokenizer's output; publish it with the tokenizer it was trained with"
        )
    eos = getattr(model.config, "eos_token_id", None)
    if eos is not None and getattr(tokenizer, "eos_token_id", None) is None:
        # (a folder with tokenizer.json but no tokenizer_config.json loads a tokenizer without its special tokens)
        raise ValueError(
            f"the tokenizer has no end-of-text token, but the model's config says eos_token_id={eos}: the published "
            "tokenizer would not say where a text ends (pipelines, padding). Is tokenizer_config.json missing beside "
            "tokenizer.json? Save the tokenizer again (tokenizer.save_pretrained(folder))"
        )
    if training is not None:
        training = public_training_record(validate_training_record(training))
    return _Checkpoint(model, spec, tokenizer, training, extra_files)


def check_record_describes(folder: Path, config: dict[str, Any], record: dict[str, Any]) -> None:
    """Refuse the training record of a model ``folder`` that describes other weights than the folder's: by the
    fingerprint of the weights the run saved beside it (``weights_sha256``), or in a record without one, by the
    architecture of the model preset its recipe trained. A model saved into a run's folder since (fine-tuned, or
    another model) would be published with the run's figures."""
    from seqzoo.registry import preset_values

    path = folder / TRAINING_FILE
    remedy = ("move or delete the record to publish the model without it, or pass the record of these weights "
              "(training=...)")
    recorded = record.get("weights_sha256")
    if isinstance(recorded, dict):
        if recorded != weights_fingerprint(folder):
            raise ValueError(f"{path} describes other weights than {folder} holds (they were saved there again since "
                             f"the run that wrote it: fine-tuned, or another model), so its figures would be "
                             f"published for a model they do not describe; {remedy}")
        return
    recipe = record.get("recipe")
    model = recipe.get("model") if isinstance(recipe, dict) else None
    preset = model.get("preset") if isinstance(model, dict) else None
    try:
        trained = preset_values(preset)[0].model_type if isinstance(preset, str) else None
    except ValueError:  # (a preset this seqzoo does not know)
        trained = None
    if trained is not None and trained != config.get("model_type"):
        raise ValueError(f"{path} records a run that trained the preset {preset!r} ({trained}), but {folder} holds a "
                         f"{config.get('model_type')} model, so its figures would be published for a model they do "
                         f"not describe; {remedy}")


def _write_folder(checkpoint: _Checkpoint, folder: Path, *, repo_id: str, licensing: dict[str, Any]) -> list[str]:
    model, spec = checkpoint.model, checkpoint.spec
    model.save_pretrained(folder)  # model.safetensors, config.json, generation_config.json and the code bundle
    checkpoint.tokenizer.save_pretrained(folder)
    # Again here, for a model whose save_pretrained is not seqzoo's own (one loaded with trust_remote_code=True):
    # the card lists the files, and the published code is always this seqzoo's.
    code_files = write_bundle(folder, spec)
    if checkpoint.training:
        training = checkpoint.training
        if "weights_sha256" in training:  # (of the weights published, as saved here: a later publish checks them)
            training = {**training, "weights_sha256": weights_fingerprint(folder)}
        (folder / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n", encoding="utf-8")
    for path in checkpoint.extra_files:
        shutil.copyfile(path, folder / path.name)
    card = render_model_card(model, spec, repo_id=repo_id, code_files=code_files, **licensing,
                             training=checkpoint.training)
    card.save(folder / "README.md")
    return sorted(path.name for path in folder.iterdir())


def _validate_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)  # raises a ValueError that names the rule


def _transport_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub talks HTTP through httpx2 (2.x) or httpx (1.x); their TransportError covers refused, dropped
    # and timed-out connections. Whichever it uses is already imported.
    modules = [sys.modules.get(name) for name in ("httpx2", "httpx")]
    return tuple(module.TransportError for module in modules if module is not None)


@contextlib.contextmanager
def _hub_errors(endpoint: str, repo_id: str, step: str, may_have_committed: bool) -> Iterator[None]:
    """Turn what the Hub or the network raised during ``step`` into a PublishError that says what to do."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        raise PublishError(_http_message(status, err, endpoint, repo_id, step)) from err
    except _transport_errors() as err:
        # A commit request whose answer was lost may still have been carried out by the Hub.
        outcome = (f"the commit may or may not have been made: check {endpoint}/{repo_id} and run the command "
                   "again (uploading the same files again changes nothing)" if may_have_committed else
                   "nothing was committed")
        raise PublishError(
            f"lost the connection to {endpoint} while {step} ({type(err).__name__}: {err}); {outcome}"
        ) from err


def _http_message(status: int | None, err: Exception, endpoint: str, repo_id: str, step: str) -> str:
    namespace = repo_id.split("/")[0] if "/" in repo_id else "your user"
    if status == 401:
        return (f"the Hub at {endpoint} did not accept the token (401 Unauthorized) while {step}: set HF_TOKEN to "
                "a valid token with write access, or run `hf auth login`")
    if status == 403:
        return (f"the token may not write to {repo_id!r} (403 Forbidden) while {step}: use a token with write "
                f"access to the namespace {namespace!r}")
    if status == 404:
        return (f"{repo_id!r} was not found (404 Not Found) while {step}: check the namespace and the repository "
                "name, and that the token can see them")
    detail = getattr(err, "server_message", None) or str(err).splitlines()[0]
    return f"the Hub at {endpoint} answered {status} while {step}: {detail}"


__all__ = ["PublishError", "build_hub_folder", "export_folder", "model_files", "publish", "refresh_code"]
