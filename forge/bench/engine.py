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

`--workload multiturn` measures agent-style episodes instead (prefix reuse, KV admission): see
`multiturn_main` below, or `forge bench engine --workload multiturn --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

WORKLOADS = ("single", "multiturn")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="forge bench engine", description=__doc__.splitlines()[0])
    p.add_argument(
        "--workload",
        default="single",
        choices=WORKLOADS,
        help="single: one call per prompt (this table); multiturn: agent episodes, own flags "
        "(--workload multiturn --help)",
    )
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
    from forge.ground.engine_client import EngineClient

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


def workload_of(argv: list[str]) -> str:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--workload", default="single", choices=WORKLOADS)
    return p.parse_known_args(argv)[0].workload


def main(argv: list[str]) -> int:
    if workload_of(argv) == "multiturn":
        return multiturn_main(argv)
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


# ---- --workload multiturn ------------------------------------------------------------------
MULTITURN_DOC = """`forge bench engine --workload multiturn`: agent episodes of K calls against one engine.

N episodes in N/G groups; the G episodes of a group share one random initial prompt (random token
ids, seeded). Each episode makes K calls in turn: call 1's prompt is the initial prompt, call i+1's
is call i's prompt + call i's output + T fresh random "tool" tokens (seeded per episode and call).
Each call asks for exactly C tokens (max_new_tokens=C, ignore_eos, return_logprob, temperature 1 so
siblings diverge; sampling_seed per episode and call, so a run repeats). At most --concurrency
episodes are in flight. Reported: generated tok/s, prompt tokens received, unique tokens (per group
the initial prompt once + per episode its tool and completion tokens), prefill tokens computed
(sum of prompt_tokens - meta_info.cached_tokens), cache hit rate, call latency p50/p99, peak KV
pages/bytes when the engine's forge_stats reports them, forge_stats before/after.

    forge bench engine --workload multiturn                           # CPU, tiny, in-process
    forge bench engine --workload multiturn --url http://127.0.0.1:30000 --json
"""

# forge_stats keys that are levels or sizes, not cumulative counters: no before/after difference
STATS_GAUGES = frozenset(
    {"page_size", "pages_total", "pages_used", "pages_free", "kv_cache_bytes", "running", "waiting"}
)
KV_KEYS = ("peak_pages_used", "page_size", "pages_total", "kv_cache_bytes")


@dataclass(frozen=True)
class Multiturn:
    """The shape of a multiturn run; every token id and seed derives from it."""

    calls: int
    tool_tokens: int
    completion_tokens: int
    prompt_tokens: int
    group: int
    episodes: int
    seed: int
    vocab: int

    @property
    def groups(self) -> int:
        return self.episodes // self.group

    @property
    def episode_tokens(self) -> int:
        """Tokens of a whole episode: its last call's prompt + that call's completion."""
        return self.prompt_tokens + self.calls * self.completion_tokens + (self.calls - 1) * self.tool_tokens

    def _ids(self, key: str, n: int) -> list[int]:
        rng = random.Random(f"forge-multiturn/{self.seed}/{key}")  # str seeds: same across runs
        lo, hi = min(10, self.vocab - 1), min(self.vocab, 30000)
        return [rng.randrange(lo, hi) for _ in range(n)]

    def initial_prompt(self, group: int) -> list[int]:
        return self._ids(f"prompt/{group}", self.prompt_tokens)

    def tool(self, episode: int, call: int) -> list[int]:
        return self._ids(f"tool/{episode}/{call}", self.tool_tokens)

    def sampling_seed(self, episode: int, call: int) -> int:
        return random.Random(f"forge-multiturn/{self.seed}/sample/{episode}/{call}").getrandbits(31)

    def expected(self) -> dict[str, int]:
        """Token counts when every call returns exactly C tokens."""
        k, c, t, p = self.calls, self.completion_tokens, self.tool_tokens, self.prompt_tokens
        per_episode_received = k * p + (c + t) * k * (k - 1) // 2
        return {
            "prompt_tokens_received": self.episodes * per_episode_received,
            "unique_tokens": self.groups * p + self.episodes * (k * c + (k - 1) * t),
            # what prefill must compute at least when the KV of decoded tokens is kept
            "ideal_prefill_tokens": self.groups * p + self.episodes * (k - 1) * t,
            "output_tokens": self.episodes * k * c,
        }


def parse_multiturn_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="forge bench engine --workload multiturn",
        description=MULTITURN_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workload", default="multiturn", choices=WORKLOADS)
    p.add_argument("--url", default=None, help="bench this running engine server (else one in-process)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (in-process engine)")
    p.add_argument("--model", default=None, help="qwen3_0p6b_random, tiny, or a local HF directory")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--calls", type=int, default=16, help="K: calls per episode")
    p.add_argument("--tool-tokens", type=int, default=128, help="T: random tokens appended after a call")
    p.add_argument("--completion-tokens", type=int, default=128, help="C: tokens generated per call")
    p.add_argument("--prompt-tokens", type=int, default=None, help="initial prompt (128 on cuda, 16 on cpu)")
    p.add_argument("--group", type=int, default=8, help="G: episodes sharing one initial prompt")
    p.add_argument("--episodes", type=int, default=128, help="N, a multiple of G")
    p.add_argument("--concurrency", type=int, default=None, help="episodes in flight (default: all)")
    p.add_argument("--kv-cache-gb", type=float, default=None, help="in-process engine's KV budget")
    p.add_argument("--context-length", type=int, default=None, help="in-process (default: one episode)")
    p.add_argument(
        "--max-running-requests", type=int, default=None, help="in-process (default: --concurrency)"
    )
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--warmup-episodes",
        type=int,
        default=0,
        help="untimed episodes first (other seed; then /flush_cache); they count in peak KV figures",
    )
    p.add_argument("--disable-cuda-graph", action="store_true")
    p.add_argument("--call-timeout", type=float, default=None, help="seconds per call (default: none)")
    p.add_argument("--progress-s", type=float, default=10.0, help="progress line to stderr every S s")
    p.add_argument("--label", default=None, help="copied into the JSON (e.g. old / new)")
    p.add_argument("--json", action="store_true", help="print one JSON object (one line) instead of a table")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.model = args.model or ("qwen3_0p6b_random" if cuda else "tiny")
    if args.prompt_tokens is None:
        args.prompt_tokens = 128 if cuda else 16
    if args.dtype == "auto":
        args.dtype = "bfloat16" if cuda else "float32"
    for name in ("calls", "completion_tokens", "prompt_tokens", "group", "episodes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.tool_tokens < 0 or args.warmup_episodes < 0:
        p.error("--tool-tokens and --warmup-episodes must not be negative")
    if args.episodes % args.group:
        p.error(f"--episodes ({args.episodes}) must be a multiple of --group ({args.group})")
    args.concurrency = args.concurrency or args.episodes
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    return args


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """after - before for the cumulative numeric counters of forge_stats (gauges and peaks left out)."""
    out: dict[str, float] = {}
    for k, v in after.items():
        b = before.get(k)
        if k in STATS_GAUGES or k.startswith("peak_") or isinstance(v, bool) or isinstance(b, bool):
            continue
        if isinstance(v, int | float) and isinstance(b, int | float):
            out[k] = v - b
    return out


def kv_report(stats: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Peak KV pages and bytes when forge_stats has them; else what the engine reports."""
    kv: dict[str, Any] = {k: stats[k] for k in KV_KEYS if k in stats}
    if all(k in kv for k in KV_KEYS) and kv["pages_total"]:
        kv["peak_kv_tokens"] = int(kv["peak_pages_used"]) * int(kv["page_size"])
        kv["peak_kv_bytes"] = int(kv["kv_cache_bytes"] * kv["peak_pages_used"] / kv["pages_total"])
        kv["peak_pages_fraction"] = kv["peak_pages_used"] / kv["pages_total"]
    for k in ("max_running_requests", "context_length"):
        if k in info:
            kv[k] = info[k]
    return kv


async def _episode(
    client: Any,
    spec: Multiturn,
    episode: int,
    prompt: list[int],
    sem: asyncio.Semaphore,
    temperature: float,
    calls: list[dict[str, Any]],
    tokens: dict[str, int],
) -> dict[str, int]:
    """One episode's K calls, in turn; each call's figures appended to `calls`. Returns the
    episode's own tokens (tool + completion), for the unique-token count."""
    own = 0
    async with sem:
        for call in range(spec.calls):
            sp = {
                "max_new_tokens": spec.completion_tokens,
                "ignore_eos": True,
                "temperature": temperature,
                "sampling_seed": spec.sampling_seed(episode, call),
            }
            t0 = time.perf_counter()
            result = await client.generate(prompt, sp, return_logprob=True)
            latency = time.perf_counter() - t0
            meta = result.raw.get("meta_info", {}) if isinstance(result.raw, dict) else {}
            calls.append(
                {
                    "episode": episode,
                    "call": call,
                    "sent": len(prompt),
                    "prompt_tokens": result.prompt_tokens or len(prompt),
                    "cached_tokens": int(meta.get("cached_tokens") or 0),
                    "completion_tokens": len(result.output_ids),
                    "finish_reason": result.finish_reason,
                    "latency_s": latency,
                }
            )
            tokens["output"] += len(result.output_ids)
            own += len(result.output_ids)
            if call + 1 < spec.calls:
                tool = spec.tool(episode, call)
                own += len(tool)
                prompt = prompt + result.output_ids + tool
    return {"episode": episode, "own_tokens": own}


async def run_multiturn(
    url: str,
    spec: Multiturn,
    concurrency: int,
    temperature: float = 1.0,
    call_timeout: float | None = None,
    progress_s: float = 10.0,
    log: Any = None,
) -> dict[str, Any]:
    """Run the episodes of `spec` against the engine at `url`; raw figures (see summarize)."""
    from forge.ground.engine_client import EngineClient

    sem = asyncio.Semaphore(concurrency)
    calls: list[dict[str, Any]] = []
    tokens = {"output": 0}
    prompts = [spec.initial_prompt(g) for g in range(spec.groups)]
    async with EngineClient(url, timeout=call_timeout) as client:
        t0 = time.perf_counter()

        async def progress() -> None:
            while True:
                await asyncio.sleep(progress_s)
                el = time.perf_counter() - t0
                if log is not None:
                    log(
                        f"multiturn {el:7.1f}s  calls {len(calls)}/{spec.episodes * spec.calls}  "
                        f"{tokens['output'] / el:9.1f} tok/s"
                    )

        ticker = asyncio.create_task(progress()) if progress_s > 0 else None
        try:
            episodes = await asyncio.gather(
                *(
                    _episode(client, spec, e, prompts[e // spec.group], sem, temperature, calls, tokens)
                    for e in range(spec.episodes)
                )
            )
        finally:
            if ticker is not None:
                ticker.cancel()
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "calls": calls, "episodes": episodes}


def summarize(spec: Multiturn, raw: dict[str, Any]) -> dict[str, Any]:
    calls = raw["calls"]
    wall = raw["wall_s"]
    received = sum(c["sent"] for c in calls)
    cached = sum(c["cached_tokens"] for c in calls)
    computed = sum(c["prompt_tokens"] - c["cached_tokens"] for c in calls)
    output = sum(c["completion_tokens"] for c in calls)
    unique = spec.groups * spec.prompt_tokens + sum(e["own_tokens"] for e in raw["episodes"])
    expected = spec.expected()
    lat = [c["latency_s"] for c in calls]
    return {
        "gen_tok_s": output / wall if wall > 0 else float("nan"),
        "wall_s": wall,
        "calls": len(calls),
        "output_tokens": output,
        "short_calls": sum(c["completion_tokens"] != spec.completion_tokens for c in calls),
        "prompt_tokens_received": received,
        "prompt_tokens_reported": sum(c["prompt_tokens"] for c in calls),
        "unique_tokens": unique,
        "ideal_prefill_tokens": expected["ideal_prefill_tokens"],
        "cached_tokens": cached,
        "prefill_tokens_computed": computed,
        "computed_over_unique": computed / unique if unique else float("nan"),
        "computed_over_received": computed / received if received else float("nan"),
        "computed_over_ideal": computed / expected["ideal_prefill_tokens"]
        if expected["ideal_prefill_tokens"]
        else float("nan"),
        "cache_hit_rate": cached / received if received else float("nan"),
        "latency_p50_s": percentile(lat, 0.50),
        "latency_p99_s": percentile(lat, 0.99),
        "latency_mean_s": sum(lat) / len(lat) if lat else float("nan"),
        "finish_reasons": {
            r: sum(c["finish_reason"] == r for c in calls) for r in {c["finish_reason"] for c in calls}
        },
    }


def _model_info(url: str) -> dict[str, Any]:
    from forge.ground.engine_client import SyncEngineClient

    return SyncEngineClient(url, timeout=30).get_model_info()


def multiturn_main(argv: list[str]) -> int:
    args = parse_multiturn_args(argv)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    cuda = args.device.startswith("cuda")
    handle = None
    if args.url is None and cuda and not torch.cuda.is_available():
        print("forge bench engine: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    episode_tokens = Multiturn(
        args.calls, args.tool_tokens, args.completion_tokens, args.prompt_tokens, args.group, 1, 0, 2
    ).episode_tokens
    t_load = time.perf_counter()
    if args.url is None:
        from gateway.engines.native import start_engine_in_thread

        if args.device == "cpu":
            torch.set_num_threads(max(1, torch.get_num_threads()))
        engine_model = load(args)
        config: dict[str, Any] = {
            "max_running_requests": args.max_running_requests or args.concurrency,
            "context_length": args.context_length or episode_tokens,
            "cuda_graph": not args.disable_cuda_graph,
        }
        if args.kv_cache_gb is not None:
            config["kv_cache_gb"] = args.kv_cache_gb
        handle = start_engine_in_thread(engine_model, **config)
        url = handle.url
    else:
        url = args.url.rstrip("/")
    try:
        info = _model_info(url)
        log(
            f"engine at {url} ({info.get('engine', '?')}, {info.get('model_path')}, "
            f"max_running {info.get('max_running_requests')}, context {info.get('context_length')}) "
            f"in {time.perf_counter() - t_load:.1f}s"
        )
        context = info.get("context_length")
        if isinstance(context, int) and episode_tokens > context:
            print(
                f"forge bench engine: an episode reaches {episode_tokens} tokens, over the engine's "
                f"context length {context}: raise --context-length or lower --calls/--*-tokens",
                file=sys.stderr,
            )
            return 2
        vocab = int(info.get("vocab_size") or 0) or 30000
        spec = Multiturn(
            args.calls,
            args.tool_tokens,
            args.completion_tokens,
            args.prompt_tokens,
            args.group,
            args.episodes,
            args.seed,
            vocab,
        )
        if args.warmup_episodes:
            groups = max(1, args.warmup_episodes // args.group)
            warm = replace(spec, episodes=groups * args.group, seed=args.seed + 1_000_003)
            raw = asyncio.run(
                run_multiturn(url, warm, args.concurrency, args.temperature, args.call_timeout, 0)
            )
            log(f"warm-up: {len(raw['calls'])} calls in {raw['wall_s']:.1f}s")
            from forge.ground.engine_client import SyncEngineClient

            SyncEngineClient(url, timeout=60).flush_cache()
        if handle is not None and cuda:
            torch.cuda.reset_peak_memory_stats(args.device)
        before = dict(_model_info(url).get("forge_stats") or {})
        log(
            f"multiturn: {spec.episodes} episodes ({spec.groups} groups of {spec.group}) x {spec.calls} calls "
            f"x ({spec.tool_tokens} tool + {spec.completion_tokens} completion), prompt {spec.prompt_tokens}, "
            f"concurrency {args.concurrency}"
        )
        raw = asyncio.run(
            run_multiturn(
                url, spec, args.concurrency, args.temperature, args.call_timeout, args.progress_s, log
            )
        )
        after_info = _model_info(url)
        after = dict(after_info.get("forge_stats") or {})
        peak_alloc = torch.cuda.max_memory_allocated(args.device) if handle is not None and cuda else None
    finally:
        if handle is not None:
            handle.stop()
    summary = summarize(spec, raw)
    delta = stats_delta(before, after)
    kv = kv_report(after, after_info)
    if peak_alloc is not None:
        kv["cuda_max_memory_allocated_bytes"] = int(peak_alloc)
    if delta.get("decode_steps"):
        summary["mean_decode_batch"] = delta.get("decode_rows", 0) / delta["decode_steps"]
    if delta.get("uptime_s") and "busy_s" in delta:
        summary["engine_busy_fraction"] = delta["busy_s"] / delta["uptime_s"]
    report: dict[str, Any] = {
        "workload": "multiturn",
        "label": args.label,
        "url": args.url,
        "engine": after_info.get("engine"),
        "model": args.model if args.url is None else after_info.get("model_path"),
        "device": (torch.cuda.get_device_name(args.device) if cuda else "cpu")
        if args.url is None
        else after_info.get("device"),
        "dtype": args.dtype if args.url is None else after_info.get("dtype"),
        "calls_per_episode": spec.calls,
        "tool_tokens": spec.tool_tokens,
        "completion_tokens": spec.completion_tokens,
        "prompt_tokens": spec.prompt_tokens,
        "group": spec.group,
        "episodes": spec.episodes,
        "concurrency": args.concurrency,
        "temperature": args.temperature,
        "seed": args.seed,
        "warmup_episodes": args.warmup_episodes,
        "episode_tokens": spec.episode_tokens,
        "torch": torch.__version__,
        **summary,
        "kv": kv,
        "forge_stats_before": before,
        "forge_stats_after": after,
        "forge_stats_delta": delta,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print_multiturn_table(report)
    return 0


def print_multiturn_table(r: dict[str, Any]) -> None:
    kv = r["kv"]
    peak = (
        f"{kv['peak_pages_used']}/{kv['pages_total']} pages of {kv['page_size']} "
        f"({kv['peak_kv_bytes'] / 2**30:.2f} of {kv['kv_cache_bytes'] / 2**30:.2f} GiB)"
        if "peak_kv_bytes" in kv
        else "not reported"
    )
    rows = [
        ("generated tok/s", f"{r['gen_tok_s']:.1f}"),
        ("wall s", f"{r['wall_s']:.2f}"),
        ("calls", f"{r['calls']} ({r['short_calls']} short)"),
        ("prompt tokens received", f"{r['prompt_tokens_received']}"),
        ("unique tokens", f"{r['unique_tokens']}"),
        ("prefill tokens computed", f"{r['prefill_tokens_computed']}"),
        ("computed / unique", f"{r['computed_over_unique']:.3f}"),
        ("computed / received", f"{r['computed_over_received']:.3f}"),
        ("cache hit rate", f"{r['cache_hit_rate']:.3f}"),
        ("call latency p50 / p99 s", f"{r['latency_p50_s']:.3f} / {r['latency_p99_s']:.3f}"),
        ("peak KV", peak),
    ]
    if "mean_decode_batch" in r:
        rows.append(("mean decode batch", f"{r['mean_decode_batch']:.1f}"))
    if "cuda_max_memory_allocated_bytes" in kv:
        rows.append(("cuda max allocated GiB", f"{kv['cuda_max_memory_allocated_bytes'] / 2**30:.2f}"))
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:>{width}}  {v}")
