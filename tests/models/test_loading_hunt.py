"""Loading and model surgery, as a review found them: a lenient load's fresh tensors as a new model's (a classic
LM's untied decoder at torch's scale, not at the embedding's), a lenient load of tensors a device_map offloads
refused (accelerate failed at the first forward), a vocabulary resized below the special tokens refused, and a
config passed without ``architectures`` still told what head the checkpoint was saved with."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification

import seqzoo


class Records(logging.Handler):
    """The messages logged to a logger it is added to (transformers' own handler writes to the stderr it found)."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _without(folder, key):
    weights = load_file(folder / "model.safetensors")
    del weights[key]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("arch", ["lstm", "gru", "rnn"])
def test_a_missing_untied_decoder_is_initialised_as_a_new_models(arch, tmp_path):
    config = seqzoo.get_config(f"{arch}-tiny", hidden_size=64, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path)
    _without(tmp_path, "lm_head.weight")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, strict=False)
    bound = 1 / math.sqrt(64)  # (torch.nn.Linear's, what a new model's decoder gets; normal(0, 1) before)
    assert loaded.lm_head.weight.abs().max() <= bound
    assert loaded.lm_head.weight.std() > bound / 3
    assert torch.equal(loaded.lm_head.bias, model.lm_head.bias)  # (loaded: put back)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_a_lenient_load_refuses_fresh_tensors_a_device_map_offloads(tmp_path):
    pytest.importorskip("accelerate")
    seqzoo.create_model("transformer-tiny").save_pretrained(tmp_path / "m")
    _without(tmp_path / "m", "model.layers.1.attn_norm.weight")
    with pytest.raises(ValueError, match=r"strict=False cannot give fresh values to tensors that a device_map "
                                         r"offloads \(model\.layers\.1\.attn_norm\.weight\)"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "m", strict=False, device_map={"": "disk"},
                                             offload_folder=tmp_path / "offload")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", strict=False)
    assert loaded.model.layers[1].attn_norm.weight.isfinite().all()


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny", "seq2seq-bahdanau-tiny"])
def test_a_vocabulary_resized_below_a_special_token_is_refused(preset, tmp_path):
    """The resize went through (transformers logs "may result in unexpected behavior"), generate() could never end
    on the eos, and the saved folder did not load: the config refused its own pad id."""
    model = seqzoo.create_model(preset)
    config = model.config
    size = config.vocab_size
    with pytest.raises(ValueError, match=r"resize_token_embeddings\(200\) leaves 200 token\(s\), and the config's "
                                         r"pad_token_id=256, .*would be outside them"):
        model.resize_token_embeddings(200)
    with pytest.raises(ValueError, match=r"resize_token_embeddings\(250\) leaves 256 token\(s\)"):
        model.resize_token_embeddings(250, pad_to_multiple_of=8)
    assert model.get_input_embeddings().weight.shape[0] == size == model.config.vocab_size
    # transformers rounds a negative multiple down (258 -> 256, past the check), takes True as 1, divides by 0
    for name, value, kwargs in (("pad_to_multiple_of", -8, {"new_num_tokens": 258, "pad_to_multiple_of": -8}),
                                ("pad_to_multiple_of", 0, {"new_num_tokens": 258, "pad_to_multiple_of": 0}),
                                ("pad_to_multiple_of", True, {"new_num_tokens": 258, "pad_to_multiple_of": True}),
                                ("new_num_tokens", 300.0, {"new_num_tokens": 300.0}),
                                ("new_num_tokens", -1, {"new_num_tokens": -1})):
        with pytest.raises(ValueError, match=rf"resize_token_embeddings: {name}={value!r} is invalid: expected an "
                                             "integer >= 1, or None"):
            model.resize_token_embeddings(**kwargs)
    assert model.get_input_embeddings().weight.shape[0] == size == model.config.vocab_size
    model.resize_token_embeddings(264, pad_to_multiple_of=8)  # (more is fine)
    assert model.config.vocab_size == 264


