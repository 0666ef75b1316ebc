"""The hybrid against implementations seqzoo did not write.

A hybrid whose every layer is ``"attention"`` with the gated MLP, RMSNorm and rotary positions computes what
transformers' ``LlamaForCausalLM`` computes (RoPE in the half-split layout, pre-norm RMSNorm, SwiGLU, grouped-query
attention); one whose every layer is ``"mamba"`` without MLPs and positions computes what ``MambaForCausalLM``
computes. The peers are built here with random weights (norms included, so that every term matters), copied over
by a rename and compared logit for logit: under each attention implementation, when decoding, in bfloat16 and
after a save and load (the all-attention hybrid is also one of test_transformer_reference's pairs: a left-padded
batch, greedy generation). The rotary table and its application are also compared with
transformers' functions directly, away from any model.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MambaConfig, MambaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

import seqzoo
from seqzoo.conversions.llama import convert_llama
from seqzoo.layers.positions import RotaryEmbedding, apply_rotary
from seqzoo.models.compat import output_cache

IDS = torch.tensor([[5, 17, 33, 8, 61, 12, 40], [9, 3, 60, 44, 21, 6, 2]])
# (hybrid name inside a layer, the peer's)
LLAMA_NAMES = {"norm": "input_layernorm", "mixer": "self_attn", "mlp_norm": "post_attention_layernorm"}


def randomize(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if "norm" in name else 0.0))
    return model.eval()


def llama(seed=0, **overrides):
    # attention_dropout: a model in eval mode never drops (sdpa takes the rate as an argument).
    config = LlamaConfig(**{**dict(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                                   rms_norm_eps=1e-5, attention_dropout=0.5, tie_word_embeddings=False), **overrides})
    return randomize(LlamaForCausalLM(config), seed)


def hybrid_of_llama(peer):
    """The all-attention hybrid with ``peer``'s weights."""
    c = peer.config
    config = seqzoo.HybridConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, mixer_types=["attention"] * c.num_hidden_layers,
        mixer_config={"attention": {"num_attention_heads": c.num_attention_heads,
                                    "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
                                    "attention_bias": c.attention_bias, "attention_dropout": c.attention_dropout}},
        intermediate_size=c.intermediate_size, mlp_bias=c.mlp_bias, norm_eps=c.rms_norm_eps,
        rope_theta=c.rope_parameters["rope_theta"], tie_word_embeddings=c.tie_word_embeddings)
    model = seqzoo.HybridForCausalLM(config)
    weights = {}
    for name, tensor in peer.state_dict().items():
        for ours, theirs in LLAMA_NAMES.items():
            name = name.replace(f".{theirs}.", f".{ours}.")
        weights[name] = tensor
    model.load_state_dict(weights, strict=True)
    return model.eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_an_all_attention_hybrid_computes_what_llama_computes(attn):
    peer = llama()
    model = hybrid_of_llama(peer)
    model.set_attn_implementation(attn)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, peer(IDS).logits, atol=2e-5, rtol=1e-5)


def test_an_all_attention_hybrid_with_biases_tied_weights_and_another_eps_is_llama():
    # (a large eps, so that a norm reading another eps shows)
    peer = llama(seed=1, attention_bias=True, mlp_bias=True, tie_word_embeddings=True, num_key_value_heads=4,
                 head_dim=12, rms_norm_eps=0.05)
    model = hybrid_of_llama(peer)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, peer(IDS).logits, atol=2e-5, rtol=1e-5)


def test_hybrid_decoding_continues_where_llama_does():
    peer = llama()
    model = hybrid_of_llama(peer)
    with torch.no_grad():
        step = model(IDS[:, 4:], cache=output_cache(model(IDS[:, :4], use_cache=True))).logits
        torch.testing.assert_close(step, peer(IDS).logits[:, 4:], atol=2e-5, rtol=1e-5)
    kwargs = dict(attention_mask=torch.ones_like(IDS), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(IDS, **kwargs), peer.generate(IDS, **kwargs))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_bfloat16_hybrid_is_a_bfloat16_llama(attn, tmp_path):
    # The Llama as transformers loads it in bfloat16 (its rotary frequencies float32, as seqzoo keeps them under a
    # cast too; transformers' own .to(torch.bfloat16) rounds them to bfloat16, and the same Llama computes otherwise
    # once saved and loaded again).
    float_peer = llama()
    float_peer.save_pretrained(tmp_path)
    peer = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert peer.model.rotary_emb.inv_freq.dtype == torch.float32
    model = hybrid_of_llama(float_peer).to(torch.bfloat16)
    model.set_attn_implementation(attn)
    peer.set_attn_implementation(attn)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, peer(IDS).logits)  # (bfloat16's own tolerance)


