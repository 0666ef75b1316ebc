"""The classifier heads and the bidirectional classic encoders against implementations seqzoo did not write:
torch.nn.RNN / LSTM / GRU with bidirectional=True (padded rows packed as torch packs them), transformers' own
``*ForSequenceClassification`` pooling (the last token that is not the pad token), torch's losses; and the pooled
positions ("mean", "first+last") read off the backbone's output row by row."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqzoo.registry import architecture_for_model_type
from tests.conftest import FAMILIES, tiny_config

LENGTHS = torch.tensor([7, 3, 5])


def head(preset: str, task: str, **overrides):
    torch.manual_seed(0)
    config = tiny_config(preset, num_labels=3, **overrides)
    return architecture_for_model_type(config.model_type).heads[task](config).eval()


def padded(side: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of three rows of LENGTHS real tokens, pad id 0, padded on ``side``."""
    gen = torch.Generator().manual_seed(seed)
    width = int(LENGTHS.max())
    real = torch.arange(width)[None] < LENGTHS[:, None]
    if side == "left":
        real = real.flip(1)
    ids = torch.randint(3, 90, (len(LENGTHS), width), generator=gen).masked_fill(~real, 0)
    return ids, real.long()


def to_right(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's real positions moved to the front (left padding -> right padding)."""
    out = torch.zeros_like(values)
    for row in range(values.shape[0]):
        real = values[row][mask[row].bool()]
        out[row, :len(real)] = real
    return out


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("merge", ["concat", "sum"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_bidirectional_classic_encoder_matches_torch_nn(cell, merge, side):
    """Layer by layer: torch's bidirectional layer (its two directions side by side, forward first; summed for
    merge="sum") over the packed rows. The concatenated features keep torch's layout: the forward direction's final
    state (h_n) at the last real token, the reverse direction's at the first."""
    model = head(FAMILIES[cell], "token-classification", bidirectional=True, bidirectional_merge=merge)
    config = model.config
    ids, mask = padded(side)
    with torch.no_grad():
        ours = to_right(model.model(ids, attention_mask=mask).last_hidden_state, mask)
        x = to_right(model.model.embed_tokens(ids), mask)
        torch_class = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        extra = {"nonlinearity": config.nonlinearity} if cell == "rnn" else {}
        for layer in model.model.layers:
            reference = torch_class(x.shape[-1], config.hidden_size, bidirectional=True, batch_first=True, **extra)
            for suffix, direction in (("", layer.left_to_right), ("_reverse", layer.right_to_left)):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(reference, f"{name}_l0{suffix}").copy_(getattr(direction, name))
            packed = pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False)
            out, state = reference(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
            x = out if merge == "concat" else out[..., :config.hidden_size] + out[..., config.hidden_size:]
    real = torch.arange(ids.shape[1])[None] < LENGTHS[:, None]
    torch.testing.assert_close(ours[real], x[real], rtol=1e-5, atol=1e-5)
    if merge == "concat":
        h_n = state[0] if cell == "lstm" else state  # (2, B, H): forward, reverse
        rows = torch.arange(len(LENGTHS))
        torch.testing.assert_close(ours[rows, LENGTHS - 1, :config.hidden_size], h_n[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours[:, 0, config.hidden_size:], h_n[1], rtol=1e-5, atol=1e-5)


class _Backbone(nn.Module):
    """seqzoo's backbone in the place of transformers' (which the head calls as ``self.model``)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds)


def transformers_head(ours: nn.Module) -> nn.Module:
    """transformers' LlamaForSequenceClassification with seqzoo's backbone and score: its own pooling and loss."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
                         num_key_value_heads=1, num_labels=ours.config.num_labels, pad_token_id=0)
    reference = LlamaForSequenceClassification(config).eval()
    reference.model = _Backbone(ours.model)
    reference.score = ours.score
    return reference


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", ["gru", "transformer", "mamba"])
def test_last_pooling_is_transformers_last_token_that_is_not_padding(family, side):
    model = head(FAMILIES[family], "sequence-classification", pad_token_id=0)
    reference = transformers_head(model)
    ids, mask = padded(side)
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, labels=labels)
        theirs = reference(ids, attention_mask=mask)
        torch.testing.assert_close(ours.logits, theirs.logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.loss, F.cross_entropy(theirs.logits, labels), rtol=1e-5, atol=1e-6)
        if side == "right":  # no mask: transformers' rule reads the pad token (a causal model ignores what follows)
            unmasked = model(ids).logits
            torch.testing.assert_close(unmasked, reference(ids).logits, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(unmasked, ours.logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pooling", ["mean", "first+last", "last"])
def test_pooled_positions_are_the_real_tokens(pooling, side):
    model = head(FAMILIES["gru"], "sequence-classification", bidirectional=True, classifier_pooling=pooling)
    ids, mask = padded(side)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        hidden = model.model(ids, attention_mask=mask).last_hidden_state
        for row in range(len(ids)):
            real = hidden[row][mask[row].bool()]
            pooled = {"mean": real.mean(0), "first+last": torch.cat([real[0], real[-1]]), "last": real[-1]}[pooling]
            torch.testing.assert_close(logits[row], model.score(pooled), rtol=1e-5, atol=1e-6)


def test_the_token_loss_is_torchs_cross_entropy_over_the_labelled_positions():
    model = head(FAMILIES["gru"], "token-classification")
    ids, mask = padded("right")
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, ids.shape, generator=gen).masked_fill(mask == 0, -100)
    labels[0, 2] = -100  # a position of a real token left unlabelled too
    with torch.no_grad():
        out = model(ids, attention_mask=mask, labels=labels)
        flat_logits, flat_labels = out.logits.reshape(-1, 3), labels.reshape(-1)
        torch.testing.assert_close(out.loss, F.cross_entropy(flat_logits, flat_labels, ignore_index=-100))
        # Given the labelled positions of a whole accumulated step, the sum over this batch's divided by it.
        scaled = model(ids, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(40)).loss
        torch.testing.assert_close(scaled, F.cross_entropy(flat_logits, flat_labels, reduction="sum") / 40)


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification"])
def test_a_tuple_output_leads_with_the_loss(task):
    model = head(FAMILIES["gru"], task)
    ids, mask = padded("right")
    labels = torch.tensor([0, 2, 1]) if task == "sequence-classification" else torch.where(mask.bool(), ids % 3, -100)
    with torch.no_grad():
        as_dict = model(ids, attention_mask=mask, labels=labels)
        as_tuple = model(ids, attention_mask=mask, labels=labels, output_hidden_states=True, return_dict=False)
    assert len(as_tuple) == 3  # (loss, logits, hidden states), as transformers' heads give it
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    assert len(as_tuple[2]) == model.config.num_hidden_layers + 1


def test_the_token_head_applies_classifier_dropout():
    model = head(FAMILIES["gru"], "token-classification", classifier_dropout=0.5)
    ids = torch.randint(3, 90, (2, 6))
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)


@pytest.mark.parametrize("num_labels, labels, loss", [
    (1, torch.tensor([[0.5], [-1.0]]), lambda logits, labels: F.mse_loss(logits, labels)),
    (3, torch.tensor([[2], [0]]), lambda logits, labels: F.cross_entropy(logits, labels.view(-1))),
    (2, torch.tensor([1, 0]), lambda logits, labels: F.cross_entropy(logits, labels)),  # two classes, not regression
], ids=["regression-column", "single-label-column", "two-classes"])
def test_labels_are_taken_as_transformers_takes_them(num_labels, labels, loss):
    torch.manual_seed(0)
    model = architecture_for_model_type("seqzoo_gru").heads["sequence-classification"](
        tiny_config(FAMILIES["gru"], num_labels=num_labels)).eval()
    ids = torch.randint(3, 90, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, labels=labels).loss, loss(model(ids).logits, labels))


def test_token_labels_of_another_shape_are_refused_even_with_as_many_positions():
    """Labels (sequence_length, batch) hold as many positions as (batch, sequence_length): flattened, torch's loss
    would take them without an error, each label on another token."""
    model = head(FAMILIES["gru"], "token-classification")
    ids = torch.randint(3, 90, (2, 6))
    for labels in (torch.zeros(6, 2, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"labels must have shape \(2, 6\) \(batch, sequence_length\); got"):
            model(ids, labels=labels)
