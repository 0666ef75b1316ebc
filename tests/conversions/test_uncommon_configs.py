"""Less common config fields through ``convert`` (llama, gpt2, hf-mamba) and ``export`` back, against transformers'
own classes built tiny with random weights, in float64. Each field is set to a value far from its default, and the
test first checks that the peer's logits do depend on it: a converter that ignored the field would fail. (transformers
computes RoPE and its RMSNorms in float32 even in a float64 model, and its Mamba heads return float32 logits, hence
the 5e-5 tolerance.)"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
)

from seqzoo.conversions.export import to_native
from seqzoo.conversions.gpt2 import convert_gpt2
from seqzoo.conversions.hf_mamba import convert_hf_mamba
from seqzoo.conversions.llama import convert_llama

IDS = torch.tensor([[5, 17, 33, 8, 61, 12, 40, 3, 50, 9, 3, 60, 44, 21, 6, 2, 13, 30, 7, 1],
                    [9, 3, 60, 44, 21, 6, 2, 13, 5, 17, 33, 8, 61, 12, 40, 3, 50, 11, 22, 63]])
LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=32, bos_token_id=1, eos_token_id=2)
GPT2 = dict(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=1, eos_token_id=2)
MAMBA = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, state_size=8, conv_kernel=3)
MAMBA2 = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, state_size=8, num_heads=4, head_dim=8, n_groups=1,
              chunk_size=8)
# (transformers classes, base config, convert, export target)
KINDS = {"llama": (LlamaForCausalLM, LlamaConfig, LLAMA, convert_llama, "llama"),
         "gpt2": (GPT2LMHeadModel, GPT2Config, GPT2, convert_gpt2, "gpt2"),
         "mamba": (MambaForCausalLM, MambaConfig, MAMBA, convert_hf_mamba, "mamba"),
         "mamba2": (Mamba2ForCausalLM, Mamba2Config, MAMBA2, convert_hf_mamba, "mamba2")}
CASES = [
    ("llama", dict(num_key_value_heads=2)),
    ("llama", dict(num_key_value_heads=1)),
    ("llama", dict(rope_parameters={"rope_type": "default", "rope_theta": 37.0})),
    ("llama", dict(attention_bias=True)),
    ("llama", dict(mlp_bias=True)),
    ("llama", dict(tie_word_embeddings=True)),
    ("llama", dict(head_dim=4, num_key_value_heads=2)),
    ("llama", dict(head_dim=16)),
    ("llama", dict(rms_norm_eps=0.5)),
    ("llama", dict(hidden_act="gelu_pytorch_tanh")),
    ("gpt2", dict(n_inner=40)),
    ("gpt2", dict(layer_norm_epsilon=0.5)),
    ("gpt2", dict(activation_function="relu")),
    ("gpt2", dict(activation_function="silu")),
    ("gpt2", dict(activation_function="gelu")),
    ("gpt2", dict(tie_word_embeddings=False)),
    ("mamba", dict(use_conv_bias=False)),
    ("mamba", dict(use_bias=True)),
    ("mamba", dict(time_step_rank=3)),
    ("mamba", dict(layer_norm_epsilon=0.5)),
    ("mamba", dict(tie_word_embeddings=False)),
    ("mamba2", dict(n_groups=2)),
    ("mamba2", dict(n_groups=4)),
    ("mamba2", dict(use_conv_bias=False)),
    ("mamba2", dict(use_bias=True)),
    ("mamba2", dict(time_step_limit=(0.05, 0.4))),
    ("mamba2", dict(layer_norm_epsilon=0.5)),
    ("mamba2", dict(chunk_size=7, num_heads=8, head_dim=4)),
]


def peer(kind, **overrides):
    model_class, config_class, base, _, _ = KINDS[kind]
    torch.manual_seed(0)
    model = model_class(config_class(**{**base, **overrides})).double().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("A_log", "dt_bias", ".D")):  # (keep the state-space decay stable)
                continue
            scale = 0.1 if "norm" in name else 0.3  # norms around one, biases and weights around zero
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * scale
            parameter.copy_(noise + 1 if "norm" in name else noise)
    return model


@pytest.mark.parametrize("kind, overrides", CASES, ids=[f"{k}-{'-'.join(map(str, o))}" for k, o in CASES])
def test_convert_and_export_back_keep_the_logits(kind, overrides):
    source = peer(kind, **overrides)
    with torch.no_grad():
        expected = source(IDS).logits.double()
        # the field changes the peer's function (else this case would prove nothing)
        assert (peer(kind)(IDS).logits.double() - expected).abs().max() > 3e-4
        converted = KINDS[kind][3](source).double()
        torch.testing.assert_close(converted(IDS).logits.double(), expected, atol=5e-5, rtol=0)
        back = to_native(converted, KINDS[kind][4]).double()
        assert type(back) is type(source)
        torch.testing.assert_close(back(IDS).logits.double(), expected, atol=5e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_use_cache_false_is_carried_both_ways(kind):
    # A source saved with use_cache: false returns no cache from a plain forward; the converted model and its export
    # back must not start returning one (the llama and gpt2 mappings dropped the field).
    from seqzoo.models.compat import output_cache

    source = peer(kind, use_cache=False)
    converted = KINDS[kind][3](source)
    back = to_native(converted, KINDS[kind][4])
    with torch.no_grad():
        for model in (source, converted, back):
            assert model.config.use_cache is False
            assert output_cache(model(IDS[:, :4])) is None


@pytest.mark.parametrize("kind", KINDS)
def test_the_source_generation_config_is_kept_both_ways(kind, tmp_path):
    # How the source generates (a second end-of-text id, as Llama 3 Instruct's generation_config.json holds, a length)
    # comes with the converted model, from an object or a folder, and goes back with its export; an id outside the
    # vocabulary is dropped as from the config. (convert returned a model generating from its config.json alone, and
    # its save_pretrained, the usage the converters' docstrings show, wrote that.)
    source = peer(kind)
    source.generation_config.eos_token_id = [2, 5, 500]
    source.generation_config.max_new_tokens = 3
    source.save_pretrained(tmp_path)
    for converted in (KINDS[kind][3](source), KINDS[kind][3](tmp_path)):
        assert converted.generation_config.eos_token_id == [2, 5]
        assert converted.generation_config.max_new_tokens == 3
        back = to_native(converted, KINDS[kind][4])
        assert back.generation_config.eos_token_id == [2, 5]
        assert back.generation_config.max_new_tokens == 3
        # Copies: the source object keeps its own ids, and the export's settings are its own, not the model's.
        back.generation_config.max_new_tokens = 9
        assert converted.generation_config.max_new_tokens == 3
    assert source.generation_config.eos_token_id == [2, 5, 500]


@pytest.mark.parametrize("setting", [{"do_sample": "false"}, {"num_beams": 0}, {"max_length": 5.5}])
def test_a_source_folders_generation_setting_of_the_wrong_type_is_refused(setting, tmp_path):
    # As seqzoo's loading refuses it in a saved folder: the converted model took it as it was ("do_sample": "false"
    # sampled, "num_beams": 0 divided by zero in generate()), and its folder, written with it, was refused on loading.
    peer("llama").save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, **setting}))
    name, value = next(iter(setting.items()))
    with pytest.raises(ValueError, match=rf"generation_config.json': {name}={value!r} is invalid: expected"):
        convert_llama(tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_a_source_generation_config_holding_no_token_id_is_refused(kind):
    # (a damaged id was kept as it was: the converted model carried eos_token_id="2")
    source = peer(kind)
    source.generation_config.eos_token_id = "2"
    with pytest.raises(ValueError, match=r"the generation config of .* sets eos_token_id='2': a token id is an"):
        KINDS[kind][3](source)


# Fields that change no logit of the converted model but are part of what it is: dropout for training on, the init
# scale of weights made later (resized embeddings, a new head), the context length a server reads, the time-step
# init. Each set away from transformers' default; an embd_pdrop other than resid_pdrop has no seqzoo field (one
# dropout, resid_pdrop's, with a warning), so only resid_pdrop and attn_pdrop are compared for it.
CARRIED = {"llama": dict(attention_dropout=0.25, initializer_range=0.05, max_position_embeddings=48),
           "gpt2": dict(resid_pdrop=0.2, embd_pdrop=0.15, attn_pdrop=0.3, initializer_range=0.05, n_positions=40),
           "mamba": dict(time_step_min=0.002, time_step_max=0.2, time_step_floor=2e-4, time_step_scale=0.5,
                         time_step_init_scheme="constant", initializer_range=0.05, rescale_prenorm_residual=True),
           "mamba2": dict(time_step_min=0.002, time_step_max=0.2, time_step_floor=2e-4, initializer_range=0.05,
                          rescale_prenorm_residual=True)}


@pytest.mark.parametrize("kind", KINDS)
def test_fields_that_change_no_logit_are_carried_both_ways(kind):
    # (the llama mapping dropped attention_dropout, initializer_range and max_position_embeddings: the converted model
    # trained without the source's attention dropout, and its export told a server another context length)
    source = peer(kind, **CARRIED[kind])
    back = to_native(KINDS[kind][3](source), KINDS[kind][4])
    for field in CARRIED[kind]:
        if field != "embd_pdrop":
            assert getattr(back.config, field) == getattr(source.config, field), field
