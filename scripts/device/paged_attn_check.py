"""Paged decode attention (gateway.engines.native.paged_attn) on a GPU: correctness, then timings.

usage: PYTHONPATH=$PWD python3 scripts/device/paged_attn_check.py [--quick] [--json PATH]
       TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 scripts/device/paged_attn_check.py --smoke   (CPU)
Qwen3-0.6B shape by default: Hq=16, Hkv=8, D=128, page_size 16.

1. Correctness against paged_decode_reference (fp32 math, row by row), ‖out−ref‖/‖ref‖, on fresh random
   inputs per check (random K/V where rows read, NaN in the scratch page 0, past each row's end and in
   spare pages; shuffled pages), the output and the caching allocator poisoned with NaN before each call:
   bf16 and fp32; B 1/16/64/128; mixed lengths 1..4096 and all-short 256..384; rep 1..8; D 64/128;
   page sizes 1/16/64; forced split counts; a non-contiguous q; then a CUDA graph captured once and
   replayed with new seq_lens / page_table contents.
2. Timings (triton.testing.do_bench medians, L2 flushed between runs): the kernel at its default
   split count, the best of a split sweep, its CUDA-graph replay, torch's gather + SDPA path (keys
   gathered to [B, Hkv, max_len, D], boolean mask), and SDPA alone on a pre-gathered dense cache
   (the current SlotKV layout); GB/s = bytes of K and V the rows need (kv_bytes_read) / time.
   Unless --quick, a block/warps/stages sweep on three bf16 shapes. A table comes last.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F
import triton
import triton.testing

from gateway.engines.native.paged_attn import (
    _chunk_len,
    default_block_n,
    kv_bytes_read,
    paged_decode_reference,
    paged_decode_splits,
    paged_decode_triton,
)

p = argparse.ArgumentParser()
p.add_argument("--quick", action="store_true", help="skip the block/warps/stages sweep")
p.add_argument(
    "--sweep-only", action="store_true", help="correctness, then the block sweep (no timing table)"
)
p.add_argument("--json", default="", help="also write the results here")
p.add_argument(
    "--smoke",
    action="store_true",
    help="CPU, TRITON_INTERPRET=1, small sizes, correctness only (tests this script)",
)
args = p.parse_args()

DEV = "cpu" if args.smoke else "cuda"
MIXED_MAX, SHORT = (300, (40, 64)) if args.smoke else (4096, (256, 384))
BATCHES = (1, 3) if args.smoke else (1, 16, 64, 128)
HQ, HKV, D, PS = 16, 8, 128, 16
TOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2}
FAILS: list[str] = []
gen = torch.Generator(device=DEV).manual_seed(1234)


def rand_lens(b: int, kind: str) -> tuple[torch.Tensor, int]:
    if kind == "mixed":
        lens = torch.randint(1, MIXED_MAX + 1, (b,), device=DEV, generator=gen)
        if b > 1:
            lens[0], lens[-1] = MIXED_MAX, 1
        return lens.int(), MIXED_MAX
    lens = torch.randint(SHORT[0], SHORT[1] + 1, (b,), device=DEV, generator=gen)
    return lens.int(), SHORT[1]


def make_table(lens: torch.Tensor, max_len: int, page_size: int, spare_rows: int = 3):
    """A shuffled page table: row b owns ceil(max_len / page_size) random distinct pages (never page 0)."""
    b = lens.shape[0]
    max_pages = -(-max_len // page_size)
    num_pages = b * max_pages + 1 + 7  # + scratch page 0 + a few never-referenced pages
    perm = torch.randperm(num_pages - 1, device=DEV, generator=gen) + 1
    table = torch.zeros(b + spare_rows, max_pages, dtype=torch.int32, device=DEV)
    used = perm[: b * max_pages].view(b, max_pages).int()
    # entries past each row's last page hold page 0, as the pool leaves them
    j = torch.arange(max_pages, device=DEV)
    last = (lens.long() + page_size - 1) // page_size
    table[:b] = torch.where(j[None, :] < last[:, None], used, torch.zeros_like(used))
    return table, num_pages


def make_case(b, kind, dtype, rep=HQ // HKV, hkv=HKV, d=D, page_size=PS, lens=None, max_len=None):
    if lens is None:
        lens, max_len = rand_lens(b, kind)
    table, num_pages = make_table(lens, max_len, page_size)
    k = torch.empty(num_pages * page_size, hkv, d, device=DEV, dtype=dtype)
    v = torch.empty_like(k)
    fill_pool(k, v, table, lens, max_len, page_size)
    q = torch.randn(b, hkv * rep, d, device=DEV, dtype=dtype, generator=gen)
    return q, k, v, table, lens, max_len, page_size


def fill_pool(k, v, table, lens, max_len, page_size) -> None:
    """Random K/V in every slot a row may read; NaN everywhere else (page 0, tails of last pages, spare pages)."""
    k.fill_(float("nan"))
    v.fill_(float("nan"))
    b = lens.shape[0]
    pos = torch.arange(max_len, device=DEV)
    slots = table[:b, pos // page_size].long() * page_size + pos % page_size
    valid = slots[pos[None, :] < lens[:, None]]
    k[valid] = torch.randn((valid.numel(), *k.shape[1:]), device=DEV, dtype=k.dtype, generator=gen)
    v[valid] = torch.randn((valid.numel(), *v.shape[1:]), device=DEV, dtype=v.dtype, generator=gen)


def poison_allocator() -> None:
    """Fill free blocks of the caching allocator with NaN so a read of an unwritten scratch shows."""
    if args.smoke:
        return
    junk = torch.full((64 << 20,), float("nan"), device=DEV)  # 256 MiB
    del junk


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm()).item()


def check(name: str, case, num_splits=None, q_override=None) -> float:
    q, k, v, table, lens, max_len, page_size = case
    if q_override is not None:
        q = q_override
    scale = 1 / math.sqrt(q.shape[-1])
    ref = paged_decode_reference(q, k, v, table, lens, page_size, scale)
    out = torch.full_like(q, float("nan"), memory_format=torch.contiguous_format)
    poison_allocator()
    paged_decode_triton(q, k, v, table, lens, page_size, scale, max_len, num_splits, out=out)
    err = rel_err(out, ref)
    tol = TOL[q.dtype]
    ok = err <= tol
    if not ok:
        FAILS.append(f"{name}: rel err {err:.3g} > {tol:g}")
    print(f"  {'ok ' if ok else 'BAD'} {name:58s} rel err {err:.2e}", flush=True)
    return err


def sdpa_gather(q, k, v, table, lens, max_len, page_size, scale):
    """torch's path over the paged pool: gather every row's keys to [B, Hkv, max_len, D], masked SDPA.

    It reads the slots past each row's end too (masked), so give it a pool without NaN.
    """
    b, hq, d = q.shape
    hkv = k.shape[1]
    pos = torch.arange(max_len, device=q.device)
    slots = table[:b, pos // page_size].long() * page_size + pos % page_size  # [B, max_len]
    kk = k[slots].transpose(1, 2)  # [B, Hkv, max_len, D]
    vv = v[slots].transpose(1, 2)
    mask = (pos[None, :] < lens[:, None]).view(b, 1, 1, max_len)
    out = F.scaled_dot_product_attention(q.view(b, hkv, hq // hkv, d), kk, vv, attn_mask=mask, scale=scale)
    return out.reshape(b, hq, d)


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3  # µs


def graph_of(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def check_graph(name: str, b: int, kind: str, dtype) -> tuple[torch.cuda.CUDAGraph, tuple]:
    """Capture once on static buffers, then replay twice with new seq_lens and page-table contents."""
    case = make_case(b, kind, dtype)
    q, k, v, table, lens, max_len, page_size = case
    scale = 1 / math.sqrt(D)
    out = torch.full_like(q, float("nan"))

    def step():
        paged_decode_triton(q, k, v, table, lens, page_size, scale, max_len, out=out)

    g = graph_of(step)
    for i in range(2):
        new_lens, _ = rand_lens(b, kind)
        new_table, _ = make_table(new_lens, max_len, page_size)
        lens.copy_(new_lens)
        table.copy_(new_table)  # same shape: fits the same pool (pages drawn from the same count)
        fill_pool(k, v, table, lens, max_len, page_size)  # fresh K/V where the new rows read, NaN elsewhere
        q.copy_(torch.randn(q.shape, device=DEV, dtype=dtype, generator=gen))
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        ref = paged_decode_reference(q, k, v, table, lens, page_size, scale)
        err = rel_err(out, ref)
        ok = err <= TOL[dtype]
        if not ok:
            FAILS.append(f"graph {name} replay {i}: rel err {err:.3g}")
        print(
            f"  {'ok ' if ok else 'BAD'} {'graph ' + name + f' replay {i}':58s} rel err {err:.2e}", flush=True
        )
    return g, case


def dname(dtype) -> str:
    return str(dtype).removeprefix("torch.")


if args.smoke:
    print("smoke run on the CPU (triton interpreter)")
else:
    props = torch.cuda.get_device_properties(0)
    print(f"device: {torch.cuda.get_device_name()} ({props.multi_processor_count} SMs)")
print(f"torch {torch.__version__}, triton {triton.__version__}")

print("\n== correctness ==")
for dtype in (torch.bfloat16, torch.float32):
    for b in BATCHES:
        for kind in ("mixed", "short"):
            check(f"{dname(dtype)} B={b} {kind} (default splits)", make_case(b, kind, dtype))
    for rep in (1, 2, 3, 4, 8):
        for d in (64, 128):
            check(f"{dname(dtype)} B=16 mixed rep={rep} D={d}", make_case(16, "mixed", dtype, rep=rep, d=d))
    for ps in (1, 64, 256):
        check(f"{dname(dtype)} B=16 mixed page_size={ps}", make_case(16, "mixed", dtype, page_size=ps))
    for ns in (1, 2, 3, 7, 64):
        check(f"{dname(dtype)} B=4 mixed num_splits={ns}", make_case(4, "mixed", dtype), num_splits=ns)
    c = make_case(8, "mixed", dtype)
    q_nc = torch.randn(8, 2, HQ, D, device=DEV, dtype=dtype, generator=gen).transpose(1, 2)[:, :, 0]
    check(f"{dname(dtype)} B=8 mixed non-contiguous q", c, q_override=q_nc)
    # all rows length 1 and all rows at max_len
    ones = torch.ones(32, dtype=torch.int32, device=DEV)
    check(
        f"{dname(dtype)} B=32 all length 1 (max_len {MIXED_MAX})",
        make_case(32, "", dtype, lens=ones, max_len=MIXED_MAX),
    )
    full = torch.full((32,), MIXED_MAX, dtype=torch.int32, device=DEV)
    check(
        f"{dname(dtype)} B=32 all length {MIXED_MAX}", make_case(32, "", dtype, lens=full, max_len=MIXED_MAX)
    )
    q, k, v, table, lens, max_len, page_size = make_case(16, "mixed", dtype)
    ref = paged_decode_reference(q, k, v, table, lens, page_size, 1 / math.sqrt(D))
    got = sdpa_gather(q, k.nan_to_num(0), v.nan_to_num(0), table, lens, max_len, page_size, 1 / math.sqrt(D))
    e = rel_err(got, ref)
    print(f"  (torch gather+SDPA vs reference, {dname(dtype)}: rel err {e:.2e})")

if args.smoke:
    print(f"\ncorrectness: {'ALL OK' if not FAILS else f'{len(FAILS)} FAILED'}")
    for line in FAILS:
        print("  " + line)
    sys.exit(1 if FAILS else 0)

graphs = {}
for dtype in () if args.sweep_only else (torch.bfloat16, torch.float32):
    for b in BATCHES:
        for kind in ("mixed", "short"):
            graphs[(dtype, b, kind)] = check_graph(f"{dname(dtype)} B={b} {kind}", b, kind, dtype)


def kernel_call(case, out, **kw):
    q, k, v, table, lens, max_len, page_size = case
    return lambda: paged_decode_triton(
        q, k, v, table, lens, page_size, 1 / math.sqrt(D), max_len, out=out, **kw
    )


def effective_splits(ns: int, max_len: int, block_n: int) -> int:
    """What paged_decode_triton makes of num_splits=ns (capped, then trimmed to splits that can hold keys)."""
    ns = max(1, min(ns, -(-max_len // block_n)))
    return -(-max_len // _chunk_len(max_len, ns, block_n))


def time_row(dtype, kind: str, b: int) -> dict:
    g, case = graphs[(dtype, b, kind)]
    q, k, v, table, lens, max_len, page_size = case
    scale = 1 / math.sqrt(D)
    nbytes = kv_bytes_read(lens, HKV, D, q.element_size())
    out = torch.empty_like(q)
    t_def = bench(kernel_call(case, out))
    default_splits = paged_decode_splits(b, HKV, max_len, D, q.dtype, q.device)
    block_n = default_block_n(D, page_size, dtype)
    best = (t_def, default_splits)
    tried = {default_splits}
    for ns in (1, 2, 4, 8, 16, 32, 64):
        eff = effective_splits(ns, max_len, block_n)
        if eff in tried:
            continue
        tried.add(eff)
        best = min(best, (bench(kernel_call(case, out, num_splits=eff)), eff))
    t_graph = bench(g.replay)
    k0, v0 = k.nan_to_num(0), v.nan_to_num(0)  # torch's paths read the masked slots too
    t_gather = bench(lambda: sdpa_gather(q, k0, v0, table, lens, max_len, page_size, scale))
    # the current SlotKV layout: dense [B, Hkv, max_len, D], SDPA only (no gather)
    pos = torch.arange(max_len, device=DEV)
    slots = table[:b, pos // page_size].long() * page_size + pos % page_size
    kd = k0[slots].transpose(1, 2).contiguous()
    vd = v0[slots].transpose(1, 2).contiguous()
    mask = (pos[None, :] < lens[:, None]).view(b, 1, 1, max_len)
    qd = q.view(b, HKV, HQ // HKV, D)
    t_dense = bench(lambda: F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, scale=scale))
    row = dict(
        dtype=dname(dtype),
        kind=kind,
        B=b,
        max_len=max_len,
        kv_mb=nbytes / 1e6,
        splits=default_splits,
        us=t_def,
        gbs=nbytes / t_def / 1e3,
        best_splits=best[1],
        best_us=best[0],
        graph_us=t_graph,
        graph_gbs=nbytes / t_graph / 1e3,
        gather_sdpa_us=t_gather,
        gather_sdpa_gbs=nbytes / t_gather / 1e3,
        dense_sdpa_us=t_dense,
    )
    print(
        f"  {row['dtype']:8s} {kind:5s} B={b:<3d} {t_def:8.1f} µs {row['gbs']:7.0f} GB/s"
        f" (splits {default_splits}; best {best[1]}: {best[0]:.1f} µs) graph {t_graph:.1f} µs"
        f" | gather+sdpa {t_gather:.1f} µs | dense sdpa {t_dense:.1f} µs",
        flush=True,
    )
    return row


def sweep_shape(b: int, kind: str, case=None) -> list[dict]:
    if case is None:
        _, case = graphs[(torch.bfloat16, b, kind)]
    nbytes = kv_bytes_read(case[4], HKV, D, case[0].element_size())
    out = torch.empty_like(case[0])
    res = []
    # num_stages=1 left out: bf16 B=16 block_n=32 warps=4 stages=1 raised an illegal memory
    # access on an H100 (triton 3.6, 2026-12-06), and a CUDA error ends the process
    for bn in (32, 64, 128):
        for nw in (2, 4, 8):
            for ns in (2, 3, 4):
                try:
                    t = bench(kernel_call(case, out, block_n=bn, num_warps=nw, num_stages=ns))
                except Exception as exc:  # e.g. out of shared memory
                    print(f"  B={b} {kind} block_n={bn} warps={nw} stages={ns}: {type(exc).__name__}: {exc}")
                    continue
                res.append((t, bn, nw, ns))
    res.sort()
    for t, bn, nw, ns in res[:5]:
        print(
            f"  B={b:<3d} {kind:5s} block_n={bn:<3d} warps={nw} stages={ns}: {t:7.1f} µs {nbytes / t / 1e3:6.0f} GB/s"
        )
    return [dict(B=b, kind=kind, block_n=bn, num_warps=nw, num_stages=ns, us=t) for t, bn, nw, ns in res]


print("\n== timings ==", flush=True)
rows = [
    time_row(dtype, kind, b)
    for dtype in (() if args.sweep_only else (torch.bfloat16, torch.float32))
    for kind in ("mixed", "short")
    for b in (1, 16, 64, 128)
]
sweep = []
if not args.quick:
    print("\n== block / warps / stages sweep (bf16, default splits; default is 64 / 4 / 2) ==", flush=True)
    for b, kind in ((16, "mixed"), (64, "mixed"), (128, "short")):
        sweep += sweep_shape(b, kind, make_case(b, kind, torch.bfloat16) if args.sweep_only else None)
    # the engine's shape: one graph per batch bucket, max_len = the context length (4096)
    lens = torch.randint(128, 193, (128,), device=DEV, generator=gen).int()
    sweep += sweep_shape(128, "128-192/4096", make_case(128, "", torch.bfloat16, lens=lens, max_len=4096))

print("\n== summary (µs, median; GB/s = K+V bytes the rows need / time) ==")
hdr = (
    f"{'dtype':8s} {'lens':5s} {'B':>4s} {'KV MB':>7s} {'splits':>6s} {'triton':>8s} {'GB/s':>6s}"
    f" {'best(S)':>12s} {'graph':>8s} {'GB/s':>6s} {'gath+sdpa':>10s} {'GB/s':>6s} {'dense sdpa':>10s}"
)
print(hdr)
for r in rows:
    print(
        f"{r['dtype']:8s} {r['kind']:5s} {r['B']:4d} {r['kv_mb']:7.1f} {r['splits']:6d} {r['us']:8.1f} {r['gbs']:6.0f}"
        f" {r['best_us']:8.1f}({r['best_splits']:>2d}) {r['graph_us']:8.1f} {r['graph_gbs']:6.0f}"
        f" {r['gather_sdpa_us']:10.1f} {r['gather_sdpa_gbs']:6.0f} {r['dense_sdpa_us']:10.1f}"
    )
if args.json:
    with open(args.json, "w") as f:
        json.dump(dict(rows=rows, sweep=sweep, fails=FAILS, device=torch.cuda.get_device_name()), f, indent=1)
print(f"\ncorrectness: {'ALL OK' if not FAILS else f'{len(FAILS)} FAILED'}")
for line in FAILS:
    print("  " + line)
sys.exit(1 if FAILS else 0)
