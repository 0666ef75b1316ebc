"""Truncated BPTT: chunked forward with the state carried equals one full forward, for every recurrent family."""

from __future__ import annotations

import pytest
import torch

import seqzoo
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


def test_a_hybrid_of_recurrent_layers_only_takes_truncated_bptt():
    # "TBPTT only if every layer is recurrent": the hybrid presets all hold attention (refused below); one without
    # it, of the classic cells and the scans, carries every layer's state across the chunks.
    torch.manual_seed(0)
    config = seqzoo.HybridConfig(vocab_size=99, hidden_size=32, mixer_types=["lstm", "mamba", "rwkv7", "gru"],
                                 mixer_config={"rwkv7": {"head_size": 16}}, pad_token_id=0)
    model = seqzoo.HybridForCausalLM(config).eval()
    check_tbptt_supported(model, 7)
    ids = torch.randint(3, 99, (3, 19))
    with torch.no_grad():
        full = model(ids, use_cache=True)
        chunked, cache = chunked_forward(model, ids, 7)
    torch.testing.assert_close(chunked, full.logits, rtol=1e-4, atol=1e-5)
    for ours, theirs in zip(cache.tensors(), output_cache(full).tensors(), strict=True):
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
    with pytest.raises(ValueError, match="train.tbptt_chunk=8 needs every layer to carry a fixed-size state.*"
                                         "attention layers"):
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


def test_unwrap_reaches_the_model_inside_nested_wrappers_and_torch_compile():
    # Catches: only the outer wrapper removed (DDP around a compiled model), or torch.compile's wrapper kept, so
    # that the TBPTT check and the seq2seq/classifier dispatch read the wrapper instead of the model's config.
    from seqzoo.training.tbptt import supports_tbptt
    from seqzoo.utils import unwrap

    class Wrapper(torch.nn.Module):  # what DDP and FSDP1 look like from outside: the model under .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    lstm, transformer = tiny_model(FAMILIES["lstm"]), tiny_model(FAMILIES["transformer"])
    assert unwrap(Wrapper(Wrapper(lstm))) is lstm
    assert unwrap(Wrapper(torch.compile(lstm))) is lstm and unwrap(torch.compile(lstm)) is lstm
    assert supports_tbptt(Wrapper(Wrapper(lstm))) and not supports_tbptt(Wrapper(torch.compile(transformer)))
    with pytest.raises(ValueError, match="TransformerForCausalLM has attention layers"):
        check_tbptt_supported(Wrapper(Wrapper(transformer)), 4)


def test_packed_rows_are_refused_for_every_chunk_length_even_one():
    # Catches: a bound of chunk > 1, which would train packed rows one token at a time with the state of the
    # previous document carried across the separator.
    model = tiny_model(FAMILIES["lstm"])
    ids = torch.randint(3, 90, (2, 6))
    with pytest.raises(ValueError, match=r"packed rows cannot be trained in TBPTT chunks \(chunk=1\)"):
        backward_sequence(model, ids, ids, 1, 1.0, lambda x: x.backward(), packed=True)


def test_one_token_chunks_carry_the_state_and_give_the_full_sequence_loss():
    # Catches: chunk=1 treated as "no TBPTT" (each token alone, without the state of the tokens before it), or
    # the state of a one-token chunk not handed to the next: the loss would no longer be the sequence's loss.
    # In float64: a tiny untrained LSTM remembers little, so the loss without the state differs only by ~1e-6
    # relative, hidden by float32 tolerances.
    model = tiny_model(FAMILIES["lstm"]).double()
    ids = torch.randint(3, 90, (2, 7))
    targets = torch.roll(ids, -1, dims=1)
    with torch.no_grad():
        logits = model(ids).logits
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                 reduction="sum")
    loss, _ = backward_sequence(model, ids, targets, 1, 1.0, lambda x: x.backward())
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    chunked, _ = chunked_forward(model, ids, 1)  # the same for the chunked forward that evaluation uses
    torch.testing.assert_close(chunked, logits, rtol=1e-12, atol=1e-12)


def _seq2seq_and_classifier():
    import seqzoo
    from tests.conftest import SEQ2SEQ_FAMILIES

    seq2seq = tiny_model(SEQ2SEQ_FAMILIES["seq2seq-sutskever"])
    torch.manual_seed(0)
    classifier = seqzoo.create_model("lstm-tiny", "sequence-classification", num_labels=3, hidden_size=16,
                                     embedding_size=16).eval()
    return [("seq2seq", seq2seq), ("classifier", classifier)]


@pytest.mark.parametrize("kind", ["seq2seq", "classifier"])
def test_whole_pair_and_whole_text_passes_scale_the_backward_and_sync_on_the_last_micro_batch_only(kind):
    # Catches, for the one-pass seq2seq and classifier paths: backward given the unscaled loss (gradient
    # accumulation would sum instead of average), the returned loss scaled, or gradients synchronised on every
    # micro-batch instead of the last one.
    from contextlib import nullcontext

    model = dict(_seq2seq_and_classifier())[kind]
    sources = torch.randint(4, 30, (2, 5))
    targets = torch.randint(4, 30, (2, 4)) if kind == "seq2seq" else torch.tensor([0, 2])
    for last_micro_batch in (False, True):
        flags, scaled = [], []

        def sync_last(is_last):
            flags.append(is_last)
            return nullcontext()

        loss, _ = backward_sequence(model, sources, targets, 0, 0.25, scaled.append, sync_last,
                                    last_micro_batch=last_micro_batch)
        assert flags == [last_micro_batch]
        assert len(scaled) == 1
        torch.testing.assert_close(scaled[0].detach(), loss * 0.25)
        assert not loss.requires_grad
    if kind == "classifier":  # the loss returned is the summed cross-entropy of the texts, unscaled
        with torch.no_grad():
            logits = model(input_ids=sources).logits
        expected = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_half_precision_logits_are_scored_in_float32():
    # Catches the float32 cast skipped for bfloat16 logits: the summed loss would be rounded to bfloat16's 8 bits.
    from seqzoo.training.tbptt import token_loss_sum

    torch.manual_seed(0)
    logits = torch.randn(3, 50, 11, dtype=torch.float64)
    targets = torch.randint(0, 11, (3, 50))
    targets[0, :7] = -100
    loss, correct = token_loss_sum(logits.to(torch.bfloat16), targets)
    expected = torch.nn.functional.cross_entropy(logits.to(torch.bfloat16).float().reshape(-1, 11), targets.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    scored = targets != -100
    assert int(correct) == int((logits.to(torch.bfloat16).argmax(-1)[scored] == targets[scored]).sum())
