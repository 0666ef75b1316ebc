"""Checkpoints of peers that do not run on a CPU, built here in the peer's exact layout (key names and shapes read
from the peer's code) and checked against a path that does run:

- raw ``mamba_ssm`` folders (``MambaLMHeadModel.save_pretrained``: config.json with d_model / n_layer / ssm_cfg,
  ``pytorch_model.bin`` with ``backbone.embedding.weight``) against transformers' Mamba / Mamba-2 classes holding
  the same weights;
- flash-linear-attention ``RWKV7ForCausalLM`` state dicts (``model.layers.N.attn.r_proj`` ... ``w_lora.lora.0``)
  against the RWKV-LM ``.pth`` path, which tests/models/test_rwkv7_blinkdl.py checks against BlinkDL's package.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

from seqzoo.cli import main as seqzoo_main
from seqzoo.conversions.fla_rwkv7 import convert_fla_rwkv7
from seqzoo.conversions.mamba_ssm import convert_mamba_ssm
from seqzoo.conversions.rwkv7 import convert_rwkv7
from tests.models.test_rwkv7_reference import random_x070_checkpoint
from tests.models.test_transformer_reference import randomize

IDS = torch.tensor([[5, 17, 33, 8, 61, 12, 40, 3, 50], [9, 3, 60, 44, 21, 6, 2, 13, 7]])


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


# ---- mamba_ssm ------------------------------------------------------------------------------------------------

def mamba_ssm_folder(folder, peer, config):
    """Save ``peer``'s weights as mamba_ssm does: its key names (``embedding``), pytorch_model.bin, its config."""
    folder.mkdir()
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in peer.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def mamba1_pair():
    # vocab 99 padded to 104 (pad_vocab_size_multiple 8), as MambaLMHeadModel pads it.
    peer = MambaForCausalLM(MambaConfig(vocab_size=104, hidden_size=32, num_hidden_layers=2, state_size=8,
                                        conv_kernel=3, expand=2, time_step_rank=3, use_conv_bias=True))
    config = {"d_model": 32, "d_intermediate": 0, "n_layer": 2, "vocab_size": 99,
              "ssm_cfg": {"d_state": 8, "d_conv": 3, "dt_rank": 3, "use_fast_path": True}, "attn_layer_idx": [],
              "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
              "pad_vocab_size_multiple": 8, "tie_embeddings": True}
    return randomize(peer, seed=5, scale=0.2), config


def mamba2_pair():
    peer = Mamba2ForCausalLM(Mamba2Config(vocab_size=104, hidden_size=32, num_hidden_layers=2, state_size=8,
                                          num_heads=4, head_dim=16, n_groups=2, chunk_size=4, conv_kernel=4,
                                          tie_word_embeddings=False))
    config = {"d_model": 32, "n_layer": 2, "vocab_size": 100, "tie_embeddings": False, "rms_norm": True,
              "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 16, "ngroups": 2, "chunk_size": 4,
                          "A_init_range": [1, 16]}}
    peer = randomize(peer, seed=6, scale=0.2)
    with torch.no_grad():  # keep the decays and time steps in their trained ranges
        for layer in peer.backbone.layers:
            layer.mixer.A_log.uniform_(-1, 1)
            layer.mixer.dt_bias.uniform_(-3, -1)
    return peer, config


