"""Keywords and values a config (or a model built from one) took without reading them, or failed on far from the
field: each is refused by name, saying what is allowed."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import seqzoo
from seqzoo.models.compat import output_cache

SMALL = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1)


@pytest.mark.parametrize(("cls", "given"), [
    (seqzoo.LSTMConfig, dict(rope_theta=1e6)),
    (seqzoo.MambaConfig, dict(rope_scaling={"rope_type": "linear", "factor": 4.0})),
    (seqzoo.Seq2SeqConfig, dict(encoder_type="transformer", rope_theta=5e5)),
], ids=lambda value: getattr(value, "__name__", None) or "-".join(value))
def test_rope_keywords_on_a_config_without_rotary_positions_are_refused(cls, given):
    key = next(key for key in given if key.startswith("rope"))
    with pytest.raises(ValueError, match=rf"{cls.__name__}: {key}=.* is not read by a model of {cls.__name__}, which "
                                         r"has no rotary positions"):
        cls(**SMALL, **given)


@pytest.mark.parametrize(("given", "message"), [
    (dict(rope_scaling={"rope_type": "default", "factor": 8.0}), r"its 'factor' read only by a scaled RoPE"),
    (dict(variant="gpt2", rope_scaling={"rope_type": "default"}), r"read only by rotary positions.* is not read by a "
                                                                   r"model of position_embedding='learned'"),
])
def test_rope_scaling_nothing_reads_is_refused_on_a_transformer(given, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # (transformers: rope_scaling is deprecated)
        with pytest.raises(ValueError, match=rf"TransformerConfig: rope_scaling=.*{message}"):
            seqzoo.TransformerConfig(**SMALL, num_attention_heads=2, **given)
        # plain RoPE named as such still builds
        seqzoo.TransformerConfig(**SMALL, num_attention_heads=2, rope_scaling={"rope_type": "default"})


def test_an_eos_token_id_list_holding_none_is_refused():
    with pytest.raises(ValueError, match=r"LSTMConfig.eos_token_id=\[None, 5\] is invalid: token ids must be integers "
                                         r"in \[0, vocab_size=50\) \(or null for none, as the whole value"):
        seqzoo.LSTMConfig(**SMALL, eos_token_id=[None, 5])
    assert seqzoo.LSTMConfig(**SMALL, eos_token_id=None).eos_token_id is None
    assert seqzoo.LSTMConfig(**SMALL, eos_token_id=[3, 5]).eos_token_id == [3, 5]


@pytest.mark.parametrize(("cls", "field", "value"), [
    (seqzoo.LSTMConfig, "hidden_size", 2**63),
    (seqzoo.MambaConfig, "state_size", 2**64),
    (seqzoo.LSTMConfig, "vocab_size", 2**31),
])
def test_an_integer_size_beyond_what_torch_builds_is_refused_by_name(cls, field, value):
    with pytest.raises(ValueError, match=rf"{cls.__name__}.{field}={value} is invalid: must be <= 2147483647"):
        cls(**{**SMALL, field: value})


@pytest.mark.parametrize("build", [
    lambda: seqzoo.LSTMConfig(**SMALL, temperature=0.3, do_sample=True),
    lambda: AutoConfig.for_model("seqzoo_lstm", num_beams=4),
], ids=["constructor", "for_model"])
def test_generation_parameters_given_to_a_config_are_refused(build):
    """transformers' config drops them without a word: the model then sampled at its generation_config's defaults."""
    with pytest.raises(TypeError, match=r"LSTMConfig got generation parameter\(s\) .*which a config does not hold "
                                        r".*pass them to generate\(\), or set them on the model's generation_config"):
        build()


def test_a_config_json_holding_generation_parameters_still_loads(tmp_path):
    seqzoo.LSTMConfig(**SMALL).save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**values, "max_length": 20}))  # (an older transformers' file)
    assert AutoConfig.from_pretrained(tmp_path).hidden_size == 16


def test_a_config_field_beside_a_config_object_is_named_as_such(tmp_path):
    seqzoo.create_model("lstm-tiny").save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    applied = r"beside a config passed as {}: keywords are not applied to a config given this way; set it on the config"
    with pytest.raises(TypeError, match=r"LSTMForCausalLM.from_pretrained got the keyword 'dropout', a field of "
                                        r"LSTMConfig, " + applied.format("config=")):
        AutoModelForCausalLM.from_pretrained(tmp_path, config=config, dropout=0.5)
    with pytest.raises(TypeError, match=r"LSTMForCausalLM.from_config got the keyword 'dropout', a field of "
                                        r"LSTMConfig, " + applied.format("its argument")):
        AutoModelForCausalLM.from_config(config, dropout=0.3)
    with pytest.raises(TypeError, match=r"LSTMForCausalLM.from_config got unknown keyword argument 'dtpye' \(did you "
                                        r"mean 'dtype'\?\): it takes attn_implementation, dtype"):
        AutoModelForCausalLM.from_config(config, dtpye="float32")
    assert AutoModelForCausalLM.from_config(config, dtype="float32").config.dropout == config.dropout


def test_a_model_class_refuses_another_architectures_config():
    from transformers import LlamaConfig

    from seqzoo.models.lstm.modeling_lstm import LSTMForCausalLM, LSTMForSequenceClassification
    from seqzoo.models.transformer.modeling_transformer import TransformerForCausalLM

    for model_class, config in [(LSTMForCausalLM, seqzoo.GRUConfig(**SMALL)),
                                (LSTMForSequenceClassification, seqzoo.MambaConfig(**SMALL)),
                                (TransformerForCausalLM, LlamaConfig(**SMALL, num_attention_heads=2))]:
        with pytest.raises(ValueError, match=rf"{model_class.__name__} is a model of .*Config \(model_type "
                                             rf"'seqzoo_\w+'\); got a {type(config).__name__} \(model_type "
                                             rf"'{config.model_type}'\)"):
            model_class(config)
    for config in [{"hidden_size": 16}, None]:
        with pytest.raises(TypeError, match=rf"LSTMForCausalLM takes a config \(a LSTMConfig\); got "
                                            rf"{type(config).__name__}"):
            LSTMForCausalLM(config)
    assert type(LSTMForCausalLM(seqzoo.LSTMConfig(**SMALL)).model.layers[0]).__name__.startswith("LSTM")


@pytest.mark.parametrize(("given", "message"), [
    # (a string "no" was stored and read as true: the model returned attentions)
    (dict(output_attentions="no"), r"TransformerConfig.output_attentions='no' is invalid: expected true or false"),
    (dict(attn_implementation=5), r"TransformerConfig.attn_implementation=5 is invalid: expected the name of an "
                                  r"attention implementation"),
    (dict(per_layer_config={"hidden_size": 8}), r"per_layer_config=\{'hidden_size': 8\} is invalid: seqzoo does not "
                                                r"support per-layer configs"),
    (dict(dtype="float32", torch_dtype="float16"), r"TransformerConfig: dtype='float32' and torch_dtype='float16' "
                                                   r"disagree"),
])
def test_transformers_own_keywords_are_checked(given, message):
    with pytest.raises(ValueError, match=message):
        seqzoo.TransformerConfig(**SMALL, num_attention_heads=2, **given)
    config = seqzoo.TransformerConfig(**SMALL, num_attention_heads=2, output_attentions=True,
                                      attn_implementation="eager", dtype="float16", torch_dtype="float16")
    assert config.output_attentions is True and config.dtype is torch.float16


def test_architectures_that_is_no_list_is_refused(tmp_path):
    """The saved head was read as architectures[0]: of a string, its first letter, which names no head, so a
    tagger's checkpoint loaded as a sequence classifier without the saved-head check."""
    from transformers import AutoModelForSequenceClassification

    from seqzoo.models.lstm.modeling_lstm import LSTMForSequenceClassification

    invalid = r"architectures='LSTMForTokenClassification' is invalid: expected a list of class names"
    with pytest.raises(ValueError, match=rf"LSTMConfig: {invalid}"):
        seqzoo.LSTMConfig(**SMALL, architectures="LSTMForTokenClassification")
    with pytest.raises(ValueError, match=invalid):
        seqzoo.registry.saved_head({"model_type": "seqzoo_lstm", "architectures": "LSTMForTokenClassification"})
    seqzoo.create_model("lstm-tiny", "token-classification", num_labels=3).save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**values, "architectures": "LSTMForTokenClassification"}))
    with pytest.raises(ValueError, match=rf"checkpoint .*: {invalid}"):
        LSTMForSequenceClassification.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=invalid):
        AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert seqzoo.registry.saved_head({**values, "architectures": ["LSTMForCausalLM"]}) == ("LSTMForCausalLM",
                                                                                           "causal-lm")


