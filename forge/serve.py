"""`forge serve`: the data pool, inference engine(s) and the gateway, without training.

    forge serve                                   # tiny random model on CPU, embedded Redis
    forge serve --model smollm2_135m --port 8000  # a real small instruct model
    forge serve --engine-url http://gpu1:30000 --redis-url redis://pool:6379/0   # attach

Prints the gateway's base URL. Any OpenAI / Anthropic client can use it unscoped
(`{url}/v1/...`, nothing recorded). To record an agent: `POST {url}/sessions {"task_id": "t1"}`
creates task t1 and returns a session base URL whose calls are recorded as samples; `POST
{url}/sessions/{id}/reward {"reward": 1.0}` scores it and `.../finish` ends it. `forge export
RUN_DIR --out FILE` writes what was recorded as JSONL or Parquet (run_dir/serve.json says where
the pool and the model are). Built-in engines run in this process, on threads of their own;
Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="forge serve", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default="tiny", help="forge.ground.models name (tiny, smollm2_135m, ...) or a directory"
    )
    p.add_argument("--engines", type=int, default=1, help="built-in engines to start")
    p.add_argument("--engine-url", action="append", default=[], help="attach to these engines instead")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (built-in engines)")
    p.add_argument("--max-running-requests", type=int, default=64)
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="gateway port (0: any free port)")
    p.add_argument("--api-key", action="append", default=[], help="accepted key; required off loopback")
    p.add_argument("--redis-url", default=None, help="an external data pool (default: embedded Redis)")
    p.add_argument("--run-dir", default="runs/serve", help="embedded Redis data (AOF) directory")
    return p.parse_args(argv)


def serve(
    args: argparse.Namespace, ready: threading.Event | None = None, stop: threading.Event | None = None
) -> str:
    """Start everything, print the URL, block until `stop` (or SIGINT/SIGTERM); returns the URL."""
    from data_pool import PoolConfig, connect
    from forge.ground.models import materialize
    from gateway import GatewayConfig, start_gateway_in_thread

    stop = stop or threading.Event()
    model_dir = materialize(args.model)
    stack: list[Any] = []
    pool = connect(PoolConfig(redis_url=args.redis_url, run_dir=args.run_dir))
    try:
        urls = list(args.engine_url)
        if not urls:
            from gateway.engines.native import start_engine_in_thread

            for _ in range(args.engines):
                engine = start_engine_in_thread(
                    model_dir,
                    device=args.device,
                    max_running_requests=args.max_running_requests,
                    context_length=args.context_length,
                )
                stack.append(engine)
                urls.append(engine.url)
        cfg = GatewayConfig(
            engine_urls=urls,
            model=model_dir,
            host=args.host,
            port=args.port,
            api_keys=list(args.api_key),
            context_length=args.context_length,
        )
        gateway = start_gateway_in_thread(cfg, pool=pool, record_new_tasks=True)
        stack.append(gateway)
        record_serve(Path(args.run_dir), gateway.url, pool.url, model_dir)
        key = " -H 'Authorization: Bearer $KEY'" if args.api_key else ""
        print(f"forge serve: gateway at {gateway.url}", flush=True)
        print(f"  OpenAI:    base_url={gateway.url}/v1   Anthropic: base_url={gateway.url}", flush=True)
        print(
            f'  record:    curl{key} {gateway.url}/sessions -d \'{{"task_id": "my-task-1"}}\''
            "  → a session base_url",
            flush=True,
        )
        print(f"  export:    forge export {args.run_dir} --out recorded.jsonl   pool: {pool.url}", flush=True)
        print(f"  engines:   {', '.join(urls)}   model: {model_dir}", flush=True)
        if ready is not None:
            ready.set()
        stop.wait()
        return gateway.url
    finally:
        for part in reversed(stack):
            part.stop()
        pool.close()


def record_serve(run_dir: Path, gateway_url: str, redis_url: str, model_dir: str) -> None:
    """run_dir/serve.json: where this server's pool and model are, for `forge export RUN_DIR`
    (the Redis address without its password)."""
    at = urlsplit(redis_url)
    row = {"gateway": gateway_url, "redis": f"{at.hostname}:{at.port}", "model": str(model_dir)}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "serve.json").write_text(json.dumps(row, indent=1) + "\n")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    serve(args, stop=stop)
    return 0
