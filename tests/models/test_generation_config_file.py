"""A generation_config.json hand-edited to a setting of the wrong type is refused naming the file, as one holding a
token id of the wrong type is: transformers failed inside its loading or inside generate() naming no file, divided by
a num_beams of 0, and read a do_sample of "false" as true."""

from __future__ import annotations

import json
import re

import pytest
from transformers import AutoModelForCausalLM

import seqzoo


@pytest.mark.parametrize("name, value, allowed", [
    ("max_new_tokens", "20", "an integer >= 0"),  # (failed inside transformers' loading, naming no file)
    ("num_beams", "2", "an integer >= 1"),  # (failed inside generate())
    ("num_beams", 0, "an integer >= 1"),  # (a division by zero)
    ("max_length", 5.5, "an integer >= 0"),  # (taken)
    ("do_sample", "false", "true or false"),  # (a true string: sampled)
    ("temperature", "0.7", "a number"),
])
def test_a_saved_generation_setting_of_the_wrong_type_is_refused_naming_the_file(name, value, allowed, tmp_path):
    seqzoo.create_model("gru-tiny").save_pretrained(tmp_path)
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), name: value}))
    with pytest.raises(ValueError, match=rf"generation_config\.json'?: {name}={value!r} is invalid: expected "
                                         rf"{allowed} \(or null\)"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    path.write_text(json.dumps({**json.loads(path.read_text()), name: None, "num_beams": 2, "temperature": 1}))
    assert AutoModelForCausalLM.from_pretrained(tmp_path).generation_config.num_beams == 2


@pytest.mark.parametrize("name, value, allowed", [
    ("forced_eos_token_id", "1", r"a token id is an integer >= 0 \(or, for forced_eos_token_id, a list of them\)"),
    ("forced_eos_token_id", 300, r"token ids must be in \[0, vocab_size=258\)"),  # (an IndexError in generate())
    ("forced_bos_token_id", "0", r"a token id is an integer >= 0;"),
    ("suppress_tokens", "a", r"expected a list of token ids \(integers >= 0\)"),  # ("too many dimensions 'str'")
    ("suppress_tokens", 5, r"expected a list of token ids"),  # ("'int' object is not iterable")
    ("begin_suppress_tokens", [1000], r"token ids must be in \[0, vocab_size=258\)"),  # (taken)
])
def test_a_saved_token_id_list_of_the_wrong_type_is_refused_naming_the_file(name, value, allowed, tmp_path):
    seqzoo.create_model("gru-tiny").save_pretrained(tmp_path)
    path = tmp_path / "generation_config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, name: value}))
    with pytest.raises(ValueError, match=rf"generation_config\.json'?: {name}={re.escape(repr(value))} is invalid: "
                                         rf"{allowed}"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    taken = {"forced_eos_token_id": [257, 0], "suppress_tokens": [], "begin_suppress_tokens": [3]}
    path.write_text(json.dumps({**saved, **taken}))
    assert AutoModelForCausalLM.from_pretrained(tmp_path).generation_config.begin_suppress_tokens == [3]


def test_a_saved_key_that_is_no_generation_setting_is_warned_about(tmp_path, caplog):
    """transformers keeps it as an attribute nothing reads: a misspelt "max_new_token": 2 generated 20 tokens."""
    import logging

    seqzoo.create_model("gru-tiny").save_pretrained(tmp_path)
    path = tmp_path / "generation_config.json"
    saved = json.loads(path.read_text())
    with caplog.at_level(logging.WARNING, logger="seqzoo.models.loading"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    assert "no generation setting" not in caplog.text  # (a saved file's own keys are all settings)
    path.write_text(json.dumps({**saved, "max_new_token": 2}))
    with caplog.at_level(logging.WARNING, logger="seqzoo.models.loading"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    assert ("generation_config.json: 'max_new_token' is no generation setting of this transformers' GenerationConfig "
            "(did you mean 'max_new_tokens'?); it is not read") in caplog.text
