"""The row sampler of the JSONL recipes (seq2seq and classification): seeded epochs, resumable at any step."""

from seqzoo.training.data import epoch_sampler


def test_each_epoch_is_a_fresh_seeded_permutation_and_a_resumed_sampler_draws_the_same_rows():
    items = list(range(10))
    rows = [epoch_sampler(items, seed=3)(step, 5) for step in range(6)]  # three epochs of two batches
    epochs = [rows[i] + rows[i + 1] for i in (0, 2, 4)]
    assert all(sorted(epoch) == items for epoch in epochs)  # every row once per epoch
    assert epochs[0] != items and epochs[0] != epochs[1]  # shuffled, and afresh each epoch
    fresh = epoch_sampler(items, seed=3)
    assert [fresh(step, 5) for step in (4, 5)] == rows[4:]  # a run resumed at step 4 draws what it would have
    assert epoch_sampler(items, seed=4)(0, 5) != rows[0]
