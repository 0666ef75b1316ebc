"""A published seq2seq checkpoint: its code bundle, its card, and loading it where only torch and transformers are
installed (trust_remote_code=True) -- on this release and, where .ci/run provides one, on the other end of the
supported range -- with the same generations, logits and attention weights as seqzoo itself."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM
from transformers.dynamic_module_utils import get_imports, get_relative_import_files

from seqzoo.cli import save_with_tokenizer
from seqzoo.hub import export_folder
from seqzoo.registry import architecture_for_model_type
from tests.conftest import tiny_config
from tests.hub.conftest import hub_env, run_python
from tests.hub.test_bundle import ALLOWED, import_problems

HERE = Path(__file__).resolve().parent
# A recurrent model with attention and the Transformer: one bundle, two code paths.
PRESETS = {"bahdanau": "seq2seq-bahdanau-tiny", "transformer": "seq2seq-transformer-tiny"}
SOURCES = [list(b"Once upon a time"), list(b"a dog")]
TARGET = [[257, 97, 98, 99], [257, 100, 101, 102]]
NEW_TOKENS = 6
OTHER_PYTHON = "SEQZOO_OTHER_TRANSFORMERS_PYTHON"


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seq2seq-hub")
    folders = {}
    for name, preset in PRESETS.items():
        torch.manual_seed(0)
        config = tiny_config(preset, vocab_size=258, pad_token_id=256, bos_token_id=257, eos_token_id=257)
        model = architecture_for_model_type(config.model_type).default_head(config).eval()
        save_with_tokenizer(model, root / "saved" / name)
        folders[name] = export_folder(root / "saved" / name, root / name, repo_id=f"seqzoo-test/tiny-seq2seq-{name}")
    return folders


def native(folder: Path) -> dict:
    """What seqzoo itself computes from an exported folder (the job load_bundle.py runs without it), and the text
    the card's snippet prints."""
    from transformers import AutoTokenizer

    from tests.seq2seq.load_bundle import check

    result = check({"folder": str(folder), "probe": False}, {"sources": SOURCES, "target": TARGET, "new_tokens": NEW_TOKENS})
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    assert type(model).__module__.startswith("seqzoo.")  # seqzoo's class, not the bundled copy
    with torch.no_grad():
        output = model.generate(**tokenizer("Once upon a time", return_tensors="pt"), max_new_tokens=20,
                                do_sample=False)
    result["snippet"] = tokenizer.decode(output[0], skip_special_tokens=True) + "\n"
    return result


def run_without_seqzoo(exports: dict[str, Path], work: Path, python: str | None = None) -> dict:
    checkpoints = {name: {"folder": str(folder), "snippet": remote_snippet(name, folder)}
                   for name, folder in exports.items()}
    (work / "job.json").write_text(json.dumps({"sources": SOURCES, "target": TARGET, "new_tokens": NEW_TOKENS,
                                               "checkpoints": checkpoints}))
    kwargs = {"python": python} if python else {}
    run_python([str(HERE / "load_bundle.py"), "job.json", "result.json"], env=hub_env(work / "hf-home"), cwd=work,
               timeout=600, **kwargs)
    return json.loads((work / "result.json").read_text())


def remote_snippet(name: str, folder: Path) -> str:
    """The card's trust_remote_code snippet, reading the folder where the card names the Hub repository."""
    blocks = re.findall(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.DOTALL)
    (snippet,) = [b for b in blocks if "trust_remote_code=True" in b and "import seqzoo" not in b]
    return snippet.replace(f"seqzoo-test/tiny-seq2seq-{name}", str(folder))


def test_bundle_imports_only_torch_transformers_and_itself(exports):
    folder = exports["bahdanau"]
    files = {path.name for path in folder.glob("*.py")}
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == (
        "modeling_seqzoo_seq2seq.Seq2SeqForConditionalGeneration")
    reached = set()
    for target in config["auto_map"].values():
        entry = target.split(".")[0] + ".py"
        reached |= {entry} | {Path(path).name for path in get_relative_import_files(folder / entry)}
    assert reached == files  # transformers fetches every bundled file, and nothing is left over
    for name in sorted(files):
        assert import_problems(folder / name, files) == [], name
        assert set(get_imports(folder / name)) <= ALLOWED, name
    assert not any("inspection" in name for name in files)  # the helpers need seqzoo; they are not bundled


