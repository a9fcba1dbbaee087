"""Routing model calls across engines: least-loaded, sticky per session, prefix affinity for new
sessions and unscoped calls (engine prefix-cache reuse).

A session keeps the engine of its first call while that engine is up and not much busier than the
least-loaded one (`sticky_slack` requests more). A call with no engine yet (a session's first call,
or any unscoped call) goes by prefix affinity: its key is a hash of the prompt's first
`affinity_tokens` tokens (all of a shorter prompt), and it goes to the engine that last served
that key under the same rule, so the siblings of a group (the G samples of one prompt: separate
sessions with the same prompt) share one engine's prefix cache while load allows; otherwise to the
least-loaded engine, which then holds the key. Both maps are bounded LRUs.

An engine that fails to answer (connection refused, 5xx) is skipped for `retry_after_s` and the
call is tried once more on another engine, if one is up; when none is, the caller gets
`EngineUnavailableError` (the gateway's 503).

Per engine, `load()` reports calls sent, prompt tokens, and the prompt tokens the engine reused
from its prefix cache (`meta_info.cached_tokens`), and their ratio `hit_rate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from forge.ground.engine_client import EngineClient, EngineUnavailableError, GenerateResult


@dataclass
class EngineSlot:
    url: str
    client: EngineClient
    in_flight: int = 0
    down_until: float = 0.0
    served: int = 0
    failures: int = 0
    last_error: str = ""
    calls: int = 0  # sent, failed ones included
    prompt_tokens: int = 0  # of the answered calls
    cached_tokens: int = 0  # of those, reused from the engine's prefix cache

    def up(self, now: float) -> bool:
        return now >= self.down_until


@dataclass
class Router:
    urls: list[str]
    retry_after_s: float = 2.0
    sticky_slack: int = 8
    api_key: str | None = None
    max_sticky: int = 200_000
    affinity_tokens: int = 64
    max_affinity: int = 200_000
    engines: list[EngineSlot] = field(init=False)
    _sticky: OrderedDict[str, int] = field(init=False, default_factory=OrderedDict)
    _affinity: OrderedDict[int, int] = field(init=False, default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if self.affinity_tokens < 1:
            raise ValueError(f"affinity_tokens must be >= 1, got {self.affinity_tokens}")
        self.engines = [EngineSlot(u.rstrip("/"), EngineClient(u, api_key=self.api_key)) for u in self.urls]

    def prefix_key(self, input_ids: list[int] | None) -> int | None:
        """The affinity key of a prompt: a hash of its first `affinity_tokens` tokens (None: no
        tokens, no affinity). Collisions only cost a cache hit, never correctness."""
        if not input_ids:
            return None
        return hash(tuple(input_ids[: self.affinity_tokens]))

    def _fits(self, i: int | None, live: list[int], best: int) -> bool:
        """Engine i is up and at most `sticky_slack` requests busier than the least-loaded one."""
        return i in live and self.engines[i].in_flight <= self.engines[best].in_flight + self.sticky_slack

    def pick(
        self, session_id: str | None, exclude: set[int] | None = None, input_ids: list[int] | None = None
    ) -> int | None:
        """The engine for a call of `session_id` (None: unscoped) with prompt `input_ids` (None: no
        prefix affinity), skipping the engines in `exclude`; None when no engine is up."""
        now = time.monotonic()
        live = [i for i, e in enumerate(self.engines) if e.up(now) and i not in (exclude or set())]
        if not live:
            return None
        best = min(live, key=lambda i: (self.engines[i].in_flight, self.engines[i].served))
        if session_id is not None:
            sticky = self._sticky.get(session_id)
            if self._fits(sticky, live, best):
                self._sticky.move_to_end(session_id)
                return sticky
        chosen = best
        prefix = self.prefix_key(input_ids)  # only hashed for calls that have no engine yet
        if prefix is not None:
            near = self._affinity.get(prefix)
            if near is not None and self._fits(near, live, best):
                chosen = near
            self._affinity[prefix] = chosen
            self._affinity.move_to_end(prefix)
            while len(self._affinity) > self.max_affinity:
                self._affinity.popitem(last=False)
        if session_id is not None:
            self._sticky[session_id] = chosen
            self._sticky.move_to_end(session_id)
            while len(self._sticky) > self.max_sticky:
                self._sticky.popitem(last=False)
        return chosen

    def forget(self, session_id: str) -> None:
        self._sticky.pop(session_id, None)

    async def generate(
        self, session_id: str | None, input_ids: list[int], sampling: dict[str, Any], rid: str
    ) -> tuple[GenerateResult, str]:
        """The engine's answer and the URL of the engine that gave it."""
        tried: set[int] = set()
        last: Exception | None = None
        for _ in range(2):
            i = self.pick(session_id, tried, input_ids)
            if i is None:
                break
            slot = self.engines[i]
            slot.in_flight += 1
            slot.calls += 1
            try:
                result = await slot.client.generate(input_ids, sampling, rid=rid, return_logprob=True)
                slot.served += 1
                slot.prompt_tokens += result.prompt_tokens or len(input_ids)
                slot.cached_tokens += result.cached_tokens
                return result, slot.url
            except EngineUnavailableError as exc:
                slot.failures += 1
                slot.last_error = str(exc)
                slot.down_until = time.monotonic() + self.retry_after_s
                tried.add(i)
                last = exc
            except asyncio.CancelledError:  # timeout or client gone: stop the engine's work too
                asyncio.get_running_loop().create_task(self._abort(slot, rid))
                raise
            finally:
                slot.in_flight -= 1
        if last is not None:
            raise EngineUnavailableError(f"no inference engine could serve the request: {last}")
        raise EngineUnavailableError("no inference engine is up (all failed recently)")

    async def _abort(self, slot: EngineSlot, rid: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(slot.client.abort(rid), 5.0)

    async def model_info(self) -> dict[str, Any] | None:
        for slot in self.engines:
            with contextlib.suppress(Exception):
                return await asyncio.wait_for(slot.client.get_model_info(), 10.0)
        return None

    def load(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {
                "url": e.url,
                "in_flight": e.in_flight,
                "served": e.served,
                "failures": e.failures,
                "up": e.up(now),
                "last_error": e.last_error,
                "calls": e.calls,
                "prompt_tokens": e.prompt_tokens,
                "cached_tokens": e.cached_tokens,
                "hit_rate": e.cached_tokens / e.prompt_tokens if e.prompt_tokens else 0.0,
            }
            for e in self.engines
        ]

    async def aclose(self) -> None:
        for e in self.engines:
            await e.client.aclose()