@pytest.mark.parametrize("make", [mamba1_pair, mamba2_pair], ids=["mamba1", "mamba2"])
def test_mamba_ssm_folder_matches_transformers(make, tmp_path):
    peer, config = make()
    folder = mamba_ssm_folder(tmp_path / "src", peer.eval(), config)
    # mamba_ssm checkpoints carry no tokenizer; a folder that has one beside them passes it on
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}')
    assert seqzoo_main(["convert", "mamba-ssm", str(folder), str(tmp_path / "out")]) == 0
    from transformers import AutoModelForCausalLM

    assert (tmp_path / "out" / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert model.config.vocab_size == 104 and model.config.tie_word_embeddings == config["tie_embeddings"]
    torch.testing.assert_close(logits(model), logits(peer), atol=1e-4, rtol=1e-4)


def test_mamba2_defaults_are_mamba_ssm_defaults():
    peer, config = mamba2_pair()
    del config["ssm_cfg"]["chunk_size"]
    config["ssm_cfg"]["D_has_hdim"] = False  # mamba_ssm's default, written out: one skip weight per head
    model = convert_mamba_ssm(
        {k.replace("embeddings", "embedding"): v for k, v in peer.state_dict().items()}, config=config)
    assert model.config.chunk_size == 256 and model.config.time_step_limit == (0.0, float("inf"))
    config["ssm_cfg"].pop("d_state")  # mamba_ssm's default is 128: the tensors no longer fit
    with pytest.raises(ValueError, match=r"mis-shaped tensors"):
        convert_mamba_ssm({k.replace("embeddings", "embedding"): v for k, v in peer.state_dict().items()},
                          config=config)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(attn_layer_idx=[1]), r"attn_layer_idx=\[1\]: attention layers"),
        (lambda c: c.update(d_intermediate=64), r"d_intermediate=64: MLP blocks"),
        (lambda c: c.update(rms_norm=False), r"rms_norm=False"),
        (lambda c: c["ssm_cfg"].update(layer="Mamba3"), r"ssm_cfg.layer='Mamba3'"),
        (lambda c: c["ssm_cfg"].update(dt_softcap=1.0), r"ssm_cfg.dt_softcap=1.0, which seqzoo does not know"),
        (lambda c: c.update(n_embd=32), r"fields seqzoo does not know: n_embd"),
        (lambda c: c.update(model_type="mamba"), r"a transformers Mamba folder converts with hf-mamba"),
        (lambda c: c.update(tie_embeddings="false"), r"tie_embeddings='false'; expected true or false"),
        (lambda c: c.update(residual_in_fp32=1), r"residual_in_fp32=1; expected true or false"),
        (lambda c: c.pop("n_layer"), r"mamba_ssm config has no n_layer \(the layer count"),
        (lambda c: c.update(ssm_cfg=[1]), r"ssm_cfg=\[1\]; expected an object of mixer settings"),
        (lambda c: c.update(eos_token_id="0"), r"eos_token_id='0': a token id is an integer"),
        (lambda c: c.update(pad_token_id=1.0), r"pad_token_id=1.0: a token id is an integer"),
        (lambda c: c.update(bos_token_id=True), r"bos_token_id=True: a token id is an integer"),
        (lambda c: c.update(eos_token_id=[]), r"eos_token_id=\[\]: a token id is an integer"),
    ],
    ids=["attention", "mlp", "layernorm", "mamba3", "unknown-ssm-cfg", "unknown-field", "transformers-folder",
         "string-flag", "number-flag", "no-n_layer", "ssm_cfg-list", "string-id", "float-id", "bool-id",
         "empty-id-list"],
)
def test_mamba_ssm_refusals_name_the_field(change, message, tmp_path):
    peer, config = mamba1_pair()
    change(config)
    folder = mamba_ssm_folder(tmp_path / "src", peer, config)
    with pytest.raises(ValueError, match=message):
        convert_mamba_ssm(folder)


def test_mamba_ssm_sources_without_their_config_or_embedding_are_named(tmp_path):
    peer, config = mamba1_pair()
    state = {k.replace("embeddings", "embedding"): v for k, v in peer.state_dict().items()}
    with pytest.raises(ValueError, match=r"is not a mamba_ssm checkpoint folder \(no config.json\)"):
        convert_mamba_ssm(tmp_path)
    with pytest.raises(ValueError, match=r"a mamba_ssm state dict needs its config .*: pass config=\.\.\."):
        convert_mamba_ssm(state)
    with pytest.raises(ValueError, match=r"the mamba_ssm state dict must be a dict of tensor names to tensors; got "
                                         r"MambaForCausalLM"):
        convert_mamba_ssm(peer, config=config)
    with pytest.raises(ValueError, match=r"has no backbone.embedding.weight: not a mamba_ssm MambaLMHeadModel"):
        convert_mamba_ssm({k: v for k, v in state.items() if "embedding" not in k}, config=config)
    folder = mamba_ssm_folder(tmp_path / "src", peer, config)
    for text, message in (("[]", r"mamba_ssm config '.*config.json' must hold a JSON object, got list"),
                          ("{", r"cannot read mamba_ssm config '.*config.json'")):
        (folder / "config.json").write_text(text)
        with pytest.raises(ValueError, match=message):
            convert_mamba_ssm(folder)
    assert convert_mamba_ssm(folder, config=config).config.num_hidden_layers == 2  # (config.json left unread)


