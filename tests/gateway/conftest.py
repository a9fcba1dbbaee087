"""Fixtures for the gateway tests: real engines (the built-in one, in-process) over a tiny random
model and over scripted models (gateway.testing: real weights set to write a known reply), real
gateways on real sockets, and the real data pool (tests/conftest.py: `pool`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.testing import ANSWER_SCRIPT, TOOL_SCRIPT

CONTEXT = 1024


@pytest.fixture(scope="session")
def random_model_dir() -> Path:
    from forge.models import tiny_model_dir

    # initializer_range 0.2: greedy continuations vary (the default repeats one token)
    return tiny_model_dir("qwen3", initializer_range=0.2)


@pytest.fixture(scope="session")
def tool_model_dir() -> Path:
    from gateway.testing import scripted_model_dir

    return scripted_model_dir(TOOL_SCRIPT, context=CONTEXT)


@pytest.fixture(scope="session")
def answer_model_dir() -> Path:
    from gateway.testing import scripted_model_dir

    return scripted_model_dir(ANSWER_SCRIPT, context=CONTEXT)


def _engine(path: Path) -> Any:
    from gateway.engines.native import start_engine_in_thread

    return start_engine_in_thread(str(path), device="cpu", max_running_requests=16, context_length=CONTEXT)


@pytest.fixture(scope="session")
def random_engine(random_model_dir: Path) -> Iterator[Any]:
    handle = _engine(random_model_dir)
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def tool_engine(tool_model_dir: Path) -> Iterator[Any]:
    handle = _engine(tool_model_dir)
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def answer_engine(answer_model_dir: Path) -> Iterator[Any]:
    handle = _engine(answer_model_dir)
    yield handle
    handle.stop()


@pytest.fixture
def make_gateway() -> Iterator[Callable[..., Any]]:
    """make_gateway(engine_urls, model_dir, pool=None, **GatewayConfig fields) → a started handle."""
    from gateway import GatewayConfig, start_gateway_in_thread

    handles: list[Any] = []

    def make(engine_urls: list[str], model_dir: Path, pool: Any = None, **cfg: Any) -> Any:
        config = GatewayConfig(engine_urls=list(engine_urls), model=str(model_dir), **cfg)
        handles.append(start_gateway_in_thread(config, pool=pool))
        return handles[-1]

    yield make
    for h in handles:
        h.stop()


@pytest.fixture
def tool_gateway(make_gateway, tool_engine, tool_model_dir, pool) -> Any:
    return make_gateway([tool_engine.url], tool_model_dir, pool)


@pytest.fixture
def random_gateway(make_gateway, random_engine, random_model_dir, pool) -> Any:
    return make_gateway([random_engine.url], random_model_dir, pool)