def test_another_model_type_given_beside_a_config_json_is_refused(tmp_path):
    seqzoo.create_model("lstm-tiny").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"LSTMConfig.model_type='seqzoo_gru' is invalid: a LSTMConfig is "
                                         r"'seqzoo_lstm'"):
        seqzoo.LSTMConfig.from_pretrained(tmp_path, model_type="seqzoo_gru")
    assert seqzoo.LSTMConfig.from_pretrained(tmp_path, model_type="seqzoo_lstm").model_type == "seqzoo_lstm"


@pytest.mark.parametrize("given", [dict(num_labels=5), dict(id2label={0: "neg", 1: "pos"}),
                                   dict(problem_type="regression")], ids=lambda given: next(iter(given)))
def test_label_fields_on_an_encoder_decoder_are_refused_as_unread(given):
    key = next(iter(given))
    with pytest.raises(ValueError, match=rf"Seq2SeqConfig: {key}=.* \(read only by classification heads \(an "
                                         r"encoder-decoder has none\)\).* not read by a model of"):
        seqzoo.Seq2SeqConfig(**given)
    config = seqzoo.Seq2SeqConfig()
    assert type(config).from_dict(config.to_dict()).num_labels == 2  # (the defaults it holds load back)


def test_a_saved_mamba2_config_json_builds_a_config_read_as_plain_json(tmp_path):
    """save_pretrained writes time_step_limit's infinity as {"__float__": "Infinity"}, which only transformers' own
    file reader decoded: the saved file, read with json, was refused as an invalid time_step_limit."""
    import math

    seqzoo.create_model("mamba2-tiny").save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    assert values["time_step_limit"] == [0.0, {"__float__": "Infinity"}]
    assert seqzoo.Mamba2Config(**values).time_step_limit == (0.0, math.inf)
    config = seqzoo.Mamba2Config.from_dict(json.loads(seqzoo.Mamba2Config().to_json_string()))
    assert config.time_step_limit == (0.0, math.inf)
    with pytest.raises(ValueError, match=r"time_step_limit=\(0.0, nan\) is invalid"):
        seqzoo.Mamba2Config(time_step_limit=[0.0, {"__float__": "NaN"}])