def test_token_ids_outside_the_vocabulary_are_dropped_and_said(tmp_path, caplog):
    peer, config = mamba1_pair()
    config.update(eos_token_id=[2, 10**6], bos_token_id=1)
    folder = mamba_ssm_folder(tmp_path / "src", peer, config)
    with caplog.at_level(logging.WARNING):
        model = convert_mamba_ssm(folder)
    # Of a list of end ids, only the one outside the vocabulary goes: 2 still ends a text, as in the source.
    assert model.config.eos_token_id == [2] and model.config.bos_token_id == 1
    assert model.generation_config.eos_token_id in (2, [2])
    assert "eos_token_id=[2, 1000000], with ids outside its vocabulary of 104 (1000000); the converted config keeps " \
           "the others, [2]" in caplog.text
    config.update(eos_token_id=[10**6, 10**6 + 1])  # none inside: unset
    folder = mamba_ssm_folder(tmp_path / "src2", peer, config)
    with caplog.at_level(logging.WARNING):
        assert convert_mamba_ssm(folder).config.eos_token_id is None
    assert "eos_token_id=[1000000, 1000001], outside its vocabulary" in caplog.text


def test_mamba2_refusals():
    peer, config = mamba2_pair()
    state = {k.replace("embeddings", "embedding"): v for k, v in peer.state_dict().items()}
    for key, value, message in (("D_has_hdim", True, "one skip weight per channel"),
                                ("d_ssm", 32, "less than the inner width 64"),
                                # it said "less than" for these too
                                ("d_ssm", 128, r"d_ssm=128, not a width up to the inner width 64 \(expand \* "
                                               r"d_model\); seqzoo converts d_ssm null or 64"),
                                ("d_ssm", "64", r"d_ssm='64', not a width up to")):
        bad = json.loads(json.dumps(config))
        bad["ssm_cfg"][key] = value
        with pytest.raises(ValueError, match=message):
            convert_mamba_ssm(state, config=bad)


# mamba_ssm's own defaults, as its code writes them (mamba_ssm/modules/mamba_simple.py, mamba2.py,
# models/config_mamba.py), spelled out here in transformers' terms: the sizes a config.json that leaves a setting
# out must get.
MAMBA1_DEFAULTS = {"state_size": 16, "conv_kernel": 4, "expand": 2}  # dt_rank "auto" = ceil(d_model / 16)
MAMBA2_DEFAULTS = {"state_size": 128, "conv_kernel": 4, "expand": 2, "head_dim": 64, "n_groups": 1,
                   "chunk_size": 256}


@pytest.mark.parametrize(
    "ssm_cfg, peer_config",
    [
        ({}, MambaConfig(vocab_size=64, hidden_size=48, num_hidden_layers=2, time_step_rank=3, **MAMBA1_DEFAULTS)),
        ({"layer": "Mamba2"},
         Mamba2Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_heads=1, **MAMBA2_DEFAULTS)),
        # d_ssm equal to the inner width (mamba_ssm's default when it is null) is no gated MLP: it converts
        ({"layer": "Mamba2", "expand": 4, "headdim": 32, "d_ssm": 128},
         Mamba2Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_heads=4,
                      **{**MAMBA2_DEFAULTS, "expand": 4, "head_dim": 32})),
    ],
    ids=["mamba1", "mamba2", "mamba2-d_ssm"],
)
def test_a_config_json_that_leaves_settings_out_gets_mamba_ssms_defaults(ssm_cfg, peer_config, tmp_path):
    """state-spaces/mamba-130m's config.json has "ssm_cfg": {} and no tie_embeddings (mamba_ssm's MambaConfig
    defaults it to true): the tied head is then absent from a safetensors copy of the weights, which stores a
    shared tensor once."""
    from safetensors.torch import save_file

    peer_config.tie_word_embeddings = True
    peer = randomize((MambaForCausalLM if ssm_cfg == {} else Mamba2ForCausalLM)(peer_config), seed=8, scale=0.2)
    with torch.no_grad():
        for layer in peer.backbone.layers:
            if ssm_cfg:  # Mamba-2: decays and time steps in their trained ranges
                layer.mixer.A_log.uniform_(-1, 1)
                layer.mixer.dt_bias.uniform_(-3, -1)
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v.contiguous()
             for k, v in peer.state_dict().items() if k != "lm_head.weight"}
    (tmp_path / "src").mkdir()
    save_file(state, tmp_path / "src" / "model.safetensors")
    config = {"d_model": peer_config.hidden_size, "n_layer": 2, "vocab_size": 60, "ssm_cfg": ssm_cfg,
              "rms_norm": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8}
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    model = convert_mamba_ssm(tmp_path / "src").eval()
    assert model.config.tie_word_embeddings is True and model.config.residual_in_fp32 is True
    # the time-step init (a model trained on from the conversion uses it): mamba_ssm's defaults, transformers' too
    init = ("time_step_min", "time_step_max", "time_step_floor", *(() if ssm_cfg else ("time_step_scale",
                                                                                       "time_step_init_scheme")))
    assert {f: getattr(model.config, f) for f in init} == {f: getattr(peer_config, f) for f in init}
    torch.testing.assert_close(logits(model), logits(peer), atol=1e-4, rtol=1e-4)


