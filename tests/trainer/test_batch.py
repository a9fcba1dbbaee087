"""Splitting a batch into micro-batches (as few as a greedy fill needs, lengths evened out), and
MicroBatch.to: the staged copy holds the same values on the device, so a pass reads no CPU tensor."""

import numpy as np
import pytest
import torch

from trainer.advantages import group_relative
from trainer.batch import TrainSample, build_samples, make_microbatches, split_by_budget
from trainer.synthetic import agent_batch


def microbatch():
    eps = agent_batch(np.random.default_rng(0), 2, 3, 2, 40, 30, 100)
    samples, _ = build_samples(eps, group_relative(eps), "token")
    return make_microbatches(samples, 4096, True)[0]


def sample_of(ref: str, tokens: np.ndarray, prompt_len: int = 1) -> TrainSample:
    c = len(tokens) - prompt_len
    return TrainSample(
        ref, tokens.astype(np.int64), prompt_len, np.zeros(c, np.float32), np.zeros(c, np.float32), 1.0
    )


def sample(n: int, ref: str, prefix: list[int] | None = None) -> TrainSample:
    return sample_of(ref, np.array((prefix or []) + list(range(1000, 1000 + n - len(prefix or [])))))


def lengths(batches: list[list[TrainSample]]) -> list[int]:
    return [sum(len(s.tokens) for s in b) for b in batches]


def test_split_evens_out_the_greedy_fill():
    # greedy to 100 tokens: [30, 30, 30] + [30] (90 + 30); evened: [30, 30] + [30, 30]
    samples = [sample(30, f"s{i}") for i in range(4)]
    batches = split_by_budget(samples, 100, merge=False)
    assert lengths(batches) == [60, 60]
    assert [s.ref for b in batches for s in b] == [s.ref for s in samples]  # order kept


def test_split_keeps_the_greedy_count_and_the_budget():
    # uneven samples: evening out must neither add a micro-batch nor exceed the budget
    rng = np.random.default_rng(0)
    samples = [sample(int(n), f"s{i}") for i, n in enumerate(rng.integers(5, 90, 60))]
    for budget in (90, 150, 400, 1000):
        greedy = split_by_budget(samples, budget, merge=False, even=False)
        batches = split_by_budget(samples, budget, merge=False)
        assert len(batches) == len(greedy)
        assert max(lengths(batches)) <= budget
        assert max(lengths(batches)) - min(lengths(batches)) <= max(lengths(greedy)) - min(lengths(greedy))
        assert sorted(s.ref for b in batches for s in b) == sorted(s.ref for s in samples)


def test_split_counts_merged_tokens():
    # a 50-token shared prefix: four samples of 60 merge to 50 + 4 × 10 = 90 tokens, one micro-batch
    shared = list(range(50))
    samples = [sample(60, f"s{i}", shared) for i in range(4)]
    for s, i in zip(samples, range(4), strict=True):
        s.tokens[50:] += 100 * i  # distinct tails
    assert len(split_by_budget(samples, 100, merge=True)) == 1
    assert len(split_by_budget(samples, 100, merge=False)) == 4


def test_split_moves_an_episodes_earlier_calls_with_it():
    # two episodes of three calls (each call's tokens extend the previous call's): 10, 20, 30 tokens
    def episode(name: str, first: int) -> list[TrainSample]:
        tokens = np.arange(first, first + 30)
        return [sample_of(f"{name}#{t}", tokens[: 10 * (t + 1)]) for t in range(3)]

    samples = episode("a", 0) + episode("b", 100)
    batches = split_by_budget(samples, 40, merge=True, even=False)
    # a greedy fill would pack a#0-2 + b#0 (40 tokens), then b#1-2 again from b's first token (30)
    assert [[s.ref for s in b] for b in batches] == [["a#0", "a#1", "a#2"], ["b#0", "b#1", "b#2"]]
    packed = [m.packed.num_tokens for m in make_microbatches(samples, 40, merge=True)]
    assert packed == [30, 30]


def test_split_refuses_a_sample_over_budget():
    with pytest.raises(ValueError, match="s1 has 120 tokens.*trainer.micro_batch_tokens=100"):
        split_by_budget([sample(30, "s0"), sample(120, "s1")], 100, merge=False)


def test_to_cpu_is_the_same_batch():
    mb = microbatch()
    assert mb.to(torch.device("cpu")) is mb


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_to_cuda_copies_every_tensor():
    mb = microbatch()
    staged = mb.to(torch.device("cuda"))
    torch.cuda.synchronize()
    pairs = [
        (mb.packed.input_ids, staged.packed.input_ids),
        (mb.packed.position_ids, staged.packed.position_ids),
        (mb.packed.subtree_end, staged.packed.subtree_end),
        (mb.pred_rows, staged.pred_rows),
        (mb.targets, staged.targets),
        (mb.sample_ids, staged.sample_ids),
        (mb.behaviour_logprobs, staged.behaviour_logprobs),
        (mb.advantages, staged.advantages),
        (mb.token_weights, staged.token_weights),
    ]
    for cpu, cuda in pairs:
        assert cuda.is_cuda and cuda.dtype == cpu.dtype
        assert torch.equal(cuda.cpu(), cpu)
    assert staged.packed.num_tokens == mb.packed.num_tokens
    assert staged.refs == mb.refs and staged.flat_tokens == mb.flat_tokens
    assert staged.to(torch.device("cuda")) is staged  # staged once: completion_rows copies nothing
