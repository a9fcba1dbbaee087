"""`forge bench engine`: generated tokens/s of the built-in engine vs plain `model.generate`, same batch.

For each concurrency c (default 1, 8, 64): c prompts of `--prompt-len` random token ids, each
asked for exactly `--new-tokens` tokens (greedy, EOS ignored). The engine gets them as c
concurrent HTTP `/generate` calls (through the real client and server, continuous batching);
`model.generate` gets the same c prompts as one batch (do_sample=False, no EOS, so exactly
new_tokens each). tokens/s = c × new_tokens / wall time. Each measurement follows an untimed
warm-up of the same shape (CUDA graph capture, kernel selection, allocator growth).

    forge bench engine                               # CPU, tiny model, small settings
    forge bench engine --device cuda --json          # qwen3_0p6b_random, 128-token prompts, 256 new
    forge bench engine --device cuda --check         # first the GPU self-check (greedy == generate)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import torch


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="forge bench engine", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--model", default=None, help="qwen3_0p6b_random, tiny, or a local HF directory")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--concurrency", default="1,8,64", help="comma-separated request counts")
    p.add_argument("--prompt-len", type=int, default=None)
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--disable-cuda-graph", action="store_true")
    p.add_argument("--skip-generate", action="store_true", help="engine only (no baseline)")
    p.add_argument("--check", action="store_true", help="run gateway.engines.gpu_selfcheck first")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.model = args.model or ("qwen3_0p6b_random" if cuda else "tiny")
    args.prompt_len = args.prompt_len or (128 if cuda else 16)
    args.new_tokens = args.new_tokens or (256 if cuda else 32)
    args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if args.dtype == "auto":
        args.dtype = "bfloat16" if cuda else "float32"
    return args


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load(args: argparse.Namespace) -> Any:
    from gateway.engines.native.launch import DTYPES, load_model

    model, _, _ = load_model(args.model, args.device, DTYPES[args.dtype], seed=args.seed)
    return model


def prompts_for(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(10, min(vocab, 30000), (n, length), generator=gen).tolist()


def time_engine(url: str, prompts: list[list[int]], new_tokens: int) -> tuple[float, int]:
    from gateway.engines.client import EngineClient

    sp = {"max_new_tokens": new_tokens, "temperature": 0.0, "ignore_eos": True}

    async def run() -> tuple[float, int]:
        async with EngineClient(url) as client:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(client.generate(p, sp) for p in prompts))
            elapsed = time.perf_counter() - t0
        return elapsed, sum(r.completion_tokens for r in results)

    return asyncio.run(run())


def no_eos(model: Any) -> Any:
    """Make `generate` run exactly max_new_tokens with no logits processor (min_new_tokens would add
    one whose torch.isin costs more than a tiny model's forward)."""
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    model.generation_config.do_sample = False
    for name in ("temperature", "top_p", "top_k"):
        setattr(model.generation_config, name, None)
    return model


def time_generate(model: Any, prompts: list[list[int]], new_tokens: int, device: str) -> tuple[float, int]:
    ids = torch.tensor(prompts, device=device)
    mask = torch.ones_like(ids)
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=new_tokens,
        )
    _sync(device)
    elapsed = time.perf_counter() - t0
    return elapsed, int((out.shape[1] - ids.shape[1]) * ids.shape[0])


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("forge bench engine: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    check: dict[str, Any] | None = None
    if args.check:
        from gateway.engines import gpu_selfcheck

        check = gpu_selfcheck.run(device=args.device, model=args.model, log=log)
        log(f"self-check: {'PASS' if check['ok'] else 'FAIL'}")

    from gateway.engines.native import start_engine_in_thread

    t_load = time.perf_counter()
    engine_model = load(args)
    vocab = int(engine_model.config.vocab_size)
    context = args.prompt_len + args.new_tokens + 8
    handle = start_engine_in_thread(
        engine_model,
        max_running_requests=max(args.levels),
        context_length=context,
        cuda_graph=not args.disable_cuda_graph,
    )
    log(
        f"engine up at {handle.url} in {time.perf_counter() - t_load:.1f}s ({args.model}, {args.device}, {args.dtype})"
    )
    rows: list[dict[str, Any]] = []
    try:
        for c in args.levels:
            prompts = prompts_for(c, args.prompt_len, vocab, args.seed + c)
            time_engine(handle.url, prompts, args.new_tokens)  # warm-up (captures graphs of this shape)
            elapsed, tokens = time_engine(handle.url, prompts, args.new_tokens)
            rows.append({"concurrency": c, "engine_tok_s": tokens / elapsed, "engine_s": elapsed})
            log(f"engine   c={c:<4d} {tokens / elapsed:10.1f} tok/s  ({elapsed:.2f}s)")
    finally:
        handle.stop()
    del engine_model, handle
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    if not args.skip_generate:
        ref = no_eos(load(args))
        for row in rows:
            c = row["concurrency"]
            prompts = prompts_for(c, args.prompt_len, vocab, args.seed + c)
            time_generate(ref, prompts, min(8, args.new_tokens), args.device)  # warm-up
            elapsed, tokens = time_generate(ref, prompts, args.new_tokens, args.device)
            row["generate_tok_s"] = tokens / elapsed
            row["generate_s"] = elapsed
            row["ratio"] = row["engine_tok_s"] / row["generate_tok_s"]
            log(
                f"generate c={c:<4d} {row['generate_tok_s']:10.1f} tok/s  ({elapsed:.2f}s)  ratio {row['ratio']:.2f}x"
            )
    report = {
        "model": args.model,
        "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
        "dtype": args.dtype,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "cuda_graph": not args.disable_cuda_graph and args.device.startswith("cuda"),
        "torch": torch.__version__,
        "results": rows,
    }
    if check is not None:
        report["selfcheck"] = check
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"\n{'concurrency':>11} {'engine_tok_s':>13} {'generate_tok_s':>15} {'ratio':>7}")
        for r in rows:
            print(
                f"{r['concurrency']:>11} {r['engine_tok_s']:>13.1f} "
                f"{r.get('generate_tok_s', float('nan')):>15.1f} {r.get('ratio', float('nan')):>7.2f}"
            )
    return 0 if check is None or check["ok"] else 1
