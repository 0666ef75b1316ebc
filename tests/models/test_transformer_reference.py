"""The seqzoo Transformer against implementations seqzoo did not write.

Llama and GPT-2 variants: transformers' own ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` / ``GPT2LMHeadModel``, built
here with random weights (all of them, biases and norms included, so that every term matters), mapped with
``seqzoo.conversions`` and compared logit for logit under each attention implementation, alone and in a left-padded
batch. The Vaswani variant has no peer in transformers; ``vaswani_logits`` below restates it from the paper
(sinusoidal positions added to embeddings scaled by sqrt(d), post-norm residual blocks, ReLU MLP, biases) in
float64, reading only the state dict.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import seqzoo
from seqzoo.conversions.gpt2 import convert_gpt2
from seqzoo.conversions.llama import convert_llama
from tests.models.test_hybrid_reference import hybrid_of_llama

IDS = torch.tensor([[5, 17, 33, 8, 61, 12, 40], [9, 3, 60, 44, 21, 6, 2]])
ATTENTION = ["eager", "sdpa"]


def randomize(model, seed=0, scale=0.3):
    """Every parameter random (norm weights around 1), so that a dropped bias or a wrong norm shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shift = 1.0 if "norm" in name or "ln_" in name else 0.0
            p.copy_(torch.randn(p.shape, generator=gen) * scale + shift)
    return model.eval()


def llama(**overrides):
    config = LlamaConfig(**{**dict(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                                   rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2), **overrides})
    return randomize(LlamaForCausalLM(config))


def qwen2(**overrides):
    config = Qwen2Config(**{**dict(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True),
                            **overrides})
    return randomize(Qwen2ForCausalLM(config), seed=1)


def gpt2(**overrides):
    config = GPT2Config(**{**dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_inner=48, n_positions=64,
                                  bos_token_id=1, eos_token_id=2), **overrides})
    return randomize(GPT2LMHeadModel(config), seed=2, scale=0.2)


PEERS = {
    "llama-gqa-untied": (llama, convert_llama),
    "llama-biases-tied": (lambda: llama(attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
                                        num_key_value_heads=4, head_dim=12), convert_llama),
    "qwen2-qkv-bias": (qwen2, convert_llama),
    "gpt2-tied": (gpt2, convert_gpt2),
    "gpt2-untied-relu": (lambda: gpt2(tie_word_embeddings=False, activation_function="relu"), convert_gpt2),
    # the hybrid whose every layer is attention with the gated MLP, given Llama's weights by a rename
    "hybrid-all-attention": (llama, hybrid_of_llama),
}


@pytest.fixture(scope="module", params=sorted(PEERS))
def pair(request):
    make, convert = PEERS[request.param]
    peer = make()
    return peer, convert(peer)


@pytest.mark.parametrize("attn", ATTENTION)
def test_logits_match_transformers(pair, attn):
    peer, model = pair
    model.set_attn_implementation(attn)
    with torch.no_grad():
        expected = peer(IDS).logits
        actual = model(IDS).logits
    torch.testing.assert_close(actual, expected, atol=2e-5, rtol=1e-5)


def test_left_padded_batch_matches_transformers(pair):
    peer, model = pair
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    # transformers' models count positions from the first column unless told; seqzoo counts real tokens only.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = peer(IDS, attention_mask=mask, position_ids=positions).logits
        actual = model(IDS, attention_mask=mask).logits
    torch.testing.assert_close(actual[mask.bool()], expected[mask.bool()], atol=2e-5, rtol=1e-5)


def test_greedy_generation_matches_transformers(pair):
    peer, model = pair
    kwargs = dict(attention_mask=torch.ones_like(IDS), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(IDS, **kwargs), peer.generate(IDS, **kwargs))


def test_rope_theta_and_bias_mapping_are_used():
    # Guards against a mapping that passes by accident: another theta or a missing o_proj bias must show.
    peer = llama(attention_bias=True)
    model = convert_llama(peer)
    assert model.config.rope_theta == 500.0 and model.config.attention_bias
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.bias.zero_()
        assert (model(IDS).logits - peer(IDS).logits).abs().max() > 1e-3


# ---- Vaswani et al. 2017, restated --------------------------------------------------------------------------

def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def sinusoid(positions, d):
    # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))
    table = torch.zeros(len(positions), d, dtype=torch.float64)
    for row, pos in enumerate(positions):
        for i in range(0, d, 2):
            angle = pos / 10000 ** (i / d)
            table[row, i] = math.sin(angle)
            if i + 1 < d:
                table[row, i + 1] = math.cos(angle)
    return table


