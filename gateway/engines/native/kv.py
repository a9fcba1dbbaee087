"""A paged KV cache, plugged into a transformers model through its AttentionInterface.

transformers' own caches write every row of a batch at the same positions; a continuously batched
decode step needs one position per row, and prefix reuse needs rows whose keys live in pages other
requests wrote. So this module keeps one pool of token slots per layer, `k[layer]`:
[num_pages · page_size, kv_heads, head_dim], and registers an attention function (`ATTN_NAME`)
that, per layer, writes the new keys/values at their slots and attends over the slots a row's page
table names. Everything else (embeddings, RoPE with per-row position ids, MLP, norms, LM head) is
the transformers model unchanged.

Slot of row b's position j: `page_table[b, j // P] · P + j % P` (`slot_index`). Page 0 is scratch:
padding tokens write there and unused page-table entries point there (always finite values, so a
masked key never turns an output into NaN).

Two kinds of forward, chosen by the plan set before the call:
- prefill: B rows, each with `cached[b]` positions already in its pages (a reused prefix) and
  `len[b]` new tokens, right-padded to T. New keys/values go to their slots; each row then attends
  over all its keys [0, cached + len), key j visible to query t iff j <= cached + t: read in place
  through the page table by the Triton kernel (`paged_attn.paged_prefill_triton`, CUDA; when the
  plan carries `page_table` / `cached` / `lengths` and the pool was built with use_triton), else
  gathered through `kv_idx` and masked by `mask` for SDPA (any device).
- decode: one new token per row at `positions[b]`; keys [0, positions[b]] of the row's pages,
  read either by the Triton kernel (`paged_attn.paged_decode_triton`, CUDA) or gathered to
  [B, kv_heads, L, D] for SDPA (any device; grouped-query heads folded into the query axis).

All index tensors are computed on the device from static buffers (positions, the page table), so
a decode step is free of host syncs and can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ATTN_NAME = "forge_paged"


@dataclass
class PrefillPlan:
    write_slots: torch.Tensor  # [B*T] int64: each new token's slot (padding → scratch page 0)
    kv_idx: torch.Tensor | None = None  # [B, Lk] int64: slots of keys [0, Lk) of each row (SDPA path)
    mask: torch.Tensor | None = None  # [B, 1, T, Lk] additive (0 / -inf), model dtype (SDPA path)
    # the Triton path (used when all three are set and the PagedKV has use_triton), on the device:
    page_table: torch.Tensor | None = None  # [>= B, max_pages] int32, row b = the batch's row b
    cached: torch.Tensor | None = None  # [B] int32/int64: positions already in the pages
    lengths: torch.Tensor | None = None  # [B] int32/int64: new tokens (<= T)
    # packed rows (the forward's batch is [1, N]: row b's tokens at [starts[b], starts[b] + lengths[b])):
    # the Triton path's program tables (paged_attn.packed_tiles) ...
    starts: torch.Tensor | None = None  # [B] int64
    prog_row: torch.Tensor | None = None  # [programs] int64, -1: no tile
    prog_tile: torch.Tensor | None = None  # [programs] int64
    # ... or the SDPA path's: packed token of (row b, new token i) and the (b · T + i) of each packed token
    unpack_idx: torch.Tensor | None = None  # [B, T] int64 (padding: any token)
    pack_idx: torch.Tensor | None = None  # [N] int64 (tokens of no row: any)


@dataclass
class DecodePlan:
    write_slots: torch.Tensor  # [B] int64: where each row's new key/value goes
    seq_lens: torch.Tensor  # [B] int32: keys visible (position + 1)
    page_table: torch.Tensor  # [>= B, max_pages] int32
    max_len: int  # a static bound on seq_lens (the graph bucket)
    kv_idx: torch.Tensor | None = None  # [B, max_len] int64 (SDPA path)
    mask: torch.Tensor | None = None  # [B, 1, 1, max_len] additive (SDPA path)


class PagedKV:
    """KV storage for `num_pages` pages of `page_size` token positions, per layer."""

    def __init__(
        self,
        num_layers: int,
        num_pages: int,
        page_size: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        use_triton: bool = False,
    ) -> None:
        shape = (num_layers, num_pages * page_size, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_pages = num_pages
        self.page_size = page_size
        self.use_triton = use_triton
        self.plan: PrefillPlan | DecodePlan | None = None

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def attend(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor | None,
        value: torch.Tensor | None,
        scaling: float | None,
    ) -> torch.Tensor:
        """query [B, Hq, T, D], key/value [B, Hkv, T, D] → attention output [B, T, Hq, D]. With
        key/value None the caller already wrote them at the plan's `write_slots` (the fused
        projections do, inside their q/k-norm + RoPE kernel: projections.qk_rope_store)."""
        plan = self.plan
        kc, vc = self.k[layer], self.v[layer]
        batch, q_heads, t, dim = query.shape
        kv_heads = kc.shape[1]
        rep = q_heads // kv_heads
        scale = scaling if scaling is not None else dim**-0.5
        if isinstance(plan, DecodePlan):
            if key is not None and value is not None:
                kc.index_copy_(0, plan.write_slots, key[:, :, 0])
                vc.index_copy_(0, plan.write_slots, value[:, :, 0])
            if self.use_triton:
                from gateway.engines.native.paged_attn import paged_decode_triton

                out = paged_decode_triton(
                    query[:, :, 0],
                    kc,
                    vc,
                    plan.page_table,
                    plan.seq_lens,
                    self.page_size,
                    scale,
                    plan.max_len,
                )
                return out[:, None]
            assert plan.kv_idx is not None and plan.mask is not None
            keys = kc[plan.kv_idx].transpose(1, 2)  # [B, Hkv, L, D]
            values = vc[plan.kv_idx].transpose(1, 2)
            # fold the `rep` query heads sharing a kv head into the query axis: no K/V repeat
            q = query.reshape(batch, kv_heads, rep, dim)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=plan.mask, scale=scale)
            return out.reshape(batch, q_heads, 1, dim).transpose(1, 2)
        if isinstance(plan, PrefillPlan):
            if key is not None and value is not None:
                kc.index_copy_(0, plan.write_slots, key.transpose(1, 2).reshape(batch * t, kv_heads, dim))
                vc.index_copy_(0, plan.write_slots, value.transpose(1, 2).reshape(batch * t, kv_heads, dim))
            if (
                self.use_triton
                and plan.page_table is not None
                and plan.cached is not None
                and plan.lengths is not None
            ):
                from gateway.engines.native.paged_attn import paged_prefill_triton

                packed = None
                if plan.starts is not None and plan.prog_row is not None and plan.prog_tile is not None:
                    packed = (plan.starts, plan.prog_row, plan.prog_tile)
                return paged_prefill_triton(
                    query, kc, vc, plan.page_table, plan.cached, plan.lengths, self.page_size, scale,
                    packed=packed,
                )  # fmt: skip
            assert plan.kv_idx is not None and plan.mask is not None
            unpack = plan.unpack_idx is not None and plan.pack_idx is not None
            if unpack:  # packed rows: unpack, attend, pack
                batch, t = plan.unpack_idx.shape
                query = query[0][:, plan.unpack_idx].transpose(0, 1)  # [B, Hq, T, D]
            keys = kc[plan.kv_idx].transpose(1, 2)  # [B, Hkv, Lk, D]
            values = vc[plan.kv_idx].transpose(1, 2)
            if rep > 1:
                keys = keys.repeat_interleave(rep, dim=1)
                values = values.repeat_interleave(rep, dim=1)
            out = F.scaled_dot_product_attention(query, keys, values, attn_mask=plan.mask, scale=scale)
            out = out.transpose(1, 2)  # [B, T, Hq, D]
            if unpack:
                out = out.reshape(batch * t, q_heads, dim)[plan.pack_idx][None]  # [1, N, Hq, D]
            return out
        raise RuntimeError("PagedKV.attend called without a plan")


def slot_index(page_table: torch.Tensor, positions: torch.Tensor, page_size: int) -> torch.Tensor:
    """Pool slots of `positions` ([B, N] int64) in the rows of `page_table` ([B, max_pages])."""
    pages = page_table.long().gather(1, positions // page_size)
    return pages * page_size + positions % page_size


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """The registered attention function: delegates to the PagedKV bound to the attention module."""
    kv: PagedKV = module.forge_kv  # type: ignore[assignment]
    return kv.attend(module.layer_idx, query, key, value, scaling), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, paged_attention_forward)


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention modules of a decoder (those with a `layer_idx` and q/k/v projections)."""
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "k_proj")]
    if not mods:
        raise ValueError(f"{type(model).__name__}: found no attention modules with layer_idx/k_proj")
    return mods


