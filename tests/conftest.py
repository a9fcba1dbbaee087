"""Shared fixtures. Data pool (owned by the data_pool package; others only use these):

- `redis_server` (session): an embedded redis-server for the whole test session, with `.url`,
  `.pid`, `.port`; AOF in a temporary directory.
- `pool` (per test): a `data_pool.DataPool` connected to it, the database flushed first.
- `make_pool(**PoolConfig overrides)` (per test): more pools on the same flushed database, e.g.
  `make_pool(max_in_flight=4, window=2)`; all are closed after the test.

data_pool is imported inside the fixtures so a broken data pool cannot break unrelated tests.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from data_pool.server import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def make_pool(redis_server):
    import redis

    from data_pool import PoolConfig, connect

    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    pools = []

    def make(**overrides):
        p = connect(PoolConfig(redis_url=redis_server.url, **overrides))
        pools.append(p)
        return p

    yield make
    for p in pools:
        p.close()


@pytest.fixture
def pool(make_pool):
    return make_pool()
