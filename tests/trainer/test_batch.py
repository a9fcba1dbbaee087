"""MicroBatch.to: the staged copy holds the same values on the device, so a pass reads no CPU tensor."""

import numpy as np
import pytest
import torch

from trainer.advantages import group_relative
from trainer.batch import build_samples, make_microbatches
from trainer.synthetic import agent_batch


def microbatch():
    eps = agent_batch(np.random.default_rng(0), 2, 3, 2, 40, 30, 100)
    samples, _ = build_samples(eps, group_relative(eps), "token")
    return make_microbatches(samples, 4096, True)[0]


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
