"""Model registry, presets, entry-point plugins, and the kernel registry's selection contract."""

from __future__ import annotations

import logging
import re
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import seqzoo
from seqzoo import registry
from seqzoo.kernels import KernelError, available_backends, get_kernel, register_backend, select
from seqzoo.kernels import registry as kernel_registry
from tests.conftest import install_plugin

PRESETS = seqzoo.list_models()


def test_list_models_and_patterns():
    assert {"lstm-tiny", "lstm-small", "gru-tiny", "rnn-tiny", "transformer-tiny"} <= set(PRESETS)
    assert seqzoo.list_models("lstm-*") == [p for p in PRESETS if p.startswith("lstm-")]
    assert all(p.endswith("-tiny") for p in seqzoo.list_models("*-tiny"))
    assert seqzoo.list_models("nothing-*") == []
    with pytest.raises(TypeError, match="takes a shell-style pattern string such as 'lstm-\\*'; got int 5"):
        seqzoo.list_models(5)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_is_a_valid_config_json(preset):
    path = registry.PRESET_DIR / f"{preset}.json"
    config = AutoConfig.from_pretrained(path)
    spec, values = registry.preset_values(preset)
    assert type(config) is spec.config_class
    for key, value in values.items():
        assert getattr(config, key) == value, key


def test_create_model_with_overrides():
    model = seqzoo.create_model("lstm-tiny", hidden_size=48, dropout=0.25)
    assert isinstance(model, seqzoo.LSTMForCausalLM)
    assert model.config.hidden_size == 48 and model.config.dropout == 0.25
    assert model.model.layers[0].hidden_size == 48


def test_unknown_preset_suggests_close_matches():
    with pytest.raises(ValueError, match="Did you mean 'lstm-tiny'"):
        seqzoo.create_model("lstm-tiyn")


def test_unknown_override_names_the_field():
    with pytest.raises(ValueError, match="hiden_size.*did you mean 'hidden_size'"):
        seqzoo.create_model("lstm-tiny", hiden_size=32)


PLUGIN_MODULE = '''
from seqzoo.models.lstm import LSTMConfig, LSTMForCausalLM, LSTMModel
from seqzoo.registry import ModelSpec


class PluginConfig(LSTMConfig):
    model_type = "seqzoo_testplugin"


class PluginModel(LSTMModel):
    config_class = PluginConfig


class PluginForCausalLM(LSTMForCausalLM):
    config_class = PluginConfig
    base_model_class = PluginModel


def register():
    return ModelSpec("testplugin", PluginConfig, PluginModel, PluginForCausalLM,
                     presets={"testplugin-tiny": {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1}})


def broken():
    raise RuntimeError("this plugin is broken on purpose")


def half():  # (its second architecture takes the first's model_type: refused after the first registered)
    return [register(), ModelSpec("testplugin2", PluginConfig, PluginModel, PluginForCausalLM)]
'''


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "testplugin", textwrap.dedent(PLUGIN_MODULE), "seqzoo.models",
                   {"testplugin": "register", "broken": "broken", "half": "half"})
    yield
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    sys.modules.pop("seqzoo_testplugin", None)
    registry._ARCHITECTURES.pop("testplugin", None)
    registry._PLUGIN_PRESETS.pop("testplugin-tiny", None)
    # (the next import of the module makes another PluginConfig, which a model_type still registered would refuse)
    CONFIG_MAPPING._extra_content.pop("seqzoo_testplugin", None)


