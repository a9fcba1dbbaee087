"""Fuzzing every route of the gateway's OpenAPI document with schemathesis (valid and invalid bodies,
paths and parameters): no request may get a 5xx, and every error is JSON in the API's style."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from gateway.openapi import openapi_document

schema = schemathesis.openapi.from_dict(openapi_document(("default",)))
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=8)


@pytest.fixture(scope="module")
def fuzz_gateway(random_engine: Any, random_model_dir: Any) -> Any:
    from gateway import GatewayConfig, start_gateway_in_thread

    # a short context keeps each generation short (the fuzzer asks for up to the whole context)
    cfg = GatewayConfig(
        engine_urls=[random_engine.url], model=str(random_model_dir), context_length=64, default_max_tokens=4
    )
    handle = start_gateway_in_thread(cfg)
    yield handle
    handle.stop()


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_gets_a_server_error(case: Any, fuzz_gateway: Any) -> None:
    response = case.call(base_url=fuzz_gateway.url, timeout=60)
    assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        if "/v1/messages" in case.formatted_path:
            assert body["type"] == "error" and body["error"]["message"]
        else:
            assert body["error"]["message"]
