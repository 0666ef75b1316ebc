"""A plugin mixer declared or behaving wrongly is refused with an error naming it, at registration or at the first
forward that would go wrong, instead of a silent wrong answer or an error far from the mixer."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedConfig

import seqzoo
from seqzoo.layers.attention import SelfAttention
from seqzoo.layers.mixer import Block, Mixer
from seqzoo.layers.recurrent import GRUMixer
from seqzoo.models import mixers
from seqzoo.models.compat import output_cache
from seqzoo.models.gru.configuration_gru import GRUConfig
from seqzoo.models.mixers import MixerSpec, get_mixer, register_mixer
from seqzoo.models.transformer.configuration_transformer import TransformerConfig


class RunningSum(Mixer):
    """y_t = W (x_1 + ... + x_t), carrying the sum (B, D) as its state."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.proj = torch.nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def step(self, hidden_states, state, mask):
        total = hidden_states.new_zeros(hidden_states[:, 0].shape) if state is None else state["sum"]
        outs = []
        for t in range(hidden_states.shape[1]):
            added = total + hidden_states[:, t]
            total = added if mask is None else torch.where(mask[:, t, None], added, total)
            outs.append(total)
        return self.proj(torch.stack(outs, 1)), {"sum": total}

    def forward(self, hidden_states, *, state=None, mask=None, **context):
        return self.step(hidden_states, state, mask)

    @classmethod
    def state_bytes(cls, config, dtype_bytes=4):
        return config.hidden_size * dtype_bytes


class ForgetsState(RunningSum):
    def forward(self, hidden_states, *, state=None, mask=None, **context):
        return self.step(hidden_states, state, mask)[0], None


class TensorState(RunningSum):
    def forward(self, hidden_states, *, state=None, mask=None, **context):
        out, new = self.step(hidden_states, None if state is None else {"sum": state}, mask)
        return out, new["sum"]


class UnbatchedState(RunningSum):
    def forward(self, hidden_states, *, state=None, mask=None, **context):
        out, new = self.step(hidden_states, None if state is None else {"sum": state["sum"][None]}, mask)
        return out, {"sum": new["sum"][0]}


class ScalarState(RunningSum):
    def forward(self, hidden_states, *, state=None, mask=None, **context):
        out, new = self.step(hidden_states, None, mask)
        return out, {"sum": new["sum"].sum()}


class EmptyState(RunningSum):
    def forward(self, hidden_states, *, state=None, mask=None, **context):
        return self.step(hidden_states, None, mask)[0], {}


class KeepsNothing(RunningSum):
    """A plugin's recurrent mixer without a state (a position-wise layer, say): state_bytes 0, returns None."""

    def forward(self, hidden_states, *, state=None, mask=None, **context):
        return self.proj(hidden_states), None

    @classmethod
    def state_bytes(cls, config, dtype_bytes=4):
        return 0


class KeepsNothingButReturnsATensor(KeepsNothing):
    def forward(self, hidden_states, *, state=None, mask=None, **context):
        return self.proj(hidden_states), hidden_states.sum(1)


class NoForward(Mixer):
    pass


class OddKind(RunningSum):
    cache_kind = "rnn"


class RenamedAttention(SelfAttention):
    """A plugin's attention mixer: the built-in one under another name."""


@pytest.fixture(autouse=True)
def own_registry(monkeypatch):
    monkeypatch.setattr(mixers, "_MIXERS", dict(mixers._MIXERS))


def hybrid(name, mixer_class, config_class=GRUConfig, fields=(), mixer_types=None):
    register_mixer(MixerSpec(name, mixer_class, config_class, fields))
    torch.manual_seed(0)
    mixer_types = mixer_types or [name, "attention"]
    config = seqzoo.HybridConfig(hidden_size=16, vocab_size=50, mixer_types=mixer_types,
                                 mixer_config={"attention": {"num_attention_heads": 2}} if "attention" in mixer_types
                                 else {})
    return seqzoo.HybridForCausalLM(config).eval()


