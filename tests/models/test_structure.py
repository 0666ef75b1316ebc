"""The shape of the model layer: at most four seqzoo frames from a causal LM's forward to a kernel (head, backbone,
block, mixer), one mixer protocol, and hybrids that stack any registered mixer, plugins included."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import pytest
import torch

import seqzoo
from seqzoo.cache import RECURRENT
from seqzoo.kernels import registry
from seqzoo.layers.mixer import Mixer
from seqzoo.models import mixers
from seqzoo.models.compat import output_cache
from seqzoo.models.mixers import MixerSpec, get_mixer, list_mixers, register_mixer
from seqzoo.models.rnn.configuration_rnn import RNNConfig
from tests.conftest import FAMILIES, tiny_config, tiny_model

PACKAGE = str(Path(seqzoo.__file__).resolve().parent)
KERNELS = str(Path(seqzoo.kernels.__file__).resolve().parent)


def seqzoo_frames_above_dispatch() -> list[str]:
    frames = []
    for frame in traceback.extract_stack()[:-2]:  # this function and the patched dispatch
        path = str(Path(frame.filename).resolve())
        if path.startswith(PACKAGE) and not path.startswith(KERNELS):
            frames.append(f"{Path(path).relative_to(PACKAGE)}:{frame.name}")
    return frames


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_at_most_four_seqzoo_frames_from_the_head_to_a_kernel(family, monkeypatch):
    model = tiny_model(FAMILIES[family])
    seen = []
    real = registry.dispatch

    def spy(op, *args, **kwargs):
        seen.append(seqzoo_frames_above_dispatch())
        return real(op, *args, **kwargs)

    for module in list(sys.modules.values()):
        if getattr(module, "dispatch", None) is real and getattr(module, "__name__", "").startswith("seqzoo"):
            monkeypatch.setattr(module, "dispatch", spy)
    model(torch.tensor([[5, 17, 33, 8]]))
    if model.config.mixer_type == "attention":
        assert not seen  # attention goes through transformers' attention interface, not seqzoo's kernels
        return
    assert seen, "no kernel was dispatched"
    for frames in seen:
        assert len(frames) <= 4, frames
        assert frames[0].endswith(":forward") and "modeling_utils" in frames[0], frames  # the causal-LM head


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_every_mixer_follows_the_protocol(dtype):
    for name in list_mixers():
        spec = get_mixer(name)
        assert issubclass(spec.mixer_class, Mixer)
        config = spec.config_class(hidden_size=32, num_hidden_layers=2, vocab_size=99, **(
            {"head_size": 16} if name == "rwkv7" else {"head_dim": 16} if name == "mamba2" else {}))
        mixer = spec.mixer_class(config, 1).to(dtype)
        x = torch.randn(2, 5, 32, dtype=dtype)
        context = {"shared": {"v_first": torch.randn(2, 5, 32, dtype=dtype)}}
        y, state = mixer(x, state=None, mask=None, **context)
        assert y.shape == x.shape
        if spec.cache_kind == RECURRENT:
            assert isinstance(state, dict) and state
            # (what the size columns and the cache checks count; a state kept in float32 at least counts so)
            held = sum(t[0].numel() * t.element_size() for t in state.values())
            assert held == spec.mixer_class.state_bytes(config, dtype.itemsize), name


class ScaledIdentityMixer(Mixer):
    """A plugin mixer: y = scale * x, carrying the running sum of its inputs as state (to see the cache work)."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.scale = torch.nn.Parameter(torch.tensor(float(config.forget_bias)))

    def forward(self, hidden_states, *, state=None, mask=None, **context):
        total = hidden_states.sum(1) + ((state or {}).get("total", 0))
        return hidden_states * self.scale, {"total": total}

    @classmethod
    def state_bytes(cls, config, dtype_bytes=4):
        return config.hidden_size * dtype_bytes


@pytest.fixture
def plugin_mixer(monkeypatch):
    monkeypatch.setattr(mixers, "_MIXERS", dict(mixers._MIXERS))
    from seqzoo.models.lstm.configuration_lstm import LSTMConfig

    spec = MixerSpec("scaled", ScaledIdentityMixer, LSTMConfig, ("forget_bias",), "a test plugin")
    entry = type("EntryPoint", (), {"name": "scaled", "value": "tests:scaled", "load": lambda self: lambda: spec})()
    broken = type("EntryPoint", (), {"name": "broken", "value": "nowhere:x",
                                     "load": lambda self: (_ for _ in ()).throw(ImportError("no module"))})()
    monkeypatch.setattr("importlib.metadata.entry_points",
                        lambda group=None: [entry, broken] if group == mixers.ENTRY_POINT_GROUP else [])
    mixers.load_mixer_plugins(force=True)
    return spec


