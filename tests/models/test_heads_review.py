"""Task heads at edges a review found: label names given beside a checkpoint, a checkpoint saved with another head
(or loaded with a setting that reshapes the head), and the sequence head's loss in half precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

import seqzoo


def test_id2label_given_beside_a_checkpoint_brings_its_label2id(tmp_path):
    seqzoo.create_model("gru-tiny").save_pretrained(tmp_path / "lm")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "lm", id2label={0: "neg", 1: "pos"})
    assert model.config.id2label == {0: "neg", 1: "pos"} and model.config.label2id == {"neg": 0, "pos": 1}
    names = {0: "neg", 1: "mid", 2: "pos"}
    seqzoo.create_model("gru-tiny", "sequence-classification", id2label=names).save_pretrained(tmp_path / "clf")
    renamed = AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf", id2label={0: "x", 1: "y", 2: "z"})
    assert renamed.config.label2id == {"x": 0, "y": 1, "z": 2}
    with pytest.raises(ValueError, match="label2id.*is invalid"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf", label2id={"neg": 1, "mid": 0, "pos": 2})
    kept = AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf")
    assert kept.config.id2label == names


def test_a_checkpoint_of_another_head_is_not_called_damaged(tmp_path):
    token = seqzoo.create_model("gru-tiny", "token-classification", num_labels=3, bidirectional=True)
    token.save_pretrained(tmp_path / "token")
    with pytest.raises(ValueError, match="saved as GRUForTokenClassification.*ignore_mismatched_sizes=True") as err:
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "token")
    assert "download" not in str(err.value)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "token", ignore_mismatched_sizes=True)
    assert torch.equal(loaded.model.embed_tokens.weight, token.model.embed_tokens.weight)
    sequence = seqzoo.create_model("gru-tiny", "sequence-classification", num_labels=3)
    sequence.save_pretrained(tmp_path / "sequence")
    with pytest.raises(ValueError, match="a setting given beside it, such as classifier_pooling") as err:
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "sequence", classifier_pooling="first+last")
    assert "download" not in str(err.value)
    both_ways = seqzoo.create_model("gru-tiny", "sequence-classification", num_labels=3, bidirectional=True)
    both_ways.save_pretrained(tmp_path / "both_ways")  # (pools first and last: its score is twice as wide)
    with pytest.raises(ValueError, match="saved as GRUForSequenceClassification"):
        AutoModelForTokenClassification.from_pretrained(tmp_path / "both_ways")


@pytest.mark.parametrize("problem_type, labels", [
    ("single_label_classification", torch.tensor([0, 2, 1, 2])),
    ("multi_label_classification", torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]]).float()),
    ("regression", torch.randn(4, 3)),
])
def test_the_sequence_loss_is_computed_in_float32_for_half_precision_logits(problem_type, labels):
    torch.manual_seed(0)
    model = seqzoo.create_model("gru-tiny", "sequence-classification", num_labels=3, problem_type=problem_type)
    model = model.to(torch.bfloat16).eval()
    ids = torch.randint(3, 90, (4, 7))
    out = model(ids, labels=labels)
    logits = out.logits.float()
    expected = {"single_label_classification": lambda: F.cross_entropy(logits, labels),
                "multi_label_classification": lambda: F.binary_cross_entropy_with_logits(logits, labels),
                "regression": lambda: F.mse_loss(logits, labels)}[problem_type]()
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-6)
