"""`forge bench gateway`: what the gateway adds on top of a direct engine call, and its requests/s.

Setup (each part its own process, as deployed): an embedded redis-server for the data pool, the
built-in engine (`python -m gateway.engines.native`, tiny random model, CPU), and the gateway
(`python -m gateway`, recording every call into the pool). The bench process is the client.

Latency: conversations of `--turns` calls in pool-backed sessions (first call rendered afresh,
the others extended through the ledger), greedy, `--max-tokens` new tokens. Each gateway call is
paired with a direct `/generate` call to the engine with exactly the prompt ids the gateway
recorded for it and the same sampling parameters, so both make the engine do the same work;
overhead = gateway latency - direct latency, per pair; p50 / p99 over the pairs. Both go through
the same HTTP client (httpx, keep-alive). The CPU engine's own time varies by milliseconds from call
to call, which moves the p50 of those differences by ±0.3 ms between runs; `*_outside_engine_ms`
take the engine's reported time (SGLang's `meta_info.e2e_latency`, which the gateway records as
the sample's `engine_e2e_s`) out of both latencies before the difference: the gateway's and the
network's share alone.

Throughput: `--concurrency` sessions (default 64) each run a growing conversation through the
gateway for `--duration` seconds; requests/s = completed calls / wall time. The same concurrency
of direct `/generate` calls (prompts of the same length) gives the engine's own requests/s.

    forge bench gateway [--json] [--requests 300] [--concurrency 64] [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from forge.ground.net import free_port


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="forge bench gateway", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default="tiny", help="forge.ground.models name or directory (engine and tokenizer)"
    )
    p.add_argument("--requests", type=int, default=300, help="gateway/direct pairs for the latency figures")
    p.add_argument("--turns", type=int, default=3, help="calls per conversation (latency)")
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of the throughput run")
    p.add_argument("--no-pool", action="store_true", help="gateway without a data pool (samples in memory)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p.parse_args(argv)


def _wait(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {timeout:g}s")


@contextlib.contextmanager
def stack(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Redis (data pool), engine and gateway, each in its own process."""
    from data_pool import PoolConfig, connect
    from forge.ground.models import resolve_model

    model_dir = str(resolve_model(args.model))
    procs: list[subprocess.Popen[bytes]] = []
    pool = None
    tmp = tempfile.TemporaryDirectory(prefix="forge-bench-gw-")
    logs = Path(tmp.name)
    try:
        redis_url = None
        if not args.no_pool:
            pool = connect(PoolConfig(run_dir=str(logs / "redis"), max_in_flight=100_000))
            redis_url = pool.url
        e_port, g_port = free_port(), free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        engine_cmd = [
            sys.executable,
            "-m",
            "gateway.engines.native",
            "--model",
            model_dir,
            "--port",
            str(e_port),
        ]
        engine_cmd += ["--max-running-requests", str(max(64, args.concurrency)), "--context-length", "2048"]
        with open(logs / "engine.log", "wb") as out:
            procs.append(subprocess.Popen(engine_cmd, stdout=out, stderr=subprocess.STDOUT, env=env))
        engine_url = f"http://127.0.0.1:{e_port}"
        _wait(f"{engine_url}/health", procs[-1], "the engine")
        gw_cmd = [sys.executable, "-m", "gateway", "--engine-url", engine_url, "--model", model_dir]
        gw_cmd += ["--port", str(g_port), "--max-concurrent-requests", "4096"]
        if redis_url:
            gw_cmd += ["--redis-url", redis_url]
        with open(logs / "gateway.log", "wb") as out:
            procs.append(subprocess.Popen(gw_cmd, stdout=out, stderr=subprocess.STDOUT))
        gateway_url = f"http://127.0.0.1:{g_port}"
        _wait(f"{gateway_url}/health", procs[-1], "the gateway")
        yield {"engine": engine_url, "gateway": gateway_url, "pool": pool}
    finally:
        for p in reversed(procs):
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(15)
            if p.poll() is None:
                p.kill()
        if pool is not None:
            pool.close()
        tmp.cleanup()


def open_session(http: httpx.Client, gateway: str, pool: Any, n: int) -> str:
    body: dict[str, Any] = {"task_id": f"bench-{n}-{time.monotonic_ns()}"}
    if pool is not None:
        from forge.ground.types import Task

        pool.submit([Task(id=body["task_id"], env="bench")])
        task = pool.acquire_task("bench", timeout=10)
        body["task_id"] = task.id
    resp = http.post(f"{gateway}/sessions", json=body)
    resp.raise_for_status()
    return str(resp.json()["base_url"])


