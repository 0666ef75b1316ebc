"""``seqzoo convert llama|gpt2`` from folders, and ``seqzoo export --to llama|gpt2|mamba|mamba2`` back: sharded
safetensors, dtypes, tokenizer files, the CLI, and clear refusals. (Logit parity of the mappings with transformers'
own classes is tests/models/test_transformer_reference.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

import seqzoo
from seqzoo.cli import main as seqzoo_main
from seqzoo.conversions.checkpoints import read_folder_weights
from seqzoo.conversions.export import export_native, to_native
from seqzoo.conversions.gpt2 import convert_gpt2, convert_gpt2_folder
from seqzoo.conversions.hf_mamba import convert_hf_mamba
from seqzoo.conversions.llama import convert_llama
from tests.conftest import tiny_model
from tests.models.test_transformer_reference import IDS, gpt2, llama, qwen2, randomize

TOKENIZER_CONFIG = {"model_max_length": 64, "tokenizer_class": "PreTrainedTokenizerFast"}


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits.float()


def save_sharded(model, folder, dtype=torch.float32):
    model.to(dtype).save_pretrained(folder, max_shard_size="20KB")
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    assert (folder / "model.safetensors.index.json").is_file(), "the test needs a sharded checkpoint"


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_sharded_folder_through_the_cli(kind, tmp_path):
    peer = llama() if kind == "llama" else gpt2()
    save_sharded(peer, tmp_path / "src")
    assert seqzoo_main(["convert", kind, str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(loaded) is seqzoo.TransformerForCausalLM and loaded.config.variant == kind
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text()) == TOKENIZER_CONFIG
    torch.testing.assert_close(logits(loaded), logits(peer), atol=2e-5, rtol=1e-5)


def test_reader_is_lazy_over_shards(tmp_path):
    save_sharded(llama(), tmp_path)
    weights = read_folder_weights(tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert sorted(weights) == sorted(index) and len(set(index.values())) > 2
    first = next(iter(weights))
    assert torch.equal(weights[first], load_file(tmp_path / index[first])[first])


@pytest.mark.parametrize("index, message", [
    ("{not json", r"is not a checkpoint index \(a JSON object with a 'weight_map'\): Expecting"),
    ({"metadata": {}}, r"is not a checkpoint index \(a JSON object with a 'weight_map'\): 'weight_map'"),
    # these two failed with an AttributeError / TypeError from inside the reader
    ({"weight_map": ["a"]}, r"its weight_map must map tensor names to shard file names, got a list$"),
    ({"weight_map": {"a": None}}, r"its weight_map must map tensor names to shard file names, got 'a': None$"),
    ({"weight_map": {"a": "model-2.safetensors"}},
     r"names shard files that are not in its folder: 'model-2.safetensors'; save or download the checkpoint again$"),
    # (json read the tensor from the shard named last)
    ('{"weight_map": {"a": "model-2.safetensors", "a": "model-1.safetensors"}}',
     r"is not a checkpoint index \(a JSON object with a 'weight_map'\): key 'a' is given twice in one object"),
], ids=["not-json", "no-weight-map", "list", "null-shard", "absent-shard", "key-twice"])
def test_a_damaged_index_is_named(index, message, tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "model-1.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    with pytest.raises(ValueError, match=message):
        read_folder_weights(tmp_path)


def test_a_source_config_giving_a_key_twice_is_refused(tmp_path):
    """json (and transformers' AutoConfig) read the last value: a source's rms_norm_eps edited below the saved one
    converted silently with the second."""
    llama().save_pretrained(tmp_path / "src")
    path = tmp_path / "src" / "config.json"
    values = json.loads(path.read_text())
    path.write_text(json.dumps(values)[:-1] + f', "rms_norm_eps": {values["rms_norm_eps"] * 10}}}')
    with pytest.raises(ValueError, match=r"cannot read config '.*config\.json': key 'rms_norm_eps' is given twice"):
        convert_llama(tmp_path / "src")


def test_an_index_naming_the_wrong_shard_of_a_tensor_is_named_when_it_is_read(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "model-1.safetensors")
    save_file({"b": torch.zeros(2)}, tmp_path / "model-2.safetensors")
    index = {"weight_map": {"a": "model-2.safetensors", "b": "model-2.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    weights = read_folder_weights(tmp_path)
    assert torch.equal(weights["b"], torch.zeros(2))
    with pytest.raises(ValueError, match=r"cannot read tensor 'a' from '.*model-2.safetensors'"):
        weights["a"]


def test_dtype_is_kept_unless_asked(tmp_path):
    save_sharded(gpt2(), tmp_path / "bf16", dtype=torch.bfloat16)
    assert convert_gpt2(tmp_path / "bf16").dtype == torch.bfloat16
    assert seqzoo_main(["convert", "gpt2", str(tmp_path / "bf16"), str(tmp_path / "out"), "--dtype", "float32"]) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").dtype == torch.float32


def test_dtype_is_a_floating_point_torch_dtype_or_its_name(tmp_path):
    # The Python API takes the names --dtype takes; any other value is refused before anything is read or written
    # (a name reached Tensor.to as a device, "Invalid device string: 'bfloat16'", after every tensor was read).
    peer = gpt2()
    torch.testing.assert_close(logits(convert_gpt2(peer, dtype="bfloat16")),
                               logits(convert_gpt2(peer, dtype=torch.bfloat16)), rtol=0, atol=0)
    assert convert_llama(llama(), dtype="float16").dtype == torch.float16
    for bad in ("float64", "bf16", torch.int8, torch.bool, 16, torch.float8_e4m3fn, torch.float8_e5m2, [1]):
        with pytest.raises(ValueError, match=r"dtype=.* is not a dtype to convert to; .*float64.* 'bfloat16'"):
            convert_gpt2(peer, dtype=bad)
    save_sharded(peer, tmp_path / "src")
    with pytest.raises(ValueError, match=r"dtype='half' is not a dtype to convert to"):
        convert_gpt2_folder(tmp_path / "src", tmp_path / "out", dtype="half")
    assert not (tmp_path / "out").exists()


def test_a_model_whose_weights_are_elsewhere_is_named(tmp_path):
    # An offloaded model (device_map) keeps weights on the meta device; converting it failed with "Tensor.item()
    # cannot be called on meta tensors". Its folder converts.
    peer = llama()
    peer.model.layers[1].mlp.to("meta")
    with pytest.raises(ValueError, match=r"the llama source holds tensors without values \(on the meta device\): "
                                         r"model.layers.1.mlp.gate_proj.weight, model.layers.1.mlp.up_proj.weight, "
                                         r"model.layers.1.mlp.down_proj.weight; .* convert the folder it was loaded "
                                         r"from"):
        convert_llama(peer)
    with torch.device("meta"):
        mamba = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, state_size=4, num_hidden_layers=1))
    with pytest.raises(ValueError, match=r"the mamba source holds tensors without values \(on the meta device\): "
                                         r"model.embed_tokens.weight, "):
        convert_hf_mamba(mamba)  # (NotImplementedError for aten::equal, comparing the head)
    offloaded = tiny_model("transformer-tiny")
    offloaded.model.layers[0].mlp.to("meta")
    with pytest.raises(ValueError, match=r"the TransformerForCausalLM holds tensors without values \(on the meta "
                                         r"device\): model.layers.0.mlp.gate_proj.weight, "):
        to_native(offloaded, "llama")  # (RuntimeError: "conversion left tensors without values")


def test_a_model_holding_peft_adapters_is_refused_with_the_merge(tmp_path):
    # (refused as "got PeftModel", or with its adapter weights named missing and unexpected tensors)
    from peft import LoraConfig, get_peft_model

    peer = llama()
    adapted = get_peft_model(peer, LoraConfig(target_modules=["q_proj"], r=2))
    for source, name in ((adapted, "PeftModel"), (adapted.base_model.model, "LlamaForCausalLM")):
        with pytest.raises(ValueError, match=rf"{name} holds peft adapter layers \(.*Linear.*\); merge them into its "
                                             r"weights first \(a PeftModel's model.merge_and_unload\(\)\)"):
            convert_llama(source)
    torch.testing.assert_close(logits(convert_llama(adapted.merge_and_unload())), logits(llama()), rtol=0, atol=0)
    # the same for an export (load_state_dict's RuntimeError, or "is not a saved seqzoo model folder")
    ours = get_peft_model(tiny_model("transformer-tiny"), LoraConfig(target_modules=["q_proj"], r=2))
    for source in (ours, ours.base_model.model):
        with pytest.raises(ValueError, match=r"holds peft adapter layers .*merge_and_unload"):
            to_native(source, "llama")
        with pytest.raises(ValueError, match=r"holds peft adapter layers .*merge_and_unload"):
            export_native(source, tmp_path / "out", "llama")


def test_a_compiled_model_converts_and_exports_as_the_model_it_compiles(tmp_path):
    # torch.compile's wrapper was refused as "source must be a transformers model ...; got OptimizedModule" (convert),
    # "a OptimizedModule is none (a backbone ...)" (to_native) and "is not a saved seqzoo model folder" (export)
    peer = llama()
    converted = convert_llama(torch.compile(peer, backend="eager"))
    torch.testing.assert_close(logits(converted), logits(peer), rtol=0, atol=0)
    ours = tiny_model("transformer-tiny")
    native = to_native(torch.compile(ours, backend="eager"), "llama")
    assert type(native) is LlamaForCausalLM and not any(k.startswith("_orig_mod") for k in native.state_dict())
    torch.testing.assert_close(logits(native), logits(ours), rtol=0, atol=0)
    export_native(torch.compile(ours, backend="eager"), tmp_path / "out", "llama")
    torch.testing.assert_close(logits(LlamaForCausalLM.from_pretrained(tmp_path / "out")), logits(ours), rtol=0, atol=0)


def test_original_gpt2_layout_without_prefix(tmp_path):
    # The OpenAI-era files have no "transformer." prefix and carry the attention-mask buffers.
    peer = gpt2()
    peer.save_pretrained(tmp_path)
    weights = {k.removeprefix("transformer."): v for k, v in load_file(tmp_path / "model.safetensors").items()}
    weights["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    weights["h.1.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    torch.testing.assert_close(logits(convert_gpt2(tmp_path)), logits(peer), atol=2e-5, rtol=1e-5)
    # only those buffers are passed over: another tensor of an attention layer (an adapter saved unmerged) is named
    weights["h.1.attn.c_attn.lora_A.weight"] = torch.zeros(4, 32)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected tensors h\.1\.attn\.c_attn\.lora_A\.weight"):
        convert_gpt2(tmp_path)


def test_converted_model_does_not_share_memory_with_the_source():
    peer = llama()
    model = convert_llama(peer)
    before = logits(peer)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    torch.testing.assert_close(logits(peer), before, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: llama(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
         r"rope_parameters.rope_type='linear'"),
        (lambda: randomize(MistralForCausalLM(MistralConfig(vocab_size=99, hidden_size=32, intermediate_size=40,
                                                            num_hidden_layers=1, num_attention_heads=4,
                                                            num_key_value_heads=2, sliding_window=16))),
         r"sliding_window=16.*set sliding_window to null"),
        # Qwen2 slides only where use_sliding_window is set (from layer max_window_layers on)
        (lambda: qwen2(use_sliding_window=True, sliding_window=4, max_window_layers=0), r"sliding_window=4"),
        (lambda: llama(hidden_act="gelu_fast"), r"hidden_act='gelu_fast'"),
        (lambda: gpt2(scale_attn_weights=False), r"scale_attn_weights=False"),
        (lambda: gpt2(scale_attn_by_inverse_layer_idx=True), r"scale_attn_by_inverse_layer_idx=True"),
        (lambda: gpt2(activation_function="quick_gelu"), r"activation_function='quick_gelu'; seqzoo's Transformer "
                                                         r"supports relu, gelu"),
    ],
    ids=["rope-scaling", "sliding-window", "qwen2-sliding-window", "activation", "unscaled-attention",
         "layer-scaled-attention", "gpt2-activation"],
)
def test_what_does_not_map_is_refused_naming_the_field(make, message):
    peer = make()
    convert = convert_gpt2 if peer.config.model_type == "gpt2" else convert_llama
    with pytest.raises(ValueError, match=message):
        convert(peer)


def test_mistral_without_window_converts():
    peer = randomize(MistralForCausalLM(MistralConfig(vocab_size=99, hidden_size=32, intermediate_size=40,
                                                      num_hidden_layers=2, num_attention_heads=4,
                                                      num_key_value_heads=2, sliding_window=None)))
    torch.testing.assert_close(logits(convert_llama(peer)), logits(peer), atol=2e-5, rtol=1e-5)


def test_bad_tensors_and_wrong_sources_are_named(tmp_path):
    llama().save_pretrained(tmp_path / "bad")
    weights = load_file(tmp_path / "bad" / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    weights["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 32)
    weights["model.layers.0.extra.weight"] = torch.zeros(3)
    weights["model.layers.1.self_attn.q_norm.weight"] = torch.ones(8)  # (a Qwen3's, beside the buffers left out)
    save_file(weights, tmp_path / "bad" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError) as err:
        convert_llama(tmp_path / "bad")
    text = str(err.value)
    assert "missing tensors model.layers.1.mlp.up_proj.weight" in text
    assert "unexpected tensors model.layers.0.extra.weight, model.layers.1.self_attn.q_norm.weight" in text
    assert "model.layers.0.self_attn.k_proj.weight (source (8, 32), expected (16, 32))" in text
    with pytest.raises(ValueError, match="cannot convert a 'gpt2' model with convert llama"):
        convert_llama(gpt2())
    (tmp_path / "broken").mkdir()
    llama().config.save_pretrained(tmp_path / "broken")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors.*as safetensors"):
        convert_llama(tmp_path / "broken")
    # a mistyped folder is tried as a Hub repo id (a path is no valid one: refused without going online)
    with pytest.raises(ValueError, match=r"'.*typo' is neither a local folder nor a downloadable Hub repo"):
        convert_llama(tmp_path / "typo")
    with pytest.raises(ValueError, match=r"source must be a transformers model, a folder or a Hub repo id; got "
                                         r"OrderedDict"):
        convert_llama(llama().state_dict())


@pytest.mark.parametrize("kind", ["llama", "gpt2", "hf-mamba"])
def test_a_file_given_as_the_source_folder_is_named_without_a_hub_lookup(kind, tmp_path, capsys, monkeypatch):
    # (it was looked up as a Hub repo id: five retries offline, then "neither a local folder nor a downloadable Hub
    # repo" with huggingface_hub's own text)
    from seqzoo.conversions import checkpoints

    monkeypatch.setattr(checkpoints, "download", lambda repo_id: pytest.fail(f"looked up {repo_id!r} on the Hub"))
    (tmp_path / "notes.txt").write_text("not a model")
    assert seqzoo_main(["convert", kind, str(tmp_path / "notes.txt"), str(tmp_path / "out")]) == 2
    assert f"error: '{tmp_path / 'notes.txt'}' is a file; give the folder that holds the model's config.json and " \
           "weights, or its Hub repo id" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_tied_folder_saved_without_its_head_converts(tmp_path):
    # save_pretrained stores a tied head once, as the embedding (Qwen2-0.5B's folder has no lm_head.weight)
    peer = qwen2()
    peer.save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    model = convert_llama(tmp_path)
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    torch.testing.assert_close(logits(model), logits(peer), atol=2e-5, rtol=1e-5)


def test_a_bias_one_layer_lacks_is_named_not_taken_as_zero():
    # Qwen2 saves no o_proj bias in any layer (zeros compute the same); a k_proj bias that layer 0 has and layer 1
    # lacks is a damaged checkpoint, which converted with a zero bias there, silently
    peer = qwen2()
    peer.model.layers[1].self_attn.k_proj.bias = None
    with pytest.raises(ValueError, match=r"do not fit a Llama-family model of its config: missing tensors "
                                         r"model.layers.1.self_attn.k_proj.bias$"):
        convert_llama(peer)


@pytest.mark.parametrize("flags", [dict(attention_bias=False), dict(mlp_bias=False),
                                   dict(attention_bias=False, mlp_bias=False)])
def test_bias_tensors_a_llama_config_turns_off_are_left_out_as_transformers_does(flags, tmp_path, caplog):
    """config.json says attention_bias (mlp_bias) false, the weights still hold those biases: transformers' Llama has
    no biases there and leaves the tensors unloaded; seqzoo turned the biases on from the tensors, silently."""
    llama(attention_bias=True, mlp_bias=True).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **flags}))
    peer = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with caplog.at_level("WARNING", logger="seqzoo"):
        converted = convert_llama(tmp_path)
    assert (converted.config.attention_bias, converted.config.mlp_bias) == (
        flags.get("attention_bias", True), flags.get("mlp_bias", True))
    torch.testing.assert_close(logits(converted), logits(peer), atol=2e-5, rtol=1e-5)
    said = " and ".join(f"{flag}=False" for flag in flags)
    assert f"its config has {said}, but its weights hold bias tensors (model.layers.0." in caplog.text
    projection = "self_attn.q_proj" if "attention_bias" in flags else "mlp.up_proj"
    assert f"model.layers.1.{projection}.bias" in caplog.text


def test_bias_tensors_of_a_llama_config_without_the_flags_are_left_out_as_transformers_does(tmp_path, caplog):
    """A config.json written before transformers had attention_bias / mlp_bias: transformers reads them as off, and
    its Llama leaves the bias tensors unloaded; the tensors decided, and the logits differed by 0.4."""
    llama(attention_bias=True, mlp_bias=True).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["attention_bias"], config["mlp_bias"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    _biases_left_out_as_by(LlamaForCausalLM, tmp_path, caplog,
                           "its config has no attention_bias (off) and no mlp_bias (off), but its weights hold bias")


def _biases_left_out_as_by(peer_class, folder, caplog, said: str) -> None:
    """The folder's bias tensors are left out, as ``peer_class`` leaves them, and the log says ``said``."""
    peer = peer_class.from_pretrained(folder).eval()
    with caplog.at_level("WARNING", logger="seqzoo"):
        converted = convert_llama(folder)
    assert (converted.config.attention_bias, converted.config.mlp_bias) == (False, False)
    torch.testing.assert_close(logits(converted), logits(peer), atol=2e-5, rtol=1e-5)
    assert said in caplog.text


def test_bias_tensors_of_a_mistral_are_left_out_as_transformers_does(tmp_path, caplog):
    """Mistral's config has no bias flags and transformers' Mistral no biases: bias tensors in its weights are left
    unloaded there, and must be left out here too (taken from the tensors, the logits differed)."""
    source = randomize(MistralForCausalLM(MistralConfig(vocab_size=99, hidden_size=32, intermediate_size=40,
                                                        num_hidden_layers=2, num_attention_heads=4,
                                                        num_key_value_heads=2, sliding_window=None)))
    source.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    generator = torch.Generator().manual_seed(3)
    for i in range(2):
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj"):
            rows = weights[f"model.layers.{i}.{name}.weight"].shape[0]
            weights[f"model.layers.{i}.{name}.bias"] = torch.randn(rows, generator=generator)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _biases_left_out_as_by(MistralForCausalLM, tmp_path, caplog, "as transformers' MistralForCausalLM leaves them out")


def test_biases_decide_where_the_config_has_no_flag(tmp_path, caplog):
    # Qwen2's config has no attention_bias (its q/k/v biases are always on), whatever a config.json sets
    peer = qwen2()
    peer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "attention_bias": False}))
    with caplog.at_level("WARNING", logger="seqzoo"):
        converted = convert_llama(tmp_path)
    assert converted.config.attention_bias and "bias tensors" not in caplog.text
    torch.testing.assert_close(logits(converted), logits(peer), atol=2e-5, rtol=1e-5)