def test_entry_point_plugin_is_registered_and_broken_one_is_skipped(plugin_dist, caplog):
    with caplog.at_level(logging.ERROR, logger="seqzoo"):
        registry.load_plugins(force=True)
    assert "testplugin" in seqzoo.list_architectures()
    assert "testplugin-tiny" in seqzoo.list_models()
    model = seqzoo.create_model("testplugin-tiny")
    assert type(model).__name__ == "PluginForCausalLM"
    config = AutoConfig.for_model("seqzoo_testplugin", vocab_size=50, hidden_size=16, num_hidden_layers=1)
    assert type(AutoModelForCausalLM.from_config(config)).__name__ == "PluginForCausalLM"
    broken = [r for r in caplog.records if "broken" in r.getMessage()]
    assert broken and broken[0].exc_info is not None, "a failing plugin must be logged with its traceback"
    assert "this plugin is broken on purpose" in caplog.text
    # a plugin that fails part way says what of it stays registered
    half = [r.getMessage() for r in caplog.records if "'half'" in r.getMessage()]
    assert half == ["seqzoo model plugin 'half' (seqzoo_testplugin:half) failed to load and the rest of it is "
                    "skipped; the architecture(s) it registered before the failure stay: testplugin"], half
    assert "testplugin2" not in seqzoo.list_architectures()


# --- kernel registry -------------------------------------------------------------------------------------------


def lstm_call(mask=None):
    x = torch.randn(2, 5, 4)
    h = torch.zeros(2, 3)
    w = [torch.randn(12, 4), torch.randn(12, 3), torch.zeros(12), torch.zeros(12)]
    return (x, h, h, *w), {"mask": mask}


def test_automatic_selection_prefers_priority_then_supports():
    args, kwargs = lstm_call()
    assert select("lstm", *args, **kwargs).name == "torch"
    holes = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert select("lstm", *args, mask=holes).name == "reference"


def test_env_var_forces_backend(monkeypatch):
    args, kwargs = lstm_call()
    monkeypatch.setenv("SEQZOO_KERNELS", "lstm=reference, gru=torch")
    assert select("lstm", *args, **kwargs).name == "reference"
    monkeypatch.setenv("SEQZOO_KERNELS", "lstm=nonsense")
    with pytest.raises(KernelError, match="valid: reference, torch"):
        select("lstm", *args, **kwargs)
    monkeypatch.setenv("SEQZOO_KERNELS", "lstm")
    with pytest.raises(KernelError, match="op=backend"):
        select("lstm", *args, **kwargs)


def test_api_forcing_and_context_manager():
    args, kwargs = lstm_call()
    with seqzoo.use_kernel_backend("lstm", "reference"):
        assert select("lstm", *args, **kwargs).name == "reference"
    assert select("lstm", *args, **kwargs).name == "torch"
    with pytest.raises(KernelError, match="unknown kernel backend for op 'lstm'.*'refrence'.*Did you mean 'reference'"):
        seqzoo.set_kernel_backend("lstm", "refrence")
    with pytest.raises(KernelError, match="unknown kernel op"):
        seqzoo.set_kernel_backend("lsmt", "torch")


def test_forced_backend_that_cannot_run_the_call_raises_instead_of_falling_back():
    holes = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    args, _ = lstm_call()
    with seqzoo.use_kernel_backend("lstm", "torch"):
        with pytest.raises(KernelError, match="cannot run this call.*contiguous"):
            select("lstm", *args, mask=holes)


def test_unavailable_backend_raises_with_available_list():
    register_backend("lstm", "phantom", lambda *a, **k: None, priority=100, is_available=lambda: False,
                     description="never available", replace=True)
    try:
        args, kwargs = lstm_call()
        assert select("lstm", *args, **kwargs).name == "torch"  # unavailable backends are skipped automatically
        with pytest.raises(KernelError, match="not available.*available backends: torch, reference"):
            seqzoo.set_kernel_backend("lstm", "phantom")
        assert available_backends("lstm") == ["torch", "reference"]
        rows = [r for r in seqzoo.list_kernels() if r["op"] == "lstm"]
        assert {r["backend"]: r["available"] for r in rows}["phantom"] is False
        assert [r["backend"] for r in rows if r["selected"]] == ["torch"]
    finally:
        kernel_registry.unregister_backend("lstm", "phantom")


