"""seqzoo's configs answer attribute reads themselves (``configuration_utils._seqzoo_config_getattribute``), faster
than transformers' ``PreTrainedConfig.__getattribute__`` chain, and must answer exactly as it does: every field,
property and method of every architecture's config, an ``attribute_map`` alias, a missing name, a heterogeneous
config's guarded fields, and only on the transformers releases whose chain the shortcut was checked against."""

from __future__ import annotations

import types

import pytest
import transformers
from transformers import PreTrainedConfig

from seqzoo.models import configuration_utils
from seqzoo.models.configuration_utils import SeqzooConfig
from tests.conftest import FAMILIES, SEQ2SEQ_FAMILIES, tiny_config

ORIGINAL = configuration_utils._TRANSFORMERS_GETATTRIBUTE


def test_the_installed_release_was_checked():
    fingerprint = configuration_utils._attribute_read_fingerprint()
    assert fingerprint in configuration_utils._CHECKED_ATTRIBUTE_READS, (
        f"transformers {transformers.__version__}'s config attribute reads (fingerprint {fingerprint}) are not the "
        "ones seqzoo's shortcut was checked against: seqzoo's configs now read through transformers' own method. "
        "Compare PreTrainedConfig.__getattribute__ (and every __getattribute__ in its MRO) with "
        "_seqzoo_config_getattribute, then add the fingerprint to _CHECKED_ATTRIBUTE_READS")
    assert SeqzooConfig.__getattribute__ is configuration_utils._seqzoo_config_getattribute


def read(config, name, getattribute):
    try:
        return "value", getattribute(config, name)
    except Exception as error:  # noqa: BLE001 -- the same exception is part of the same answer
        return "error", type(error), str(error)


def same(a, b):
    if a[0] != b[0]:
        return False
    if a[0] == "error":
        return a == b
    value_a, value_b = a[1], b[1]
    if isinstance(value_a, types.MethodType):  # a bound method is a new object on every read
        return isinstance(value_b, types.MethodType) and value_a.__func__ is value_b.__func__ and \
            value_a.__self__ is value_b.__self__
    if value_a is value_b or value_a == value_b:
        return True
    # A property that builds a new object on every read (transformers' per_layer_config view): the same contents.
    return type(value_a) is type(value_b) and hasattr(value_a, "__dict__") and vars(value_a) == vars(value_b)


@pytest.mark.parametrize("preset", sorted({**FAMILIES, **SEQ2SEQ_FAMILIES}.values()))
def test_every_name_reads_as_transformers_reads_it(preset):
    config = tiny_config(preset)
    names = set(dir(config)) | set(vars(config)) | {"no_such_field", "attribute_map", "__dict__", "__class__"}
    names -= {"__getattribute__"}  # transformers' own, not ours
    for name in sorted(names):
        ours, theirs = read(config, name, type(config).__getattribute__), read(config, name, ORIGINAL)
        assert same(ours, theirs), (name, ours, theirs)
    # A name that is not there raises AttributeError, by the usual attribute protocol too.
    with pytest.raises(AttributeError, match="no_such_field"):
        config.no_such_field
    assert getattr(config, "no_such_field", "default") == "default"


def test_an_attribute_map_alias_reads_the_field_it_names():
    class AliasedConfig(type(tiny_config("rnn-tiny"))):
        model_type = "seqzoo_rnn_aliased_for_test"
        attribute_map = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers"}

    config = AliasedConfig(hidden_size=24, num_hidden_layers=3)
    assert config.n_embd == 24 == ORIGINAL(config, "n_embd")
    assert config.n_layer == 3 == ORIGINAL(config, "n_layer")
    assert config.attribute_map == ORIGINAL(config, "attribute_map")
    config.hidden_size = 40  # the alias follows the field
    assert config.n_embd == 40


def test_a_heterogeneous_config_reads_through_transformers():
    # transformers refuses to read a per-layer field on the global config of a heterogeneous model; seqzoo's read
    # must not answer it silently.
    config = tiny_config("rnn-tiny")
    config.__dict__["_heterogeneity_spec"] = types.SimpleNamespace(per_layer_attributes={"hidden_size"})
    config.__dict__["allow_global_per_layer_attribute_access"] = False
    with pytest.raises(Exception) as ours:
        config.hidden_size
    with pytest.raises(Exception) as theirs:
        ORIGINAL(config, "hidden_size")
    assert type(ours.value) is type(theirs.value) and type(ours.value).__name__ == \
        "AmbiguousGlobalPerLayerAttributeError"
    assert config.vocab_size == ORIGINAL(config, "vocab_size")


def test_an_unchecked_release_keeps_transformers_reads(monkeypatch):
    # The decision is the module's at import; what it rests on:
    monkeypatch.setattr(configuration_utils, "_CHECKED_ATTRIBUTE_READS", frozenset())
    assert configuration_utils._attribute_read_fingerprint() not in configuration_utils._CHECKED_ATTRIBUTE_READS
    assert PreTrainedConfig.__getattribute__ is ORIGINAL  # transformers' class itself is never changed