def measure_latency(s: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    gw_ms: list[float] = []
    direct_ms: list[float] = []
    outside_ms: list[float] = []  # (gateway - its engine time) - (direct - its engine time)
    sampling = {"max_new_tokens": args.max_tokens, "temperature": 0.0}
    with httpx.Client(timeout=120) as http:
        n = 0
        warmup = 6
        while len(gw_ms) < args.requests:
            base = open_session(http, s["gateway"], s["pool"], n)
            sid = base.rsplit("/", 1)[1]
            msgs: list[dict[str, Any]] = [{"role": "user", "content": f"Question {n}: what comes next?"}]
            for turn in range(args.turns):
                body = {"model": "default", "messages": msgs, "max_tokens": args.max_tokens, "temperature": 0}
                t0 = time.perf_counter()
                r = http.post(f"{base}/v1/chat/completions", json=body)
                t_gw = time.perf_counter() - t0
                r.raise_for_status()
                sample = http.get(f"{s['gateway']}/sessions/{sid}").json()["samples"][-1]
                prompt = sample["prompt_ids"]
                direct = {"input_ids": prompt, "sampling_params": sampling, "return_logprob": True}
                t0 = time.perf_counter()
                d = http.post(f"{s['engine']}/generate", json=direct)
                t_direct = time.perf_counter() - t0
                d.raise_for_status()
                if warmup:
                    warmup -= 1
                else:
                    gw_ms.append(t_gw * 1e3)
                    direct_ms.append(t_direct * 1e3)
                    e2e_gw = sample["timings"].get("engine_e2e_s")
                    e2e_direct = d.json()["meta_info"].get("e2e_latency")
                    if e2e_gw is not None and e2e_direct is not None:
                        outside_ms.append(((t_gw - e2e_gw) - (t_direct - e2e_direct)) * 1e3)
                msgs += [
                    {"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]},
                    {"role": "user", "content": f"and after turn {turn}?"},
                ]
            n += 1
    overhead = sorted(g - d for g, d in zip(gw_ms, direct_ms, strict=True))
    outside = sorted(outside_ms)
    return {
        "p50_overhead_ms": statistics.median(overhead),
        "p99_overhead_ms": _pct(overhead, 99),
        "p50_overhead_outside_engine_ms": statistics.median(outside) if outside else float("nan"),
        "p99_overhead_outside_engine_ms": _pct(outside, 99) if outside else float("nan"),
        "gateway_p50_ms": statistics.median(gw_ms),
        "direct_p50_ms": statistics.median(direct_ms),
        "pairs": len(overhead),
    }


def _pct(sorted_values: list[float], q: float) -> float:
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


async def _gateway_load(s: dict[str, Any], args: argparse.Namespace) -> tuple[int, float, int]:
    import aiohttp

    with httpx.Client(timeout=60) as http:
        bases = [open_session(http, s["gateway"], s["pool"], 10_000 + i) for i in range(args.concurrency)]
    done = 0
    prompt_len = 0
    stop = time.perf_counter() + args.duration

    async def worker(session: aiohttp.ClientSession, base: str, k: int) -> None:
        nonlocal done, prompt_len
        msgs: list[dict[str, Any]] = [{"role": "user", "content": f"Session {k}: tell me a story."}]
        while time.perf_counter() < stop:
            body = {"model": "default", "messages": msgs, "max_tokens": args.max_tokens}
            async with session.post(f"{base}/v1/chat/completions", json=body) as resp:
                out = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"gateway answered {resp.status}: {out}")
            done += 1
            prompt_len = max(prompt_len, out["usage"]["prompt_tokens"])
            msgs += [{"role": "assistant", "content": out["choices"][0]["message"]["content"]}]
            msgs += [{"role": "user", "content": "go on"}]
            if len(msgs) > 24:  # keep prompts short: start the story over (a prefix break)
                msgs = msgs[:1]

    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session, b, k) for k, b in enumerate(bases)))
    return done, time.perf_counter() - t0, prompt_len


async def _engine_load(s: dict[str, Any], args: argparse.Namespace, prompt_len: int) -> tuple[int, float]:
    from forge.ground.engine_client import EngineClient

    done = 0
    stop = time.perf_counter() + args.duration
    sampling = {"max_new_tokens": args.max_tokens}

    async def worker(client: EngineClient, k: int) -> None:
        nonlocal done
        prompt = [(k * 7919 + i * 104729) % 30000 + 100 for i in range(prompt_len)]
        while time.perf_counter() < stop:
            await client.generate(prompt, sampling)
            done += 1

    t0 = time.perf_counter()
    async with EngineClient(s["engine"]) as client:
        await asyncio.gather(*(worker(client, k) for k in range(args.concurrency)))
    return done, time.perf_counter() - t0


def measure_throughput(s: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    done, wall, prompt_len = asyncio.run(_gateway_load(s, args))
    direct_done, direct_wall = asyncio.run(_engine_load(s, args, max(8, prompt_len // 2)))
    return {
        "requests_per_s": done / wall,
        "requests_per_s_direct": direct_done / direct_wall,
        "concurrency": args.concurrency,
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with stack(args) as s:
        result = {**measure_latency(s, args), **measure_throughput(s, args)}
    result.update(
        {
            "max_tokens": args.max_tokens,
            "pool": not args.no_pool,
            "model": args.model,
            "cpus": os.cpu_count() or 0,
        }
    )
    if args.json:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))
        return 0
    print(f"forge bench gateway ({args.model}, max_tokens={args.max_tokens}, pool={not args.no_pool})")
    rows = [
        ("p50_overhead_ms", "gateway latency - direct engine latency, median of pairs"),
        ("p99_overhead_ms", "the same, 99th percentile"),
        ("p50_overhead_outside_engine_ms", "the same, each latency less the engine's own e2e time"),
        ("p99_overhead_outside_engine_ms", "the same, 99th percentile"),
        ("gateway_p50_ms", "median latency through the gateway"),
        ("direct_p50_ms", "median latency of the direct engine call"),
        ("requests_per_s", f"through the gateway, {args.concurrency} concurrent sessions"),
        ("requests_per_s_direct", f"direct /generate, {args.concurrency} concurrent"),
    ]
    for key, what in rows:
        print(f"  {key:<22} {result[key]:>10.2f}   {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
