"""Every bad input a user can give gets a ValueError naming what was wrong and what is allowed."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

import seqzoo

BASE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2)


@pytest.mark.parametrize("cls", [seqzoo.RNNConfig, seqzoo.LSTMConfig, seqzoo.GRUConfig, seqzoo.TransformerConfig])
@pytest.mark.parametrize(
    "field,value,message",
    [
        ("vocab_size", 0, "vocab_size=0 is invalid: must be >= 1"),
        ("hidden_size", -4, "hidden_size=-4 is invalid: must be >= 1"),
        ("num_hidden_layers", 0, "num_hidden_layers=0 is invalid: must be >= 1"),
        ("hidden_size", 32.5, "hidden_size=32.5 is invalid: expected an integer"),
        ("dropout", 1.5, r"dropout=1.5 is invalid: must be a probability in \[0, 1\]"),
        ("dropout", -0.1, r"dropout=-0.1 is invalid: must be a probability"),
        ("pad_token_id", 99, r"pad_token_id=99 is invalid: token ids must be integers in \[0, vocab_size=99\)"),
        ("eos_token_id", -1, "eos_token_id=-1 is invalid"),
        ("tie_word_embeddings", "yes", "tie_word_embeddings='yes' is invalid: expected true or false"),
        ("dtype", "float65", "dtype='float65' is invalid: expected a floating-point dtype"),
        ("dtype", "int8", "dtype='int8' is invalid: expected a floating-point dtype"),
        ("dtype", "float8_e5m2", "dtype='float8_e5m2' is invalid: expected a floating-point dtype: float32, bfloat16"),
        ("dtype", torch.float8_e4m3fn, "dtype=torch.float8_e4m3fn is invalid: expected a floating-point dtype"),
        ("torch_dtype", "float65", "torch_dtype='float65' is invalid: expected a floating-point dtype"),
    ],
)
def test_shared_fields(cls, field, value, message):
    kwargs = {**BASE, field: value}
    if cls is seqzoo.TransformerConfig and field == "hidden_size" and isinstance(value, int):
        message = "hidden_size"  # the head arithmetic may trip first; the field is still named
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize(
    "cls,kwargs,message",
    [
        (seqzoo.RNNConfig, dict(nonlinearity="sigmoid"),
         "nonlinearity='sigmoid' is invalid: allowed values are 'tanh', 'relu'"),
        (seqzoo.RNNConfig, dict(nonlinearity="rleu"), "did you mean 'relu'"),
        (seqzoo.LSTMConfig, dict(forget_bias="big"), "forget_bias='big' is invalid: expected a number"),
        (seqzoo.LSTMConfig, dict(embedding_size=16), "tie_word_embeddings=True needs embedding_size == hidden_size"),
        (seqzoo.GRUConfig, dict(embedding_size=0, tie_word_embeddings=False), "embedding_size=0 is invalid"),
        (seqzoo.TransformerConfig, dict(num_attention_heads=5), "num_attention_heads=5 does not divide hidden_size=32"),
        (seqzoo.TransformerConfig, dict(num_attention_heads=4, num_key_value_heads=3),
         "num_key_value_heads=3 must divide num_attention_heads=4"),
        (seqzoo.TransformerConfig, dict(variant="gpt3"),
         "variant='gpt3' is invalid: allowed values are 'vaswani', 'gpt2', 'llama'"),
        (seqzoo.TransformerConfig, dict(hidden_act="gleu"), "hidden_act='gleu' is invalid.*did you mean 'gelu'"),
        (seqzoo.TransformerConfig, dict(position_embedding="alibi"), "position_embedding='alibi' is invalid"),
        (seqzoo.TransformerConfig, dict(norm_type="batchnorm"), "norm_type='batchnorm' is invalid"),
        (seqzoo.TransformerConfig, dict(attention_dropout=2.0), "attention_dropout=2.0 is invalid"),
        (seqzoo.TransformerConfig, dict(rope_theta=0.0), "rope_theta=0.0 is invalid: must be > 0"),
        (seqzoo.TransformerConfig, dict(max_position_embeddings=0), "max_position_embeddings=0 is invalid"),
        (seqzoo.TransformerConfig, dict(num_attention_heads=4, head_dim=7), "rotary positions need an even head_dim"),
    ],
)
def test_architecture_fields(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**{**BASE, **kwargs})


def test_config_json_with_bad_value_fails_on_load(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "seqzoo_gru", "hidden_size": 0}')
    with pytest.raises(ValueError, match="hidden_size=0"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


ALL_CONFIGS = [seqzoo.RNNConfig, seqzoo.LSTMConfig, seqzoo.GRUConfig, seqzoo.TransformerConfig, seqzoo.MambaConfig,
               seqzoo.Mamba2Config, seqzoo.RWKV7Config, seqzoo.HybridConfig, seqzoo.Seq2SeqConfig]


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=lambda cls: cls.__name__)
def test_an_unknown_config_keyword_is_refused_by_name(cls):
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) 'hiden_size' \(did you mean 'hidden_size'\?\)"):
        cls(hiden_size=32)
    # transformers' own keywords are still taken (label counts by what has a classification head)
    labels = {} if cls.encoder_decoder else {"num_labels": 3}
    config = cls(**labels, torch_dtype="float32", attn_implementation="eager", name_or_path="x")
    assert config.num_labels == labels.get("num_labels", 2)


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=lambda cls: cls.__name__)
def test_another_architectures_model_type_is_refused(cls):
    """``GRUConfig(model_type="seqzoo_lstm")`` stored the LSTM's name on a GRU's config, which part of the code reads
    (and config.json does not: transformers writes the class's)."""
    with pytest.raises(ValueError, match=rf"{cls.__name__}.model_type='seqzoo_other' is invalid: a {cls.__name__} is "
                                         rf"'{cls.model_type}'"):
        cls(model_type="seqzoo_other")
    assert cls(model_type=cls.model_type).model_type == cls.model_type


def test_a_loaded_config_with_a_field_this_seqzoo_does_not_know_loads_with_a_warning(tmp_path, caplog):
    """A config.json saved by a later seqzoo (a field added since) still loads, and says what nothing reads."""
    seqzoo.LSTMForCausalLM(seqzoo.LSTMConfig(**BASE)).save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**values, "hidden_sise": 64}))
    with caplog.at_level("WARNING", logger="seqzoo"):
        config = AutoConfig.from_pretrained(tmp_path)
        model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert config.hidden_size == model.config.hidden_size == 32
    assert "'hidden_sise' (did you mean 'hidden_size'?)" in caplog.text and "nothing reads them" in caplog.text
    assert "vocab_size" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="seqzoo"):
        assert AutoConfig.from_pretrained(tmp_path, vocab_size=48).vocab_size == 48  # an override is no field
    assert "vocab_size" not in caplog.text
    with pytest.raises(TypeError, match="hidden_sise"):  # and after a load, building one refuses again
        seqzoo.LSTMConfig(**BASE, hidden_sise=1)
    # Another file with the same misspelt field (another value) is named too: the warning was once per class and
    # field name in a process, and a second damaged folder loaded silently.
    (tmp_path / "config.json").write_text(json.dumps({**values, "hidden_sise": 128}))
    caplog.clear()
    with caplog.at_level("WARNING", logger="seqzoo"):
        AutoConfig.from_pretrained(tmp_path)
    assert "'hidden_sise' (did you mean 'hidden_size'?)" in caplog.text