def test_a_qwen2_window_from_past_its_last_layer_converts():
    """use_sliding_window with max_window_layers >= num_hidden_layers: transformers computes every layer with full
    attention (layer_types), and the conversion was refused for the window no layer has."""
    peer = qwen2(use_sliding_window=True, sliding_window=4, max_window_layers=2)
    assert peer.config.layer_types == ["full_attention", "full_attention"]
    assert IDS.shape[1] > 4  # (a window would show)
    torch.testing.assert_close(logits(convert_llama(peer)), logits(peer), atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"sliding_window=4 in layers 1 \(layer_types\); seqzoo's Transformer"):
        convert_llama(qwen2(use_sliding_window=True, sliding_window=4, max_window_layers=1))


@pytest.mark.parametrize("command, config, field, value", [
    ("llama", lambda: llama().config, "hidden_size", "32"),
    ("gpt2", lambda: gpt2().config, "layer_norm_epsilon", "1e-5"),
    ("hf-mamba", lambda: MambaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2), "hidden_size", "32"),
])
def test_wrongly_typed_config_field_is_a_user_error(command, config, field, value, tmp_path, capsys):
    config().save_pretrained(tmp_path / "src")
    data = json.loads((tmp_path / "src" / "config.json").read_text())
    data[field] = value
    (tmp_path / "src" / "config.json").write_text(json.dumps(data))
    assert seqzoo_main(["convert", command, str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and f"field '{field}'" in err and "unexpected" not in err

# ---- export ---------------------------------------------------------------------------------------------------


EXPORTS = {
    "llama": ("transformer-tiny", dict(num_key_value_heads=2, attention_bias=True), LlamaForCausalLM),
    "gpt2": ("transformer-gpt2-small", dict(num_key_value_heads=2, tie_word_embeddings=False), GPT2LMHeadModel),
    "mamba": ("mamba-tiny", {}, MambaForCausalLM),
    "mamba2": ("mamba2-tiny", dict(n_groups=2), Mamba2ForCausalLM),
}


@pytest.mark.parametrize("target", sorted(EXPORTS))
def test_export_loads_in_transformers_with_the_same_logits(target, tmp_path):
    preset, overrides, native_class = EXPORTS[target]
    model = randomize(tiny_model(preset, **overrides), seed=4, scale=0.2)
    model.save_pretrained(tmp_path / "seqzoo")
    (tmp_path / "seqzoo" / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    assert seqzoo_main(["export", "--to", target, str(tmp_path / "seqzoo"), str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "auto_map" not in config and not config["model_type"].startswith("seqzoo")
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()
    native = native_class.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(native), logits(model), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(logits(to_native(model, target)), logits(model), atol=2e-5, rtol=1e-5)


def test_a_model_without_biases_exports_to_gpt2_with_zero_biases():
    # GPT-2 has a bias on every projection; those seqzoo's model lacks are zeros in the export
    model = randomize(tiny_model("transformer-gpt2-small", attention_bias=False, mlp_bias=False), seed=4, scale=0.2)
    native = to_native(model, "gpt2")
    assert not native.transformer.h[0].attn.c_attn.bias.any() and not native.transformer.h[1].mlp.c_proj.bias.any()
    torch.testing.assert_close(logits(native), logits(model), atol=2e-5, rtol=1e-5)


def test_an_untied_source_whose_head_equals_its_embedding_stays_untied():
    # (its config says untied: trained on, the head and the embedding part; taken as tied, they moved together)
    for peer, convert in ((llama(tie_word_embeddings=False), convert_llama),
                          (gpt2(tie_word_embeddings=False), convert_gpt2)):
        with torch.no_grad():
            peer.lm_head.weight.copy_(peer.get_input_embeddings().weight)
        converted = convert(peer)
        assert not converted.config.tie_word_embeddings
        assert converted.lm_head.weight is not converted.model.embed_tokens.weight


def test_the_native_model_of_a_bfloat16_model_keeps_float32_rope_frequencies(tmp_path):
    # to_native cast the whole model to bfloat16, its rotary frequencies too: the object returned computed other
    # logits (4e-3 apart) than the folder export_native wrote, loaded by transformers in bfloat16.
    model = randomize(tiny_model("transformer-tiny"), seed=4, scale=0.2).to(torch.bfloat16)
    native = export_native(model, tmp_path / "out", "llama")
    loaded = LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.bfloat16).eval()
    assert native.dtype == loaded.dtype == torch.bfloat16
    assert native.model.rotary_emb.inv_freq.dtype == loaded.model.rotary_emb.inv_freq.dtype == torch.float32
    torch.testing.assert_close(logits(native), logits(loaded), atol=0, rtol=0)


@pytest.mark.parametrize("target", ["gpt2", "mamba"])
def test_export_of_a_model_stored_by_columns(target, tmp_path):
    # set_weight_layout("columns") changes only the memory order: the export writes the same folder. transformers'
    # tied-weight check, while saving, flattens each tensor with view(), which that order refuses.
    preset, overrides, _ = EXPORTS[target]
    model = randomize(tiny_model(preset, **overrides), seed=4, scale=0.2)
    export_native(model, tmp_path / "rows", target)
    native = export_native(model.set_weight_layout("columns"), tmp_path / "columns", target)
    assert all(p.is_contiguous() for p in native.parameters())
    assert any(not p.is_contiguous() for p in model.parameters())  # the source keeps its order
    assert ((tmp_path / "columns" / "model.safetensors").read_bytes()
            == (tmp_path / "rows" / "model.safetensors").read_bytes())


@pytest.mark.parametrize(
    "preset, overrides, target, message",
    [
        ("transformer-vaswani-small", {}, "llama", r"position_embedding='sinusoidal' has no Llama equivalent"),
        ("transformer-vaswani-small", {}, "gpt2", r"position_embedding='sinusoidal' has no GPT-2 equivalent"),
        ("transformer-gpt2-small", {}, "llama", r"position_embedding='learned' has no Llama equivalent"),
        ("transformer-tiny", {}, "gpt2", r"position_embedding='rope' has no GPT-2 equivalent"),
        # (the embedding's scale by sqrt(hidden_size), which neither class has: exported, the logits differed)
        ("transformer-tiny", dict(scale_embeddings=True), "llama", r"scale_embeddings=True has no Llama equivalent"),
        ("transformer-gpt2-small", dict(scale_embeddings=True), "gpt2",
         r"scale_embeddings=True has no GPT-2 equivalent"),
        ("transformer-gpt2-small", dict(head_dim=4), "gpt2", r"num_attention_heads \* head_dim = 16 must equal "
                                                             r"hidden_size=32"),
        ("mamba2-tiny", dict(norm_before_gate=True), "mamba2", r"norm_before_gate=True"),
        ("rwkv7-tiny", {}, "mamba", r"cannot export a 'seqzoo_rwkv7' model to mamba"),
        ("lstm-tiny", {}, "llama", r"cannot export a 'seqzoo_lstm' model to llama"),
        # (its folder is refused from its config.json, before AutoModelForCausalLM reads it and fails unclearly)
        ("seq2seq-bahdanau-tiny", {}, "llama", r"cannot export a 'seqzoo_seq2seq' model to llama"),
    ],
)
def test_export_refuses_what_has_no_native_equivalent(preset, overrides, target, message, tmp_path, capsys):
    model = tiny_model(preset, **overrides)
    with pytest.raises(ValueError, match=message):
        to_native(model, target)
    model.save_pretrained(tmp_path)
    assert seqzoo_main(["export", "--to", target, str(tmp_path), str(tmp_path / "out")]) == 2
    assert "error: cannot export" in capsys.readouterr().err


def test_export_refuses_a_source_that_is_no_whole_causal_lm(tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    model = tiny_model("transformer-tiny", tie_word_embeddings=False)
    with pytest.raises(ValueError, match=r"unknown export target 'gpt3'; allowed: llama, gpt2, mamba, mamba2"):
        export_native(model, tmp_path / "out", "gpt3")
    with pytest.raises(ValueError, match=r"export source '.*nothing' is not a saved seqzoo model folder"):
        export_native(tmp_path / "nothing", tmp_path / "out", "llama")
    model.model.save_pretrained(tmp_path / "backbone")  # no head: the export's would be untrained
    with pytest.raises(ValueError, match=r"lacks weights of TransformerForCausalLM \(lm_head.weight\)"):
        export_native(tmp_path / "backbone", tmp_path / "out", "llama")
    AutoModelForSequenceClassification.from_config(model.config).save_pretrained(tmp_path / "classifier")
    with pytest.raises(ValueError, match=r"holds a TransformerForSequenceClassification .*not a causal language"):
        export_native(tmp_path / "classifier", tmp_path / "out", "llama")
    model.save_pretrained(tmp_path / "damaged")
    (tmp_path / "damaged" / "config.json").write_text('{"model_type": ')
    assert seqzoo_main(["export", "--to", "llama", str(tmp_path / "damaged"), str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'damaged' / 'config.json'}' is not a valid JSON file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("preset, target", [("mamba-tiny", "mamba"), ("transformer-tiny", "llama"),
                                            ("transformer-gpt2-small", "gpt2")])
@pytest.mark.parametrize("auto_class", ["AutoModel", "AutoModelForSequenceClassification",
                                        "AutoModelForTokenClassification"])
def test_export_refuses_a_model_object_that_is_no_causal_lm(preset, target, auto_class, tmp_path):
    # (as its saved folder is refused: torch's load_state_dict failed on it, naming missing and unexpected tensors)
    import transformers

    model = getattr(transformers, auto_class).from_config(tiny_model(preset).config)
    causal_lm = type(tiny_model(preset)).__name__
    message = (rf"cannot export a {type(model).__name__} to {target}: \w+ is a causal language model, and a "
               rf"{type(model).__name__} is none .*; export a {causal_lm}$")
    with pytest.raises(ValueError, match=message):
        to_native(model, target)
    with pytest.raises(ValueError, match=message):
        export_native(model, tmp_path / "out", target)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("preset, target", [("mamba-tiny", "mamba"), ("transformer-tiny", "llama")])
def test_export_refuses_a_model_quantised_by_torch(preset, target, tmp_path):
    # (torch's quantize_dynamic packs int8 weights into modules without tensors: the copy failed on a dtype)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.ao.quantization.quantize_dynamic(tiny_model(preset), {torch.nn.Linear}, dtype=torch.qint8)
    with pytest.raises(ValueError, match=r"is quantised \([a-z_.0-9]+ is a torch\.ao\.nn\.quantized.*export the "
                                         r"float model"):
        export_native(model, tmp_path / "out", target)
    assert not (tmp_path / "out").exists()


def test_export_takes_a_causal_lm_of_the_bundles_copy_of_the_class():
    # A model loaded through its checkpoint's bundled code (trust_remote_code=True where the bundle was imported
    # first) is of the bundle's copy of the class, same name, another object: it was refused as "no causal LM".
    model = tiny_model("transformer-tiny")
    copy = type("TransformerForCausalLM", type(model).__bases__, dict(vars(type(model))))
    expected = to_native(model, "llama").state_dict()
    model.__class__ = copy
    assert not isinstance(model, seqzoo.TransformerForCausalLM)
    exported = to_native(model, "llama").state_dict()
    assert all(torch.equal(exported[key], value) for key, value in expected.items())


def test_export_to_llama_names_the_dropout_it_leaves_out(caplog):
    # LlamaConfig has attention_dropout only: the dropout on embeddings and residual branches went without a word
    with caplog.at_level("WARNING", logger="seqzoo"):
        native = to_native(tiny_model("transformer-tiny", dropout=0.3, attention_dropout=0.1), "llama")
    assert native.config.attention_dropout == 0.1
    assert "export to llama: dropout=0.3 (on embeddings and residual branches) is left out" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="seqzoo"):
        to_native(tiny_model("transformer-tiny", attention_dropout=0.1), "llama")
    assert "dropout" not in caplog.text


def _tied_peers():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MambaConfig, MambaForCausalLM

    from seqzoo.conversions.hf_mamba import convert_hf_mamba

    torch.manual_seed(0)
    return {
        "llama": (lambda: LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=40,
                                                       num_hidden_layers=1, num_attention_heads=4,
                                                       tie_word_embeddings=True)), convert_llama),
        "gpt2": (lambda: GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=1, n_head=4, n_positions=20)),
                 convert_gpt2),
        "hf-mamba": (lambda: MambaForCausalLM(MambaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1,
                                                          state_size=8)), convert_hf_mamba),
    }


