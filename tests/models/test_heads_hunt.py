"""Task heads at edges a second review found: a checkpoint of the other head whose score has this head's shape, the
range of multi-label targets, classifier_dropout changed after the model was built, the sequence loss under Trainer's
gradient accumulation (num_items_in_batch), and packed rows for tagging."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DataCollatorWithFlattening,
    Trainer,
    TrainingArguments,
)

import seqzoo

HEADS = {"sequence-classification": AutoModelForSequenceClassification,
         "token-classification": AutoModelForTokenClassification}
OTHER = {"sequence-classification": "token-classification", "token-classification": "sequence-classification"}


@pytest.mark.parametrize("task", sorted(HEADS))
@pytest.mark.parametrize("preset, overrides", [("gru-tiny", {}), ("mamba-tiny", {"classifier_pooling": "mean"})])
def test_a_checkpoint_of_the_other_head_is_refused_when_its_score_fits_too(task, preset, overrides, tmp_path):
    """A unidirectional tagger's score is as wide as a last-token or mean-pooling classifier's: it loaded as the
    classifier's score (and the reverse) without a word."""
    torch.manual_seed(0)
    saved = seqzoo.create_model(preset, OTHER[task], num_labels=3, **overrides)
    saved.save_pretrained(tmp_path)
    name = type(saved).__name__
    with pytest.raises(ValueError, match=rf"saved as {name}, another head whose score would load as .*"
                                         r"ignore_mismatched_sizes=True to start a new head"):
        HEADS[task].from_pretrained(tmp_path)
    fresh = HEADS[task].from_pretrained(tmp_path, ignore_mismatched_sizes=True)
    assert torch.equal(fresh.model.embed_tokens.weight, saved.model.embed_tokens.weight)  # its backbone
    assert fresh.score.weight.shape == saved.score.weight.shape and not torch.equal(fresh.score.weight,
                                                                                    saved.score.weight)
    assert torch.isfinite(fresh.score.weight).all() and fresh.score.weight.abs().sum() > 0
    assert type(HEADS[OTHER[task]].from_pretrained(tmp_path)) is type(saved)  # as it was saved: as before


def test_a_head_still_loads_a_causal_lm_or_its_own_subclass(tmp_path):
    seqzoo.create_model("gru-tiny").save_pretrained(tmp_path / "lm")
    head = AutoModelForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=3)
    assert head.score.weight.shape == (3, 64)

    class NamedClassifier(seqzoo.GRUForSequenceClassification):  # a class a user derived: the same head
        pass

    torch.manual_seed(0)
    derived = NamedClassifier(seqzoo.create_model("gru-tiny", "sequence-classification", num_labels=3).config)
    derived.save_pretrained(tmp_path / "derived")
    loaded = seqzoo.GRUForSequenceClassification.from_pretrained(tmp_path / "derived")
    assert torch.equal(loaded.score.weight, derived.score.weight)


def multi_label_model():
    torch.manual_seed(0)
    return seqzoo.create_model("gru-tiny", "sequence-classification", num_labels=3,
                               problem_type="multi_label_classification").eval()


@pytest.mark.parametrize("value", [2.0, -100.0, -0.5, float("nan")])
def test_multi_label_targets_outside_0_and_1_are_refused_by_value(value):
    """Binary cross-entropy takes any float target: -100 meant as 'ignore' gave a negative loss, 2.0 a wrong one."""
    model = multi_label_model()
    labels = torch.tensor([[value, 0.0, 1.0], [0.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match=rf"takes targets in \[0, 1\].*labels contain {value}\. -100 marks no "
                                         "ignored target here"):
        model(torch.randint(3, 90, (2, 5)), labels=labels)


def test_soft_multi_label_targets_stay_allowed():
    model = multi_label_model()
    ids, labels = torch.randint(3, 90, (2, 5)), torch.tensor([[0.25, 0.0, 1.0], [1.0, 0.5, 0.0]])
    out = model(ids, labels=labels)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, labels))


@pytest.mark.parametrize("task", sorted(HEADS))
def test_classifier_dropout_changed_after_the_model_was_built_is_refused(task):
    """The dropout module keeps the probability it was built with: a config changed afterwards was ignored."""
    model = seqzoo.create_model("gru-tiny", task, num_labels=3)
    ids = torch.randint(3, 90, (2, 5))
    model.config.classifier_dropout = 0.5
    with pytest.raises(ValueError, match=r"config.classifier_dropout=0.5, but this model's dropout before the score "
                                         r"was built with p=0.0; build or load the model with classifier_dropout"):
        model(ids)
    model.dropout.p = 0.5  # (both set: what the message offers)
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)


