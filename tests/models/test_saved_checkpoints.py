"""Checkpoints saved by an earlier seqzoo (tests/fixtures/checkpoints, written before the model layer was reshaped
around one mixer protocol; heads_and_seq2seq/, written at 38e2363 a day after the heads, bidirectional encoders and
encoder-decoders came, at tiny sizes: both classifier heads, last-token and mean pooling, Bahdanau, Luong and
Transformer encoder-decoders, a hybrid) load with today's code and give the same logits: a published checkpoint
loads for years. (Each was saved with the head class its config names, weights perturbed from their initial values
so that zero-initialised tensors count too; the bundled code is left out: these check the weights' names and
meaning, tests/hub the bundles.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

import seqzoo  # noqa: F401  (registers the architectures)

ROOT = Path(__file__).resolve().parent.parent / "fixtures" / "checkpoints"
EXPECTED = json.loads((ROOT / "expected.json").read_text())


@pytest.mark.parametrize("family", sorted(EXPECTED["models"]))
def test_an_earlier_checkpoint_gives_the_same_logits(family):
    model = AutoModelForCausalLM.from_pretrained(ROOT / family).eval()
    ids = torch.tensor(EXPECTED["input_ids"])
    mask = torch.tensor(EXPECTED["attention_mask"])
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    expected = torch.tensor(EXPECTED["models"][family]["logits"])
    real = mask.bool()  # pad positions' logits are not part of the contract
    torch.testing.assert_close(logits[real], expected[real], rtol=1e-4, atol=1e-5)


HEADS = ROOT / "heads_and_seq2seq"  # (saved by seqzoo at 38e2363, 2026-12-01: the heads, bidirectional encoders, a
HEADS_EXPECTED = json.loads((HEADS / "expected.json").read_text())  # hybrid and encoder-decoders, at sizes of a few KB)
AUTO = {"causal-lm": AutoModelForCausalLM, "sequence-classification": AutoModelForSequenceClassification,
        "token-classification": AutoModelForTokenClassification, "seq2seq": AutoModelForSeq2SeqLM}


@pytest.mark.parametrize("name", sorted(HEADS_EXPECTED["models"]))
def test_an_earlier_head_hybrid_or_encoder_decoder_checkpoint_gives_the_same_logits(name):
    task = HEADS_EXPECTED["models"][name]["task"]
    model = AUTO[task].from_pretrained(HEADS / name).eval()
    assert type(model).__name__ == json.loads((HEADS / name / "config.json").read_text())["architectures"][0]
    ids, mask = torch.tensor(HEADS_EXPECTED["input_ids"]), torch.tensor(HEADS_EXPECTED["attention_mask"])
    with torch.no_grad():
        if task == "seq2seq":
            logits = model(input_ids=ids, attention_mask=mask,
                           decoder_input_ids=torch.tensor(HEADS_EXPECTED["decoder_input_ids"])).logits
        else:
            logits = model(ids, attention_mask=mask).logits
    expected = torch.tensor(HEADS_EXPECTED["models"][name]["logits"])
    if task in ("causal-lm", "token-classification"):  # pad positions' logits are not part of the contract
        logits, expected = logits[mask.bool()], expected[mask.bool()]
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
