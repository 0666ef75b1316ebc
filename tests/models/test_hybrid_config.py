"""HybridConfig: the defaults its docstring promises, the config each mixer is built from, the sizes it reports, and
bad values refused with a message that names the field, the value and what is allowed; and what the model makes of
the shared fields (initialisation, dropout)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import seqzoo
from seqzoo.models.compat import output_cache
from seqzoo.models.hybrid import HybridConfig

ATTENTION = {"attention": {"num_attention_heads": 2}}


def test_defaults_are_a_jamba_like_stack_with_the_transformers_mlp_width():
    config = HybridConfig()
    assert config.mixer_types == ["mamba", "mamba", "mamba", "attention"] * 2
    assert config.num_hidden_layers == 8 and config.mlp_layers == [True] * 8  # an MLP after every mixer, as in Jamba
    # "intermediate_size: MLP width (default as the Transformer's)", for either MLP and sizes that do and do not
    # round (8/3 * 96 = 256 is a multiple of 32; 8/3 * 100 = 266 rounds up to 288).
    for hidden_size in (96, 100, 256):
        for mlp_type in ("gated", "standard"):
            ours = HybridConfig(hidden_size=hidden_size, mlp_type=mlp_type, mixer_config=ATTENTION)
            theirs = seqzoo.TransformerConfig(hidden_size=hidden_size, mlp_type=mlp_type, num_attention_heads=2)
            assert ours.intermediate_size == theirs.intermediate_size, (hidden_size, mlp_type)
    assert HybridConfig(hidden_size=100, mixer_config=ATTENTION).intermediate_size == 288


def test_a_mixers_settings_count_the_layers_of_its_kind_and_take_the_shared_fields():
    config = HybridConfig(hidden_size=32, vocab_size=99, mixer_types=["attention", "rwkv7", "mamba", "rwkv7"],
                          mixer_config={"rwkv7": {"head_size": 16}, **ATTENTION}, initializer_range=0.05)
    rwkv7 = config.mixer_settings("rwkv7")
    assert rwkv7.num_hidden_layers == 2 and config.mixer_settings("attention").num_hidden_layers == 1
    assert (rwkv7.hidden_size, rwkv7.vocab_size, rwkv7.head_size) == (32, 99, 16)
    # (RWKV-7 reads no initializer_range, so its config keeps the default: the hybrid's value is the hybrid's own)
    assert config.mixer_settings("mamba").initializer_range == 0.05 and rwkv7.initializer_range == 0.02


def test_mlp_settings_are_read_where_only_some_layers_have_an_mlp():
    # Only a hybrid without any MLP refuses them as unread (tests/test_bad_input.py).
    config = HybridConfig(hidden_size=32, mixer_types=["mamba", "attention"], mlp_layers=[True, False],
                          mlp_type="standard", hidden_act="gelu", mlp_bias=True, intermediate_size=48,
                          mixer_config=ATTENTION)
    assert (config.mlp_type, config.hidden_act, config.mlp_bias, config.intermediate_size) == (
        "standard", "gelu", True, 48)


def test_layer_lists_may_be_tuples():
    # A tuple of mixer names was taken, a tuple of MLP flags refused as "not one true/false per layer".
    config = HybridConfig(hidden_size=32, mixer_types=("mamba", "gru"), mlp_layers=(True, False))
    assert config.mixer_types == ["mamba", "gru"] and config.mlp_layers == [True, False]
    assert HybridConfig.from_dict(config.to_dict()).mlp_layers == [True, False]


BAD_LAYER_LISTS = {
    "a-name-no-string": (dict(mixer_types=["mamba", 3]),
                         r"mixer_types=\['mamba', 3\] is invalid: expected a non-empty list of mixer names, one per "
                         r"layer"),
    "fewer-layers": (dict(mixer_types=["mamba", "mamba"], num_hidden_layers=1),
                     r"num_hidden_layers=1 is invalid: mixer_types names 2 layers"),
    "unknown-mixer": (dict(mixer_types=["mamba", "mambaa"]),
                      r"mixer_types\[1\]: .*unknown mixer 'mambaa' \(did you mean 'mamba'\?\)"),
    "settings-no-mapping": (dict(mixer_types=["mamba"], mixer_config={"mamba": 16}),
                            r"mixer_config=\{'mamba': 16\} is invalid: expected a mapping from mixer name to a mapping "
                            r"of its settings"),
    "flags-no-bools": (dict(mixer_types=["mamba", "mamba"], mlp_layers=[1, 0]),
                       r"mlp_layers=\[1, 0\] is invalid: expected one true/false per layer \(2\)"),
    "flags-too-many": (dict(mixer_types=["mamba", "mamba"], mlp_layers=[True, True, True]),
                       r"mlp_layers=\[True, True, True\] is invalid: expected one true/false per layer \(2\)"),
}


@pytest.mark.parametrize("values, message", BAD_LAYER_LISTS.values(), ids=BAD_LAYER_LISTS.keys())
def test_bad_layer_lists_are_refused_by_name(values, message):
    with pytest.raises(ValueError, match=message):
        HybridConfig(hidden_size=32, **values)


@pytest.mark.parametrize("field, value, allowed", [
    ("mlp_type", "swiglu", "allowed values are 'gated', 'standard'"),
    ("intermediate_size", 0, "must be >= 1"),
    ("hidden_act", "tanh", "allowed values are 'relu', 'gelu', 'gelu_new', 'gelu_pytorch_tanh', 'silu', 'swish'"),
    ("mlp_bias", 1, "expected true or false"),
    ("norm_type", "batchnorm", "allowed values are 'rmsnorm', 'layernorm'"),
    ("norm_eps", 0.0, r"must be > 0.0"),
    ("position_embedding", "alibi", "allowed values are 'rope', 'none'"),
    ("rope_theta", 0.0, r"must be > 0.0"),
    ("dropout", 1.5, r"must be a probability in \[0, 1\]"),
])
def test_bad_fields_are_refused_naming_the_value_and_what_is_allowed(field, value, allowed):
    with pytest.raises(ValueError, match=rf"HybridConfig.{field}={value!r} is invalid: {allowed}"):
        HybridConfig(hidden_size=32, mixer_config=ATTENTION, **{field: value})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_sizes_a_hybrid_reports_are_what_its_cache_holds(dtype):
    # What the model card, `seqzoo list` and the lab report. Two layers of a kind, so that a count dropped shows; a
    # GRU, whose state is in the model's dtype (Mamba keeps its own in float32).
    config = HybridConfig(vocab_size=99, hidden_size=32,
                          mixer_types=["attention", "mamba", "attention", "mamba", "gru"],
                          mixer_config={"attention": {"num_attention_heads": 4, "num_key_value_heads": 2}})
    model = seqzoo.HybridForCausalLM(config).eval().to(dtype)
    batch, length = 3, 5
    with torch.no_grad():
        cache = output_cache(model(torch.randint(3, 90, (batch, length)), use_cache=True))
    kv_bytes = state_bytes = 0
    for idx in range(config.num_hidden_layers):
        layer = cache.layer(idx)
        if isinstance(layer, dict):  # a recurrent state: (batch, ...) tensors
            state_bytes += sum(t[0].numel() * t.element_size() for t in layer.values())
        else:  # transformers' K/V layer: (batch, kv_heads, length, head_dim) each
            kv_bytes += (layer.keys.nbytes + layer.values.nbytes) // (batch * length)
    assert kv_bytes == config.kv_bytes_per_token(dtype.itemsize) == 2 * 2 * 2 * 8 * dtype.itemsize
    assert state_bytes == config.state_bytes_per_sequence(dtype.itemsize)


def test_each_mixer_is_built_as_a_layer_of_a_model_of_its_own_kind():
    # "its layer index is its position among them": RWKV-7's depth-dependent init (and its value residual, made by
    # the first time mix) follow the index among the rwkv7 layers, not among all layers. A second rwkv7 layer taken
    # as the model's fourth read a depth of 3 in a model of 2, and one after an attention layer waited for a value
    # residual no layer made.
    settings = {"rwkv7": {"head_size": 16}, **ATTENTION}
    hybrid = seqzoo.HybridForCausalLM(HybridConfig(vocab_size=99, hidden_size=32, mixer_config=settings,
                                                   mixer_types=["attention", "rwkv7", "mamba", "rwkv7"])).eval()
    alone = seqzoo.RWKV7ForCausalLM(seqzoo.RWKV7Config(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                                       head_size=16))
    for ours, theirs in ((hybrid.model.layers[1].mixer, alone.model.layers[0].attn),
                         (hybrid.model.layers[3].mixer, alone.model.layers[1].attn)):
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "ln_x.weight"):  # (not random)
            torch.testing.assert_close(ours.get_parameter(name), theirs.get_parameter(name), msg=name)
    with torch.no_grad():
        assert torch.isfinite(hybrid(torch.tensor([[5, 17, 33, 8]])).logits).all()


def test_dropout_falls_on_the_embeddings_and_on_each_residual_branch_in_training_only():
    # "dropout: on the embeddings and the residual branches". A dropped entry is an exact zero: in the embeddings
    # (the first layer's input), and in a branch, where the layer's output equals its input.
    config = HybridConfig(vocab_size=99, hidden_size=32, mixer_types=["mamba", "mamba"], mlp_layers=[True, False],
                          dropout=0.5)
    model = seqzoo.HybridForCausalLM(config)
    ids = torch.randint(3, 90, (4, 9))
    embeds = model.model.embed_tokens(ids)
    for training in (True, False):
        model.train(training)
        torch.manual_seed(0)
        with torch.no_grad():
            first, second = model.model(ids, output_hidden_states=True).hidden_states[:2]
        unchanged = (second == first).float().mean()
        if training:
            dropped = first == 0
            assert 0.3 < dropped.float().mean() < 0.7
            torch.testing.assert_close(first[~dropped], 2 * embeds[~dropped])  # (kept entries scaled by 1 / (1 - p))
            assert unchanged > 0.1  # both branches of the first layer dropped there (about a quarter)
        else:
            torch.testing.assert_close(first, embeds)
            assert unchanged == 0


def test_weights_start_as_jambas_and_a_tensor_missing_from_a_checkpoint_starts_so_too(tmp_path):
    # "As Jamba does: normal embeddings, MLPs and heads, unit norms" (zero biases), with the config's
    # initializer_range; the mixers initialise themselves. Loaded leniently without them, a norm, a bias and a
    # projection get the same fresh values, not whatever memory the loader allocated.
    config = HybridConfig(vocab_size=99, hidden_size=64, mixer_types=["mamba", "attention"], mlp_bias=True,
                          norm_type="layernorm", initializer_range=0.1, tie_word_embeddings=False,
                          mixer_config={"attention": {"num_attention_heads": 4}})
    torch.manual_seed(0)
    model = seqzoo.HybridForCausalLM(config)
    mlp = model.model.layers[1].mlp
    for weight in (model.model.embed_tokens.weight, model.lm_head.weight, mlp.gate_proj.weight, mlp.down_proj.weight):
        assert 0.09 < float(weight.detach().std()) < 0.11 and abs(float(weight.detach().mean())) < 0.01
    assert not mlp.up_proj.bias.any() and not model.model.norm.bias.any() and bool((model.model.norm.weight == 1).all())
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    missing = ("model.layers.1.mlp_norm.weight", "model.layers.1.mlp.up_proj.bias", "model.layers.1.mlp.up_proj.weight")
    for name in missing:
        del weights[name]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = seqzoo.HybridForCausalLM.from_pretrained(tmp_path, strict=False)
    layer = loaded.model.layers[1]
    assert bool((layer.mlp_norm.weight == 1).all()) and not layer.mlp.up_proj.bias.any()
    assert 0.09 < float(layer.mlp.up_proj.weight.detach().std()) < 0.11


def test_a_mamba2_eps_nothing_reads_in_a_hybrid_is_refused_and_warned_about_in_a_saved_config(tmp_path, caplog):
    """In a hybrid the blocks' norms read norm_eps: a Mamba-2 mixer's layer_norm_epsilon is its gated RMSNorm's alone,
    and with rms_norm=False nothing read it (the same logits as without it)."""
    import json

    from transformers import AutoConfig

    mamba2 = {"head_dim": 8, "state_size": 4, "rms_norm": False}
    values = dict(vocab_size=20, hidden_size=16, mixer_types=["mamba2"])
    with pytest.raises(ValueError, match=r"mixer_config\['mamba2'\]\.layer_norm_epsilon=0\.5 is not read: in a hybrid "
                                         r"it is the eps of Mamba-2's gated RMSNorm alone"):
        seqzoo.HybridConfig(**values, mixer_config={"mamba2": {**mamba2, "layer_norm_epsilon": 0.5}})
    seqzoo.HybridConfig(**values, mixer_config={"mamba2": {**mamba2, "rms_norm": True, "layer_norm_epsilon": 0.5}})
    seqzoo.HybridConfig(**values, mixer_config={"mamba2": mamba2}).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["mixer_config"]["mamba2"]["layer_norm_epsilon"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with caplog.at_level("WARNING", logger="seqzoo"):
        assert AutoConfig.from_pretrained(tmp_path).mixer_types == ["mamba2"]
    assert "layer_norm_epsilon=0.5 is not read" in caplog.text
