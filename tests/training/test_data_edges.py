"""Data sources across epoch boundaries with one sampler (as the trainer keeps it), distance_mix='batch', and the
smallest split a TokenStream accepts."""

from __future__ import annotations

import pytest
import torch

from seqzoo.training.data import MemoryTask, TokenStream, epoch_sampler, task_length


def test_one_sampler_draws_a_fresh_permutation_each_epoch():
    items = list(range(10))
    sampler = epoch_sampler(items, seed=3)
    rows = [sampler(step, 5) for step in range(6)]  # the same sampler, steps in order, across three epochs
    fresh = [epoch_sampler(items, seed=3)(step, 5) for step in range(6)]
    assert rows == fresh


def test_a_token_stream_shuffles_each_epoch_afresh():
    stream = TokenStream(torch.arange(1001, dtype=torch.int16) % 250, "t", seq_len=10, eval_fraction=0.1,
                         eval_samples=4, seed=0)
    first = [int(stream.train_batch(step, 1)[0][0, 0]) for step in range(stream.num_samples)]
    second = [int(stream.train_batch(step, 1)[0][0, 0]) for step in range(stream.num_samples, 2 * stream.num_samples)]
    assert sorted(first) == sorted(second) and first != second


def test_distance_mix_batch_gives_each_step_one_distance_at_its_own_length():
    task = MemoryTask("copy", [2, 20], symbols=8, items=2, seq_len=None, eval_samples=2, seed=0, distance_mix="batch")
    widths = [task.train_batch(step, 4)[0].shape[1] for step in range(2)]
    assert widths == [task_length("copy", 2, 2), task_length("copy", 20, 2)]
    eval_widths = {k: v[0].shape[1] for k, v in task.eval_sets().items()}
    assert eval_widths == {"distance=2": widths[0], "distance=20": widths[1]}


def test_a_split_of_exactly_seq_len_tokens_is_refused():
    # each sample needs seq_len + 1 tokens: an evaluation split of seq_len tokens holds none
    with pytest.raises(ValueError, match=r"longer than the evaluation split of t \(10 tokens"):
        TokenStream(torch.zeros(100, dtype=torch.int16), "t", seq_len=10, eval_fraction=0.1, eval_samples=1, seed=0)
