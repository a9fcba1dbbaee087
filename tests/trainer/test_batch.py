"""Micro-batch splitting: as few micro-batches as the budget allows, in order, evened out."""

import numpy as np
import pytest

from trainer.advantages import group_relative
from trainer.batch import _fill, build_samples, split_by_budget
from trainer.synthetic import agent_batch


def packed_size(batch, merge):
    return _fill(batch, 10**12, merge)[1][0]


@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize(
    "groups,calls,budget", [(3, 4, 8192), (1, 16, 8192), (13, 1, 2048), (5, 3, 1500), (16, 3, 4096)]
)
def test_split_is_minimal_ordered_within_budget_and_never_less_even(groups, calls, budget, merge):
    eps = agent_batch(np.random.default_rng(groups * calls), groups, 4, calls, 128, 64, 1000)
    samples, _ = build_samples(eps, group_relative(eps), "token")
    greedy, greedy_sizes = _fill(samples, budget, merge)
    split = split_by_budget(samples, budget, merge)
    sizes = [packed_size(b, merge) for b in split]
    assert [s.ref for b in split for s in b] == [s.ref for s in samples]  # order kept, nothing lost
    assert len(split) == len(greedy)  # as few micro-batches as greedy filling
    assert max(sizes) <= budget
    assert max(sizes) <= max(greedy_sizes) and min(sizes) >= min(greedy_sizes)


def test_a_nearly_empty_last_micro_batch_is_evened_out():
    eps = agent_batch(np.random.default_rng(0), 3, 8, 4, 512, 256, 150000)
    samples, _ = build_samples(eps, group_relative(eps), "token")
    _, greedy_sizes = _fill(samples, 32768, True)
    assert greedy_sizes == [32676, 2013]  # what greedy filling alone gives this batch
    sizes = [packed_size(b, True) for b in split_by_budget(samples, 32768, True)]
    assert len(sizes) == 2 and max(sizes) - min(sizes) < 1024  # e.g. 17,394 + 17,118


def test_a_sample_over_the_budget_is_named():
    eps = agent_batch(np.random.default_rng(0), 1, 1, 1, 100, 50, 1000)
    samples, _ = build_samples(eps, group_relative(eps), "token")
    with pytest.raises(ValueError, match=rf"{samples[0].ref}.*trainer.micro_batch_tokens=64"):
        split_by_budget(samples, 64, True)
