"""Bad inputs to a model's forward, for every family: a clear error naming what was wrong and what is allowed, or,
where the input is legitimate, the right answer -- never a crash deep inside torch or a silently wrong result."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

import seqzoo
from seqzoo.models.compat import output_cache
from seqzoo.tokenizer import load_tokenizer
from tests.conftest import FAMILIES, families_where, tiny_model

IDS = torch.tensor([[5, 17, 33, 8], [9, 3, 77, 21]])


def test_a_cache_of_another_batch_size_is_refused(family_preset):
    # The fused LSTM kernel crashed the process (double free) on a state of the wrong batch size.
    model = tiny_model(family_preset)
    cache = output_cache(model(IDS, use_cache=True))
    with pytest.raises(ValueError, match=r"the cache holds 2 sequence\(s\) but the inputs have batch size 3"):
        model(torch.tensor([[1], [2], [3]]), cache=cache)


def test_a_cache_of_another_architecture_is_refused(family_preset):
    model = tiny_model(family_preset)
    other = "gru" if model.config.model_type != "seqzoo_gru" else "lstm"
    cache = output_cache(tiny_model(FAMILIES[other])(IDS, use_cache=True))
    with pytest.raises(ValueError, match=f"the cache was built for a seqzoo_{other} model"):
        model(IDS[:, :1], cache=cache)
    with pytest.raises(ValueError, match="cache must be a seqzoo SeqzooCache"):
        model(IDS, cache={"h": torch.zeros(2, 32)})


def test_a_cache_of_a_model_of_other_sizes_is_refused_by_name(family_preset):
    """The same layers at another width failed inside a kernel with a bare shape error (or a tensor-size mismatch
    in a concatenation of keys); a model of the same sizes, another object, continues the cache."""
    model = tiny_model(family_preset)
    wider = {"hidden_size": 2 * model.config.hidden_size}
    if "embedding_size" in model.config.to_dict():
        wider["embedding_size"] = 2 * model.config.embedding_size
    cache = output_cache(tiny_model(family_preset, **wider)(IDS, use_cache=True))
    with pytest.raises(ValueError, match="the cache holds the states of a model of other sizes"):
        model(IDS[:, :1], cache=cache)
    with pytest.raises(ValueError, match="the cache holds the states of a model of other sizes"):
        model.generate(torch.cat([IDS, IDS[:, :1]], 1), past_key_values=cache, max_new_tokens=2)
    same = output_cache(tiny_model(family_preset, seed=1)(IDS, use_cache=True))
    model(IDS[:, :1], cache=same)


@pytest.mark.parametrize("built, used", [(["rnn", "attention"], ["gru", "attention"]),
                                         (["mamba", "attention"], ["lstm", "attention"]),
                                         (["mamba", "attention"], ["mamba2", "attention"])])
def test_a_hybrids_cache_is_refused_by_a_hybrid_of_other_mixers(built, used):
    """The same recurrent/attention layout is not enough: an RNN layer's state, read by a GRU layer of the same
    width, gave a wrong answer without an error."""
    from seqzoo.models.hybrid import HybridConfig, HybridForCausalLM

    def hybrid(types):
        return HybridForCausalLM(HybridConfig(vocab_size=99, hidden_size=32, mixer_types=types)).eval()

    cache = output_cache(hybrid(built)(IDS, use_cache=True))
    with pytest.raises(ValueError, match=rf"the cache was built for a seqzoo_hybrid model with layers "
                                         rf"\['{built[0]}', 'attention'\], not this seqzoo_hybrid model with layers "
                                         rf"\['{used[0]}', 'attention'\]"):
        hybrid(used)(IDS[:, :1], cache=cache)
    hybrid(built)(IDS[:, :1], cache=cache)  # its own kind of model continues it


@pytest.mark.parametrize("preset", families_where("can_crop_cache", False))
def test_a_4d_mask_is_refused_where_layers_keep_a_state(preset):
    model = tiny_model(preset)
    with pytest.raises(ValueError, match="takes a 2-d padding mask"):
        model(IDS, attention_mask=torch.zeros(2, 1, 4, 4))


@pytest.mark.parametrize("preset", families_where("can_crop_cache"))
def test_a_4d_mask_reaches_attention(preset):
    model = tiny_model(preset)
    causal = torch.full((4, 4), float("-inf")).triu(1)[None, None].expand(2, 1, 4, 4)
    torch.testing.assert_close(model(IDS, attention_mask=causal).logits, model(IDS).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value,dtype", [(2, torch.float32), (0.5, torch.float32), (-1, torch.float32),
                                         (2, torch.long), (-1, torch.long), (3, torch.uint8)])
def test_a_mask_that_is_not_0_1_is_refused(family_preset, value, dtype):
    model = tiny_model(family_preset)
    mask = torch.ones(2, 4, dtype=dtype)
    mask[1, 1] = value
    match = rf"attention_mask must hold 1 \(a token\) and 0 \(padding\) only; found {value}"
    with pytest.raises(ValueError, match=match):
        model(IDS, attention_mask=mask)
    # One token after a cache (a decode step): the whole mask is still read.
    cache = output_cache(model(IDS[:, :3], use_cache=True))
    with pytest.raises(ValueError, match=match):
        model(IDS[:, 3:], attention_mask=mask, cache=cache)


def test_a_mask_longer_than_inputs_and_cache_is_refused(family_preset):
    model = tiny_model(family_preset)
    with pytest.raises(ValueError, match=r"expected \(batch, L\) with 4 <= L <= 4"):
        model(IDS, attention_mask=torch.ones(2, 6))
    cache = output_cache(model(IDS[:, :2], use_cache=True))
    model(IDS[:, 2:], attention_mask=torch.ones(2, 4), cache=cache)  # cached + current positions: fine


def test_a_mask_of_only_the_current_positions_is_refused_where_a_layer_attends(family_preset):
    # An attention layer reads the mask of every cached key: with a shorter mask, transformers' mask builder pads it
    # with zeros and the logits change silently. A recurrent layer reads only the current positions' columns.
    model = tiny_model(family_preset)
    cache = output_cache(model(IDS[:, :3], use_cache=True))
    if model.config.capabilities.constant_state_decode:
        model(IDS[:, 3:], attention_mask=torch.ones(2, 1), cache=cache)
    else:
        with pytest.raises(ValueError, match=r"expected \(batch, L\) with 4 <= L <= 4"):
            model(IDS[:, 3:], attention_mask=torch.ones(2, 1), cache=cache)


@pytest.mark.parametrize("shape", [(2, 0), (0, 4)])
def test_empty_inputs_are_refused(family_preset, shape):
    model = tiny_model(family_preset)
    with pytest.raises(ValueError, match=rf"input_ids of shape \({shape[0]}, {shape[1]}\) is empty"):
        model(torch.zeros(shape, dtype=torch.long))
    with pytest.raises(ValueError, match="inputs_embeds of shape .* is empty"):
        model(inputs_embeds=torch.zeros(*shape, model.config.embedding_dim))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_ids_of_any_integer_dtype_give_the_same_logits(family_preset, dtype):
    model = tiny_model(family_preset)
    torch.testing.assert_close(model(IDS.to(dtype)).logits, model(IDS).logits, rtol=0, atol=0)


def test_float32_embeddings_in_a_bfloat16_model_are_cast(family_preset):
    model = tiny_model(family_preset).to(torch.bfloat16)
    embeds = model.get_input_embeddings()(IDS)
    expected = model(inputs_embeds=embeds).logits
    got = model(inputs_embeds=embeds.float()).logits
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="inputs_embeds must be a floating-point tensor"):
        model(inputs_embeds=torch.ones(2, 4, model.config.embedding_dim, dtype=torch.long))


def test_labels_outside_the_vocabulary_are_refused(family_preset):
    model = tiny_model(family_preset)
    labels = IDS.clone()
    labels[0, 0] = -100  # ignored: fine
    model(IDS, labels=labels)
    labels[1, 2] = 99
    with pytest.raises(ValueError, match=r"labels contain 99: labels must be token ids in \[0, vocab_size=99\) or -100"):
        model(IDS, labels=labels)


@pytest.fixture
def saved(tmp_path):
    model = tiny_model(FAMILIES["mamba"])
    model.save_pretrained(tmp_path)
    return tmp_path, model


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_a_damaged_weights_file_names_the_checkpoint(saved, damage):
    folder, _ = saved
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(4096))
    with pytest.raises(ValueError, match=rf"the weights of '{folder}' cannot be read, the file is damaged"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_integer_weights_and_a_damaged_index_are_refused_naming_the_file(saved):
    """transformers casts an integer or boolean tensor to the parameter's dtype without a word (small weights read
    as zeros), and fails on a damaged index with a KeyError or TypeError that names no file."""
    from safetensors.torch import load_file, save_file

    folder, model = saved
    weights = load_file(folder / "model.safetensors")
    key = "model.embed_tokens.weight"
    save_file({**weights, key: weights[key].to(torch.int32)}, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"not floating point: {key} \(I32\)"):
        AutoModelForCausalLM.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    save_file(weights, folder / "model-00001-of-00001.safetensors", metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    weight_map = {name: "model-00001-of-00001.safetensors" for name in weights}
    for damaged, message in (("[]", "is damaged: a checkpoint index"), ('{"metadata": {}}', "is damaged: a checkpoint"),
                             ('{"weight_map": {', r"is damaged \(Expecting"),
                             (json.dumps({"weight_map": weight_map}), "has no 'metadata' entry")):
        index.write_text(damaged)
        with pytest.raises(ValueError, match=f"model.safetensors.index.json' {message}"):
            AutoModelForCausalLM.from_pretrained(folder)
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert AutoModelForCausalLM.from_pretrained(folder).config.vocab_size == model.config.vocab_size


def test_integer_weights_are_named_eight_at_most(saved):
    from safetensors.torch import load_file, save_file

    folder, _ = saved
    weights = {name: tensor.to(torch.int8) for name, tensor in load_file(folder / "model.safetensors").items()}
    assert len(weights) > 8
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not floating point: ") as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert str(err.value).count("(I8)") == 8 and "(I8) ...; loading would cast" in str(err.value)


@pytest.mark.parametrize("shards", [1, 3])
def test_integer_weights_of_a_variant_are_refused(tmp_path, shards):
    """from_pretrained(variant="v1") loads model.v1.safetensors (or the shards model.safetensors.index.v1.json
    names): those are the files checked."""
    from safetensors.torch import load_file, save_file

    shard_size = "20KB" if shards > 1 else "1GB"
    tiny_model(FAMILIES["mamba"]).save_pretrained(tmp_path, variant="v1", max_shard_size=shard_size)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) >= shards and all(".v1" in path.name for path in files)
    key = "model.embed_tokens.weight"
    path = next(path for path in files if key in load_file(path))
    weights = load_file(path)
    save_file({**weights, key: weights[key].to(torch.int32)}, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"not floating point: {key} \(I32\)"):
        AutoModelForCausalLM.from_pretrained(tmp_path, variant="v1")


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("shards", [1, 3])
def test_integer_weights_of_a_pickled_checkpoint_are_refused(tmp_path, shards, legacy):
    """A folder of pytorch_model.bin (or its shards) is read by transformers where no safetensors weights are: its
    integer tensors were cast to floats without a word (only safetensors files were checked). torch.save's legacy
    format, which cannot be memory-mapped, too."""
    model = tiny_model(FAMILIES["mamba"])
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    key = "model.embed_tokens.weight"
    weights = {**model.state_dict(), key: (model.state_dict()[key] * 100).to(torch.int32)}
    if shards == 1:
        torch.save(weights, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    else:
        names = sorted(weights)
        files = {name: f"pytorch_model-0000{i % shards + 1}-of-0000{shards}.bin" for i, name in enumerate(names)}
        for file in set(files.values()):
            torch.save({name: weights[name] for name in names if files[name] == file}, tmp_path / file,
                       _use_new_zipfile_serialization=not legacy)
        (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": files}))
    with pytest.raises(ValueError, match=rf"not floating point: {key} \(I32\)"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path)  # (safetensors beside the pickle: read unless use_safetensors=False)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.vocab_size == model.config.vocab_size
    with pytest.raises(ValueError, match=rf"not floating point: {key} \(I32\)"):
        AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=False)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fnuz, torch.float8_e8m0fnu, torch.float16])
def test_float_weights_of_a_pickled_checkpoint_that_safetensors_has_no_name_for_load(tmp_path, dtype):
    # They were refused as "not floating point: ... (float8_e4m3fnuz)": a pickle's dtypes were judged by safetensors'
    # names, which lack some of torch's float types.
    model = tiny_model(FAMILIES["mamba"])
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    key = "model.embed_tokens.weight"
    torch.save({**model.state_dict(), key: model.state_dict()[key].to(dtype)}, tmp_path / "pytorch_model.bin")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.get_input_embeddings().weight, model.state_dict()[key].to(dtype).float())


def test_a_checkpoint_in_a_subfolder_is_checked_there(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "sub"
    tiny_model(FAMILIES["mamba"]).save_pretrained(folder)
    cls = type(tiny_model(FAMILIES["mamba"]))
    assert type(cls.from_pretrained(tmp_path, subfolder="sub")) is cls
    with pytest.raises(ValueError, match="holds a 'seqzoo_mamba' model, not 'seqzoo_gru'"):
        type(tiny_model(FAMILIES["gru"])).from_pretrained(tmp_path, subfolder="sub")
    (folder / "generation_config.json").write_text('{"max_new_tokens": 7,')
    with pytest.raises(ValueError, match=r"generation_config.json is damaged"):
        cls.from_pretrained(tmp_path, subfolder="sub")
    (folder / "generation_config.json").unlink()
    weights = load_file(folder / "model.safetensors")
    key = "model.embed_tokens.weight"
    save_file({**weights, key: weights[key].to(torch.int32)}, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"not floating point: {key} \(I32\)"):
        cls.from_pretrained(tmp_path, subfolder="sub")


def test_a_pickled_bin_is_refused_plainly_and_runs_nothing(saved, tmp_path):
    from safetensors.torch import load_file

    folder, _ = saved
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({**weights, "payload": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle\\) hold Python objects other than tensors, which are not loaded"):
        AutoModelForCausalLM.from_pretrained(folder)
    assert not marker.exists()


def test_non_finite_weights_are_refused_unless_allowed(saved):
    folder, model = saved
    with torch.no_grad():
        model.model.layers[1].mixer.D[3] = float("nan")
    model.save_pretrained(folder)
    with pytest.raises(ValueError, match="holds NaN or infinite weights in model.layers.1.mixer.D"):
        AutoModelForCausalLM.from_pretrained(folder)
    loaded = AutoModelForCausalLM.from_pretrained(folder, allow_nonfinite=True)
    assert torch.isnan(loaded.model.layers[1].mixer.D[3])


def test_a_folder_without_tokenizer_files_says_so(saved):
    folder, _ = saved
    with pytest.raises(ValueError, match="has no tokenizer .*tokenizer.save_pretrained"):
        load_tokenizer(folder)
    seqzoo.byte_tokenizer().save_pretrained(folder)
    assert load_tokenizer(folder).pad_token_id == 256
    (folder / "tokenizer.json").unlink()  # (transformers: "Couldn't instantiate the backend tokenizer from one of:")
    with pytest.raises(ValueError, match="has tokenizer_config.json but no tokenizer.json"):
        load_tokenizer(folder)


def test_damaged_tokenizer_and_generation_config_files_are_named(saved):
    """The tokenizers library's JSON error names no file; transformers ignores a damaged generation_config.json
    (it logs at info level) and generates with other settings than were saved."""
    from transformers import GenerationConfig

    folder, model = saved
    seqzoo.byte_tokenizer().save_pretrained(folder)
    GenerationConfig(max_new_tokens=7, eos_token_id=98).save_pretrained(folder)
    assert AutoModelForCausalLM.from_pretrained(folder).generation_config.max_new_tokens == 7
    (folder / "generation_config.json").write_text('{"max_new_tokens": 7,')
    with pytest.raises(ValueError, match=r"generation_config.json is damaged .*Fix or delete the file"):
        AutoModelForCausalLM.from_pretrained(folder)
    loaded = AutoModelForCausalLM.from_pretrained(folder, generation_config=GenerationConfig(max_new_tokens=3))
    assert loaded.generation_config.max_new_tokens == 3  # one given is taken: the file is not read
    (folder / "generation_config.json").unlink()
    (folder / "generation_config.json").write_text("[7]")  # JSON, but no object: transformers' TypeError
    with pytest.raises(ValueError, match=r"generation_config.json is damaged \(it holds a JSON list, not an object"):
        AutoModelForCausalLM.from_pretrained(folder)
    # A link to nothing (a Hub cache's snapshot copied without its blobs) or a folder: transformers passed over it as
    # if absent, and generated 20 tokens where 7 were saved.
    (folder / "generation_config.json").unlink()
    (folder / "generation_config.json").symlink_to("../blobs/gone")
    with pytest.raises(ValueError, match=r"generation_config.json is damaged \(a link to '../blobs/gone', which does "):
        AutoModelForCausalLM.from_pretrained(folder)
    (folder / "generation_config.json").unlink()
    (folder / "generation_config.json").mkdir()
    with pytest.raises(ValueError, match=r"generation_config.json is damaged \(a folder, not a file\)"):
        AutoModelForCausalLM.from_pretrained(folder)
    (folder / "generation_config.json").rmdir()
    # token ids of the wrong type loaded, and failed inside generate() ("invalid data type 'str'")
    for name, value in (("eos_token_id", "x"), ("pad_token_id", -1), ("eos_token_id", [257, 1.5]),
                        ("bos_token_id", True)):
        (folder / "generation_config.json").write_text(json.dumps({name: value}))
        with pytest.raises(ValueError, match=rf"{name}={re.escape(repr(value))} is invalid: a token id is an integer"):
            AutoModelForCausalLM.from_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [98, 0], "pad_token_id": None}))
    AutoModelForCausalLM.from_pretrained(folder)
    (folder / "generation_config.json").unlink()
    (folder / "tokenizer_config.json").write_text("[]")  # (transformers: AttributeError)
    with pytest.raises(ValueError, match=r"tokenizer_config.json is damaged \(it holds a JSON list"):
        load_tokenizer(folder)
    seqzoo.byte_tokenizer().save_pretrained(folder)
    (folder / "tokenizer.json").write_bytes(b'{"version": "1.0", "trunc')
    with pytest.raises(ValueError, match=r"tokenizer cannot be read: tokenizer.json is damaged \(.*\); save the"):
        load_tokenizer(folder)
    # a special token that is neither text nor an object: transformers' TypeError named neither file nor value
    seqzoo.byte_tokenizer().save_pretrained(folder)
    values = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**values, "eos_token": 5}))
    with pytest.raises(ValueError, match=r"tokenizer cannot be read: tokenizer_config.json has eos_token=5; a special"):
        load_tokenizer(folder)