def test_a_well_behaved_plugin_decodes_as_it_recomputes():
    model = hybrid("running-sum", RunningSum)
    ids = torch.tensor([[5, 17, 33, 8, 2], [9, 1, 4, 4, 30]])
    with torch.no_grad():
        full = model(ids).logits
        step = model(ids[:, 3:], cache=output_cache(model(ids[:, :3], use_cache=True))).logits
    torch.testing.assert_close(step, full[:, 3:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mixer_class, error, match", [
    (ForgetsState, TypeError, r"'bad' mixer \(ForgetsState\) returned no state \(None\), but its state_bytes"),
    (TensorState, TypeError, r"'bad' mixer \(TensorState\) returned a state of type Tensor"),
    (UnbatchedState, ValueError, r"'bad' mixer \(UnbatchedState\) returned state\['sum'\] of shape \(16,\) for a "
                                 r"batch of 2"),
    (ScalarState, ValueError, r"'bad' mixer \(ScalarState\) returned state\['sum'\] of shape \(\) for a batch of 2"),
    (EmptyState, TypeError, r"'bad' mixer \(EmptyState\) returned a state of type dict; a recurrent mixer returns a "
                            r"non-empty dict"),
    # (its state_bytes says it keeps nothing, but what it returns is checked all the same)
    (KeepsNothingButReturnsATensor, TypeError, r"'bad' mixer \(KeepsNothingButReturnsATensor\) returned a state of "
                                               r"type Tensor"),
])
def test_a_plugin_state_the_cache_cannot_hold_is_refused_naming_the_mixer(mixer_class, error, match):
    # A None state restarted every cached step from zero without an error; a tensor, or tensors without the batch
    # first, failed at the next step far from the mixer ("Boolean value of Tensor ...", "the cache holds 16
    # sequence(s)").
    model = hybrid("bad", mixer_class)
    with torch.no_grad(), pytest.raises(error, match=match):
        model(torch.tensor([[5, 17, 33], [8, 9, 10]]), use_cache=True)
    with torch.no_grad():
        model(torch.tensor([[5, 17, 33], [8, 9, 10]]), use_cache=False)  # no cache, nothing stored: no complaint


def test_a_plugin_mixer_that_keeps_no_state_decodes_without_one():
    # Its state_bytes says it carries nothing: a None state is what it should return, not refused as a lost state.
    model = hybrid("stateless", KeepsNothing)
    ids = torch.tensor([[5, 17, 33, 8, 2], [9, 1, 4, 4, 30]])
    with torch.no_grad():
        full = model(ids).logits
        cache = output_cache(model(ids[:, :3], use_cache=True))
        torch.testing.assert_close(model(ids[:, 3:], cache=cache).logits, full[:, 3:], rtol=1e-5, atol=1e-5)


def test_a_mixer_without_forward_or_with_an_unknown_cache_kind_is_refused_when_declared():
    with pytest.raises(TypeError, match=r"mixer 'nf': NoForward defines no forward"):
        MixerSpec("nf", NoForward, GRUConfig, ())
    with pytest.raises(TypeError, match=r"mixer 'odd': OddKind.cache_kind='rnn'; allowed: 'attention', 'recurrent'"):
        MixerSpec("odd", OddKind, GRUConfig, ())


