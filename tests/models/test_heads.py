"""Classification and tagging heads of every architecture, and bidirectional encoders: transformers' label
conventions, exact padding, loading a causal-LM checkpoint into a head, the Auto classes, pipelines and Trainer."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    Trainer,
    TrainingArguments,
    pipeline,
)

import seqzoo
from seqzoo.registry import architecture_for_model_type
from tests.conftest import FAMILIES, tiny_config, tiny_model
from tests.models.test_common import PROMPTS, left_pad

HEADS = {"sequence-classification": AutoModelForSequenceClassification,
         "token-classification": AutoModelForTokenClassification}
BIDIRECTIONAL = [pytest.param(preset, id=family) for family, preset in sorted(FAMILIES.items())
                 if tiny_config(preset).supports_bidirectional]


def head_model(preset: str, task: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(preset, num_labels=3, **overrides)
    return architecture_for_model_type(config.model_type).heads[task](config).eval()


def right_pad(prompts, pad_id=0):
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)], mask[row, :len(prompt)] = torch.tensor(prompt), 1
    return ids, mask


@pytest.mark.parametrize("task", sorted(HEADS))
def test_head_trains_and_padded_rows_equal_alone(family_preset, task):
    model = head_model(family_preset, task)
    for ids, mask in (left_pad(PROMPTS), right_pad(PROMPTS)):
        logits = model(ids, attention_mask=mask).logits
        for row, prompt in enumerate(PROMPTS):
            alone = model(torch.tensor([prompt])).logits[0]
            got = logits[row] if task == "sequence-classification" else logits[row][mask[row].bool()]
            torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-5)
    labels = torch.tensor([0, 2, 1]) if task == "sequence-classification" else torch.where(
        mask.bool(), torch.randint(0, 3, ids.shape), -100)
    model.train()
    out = model(ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.score.weight.grad is not None and model.model.embed_tokens.weight.grad is not None


def test_sequence_problem_types(family_preset):
    ids = torch.tensor(PROMPTS[0])[None].repeat(2, 1)
    multi = head_model(family_preset, "sequence-classification", problem_type="multi_label_classification")
    loss = multi(ids, labels=torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])).loss
    expected = torch.nn.functional.binary_cross_entropy_with_logits(multi(ids).logits,
                                                                    torch.tensor([[1.0, 0, 1], [0, 0, 1]]))
    torch.testing.assert_close(loss, expected)
    torch.manual_seed(0)
    config = tiny_config(family_preset, num_labels=1)
    regression = architecture_for_model_type(config.model_type).heads["sequence-classification"](config).eval()
    target = torch.tensor([0.5, -1.0])
    torch.testing.assert_close(regression(ids, labels=target).loss,
                               torch.nn.functional.mse_loss(regression(ids).logits.squeeze(-1), target))


@pytest.mark.parametrize("task", sorted(HEADS))
def test_a_causal_lm_checkpoint_loads_into_a_head(family_preset, task, tmp_path, caplog):
    lm = tiny_model(family_preset)
    lm.save_pretrained(tmp_path)
    head = HEADS[task].from_pretrained(tmp_path, num_labels=3)
    for name, tensor in lm.model.state_dict().items():
        assert torch.equal(head.model.state_dict()[name], tensor), name  # the backbone is reused
    assert head.score.weight.abs().sum() > 0  # the new head is initialised
    head.save_pretrained(tmp_path / "head")
    again = HEADS[task].from_pretrained(tmp_path / "head")
    assert torch.equal(again.score.weight, head.score.weight)
    assert type(again) is type(head) and again.config.num_labels == 3
    # Back to a causal LM: the backbone again, the LM head fresh. Anything missing beyond a head is still refused.
    lm_again = AutoModelForCausalLM.from_pretrained(tmp_path / "head", tie_word_embeddings=False)
    assert torch.equal(lm_again.model.embed_tokens.weight, lm.model.embed_tokens.weight)
    weights = load_file(tmp_path / "head" / "model.safetensors")
    weights.pop(next(name for name in weights if name.startswith("model.layers.")))
    save_file(weights, tmp_path / "head" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing tensors: model.layers"):
        HEADS[task].from_pretrained(tmp_path / "head")


def test_a_head_refuses_a_checkpoint_of_another_architecture(tmp_path):
    tiny_model(FAMILIES["gru"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a 'seqzoo_gru' model, not 'seqzoo_lstm'"):
        seqzoo.LSTMForSequenceClassification.from_pretrained(tmp_path, num_labels=3)


@pytest.mark.parametrize("family", ["lstm", "mamba", "hybrid"])
def test_pipelines_and_trainer_on_a_saved_head(family, tmp_path):
    tokenizer = seqzoo.byte_tokenizer()
    for task, name in (("sequence-classification", "text-classification"),
                       ("token-classification", "token-classification")):
        model = seqzoo.create_model(FAMILIES[family], task, num_labels=2, id2label={0: "NO", 1: "YES"},
                                    label2id={"NO": 0, "YES": 1})
        folder = tmp_path / task
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        result = pipeline(name, model=str(folder))("a cat sat")
        assert result and all(r.get("label", r.get("entity")) in ("NO", "YES") for r in result)
        rows = [torch.randint(3, 250, (10,)) for _ in range(8)]
        labels = [torch.tensor(1) for _ in rows] if task == "sequence-classification" else [r % 2 for r in rows]
        data = [{"input_ids": r, "labels": label} for r, label in zip(rows, labels)]
        args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                                 report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
        before = model.score.weight.detach().clone()
        Trainer(model=model, args=args, train_dataset=data).train()
        assert not torch.equal(before, model.score.weight)


@pytest.mark.parametrize("preset", BIDIRECTIONAL)
def test_a_bidirectional_output_depends_on_later_tokens(preset):
    ids = torch.tensor([PROMPTS[0]])
    changed = ids.clone()
    changed[0, -1] = 3
    for bidirectional in (False, True):
        model = head_model(preset, "token-classification", bidirectional=bidirectional)
        first = (model(ids).logits[0, 0] - model(changed).logits[0, 0]).abs().max()
        assert (first > 1e-6) == bidirectional, (bidirectional, first)


@pytest.mark.parametrize("preset", BIDIRECTIONAL)
def test_the_reverse_pass_is_a_forward_model_over_the_reversed_sequence(preset):
    model = head_model(preset, "token-classification", bidirectional=True, bidirectional_merge="sum")
    forward_only = head_model(preset, "token-classification")
    # The forward-only model with every layer's right-to-left weights, run over the reversed sequence.
    weights = {}
    for name, tensor in model.state_dict().items():
        if ".left_to_right." in name:
            continue
        weights[name.replace(".right_to_left.", ".")] = tensor
    forward_only.load_state_dict(weights)
    x = torch.randn(2, 5, model.config.hidden_size)
    mixer = model.model.layers[0]
    mixer = getattr(mixer, "mixer", None) or getattr(mixer, "attn", None) or mixer
    reversed_out, _ = mixer.right_to_left(x.flip(1), shared={})
    twin = forward_only.model.layers[0]
    twin = getattr(twin, "mixer", None) or getattr(twin, "attn", None) or twin
    expected, _ = twin(x.flip(1), shared={})
    torch.testing.assert_close(reversed_out, expected, rtol=0, atol=0)
    both, _ = mixer(x, shared={})
    torch.testing.assert_close(both, mixer.left_to_right(x, shared={})[0] + expected.flip(1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("preset", BIDIRECTIONAL)
def test_a_bidirectional_model_encodes_but_cannot_generate(preset):
    config = tiny_config(preset, bidirectional=True, tie_word_embeddings=False)
    caps = config.capabilities
    assert not (caps.can_generate or caps.supports_tbptt or caps.constant_state_decode or caps.can_crop_cache)
    spec = architecture_for_model_type(config.model_type)
    with pytest.raises(ValueError, match="cannot predict the next token"):
        spec.causal_lm_class(config)
    model = head_model(preset, "sequence-classification", bidirectional=True, classifier_pooling="first+last")
    with pytest.raises(ValueError, match="keeps no decoding cache"):
        model.model(torch.tensor([PROMPTS[0]]), use_cache=True)
    ids, mask = left_pad(PROMPTS)
    logits = model(ids, attention_mask=mask).logits
    for row, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(logits[row], model(torch.tensor([prompt])).logits[0], rtol=1e-4, atol=1e-5)