@pytest.mark.parametrize(("given", "message"), [
    (dict(return_dict="no"), r"return_dict='no' is invalid: expected True, False or None"),
    (dict(output_hidden_states="no"), r"output_hidden_states='no' is invalid: expected True, False or None"),
    (dict(use_cache="no"), r"use_cache='no' is invalid: expected True, False or None"),
    (dict(output_attentions="no"), r"output_attentions='no' is invalid: expected True, False or None"),
    (dict(logits_to_keep=-1), r"logits_to_keep=-1 is invalid: expected an int >= 0"),
    (dict(logits_to_keep=1.5), r"logits_to_keep=1.5 is invalid: expected an int >= 0"),
    (dict(logits_to_keep=torch.tensor([0.5])), r"logits_to_keep \(a 1-d torch.float32 tensor\) is invalid"),
], ids=lambda value: next(iter(value)) if isinstance(value, dict) else None)
@pytest.mark.parametrize("preset", ["mamba-tiny", "transformer-tiny"])
def test_forward_flags_of_another_type_are_refused(preset, given, message):
    """A string "no" was read as true (a ModelOutput, hidden states, a cache returned), logits_to_keep=-1 kept
    every position, 1.5 failed inside torch's indexing; also on a decode step, whose fast path skips the rest."""
    model = seqzoo.create_model(preset).eval()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        with pytest.raises(ValueError, match=message):
            model(ids, **given)
        cache = output_cache(model(ids, use_cache=True))
        if "logits_to_keep" in given or "return_dict" in given or "use_cache" in given:
            with pytest.raises(ValueError, match=message):
                model(torch.tensor([[4]]), cache=cache, **given)
        assert model(ids, logits_to_keep=torch.tensor([0, 2])).logits.shape[1] == 2


def test_a_classifiers_return_dict_of_another_type_is_refused():
    model = seqzoo.create_model("lstm-tiny", "sequence-classification", num_labels=2).eval()
    with pytest.raises(ValueError, match=r"return_dict='no' is invalid: expected True, False or None"):
        model(torch.tensor([[1, 2, 3]]), return_dict="no")
    assert isinstance(model(torch.tensor([[1, 2, 3]]), return_dict=False), tuple)
