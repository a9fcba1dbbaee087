"""Bad input gets a 4xx JSON error in the style of the API spoken; engine trouble gets 503 / 504;
limits (429 + Retry-After) and API keys."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway import GatewayConfig
from tests.helpers.gateway import ADD_TOOL

CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
MSG = {"model": "default", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
LONG = " ".join(["word"] * 1500)  # over the 1024-token context


@pytest.fixture(scope="module")
def gw(random_engine: Any, random_model_dir: Any) -> Iterator[Any]:
    from gateway import start_gateway_in_thread

    handle = start_gateway_in_thread(
        GatewayConfig(engine_urls=[random_engine.url], model=str(random_model_dir))
    )
    yield handle
    handle.stop()


def openai_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and "Traceback" not in resp.text
    return body["error"]


def anthropic_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert "Traceback" not in resp.text
    return body["error"]


OPENAI_BAD = [
    ("malformed JSON", b'{"model": "default", "messages": [', "could not parse the JSON body"),
    ("not an object", b"[1, 2]", "must be a JSON object"),
    ("unknown field", {**CHAT, "frobnicate": 1}, "Unrecognized request argument supplied: frobnicate"),
    ("mistyped field", {**CHAT, "temperature": "hot"}, "temperature"),
    ("mistyped message", {**CHAT, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("unknown role", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
    ("missing messages", {"model": "default"}, "Missing required parameter: 'messages'"),
    ("empty messages", {**CHAT, "messages": []}, "messages"),
    ("max_tokens 0", {**CHAT, "max_tokens": 0}, "max_tokens"),
    ("max_tokens negative", {**CHAT, "max_completion_tokens": -5}, "max_completion_tokens"),
    ("n too large", {**CHAT, "n": 1000}, "n"),
    (
        "non-object tool schema",
        {
            **CHAT,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
        },
        "Invalid schema for function 'f'",
    ),
    (
        "broken tool schema",
        {
            **CHAT,
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "object", "properties": 5}},
                }
            ],
        },
        "Invalid schema for function 'f'",
    ),
    (
        "bad tool name",
        {**CHAT, "tools": [{"type": "function", "function": {"name": "a b"}}]},
        "tools[0].function.name",
    ),
    ("tool_choice without tools", {**CHAT, "tool_choice": "required"}, "tool_choice"),
    (
        "unknown forced tool",
        {**CHAT, "tools": [ADD_TOOL], "tool_choice": {"type": "function", "function": {"name": "mul"}}},
        "mul",
    ),
    (
        "image input",
        {
            **CHAT,
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}
            ],
        },
        "text only",
    ),
    ("penalty", {**CHAT, "presence_penalty": 1.0}, "presence_penalty"),
    ("json mode", {**CHAT, "response_format": {"type": "json_object"}}, "response_format"),
    ("empty stop", {**CHAT, "stop": [""]}, "stop"),
    (
        "prompt over the context",
        {**CHAT, "messages": [{"role": "user", "content": LONG}]},
        "maximum context length",
    ),
    ("max_tokens over the context", {**CHAT, "max_tokens": 5000}, "maximum context length"),
]


@pytest.mark.parametrize("name,body,needle", OPENAI_BAD, ids=[b[0] for b in OPENAI_BAD])
def test_openai_bad_input(gw: Any, name: str, body: Any, needle: str) -> None:
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    err = openai_error(httpx.post(f"{gw.url}/v1/chat/completions", timeout=30, **kw), 400)
    assert err["type"] == "invalid_request_error" and needle in err["message"], err


ANTHROPIC_BAD = [
    ("malformed JSON", b"{", "error parsing the body"),
    ("unknown field", {**MSG, "frobnicate": 1}, "frobnicate: Extra inputs are not permitted"),
    ("missing max_tokens", {k: v for k, v in MSG.items() if k != "max_tokens"}, "max_tokens: Field required"),
    ("missing messages", {"model": "default", "max_tokens": 4}, "messages: Field required"),
    ("max_tokens 0", {**MSG, "max_tokens": 0}, "max_tokens"),
    (
        "mistyped block",
        {**MSG, "messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
        "messages[0].content[0].text",
    ),
    (
        "bad tool schema",
        {**MSG, "tools": [{"name": "f", "input_schema": {"type": "array"}}]},
        "Invalid schema",
    ),
    (
        "image block",
        {**MSG, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
        "not supported",
    ),
    (
        "prompt over the context",
        {**MSG, "messages": [{"role": "user", "content": LONG}]},
        "prompt is too long",
    ),
]


@pytest.mark.parametrize("name,body,needle", ANTHROPIC_BAD, ids=[b[0] for b in ANTHROPIC_BAD])
def test_anthropic_bad_input(gw: Any, name: str, body: Any, needle: str) -> None:
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    err = anthropic_error(httpx.post(f"{gw.url}/v1/messages", timeout=30, **kw), 400)
    assert err["type"] == "invalid_request_error" and needle in err["message"], err


def test_unknown_model_session_and_route(gw: Any) -> None:
    err = openai_error(httpx.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "model": "gpt-9"}), 404)
    assert err["code"] == "model_not_found"
    assert (
        anthropic_error(httpx.post(f"{gw.url}/v1/messages", json={**MSG, "model": "claude-x"}), 404)["type"]
        == "not_found_error"
    )
    err = openai_error(httpx.post(f"{gw.url}/sessions/nope/v1/chat/completions", json=CHAT), 404)
    assert err["code"] == "session_not_found"
    assert (
        anthropic_error(httpx.post(f"{gw.url}/sessions/nope/v1/messages", json=MSG), 404)["type"]
        == "not_found_error"
    )
    openai_error(httpx.get(f"{gw.url}/sessions/nope"), 404)
    openai_error(httpx.get(f"{gw.url}/v2/everything"), 404)
    openai_error(httpx.get(f"{gw.url}/v1/chat/completions"), 405)


def test_sdk_exceptions(gw: Any) -> None:
    oc = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        oc.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=0
        )
    assert e.value.status_code == 400 and e.value.body["param"] == "max_tokens"
    ac = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as e2:
        ac.messages.create(model="default", max_tokens=0, messages=[{"role": "user", "content": "hi"}])
    assert e2.value.body["error"]["type"] == "invalid_request_error"


def test_engine_down_is_503(make_gateway: Any, random_model_dir: Any) -> None:
    dead = make_gateway(["http://127.0.0.1:1"], random_model_dir, context_length=1024)
    err = openai_error(httpx.post(f"{dead.url}/v1/chat/completions", json=CHAT, timeout=30), 503)
    assert err["code"] == "engine_unavailable"
    assert (
        anthropic_error(httpx.post(f"{dead.url}/v1/messages", json=MSG, timeout=30), 503)["type"]
        == "overloaded_error"
    )
    oc = openai.OpenAI(base_url=f"{dead.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as e:
        oc.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503


@pytest.fixture
def stuck_engine() -> Iterator[str]:
    """A socket that accepts connections (the kernel's backlog) and never answers: a hung engine."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_timeout_504_and_busy_429(make_gateway: Any, random_model_dir: Any, stuck_engine: str) -> None:
    gw = make_gateway(
        [stuck_engine],
        random_model_dir,
        context_length=1024,
        request_timeout_s=2.0,
        max_concurrent_requests=1,
    )
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        first = ex.submit(httpx.post, f"{gw.url}/v1/chat/completions", json=CHAT, timeout=30)
        time.sleep(0.5)
        busy = httpx.post(f"{gw.url}/v1/messages", json=MSG, timeout=30)
        assert anthropic_error(busy, 429)["type"] == "rate_limit_error"
        assert busy.headers["Retry-After"] == "1"
        err = openai_error(first.result(), 504)
        assert "timed out" in err["message"]
    # the slot is free again: the next one gets the timeout, not 429
    openai_error(httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, timeout=30), 504)


