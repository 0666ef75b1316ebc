"""Classification and tagging heads of every architecture, and bidirectional encoders: transformers' label
conventions, exact padding, loading a causal-LM checkpoint into a head, the Auto classes, pipelines and Trainer."""

from __future__ import annotations

import json

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
from seqzoo.models.compat import output_cache
from seqzoo.models.configuration_utils import POOLINGS
from seqzoo.registry import architecture_for_model_type
from tests.conftest import FAMILIES, tiny_config, tiny_model
from tests.models.test_common import PROMPTS, left_pad
from tests.models.test_state_exactness import TOKENS, with_holes

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


def test_an_untied_head_a_checkpoint_lacks_gets_fresh_values(family_preset, tmp_path, monkeypatch):
    """A classifier's checkpoint loaded as an untied causal LM: the missing vocabulary head is initialised, not left
    as the loader's memory (which is filled with NaN here, so that a head left so cannot pass by luck)."""
    torch.manual_seed(0)
    HEADS["sequence-classification"].from_config(tiny_config(family_preset, num_labels=3)).save_pretrained(tmp_path)
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        tensor = real_empty(*args, **kwargs)
        return tensor.fill_(float("nan")) if tensor.is_floating_point() and not tensor.is_meta else tensor

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    lm = AutoModelForCausalLM.from_pretrained(tmp_path, tie_word_embeddings=False)
    monkeypatch.undo()
    weight = lm.lm_head.weight
    assert weight.data_ptr() != lm.model.embed_tokens.weight.data_ptr()
    assert torch.isfinite(weight).all() and 0 < weight.std() and weight.abs().max() < 1


