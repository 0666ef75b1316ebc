"""The exported folder and its model card, and that building it never leaves a partial folder behind."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil

import jinja2
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, PreTrainedConfig

import seqzoo
from seqzoo.cli import main, save_with_tokenizer
from seqzoo.hub import build_hub_folder, export_folder, publishing
from seqzoo.hub.cards import (
    TEMPLATE_DIR,
    card_sections,
    parameter_counts,
    render_model_card,
    template_path,
    validate_training_record,
)
from seqzoo.tokenizer import byte_tokenizer
from seqzoo.utils import weights_fingerprint
from tests.hub.conftest import ARCHITECTURES, TRAINING_RECORD, repo_id, tiny_byte_model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_export_folder_holds_a_complete_repository(arch, exports):
    folder = exports[arch]
    spec = seqzoo.get_architecture(arch)
    names = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md", f"configuration_{spec.model_type}.py", f"modeling_{spec.model_type}.py"} <= names
    assert not any(path.is_dir() for path in folder.iterdir())
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == spec.model_type
    assert config["architectures"] == [spec.causal_lm_class.__name__]
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM",
                                       "AutoModelForSequenceClassification", "AutoModelForTokenClassification"}
    generation = json.loads((folder / "generation_config.json").read_text())
    assert (generation["pad_token_id"], generation["eos_token_id"]) == (256, 257)
    assert ("seqzoo_training.json" in names) == (arch == "lstm")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_model_card_renders_with_parseable_metadata(arch, exports):
    folder = exports[arch]
    spec = seqzoo.get_architecture(arch)
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert data["library_name"] == "seqzoo"
    assert data["pipeline_tag"] == "text-generation"
    assert {"seqzoo", arch, spec.model_type, "custom_code"} <= set(data["tags"])

    model = seqzoo.get_architecture(arch).causal_lm_class.from_pretrained(folder)
    counts = parameter_counts(model)
    assert f"| total (tied weights counted once) | {counts['total']:,} |" in card.text
    state, kv = model.config.state_bytes_per_sequence(4), model.config.kv_bytes_per_token(4)
    assert (f"| state carried per sequence | {state:,} bytes" in card.text) == (state > 0)
    assert (f"| KV cache per token of context | {kv:,} bytes" in card.text) == (kv > 0)
    assert (f"{kv * 4096:,} bytes" in card.text and "at 4,096 tokens" in card.text) == (kv > 0)
    assert f"≈ {2 * counts['per_token']:,} FLOPs" in card.text
    assert f"| hidden_size | `{model.config.hidden_size}` |" in card.text
    assert f"| num_hidden_layers | `{model.config.num_hidden_layers}` |" in card.text
    # the architecture's own fields only: none of transformers' generic ones (return_dict, transformers_version ...)
    generic = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    assert not [name for name in generic if f"| {name} | `" in card.text]
    assert "{{" not in card.text and "{%" not in card.text
    # Every head the registry holds for the architecture, this one named first.
    assert f"This checkpoint is `{spec.causal_lm_class.__name__}`, the `causal-lm` head" in card.text
    for task, head in spec.heads.items():
        assert f"| `{task}` | `{head.__name__}` | `{seqzoo.registry.TASKS[task][0]}` |" in card.text


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_builtin_architecture_has_its_own_template_with_no_undefined_names(arch):
    spec = seqzoo.get_architecture(arch)
    assert spec.config_class.__module__.startswith("seqzoo.")  # built in: it must describe itself
    path = TEMPLATE_DIR / f"{arch}.md"
    assert template_path(arch) == path and path.is_file()
    # ModelCard renders missing names as empty text; rendering strictly catches a misspelt placeholder.
    sections = card_sections(tiny_byte_model(arch), spec, repo_id=repo_id(arch), code_files=["x.py"], training=None)
    text = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(path.read_text()).render(
        card_data="license: mit", **sections)
    assert text.startswith("---\nlicense: mit\n---\n")


@pytest.mark.parametrize("arch, task", [("lstm", "token-classification"), ("transformer",
                                                                        "sequence-classification")])
def test_a_classifier_card_says_which_head_and_labels_it_has(arch, task):
    spec = seqzoo.get_architecture(arch)
    bidirectional = {"bidirectional": True} if spec.config_class.supports_bidirectional else {}
    model = seqzoo.create_model(f"{arch}-tiny", task, num_labels=2, id2label={0: "NO", 1: "YES"},
                                label2id={"NO": 0, "YES": 1}, **bidirectional)
    card = render_model_card(model, spec, repo_id=f"someone/{arch}-{task}", code_files=["a.py"],
                             training={"dataset": "mine", "eval": {"accuracy": 0.9}})
    pipeline_tag = seqzoo.registry.TASKS[task][1]
    assert card.data.pipeline_tag == pipeline_tag
    assert [r.task_type for r in card.data.eval_results] == [pipeline_tag]
    assert f"This checkpoint is `{spec.heads[task].__name__}`, the `{task}` head" in card.text
    assert "Its labels (`id2label`): 0 `NO`, 1 `YES`." in card.text
    assert ("It is a bidirectional encoder" in card.text) == bool(bidirectional)
    kind = {"token-classification": "tagger (token classifier)", "sequence-classification": "text classifier"}[task]
    assert f"** {kind}" in card.text.split("\n\n")[1] and "language model" not in card.text.split("\n\n")[1]
    assert "generation_config.json" not in card.text  # transformers writes none for a classifier
    # A classifier reads tokens, it decodes none; a bidirectional one carries a state in each direction.
    assert "| cost per token read |" in card.text and "cost per decoded token" not in card.text
    if bidirectional:
        both_ways = model.config.bidirectional_state_bytes(4)  # (checked against the tensors in tests/models)
        assert f"| state carried per sequence | {both_ways:,} bytes" in card.text and "reading directions" in card.text
    if arch == "lstm":  # the classic templates name the head after the layers
        assert "stacked LSTM layers → a linear classifier over every token's output." in " ".join(card.text.split())
        causal = render_model_card(seqzoo.create_model("lstm-tiny"), spec, repo_id="someone/lm", code_files=["a.py"],
                                   training=None).text
        assert "→ a linear decoder over the vocabulary." in " ".join(causal.split())
        assert "cost per decoded token" in causal


@pytest.mark.parametrize("preset", ["seq2seq-bahdanau-tiny", "seq2seq-transformer-tiny"])
def test_an_encoder_decoder_card_counts_only_decoding_weights_per_token(preset):
    # The encoder runs once per source: its weights are no cost of each decoded token.
    model = seqzoo.create_model(preset)
    counts = parameter_counts(model)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    encoder = sum(p.numel() for p in model.get_encoder().parameters() if id(p) not in embeddings)
    assert encoder > 0 and counts["per_token"] == counts["total"] - counts["embedding"] - encoder + counts["embedding"]


def test_a_card_of_a_config_that_reports_no_state_says_so(monkeypatch):
    # A plugin's config may leave state_bytes_per_sequence unimplemented: its card is still written.
    def unreported(self, dtype_bytes=4):
        raise NotImplementedError

    model = tiny_byte_model("transformer")
    monkeypatch.setattr(type(model.config), "state_bytes_per_sequence", unreported)
    card = render_model_card(model, seqzoo.get_architecture("transformer"), repo_id="someone/t", code_files=["a.py"],
                             training=None).text
    assert "| state per sequence | not reported by this architecture |" in card
    assert "| KV cache per token of context |" in card


def test_an_encoder_decoder_card_gives_its_decoders_state_whatever_its_encoder_reads():
    # A bidirectional encoder does not make the decoder's state two-way; the decoder's own layer count is named.
    model = seqzoo.create_model("seq2seq-bahdanau-tiny", num_hidden_layers=3, num_decoder_layers=1, bridge="zeros")
    assert model.config.bidirectional
    card = render_model_card(model, seqzoo.get_architecture("seq2seq"), repo_id="someone/s2s", code_files=["a.py"],
                             training=None).text
    state = model.config.state_bytes_per_sequence(4)
    assert f"| state carried per sequence | {state:,} bytes with float32 weights; the same" in card
    assert "reading direction" not in card and "cannot generate" not in card
    assert "3 layer(s) of" in card and "in the encoder and 1 in the decoder" in " ".join(card.split())


def test_training_record_fills_metadata_and_the_training_section(exports):
    card = ModelCard.load(exports["lstm"] / "README.md")
    assert card.data.datasets == ["roneneldan/TinyStories"]
    assert card.data.model_name == "tiny-lstm"  # the model-index entry
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"loss": 2.5, "perplexity": 12.18, "accuracy": 0.31}
    assert all(r.dataset_name == "roneneldan/TinyStories" for r in card.data.eval_results)
    for line in ["- Data: `roneneldan/TinyStories`", "- Tokens seen: 1,234,567", "- Optimizer steps: 300",
                 "| perplexity | 12.18 |", "| set | loss | perplexity |", "| validation | 2.5 | 12.18 |",
                 "| long | 2.75 |  |", "| seq_len | `128` |", "| learning_rate | `0.001` |"]:
        assert line in card.text
    # the whole record travels with the checkpoint, keys the card does not show included
    assert json.loads((exports["lstm"] / "seqzoo_training.json").read_text()) == TRAINING_RECORD
    untrained = ModelCard.load(exports["gru"] / "README.md")
    assert "without a training record" in untrained.text
    # without evaluation figures there is no model-index, and model_name (which only names its entry) stays out
    assert untrained.data.eval_results is None and "model_name" not in untrained.content.split("---")[1]


def test_a_published_record_names_local_files_without_their_folders(tmp_path):
    """seqzoo train records where its data and output were (text:/home/me/corpus.txt); a public repository shows the
    file names only, and its datasets metadata (Hub dataset ids) leaves local sources out."""
    folder = tmp_path / "run"
    save_with_tokenizer(tiny_byte_model("gru"), folder)
    record = {"dataset": ["text:/home/me/private/corpus.txt,/home/me/private/more.txt", "roneneldan/TinyStories",
                          "jsonl:/home/me/private/tags.jsonl"],  # (what classification and seq2seq training write)
              "data": {"name": "text:~/notes/a.txt", "seq_len": 8},
              "recipe": {"output_dir": "/home/me/private/run", "data": {"path": "C:\\Users\\me\\b.txt"},
                         "share": "\\\\server\\Users\\me\\c.txt", "forward": "C:/Users/me/d.txt",
                         "name": "my run", "lr": 0.001, "url": "https://example.org/x"},
              "eval": {"loss": 2.0}}
    (folder / "seqzoo_training.json").write_text(json.dumps(record))
    out = export_folder(folder, tmp_path / "out", repo_id=repo_id("gru"))
    published = (out / "seqzoo_training.json").read_text() + (out / "README.md").read_text()
    assert "/home/me" not in published and "~/notes" not in published and "Users" not in published
    assert json.loads((out / "seqzoo_training.json").read_text()) == {
        "dataset": ["text:corpus.txt,more.txt", "roneneldan/TinyStories", "jsonl:tags.jsonl"],
        "data": {"name": "text:a.txt", "seq_len": 8},
        "recipe": {"output_dir": "run", "data": {"path": "b.txt"}, "share": "c.txt", "forward": "d.txt",
                   "name": "my run", "lr": 0.001, "url": "https://example.org/x"},
        "eval": {"loss": 2.0}}
    card = ModelCard.load(out / "README.md")
    assert card.data.datasets == ["roneneldan/TinyStories"]
    assert "- Data: `text:corpus.txt,more.txt`, `roneneldan/TinyStories`, `jsonl:tags.jsonl`" in card.text
    # the figures cover the local sources too: the prose shows them, the model-index (a Hub dataset's) does not
    # (it named "text:corpus.txt,more.txt" as the dataset's Hub type)
    assert card.data.eval_results is None and "| loss | 2 |" in card.text
    # seqzoo train's default data, the Python documentation, is no Hub dataset either
    record["dataset"] = ["pydoc_data.topics"]
    (folder / "seqzoo_training.json").write_text(json.dumps(record))
    card = ModelCard.load(export_folder(folder, tmp_path / "pydoc", repo_id=repo_id("gru")) / "README.md")
    assert card.data.datasets is None and "- Data: `pydoc_data.topics`" in card.text
    assert json.loads((folder / "seqzoo_training.json").read_text()) == record  # the local record keeps its paths


def test_architecture_without_a_template_gets_the_generic_card(caplog):
    spec = dataclasses.replace(seqzoo.get_architecture("gru"), name="plugin_gru", description="plugin GRU")
    with caplog.at_level(logging.WARNING, logger="seqzoo.hub"):
        card = render_model_card(tiny_byte_model("gru"), spec, repo_id="someone/plugin-gru", code_files=["a.py"])
    assert "hub_cards/plugin_gru.md" in caplog.text and "generic" in caplog.text
    assert card.text.lstrip().startswith("# plugin-gru\n\nA **plugin GRU** language model")
    assert card.data.library_name == "seqzoo"


@pytest.mark.parametrize(
    "record, message",
    [
        (["not", "an", "object"], "expected a JSON object"),
        ({"dataset": ""}, "'dataset' must be a non-empty string or list of strings"),
        ({"tokens_seen": -1}, "'tokens_seen' must be an integer >= 0; got -1"),
        ({"steps": 2.5}, "'steps' must be an integer >= 0; got 2.5"),
        ({"eval": {"loss": "low"}}, "eval metric 'loss' must be a finite number; got 'low'"),
        ({"eval": {"loss": float("nan")}}, "eval metric 'loss' must be a finite number"),
        ({"eval": {"sets": ["validation"]}}, "eval 'sets' must map set names to {metric: number} objects"),
        ({"eval": {"sets": {"long": {"loss": None}}}}, "eval set 'long' metric 'loss' must be a finite number"),
        ({"recipe": "adamw"}, "'recipe' must be a JSON object"),
        ({"data": ["a"]}, "'data' must be a JSON object"),
    ],
)
def test_training_record_errors_name_the_field(record, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_training_record(record)


def test_dry_run_builds_the_folder_and_uploads_nothing(saved_models, tmp_path, capsys):
    output = tmp_path / "out" / "tiny-gru"
    assert main(["publish", str(saved_models["gru"]), repo_id("gru"), "--dry-run", "--output", str(output),
                 "--license", "cc-by-4.0"]) == 0
    assert "nothing uploaded" in capsys.readouterr().out
    assert ModelCard.load(output / "README.md").data.license == "cc-by-4.0"
    assert (output / "modeling_seqzoo_gru.py").is_file() and (output / "README.md").is_file()
    assert [path.name for path in output.parent.iterdir()] == ["tiny-gru"]  # no staging folder left beside it


def test_a_failed_export_leaves_no_partial_folder(saved_models, tmp_path, monkeypatch):
    def broken_card(*args, **kwargs):
        raise RuntimeError("card renderer broke")

    monkeypatch.setattr(publishing, "render_model_card", broken_card)  # fails after weights and code are written
    with pytest.raises(RuntimeError, match="card renderer broke"):
        export_folder(saved_models["gru"], tmp_path / "tiny-gru", repo_id=repo_id("gru"))
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_unusable_inputs(saved_models, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists and is not an empty folder"):
        export_folder(saved_models["gru"], taken, repo_id=repo_id("gru"))
    assert [path.name for path in taken.iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="has no config.json"):
        export_folder(tmp_path / "missing", tmp_path / "a", repo_id=repo_id("gru"))
    bare = tmp_path / "bare"
    tiny_byte_model("gru").save_pretrained(bare)
    with pytest.raises(ValueError, match="has no tokenizer"):
        export_folder(bare, tmp_path / "b", repo_id=repo_id("gru"))
    with pytest.raises(ValueError, match="needs its tokenizer"):
        export_folder(tiny_byte_model("gru"), tmp_path / "c", repo_id=repo_id("gru"))
    with pytest.raises(ValueError, match="Repo id"):
        export_folder(saved_models["gru"], tmp_path / "d", repo_id="not a/valid/repo id")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bare", "taken"]


def test_export_refuses_a_config_that_does_not_describe_the_weights(tmp_path):
    folder = tmp_path / "classifier"
    model = seqzoo.create_model("transformer-tiny", "sequence-classification", num_labels=2)  # a tied LM head
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    # The head the folder was saved as (config.architectures) is the head published.
    exported = export_folder(folder, tmp_path / "saved-head", repo_id=repo_id("transformer"))
    assert json.loads((exported / "config.json").read_text())["architectures"] == [
        "TransformerForSequenceClassification"]
    assert ModelCard.load(exported / "README.md").data.pipeline_tag == "text-classification"
    config = json.loads((folder / "config.json").read_text())
    del config["architectures"]  # the head would default to the causal LM and drop the classifier's weights
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"score\.weight.*set 'architectures'"):
        export_folder(folder, tmp_path / "a", repo_id=repo_id("transformer"))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        export_folder(folder, tmp_path / "b", repo_id=repo_id("transformer"))
    (folder / "config.json").write_text("[]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        export_folder(folder, tmp_path / "c", repo_id=repo_id("transformer"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["classifier", "saved-head"]  # (the refused: none)



def test_export_refuses_a_backbone_folder_that_lacks_the_heads_weights(tmp_path):
    # A folder saved from the backbone alone (XModel.save_pretrained) loads into the causal LM with the head's own
    # tensors newly initialised; the export quiets transformers' load report, and published them as the model's.
    def backbone_folder(preset: str, name: str, **overrides):
        torch.manual_seed(0)
        model = seqzoo.create_model(preset, vocab_size=258, pad_token_id=256, bos_token_id=257, eos_token_id=257,
                                    **overrides).eval()
        model.model.save_pretrained(tmp_path / name)
        byte_tokenizer().save_pretrained(tmp_path / name)
        return model

    backbone_folder("transformer-tiny", "untied", tie_word_embeddings=False)
    with pytest.raises(ValueError, match=r"lack lm_head\.weight, which TransformerForCausalLM needs.*newly initial"):
        export_folder(tmp_path / "untied", tmp_path / "a", repo_id=repo_id("transformer"))
    backbone_folder("lstm-tiny", "decoder-bias", tie_word_embeddings=True)  # (the classic LM's decoder has a bias)
    with pytest.raises(ValueError, match=r"lack lm_head\.bias, which LSTMForCausalLM needs"):
        export_folder(tmp_path / "decoder-bias", tmp_path / "b", repo_id=repo_id("lstm"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # Where the backbone holds every weight of the head (tied, without a bias), it publishes as the causal LM.
    tied = backbone_folder("transformer-tiny", "tied", tie_word_embeddings=True)
    exported = export_folder(tmp_path / "tied", tmp_path / "c", repo_id=repo_id("transformer"))
    ids = torch.tensor([list(b"a dog")])
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(exported)(ids).logits, tied(ids).logits)


def test_export_from_a_model_object(tmp_path):
    model = tiny_byte_model("rnn")
    folder = export_folder(model, tmp_path / "rnn", repo_id="someone/rnn", tokenizer=byte_tokenizer(),
                           training={"dataset": ["a/b", "c/d"], "steps": 12_800, "eval": {"loss": 1.234567891}},
                           license="mit")
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "mit" and card.data.datasets == ["a/b", "c/d"]
    assert "license_name" not in card.content.split("---")[1]
    # the metadata carries the figure as recorded; the table shows 4 digits
    # the figures cover both sources: the model-index, whose dataset is one Hub dataset, leaves them to the prose
    # (they were credited to the first source alone)
    assert card.data.eval_results is None and "model-index" not in card.content.split("---")[1]
    counts = parameter_counts(model)
    assert counts["embedding"] > 0
    assert f"| everything else | {counts['total'] - counts['embedding']:,} |" in card.text
    assert "| loss | 1.235 |" in card.text and "- Optimizer steps: 12,800" in card.text
    loaded = seqzoo.get_architecture("rnn").causal_lm_class.from_pretrained(folder)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_export_from_a_compiled_model_object(tmp_path):
    # torch.compile's wrapper was refused after the weights were written: "OptimizedModule is not a head of
    # architecture 'lstm'", read from the card's head
    model = tiny_byte_model("lstm")
    folder = export_folder(torch.compile(model, backend="eager"), tmp_path / "lstm", repo_id="someone/lstm",
                           tokenizer=byte_tokenizer())
    assert "pipeline_tag: text-generation" in (folder / "README.md").read_text()
    loaded = seqzoo.get_architecture("lstm").causal_lm_class.from_pretrained(folder)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_build_hub_folder_writes_into_an_existing_folder_what_it_is_given(saved_models, tmp_path):
    """The tokenizer and training record passed are the ones written, over whatever the saved folder holds."""
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "NOTES.md").write_text("the owner's")
    names = build_hub_folder(saved_models["gru"], folder, repo_id=repo_id("gru"),
                             tokenizer=byte_tokenizer(model_max_length=77), training=TRAINING_RECORD)
    exported = export_folder(saved_models["gru"], tmp_path / "exported", repo_id=repo_id("gru"))
    assert names == sorted({path.name for path in exported.iterdir()} | {"NOTES.md", "seqzoo_training.json"})
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == 77
    assert json.loads((folder / "seqzoo_training.json").read_text())["dataset"] == TRAINING_RECORD["dataset"]
    with pytest.raises(ValueError, match="Repo id must|repo_id"):
        build_hub_folder(saved_models["gru"], folder, repo_id="not a/valid/repo id")


def test_a_training_record_that_is_not_json_is_named(tmp_path):
    from seqzoo.hub.cards import load_training_record

    (tmp_path / "seqzoo_training.json").write_text('{"dataset": ')
    with pytest.raises(ValueError, match=r"seqzoo_training\.json is not valid JSON: Expecting value"):
        load_training_record(tmp_path)


def test_a_training_record_that_is_not_utf8_is_named(tmp_path):
    from seqzoo.hub.cards import load_training_record

    (tmp_path / "seqzoo_training.json").write_bytes(b'{"dataset": "caf\xe9"}')
    with pytest.raises(ValueError, match=r"seqzoo_training\.json is not UTF-8 text"):
        load_training_record(tmp_path)


def test_a_tokenizer_without_its_special_tokens_is_refused(tmp_path):
    """A folder with tokenizer.json but no tokenizer_config.json loads a tokenizer with no pad / eos / bos: the
    published tokenizer lost them without a word."""
    folder = tmp_path / "run"
    save_with_tokenizer(tiny_byte_model("gru"), folder)
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match=r"the tokenizer has no end-of-text token, but the model's config says "
                                         r"eos_token_id=257.*tokenizer_config.json missing"):
        export_folder(folder, tmp_path / "out", repo_id=repo_id("gru"))
    assert not (tmp_path / "out").exists()


def test_a_model_loaded_from_its_bundle_publishes_as_seqzoos_own(tmp_path):
    # A model loaded with trust_remote_code=True is the bundle's copy of the head: another class of the same name.
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    model = seqzoo.create_model("lstm-tiny", "token-classification", num_labels=2)
    model.save_pretrained(tmp_path / "saved")
    bundled = get_class_from_dynamic_module("modeling_seqzoo_lstm.LSTMForTokenClassification", tmp_path / "saved")
    assert bundled is not type(model) and bundled.__name__ == type(model).__name__
    loaded = bundled.from_pretrained(tmp_path / "saved")
    folder = export_folder(loaded, tmp_path / "hub", repo_id="someone/tagger", tokenizer=byte_tokenizer())
    card = (folder / "README.md").read_text()
    assert "This checkpoint is `LSTMForTokenClassification`, the `token-classification` head" in card
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["LSTMForTokenClassification"]


def test_a_table_cell_holding_a_pipe_stays_one_cell():
    from seqzoo.hub.cards import training_section

    text = training_section({"recipe": {"separator": "a|b"}})
    assert '| separator | `"a\\|b"` |' in text


def test_a_license_the_hub_does_not_know_is_refused_before_anything_is_written(saved_models, tmp_path, capsys):
    """The Hub refuses a card whose license is none of its identifiers (when the commit is made, after the
    repository was created); seqzoo says so first, with the identifier meant where it can tell."""
    cases = [
        (dict(license="Apache-2.0"), r"license 'Apache-2\.0' is not a license identifier of the Hugging Face Hub "
                                     r"\(did you mean 'apache-2\.0'\?\).*repositories-licenses"),
        (dict(license="GPL-3.0-only"), r"\(did you mean 'gpl-3\.0'\?\)"),
        (dict(license="GPL-3.0-or-later"), r"\(did you mean 'gpl-3\.0'\?\)"),
        (dict(license="my terms"), r"license 'my terms' is not a license identifier of the Hugging Face Hub: .*"
                                   r"'other' with its name in license_name"),
        (dict(license="other"), r"license 'other' needs the license's name: pass license_name"),
        (dict(license="other", license_name="My Terms"), r"license_name 'My Terms' is not a license id"),
        (dict(license="other", license_name="my terms"), r"license_name 'my terms' is not a license id"),
        (dict(license="other", license_name="my-terms", license_link="../../etc/passwd"),
         r"license_link '\.\./\.\./etc/passwd' is neither a URL"),
        (dict(license="mit", license_name="my-terms"), r"license_name only applies to license 'other'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            export_folder(saved_models["gru"], tmp_path / "out", repo_id=repo_id("gru"), **kwargs)
        with pytest.raises(ValueError, match=message):
            render_model_card(tiny_byte_model("gru"), seqzoo.get_architecture("gru"), repo_id="someone/gru",
                              code_files=["a.py"], **kwargs)
    assert main(["publish", str(saved_models["gru"]), repo_id("gru"), "--dry-run", "--output", str(tmp_path / "out"),
                 "--license", "other"]) == 2
    assert capsys.readouterr().err.startswith("error: license 'other' needs the license's name")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("link", [None, "https://example.org/terms", "LICENSE.md"])
def test_license_other_is_named_as_the_hub_reads_it(saved_models, tmp_path, link):
    folder = export_folder(saved_models["gru"], tmp_path / "out", repo_id=repo_id("gru"), license="other",
                           license_name="my-terms-1.0", license_link=link)
    card = ModelCard.load(folder / "README.md")
    assert (card.data.license, card.data.license_name, card.data.license_link) == ("other", "my-terms-1.0", link)


def test_a_training_record_beside_other_weights_is_not_published(tmp_path):
    """A run's record stayed in its folder when another model, or the run's model fine-tuned, was saved there, and
    the card credited the new weights with the run's data, tokens and evaluation. A record of seqzoo train holds
    the fingerprint of the weights it describes; one without it, the preset its recipe trained."""
    from seqzoo.training import train
    from tests.training.test_trainer import make_recipe

    train(make_recipe(tmp_path, data={"source": "pydoc", "seq_len": 16, "eval_samples": 2},
                      model={"preset": "gru-tiny"}, train={"max_steps": 1, "eval_every": 1, "save_every": 0}),
          progress=False)
    run = tmp_path / "run"
    record = json.loads((run / "seqzoo_training.json").read_text())
    assert set(record["weights_sha256"]) == {"model.safetensors"}
    out = export_folder(run, tmp_path / "out", repo_id=repo_id("gru"))  # (as trained: published)
    published = json.loads((out / "seqzoo_training.json").read_text())
    assert published["weights_sha256"] == weights_fingerprint(out)  # (of the weights published, for a later publish)
    assert export_folder(out, tmp_path / "again", repo_id=repo_id("gru")).is_dir()
    sharded = tmp_path / "sharded"  # (a record of weights in shards: published as one file, described as such)
    shutil.copytree(run, sharded)
    (sharded / "model.safetensors").unlink()
    AutoModelForCausalLM.from_pretrained(run).save_pretrained(sharded, max_shard_size="20KB")
    json.dump({**record, "weights_sha256": weights_fingerprint(sharded)}, (sharded / "seqzoo_training.json").open("w"))
    assert len(weights_fingerprint(sharded)) > 1
    out = export_folder(sharded, tmp_path / "from-shards", repo_id=repo_id("gru"))
    assert json.loads((out / "seqzoo_training.json").read_text())["weights_sha256"] == weights_fingerprint(out)
    assert set(weights_fingerprint(out)) == {"model.safetensors"}
    model = AutoModelForCausalLM.from_pretrained(run)
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)  # fine-tuned, saved back into the run's folder
    model.save_pretrained(run)
    with pytest.raises(ValueError, match=r"seqzoo_training.json describes other weights than .*run holds \(they were "
                                         r"saved there again since the run that wrote it"):
        export_folder(run, tmp_path / "tuned", repo_id=repo_id("gru"))
    assert not (tmp_path / "tuned").exists()
    # A record without a fingerprint (hand-written, or older): by the preset its recipe trained.
    folder = tmp_path / "hand"
    save_with_tokenizer(tiny_byte_model("gru"), folder)
    (folder / "seqzoo_training.json").write_text(json.dumps({"steps": 3, "recipe": {"model": {"preset": "lstm-tiny"}}}))
    with pytest.raises(ValueError, match=r"records a run that trained the preset 'lstm-tiny' \(seqzoo_lstm\), but .* "
                                         r"holds a seqzoo_gru model"):
        export_folder(folder, tmp_path / "other", repo_id=repo_id("gru"))
    (folder / "seqzoo_training.json").write_text(json.dumps({"steps": 3, "recipe": {"model": {"preset": "gru-small"}}}))
    assert export_folder(folder, tmp_path / "same", repo_id=repo_id("gru")).is_dir()


def test_a_byte_tokenizer_saved_by_an_older_seqzoo_is_published_with_todays_settings(tmp_path):
    """seqzoo before 2026-12-01 saved byte_tokenizer() beside every model: padded on the left (a tagger's batched
    pipeline then reported token indices counted from the pad) and truncating nowhere (truncation=True passed a
    GPT-2-style model more positions than it has). Publishing such a folder gives the settings saved today."""
    from transformers import AutoTokenizer

    tagger = seqzoo.create_model("lstm-tiny", "token-classification", num_labels=2)
    gpt2 = seqzoo.create_model("transformer-tiny", variant="gpt2", max_position_embeddings=16)
    for name, model, side, length in (("tagger", tagger, "right", 1_000_000), ("gpt2", gpt2, "left", 16)):
        model.save_pretrained(tmp_path / name)
        byte_tokenizer().save_pretrained(tmp_path / name)  # (what the older seqzoo new / train saved)
        folder = export_folder(tmp_path / name, tmp_path / f"{name}-hub", repo_id=f"someone/{name}")
        published = AutoTokenizer.from_pretrained(folder)
        assert (published.padding_side, published.model_max_length) == (side, length)
