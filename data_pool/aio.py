"""`AsyncAppender`: `DataPool.append_samples` from an asyncio event loop, without a thread.

The gateway records one Sample per model call before it answers, so the append is on every
call's critical path. Through redis-py in a worker thread it costs ~0.5-0.7 ms (thread hand-off,
pure-Python command packing and reply parsing); the Redis work itself (MULTI, RPUSH, EVALSHA of
the append script, EXEC) takes ~0.1 ms. This sends exactly the transaction `DataPool._append`
sends, over one connection of its own on the caller's event loop: commands packed by hand,
replies read by a small RESP2 parser, concurrent appends pipelined on the connection (Redis
answers in order; each transaction is written whole, so they never interleave). Same checks, same
errors (`StaleTaskError`, `UnknownTaskError`, ... via `check_append`), the same NOSCRIPT recovery.

A lost connection fails the appends waiting on it with `RedisUnavailable` (an append whose
transaction may have reached Redis is never retried blindly); the next append reconnects.
Supported: redis:// (TCP, AUTH, SELECT) and unix://; for anything else (rediss:// TLS)
`AsyncAppender.supported` is False and callers use the thread path.

    appender = AsyncAppender(pool)  # on the loop that will use it
    await appender.append_samples(samples)
    await appender.aclose()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterable
from typing import Any

import redis

from data_pool.errors import RedisUnavailable
from data_pool.store import DataPool, append_groups, check_append, redact
from forge.ground.types import Sample, encode


class _Error(str):
    """A RESP error reply (kept as a value: an error inside EXEC's array is one result of many)."""


def _pack(out: list[bytes], *args: Any) -> None:
    out.append(b"*%d\r\n" % len(args))
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        elif isinstance(a, int):
            b = b"%d" % a
        else:
            raise TypeError(f"cannot send a {type(a).__name__} to Redis")
        out.append(b"$%d\r\n" % len(b))
        out.append(b)
        out.append(b"\r\n")


def _parse(buf: bytearray, pos: int) -> tuple[Any, int] | None:
    """One RESP2 value from buf[pos:]: (value, end) or None when it is not all there yet."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line = buf[pos], bytes(buf[pos + 1 : end])
    nxt = end + 2
    if kind == 43:  # +
        return line, nxt
    if kind == 45:  # -
        return _Error(line.decode(errors="replace")), nxt
    if kind == 58:  # :
        return int(line), nxt
    if kind == 36:  # $
        n = int(line)
        if n < 0:
            return None, nxt
        if len(buf) < nxt + n + 2:
            return None
        return bytes(buf[nxt : nxt + n]), nxt + n + 2
    if kind == 42:  # *
        n = int(line)
        if n < 0:
            return None, nxt
        items = []
        for _ in range(n):
            got = _parse(buf, nxt)
            if got is None:
                return None
            value, nxt = got
            items.append(value)
        return items, nxt
    raise ValueError(f"unexpected RESP reply type {chr(kind)!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        # per request in flight, in send order: its future, the replies it expects, those read
        self.waiting: collections.deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = (
            collections.deque()
        )
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        pos = 0
        try:
            while self.waiting and pos < len(self.buf):
                got = _parse(self.buf, pos)
                if got is None:
                    break
                value, pos = got
                fut, n, replies = self.waiting[0]
                replies.append(value)
                if len(replies) == n:
                    self.waiting.popleft()
                    if not fut.done():
                        fut.set_result(replies)
        except ValueError as exc:  # not Redis speaking: give up on this connection
            self._fail(RedisUnavailable(f"unreadable reply from Redis: {exc}"))
            if self.transport is not None:
                self.transport.close()
            return
        del self.buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisUnavailable(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def _fail(self, err: Exception) -> None:
        self.lost = err
        while self.waiting:
            fut, _, _ = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(err)

    def request(self, data: bytes, n_replies: int) -> asyncio.Future[list[Any]]:
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if self.lost is not None or self.transport is None or self.transport.is_closing():
            fut.set_exception(self.lost or RedisUnavailable("connection to Redis closed"))
            return fut
        self.waiting.append((fut, n_replies, []))
        self.transport.write(data)
        return fut


class AsyncAppender:
    """Appends samples to `pool` from the event loop it is used on (one connection, pipelined)."""

    def __init__(self, pool: DataPool, timeout_s: float = 30.0) -> None:
        if not self.supported(pool):
            raise ValueError(
                f"AsyncAppender cannot connect to {redact(pool.url)} (TLS?): use the thread path"
            )
        self.pool = pool
        self.timeout_s = timeout_s
        self._kw = dict(pool.client.connection_pool.connection_kwargs)
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @staticmethod
    def supported(pool: DataPool) -> bool:
        cls = pool.client.connection_pool.connection_class
        return cls in (redis.connection.Connection, redis.connection.UnixDomainSocketConnection)

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and proto.lost is None and proto.transport and not proto.transport.is_closing():
            return proto
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            proto = self._proto
            if (
                proto is not None
                and proto.lost is None
                and proto.transport
                and not proto.transport.is_closing()
            ):
                return proto
            self._proto = await self._connect()
            return self._proto

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        kw = self._kw
        timeout = kw.get("socket_connect_timeout") or self.pool.cfg.connect_timeout_s
        where = redact(self.pool.url)
        try:
            if "path" in kw:
                coro = loop.create_unix_connection(_Protocol, kw["path"])
            else:
                coro = loop.create_connection(
                    _Protocol, kw.get("host", "localhost"), int(kw.get("port", 6379))
                )
            _, proto = await asyncio.wait_for(coro, timeout)
        except (OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"cannot reach Redis at {where}: {exc!r}") from exc
        out: list[bytes] = []
        n = 0
        if kw.get("password") is not None:
            user = kw.get("username")
            _pack(out, "AUTH", *([user] if user else []), kw["password"])
            n += 1
        if int(kw.get("db") or 0):
            _pack(out, "SELECT", int(kw["db"]))
            n += 1
        if n:
            try:
                replies = await asyncio.wait_for(proto.request(b"".join(out), n), timeout)
            except (RedisUnavailable, TimeoutError) as exc:
                if proto.transport is not None:
                    proto.transport.close()
                raise RedisUnavailable(f"Redis at {where} did not answer AUTH/SELECT: {exc!r}") from exc
            bad = [r for r in replies if isinstance(r, _Error)]
            if bad:
                if proto.transport is not None:
                    proto.transport.close()
                raise RedisUnavailable(f"Redis at {where} refused the connection: {bad[0]}")
        return proto

    async def _transaction(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """MULTI, commands, EXEC; returns EXEC's results (errors as redis.ResponseError)."""
        out: list[bytes] = []
        _pack(out, "MULTI")
        for c in commands:
            _pack(out, *c)
        _pack(out, "EXEC")
        proto = await self._connection()
        fut = proto.request(b"".join(out), len(commands) + 2)
        try:
            replies = await asyncio.wait_for(fut, self.timeout_s)
        except TimeoutError:  # the connection's state is unknown now: drop it
            if proto.transport is not None:
                proto.transport.close()
            raise RedisUnavailable(
                f"Redis at {redact(self.pool.url)} did not answer within {self.timeout_s:g}s"
            ) from None
        queued, executed = replies[:-1], replies[-1]
        for r in queued:  # MULTI's OK and each QUEUED; an error here means EXEC aborted
            if isinstance(r, _Error):
                raise redis.ResponseError(str(r))
        if isinstance(executed, _Error):
            raise redis.ResponseError(str(executed))
        if not isinstance(executed, list):  # nil: a WATCH failed (never used here)
            raise RedisUnavailable("Redis discarded the transaction")
        return [_response(r) for r in executed]

    async def append_samples(self, samples: Iterable[Sample]) -> None:
        """`DataPool.append_samples` (one MULTI/EXEC: RPUSHes + the append script's checks)."""
        pool = self.pool
        items = [(s.task_id, s.session_id, int(s.weight_version), encode(s)) for s in samples]
        if not items:
            return
        groups = append_groups(items)
        pushes = [("RPUSH", key, *recs) for key, recs in pool.append_pushes(groups)]
        args = pool.append_args(groups)
        for retry in (False, True):
            results = await self._transaction([*pushes, ("EVALSHA", pool.scripts.append.sha, 0, *args)])
            last = results[-1]
            if isinstance(last, redis.ResponseError) and str(last).startswith("NOSCRIPT") and not retry:
                # the server restarted or flushed its scripts: undo the pushes, load, redo
                await self._transaction([("LTRIM", key, 0, -(n + 1)) for key, n in pool.append_undo(groups)])
                await asyncio.to_thread(pool.scripts.load, pool.client)
                continue
            break
        check_append(results)

    async def aclose(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
            with contextlib.suppress(Exception):
                await asyncio.sleep(0)  # let connection_lost run


def _response(r: Any) -> Any:
    if isinstance(r, _Error):
        return redis.ResponseError(str(r))
    if isinstance(r, list):
        return [_response(x) for x in r]
    return r