def test_mamba_ssm_keeps_the_checkpoints_dtype():
    peer, config = mamba1_pair()
    state = {k.replace("embeddings", "embedding"): v.to(torch.bfloat16) for k, v in peer.state_dict().items()}
    model = convert_mamba_ssm(state, config=config)
    assert model.dtype == torch.bfloat16
    assert torch.equal(model.get_input_embeddings().weight, state["backbone.embedding.weight"])
    assert convert_mamba_ssm(state, config=config, dtype=torch.float32).dtype == torch.float32


# ---- flash-linear-attention RWKV-7 ----------------------------------------------------------------------------

FLA_CONFIG = {"model_type": "rwkv7", "hidden_size": 32, "head_dim": 16, "num_hidden_layers": 2, "norm_eps": 1e-5,
              "hidden_act": "sqrelu", "norm_first": True, "norm_bias": True, "attn": None, "value_dim": [32, 32],
              "bos_token_id": 0, "eos_token_id": 0, "vocab_size": 67, "tie_word_embeddings": False}


def fla_layout(pth):
    """An RWKV-LM x070 state dict in fla's RWKV7ForCausalLM layout: nn.Linear LoRAs (``lora.0`` (D, C),
    ``lora.2`` (C, D) with the x0 vector as its bias; the gate has none; layer 0 has no v_lora), ``k_k`` / ``k_a`` /
    ``ffn.x_k`` flat, the token-shift mixes (1, 1, C), ``pre_norm`` on layer 0 only."""
    layers = 1 + max(int(k.split(".")[1]) for k in pth if k.startswith("blocks."))
    sd = {"model.embeddings.weight": pth["emb.weight"], "lm_head.weight": pth["head.weight"],
          "model.norm.weight": pth["ln_out.weight"], "model.norm.bias": pth["ln_out.bias"],
          "model.layers.0.pre_norm.weight": pth["blocks.0.ln0.weight"],
          "model.layers.0.pre_norm.bias": pth["blocks.0.ln0.bias"]}
    for i in range(layers):
        b, m = f"blocks.{i}.", f"model.layers.{i}."
        for ours, theirs in (("ln1", "attn_norm"), ("ln2", "ffn_norm")):
            sd[f"{m}{theirs}.weight"], sd[f"{m}{theirs}.bias"] = pth[f"{b}{ours}.weight"], pth[f"{b}{ours}.bias"]
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            sd[f"{m}attn.{name}"] = pth[f"{b}att.{name}"].reshape(1, 1, -1)
        sd[f"{m}attn.k_k"], sd[f"{m}attn.k_a"] = pth[f"{b}att.k_k"].reshape(-1), pth[f"{b}att.k_a"].reshape(-1)
        sd[f"{m}attn.r_k"] = pth[f"{b}att.r_k"]
        for ours, theirs in (("receptance", "r_proj"), ("key", "k_proj"), ("value", "v_proj"), ("output", "o_proj")):
            sd[f"{m}attn.{theirs}.weight"] = pth[f"{b}att.{ours}.weight"]
        for lora in ("w", "a", "v", "g"):
            if lora == "v" and i == 0:
                continue
            sd[f"{m}attn.{lora}_lora.lora.0.weight"] = pth[f"{b}att.{lora}1"].t().contiguous()
            sd[f"{m}attn.{lora}_lora.lora.2.weight"] = pth[f"{b}att.{lora}2"].t().contiguous()
            if lora != "g":
                sd[f"{m}attn.{lora}_lora.lora.2.bias"] = pth[f"{b}att.{lora}0"].reshape(-1)
        sd[f"{m}attn.g_norm.weight"], sd[f"{m}attn.g_norm.bias"] = pth[f"{b}att.ln_x.weight"], pth[f"{b}att.ln_x.bias"]
        sd[f"{m}ffn.x_k"] = pth[f"{b}ffn.x_k"].reshape(-1)
        sd[f"{m}ffn.key.weight"], sd[f"{m}ffn.value.weight"] = pth[f"{b}ffn.key.weight"], pth[f"{b}ffn.value.weight"]
    return sd


