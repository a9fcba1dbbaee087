"""Fixtures for the gateway tests: real engines (the built-in one, in-process) over a tiny random
model and over scripted models (tests.helpers.gateway: real weights set to write a known reply), real
gateways on real sockets, and the real data pool (tests/conftest.py: `pool`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.gateway import ANSWER_SCRIPT, TOOL_SCRIPT

CONTEXT = 1024


@pytest.fixture(scope="session")
def tool_model_dir() -> Path:
    from tests.helpers.gateway import scripted_model_dir

    return scripted_model_dir(TOOL_SCRIPT, context=CONTEXT)


@pytest.fixture(scope="session")
def answer_model_dir() -> Path:
    from tests.helpers.gateway import scripted_model_dir

    return scripted_model_dir(ANSWER_SCRIPT, context=CONTEXT)


@pytest.fixture(scope="session")
def random_engine(start_engine, random_model_dir: Path) -> Any:
    return start_engine(random_model_dir, CONTEXT)


@pytest.fixture(scope="session")
def tool_engine(start_engine, tool_model_dir: Path) -> Any:
    return start_engine(tool_model_dir, CONTEXT)


@pytest.fixture(scope="session")
def answer_engine(start_engine, answer_model_dir: Path) -> Any:
    return start_engine(answer_model_dir, CONTEXT)


@pytest.fixture
def tool_gateway(make_gateway, tool_engine, tool_model_dir, pool) -> Any:
    return make_gateway([tool_engine.url], tool_model_dir, pool)


@pytest.fixture
def random_gateway(make_gateway, random_engine, random_model_dir, pool) -> Any:
    return make_gateway([random_engine.url], random_model_dir, pool)
