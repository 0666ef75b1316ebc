"""The byte tokenizer's ids are the UTF-8 bytes for every byte text can hold; an encoder-decoder's tokenizer pads on the
right; a folder with tokenizer.json alone is a tokenizer."""

from __future__ import annotations

import numpy
import pytest

from seqzoo.tokenizer import byte_tokenizer, load_tokenizer, tokenizer_for
from tests.conftest import SEQ2SEQ_FAMILIES, tiny_model


def test_every_byte_of_utf8_text_is_its_own_id():
    text = "".join(map(chr, range(1, 0x800))) + "\u20ac\uffee\U0001f600\U00100000"
    tokenizer = byte_tokenizer()
    ids = tokenizer(text).input_ids
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("length", [0, -3, "10", 2.5, True, None])
def test_model_max_length_must_be_a_positive_integer(length):
    # 0 truncated every text to nothing without a word; -3 failed at the first call with an OverflowError
    with pytest.raises(ValueError, match=rf"model_max_length={length!r} must be a positive integer"):
        byte_tokenizer(length)
    assert byte_tokenizer(3)("hello", truncation=True).input_ids == list(b"hel")
    assert byte_tokenizer(numpy.int64(4)).model_max_length == 4


@pytest.mark.parametrize("as_config", [False, True], ids=["model", "config"])
def test_an_encoder_decoders_tokenizer_pads_on_the_right(as_config):
    model = tiny_model(next(iter(SEQ2SEQ_FAMILIES.values())))
    assert tokenizer_for(model.config if as_config else model).padding_side == "right"


@pytest.mark.parametrize("task, side", [("causal-lm", "left"), ("sequence-classification", "right"),
                                        ("token-classification", "right")])
def test_only_a_generating_models_tokenizer_pads_on_the_left(task, side):
    """A token-classification pipeline reports a batch's token positions counted from each text's start."""
    import seqzoo

    assert tokenizer_for(seqzoo.create_model("gru-tiny", task, num_labels=2)).padding_side == side


@pytest.mark.parametrize("content, message", [
    ("{not json", r"special_tokens_map\.json is damaged"),
    ('{"eos_token": 5}', r"special_tokens_map\.json has eos_token=5; a special token is its text"),
    ('{"eos_token": {"content": 5}}', r'special_tokens_map\.json has eos_token=\{"content": 5\}; a special token'),
    ('{"additional_special_tokens": [5]}', r"special_tokens_map\.json has additional_special_tokens=\[5\]; a special"),
    ('{"extra_special_tokens": {"image_token": 5}}',
     r'special_tokens_map\.json has extra_special_tokens=\{"image_token": 5\}; a special'),
    ('{"extra_special_tokens": {"image_token": "<image>"}, "eos_token": 5}',  # (only the wrong one named)
     r"special_tokens_map\.json has eos_token=5; a special"),
])
def test_a_bad_special_tokens_map_is_named(tmp_path, content, message):
    """transformers still reads special_tokens_map.json (tokenizers saved by older releases have one)."""
    byte_tokenizer().save_pretrained(tmp_path)
    (tmp_path / "special_tokens_map.json").write_text(content)
    with pytest.raises(ValueError, match=rf"tokenizer cannot be read: {message}"):
        load_tokenizer(tmp_path)


def test_a_folder_with_only_tokenizer_json_loads(tmp_path):
    byte_tokenizer().save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    assert load_tokenizer(tmp_path)("\u00ae").input_ids == [0xC2, 0xAE]


def test_a_causal_lms_config_gives_a_left_padding_tokenizer_cut_at_its_positions():
    from seqzoo.registry import preset_values

    spec, values = preset_values("transformer-gpt2-small")  # (learned positions: a bound)
    config = spec.config_class(**values)
    tokenizer = tokenizer_for(config)
    assert isinstance(config.max_input_length, int)
    assert tokenizer.padding_side == "left" and tokenizer.model_max_length == config.max_input_length


