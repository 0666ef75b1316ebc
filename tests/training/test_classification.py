"""Classification recipes (task: sequence-classification | token-classification): the JSONL formats, tags on each
word's first byte, id2label from the recipe or the data, bad rows named by line, exact padding in both directions,
and a short run whose reported accuracy is recomputed through transformers' pipelines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, pipeline

import seqzoo
from seqzoo.training import classification
from seqzoo.training import recipe as recipe_module
from seqzoo.training.classification import (
    classifier_logits,
    encode_words,
    generated_texts,
    jsonl_texts,
    read_labelled_jsonl,
)
from seqzoo.training.data import IGNORE
from seqzoo.training.recipe import recipe_from_dict
from seqzoo.training.recipe_loading import load_recipe
from seqzoo.training.trainer import train

SMALL_LSTM = {"preset": "lstm-tiny", "config": {"hidden_size": 16, "embedding_size": 16, "bidirectional": True}}
TAGGED = [{"tokens": ["Ada", "met", "Zoë"], "tags": ["PER", "O", "PER"]},
          {"tokens": ["Bob", "ran"], "tags": ["PER", "O"]}]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_the_recipe_and_the_data_module_name_the_same_tasks():
    assert recipe_module.LABEL_TASKS == classification.LABEL_TASKS
    assert set(classification.GENERATED_TASKS) == set(classification.LABEL_TASKS)


def test_each_tag_sits_on_its_words_first_byte_as_the_tokenizers_offsets_place_it():
    words = ["Ada", "met", "Zoë", "x"]
    ids, labels = encode_words(words, [1, 0, 1, 2])
    text = " ".join(words)
    tokenizer = seqzoo.byte_tokenizer()
    encoded = tokenizer(text, return_offsets_mapping=True)
    assert ids == encoded["input_ids"]
    # The first byte of each word, found from character offsets: the token whose span starts where a word starts.
    starts, position = [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    expected = [IGNORE] * len(ids)
    first_token = {}
    for index, (start, _end) in enumerate(encoded["offset_mapping"]):
        first_token.setdefault(start, index)
    for start, tag in zip(starts, [1, 0, 1, 2]):
        expected[first_token[start]] = tag
    assert labels == expected
    assert labels[8:12] == [1, IGNORE, IGNORE, IGNORE]  # "Zoë": 4 bytes, one tag


def test_jsonl_labels_come_from_the_data_sorted_or_from_the_recipe_in_its_order(tmp_path):
    path = write_jsonl(tmp_path / "tags.jsonl", TAGGED * 3)
    data = jsonl_texts("token-classification", str(path), 0.3, 8, seed=0)
    assert data.id2label == ["O", "PER"]
    assert data.model_overrides() == {"num_labels": 2, "id2label": {0: "O", 1: "PER"},
                                      "label2id": {"O": 0, "PER": 1}}
    ordered = jsonl_texts("token-classification", str(path), 0.3, 8, seed=0, labels=["PER", "O", "LOC"])
    assert ordered.id2label == ["PER", "O", "LOC"]
    inputs, targets = ordered.batch([(["Bob", "ran"], ["PER", "O"])])
    assert inputs.tolist() == [list(b"Bob ran")]
    assert targets.tolist() == [[0, IGNORE, IGNORE, IGNORE, 1, IGNORE, IGNORE]]
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": "great", "label": "pos"}, {"text": "bad!", "label": "neg"}])
    data = jsonl_texts("sequence-classification", str(texts), 0.5, 8, seed=0)
    inputs, targets = data.batch([("great", "pos"), ("bad!", "neg")])
    assert data.id2label == ["neg", "pos"] and targets.tolist() == [1, 0]
    assert inputs.tolist() == [list(b"great"), list(b"bad!") + [seqzoo.tokenizer.PAD_TOKEN_ID]]


@pytest.mark.parametrize("task, rows, message", [
    ("token-classification", [TAGGED[0], {"tokens": ["a", "b"], "tags": ["O"]}],
     "tags.jsonl:2: 2 tokens but 1 tags; each word needs exactly one tag"),
    ("token-classification", [TAGGED[0], TAGGED[1], {"tokens": ["a"]}], "tags.jsonl:3: missing field(s) 'tags'"),
    ("token-classification", [{"tokens": ["a"], "tags": ["O", "O"]}], "tags.jsonl:1: 1 tokens but 2 tags"),
    ("token-classification", [{"words": ["a"], "tags": ["O"]}], "tags.jsonl:1: missing field(s) 'tokens'"),
    ("token-classification", [TAGGED[0], {"tokens": ["a", ""], "tags": ["O", "O"]}],
     "tags.jsonl:2: 'tokens' must be a non-empty list of non-empty strings"),
    ("token-classification", [TAGGED[0], {"tokens": ["a"], "tags": [3]}],
     "tags.jsonl:2: 'tags' must be a list of tag names (strings)"),
    ("sequence-classification", [{"text": "ok", "label": "a"}, {"text": "ok"}], "tags.jsonl:2: missing field(s) "
     "'label'; each line must be {\"text\": \"...\", \"label\": \"...\"} (fields seen: 'text')"),
    ("sequence-classification", [{"text": "ok", "label": 1}], "tags.jsonl:1: 'label' must be a label name"),
    ("sequence-classification", [{"text": "", "label": "a"}], "tags.jsonl:1: 'text' must be a non-empty string"),
    ("sequence-classification", ["{not json"], "tags.jsonl:1 is not valid JSON"),
    # (json keeps the last of a key given twice: the row was trained as 'pos')
    ("sequence-classification", ['{"text": "ok", "label": "neg", "label": "pos"}'],
     "tags.jsonl:1: key 'label' is given twice in one object; each line must be"),
    ("sequence-classification", ["[" * 100_000], "tags.jsonl:1 is not valid JSON (maximum recursion depth"),
    # (training reads these bytes, the saved tokenizer one special token: another input than the model gets)
    ("sequence-classification", [{"text": "a<|pad|>b", "label": "a"}], "tags.jsonl:1: the text holds '<|pad|>'"),
    ("token-classification", [{"tokens": ["x", "<|endoftext|>"], "tags": ["O", "O"]}],
     "tags.jsonl:1: the text holds '<|endoftext|>', which the saved tokenizer reads as its special token"),
    ("sequence-classification", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}],
     "the data holds a single label ('x'): a classifier needs at least two"),
    # A JSON escape of a lone surrogate is valid JSON but no UTF-8 text: the run stopped with a bare
    # UnicodeEncodeError at the step that first drew the row, naming neither file nor line.
    ("sequence-classification", ['{"text": "ok \\ud800 x", "label": "a"}'],
     "tags.jsonl:1: the text holds '\\ud800' at character 3, a lone surrogate, which has no UTF-8 bytes"),
    ("token-classification", ['{"tokens": ["a", "b\\udc80"], "tags": ["O", "O"]}'],
     "tags.jsonl:1: the text holds '\\udc80' at character 3"),
])
def test_bad_rows_are_named_by_file_and_line(tmp_path, task, rows, message):
    path = write_jsonl(tmp_path / "tags.jsonl", rows)
    with pytest.raises(ValueError) as info:
        jsonl_texts(task, str(path), 0.5, 8, seed=0)
    assert message in str(info.value)


def test_a_file_sorted_by_label_that_holds_a_class_out_of_training_is_warned_about(tmp_path, caplog):
    # The held-out rows are the file's tail: sorted by label, the training never sees 'pos', which alone is scored.
    rows = [{"text": f"bad {i}", "label": "neg"} for i in range(9)] + [{"text": "good", "label": "pos"}]
    path = write_jsonl(tmp_path / "sorted.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="seqzoo.training"):
        jsonl_texts("sequence-classification", str(path), 0.1, 8, seed=0)
    assert "label(s) 'pos' never occur in the 9 training rows" in caplog.text
    assert "yet the evaluation rows hold 'pos'; shuffle the file if it is sorted by label" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seqzoo.training"):
        jsonl_texts("sequence-classification", str(write_jsonl(tmp_path / "mixed.jsonl", rows[::-1])), 0.1, 8, seed=0)
    assert "never occur" not in caplog.text


def test_a_label_missing_from_the_recipes_labels_names_its_line(tmp_path):
    path = write_jsonl(tmp_path / "tags.jsonl", [TAGGED[0], TAGGED[1], {"tokens": ["in", "Rome"],
                                                                         "tags": ["O", "LOC"]}])
    with pytest.raises(ValueError, match=r"tags.jsonl:3: tag 'LOC' is not in data.labels \('O', 'PER'\)"):
        jsonl_texts("token-classification", str(path), 0.3, 8, seed=0, labels=["O", "PER"])
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "meh"}])
    with pytest.raises(ValueError, match=r"texts.jsonl:2: label 'meh' is not in data.labels"):
        jsonl_texts("sequence-classification", str(texts), 0.5, 8, seed=0, labels=["neg", "pos"])
    assert len(read_labelled_jsonl(texts, "sequence-classification")) == 2


def test_generated_tasks_follow_their_rules():
    tagging = generated_texts("token-classification", "appears_later", [12], 16, eval_samples=20, seed=3)
    for words, tags in tagging.eval_rows()["distance=12"]:
        assert len(words) == 12 and set(words) <= set("abcdef")
        assert tags == ["again" if w in words[i + 1:] else "last" for i, w in enumerate(words)]
    assert tagging.id2label == ["again", "last"]
    opening = generated_texts("sequence-classification", "first_letter", [5], 3, eval_samples=20, seed=3)
    for text, label in opening.eval_rows()["distance=5"]:
        assert text.split(" ")[0] == label and len(text.split(" ")) == 5 and set(text) <= set("abc ")
    assert opening.id2label == ["a", "b", "c"]
    with pytest.raises(ValueError, match="leave data.labels unset"):
        generated_texts("token-classification", "appears_later", [4], 4, 4, 0, labels=["x", "y"])


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification"])
def test_the_training_forward_masks_pads_so_padded_rows_equal_rows_alone(task):
    # A bidirectional model: without the mask its right-to-left pass would start on the pads.
    torch.manual_seed(0)
    model = seqzoo.create_model("lstm-tiny", task, num_labels=3, bidirectional=True, hidden_size=16,
                                embedding_size=16).eval()
    texts = classification.LabelledTexts(task, lambda s, b: [], {}, ["a", "b", "c"], "t", None, {})
    rows = [("a longer text", "a"), ("short", "b")] if task == "sequence-classification" else [
        (["a", "longer", "text"], ["a", "b", "c"]), (["short"], ["b"])]
    inputs, _ = texts.batch(rows)
    with torch.no_grad():
        batched = classifier_logits(model, inputs)
        for row, (content, _) in enumerate(rows):
            alone, _ = texts.batch([(content, rows[row][1])])
            single = classifier_logits(model, alone)[0]
            got = batched[row] if task == "sequence-classification" else batched[row, : alone.shape[1]]
            torch.testing.assert_close(got, single, rtol=1e-5, atol=1e-6)


def label_recipe(tmp_path: Path, task: str, data: dict, **train) -> object:
    return recipe_from_dict({
        "name": task, "output_dir": str(tmp_path / task), "task": task, "model": SMALL_LSTM, "data": data,
        "optim": {"lr": 0.01, "warmup_steps": 1},
        "train": {"max_steps": 4, "batch_size": 8, "eval_every": 0, "log_every": 100, **train},
    })


def test_a_tagger_trains_on_jsonl_and_its_accuracy_is_what_the_pipeline_finds(tmp_path):
    rows = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        words = ["".join(chr(97 + int(c)) for c in torch.randint(4, (int(torch.randint(1, 4, (1,), generator=gen)),),
                                                                   generator=gen)) for _ in range(4)]
        rows.append({"tokens": words, "tags": ["LONG" if len(w) > 1 else "SHORT" for w in words]})
    path = write_jsonl(tmp_path / "tags.jsonl", rows)
    recipe = label_recipe(tmp_path, "token-classification", {"source": "jsonl", "path": str(path),
                                                            "eval_fraction": 0.25})
    result = train(recipe, progress=False)
    folder = result.output_dir
    saved = json.loads((folder / "config.json").read_text())
    assert saved["architectures"] == ["LSTMForTokenClassification"]
    assert saved["id2label"] == {"0": "LONG", "1": "SHORT"}
    record = json.loads((folder / "seqzoo_training.json").read_text())
    assert "perplexity" not in record["eval"] and set(record["eval"]["sets"]) == {"validation"}
    tag = pipeline("token-classification", model=str(folder))
    correct = total = 0
    for row in rows[-10:]:
        text = " ".join(row["tokens"])
        firsts = [e for e in tag(text) if e["start"] == 0 or text[e["start"] - 1] == " "]
        assert len(firsts) == len(row["tags"])
        correct += sum(e["entity"] == want for e, want in zip(firsts, row["tags"]))
        total += len(row["tags"])
    assert result.eval["accuracy"] == pytest.approx(correct / total)
    assert result.eval["scored_labels"] == total
    # The reported loss, recomputed row by row with no padding at all: the batched evaluation masked its pads.
    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    losses = []
    with torch.no_grad():
        for row in rows[-10:]:
            ids, labels = encode_words(row["tokens"], [model.config.label2id[t] for t in row["tags"]])
            logits = model(torch.tensor([ids])).logits[0]
            losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor(labels), reduction="none")[
                torch.tensor(labels) != IGNORE])
    assert result.eval["loss"] == pytest.approx(float(torch.cat(losses).mean()), rel=1e-5)


def test_a_sequence_classifier_trains_on_a_generated_task_and_classifies_text(tmp_path):
    recipe = label_recipe(tmp_path, "sequence-classification", {"source": "task", "task": "first_letter",
                                                               "distances": [3, 6], "symbols": 3,
                                                               "eval_samples": 6})
    result = train(recipe, progress=False)
    assert set(result.eval["sets"]) == {"distance=3", "distance=6"} and result.eval["scored_labels"] == 12
    data = classification.build_label_data(recipe.task, recipe.data, recipe.train.seed)
    classify = pipeline("text-classification", model=str(result.output_dir))
    for name, rows in data.eval_rows().items():
        hits = [classify(text)[0]["label"] == label for text, label in rows]
        assert result.eval["sets"][name]["accuracy"] == pytest.approx(sum(hits) / len(hits))


def test_a_saved_classifier_trains_on_from_its_folder_on_data_of_its_labels_only(tmp_path):
    data = {"source": "task", "task": "first_letter", "distances": [3, 6], "symbols": 3, "eval_samples": 6}
    first = train(label_recipe(tmp_path, "sequence-classification", data, max_steps=20), progress=False)
    values = {"name": "again", "output_dir": str(tmp_path / "again"), "model": {"path": str(first.output_dir)},
              "data": data, "optim": {"lr": 0.01, "warmup_steps": 1},
              "train": {"max_steps": 2, "batch_size": 8, "eval_every": 0, "log_every": 100}}
    recipe = recipe_from_dict(values)
    assert recipe.task == "sequence-classification"  # (the saved head's)
    before = AutoModelForSequenceClassification.from_pretrained(first.output_dir).state_dict()
    again = train(recipe, progress=False)
    assert again.steps == 2 and any(not torch.equal(before[k], v) for k, v in again.model.state_dict().items())
    with pytest.raises(ValueError, match=r"has num_labels=3 and the data \(.*\) need 5: a saved model trains on "
                       r"data of its own vocabulary and labels"):
        train(recipe_from_dict({**values, "output_dir": str(tmp_path / "five"), "data": {**data, "symbols": 5}}),
              progress=False)


@pytest.mark.parametrize("values, message", [
    ({"data": {"source": "pydoc"}}, "data.source='pydoc' is invalid: expected jsonl or task"),
    ({"data": {"source": "task", "task": "copy"}}, "data.task='copy' is invalid: expected a token-classification "
                                                   "task, one of appears_later"),
    ({"data": {"source": "task", "task": "appears_later", "labels": ["x"]}}, "data.labels=['x'] is invalid"),
    ({"data": {"source": "task", "task": "appears_later"}, "model": {"preset": "lstm-tiny",
                                                                      "config": {"num_labels": 4}}},
     "model.config.num_labels=4 is invalid: expected unset: a classifier's labels come from the data"),
    # trained with cross-entropy over class ids: a multi-label or regression config was saved as such, and the
    # pipelines then scored the softmax-trained model with a sigmoid or as raw values
    ({"task": "sequence-classification", "data": {"source": "task", "task": "first_letter"},
      "model": {"preset": "lstm-tiny", "config": {"problem_type": "multi_label_classification"}}},
     ("model.config.problem_type='multi_label_classification' is invalid: expected unset or "
      "'single_label_classification'")),
    ({"data": {"source": "task", "task": "appears_later"},
      "model": {"preset": "lstm-tiny", "config": {"problem_type": "regression"}}},
     "model.config.problem_type='regression' is invalid: expected unset or 'single_label_classification'"),
    ({"data": {"source": "task", "task": "appears_later"}, "train": {"tbptt_chunk": 8}},
     "train.tbptt_chunk=8 is invalid: expected 0 for task: token-classification"),
    ({"task": "causal-lm", "data": {"labels": ["a", "b"]}}, "data.labels=['a', 'b'] is invalid: expected null"),
    # a classifier's config fields on a recipe whose model has no classification head were ignored
    ({"task": "causal-lm", "model": {"preset": "lstm-tiny", "config": {"num_labels": 5}}},
     "model.config.num_labels=5 is invalid: expected unset with task: causal-lm (only the classification heads"),
    ({"task": "seq2seq", "model": {"preset": "seq2seq-bahdanau-tiny", "config": {"classifier_pooling": "mean"}},
      "data": {"source": "task", "task": "reverse"}},
     "model.config.classifier_pooling='mean' is invalid: expected unset with task: seq2seq"),
    ({"task": "causal-lm", "data": {"source": "jsonl", "path": "x.jsonl"}}, "jsonl files train task: seq2seq, "
                                                                             "sequence-classification or token"),
])
def test_bad_classification_recipes_are_named(values, message):
    base = {"task": "token-classification", "model": {"preset": "lstm-tiny"}}
    with pytest.raises(ValueError) as info:
        recipe_from_dict({**base, **values})
    assert message in str(info.value)


def test_the_tagger_preset_loads_as_a_bidirectional_token_classifier():
    recipe = load_recipe("bilstm-tagger")
    assert recipe.task == "token-classification" and recipe.model.config["bidirectional"] is True


def test_jsonl_texts_may_hold_unicode_line_separators(tmp_path):
    # json.dumps(ensure_ascii=False) leaves U+2028 and U+0085 unescaped; a JSON line ends at "\n" only.
    path = tmp_path / "rows.jsonl"
    rows = [{"text": "one\u2028two", "label": "a"}, {"text": "x\x85y", "label": "b"}]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    assert [row for row, _ in read_labelled_jsonl(path, "sequence-classification")] == [
        ("one\u2028two", "a"), ("x\x85y", "b")]


def test_a_row_longer_than_the_models_positions_is_refused_before_training(tmp_path):
    # (the run stopped at the step that first drew it, after its first checkpoints, naming no row nor fix)
    rows = [{"text": "ab" * (40 if i == 7 else 3), "label": "ab"[i % 2]} for i in range(20)]
    path = write_jsonl(tmp_path / "texts.jsonl", rows)
    model = {"preset": "transformer-gpt2-small", "config": {"hidden_size": 16, "num_attention_heads": 2,
                                                            "num_hidden_layers": 1, "max_position_embeddings": 64}}
    recipe = label_recipe(tmp_path, "sequence-classification", {"source": "jsonl", "path": str(path)})
    recipe.model.preset, recipe.model.config = model["preset"], model["config"]
    with pytest.raises(ValueError, match=r"jsonl:.*texts.jsonl: row 8 is 80 bytes, longer than the 64 positions .* "
                                         r"set data.seq_len=64 to cut texts there"):
        train(recipe, progress=False)
    assert not (tmp_path / "sequence-classification" / "checkpoints").exists()
    recipe.data.seq_len = 64  # cut there: it trains
    train(recipe, progress=False)


def test_appears_later_draws_from_two_to_twenty_six_letters_whatever_the_distance():
    for distance, letters in ((2, "ab"), (3, "ab"), (12, "abcdef"), (80, "abcdefghijklmnopqrstuvwxyz")):
        data = generated_texts("token-classification", "appears_later", [distance], 16, eval_samples=60, seed=0)
        drawn = {word for words, _ in data.eval_rows()[f"distance={distance}"] for word in words}
        assert drawn == set(letters), distance  # every one of them used, and nothing else


def test_generated_training_steps_take_the_distances_in_turn_and_never_draw_an_evaluation_set():
    data = generated_texts("sequence-classification", "first_letter", [6, 3], 3, eval_samples=8, seed=0)
    assert list(data.eval_rows()) == ["distance=3", "distance=6"]
    words = [{len(text.split(" ")) for text, _ in data._train(step, 8)} for step in range(4)]
    assert words == [{3}, {6}, {3}, {6}]
    tagging = generated_texts("token-classification", "appears_later", [12], 16, eval_samples=8, seed=0)
    (held_out,) = tagging.eval_rows().values()
    for step in range(20):  # 6 ** 12 possible texts: a training batch equal to the evaluation set shares its stream
        assert tagging._train(step, 8) != held_out


def test_generated_task_arguments_are_checked():
    with pytest.raises(ValueError, match=r"distances=\[\] is invalid: a non-empty list of integers >= 1"):
        generated_texts("sequence-classification", "first_letter", [], 3, 4, 0)
    with pytest.raises(ValueError, match=r"distances=\[3, 0\] is invalid"):
        generated_texts("sequence-classification", "first_letter", [3, 0], 3, 4, 0)
    for symbols in (1, 27):
        with pytest.raises(ValueError, match=f"symbols={symbols} is invalid: the tasks draw from 2 to 26 letters"):
            generated_texts("sequence-classification", "first_letter", [3], symbols, 4, 0)
    with pytest.raises(ValueError, match="unknown sequence-classification task 'appears_later'; allowed: first_letter"):
        generated_texts("sequence-classification", "appears_later", [3], 3, 4, 0)


def test_a_file_row_that_would_not_fit_the_model_is_measured_as_the_batch_encodes_it():
    """check_fits counts the bytes a batch holds: words joined by spaces, UTF-8 (two bytes for 'é'), held-out rows
    too."""
    tokenizer = seqzoo.byte_tokenizer()
    tagged = classification.LabelledTexts("token-classification", lambda s, b: [], {}, ["O"], "t", None, {})
    texts = classification.LabelledTexts("sequence-classification", lambda s, b: [], {}, ["a", "b"], "t", None, {})
    for data, row in ((tagged, (["ab"] * 10, ["O"] * 10)), (texts, ("é" * 15, "a"))):
        width = data.batch([row])[0].shape[1]
        text = " ".join(row[0]) if data is tagged else row[0]
        assert width == len(tokenizer(text)["input_ids"]) == (29 if data is tagged else 30)
        data.rows = [("a", "b") if data is texts else (["a"], ["O"]), row]
        data.check_fits(width)
        with pytest.raises(ValueError, match=f"t: row 2 is {width} bytes, longer than the {width - 1} positions"):
            data.check_fits(width - 1)
        data.seq_len = width - 1  # cut there, it fits
        data.check_fits(width - 1)


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification"])
def test_a_generated_task_longer_than_the_models_positions_is_named_before_training(task):
    # Only a file's rows were measured: a generated task's long texts stopped the run at the step that drew them.
    name = next(iter(classification.GENERATED_TASKS[task]))
    data = generated_texts(task, name, [3, 20, 3], 4, 8, seed=0)  # (a distance listed twice has one evaluation set)
    width = max(data.batch(data._train(step, 4))[0].shape[1] for step in range(4))
    assert width == max(data.longest.values()) == 39
    data.check_fits(width)
    with pytest.raises(ValueError, match=f"{task}-task:{name}: a text at distance=20 is 39 bytes, longer than the "
                                         r"38 positions .* set data.seq_len=38 to cut texts there, shorten "
                                         "data.distances, or raise"):
        data.check_fits(width - 1)
    generated_texts(task, name, [3, 20], 4, 8, seed=0, seq_len=38).check_fits(38)  # cut there, it fits


def test_jsonl_holds_out_at_least_one_row_at_most_eval_samples_and_checks_every_row(tmp_path):
    rows = [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(20)]
    path = write_jsonl(tmp_path / "texts.jsonl", rows)
    tiny = jsonl_texts("sequence-classification", str(path), 0.01, 8, seed=0)
    assert tiny.describe()["train_rows"] == 19 and tiny.eval_rows()["validation"] == [("row 19", "b")]
    capped = jsonl_texts("sequence-classification", str(path), 0.5, 4, seed=0)
    assert capped.describe()["train_rows"] == 10
    # Four of the ten held out, spread over them (the first four would be one stretch of the file's tail).
    scored = [10, 12, 15, 17]
    assert capped.eval_rows()["validation"] == [(f"row {i}", "ab"[i % 2]) for i in scored]
    # (what check_fits reads: trained and scored)
    assert capped.rows == [(f"row {i}", "ab"[i % 2]) for i in [*range(10), *scored]]
    single = write_jsonl(tmp_path / "one.jsonl", [rows[0]])
    with pytest.raises(ValueError, match=r"one.jsonl hold 1 row\(s\): too few to hold out 1 for evaluation"):
        jsonl_texts("sequence-classification", str(single), 0.1, 8, seed=0, labels=["a", "b"])


def test_a_jsonl_sources_position_counts_epochs_of_its_training_rows(tmp_path):
    path = write_jsonl(tmp_path / "texts.jsonl", [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(10)])
    data = jsonl_texts("sequence-classification", str(path), 0.3, 8, seed=0)  # 7 rows trained
    assert data.position(7 * 2 + 3) == {"samples_seen": 17, "epoch": 2, "index_in_epoch": 3}
    assert data.position(6) == {"samples_seen": 6, "epoch": 0, "index_in_epoch": 6}
    epoch = [text for text, _ in data._train(0, 7)]  # the first 7 samples: one epoch, every training row once
    assert sorted(epoch) == [f"row {i}" for i in range(7)]


def test_texts_longer_than_seq_len_are_cut_with_their_tags_and_one_warning(tmp_path, caplog):
    path = write_jsonl(tmp_path / "tags.jsonl", TAGGED * 4)
    data = jsonl_texts("token-classification", str(path), 0.25, 8, seed=0, seq_len=6)
    rows = [(["Ada", "met", "Zoë"], ["PER", "O", "PER"]), (["Bob"], ["PER"])]
    with caplog.at_level(logging.WARNING, logger="seqzoo.training"):
        inputs, targets = data.batch(rows)
        data.batch(rows)
    ids, tags = encode_words(*rows[0][:1], [1, 0, 1])
    assert inputs.shape == targets.shape == (2, 6)
    assert inputs[0].tolist() == ids[:6] and targets[0].tolist() == tags[:6] == [1, IGNORE, IGNORE, IGNORE, 0, IGNORE]
    assert targets[1].tolist() == [1, IGNORE, IGNORE] + [IGNORE] * 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "1 of 2 texts in a batch of jsonl:" in warnings[0]
    assert "data.seq_len=6 bytes" in warnings[0] and "with the tags of the words cut off" in warnings[0]


@pytest.mark.parametrize("task, lines, message", [
    ("sequence-classification", ['[1, 2]'], r"rows.jsonl:1: expected an object \{\"text\": \"...\", \"label\""),
    ("token-classification", ['{"tokens": [], "tags": []}'], "rows.jsonl:1: 'tokens' must be a non-empty list"),
    ("sequence-classification", ["", "   "], r"rows.jsonl holds no rows; each line must be"),
])
def test_rows_that_hold_no_labelled_text_are_named(tmp_path, task, lines, message):
    path = write_jsonl(tmp_path / "rows.jsonl", lines)
    with pytest.raises(ValueError, match=message):
        read_labelled_jsonl(path, task)


@pytest.mark.parametrize("labels, message", [
    (["O", "PER", "O"], r"data.labels=\['O', 'PER', 'O'\] is invalid: at least two distinct label names \('O' "
                        r"repeated\)"),
    (["O"], r"data.labels=\['O'\] is invalid: at least two distinct label names"),
])
def test_the_labels_given_directly_are_checked_as_the_recipe_checks_them(tmp_path, labels, message):
    path = write_jsonl(tmp_path / "tags.jsonl", TAGGED * 3)
    with pytest.raises(ValueError, match=message):
        jsonl_texts("token-classification", str(path), 0.3, 8, seed=0, labels=labels)


def test_training_never_reads_the_held_out_rows_and_the_hash_follows_every_training_row(tmp_path):
    rows = [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(10)]
    data = jsonl_texts("sequence-classification", str(write_jsonl(tmp_path / "a.jsonl", rows)), 0.3, 8, seed=0)
    trained = {text for step in range(20) for text, _ in data._train(step, 4)}  # eleven epochs of seven rows
    assert trained == {f"row {i}" for i in range(7)}
    # --resume compares this hash: an edit anywhere in the training rows is other data.
    edited = [dict(row) for row in rows]
    edited[5]["text"] = "row five"
    changed = jsonl_texts("sequence-classification", str(write_jsonl(tmp_path / "b.jsonl", edited)), 0.3, 8, seed=0)
    assert changed.describe()["sha256"] != data.describe()["sha256"]
    same = jsonl_texts("sequence-classification", str(write_jsonl(tmp_path / "c.jsonl", rows)), 0.3, 8, seed=0)
    assert same.describe()["sha256"] == data.describe()["sha256"]