def test_a_plugin_mixer_from_an_entry_point_stacks_in_a_hybrid(plugin_mixer, caplog):
    assert get_mixer("scaled") is plugin_mixer
    config = seqzoo.HybridConfig(hidden_size=32, vocab_size=99, mixer_types=["scaled", "attention", "scaled"],
                                 mixer_config={"scaled": {"forget_bias": 0.5}})
    model = seqzoo.HybridForCausalLM(config).eval()
    assert model.config.state_bytes_per_sequence(4) == 2 * 32 * 4
    ids = torch.tensor([[5, 17, 33, 8]])
    full = model(ids).logits
    cache = model(ids[:, :2], use_cache=True).cache if hasattr(model(ids[:, :2]), "cache") else None
    out = model(ids[:, :2], use_cache=True)
    from seqzoo.models.compat import output_cache

    continued = model(ids[:, 2:], cache=output_cache(out)).logits
    torch.testing.assert_close(continued, full[:, 2:], rtol=1e-5, atol=1e-5)
    del cache
    with pytest.raises(ValueError, match=r"unknown setting\(s\) 'forget_bais' \(did you mean 'forget_bias'\?\)"):
        seqzoo.HybridConfig(hidden_size=32, mixer_types=["scaled"], mixer_config={"scaled": {"forget_bais": 1.0}})
    with pytest.raises(ValueError, match="forget_bias"):
        seqzoo.HybridConfig(hidden_size=32, mixer_types=["scaled"], mixer_config={"scaled": {"forget_bias": "x"}})


def test_a_broken_mixer_plugin_is_logged_and_skipped(plugin_mixer, caplog):
    assert "broken" not in list_mixers()


@pytest.mark.parametrize("mixer_types", [[["mamba"]], [{"mamba": 1}], "mamba", {"mamba", "attention"}, []],
                         ids=["nested-list", "dict-entry", "string", "set", "empty"])
def test_hybrid_mixer_types_of_the_wrong_shape_are_named(mixer_types):
    with pytest.raises(ValueError, match=r"mixer_types=.* is invalid: expected a non-empty list of mixer names"):
        seqzoo.HybridConfig(hidden_size=32, mixer_types=mixer_types)


def test_an_odd_attention_head_dim_needs_rotary_positions_to_be_refused():
    # Without rotary positions nothing needs an even head_dim (the attention mixer's own config defaulted to RoPE).
    settings = {"attention": {"num_attention_heads": 4, "head_dim": 7}}
    config = seqzoo.HybridConfig(vocab_size=99, hidden_size=28, mixer_types=["lstm", "attention"],
                                 position_embedding="none", mixer_config=settings)
    model = seqzoo.HybridForCausalLM(config).eval()
    ids = torch.tensor([[5, 17, 33, 8]])
    with torch.no_grad():
        full = model(ids).logits
        step = model(ids[:, 3:], cache=output_cache(model(ids[:, :3], use_cache=True))).logits
    torch.testing.assert_close(step, full[:, 3:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="rotary positions need an even"):
        seqzoo.HybridConfig(vocab_size=99, hidden_size=28, mixer_types=["lstm", "attention"], mixer_config=settings)


def test_a_bidirectional_hybrid_is_refused_in_words_that_fit_it():
    with pytest.raises(ValueError, match=r"bidirectional=True is invalid: this architecture runs left to right only"):
        seqzoo.HybridConfig(hidden_size=32, mixer_types=["mamba", "gru"], bidirectional=True)


def test_hybrid_config_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"unknown mixer 'mambaa' \(did you mean 'mamba'\?\)"):
        seqzoo.HybridConfig(mixer_types=["mambaa", "attention"])
    with pytest.raises(ValueError, match="mixer_config has settings for \\['rwkv7'\\]"):
        seqzoo.HybridConfig(mixer_types=["mamba"], mixer_config={"rwkv7": {}})
    with pytest.raises(ValueError, match=r"mixer_config\['mamba'\].*state_size"):
        seqzoo.HybridConfig(mixer_types=["mamba"], mixer_config={"mamba": {"state_size": 0}})
    with pytest.raises(ValueError, match="mlp_layers"):
        seqzoo.HybridConfig(mixer_types=["mamba", "mamba"], mlp_layers=[True])
    with pytest.raises(ValueError, match="num_hidden_layers=3 is invalid"):
        seqzoo.HybridConfig(mixer_types=["mamba", "mamba"], num_hidden_layers=3)


def test_register_mixer_refuses_a_second_mixer_of_the_same_name(monkeypatch):
    monkeypatch.setattr(mixers, "_MIXERS", dict(mixers._MIXERS))
    with pytest.raises(ValueError, match="already registered"):
        register_mixer(MixerSpec("lstm", ScaledIdentityMixer, RNNConfig, ()))
    with pytest.raises(TypeError, match="Mixer subclass"):
        MixerSpec("bad", torch.nn.Linear, RNNConfig, ())


