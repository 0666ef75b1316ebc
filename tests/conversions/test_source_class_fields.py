"""``partial_rotary_factor`` and ``sliding_window`` in a Llama / Mistral / Qwen2 source: converted where transformers'
own class computes the same logits with and without the field, refused where it does not.

Each case first measures, on the installed transformers, what the source class does with the field (its logits on a
40-token input, longer than the window, against the same weights without the field), then checks that
``convert_llama`` decided the same way: transformers 5.24's Llama ignores both fields, its Mistral and Qwen2 the
partial rotary factor, and they were refused all the same. The converter asks the class too
(``source_class_reads``), so a release that changes what a class reads changes the decision, not these tests.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaForCausalLM, MistralConfig, MistralForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from seqzoo.cli import main as seqzoo_main
from seqzoo.conversions.llama import convert_llama
from tests.models.test_transformer_reference import llama, qwen2, randomize

IDS = torch.randint(0, 99, (2, 40), generator=torch.Generator().manual_seed(0))
WINDOW = 16  # (< 40 tokens: a window that is computed shows)


def mistral(**overrides):
    config = MistralConfig(**{**dict(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                     sliding_window=None), **overrides})
    return randomize(MistralForCausalLM(config), seed=3)


MAKERS = {"llama": llama, "mistral": mistral, "qwen2": qwen2}
PARTIAL = {"top-level": dict(partial_rotary_factor=0.5),
           "rope_parameters": dict(rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                                    "partial_rotary_factor": 0.5})}
SLIDING = {"llama": dict(sliding_window=WINDOW), "mistral": dict(sliding_window=WINDOW),
           **{f"qwen2-from-layer-{n}": dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=n)
              for n in (0, 1, 2)}}
CASES = [(kind, fields) for kind in MAKERS for fields in PARTIAL.values()] + \
        [(name.split("-")[0], fields) for name, fields in SLIDING.items()]
IDS_OF_CASES = [f"{kind}-partial-{where}" for kind in MAKERS for where in PARTIAL] + \
               [f"{name}-sliding" for name in SLIDING]


def logits(model):
    with torch.no_grad():
        return model(IDS).logits.float()


def with_and_without(kind, fields):
    """The source with ``fields``, and the same weights without them (the rest of a ``rope_parameters`` kept)."""
    peer = MAKERS[kind](**fields)
    rope = fields.get("rope_parameters", {})
    plain = MAKERS[kind](**({"rope_parameters": {**rope, "partial_rotary_factor": 1.0}} if rope else {}))
    plain.load_state_dict(peer.state_dict())
    return peer, plain


@pytest.mark.parametrize("kind, fields", CASES, ids=IDS_OF_CASES)
def test_a_field_is_converted_exactly_where_the_source_class_ignores_it(kind, fields, caplog):
    peer, plain = with_and_without(kind, fields)
    name = type(peer).__name__
    field = "sliding_window" if "sliding_window" in fields else "partial_rotary_factor"
    if not torch.equal(logits(peer), logits(plain)):  # the class computes the field: seqzoo cannot
        with pytest.raises(ValueError, match=rf"the source uses {field}=.*transformers' {name} "):
            convert_llama(peer)
        return
    with caplog.at_level("WARNING", logger="seqzoo"):
        converted = convert_llama(peer)
    quiet = kind == "qwen2" and field == "sliding_window"  # (a window its layer_types give no layer: nothing to say)
    assert quiet or f"which transformers' {name} ignores" in caplog.text
    torch.testing.assert_close(logits(converted), logits(peer), atol=2e-5, rtol=1e-5)


def test_on_this_transformers_llama_ignores_both_fields_and_mistral_computes_its_window():
    """What the test above measured on transformers 5.24 (the reason for the conversions it allows): were Llama to
    read either field in a later release, the converter would refuse it, and this test names the change."""
    for fields in (dict(partial_rotary_factor=0.5), dict(sliding_window=WINDOW)):
        assert torch.equal(*map(logits, with_and_without("llama", fields))), fields
    assert not torch.equal(*map(logits, with_and_without("mistral", dict(sliding_window=WINDOW))))


def test_a_llama_folder_with_both_fields_converts_through_the_cli(tmp_path, caplog):
    peer = llama()
    peer.save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    config.update(partial_rotary_factor=0.5, sliding_window=WINDOW)  # (as written by other tools: top level)
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    assert LlamaForCausalLM.from_pretrained(tmp_path / "src").config.sliding_window == WINDOW
    with caplog.at_level("WARNING", logger="seqzoo"):
        assert seqzoo_main(["convert", "llama", str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    assert "partial_rotary_factor=0.5" in caplog.text and f"sliding_window={WINDOW}" in caplog.text
    converted = convert_llama(tmp_path / "src")
    torch.testing.assert_close(logits(converted), logits(peer), atol=2e-5, rtol=1e-5)


def test_a_partial_rotary_factor_the_class_computes_is_refused(monkeypatch):
    """A transformers whose Llama reads the factor (simulated: the channels past the factor's share get frequency 0,
    which leaves them unrotated) has the conversion refused, naming the factor and the class."""
    compute = LlamaRotaryEmbedding.compute_default_rope_parameters

    def partial(config, **kwargs):
        inv_freq, scaling = compute(config, **kwargs)
        rotated = int(len(inv_freq) * config.rope_parameters.get("partial_rotary_factor", 1.0))
        return torch.cat([inv_freq[:rotated], torch.zeros(len(inv_freq) - rotated)]), scaling

    monkeypatch.setattr(LlamaRotaryEmbedding, "compute_default_rope_parameters", staticmethod(partial))
    peer, plain = with_and_without("llama", dict(partial_rotary_factor=0.5))
    assert not torch.equal(logits(peer), logits(plain)), "the simulated class must read the factor"
    with pytest.raises(ValueError, match=r"partial_rotary_factor=0.5, and transformers' LlamaForCausalLM rotates only "
                                         r"that share of each head's channels; seqzoo rotates every channel"):
        convert_llama(peer)
    convert_llama(plain)  # (the factor 1.0: no question asked)


def test_asking_the_source_class_leaves_the_random_stream_alone():
    peer = llama(partial_rotary_factor=0.5, sliding_window=WINDOW)
    state = torch.random.get_rng_state()
    convert_llama(peer)
    assert torch.equal(torch.random.get_rng_state(), state)