@pytest.fixture(scope="module")
def pth():
    return random_x070_checkpoint(vocab=67, hidden=32, layers=2, head_size=16, ffn=72, seed=7)


def test_fla_layout_matches_the_pth_path(pth):
    model = convert_fla_rwkv7(fla_layout(pth), config=FLA_CONFIG)
    # fla's GroupNorm eps is head_dim * norm_eps (x070's 64e-5 at head size 64; 16e-5 here).
    assert model.config.group_norm_eps == pytest.approx(16e-5) and model.config.eos_token_id == 0
    torch.testing.assert_close(logits(model), logits(convert_rwkv7(pth, group_norm_eps=16e-5)), rtol=0, atol=0)


def test_fla_folder_and_first_layout(pth, tmp_path):
    from safetensors.torch import save_file

    sd = fla_layout(pth)
    for i in range(2):  # fla's first layout: the six token-shift mixes stacked in attn.x_x
        names = [f"model.layers.{i}.attn.x_{c}" for c in "rwkvag"]
        sd[f"model.layers.{i}.attn.x_x"] = torch.stack([sd.pop(n).reshape(-1) for n in names])
    (tmp_path / "src").mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "src" / "model.safetensors")
    (tmp_path / "src" / "config.json").write_text(json.dumps(FLA_CONFIG))
    assert seqzoo_main(["convert", "fla-rwkv7", str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(loaded), logits(convert_rwkv7(pth, group_norm_eps=16e-5)), rtol=0, atol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c, sd: c.update(attn={"layers": [1], "num_heads": 2}), r"attn=.*hybrid attention layers"),
        (lambda c, sd: c.update(value_dim=64), r"value_dim=64"),
        (lambda c, sd: c.update(norm_first=False), r"norm_first=False"),
        (lambda c, sd: c.update(hidden_act="relu"), r"hidden_act='relu'"),
        (lambda c, sd: sd.update({"model.layers.1.attn.extra.weight": torch.zeros(2)}),
         r"not part of fla's RWKV7ForCausalLM: model.layers.1.attn.extra.weight"),
        (lambda c, sd: sd.pop("model.layers.1.attn.a_lora.lora.2.bias"), r"missing tensors blocks.1.att.a0.*fla's "
                                                                        r"model.layers.N.attn.\* is blocks.N.att.\*"),
        (lambda c, sd: c.update(model_type="rwkv6"), r"not an fla RWKV-7 config: model_type='rwkv6'"),
        (lambda c, sd: c.update(value_dim=[32, 64]), r"value_dim=\[32, 64\]: a value width other than hidden_size"),
        (lambda c, sd: sd.pop("model.layers.0.attn.r_k"), r"not an fla RWKV-7 checkpoint: missing .*"
                                                           r"model.layers.0.attn.r_k"),
        (lambda c, sd: sd.pop("model.embeddings.weight"), r"not an fla RWKV-7 checkpoint: missing "
                                                           r"model.embeddings.weight"),
        # the last layer's tensors absent (a shard left behind): it converted into a one-layer model
        (lambda c, sd: [sd.pop(k) for k in list(sd) if k.startswith("model.layers.1.")],
         r"the fla config does not fit its tensors: num_hidden_layers=2 \(the tensors hold 1\); is a shard"),
        (lambda c, sd: c.update(vocab_size=100), r"vocab_size=100 \(the tensors hold 67\)"),
        (lambda c, sd: c.update(norm_eps=None), r"norm_eps=None; expected a positive number"),
        (lambda c, sd: sd.update({"model.embeddings.weight": sd["model.embeddings.weight"].reshape(-1)}),
         r"emb.weight has shape \(2144,\); expected a matrix \(vocab, n_embd\)"),
    ],
    ids=["hybrid", "value-dim", "no-ln0", "activation", "unknown-tensor", "missing", "model-type", "value-dim-list",
         "no-r_k", "no-embedding", "last-layer-missing", "vocab-size", "norm-eps-null", "embedding-1d"],
)
def test_fla_refusals(pth, change, message):
    config, sd = dict(FLA_CONFIG), fla_layout(pth)
    change(config, sd)
    with pytest.raises(ValueError, match=message):
        convert_fla_rwkv7(sd, config=config)


