"""Sweep the paged decode kernel's launch config (BLOCK_N, num_warps, num_stages) over engine shapes.

Qwen3-0.6B attention (16 q heads, 8 kv heads, D=128, pages of 16, bf16, max_len 4096 as the
engine's graphs use), each case timed inside a CUDA graph (`triton.testing.do_bench_cudagraph`:
no Python launch cost, as in the engine's captured decode step). Prints one line per config (µs
per case, GB/s of the batch-128 short case, max error vs the reference) and the best config by
the sum over cases; the last line is `best BLOCK_N,WARPS,STAGES` for `profile_engine.py
--decode-config`. usage (on a GPU): python3 scripts/device/decode_tune.py
"""

from __future__ import annotations

import itertools
import math
import sys

import torch
import triton.testing

sys.path.insert(0, ".")
from gateway.engines.native import paged_attn as pa  # noqa: E402

HQ, HKV, D, PS, MAX_LEN = 16, 8, 128, 16, 4096
CASES = [
    (128, 128, 192),
    (128, 128, 320),
    (128, 200, 1200),
    (64, 1, 4096),
    (56, 2048, 2150),
    (16, 1, 4096),
    (8, 300, 3000),
]
g = torch.Generator(device="cuda").manual_seed(0)


def case(b: int, lo: int, hi: int):
    lens = torch.randint(lo, hi + 1, (b,), device="cuda", generator=g).int()
    pages = -(-MAX_LEN // PS)
    total = b * pages + 1
    perm = torch.randperm(total - 1, device="cuda", generator=g)[: b * pages] + 1
    table = perm.view(b, pages).int().contiguous()
    k = torch.randn(total * PS, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(total * PS, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    q = torch.randn(b, HQ, D, device="cuda", dtype=torch.bfloat16, generator=g)
    ref = pa.paged_decode_reference(q, k, v, table, lens, PS, 1 / math.sqrt(D)).float()
    return q, k, v, table, lens, ref


def main() -> None:
    data = [case(*c) for c in CASES]
    heads = " ".join(f"{b}x{lo}-{hi}".rjust(14) for b, lo, hi in CASES)
    print(f"{'BN,W,S':>9} {heads} {'sum':>7} {'GB/s':>5} {'maxerr':>7}", flush=True)
    results = []
    for bn, warps, stages in itertools.product((32, 64, 128), (2, 4, 8), (1, 2, 3)):
        times, err = [], 0.0
        cfg = {"block_n": bn, "num_warps": warps, "num_stages": stages}
        try:
            for q, k, v, table, lens, ref in data:
                out = torch.empty_like(q)

                def run(q=q, k=k, v=v, table=table, lens=lens, out=out, cfg=cfg):
                    pa.paged_decode_triton(
                        q, k, v, table, lens, PS, 1 / math.sqrt(D), MAX_LEN, out=out, **cfg
                    )

                run()
                torch.cuda.synchronize()
                err = max(err, (out.float() - ref).abs().max().item())
                times.append(triton.testing.do_bench_cudagraph(run, rep=30) * 1e3)
        except Exception as e:  # a config the compiler refuses (shared memory, registers)
            print(f"{bn:>3},{warps},{stages}  failed: {type(e).__name__}: {str(e)[:80]}", flush=True)
            continue
        gbs = pa.kv_bytes_read(data[0][4], HKV, D, 2) / times[0] / 1e3
        row = " ".join(f"{t:14.1f}" for t in times)
        print(f"{bn:>3},{warps},{stages}   {row} {sum(times):7.1f} {gbs:5.0f} {err:7.1e}", flush=True)
        if err < 2e-2:
            results.append((sum(times), bn, warps, stages))
    default = (pa.default_block_n(D, PS, torch.bfloat16), 4, 2)
    best = min(results)
    print(f"default {default[0]},{default[1]},{default[2]}; best by sum {best[0]:.1f} us", flush=True)
    print(f"best {best[1]},{best[2]},{best[3]}", flush=True)


if __name__ == "__main__":
    main()