def test_api_keys(make_gateway: Any, random_engine: Any, random_model_dir: Any) -> None:
    gw = make_gateway([random_engine.url], random_model_dir, api_keys=["sk-good"])
    assert httpx.get(f"{gw.url}/health").status_code == 200
    openai_error(httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT), 401)
    bad = httpx.post(f"{gw.url}/v1/messages", json=MSG, headers={"x-api-key": "sk-bad"})
    assert anthropic_error(bad, 401)["type"] == "authentication_error"
    openai_error(httpx.post(f"{gw.url}/sessions", json={"task_id": "t"}), 401)
    oc = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-good", max_retries=0)
    assert oc.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    ac = anthropic.Anthropic(base_url=gw.url, api_key="sk-good", max_retries=0)
    assert ac.messages.create(model="default", max_tokens=2, messages=[{"role": "user", "content": "hi"}])


def test_keys_required_off_loopback() -> None:
    with pytest.raises(ValueError, match="api_keys"):
        GatewayConfig(host="0.0.0.0").validate()
    GatewayConfig(host="0.0.0.0", api_keys=["k"]).validate()
    GatewayConfig(host="::1").validate()


def test_a_client_that_hangs_up_frees_its_slot(
    make_gateway: Any, random_model_dir: Any, stuck_engine: str
) -> None:
    gw = make_gateway([stuck_engine], random_model_dir, context_length=1024, max_concurrent_requests=1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, timeout=0.5)
    deadline = time.monotonic() + 10
    while httpx.get(f"{gw.url}/stats").json()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(f"{gw.url}/stats").json()["in_flight"] == 0  # the handler was cancelled
