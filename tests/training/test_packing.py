"""data.packing: rows of a text stream hold several documents, and each is trained on and scored alone."""

from __future__ import annotations

import pytest
import torch

from seqzoo.tokenizer import EOS_TOKEN_ID as EOS
from seqzoo.training.data import TokenStream, document_position_ids, tokens_from_documents
from seqzoo.training.recipe import recipe_from_dict
from seqzoo.training.tbptt import backward_sequence, token_loss_sum
from seqzoo.training.trainer import train
from tests.conftest import tiny_model


def test_positions_restart_at_every_eos():
    row = torch.tensor([[5, 6, EOS, 7, EOS, EOS, 8], [EOS, 1, 2, 3, 4, 5, 6]])
    assert document_position_ids(row).tolist() == [[0, 1, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6]]


def documents_alone(inputs: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, start, end) of each document of each row: a document starts at the row's start and at every EOS."""
    spans = []
    for r, row in enumerate(inputs.tolist()):
        starts = [0] + [t for t, token in enumerate(row) if token == EOS and t > 0]
        spans += [(r, s, e) for s, e in zip(starts, starts[1:] + [len(row)])]
    return spans


@pytest.mark.parametrize("family", ["lstm", "transformer", "mamba"])
def test_packed_step_equals_each_document_alone(family):
    """Loss and gradients of a packed micro-batch equal the sums over its documents, each run as a row of its own."""
    model = tiny_model(f"{family}-tiny", vocab_size=258).train()
    tokens = tokens_from_documents(["abc", "de", "", "fghijklmnopq", "r", "stuvw"]).long()
    inputs, targets = tokens[:-1].reshape(2, -1), tokens[1:].reshape(2, -1)
    loss, _ = backward_sequence(model, inputs, targets, chunk=0, loss_scale=1.0,
                                      backward=lambda value: value.backward(), packed=True)
    packed_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    spans = documents_alone(inputs)
    assert len(spans) > inputs.shape[0] + 2  # several rows hold several documents
    expected = torch.zeros(())
    for r, start, end in spans:
        piece_loss, _ = token_loss_sum(model(input_ids=inputs[r:r + 1, start:end], use_cache=False).logits,
                                       targets[r:r + 1, start:end])
        piece_loss.backward()
        expected += piece_loss.detach()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        if name in packed_grads:
            torch.testing.assert_close(packed_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    # Without packing the context runs across documents: a different loss (the check above can fail).
    model.zero_grad()
    stream_loss, _ = backward_sequence(model, inputs, targets, chunk=0, loss_scale=1.0,
                                       backward=lambda value: value.backward())
    assert abs(float(stream_loss) - float(expected)) > 1e-3
    with pytest.raises(ValueError, match=r"packed rows cannot be trained in TBPTT chunks \(chunk=4\)"):
        backward_sequence(model, inputs, targets, chunk=4, loss_scale=1.0, backward=lambda value: None, packed=True)


def text_recipe(tmp_path, **data):
    return {"name": "packing", "output_dir": str(tmp_path / "run"),
            "model": {"preset": "lstm-tiny", "config": {"hidden_size": 16, "embedding_size": 16}},
            "data": {"source": "text", "path": str(tmp_path / "corpus.txt"), "seq_len": 24, "eval_samples": 4,
                     "eval_fraction": 0.2, **data},
            "optim": {"lr": 1e-9, "warmup_steps": 0},
            "train": {"max_steps": 1, "batch_size": 4, "eval_every": 0, "save_every": 0, "log_every": 100}}


def test_seqzoo_train_packs_text_by_default_and_scores_documents_alone(tmp_path):
    """Each text file is a document (EOS after each). With lr ~ 0 the weights stay put, so the run's evaluation
    equals the final model's loss on each document piece of the held-out windows alone."""
    texts = [f"{i}: a fox {'and a dog ' * (i % 3)}" for i in range(16)]
    paths = []
    for i, text in enumerate(texts):
        paths.append(tmp_path / f"doc{i}.txt")
        paths[-1].write_text(text)
    values = text_recipe(tmp_path)
    values["data"]["path"] = [str(p) for p in paths]
    recipe = recipe_from_dict(values)
    assert recipe.data.packing is True  # resolved when the recipe is built
    result = train(recipe, progress=False)
    stream = TokenStream(tokens_from_documents(texts), "t", 24, 0.2, 4, seed=0, packing=True)
    (inputs, targets), = stream.eval_sets().values()
    assert (inputs == EOS).any()  # the held-out windows cross a document boundary
    with torch.no_grad():
        total = sum(token_loss_sum(result.model(input_ids=inputs[r:r + 1, s:e]).logits, targets[r:r + 1, s:e])[0]
                    for r, s, e in documents_alone(inputs))
    torch.testing.assert_close(torch.tensor(result.eval["loss"]), total / targets.numel(), rtol=1e-4, atol=1e-4)
    inputs, targets = stream.train_batch(0, 4)  # what step 1 trained on, scored before its (negligible) update
    assert (inputs == EOS).any()
    with torch.no_grad():
        total = sum(token_loss_sum(result.model(input_ids=inputs[r:r + 1, s:e]).logits, targets[r:r + 1, s:e])[0]
                    for r, s, e in documents_alone(inputs))
    first = next(row for row in result.history if "loss" in row)
    torch.testing.assert_close(torch.tensor(first["loss"]), total / targets.numel(), rtol=1e-4, atol=1e-4)


def test_packing_defaults_and_refusals(tmp_path):
    values = text_recipe(tmp_path)
    values["data"]["path"] = "corpus.txt"
    assert recipe_from_dict(values).data.packing is True
    tbptt = {**values, "train": {**values["train"], "tbptt_chunk": 8}}
    assert recipe_from_dict(tbptt).data.packing is False  # TBPTT trains on the stream
    with pytest.raises(ValueError, match=r"data.packing=True is invalid: expected false with train.tbptt_chunk=8"):
        recipe_from_dict({**tbptt, "data": {**values["data"], "packing": True}})
    task = {**values, "data": {"source": "task", "task": "copy", "distances": [3], "packing": True}}
    with pytest.raises(ValueError, match=r"data.packing=True is invalid: expected null: packing applies to causal-lm"):
        recipe_from_dict(task)
    with pytest.raises(ValueError, match=r"data.packing='yes' is invalid: expected"):
        recipe_from_dict({**values, "data": {**values["data"], "packing": "yes"}})
