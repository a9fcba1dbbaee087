"""Attention masks for a packed prefix tree, per backend.

- sdpa_dense: a [1, 1, T, T] boolean mask through transformers' SDPA path. The reference;
  works on CPU with backward, O(T²) memory.
- flex: a FlexAttention BlockMask (GPU). Fully-masked 128×128 blocks are skipped, so the cost
  follows the tree's real attention pattern. The model must use attn_implementation="flex_attention".
Both encode the same rule: q attends k iff k <= q < end[k].
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.tree import Packed, tree_attention_mask

BACKENDS = ("sdpa_dense", "flex")
FLEX_BLOCK = 128


def model_attn_implementation(backend: str) -> str:
    return "flex_attention" if backend == "flex" else "sdpa"


def pad_for(backend: str, packed: Packed) -> int:
    """Tokens of padding the backend wants at the end (flex: a multiple of its block size)."""
    return (-packed.num_tokens) % FLEX_BLOCK if backend == "flex" else 0


def build_mask(backend: str, packed: Packed, device: torch.device, pad: int = 0) -> Any:
    """The attention mask for `packed` (+ `pad` trailing tokens that attend only to themselves)."""
    end = packed.subtree_end.to(device)
    if pad:
        t = packed.num_tokens
        end = torch.cat([end, torch.arange(t + 1, t + pad + 1, device=device)])
    if backend == "sdpa_dense":
        t = end.numel()
        q = torch.arange(t, device=device).unsqueeze(1)
        k = torch.arange(t, device=device).unsqueeze(0)
        return ((k <= q) & (q < end.unsqueeze(0)))[None, None]
    if backend == "flex":

        def tree_mask(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx < end[kv_idx])

        return tree_block_mask(end, tree_mask)
    raise ValueError(f"attention backend {backend!r}: expected one of {BACKENDS}")


def block_flags(end: torch.Tensor, block: int = FLEX_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial [nq, nk], full [nq, nk]) block flags of the tree rule, without a T×T mask.

    Key block j holds keys [j·B, (j+1)·B); key k is seen by queries [k, end[k]). Block (i, j)
    may hold a visible pair iff min k ≤ max q and max end > min q (a superset: the mask_mod
    decides inside); it is full iff max k ≤ min q and min end > max q.
    """
    t = end.numel()
    assert t % block == 0, "pad to a multiple of the block size first"
    n = t // block
    e = end.view(n, block)
    starts = torch.arange(n, device=end.device) * block
    k_min, k_max = starts, starts + block - 1
    e_min, e_max = e.min(1).values, e.max(1).values
    q_min, q_max = starts.unsqueeze(1), (starts + block - 1).unsqueeze(1)  # rows: query blocks
    partial = (k_min.unsqueeze(0) <= q_max) & (e_max.unsqueeze(0) > q_min)
    full = (k_max.unsqueeze(0) <= q_min) & (e_min.unsqueeze(0) > q_max)
    return partial & ~full, full


def _ordered(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    counts = flags.sum(-1, dtype=torch.int32)
    indices = torch.argsort(flags.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts[None, None], indices[None, None]


def tree_block_mask(end: torch.Tensor, mask_mod) -> Any:
    """A FlexAttention BlockMask for the tree rule, built from block-level bounds."""
    from torch.nn.attention.flex_attention import BlockMask

    partial, full = block_flags(end)
    kv_num, kv_idx = _ordered(partial)
    full_num, full_idx = _ordered(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod
    )


__all__ = ["BACKENDS", "build_mask", "model_attn_implementation", "pad_for", "tree_attention_mask"]