def test_choice_is_logged_once(caplog):
    register_backend("gru", "loud", get_kernel("gru", "reference"), priority=50, replace=True)
    try:
        x = torch.randn(1, 2, 3)
        h = torch.zeros(1, 2)
        w = [torch.randn(6, 3), torch.randn(6, 2), None, None]
        with caplog.at_level(logging.INFO, logger="seqzoo.kernels"):
            for _ in range(3):
                seqzoo.kernels.dispatch("gru", x, h, *w)
        assert sum("backend 'loud'" in r.getMessage() for r in caplog.records) == 1
    finally:
        kernel_registry.unregister_backend("gru", "loud")
        kernel_registry._LOGGED.discard(("gru", "loud"))


def test_kernel_plugin_entry_point(tmp_path, monkeypatch, caplog):
    source = (
        "def register(registry):\n"
        "    registry.register_backend('rnn', 'plugged', 'seqzoo.kernels.rnn_cells.reference:rnn', priority=-5)\n"
        "def broken(registry):\n"
        "    registry.register_backend('rnn', 'half', 'seqzoo.kernels.rnn_cells.reference:rnn', priority=100)\n"
        "    raise ImportError('missing extension')\n"
    )
    install_plugin(tmp_path, monkeypatch, "kernelplugin", source, "seqzoo.kernels",
                   {"plugged": "register", "broken": "broken"})
    try:
        with caplog.at_level(logging.ERROR, logger="seqzoo.kernels"):
            kernel_registry._load_entry_point_plugins()
        assert "plugged" in available_backends("rnn")
        assert "missing extension" in caplog.text
        # What the broken plugin registered before it failed is taken back: it was "skipped", so it is not selected.
        assert "half" not in available_backends("rnn")
    finally:
        kernel_registry.unregister_backend("rnn", "plugged")
        sys.modules.pop("seqzoo_kernelplugin", None)


def test_a_kernel_plugin_that_raises_at_call_time_is_named_with_the_way_around_it(tmp_path, monkeypatch):
    source = (
        "def boom(*args, **kwargs):\n"
        "    raise RuntimeError('illegal memory access')\n"
        "def register(registry):\n"
        "    registry.register_backend('lstm', 'boom', boom, priority=100)\n"
    )
    install_plugin(tmp_path, monkeypatch, "boomplugin", source, "seqzoo.kernels", {"boomer": "register"})
    try:
        kernel_registry._load_entry_point_plugins()
        assert kernel_registry.get_op("lstm").backends["reference"].plugin is None  # (seqzoo's own stay unmarked)
        args, kwargs = lstm_call()
        with pytest.raises(KernelError, match=r"kernel backend 'boom' of op 'lstm', from the plugin boomer "
                                              r"\(seqzoo_boomplugin:register\), raised RuntimeError: illegal memory "
                                              r"access; run without it with SEQZOO_KERNELS=lstm=reference"):
            kernel_registry.dispatch("lstm", *args, **kwargs)
    finally:
        kernel_registry.unregister_backend("lstm", "boom")
        sys.modules.pop("seqzoo_boomplugin", None)


def test_create_model_builds_in_the_dtype_and_attention_asked_for():
    model = seqzoo.create_model("transformer-tiny", dtype=torch.bfloat16, attn_implementation="eager")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == "eager"


def test_register_architecture_refuses_to_replace_what_is_taken():
    from seqzoo.models.lstm import LSTMConfig, LSTMForCausalLM, LSTMModel

    def spec(name, model_type, presets=None):
        config = type(f"{name}Config", (LSTMConfig,), {"model_type": model_type})
        model = type(f"{name}Model", (LSTMModel,), {"config_class": config})
        head = type(f"{name}ForCausalLM", (LSTMForCausalLM,), {"config_class": config})
        return registry.ModelSpec(name, config, model, head, presets=presets or {})

    with pytest.raises(ValueError, match="already registered"):
        registry.register_architecture(spec("lstm", "seqzoo_lstm_other"))  # a built-in's name
    with pytest.raises(ValueError, match="transformers' own"):
        registry.register_architecture(spec("llamalike", "llama"))
    assert type(AutoConfig.for_model("llama")).__module__.startswith("transformers.")  # nothing registered
    with pytest.raises(ValueError, match="configs/lstm-tiny.json"):
        registry.register_architecture(spec("hijack", "seqzoo_hijack", {"lstm-tiny": {"hidden_size": 16}}))
    assert "hijack" not in seqzoo.list_architectures()
    assert type(seqzoo.create_model("lstm-tiny")).__module__.startswith("seqzoo.")
    # A preset copied from another architecture's config.json (its model_type) would build that architecture.
    with pytest.raises(ValueError, match=r"preset 'other-tiny' must be a dict of .* \(a model_type in it must be "
                                         r"'seqzoo_other'\)"):
        registry.register_architecture(spec("other", "seqzoo_other", {"other-tiny": {"model_type": "seqzoo_gru"}}))
    with pytest.raises(ValueError, match="preset 'other-tiny' must be a dict"):
        registry.register_architecture(spec("other", "seqzoo_other", {"other-tiny": [16]}))
    assert "other" not in seqzoo.list_architectures()