@pytest.mark.parametrize(("preset", "key", "value"), [
    ("mamba-tiny", "intermediate_size", 128),  # (transformers' MambaConfig writes it; seqzoo's computes it)
    ("rwkv7-tiny", "num_heads", 4),  # (fla's RWKV-7 config writes it)
    ("lstm-tiny", "output_dim", 7),
    ("gru-tiny", "to_dict", 1),  # (a method: stored, it replaced the method on the config)
])
def test_a_loaded_config_key_naming_what_the_class_defines_is_dropped_with_a_warning(tmp_path, caplog, preset, key,
                                                                                     value):
    """A config.json key that names a property or method of the config class could not be stored on the config
    (transformers' setattr failed with a bare AttributeError, after the warning said it was kept): it is dropped,
    and the warning says so."""
    seqzoo.create_model(preset).save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**values, key: value}))
    with caplog.at_level("WARNING", logger="seqzoo"):
        config = AutoConfig.from_pretrained(tmp_path)
        model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert f"key(s) {key}={value!r}" in caplog.text and "not read" in caplog.text
    assert "nothing reads them" not in caplog.text
    assert callable(config.to_dict) and model.config.to_dict()["model_type"] == config.model_type


def test_bundled_config_code_warns_about_an_unknown_keyword(monkeypatch, caplog):
    """Code bundled into a published checkpoint cannot be updated when a later transformers builds configs with a
    keyword of its own, so it warns instead of refusing (as its forwards do about keywords)."""
    from seqzoo.models import configuration_utils

    monkeypatch.setattr(configuration_utils, "STRICT", False)
    with caplog.at_level("WARNING", logger="seqzoo"):
        assert seqzoo.LSTMConfig(**BASE, hidden_sise=1).hidden_size == 32
    assert "'hidden_sise' (did you mean 'hidden_size'?)" in caplog.text


