"""Where a tree pass and a flat pass of `forge bench tree` spend their GPU time, side by side.

usage: python3 scripts/device/profile_tree.py [--calls 1] [--device cuda] [--compile]
Builds the bench's batch for one calls-per-episode setting (Qwen3-0.6B-shaped, bf16, 512 tokens
per call, group size 8, eager with activation checkpointing unless --no-checkpointing), warms up
every micro-batch of both, then profiles one forward+backward of each and prints: wall time, GPU
time, GPU time per kernel class (matrix products, attention, everything else), hardware-FLOP
estimate per second, and the top kernels. Meant to answer why, at 1 call, the tree runs at ~80% of
the flat batch's efficiency per FLOP (docs/BENCHMARKS.md, tree history).
"""

import argparse
import time

import torch
from trace_gaps import report  # this script's folder is on sys.path

import forge.bench.tree as bt
from forge.ground.models import build_model
from trainer.flops import body_params, model_flops
from trainer.model_setup import prepare_for_training


def sync_sites(fn, name: str) -> None:
    """Run fn under torch.cuda.set_sync_debug_mode("warn") and print each distinct Python stack
    (innermost project frames) of an op that synchronised with the GPU, with its count."""
    import collections
    import traceback
    import warnings

    sites: collections.Counter = collections.Counter()

    def show(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename]
        sites[
            (
                str(message)[:80],
                " < ".join(f"{f.filename.split('/')[-1]}:{f.lineno}" for f in frames[::-1][:6]),
            )
        ] += 1

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():  # restores warnings.showwarning on exit
            warnings.simplefilter("always")
            warnings.showwarning = show
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    print(f"\n{name}: {sum(sites.values())} synchronising ops (torch sync debug), by site:")
    for (msg, where), n in sites.most_common(20):
        print(f"   {n:5d}×  {msg}  at {where}")


p = argparse.ArgumentParser()
p.add_argument("--calls", type=int, default=1)
p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
p.add_argument("--model", default=None)
p.add_argument("--tokens-per-call", type=int, default=None)
p.add_argument("--min-tree-tokens", type=int, default=None)
p.add_argument("--budget", type=int, default=None)
p.add_argument("--no-checkpointing", action="store_true")
p.add_argument("--compile", action="store_true")
p.add_argument("--checkpointed-head", action="store_true")
p.add_argument("--eager-head", action="store_true")
p.add_argument("--top", type=int, default=12)
p.add_argument("--sync-debug", action="store_true", help="also list the Python lines of every syncing op")
args = p.parse_args()
cuda = args.device == "cuda"
model_name = args.model or ("qwen3_0p6b_random" if cuda else "tiny")
tpc = args.tokens_per_call or (512 if cuda else 64)
budget = args.budget or (32768 if cuda else 4096)
min_tree = args.min_tree_tokens or (32768 if cuda else 1024)
kernel = "flex" if cuda else "sdpa_dense"
model = build_model(model_name, dtype=torch.bfloat16 if cuda else torch.float32, device=args.device)
prepare_for_training(model, kernel, not args.no_checkpointing, args.compile)
bt.COMPILE, bt.FUSED_HEAD = args.compile, not args.checkpointed_head
bt.COMPILED_HEAD = cuda and not args.eager_head
vocab = model.config.vocab_size
setting = argparse.Namespace(
    seed=0, group_size=8, tokens_per_call=tpc, prompt_tokens=tpc, min_tree_tokens=min_tree, budget=budget
)
_, tree, flat, _ = bt.bench_batches(setting, args.calls, vocab)  # the bench's own batch
batches = {"tree": tree, "flat": flat}
device = torch.device(args.device)
n_body = body_params(model)
recompute = 0.0 if args.no_checkpointing else 1.0  # decoder forward once more under checkpointing
for name, mbs in batches.items():
    bt._run(model, mbs, kernel, device)  # every micro-batch shape once: compilation, allocator
    bt._run(model, mbs, kernel, device)
    if cuda and args.sync_debug:
        sync_sites(lambda mbs=mbs: bt._run(model, mbs, kernel, device), name)
    tokens = sum(mb.packed.num_tokens for mb in mbs)
    flops = model_flops(model.config, n_body, mbs) + recompute * 2 * n_body * tokens
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    unprofiled = time.perf_counter()
    bt._run(model, mbs, kernel, device)
    unprofiled = time.perf_counter() - unprofiled
    before = torch.cuda.memory_stats() if cuda else {}
    with torch.profiler.profile(activities=acts) as prof:
        start = time.perf_counter()
        bt._run(model, mbs, kernel, device)
        wall = time.perf_counter() - start
    if cuda:  # allocator calls that synchronise: a retry frees cached blocks (cudaFree) and tries again
        after = torch.cuda.memory_stats()
        keys = ("num_alloc_retries", "num_device_alloc", "num_device_free")
        print(
            f"\n{name}: unprofiled wall {unprofiled * 1e3:.0f} ms; allocator during the profiled pass: "
            + ", ".join(f"{k} {after.get(k, 0) - before.get(k, 0)}" for k in keys)
        )
    # on CUDA count kernels only (the CPU op that launched one reports the same time again)
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    self_us = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    events = [e for e in prof.key_averages() if e.device_type == kind and self_us(e) > 0]
    total = sum(self_us(e) for e in events) / 1e6
    classes = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for e in events:
        key = e.key.lower()
        cls = (
            "attention"
            if ("flex" in key or "attention" in key)
            else "matmul"
            if any(s in key for s in ("aten::mm", "aten::addmm", "aten::bmm", "nvjet", "gemm", "cutlass"))
            else "other"
        )
        classes[cls] += self_us(e) / 1e6
    print(
        f"\n== {name}: {len(mbs)} micro-batches, {tokens:,} tokens, {sum(mb.targets.numel() for mb in mbs):,} "
        f"head rows; wall {wall * 1e3:.0f} ms, {'GPU' if cuda else 'CPU'} {total * 1e3:.0f} ms; "
        f"~{flops / 1e12:.1f} TFLOP (with recompute) = {flops / wall / 1e12:.0f} TFLOP/s of wall"
    )
    print("   by class (ms): " + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in classes.items()))
    for e in sorted(events, key=self_us, reverse=True)[: args.top]:
        print(f"   {self_us(e) / 1e3:9.1f} ms  {e.count:5d}×  {e.key[:90]}")
    if cuda:
        report(prof)