def test_a_head_refuses_a_checkpoint_of_another_architecture(tmp_path):
    tiny_model(FAMILIES["gru"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a 'seqzoo_gru' model, not 'seqzoo_lstm'"):
        seqzoo.LSTMForSequenceClassification.from_pretrained(tmp_path, num_labels=3)


def test_the_tokenizer_saved_beside_a_classifier_pads_on_the_right(tmp_path):
    """transformers' token-classification pipeline reports each answer's index in the padded batch: with the causal
    LM's left padding, a short text's indices moved by its padding when batched with a longer one."""
    from seqzoo.tokenizer import tokenizer_for

    model = seqzoo.create_model(FAMILIES["lstm"], "token-classification", num_labels=2).eval()
    assert tokenizer_for(model).padding_side == "right"
    assert tokenizer_for(seqzoo.create_model(FAMILIES["lstm"], "sequence-classification")).padding_side == "right"
    assert tokenizer_for(seqzoo.create_model(FAMILIES["lstm"])).padding_side == "left"  # a causal LM: generate()
    assert tokenizer_for(model.config).padding_side == "left"  # (a config: taken for its causal LM)
    model.save_pretrained(tmp_path)
    tokenizer_for(model).save_pretrained(tmp_path)
    tag = pipeline("token-classification", model=str(tmp_path))
    alone = tag("ab")
    batched = tag(["ab", "abcdef"], batch_size=2)[0]
    assert [e["index"] for e in batched] == [e["index"] for e in alone] == [0, 1]


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
        rows = [torch.randint(3, 90, (10,)) for _ in range(8)]
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
    # A packed row's resets, flipped, would fall on each document's last token: the layer refuses them (the models
    # unpack packed rows for it, since it does not declare takes_reset).
    with pytest.raises(ValueError, match="a bidirectional layer takes no reset"):
        mixer(x, shared={}, reset=torch.zeros(2, 5, dtype=torch.bool))


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
    assert output_cache(model.model(torch.tensor([PROMPTS[0]]))) is None  # not even from a config's use_cache=True
    # A cache passed in was advanced but never read by the layers, silently (each call computed its rows alone).
    with pytest.raises(ValueError, match="is bidirectional: .* keeps no decoding cache; do not pass a cache"):
        model.model(torch.tensor([PROMPTS[0]]), cache=seqzoo.SeqzooCache.for_model(model.config))
    ids, mask = left_pad(PROMPTS)
    logits = model(ids, attention_mask=mask).logits
    for row, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(logits[row], model(torch.tensor([prompt])).logits[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", ["tagger", *POOLINGS])
@pytest.mark.parametrize("merge", ["sum", "concat"])
@pytest.mark.parametrize("preset", BIDIRECTIONAL)
def test_a_bidirectional_models_rows_padded_anywhere_equal_alone(preset, merge, pooling):
    # "Padding stays exact in both directions": a row with pads at its start, inside it and at its end beside a
    # right-padded row, with every pooling, in float64.
    if merge not in type(tiny_config(preset)).bidirectional_merges:
        pytest.skip("concat is the classic RNN / LSTM / GRU merge")
    holes, holes_mask = with_holes(TOKENS)
    short = PROMPTS[1]
    ids = torch.cat([holes, torch.zeros_like(holes)])
    mask = torch.cat([holes_mask, torch.zeros_like(holes_mask)])
    ids[1, :len(short)], mask[1, :len(short)] = torch.tensor(short), 1
    task, pooled = (("token-classification", {}) if pooling == "tagger"
                    else ("sequence-classification", {"classifier_pooling": pooling}))
    model = head_model(preset, task, bidirectional=True, bidirectional_merge=merge, **pooled).double()
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        for row, prompt in enumerate([TOKENS, short]):
            alone = model(torch.tensor([prompt])).logits[0]
            got = logits[row] if pooled else logits[row][mask[row].bool()]
            torch.testing.assert_close(got, alone, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("task", sorted(HEADS))
def test_trainer_gradient_accumulation_gives_the_step_of_the_whole_batch(task, tmp_path):
    """transformers' Trainer, one optimizer step over four rows taken whole or in 2 or 4 accumulated micro-batches:
    the same loss and the same update. (A head that takes **kwargs but ignores num_items_in_batch made Trainer skip
    its own scaling: the loss and the update grew with the accumulation steps.) The token labels leave a different
    number of positions unlabelled in each row, so a mean per micro-batch would not be exact."""
    from transformers import Trainer, TrainingArguments

    gen = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 90, (8,), generator=gen) for _ in range(4)]
    if task == "sequence-classification":
        data = [{"input_ids": row, "labels": torch.tensor(i % 3)} for i, row in enumerate(rows)]
    else:
        data = [{"input_ids": row, "labels": torch.where(torch.arange(8) < 2 * i + 1, row % 3, -100)}
                for i, row in enumerate(rows)]
    results = []
    for accumulation in (1, 2, 4):
        torch.manual_seed(0)
        model = HEADS[task].from_config(tiny_config(FAMILIES["lstm"], num_labels=3))
        before = model.score.weight.detach().clone()
        args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4 // accumulation,
                                 gradient_accumulation_steps=accumulation, learning_rate=1.0, optim="sgd",
                                 lr_scheduler_type="constant", max_grad_norm=0, report_to=[], save_strategy="no",
                                 use_cpu=True, disable_tqdm=True, dataloader_drop_last=True)
        loss = Trainer(model=model, args=args, train_dataset=data).train().training_loss
        results.append((loss, model.score.weight.detach() - before))
    for loss, update in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5)
        torch.testing.assert_close(update, results[0][1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("task", sorted(HEADS))
def test_heads_return_the_attention_weights_asked_for(task):
    model = HEADS[task].from_config(tiny_config(FAMILIES["transformer"], num_labels=3,
                                                attn_implementation="eager")).eval()
    ids = torch.tensor([PROMPTS[0]])
    out = model(ids, output_attentions=True)
    expected = model.model(ids, output_attentions=True).attentions
    assert len(out.attentions) == len(expected) == model.config.num_hidden_layers
    for got, want in zip(out.attentions, expected):
        torch.testing.assert_close(got, want)
    as_tuple = model(ids, output_attentions=True, output_hidden_states=True, return_dict=False)
    assert len(as_tuple) == 3 and len(as_tuple[2]) == len(expected)  # logits, hidden states, attentions


@pytest.mark.parametrize("task", sorted(HEADS))
def test_a_head_whose_config_says_return_dict_false_gives_a_tuple(task):
    """config.return_dict=False makes the backbone give tuples too; the head still reads its backbone's output."""
    model = HEADS[task].from_config(tiny_config(FAMILIES["gru"], num_labels=3)).eval()
    ids = torch.tensor([PROMPTS[0]])
    expected = model(ids).logits
    model.config.return_dict = False
    assert isinstance(model.model(ids), tuple)
    as_tuple = model(ids)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "num_labels, problem_type, labels, message",
    [
        (2, "regression", torch.tensor([0.5, -1.0]), r"regression with num_labels=2 takes labels of shape \(2, 2\)"),
        (3, None, torch.tensor([[0, 1, 0], [1, 0, 0]], dtype=torch.uint8), None),
        (3, None, torch.tensor([0, 2], dtype=torch.uint8),
         r"multi label classification \(config.problem_type is None: inferred .*\) with num_labels=3 takes labels "
         r"of shape \(2, 3\); got \(2,\)"),
        (3, "single_label_classification", torch.tensor([0.0, 2.0]), r"takes class indices .* dtype torch.float32"),
        (3, "single_label_classification", torch.tensor([0, 3]), r"labels contain 3: labels must be class indices in "
                                                                 r"\[0, num_labels=3\)"),
        (3, "single_label_classification", torch.tensor([[0, 1]]), r"takes labels of shape \(2,\) or \(2, 1\)"),
        (3, None, torch.tensor([0, 2], dtype=torch.int32), None),
        (1, None, torch.tensor([1, 2]), None),
    ],
    ids=["regression-shape", "multi-label-uint8", "inferred-multi-label-shape", "float-classes", "class-range",
         "class-shape", "int32-classes", "integer-regression"],
)
def test_sequence_labels_are_checked_against_the_problem_type(num_labels, problem_type, labels, message):
    torch.manual_seed(0)
    model = HEADS["sequence-classification"].from_config(
        tiny_config(FAMILIES["gru"], num_labels=num_labels, problem_type=problem_type)).eval()
    ids = torch.randint(3, 90, (2, 5))
    if message is not None:
        with pytest.raises(ValueError, match=message):
            model(ids, labels=labels)
        return
    loss = model(ids, labels=labels).loss
    logits = model(ids).logits
    kind = model.config.problem_type
    if kind == "single_label_classification":
        expected = torch.nn.functional.cross_entropy(logits, labels.long())
    elif kind == "multi_label_classification":
        expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    else:
        expected = torch.nn.functional.mse_loss(logits.squeeze(-1), labels.float())
    torch.testing.assert_close(loss, expected)


def test_token_labels_must_be_integers():
    model = HEADS["token-classification"].from_config(tiny_config(FAMILIES["gru"], num_labels=3)).eval()
    ids = torch.randint(3, 90, (2, 5))
    with pytest.raises(ValueError, match="labels must be class indices .* dtype torch.float32"):
        model(ids, labels=torch.zeros(2, 5))
    int32 = model(ids, labels=(ids % 3).int()).loss
    torch.testing.assert_close(int32, model(ids, labels=ids % 3).loss)
    for bad in (3, -1):
        labels = ids % 3
        labels[1, 2] = bad
        with pytest.raises(ValueError,
                           match=rf"labels contain {bad}: labels must be class indices in \[0, num_labels=3\)"):
            model(ids, labels=labels)


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification"])
def test_heads_take_use_cache_false_as_transformers_heads_do(task):
    model = HEADS[task].from_config(tiny_config(FAMILIES["gru"], num_labels=3)).eval()
    ids = torch.randint(3, 90, (2, 5))
    torch.testing.assert_close(model(ids, use_cache=False).logits, model(ids).logits)
    with pytest.raises(ValueError, match="keeps no decoding cache: use_cache must be None or False"):
        model(ids, use_cache=True)


@pytest.mark.parametrize("field, value, message", [
    ("problem_type", "multilabel", r"problem_type='multilabel' is invalid: allowed values are None, 'regression', "
                                   r"'single_label_classification', 'multi_label_classification'"),
    ("num_labels", 0, r"num_labels=0 is invalid: expected an integer >= 1"),
    # as given (transformers turned -1 into 0 labels before the check, and "3" into a bare TypeError)
    ("num_labels", -1, r"num_labels=-1 is invalid: expected an integer >= 1"),
    ("num_labels", "3", r"num_labels='3' is invalid: expected an integer >= 1"),
])
def test_classifier_config_fields_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(FAMILIES["gru"], **{field: value})


def test_a_problem_type_set_after_the_model_was_built_is_checked_at_the_loss():
    model = HEADS["sequence-classification"].from_config(tiny_config(FAMILIES["gru"], num_labels=3)).eval()
    model.config.problem_type = "multilabel"
    with pytest.raises(ValueError, match=r"problem_type='multilabel' is invalid: allowed values are None"):
        model(torch.randint(3, 90, (2, 5)), labels=torch.tensor([0, 1]))


def test_a_pooling_set_after_the_model_was_built_is_checked():
    model = HEADS["sequence-classification"].from_config(tiny_config(FAMILIES["gru"], num_labels=3, bidirectional=True,
                                                                     classifier_pooling="first+last")).eval()
    ids = torch.randint(3, 90, (2, 5))
    model.config.classifier_pooling = "Mean"  # first+last pooling was run whatever the name
    with pytest.raises(ValueError, match=r"classifier_pooling='Mean' is invalid"):
        model(ids)
    model.config.classifier_pooling = "mean"  # half the width the score was built for: torch's matmul error
    with pytest.raises(ValueError, match=r"pools 64 features, but this model's score was built for 128"):
        model(ids)


@pytest.mark.parametrize("task", sorted(HEADS))
def test_a_number_of_labels_set_after_the_model_was_built_is_checked(task):
    model = HEADS[task].from_config(tiny_config(FAMILIES["gru"], num_labels=3)).eval()
    ids = torch.randint(3, 90, (2, 5))
    labels = torch.zeros(2, dtype=torch.long) if task == "sequence-classification" else torch.zeros_like(ids)
    model.config.id2label = {0: "no", 1: "yes"}  # (sets num_labels: the loss read 2, torch's shape error followed)
    with pytest.raises(ValueError, match=r"config.num_labels=2, but this model's score was built for 3 labels"):
        model(ids, labels=labels)
    model.config.num_labels = 3
    assert model(ids, labels=labels).logits.shape[-1] == 3


def test_token_labels_that_are_not_a_tensor_are_refused_by_name():
    model = HEADS["token-classification"].from_config(tiny_config(FAMILIES["gru"], num_labels=3)).eval()
    with pytest.raises(TypeError, match="labels must be a tensor; got list"):  # (was an AttributeError on .shape)
        model(torch.randint(3, 90, (2, 5)), labels=[[0] * 5] * 2)


def test_sequence_labels_that_are_not_real_tensors_are_refused_by_name():
    model = HEADS["sequence-classification"].from_config(tiny_config(FAMILIES["gru"], num_labels=3)).eval()
    ids = torch.randint(3, 90, (2, 5))
    with pytest.raises(TypeError, match="labels must be a tensor; got list"):
        model(ids, labels=[0, 1])
    model.config.problem_type = "regression"
    with pytest.raises(ValueError, match="labels must be real numbers; got dtype torch.complex64"):
        model(ids, labels=torch.zeros(2, 3, dtype=torch.complex64))


def test_without_a_mask_or_a_pad_token_every_position_is_pooled():
    # (transformers' rule, the last token that is not the pad token, needs a pad token: without one, and with
    # embeddings instead of ids, every position is a real token)
    model = HEADS["sequence-classification"].from_config(
        tiny_config(FAMILIES["gru"], num_labels=3, pad_token_id=None, classifier_pooling="mean")).eval()
    ids = torch.randint(3, 90, (2, 5))
    hidden = model.model(ids).last_hidden_state
    torch.testing.assert_close(model(ids).logits, model.score(hidden.mean(1)))
    embeds = model.get_input_embeddings()(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, model.score(hidden.mean(1)))


def test_float_targets_keep_float32_under_half_precision_logits():
    model = HEADS["sequence-classification"].from_config(tiny_config(FAMILIES["transformer"], num_labels=1)).eval()
    labels = torch.tensor([70000.0, 12345.0])  # inf, and 12352, in float16 / bfloat16
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cpu", dtype=dtype):
            output = model(torch.randint(3, 90, (2, 5)), labels=labels)
        expected = torch.nn.functional.mse_loss(output.logits.squeeze(-1), labels)  # transformers' MSELoss
        torch.testing.assert_close(output.loss, expected)


def test_the_sequence_head_applies_classifier_dropout():
    torch.manual_seed(0)
    model = HEADS["sequence-classification"].from_config(tiny_config(FAMILIES["gru"], num_labels=3,
                                                                     classifier_dropout=0.5))
    ids = torch.randint(3, 90, (4, 5))
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)


@pytest.mark.parametrize("task", sorted(HEADS))
def test_padding_without_a_mask_is_warned_about(task, caplog):
    from transformers.utils import logging as hf_logging

    model = HEADS[task].from_config(tiny_config(FAMILIES["gru"], num_labels=3, pad_token_id=0)).eval()
    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            model.warn_if_padding_and_no_attention_mask.__func__.__globals__["logger"].warning_once.cache_clear()
            model(torch.tensor([[5, 6, 0], [5, 6, 7]]))
    finally:
        hf_logging.disable_propagation()
    assert "attention_mask" in caplog.text


def test_a_config_changed_after_it_was_built_is_validated_when_the_model_is(tmp_path):
    """Configs are validated when built; a field set since, or a keyword of from_pretrained (which transformers
    sets on the loaded config), is validated when a model is built from it."""
    from seqzoo.models.hybrid import HybridConfig, HybridForCausalLM

    config = HybridConfig(vocab_size=99, hidden_size=32, mixer_types=["mamba", "attention"])
    config.mixer_types = ["mamba", "attention", "gru"]  # num_hidden_layers stays 2: a layer would be dropped
    with pytest.raises(ValueError, match="mixer_types names 3 layers"):
        HybridForCausalLM(config)
    tiny_model(FAMILIES["gru"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"num_hidden_layers=0 is invalid"):
        AutoModelForCausalLM.from_pretrained(tmp_path, num_hidden_layers=0)
    with pytest.raises(ValueError, match=r"problem_type='multilabel' is invalid"):
        HEADS["sequence-classification"].from_pretrained(tmp_path, problem_type="multilabel")


def test_a_bidirectional_classifier_pools_both_ends_unless_told_otherwise(tmp_path):
    # At the last token the right-to-left direction has read that token alone: "last" would leave it nearly unused.
    assert tiny_config(FAMILIES["gru"]).classifier_pooling == "last"
    assert tiny_config(FAMILIES["gru"], bidirectional=True).classifier_pooling == "first+last"
    chosen = tiny_config(FAMILIES["gru"], bidirectional=True, classifier_pooling="last")
    assert chosen.classifier_pooling == "last"
    chosen.save_pretrained(tmp_path)
    assert type(chosen).from_pretrained(tmp_path).classifier_pooling == "last"  # (as saved, not the default)
    model = seqzoo.create_model("lstm-tiny", "sequence-classification", num_labels=2, bidirectional=True)
    assert model.config.classifier_pooling == "first+last" and model.score.in_features == 2 * model.config.output_dim


def test_mean_pooling_of_a_row_without_real_tokens_is_zero_not_nan():
    from seqzoo.models.heads import pool

    hidden = torch.randn(2, 4, 8)
    real = torch.tensor([[False, False, False, False], [False, True, True, True]])
    pooled = pool(hidden, "mean", real)
    assert torch.equal(pooled[0], torch.zeros(8))
    torch.testing.assert_close(pooled[1], hidden[1, 1:].mean(0))


@pytest.mark.parametrize("task", sorted(HEADS))
def test_a_classifier_loaded_with_another_number_of_labels_names_the_labels(task, tmp_path):
    """A classifier's checkpoint loaded with another num_labels (or id2label): the error names the labels and
    transformers' ignore_mismatched_sizes=True (which starts a new head on the backbone), not a damaged file."""
    torch.manual_seed(0)
    saved = HEADS[task].from_config(tiny_config(FAMILIES["gru"], num_labels=3))
    saved.save_pretrained(tmp_path)
    for given in ({"num_labels": 5}, {"id2label": {0: "NO", 1: "YES"}}):
        labels = len(given.get("id2label", ())) or given["num_labels"]
        with pytest.raises(ValueError, match=rf"holds a classifier head of 3 label\(s\), but this \w+ has "
                                             rf"num_labels={labels} .*ignore_mismatched_sizes=True"):
            HEADS[task].from_pretrained(tmp_path, **given)
        fresh = HEADS[task].from_pretrained(tmp_path, ignore_mismatched_sizes=True, **given)
        assert fresh.score.weight.shape[0] == fresh.config.num_labels == labels
        assert torch.equal(fresh.model.embed_tokens.weight, saved.model.embed_tokens.weight)
    assert HEADS[task].from_pretrained(tmp_path).config.num_labels == 3


@pytest.mark.parametrize("given, message", [
    # transformers dropped a label2id given alone, and the names of an id2label of another length than num_labels,
    # for LABEL_0, LABEL_1 ... without an error
    ({"label2id": {"NO": 0, "YES": 1}}, r"label2id=\{'NO': 0, 'YES': 1\} is given without id2label"),
    ({"num_labels": 3, "id2label": {0: "NO", 1: "YES"}}, r"num_labels=3 and id2label=.* \(2 names\) disagree"),
    # a pipeline failed with a KeyError on class 1; a label2id that is not the inverse trained other classes
    ({"id2label": {0: "NO", 2: "YES"}}, r"its keys must be the class ids 0 \.\. num_labels - 1 = 1"),
    ({"id2label": {0: "NO", 1: "YES"}, "label2id": {"NO": 1, "YES": 0}},
     r"label2id=\{'NO': 1, 'YES': 0\} is invalid: it must map each name of id2label to its id"),
    ({"id2label": {0: "NO", 1: "NO"}, "label2id": {"NO": 0}}, r"the names of id2label=.* repeat"),
])
def test_label_names_that_disagree_are_refused(given, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(FAMILIES["gru"], **given)


def test_label_names_round_trip_and_a_saved_bad_pair_loads_with_a_warning(tmp_path, caplog):
    names = {0: "neg", 1: "mid", 2: "pos"}
    config = tiny_config(FAMILIES["gru"], id2label=names, label2id={v: k for k, v in names.items()})
    assert config.num_labels == 3 and tiny_config(FAMILIES["gru"], num_labels=3, id2label=names).id2label == names
    HEADS["sequence-classification"].from_config(config).save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).config
    assert loaded.id2label == names and loaded.label2id == {v: k for k, v in names.items()}
    values = json.loads((tmp_path / "config.json").read_text())
    values["label2id"] = {"neg": 2, "mid": 1, "pos": 0}  # saved so by hand, or by another tool
    (tmp_path / "config.json").write_text(json.dumps(values))
    with caplog.at_level("WARNING", logger="seqzoo"):
        loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).config
    assert loaded.id2label == names and "it must map each name of id2label to its id" in caplog.text


@pytest.mark.parametrize("pooling", ["last", "mean", "first+last"])
def test_a_row_without_real_tokens_is_refused_by_index(pooling):
    """An empty text in a padded batch (its mask all 0; without a mask, only pad tokens) would be pooled from padding:
    logits from no text, and its label in the loss. It is refused by row, as an empty text alone is."""
    model = head_model(FAMILIES["lstm"], "sequence-classification", classifier_pooling=pooling)
    ids = torch.tensor([[0, 0, 0], [5, 6, 7], [0, 0, 0]])
    mask = (ids != 0).long()
    with pytest.raises(ValueError, match=r"row\(s\) \[0, 2\] of the batch have no real token \(their attention_mask"):
        model(ids, attention_mask=mask, labels=torch.tensor([1, 0, 2]))
    with pytest.raises(ValueError, match=r"row\(s\) \[0, 2\] of the batch have no real token \(they hold only the pad"):
        model(ids)
    one_token = torch.tensor([[5, 6, 7], [8, 0, 0]])  # (a row of one real token is pooled as it is alone)
    torch.testing.assert_close(model(one_token, attention_mask=(one_token != 0).long()).logits[1],
                               model(one_token[1:, :1]).logits[0])


def test_a_checkpoint_of_the_other_direction_setting_is_refused_naming_it(tmp_path):
    """A causal LM's (one-direction) checkpoint loaded with bidirectional=True, and a bidirectional encoder's loaded
    with bidirectional=False: the error says which layout each has, not that the checkpoint may be damaged."""
    seqzoo.create_model(FAMILIES["lstm"]).save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match=r"holds a one-direction model's layers \(model\.layers\.0\.\w+ \.\.\.\), but "
                                         r"this LSTMForSequenceClassification is bidirectional"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "lm", bidirectional=True, num_labels=2)
    head_model(FAMILIES["lstm"], "sequence-classification", bidirectional=True).save_pretrained(tmp_path / "both")
    with pytest.raises(ValueError, match=r"holds a bidirectional model's layers \(model\.layers\.0\.left_to_right\."
                                         r"\w+ \.\.\.\), but this LSTMForSequenceClassification is one-direction"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "both", bidirectional=False)
