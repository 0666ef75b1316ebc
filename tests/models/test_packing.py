"""Packed rows (several documents in one row, marked by transformers' DataCollatorWithFlattening) give every
document the logits, loss and gradients it gets alone, for every family, in training and evaluation mode."""

from __future__ import annotations

import pytest
import torch
from transformers import DataCollatorWithFlattening

from seqzoo.registry import architecture_for_model_type
from tests.conftest import FAMILIES, families_where, tiny_config, tiny_model

DOCUMENTS = [[5, 17, 33, 8, 61], [40, 9], [70, 12, 3, 98, 44, 27, 15]]  # odd lengths, one of two tokens


def collate(**options):
    return DataCollatorWithFlattening(**options)([{"input_ids": doc} for doc in DOCUMENTS])


def alone(model, documents=DOCUMENTS):
    """Each document's logits and summed token loss, run by itself."""
    logits, losses = [], []
    for doc in documents:
        ids = torch.tensor([doc])
        out = model(ids, labels=ids, use_cache=False)
        logits.append(out.logits[0])
        losses.append(out.loss * (len(doc) - 1))  # the mean over its len - 1 predictions, back to a sum
    return logits, losses


def _no_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_packed_documents_match_each_alone(family, training):
    model = _no_dropout(tiny_model(FAMILIES[family])).double().train(training)
    batch = collate()
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # what the collator gives by default
    out = model(**batch)
    packed_loss = out.loss
    packed_loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    logits, losses = alone(model)
    start = 0
    for doc, expected in zip(DOCUMENTS, logits):
        # Some kernels keep float32 internals (wkv7), and the padded batch of documents chunks differently.
        torch.testing.assert_close(out.logits[0, start : start + len(doc)], expected, rtol=1e-5, atol=1e-6)
        start += len(doc)
    predictions = sum(len(doc) - 1 for doc in DOCUMENTS)
    loss_alone = sum(losses) / predictions
    # transformers' loss is computed in float32 whatever the model's dtype.
    torch.testing.assert_close(packed_loss, loss_alone, rtol=1e-6, atol=1e-7)
    loss_alone.backward()
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(packed_grads[name], param.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_taggers_packed_documents_match_each_alone(family):
    # "The token head takes packed rows ... each document gets the logits it gets alone": every family's tagger,
    # and where the family offers it, the bidirectional one.
    config = tiny_config(FAMILIES[family], num_labels=3)
    heads = architecture_for_model_type(config.model_type).heads
    settings = [{}, {"bidirectional": True, "bidirectional_merge": "sum"}] if config.supports_bidirectional else [{}]
    batch = collate()
    for setting in settings:
        torch.manual_seed(0)
        model = heads["token-classification"](tiny_config(FAMILIES[family], num_labels=3, **setting)).double().eval()
        with torch.no_grad():
            packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
            expected = torch.cat([model(torch.tensor([doc])).logits[0] for doc in DOCUMENTS])
        torch.testing.assert_close(packed, expected, rtol=1e-9, atol=1e-9, msg=lambda m: f"{setting}: {m}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_marker_of_the_collator_is_read(family):
    """seq_idx or cu_seq_lens alone mark the documents as well as position ids; all of them together agree."""
    model = tiny_model(FAMILIES[family]).double()
    expected = torch.cat(alone(model)[0])
    full = collate(return_flash_attn_kwargs=True, return_seq_idx=True)
    for keys in (("seq_idx",), ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"), tuple(full)):
        batch = {k: full[k] for k in ("input_ids", *keys) if k in full}
        logits = model(**batch).logits[0]
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6, msg=f"{family} with {keys}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_two_packed_rows_and_hidden_states(family):
    """Rows of a batch pack documents independently (a document starting at position_ids_start=2); every hidden
    state is the document's own."""
    model = tiny_model(FAMILIES[family]).double()
    rows = [DOCUMENTS[0] + DOCUMENTS[1], DOCUMENTS[2]]
    ids = torch.tensor([row + [0] * (7 - len(row)) for row in rows])  # the second row: one document of 7
    positions = torch.tensor([[2, 3, 4, 5, 6, 2, 3], [2, 3, 4, 5, 6, 7, 8]])
    out = model(ids, position_ids=positions, output_hidden_states=True)
    assert out.cache is None if hasattr(out, "cache") else out.past_key_values is None
    pieces = [(0, 0, DOCUMENTS[0]), (0, 5, DOCUMENTS[1]), (1, 0, DOCUMENTS[2])]
    for row, start, doc in pieces:
        alone_out = model(torch.tensor([doc]), position_ids=torch.arange(2, 2 + len(doc))[None],
                          output_hidden_states=True, use_cache=False)
        torch.testing.assert_close(out.logits[row, start : start + len(doc)], alone_out.logits[0],
                                   rtol=1e-5, atol=1e-6)
        for packed_h, alone_h in zip(out.hidden_states, alone_out.hidden_states, strict=True):
            torch.testing.assert_close(packed_h[row, start : start + len(doc)], alone_h[0], rtol=1e-5, atol=1e-6)


def test_packing_changes_a_recurrent_model():
    """Guard on the test itself: without the markers, the second document continues the first one's state."""
    model = tiny_model(FAMILIES["lstm"]).double()
    batch = collate()
    packed = model(**batch).logits[0]
    unmarked = model(batch["input_ids"]).logits[0]
    assert not torch.allclose(packed[5:], unmarked[5:])
    torch.testing.assert_close(packed[:5], unmarked[:5])


@pytest.mark.parametrize("preset", families_where("constant_state_decode")[:1] + [FAMILIES["transformer"]])
def test_packing_refuses_what_it_cannot_honour(preset):
    model = tiny_model(preset)
    batch = collate(return_seq_idx=True)
    with pytest.raises(ValueError, match="use_cache=True cannot be combined with packed rows"):
        model(**batch, use_cache=True)
    with pytest.raises(ValueError, match="take no attention_mask"):
        model(batch["input_ids"], position_ids=batch["position_ids"],
              attention_mask=torch.ones_like(batch["input_ids"]))
    wrong = batch["seq_idx"].clone()
    wrong[0, 4] = 1  # (the first document's last token put in the second)
    with pytest.raises(ValueError, match="seq_idx marks other document boundaries"):
        model(**{**batch, "seq_idx": wrong})
    flat = collate(return_flash_attn_kwargs=True)
    ids, cu = flat["input_ids"], flat["cu_seq_lens_q"]
    with pytest.raises(ValueError, match="max_length_q=6 is shorter than the longest document of cu_seq_lens_q, 7"):
        model(ids, cu_seq_lens_q=cu, max_length_q=6)
    model(ids, cu_seq_lens_q=cu, max_length_q=9, use_cache=False)  # (longer is what a fixed bound would pass)
    with pytest.raises(ValueError, match="got it without cu_seq_lens_k"):
        model(ids, cu_seq_lens_q=cu, max_length_k=7)
    with pytest.raises(ValueError, match="got it without cu_seq_lens_q"):
        model(ids, max_length_q=7)
    # Rows of 2 tokens: the first document (5 tokens) runs on through three of them.
    with pytest.raises(ValueError, match=r"has a document run on from row 0 into row 1 of the batch's 7 rows of 2"):
        model(ids.view(7, 2), cu_seq_lens_q=cu)
    with pytest.raises(ValueError, match="cu_seq_lens_q must rise strictly from 0 to 14"):
        model(batch["input_ids"], cu_seq_lens_q=torch.tensor([0, 5, 4, 14], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"position_ids must have shape \(1, 14\) \(batch, sequence_length\); got "
                                         r"\(1, 5\)$"):  # one batch row: the shape named once
        model(batch["input_ids"], position_ids=batch["position_ids"][:, :5])


BAD_POSITION_IDS = {"too short": (torch.arange(3)[None], r"must have shape \(2, 5\) \(batch, sequence_length\) or "
                                                          r"\(1, 5\); got \(1, 3\)"),
                    "one-dimensional": (torch.arange(5), r"must have shape \(2, 5\).*got \(5,\)"),
                    "three-dimensional": (torch.arange(5)[None, None], r"must have shape \(2, 5\).*got \(1, 1, 5\)"),
                    "float": (torch.arange(5.0)[None], "must be an integer tensor, got dtype torch.float32")}


@pytest.mark.parametrize("case", sorted(BAD_POSITION_IDS))
def test_bad_position_ids_are_named_whatever_else_is_given(family_preset, case):
    # Checked with a mask or a cache too (recurrent layers then ignore them; attention layers rotate by them), and
    # through generate().
    model = tiny_model(family_preset)
    ids, mask = torch.tensor([[5, 17, 33, 8, 61], [70, 12, 3, 98, 44]]), torch.ones(2, 5, dtype=torch.long)
    positions, message = BAD_POSITION_IDS[case]
    for kwargs in ({}, {"attention_mask": mask}, {"use_cache": True}):
        with pytest.raises(ValueError, match=f"position_ids {message}"):
            model(ids, position_ids=positions, **kwargs)
    with pytest.raises(ValueError, match=f"position_ids {message}"):
        model.generate(ids, attention_mask=mask, position_ids=positions, max_new_tokens=2, pad_token_id=0)


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8, torch.int32])
def test_position_ids_of_any_integer_dtype_read_as_int64(dtype):
    # (a learned position table failed on int16 inside torch, a sinusoidal one read uint8 ids as a boolean mask)
    ids = torch.tensor([[5, 17, 33, 8, 61], [70, 12, 3, 98, 44]])
    positions = torch.tensor([[0, 1, 2, 3, 4], [3, 4, 5, 6, 7]])
    for embedding in ("learned", "sinusoidal", "rope"):
        model = tiny_model(FAMILIES["transformer"], position_embedding=embedding).eval()
        torch.testing.assert_close(model(ids, position_ids=positions.to(dtype)).logits,
                                   model(ids, position_ids=positions).logits, rtol=0, atol=0)


def test_sequence_classification_refuses_packed_rows():
    from seqzoo.registry import architecture_for_model_type
    from tests.conftest import tiny_config

    config = tiny_config(FAMILIES["gru"], num_labels=3)
    model = architecture_for_model_type(config.model_type).heads["sequence-classification"](config)
    batch = collate()
    with pytest.raises(ValueError, match="pools one label per row, but these rows are packed"):
        model(input_ids=batch["input_ids"], position_ids=batch["position_ids"])


def test_packed_rows_under_torch_compile():
    """The Transformer traces packed rows (its block-diagonal mask needs no cache); a model with recurrent layers
    cannot find the documents' lengths while tracing and says so, as does the Transformer asked for a cache."""
    torch._dynamo.reset()
    batch = collate()
    model = tiny_model(FAMILIES["transformer"])
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    logits = compiled(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    torch.testing.assert_close(logits[0], torch.cat(alone(model)[0]), rtol=1e-5, atol=1e-6)
    for preset, kwargs in ((FAMILIES["transformer"], {}), (FAMILIES["lstm"], {"use_cache": False})):
        torch._dynamo.reset()
        compiled = torch.compile(tiny_model(preset), fullgraph=True, backend="eager")
        with pytest.raises(Exception, match="packed rows"):
            compiled(input_ids=batch["input_ids"], position_ids=batch["position_ids"], **kwargs)
    torch._dynamo.reset()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_which_models_pass_resets_to_their_kernels(family, monkeypatch):
    """RWKV-7, Mamba and Mamba-2 run packed rows as they are, with resets in the kernels; hybrids (attention has no
    reset) and the classic RNNs (faster unpacked, seqzoo/layers/recurrent.py) unpack the documents; the Transformer
    keeps its block-diagonal mask."""
    from seqzoo.models.packing import Packing

    model = tiny_model(FAMILIES[family]).double()
    unpacked = []
    run = Packing.run
    monkeypatch.setattr(Packing, "run", lambda self, *args: unpacked.append(1) or run(self, *args))
    batch = collate()
    model(**batch)
    kernel_resets = family in ("rwkv7", "mamba", "mamba2")
    assert bool(unpacked) == (not kernel_resets and not family.startswith("transformer")), family


def test_a_bidirectional_model_unpacks_packed_rows(monkeypatch):
    """The right-to-left pass would need each document's end: a bidirectional model takes the unpack path."""
    from seqzoo.models.packing import Packing
    from seqzoo.registry import architecture_for_model_type
    from tests.conftest import tiny_config

    config = tiny_config(FAMILIES["gru"], bidirectional=True)
    model = architecture_for_model_type(config.model_type).heads["token-classification"](config)
    unpacked = []
    run = Packing.run
    monkeypatch.setattr(Packing, "run", lambda self, *args: unpacked.append(1) or run(self, *args))
    batch = collate()
    model(input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    assert unpacked


@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
def test_classic_models_with_resets_in_their_kernels(family, monkeypatch):
    """The classic RNNs unpack by default (faster on CPU); the reset path through their fused kernels, which the
    benchmark times, is exact too."""
    from seqzoo.layers.recurrent import RecurrentMixer
    from seqzoo.models.packing import Packing

    monkeypatch.setattr(RecurrentMixer, "takes_reset", True)
    monkeypatch.setattr(Packing, "run", lambda *args: pytest.fail("unpacked"))
    test_packed_documents_match_each_alone(family, training=True)
