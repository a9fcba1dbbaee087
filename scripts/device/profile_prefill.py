"""Where a prefill of the built-in engine goes (GPU machine; run after scripts/device/setup.sh).

Drives an EngineCore directly (no HTTP). Per case (B rows, C cached tokens, T new tokens): B
requests of C random tokens are prefilled and aborted (their pages stay in the prefix cache), then
B requests extending them by T tokens are admitted: that second prefill (C cached, T computed per
row; in batches of at most the engine's max_prefill_tokens) is timed, median of --repeat runs, beside the time its matmuls need at the GPU's bf16 peak.
dynamo's compile count before and after shows a compile inside serving. Then a torch.profiler
table of one prefill of the first case.

    python3 scripts/device/profile_prefill.py [--cases 8x1920+128,1x0+2048] [--no-profile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gateway.engines.native.launch import EngineConfig, build_core
from gateway.engines.native.request import parse_generate

PEAK_BF16 = 989e12  # H100/H200 dense bf16 FLOP/s


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="qwen3_0p6b_random")
    p.add_argument("--cases", default="8x1920+128,6x2048+320,16x0+256,1x0+2048,2x3840+256")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--kv-cache-gb", type=float, default=16)
    p.add_argument("--no-profile", action="store_true")
    a = p.parse_args()
    cases = []
    for c in a.cases.split(","):
        b, rest = c.split("x")
        cached, new = rest.split("+")
        cases.append((int(b), int(cached), int(new)))
    core, _ = build_core(
        EngineConfig(
            model=a.model,
            device=a.device,
            max_running_requests=max(b for b, _, _ in cases),
            kv_cache_gb=a.kv_cache_gb,
            context_length=4096 + 512,
            compile=not a.no_compile,
        )
    )
    cuda = a.device.startswith("cuda")
    params = sum(p.numel() for n, p in core.model.named_parameters() if "embed" not in n)
    print(f"attention {core.runner.attention}, fused {core.runner.fused}, {params / 1e6:.0f}M matmul params")
    gen = torch.Generator().manual_seed(0)
    counter = [0]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def admit(prompts: list[list[int]]) -> float:
        reqs = []
        for ids in prompts:
            counter[0] += 1
            body = {"input_ids": ids, "rid": f"p{counter[0]}", "sampling_params": {"max_new_tokens": 4}}
            reqs.append(parse_generate(body, core.vocab_size, core.context_length, core.tokenizer)[0])
        core._waiting.extend(reqs)
        for r in reqs:
            core._rids.add(r.rid)
        sync()
        t = time.perf_counter()
        while core._waiting:  # ungated (the gate waits for decode steps, and none run here)
            batch, _ = core._take_waiting(gate=False)
            if not batch:
                raise RuntimeError(f"{len(core._waiting)} requests do not fit the KV pool")
            core._prefill(batch)
        sync()
        return time.perf_counter() - t

    def run_case(b: int, cached: int, new: int) -> float:
        core.flush_cache()  # the runs before left their pages cached (and recent: kept from cold rows)
        base = [torch.randint(100, 20000, (max(cached, 1),), generator=gen).tolist() for _ in range(b)]
        if cached:
            admit(base)
            core.abort(None, abort_all=True)
            core._rids.clear()
        prompts = [
            (x if cached else []) + torch.randint(100, 20000, (new,), generator=gen).tolist() for x in base
        ]
        before = core.prefill_tokens
        dt = admit(prompts)
        computed = core.prefill_tokens - before
        core.abort(None, abort_all=True)
        core._rids.clear()
        return dt, computed

    def compiles() -> int:
        try:
            from torch._dynamo.utils import counters

            return int(counters["stats"]["unique_graphs"])
        except Exception:  # noqa: BLE001 - a report only
            return -1

    for b, cached, new in cases:
        run_case(b, cached, new)  # warm (Triton variants of this shape)
        c0 = compiles()
        times, computed = [], 0
        for _ in range(a.repeat):
            dt, computed = run_case(b, cached, new)
            times.append(dt)
        ms = 1000 * statistics.median(times)
        ideal = 1000 * 2 * params * computed / PEAK_BF16
        print(
            f"prefill B={b} cached={cached} new={new}: {ms:.2f} ms median of {a.repeat} "
            f"({computed} tokens computed, {computed / ms * 1000:.0f} tok/s; matmuls at peak {ideal:.2f} ms); "
            f"compiles during: {compiles() - c0}",
            flush=True,
        )
    if not a.no_profile:
        from torch.profiler import ProfilerActivity, profile

        b, cached, new = cases[0]
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            run_case(b, cached, new)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
        if cuda:
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20))


if __name__ == "__main__":
    main()
