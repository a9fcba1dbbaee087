"""Paged decode and prefill attention: the torch references against dense attention, and the Triton
kernels under triton's interpreter (TRITON_INTERPRET=1, numpy on the CPU; skipped when triton is not
installed), prefill also through PagedKV.attend against its SDPA path. The compiled kernels are
checked on a GPU by scripts/device/paged_attn_check.py."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gateway.engines.native import paged_attn
from gateway.engines.native.paged_attn import (
    choose_num_splits,
    kv_bytes_read,
    paged_decode_reference,
    paged_prefill_reference,
)
from tests.helpers.interp import run_interp_child


def paged_case(lens, kv_heads, rep, dim, page_size, dtype, seed=0, max_len=None):
    """Dense per-row K/V scattered into a shuffled page pool; returns both views of the same data.

    Every slot no row may read (page 0, the scratch page where unused table entries point, and the
    tail of each row's last page) holds NaN: a key that is read but should not be shows in the result.
    """
    g = torch.Generator().manual_seed(seed)
    batch = len(lens)
    max_len = max_len or max(lens)
    max_pages = -(-max_len // page_size)
    num_pages = batch * max_pages + 1 + 3
    k_cache = torch.full((num_pages * page_size, kv_heads, dim), float("nan"), dtype=dtype)
    v_cache = torch.full((num_pages * page_size, kv_heads, dim), float("nan"), dtype=dtype)
    perm = (torch.randperm(num_pages - 1, generator=g) + 1).int()
    table = torch.zeros(batch + 2, max_pages, dtype=torch.int32)  # two spare rows of page 0
    dense_k, dense_v = [], []
    for b, n in enumerate(lens):
        pages = -(-n // page_size)
        table[b, :pages] = perm[b * max_pages : b * max_pages + pages]
        k = torch.randn(n, kv_heads, dim, generator=g).to(dtype)
        v = torch.randn(n, kv_heads, dim, generator=g).to(dtype)
        pos = torch.arange(n)
        slots = table[b, pos // page_size].long() * page_size + pos % page_size
        k_cache[slots] = k
        v_cache[slots] = v
        dense_k.append(k)
        dense_v.append(v)
    q = torch.randn(batch, kv_heads * rep, dim, generator=g).to(dtype)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    return q, k_cache, v_cache, table, seq_lens, dense_k, dense_v


def dense_attention(q, dense_k, dense_v, scale):
    """Naive per-row, per-head attention over the row's keys, fp64."""
    batch, q_heads, _ = q.shape
    kv_heads = dense_k[0].shape[1]
    rep = q_heads // kv_heads
    out = torch.empty(q.shape, dtype=torch.float64)
    for b in range(batch):
        for h in range(q_heads):
            k = dense_k[b][:, h // rep].double()  # [n, D]
            v = dense_v[b][:, h // rep].double()
            s = k @ q[b, h].double() * scale
            w = torch.exp(s - s.max())
            out[b, h] = (w / w.sum()) @ v
    return out


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize(
    "lens,kv_heads,rep,dim,page_size",
    [
        ([1, 37, 16, 100], 2, 2, 64, 16),
        ([5, 64], 1, 8, 128, 16),
        ([3, 9, 1], 4, 1, 64, 4),
        ([33, 2], 2, 3, 32, 1),
        ([70, 130], 2, 4, 64, 64),
    ],
)
def test_reference_matches_dense_attention(lens, kv_heads, rep, dim, page_size):
    q, kc, vc, table, seq_lens, dk, dv = paged_case(lens, kv_heads, rep, dim, page_size, torch.float32)
    scale = 1 / math.sqrt(dim)
    out = paged_decode_reference(q, kc, vc, table, seq_lens, page_size, scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, dense_attention(q, dk, dv, scale)) < 1e-6


def test_reference_bf16_computes_in_fp32():
    q, kc, vc, table, seq_lens, dk, dv = paged_case([40, 7], 2, 2, 64, 16, torch.bfloat16)
    out = paged_decode_reference(q, kc, vc, table, seq_lens, 16, 0.125)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, dense_attention(q, dk, dv, 0.125)) < 5e-3  # bf16 output rounding only


def test_kv_bytes_read():
    assert kv_bytes_read(torch.tensor([1, 3], dtype=torch.int32), 8, 128, 2) == 2 * 4 * 8 * 128 * 2
    assert kv_bytes_read([10], 2, 64, 4) == 2 * 10 * 2 * 64 * 4


@pytest.mark.parametrize("batch", [1, 3, 16, 64, 128, 512])
@pytest.mark.parametrize("max_len", [16, 100, 384, 4096, 32768])
def test_split_choice_covers_max_len_and_fills_the_gpu(batch, max_len):
    block_n = 64
    splits = choose_num_splits(batch, 8, max_len, block_n, sm_count=132)
    chunk = paged_attn._chunk_len(max_len, splits, block_n)
    assert splits >= 1 and chunk % block_n == 0 and chunk * splits >= max_len
    assert chunk * (splits - 1) < max_len  # no split that can never hold a key
    floor = -(-min(256, max_len) // block_n) * block_n  # the shortest chunk worth a split
    assert chunk <= max(1024, floor)  # long rows are split even when B·Hkv fills the GPU
    if (
        chunk > floor
    ):  # chunks longer than the floor only once about 2 programs per SM (chunks round to BLOCK_N)
        assert batch * 8 * splits >= 0.9 * 2 * 132


def test_row_chunk_floor_splits_short_rows_only_while_sms_idle():
    # 16 rows x 8 kv heads = 128 programs < 2 x 132 SMs: a short row spreads over 256-key chunks
    assert paged_attn.row_chunk_floor(16, 8, 1024, sm_count=132) == paged_attn.MIN_ROW_CHUNK
    assert paged_attn.row_chunk_floor(16, 8, 128, sm_count=132) == 128  # never above the grid's chunk
    # 128 x 8 = 1024 programs: every row keeps the grid's chunk (a fixed split, no extra partials)
    assert paged_attn.row_chunk_floor(128, 8, 1024, sm_count=132) == 1024
    assert paged_attn.row_chunk_floor(33, 8, 512, sm_count=132) == 512


# ---- the Triton kernel under triton's interpreter (a child process: tests/helpers/interp.py) -------

INTERP_CASES = {
    # id: (lens, kv_heads, rep, dim, page_size, num_splits, max_len)
    "default-splits-D128": ([1, 130, 64, 200], 2, 2, 128, 16, None, 256),
    "one-split-final-output": ([1, 130, 64, 200], 2, 2, 64, 16, 1, 200),
    "odd-splits-rep8-page4": ([300, 5], 1, 8, 64, 4, 5, 320),
    "rep1-pages-over-block": ([77, 3, 129], 2, 1, 64, 64, 3, 129),
    "rep3-page1-idle-splits": ([50, 17], 2, 3, 64, 1, 7, 64),
    "non-contiguous-q": ([40, 90], 2, 2, 64, 16, 2, 128),
    # rows shorter than the grid's max_len divide their keys among its splits (chunks >= 256 keys)
    "short-rows-long-grid": ([130, 64, 5, 1100, 300, 1], 2, 2, 64, 16, 4, 2048),
    # 33 rows x 8 kv heads fill 2 x 132 SMs: rows keep the grid's 512-key chunk (row_chunk_floor)
    "full-grid-fixed-chunks": ([7 * i + 1 for i in range(31)] + [1100, 2000], 8, 2, 32, 16, 4, 2048),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _interp_case(mod, case_id: str, dtype_name: str) -> dict:
    lens, kv_heads, rep, dim, page_size, num_splits, max_len = INTERP_CASES[case_id]
    dtype = DTYPES[dtype_name]
    q, kc, vc, table, seq_lens, dk, dv = paged_case(
        lens, kv_heads, rep, dim, page_size, dtype, max_len=max_len
    )
    scale = 1 / math.sqrt(dim)
    if case_id == "non-contiguous-q":  # [B, Hq, T, D] as an attention module hands it: take T=1
        wide = torch.randn(q.shape[0], q.shape[1], 3, dim).to(dtype)
        wide[:, :, 1] = q
        q = wide[:, :, 1]
        assert not q.is_contiguous()
        out = mod.paged_decode_triton(q, kc, vc, table, seq_lens, page_size, scale, max_len, num_splits)
        given = True
    else:
        buf = torch.full_like(q, float("nan"))
        out = mod.paged_decode_triton(
            q, kc, vc, table, seq_lens, page_size, scale, max_len, num_splits, out=buf
        )
        given = out is buf
    ref = paged_decode_reference(q, kc, vc, table, seq_lens, page_size, scale)
    return dict(
        finite=bool(torch.isfinite(out).all()),
        shape_ok=out.shape == q.shape and out.dtype == dtype and out.is_contiguous() and given,
        err_ref=rel_err(out, ref),
        err_dense=rel_err(out, dense_attention(q, dk, dv, scale)),
    )


def _interp_main() -> None:
    """The child's entry point (TRITON_INTERPRET=1 set before any import)."""
    assert paged_attn._interpreted(), "kernels are not interpreted"
    res = {f"{c}/{d}": _interp_case(paged_attn, c, d) for c in INTERP_CASES for d in DTYPES}
    print("RESULTS " + json.dumps(res))


@pytest.fixture(scope="module")
def interp_results() -> dict:
    return run_interp_child(__file__, "_interp_main")


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case_id", list(INTERP_CASES))
def test_triton_kernel_on_interpreter(interp_results, case_id, dtype_name):
    r = interp_results[f"{case_id}/{dtype_name}"]
    tol = 1e-5 if dtype_name == "fp32" else 1e-2
    assert r["finite"] and r["shape_ok"], r
    assert r["err_ref"] < tol and r["err_dense"] < tol, r


def test_triton_rejects_bad_arguments():
    if paged_attn.triton is None:
        pytest.skip("triton is not installed")
    q, kc, vc, table, seq_lens, _, _ = paged_case([4], 2, 2, 64, 16, torch.float32)
    call = paged_attn.paged_decode_triton  # the checks run before any launch: fine on the CPU
    with pytest.raises(ValueError, match="int32"):
        call(q, kc, vc, table, seq_lens.long(), 16, 0.125, 16)
    with pytest.raises(ValueError, match="page_size"):
        call(q, kc, vc, table, seq_lens, 12, 0.125, 16)
    with pytest.raises(ValueError, match="dtype"):
        call(q.double(), kc, vc, table, seq_lens, 16, 0.125, 16)
    with pytest.raises(ValueError, match="multiple"):
        call(q[:, :3], kc, vc, table, seq_lens, 16, 0.125, 16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case_id", list(INTERP_CASES))
def test_triton_kernel_compiled_on_cuda(case_id, dtype):
    if paged_attn.triton is None:
        pytest.skip("triton is not installed")
    lens, kv_heads, rep, dim, page_size, num_splits, max_len = INTERP_CASES[case_id]
    q, kc, vc, table, seq_lens, dk, dv = paged_case(
        lens, kv_heads, rep, dim, page_size, dtype, max_len=max_len
    )
    q, kc, vc, table, seq_lens = (t.cuda() for t in (q, kc, vc, table, seq_lens))
    scale = 1 / math.sqrt(dim)
    out = paged_attn.paged_decode_triton(q, kc, vc, table, seq_lens, page_size, scale, max_len, num_splits)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel_err(out.cpu(), dense_attention(q.cpu(), dk, dv, scale)) < tol


# ---- prefill ---------------------------------------------------------------------------------------


def prefill_case(cached, lengths, kv_heads, rep, dim, page_size, dtype, t=None, seed=0):
    """Rows of cached[b] + lengths[b] keys in a shuffled NaN-poisoned pool (paged_case) and new-token
    queries [B, Hq, T, D] laid out as an attention module hands them (a [B, T, Hq, D] transposed)."""
    totals = [c + n for c, n in zip(cached, lengths, strict=True)]
    _, kc, vc, table, _, dk, dv = paged_case(totals, kv_heads, rep, dim, page_size, dtype, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    t = t or max(lengths)
    q = torch.randn(len(cached), t, kv_heads * rep, dim, generator=g).to(dtype).transpose(1, 2)
    return (
        q,
        kc,
        vc,
        table,
        torch.tensor(cached, dtype=torch.int64),
        torch.tensor(lengths, dtype=torch.int32),
        dk,
        dv,
    )


def dense_prefill(q, dense_k, dense_v, cached, lengths, scale):
    """Naive per-row, per-head causal attention of the new tokens over the row's keys, fp64;
    [B, T, Hq, D], padding queries 0."""
    batch, q_heads, t, _ = q.shape
    rep = q_heads // dense_k[0].shape[1]
    out = torch.zeros(batch, t, q_heads, q.shape[-1], dtype=torch.float64)
    for b in range(batch):
        c, n = int(cached[b]), int(lengths[b])
        for h in range(q_heads):
            k = dense_k[b][:, h // rep].double()  # [c + n, D]
            v = dense_v[b][:, h // rep].double()
            for i in range(n):
                s = k[: c + i + 1] @ q[b, h, i].double() * scale
                w = torch.exp(s - s.max())
                out[b, i, h] = (w / w.sum()) @ v[: c + i + 1]
    return out


def valid_rows(lengths, t):
    return torch.arange(t)[None, :] < lengths.long()[:, None]  # [B, T]


@pytest.mark.parametrize(
    "cached,lengths,kv_heads,rep,dim,page_size",
    [
        ([0, 0], [5, 12], 2, 2, 32, 16),
        ([13, 40, 0], [7, 1, 20], 2, 1, 32, 4),
        ([30, 3], [4, 9], 1, 4, 64, 1),
    ],
)
def test_prefill_reference_matches_dense_attention(cached, lengths, kv_heads, rep, dim, page_size):
    q, kc, vc, table, c, n, dk, dv = prefill_case(
        cached, lengths, kv_heads, rep, dim, page_size, torch.float32
    )
    scale = 1 / math.sqrt(dim)
    out = paged_prefill_reference(q, kc, vc, table, c, n, page_size, scale)
    ref = dense_prefill(q, dk, dv, c, n, scale)
    assert out.shape == ref.shape and out.dtype == q.dtype
    assert (out[~valid_rows(n, q.shape[2])] == 0).all()
    assert rel_err(out, ref) < 1e-6
    # the causal bound matters: one key more or less per query changes the result
    shifted = dense_prefill(q, dk, dv, c + 1, n, scale) if max(lengths) > 1 else ref
    assert max(lengths) == 1 or rel_err(shifted, ref) > 1e-3


PREFILL_CASES = {
    # id: (cached, lengths, kv_heads, rep, dim, page_size, T, block_m, block_n)
    "cached0-mixed-padding": ([0, 0, 0], [20, 7, 1], 2, 2, 64, 16, 24, None, None),
    "prefix-unaligned-rep2": ([37, 5, 100], [9, 30, 3], 2, 2, 64, 16, 32, None, None),
    "rep1-page4-small-blocks": ([13, 0, 50], [19, 33, 6], 2, 1, 32, 4, 40, 16, 16),
    "rep2-D128-tiles-page-cross": ([70, 3], [40, 17], 1, 2, 128, 16, 40, 32, 16),
    "rep3-page1-split-token": ([9, 30], [11, 2], 1, 3, 32, 1, 12, 16, 16),
}
KV_ATTEND_CASE = ([21, 0, 64], [10, 25, 3], 2, 2, 64, 16)  # cached, lengths, kv_heads, rep, dim, page


def _prefill_interp_case(case_id: str, dtype_name: str) -> dict:
    cached, lengths, kv_heads, rep, dim, page_size, t, block_m, block_n = PREFILL_CASES[case_id]
    dtype = DTYPES[dtype_name]
    q, kc, vc, table, c, n, dk, dv = prefill_case(cached, lengths, kv_heads, rep, dim, page_size, dtype, t=t)
    scale = 1 / math.sqrt(dim)
    buf = torch.full((q.shape[0], t, q.shape[1], dim), float("nan"), dtype=dtype)
    out = paged_attn.paged_prefill_triton(
        q, kc, vc, table, c, n, page_size, scale, out=buf, block_m=block_m, block_n=block_n
    )
    valid = valid_rows(n, t)
    ref = paged_prefill_reference(q, kc, vc, table, c, n, page_size, scale)
    return dict(
        finite=bool(torch.isfinite(out).all()),  # padding queries included: every element written
        shape_ok=out is buf,
        err_ref=rel_err(out[valid], ref[valid]),
        err_dense=rel_err(out[valid], dense_prefill(q, dk, dv, c, n, scale)[valid]),
    )


def _prefill_packed_case(case_id: str, dtype_name: str) -> dict:
    """The same rows packed into one token axis (8 padding tokens after them), tables from
    packed_tiles: each row's valid tokens equal the reference, the padding tokens come out 0."""
    cached, lengths, kv_heads, rep, dim, page_size, t, block_m, block_n = PREFILL_CASES[case_id]
    dtype = DTYPES[dtype_name]
    q, kc, vc, table, c, n, dk, dv = prefill_case(cached, lengths, kv_heads, rep, dim, page_size, dtype, t=t)
    scale = 1 / math.sqrt(dim)
    total = sum(lengths)
    packed_q = torch.cat([q[b, :, : lengths[b]] for b in range(len(lengths))] + [q[0, :, :8] * 0 + 7], dim=1)
    starts = torch.tensor([sum(lengths[:b]) for b in range(len(lengths))], dtype=torch.int64)
    bm = block_m or paged_attn.default_prefill_blocks(dim, dtype)[0]
    progs = paged_attn.packed_programs(total + 8, len(lengths), rep, bm)
    rows, tiles = paged_attn.packed_tiles(lengths, rep, bm, progs)
    out = paged_attn.paged_prefill_triton(
        packed_q[None], kc, vc, table, c, n, page_size, scale, block_m=block_m, block_n=block_n,
        packed=(starts, torch.tensor(rows), torch.tensor(tiles)),
    )  # fmt: skip

    def rows_of(padded: torch.Tensor) -> torch.Tensor:  # [B, T, Hq, D] → each row's valid tokens
        return torch.cat([padded[b, : lengths[b]] for b in range(len(lengths))])

    got = torch.cat([out[0, starts[b] : starts[b] + lengths[b]] for b in range(len(lengths))])
    return dict(
        finite=bool(torch.isfinite(out).all()),
        shape_ok=out.shape == (1, total + 8, q.shape[1], dim) and bool((out[0, total:] == 0).all()),
        err_ref=rel_err(got, rows_of(paged_prefill_reference(q, kc, vc, table, c, n, page_size, scale))),
        err_dense=rel_err(got, rows_of(dense_prefill(q, dk, dv, c, n, scale))),
    )


def _kv_attend_case(dtype_name: str) -> dict:
    """PagedKV.attend's prefill, the Triton path against the SDPA path, plans built as the runner does."""
    from gateway.engines.native import kv as kvmod

    cached, lengths, kv_heads, rep, dim, page_size = KV_ATTEND_CASE
    dtype = DTYPES[dtype_name]
    g = torch.Generator().manual_seed(7)
    b, t = len(cached), max(lengths)
    max_pages = -(-max(c + x for c, x in zip(cached, lengths, strict=True)) // page_size)
    num_pages = b * max_pages + 1
    table = torch.zeros(b, max_pages, dtype=torch.int32)
    table[:] = (torch.randperm(num_pages - 1, generator=g)[: b * max_pages] + 1).view(b, max_pages).int()
    kv = kvmod.PagedKV(1, num_pages, page_size, kv_heads, dim, dtype, "cpu", use_triton=True)
    kv.k.copy_(torch.randn(kv.k.shape, generator=g).to(dtype))  # the cached prefixes (and junk)
    kv.v.copy_(torch.randn(kv.v.shape, generator=g).to(dtype))
    offsets = torch.tensor(cached, dtype=torch.int64)
    lens = torch.tensor(lengths, dtype=torch.int64)
    steps = torch.arange(t)
    positions = offsets[:, None] + steps[None, :]
    valid = steps[None, :] < lens[:, None]
    real = kvmod.slot_index(table, torch.where(valid, positions, 0), page_size)
    scratch = (steps % page_size).expand(b, t)
    lk = int((offsets + lens).max())
    keys = torch.arange(lk).expand(b, lk)
    write = torch.where(valid, real, scratch).reshape(-1)
    query = torch.randn(b, t, kv_heads * rep, dim, generator=g).to(dtype).transpose(1, 2)
    key = torch.randn(b, t, kv_heads, dim, generator=g).to(dtype).transpose(1, 2)
    value = torch.randn(b, t, kv_heads, dim, generator=g).to(dtype).transpose(1, 2)
    kv.plan = kvmod.PrefillPlan(write_slots=write, page_table=table, cached=offsets, lengths=lens)
    out_triton = kv.attend(0, query, key, value, None)
    kv.plan = kvmod.PrefillPlan(
        write_slots=write,
        kv_idx=kvmod.slot_index(table, keys, page_size),
        mask=kvmod.prefill_mask(offsets, lens, t, lk, dtype),
    )
    out_sdpa = kv.attend(0, query, key, value, None)  # writes the same keys again
    return dict(
        finite=bool(torch.isfinite(out_triton).all()),
        shape_ok=out_triton.shape == out_sdpa.shape == (b, t, kv_heads * rep, dim),
        err_ref=rel_err(out_triton[valid], out_sdpa[valid]),
    )


def _prefill_interp_main() -> None:
    """The prefill child's entry point (TRITON_INTERPRET=1 set before any import)."""
    assert paged_attn._interpreted(), "kernels are not interpreted"
    res = {f"{c}/{d}": _prefill_interp_case(c, d) for c in PREFILL_CASES for d in DTYPES}
    res.update({f"packed-{c}/{d}": _prefill_packed_case(c, d) for c in PREFILL_CASES for d in DTYPES})
    res.update({f"kv-attend/{d}": _kv_attend_case(d) for d in DTYPES})
    print("RESULTS " + json.dumps(res))


@pytest.fixture(scope="module")
def prefill_interp_results() -> dict:
    return run_interp_child(__file__, "_prefill_interp_main")


@pytest.mark.parametrize("layout", ["", "packed-"], ids=["padded", "packed"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case_id", list(PREFILL_CASES))
def test_prefill_kernel_on_interpreter(prefill_interp_results, case_id, dtype_name, layout):
    r = prefill_interp_results[f"{layout}{case_id}/{dtype_name}"]
    tol = 1e-5 if dtype_name == "fp32" else 1e-2
    assert r["finite"] and r["shape_ok"], r
    assert r["err_ref"] < tol and r["err_dense"] < tol, r


def test_packed_tiles_cover_every_row_in_order():
    rows, tiles = paged_attn.packed_tiles([3, 0, 17], 2, 16, 8)
    assert rows == [0, 2, 2, 2, -1, -1, -1, -1] and tiles == [0, 0, 1, 2, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="grid"):
        paged_attn.packed_tiles([100], 2, 16, 4)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_kv_attend_prefill_triton_matches_sdpa(prefill_interp_results, dtype_name):
    r = prefill_interp_results[f"kv-attend/{dtype_name}"]
    tol = 1e-5 if dtype_name == "fp32" else 2e-2  # bf16: SDPA's own bf16 rounding on the other side
    assert r["finite"] and r["shape_ok"], r
    assert r["err_ref"] < tol, r


def test_prefill_rejects_bad_arguments():
    if paged_attn.triton is None:
        pytest.skip("triton is not installed")
    q, kc, vc, table, c, n, _, _ = prefill_case([3], [4], 2, 2, 64, 16, torch.float32)
    call = paged_attn.paged_prefill_triton  # the checks run before any launch: fine on the CPU
    with pytest.raises(ValueError, match="int32"):
        call(q, kc, vc, table.long(), c, n, 16, 0.125)
    with pytest.raises(ValueError, match="int32 or int64"):
        call(q, kc, vc, table, c.float(), n, 16, 0.125)
    with pytest.raises(ValueError, match="lengths"):
        call(q, kc, vc, table, c, n.repeat(2), 16, 0.125)
    with pytest.raises(ValueError, match="page_size"):
        call(q, kc, vc, table, c, n, 12, 0.125)
    with pytest.raises(ValueError, match="dtype"):
        call(q.double(), kc, vc, table, c, n, 16, 0.125)
    with pytest.raises(ValueError, match="multiple"):
        call(q[:, :3], kc, vc, table, c, n, 16, 0.125)
    with pytest.raises(ValueError, match=r"\[B, Hq, T, D\]"):
        call(q[:, :, 0], kc, vc, table, c, n, 16, 0.125)
    with pytest.raises(ValueError, match="block_m"):
        call(q, kc, vc, table, c, n, 16, 0.125, block_m=24)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case_id", list(PREFILL_CASES))
def test_prefill_kernel_compiled_on_cuda(case_id, dtype):
    if paged_attn.triton is None:
        pytest.skip("triton is not installed")
    cached, lengths, kv_heads, rep, dim, page_size, t, block_m, block_n = PREFILL_CASES[case_id]
    q, kc, vc, table, c, n, dk, dv = prefill_case(cached, lengths, kv_heads, rep, dim, page_size, dtype, t=t)
    scale = 1 / math.sqrt(dim)
    ref = dense_prefill(q, dk, dv, c, n, scale)
    valid = valid_rows(n, t)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for bm, bn in ((block_m, block_n), (None, None)):  # the case's blocks and the GPU defaults
        args = (t_.cuda() for t_ in (q, kc, vc, table, c, n))
        out = paged_attn.paged_prefill_triton(*args, page_size, scale, block_m=bm, block_n=bn).cpu()
        assert torch.isfinite(out).all()
        assert rel_err(out[valid], ref[valid]) < tol