def test_register_architecture_refuses_a_model_type_another_library_registered(monkeypatch):
    """A model_type that another library registered with AutoConfig (fla's configs, a user's own) is refused: it was
    replaced for the whole process without a word (AutoConfig.register with exist_ok), its configs then loading as
    the new architecture's."""
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from seqzoo.models.lstm import LSTMConfig, LSTMForCausalLM, LSTMModel

    theirs = type("TheirConfig", (PretrainedConfig,), {"model_type": "otherlib_rnn"})
    monkeypatch.setitem(CONFIG_MAPPING._extra_content, "otherlib_rnn", theirs)  # (AutoConfig.register's, undone)
    config = type("MineConfig", (LSTMConfig,), {"model_type": "otherlib_rnn"})
    model = type("MineModel", (LSTMModel,), {"config_class": config})
    head = type("MineForCausalLM", (LSTMForCausalLM,), {"config_class": config})
    with pytest.raises(ValueError, match=r"model_type 'otherlib_rnn' is registered with AutoConfig by .*TheirConfig"):
        registry.register_architecture(registry.ModelSpec("mine", config, model, head))
    assert CONFIG_MAPPING["otherlib_rnn"] is theirs and "mine" not in seqzoo.list_architectures()


def test_kernel_registration_mistakes_are_refused_by_name():
    for name in (3, "", "a=b,c"):  # (a name SEQZOO_KERNELS could never force)
        with pytest.raises(ValueError, match="kernel op name must be a non-empty identifier"):
            kernel_registry.register_op(name)
    reference = get_kernel("gru", "reference")
    with pytest.raises(ValueError, match=r"devices must be a non-empty tuple of device types such as "
                                         r"\('cuda',\), or None for any device, got 'cpu'"):
        register_backend("gru", "x", reference, devices="cpu")  # (else read as ('c', 'p', 'u'))
    with pytest.raises(ValueError, match="supports must be a function, got 'yes'"):
        register_backend("gru", "x", reference, supports="yes")
    assert "x" not in kernel_registry.get_op("gru").backends
    with pytest.raises(KernelError, match="unknown kernel backend for op 'gru': 'refrence'.*Did you mean 'reference'"):
        kernel_registry.unregister_backend("gru", "refrence")  # (else nothing removed, the backend still chosen)
    assert "reference" in available_backends("gru")
    with pytest.raises(KernelError, match="unknown kernel backend for op 'gru': 3"):
        seqzoo.set_kernel_backend("gru", 3)


def test_a_plugin_backends_failing_check_and_missing_module_are_named():
    def supports(*args, **kwargs):
        raise KeyError("mask")

    register_backend("lstm", "checky", get_kernel("lstm", "reference"), priority=100, supports=supports, replace=True)
    register_backend("lstm", "lazy", "myplugg.kernels:lstm", priority=-100, replace=True)
    try:
        args, kwargs = lstm_call()
        with pytest.raises(KernelError, match=r"supports\(\) of kernel backend 'checky' \(op 'lstm'\) raised KeyError"):
            select("lstm", *args, **kwargs)
        with pytest.raises(KernelError, match=r"not available on this machine \(its module 'myplugg.kernels' cannot "
                                              r"be found\)"):
            seqzoo.set_kernel_backend("lstm", "lazy")
    finally:
        kernel_registry.unregister_backend("lstm", "checky")
        kernel_registry.unregister_backend("lstm", "lazy")


