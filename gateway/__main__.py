"""`python -m gateway --engine-url URL [--engine-url URL …] --model NAME|PATH [--port N]`: serve a gateway.

With `--redis-url`, sessions record into that data pool; without it, samples stay in memory
(inspect them with GET /sessions/{id}). Prints the URL once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from gateway.config import GatewayConfig


def parse_args(argv: list[str]) -> tuple[GatewayConfig, str | None]:
    p = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    p.add_argument(
        "--engine-url", action="append", required=True, help="an engine (SGLang protocol); repeatable"
    )
    p.add_argument(
        "--model",
        default="tiny",
        help="tokenizer/chat template source: forge.ground.models name or directory",
    )
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", action="append", default=[], help="accepted key; required off loopback")
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--max-concurrent-requests", type=int, default=256)
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--chat-template", default="auto")
    p.add_argument("--redis-url", default=None, help="record sessions into this data pool")
    a = p.parse_args(argv)
    cfg = GatewayConfig(
        engine_urls=a.engine_url,
        model=a.model,
        tokenizer=a.tokenizer,
        served_model_name=a.served_model_name,
        host=a.host,
        port=a.port,
        api_keys=a.api_key,
        context_length=a.context_length,
        max_concurrent_requests=a.max_concurrent_requests,
        request_timeout_s=a.request_timeout,
        chat_template=a.chat_template,
    )
    return cfg, a.redis_url


async def serve(cfg: GatewayConfig, pool: object = None) -> None:
    from gateway.server import start_site
    from gateway.service import Gateway

    gw = Gateway(cfg, pool=pool)
    runner, port = await start_site(gw, cfg.host, cfg.port)
    print(f"forge gateway listening on http://{cfg.host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg, redis_url = parse_args(list(sys.argv[1:] if argv is None else argv))
    pool = None
    if redis_url:
        from data_pool import PoolConfig, connect

        pool = connect(PoolConfig(redis_url=redis_url))
    try:
        run_loop(serve(cfg, pool))
    except KeyboardInterrupt:
        pass
    return 0


def run_loop(coro: Any) -> None:
    """asyncio.run, on uvloop when it is installed (less per-request overhead)."""
    from gateway.serving import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(coro)


if __name__ == "__main__":
    sys.exit(main())
