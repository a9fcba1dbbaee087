"""A preallocated per-slot KV cache, plugged into a transformers model through its AttentionInterface.

transformers' own caches (DynamicCache, StaticCache) write every row of a batch at the same
positions; a continuously batched decode step needs one position per row. So this module keeps a
cache of shape [layers, slots, kv_heads, max_len, head_dim] and registers an attention function
(`ATTN_NAME`) that, per layer, writes the new keys/values at each row's own position and runs
SDPA over the slot's valid prefix. Everything else (embeddings, RoPE with per-row position ids,
MLP, norms, LM head) is the transformers model unchanged.

Two kinds of forward, chosen by `SlotKV.plan` before the call:
- prefill: B new requests in slots [start, start+B), right-padded to T tokens; keys/values are
  written to positions [0, T) of their slots and attention is causal over the new tokens only
  (a padding mask hides each row's pad tail).
- decode: one new token for each of the first B slots (active requests are kept compacted at
  the front), written at `positions[b]`; attention over slot[b, :, :L] with keys j <= position.
  Grouped-query heads are folded into the query-length axis so SDPA needs no repeated K/V.

All index tensors live on the device, so a decode step is free of host syncs and can be
captured in a CUDA graph (the plan's tensors are static buffers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ATTN_NAME = "forge_slots"


@dataclass
class PrefillPlan:
    start: int  # first slot
    mask: torch.Tensor  # [B, 1, T, T] additive (0 / -inf), model dtype


@dataclass
class DecodePlan:
    rows: torch.Tensor  # [B] int64: 0..B-1
    positions: torch.Tensor  # [B] int64: where each row's new token goes
    length: int  # L: keys attended are [0, L)
    mask: torch.Tensor  # [B, 1, 1, L] additive (0 / -inf), model dtype


class SlotKV:
    """KV storage for `slots` sequences of up to `max_len` tokens each."""

    def __init__(
        self,
        num_layers: int,
        slots: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (num_layers, slots, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.slots = slots
        self.max_len = max_len
        self.plan: PrefillPlan | DecodePlan | None = None

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def move(self, dst: int, src: int, length: int) -> None:
        """Copy slot `src`'s first `length` positions to slot `dst` (compaction)."""
        if length > 0:
            self.k[:, dst, :, :length].copy_(self.k[:, src, :, :length])
            self.v[:, dst, :, :length].copy_(self.v[:, src, :, :length])

    def attend(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scaling: float | None,
    ) -> torch.Tensor:
        """query [B, Hq, T, D], key/value [B, Hkv, T, D] → attention output [B, T, Hq, D]."""
        plan = self.plan
        kc, vc = self.k[layer], self.v[layer]
        batch, q_heads, t, dim = query.shape
        kv_heads = key.shape[1]
        if isinstance(plan, DecodePlan):
            kc[plan.rows, :, plan.positions] = key[:, :, 0]
            vc[plan.rows, :, plan.positions] = value[:, :, 0]
            keys = kc[:batch, :, : plan.length]
            values = vc[:batch, :, : plan.length]
            rep = q_heads // kv_heads
            # fold the `rep` query heads sharing a kv head into the query axis: no K/V repeat
            q = query.reshape(batch, kv_heads, rep, dim)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=plan.mask, scale=scaling)
            return out.reshape(batch, q_heads, 1, dim).transpose(1, 2)
        if isinstance(plan, PrefillPlan):
            kc[plan.start : plan.start + batch, :, :t] = key
            vc[plan.start : plan.start + batch, :, :t] = value
            if q_heads != kv_heads:
                key = key.repeat_interleave(q_heads // kv_heads, dim=1)
                value = value.repeat_interleave(q_heads // kv_heads, dim=1)
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=plan.mask, scale=scaling)
            return out.transpose(1, 2)
        raise RuntimeError("SlotKV.attend called without a plan")


def slot_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """The registered attention function: delegates to the SlotKV bound to the attention module."""
    kv: SlotKV = module.forge_kv  # type: ignore[assignment]
    return kv.attend(module.layer_idx, query, key, value, scaling), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, slot_attention_forward)


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention modules of a decoder (those with a `layer_idx` and q/k/v projections)."""
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "k_proj")]
    if not mods:
        raise ValueError(f"{type(model).__name__}: found no attention modules with layer_idx/k_proj")
    return mods


def bind(model: torch.nn.Module, kv: SlotKV) -> None:
    """Route `model`'s attention through `kv` (switches its attn implementation to ATTN_NAME)."""
    register()
    for mod in attention_modules(model):
        mod.forge_kv = kv
    model.set_attn_implementation(ATTN_NAME)
    if model.config._attn_implementation != ATTN_NAME:
        raise RuntimeError(f"could not route {type(model).__name__}'s attention through {ATTN_NAME}")


def decode_mask(positions: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, 1, L] additive mask: key j visible to row b iff j <= positions[b]."""
    keys = torch.arange(length, device=positions.device)
    visible = keys[None, :] <= positions[:, None]
    zero = torch.zeros((), dtype=dtype, device=positions.device)
    neg = torch.full((), float("-inf"), dtype=dtype, device=positions.device)
    return torch.where(visible, zero, neg).view(-1, 1, 1, length)


def prefill_mask(lengths: torch.Tensor, t: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, T, T] additive mask: causal, and keys past each row's length hidden."""
    idx = torch.arange(t, device=lengths.device)
    causal = idx[None, :] <= idx[:, None]  # [T(q), T(k)]
    valid = idx[None, :] < lengths[:, None]  # [B, T(k)]
    visible = causal[None] & valid[:, None, :]
    zero = torch.zeros((), dtype=dtype, device=lengths.device)
    neg = torch.full((), float("-inf"), dtype=dtype, device=lengths.device)
    return torch.where(visible, zero, neg).unsqueeze(1)