def test_a_misspelt_kernels_variable_is_named_not_ignored(monkeypatch, caplog):
    monkeypatch.setenv("SEQZOO_KERNEL", "lstm=reference")
    monkeypatch.setenv("SEQZOO_KERNELS", "gru=reference")  # (a change: the registry rebuilds its choices)
    monkeypatch.setattr(kernel_registry, "_WARNED_ENV", set())
    with caplog.at_level(logging.WARNING, logger="seqzoo.kernels"):
        args, kwargs = lstm_call()
        select("lstm", *args, **kwargs)
    assert "the environment variable SEQZOO_KERNEL is not read by seqzoo; did you mean SEQZOO_KERNELS?" in caplog.text


# --- model registry rules (each found by editing seqzoo/registry.py and seeing no test fail) ---------------------


def lstm_classes(name, model_type):
    from seqzoo.models.lstm import LSTMConfig, LSTMForCausalLM, LSTMForSequenceClassification, LSTMModel

    config = type(f"{name}Config", (LSTMConfig,), {"model_type": model_type})
    return (config, type(f"{name}Model", (LSTMModel,), {"config_class": config}),
            type(f"{name}ForCausalLM", (LSTMForCausalLM,), {"config_class": config}),
            type(f"{name}ForSequenceClassification", (LSTMForSequenceClassification,), {"config_class": config}))


def test_model_spec_heads_are_checked_and_the_causal_lm_comes_first():
    config, model, lm, classifier = lstm_classes("Specced", "seqzoo_specced")
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['causal_lm'\] in heads; tasks are causal-lm, "):
        registry.ModelSpec("specced", config, model, heads={"causal_lm": lm})
    with pytest.raises(ValueError, match=r"architecture 'specced' has no head: give heads=\{task: class\}"):
        registry.ModelSpec("specced", config, model)
    spec = registry.ModelSpec("specced", config, model, lm, heads={"sequence-classification": classifier})
    assert spec.default_task == "causal-lm" and spec.default_head is lm
    # A head given twice, as two classes, kept the one in heads without a word.
    with pytest.raises(ValueError, match=r"causal_lm_class SpeccedForCausalLM and heads\['causal-lm'\] "
                                         r"SpeccedForSequenceClassification differ; give the causal LM once"):
        registry.ModelSpec("specced", config, model, lm, heads={"causal-lm": classifier})
    assert registry.ModelSpec("specced", config, model, lm, heads={"causal-lm": lm}).heads == {"causal-lm": lm}


def test_task_of_a_subclass_of_a_head():
    spec = registry.get_architecture("lstm")
    mine = type("MyLSTMForCausalLM", (seqzoo.LSTMForCausalLM,), {})
    assert spec.task_of(mine) == "causal-lm"
    with pytest.raises(ValueError, match="MyLSTM is not a head of architecture 'lstm'"):
        spec.task_of(type("MyLSTM", (torch.nn.Module,), {}))


