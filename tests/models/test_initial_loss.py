"""A freshly initialised model predicts (nearly) uniformly: its loss on random bytes is close to ln(vocab_size).

A first loss far above it (29 nats for rnn-small before the fix, against 5.55) means over-confident random logits:
training spends its first steps undoing the initialisation. Every preset is enrolled.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import seqzoo

TOLERANCE = 0.5  # nats


@pytest.mark.parametrize("preset", seqzoo.list_models())
def test_loss_at_initialisation_is_near_uniform(preset):
    torch.manual_seed(0)
    model = seqzoo.create_model(preset).eval()
    vocab = model.config.vocab_size
    ids = torch.randint(0, min(vocab, 256), (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), ids[:, 1:].reshape(-1)).item()
    assert abs(loss - math.log(vocab)) <= TOLERANCE, (
        f"{preset}: loss at initialisation {loss:.2f}, ln(vocab_size) = {math.log(vocab):.2f}")