@pytest.mark.parametrize("kind", ["llama", "gpt2", "hf-mamba"])
def test_a_tied_config_with_a_head_of_its_own_converts_as_transformers_loads_it(kind, tmp_path, caplog):
    """config.json ties the head (tie_word_embeddings) but the weights hold a different lm_head.weight: transformers
    loads it untied with the file's head; so must the converter (it dropped the head for the embedding)."""
    from transformers import AutoModelForCausalLM

    make, convert = _tied_peers()[kind]
    make().save_pretrained(tmp_path / "src")
    weights = load_file(tmp_path / "src" / "model.safetensors")
    embedding = next(key for key in weights if "embed" in key or "wte" in key)
    weights["lm_head.weight"] = torch.randn_like(weights[embedding])
    save_file(weights, tmp_path / "src" / "model.safetensors", metadata={"format": "pt"})
    peer = AutoModelForCausalLM.from_pretrained(tmp_path / "src").eval()
    converted = convert(tmp_path / "src")
    assert not converted.config.tie_word_embeddings
    assert "holds an lm_head.weight that differs from the embedding; converted untied" in caplog.text
    # The warning names the source's own model type (it said "the seqzoo_mamba source" of a transformers Mamba).
    source_type = {"llama": "llama", "gpt2": "gpt2", "hf-mamba": "mamba"}[kind]
    assert f"the {source_type} source: its config ties the head" in caplog.text and "seqzoo_" not in caplog.text
    ids = torch.tensor([[5, 17, 33, 8, 61, 12]])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, peer(ids).logits, atol=1e-5, rtol=1e-5)
    # A tied head saved twice (equal to the embedding) stays tied.
    weights["lm_head.weight"] = weights[embedding].clone()
    save_file(weights, tmp_path / "src" / "model.safetensors", metadata={"format": "pt"})
    assert convert(tmp_path / "src").config.tie_word_embeddings