def test_register_architecture_refuses_a_mismatched_config_class_a_missing_model_type_and_a_taken_preset():
    config, model, lm, _ = lstm_classes("Mismatched", "seqzoo_mismatched")
    with pytest.raises(ValueError, match=r"LSTMForCausalLM.config_class is LSTMConfig, not the spec's config "
                                         r"class MismatchedConfig"):
        registry.register_architecture(registry.ModelSpec("mismatched", config, model, seqzoo.LSTMForCausalLM))
    config, model, lm, _ = lstm_classes("Typeless", "")
    with pytest.raises(ValueError, match="architecture 'typeless': its config class must set model_type"):
        registry.register_architecture(registry.ModelSpec("typeless", config, model, lm))
    first = registry.ModelSpec("presetowner", *lstm_classes("Presetowner", "seqzoo_presetowner")[:3],
                               presets={"shared-tiny": {"hidden_size": 16}})
    registry.register_architecture(first)
    try:
        second = registry.ModelSpec("presetthief", *lstm_classes("Presetthief", "seqzoo_presetthief")[:3],
                                    presets={"shared-tiny": {"hidden_size": 8}})
        with pytest.raises(ValueError, match="preset 'shared-tiny' is already defined by 'presetowner'"):
            registry.register_architecture(second)
        assert registry.preset_values("shared-tiny")[0].name == "presetowner"
    finally:
        registry._ARCHITECTURES.pop("presetowner", None)
        registry._PLUGIN_PRESETS.pop("shared-tiny", None)
    assert "mismatched" not in seqzoo.list_architectures() and "typeless" not in seqzoo.list_architectures()


def test_list_architectures_and_create_model_name_an_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'causal_lm'. Did you mean 'causal-lm'"):
        seqzoo.list_architectures("causal_lm")
    assert "seq2seq" not in seqzoo.list_architectures("causal-lm")
    with pytest.raises(ValueError, match="unknown task for architecture 'lstm': 'seq2seq'. Available: causal-lm, "):
        seqzoo.create_model("lstm-tiny", "seq2seq")


def test_preset_files_of_unregistered_architectures_and_saved_config_fields(tmp_path, monkeypatch):
    (tmp_path / "lstm-copy.json").write_text(
        '{"model_type": "seqzoo_lstm", "hidden_size": 24, "architectures": ["LSTMForCausalLM"], '
        '"transformers_version": "5.0.0", "auto_map": {"AutoConfig": "configuration_lstm.LSTMConfig"}}')
    (tmp_path / "ghost-tiny.json").write_text('{"model_type": "seqzoo_ghost", "hidden_size": 8}')
    monkeypatch.setattr(registry, "PRESET_DIR", tmp_path)
    assert seqzoo.list_models() == ["lstm-copy"]  # (a preset of an architecture not registered is not listed)
    config = seqzoo.get_config("lstm-copy")
    assert config.hidden_size == 24 and getattr(config, "auto_map", None) is None  # (a saved config.json's own)


TYPO_PLUGIN = '''
from seqzoo.models.lstm import LSTMConfig, LSTMForCausalLM, LSTMModel
from seqzoo.registry import ModelSpec


class TypoConfig(LSTMConfig):
    model_type = "seqzoo_testtypo"


class TypoModel(LSTMModel):
    config_class = TypoConfig


class TypoForCausalLM(LSTMForCausalLM):
    config_class = TypoConfig
    base_model_class = TypoModel


def register():  # one preset has a misspelt field
    return ModelSpec("testtypo", TypoConfig, TypoModel, TypoForCausalLM,
                     presets={"testtypo-tiny": {"hidden_size": 16, "num_hidden_layers": 1},
                              "testtypo-small": {"hiden_size": 32, "num_hidden_layers": 1}})
'''


def test_a_plugin_preset_that_builds_no_config_is_refused_when_it_registers(tmp_path, monkeypatch, caplog, capsys):
    # It was registered, and then `seqzoo list` and the lab failed with an "unexpected TypeError" naming neither the
    # preset nor the plugin. Now the plugin is logged and skipped, and the listing works.
    install_plugin(tmp_path, monkeypatch, "testtypo", textwrap.dedent(TYPO_PLUGIN), "seqzoo.models",
                   {"testtypo": "register"})
    try:
        with caplog.at_level(logging.ERROR, logger="seqzoo"):
            registry.load_plugins(force=True)
        (record,) = [r for r in caplog.records if "'testtypo'" in r.getMessage()]
        assert record.getMessage().startswith("seqzoo model plugin 'testtypo' (seqzoo_testtypo:register) failed to "
                                              "load")
        assert ("architecture 'testtypo': preset 'testtypo-small' does not build a TypoConfig: TypoConfig got "
                "unknown keyword argument(s) 'hiden_size' (did you mean 'hidden_size'?)") in caplog.text
        assert "testtypo" not in seqzoo.list_architectures() and "testtypo-tiny" not in seqzoo.list_models()
        from seqzoo.cli import main

        assert main(["list"]) == 0
    finally:
        sys.modules.pop("seqzoo_testtypo", None)
        registry._ARCHITECTURES.pop("testtypo", None)
        for preset in ("testtypo-tiny", "testtypo-small"):
            registry._PLUGIN_PRESETS.pop(preset, None)