def test_a_saved_and_loaded_hybrid_keeps_its_rotary_base(tmp_path):
    # The rotary frequencies are no weights (not saved): a loaded model computes them again from rope_theta.
    peer = llama()
    hybrid_of_llama(peer).save_pretrained(tmp_path)
    loaded = seqzoo.HybridForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, peer(IDS).logits, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("head_dim, theta", [(8, 10000.0), (12, 500.0)])
def test_rotary_positions_are_llamas(head_dim, theta):
    theirs = LlamaRotaryEmbedding(LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                                              rope_parameters={"rope_type": "default", "rope_theta": theta}))
    ours = RotaryEmbedding(head_dim, theta)
    positions = torch.tensor([[0, 1, 2, 3, 40], [0, 0, 5, 6, 7]])
    x = torch.zeros(2, 5, 4 * head_dim)
    cos, sin = ours(x, positions)
    want_cos, want_sin = theirs(x, positions)
    torch.testing.assert_close(cos, want_cos)
    torch.testing.assert_close(sin, want_sin)
    q, k = torch.randn(2, 4, 5, head_dim), torch.randn(2, 2, 5, head_dim)  # (B, heads, T, D), fewer K/V heads
    for got, want in zip(apply_rotary(q, k, cos, sin), apply_rotary_pos_emb(q, k, want_cos, want_sin)):
        torch.testing.assert_close(got, want)
    assert ours(x.bfloat16(), positions)[0].dtype == torch.bfloat16  # in the dtype of the model's activations


def mamba():
    config = MambaConfig(vocab_size=99, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=3,
                         time_step_rank=4, use_bias=True, layer_norm_epsilon=1e-5)
    return randomize(MambaForCausalLM(config), seed=2)


def test_an_all_mamba_hybrid_without_mlps_computes_what_mamba_computes():
    peer = mamba()
    c = peer.config
    config = seqzoo.HybridConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, mixer_types=["mamba"] * c.num_hidden_layers,
        mlp_layers=[False] * c.num_hidden_layers, position_embedding="none", norm_eps=c.layer_norm_epsilon,
        mixer_config={"mamba": {"state_size": c.state_size, "expand": c.expand, "conv_kernel": c.conv_kernel,
                                "time_step_rank": c.time_step_rank, "use_bias": c.use_bias,
                                "use_conv_bias": c.use_conv_bias}})
    model = seqzoo.HybridForCausalLM(config)
    weights = {name.replace("backbone.", "model.").replace("embeddings.", "embed_tokens.").replace("norm_f.", "norm."):
               tensor for name, tensor in peer.state_dict().items()}
    model.load_state_dict(weights, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(IDS).logits, peer(IDS).logits, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("convert", [hybrid_of_llama, convert_llama], ids=["hybrid", "transformer"])
def test_attention_weights_are_llamas_and_come_as_asked(convert):
    # output_attentions=False was overridden by a config's output_attentions=True: the weights came anyway (in the
    # hybrid and in the Transformer, which the Llama converter builds).
    peer = llama()
    model = convert(peer)
    for m in (model, peer):
        m.set_attn_implementation("eager")
        m.config.output_attentions = True
    with torch.no_grad():
        ours, theirs = model(IDS).attentions, peer(IDS).attentions
        assert len(ours) == len(theirs) == 2
        for got, want in zip(ours, theirs):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        assert peer(IDS, output_attentions=False).attentions is None
        assert model(IDS, output_attentions=False).attentions is None


def test_a_training_hybrid_drops_attention_weights_as_llama_does():
    # Eager attention drops its weights while training (sdpa too, with its own random draws): with the same seed
    # the two models drop the same ones.
    peer = llama().train()
    model = hybrid_of_llama(peer).train()
    for m in (model, peer):
        m.set_attn_implementation("eager")
    logits = []
    for m in (model, peer, model):
        torch.manual_seed(0)
        with torch.no_grad():
            logits.append(m(IDS).logits)
    torch.testing.assert_close(logits[0], logits[1], atol=2e-5, rtol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(logits[2], model.eval()(IDS).logits, atol=1e-3)  # (and something was dropped)
