"""Routing across engines: least-loaded, sticky per session, failing over from a dead engine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.router import Router
from gateway.testing import open_session, session_info


def test_pick_is_least_loaded_and_sticky() -> None:
    r = Router(["http://a", "http://b", "http://c"], sticky_slack=2)
    r.engines[0].in_flight, r.engines[1].in_flight, r.engines[2].in_flight = 3, 1, 2
    assert r.pick(None) == 1
    assert r.pick("s1") == 1
    r.engines[1].in_flight = 3  # busier now, but within the slack of the least loaded (c: 2)
    assert r.pick("s1") == 1
    r.engines[1].in_flight = 5  # beyond it: the session moves, and stays on its new engine
    assert r.pick("s1") == 2
    r.engines[1].in_flight = 0
    assert r.pick("s1") == 2 and r.pick(None) == 1
    r.engines[2].down_until = float("inf")  # its engine failed: moved to a live one
    assert r.pick("s1") == 1
    r.forget("s1")
    assert "s1" not in r._sticky
    for e in r.engines:
        e.down_until = float("inf")
    assert r.pick("s2") is None


@pytest.fixture(scope="module")
def second_engine(random_model_dir: Any) -> Iterator[Any]:
    from gateway.engines.native import start_engine_in_thread

    handle = start_engine_in_thread(
        str(random_model_dir), device="cpu", max_running_requests=16, context_length=1024
    )
    yield handle
    handle.stop()


def test_sessions_stick_and_load_spreads(
    make_gateway: Any, random_engine: Any, second_engine: Any, random_model_dir: Any, pool: Any
) -> None:
    gw = make_gateway([random_engine.url, second_engine.url], random_model_dir, pool)
    sessions = [open_session(gw.url, pool) for _ in range(6)]

    async def episode(sess: dict[str, Any]) -> None:
        c = openai.AsyncOpenAI(base_url=f"{sess['base_url']}/v1", api_key="x", max_retries=0, timeout=120)
        msgs: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
        for turn in range(3):
            out = await c.chat.completions.create(model="default", messages=msgs, max_tokens=8)
            msgs += [
                {"role": "assistant", "content": out.choices[0].message.content},
                {"role": "user", "content": str(turn)},
            ]
        await c.close()

    async def main() -> None:
        await asyncio.gather(*(episode(s) for s in sessions))

    asyncio.run(main())
    used = set()
    for sess in sessions:
        engines = {s["engine"] for s in session_info(gw.url, sess["session_id"])["samples"]}
        assert len(engines) == 1, engines  # every call of a session on one engine
        used |= engines
    assert used == {random_engine.url, second_engine.url}  # concurrent sessions spread over both
    stats = httpx.get(f"{gw.url}/stats").json()
    assert sum(e["served"] for e in stats["engines"]) == 18


def test_a_dead_engine_is_skipped(make_gateway: Any, random_engine: Any, random_model_dir: Any) -> None:
    gw = make_gateway(["http://127.0.0.1:1", random_engine.url], random_model_dir)
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    for _ in range(4):
        c.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    dead, live = httpx.get(f"{gw.url}/stats").json()["engines"]
    assert dead["failures"] >= 1 and not dead["up"] and "unreachable" in dead["last_error"]
    assert live["served"] == 4