def trainer_step(labels, batch_size, accumulation, tmp_path, num_labels=3, problem_type=None):
    """The loss and the score's update of one SGD step of transformers' Trainer over a GRU classifier."""
    rows = [torch.randint(3, 90, (6,), generator=torch.Generator().manual_seed(i)) for i in range(len(labels))]
    data = [{"input_ids": row, "labels": torch.tensor(label)} for row, label in zip(rows, labels)]
    torch.manual_seed(0)
    model = seqzoo.create_model("gru-tiny", "sequence-classification", num_labels=num_labels,
                                problem_type=problem_type)
    before = model.score.weight.detach().clone()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=batch_size,
                             gradient_accumulation_steps=accumulation, learning_rate=1.0, optim="sgd",
                             lr_scheduler_type="constant", max_grad_norm=0, report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True, train_sampling_strategy="sequential")
    loss = Trainer(model=model, args=args, train_dataset=data).train().training_loss
    return loss, model.score.weight.detach() - before


@pytest.mark.parametrize("labels, problem_type", [
    ([0, 1, 2, -100], None),  # ignored rows, two in one micro-batch
    ([-100, -100, 0, 1], None),  # a micro-batch of ignored rows only: its mean was NaN, and the update halved
    ([[1.0, 0.0, 0.5], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]], "multi_label_classification"),
    ([[0.5], [-1.0], [2.0], [0.0]], "regression"),
])
def test_trainer_accumulation_of_sequence_losses_gives_the_whole_batch_step(labels, problem_type, tmp_path):
    """Trainer scaled the mean loss of each micro-batch by the number of micro-batches: exact only when every
    micro-batch holds as many labelled rows. The head now divides its summed loss by Trainer's count."""
    num_labels = len(labels[0]) if isinstance(labels[0], list) else 3
    whole = trainer_step(labels, 4, 1, tmp_path, num_labels, problem_type)
    accumulated = trainer_step(labels, 2, 2, tmp_path, num_labels, problem_type)
    assert accumulated[0] == pytest.approx(whole[0], rel=1e-5)
    torch.testing.assert_close(accumulated[1], whole[1], rtol=1e-4, atol=1e-7)


def test_trainer_accumulation_over_a_short_last_micro_batch_gives_the_whole_batch_step(tmp_path):
    labels = [0, 1, 2, 0, 1]  # micro-batches of 2, 2 and 1 rows: the lone row weighed twice as much as the others
    whole = trainer_step(labels, 5, 1, tmp_path)
    accumulated = trainer_step(labels, 2, 3, tmp_path)
    assert accumulated[0] == pytest.approx(whole[0], rel=1e-5)
    torch.testing.assert_close(accumulated[1], whole[1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("problem_type, labels, summed", [
    ("single_label_classification", torch.tensor([0, -100, 2]),
     lambda logits, labels: F.cross_entropy(logits, labels, reduction="sum")),
    ("multi_label_classification", torch.tensor([[1.0, 0, 0.5], [0, 0, 1], [1, 1, 0]]),
     lambda logits, labels: F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")),
    ("regression", torch.tensor([[1.5, 0, -2], [0, 3, 1], [1, 1, 0]]),
     lambda logits, labels: F.mse_loss(logits, labels, reduction="sum")),
])
def test_num_items_in_batch_divides_the_summed_sequence_loss(problem_type, labels, summed):
    torch.manual_seed(0)
    model = seqzoo.create_model("gru-tiny", "sequence-classification", num_labels=3, problem_type=problem_type).eval()
    ids = torch.randint(3, 90, (3, 5))
    logits = model(ids).logits
    for count in (7, torch.tensor(7)):
        torch.testing.assert_close(model(ids, labels=labels, num_items_in_batch=count).loss,
                                   summed(logits, labels) / 7)


def test_a_regression_target_of_minus_100_is_refused_with_num_items_in_batch():
    """Trainer counts the labels that are not -100: such a target is summed but not counted."""
    torch.manual_seed(0)
    model = seqzoo.create_model("gru-tiny", "sequence-classification", num_labels=1).eval()
    ids, labels = torch.randint(3, 90, (2, 5)), torch.tensor([1.0, -100.0])
    assert torch.isfinite(model(ids, labels=labels).loss)  # (without the count, a target like any other)
    with pytest.raises(ValueError, match="regression labels contain -100, which transformers' Trainer leaves out"):
        model(ids, labels=labels, num_items_in_batch=2)


def test_packed_tagging_rows_with_the_readmes_collator_get_each_documents_loss():
    """DataCollatorWithFlattening replaces each document's first label with -100 (a causal LM's shift); the README's
    collator puts the labels back, and the packed loss is the documents' own."""
    features = [{"input_ids": [5, 6, 7], "labels": [1, 2, 0]}, {"input_ids": [8, 9], "labels": [2, 1]}]
    flatten = DataCollatorWithFlattening()
    assert flatten(features)["labels"].tolist() == [[-100, 2, 0, -100, 1]]

    def collate(features):  # (as the README writes it)
        batch = flatten(features)
        batch["labels"] = torch.tensor([[label for f in features if len(f["input_ids"]) for label in f["labels"]]])
        return batch

    torch.manual_seed(0)
    model = seqzoo.create_model("lstm-tiny", "token-classification", num_labels=3, bidirectional=True).eval()
    batch = collate(features)
    alone = sum(F.cross_entropy(model(torch.tensor([f["input_ids"]])).logits[0], torch.tensor(f["labels"]),
                                reduction="sum") for f in features) / 5
    torch.testing.assert_close(model(**batch).loss, alone)