def test_hybrid_capabilities_come_from_its_layers():
    all_recurrent = seqzoo.HybridConfig(hidden_size=32, mixer_types=["mamba", "lstm", "rwkv7"],
                                        mixer_config={"rwkv7": {"head_size": 16}})
    assert all_recurrent.capabilities.supports_tbptt and all_recurrent.capabilities.constant_state_decode
    with_attention = tiny_config(FAMILIES["hybrid"])
    assert not with_attention.capabilities.supports_tbptt and not with_attention.capabilities.can_crop_cache
    assert with_attention.capabilities.can_generate


def test_capabilities_follow_a_changed_config():
    # config.capabilities is looked up by the fields it derives from: a config changed after it was read (by
    # assignment or in place) must answer anew.
    hybrid = tiny_config(FAMILIES["hybrid"])
    assert not hybrid.capabilities.constant_state_decode
    recurrent = [kind for kind in hybrid.mixer_types if kind != "attention"][0]
    hybrid.mixer_types = [recurrent] * len(hybrid.mixer_types)
    assert hybrid.capabilities.constant_state_decode and hybrid.capabilities.supports_tbptt
    hybrid.mixer_types[0] = "attention"  # in place
    assert not hybrid.capabilities.constant_state_decode
    gru = tiny_config("gru-tiny")
    assert gru.capabilities.can_generate
    gru.bidirectional = True
    assert not gru.capabilities.can_generate and not gru.capabilities.supports_tbptt
    gru.bidirectional = False
    assert gru.capabilities.can_generate


def test_capabilities_of_a_subclass_with_its_own_layer_kinds_are_not_looked_up():
    class Undeclared(RNNConfig):
        model_type = "seqzoo_test_undeclared"
        attention_every: int = 0

        @property
        def cache_layer_kinds(self):
            kinds = super().cache_layer_kinds
            return ["attention" if self.attention_every and i % self.attention_every == 0 else kind
                    for i, kind in enumerate(kinds)]

    config = Undeclared(hidden_size=8)
    assert config.capabilities.constant_state_decode
    config.attention_every = 2  # a field capability_fields does not name
    assert not config.capabilities.constant_state_decode


def test_library_code_never_imports_the_command_line_module():
    # seqzoo.cli imports lazily from everywhere; library modules importing it back make import cycles.
    import ast
    from pathlib import Path

    import seqzoo

    root = Path(seqzoo.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.relative_to(root).as_posix() in ("cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.relative_to(root)}:{node.lineno}" for name in names if name == "seqzoo.cli"]
    assert not offenders, offenders


class TensorOnlyMixer(ScaledIdentityMixer):
    """A plugin mixer that forgets the state: its forward returns the tensor alone."""

    def forward(self, hidden_states, *, state=None, mask=None, **context):
        return hidden_states * self.scale


def test_a_mixer_that_returns_no_state_is_refused_not_unpacked_along_the_batch(monkeypatch):
    # Unpacked as (out, state), a batch of two would have added row 0's output to every row, without an error.
    monkeypatch.setattr(mixers, "_MIXERS", dict(mixers._MIXERS))
    from seqzoo.models.lstm.configuration_lstm import LSTMConfig

    register_mixer(MixerSpec("tensor-only", TensorOnlyMixer, LSTMConfig, ("forget_bias",)))
    config = seqzoo.HybridConfig(hidden_size=32, vocab_size=99, mixer_types=["tensor-only", "attention"],
                                 mixer_config={"tensor-only": {"forget_bias": 0.5}})
    model = seqzoo.HybridForCausalLM(config)
    with pytest.raises(TypeError, match=r"TensorOnlyMixer.forward must return \(hidden_states, state\).*returned "
                                        r"Tensor"):
        model(torch.tensor([[5, 17, 33], [8, 9, 10]]))


def test_mixer_specs_of_the_wrong_shape_are_refused_when_made(monkeypatch):
    monkeypatch.setattr(mixers, "_MIXERS", dict(mixers._MIXERS))
    with pytest.raises(TypeError, match=r"fields must be a tuple of field names, got 'forget_bias'"):
        MixerSpec("s", ScaledIdentityMixer, RNNConfig, "forget_bias")  # (else read as its letters)
    with pytest.raises(TypeError, match=r"fields \['forget_bais'\] are not fields of RNNConfig"):
        MixerSpec("s", ScaledIdentityMixer, RNNConfig, ("forget_bais",))
    with pytest.raises(TypeError, match="config_class must be a transformers config class"):
        MixerSpec("s", ScaledIdentityMixer, dict, ())
    with pytest.raises(TypeError, match="a mixer's name must be a non-empty string"):
        MixerSpec("", ScaledIdentityMixer, RNNConfig, ())
    with pytest.raises(TypeError, match="register_mixer takes a seqzoo.models.mixers.MixerSpec, got str"):
        register_mixer("scaled")
