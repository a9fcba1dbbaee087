"""Attention masks for a packed prefix tree, per backend.

- sdpa_dense: a [1, 1, T, T] boolean mask through transformers' SDPA path. The reference;
  works on CPU with backward, O(T²) memory.
- flex: a FlexAttention BlockMask (GPU). Fully-masked 128×128 blocks are skipped, so the cost
  follows the tree's real attention pattern. The model must use attn_implementation="flex_attention".
Both encode the same rule: q attends k iff k <= q < end[k].
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from trainer.tree import Packed, tree_attention_mask

BACKENDS = ("sdpa_dense", "flex")
FLEX_BLOCK = 128


def model_attn_implementation(backend: str) -> str:
    return "flex_attention" if backend == "flex" else "sdpa"


@functools.cache
def _compiled_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask)


def pad_for(backend: str, packed: Packed) -> int:
    """Tokens of padding the backend wants at the end (flex: a multiple of its block size)."""
    return (-packed.num_tokens) % FLEX_BLOCK if backend == "flex" else 0


def build_mask(backend: str, packed: Packed, device: torch.device, pad: int = 0) -> Any:
    """The attention mask for `packed` (+ `pad` trailing tokens that attend only to themselves)."""
    end = packed.subtree_end
    if pad:
        t = packed.num_tokens
        end = torch.cat([end, torch.arange(t + 1, t + pad + 1)])
    end = end.to(device)
    if backend == "sdpa_dense":
        t = end.numel()
        q = torch.arange(t, device=device).unsqueeze(1)
        k = torch.arange(t, device=device).unsqueeze(0)
        return ((k <= q) & (q < end.unsqueeze(0)))[None, None]
    if backend == "flex":

        def tree_mask(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx < end[kv_idx])

        t = end.numel()
        create = _compiled_create_block_mask() if device.type == "cuda" else _eager_create_block_mask()
        return create(tree_mask, None, None, t, t, device=device)
    raise ValueError(f"attention backend {backend!r}: expected one of {BACKENDS}")


def _eager_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask


__all__ = ["BACKENDS", "build_mask", "model_attn_implementation", "pad_for", "tree_attention_mask"]