def vaswani_logits(sd, tokens, heads, eps):
    """Logits of one sequence: a decoder-only Vaswani Transformer, from the state dict, in float64."""
    z = {k: v.double() for k, v in sd.items()}
    d = z["model.embed_tokens.weight"].shape[1]
    T, hd = len(tokens), d // heads
    x = z["model.embed_tokens.weight"][tokens] * math.sqrt(d) + sinusoid(range(T), d)
    layers = 1 + max(int(k.split(".")[2]) for k in z if k.startswith("model.layers."))

    def linear(name, h):
        return h @ z[name + ".weight"].T + z[name + ".bias"]

    for i in range(layers):
        p = f"model.layers.{i}."
        q, k, v = (linear(p + f"self_attn.{n}_proj", x).view(T, heads, hd).transpose(0, 1) for n in "qkv")
        scores = q @ k.transpose(1, 2) / math.sqrt(hd)  # (heads, T, T)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        attended = (scores.softmax(-1) @ v).transpose(0, 1).reshape(T, d)
        x = layer_norm(x + linear(p + "self_attn.o_proj", attended), z[p + "attn_norm.weight"],
                       z[p + "attn_norm.bias"], eps)
        ffn = linear(p + "mlp.down_proj", torch.relu(linear(p + "mlp.up_proj", x)))
        x = layer_norm(x + ffn, z[p + "mlp_norm.weight"], z[p + "mlp_norm.bias"], eps)
    return x @ z["lm_head.weight"].T


