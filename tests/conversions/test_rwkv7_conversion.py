"""The RWKV-LM x070 ``.pth`` converter: files, the CLI, dtypes, and clear errors for anything that is not x070.
(Numerical parity with the reference formulas is tests/models/test_rwkv7_reference.py.)"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import seqzoo
from seqzoo.cli import main as seqzoo_main
from seqzoo.conversions.rwkv7 import convert_rwkv7, convert_rwkv7_file
from tests.models.test_rwkv7_reference import random_x070_checkpoint

IDS = torch.tensor([[5, 17, 33, 8, 61, 12, 40, 3, 50], [9, 3, 60, 44, 21, 6, 2, 13, 7]])


@pytest.fixture(scope="module")
def checkpoint():
    return random_x070_checkpoint(vocab=67, hidden=32, layers=2, head_size=16, ffn=72, seed=5)


@pytest.fixture
def pth(checkpoint, tmp_path):
    path = tmp_path / "rwkv7.pth"
    torch.save({k: v.to(torch.bfloat16) for k, v in checkpoint.items()}, path)  # RWKV-LM saves bf16
    return path


def test_file_to_folder_and_back(pth, tmp_path):
    model = convert_rwkv7_file(pth, tmp_path / "out", bos_token_id=0, eos_token_id=0)
    assert isinstance(model, seqzoo.RWKV7ForCausalLM)
    assert model.dtype == torch.bfloat16  # the checkpoint's dtype by default
    assert model.config.bos_token_id == 0 and model.config.num_hidden_layers == 2 and model.config.head_size == 16
    # RWKV-LM's head is its own matrix: a tied config would claim otherwise (and from_pretrained would warn)
    assert model.config.tie_word_embeddings is False and not model.training
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(loaded) is seqzoo.RWKV7ForCausalLM
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits, rtol=0, atol=0)


def test_cli_converts_and_sets_fields(pth, tmp_path, capsys):
    code = seqzoo_main(["convert", "rwkv7", str(pth), str(tmp_path / "cli"), "--dtype", "float32",
                        "--set", "eos_token_id=0"])
    assert code == 0 and "RWKV7ForCausalLM" in capsys.readouterr().out
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "cli")
    assert loaded.dtype == torch.float32 and loaded.config.eos_token_id == 0
    direct = convert_rwkv7(pth, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, direct(IDS).logits, rtol=0, atol=0)


def test_a_safetensors_file_under_a_pth_name_converts(checkpoint, tmp_path):
    # It was refused as "pickled Python objects"; it is read as safetensors (no pickle either way).
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in checkpoint.items()}, tmp_path / "st.pth")
    torch.save(checkpoint, tmp_path / "pt.pth")
    from_st, from_pt = convert_rwkv7(tmp_path / "st.pth"), convert_rwkv7(tmp_path / "pt.pth")
    for (name, a), b in zip(from_st.state_dict().items(), from_pt.state_dict().values()):
        assert torch.equal(a, b), name
    (tmp_path / "cut.pth").write_bytes((tmp_path / "st.pth").read_bytes()[:2000])
    with pytest.raises(ValueError, match="cannot read .*cut.pth.* as safetensors \\(damaged or truncated\\?\\)"):
        convert_rwkv7(tmp_path / "cut.pth")


def test_cli_reports_a_bad_checkpoint_plainly(checkpoint, tmp_path, capsys):
    bad = dict(checkpoint)
    del bad["blocks.1.att.k_k"]
    torch.save(bad, tmp_path / "bad.pth")
    assert seqzoo_main(["convert", "rwkv7", str(tmp_path / "bad.pth"), str(tmp_path / "out")]) == 2
    assert "missing tensors blocks.1.att.k_k" in capsys.readouterr().err


def renamed(checkpoint, old, new):
    return {key.replace(old, new): value for key, value in checkpoint.items()}


@pytest.mark.parametrize(
    "make, message",
    [
        # other RWKV generations, recognised by their keys
        (lambda sd: {**sd, "blocks.0.att.time_maa_x": torch.zeros(1, 1, 32)}, r"RWKV-6 \(x060\), not RWKV-7 x070"),
        (lambda sd: {**sd, "blocks.0.att.time_faaaa": torch.zeros(2, 16)}, r"RWKV-5 \(x052\)"),
        (lambda sd: {**sd, "blocks.0.att.time_first": torch.zeros(32)}, r"RWKV-4, not RWKV-7"),
        (lambda sd: {**sd, "blocks.0.ffn.s_emb.weight": torch.zeros(67, 32)}, r"RWKV-7 with DeepEmbed"),
        (lambda sd: {**sd, "blocks.0.qkv.k_emb.weight": torch.zeros(67, 32)}, r"RWKV-7 with DeepEmbedAttention"),
        # not RWKV at all
        (lambda sd: {"transformer.wte.weight": torch.zeros(3, 4)}, r"not an RWKV-7 x070 checkpoint: missing "
                                                                    r"'emb.weight'"),
        # x070, but damaged
        (lambda sd: {k: v for k, v in sd.items() if k != "ln_out.bias"}, r"missing tensors ln_out.bias"),
        (lambda sd: {**sd, "blocks.1.att.w2": torch.zeros(9, 32)},
         r"mis-shaped tensors blocks.1.att.w2 \(source \(9, 32\), expected \(8, 32\)\)"),
        (lambda sd: {**sd, "blocks.0.att.x_r": torch.zeros(1, 1, 31)},
         r"blocks.0.att.x_r \(source \(1, 1, 31\), expected \(32,\)\)"),
        # 32 numbers, but not the (1, 1, C) vector RWKV-LM saves
        (lambda sd: {**sd, "blocks.0.att.x_r": torch.zeros(2, 1, 16)},
         r"mis-shaped tensors blocks.0.att.x_r \(source \(2, 1, 16\), expected \(32,\)\)"),
        (lambda sd: {**sd, "blocks.1.att.extra": torch.zeros(3)}, r"unexpected tensors blocks.1.att.extra"),
        (lambda sd: {**sd, "blocks.0.att.r_k": torch.zeros(2, 8)}, r"heads \* head_size must equal the "
                                                                    r"embedding width 32"),
        (lambda sd: renamed(sd, "blocks.1.", "blocks.2."), r"missing tensors blocks.1.ln1.weight, blocks.1.ln1.bias"),
        (lambda sd: [1, 2], r"must be a dict of tensor names to tensors"),
        # the tensors the sizes are read from, not matrices; a key that is not a name
        (lambda sd: {**sd, "blocks.0.att.r_k": torch.zeros(1, 1, 32)},
         r"blocks.0.att.r_k has shape \(1, 1, 32\); expected a matrix \(heads, head_size\)"),
        (lambda sd: {**sd, "emb.weight": torch.zeros(67 * 32)},
         r"emb.weight has shape \(2144,\); expected a matrix \(vocab, n_embd\)"),
        (lambda sd: {**sd, "blocks.0.att.w1": torch.zeros(32)},
         r"blocks.0.att.w1 has shape \(32,\); expected a matrix \(n_embd, decay rank\)"),
        (lambda sd: {**sd, "blocks.1.att.v1": torch.zeros(32)}, r"blocks.1.att.v1 has shape \(32,\)"),
        (lambda sd: {**sd, 5: torch.zeros(3)}, r"keys that are not tensor names \(strings\): 5"),
    ],
    ids=["rwkv6", "rwkv5", "rwkv4", "deepembed", "deepembed-attention", "not-rwkv", "missing", "misshaped-lora",
         "misshaped-vector", "vector-not-1x1", "unexpected", "head-size", "layer-gap", "not-a-dict", "r_k-3d",
         "emb-1d", "w1-1d", "v1-1d", "key-not-str"],
)
def test_not_x070_raises_naming_the_problem(checkpoint, make, message):
    # make: builds the bad source from a good x070 state dict; message: what the error must say
    with pytest.raises(ValueError, match=message):
        convert_rwkv7(make(dict(checkpoint)))


@pytest.mark.parametrize("legacy, keep", [(False, 0.5), (True, 0.5), (False, 0), (False, 1e-3)],
                         ids=["truncated", "truncated-legacy", "empty", "first-bytes"])
def test_damaged_file_is_said_to_be_damaged(checkpoint, legacy, keep, tmp_path, capsys):
    torch.save(checkpoint, tmp_path / "whole.pth", _use_new_zipfile_serialization=not legacy)
    data = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: int(len(data) * keep)])
    assert seqzoo_main(["convert", "rwkv7", str(tmp_path / "cut.pth"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "'cut.pth'" in err.replace(str(tmp_path) + "/", "") and "damaged or truncated?" in err, err
    assert not err.rstrip().endswith(":") and "report it" not in err


def test_integer_tensors_are_refused_naming_the_dtype(checkpoint, tmp_path, capsys):
    torch.save({k: (v * 10).to(torch.int8) for k, v in checkpoint.items()}, tmp_path / "int8.pth")
    assert seqzoo_main(["convert", "rwkv7", str(tmp_path / "int8.pth"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not floating point, or float8: emb.weight (int8)" in err and "seqzoo converts floating-point weights" in err
    assert not (tmp_path / "out").exists()


def test_tensors_without_values_are_named(checkpoint):
    # (a state dict of a model built on the meta device failed with "Tensor.item() cannot be called on meta tensors")
    meta = {k: v.to("meta") if k == "blocks.1.ffn.key.weight" else v for k, v in checkpoint.items()}
    with pytest.raises(ValueError, match=r"the checkpoint holds tensors without values \(on the meta device\): "
                                         r"blocks.1.ffn.key.weight; a model loaded with device_map offloading"):
        convert_rwkv7(meta)


def test_non_finite_weights_are_refused_before_anything_is_written(checkpoint, tmp_path, capsys):
    """A NaN weight, or one past float16's range converted with --dtype float16: from_pretrained would refuse the
    converted folder, long after the conversion said nothing."""
    damaged = {k: v.clone() for k, v in checkpoint.items()}
    damaged["blocks.1.att.w0"][0, 0, 3] = float("nan")
    torch.save(damaged, tmp_path / "nan.pth")
    assert seqzoo_main(["convert", "rwkv7", str(tmp_path / "nan.pth"), str(tmp_path / "out")]) == 2
    assert "NaN or infinite weights in torch.float32: model.layers.1.attn.w0" in capsys.readouterr().err
    large = {k: v.clone() for k, v in checkpoint.items()}
    large["emb.weight"][0, 0] = 1e6
    with pytest.raises(ValueError, match=r"infinite weights in torch.float16: model.embed_tokens.weight;.*wider"):
        convert_rwkv7(large, dtype=torch.float16)
    assert not (tmp_path / "out").exists()


def test_settable_fields_only(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="cannot set hidden_size when converting.*settable fields are pad_token_id"):
        convert_rwkv7(checkpoint, hidden_size=64)
    with pytest.raises(ValueError, match="does not exist"):
        convert_rwkv7(tmp_path / "nothing.pth")


def test_a_one_layer_checkpoint_without_layer_0s_unused_value_lora_converts():
    # Layer 0 has no value residual; RWKV-LM saves its LoRA anyway, fla (and a pruned file) does not. With one layer
    # no other layer says the LoRA's rank.
    one_layer = random_x070_checkpoint(vocab=67, hidden=32, layers=1, head_size=16, ffn=72, seed=6)
    pruned = {k: v for k, v in one_layer.items() if k not in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")}
    with torch.no_grad():
        torch.testing.assert_close(convert_rwkv7(pruned)(IDS).logits, convert_rwkv7(one_layer)(IDS).logits,
                                   rtol=0, atol=0)


def test_the_converted_model_does_not_share_memory_with_the_state_dict_given(checkpoint):
    # (the caller's tensors, in the dtype converted to, were adopted as the parameters: training the model changed
    # the caller's state dict)
    state = {key: value.clone() for key, value in checkpoint.items()}
    model = convert_rwkv7(state, dtype=torch.float32)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    assert all(torch.equal(state[key], checkpoint[key]) for key in checkpoint)


def test_layer_0s_unused_value_lora_does_not_decide_the_rank_of_the_others(checkpoint):
    # (RWKV-LM saves it at the others' rank; a file that trimmed the unused LoRA still converts as it computes)
    trimmed = dict(checkpoint, **{"blocks.0.att.v1": checkpoint["blocks.0.att.v1"][:, :1],
                                  "blocks.0.att.v2": checkpoint["blocks.0.att.v2"][:1]})
    with torch.no_grad():
        torch.testing.assert_close(convert_rwkv7(trimmed)(IDS).logits, convert_rwkv7(checkpoint)(IDS).logits,
                                   rtol=0, atol=0)
