"""Truncated BPTT: chunked forward with the state carried equals one full forward, for every recurrent family."""

from __future__ import annotations

import pytest
import torch

from seqzoo.models.compat import output_cache
from seqzoo.training.tbptt import backward_sequence, check_tbptt_supported, chunk_slices, chunked_forward
from tests.conftest import FAMILIES, tiny_model

RECURRENT = sorted(f for f, p in FAMILIES.items() if tiny_model(p).config.capabilities.supports_tbptt)
NON_RECURRENT = sorted(set(FAMILIES) - set(RECURRENT))


def test_chunk_slices_cover_the_sequence():
    assert chunk_slices(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert chunk_slices(10, 0) == [slice(0, 10)] == chunk_slices(10, 10)


@pytest.mark.parametrize("family", RECURRENT)
@pytest.mark.parametrize("chunk", [1, 7])  # one token at a time, and chunks that do not divide the length
def test_chunked_forward_equals_full_forward(family, chunk):
    model = tiny_model(FAMILIES[family])
    ids = torch.randint(3, 99, (3, 19))
    with torch.no_grad():
        full = model(ids, use_cache=True)
        chunked, cache = chunked_forward(model, ids, chunk)
    torch.testing.assert_close(chunked, full.logits, rtol=1e-4, atol=1e-5)
    assert cache.get_seq_length() == 19
    for ours, theirs in zip(cache.tensors(), output_cache(full).tensors()):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", RECURRENT)
def test_truncation_cuts_gradients_at_chunk_borders(family):
    model = tiny_model(FAMILIES[family])  # eval mode: no dropout noise between the two runs; gradients still flow
    ids = torch.randint(3, 99, (2, 12))
    targets = torch.full_like(ids, -100)
    targets[:, -1] = ids[:, 0]  # only the last position is scored

    def input_grads(chunk):
        """Loss and d(loss)/d(embedding output) of every forward call (one per chunk), in call order."""
        model.zero_grad()
        grads = []

        def keep_grad(module, args, out):
            out.register_hook(grads.append)

        hook = model.get_input_embeddings().register_forward_hook(keep_grad)
        loss, _ = backward_sequence(model, ids, targets, chunk, 1.0, lambda x: x.backward())
        hook.remove()
        return loss, grads

    full_loss, (full_grad,) = input_grads(0)
    chunk_loss, chunk_grads = input_grads(4)
    torch.testing.assert_close(chunk_loss, full_loss, rtol=1e-5, atol=1e-5)  # the forward is the same
    assert len(chunk_grads) == 3
    assert float(chunk_grads[0].abs().sum()) == 0 and float(chunk_grads[1].abs().sum()) == 0
    # Inside the last chunk, nothing is truncated: its gradient is the full one at those positions ...
    torch.testing.assert_close(chunk_grads[2], full_grad[:, 8:], rtol=1e-4, atol=1e-7)
    # ... while without truncation the gradient reaches the earlier positions too.
    assert float(full_grad[:, :8].abs().sum()) > 0


@pytest.mark.parametrize("family", NON_RECURRENT)
def test_tbptt_is_refused_for_kv_cache_models(family):
    with pytest.raises(ValueError, match="train.tbptt_chunk=8 needs every layer to carry a fixed-size state.*attention layers"):
        check_tbptt_supported(tiny_model(FAMILIES[family]), 8)
    check_tbptt_supported(tiny_model(FAMILIES[family]), 0)


def test_a_float64_model_gets_float64_losses_and_exact_gradients():
    # (a float32 cast of the logits capped a float64 model's gradients at float32 precision, about 6e-9)
    model = tiny_model(FAMILIES["lstm"]).double()
    ids = torch.randint(3, 99, (2, 12))
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100
    model.zero_grad()
    loss, _ = backward_sequence(model, ids, targets, 0, 1.0, lambda x: x.backward())
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(ids).logits
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
    expected.backward()
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-14, atol=0)
    for mine, theirs in zip(ours, (p.grad for p in model.parameters())):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("last_micro_batch", [False, True])
def test_gradients_are_synchronised_only_on_the_last_chunk_of_the_last_micro_batch(last_micro_batch):
    from contextlib import nullcontext

    model = tiny_model(FAMILIES["lstm"])
    ids = torch.randint(3, 90, (2, 9))
    flags = []

    def sync_last(is_last):
        flags.append(is_last)
        return nullcontext()

    backward_sequence(model, ids, ids, 4, 1.0, lambda x: x.backward(), sync_last, last_micro_batch=last_micro_batch)
    assert flags == [False, False, last_micro_batch]  # three chunks of 4, 4, 1
