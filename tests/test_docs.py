"""What a user reads outside the README: help() of everything seqzoo exports says what that thing is."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re

import pytest
import torch
from torch import nn

import seqzoo
from seqzoo.models.heads import SeqzooForSequenceClassification, SeqzooForTokenClassification
from seqzoo.models.modeling_utils import SeqzooForCausalLM, SeqzooPreTrainedModel

EXPORTED_MODELS = [getattr(seqzoo, name) for name in seqzoo.__all__
                   if isinstance(getattr(seqzoo, name), type) and issubclass(getattr(seqzoo, name), nn.Module)]
ROLES = {"ForCausalLM": SeqzooForCausalLM, "ForSequenceClassification": SeqzooForSequenceClassification,
         "ForTokenClassification": SeqzooForTokenClassification}


@pytest.mark.parametrize("model_class", [c for c in EXPORTED_MODELS if not c.__name__.endswith("PreTrainedModel")],
                         ids=lambda c: c.__name__)
def test_model_class_help_describes_the_class(model_class: type) -> None:
    # (MambaForSequenceClassification read "The base of every Mamba model class", without the head's poolings;
    # RWKV7Model, TransformerModel and HybridModel "Base of every seqzoo model")
    doc = inspect.getdoc(model_class)
    assert doc, model_class.__name__
    bases = [klass for klass in model_class.__mro__ if klass.__name__.endswith("PreTrainedModel")]
    assert all(doc != inspect.getdoc(base) for base in bases), f"{model_class.__name__}: {doc[:60]!r}"
    for suffix, role in ROLES.items():
        if model_class.__name__.endswith(suffix):  # (a head without its own docstring reads as the head it is)
            assert doc == inspect.getdoc(role), model_class.__name__


@pytest.mark.parametrize("model_class", [c for c in EXPORTED_MODELS if not c.__name__.endswith("PreTrainedModel")],
                         ids=lambda c: c.__name__)
def test_model_forward_is_documented(model_class: type) -> None:
    # (the backbones' forward showed torch's "Define the computation performed at every call")
    assert model_class.forward is not nn.Module.forward
    doc = inspect.getdoc(model_class.forward)
    assert doc and doc != inspect.getdoc(nn.Module.forward), model_class.__name__


def test_a_role_class_without_docstring_reads_as_its_role() -> None:
    assert inspect.getdoc(seqzoo.MambaForSequenceClassification) == inspect.getdoc(SeqzooForSequenceClassification)
    assert inspect.getdoc(seqzoo.Mamba2ForTokenClassification) == inspect.getdoc(SeqzooForTokenClassification)
    assert inspect.getdoc(seqzoo.MambaForCausalLM) == inspect.getdoc(SeqzooForCausalLM)
    assert inspect.getdoc(seqzoo.MambaPreTrainedModel) != inspect.getdoc(SeqzooPreTrainedModel)  # its own stays


CONFIGS = [getattr(seqzoo, name) for name in seqzoo.__all__ if name.endswith("Config")]


def _documented_args(config_class: type) -> str:
    """The ``Args:`` sections of the docstrings of ``config_class`` and its seqzoo bases."""
    return "\n".join(klass.__doc__.split("Args:", 1)[-1] for klass in config_class.__mro__
                     if klass.__module__.startswith("seqzoo.") and klass.__doc__ and "Args:" in klass.__doc__)


@pytest.mark.parametrize("config_class", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_is_documented(config_class: type) -> None:
    # (TransformerConfig.layer_norm_eps, the common vocab_size ... eos_token_id and Seq2SeqConfig.is_encoder_decoder
    # were documented nowhere a help() reader finds them)
    from transformers import PreTrainedConfig

    args = _documented_args(config_class)
    fields = {name for klass in config_class.__mro__ if issubclass(klass, PreTrainedConfig)
              and klass is not PreTrainedConfig and klass.__module__.startswith("seqzoo.")
              for name, kind in vars(klass).get("__annotations__", {}).items() if "ClassVar" not in str(kind)}
    missing = sorted(name for name in fields if not re.search(rf"\b{name}\b", args))
    assert not missing, f"{config_class.__name__}: no Args entry for {missing}"


def test_documented_common_defaults() -> None:
    for config_class in CONFIGS:
        config = config_class()
        assert config.vocab_size == 258 and config.use_cache is True
        assert config.pad_token_id is None and config.bos_token_id is None and config.eos_token_id is None
        classic = config_class in (seqzoo.RNNConfig, seqzoo.LSTMConfig, seqzoo.GRUConfig)
        assert config.initializer_range == (1.0 if classic or config_class is seqzoo.Seq2SeqConfig else 0.02)
        assert config.tie_word_embeddings is (config_class is not seqzoo.RWKV7Config)
        concat = classic or config_class is seqzoo.Seq2SeqConfig
        assert config.bidirectional_merge == ("concat" if concat else "sum"), config_class.__name__
    for variant, eps in (("llama", 1e-6), ("gpt2", 1e-5), ("vaswani", 1e-5)):
        assert seqzoo.TransformerConfig(variant=variant).layer_norm_eps == eps


def test_classic_untied_decoder_init() -> None:
    torch.manual_seed(0)
    model = seqzoo.LSTMForCausalLM(seqzoo.LSTMConfig(vocab_size=99, hidden_size=16, num_hidden_layers=1,
                                                     tie_word_embeddings=False))
    assert torch.count_nonzero(model.lm_head.bias) == 0
    assert model.lm_head.weight.abs().max() <= 16**-0.5


PUBLIC_MODULES = ("seqzoo", "seqzoo.training", "seqzoo.kernels", "seqzoo.hub", "seqzoo.lab", "seqzoo.models")


def _public_callables() -> list[tuple[str, object]]:
    found = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
        for name in names:
            obj = getattr(module, name, None)
            if callable(obj) and not inspect.ismodule(obj) and not name.endswith("PreTrainedModel"):
                found.append((f"{module_name}.{name}", obj))
    return found


@pytest.mark.parametrize(("name", "obj"), _public_callables(), ids=[name for name, _ in _public_callables()])
def test_every_public_callable_has_its_own_docstring(name: str, obj: object) -> None:
    # (get_architecture, list_recipes, recipe_from_dict, available_backends, list_ops, builtin_architectures had
    # none; Recipe, TrainResult and LabConfig only the signature dataclasses write)
    own = vars(obj).get("__doc__") if isinstance(obj, type) else obj.__doc__
    assert own and not own.startswith(f"{getattr(obj, '__name__', '')}("), name


def test_recipe_docstring_gives_every_field_and_its_default() -> None:
    from seqzoo.training.recipe import SECTIONS, Recipe

    entries = re.findall(r"``([a-z_]+(?:\.[a-z_]+)?)``\s+=\s+``([^`]+)``", Recipe.__doc__)  # ``field`` = ``default``
    documented = {key: ast.literal_eval(value) for key, value in entries}
    defaults = {f.name: f.default for f in dataclasses.fields(Recipe) if f.name not in SECTIONS}
    for section, section_class in SECTIONS.items():
        for f in dataclasses.fields(section_class):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            defaults[f"{section}.{f.name}"] = default
    assert sorted(documented) == sorted(defaults)
    assert {key: value for key, value in documented.items() if value != defaults[key]} == {}


def test_cache_methods_say_what_this_cache_does() -> None:
    # (help(SeqzooCache) gave transformers' docstrings of methods seqzoo overrides: crop "restricts linear
    # attention layers' states" where a recurrent cache refuses, is_linear "whether the layers are Mamba/SSM
    # layers" where a Mamba cache answers False, batch_size "-1" where it is None)
    from seqzoo.cache import SeqzooCache

    undocumented = []
    for name, member in vars(SeqzooCache).items():
        function = member.fget if isinstance(member, property) else member
        if not name.startswith("_") and callable(function) and not function.__doc__:
            undocumented.append(name)
    assert undocumented == []
    empty = SeqzooCache.for_model(seqzoo.MambaConfig(hidden_size=16, num_hidden_layers=2))
    assert empty.batch_size is None and empty.get_seq_length(1) == 0 and empty.is_linear == [False, False]


def test_sequence_head_docstring_gives_each_direction_its_default_pooling() -> None:
    # (it said "last" was the default; a bidirectional model's is "first+last")
    doc = inspect.getdoc(seqzoo.LSTMForSequenceClassification)
    for bidirectional, said in ((False, "the default reading left to right"),
                                (True, "a bidirectional model's default")):
        pooling = seqzoo.LSTMConfig(bidirectional=bidirectional).classifier_pooling
        assert f'``"{pooling}"`` ({said})' in doc, pooling