def test_card_says_text_to_text_and_shows_the_seq2seq_usage(exports):
    for name, folder in exports.items():
        card = (folder / "README.md").read_text()
        assert "pipeline_tag: text2text-generation" in card
        assert "AutoModelForSeq2SeqLM.from_pretrained" in card and ", pipeline" not in card
        assert "seqzoo generate seqzoo-test/tiny-seq2seq-" in card
    assert "Bahdanau's additive attention" in (exports["bahdanau"] / "README.md").read_text()
    assert "Transformer encoder-decoder" in (exports["transformer"] / "README.md").read_text()


def assert_same(got: dict, expected: dict) -> None:
    assert "error" not in got, got.get("error")
    assert got["class"].startswith("transformers_modules.") and got["class"].endswith(
        "modeling_seqzoo_seq2seq.Seq2SeqForConditionalGeneration")
    assert got["greedy"] == expected["greedy"] and got["beams"] == expected["beams"]
    torch.testing.assert_close(torch.tensor(got["logits"]), torch.tensor(expected["logits"]), rtol=0, atol=1e-5)
    for theirs, ours in zip(got["cross_attentions"], expected["cross_attentions"], strict=True):
        torch.testing.assert_close(torch.tensor(theirs), torch.tensor(ours), rtol=0, atol=1e-6)


def test_bundle_loads_without_seqzoo_and_matches_seqzoo(exports, tmp_path):
    results = run_without_seqzoo(exports, tmp_path)
    assert results["seqzoo_importable"] is False
    for name, folder in exports.items():
        got = results["checkpoints"][name]
        expected = native(folder)
        assert_same(got, expected)
        lenient = got["lenient"]  # bundled code cannot be updated: an unknown keyword warns, a misspelling raises
        assert lenient["same_logits"] and any("a_future_generate_flag" in w for w in lenient["warnings"])
        assert "did you mean 'decoder_attention_mask'" in lenient["misspelling"]
        assert got["snippet"] == expected["snippet"]


def test_bundle_loads_under_the_other_transformers_release(exports, tmp_path):
    python = os.environ.get(OTHER_PYTHON)
    if not python:
        why = f"{OTHER_PYTHON} is not set (.ci/run builds the other environment)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, and {why}")
        pytest.skip(why)
    results = run_without_seqzoo(exports, tmp_path, python=python)
    assert results["seqzoo_importable"] is False
    import transformers

    assert results["transformers_version"] != transformers.__version__
    for name, folder in exports.items():
        assert_same(results["checkpoints"][name], native(folder))


@pytest.mark.parametrize("saved_as", [None, "Seq2SeqModel"], ids=["no-architectures", "backbone"])
def test_a_folder_that_names_no_seq2seq_head_publishes_as_the_seq2seq_head(tmp_path, saved_as):
    # A config.json without `architectures`, or naming the backbone (Seq2SeqModel.save_pretrained), defaults to the
    # architecture's head. An encoder-decoder has no causal LM to default to: the export failed with "'NoneType'
    # object has no attribute 'from_pretrained'".
    torch.manual_seed(0)
    config = tiny_config("seq2seq-bahdanau-tiny", vocab_size=258, pad_token_id=256, bos_token_id=257,
                         eos_token_id=257)
    model = architecture_for_model_type(config.model_type).default_head(config).eval()
    folder = tmp_path / "saved"
    save_with_tokenizer(model, folder)
    values = json.loads((folder / "config.json").read_text())
    if saved_as is None:
        del values["architectures"]
    else:
        values["architectures"] = [saved_as]
    (folder / "config.json").write_text(json.dumps(values))
    exported = export_folder(folder, tmp_path / "exported", repo_id="seqzoo-test/tiny-seq2seq")
    assert json.loads((exported / "config.json").read_text())["architectures"] == ["Seq2SeqForConditionalGeneration"]
    loaded = AutoModelForSeq2SeqLM.from_pretrained(exported).eval()
    ids = torch.tensor([list(b"a dog")])
    with torch.no_grad():
        assert torch.equal(loaded.generate(ids, max_new_tokens=4, do_sample=False),
                           model.generate(ids, max_new_tokens=4, do_sample=False))