def test_a_config_without_architectures_still_tells_the_head_a_checkpoint_was_saved_with(tmp_path):
    """from_pretrained(folder, config=a config of the user's): the head check read the class from that config, which
    names none, so a tagger's score loaded as a sequence classifier's."""
    config = seqzoo.get_config("lstm-tiny", num_labels=3)
    AutoModelForTokenClassification.from_config(config).save_pretrained(tmp_path)
    fresh = seqzoo.get_config("lstm-tiny", num_labels=3)
    assert fresh.architectures is None
    with pytest.raises(ValueError, match=r"was saved as LSTMForTokenClassification, another head"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path, config=fresh)
    assert AutoModelForTokenClassification.from_pretrained(tmp_path, config=fresh).config.num_labels == 3


def test_transformers_load_report_is_told_only_for_a_load_that_is_accepted(tmp_path):
    """transformers' report ("MISSING: those params were newly initialized ...") described a strict load that seqzoo
    then refused; an accepted load (strict=False, or a causal LM's checkpoint into a classifier) still reports."""
    seqzoo.create_model("gru-tiny").save_pretrained(tmp_path)
    _without(tmp_path, "model.layers.1.weight_hh")
    records = Records()
    logging.getLogger("transformers").addHandler(records)
    try:
        with pytest.raises(ValueError, match=r"missing tensors: model\.layers\.1\.weight_hh"):
            AutoModelForCausalLM.from_pretrained(tmp_path)
        assert not any("LOAD REPORT" in message for message in records.messages)
        AutoModelForCausalLM.from_pretrained(tmp_path, strict=False)
        assert any("LOAD REPORT" in message and "weight_hh" in message for message in records.messages)
    finally:
        logging.getLogger("transformers").removeHandler(records)


def test_a_repo_id_gets_the_file_checks_a_local_folder_gets(tmp_path, monkeypatch):
    """Loaded by repo id (from the Hub cache here: no network), integer weights loaded as their cast codes and a
    damaged generation_config.json was ignored, where the same files in a local folder are refused."""
    repo = tmp_path / "hub" / "models--me--tiny"
    (repo / "refs").mkdir(parents=True)
    model = seqzoo.create_model("gru-tiny")
    for commit, ref in (("a" * 40, "main"), ("b" * 40, "v2")):
        model.save_pretrained(repo / "snapshots" / commit)
        (repo / "refs" / ref).write_text(commit)
    weights = load_file(repo / "snapshots" / ("a" * 40) / "model.safetensors")
    weights["model.embed_tokens.weight"] = (weights["model.embed_tokens.weight"] * 100).to(torch.int32)
    save_file(weights, repo / "snapshots" / ("a" * 40) / "model.safetensors", metadata={"format": "pt"})
    (repo / "snapshots" / ("b" * 40) / "generation_config.json").write_text("{not json")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # (no request to try first: the cache is all there is)
    options = {"cache_dir": tmp_path / "hub", "local_files_only": True}
    with pytest.raises(ValueError, match=r"hold tensors that are not floating point: model\.embed_tokens\.weight"):
        AutoModelForCausalLM.from_pretrained("me/tiny", **options)
    with pytest.raises(ValueError, match=r"generation_config\.json is damaged"):
        AutoModelForCausalLM.from_pretrained("me/tiny", revision="v2", **options)


def test_only_a_device_maps_offloaded_tensors_are_refused_fresh_values():
    """FSDP's RAM-efficient loading leaves a missing tensor on meta on every rank but the first (whose values it
    broadcasts): strict=False must load there, as it did; a device_map's offloading is what is refused."""
    from seqzoo.models.loading import initialise_anew

    model = seqzoo.create_model("transformer-tiny")
    key = "model.layers.1.mlp.down_proj.weight"
    module = model.get_submodule(key.rsplit(".", 1)[0])
    module.weight = torch.nn.Parameter(torch.empty_like(module.weight, device="meta"))
    initialise_anew(model, {"missing_keys": [key]})
    assert module.weight.is_meta
    model.hf_device_map = {"": "disk"}
    with pytest.raises(ValueError, match=r"strict=False cannot give fresh values to tensors that a device_map"):
        initialise_anew(model, {"missing_keys": [key]})