@pytest.mark.parametrize("attn", ATTENTION)
def test_vaswani_matches_the_formulas(attn):
    torch.manual_seed(0)
    config = seqzoo.TransformerConfig(variant="vaswani", vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=48, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    model = randomize(seqzoo.TransformerForCausalLM(config), seed=3, scale=0.2)
    model.set_attn_implementation(attn)
    with torch.no_grad():
        logits = model(IDS).logits
    sd = model.state_dict()
    for row in range(IDS.shape[0]):
        expected = vaswani_logits(sd, IDS[row].tolist(), heads=4, eps=config.layer_norm_eps)
        torch.testing.assert_close(logits[row].double(), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dim", [32, 7])
def test_the_sinusoidal_table_is_the_papers_for_even_and_odd_widths(dim):
    # (an odd width, as a Vaswani model of 5 heads of 7 has, ends on a sine column)
    from seqzoo.layers.positions import sinusoidal_table

    torch.testing.assert_close(sinusoidal_table(50, dim).double(), sinusoid(range(50), dim), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["gpt2", "vaswani"])
def test_negative_positions_are_refused_by_tables(variant):
    # A sinusoidal table read position -1 as its last row (silently), a learned one raised a bare IndexError.
    config = seqzoo.TransformerConfig(variant=variant, vocab_size=99, hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=4, max_position_embeddings=16)
    model = seqzoo.TransformerForCausalLM(config).eval()
    with pytest.raises(ValueError, match=r"position_ids contain -1: positions must be in \[0, max_position_embeddings"):
        model(torch.tensor([[5, 6, 7]]), position_ids=torch.tensor([[-1, 0, 1]]))


@pytest.mark.parametrize("config_class", ["TransformerConfig", "HybridConfig"])
def test_rope_scaling_is_refused_not_ignored(config_class):
    # transformers' config takes rope_scaling / rope_parameters as its own keywords; seqzoo computes plain RoPE.
    cls = getattr(seqzoo, config_class)
    with pytest.raises(ValueError, match="rope_type='linear' is not supported"):
        cls(vocab_size=99, hidden_size=32, rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="set that instead"):
        cls(vocab_size=99, hidden_size=32, rope_scaling={"rope_type": "default", "rope_theta": 5e5})
    cls(vocab_size=99, hidden_size=32, rope_scaling={"rope_type": "default", "rope_theta": 10000.0})


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_boolean_4d_mask_masks_in_every_implementation(attn):
    # eager added the bool mask to the scores (True as +1) instead of masking: wrong logits, no error.
    torch.manual_seed(0)
    config = seqzoo.TransformerConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    model = seqzoo.TransformerForCausalLM(config).eval()
    model.set_attn_implementation(attn)
    ids, mask = torch.randint(1, 99, (2, 6)), torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    causal = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    mask4 = (causal[None] & mask.bool()[:, None, :])[:, None]  # (B, 1, T, T), True where a query attends
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        got = model(ids, attention_mask=mask4, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()])


def test_attention_weights_asked_of_sdpa_are_said_to_be_missing(caplog):
    from seqzoo.layers import attention

    model = seqzoo.TransformerForCausalLM(seqzoo.TransformerConfig(vocab_size=99, hidden_size=32,
                                                                   num_attention_heads=4)).eval()
    model.set_attn_implementation("sdpa")
    attention._WARNED_NO_WEIGHTS.discard("sdpa")
    with caplog.at_level("WARNING", logger="seqzoo"), torch.no_grad():
        for _ in range(2):
            assert model(torch.tensor([[5, 6, 7]]), output_attentions=True).attentions == (None, None)
    assert caplog.text.count("attn_implementation='sdpa' forms no attention weights") == 1  # (once, not per layer)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        assert all(w.shape == (1, 4, 3, 3) for w in model(torch.tensor([[5, 6, 7]]), output_attentions=True).attentions)



@pytest.mark.parametrize("preset", ["transformer-tiny", "hybrid-tiny"])
@pytest.mark.parametrize("cast", ["bfloat16", "half", "to_device_and_dtype"])
def test_rope_frequencies_stay_float32_under_a_half_precision_cast(preset, cast, tmp_path):
    # A model cast after building computed its positions from bfloat16 frequencies, one loaded in bfloat16 from float32
    # ones: the same model's logits moved by up to 4e-3 through save_pretrained and from_pretrained.
    from transformers import AutoModelForCausalLM

    from tests.conftest import tiny_model

    built = tiny_model(preset)
    frequencies = built.model.rotary_emb.inv_freq.clone()
    model = {"bfloat16": lambda m: m.to(torch.bfloat16), "half": lambda m: m.half(),
             "to_device_and_dtype": lambda m: m.to("cpu", torch.bfloat16)}[cast](built).eval()
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(model.model.rotary_emb.inv_freq, frequencies)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.dtype == model.dtype
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert model.double().model.rotary_emb.inv_freq.dtype == torch.float64  # (a float64 model computes in float64)


@pytest.mark.parametrize("preset", ["transformer-tiny", "seq2seq-transformer-tiny"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_sinusoidal_table_stays_float32_under_a_half_precision_cast(preset, dtype, tmp_path):
    # The table was rounded by a cast to half precision and kept rounded by a later .float(): a bfloat16 checkpoint
    # loaded and cast to float32 for fine-tuning computed other logits (by up to 3e-3) than the same weights loaded
    # in float32, since the table is never saved.
    from transformers import AutoModel

    from seqzoo.layers.positions import SinusoidalPositions
    from tests.conftest import tiny_model

    kwargs = {"variant": "vaswani"} if preset == "transformer-tiny" else {}
    built = tiny_model(preset, **kwargs)
    tables = [m for m in built.modules() if isinstance(m, SinusoidalPositions)]
    table_name = next(name for name, m in built.named_modules() if isinstance(m, SinusoidalPositions))
    assert tables
    exact = tables[0].table.clone()
    built.to(dtype).save_pretrained(tmp_path)
    assert tables[0].table.dtype == torch.float32 and torch.equal(tables[0].table, exact)
    loaded_half = AutoModel.from_pretrained(tmp_path, dtype=dtype)
    assert next(m for m in loaded_half.modules() if isinstance(m, SinusoidalPositions)).table.dtype == torch.float32
    back = loaded_half.float().eval()
    loaded = AutoModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13]])
    inputs = {"input_ids": ids} if preset == "transformer-tiny" else {"input_ids": ids, "decoder_input_ids": ids}
    with torch.no_grad():
        assert torch.equal(back(**inputs).last_hidden_state, loaded(**inputs).last_hidden_state)
        assert torch.equal(built.float().eval()(**inputs).logits.float(),
                           type(built).from_pretrained(tmp_path, dtype=torch.float32).eval()(**inputs).logits)
    # A float64 model's table is float64's, not float32's values cast (6e-5 off at position 2047): cast or loaded.
    from seqzoo.layers.positions import sinusoidal_table

    exact = sinusoidal_table(*tables[0].table.shape, dtype=torch.float64)
    assert exact.dtype == torch.float64 and not torch.equal(exact, exact.float().double())
    assert torch.equal(built.double().get_submodule(table_name).table, exact)
    loaded64 = type(built).from_pretrained(tmp_path, dtype=torch.float64)
    assert torch.equal(loaded64.get_submodule(table_name).table, exact)
