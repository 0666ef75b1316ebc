"""Checks written by breaking the training loop's arithmetic on purpose (a mutation check): each test here fails
with a deliberate fault that the in-process training tests let through, and compares against an implementation
seqzoo did not write where there is one (torch's AdamW and cross_entropy, transformers' schedules, a loop written
here)."""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from seqzoo.training.building import build_model, lr_factor
from seqzoo.training.data import build_data
from seqzoo.training.grad_health import GradientHealth
from seqzoo.training.recipe import recipe_from_dict
from seqzoo.training.trainer import _train_step, evaluate, train
from tests.conftest import FAMILIES, SEQ2SEQ_FAMILIES, tiny_model
from tests.training.test_loop_reference import NO_DROPOUT, plain_torch_run, reference_evaluation
from tests.training.test_trainer import make_recipe


def test_adamw_gets_the_recipes_eps_and_betas(tmp_path):
    # Catches: optim.eps (or betas) not handed to AdamW; the defaults (1e-8) equal torch's, so every other test
    # trained the same weights without it.
    recipe = make_recipe(tmp_path, model=NO_DROPOUT,
                         optim={"lr": 0.01, "warmup_steps": 1, "schedule": "constant", "eps": 0.05,
                                "betas": [0.8, 0.9], "max_grad_norm": 0.0},
                         train={"max_steps": 3, "eval_every": 0})
    result = train(recipe, progress=False, save_model=False)
    _, model = plain_torch_run(recipe)
    for (name, ours), theirs in zip(result.model.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 3])
def test_the_schedule_after_warmup_is_transformers_own(schedule, warmup):
    # Catches: a schedule that is wrong where no test looked: with no warmup at all (the constant schedule's first
    # step), or a decay off by a step. transformers' schedules are the reference; their warmup starts at 0 where
    # seqzoo's first step already trains at lr / warmup, so the warmup steps themselves are checked elsewhere.
    from transformers.optimization import (
        get_constant_schedule,
        get_cosine_with_min_lr_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    total, floor = 11, 0.0 if schedule == "linear" else 0.2
    optim = {"warmup_steps": warmup, "schedule": schedule}
    if schedule != "constant":  # (the recipe refuses a floor for a schedule that never decays)
        optim["min_lr_ratio"] = floor
    recipe = recipe_from_dict({"optim": optim, "train": {"max_steps": total}})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = {"constant": lambda: get_constant_schedule(optimizer),
              "linear": lambda: get_linear_schedule_with_warmup(optimizer, warmup, total),
              "cosine": lambda: get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total,
                                                                            min_lr_rate=floor)}[schedule]()
    for step in range(total):
        if step >= warmup:
            assert lr_factor(step, recipe) == pytest.approx(theirs.get_last_lr()[0], rel=1e-12, abs=1e-15), step
        optimizer.step()
        theirs.step()


def test_the_final_evaluation_is_of_the_final_model_when_eval_every_does_not_divide_max_steps(tmp_path):
    # Catches: the last step evaluated only where eval_every divides it (the run reported, and saved in its model
    # card, the figures of step 4 for the model of step 6).
    recipe = make_recipe(tmp_path, model=NO_DROPOUT, train={"max_steps": 6, "eval_every": 4})
    result = train(recipe, progress=False, save_model=False)
    assert [row["step"] for row in result.history if "eval" in row] == [4, 6]
    total, _ = reference_evaluation(result.model, build_data(recipe.data, recipe.train.seed).eval_sets())
    assert result.eval["loss"] == pytest.approx(float(total[0] / total[2]), rel=1e-5)
    assert result.eval["accuracy"] == pytest.approx(float(total[1] / total[2]), rel=1e-9)


class OneRankOfTwo:
    """What evaluate() asks of an Accelerator, as rank ``rank`` of two processes; reduce() keeps this rank's sums
    (the test adds the two ranks' up, as the all-reduce would)."""

    num_processes, device = 2, torch.device("cpu")

    def __init__(self, rank: int) -> None:
        self.process_index, self.reduced = rank, []

    def autocast(self):
        return torch.autocast("cpu", enabled=False)

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum"
        self.reduced.append(tensor.clone())
        return tensor


def test_two_processes_evaluate_every_row_once_between_them(tmp_path):
    # Catches: each process scoring the first rows of every step (rank not read) or steps of one process's batch
    # (the rows of the other process read twice, others never): the two-process test compares training losses
    # only. 5 rows in batches of 2 per process: rank 0 reads rows 0, 1 and 4, rank 1 rows 2 and 3 (the rest is padding,
    # scored nothing).
    recipe = make_recipe(tmp_path, model=NO_DROPOUT, data={"eval_samples": 5})
    data = build_data(recipe.data, recipe.train.seed)
    torch.manual_seed(0)
    model = build_model(recipe, data)
    eval_sets = data.eval_sets()
    _, expected = reference_evaluation(model, eval_sets)
    ranks = [OneRankOfTwo(rank) for rank in (0, 1)]
    for accelerator in ranks:
        evaluate(model, eval_sets, accelerator, batch_size=2, chunk=0)
    for index, name in enumerate(eval_sets):
        summed = ranks[0].reduced[index] + ranks[1].reduced[index]
        assert float(summed[2]) == float(expected[name][2]) > 0, name
        torch.testing.assert_close(summed, expected[name], rtol=1e-5, atol=1e-5, msg=name)


