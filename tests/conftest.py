"""Shared fixtures. Data pool (owned by the data_pool package; others only use these):

- `redis_server` (session): an embedded redis-server for the whole test session, with `.url`,
  `.pid`, `.port`; AOF in a temporary directory.
- `pool` (per test): a `data_pool.DataPool` connected to it, the database flushed first.
- `make_pool(**PoolConfig overrides)` (per test): more pools on the same flushed database, e.g.
  `make_pool(max_in_flight=4, window=2)`; all are closed after the test.

Gateway and engines (shared by tests/gateway and tests/agent_side):

- `random_model_dir` (session): a tiny random qwen3 model (initializer_range 0.2: greedy
  continuations vary).
- `start_engine(model_dir, context)` (session): the built-in engine in-process on CPU, one per
  (model, context), stopped at the end of the session.
- `make_gateway(engines, model_dir, pool=None, **GatewayConfig fields)` (per test): a gateway on a
  thread of its own; `engines` is an engine handle, a URL, or a list of those.

data_pool is imported inside the fixtures so a broken data pool cannot break unrelated tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="session")
def random_model_dir() -> Path:
    from forge.ground.models import tiny_model_dir

    # initializer_range 0.2: greedy continuations vary (the default repeats one token)
    return tiny_model_dir("qwen3", initializer_range=0.2)


@pytest.fixture(scope="session")
def start_engine() -> Iterator[Callable[[Path, int], Any]]:
    from gateway.engines.native import start_engine_in_thread

    engines: dict[tuple[str, int], Any] = {}

    def start(model_dir: Path, context: int) -> Any:
        key = (str(model_dir), context)
        if key not in engines:
            engines[key] = start_engine_in_thread(
                str(model_dir), device="cpu", max_running_requests=16, context_length=context
            )
        return engines[key]

    yield start
    for handle in engines.values():
        handle.stop()


# The engines over scripted models (tests.helpers.gateway: real weights set to write a known
# reply) and over the random model, at the context of the requesting directory's
# `scripted_replies` (tests/gateway, tests/agent_side). Module scope, so each directory's
# override is used; start_engine and the on-disk model cache keep one engine per model.
@pytest.fixture(scope="module")
def tool_model_dir(scripted_replies: Any) -> Path:
    from tests.helpers.gateway import scripted_model_dir

    return scripted_model_dir(scripted_replies.tool, context=scripted_replies.context)


@pytest.fixture(scope="module")
def answer_model_dir(scripted_replies: Any) -> Path:
    from tests.helpers.gateway import scripted_model_dir

    return scripted_model_dir(scripted_replies.answer, context=scripted_replies.context)


@pytest.fixture(scope="module")
def random_engine(start_engine, random_model_dir: Path, scripted_replies: Any) -> Any:
    return start_engine(random_model_dir, scripted_replies.context)


@pytest.fixture(scope="module")
def tool_engine(start_engine, tool_model_dir: Path, scripted_replies: Any) -> Any:
    return start_engine(tool_model_dir, scripted_replies.context)


@pytest.fixture(scope="module")
def answer_engine(start_engine, answer_model_dir: Path, scripted_replies: Any) -> Any:
    return start_engine(answer_model_dir, scripted_replies.context)


@pytest.fixture
def make_gateway() -> Iterator[Callable[..., Any]]:
    from gateway import GatewayConfig, start_gateway_in_thread

    handles: list[Any] = []

    def make(engines: Any, model_dir: Path, pool: Any = None, **cfg: Any) -> Any:
        engines = engines if isinstance(engines, list | tuple) else [engines]
        urls = [e if isinstance(e, str) else e.url for e in engines]
        config = GatewayConfig(engine_urls=urls, model=str(model_dir), **cfg)
        handles.append(start_gateway_in_thread(config, pool=pool))
        return handles[-1]

    yield make
    for h in handles:
        h.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Destroy the torch.distributed group that in-process trainers left (each joins the default
    gloo group; a test cannot know it is the last). Left to static destructors at interpreter exit,
    a gloo process group can crash the process after every test passed."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