def bind(model: torch.nn.Module, kv: PagedKV) -> None:
    """Route `model`'s attention through `kv` (switches its attn implementation to ATTN_NAME)."""
    register()
    for mod in attention_modules(model):
        mod.forge_kv = kv
    model.set_attn_implementation(ATTN_NAME)
    if model.config._attn_implementation != ATTN_NAME:
        raise RuntimeError(f"could not route {type(model).__name__}'s attention through {ATTN_NAME}")


def decode_mask(seq_lens: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, 1, L] additive mask: key j visible to row b iff j < seq_lens[b]."""
    keys = torch.arange(length, device=seq_lens.device)
    visible = keys[None, :] < seq_lens[:, None]
    zero = torch.zeros((), dtype=dtype, device=seq_lens.device)
    neg = torch.full((), float("-inf"), dtype=dtype, device=seq_lens.device)
    return torch.where(visible, zero, neg).view(-1, 1, 1, length)


def prefill_mask(
    cached: torch.Tensor, lengths: torch.Tensor, t: int, lk: int, dtype: torch.dtype
) -> torch.Tensor:
    """[B, 1, T, Lk] additive mask: key j visible to new token i of row b iff j <= cached[b] + i
    and j < cached[b] + lengths[b] (a padding query still sees one key: no all -inf row)."""
    q = torch.arange(t, device=cached.device)
    k = torch.arange(lk, device=cached.device)
    causal = k[None, None, :] <= (cached[:, None, None] + q[None, :, None])  # [B, T, Lk]
    valid = k[None, :] < (cached + lengths)[:, None]  # [B, Lk]
    visible = causal & valid[:, None, :]
    zero = torch.zeros((), dtype=dtype, device=cached.device)
    neg = torch.full((), float("-inf"), dtype=dtype, device=cached.device)
    return torch.where(visible, zero, neg).unsqueeze(1)
