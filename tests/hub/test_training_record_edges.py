"""Training-record values the wider record tests pass over: an empty dataset list, bools for counts, a set that is
not an object."""

from __future__ import annotations

import json

import pytest

from seqzoo.hub.cards import training_section, validate_training_record


@pytest.mark.parametrize("record, message", [
    ({"dataset": []}, r"'dataset' must be a non-empty string or list of strings; got \[\]"),
    # (a bare local path, cut to "corpus.txt" for the public card, was linked there as a Hub dataset)
    ({"dataset": "/home/me/private/corpus.txt"}, r"'dataset' entry '/home/me/private/corpus.txt' is a local path: "
                                                 r"name it as seqzoo train does \(text:PATH, dataset:PATH, jsonl:PATH"),
    ({"dataset": ["wikitext", "~/data/pairs.jsonl"]}, r"'dataset' entry '~/data/pairs.jsonl' is a local path"),
    ({"dataset": "C:\\data\\corpus.txt"}, r"is a local path"),
    ({"steps": True}, "'steps' must be an integer >= 0; got True"),
    ({"eval": {"sets": {"long": 3.5}}}, r"eval 'sets' must map set names to \{metric: number\} objects"),
    ({"eval": {"accuracy": True}}, "eval metric 'accuracy' must be a finite number; got True"),
    ({"eval": [1.5]}, r"'eval' must map metric names to numbers; got \[1.5\]"),
])
def test_training_record_edge_errors_name_the_field(record, message):
    with pytest.raises(ValueError, match=message):
        validate_training_record(record)


def test_local_paths_named_as_seqzoo_train_names_them_and_hub_ids_are_taken():
    for dataset in ("text:/home/me/corpus.txt", "dataset:~/folder", "task:copy", "wikitext", "allenai/c4",
                    ["pydoc_data.topics", "jsonl:C:\\pairs.jsonl"]):
        assert validate_training_record({"dataset": dataset})["dataset"] == dataset


def test_a_key_given_as_null_is_left_off_the_card():
    # validate_training_record takes null for any key, as if it were absent; the card leaves it out (a null count
    # stopped publishing with a bare TypeError, a null dataset wrote an empty "- Data:" line)
    record = validate_training_record({"dataset": None, "tokens_seen": None, "steps": 12, "eval": None})
    assert training_section(record) == "- Optimizer steps: 12"
    assert training_section(validate_training_record({"steps": None, "tokens_seen": 5})) == "- Tokens seen: 5"


def test_a_run_from_a_saved_model_says_its_figures_are_that_runs_only():
    # (seqzoo train's model.path: the steps and tokens of the last run are not the model's whole training)
    record = validate_training_record({"steps": 3, "recipe": {"model": {"preset": None, "config": {},
                                                                        "path": "runs/mine"}}})
    text = training_section(record)
    assert text.startswith("Trained further from a saved model (`runs/mine`): the data, tokens and steps below are "
                           "those of this last run only")
    assert "- Optimizer steps: 3" in text
    preset = validate_training_record({"steps": 3, "recipe": {"model": {"preset": "gru-tiny", "config": {}}}})
    assert "Trained further" not in training_section(preset)


@pytest.mark.parametrize("model", ["lstm-small", ["lstm", "small"], 3, None])
def test_a_recipe_whose_model_is_no_object_is_shown_as_it_is(model):
    # "recipe" is any JSON object; a hand-written one's "model" as text stopped the card (and publishing) with
    # AttributeError: 'str' object has no attribute 'get'
    text = training_section(validate_training_record({"steps": 3, "recipe": {"model": model}}))
    assert "Trained further" not in text and "- Optimizer steps: 3" in text
    assert f"| model | `{json.dumps(model)}` |" in text


def test_a_record_of_nulls_only_reads_as_a_record_without_figures():
    # (every key null or empty: no figure to show, so the card says the record gives none rather than leaving its
    # training section blank -- not that there is no record: the published folder holds seqzoo_training.json)
    for record in ({"dataset": None, "tokens_seen": None, "steps": None, "eval": None}, {"eval": {}, "recipe": {}}):
        text = training_section(validate_training_record(record))
        assert text.startswith("This checkpoint's training record (`seqzoo_training.json`) gives no data, steps or "
                               "evaluation")
        assert "without a training record" not in text
    assert training_section(None).startswith("This checkpoint was published without a training record")


@pytest.mark.parametrize("damage, message", [
    # (passed over as absent: the model was published without its record, its card without its data and figures)
    ("folder", r"seqzoo_training\.json is damaged: a folder, not a file"),
    ("link", r"seqzoo_training\.json is damaged: a link to nothing, not a file"),
    ("twice", r"seqzoo_training\.json is damaged: key 'steps' is given twice in one object"),  # (the last was taken)
    ("deep", r"seqzoo_training\.json is not valid JSON: maximum recursion depth"),  # (a bare RecursionError)
])
def test_a_damaged_training_record_file_is_named(tmp_path, damage, message):
    from seqzoo.hub.cards import load_training_record

    path = tmp_path / "seqzoo_training.json"
    if damage == "folder":
        path.mkdir()
    elif damage == "link":
        path.symlink_to(tmp_path / "gone.json")
    else:
        path.write_text('{"steps": 5, "steps": 7}' if damage == "twice" else "[" * 100_000)
    with pytest.raises(ValueError, match=message):
        load_training_record(tmp_path)
    assert load_training_record(tmp_path / "elsewhere") is None  # (a folder without a record has none)
