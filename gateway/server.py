"""The gateway's HTTP server (aiohttp): the session API and the OpenAI / Anthropic routes.

Why aiohttp and not FastAPI/uvicorn: (1) overhead — the gateway's budget is ~2 ms per call on
top of the engine, and aiohttp's handler path is a thin coroutine call, without FastAPI's
dependency resolution, response-model serialisation and ASGI hop; (2) errors — every failure
must be JSON in the style of the API spoken (OpenAI vs Anthropic), including malformed JSON,
unknown routes and oversized bodies, which is one middleware here instead of overriding
FastAPI's validation handlers per route; (3) one stack — the engine server and its client are
aiohttp, present on every image Forge runs on (the GPU image has no fastapi/uvicorn), and an
aiohttp server runs on any thread's event loop (in-process gateways, Ray actors). Requests are
still validated by pydantic models (`schemas.py`), and `/openapi.json` is built from them.

Routes (`{base}` is "" or "/sessions/{session_id}"; session-scoped calls are recorded):
    POST /sessions                      {task_id, session_id?, metadata?} → {session_id, base_url, …}
    GET  /sessions/{id}                 recorded samples (ids, log-probs, versions, prefix breaks)
    POST /sessions/{id}/reward          {reward, step_rewards?, metrics?}
    POST /sessions/{id}/finish          {}
    POST {base}/v1/chat/completions     OpenAI chat
    POST {base}/v1/completions          OpenAI completions
    POST {base}/v1/messages             Anthropic messages   (+ /v1/messages/count_tokens)
    GET  {base}/v1/models[/{model}]     OpenAI models
    GET  /health, GET /stats, GET /openapi.json
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway import api_anthropic, api_openai
from gateway.config import GatewayConfig
from gateway.errors import APIError, validation_error
from gateway.openapi import openapi_document
from gateway.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    CountTokensRequest,
    CreateSession,
    FinishSession,
    MessagesRequest,
    SetReward,
)
from gateway.service import Gateway
from gateway.serving import ServedApp, serve_in_thread, start_runner
from gateway.sessions import Session

log = logging.getLogger("forge.gateway")

GW = web.AppKey("gateway", Gateway) if hasattr(web, "AppKey") else "gateway"


def style_of(path: str) -> str:
    return "anthropic" if "/v1/messages" in path else "openai"


def _error_response(err: APIError, style: str) -> web.Response:
    return web.json_response(err.body(style), status=err.status, headers=err.headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    style = style_of(request.path)
    try:
        return await handler(request)
    except APIError as err:
        return _error_response(err, style)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            err = APIError(404, f"Unknown route: {request.method} {request.path}", code="not_found")
        elif exc.status == 405:
            err = APIError(405, f"Method {request.method} is not allowed on {request.path}")
        elif exc.status == 413:
            err = APIError(413, f"The request body is too large ({exc.reason}).")
        else:
            err = APIError(exc.status, exc.reason or "error")
        return _error_response(err, style)
    except (asyncio.CancelledError, ConnectionResetError):  # the client went away (e.g. mid-stream)
        raise
    except Exception:  # a bug: answer JSON, no stack trace to the client; log it here
        log.exception("gateway: unhandled error on %s %s", request.method, request.path)
        return _error_response(APIError(500, "The gateway failed to process the request."), style)


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    keys = request.app[GW].cfg.api_keys
    if keys and request.path != "/health":
        auth = request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if key not in keys:
            if style_of(request.path) == "anthropic":
                raise APIError(401, "invalid x-api-key")
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return await handler(request)


async def parse(request: web.Request, model: type[BaseModel], allow_empty: bool = False) -> Any:
    raw = await request.read()
    if allow_empty and not raw.strip():
        raw = b"{}"
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc, style_of(request.path)) from None


def _session(request: web.Request) -> Session | None:
    sid = request.match_info.get("session_id")
    return None if sid is None else request.app[GW].sessions.usable(sid)


# ------------------------------------------------------------------------------------ OpenAI
async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app[GW]
    req = await parse(request, ChatCompletionRequest)
    gw.check_model(req.model)
    session = _session(request)
    conv, s = api_openai.chat_conversation(req)
    stream = bool(req.stream)
    with gw.admit():
        result = await gw.chat(
            session, conv, s, tool_id_prefix="call_", want_pieces=stream or bool(req.logprobs), style="openai"
        )
    if stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await api_openai.chat_stream(request, gw, result, bool(req.logprobs), include_usage)
    return web.json_response(api_openai.chat_response(gw, result, bool(req.logprobs)))


async def completions(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app[GW]
    req = await parse(request, CompletionRequest)
    gw.check_model(req.model)
    session = _session(request)
    s = api_openai.completion_sampling(req)
    prompts = api_openai.completion_prompts(req)
    logprobs = req.logprobs is not None
    stream = bool(req.stream)
    with gw.admit():
        results = []
        for p in prompts:  # in order: in a session, each prompt may extend the previous one
            results.append(await gw.complete(session, p, s, want_pieces=stream or logprobs))
    if stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await api_openai.completion_stream(request, results, logprobs, include_usage)
    return web.json_response(api_openai.completion_response(results, logprobs))


async def models(request: web.Request) -> web.Response:
    _session_exists(request)
    return web.json_response(api_openai.models_list(request.app[GW]))


async def model(request: web.Request) -> web.Response:
    _session_exists(request)
    gw: Gateway = request.app[GW]
    name = request.match_info["model"]
    gw.check_model(name)
    return web.json_response(api_openai.model_card(gw, name))


def _session_exists(request: web.Request) -> None:
    sid = request.match_info.get("session_id")
    if sid is not None:
        request.app[GW].sessions.get(sid)


# ------------------------------------------------------------------------------------ Anthropic
async def messages(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app[GW]
    req = await parse(request, MessagesRequest)
    gw.check_model(req.model)
    session = _session(request)
    conv = api_anthropic.conversation(req)
    s = api_anthropic.sampling(req)
    stream = bool(req.stream)
    with gw.admit():
        result = await gw.chat(
            session, conv, s, tool_id_prefix="toolu_", want_pieces=stream, style="anthropic"
        )
    if stream:
        return await api_anthropic.message_stream(request, result)
    return web.json_response(api_anthropic.message_response(result))


async def count_tokens(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GW]
    req = await parse(request, CountTokensRequest)
    gw.check_model(req.model)
    session = _session(request)
    conv = api_anthropic.conversation(req)
    prefill = gw.prefill_for(conv)
    plan = gw.plan(session, conv, prefill)
    return web.json_response({"input_tokens": len(plan.ids)})


# ------------------------------------------------------------------------------------ sessions
def _base_url(request: web.Request, sid: str) -> str:
    return f"{request.scheme}://{request.host}/sessions/{sid}"


async def create_session(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GW]
    req = await parse(request, CreateSession)
    session = await gw.sessions.open(req.task_id, req.session_id, req.metadata)
    return web.json_response(
        {
            "session_id": session.id,
            "base_url": _base_url(request, session.id),
            "task_id": session.task_id,
            "attempt": session.attempt,
        }
    )


async def get_session(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GW]
    session = gw.sessions.get(request.match_info["session_id"])
    samples = await gw.sessions.samples(session)
    records = {r.turn: r for r in session.records}
    out = []
    for s in samples:
        r = records.get(s.turn)
        out.append(
            {
                "turn": s.turn,
                "prompt_ids": s.prompt_ids,
                "completion_ids": s.completion_ids,
                "logprobs": s.logprobs,
                "weight_version": s.weight_version,
                "finish_reason": s.finish_reason,
                "timings": s.timings,
                "prefix_break": r.prefix_break if r else None,
                "reused_tokens": r.reused_tokens if r else None,
                "prompt_source": r.how if r else None,
                "note": r.note if r else "",
                "engine": r.engine if r else "",
            }
        )
    return web.json_response(
        {
            "session_id": session.id,
            "task_id": session.task_id,
            "attempt": session.attempt,
            "finished": session.finished,
            "turns": session.turns,
            "prefix_breaks": session.prefix_breaks,
            "metadata": session.metadata,
            "samples": out,
        }
    )


async def session_reward(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GW]
    session = gw.sessions.usable(request.match_info["session_id"])
    req = await parse(request, SetReward)
    await gw.sessions.reward(session, req.reward, req.step_rewards, req.metrics)
    return web.json_response({"session_id": session.id, "reward": req.reward})


async def session_finish(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GW]
    session = gw.sessions.usable(request.match_info["session_id"])
    await parse(request, FinishSession, allow_empty=True)
    await gw.sessions.finish(session)
    gw.router.forget(session.id)
    return web.json_response({"session_id": session.id, "finished": True, "turns": session.turns})


# ------------------------------------------------------------------------------------ misc
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def stats(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GW]
    return web.json_response(
        {
            "in_flight": gw.in_flight,
            "sessions": len(gw.sessions.sessions),
            "counters": gw.counters,
            "stage_mean_ms": gw.stage_means_ms(),
            "engines": gw.router.load(),
            "context_length": gw.context(),
            "models": gw.model_names,
        }
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(tuple(request.app[GW].model_names)))


def build_app(gw: Gateway) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=gw.cfg.max_request_bytes
    )
    app[GW] = gw
    r = app.router
    r.add_post("/sessions", create_session)
    r.add_get("/sessions/{session_id}", get_session)
    r.add_post("/sessions/{session_id}/reward", session_reward)
    r.add_post("/sessions/{session_id}/finish", session_finish)
    for base in ("", "/sessions/{session_id}"):
        r.add_post(base + "/v1/chat/completions", chat_completions)
        r.add_post(base + "/v1/completions", completions)
        r.add_post(base + "/v1/messages", messages)
        r.add_post(base + "/v1/messages/count_tokens", count_tokens)
        r.add_get(base + "/v1/models", models)
        r.add_get(base + "/v1/models/{model}", model)
    r.add_get("/health", health)
    r.add_get("/stats", stats)
    r.add_get("/openapi.json", openapi)

    async def on_startup(app: web.Application) -> None:
        await app[GW].startup()

    async def on_cleanup(app: web.Application) -> None:
        await app[GW].aclose()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


# ------------------------------------------------------------------------------------ running it
@dataclass
class GatewayHandle:
    """A gateway serving on a thread of its own: `url`, `gateway`, `stop()`."""

    url: str
    gateway: Gateway
    _served: ServedApp

    def stop(self) -> None:
        self._served.stop()

    def __enter__(self) -> GatewayHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def start_site(gw: Gateway, host: str, port: int) -> tuple[web.AppRunner, int]:
    return await start_runner(build_app(gw), host, port, backlog=1024)


def start_gateway_in_thread(
    cfg: GatewayConfig, pool: Any = None, tokenizer: Any = None, record_new_tasks: bool = False
) -> GatewayHandle:
    """Build a Gateway (engines from cfg.engine_urls, samples into `pool` if given) and serve it on
    its own thread and event loop; returns once it listens. `record_new_tasks`: see Gateway."""
    gw = Gateway(cfg, tokenizer=tokenizer, pool=pool, record_new_tasks=record_new_tasks)
    served = serve_in_thread(lambda: build_app(gw), cfg.host, cfg.port, name="forge-gateway", backlog=1024)
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host
    return GatewayHandle(f"http://{host}:{served.port}", gw, served)
