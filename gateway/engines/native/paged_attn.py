"""Attention over a paged KV pool: torch references, a split-K Triton decode kernel (flash-decoding)
and a Triton prefill kernel (flash attention over a cached prefix plus the new tokens).

Layout (per layer):
- `k_cache`, `v_cache`: [num_slots, Hkv, D], last dim contiguous; token slot = page * page_size + offset.
- `page_table`: int32 [max_rows, max_pages], last dim contiguous; row b's key j lives in slot
  `page_table[b, j // page_size] * page_size + j % page_size`. Unused entries hold page 0 (scratch).
- `seq_lens`: int32 [B] (B <= max_rows), keys visible to row b are positions [0, seq_lens[b]); >= 1.
- `q`: [B, Hq, D], Hq = Hkv * rep (GQA: query head h reads kv head h // rep); last dim contiguous.
- output [B, Hq, D] in q's dtype: softmax(q·kᵀ·scale)·v, accumulated in fp32.

`paged_decode_triton` launches a static grid (B, Hkv, splits) decided only by Python ints (B, Hkv,
`max_len`, block size), so one call per length bucket can be captured in a CUDA graph and replayed
with new `seq_lens` / `page_table` contents. Each row divides its own keys among the grid's splits
(chunk = ceil(seq_lens[b] / splits) in whole key blocks, at least `min_row_chunk` keys), so a
short row in a grid sized for `max_len` still spreads over several programs instead of leaving one
program to walk it alone (`min_row_chunk` is MIN_ROW_CHUNK while B·Hkv programs leave SMs idle, and
the grid's whole chunk once they fill them twice over: every row then has one program per chunk of
max_len / splits keys, as a fixed split would); a
program whose chunk starts at or past seq_lens[b] returns at once, and the combine step reads only
the splits that hold keys. No host syncs.

Kernel 1 (grid B × Hkv × splits): the `rep` query heads of one kv head, padded to a tl.dot M of 16
(masked), walk their chunk of keys BLOCK_N at a time (slots read through the page table), with an
online softmax in base 2; each split writes its normalised partial output and its log2-sum-exp.
With one split (of the grid, or of the row: seq_len <= its chunk) it writes the final output directly.
Kernel 2 (grid B × Hq) merges the splits of the rows that have several.

Notes for callers:
- q, k_cache, v_cache share one dtype (bf16 and fp32 are checked; fp16 should work, untested).
  fp32 uses exact (IEEE) dots; bf16 feeds the tensor cores bf16 (P is rounded to bf16 for P·V).
- Slots no row may read (page 0, the tail of a row's last page) are never loaded (masked loads):
  they may hold anything, NaN included. Keys past max_len are silently ignored (max_len must
  cover max(seq_lens)).
- Compiled variants: one per (dtype, rep, D, page_size, BLOCK_N, one split or several); the split
  count and max_len are runtime arguments, so new length buckets do not recompile.
- Under TRITON_INTERPRET=1 (set before triton is first imported) the kernels run on the CPU with
  numpy; there the bf16 dots are taken in fp32 (triton 3.9's interpreter multiplies bf16 bit
  patterns in tl.dot).

Prefill (`paged_prefill_triton`): q [B, Hq, T, D] (any strides, last dim contiguous) holds each row's
`lengths[b]` new tokens, right-padded to T; new token i of row b sits at position cached[b] + i and
sees keys [0, cached[b] + i] of the row's pages (its own included: the caller wrote the new keys and
values into the pool first). Output [B, T, Hq, D], contiguous, q's dtype. Grid
(ceil(T·rep / BLOCK_M), B, Hkv): a tile is BLOCK_M (token, head) pairs of one kv head, the `rep` query
heads of a token adjacent (flattened index token·rep + head), so each K/V block is loaded once for all
of them. Key blocks below the tile's first token's position are walked without a causal mask, the
rest (up to the tile's last valid token) with one; blocks past it are never read. Padding queries
(i >= lengths[b]) come out finite and meaningless: in a tile holding a valid token they attend as the
row's last valid token does; a tile of padding only writes zeros. No host syncs (cached/lengths are
read on the device); the page table must name a page for every position < cached[b] + lengths[b].

Triton is optional: without it this module still imports (the references and the byte count work on
any machine); the Triton entry points then raise.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU machines without triton: the reference still works
    triton = None
    tl = None

LOG2E = 1.4426950408889634
# the shortest chunk a row is split into (see _row_chunk): rows of ~250 keys at batch 128 ran 5%
# slower split into 64-key chunks than whole, and 128-320 keys 15% slower split at 256 than at the
# grid's 1024-key chunk (H100, 2026-12-07): once B·Hkv programs fill the SMs twice, the floor is the
# grid's chunk (`row_chunk_floor`)
MIN_ROW_CHUNK = 256


def paged_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    page_size: int,
    scale: float,
) -> torch.Tensor:
    """Plain torch, one row at a time (gathers the row's keys through the page table), fp32 math."""
    batch, q_heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    rep = q_heads // kv_heads
    out = torch.empty_like(q)
    lens = seq_lens.tolist()
    for b in range(batch):
        n = int(lens[b])
        pos = torch.arange(n, device=q.device)
        slots = page_table[b, pos // page_size].long() * page_size + pos % page_size
        k = k_cache[slots].float().repeat_interleave(rep, dim=1)  # [n, Hq, D]
        v = v_cache[slots].float().repeat_interleave(rep, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[b].float(), k) * scale
        probs = torch.softmax(scores, dim=-1)
        out[b] = torch.einsum("hn,nhd->hd", probs, v).to(q.dtype)
    return out


def paged_prefill_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    cached: torch.Tensor,
    lengths: torch.Tensor,
    page_size: int,
    scale: float,
) -> torch.Tensor:
    """Plain torch, one row at a time, fp32 math: q [B, Hq, T, D] → [B, T, Hq, D].

    New token i < lengths[b] of row b sees keys [0, cached[b] + i]; padding queries come out 0.
    """
    batch, q_heads, t, dim = q.shape
    kv_heads = k_cache.shape[1]
    rep = q_heads // kv_heads
    out = torch.zeros((batch, t, q_heads, dim), dtype=q.dtype, device=q.device)
    for b, (c, n) in enumerate(zip(cached.tolist(), lengths.tolist(), strict=True)):
        c, n = int(c), int(n)
        if n == 0:
            continue
        pos = torch.arange(c + n, device=q.device)
        slots = page_table[b, pos // page_size].long() * page_size + pos % page_size
        k = k_cache[slots].float().repeat_interleave(rep, dim=1)  # [c+n, Hq, D]
        v = v_cache[slots].float().repeat_interleave(rep, dim=1)
        scores = torch.einsum("htd,nhd->htn", q[b, :, :n].float(), k) * scale  # [Hq, n, c+n]
        visible = pos[None, :] <= c + torch.arange(n, device=q.device)[:, None]  # [n, c+n]
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[b, :n] = torch.einsum("htn,nhd->thd", probs, v).to(q.dtype)
    return out


def kv_bytes_read(seq_lens: torch.Tensor | Sequence[int], kv_heads: int, head_dim: int, itemsize: int) -> int:
    """The bandwidth floor: bytes of K and V one decode step must read per layer (sum of lengths × 2 × Hkv × D)."""
    total = int(seq_lens.sum().item()) if isinstance(seq_lens, torch.Tensor) else int(sum(seq_lens))
    return 2 * total * kv_heads * head_dim * itemsize


@functools.lru_cache(maxsize=16)
def _sm_count_cuda(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (cached; no sync); 132 (an H100) elsewhere (the interpreter)."""
    if device.type != "cuda":
        return 132
    return _sm_count_cuda(device.index if device.index is not None else torch.cuda.current_device())


def choose_num_splits(
    batch: int,
    kv_heads: int,
    max_len: int,
    block_n: int,
    sm_count: int = 132,
    min_chunk: int = 256,
    max_chunk: int = 1024,
) -> int:
    """Splits per (row, kv head): B·Hkv·splits reaches about 2×SMs programs, chunks of min_chunk..max_chunk keys.

    Depends only on Python ints (static per CUDA-graph bucket); the chunks are those of a row of
    max_len keys (shorter rows divide theirs among the same splits). The max_chunk cap keeps one long
    row from being the tail of a batch of mixed lengths (a program walks its chunk alone, at one SM's
    share of bandwidth); min_chunk bounds the partial-output traffic and the combine's work.
    """
    target = 2 * sm_count
    want = max(1, -(-target // (batch * kv_heads)))
    chunk = min(-(-max_len // want), max_chunk)
    chunk = max(chunk, min(min_chunk, max_len))
    chunk = -(-chunk // block_n) * block_n
    return max(1, -(-max_len // chunk))


def row_chunk_floor(batch: int, kv_heads: int, grid_chunk: int, sm_count: int = 132) -> int:
    """The fewest keys a row's split holds: MIN_ROW_CHUNK while the B·Hkv (row, kv head) pairs
    leave SMs idle (a short row then spreads over several programs), else the grid's chunk (every
    SM is busy twice over: splitting a short row only adds partial outputs to combine)."""
    return grid_chunk if batch * kv_heads >= 2 * sm_count else min(MIN_ROW_CHUNK, grid_chunk)


def _chunk_len(max_len: int, splits: int, block_n: int) -> int:
    chunk = -(-max_len // splits)
    return -(-chunk // block_n) * block_n


if triton is not None:

    @triton.jit
    def _row_chunk(seq_len, splits, min_chunk, BLOCK_N: tl.constexpr):
        """Keys per split of one row: its length over the grid's splits, in whole BLOCK_N blocks, at
        least `min_chunk` (a shorter chunk costs more in partial outputs and combining than it saves)."""
        chunk = tl.cdiv(tl.cdiv(seq_len, splits), BLOCK_N) * BLOCK_N
        return tl.maximum(chunk, min_chunk)

    @triton.jit
    def _paged_decode_split_kernel(
        Q,
        K,
        V,
        PT,
        SEQ,
        OUT,
        LSE,
        FINAL,
        stride_fb,
        stride_fh,
        stride_qb,
        stride_qh,
        stride_ks,
        stride_kh,
        stride_vs,
        stride_vh,
        stride_pt,
        stride_ob,
        stride_oh,
        stride_os,
        stride_lb,
        stride_lh,
        qk_scale,
        splits,
        max_len,
        min_chunk,
        REP: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        PAGE_SIZE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        ONE_SPLIT: tl.constexpr,
        DOT_PREC: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        seq_len = tl.minimum(tl.load(SEQ + b), max_len)
        chunk = _row_chunk(seq_len, splits, min_chunk, BLOCK_N)
        start = split * chunk
        if start >= seq_len:  # this split holds no keys of row b (the combine step skips it)
            return
        end = tl.minimum(start + chunk, seq_len)

        offs_m = tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        m_valid = offs_m < REP
        heads = kvh * REP + offs_m
        b64 = b.to(tl.int64)
        q = tl.load(
            Q + b64 * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
            mask=m_valid[:, None],
            other=0.0,
        )
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        pt_row = PT + b64 * stride_pt
        k_base = K + kvh * stride_kh
        v_base = V + kvh * stride_vh
        for n0 in range(start, end, BLOCK_N):
            pos = n0 + offs_n
            n_valid = pos < end
            page = tl.load(pt_row + pos // PAGE_SIZE, mask=n_valid, other=0)
            slot = page.to(tl.int64) * PAGE_SIZE + pos % PAGE_SIZE
            k = tl.load(
                k_base + slot[:, None] * stride_ks + offs_d[None, :], mask=n_valid[:, None], other=0.0
            )
            if UPCAST:  # triton's interpreter multiplies bf16 bit patterns in tl.dot: take fp32 there
                s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
            s = s * qk_scale  # [M, N], log2 units
            s = tl.where(n_valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every visited block has a valid key
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(
                v_base + slot[:, None] * stride_vs + offs_d[None, :], mask=n_valid[:, None], other=0.0
            )
            if UPCAST:
                pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        acc = acc / l_i[:, None]
        if ONE_SPLIT:
            o_ptrs = OUT + b64 * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
            tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=m_valid[:, None])
        elif seq_len <= chunk:  # the row's keys all sit in split 0: final output, no combine
            f_ptrs = FINAL + b64 * stride_fb + heads[:, None] * stride_fh + offs_d[None, :]
            tl.store(f_ptrs, acc.to(FINAL.dtype.element_ty), mask=m_valid[:, None])
        else:
            o_ptrs = OUT + b64 * stride_ob + heads[:, None] * stride_oh + split * stride_os + offs_d[None, :]
            tl.store(o_ptrs, acc, mask=m_valid[:, None])
            tl.store(LSE + b64 * stride_lb + heads * stride_lh + split, m_i + tl.log2(l_i), mask=m_valid)

    @triton.jit
    def _paged_decode_combine_kernel(
        PART,
        LSE,
        SEQ,
        OUT,
        stride_pb,
        stride_ph,
        stride_ps,
        stride_lb,
        stride_lh,
        stride_ob,
        stride_oh,
        splits,
        max_len,
        min_chunk,
        HEAD_DIM: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_S: tl.constexpr,
    ):
        b = tl.program_id(0)
        h = tl.program_id(1)
        seq_len = tl.minimum(tl.load(SEQ + b), max_len)
        chunk = _row_chunk(seq_len, splits, min_chunk, BLOCK_N)
        if seq_len <= chunk:  # one split: the split kernel wrote the output
            return
        used = tl.cdiv(seq_len, chunk)  # splits that hold keys (the rest were never written)
        offs_s = tl.arange(0, BLOCK_S)
        offs_d = tl.arange(0, HEAD_DIM)
        s_valid = offs_s < used
        b64 = b.to(tl.int64)
        lse = tl.load(LSE + b64 * stride_lb + h * stride_lh + offs_s, mask=s_valid, other=float("-inf"))
        w = tl.exp2(lse - tl.max(lse, 0))  # 0 for the unwritten splits (their lse loads as -inf)
        part = tl.load(
            PART + b64 * stride_pb + h * stride_ph + offs_s[:, None] * stride_ps + offs_d[None, :],
            mask=s_valid[:, None],
            other=0.0,
        )
        out = tl.sum(part * w[:, None], 0) / tl.sum(w, 0)
        tl.store(OUT + b64 * stride_ob + h * stride_oh + offs_d, out.to(OUT.dtype.element_ty))

    @triton.jit
    def _paged_prefill_block(
        acc,
        m_i,
        l_i,
        q,
        k_base,
        v_base,
        pt_row,
        n0,
        end,
        qpos,
        stride_ks,
        stride_vs,
        qk_scale,
        HEAD_DIM: tl.constexpr,
        PAGE_SIZE: tl.constexpr,
        BLOCK_N: tl.constexpr,
        MASKED: tl.constexpr,
        DOT_PREC: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        """One key block [n0, n0 + BLOCK_N) into the online softmax. MASKED: the block may hold keys
        past `end` (not loaded) or past some query's own position `qpos` (scored -inf)."""
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        pos = n0 + offs_n
        if MASKED:
            n_valid = pos < end
            page = tl.load(pt_row + pos // PAGE_SIZE, mask=n_valid, other=0)
        else:
            page = tl.load(pt_row + pos // PAGE_SIZE)
        slot = page.to(tl.int64) * PAGE_SIZE + pos % PAGE_SIZE
        k_ptrs = k_base + slot[:, None] * stride_ks + offs_d[None, :]
        v_ptrs = v_base + slot[:, None] * stride_vs + offs_d[None, :]
        if MASKED:
            k = tl.load(k_ptrs, mask=n_valid[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
        if UPCAST:  # triton's interpreter multiplies bf16 bit patterns in tl.dot: take fp32 there
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        s = s * qk_scale  # [M, N], log2 units
        if MASKED:  # pos <= qpos implies pos < end: unloaded keys are masked too
            s = tl.where(pos[None, :] <= qpos[:, None], s, float("-inf"))
        # finite: block 0 (always walked first) holds key 0, which every query sees
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs, mask=n_valid[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
        if UPCAST:
            pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        acc = acc * alpha[:, None] + pv
        return acc, m_new, l_i

    @triton.jit
    def _paged_prefill_kernel(
        Q,
        K,
        V,
        PT,
        CACHED,
        LENS,
        OUT,
        stride_qb,
        stride_qh,
        stride_qt,
        stride_ks,
        stride_kh,
        stride_vs,
        stride_vh,
        stride_pt,
        stride_ob,
        stride_ot,
        stride_oh,
        num_tokens,
        qk_scale,
        STARTS,
        PROG_ROW,
        PROG_TILE,
        REP: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        PAGE_SIZE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        DOT_PREC: tl.constexpr,
        UPCAST: tl.constexpr,
        PACKED: tl.constexpr,
    ):
        kvh = tl.program_id(2)
        if PACKED:  # rows packed one after another in q's token axis; a program's (row, tile) from tables
            pid = tl.program_id(0)
            b = tl.load(PROG_ROW + pid).to(tl.int32)
            if b < 0:  # past the last row's tiles
                return
            tile = tl.load(PROG_TILE + pid).to(tl.int32)
            start = tl.load(STARTS + b).to(tl.int64)
            qb = 0  # q and out hold one packed batch row
        else:
            tile = tl.program_id(0)
            b = tl.program_id(1)
            start = 0
            qb = b.to(tl.int64)
        b64 = b.to(tl.int64)
        cached = tl.load(CACHED + b).to(tl.int32)
        length = tl.load(LENS + b).to(tl.int32)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        flat = tile * BLOCK_M + offs_m  # token * REP + head within the kv head's group
        tok = flat // REP
        heads = kvh * REP + flat % REP
        if PACKED:  # the tokens past this row's length are the next row's
            m_valid = tok < length
        else:
            m_valid = tok < num_tokens
        o_ptrs = (
            OUT
            + qb * stride_ob
            + (start + tok[:, None]) * stride_ot
            + heads[:, None] * stride_oh
            + offs_d[None, :]
        )
        tok_lo = (tile * BLOCK_M) // REP
        if tok_lo >= length:  # padding only: zeros (finite, discarded by the caller)
            tl.store(o_ptrs, tl.zeros([BLOCK_M, HEAD_DIM], OUT.dtype.element_ty), mask=m_valid[:, None])
            return
        last = length - 1
        tok_hi = tl.minimum(tl.minimum((tile * BLOCK_M + BLOCK_M - 1) // REP, num_tokens - 1), last)
        qpos = cached + tl.minimum(tok, last)  # the last key each query sees (padding: the row's last)
        end = cached + tok_hi + 1  # keys past the tile's last valid token are never read
        full_end = ((cached + tok_lo + 1) // BLOCK_N) * BLOCK_N  # blocks every query of the tile sees whole

        q = tl.load(
            Q
            + qb * stride_qb
            + heads[:, None] * stride_qh
            + (start + tok[:, None]) * stride_qt
            + offs_d[None, :],
            mask=m_valid[:, None],
            other=0.0,
        )
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        pt_row = PT + b64 * stride_pt
        k_base = K + kvh * stride_kh
        v_base = V + kvh * stride_vh
        for n0 in range(0, full_end, BLOCK_N):
            acc, m_i, l_i = _paged_prefill_block(
                acc, m_i, l_i, q, k_base, v_base, pt_row, n0, end, qpos, stride_ks, stride_vs, qk_scale,
                HEAD_DIM, PAGE_SIZE, BLOCK_N, False, DOT_PREC, UPCAST,
            )  # fmt: skip
        for n0 in range(full_end, end, BLOCK_N):
            acc, m_i, l_i = _paged_prefill_block(
                acc, m_i, l_i, q, k_base, v_base, pt_row, n0, end, qpos, stride_ks, stride_vs, qk_scale,
                HEAD_DIM, PAGE_SIZE, BLOCK_N, True, DOT_PREC, UPCAST,
            )  # fmt: skip
        acc = acc / l_i[:, None]
        tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=m_valid[:, None])


def _interpreted() -> bool:
    """Whether the kernels were defined under TRITON_INTERPRET=1 (numpy on the CPU)."""
    return type(_paged_decode_split_kernel).__name__ == "InterpretedFunction"


def default_block_n(head_dim: int, page_size: int, dtype: torch.dtype) -> int:
    """Keys per inner iteration: 64 (bf16/fp16) or 32 (fp32) for D=128, 64 for D<=64; never below 16."""
    del page_size  # any power-of-two page size works with any BLOCK_N (slots are read per key)
    if dtype == torch.float32:
        return 32 if head_dim >= 128 else 64
    return 64


def _check_pool(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    q_heads: int,
    dim: int,
    page_size: int,
) -> None:
    """The checks both kernels' entry points share: pool shape vs q, head counts, sizes, dtypes, strides."""
    kv_heads, kdim = k_cache.shape[1], k_cache.shape[2]
    if kdim != dim or v_cache.shape != k_cache.shape:
        raise ValueError(f"k/v cache {tuple(k_cache.shape)}/{tuple(v_cache.shape)} vs q head_dim {dim}")
    if q_heads % kv_heads:
        raise ValueError(f"q heads {q_heads} not a multiple of kv heads {kv_heads}")
    if dim < 16 or dim & (dim - 1):
        raise ValueError(f"head_dim {dim} must be a power of two >= 16")
    if page_size < 1 or page_size & (page_size - 1):
        raise ValueError(f"page_size {page_size} must be a power of two")
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"dtype mismatch: q {q.dtype}, k {k_cache.dtype}, v {v_cache.dtype}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("page_table", page_table)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim")


def paged_decode_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    page_size: int,
    scale: float,
    max_len: int,
    num_splits: int | None = None,
    *,
    out: torch.Tensor | None = None,
    block_n: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """Split-K paged decode attention on CUDA; see the module docstring for the layout.

    `max_len` (>= max(seq_lens), a static bucket) and B fix the grid; `num_splits` defaults to
    `choose_num_splits`. `out`, when given, is a [B, Hq, D] tensor of q's dtype (last dim contiguous)
    written in place. CUDA-graph safe: scratch comes from torch.empty, no syncs, no data-dependent
    host control flow.
    """
    if triton is None:
        raise RuntimeError("paged_decode_triton needs triton (pip install triton)")
    batch, q_heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    _check_pool(q, k_cache, v_cache, page_table, q_heads, dim, page_size)
    if page_table.dtype != torch.int32 or seq_lens.dtype != torch.int32:
        raise ValueError("page_table and seq_lens must be int32")
    if seq_lens.shape != (batch,) or page_table.shape[0] < batch:
        raise ValueError(
            f"seq_lens {tuple(seq_lens.shape)} / page_table {tuple(page_table.shape)} vs B={batch}"
        )
    if not seq_lens.is_contiguous():
        raise ValueError("seq_lens must be contiguous")
    rep = q_heads // kv_heads
    if block_n is None:
        block_n = default_block_n(dim, page_size, q.dtype)
    sms = _sm_count(q.device)
    if num_splits is None:
        num_splits = choose_num_splits(batch, kv_heads, max_len, block_n, sms)
    num_splits = max(1, min(num_splits, -(-max_len // block_n)))
    chunk = _chunk_len(max_len, num_splits, block_n)
    num_splits = -(-max_len // chunk)  # no split that could never hold a key
    min_chunk = row_chunk_floor(batch, kv_heads, chunk, sms)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out {tuple(out.shape)} {out.dtype} must match q {tuple(q.shape)} {q.dtype}")
    if batch == 0:
        return out
    block_m = max(16, triton.next_power_of_2(rep))
    dot_prec = "ieee" if q.dtype == torch.float32 else "tf32"
    if num_splits == 1:
        part, lse = out, out  # the split kernel writes the final output; lse unused
        sp = (out.stride(0), out.stride(1), 0)
        sl = (0, 0)
    else:
        part = torch.empty((batch, q_heads, num_splits, dim), dtype=torch.float32, device=q.device)
        lse = torch.empty((batch, q_heads, num_splits), dtype=torch.float32, device=q.device)
        sp = (part.stride(0), part.stride(1), part.stride(2))
        sl = (lse.stride(0), lse.stride(1))
    _paged_decode_split_kernel[(batch, kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        page_table,
        seq_lens,
        part,
        lse,
        out,
        out.stride(0),
        out.stride(1),
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        page_table.stride(0),
        *sp,
        *sl,
        float(scale) * LOG2E,
        num_splits,
        max_len,
        min_chunk,
        REP=rep,
        HEAD_DIM=dim,
        PAGE_SIZE=page_size,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        ONE_SPLIT=num_splits == 1,
        DOT_PREC=dot_prec,
        UPCAST=_interpreted() and q.dtype != torch.float32,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if num_splits > 1:
        _paged_decode_combine_kernel[(batch, q_heads)](
            part,
            lse,
            seq_lens,
            out,
            *sp,
            *sl,
            out.stride(0),
            out.stride(1),
            num_splits,
            max_len,
            min_chunk,
            HEAD_DIM=dim,
            BLOCK_N=block_n,
            BLOCK_S=triton.next_power_of_2(num_splits),
            num_warps=4,
        )
    return out


def default_prefill_blocks(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of `paged_prefill_triton`; BLOCK_M counts
    (token, head) pairs, so a tile holds BLOCK_M / rep tokens."""
    if dtype == torch.float32:
        return (64, 32, 4, 2) if head_dim >= 128 else (64, 64, 4, 2)
    return (128, 64, 8, 2)


def paged_prefill_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    cached: torch.Tensor,
    lengths: torch.Tensor,
    page_size: int,
    scale: float,
    *,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Paged prefill attention on CUDA: q [B, Hq, T, D] → [B, T, Hq, D] (module docstring: layout).

    `packed` = (starts, prog_row, prog_tile): q is [1, Hq, N, D] with row b's tokens at
    [starts[b], starts[b] + lengths[b]) of its token axis (B = len(cached) rows), and program p
    computes tile prog_tile[p] of row prog_row[p] (-1: none), as `packed_tiles` lays them out (with
    this call's block_m); the output [1, N, Hq, D] holds zeros at tokens of no row.

    `cached`, `lengths`: [B] int32 or int64 on q's device (read there: no host sync). `page_table`
    int32 [>= B, max_pages], row b for q's row b. `out`, when given, is a [B, T, Hq, D] tensor of q's
    dtype (last dim contiguous) written in place. Block sizes default to `default_prefill_blocks`.
    """
    if triton is None:
        raise RuntimeError("paged_prefill_triton needs triton (pip install triton)")
    if q.dim() != 4 or k_cache.dim() != 3:
        raise ValueError(
            f"q {tuple(q.shape)} must be [B, Hq, T, D], k_cache {tuple(k_cache.shape)} [slots, Hkv, D]"
        )
    batch, q_heads, num_tokens, dim = q.shape
    if packed is not None:
        if batch != 1:
            raise ValueError(f"a packed q {tuple(q.shape)} must be [1, Hq, N, D]")
        batch = cached.shape[0] if cached.dim() == 1 else -1
    kv_heads = k_cache.shape[1]
    _check_pool(q, k_cache, v_cache, page_table, q_heads, dim, page_size)
    if page_table.dtype != torch.int32:
        raise ValueError(f"page_table must be int32, not {page_table.dtype}")
    for name, t in (("cached", cached), ("lengths", lengths)):
        if t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int32 or int64, not {t.dtype}")
        if t.shape != (batch,) or not t.is_contiguous():
            raise ValueError(f"{name} {tuple(t.shape)} must be a contiguous [B={batch}]")
    if page_table.dim() != 2 or page_table.shape[0] < batch:
        raise ValueError(f"page_table {tuple(page_table.shape)} must be [>= B={batch}, max_pages]")
    d_m, d_n, d_w, d_s = default_prefill_blocks(dim, q.dtype)
    block_m, block_n = block_m or d_m, block_n or d_n
    num_warps, num_stages = num_warps or d_w, num_stages or d_s
    for name, v in (("block_m", block_m), ("block_n", block_n)):
        if v < 16 or v & (v - 1):
            raise ValueError(f"{name} {v} must be a power of two >= 16")
    shape = (1 if packed is not None else batch, num_tokens, q_heads, dim)
    if out is None:
        out = (torch.zeros if packed is not None else torch.empty)(shape, dtype=q.dtype, device=q.device)
    elif out.shape != shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out {tuple(out.shape)} {out.dtype} must be {shape} {q.dtype}")
    if batch == 0 or num_tokens == 0:
        return out
    rep = q_heads // kv_heads
    if packed is not None:
        starts, prog_row, prog_tile = packed
        grid = (prog_row.shape[0], 1, kv_heads)
    else:
        starts = prog_row = prog_tile = cached  # unused
        grid = (triton.cdiv(num_tokens * rep, block_m), batch, kv_heads)
    _paged_prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        page_table,
        cached,
        lengths,
        out,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        page_table.stride(0),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        num_tokens,
        float(scale) * LOG2E,
        starts,
        prog_row,
        prog_tile,
        REP=rep,
        HEAD_DIM=dim,
        PAGE_SIZE=page_size,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST=_interpreted() and q.dtype != torch.float32,
        PACKED=packed is not None,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


def packed_tiles(
    lengths: Sequence[int], rep: int, block_m: int, programs: int
) -> tuple[list[int], list[int]]:
    """(prog_row, prog_tile) of a packed prefill: each row's ceil(len · rep / block_m) tiles in
    order, then -1 up to `programs` entries (a static grid: a CUDA graph replays any lengths)."""
    rows: list[int] = []
    tiles: list[int] = []
    for b, n in enumerate(lengths):
        count = -(-int(n) * rep // block_m)
        rows += [b] * count
        tiles += range(count)
    if len(rows) > programs:
        raise ValueError(f"{len(rows)} tiles do not fit a grid of {programs} programs")
    pad = programs - len(rows)
    return rows + [-1] * pad, tiles + [0] * pad


def packed_programs(num_tokens: int, rows: int, rep: int, block_m: int) -> int:
    """Programs that cover any packing of up to `rows` rows into `num_tokens` tokens."""
    return -(-num_tokens * rep // block_m) + rows


def paged_decode_splits(
    batch: int, kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype, device: torch.device | str
) -> int:
    """The split count `paged_decode_triton` picks by default on `device` (for reports)."""
    block_n = default_block_n(head_dim, 16, dtype)
    splits = choose_num_splits(batch, kv_heads, max_len, block_n, _sm_count(torch.device(device)))
    return -(-max_len // _chunk_len(max_len, splits, block_n))


__all__ = [
    "choose_num_splits",
    "kv_bytes_read",
    "paged_decode_reference",
    "paged_decode_splits",
    "paged_decode_triton",
    "packed_programs",
    "packed_tiles",
    "paged_prefill_reference",
    "paged_prefill_triton",
]
