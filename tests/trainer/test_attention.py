"""The FlexAttention block structure matches the dense tree mask exactly (checked on CPU)."""

import numpy as np
import pytest
import torch

from trainer.attention import FLEX_BLOCK, block_flags, build_mask, tree_block_mask
from trainer.synthetic import agent_batch
from trainer.tree import pack, tree_attention_mask


@pytest.mark.parametrize("seed", range(4))
def test_block_flags_cover_the_dense_mask(seed):
    rng = np.random.default_rng(seed)
    eps = agent_batch(rng, 2, 3, 4, 100, 60, 50)
    packed = pack([s.prompt_ids + s.completion_ids for e in eps for s in e.samples])
    pad = (-packed.num_tokens) % FLEX_BLOCK
    dense = build_mask("sdpa_dense", packed, torch.device("cpu"), pad)[0, 0]
    t = dense.shape[0]
    end = torch.cat([packed.subtree_end, torch.arange(packed.num_tokens + 1, packed.num_tokens + pad + 1)])
    partial, full = block_flags(end)
    blocks = dense.view(t // FLEX_BLOCK, FLEX_BLOCK, t // FLEX_BLOCK, FLEX_BLOCK)
    any_visible = blocks.any(3).any(1)
    all_visible = blocks.all(3).all(1)
    assert torch.equal(full, all_visible)  # full blocks are exactly the all-visible ones
    assert not (any_visible & ~(partial | full)).any()  # no visible pair is ever skipped
    assert not (partial & full).any()
    assert torch.equal(dense[: packed.num_tokens, : packed.num_tokens], tree_attention_mask(packed))
    bm = tree_block_mask(end, lambda b, h, q, k: (k <= q) & (q < end[k]))
    assert bm.shape[-2:] == (t, t)
