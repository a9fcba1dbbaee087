"""Where a decode step of the built-in engine goes (GPU machine; run after scripts/device/setup.sh).

Drives an EngineCore directly (no HTTP): B requests (128-token prompts, temperature 1, EOS
ignored) admitted together, then timed decode steps split into the runner's parts: host input
build + upload, graph replay (with the fused sampler inside it on CUDA + triton), the torch
sampler (when it runs: rows that filter, or no triton; its read-back counted in it too), the host
read-back, and the scheduler's bookkeeping (_advance). Then a torch.profiler table of a few steps at the largest batch.

    python3 scripts/device/profile_engine.py [--model qwen3_0p6b_random] [--batches 16,32,64,128]
"""

from __future__ import annotations

import argparse
import time

import torch

from gateway.engines.native.launch import EngineConfig, build_core, kv_bytes_per_token
from gateway.engines.native.request import parse_generate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="qwen3_0p6b_random")
    p.add_argument("--batches", default="16,32,64,128")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--device", default="cuda", help="cpu: a quick check of this script with --model tiny")
    p.add_argument("--attention", default="auto", choices=["auto", "triton", "sdpa"])
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--kv-cache-gb", type=float, default=10)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--unfused", default="", help="fusions to leave out (A/B): kv_write,residual")
    p.add_argument("--decode-config", default="", help="BLOCK_N,WARPS,STAGES of the paged decode kernel")
    a = p.parse_args()
    if a.decode_config:
        import functools

        from gateway.engines.native import paged_attn

        bn, warps, stages = (int(x) for x in a.decode_config.split(","))
        paged_attn.paged_decode_triton = functools.partial(
            paged_attn.paged_decode_triton, block_n=bn, num_warps=warps, num_stages=stages
        )
    if a.unfused:
        from gateway.engines.native import projections

        projections.DISABLED = set(a.unfused.split(","))
    batches = [int(x) for x in a.batches.split(",")]
    core, _ = build_core(
        EngineConfig(
            model=a.model,
            device=a.device,
            max_running_requests=max(batches),
            kv_cache_gb=a.kv_cache_gb,
            context_length=max(4096, a.prompt_len + a.steps * 3 + 64),
            attention=a.attention,
            compile=not a.no_compile,
        )
    )
    print(f"attention {core.runner.attention}, fused {core.runner.fused}", flush=True)
    bandwidth = measure_bandwidth() if a.device.startswith("cuda") else 0.0
    weight_bytes = sum(p.numel() * p.element_size() for p in core.model.parameters())
    per_token = kv_bytes_per_token(core.model)
    runner = core.runner
    cuda = a.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    timing = {"upload": 0.0, "graph": 0.0, "sample": 0.0, "read_back": 0.0}
    names = {"upload": "_upload", "graph": "_graph_logits", "sample": "_sample", "read_back": "_read_back"}
    originals = {k: getattr(runner, v) for k, v in names.items()}

    def timed(name, fn):
        def wrapper(*args, **kw):
            sync()
            t = time.perf_counter()
            out = fn(*args, **kw)
            sync()
            timing[name] += time.perf_counter() - t
            return out

        return wrapper

    gen = torch.Generator().manual_seed(0)
    for b in batches:
        reqs = []
        for i in range(b):
            ids = torch.randint(100, 20000, (a.prompt_len,), generator=gen).tolist()
            body = {
                "input_ids": ids,
                "rid": f"r{b}-{i}",
                "sampling_params": {"max_new_tokens": 10_000, "temperature": 1.0, "ignore_eos": True},
            }
            reqs.append(parse_generate(body, core.vocab_size, core.context_length, core.tokenizer)[0])
        core._waiting.extend(reqs)
        for r in reqs:
            core._rids.add(r.rid)
        while core._waiting:  # every row, however many prefills max_prefill_tokens splits it into
            batch, _ = core._take_waiting(gate=False)
            if not batch:
                raise RuntimeError(
                    f"{len(core._waiting)} requests do not fit the KV pool: raise --kv-cache-gb"
                )
            core._prefill(batch)
        for _ in range(5):  # graph capture + warm-up
            core._decode()
        sync()
        # plain timing of whole steps
        t = time.perf_counter()
        for _ in range(a.steps):
            core._decode()
        sync()
        whole = (time.perf_counter() - t) / a.steps
        # split (syncs added between the parts, so the parts sum to a bit more than `whole`)
        for k in timing:
            timing[k] = 0.0
        for k, v in names.items():
            setattr(runner, v, timed(k, originals[k]))
        t = time.perf_counter()
        for _ in range(a.steps):
            core._decode()
        split_total = (time.perf_counter() - t) / a.steps
        for k, v in names.items():
            setattr(runner, v, originals[k])
        parts = {k: round(1000 * v / a.steps, 3) for k, v in timing.items()}
        rest = round(1000 * split_total - sum(parts.values()), 3)
        keys = sum(r.position + 1 for r in core.rows)
        floor_ms = 1000 * (weight_bytes + keys * per_token) / bandwidth if bandwidth else 0.0
        print(
            f"batch {b} prompt {a.prompt_len}: step {1000 * whole:.2f} ms ({b / whole:.0f} tok/s); "
            f"split: {parts}, scheduler/python rest {rest} ms; floor (weights {weight_bytes / 1e9:.2f} GB + "
            f"KV {keys * per_token / 1e9:.2f} GB at {bandwidth / 1e12:.2f} TB/s) {floor_ms:.2f} ms",
            flush=True,
        )
        if b == batches[-1] and not a.no_profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(
                activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            ) as prof:
                for _ in range(10):
                    core._decode()
                sync()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
            if cuda:
                print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15))
        core.abort(None, abort_all=True)  # releases every row's pages
        core._rids.clear()


def measure_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy (read + write), median of 20."""
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    times = []
    for _ in range(25):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        y.copy_(x)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1000)
    del x, y
    return 2 * (1 << 30) / sorted(times[5:])[len(times[5:]) // 2]


if __name__ == "__main__":
    main()