def test_register_architecture_refuses_a_preset_of_a_bad_value_by_name_also_with_exist_ok():
    spec = registry.ModelSpec("badvalue", *lstm_classes("Badvalue", "seqzoo_badvalue")[:3],
                              presets={"badvalue-tiny": {"hidden_size": -4}})
    for exist_ok in (False, True):
        with pytest.raises(ValueError, match=r"architecture 'badvalue': preset 'badvalue-tiny' does not build a "
                                             r"BadvalueConfig: .*hidden_size"):
            registry.register_architecture(spec, exist_ok=exist_ok)
    assert "badvalue" not in seqzoo.list_architectures() and "badvalue-tiny" not in seqzoo.list_models()


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "", " lstm2", "a\\b", 3])
def test_an_architecture_name_that_is_no_plain_folder_name_is_refused(name):
    # The lab makes folders runs/<name>/: "../escape" wrote outside the lab's folder.
    with pytest.raises(ValueError, match=r"an architecture's name must be letters, digits, '_', '-' or '.', starting "
                                         r"with a letter or digit .* got " + re.escape(repr(name))):
        registry.ModelSpec(name, *lstm_classes("Oddname", "seqzoo_oddname")[:3])
    assert registry.ModelSpec("my_arch-2.0", *lstm_classes("Goodname", "seqzoo_goodname")[:3]).name == "my_arch-2.0"


def test_the_architectures_of_entry_points_are_known_to_reach_every_process(plugin_dist, monkeypatch):
    # (the lab's workers import seqzoo afresh: an architecture registered by a call in this process is not there)
    monkeypatch.setattr(registry, "_ENTRY_POINT_ARCHITECTURES", set())
    registry.load_plugins(force=True)
    assert registry.in_every_process("testplugin") and registry.in_every_process("lstm")
    registry._ENTRY_POINT_ARCHITECTURES.clear()
    assert not registry.in_every_process("testplugin")


def test_a_name_of_another_type_is_named_not_an_unhashable_type_error():
    # A list given as a name failed with a bare "unhashable type: 'list'", and a config given to create_model with
    # "unhashable type: 'LSTMConfig'"
    import pytest

    import seqzoo
    from seqzoo.conversions.export import to_native
    from seqzoo.kernels.registry import KernelError, requested_backend
    from seqzoo.registry import get_architecture, list_architectures

    with pytest.raises(ValueError, match=r"unknown architecture \['lstm'\]"):
        get_architecture(["lstm"])
    with pytest.raises(ValueError, match=r"unknown task \['causal-lm'\]"):
        list_architectures(["causal-lm"])
    with pytest.raises(KernelError, match=r"unknown kernel op \['lstm'\]"):
        requested_backend(["lstm"])
    with pytest.raises(KernelError, match=r"unknown kernel op \['selective_scan'\]"):
        seqzoo.set_kernel_backend(["selective_scan"], None)
    with pytest.raises(KernelError, match=r"unknown kernel backend for op 'lstm': \['reference'\]"):
        seqzoo.set_kernel_backend("lstm", ["reference"])
    with pytest.raises(ValueError, match=r"unknown export target \['llama'\]"):
        to_native(seqzoo.create_model("transformer-tiny"), ["llama"])
    with pytest.raises(TypeError, match=r"a model preset is named by a string .*got LSTMConfig \(for a config, "
                                        r"AutoModelForCausalLM.from_config\(config\)"):
        seqzoo.create_model(seqzoo.get_config("lstm-tiny"))
