"""Checkpoints saved by an earlier seqzoo (tests/fixtures/checkpoints, written before the model layer was reshaped
around one mixer protocol) load with today's code and give the same logits: a published checkpoint loads for years."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

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