def test_classifier_dropout_is_a_validated_field():
    assert seqzoo.GRUConfig(classifier_dropout=0.25).classifier_dropout == 0.25
    with pytest.raises(ValueError, match=r"classifier_dropout=1.5 is invalid: must be a probability"):
        seqzoo.GRUConfig(classifier_dropout=1.5)


def test_positions_beyond_learned_table_raise():
    config = seqzoo.TransformerConfig(**BASE, variant="gpt2", num_attention_heads=4, max_position_embeddings=8)
    model = seqzoo.TransformerForCausalLM(config)
    with pytest.raises(ValueError, match="beyond max_position_embeddings=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_inputs_embeds_and_mask_shapes():
    model = seqzoo.LSTMForCausalLM(seqzoo.LSTMConfig(**BASE))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()
    with pytest.raises(ValueError, match=r"inputs_embeds must have shape \(batch, sequence_length, 32\)"):
        model(inputs_embeds=torch.zeros(1, 3, 31))
    with pytest.raises(ValueError, match="attention_mask of shape"):
        model(torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="labels must have shape"):
        model(torch.zeros(2, 3, dtype=torch.long), labels=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="SeqzooCache"):
        model(torch.zeros(2, 3, dtype=torch.long), past_key_values=("not", "a cache"))


def test_a_causal_lms_labels_of_any_integer_dtype_give_the_int64_loss_and_others_are_refused_by_name():
    # (int32 labels failed in torch's cross-entropy, "expected target dtype to be Long", uint8 ones with an overflow
    # of the -100 the loss pads with; token ids of any integer dtype were already taken)
    model = seqzoo.LSTMForCausalLM(seqzoo.LSTMConfig(**BASE))
    ids = torch.randint(3, 99, (2, 5), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :2] = -100
    logits = model(ids).logits
    want = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    for dtype in (torch.int64, torch.int32, torch.int16):
        torch.testing.assert_close(model(ids, labels=labels.to(dtype)).loss, want)
    unsigned = ids.clone()  # (no -100 in uint8)
    torch.testing.assert_close(model(ids, labels=unsigned.to(torch.uint8)).loss, model(ids, labels=unsigned).loss)
    for dtype in (torch.float32, torch.bool):
        with pytest.raises(ValueError, match=rf"labels must be token ids \(an integer tensor, -100 where ignored\); "
                                             rf"got dtype {dtype}"):
            model(ids, labels=labels.to(dtype))
    with pytest.raises(TypeError, match="labels must be a tensor; got list"):
        model(ids, labels=labels.tolist())
    with pytest.raises(ValueError, match=r"labels contain 99: labels must be token ids in \[0, vocab_size=99\)"):
        model(ids, labels=torch.full((2, 5), 99, dtype=torch.int32))


@pytest.fixture
def saved_lstm(tmp_path):
    model = seqzoo.LSTMForCausalLM(seqzoo.LSTMConfig(**BASE))
    model.save_pretrained(tmp_path)
    return tmp_path


def test_checkpoint_of_another_architecture(saved_lstm):
    with pytest.raises(ValueError, match="holds a 'seqzoo_lstm' model, not 'seqzoo_gru'"):
        seqzoo.GRUForCausalLM.from_pretrained(saved_lstm)


def test_a_damaged_config_json_is_named_by_the_config_loader_strict_or_not(saved_lstm):
    (saved_lstm / "config.json").write_text('{"model_type": ')
    for strict in (True, False):
        with pytest.raises(OSError, match=r"config.json' is not a valid JSON file"):
            seqzoo.LSTMForCausalLM.from_pretrained(saved_lstm, strict=strict)


def test_checkpoint_with_missing_tensor(saved_lstm):
    weights = load_file(saved_lstm / "model.safetensors")
    del weights["model.layers.1.weight_hh"]
    save_file(weights, saved_lstm / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing tensors: model.layers.1.weight_hh"):
        AutoModelForCausalLM.from_pretrained(saved_lstm)
    model = AutoModelForCausalLM.from_pretrained(saved_lstm, strict=False)  # explicit opt-out still loads
    assert model.model.layers[1].weight_hh.shape == (128, 32)


def test_checkpoint_with_misshaped_tensor(saved_lstm):
    weights = load_file(saved_lstm / "model.safetensors")
    weights["model.layers.0.bias_ih"] = torch.zeros(7)
    save_file(weights, saved_lstm / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError,
                       match=r"mis-shaped tensors: model.layers.0.bias_ih \(checkpoint \(7,\), model \(128,\)\)"):
        AutoModelForCausalLM.from_pretrained(saved_lstm)
    # What the error advises works: strict=False loads it, that tensor re-initialised (not transformers' own error).
    model = AutoModelForCausalLM.from_pretrained(saved_lstm, strict=False)
    assert model.model.layers[0].bias_ih.shape == (128,)


def test_checkpoint_with_tensors_the_config_has_no_place_for(saved_lstm):
    # A config.json of fewer layers than the weights: transformers only lists the extra tensors; seqzoo refuses.
    config = json.loads((saved_lstm / "config.json").read_text())
    config["num_hidden_layers"] = 1
    (saved_lstm / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tensors this model has no place for: model.layers.1.bias_hh, "):
        AutoModelForCausalLM.from_pretrained(saved_lstm)
    assert AutoModelForCausalLM.from_pretrained(saved_lstm, strict=False).config.num_hidden_layers == 1
    # Another head's tensors are not in the way: the backbone and a classifier load from a causal LM's checkpoint.
    assert type(AutoModel.from_pretrained(saved_lstm, num_hidden_layers=2)).__name__ == "LSTMModel"
    classifier = AutoModelForSequenceClassification.from_pretrained(saved_lstm, num_hidden_layers=2, num_labels=3)
    assert classifier.score.weight.shape == (3, 32)


def test_what_does_not_fit_is_named_before_non_finite_weights(saved_lstm):
    # A missing or mis-shaped tensor is left uninitialised by the lenient load (it may hold NaN): what does not fit
    # is the error, checked before the weights' values.
    weights = load_file(saved_lstm / "model.safetensors")
    del weights["model.layers.1.weight_hh"]
    weights["model.layers.0.bias_ih"][0] = float("nan")
    save_file(weights, saved_lstm / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing tensors: model.layers.1.weight_hh\. Save or download the checkpoint "
                       r"again; or, from Python, pass strict=False"):
        AutoModelForCausalLM.from_pretrained(saved_lstm)
    with pytest.raises(ValueError, match=r"holds NaN or infinite weights in model.layers.0.bias_ih"):
        AutoModelForCausalLM.from_pretrained(saved_lstm, strict=False)


def test_missing_checkpoint_folder(tmp_path):
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("preset", ["mamba-tiny", "lstm-tiny", "rwkv7-tiny"])
def test_strict_false_gives_a_missing_head_fresh_values(preset, tmp_path):
    # Loaded leniently without it, the untied head must get fresh values as a new model's (the architecture's own
    # rule: torch's uniform bound for the LSTM's decoder, RWKV-7's orthogonal head, normal(0, initializer_range) for
    # Mamba's), not whatever memory the loader allocated, nor the LSTM's embedding scale (normal(0, 1)).
    from tests.conftest import tiny_model

    fresh = tiny_model(preset, tie_word_embeddings=False, seed=3).lm_head.weight.detach()
    tiny_model(preset, tie_word_embeddings=False).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing tensors: lm_head.weight"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, strict=False)
    head = model.lm_head.weight.detach()
    assert bool(torch.isfinite(head).all()) and 0.8 < float(head.std()) / float(fresh.std()) < 1.2
    assert float(head.abs().max()) <= 1.3 * float(fresh.abs().max())
    torch.testing.assert_close(model.model.embed_tokens.weight, weights["model.embed_tokens.weight"])


@pytest.mark.parametrize("preset", ["mamba-tiny", "mamba2-tiny", "rwkv7-tiny", "hybrid-tiny"])
def test_strict_false_gives_a_mixers_missing_tensors_the_mixers_own_initialisation(preset, tmp_path):
    # A mixer initialises its submodules itself (Mamba's convolution, Mamba-2's gated norm, RWKV-7's ln_x and its
    # zeroed projections), but transformers skips a module of a model outside its package whose own parameters all
    # loaded: such a tensor missing from a checkpoint kept the loader's uninitialised memory (NaN at times), or the
    # generic normal(0, initializer_range) of an nn.Linear. Each gets what a fresh model's mixer gives it now.
    from seqzoo.layers.mixer import Mixer
    from tests.conftest import tiny_model

    fresh = tiny_model(preset)
    fresh.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    mixers = [(name, module) for name, module in fresh.named_modules()
              if isinstance(module, Mixer) and name.startswith("model.layers.0.")]
    dropped = sorted({f"{name}.{key}" for name, mixer in mixers for key, _ in mixer.named_parameters()
                      if "." in key} & set(weights))
    assert dropped
    for key in dropped:
        del weights[key]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, strict=False).state_dict()
    expected = fresh.state_dict()
    for key in dropped:
        value, reference = loaded[key], expected[key]
        assert bool(torch.isfinite(value).all()), key
        if bool((reference == reference.flatten()[0]).all()):  # a constant (zeros, ones)
            assert torch.equal(value, reference), key
        else:  # a random draw of the same law
            assert float(value.abs().max()) <= 1.6 * float(reference.abs().max()), key
            assert 0.6 < float(value.std()) / float(reference.std()) < 1.6, key
    for key, value in weights.items():  # every tensor the checkpoint holds is loaded as it was
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    # and a mixer's other tensors stay as they are where nothing marks them loaded (a model built here)
    from seqzoo.models.loading import initialise_anew

    model = tiny_model(preset, seed=1)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    initialise_anew(model, {"missing_keys": dropped[-1:]})
    assert {key for key, value in model.state_dict().items() if not torch.equal(value, before[key])} <= {dropped[-1]}


def test_strict_false_gives_a_misshaped_head_fresh_values_and_a_new_classifier_its_own(tmp_path):
    """A mis-shaped head is re-initialised as a missing one is; a classifier's score, missing from a causal LM's
    checkpoint, keeps the initialisation _init_weights gives it (torch.nn.Linear's uniform scale)."""
    from tests.conftest import tiny_model

    tiny_model("lstm-tiny", tie_word_embeddings=False).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["lm_head.weight"] = torch.zeros(99, 31)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = AutoModelForCausalLM.from_pretrained(tmp_path, strict=False)
    bound = 1 / 32**0.5  # (a new LSTM's untied decoder: torch.nn.Linear's uniform bound)
    head = model.lm_head.weight.detach()
    assert float(head.abs().max()) <= bound and 0.7 < float(head.std()) * 3**0.5 / bound < 1.3
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, strict=False, num_labels=3)
    score = classifier.score.weight.detach()
    bound = 1 / score.shape[1] ** 0.5
    assert float(score.abs().max()) <= bound and 0.7 < float(score.std()) * 3**0.5 / bound < 1.3


# A field, a value away from its default, the config (preset, overrides) of a model that does not read it, and of one
# that does.
MAMBA_ONLY = dict(mixer_types=["mamba", "mamba"], mixer_config={"mamba": {"state_size": 8}})
NO_MLP = dict(mixer_types=["mamba", "attention"], mlp_layers=[False, False])
UNREAD_FIELDS = [
    ("rope_theta", 500.0, ("transformer-tiny", dict(variant="gpt2")), ("transformer-tiny", {})),
    ("rope_theta", 500.0, ("hybrid-tiny", MAMBA_ONLY), ("hybrid-tiny", {})),
    ("rope_theta", 500.0, ("hybrid-tiny", dict(position_embedding="none")), ("hybrid-tiny", {})),
    ("mlp_type", "standard", ("hybrid-tiny", NO_MLP), ("hybrid-tiny", {})),
    ("hidden_act", "gelu", ("hybrid-tiny", NO_MLP), ("hybrid-tiny", {})),
    ("mlp_bias", True, ("hybrid-tiny", NO_MLP), ("hybrid-tiny", {})),
    ("intermediate_size", 48, ("hybrid-tiny", NO_MLP), ("hybrid-tiny", {})),
    ("bidirectional_merge", "sum", ("lstm-tiny", {}), ("lstm-tiny", dict(bidirectional=True))),
    ("norm_before_gate", True, ("mamba2-tiny", dict(rms_norm=False)), ("mamba2-tiny", {})),
    ("initializer_range", 0.1, ("rwkv7-tiny", {}), ("mamba-tiny", {})),  # (RWKV-7: x070's own init)
]


@pytest.mark.parametrize("field, value, unread, reads", UNREAD_FIELDS,
                         ids=[f"{row[0]}-{i}" for i, row in enumerate(UNREAD_FIELDS)])
def test_a_field_the_model_does_not_read_is_refused(field, value, unread, reads):
    """Set where nothing reads it (rope_theta with learned positions, MLP settings on a hybrid without MLPs) the model
    was built without it, silently; where it is read, the same value changes what the model computes."""
    from tests.conftest import tiny_config

    preset, overrides = unread
    with pytest.raises(ValueError, match=rf"{field}={value!r} \(read only by .*\) is not read by a model of "):
        tiny_config(preset, **overrides, **{field: value})
    assert getattr(tiny_config(preset, **overrides), field) != value  # (and at its default it builds)
    preset, overrides = reads
    outputs = []
    for values in (overrides, {**overrides, field: value}):
        torch.manual_seed(0)
        model = AutoModel.from_config(tiny_config(preset, **values)).eval()
        with torch.no_grad():
            outputs.append(model(torch.randint(3, 90, (2, 7))).last_hidden_state)
    assert outputs[0].shape != outputs[1].shape or not torch.allclose(*outputs)


def test_a_loaded_config_with_a_field_its_model_does_not_read_warns_and_a_keyword_beside_it_is_refused(tmp_path,
                                                                                                     caplog):
    from tests.conftest import tiny_model

    model = tiny_model("transformer-tiny", variant="gpt2")
    model.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**values, "rope_theta": 500.0}))
    with caplog.at_level("WARNING", logger="seqzoo"):
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert "sets rope_theta=500.0 (read only by rotary positions" in caplog.text
    ids = torch.randint(3, 90, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    caplog.clear()
    with pytest.raises(ValueError, match=r"rope_theta=1000.0 \(read only by rotary positions.*\) is not read"), \
            caplog.at_level("WARNING", logger="seqzoo"):
        AutoConfig.from_pretrained(tmp_path, rope_theta=1000.0)
    # (only refused: the file's values are warned about as they build the config, and the keyword was not one)
    assert "rope_theta=1000.0" not in caplog.text and "rope_theta=500.0" not in caplog.text


def test_a_keyword_beside_a_config_json_is_checked_as_a_built_config_would_be(tmp_path):
    """transformers drops a keyword that is no attribute of the config (AutoConfig.from_pretrained(path,
    hiden_size=512) gave the file's config without a word) and sets an attribute's value unchecked (hidden_size=-1
    failed only when a model was built)."""
    seqzoo.create_model("gru-tiny").save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"GRUConfig.from_pretrained got unknown keyword argument\(s\) 'hiden_size' "
                                        r"\(did you mean 'hidden_size'\?\), which would be dropped"):
        AutoConfig.from_pretrained(tmp_path, hiden_size=512)
    with pytest.raises(ValueError, match=r"GRUConfig.hidden_size=-1 is invalid: must be >= 1"):
        AutoConfig.from_pretrained(tmp_path, hidden_size=-1)
    # What transformers' own callers ask back is handed back, unchecked here (AutoModel hands it to the model).
    config, unused = AutoConfig.from_pretrained(tmp_path, return_unused_kwargs=True, foo=1)
    assert unused == {"foo": 1}
    with pytest.raises(TypeError, match=r"from_pretrained got unknown keyword argument 'hiden_size' \(did you mean "
                                        r"'hidden_size'\?\)"):
        AutoModelForCausalLM.from_pretrained(tmp_path, hiden_size=512)
    # Loading options and fields go through.
    assert AutoConfig.from_pretrained(tmp_path, revision="main", dropout=0.5).dropout == 0.5
    assert AutoModelForCausalLM.from_pretrained(tmp_path, dropout=0.25).config.dropout == 0.25


