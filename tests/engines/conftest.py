"""Fixtures for the engine tests: a tiny random Qwen3 model (SmolLM2 tokenizer), a live engine, a reference model."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from forge.ground.models import tiny_model_dir

# initializer_range 0.2: a random model whose greedy continuations vary (the default 0.02 repeats a token).
TINY_KW: dict[str, Any] = {"initializer_range": 0.2}


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return tiny_model_dir("qwen3", **TINY_KW)


@pytest.fixture(scope="session")
def ref_model(model_dir: Path):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[Any]:
    from gateway.engines.native import start_engine_in_thread

    handle = start_engine_in_thread(str(model_dir), device="cpu", max_running_requests=8, context_length=256)
    yield handle
    handle.stop()


def greedy_reference(model: Any, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0
        )
    return out[0, len(prompt) :].tolist()


class RecordingProxy:
    """A real HTTP proxy in front of an engine that records every request (method, path, JSON body)."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.records: list[dict[str, Any]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, request: Any) -> Any:
        import aiohttp
        from aiohttp import web

        raw = await request.read()
        body = json.loads(raw) if raw.strip() else None
        self.records.append({"method": request.method, "path": request.path, "body": body})
        async with aiohttp.ClientSession() as session:
            async with session.request(
                request.method,
                self.target + request.path_qs,
                data=raw,
                headers={"Content-Type": "application/json"},
            ) as resp:
                return web.Response(
                    body=await resp.read(), status=resp.status, content_type=resp.content_type
                )

    def start(self) -> RecordingProxy:
        from aiohttp import web

        async def setup() -> Any:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return runner, site._server.sockets[0].getsockname()[1]

        self._thread.start()
        self._runner, port = asyncio.run_coroutine_threadsafe(setup(), self._loop).result(30)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="session")
def greedy(ref_model: Any):
    """greedy(prompt, n) → model.generate's greedy continuation of n tokens (no EOS stop)."""
    return lambda prompt, n: greedy_reference(ref_model, prompt, n)


@pytest.fixture
def recording_proxy():
    """recording_proxy(url) → a started RecordingProxy in front of url (stopped after the test)."""
    proxies: list[RecordingProxy] = []

    def make(target: str) -> RecordingProxy:
        proxies.append(RecordingProxy(target).start())
        return proxies[-1]

    yield make
    for p in proxies:
        p.stop()