@pytest.mark.parametrize("kind,stored", [("llama", torch.int8), ("gpt2", torch.int8), ("llama", torch.float8_e4m3fn)])
def test_integer_weights_are_refused_not_cast(kind, stored, tmp_path, capsys):
    # An int8 tensor of the right shape (a hand-quantized checkpoint) would otherwise be cast to float codes; a
    # float8 one is cast without the scales a float8 checkpoint keeps in other tensors.
    peer = llama() if kind == "llama" else gpt2()
    peer.save_pretrained(tmp_path / "src")
    weights = load_file(tmp_path / "src" / "model.safetensors")
    key = next(k for k in weights if k.endswith("mlp.c_fc.weight" if kind == "gpt2" else "mlp.up_proj.weight"))
    weights[key] = (weights[key] * 100).to(stored)
    save_file(weights, tmp_path / "src" / "model.safetensors", metadata={"format": "pt"})
    assert seqzoo_main(["convert", kind, str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not floating point, or float8: " in err
    assert f"up_proj.weight ({str(stored).removeprefix('torch.')})" in err  # (named as converted)
    assert not (tmp_path / "out" / "config.json").exists()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_quantized_checkpoint_is_refused_by_its_quantization_config(kind, tmp_path, capsys):
    """A quantised checkpoint (integer codes beside scale tensors) failed as "unexpected tensors"; its config.json's
    quantization_config names what it is, before any weight is read. A model object loaded quantised likewise."""
    peer = llama() if kind == "llama" else gpt2()
    peer.save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    assert seqzoo_main(["convert", kind, str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is quantised (quantization_config, quant_method 'bitsandbytes')" in err, err
    assert "model.dequantize()" in err and not (tmp_path / "out").exists()
    peer.config.quantization_config = {"quant_method": "torchao"}
    convert = convert_llama if kind == "llama" else convert_gpt2
    with pytest.raises(ValueError, match=rf"{type(peer).__name__} is quantised .*quant_method 'torchao'"):
        convert(peer)


@pytest.mark.parametrize("target", sorted(EXPORTS))
def test_a_tied_model_exports_to_a_tied_native_model(target):
    # The native model must share one tensor between head and embedding, as transformers builds a tied model: an
    # untied copy computes the same logits until the first training step, after which the two drift apart.
    preset, overrides, native_class = EXPORTS[target]
    model = randomize(tiny_model(preset, **{**overrides, "tie_word_embeddings": True}), seed=4, scale=0.2)
    native = to_native(model, target)
    assert type(native) is native_class and native.config.tie_word_embeddings
    assert native.get_output_embeddings().weight is native.get_input_embeddings().weight
    torch.testing.assert_close(logits(native), logits(model), atol=2e-5, rtol=1e-5)


def test_a_mistyped_source_that_no_hub_repo_answers_names_the_folders_it_is_near(tmp_path, monkeypatch):
    """An id without an owner may be a Hub repo's (gpt2), so it is tried there; where that fails, the folders beside
    it named like it are suggested (the error named the Hub alone)."""
    from seqzoo.conversions import checkpoints

    def offline(repo_id):
        raise ValueError(f"{repo_id!r} is neither a local folder nor a downloadable Hub repo: offline")

    monkeypatch.setattr(checkpoints, "download", offline)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llama_hf").mkdir()
    with pytest.raises(ValueError, match=r"^'lama_hf' is neither a local folder nor a downloadable Hub repo: offline "
                                         r"\(no folder 'lama_hf' here either: did you mean 'llama_hf'\?\)$"):
        checkpoints.local_source("lama_hf")
    with pytest.raises(ValueError, match=r"^'unrelated' is neither a local folder nor a downloadable Hub repo: "
                                         r"offline$"):
        checkpoints.local_source("unrelated")
