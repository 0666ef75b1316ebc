"""What a user reads outside the README: help() of everything seqzoo exports says what that thing is."""

from __future__ import annotations

import inspect

import pytest
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

