"""Every family under bf16 autocast: forward and backward close to float32, and transformers' Trainer(bf16=True)
trains it on packed rows (DataCollatorWithFlattening)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FAMILIES, tiny_model

IDS = torch.tensor([[5, 17, 33, 8, 61, 40, 9, 70, 12, 3, 98], [44, 27, 15, 6, 50, 81, 23, 11, 90, 4, 7]])


def _loss_and_grads(model, autocast):
    model.zero_grad()
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        out = model(IDS, labels=IDS)
    out.loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return out.loss.detach(), grads


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_autocast_forward_and_backward_are_close_to_float32(family):
    model = tiny_model(FAMILIES[family])  # eval mode: no dropout, the same function both times
    loss, grads = _loss_and_grads(model, autocast=False)
    with torch.autocast("cpu", torch.bfloat16):
        logits = model(IDS).logits
    assert logits.dtype == torch.bfloat16  # autocast did reach the model's projections
    auto_loss, auto_grads = _loss_and_grads(model, autocast=True)
    assert torch.isfinite(auto_grads).all()
    # bf16 keeps 8 bits of mantissa: the loss within 1%, the gradient's direction within a few degrees.
    torch.testing.assert_close(auto_loss, loss, rtol=1e-2, atol=0)
    cosine = torch.nn.functional.cosine_similarity(auto_grads, grads, dim=0)
    assert cosine > 0.99, f"{family}: gradient cosine {float(cosine):.4f} between bf16 autocast and float32"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_trainer_bf16_trains_on_packed_rows(family, tmp_path):
    from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments

    model = tiny_model(FAMILIES[family]).train()
    head_dtypes = []
    model.lm_head.register_forward_hook(lambda module, args, out: head_dtypes.append(out.dtype))
    documents = [{"input_ids": [int(t) for t in torch.randint(3, 99, (n,))]} for n in (5, 9, 2, 7, 11, 4, 6, 8)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                             disable_tqdm=True, bf16=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(model=model, args=args, train_dataset=documents, data_collator=DataCollatorWithFlattening())
    result = trainer.train()
    assert head_dtypes and set(head_dtypes) == {torch.bfloat16}  # the Trainer ran the model under autocast
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