def test_a_plugin_attention_mixer_gets_the_causal_mask_of_padded_rows():
    # The causal mask was built only when a layer was named "attention": a plugin's attention saw no padding mask,
    # and a left-padded row's outputs changed.
    register_mixer(MixerSpec("running-sum", RunningSum, GRUConfig, ()))
    model = hybrid("my-attention", RenamedAttention, TransformerConfig, ("num_attention_heads",),
                   ["running-sum", "my-attention"])
    row = torch.tensor([[5, 17, 33]])
    batch = torch.tensor([[7, 8, 9, 10, 11], [0, 0, 5, 17, 33]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    with torch.no_grad():
        torch.testing.assert_close(model(batch, attention_mask=mask).logits[1, 2:], model(row).logits[0],
                                   rtol=1e-5, atol=1e-5)


def test_an_unknown_mixer_says_how_a_plugin_is_registered():
    with pytest.raises(ValueError, match=r"unknown mixer 'zzqx-plugin' \(a plugin's mixer is registered by its "
                                         r"package's seqzoo.mixers entry point, or by .*register_mixer"):
        get_mixer("zzqx-plugin")


class RecordsContext(RenamedAttention):
    seen: list = []

    def forward(self, hidden_states, *, state=None, mask=None, **context):
        RecordsContext.seen.append(context)
        return super().forward(hidden_states, state=state, mask=mask, **context)


def rope_hybrid(mixer_types, mixer_config, **fields):
    config = seqzoo.HybridConfig(hidden_size=16, vocab_size=50, mixer_types=mixer_types, mixer_config=mixer_config,
                                 **fields)
    torch.manual_seed(0)
    return seqzoo.HybridForCausalLM(config).eval()


def test_a_plugin_attention_mixer_takes_rotary_positions_as_the_built_in_one():
    # It was handed none (position_embeddings=None) unless a built-in attention layer was there too: with
    # position_embedding="rope" its attention was silently position-blind.
    register_mixer(MixerSpec("running-sum", RunningSum, GRUConfig, ()))
    register_mixer(MixerSpec("my-attention", RenamedAttention, TransformerConfig, ("num_attention_heads",)))
    plugin = rope_hybrid(["running-sum", "my-attention"], {"my-attention": {"num_attention_heads": 2}})
    built_in = rope_hybrid(["running-sum", "attention"], {"attention": {"num_attention_heads": 2}})
    built_in.load_state_dict(plugin.state_dict())
    ids = torch.tensor([[5, 17, 33, 8, 2, 40, 1], [9, 1, 4, 4, 30, 2, 2]])
    with torch.no_grad():
        torch.testing.assert_close(plugin(ids).logits, built_in(ids).logits, rtol=0, atol=0)
        assert not torch.allclose(plugin(ids).logits, rope_hybrid(
            ["running-sum", "my-attention"], {"my-attention": {"num_attention_heads": 2}},
            position_embedding="none")(ids).logits)  # (the positions change the logits)


def test_a_plugin_attention_mixer_of_another_head_size_gets_its_own_rotary_table():
    # Beside the built-in attention it was handed the built-in's cos/sin, of another head size: an error in
    # layers/positions.py. Now each layer gets its own size's, as transformers' Llama computes them.
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    register_mixer(MixerSpec("my-attention", RecordsContext, TransformerConfig, ("num_attention_heads",)))
    RecordsContext.seen = []
    model = rope_hybrid(["attention", "my-attention"], {"attention": {"num_attention_heads": 2},
                                                        "my-attention": {"num_attention_heads": 4}}, rope_theta=500.0)
    ids = torch.tensor([[5, 17, 33, 8, 2], [0, 0, 4, 30, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    with torch.no_grad():
        model(ids, attention_mask=mask)
    (context,) = RecordsContext.seen
    cos, sin = context["position_embeddings"]
    assert cos.shape == (2, 5, 4)  # head_dim 16 / 4 heads, not the built-in's 8
    llama = LlamaRotaryEmbedding(LlamaConfig(hidden_size=16, num_attention_heads=4, rope_theta=500.0))
    position_ids = context["position_ids"]
    torch.testing.assert_close(position_ids, torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]))  # real tokens only
    want_cos, want_sin = llama(torch.zeros(2, 5, 16), position_ids)
    torch.testing.assert_close(cos, want_cos)
    torch.testing.assert_close(sin, want_sin)


def test_an_odd_plugin_head_size_under_rope_is_refused_naming_the_mixer():
    register_mixer(MixerSpec("my-attention", RenamedAttention, TransformerConfig, ("num_attention_heads", "head_dim")))
    with pytest.raises(ValueError, match=r"mixer_config\['my-attention'\]: TransformerConfig: rotary positions need an "
                                         r"even head_dim, got 5"):
        seqzoo.HybridConfig(hidden_size=16, vocab_size=50, mixer_types=["my-attention"],
                            mixer_config={"my-attention": {"num_attention_heads": 2, "head_dim": 5}})
    seqzoo.HybridConfig(hidden_size=16, vocab_size=50, mixer_types=["my-attention"], position_embedding="none",
                        mixer_config={"my-attention": {"num_attention_heads": 2, "head_dim": 5}})


class OwnHeadSize(GRUConfig):
    """A plugin's settings that name a head size its own checks let be odd."""

    head_dim: int = 6


def test_an_odd_plugin_head_size_its_own_config_allows_is_refused_by_the_hybrid_under_rope():
    register_mixer(MixerSpec("my-attention", RenamedAttention, OwnHeadSize, ("head_dim",)))
    with pytest.raises(ValueError, match=r"rotary positions need an even 'my-attention' mixer's head_dim, got 5"):
        seqzoo.HybridConfig(hidden_size=16, vocab_size=50, mixer_types=["my-attention"],
                            mixer_config={"my-attention": {"head_dim": 5}})


class OverstatesState(RunningSum):
    @classmethod
    def state_bytes(cls, config, dtype_bytes=4):
        return 2 * config.hidden_size * dtype_bytes


class MixedDtypes(RunningSum):
    """Its sum in the model's dtype beside a token count in int64: no one size of value to ask state_bytes about."""

    def forward(self, hidden_states, *, state=None, mask=None, **context):
        out, new = self.step(hidden_states, None if state is None else {"sum": state["sum"]}, mask)
        count = torch.full((hidden_states.shape[0], 1), hidden_states.shape[1], dtype=torch.long)
        return out, {"sum": new["sum"], "count": count + (0 if state is None else state["count"])}

    @classmethod
    def state_bytes(cls, config, dtype_bytes=4):
        return config.hidden_size * dtype_bytes + 8


@pytest.mark.parametrize("mixer_class, dtype, warned", [
    (OverstatesState, torch.float32, "holds 64 bytes of state per sequence, but its state_bytes says 128"),
    (OverstatesState, torch.bfloat16, "holds 32 bytes of state per sequence, but its state_bytes says 64"),
    (RunningSum, torch.float32, None),
    (RunningSum, torch.bfloat16, None),
    (MixedDtypes, torch.bfloat16, None),  # (asked as if every value took 8 bytes, it would be warned about wrongly)
])
def test_a_plugin_state_bytes_that_is_not_what_it_keeps_is_warned_about_once(mixer_class, dtype, warned, caplog):
    # The card, `seqzoo list` and the lab report what state_bytes declares; nothing checked it.
    model = hybrid("declared", mixer_class).to(dtype)
    with caplog.at_level("WARNING", logger="seqzoo"), torch.no_grad():
        cache = output_cache(model(torch.tensor([[5, 17, 33], [8, 9, 10]]), use_cache=True))
        model(torch.tensor([[4], [2]]), cache=cache)
    if warned is None:
        assert "state_bytes says" not in caplog.text
    else:
        assert caplog.text.count(f"the 'declared' mixer ({mixer_class.__name__}) {warned}") == 1, caplog.text


class AnswersForFourBytesOnly(RunningSum):
    @classmethod
    def state_bytes(cls, config, dtype_bytes=4):
        if dtype_bytes != 4:
            raise NotImplementedError("float32 only")
        return config.hidden_size * dtype_bytes


def test_a_plugin_state_bytes_is_asked_only_for_the_size_its_state_has():
    # It was asked for 1, 2, 4 and 8 bytes per value when the model was built: one answering for float32 only
    # failed to build. Now it is asked for the size of the state it returns, and one that cannot answer is not
    # compared.
    model = hybrid("four-bytes", AnswersForFourBytesOnly)
    with torch.no_grad():
        model(torch.tensor([[5, 17, 33]]), use_cache=True)
        model.to(torch.bfloat16)(torch.tensor([[5, 17, 33]]), use_cache=True)


class LastPositionOnly(RunningSum):
    def forward(self, hidden_states, *, state=None, mask=None, **context):
        out, new = self.step(hidden_states, state, mask)
        return out[:, -1:], new


class FirstRowOnly(RunningSum):
    def forward(self, hidden_states, *, state=None, mask=None, **context):
        out, new = self.step(hidden_states, state, mask)
        return out[:1], new


class OneVector(RunningSum):
    def forward(self, hidden_states, *, state=None, mask=None, **context):
        out, new = self.step(hidden_states, state, mask)
        return out[0, 0], new


class OneNumber(RunningSum):
    def forward(self, hidden_states, *, state=None, mask=None, **context):
        out, new = self.step(hidden_states, state, mask)
        return out.sum(), new


class Wider(RunningSum):
    def forward(self, hidden_states, *, state=None, mask=None, **context):
        out, new = self.step(hidden_states, state, mask)
        return torch.cat([out, out], -1), new


class InFloat64(RunningSum):
    def forward(self, hidden_states, *, state=None, mask=None, **context):
        out, new = self.step(hidden_states, state, mask)
        return out.double(), new


class ReturnsAList(RunningSum):
    def forward(self, hidden_states, *, state=None, mask=None, **context):
        return list(self.step(hidden_states, state, mask))


class OutputNotATensor(RunningSum):
    def forward(self, hidden_states, *, state=None, mask=None, **context):
        out, new = self.step(hidden_states, state, mask)
        return out.tolist(), new


@pytest.mark.parametrize("mixer_class, error, match", [
    (LastPositionOnly, ValueError, r"LastPositionOnly.forward returned hidden states of shape \(2, 1, 16\) for an "
                                   r"input of shape \(2, 4, 16\); a token mixer returns one output per input position"),
    (FirstRowOnly, ValueError, r"FirstRowOnly.forward returned hidden states of shape \(1, 4, 16\) for an input of "
                               r"shape \(2, 4, 16\)"),
    (OneVector, ValueError, r"OneVector.forward returned hidden states of shape \(16,\) for an input of shape "
                            r"\(2, 4, 16\)"),
    (OneNumber, ValueError, r"OneNumber.forward returned hidden states of shape \(\) for an input of shape "
                            r"\(2, 4, 16\)"),
    (Wider, ValueError, r"Wider.forward returned hidden states of shape \(2, 4, 32\) for an input of shape "
                        r"\(2, 4, 16\)"),
    (InFloat64, TypeError, r"InFloat64.forward returned hidden states of dtype torch.float64 for an input of "
                           r"torch.float32; a token mixer returns its input's dtype"),
    (ReturnsAList, TypeError, r"ReturnsAList.forward must return \(hidden_states, state\), .* it returned list"),
    (OutputNotATensor, TypeError, r"OutputNotATensor.forward returned hidden states of type list"),
])
def test_a_plugin_output_of_another_shape_or_dtype_is_refused_naming_the_mixer(mixer_class, error, match):
    # The residual sum broadcast a (B, 1, D), (1, T, D), (D,) or 0-d output without an error (FirstRowOnly added
    # row 0's outputs to every row); a wider or float64 output failed inside torch without naming the mixer.
    model = hybrid("bad", mixer_class)
    with torch.no_grad(), pytest.raises(error, match=match):
        model(torch.tensor([[5, 17, 33, 8], [9, 1, 4, 30]]))


class InAutocastDtype(RunningSum):
    """What a plugin built of nn.Linear layers returns under autocast: the autocast dtype for a float32 input."""

    def forward(self, hidden_states, *, state=None, mask=None, **context):
        out, new = self.step(hidden_states.float(), None if state is None else state, mask)
        return out.to(torch.bfloat16), new


def test_a_plugin_output_the_residual_sum_promotes_is_accepted():
    # A narrower output (a kernel that runs in bf16 inside a float32 model) is promoted by the residual sum, and
    # under autocast dtypes mix by design: both ran before the output was checked, and still do. (A wider one
    # outside autocast is refused above.)
    model = hybrid("autocast", InAutocastDtype)
    ids = torch.tensor([[5, 17, 33, 8], [9, 1, 4, 30]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids)
    with torch.no_grad():
        assert model(ids).logits.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.to(torch.bfloat16)(ids)  # (and a float32 output in a bf16 model under autocast)


def test_only_plugin_mixers_are_checked_on_every_call():
    # The check runs on every decoded token: seqzoo's own mixers (every built-in preset's, a bidirectional pair of
    # them) skip it, decided when the block is built; a plugin's subclass of one is checked (a recurrent mixer's
    # forward returns what a plugin's run returns).
    blocks = []
    for name in seqzoo.list_models():
        with torch.device("meta"):
            model = seqzoo.create_model(name)
        blocks += [module for module in model.modules() if isinstance(module, Block)]
    assert len(blocks) > 20 and not any(block.checks_mixer_output for block in blocks)
    with torch.device("meta"):
        bidirectional = seqzoo.create_model("mamba-tiny", "token-classification", bidirectional=True, num_labels=2)
    assert [block.checks_mixer_output for block in bidirectional.modules() if isinstance(block, Block)] == [False] * 2
    register_mixer(MixerSpec("running-sum", RunningSum, GRUConfig, ()))
    model = hybrid("my-attention", RenamedAttention, TransformerConfig, ("num_attention_heads",),
                   ["running-sum", "my-attention"])
    assert [layer.checks_mixer_output for layer in model.model.layers] == [True, True]


class TensorOnlyRun(GRUMixer):
    """A plugin's subclass of a built-in recurrent mixer whose run returns the output alone (forward is the base's)."""

    def run(self, *args, **kwargs):
        return super().run(*args, **kwargs)[0]


def test_a_plugin_subclass_overriding_only_run_is_checked():
    # (judged by its forward's module, it counted as seqzoo's own: one row's output was added to every row)
    model = hybrid("gru-run", TensorOnlyRun, GRUConfig, ())
    with torch.no_grad(), pytest.raises(TypeError, match=r"TensorOnlyRun.forward must return \(hidden_states, "
                                                         r"state\)"):
        model(torch.tensor([[5, 17, 33, 8], [9, 1, 4, 30]]))


@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "vocab_size", "tie_word_embeddings",
                                   "initializer_range"])
def test_a_mixer_field_the_hybrid_sets_itself_is_refused_when_declared(field):
    # It was accepted, and every hybrid that set it failed with "GRUConfig() got multiple values for keyword
    # argument 'hidden_size'".
    with pytest.raises(TypeError, match=rf"mixer 'shadow': fields \['{field}'\] are set by the hybrid itself \(from "
                                        rf"its own config\), so a hybrid's mixer_config cannot set them"):
        MixerSpec("shadow", RunningSum, GRUConfig, ("orthogonal_init", field))


def recording(config_class, monkeypatch):
    """The fields each config of ``config_class`` is built with, from now on (its __init__ patched to record them)."""
    built_with, init = [], config_class.__init__

    def recorded(self, **values):
        built_with.append(set(values))
        init(self, **values)

    monkeypatch.setattr(config_class, "__init__", recorded)
    return built_with


@pytest.mark.parametrize("config_class, fields, settings", [
    (GRUConfig, ("orthogonal_init",), {"orthogonal_init": False}),  # (a classic config: embedding_size too)
    (TransformerConfig, ("num_attention_heads",), {"num_attention_heads": 2}),
])
@pytest.mark.parametrize("position_embedding", ["rope", "none"])
def test_the_fields_a_mixer_may_not_declare_are_all_the_hybrid_sets(config_class, fields, settings, position_embedding,
                                                                    monkeypatch):
    # (mixers.HYBRID_FIELDS lists what HybridConfig.mixer_settings and mixer_config set: one it missed would let a
    # mixer declare it, and the raw "multiple values" error would come back)
    register_mixer(MixerSpec("recorded", RenamedAttention, config_class, fields))
    built_with = recording(config_class, monkeypatch)
    seqzoo.HybridConfig(hidden_size=16, vocab_size=50, mixer_types=["recorded"], position_embedding=position_embedding,
                        mixer_config={"recorded": settings})
    assert built_with
    for values in built_with:
        assert values - set(settings) <= set(mixers.hybrid_fields(config_class))


def test_a_plugin_configs_own_field_named_like_one_the_hybrid_sets_elsewhere_is_the_plugins():
    # (the hybrid sets position_embedding only on the Transformer's config, embedding_size only on the classic
    # ones: a plugin config's own position_embedding was refused as the hybrid's)
    assert "position_embedding" not in mixers.hybrid_fields(GRUConfig)
    assert "embedding_size" not in mixers.hybrid_fields(TransformerConfig)
    assert {"hidden_size", "embedding_size"} <= set(mixers.hybrid_fields(GRUConfig))
    assert "position_embedding" in mixers.hybrid_fields(TransformerConfig)


def test_a_mixer_name_registered_again_as_another_mixer_gives_configs_its_capabilities():
    # A config's capabilities are kept per mixer names: after "toy" became an attention mixer, a new hybrid naming it
    # kept the recurrent mixer's (stateful: assisted decoding refused, no position ids built for generate()).
    from seqzoo.layers.attention import SelfAttention
    from seqzoo.layers.recurrent import RNNMixer
    from seqzoo.models.hybrid.configuration_hybrid import HybridConfig
    from seqzoo.models.mixers import MixerSpec, register_mixer
    from seqzoo.models.rnn.configuration_rnn import RNNConfig
    from seqzoo.models.transformer.configuration_transformer import TransformerConfig

    register_mixer(MixerSpec("toy", RNNMixer, RNNConfig, ("nonlinearity",)))
    recurrent = HybridConfig(hidden_size=16, mixer_types=["toy", "toy"], vocab_size=32)
    assert recurrent.capabilities.constant_state_decode and not recurrent.capabilities.can_crop_cache
    register_mixer(MixerSpec("toy", SelfAttention, TransformerConfig, ("num_attention_heads", "num_key_value_heads")),
                   exist_ok=True)
    attention = HybridConfig(hidden_size=16, mixer_types=["toy", "toy"], vocab_size=32,
                             mixer_config={"toy": {"num_attention_heads": 2, "num_key_value_heads": 2}})
    assert attention.cache_layer_kinds == ["attention", "attention"]
    assert attention.capabilities == attention.derive_capabilities() and attention.capabilities.can_crop_cache


class ScaledSumConfig(PreTrainedConfig):
    """A plugin's config in transformers' older style: its fields set in __init__, no dataclass fields of its own."""

    model_type = "scaled_sum_test"

    def __init__(self, hidden_size=16, scale=1.0, vocab_size=50, num_hidden_layers=1, **kwargs):
        self.hidden_size, self.scale, self.vocab_size, self.num_hidden_layers = hidden_size, scale, vocab_size, \
            num_hidden_layers
        super().__init__(**kwargs)


class ScaledSum(RunningSum):
    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.scale = config.scale

    def forward(self, hidden_states, *, state=None, mask=None, **context):
        out, state = super().forward(hidden_states, state=state, mask=mask, **context)
        return out * self.scale, state


def test_a_plugin_config_that_sets_its_fields_in_init_is_taken():
    """Its fields were read from dataclass fields alone: 'fields ['scale'] are not fields of ScaledSumConfig'."""
    with pytest.raises(TypeError, match=r"fields \['scael'\] are not fields of ScaledSumConfig \(a dataclass field, "
                                        r"or a parameter of its __init__\)"):
        MixerSpec("scaled-sum", ScaledSum, ScaledSumConfig, ("scael",))
    register_mixer(MixerSpec("scaled-sum", ScaledSum, ScaledSumConfig, ("scale",)))
    torch.manual_seed(0)
    config = seqzoo.HybridConfig(hidden_size=16, vocab_size=50, mixer_types=["scaled-sum", "attention"],
                                 mixer_config={"scaled-sum": {"scale": 0.5}, "attention": {"num_attention_heads": 2}})
    model = seqzoo.HybridForCausalLM(config).eval()
    assert model.model.layers[0].mixer.scale == 0.5
    ids = torch.tensor([[5, 17, 33, 8, 2], [9, 1, 4, 4, 30]])
    with torch.no_grad():
        full = model(ids).logits
        step = model(ids[:, 3:], cache=output_cache(model(ids[:, :3], use_cache=True))).logits
    torch.testing.assert_close(step, full[:, 3:], rtol=1e-5, atol=1e-5)
