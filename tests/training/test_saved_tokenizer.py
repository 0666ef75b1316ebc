"""A run from a saved model (model.path) saves the folder's byte tokenizer beside the trained model, with what its
user added (a chat template, tokens, settings); a tokenizer that is not the byte tokenizer is refused before any
step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import normalizers

import seqzoo
from seqzoo.registry import architecture_for_model_type
from seqzoo.tokenizer import load_tokenizer, saved_byte_tokenizer, tokenizer_for
from seqzoo.training.building import check_recipe
from seqzoo.training.recipe import recipe_from_dict
from seqzoo.training.trainer import train
from tests.conftest import tiny_config, tiny_model

TEMPLATE = "{% for m in messages %}<|user|>{{ m['content'] }}<|endoftext|>{% endfor %}"
MESSAGES = [{"role": "user", "content": "hi"}]


def saved_chat_model(tmp_path: Path) -> Path:
    """A byte model resized for a token added to its tokenizer, saved with that tokenizer and a chat template."""
    folder = tmp_path / "base"
    model = tiny_model("gru-tiny", vocab_size=258, pad_token_id=256, bos_token_id=257, eos_token_id=257)
    tokenizer = tokenizer_for(model)
    tokenizer.chat_template = TEMPLATE
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>"]})
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def from_folder(tmp_path: Path, folder: Path, name: str = "out", **train_values) -> object:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    return recipe_from_dict({
        "name": name, "output_dir": str(tmp_path / name), "model": {"path": str(folder)},
        "data": {"source": "text", "path": str(corpus), "seq_len": 16, "eval_samples": 2},
        "optim": {"warmup_steps": 0},
        "train": {"max_steps": 1, "batch_size": 2, "eval_every": 0, "save_every": 0, "log_every": 100,
                  "tbptt_chunk": 0, **train_values}})


def test_a_run_from_a_saved_model_saves_its_tokenizer_with_its_chat_template_and_added_tokens(tmp_path, caplog):
    folder = saved_chat_model(tmp_path)
    before = load_tokenizer(folder)
    with caplog.at_level("WARNING", logger="seqzoo.training"):
        train(from_folder(tmp_path, folder), progress=False)
    assert "has tokens added to the byte tokenizer ('<|user|>')" in caplog.text  # (the data are read as bytes)
    after = load_tokenizer(tmp_path / "out")
    assert after.apply_chat_template(MESSAGES, tokenize=False) == before.apply_chat_template(MESSAGES, tokenize=False)
    assert after("<|user|>a")["input_ids"] == before("<|user|>a")["input_ids"] == [258, 97]
    assert len(after) == 259 and after.padding_side == "left"


def test_the_carried_tokenizer_takes_the_padding_side_and_length_the_model_needs():
    # (a causal LM's folder, its tokenizer reused for the model's classifier; a model's positions as its length)
    config = tiny_config("transformer-tiny", vocab_size=258, position_embedding="learned",
                         max_position_embeddings=40)
    classifier = architecture_for_model_type(config.model_type).heads["sequence-classification"](config)
    saved = seqzoo.byte_tokenizer(padding_side="left")
    saved.chat_template = TEMPLATE
    carried = tokenizer_for(classifier, saved)
    assert carried is saved and carried.padding_side == "right"
    assert carried.model_max_length == classifier.config.max_input_length == 40
    assert carried.chat_template == TEMPLATE
    kept = seqzoo.byte_tokenizer(64)  # (a model without a position limit keeps the saved length)
    assert tokenizer_for(tiny_model("gru-tiny", vocab_size=258), kept).model_max_length == 64


def test_a_resumed_run_from_a_saved_model_saves_its_tokenizer_too(tmp_path):
    folder = saved_chat_model(tmp_path)
    recipe = from_folder(tmp_path, folder, max_steps=2, save_every=1)
    train(recipe, progress=False, stop=lambda row: row["step"] == 1)
    train(recipe, resume=True, progress=False)
    assert load_tokenizer(tmp_path / "out").chat_template == TEMPLATE


def other_tokenizer(folder: Path) -> None:
    """The byte tokenizer's files, its text lowercased before it is read as bytes."""
    tokenizer = seqzoo.byte_tokenizer()
    tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.save_pretrained(folder)


def too_many_tokens(folder: Path) -> None:
    tokenizer = load_tokenizer(folder)
    tokenizer.add_tokens(["<|assistant|>"])  # (the model was not resized for it)
    tokenizer.save_pretrained(folder)


def other_pad(folder: Path) -> None:
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "<|endoftext|>"}))


@pytest.mark.parametrize("change, refused", [
    (other_tokenizer, r"TokenizersBackend encodes a text as other ids than its UTF-8 bytes"),
    (too_many_tokens, r"it has 260 tokens, more than the 259 rows of the model's embedding"),
    (other_pad, r"its pad token is '<\|endoftext\|>' \(id 257\), where the byte tokenizer's is '<\|pad\|>' \(256\)"),
])
def test_a_saved_tokenizer_that_is_not_the_byte_tokenizer_is_refused_before_the_run(tmp_path, change, refused):
    folder = saved_chat_model(tmp_path)
    change(folder)
    with pytest.raises(ValueError, match=rf"the tokenizer saved in '.*base' is not seqzoo's byte tokenizer: "
                                         rf"{refused}.*fine-tune a model of another tokenizer with it"):
        train(from_folder(tmp_path, folder), progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=r"is not seqzoo's byte tokenizer"):
        check_recipe(from_folder(tmp_path, folder))  # (seqzoo train --print-recipe)


def test_a_saved_model_without_a_tokenizer_gets_the_byte_tokenizer(tmp_path):
    # (_save_final then saves tokenizer_for(model), as for a preset's run)
    folder = tmp_path / "bare"
    tiny_model("gru-tiny", vocab_size=258).save_pretrained(folder)
    assert saved_byte_tokenizer(folder, 258) is None