def test_fla_sources_without_their_config_are_named(pth, tmp_path):
    with pytest.raises(ValueError, match=r"is not an fla checkpoint folder \(no config.json\)"):
        convert_fla_rwkv7(tmp_path)
    with pytest.raises(ValueError, match=r"an fla RWKV-7 state dict needs its config .*: pass config=\.\.\."):
        convert_fla_rwkv7(fla_layout(pth))


def test_a_config_object_converts_as_its_dict_and_a_config_of_another_kind_is_named(pth, tmp_path):
    # fla's RWKV7Config and mamba_ssm's MambaConfig dataclass, given as config=, stopped the conversion with
    # AttributeError ('... object has no attribute get') or TypeError ('not iterable'); a path was read letter by
    # letter as the config's keys.
    import dataclasses

    from transformers import PretrainedConfig

    class FlaConfig(PretrainedConfig):  # (what fla's RWKV7Config is to transformers)
        model_type = "rwkv7"

    expected = logits(convert_fla_rwkv7(fla_layout(pth), config=FLA_CONFIG))
    fla_config = FlaConfig(**{k: v for k, v in FLA_CONFIG.items() if k != "model_type"})
    torch.testing.assert_close(logits(convert_fla_rwkv7(fla_layout(pth), config=fla_config)), expected, rtol=0, atol=0)

    peer, config = mamba1_pair()
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in peer.state_dict().items()}
    mamba_ssm_config = dataclasses.make_dataclass("MambaConfig", [(k, object) for k in config])(**config)
    torch.testing.assert_close(logits(convert_mamba_ssm(state, config=mamba_ssm_config)),
                               logits(peer.eval()), atol=1e-4, rtol=1e-4)
    for convert, source, what in ((convert_fla_rwkv7, fla_layout(pth), "fla RWKV-7"), (convert_mamba_ssm, state,
                                                                                      "mamba_ssm")):
        with pytest.raises(ValueError, match=rf"the {what} config must be the dict of the checkpoint's config.json "
                                             r"\(or its config object\); got str 'config.json'"):
            convert(source, config="config.json")


def test_fla_tied_head_and_layernorms_without_bias(pth):
    """fla's tie_word_embeddings: the saved checkpoint holds no lm_head (safetensors stores the shared tensor once);
    norm_bias: false: its LayerNorms (pre_norm, attn_norm, ffn_norm, norm) have no bias, while the GroupNorm g_norm
    keeps one (fla/models/rwkv7/modeling_rwkv7.py, fla/layers/rwkv7.py)."""
    tied = dict(pth, **{"head.weight": pth["emb.weight"]})
    no_bias = {k: (torch.zeros_like(v) if k.endswith("bias") and ".att.ln_x." not in k else v) for k, v in tied.items()}
    sd = {k: v for k, v in fla_layout(no_bias).items()
          if k != "lm_head.weight" and not (k.endswith("norm.bias") and "g_norm" not in k)}
    assert "model.layers.1.attn.g_norm.bias" in sd and "model.layers.1.ffn_norm.bias" not in sd
    model = convert_fla_rwkv7(sd, config={**FLA_CONFIG, "tie_word_embeddings": True, "norm_bias": False})
    expected = convert_rwkv7(no_bias, group_norm_eps=16e-5)
    torch.testing.assert_close(logits(model), logits(expected), rtol=0, atol=0)
    # untied, the head is missing, not the embedding (else a folder lacking its head shard converted tied, silently)
    with pytest.raises(ValueError, match=r"missing tensors head.weight"):
        convert_fla_rwkv7(sd, config={**FLA_CONFIG, "tie_word_embeddings": False, "norm_bias": False})