def test_transformers_own_load_error_keeps_the_report_it_points_to(tmp_path, monkeypatch):
    """transformers raises "look at the CONVERSION entries of the above report!" after logging its report: held
    back for seqzoo's judgement, the report was lost with transformers' own error."""
    import transformers.modeling_utils as transformers_loading

    seqzoo.create_model("gru-tiny").save_pretrained(tmp_path)
    report = transformers_loading.log_state_dict_report

    def with_a_conversion_error(**options):  # (as a failed on-the-fly conversion records one)
        options["loading_info"].conversion_errors["model.embed_tokens.weight"] = "a conversion failed"
        return report(**options)

    monkeypatch.setattr(transformers_loading, "log_state_dict_report", with_a_conversion_error)
    records = Records()
    logging.getLogger("transformers").addHandler(records)
    try:
        with pytest.raises(RuntimeError, match="CONVERSION"):
            AutoModelForCausalLM.from_pretrained(tmp_path)
    finally:
        logging.getLogger("transformers").removeHandler(records)
    assert any("LOAD REPORT" in message and "a conversion failed" in message for message in records.messages)


@pytest.mark.parametrize("name, value", [("eos_token_id", 300), ("pad_token_id", 999), ("eos_token_id", [257, 300])])
def test_a_saved_generation_token_id_outside_the_vocabulary_is_refused(name, value, tmp_path):
    """config.json refuses such an id; generation_config.json's loaded without a word: an eos never ended a
    generation, a pad failed in the middle of one naming no file."""
    import json

    seqzoo.create_model("gru-tiny").save_pretrained(tmp_path)
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), name: value}))
    with pytest.raises(ValueError, match=rf"generation_config\.json'?: {name}=.* is invalid: token ids must be in "
                                         r"\[0, vocab_size=258\)"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_seq2seq_generate_reads_the_models_saved_settings(tmp_path):
    """It sampled with a saved do_sample (its docstring said greedy) yet wrote 64 tokens over a saved
    max_new_tokens=3, and failed with a KeyError on a saved return_dict_in_generate."""
    import json

    from transformers import AutoModelForSeq2SeqLM

    seqzoo.create_model("seq2seq-bahdanau-tiny").save_pretrained(tmp_path)
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "max_new_tokens": 3,
                                "return_dict_in_generate": True}))
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    tokenizer = seqzoo.byte_tokenizer()
    (text,) = seqzoo.seq2seq_generate(model, tokenizer, ["abc"])
    assert len(text) <= 3  # (a byte a token: at most one character each, a lone byte of a character as U+FFFD)
    longer = seqzoo.seq2seq_generate(model, tokenizer, ["abc"], max_new_tokens=40, min_new_tokens=40)[0]
    assert 3 < len(longer) <= 40  # (40 bytes: at least 10 characters)


def test_seq2seq_generate_and_attention_map_read_the_other_saved_settings_too(tmp_path):
    """A saved stop_strings failed for want of the tokenizer, a saved max_length (or a generation_config given) was
    overridden by 64 new tokens, and a saved num_return_sequences failed the attention map's greedy decode."""
    import json

    from transformers import AutoModelForSeq2SeqLM, GenerationConfig

    torch.manual_seed(0)
    seqzoo.create_model("seq2seq-bahdanau-tiny").save_pretrained(tmp_path)
    path = tmp_path / "generation_config.json"
    saved = json.loads(path.read_text())
    tokenizer = seqzoo.byte_tokenizer()
    path.write_text(json.dumps({**saved, "max_length": 5}))
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert len(seqzoo.seq2seq_generate(model, tokenizer, ["abc"])[0]) <= 5
    given = GenerationConfig(**{**saved, "max_new_tokens": 2})
    assert len(seqzoo.seq2seq_generate(model, tokenizer, ["abc"], generation_config=given)[0]) <= 2
    first = seqzoo.seq2seq_generate(model, tokenizer, ["abc"], max_new_tokens=3)[0]
    path.write_text(json.dumps({**saved, "stop_strings": [first[:1] or "x"]}))
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert len(seqzoo.seq2seq_generate(model, tokenizer, ["abc"], max_new_tokens=40)[0]) < 40
    path.write_text(json.dumps({**saved, "num_beams": 4, "num_return_sequences": 2}))
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert seqzoo.attention_map(model, tokenizer, "abc", max_new_tokens=3).weights.shape[1] == 3