@pytest.mark.parametrize(("given", "message"), [
    # transformers read them with .items(): a bare AttributeError, an "unexpected error" in `seqzoo new --set`
    ({"id2label": ["neg", "pos"]}, r"id2label=\['neg', 'pos'\] is invalid: expected a dict such as \{0: 'negative'"),
    ({"label2id": "neg,pos"}, r"label2id='neg,pos' is invalid: expected a dict such as \{'negative': 0"),
    # a name that is no string came back from config.json as another key of label2id ("1" for 1)
    ({"id2label": {0: 1, 1: 0}, "label2id": {1: 0, 0: 1}}, r"each class's name must be a non-empty string"),
    ({"id2label": {0: "", 1: "b"}}, r"each class's name must be a non-empty string"),
    ({"id2label": {0: "a", 1: "a"}}, r"the names of id2label=\{0: 'a', 1: 'a'\} repeat"),
])
def test_label_names_that_are_no_names_are_refused(given, message):
    with pytest.raises(ValueError, match=message):
        seqzoo.get_config("gru-tiny", **given)
    assert seqzoo.get_config("gru-tiny", id2label={0: "a", 1: "b"}).id2label == {0: "a", 1: "b"}


@pytest.mark.parametrize(("preset", "given", "message"), [
    # generate() then asked for a decoder_start_token_id, or handed decoder_input_ids to a forward without them
    ("lstm-tiny", {"is_encoder_decoder": True}, r"LSTMConfig.is_encoder_decoder=True is invalid: a LSTMConfig is a "
                                                r"decoder-only model"),
    ("seq2seq-bahdanau-tiny", {"is_encoder_decoder": False}, r"is_encoder_decoder=False is invalid: a seq2seq model "
                                                              r"is always an encoder-decoder"),
    ("gru-tiny", {"return_dict": "no"}, r"return_dict='no' is invalid: expected true or false"),
    ("mamba-tiny", {"output_hidden_states": [0]}, r"output_hidden_states=\[0\] is invalid: expected true or false"),
    ("gru-tiny", {"chunk_size_feed_forward": 2}, r"chunk_size_feed_forward=2 is invalid: seqzoo's blocks do not "
                                                 r"chunk their feed-forward"),
])
def test_transformers_generic_fields_are_checked(preset, given, message):
    with pytest.raises(ValueError, match=message):
        seqzoo.get_config(preset, **given)
    config = seqzoo.get_config(preset)
    assert config.is_encoder_decoder is preset.startswith("seq2seq")
    assert type(config).from_dict(config.to_dict()).is_encoder_decoder is config.is_encoder_decoder