@pytest.mark.parametrize("norm_eps", [1e-3, None], ids=["set", "fla-default"])
def test_fla_norm_eps(pth, norm_eps):
    """fla's LayerNorms use norm_eps (RWKV7Config's default 1e-5), its GroupNorm head_dim * norm_eps."""
    config = {k: v for k, v in FLA_CONFIG.items() if k != "norm_eps"}
    if norm_eps is not None:
        config["norm_eps"] = norm_eps
    eps = 1e-5 if norm_eps is None else norm_eps
    model = convert_fla_rwkv7(fla_layout(pth), config=config)
    assert model.config.layer_norm_eps == pytest.approx(eps) and model.config.group_norm_eps == pytest.approx(16 * eps)
    expected = convert_rwkv7(pth, layer_norm_eps=eps, group_norm_eps=16 * eps)
    torch.testing.assert_close(logits(model), logits(expected), rtol=0, atol=0)


def test_fla_folder_passes_on_its_tokenizer_code(pth, tmp_path):
    """fla's World-tokenizer checkpoints ship the tokenizer as code named in auto_map, with its vocabulary."""
    from safetensors.torch import save_file

    src = tmp_path / "src"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in fla_layout(pth).items()}, src / "model.safetensors")
    (src / "config.json").write_text(json.dumps(FLA_CONFIG))
    files = {"tokenizer_config.json": json.dumps({"auto_map": {"AutoTokenizer": ["hf_rwkv_tokenizer.RwkvTokenizer",
                                                                                 None]}}),
             "hf_rwkv_tokenizer.py": "class RwkvTokenizer: pass\n", "rwkv_vocab_v20230424.txt": "1 '\\x00' 1\n"}
    for name, text in files.items():
        (src / name).write_text(text)
    assert seqzoo_main(["convert", "fla-rwkv7", str(src), str(tmp_path / "out")]) == 0
    for name, text in files.items():
        assert (tmp_path / "out" / name).read_text() == text, name


def test_a_mamba_ssm_mamba2_without_its_gated_norm_converts_whatever_norm_before_gate_says():
    """mamba_ssm reads norm_before_gate only inside the gated RMSNorm, which rmsnorm=false leaves out: the conversion
    drops it there (seqzoo refuses a config setting it where nothing reads it)."""
    from seqzoo.conversions.mamba_ssm import config_from_mamba_ssm

    config = config_from_mamba_ssm({"d_model": 16, "n_layer": 1, "ssm_cfg": {
        "layer": "Mamba2", "d_state": 4, "headdim": 8, "rmsnorm": False, "norm_before_gate": True}}, 32)
    assert (config.rms_norm, config.norm_before_gate) == (False, False)


# ---- a folder's generation_config.json ------------------------------------------------------------------------

def _fla_folder(pth, folder):
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({k: v.contiguous() for k, v in fla_layout(pth).items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(FLA_CONFIG))
    return folder


@pytest.mark.parametrize("kind", ["mamba_ssm", "fla"])
def test_a_folders_generation_config_comes_with_the_converted_model(kind, pth, tmp_path):
    # (the model returned generated from config.json alone; only the *_folder functions copied the file)
    if kind == "mamba_ssm":
        peer, config = mamba1_pair()
        folder, convert = mamba_ssm_folder(tmp_path / "src", peer, config), convert_mamba_ssm
    else:
        folder, convert = _fla_folder(pth, tmp_path / "src"), convert_fla_rwkv7
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 500], "max_new_tokens": 3}))
    model = convert(folder)
    assert model.generation_config.eos_token_id == [5] and model.generation_config.max_new_tokens == 3
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": "2"}))
    with pytest.raises(ValueError, match=r"sets eos_token_id='2': a token id is an integer"):
        convert(folder)
    (folder / "generation_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"generation_config.json' is no generation config transformers reads"):
        convert(folder)
    # (a setting seqzoo's loading refuses in a saved folder: transformers took it, and the model sampled)
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": "false"}))
    with pytest.raises(ValueError, match=r"generation_config.json': do_sample='false' is invalid: expected true or"):
        convert(folder)
