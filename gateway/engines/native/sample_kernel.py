"""The sampler of `sampling.sample` as two Triton kernels, for rows without top-k / top-p / min-p.

Each row's logits (any float dtype; math in fp32) are split into up to `max_splits` chunks of whole
blocks, so a batch of B rows runs B × chunks programs instead of B (one program walking a 151,936
vocabulary alone took ~114 µs at batch 128 on an H100: 3.7% of a decode step; 2026-12-07):
1. (grid B × chunks) per chunk a running max (first index of the maximum), Σ exp(x − max) for the
   log-prob's normaliser and Σ exp(x/T − max/T) for the draw, rescaled as the max moves (an online
   softmax);
2. (grid B) the chunks merged (the row's max, argmax, both normalisers); then (sampled rows only,
   T > 1e-5) the inverse-CDF draw of `sampling.draw`: u the same counter-based hash of (seed,
   position) as `sampling.row_uniform` (computed here in int64, bit for bit), the chunk whose running
   weight reaches u · total found from the chunk sums, and the row walked from that chunk only to the
   first token with weight whose running sum reaches u · total.
It writes out[0, b] = the token (as float64, exact) and out[1, b] = its log-prob under the raw
logits, so the caller reads both back with one copy. What it replaces at batch 128 × 151936 vocab
on an H100: ~1 ms of sampling per decode step in about 25 torch kernels (logsumexp alone 0.2 ms;
`scripts/device/profile_engine.py`, 5d1d098, 2026-12-06).

The tokens equal `sampling.sample`'s except where u · total falls within rounding of a boundary of
the cumulative sum (the two sum in different orders): tests/engines/test_sample_kernel.py compares
them under triton's interpreter. CUDA-graph safe (no host syncs, grid fixed by B).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU machines without triton: `sampling.sample` is the sampler there
    triton = None
    tl = None

if triton is not None:

    @triton.jit
    def _mix32(x):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
        x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
        return (x >> 16) ^ x

    @triton.jit
    def _sample_partials_kernel(
        LOGITS,
        TEMP,
        PART,
        ARG,
        stride_l,
        vocab,
        chunk,
        splits,
        BLOCK: tl.constexpr,
    ):
        """Pass 1 over chunk c of row b: its max, first argmax, Σ exp(x − max), Σ exp(x/T − max/T)."""
        b = tl.program_id(0)
        c = tl.program_id(1)
        row = LOGITS + b.to(tl.int64) * stride_l
        offs = tl.arange(0, BLOCK)
        temp = tl.maximum(tl.load(TEMP + b), 1e-5)
        m = tl.full([], float("-inf"), tl.float32)
        arg = tl.full([], 0, tl.int32)
        s_raw = tl.zeros([], tl.float32)
        s_t = tl.zeros([], tl.float32)
        lo = c * chunk
        hi = tl.minimum(lo + chunk, vocab)
        for v0 in range(lo, hi, BLOCK):
            idx = v0 + offs
            x = tl.load(row + idx, mask=idx < hi, other=float("-inf")).to(tl.float32)
            bm = tl.max(x, 0)
            barg = tl.min(tl.where(x == bm, idx, vocab), 0)
            m_new = tl.maximum(m, bm)
            arg = tl.where(bm > m, barg, arg)  # ties keep the earlier index (argmax: first maximum)
            s_raw = s_raw * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
            s_t = s_t * tl.exp(m / temp - m_new / temp) + tl.sum(tl.exp(x / temp - m_new / temp), 0)
            m = m_new
        base = b * splits + c
        n = tl.num_programs(0) * splits
        tl.store(PART + base, m)
        tl.store(PART + n + base, s_raw)
        tl.store(PART + 2 * n + base, s_t)
        tl.store(ARG + base, arg)

    @triton.jit
    def _sample_kernel(
        LOGITS,
        TEMP,
        SEED,
        POS,
        PART,
        ARG,
        OUT,
        stride_l,
        vocab,
        pos_offset,
        chunk,
        splits,
        BLOCK: tl.constexpr,
        BLOCK_S: tl.constexpr,
    ):
        """Merge row b's chunk partials (max, argmax, both normalisers), then draw: find the chunk
        whose running weight reaches u · total and walk the row from that chunk only."""
        b = tl.program_id(0)
        row = LOGITS + b.to(tl.int64) * stride_l
        offs = tl.arange(0, BLOCK)
        t_raw = tl.load(TEMP + b)
        sampled = t_raw > 1e-5  # sampling._GREEDY_EPS
        temp = tl.maximum(t_raw, 1e-5)  # as sampling.sample's clamp (greedy rows never use it)
        cs = tl.arange(0, BLOCK_S)
        c_ok = cs < splits
        n = tl.num_programs(0) * splits
        base = b * splits + cs
        m_c = tl.load(PART + base, mask=c_ok, other=float("-inf"))
        s_raw_c = tl.load(PART + n + base, mask=c_ok, other=0.0)
        s_t_c = tl.load(PART + 2 * n + base, mask=c_ok, other=0.0)
        arg_c = tl.load(ARG + base, mask=c_ok, other=vocab)
        m = tl.max(m_c, 0)
        arg = tl.min(tl.where(m_c == m, arg_c, vocab), 0)  # the first chunk holding the maximum
        live = m_c > float("-inf")  # a chunk of removed (-inf) tokens only has no weight
        s_raw = tl.sum(tl.where(live, s_raw_c * tl.exp(m_c - m), 0.0), 0)
        w_c = tl.where(live, s_t_c * tl.exp(m_c / temp - m / temp), 0.0)
        token = arg
        if sampled:
            seed = tl.load(SEED + b) & 0xFFFFFFFF
            pos = tl.load(POS + b) + pos_offset
            h = _mix32(seed ^ _mix32((pos * 0x27D4EB2D) & 0xFFFFFFFF))
            u = ((h >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)
            target = u * tl.sum(w_c, 0)
            before = tl.cumsum(w_c, 0) - w_c  # weight of the chunks before each one
            # the last chunk whose preceding weight is still below target (and which has weight)
            first = tl.max(tl.where((before < target) & (w_c > 0), cs, 0), 0)
            run = tl.sum(tl.where(cs < first, w_c, 0.0), 0)
            found = tl.full([], -1, tl.int32)
            v0 = first * chunk
            # from that chunk on (rounding can put the draw past its end): as a single walk would
            while (found < 0) & (v0 < vocab):
                idx = v0 + offs
                x = tl.load(row + idx, mask=idx < vocab, other=float("-inf")).to(tl.float32)
                w = tl.exp(x / temp - m / temp)
                cdf = run + tl.cumsum(w, 0)
                hit = tl.min(tl.where((cdf >= target) & (w > 0), idx, vocab), 0)
                found = tl.where(hit < vocab, hit, -1)
                run = run + tl.sum(w, 0)
                v0 += BLOCK
            # rounding can leave the last weighted token's running sum just below target: take it
            token = tl.where(found >= 0, found, arg)
        x_tok = tl.load(row + token).to(tl.float32)
        logprob = x_tok - (m + tl.log(s_raw))
        tl.store(OUT + b, token.to(tl.float64))
        tl.store(OUT + tl.num_programs(0) + b, logprob.to(tl.float64))


def sample_fused(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    position: torch.Tensor,
    *,
    position_offset: int = 0,
    out: torch.Tensor | None = None,
    block: int = 4096,
    max_splits: int = 16,
) -> torch.Tensor:
    """logits [B, V] (last dim contiguous), temperature [B] float32, seed / position [B] int64 (the
    position of the token drawn is position + position_offset) → out [2, B] float64: tokens, log-probs."""
    if triton is None:
        raise RuntimeError("sample_fused needs triton (pip install triton)")
    batch, vocab = logits.shape
    if logits.stride(-1) != 1:
        raise ValueError("logits must have a contiguous last dim")
    for name, t, dt in (("temperature", temperature, torch.float32), ("seed", seed, torch.int64),
                        ("position", position, torch.int64)):  # fmt: skip
        if t.dtype != dt or t.shape[0] < batch or not t.is_contiguous():
            raise ValueError(
                f"{name} must be a contiguous [>= B={batch}] {dt}, got {t.dtype} {tuple(t.shape)}"
            )
    if out is None:
        out = torch.empty((2, batch), dtype=torch.float64, device=logits.device)
    elif out.shape != (2, batch) or out.dtype != torch.float64 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous [2, {batch}] float64")
    if batch:
        splits = max(1, min(max_splits, -(-vocab // block)))
        per_split = -(-vocab // splits)
        chunk = -(-per_split // block) * block  # whole blocks per chunk
        splits = -(-vocab // chunk)
        part = torch.empty((3, batch, splits), dtype=torch.float32, device=logits.device)
        arg = torch.empty((batch, splits), dtype=torch.int32, device=logits.device)
        _sample_partials_kernel[(batch, splits)](
            logits, temperature, part, arg, logits.stride(0), vocab, chunk, splits, BLOCK=block, num_warps=8,
        )  # fmt: skip
        _sample_kernel[(batch,)](
            logits, temperature, seed, position, part, arg, out, logits.stride(0), vocab, position_offset,
            chunk, splits, BLOCK=block, BLOCK_S=max(2, triton.next_power_of_2(splits)), num_warps=8,
        )  # fmt: skip
    return out