def test_perplexity_is_the_exponential_of_the_mean_token_loss_beyond_five_nats():
    # Catches: a perplexity capped too low or computed off the mean loss (every other test compares loss and accuracy
    # only, and a memory task's loss starts under 5 nats). A byte vocabulary's untrained loss is ~ln(300) = 5.7.
    from accelerate import Accelerator

    model = tiny_model(FAMILIES["lstm"], vocab_size=300)
    ids = torch.randint(0, 300, (3, 9), generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 300, (3, 9), generator=torch.Generator().manual_seed(1))
    targets[0, :4] = -100
    figures = evaluate(model, {"set": (ids, targets)}, Accelerator(cpu=True), batch_size=2, chunk=0)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    loss = float(F.cross_entropy(logits.reshape(-1, 300), targets.reshape(-1), ignore_index=-100))
    assert loss > 5 and figures["loss"] == pytest.approx(loss, rel=1e-5)
    assert figures["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert figures["sets"]["set"]["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)


class GradientsTaken(Exception):
    pass


class TrainingRankOfTwo:
    """What a training step asks of an Accelerator, as rank ``rank`` of two DDP processes: it records whether each
    backward ran with gradient synchronisation on, and stops the step at clipping with the gradients it holds (the
    test averages the two ranks', as DDP's all-reduce does)."""

    num_processes, device = 2, torch.device("cpu")

    def __init__(self, rank: int) -> None:
        self.process_index, self.syncing, self.synced, self.grads = rank, True, [], None

    @contextmanager
    def no_sync(self, model):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True

    def backward(self, loss: torch.Tensor) -> None:
        self.synced.append(self.syncing)
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm):
        self.grads = [p.grad.clone() for p in parameters]
        raise GradientsTaken


def test_two_processes_accumulating_give_the_gradient_of_the_global_batchs_mean_token_loss(tmp_path):
    # Catches, in one process and against a gradient torch computes itself: the loss scaled without the number of
    # processes (DDP's average then halves the gradient, its logged norm and the clipping threshold), and
    # synchronisation on another micro-batch than the last (each process would step with gradients of its own).
    # test_processes.py's gloo run catches both too, by launching two processes; this one checks the gradient.
    recipe = make_recipe(tmp_path, model=NO_DROPOUT, train={"batch_size": 8, "gradient_accumulation_steps": 2})
    data = build_data(recipe.data, recipe.train.seed)
    torch.manual_seed(0)
    model = build_model(recipe, data).train()
    inputs, targets = data.train_batch(0, 8)
    reference = copy.deepcopy(model)
    logits = reference(input_ids=inputs).logits
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100).backward()
    ranks = [TrainingRankOfTwo(rank) for rank in (0, 1)]
    for accelerator in ranks:
        replica = copy.deepcopy(model)
        with pytest.raises(GradientsTaken):
            _train_step(recipe, accelerator, replica, None, None, inputs, targets, micro_batch=2,
                        health=GradientHealth(1e-9, 1e9), step=0)
        assert accelerator.synced == [False, True], "gradients must be synchronised on the last micro-batch only"
    for (name, p), ours, theirs in zip(reference.named_parameters(), *[rank.grads for rank in ranks]):
        torch.testing.assert_close((ours + theirs) / 2, p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_seq2seq_batch_scores_each_targets_bytes_and_eos_and_nothing_after():
    # Catches: labels padded with the pad token rather than -100 (the shorter targets' pad positions were scored, and
    # trained as predictions of padding after EOS), and a target without its EOS (generation would never stop).
    # The layout DataCollatorForSeq2Seq gives: sources right-padded with the pad token, labels with -100.
    from seqzoo.tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID
    from seqzoo.training.seq2seq import Seq2SeqPairs

    pairs = Seq2SeqPairs(lambda step, size: [], {}, "pairs", None, {})
    sources, labels = pairs.batch([("abc", "x"), ("d", "yzé")])
    assert sources.tolist() == [[97, 98, 99], [100, PAD_TOKEN_ID, PAD_TOKEN_ID]]
    assert labels.tolist() == [[120, EOS_TOKEN_ID, -100, -100, -100], [121, 122, 0xC3, 0xA9, EOS_TOKEN_ID]]


@pytest.mark.parametrize("family", sorted(SEQ2SEQ_FAMILIES))
def test_a_seq2seq_training_forward_masks_the_sources_padding(family):
    # Catches: the sources' pad tokens left unmasked in the training and evaluation forward (a short source in a
    # batch of longer ones was encoded with its padding: trained and scored on other inputs than it has alone).
    from seqzoo.tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID
    from seqzoo.training.seq2seq import Seq2SeqPairs, seq2seq_logits

    model = tiny_model(SEQ2SEQ_FAMILIES[family], vocab_size=260, pad_token_id=PAD_TOKEN_ID,  # (the batch's ids)
                       eos_token_id=EOS_TOKEN_ID, decoder_start_token_id=EOS_TOKEN_ID)
    pairs = Seq2SeqPairs(lambda step, size: [], {}, "pairs", None, {})
    batch = [("a longer source", "xy"), ("ab", "zw")]
    with torch.no_grad():
        together = seq2seq_logits(model, *pairs.batch(batch))
        alone = seq2seq_logits(model, *pairs.batch(batch[1:]))
    torch.testing.assert_close(together[1], alone[0], rtol=1e-5, atol=1e-5)
