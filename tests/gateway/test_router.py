"""Routing across engines: least-loaded, sticky per session, prefix affinity for new sessions and
unscoped calls (siblings of a group share an engine), failing over from a dead engine, and the
per-engine prefix-cache hit rate.

Besides real built-in engines, some tests use a scripted engine: a real aiohttp server that speaks
SGLang's `/generate` and reports `cached_tokens` from a prefix cache it simulates (the longest
prefix shared with a prompt it has seen, at most all but one token, as SGLang counts it), and that
can hold its answers so that calls stay in flight.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from forge.ground.engine_client import EngineProtocolError, parse_generate
from gateway.router import Router
from gateway.serving import ServedApp, serve_in_thread
from tests.helpers.gateway import open_session, session_info


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


def test_pick_prefix_affinity() -> None:
    r = Router(["http://a", "http://b", "http://c"], sticky_slack=2, affinity_tokens=4)
    a, b, c = r.engines
    prompt, other = [1, 2, 3, 4, 5, 6], [9, 9, 9, 9]
    a.in_flight, b.in_flight, c.in_flight = 1, 0, 1
    assert r.pick("g0", input_ids=prompt) == 1  # a new session: least loaded
    b.in_flight = 3  # busier now, but within the slack of the least loaded (a, c: 1)
    assert r.pick("g1", input_ids=prompt) == 1  # a sibling: same engine as the first
    assert r.pick("g2", input_ids=[1, 2, 3, 4, 7]) == 1  # the key is the first affinity_tokens tokens
    assert r.pick(None, input_ids=prompt) == 1  # unscoped calls too
    assert r.pick(None) == 0  # no prompt, no affinity: least loaded
    c.in_flight = 0
    assert r.pick("x", input_ids=other) == 2  # another prompt: least loaded
    c.in_flight = 1
    assert r.pick("y", input_ids=[1, 2, 3]) == 0  # a short prompt is its own key (all of it)
    assert r.pick("z", input_ids=[1, 2, 3]) == 0
    assert r.pick(None, input_ids=other) == 2
    b.in_flight, c.in_flight = 5, 0  # beyond the slack: the next sibling goes to the least loaded ...
    assert r.pick("g3", input_ids=prompt) == 2
    c.in_flight = 2
    assert r.pick("g4", input_ids=prompt) == 2  # ... which holds the prefix from then on
    b.in_flight = 3
    assert r.pick("g1", input_ids=prompt) == 1  # a session stays on its engine (within the slack)
    c.down_until = float("inf")  # the prefix's engine failed: the least-loaded live one
    assert r.pick("g5", input_ids=prompt) == 0
    assert r.pick("g3", input_ids=prompt) == 0  # its session moves there too
    assert r.pick(None, input_ids=prompt, exclude={0}) == 1  # a retry skips the engine that failed
    r2 = Router(["http://a", "http://b"], max_affinity=2, affinity_tokens=1)
    for t in range(5):
        r2.pick(None, input_ids=[t])
    assert len(r2._affinity) == 2  # a bounded LRU
    with pytest.raises(ValueError, match="affinity_tokens"):
        Router(["http://a"], affinity_tokens=0)


def test_parse_cached_tokens() -> None:
    def answer(**meta: Any) -> dict[str, Any]:
        return {"output_ids": [1], "meta_info": {"finish_reason": {"type": "length"}, **meta}}

    assert parse_generate(answer(), False).cached_tokens == 0  # older engines: none reported
    assert parse_generate(answer(cached_tokens=None), False).cached_tokens == 0
    assert parse_generate(answer(cached_tokens=7, prompt_tokens=9), False).cached_tokens == 7
    for bad in (-1, 1.5, "3", True, [2]):
        with pytest.raises(EngineProtocolError, match="cached_tokens"):
            parse_generate(answer(cached_tokens=bad), False)


@dataclass
class ScriptedEngine:
    """A real HTTP server speaking SGLang's `/generate` (two output tokens, log-probs, a simulated
    prefix cache) and `/get_model_info`; answers wait while `hold` is clear."""

    served: ServedApp | None = None
    hold: threading.Event = field(default_factory=threading.Event)
    seen: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.hold.set()

    @property
    def url(self) -> str:
        assert self.served is not None
        return f"http://127.0.0.1:{self.served.port}"

    def cached(self, ids: list[int]) -> int:
        best = 0
        for old in self.seen:
            n = 0
            while n < min(len(old), len(ids)) and old[n] == ids[n]:
                n += 1
            best = max(best, n)
        return min(best, len(ids) - 1)

    async def generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        ids = [int(t) for t in body["input_ids"]]
        cached = self.cached(ids)
        self.seen.append(ids)
        while not self.hold.is_set():
            await asyncio.sleep(0.005)
        out = [5, 6]
        meta = {
            "id": body.get("rid", ""),
            "finish_reason": {"type": "length", "length": len(out)},
            "prompt_tokens": len(ids),
            "completion_tokens": len(out),
            "cached_tokens": cached,
            "weight_version": "0",
            "output_token_logprobs": [[-0.5, t, None] for t in out],
        }
        return web.json_response({"text": "", "output_ids": out, "meta_info": meta})

    async def model_info(self, request: web.Request) -> web.Response:
        return web.json_response({"is_generation": True, "weight_version": "0"})

    def start(self) -> ScriptedEngine:
        def app() -> web.Application:
            a = web.Application()
            a.router.add_post("/generate", self.generate)
            a.router.add_get("/get_model_info", self.model_info)
            return a

        self.served = serve_in_thread(app, "127.0.0.1", 0, name="scripted-engine")
        return self


@pytest.fixture
def scripted() -> Iterator[list[ScriptedEngine]]:
    engines = [ScriptedEngine().start() for _ in range(3)]
    yield engines
    for e in engines:
        e.hold.set()
        assert e.served is not None
        e.served.stop()


def test_siblings_share_an_engine_and_the_hit_rate_adds_up(scripted: list[ScriptedEngine]) -> None:
    a, b, _ = scripted
    prompt = list(range(100, 140))  # 40 tokens: its key is all of it (affinity_tokens 64)
    other = list(range(200, 230))

    async def main() -> None:
        r = Router([a.url, b.url], sticky_slack=2)
        sp = {"max_new_tokens": 2}
        for e in (a, b):
            e.hold.clear()
        # a group of 5 siblings at once: a takes 3 (in flight 0, 1, 2: within the slack of b's 0),
        # the 4th finds a beyond it and goes to b, which then holds the prefix for the 5th
        calls = [asyncio.ensure_future(r.generate(f"g{i}", prompt, sp, f"rid-g{i}-0")) for i in range(5)]
        await asyncio.sleep(0.2)
        assert [e["in_flight"] for e in r.load()] == [3, 2]
        for e in (a, b):
            e.hold.set()
        urls = [url for _, url in await asyncio.gather(*calls)]
        assert urls == [a.url, a.url, a.url, b.url, b.url]
        # every session's next turn (its prompt extended) stays on its engine; a new group whose
        # prompt differs goes to the least-loaded engine (a tie: the one that served fewer)
        for i in range(5):
            _, url = await r.generate(f"g{i}", [*prompt, 5, 6, 7], sp, f"rid-g{i}-1")
            assert url == urls[i]
        _, url = await r.generate("h0", other, sp, "rid-h0")
        assert url == b.url
        load = r.load()
        # engine a: 3 first turns (cached 0, 39, 39: all but the last token of the first) + 3 second
        # turns (40: the first turn's prompt; then 42, the second turn of the session before)
        assert [e["calls"] for e in load] == [6, 5] and [e["served"] for e in load] == [6, 5]
        assert load[0]["prompt_tokens"] == 3 * 40 + 3 * 43
        assert load[0]["cached_tokens"] == 0 + 39 + 39 + 40 + 42 + 42
        # engine b: 2 first turns (0, 39), 2 second turns (40, 42), another prompt (0)
        assert load[1]["prompt_tokens"] == 2 * 40 + 2 * 43 + 30
        assert load[1]["cached_tokens"] == 0 + 39 + 40 + 42 + 0
        for e in load:
            assert e["hit_rate"] == pytest.approx(e["cached_tokens"] / e["prompt_tokens"])
        await r.aclose()

    asyncio.run(main())


def test_unscoped_calls_follow_the_prefix_and_failures_count(scripted: list[ScriptedEngine]) -> None:
    a, b, _ = scripted
    prompt = list(range(300, 400))  # longer than affinity_tokens: the first 64 tokens are the key

    async def main() -> None:
        r = Router(["http://127.0.0.1:1", a.url, b.url])
        urls = [(await r.generate(None, [*prompt, t], {}, f"u{t}"))[1] for t in range(4)]
        assert urls == [a.url] * 4  # the dead engine was tried once, then a held the prefix
        dead, la, lb = r.load()
        assert (dead["calls"], dead["failures"], dead["served"], dead["prompt_tokens"]) == (1, 1, 0, 0)
        assert dead["hit_rate"] == 0.0 and not dead["up"]
        assert (la["calls"], la["prompt_tokens"], la["cached_tokens"]) == (4, 4 * 101, 3 * 100)
        assert lb["calls"] == 0 and lb["hit_rate"] == 0.0
        await r.aclose()

    asyncio.run(main())


def test_gateway_stats_show_the_hit_rate(
    make_gateway: Any, scripted: list[ScriptedEngine], random_model_dir: Any, pool: Any
) -> None:
    gw = make_gateway([e.url for e in scripted], random_model_dir, pool, context_length=1024)
    sessions = [open_session(gw.url, pool) for _ in range(4)]
    for sess in sessions:  # siblings one after another: all on the engine of the first
        c = openai.OpenAI(base_url=f"{sess['base_url']}/v1", api_key="x", max_retries=0)
        c.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "the task"}], max_tokens=2
        )
    engines = {s["engine"] for sess in sessions for s in session_info(gw.url, sess["session_id"])["samples"]}
    assert len(engines) == 1
    stats = {e["url"]: e for e in httpx.get(f"{gw.url}/stats").json()["engines"]}
    used = stats[engines.pop()]
    assert used["calls"] == 4 and used["prompt_tokens"] > 0
    assert used["cached_tokens"] == 3 * (used["prompt_tokens"] // 4 - 1)  # 3 siblings hit
    assert used["hit_rate"] == pytest.approx(used["cached_tokens"] / used["prompt_tokens"])
    assert sum(e["calls"] for e in stats.values()) == 4


def test_siblings_share_a_real_engine(
    make_gateway: Any, random_engine: Any, second_engine: Any, random_model_dir: Any, pool: Any
) -> None:
    gw = make_gateway([random_engine.url, second_engine.url], random_model_dir, pool)
    sessions = [open_session(gw.url, pool) for _ in range(4)]

    async def first_call(sess: dict[str, Any]) -> None:
        c = openai.AsyncOpenAI(base_url=f"{sess['base_url']}/v1", api_key="x", max_retries=0, timeout=120)
        msgs = [{"role": "user", "content": "one prompt, four samples"}]
        await c.chat.completions.create(model="default", messages=msgs, max_tokens=4)  # type: ignore[arg-type]
        await c.close()

    async def main() -> None:
        await asyncio.gather(*(first_call(s) for s in sessions))

    asyncio.run(main())
    engines = {s["engine"] for sess in sessions for s in session_info(gw.url, sess["session_id"])["samples"]}
    assert len(engines) == 1  # concurrent, but within the slack (8) of the idle engine
    stats = httpx.get(f"{gw.url}/stats").json()["engines"]
    assert sum(e["calls"] for e in stats) == 4
    assert all(set(e) >= {"prompt_tokens", "cached_tokens", "hit_rate"} for e in stats)


def test_sessions_stick_and_load_spreads(
    make_gateway: Any, random_engine: Any, second_engine: Any, random_model_dir: Any, pool: Any
) -> None:
    gw = make_gateway([random_engine.url, second_engine.url], random_model_dir, pool)
    sessions = [open_session(gw.url, pool) for _ in range(6)]

    async def episode(k: int, sess: dict[str, Any]) -> None:
        c = openai.AsyncOpenAI(base_url=f"{sess['base_url']}/v1", api_key="x", max_retries=0, timeout=120)
        # six different prompts (six groups of one): no prefix affinity holds them together
        msgs: list[dict[str, Any]] = [{"role": "user", "content": f"go {k}"}]
        for turn in range(3):
            out = await c.chat.completions.create(model="default", messages=msgs, max_tokens=8)
            msgs += [
                {"role": "assistant", "content": out.choices[0].message.content},
                {"role": "user", "content": str(turn)},
            ]
        await c.close()

    async def main() -> None:
        await asyncio.gather(*(episode(k, s) for k, s in enumerate(sessions)))

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
