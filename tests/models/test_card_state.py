"""What a model card says a model keeps: the state a bidirectional encoder carries across the text, against the
state tensors its mixers really return in both reading directions; and the rows of a hybrid and of an
encoder-decoder, whose keys and values come beside their state."""

from __future__ import annotations

import pytest
import torch

import seqzoo
from seqzoo.hub.cards import memory_table, parameter_counts
from seqzoo.layers.mixer import BidirectionalMixer, Mixer
from seqzoo.registry import architecture_for_model_type
from tests.conftest import FAMILIES, tiny_config

BIDIRECTIONAL = sorted(family for family, preset in FAMILIES.items()
                       if type(tiny_config(preset)).supports_bidirectional)


def held_state_bytes(model: torch.nn.Module, input_ids: torch.Tensor) -> int:
    """Bytes of state (one sequence's) that every mixer returns in one forward, each direction's mixer counted."""
    held = []

    def record(module, args, output):
        if isinstance(output, tuple) and isinstance(output[-1], dict):
            held.append(sum(t[0].numel() * t.element_size() for t in output[-1].values()))

    handles = [module.register_forward_hook(record) for module in model.modules()
               if isinstance(module, Mixer) and not isinstance(module, BidirectionalMixer)]
    try:
        with torch.no_grad():
            model(input_ids=input_ids)
    finally:
        for handle in handles:
            handle.remove()
    return sum(held)


def test_every_bidirectional_architecture_is_checked():
    assert {"lstm", "mamba", "rwkv7"} <= set(BIDIRECTIONAL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", BIDIRECTIONAL)
def test_bidirectional_state_bytes_are_what_both_directions_hold(family, dtype):
    config = tiny_config(FAMILIES[family], bidirectional=True, num_labels=2)
    torch.manual_seed(0)
    spec = architecture_for_model_type(config.model_type)
    model = spec.heads["sequence-classification"](config).eval().to(dtype)
    held = held_state_bytes(model, torch.randint(0, 50, (3, 7)))
    assert held > 0
    assert config.bidirectional_state_bytes(dtype.itemsize) == held
    # The model card quotes the same figure.
    table = memory_table(config, parameter_counts(model), dtype, generates=False)
    assert f"| state carried per sequence | {held:,} bytes" in table


@pytest.mark.parametrize("family", BIDIRECTIONAL)
def test_a_causal_model_holds_its_one_way_state(family):
    config = tiny_config(FAMILIES[family])
    model = seqzoo.registry.architecture_for_model_type(config.model_type).default_head(config).eval()
    assert held_state_bytes(model, torch.randint(0, 50, (1, 7))) == config.bidirectional_state_bytes(4) \
        == config.state_bytes_per_sequence(4)


def test_the_card_says_what_a_hybrid_and_a_recurrent_seq2seq_keep_beside_their_keys():
    # A hybrid's fixed state was "the same at every context length" with no word of the KV cache beside it; a
    # recurrent encoder-decoder's keys are over the source, and its step does not grow with the tokens decoded.
    hybrid = seqzoo.create_model("hybrid-tiny")
    table = memory_table(hybrid.config, parameter_counts(hybrid), torch.float32)
    assert "the same at every context length; the KV cache below comes on top" in table
    assert "| KV cache per token of context |" in table
    seq2seq = seqzoo.create_model("seq2seq-bahdanau-tiny")
    table = memory_table(seq2seq.config, parameter_counts(seq2seq), torch.float32)
    assert f"| KV cache per source token | {seq2seq.config.kv_bytes_per_token(4):,} bytes" in table
    assert "grows with the source, not with the tokens decoded" in table
    transformer = seqzoo.create_model("seq2seq-transformer-tiny")
    table = memory_table(transformer.config, parameter_counts(transformer), torch.float32)
    assert "| KV cache per token of context |" in table and "grows with the context" in table


def test_a_bidirectional_plugin_config_without_its_own_figure_is_counted_in_both_directions():
    class PluginConfig:  # (a plugin's config: its state per reading direction, and no bidirectional_state_bytes)
        bidirectional = True
        is_encoder_decoder = False

        def state_bytes_per_sequence(self, width):
            return 100 * width

        def kv_bytes_per_token(self, width):
            return 0

    table = memory_table(PluginConfig(), {"total": 10, "embedding": 2, "per_token": 8}, torch.float32, generates=False)
    assert "| state carried per sequence | 800 bytes with float32 weights, both reading directions together" in table


@pytest.mark.parametrize("state, shown", [(256, "1,024 bytes (1.0 KiB)"), (384, "1,536 bytes (1.5 KiB)"),
                                          (255, "1,020 bytes with")])
def test_the_card_gives_a_state_of_a_kibibyte_or_more_in_kib_to_one_decimal(state, shown):
    class Config:
        def state_bytes_per_sequence(self, width):
            return state * width

        def kv_bytes_per_token(self, width):
            return 0

    table = memory_table(Config(), {"total": 10, "embedding": 2, "per_token": 8}, torch.float32)
    assert f"| state carried per sequence | {shown}" in table


@pytest.mark.parametrize("positions", [1024, 4096, 8192])
def test_the_kv_cache_is_quoted_at_no_more_tokens_than_the_model_reads(positions):
    # (a Transformer with 1,024 learned positions was quoted "at 4,096 tokens", a context it cannot hold)
    model = seqzoo.create_model("transformer-tiny", position_embedding="learned", max_position_embeddings=positions)
    kv = model.config.kv_bytes_per_token(4)
    table = memory_table(model.config, parameter_counts(model), torch.float32)
    quoted = min(positions, 4096)
    most = f" (its most, {quoted:,} positions)" if positions < 4096 else ""
    assert f"| KV cache per token of context | {kv:,} bytes; {kv * quoted:,} bytes" in table
    assert f" at {quoted:,} tokens{most} |" in table
