"""transformers' own Trainer with ``label_smoothing_factor``: it pops the labels and smooths the loss itself, shifting
them by one only for a model it knows to be a causal LM. Every seqzoo causal LM must get the shifted (next-token)
loss, as LlamaForCausalLM does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from tests.conftest import tiny_model

EPS = 0.1


def batch(vocab: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def smoothed_next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    keep = labels != -100
    nll = F.cross_entropy(logits[keep], labels[keep])
    uniform = -F.log_softmax(logits[keep], -1).mean(-1).mean()
    return ((1 - EPS) * nll + EPS * uniform).item()


def trainer_loss(model, inputs: dict, tmp_path) -> float:
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, label_smoothing_factor=EPS)
    trainer = Trainer(model=model, args=args)
    with torch.no_grad():
        return trainer.compute_loss(model, dict(inputs)).item()


def check(model, tmp_path):
    inputs = batch(model.config.vocab_size)
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    expected = smoothed_next_token_loss(logits, inputs["labels"])
    got = trainer_loss(model, inputs, tmp_path)
    assert abs(got - expected) < 1e-4, (type(model).__name__, got, expected)


def test_llama_reference_shifts_smoothed_labels(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    check(LlamaForCausalLM(config).eval(), tmp_path)


def test_trainer_label_smoothing_shifts_labels(family_preset, tmp_path):
    check(tiny_model(family_preset), tmp_path)