@pytest.mark.parametrize("text, message", [
    ("a<|pad|>b", r"data\.txt:3: the text holds '<\|pad\|>', which the saved tokenizer reads as its special token "
                  r"\(id 256\)"),
    ("<|endoftext|>", r"data\.txt:3: the text holds '<\|endoftext\|>', .* \(id 257\)"),
    ("ab\ud800", r"data\.txt:3: the text holds '\\ud800' at character 2, a lone surrogate"),
])
def test_text_the_saved_tokenizer_would_read_otherwise_is_refused(text, message):
    from seqzoo.tokenizer import check_trainable_text

    with pytest.raises(ValueError, match=message):
        check_trainable_text(text, "data.txt:3")
    check_trainable_text("héllo 🙂 <|pad", "data.txt:3")


@pytest.mark.parametrize("file, key, value", [
    ("tokenizer_config.json", "eos_token", {}),
    ("tokenizer_config.json", "eos_token", {"lstrip": False}),
    ("tokenizer_config.json", "eos_token", {"content": "<|endoftext|>"}),  # (no "__type": "AddedToken")
    ("tokenizer_config.json", "additional_special_tokens", [{"content": "<|pad|>"}]),
    ("tokenizer_config.json", "extra_special_tokens", {"image_token": {"content": "<|pad|>"}}),
    ("special_tokens_map.json", "additional_special_tokens", [{"content": "<|pad|>"}]),
])
def test_a_special_token_object_transformers_cannot_read_is_named(tmp_path, file, key, value):
    """An object with no "content", or one without the "__type" that tokenizer_config.json needs, passed as a special
    token: transformers' bare TypeError ("Special token eos_token has to be either str or AddedToken but got: <class
    'dict'>", "Input must be a List[Union[str, AddedToken]]") named neither the file nor the value."""
    import json

    byte_tokenizer().save_pretrained(tmp_path)
    path = tmp_path / file
    path.write_text(json.dumps({**(json.loads(path.read_text()) if path.is_file() else {}), key: value}))
    with pytest.raises(ValueError, match=rf"tokenizer cannot be read: {file} has {key}=.*a special token is its text"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("file, value", [
    ("tokenizer_config.json", {"__type": "AddedToken", "content": "<|endoftext|>"}),  # (as save_pretrained writes)
    ("special_tokens_map.json", {"content": "<|endoftext|>"}),
])
def test_a_special_token_object_transformers_reads_loads(tmp_path, file, value):
    import json

    byte_tokenizer().save_pretrained(tmp_path)
    path = tmp_path / file
    path.write_text(json.dumps({**(json.loads(path.read_text()) if path.is_file() else {}), "eos_token": value}))
    assert load_tokenizer(tmp_path).eos_token_id == 257


def test_tokenizer_helpers_name_an_argument_of_another_kind():
    # load_tokenizer(None) asked the Hub for a repository named "None" for about 30 s, an absolute path that does not
    # exist was called a malformed repository id, and tokenizer_for(None) returned a byte tokenizer without a word.
    import pytest

    from seqzoo.tokenizer import load_tokenizer, tokenizer_for

    with pytest.raises(TypeError, match=r"load_tokenizer takes a folder or a Hub repository id .*got None"):
        load_tokenizer(None)
    with pytest.raises(ValueError, match=r"load_tokenizer: no folder '/nonexistent/tokenizer' here"):
        load_tokenizer("/nonexistent/tokenizer")
    for given in (None, "lstm-tiny"):
        with pytest.raises(TypeError, match=r"tokenizer_for takes a model or its config; got "):
            tokenizer_for(given)


@pytest.mark.parametrize("length", ["512", 0, True, [512], 512.0, 1e20])  # (a float 512.0 failed to truncate)
def test_a_saved_model_max_length_that_is_no_number_is_named(tmp_path, length):
    """A hand-edited "model_max_length": "512" loaded, and every call that pads or truncates failed inside
    transformers ("'>' not supported between instances of 'int' and 'str'"); 0 cut every text to nothing."""
    import json

    byte_tokenizer().save_pretrained(tmp_path)
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_max_length": length}))
    with pytest.raises(ValueError, match=r"tokenizer cannot be read: tokenizer_config\.json has model_max_length="):
        load_tokenizer(tmp_path)
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_max_length": 1e30}))
    assert load_tokenizer(tmp_path)(["ab", "c"], padding=True, truncation=True).input_ids == [[97, 98], [256, 99]]
