"""Fixtures for the gateway tests: real engines (the built-in one, in-process) over a tiny random
model and over scripted models (built in tests/conftest.py from `scripted_replies` here), real
gateways on real sockets, and the real data pool (tests/conftest.py: `pool`)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.gateway import ANSWER_SCRIPT, TOOL_SCRIPT, Scripts

CONTEXT = 1024


@pytest.fixture(scope="session")
def scripted_replies() -> Scripts:
    return Scripts(TOOL_SCRIPT, ANSWER_SCRIPT, CONTEXT)


@pytest.fixture
def tool_gateway(make_gateway, tool_engine, tool_model_dir, pool) -> Any:
    return make_gateway([tool_engine.url], tool_model_dir, pool)


@pytest.fixture
def random_gateway(make_gateway, random_engine, random_model_dir, pool) -> Any:
    return make_gateway([random_engine.url], random_model_dir, pool)
