"""Recipes: presets load, bad fields are named with the value seen and what is allowed, overrides, run identity."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from seqzoo.training.recipe import DataSection, ModelSection, OptimSection, Recipe, TrainSection, recipe_from_dict
from seqzoo.training.recipe_loading import list_recipes, load_recipe


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_preset_loads(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.output_dir.endswith(name)


def test_model_preset_gives_a_default_text_recipe():
    recipe = load_recipe("gru-tiny")
    assert recipe.model.preset == "gru-tiny" and recipe.data.source == "pydoc"


def test_yaml_file_and_typed_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    # PyYAML reads 3e-3 (no dot) as a string; the schema still takes it as a number.
    path.write_text("model: {preset: lstm-tiny}\noptim: {lr: 3e-3}\ntrain: {max_steps: 5}\n"
                    "data: {source: task, task: copy}\n")
    recipe = load_recipe(str(path), {"train.batch_size": 4, "seq_len": 33, "model.config.dropout": 0.5,
                                     "distances": [3, 5]})
    assert recipe.name == "mine" and recipe.optim.lr == 0.003
    assert recipe.train.batch_size == 4 and recipe.data.seq_len == 33 and recipe.data.distances == [3, 5]
    assert recipe.model.config == {"dropout": 0.5}


@pytest.mark.parametrize("values, message", [
    ({"trian": {}}, "unknown recipe field 'trian'. Did you mean train?"),
    ({"train": {"max_step": 3}}, "unknown recipe field train.'max_step'. Did you mean train.max_steps?"),
    ({"optim": {"lr": "fast"}}, "optim.lr='fast' is invalid: expected a finite number"),
    ({"train": {"seed": -1}}, "train.seed=-1 is invalid: expected an integer in [0, 2**32)"),
    ({"train": {"seed": 2**32}}, "train.seed=4294967296 is invalid"),
    ({"optim": {"lr": float("inf")}}, "optim.lr=inf is invalid: expected a finite number"),
    ({"optim": {"lr": "inf"}}, "optim.lr='inf' is invalid: expected a finite number"),
    ({"optim": {"eps": float("nan")}}, "optim.eps=nan is invalid: expected a finite number"),
    ({"optim": {"max_grad_norm": float("inf")}}, "optim.max_grad_norm=inf is invalid: expected a finite number"),
    ({"optim": {"betas": [0.9, float("nan")]}}, "optim.betas=[0.9, nan] is invalid: expected a list of finite"),
    ({"train": {"exploding_grad_norm": ".inf"}}, "train.exploding_grad_norm='.inf' is invalid"),
    ({"train": {"max_nonfinite_steps": -1}}, "train.max_nonfinite_steps=-1 is invalid: expected an integer >= 0"),
    ({"optim": {"lr": -1.0}}, "optim.lr=-1.0 is invalid: expected a number > 0"),
    ({"train": {"batch_size": 2.5}}, "train.batch_size=2.5 is invalid: expected an integer"),
    ({"optim": {"schedule": "cosin"}}, "optim.schedule='cosin' is invalid: expected one of cosine, linear, constant "
                                       "(did you mean 'cosine'?)"),
    ({"data": {"source": "text"}}, "data.path=None is invalid: expected a path (data.source='text' reads one)"),
    ({"data": {"source": "task", "task": "copying"}}, "data.task='copying' is invalid: expected one of copy"),
    # a field the source does not read was ignored: the run trained on pydoc, or on the copy task
    ({"data": {"path": "corpus.txt"}}, "data.path='corpus.txt' is invalid: expected null with data.source='pydoc'"),
    ({"data": {"source": "task", "task": "copy", "path": "x.txt"}}, "expected null with data.source='task'"),
    ({"data": {"source": "text", "path": "x.txt", "task": "copy"}}, "data.task='copy' is invalid: expected null"),
    ({"data": {"distances": [4]}}, "data.distances=[4] is invalid: expected its default ([8, 32]) with "
                                   "data.source='pydoc', which reads none of the generated tasks' settings"),
    ({"data": {"source": "text", "path": "x.txt", "symbols": 32}}, "data.symbols=32 is invalid: expected its default"),
    ({"data": {"distance_mix": "batch"}}, "data.distance_mix='batch' is invalid: expected its default ('sample')"),
    ({"data": {"source": "task", "task": "copy", "distances": []}}, "data.distances=[] is invalid"),
    # fields only seq2seq recipes, or only causal LMs on generated tasks, read
    ({"data": {"max_source_length": 5}}, "data.max_source_length=5 is invalid: expected its default (None) with "
                                         "task 'causal-lm' and data.source='pydoc', which read(s) no such setting"),
    ({"data": {"source": "task", "task": "copy", "source_lengths": [3]}}, "data.source_lengths=[3] is invalid"),
    ({"model": {"preset": "seq2seq-sutskever-tiny"}, "data": {"source": "task", "task": "reverse", "items": 7}},
     "data.items=7 is invalid: expected its default"),
    ({"model": {"preset": "seq2seq-sutskever-tiny"}, "data": {"source": "task", "task": "reverse",
                                                              "distances": [3]}}, "data.distances=[3] is invalid"),
    ({"model": {"preset": "seq2seq-sutskever-tiny"}, "data": {"source": "jsonl", "path": "pairs.jsonl",
                                                              "source_lengths": [3, 4]}},
     "data.source_lengths=[3, 4] is invalid: expected its default"),
    ({"model": {"preset": "lstm-tiny"}, "task": "sequence-classification",
      "data": {"source": "jsonl", "path": "x.jsonl", "distance_mix": "batch"}},
     "data.distance_mix='batch' is invalid: expected its default"),
    # generated tasks that draw no letters, or sources of their own length
    ({"model": {"preset": "seq2seq-sutskever-tiny"}, "data": {"source": "task", "task": "digits", "symbols": 8}},
     "data.symbols=8 is invalid: expected its default (16) with data.task='digits', which draws digits or dates"),
    ({"model": {"preset": "seq2seq-sutskever-tiny"}, "data": {"source": "task", "task": "dates",
                                                              "source_lengths": [50]}},
     "data.source_lengths=[50] is invalid: expected its default ([4, 8, 16]) with data.task='dates'"),
    ({"model": {"preset": "lstm-tiny"}, "task": "token-classification",
      "data": {"source": "task", "task": "appears_later", "symbols": 3}},
     "data.symbols=3 is invalid: expected its default (16) with data.task='appears_later'"),
    # (each was taken and changed nothing: a seq2seq pair is as long as it is; a constant rate never decays)
    ({"model": {"preset": "seq2seq-sutskever-tiny"}, "data": {"source": "task", "task": "reverse", "seq_len": 3}},
     "data.seq_len=3 is invalid: expected its default (None) with task 'seq2seq', whose pairs are as long as they are"),
    ({"model": {"preset": "seq2seq-sutskever-tiny"}, "data": {"source": "jsonl", "path": "pairs.jsonl",
                                                              "seq_len": 64}}, "data.seq_len=64 is invalid"),
    ({"optim": {"schedule": "constant", "min_lr_ratio": 0.5}}, "optim.min_lr_ratio=0.5 is invalid: expected its "
                                                               "default (0.1) with optim.schedule='constant'"),
    ({"train": {"skip_nonfinite_steps": False, "max_nonfinite_steps": 7}}, "train.max_nonfinite_steps=7 is invalid: "
     "expected its default (3) with train.skip_nonfinite_steps=false"),
    ({"train": {"save_every": 0, "save_total_limit": 9}}, "train.save_total_limit=9 is invalid: expected its default "
                                                          "(2) with train.save_every=0, which writes no checkpoint"),
    ({"model": {"preset": "lstm-huge"}}, "model.preset='lstm-huge' is invalid: expected a model preset"),
    ({"train": {"mixed_precision": "fp8"}}, "train.mixed_precision='fp8' is invalid"),
    ({"train": "fast"}, "section 'train' must be a mapping of fields, got 'fast'"),
    # (a falsy value was taken for an empty section, and the defaults trained: `model: ''` as lstm-tiny)
    ({"train": 0}, "section 'train' must be a mapping of fields, got 0"),
    ({"optim": False}, "section 'optim' must be a mapping of fields, got False"),
    ({"data": []}, "section 'data' must be a mapping of fields, got []"),
    ({"model": ""}, "section 'model' must be a mapping of fields, got ''"),
])
def test_bad_fields_are_named(values, message):
    with pytest.raises(ValueError) as info:
        recipe_from_dict(values)
    assert message in str(info.value)


def test_yaml_infinity_and_direct_construction_are_refused(tmp_path):
    recipe = tmp_path / "inf.yaml"
    recipe.write_text("optim:\n  lr: .inf\n")
    with pytest.raises(ValueError, match="optim.lr=inf is invalid: expected a finite number"):
        load_recipe(str(recipe))
    with pytest.raises(ValueError, match="optim.lr=inf is invalid: expected a finite number"):
        Recipe(optim=OptimSection(lr=float("inf")))
    with pytest.raises(ValueError, match="data.eval_fraction=nan is invalid"):
        Recipe(data=DataSection(eval_fraction=float("nan")))


def test_a_run_folder_or_a_saved_model_folder_given_as_the_recipe_says_what_to_do(tmp_path):
    """Both were 'unknown recipe ... not a YAML file, a recipe preset or a model preset'."""
    import seqzoo

    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("model: {preset: gru-tiny}\n")
    with pytest.raises(ValueError, match=r"'.*run' is the folder of a run, not a recipe: train its recipe again with "
                       r"`seqzoo train .*run/recipe.yaml`, continue .* `seqzoo train .*run/recipe.yaml --resume`, "
                       r"or train the model it saved further on a recipe's data with `seqzoo train <recipe> "
                       r"model.path=.*run`"):
        load_recipe(str(run))
    saved = tmp_path / "saved"
    seqzoo.create_model("gru-tiny").save_pretrained(saved)
    with pytest.raises(ValueError, match=r"'.*saved' holds a saved model, not a recipe: train it further on a "
                       r"recipe's data with `seqzoo train <recipe> model.path=.*saved`"):
        load_recipe(str(saved))
    (run / "config.json").write_text("{}")  # a finished run's folder holds its model too: still a run's folder
    with pytest.raises(ValueError, match=r"'.*run' is the folder of a run, not a recipe"):
        load_recipe(str(run))
    with pytest.raises(ValueError, match="unknown recipe"):  # any other folder
        load_recipe(str(tmp_path))


def test_unknown_recipe_and_bad_overrides(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe 'lstm-pydok'.*Did you mean 'lstm-pydoc'"):
        load_recipe("lstm-pydok")
    with pytest.raises(ValueError, match=r"recipe file '.*missing.yaml' does not exist"):
        load_recipe(str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="'max_stepz' is not a recipe field. Did you mean 'max_steps'"):
        load_recipe("gru-tiny", {"max_stepz": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        load_recipe(str(bad))
    bad.write_text("- a list\n- not sections\n")
    with pytest.raises(ValueError, match="must be a mapping of sections, got list"):
        load_recipe(str(bad))
    for text in ("", "# only a comment\n"):
        bad.write_text(text)
        with pytest.raises(ValueError, match=r"recipe file '.*bad.yaml' is empty \(or only comments\)"):
            load_recipe(str(bad))
    bad.write_bytes("model: {preset: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"recipe file '.*bad.yaml' is not UTF-8 text"):
        load_recipe(str(bad))
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(ValueError, match=r"recipe file '.*folder.yaml' is a folder, not a YAML file"):
        load_recipe(str(tmp_path / "folder.yaml"))


def test_run_id_follows_the_trajectory_not_the_bookkeeping():
    base = load_recipe("gru-tiny")
    assert load_recipe("gru-tiny").run_id == base.run_id
    assert load_recipe("gru-tiny", {"save_every": 7, "output_dir": "elsewhere", "eval_every": 3}).run_id == base.run_id
    assert load_recipe("gru-tiny", {"lr": 1e-4}).run_id != base.run_id
    assert load_recipe("gru-tiny", {"model.config.dropout": 0.2}).run_id != base.run_id


def test_a_tuning_set_changes_the_run_id_and_runs_saved_before_it_keep_theirs():
    # The ids these recipes had before data.tuning_set existed: a run saved then resumes (ADDED_LATER).
    assert load_recipe("gru-tiny").run_id == "da30ca9fac2a"
    assert load_recipe("lstm-pydoc").run_id == "a348dfbd67f7"
    assert load_recipe("seq2seq-digits").run_id == "686933d048b3"
    assert load_recipe("gru-tiny", {"data.tuning_set": True}).run_id != "da30ca9fac2a"


def test_model_path_names_a_saved_seqzoo_model_and_its_head_sets_the_task(tmp_path):
    import seqzoo

    lm, classifier = tmp_path / "lm", tmp_path / "classifier"
    seqzoo.create_model("gru-tiny").save_pretrained(lm)
    seqzoo.create_model("gru-tiny", "sequence-classification").save_pretrained(classifier)
    recipe = load_recipe("gru-tiny", {"model.path": str(lm)})  # a model preset's recipe: the path replaces it
    assert (recipe.model.path, recipe.model.preset, recipe.task) == (str(lm), None, "causal-lm")
    assert recipe.model.source == str(lm) and recipe.run_id != load_recipe("gru-tiny").run_id
    twin = tmp_path / "twin"  # (another saved model: another trajectory, so --resume refuses the other's checkpoints)
    seqzoo.create_model("gru-tiny").save_pretrained(twin)
    assert load_recipe("gru-tiny", {"model.path": str(twin)}).run_id != recipe.run_id
    assert load_recipe("lstm-pydoc", {"model.path": str(lm)}).model.preset is None
    values = {"model": {"path": str(classifier)}, "data": {"source": "jsonl", "path": "x.jsonl"}}
    assert recipe_from_dict(values).task == "sequence-classification"
    with pytest.raises(ValueError, match=r"task='causal-lm' is invalid: expected 'sequence-classification', the task "
                       r"of the head saved in model.path="):
        recipe_from_dict({**values, "task": "causal-lm"})
    with pytest.raises(ValueError, match=r"model.preset='gru-tiny' is invalid: expected null with model.path"):
        recipe_from_dict({"model": {"path": str(lm), "preset": "gru-tiny"}})
    with pytest.raises(ValueError, match=r"model.config=\{'dropout': 0.2\} is invalid: expected \{\} with "
                       r"model.path \(a saved model trains with the config it was saved with\)"):
        recipe_from_dict({"model": {"path": str(lm), "config": {"dropout": 0.2}}})
    with pytest.raises(ValueError, match=r"model.path=.*nowhere' is invalid: expected a folder holding a saved model "
                       r".*; no such folder"):
        load_recipe("gru-tiny", {"model.path": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match=r"expected a folder holding a saved model \(save_pretrained writes its "
                       r"config.json\)$"):
        load_recipe("gru-tiny", {"model.path": str(tmp_path)})
    with pytest.raises(ValueError, match=r"; it is a file: give the folder it is in \('.*lm'\)$"):
        load_recipe("gru-tiny", {"model.path": str(lm / "config.json")})
    # (an owner/name that is no folder here reads as a Hub id, which is not downloaded)
    with pytest.raises(ValueError, match=r"; no such folder \(a Hub repository is not read here: download it first, "
                       r"`hf download no-such-owner/model --local-dir model`, and give that folder\)$"):
        load_recipe("gru-tiny", {"model.path": "no-such-owner/model"})
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match=r"holds a model of type 'llama', not one of seqzoo's architectures: .*"
                       r"`seqzoo convert`"):
        load_recipe("gru-tiny", {"model.path": str(other)})
    (other / "config.json").write_text(json.dumps({"model_type": "seqzoo_gru"}))
    with pytest.raises(ValueError, match=r"its config.json names no architecture"):
        load_recipe("gru-tiny", {"model.path": str(other)})
    seqzoo.create_model("gru-tiny").model.save_pretrained(other)  # a backbone alone: no head to train
    with pytest.raises(ValueError, match=r"was saved as 'GRUModel', which names no head seqzoo train trains"):
        load_recipe("gru-tiny", {"model.path": str(other)})
    (other / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"its config.json cannot be read \(a JSON list, not an object\)"):
        load_recipe("gru-tiny", {"model.path": str(other)})


def test_a_model_presets_run_is_named_after_the_model_and_data_it_trains(tmp_path, monkeypatch):
    # (a model preset given as the recipe names the run after its model and data; a model.path in its place names
    # the run after the saved model, not after the preset it replaced, and a data override after that data)
    import seqzoo

    seqzoo.create_model("gru-tiny").save_pretrained(tmp_path / "mine")
    assert load_recipe("lstm-small", {"model.path": str(tmp_path / "mine")}).name == "mine-pydoc"
    assert load_recipe("lstm-small", {"model.path": f"{tmp_path / 'mine'}/"}).output_dir == str(
        Path("runs") / "mine-pydoc")
    assert load_recipe("lstm-tiny", {"data.source": "task", "data.task": "copy"}).name == "lstm-tiny-copy"
    assert load_recipe("lstm-tiny", {"data.source": "text", "data.path": "a.txt"}).name == "lstm-tiny-text"
    assert load_recipe("lstm-tiny", {"model.preset": "gru-tiny"}).name == "gru-tiny-pydoc"  # (the model trained)
    assert load_recipe("lstm-tiny", {"name": "x", "model.path": str(tmp_path / "mine")}).name == "x"
    assert load_recipe("text-file", {"model.path": str(tmp_path / "mine"), "data.path": "a.txt"}).name == "text-file"
    assert load_recipe("gru-tiny", {"model.preset": None}).name == "lstm-tiny-pydoc"  # (the default model it trains)
    # A link names the run after itself, as typed (a link moved to another model before --resume keeps the run's
    # folder); a link loop is refused by the check of model.path, not a RuntimeError from resolving it.
    (tmp_path / "latest").symlink_to(tmp_path / "mine")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert load_recipe("gru-tiny", {"model.path": str(tmp_path / "latest")}).name == "latest-pydoc"
    with pytest.raises(ValueError, match="model.path=.*loop.* is invalid"):
        load_recipe("gru-tiny", {"model.path": str(tmp_path / "loop")})
    monkeypatch.chdir(tmp_path / "mine")
    assert load_recipe("gru-tiny", {"model.path": "."}).name == "mine-pydoc"
    assert load_recipe("gru-tiny", {"model.path": "../mine/."}).name == "mine-pydoc"


def test_an_empty_model_path_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch):
    # (`model.path=$MODEL` with the variable unset: Path("") is the current folder, which may hold a model)
    import seqzoo

    seqzoo.create_model("gru-tiny").save_pretrained(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert load_recipe("gru-tiny", {"model.path": "."}).model.path == "."
    for empty in ("", " "):
        with pytest.raises(ValueError, match=rf"model.path='{empty}' is invalid: expected the path of a folder holding "
                           r"a saved model \(to train the one in the current folder, model.path=.\)"):
            load_recipe("gru-tiny", {"model.path": empty})


def test_a_run_folder_without_a_model_yet_or_a_checkpoint_as_model_path_says_what_to_do(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run / "recipe.yaml").write_text("model: {preset: gru-tiny}\n")
    (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    with pytest.raises(ValueError, match=r"config.json\); it is the folder of a run that has saved no model yet: "
                       r"continue the run with `seqzoo train .*run/recipe.yaml --resume`"):
        load_recipe("gru-tiny", {"model.path": str(run)})
    with pytest.raises(ValueError, match=r"config.json\); it is a checkpoint of seqzoo train, which saves no config: "
                       r"give the run's folder once the run finished .*, or continue the run with --resume "
                       r".*checkpoint-2"):
        load_recipe("gru-tiny", {"model.path": str(run / "checkpoints" / "checkpoint-2")})


def test_a_model_source_on_the_command_line_replaces_the_recipes_other_one_but_not_both_at_once(tmp_path):
    import seqzoo

    lm = tmp_path / "lm"
    seqzoo.create_model("gru-tiny").save_pretrained(lm)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{path: {lm}}}\n")
    assert load_recipe(str(recipe), {"preset": "lstm-tiny"}).model.path is None  # (a bare `preset` is model.preset)
    assert load_recipe(str(recipe), {"model.path": None}).model.path is None  # (null: the default preset)
    # A null model.path names no model source: the recipe's preset and model.config stay.
    pydoc = load_recipe("lstm-pydoc", {"model.path": None})
    assert (pydoc.model.preset, pydoc.model.config) == ("lstm-small", load_recipe("lstm-pydoc").model.config)
    # model.config given on the command line beside model.path is refused, not dropped with the recipe's own.
    with pytest.raises(ValueError, match=r"model.config=\{.*'dropout': 0.2\} is invalid: expected \{\} with "
                       r"model.path"):
        load_recipe("lstm-pydoc", {"model.path": str(lm), "model.config.dropout": 0.2})
    with pytest.raises(ValueError, match=r"model.preset='lstm-tiny' is invalid: expected null with model.path"):
        load_recipe(str(recipe), {"model.preset": "lstm-tiny", "model.path": str(lm)})
    recipe.write_text(f"model: {{path: {lm}, preset: gru-tiny}}\n")  # both in one file: refused
    with pytest.raises(ValueError, match=r"expected null with model.path"):
        load_recipe(str(recipe))


def test_a_tuning_set_is_refused_where_none_is_drawn():
    for recipe in ("gru-recall", "lstm-pydoc"):  # a generated task, a corpus
        assert load_recipe(recipe, {"data.tuning_set": True}).data.tuning_set is True
    with pytest.raises(ValueError, match=r"data.tuning_set=True is invalid: expected false with task 'seq2seq' and "
                                         r"data.source='task': a tuning set is drawn for causal-lm recipes"):
        load_recipe("seq2seq-digits", {"data.tuning_set": True})
    with pytest.raises(ValueError, match="data.tuning_set"):
        load_recipe("gru-tiny", {"data.tuning_set": "yes"})
    # A corpus's tuning block is the eval_fraction before the held-out tail: from a half on, nothing is left to train.
    with pytest.raises(ValueError, match=r"data.eval_fraction=0.5 is invalid: expected a number in \(0, 0.5\) with "
                                         r"data.tuning_set=true"):
        load_recipe("lstm-pydoc", {"data.tuning_set": True, "data.eval_fraction": 0.5})
    # A generated task holds nothing out (it draws its evaluation sets): its eval_fraction is read by nothing.
    with pytest.raises(ValueError, match=r"data.eval_fraction=0.5 is invalid: expected its default \(0.05\) with "
                                         r"data.source='task', whose evaluation sets are drawn apart"):
        load_recipe("gru-recall", {"data.eval_fraction": 0.5})
    with pytest.raises(ValueError, match=r"data.eval_fraction=0.2 is invalid: expected its default"):
        load_recipe("seq2seq-digits", {"data.eval_fraction": 0.2})


def test_a_resume_refused_for_the_tuning_set_names_both_values():
    from pathlib import Path

    from seqzoo.training.checkpoint import check_same_run

    before, now = load_recipe("gru-recall"), load_recipe("gru-recall", {"data.tuning_set": True})
    with pytest.raises(ValueError, match=r"data.tuning_set: False \(checkpoint\) vs True \(this recipe\)"):
        check_same_run({"run_id": before.run_id, "recipe": before.to_dict()}, now.run_id, now.to_dict(),
                       Path("checkpoint-10"), 1, {})


def test_cli_prints_bad_input_plainly(tmp_path, capsys):
    from seqzoo.cli import main

    assert main(["train", "lstm-pydok"]) == 2
    assert "error: unknown recipe 'lstm-pydok'" in capsys.readouterr().err
    assert main(["train", "gru-tiny", "max_steps"]) == 2
    assert "override 'max_steps' is not of the form key=value" in capsys.readouterr().err
    assert main(["train", "gru-tiny", "data.source=text", "data.path=" + str(tmp_path / "gone.txt"),
                 "--output-dir", str(tmp_path / "out")]) == 2
    assert "data file '" in capsys.readouterr().err
    assert main(["train", "gru-tiny", "max_steps=7", "--print-recipe"]) == 0
    assert "max_steps: 7" in capsys.readouterr().out
    # Overrides written after an option are overrides too, in the order given (argparse alone refused them).
    assert main(["train", "gru-tiny", "max_steps=9", "--print-recipe", "lr=0.5"]) == 0
    printed = capsys.readouterr().out
    assert "max_steps: 9" in printed and "lr: 0.5" in printed
    with pytest.raises(SystemExit):  # an unknown option after them is still refused
        main(["train", "gru-tiny", "--print-recipe", "lr=0.5", "--prnt"])
    assert "unrecognized arguments: --prnt" in capsys.readouterr().err


def test_a_key_given_twice_is_refused_not_silently_dropped(tmp_path):
    # PyYAML keeps the last of two equal keys: a second `train:` section would drop the first one's max_steps.
    path = tmp_path / "twice.yaml"
    path.write_text("model: {preset: lstm-tiny}\ntrain:\n  max_steps: 5\noptim: {lr: 0.1}\ntrain:\n  batch_size: 4\n")
    with pytest.raises(ValueError, match=r"twice\.yaml.*'train' is given twice \(lines 2 and 5\)"):
        load_recipe(str(path))
    path.write_text("model: {preset: lstm-tiny}\ntrain: {max_steps: 5, max_steps: 6}\n")
    with pytest.raises(ValueError, match="'max_steps' is given twice"):
        load_recipe(str(path))



@pytest.mark.parametrize("overrides, message", [
    ({"max_steps": 3, "train.max_steps": 5}, "overrides max_steps=3 and train.max_steps=5 both set train.max_steps"),
    ({"optim.lr": 2e-3, "lr": 1e-3}, "overrides optim.lr=0.002 and lr=0.001 both set optim.lr"),
    ({"task": "copy", "data.task": "induction"}, "both set data.task"),
    ({"model.config.hidden_size": 32, "model.config": {}},
     r"overlap \(model.config holds model.config.hidden_size\)"),
    ({"model.config": {}, "model.config.hidden_size": 32},
     r"overrides model.config=\{\} and model.config.hidden_size=32 overlap "
     r"\(model.config holds model.config.hidden_size\)"),
])
def test_two_overrides_of_one_setting_are_refused(overrides, message):
    # (the raw keys differ, so the check of a key given twice passed them, and the last one set won)
    with pytest.raises(ValueError, match=message + "; give each setting once"):
        load_recipe("gru-tiny", overrides)
    recipe = load_recipe("gru-tiny", {"max_steps": 3, "lr": 1e-3, "model.config.hidden_size": 32,
                                      "model.config.num_hidden_layers": 1})
    assert (recipe.train.max_steps, recipe.optim.lr, recipe.model.config["hidden_size"]) == (3, 1e-3, 32)


def test_output_dir_given_twice_on_the_command_line_is_refused(tmp_path, capsys):
    from seqzoo.cli import main

    assert main(["train", "gru-tiny", "--print-recipe", f"output_dir={tmp_path / 'a'}", "--output-dir",
                 str(tmp_path / "b")]) == 2
    assert "and the override output_dir=" in capsys.readouterr().err
    assert main(["train", "gru-tiny", "--print-recipe", "--output-dir", str(tmp_path / "b")]) == 0
    assert f"output_dir: {tmp_path / 'b'}" in capsys.readouterr().out


@pytest.mark.parametrize("recipe", ["transformer-tiny", "gru-tiny"])
def test_a_misspelt_kernels_variable_is_refused_before_the_run_folder_is_made(recipe, tmp_path, monkeypatch):
    from seqzoo.kernels.registry import KernelError
    from seqzoo.training.trainer import train

    # (a Transformer calls no kernel: the entry was never read; a GRU's was read after the folder was made)
    monkeypatch.setenv("SEQZOO_KERNELS", "lstn=torch")
    with pytest.raises(KernelError, match="unknown kernel op 'lstn'.*Did you mean 'lstm'"):
        train(load_recipe(recipe, {"max_steps": 1, "output_dir": str(tmp_path / "run")}), progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("tag", ["!!python/object/apply:builtins.open", "!!python/object/new:builtins.open"])
def test_a_recipe_yaml_never_builds_python_objects(tmp_path, tag):
    # (a recipe from elsewhere: PyYAML's unsafe loaders call what a python/ tag names while reading)
    marker = tmp_path / "ran"
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: x\nmodel: {tag} [{str(marker)!r}, w]\n")
    with pytest.raises(ValueError, match="is not valid YAML: could not determine a constructor for the tag"):
        load_recipe(path)
    assert not marker.exists()


def test_a_yaml_boolean_where_a_string_is_expected_says_to_quote_it(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {preset: gru-tiny}\ntrain: {mixed_precision: no}\n")
    with pytest.raises(ValueError, match="mixed_precision=False is invalid: expected a string; YAML reads an unquoted "
                                         "no.*write the value in quotes \\(mixed_precision: 'no'\\)"):
        load_recipe(str(path))
    path.write_text("model: {preset: gru-tiny}\ntrain: {mixed_precision: 'no'}\n")
    assert load_recipe(str(path)).train.mixed_precision == "no"


def test_an_alias_bomb_and_a_key_that_is_no_string_are_refused(tmp_path):
    """Aliases are shared when read, but checking and copying the recipe expand them: nine nested lists of ten
    would take a billion values (it hung in dataclasses.asdict)."""
    path = tmp_path / "bomb.yaml"
    lines = ["model:", "  preset: lstm-tiny", "  config:", "    a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="expands to more than 100,000 values"):
        load_recipe(str(path))
    path.write_text("model: {preset: lstm-tiny}\n1: x\n")  # (was a TypeError in difflib)
    with pytest.raises(ValueError, match="unknown recipe field 1. Allowed in the top level"):
        load_recipe(str(path))

def test_a_json_recipe_is_read_as_json(tmp_path):
    import json

    values = {"model": {"preset": "lstm-tiny"}, "train": {"max_steps": 5}}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(values, indent="\t"))  # tabs: valid JSON, invalid YAML
    assert load_recipe(str(path)).train.max_steps == 5
    path.write_text('{"train": {"max_steps": 5}, "train": {"batch_size": 4}}')
    with pytest.raises(ValueError, match="'train' is given twice"):
        load_recipe(str(path))


@pytest.mark.parametrize("name, text", [("deep.json", "[" * 100_000), ("deep.yaml", "a: " + "[" * 600 + "]" * 600)])
def test_a_recipe_nested_too_deep_to_read_is_named(tmp_path, name, text):
    """The JSON and YAML readers stopped with a bare RecursionError, naming no file. (Under Python's default recursion
    limit: torch's inductor raises it to 2000 in a process that compiled, where 600 levels of YAML read.)"""
    (tmp_path / name).write_text(text)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        _refused_as_too_deep(tmp_path / name, name)
    finally:
        sys.setrecursionlimit(limit)


def _refused_as_too_deep(path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=rf"recipe file '.*{name}' nests lists or mappings too deep to read"):
        load_recipe(str(path))


def test_a_printed_recipe_with_the_task_fields_at_their_defaults_loads_again(tmp_path):
    """--print-recipe writes every field, the tasks' settings at their defaults included: a corpus recipe takes them
    back (only a value other than the default is refused, as ignored)."""
    recipe = load_recipe("lstm-tiny")
    (tmp_path / "r.yaml").write_text(recipe.to_yaml())
    assert load_recipe(str(tmp_path / "r.yaml")).to_dict() == recipe.to_dict()


def test_a_bare_task_override_is_the_memory_task_or_what_the_recipe_trains():
    from seqzoo.training.recipe_loading import apply_override

    values = {"model": {"preset": "lstm-tiny"}}
    apply_override(values, "task", "copy")
    assert values == {"model": {"preset": "lstm-tiny"}, "data": {"task": "copy"}}
    apply_override(values, "task", "token-classification")  # (no data task has a trained task's name)
    assert values["task"] == "token-classification" and values["data"] == {"task": "copy"}
    # A misspelt recipe task went on to data.task, and was reported as a data field that data.source does not read.
    with pytest.raises(ValueError, match=r"override task='sequence-clasification' names neither what a recipe "
                                         r"trains \(causal-lm, .*\) nor a data task; did you mean "
                                         r"task=sequence-classification"):
        apply_override(values, "task", "sequence-clasification")
    apply_override(values, "task", "cpy")  # (a data task's typo is named by data.task's own check, with its names)
    assert values["data"] == {"task": "cpy"}


def test_a_task_the_preset_has_no_head_for_hints_only_at_its_heads():
    # TRAINED_TASKS gave the hints: task=seq2seq on an LSTM was answered "did you mean 'seq2seq'?"
    with pytest.raises(ValueError, match=r"task='seq2seq' is invalid: expected a task model.preset='lstm-tiny' has a "
                                         r"head for: causal-lm, sequence-classification, token-classification$"):
        recipe_from_dict({"task": "seq2seq", "model": {"preset": "lstm-tiny"}})
    with pytest.raises(ValueError, match=r"\(did you mean 'token-classification'\?\)"):
        recipe_from_dict({"task": "token-clasification", "model": {"preset": "lstm-tiny"}})


@pytest.mark.parametrize("preset, overrides, field", [
    # a recipe preset of a generated task switched to the user's file kept the task's settings, read by nothing
    ("bilstm-tagger", {"data.source": "jsonl", "data.path": "tags.jsonl"}, "data.task='appears_later'"),
    ("bilstm-tagger", {"data.source": "jsonl", "data.path": "tags.jsonl", "data.task": None},
     "data.distances=[8, 16, 32]"),
    ("seq2seq-digits", {"data.source": "jsonl", "data.path": "pairs.jsonl"}, "data.task='digits'"),
])
def test_a_generated_tasks_settings_with_a_data_file_are_refused(preset, overrides, field):
    with pytest.raises(ValueError, match=rf"{re.escape(field)} is invalid: expected (null|its default .*) with "
                                         r"data.source='jsonl'"):
        load_recipe(preset, overrides)


def test_overrides_fill_a_section_the_file_leaves_empty(tmp_path):
    # `train:` with nothing under it reads as null, which the recipe takes as an empty section; an override into it
    # failed with "'train' is not a section".
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  preset: lstm-tiny\ntrain:\noptim:\n")
    recipe = load_recipe(str(path), {"train.max_steps": 3, "lr": 1e-3})
    assert recipe.train.max_steps == 3 and recipe.optim.lr == 1e-3
    with pytest.raises(ValueError, match="train.max_steps=.'x': 3. is invalid: expected an integer"):
        load_recipe(str(path), {"train.max_steps.x": 3})


@pytest.mark.parametrize("recipe, overrides, refused", [
    ("transformer-pydoc", ["train.tbptt_chunk=16"],
     r"train.tbptt_chunk=16 needs every layer to carry a fixed-size state across chunks; preset 'transformer-small' "
     r"has attention layers"),
    ("lstm-pydoc", ["model.config.hidden_size=-1"], r"LSTMConfig.hidden_size=-1 is invalid: must be >= 1"),
    ("lstm-pydoc", ["model.config.hiden_size=4"], r"unknown config field\(s\) 'hiden_size' \(did you mean "
                                                  r"'hidden_size'\?\)"),
    ("gru-tiny", ["train.batch_size=10", "train.gradient_accumulation_steps=4"],
     r"train.batch_size=10 \(global\) must be divisible by num_processes x gradient_accumulation_steps \(4\)"),
])
def test_print_recipe_refuses_what_train_would_refuse_before_reading_data(recipe, overrides, refused, capsys):
    """--print-recipe printed these recipes as if they were fine; train then refused them."""
    from seqzoo.cli import main

    assert main(["train", recipe, *overrides, "--print-recipe"]) == 2
    captured = capsys.readouterr()
    assert re.search(refused, captured.err), captured.err
    assert captured.out == ""


def test_print_recipe_accepts_every_shipped_recipe(capsys):
    from seqzoo.cli import main

    for name in list_recipes():
        assert main(["train", name, "--print-recipe"]) == 0, (name, capsys.readouterr().err)
    capsys.readouterr()


def test_print_recipe_reads_a_synthetic_tasks_vocabulary_as_train_does(tmp_path, capsys):
    # train puts the task's vocabulary and special ids (no byte tokenizer's) under model.config before the
    # recipe's own values; --print-recipe checked the preset's pad_token_id=256 against vocab_size=32 and refused.
    from seqzoo.cli import main

    path = tmp_path / "task.yaml"
    path.write_text("model:\n  preset: lstm-tiny\n  config:\n    vocab_size: 32\n"
                    "data:\n  source: task\n  task: copy\n  distances: [4]\n  symbols: 8\n")
    assert main(["train", str(path), "--print-recipe"]) == 0, capsys.readouterr().err
    assert main(["train", str(path), "model.config.vocab_size=-1", "--print-recipe"]) == 2  # still checked


@pytest.mark.parametrize("task, preset, data", [
    ("causal-lm", "gru-tiny", {"source": "pydoc"}),
    ("seq2seq", "seq2seq-luong-general-tiny", {"source": "task", "task": "copy"}),
    ("sequence-classification", "lstm-tiny", {"source": "task", "task": "first_letter"}),
])
@pytest.mark.parametrize("key, value", [("pad_token_id", 0), ("eos_token_id", 3), ("bos_token_id", 5)])
def test_special_ids_other_than_the_byte_tokenizers_are_refused_on_byte_data(task, preset, data, key, value):
    # They were taken: the batches were padded with 256 and ended with 257 while the model masked its sources at
    # pad_token_id=0, and the saved model, beside the byte tokenizer, generated until byte 3.
    from seqzoo.training.building import build_model, check_recipe
    from seqzoo.training.classification import build_label_data
    from seqzoo.training.data import build_data
    from seqzoo.training.seq2seq import build_seq2seq_data

    def recipe(config):
        return recipe_from_dict({"task": task, "model": {"preset": preset, "config": config}, "data": data})

    build = {"causal-lm": build_data, "seq2seq": build_seq2seq_data}.get(task)
    read = (lambda r: build(r.data, 0)) if build else (lambda r: build_label_data(task, r.data, 0))
    bad = recipe({key: value})
    message = rf"recipe field model.config.{key}={value!r} is invalid: .* byte tokenizer"
    with pytest.raises(ValueError, match=message):
        check_recipe(bad)  # (--print-recipe)
    with pytest.raises(ValueError, match=message):
        build_model(bad, read(bad))
    good = recipe({key: 256 if key == "pad_token_id" else 257})
    assert getattr(build_model(good, read(good)).config, key) == good.model.config[key]
    if key == "eos_token_id":  # (a list of eos ids, as transformers takes them: the tokenizer's alone)
        listed = recipe({key: [257]})
        check_recipe(listed)
        assert build_model(listed, read(listed)).config.eos_token_id == [257]
    unset = recipe({key: None})  # (taken, as seqzoo new takes it: the tokenizer saved beside the model gives the id)
    check_recipe(unset)
    build_model(unset, read(unset))


def test_a_memory_task_takes_special_ids_of_its_own():
    from seqzoo.training.building import build_model
    from seqzoo.training.data import build_data

    recipe = recipe_from_dict({"model": {"preset": "gru-tiny", "config": {"pad_token_id": 1}},
                               "data": {"source": "task", "task": "copy", "distances": [4]}})
    assert build_model(recipe, build_data(recipe.data, 0)).config.pad_token_id == 1


COPY = {"source": "task", "task": "copy"}
S2S = {"model": {"preset": "seq2seq-sutskever-tiny"}}
TAGGER = {"model": {"preset": "lstm-tiny"}, "task": "token-classification"}
FIRST = {"model": {"preset": "lstm-tiny"}, "task": "sequence-classification"}


@pytest.mark.parametrize("values, message", [
    ({"name": ""}, "name='' is invalid: expected a non-empty string"),  # (output_dir would be runs/ itself)
    ({"name": 5}, "name=5 is invalid: expected a string"),
    ({"train": {"max_steps": None}}, "train.max_steps=None is invalid: a value is required (an integer)"),
    ({"task": "seq2seq"}, "task='seq2seq' is invalid: expected a task model.preset='lstm-tiny' has a head for: "
                          "causal-lm, sequence-classification, token-classification"),
    ({"task": "causal-lm", **S2S}, "task='causal-lm' is invalid: expected a task model.preset="
                                   "'seq2seq-sutskever-tiny' has a head for: seq2seq"),
    ({"data": {"source": "pydocs"}}, "data.source='pydocs' is invalid: expected one of pydoc, text, dataset, task, "
                                     "jsonl"),
    ({"data": {**COPY, "distances": [4, 0]}}, "data.distances=[4, 0] is invalid: expected a non-empty list of "
                                              "integers >= 1"),
    ({"data": {**COPY, "symbols": 1}}, "data.symbols=1 is invalid: expected an integer >= 2"),
    ({"data": {**COPY, "items": 0}}, "data.items=0 is invalid: expected an integer >= 1"),
    ({"data": {**COPY, "distance_mix": "mixed"}}, "data.distance_mix='mixed' is invalid: expected sample or batch"),
    ({"data": {"seq_len": 0}}, "data.seq_len=0 is invalid: expected an integer >= 1 or null"),
    ({"data": {"eval_fraction": 1.0}}, "data.eval_fraction=1.0 is invalid: expected a number in (0, 1)"),
    ({"data": {"eval_fraction": 0}}, "data.eval_fraction=0.0 is invalid: expected a number in (0, 1)"),
    ({"data": {"eval_samples": 0}}, "data.eval_samples=0 is invalid: expected an integer >= 1"),
    ({"optim": {"lr": 0}}, "optim.lr=0.0 is invalid: expected a number > 0"),
    ({"optim": {"weight_decay": -0.1}}, "optim.weight_decay=-0.1 is invalid: expected a number >= 0"),
    ({"optim": {"betas": [0.9]}}, "optim.betas=[0.9] is invalid: expected two numbers in [0, 1)"),
    ({"optim": {"betas": [0.9, 1.0]}}, "optim.betas=[0.9, 1.0] is invalid: expected two numbers in [0, 1)"),
    ({"optim": {"betas": [-0.1, 0.9]}}, "optim.betas=[-0.1, 0.9] is invalid"),
    ({"optim": {"eps": 0}}, "optim.eps=0.0 is invalid: expected a number > 0"),
    ({"optim": {"warmup_steps": -1}}, "optim.warmup_steps=-1 is invalid: expected an integer >= 0, or null"),
    ({"optim": {"min_lr_ratio": 1.5}}, "optim.min_lr_ratio=1.5 is invalid: expected a number in [0, 1]"),
    ({"optim": {"min_lr_ratio": -0.5}}, "optim.min_lr_ratio=-0.5 is invalid"),
    ({"optim": {"max_grad_norm": -1}}, "optim.max_grad_norm=-1.0 is invalid: expected a number >= 0"),
    ({"train": {"max_steps": 0}}, "train.max_steps=0 is invalid: expected an integer >= 1"),
    ({"train": {"batch_size": 0}}, "train.batch_size=0 is invalid: expected an integer >= 1"),
    ({"train": {"gradient_accumulation_steps": 0}}, "train.gradient_accumulation_steps=0 is invalid"),
    ({"train": {"eval_every": -1}}, "train.eval_every=-1 is invalid: expected an integer >= 0 (0 = off)"),
    ({"train": {"save_every": -1}}, "train.save_every=-1 is invalid"),
    ({"train": {"tbptt_chunk": -1}}, "train.tbptt_chunk=-1 is invalid"),
    ({"train": {"save_total_limit": 0}}, "train.save_total_limit=0 is invalid: expected an integer >= 1"),
    ({"train": {"log_every": 0}}, "train.log_every=0 is invalid: expected an integer >= 1"),
    ({"train": {"vanishing_grad_norm": 5.0, "exploding_grad_norm": 5.0}},
     "train.vanishing_grad_norm=5.0 is invalid: expected a number in [0, exploding_grad_norm=5.0)"),
    ({"train": {"vanishing_grad_norm": -1.0}}, "train.vanishing_grad_norm=-1.0 is invalid"),
    ({"train": {"deterministic": 1}}, "train.deterministic=1 is invalid: expected true or false"),
    ({"train": {"max_steps": True}}, "train.max_steps=True is invalid: expected an integer"),
    ({"data": {"seq_len": "64"}}, "data.seq_len='64' is invalid: expected an integer or null"),
    ({"data": {**COPY, "distances": [4, "8"]}}, "data.distances=[4, '8'] is invalid: expected a list of integers"),
    ({"model": {"config": []}}, "model.config=[] is invalid: expected a mapping"),
    # (a YAML key `1:` under config stopped the run with "TypeError: keywords must be strings")
    ({"model": {"config": {1: "x"}}}, "model.config={1: 'x'} is invalid: expected a mapping of names (strings) to "
                                      "values"),
    # (an empty output_dir, an unset variable in an override, trained into the current folder)
    ({"output_dir": ""}, "output_dir='' is invalid: expected a folder for checkpoints"),
    ({"output_dir": " "}, "output_dir=' ' is invalid"),
    # task: seq2seq
    ({**S2S, "data": {"source": "pydoc"}}, "data.source='pydoc' is invalid: expected jsonl or task"),
    ({**S2S, "data": {"source": "task", "task": "copy", "source_lengths": [4, 0]}},
     "data.source_lengths=[4, 0] is invalid: expected a non-empty list of integers >= 1"),
    ({**S2S, "data": {"source": "task", "task": "copy", "symbols": 27}},
     "data.symbols=27 is invalid: expected an integer in [2, 26] (letters)"),
    ({**S2S, "data": {"source": "task", "task": "copy", "max_source_length": 0}},
     "data.max_source_length=0 is invalid: expected an integer >= 1 or null"),
    ({**S2S, "data": {"source": "task", "task": "copy"}, "train": {"tbptt_chunk": 4}},
     "train.tbptt_chunk=4 is invalid: expected 0 for task: seq2seq"),
    # task: sequence-classification | token-classification
    ({**FIRST, "data": {"source": "task", "task": "first_letter", "symbols": 1}},
     "data.symbols=1 is invalid: expected an integer in [2, 26] (letters)"),
    ({**FIRST, "data": {"source": "task", "task": "first_letter", "distances": []}},
     "data.distances=[] is invalid: expected a non-empty list of integers >= 1 (words per text)"),
    ({**TAGGER, "data": {"source": "jsonl", "path": "x.jsonl", "labels": ["O", "PER", "O"]}},
     "data.labels=['O', 'PER', 'O'] is invalid: expected a list of at least two distinct label names"),
    ({**TAGGER, "data": {"source": "jsonl", "path": "x.jsonl"}, "model": {"preset": "lstm-tiny",
                                                                           "config": {"id2label": {0: "O"}}}},
     "model.config.id2label={0: 'O'} is invalid: expected unset: a classifier's labels come from the data"),
])
def test_values_just_past_each_limit_are_refused_by_name(values, message):
    with pytest.raises(ValueError) as info:
        recipe_from_dict(values)
    assert message in str(info.value)


def test_values_at_each_limit_are_accepted():
    recipe = recipe_from_dict({
        "data": {"seq_len": 1, "eval_fraction": 0.001, "eval_samples": 1},
        "optim": {"lr": 1e-12, "weight_decay": 0, "betas": [0, 0.999], "eps": 1e-30, "warmup_steps": 0,
                  "min_lr_ratio": 0, "max_grad_norm": 0},
        "train": {"max_steps": 1, "batch_size": 1, "gradient_accumulation_steps": 1, "eval_every": 0,
                  "save_every": 0, "save_total_limit": 2, "log_every": 1, "vanishing_grad_norm": 0,
                  "exploding_grad_norm": 1e-9, "max_nonfinite_steps": 0, "seed": 2**32 - 1},
    })
    assert recipe.optim.betas == [0.0, 0.999] and recipe.optim.min_lr_ratio == 0.0 and recipe.train.seed == 2**32 - 1
    assert recipe_from_dict({"optim": {"min_lr_ratio": 1}}).optim.min_lr_ratio == 1.0
    assert recipe_from_dict({"train": {"save_every": 1, "save_total_limit": 1}}).train.save_total_limit == 1
    assert recipe_from_dict({"data": {**COPY, "distances": [1], "symbols": 2, "items": 1}}).data.distances == [1]
    for symbols in (2, 26):
        pairs = recipe_from_dict({**S2S, "data": {"source": "task", "task": "copy", "symbols": symbols,
                                                  "source_lengths": [1], "max_source_length": 1}})
        assert pairs.data.symbols == symbols
        assert recipe_from_dict({**FIRST, "data": {"source": "task", "task": "first_letter", "symbols": symbols,
                                                   "distances": [1]}}).data.symbols == symbols


def test_warmup_defaults_to_a_tenth_of_the_steps_at_most_a_hundred():
    assert recipe_from_dict({"train": {"max_steps": 50}}).warmup == 5
    assert recipe_from_dict({"train": {"max_steps": 5000}}).warmup == 100
    assert recipe_from_dict({"train": {"max_steps": 5000}, "optim": {"warmup_steps": 0}}).warmup == 0


def test_a_model_presets_default_recipe_trains_what_its_architecture_does():
    text = load_recipe("lstm-tiny")
    assert (text.name, text.task, text.data.source) == ("lstm-tiny-pydoc", "causal-lm", "pydoc")
    pairs = load_recipe("seq2seq-bahdanau-tiny")  # an encoder-decoder has no text to continue: a built-in task
    assert (pairs.name, pairs.task, pairs.data.source, pairs.data.task) == (
        "seq2seq-bahdanau-tiny-reverse", "seq2seq", "task", "reverse")


def test_yaml_merge_keys_and_a_byte_order_mark_are_read_as_yaml_reads_them(tmp_path):
    """A merge key (`<<:`) is no key given twice; a byte-order mark (Windows editors) is no part of the recipe."""
    import yaml

    text = ("model: {preset: lstm-tiny}\n"
            "train:\n  <<: {max_steps: 5, batch_size: 4}\n  batch_size: 8\n")
    path = tmp_path / "merged.yaml"
    path.write_text("\ufeff" + text, encoding="utf-8")
    recipe = load_recipe(str(path))
    assert yaml.safe_load(text)["train"] == {"max_steps": 5, "batch_size": 8}  # the mapping's own key wins
    assert (recipe.name, recipe.train.max_steps, recipe.train.batch_size) == ("merged", 5, 8)
    as_json = tmp_path / "recipe.json"  # (PyYAML skips a leading mark itself; json.loads refuses one)
    as_json.write_text('\ufeff{"model": {"preset": "lstm-tiny"}, "train": {"max_steps": 5}}', encoding="utf-8")
    assert load_recipe(str(as_json)).train.max_steps == 5


def test_a_recipe_built_directly_is_type_checked_where_the_loop_reads_a_flag():
    # recipe_from_dict checks each field's type; Recipe(...) itself checks the flags a truthy string would turn on.
    with pytest.raises(ValueError, match=r"data.tuning_set='yes' is invalid: expected true or false"):
        Recipe(data=DataSection(tuning_set="yes"))
    with pytest.raises(ValueError, match=r"data.packing='yes' is invalid: expected true, false or null"):
        Recipe(data=DataSection(packing="yes"))


@pytest.mark.parametrize("config", [{1: "x"}, ["dropout", 0.1]])
def test_a_recipe_built_in_python_checks_its_model_config(config):
    # Recipe(...) skipped the check recipe_from_dict makes: the run stopped later with "keywords must be strings".
    from seqzoo.training.recipe import ModelSection, Recipe

    with pytest.raises(ValueError, match=r"recipe field model.config=.* is invalid: expected a mapping of names"):
        Recipe(model=ModelSection(config=config))


def test_a_tilde_in_the_recipes_paths_is_the_home_folder_as_for_transformers(tmp_path, monkeypatch):
    # `output_dir: ~/runs/x` trained into ./~/runs/x and said "saved to ~/runs/x"; `data.path: ~/corpus.txt` was
    # "does not exist". transformers' TrainingArguments expands its output_dir so.
    from transformers import TrainingArguments

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("corpus.txt", "more.txt"):
        (tmp_path / name).write_text("some text to train on\n" * 20)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    recipe = load_recipe("gru-tiny", {"data.source": "text", "data.path": "~/corpus.txt", "output_dir": "~/runs/x"})
    assert recipe.output_dir == str(tmp_path / "runs" / "x") == TrainingArguments(output_dir="~/runs/x").output_dir
    assert recipe.data.path == str(tmp_path / "corpus.txt")
    listed = load_recipe("gru-tiny", {"data.source": "text", "data.path": ["~/corpus.txt", "~/more.txt"]})
    assert listed.data.path == [str(tmp_path / "corpus.txt"), str(tmp_path / "more.txt")]
    assert "~" not in recipe.to_yaml()  # (recipe.yaml and --print-recipe show the folder meant)
    with pytest.raises(ValueError, match=re.escape(f"model.path={str(tmp_path / 'saved')!r}")):
        load_recipe("gru-tiny", {"model.path": "~/saved"})  # (no model saved there: named by its real path)
    plain = load_recipe("gru-tiny", {"data.source": "text", "data.path": "corpus~1.txt", "output_dir": "runs/a~b"})
    assert (plain.data.path, plain.output_dir) == ("corpus~1.txt", "runs/a~b")

    from seqzoo.training.trainer import train

    small = {"model.config.hidden_size": 8, "max_steps": 1, "save_every": 0, "seq_len": 16, "batch_size": 2,
             "eval_samples": 2}
    result = train(load_recipe("gru-tiny", {**small, "data.source": "text", "data.path": "~/corpus.txt",
                                            "output_dir": "~/runs/x"}), progress=False)
    assert result.output_dir == tmp_path / "runs" / "x" and (result.output_dir / "model.safetensors").is_file()
    assert not (tmp_path / "work" / "~").exists()


@pytest.mark.parametrize("section, message", [
    # Each was taken by Recipe(...), which checked values but not their types: max_steps=True trained one step, and
    # a truthy string turned a flag on ('no' made the run deterministic).
    (TrainSection(max_steps=True), "train.max_steps=True is invalid: expected an integer"),
    (TrainSection(max_steps=2.5), "train.max_steps=2.5 is invalid: expected an integer"),
    (TrainSection(batch_size=True), "train.batch_size=True is invalid: expected an integer"),
    (TrainSection(deterministic="no"), "train.deterministic='no' is invalid: expected true or false"),
    (TrainSection(skip_nonfinite_steps="false"), "train.skip_nonfinite_steps='false' is invalid: expected true or "
                                                 "false"),
    (TrainSection(mixed_precision=False), "train.mixed_precision=False is invalid: expected a string"),
    (OptimSection(lr=True), "optim.lr=True is invalid: expected a finite number"),
    (OptimSection(betas=[0.9, True]), "optim.betas=[0.9, True] is invalid: expected a list of finite numbers"),
    (DataSection(source="task", task="copy", distances=[8, 2.5]),
     "data.distances=[8, 2.5] is invalid: expected a list of integers"),
    # (a bare TypeError, "'>=' not supported between instances of 'str' and 'int'")
    (TrainSection(max_steps="3"), "train.max_steps='3' is invalid: expected an integer; give the number itself, "
                                  "not text (max_steps=3 rather than max_steps='3')"),
    (OptimSection(lr="1e-3"), "optim.lr='1e-3' is invalid: expected a finite number; give the number itself"),
    (DataSection(source="text", path=Path("corpus.txt")), "data.path=PosixPath('corpus.txt') is invalid: expected "
     "a string, a list of strings or null; give the path as a string (path=str(path))"),
    (ModelSection(path=Path("runs/mine")), "model.path=PosixPath('runs/mine') is invalid"),
])
def test_a_recipe_built_in_python_checks_each_fields_type_as_a_recipe_file_does(section, message):
    name = {TrainSection: "train", OptimSection: "optim", DataSection: "data", ModelSection: "model"}[
        type(section)]
    with pytest.raises(ValueError, match=re.escape(f"recipe field {message}")):
        Recipe(**{name: section})


def test_a_recipe_built_in_python_is_checked_again_by_validate_and_takes_floats_as_from_yaml():
    recipe = Recipe(optim=OptimSection(lr=1, betas=(0.9, 0.95)))  # (an int and a tuple: taken as YAML gives them)
    assert recipe.optim.lr == 1.0 and type(recipe.optim.lr) is float and recipe.optim.betas == [0.9, 0.95]
    assert recipe.run_id == recipe_from_dict({"optim": {"lr": 1, "betas": [0.9, 0.95]}}).run_id
    recipe.train.max_steps = "10"  # (a field set after the recipe was built)
    with pytest.raises(ValueError, match=r"train.max_steps='10' is invalid: expected an integer"):
        recipe.validate()
    with pytest.raises(ValueError, match=r"recipe field name=None is invalid: a value is required \(a string\)"):
        Recipe(name=None)  # (a TypeError in pathlib, making output_dir from it)


def test_a_section_given_to_recipe_as_a_mapping_names_the_class_to_use():
    # ("asdict() should be called on dataclass instances"); recipe_from_dict is what reads mappings
    with pytest.raises(ValueError, match=re.escape("recipe field train={'max_steps': 3} is invalid: expected a "
                                                   "TrainSection: Recipe(train=TrainSection(...)) (recipe_from_dict "
                                                   "builds a recipe from mappings")):
        Recipe(train={"max_steps": 3})
    with pytest.raises(ValueError, match=r"recipe field model='lstm-tiny' is invalid: expected a ModelSection"):
        Recipe(model="lstm-tiny")


@pytest.mark.parametrize("source, overrides, message", [
    (None, None, "load_recipe(source=None) is invalid: expected a recipe file's path (a str or os.PathLike), the "
                 "name of a recipe preset"),  # (a TypeError in pathlib)
    (b"lstm-tiny", None, "load_recipe(source=b'lstm-tiny') is invalid"),
    ("lstm-tiny", [("train.max_steps", 3)], "load_recipe(overrides=[('train.max_steps', 3)]) is invalid: expected "
                                            "a mapping of field names"),  # (AttributeError: 'list' ... 'items')
    ("lstm-tiny", {("train", "max_steps"): 3}, "load_recipe(overrides={('train', 'max_steps'): 3}) is invalid"),
])
def test_load_recipe_names_an_argument_of_another_kind(source, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_recipe(source, overrides)


def test_load_recipe_takes_a_path(tmp_path):
    # (Path('lstm-tiny') stopped in difflib: "'PosixPath' object is not iterable")
    assert load_recipe(Path("lstm-tiny")).name == load_recipe("lstm-tiny").name
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("model: {preset: lstm-tiny}\ntrain: {max_steps: 5}\n")
    assert load_recipe(recipe).train.max_steps == 5
