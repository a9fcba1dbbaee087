"""`AsyncAppender`: the same append transaction as `DataPool.append_samples`, from an event loop."""

import asyncio

import pytest
import redis

from data_pool import (
    DataPool,
    EmbeddedRedis,
    PoolConfig,
    RedisUnavailable,
    StaleTaskError,
    UnknownTaskError,
    connect,
)
from data_pool.aio import AsyncAppender, _parse
from forge.ground.types import encode
from tests.helpers.pool import make_sample, make_tasks


def _running(pool, n=1):
    pool.submit(make_tasks(n))
    tasks = [pool.acquire_task("w") for _ in range(n)]
    for t in tasks:
        pool.open_session(t.id, f"s-{t.id}")
    return tasks


async def _with_appender(pool, fn):
    appender = AsyncAppender(pool)
    try:
        return await fn(appender)
    finally:
        await appender.aclose()


def test_writes_exactly_what_the_sync_path_writes(pool):
    _running(pool, 2)
    sync = [make_sample("t0", "s-t0", i, n=i + 1, weight_version=3) for i in range(3)]
    pool.append_samples(sync)
    asynced = [make_sample("t1", "s-t1", i, n=i + 1, weight_version=3) for i in range(3)]
    asynced[1].completion_ids = [2**31 - 1, 0]
    asynced[1].logprobs = [-1.5, 0.0]
    asyncio.run(_with_appender(pool, lambda a: a.append_samples(asynced)))
    raw = redis.Redis.from_url(pool.url)
    assert raw.lrange(f"{pool.p}:s:t1", 0, -1) == [encode(s) for s in asynced]
    assert raw.lrange(f"{pool.p}:s:t0", 0, -1) == [encode(s) for s in sync]
    assert pool.samples("t1") == asynced
    assert raw.hget(f"{pool.p}:t:t1", "minwv") == raw.hget(f"{pool.p}:t:t0", "minwv") == b"3"
    assert pool.task_status("t1").n_samples == 3
    raw.close()


def test_refused_samples_raise_the_pool_errors_and_are_not_kept(pool):
    _running(pool)

    async def run(a):
        with pytest.raises(StaleTaskError, match="not open"):
            await a.append_samples([make_sample("t0", "never-opened")])
        with pytest.raises(UnknownTaskError):
            await a.append_samples([make_sample("nope", "s-t0")])
        with pytest.raises(ValueError, match="session s-t0 of task t0"):
            pool.submit([make_tasks(1, prefix="u")[0]])
            pool.acquire_task("w")
            pool.open_session("u0", "s-u0")
            await a.append_samples([make_sample("u0", "s-t0")])
        # mixed: the good one is kept, the first error raised (as DataPool.append_samples does)
        with pytest.raises(StaleTaskError):
            await a.append_samples([make_sample("t0", "s-t0", 0), make_sample("t0", "bad", 1)])
        assert [s.turn for s in pool.samples("t0")] == [0]
        pool.abort("t0", "crashed")
        with pytest.raises(StaleTaskError):
            await a.append_samples([make_sample("t0", "s-t0", 2)])

    asyncio.run(_with_appender(pool, run))
    assert pool.samples("u0") == []


def test_concurrent_appends_share_one_connection_and_all_land(pool):
    _running(pool, 4)

    async def run(a):
        await asyncio.gather(
            *(a.append_samples([make_sample(f"t{i % 4}", f"s-t{i % 4}", i // 4)]) for i in range(200))
        )
        return a._proto

    proto = asyncio.run(_with_appender(pool, run))
    assert not proto.waiting
    for i in range(4):
        assert sorted(s.turn for s in pool.samples(f"t{i}")) == list(range(50))


def test_flushed_scripts_are_reloaded_without_duplicates(pool):
    _running(pool)

    async def run(a):
        await a.append_samples([make_sample("t0", "s-t0", 0)])
        redis.Redis.from_url(pool.url).script_flush()
        await a.append_samples([make_sample("t0", "s-t0", 1)])
        with pytest.raises(StaleTaskError):  # the reloaded script still checks
            await a.append_samples([make_sample("t0", "other", 2)])

    asyncio.run(_with_appender(pool, run))
    assert [s.turn for s in pool.samples("t0")] == [0, 1]


def test_killed_connection_reconnects_and_a_dead_server_is_redis_unavailable(tmp_path):
    server = EmbeddedRedis(tmp_path).start()
    try:
        pool = connect(PoolConfig(redis_url=server.url))
        _running(pool)

        async def run(a):
            await a.append_samples([make_sample("t0", "s-t0", 0)])
            killed = redis.Redis.from_url(server.url).client_kill_filter(_type="normal", skipme=True)
            assert killed >= 1
            await asyncio.sleep(0.05)
            await a.append_samples([make_sample("t0", "s-t0", 1)])  # a new connection
            server.stop()
            await asyncio.sleep(0.05)
            with pytest.raises(RedisUnavailable):
                await a.append_samples([make_sample("t0", "s-t0", 2)])

        asyncio.run(_with_appender(pool, run))
    finally:
        server.stop()


def test_password_and_database_from_the_url(tmp_path):
    with EmbeddedRedis(tmp_path) as server:
        redis.Redis.from_url(server.url).config_set("requirepass", "right")
        url = server.url.replace("redis://", "redis://:right@").rsplit("/", 1)[0] + "/3"
        pool = connect(PoolConfig(redis_url=url))
        _running(pool)
        asyncio.run(_with_appender(pool, lambda a: a.append_samples([make_sample("t0", "s-t0")])))
        assert len(pool.samples("t0")) == 1
        assert redis.Redis.from_url(url).dbsize() > 0
        assert redis.Redis.from_url(url.rsplit("/", 1)[0] + "/0").dbsize() == 0
        wrong = AsyncAppender(pool)
        wrong._kw["password"] = "wrong"
        with pytest.raises(RedisUnavailable, match="refused"):
            asyncio.run(wrong.append_samples([make_sample("t0", "s-t0", 1)]))
        pool.close()


def test_tls_urls_are_left_to_the_thread_path(pool):
    pool_tls = DataPool.__new__(DataPool)  # a TLS pool's client, never connected
    pool_tls.url = "rediss://127.0.0.1:1/0"
    pool_tls.client = redis.Redis.from_url(pool_tls.url)
    assert AsyncAppender.supported(pool) and not AsyncAppender.supported(pool_tls)
    with pytest.raises(ValueError, match="thread path"):
        AsyncAppender(pool_tls)


@pytest.mark.parametrize(
    "raw, value",
    [
        (b"+OK\r\n", b"OK"),
        (b":-12\r\n", -12),
        (b"$3\r\na\r\n\r\n", b"a\r\n"),
        (b"$-1\r\n", None),
        (b"*2\r\n:1\r\n$5\r\nSTALE\r\n", [1, b"STALE"]),
        (b"*1\r\n*0\r\n", [[]]),
    ],
)
def test_resp_parser_whole_and_in_pieces(raw, value):
    assert _parse(bytearray(raw), 0) == (value, len(raw))
    for cut in range(len(raw)):
        assert _parse(bytearray(raw[:cut]), 0) is None
    err, end = _parse(bytearray(b"-NOSCRIPT No matching script\r\n"), 0)
    assert str(err) == "NOSCRIPT No matching script" and end == 30
