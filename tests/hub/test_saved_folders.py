"""Every folder seqzoo writes -- ``save_pretrained`` of every architecture and head, ``seqzoo new``,
``seqzoo train`` -- loads with transformers' Auto classes and ``trust_remote_code=True`` in a process where seqzoo
cannot be imported (the lm-eval command line, a serving tool), and computes what seqzoo computes."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import seqzoo
from seqzoo.cli import main
from seqzoo.hub.bundle import RECORD_FILE
from seqzoo.registry import TASKS, architecture_for_model_type, smallest_preset
from seqzoo.training.recipe import recipe_from_dict
from seqzoo.training.trainer import train
from tests.conftest import FAMILIES, SEQ2SEQ_FAMILIES, tiny_config
from tests.hub.conftest import HERE, hub_env, run_python

# The classification heads are one shared class each (seqzoo/models/heads.py) and every architecture's auto_map
# names them; a classic recurrent model and a block model stand for the rest, which keeps the subprocess short.
CLASSIFIERS = ("lstm", "mamba2")
INPUT_IDS = [[5, 17, 3, 44, 9, 21, 8], [11, 2, 30, 7, 60, 4, 13]]


def inputs_for(task: str) -> dict[str, list]:
    if task == "seq2seq":
        return {"input_ids": INPUT_IDS, "decoder_input_ids": [row[:4] for row in INPUT_IDS]}
    return {"input_ids": INPUT_IDS}


def native_logits(model, task: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**{name: torch.tensor(ids) for name, ids in inputs_for(task).items()}).logits


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, dict]:
    """name -> {folder, task, logits}: save_pretrained of every architecture's default head and of the
    classifiers of CLASSIFIERS, one folder from `seqzoo new` and one from a `seqzoo train` run."""
    root = tmp_path_factory.mktemp("written")
    folders = {}
    for arch in seqzoo.list_architectures():
        spec = seqzoo.get_architecture(arch)
        for task, head in spec.heads.items():
            if "classification" in task and arch not in CLASSIFIERS:
                continue
            torch.manual_seed(0)
            extra = {"num_labels": 3} if "classification" in task else {}
            model = head(tiny_config(smallest_preset(arch), **extra)).eval()
            folder = root / f"{arch}-{task}"
            model.save_pretrained(folder)
            folders[f"{arch}/{task}"] = {"folder": folder, "task": task, "logits": native_logits(model, task)}
    # The preset families an architecture's smallest preset leaves out take other code paths of the same bundle
    # (rnn-relu, the Transformer's gpt2 / vaswani positions, the other hybrids, each attention of the
    # encoder-decoders), and so does a bidirectional classifier's second direction.
    for family, preset in {**FAMILIES, **SEQ2SEQ_FAMILIES}.items():
        config = tiny_config(preset)
        spec = architecture_for_model_type(config.model_type)
        if preset == smallest_preset(spec.name):
            continue
        torch.manual_seed(0)
        model = spec.default_head(config).eval()
        task = "seq2seq" if family in SEQ2SEQ_FAMILIES else "causal-lm"
        model.save_pretrained(root / family)
        folders[family] = {"folder": root / family, "task": task, "logits": native_logits(model, task)}
    for arch in CLASSIFIERS:
        for task in ("sequence-classification", "token-classification"):
            torch.manual_seed(0)
            config = tiny_config(smallest_preset(arch), num_labels=3, bidirectional=True)
            model = seqzoo.get_architecture(arch).heads[task](config).eval()
            model.save_pretrained(root / f"bi-{arch}-{task}")
            folders[f"bidirectional {arch}/{task}"] = {"folder": root / f"bi-{arch}-{task}", "task": task,
                                                       "logits": native_logits(model, task)}
    main(["new", "gru-tiny", str(root / "new")])
    run = train(recipe_from_dict({
        "name": "run", "output_dir": str(root / "train"),
        "model": {"preset": "lstm-tiny", "config": {"hidden_size": 16, "embedding_size": 16}},
        "data": {"source": "pydoc", "seq_len": 16, "eval_samples": 2},
        "optim": {"lr": 0.01, "warmup_steps": 1},
        "train": {"max_steps": 2, "batch_size": 2, "eval_every": 2, "log_every": 100},
    }), progress=False)
    new_model = AutoModelForCausalLM.from_pretrained(root / "new").eval()
    folders["seqzoo new"] = {"folder": root / "new", "task": "causal-lm",
                             "logits": native_logits(new_model, "causal-lm")}
    folders["seqzoo train"] = {"folder": root / "train", "task": "causal-lm",
                               "logits": native_logits(run.model.eval(), "causal-lm")}
    return folders


@pytest.fixture(scope="module")
def loaded_without_seqzoo(written, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("without-seqzoo-folders")
    job = {"folders": [{"name": name, "folder": str(item["folder"]), "auto_class": TASKS[item["task"]][0],
                        "inputs": inputs_for(item["task"])} for name, item in written.items()]}
    (work / "job.json").write_text(json.dumps(job))
    run_python([str(HERE / "load_folders.py"), "job.json", "result.json"], env=hub_env(work / "hf-home"), cwd=work)
    return json.loads((work / "result.json").read_text())


def test_the_loading_process_cannot_import_seqzoo(loaded_without_seqzoo):
    assert loaded_without_seqzoo["seqzoo_importable"] is False


def test_every_written_folder_loads_with_trust_remote_code_and_computes_the_same_logits(written,
                                                                                      loaded_without_seqzoo):
    assert set(loaded_without_seqzoo["folders"]) == set(written)
    for name, item in written.items():
        got = loaded_without_seqzoo["folders"][name]
        assert "error" not in got, f"{name}:\n{got.get('error')}"
        assert got["class"].startswith("transformers_modules."), (name, got["class"])
        torch.testing.assert_close(torch.tensor(got["logits"]), item["logits"], rtol=1e-5, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_written_folders_carry_auto_map_and_the_bundle_record(written):
    for name, item in written.items():
        config = json.loads((item["folder"] / "config.json").read_text())
        assert TASKS[item["task"]][0] in config["auto_map"], name
        assert (item["folder"] / RECORD_FILE).is_file(), name
