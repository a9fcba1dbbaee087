"""The packed layout of a prefix tree does not depend on the order its sequences arrive in."""

import numpy as np
import torch

from trainer.tree import pack, tree_attention_mask


def test_a_chain_packs_the_same_in_either_order():
    # an episode's calls (each extends the last) plus a branch off the middle and a duplicate
    rng = np.random.default_rng(0)
    chain = rng.integers(0, 50, 40)
    seqs = [chain[:10], chain[:25], chain[:40], np.concatenate([chain[:18], [99, 98]]), chain[:25]]
    forward, backward = pack(seqs), pack(seqs[::-1])
    assert forward.num_tokens == 40 + 2
    assert torch.equal(forward.position_ids.sort().values, backward.position_ids.sort().values)
    for a, b, s in zip(forward.seq_index, backward.seq_index[::-1], seqs, strict=True):
        assert torch.equal(forward.input_ids[a], torch.from_numpy(s))
        assert torch.equal(backward.input_ids[b], torch.from_numpy(s))
        assert torch.equal(forward.position_ids[a], torch.arange(len(s)))
        assert torch.equal(backward.position_ids[b], torch.arange(len(s)))
    for packed in (forward, backward):  # each token sees exactly its ancestors: causal per sequence
        mask = tree_attention_mask(packed)
        assert torch.equal(mask.sum(1), packed.position_ids + 1)
        for index in packed.seq_index:
            assert torch.equal(mask[index][:, index], torch.ones(len(index), len(index)).tril().bool())
