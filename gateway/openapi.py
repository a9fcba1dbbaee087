"""The gateway's OpenAPI 3.1 document, built from the pydantic request models (`schemas.py`).

Served at /openapi.json; the fuzz test (schemathesis) generates requests from it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    CountTokensRequest,
    CreateSession,
    FinishSession,
    MessagesRequest,
    SetReward,
)

ERROR = {"type": "object"}
SESSION_PARAM = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _op(summary: str, body: type[BaseModel] | None, params: list[dict[str, Any]]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK"},
            "4XX": {
                "description": "Bad input, unknown model or session, busy",
                "content": {"application/json": {"schema": ERROR}},
            },
            "503": {"description": "No inference engine is up"},
        },
    }
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}},
        }
    return op


@cache
def openapi_document(model_names: tuple[str, ...] = ()) -> dict[str, Any]:
    """The document; with `model_names`, request bodies' `model` lists the names this gateway serves."""
    bodies = [
        ChatCompletionRequest,
        CompletionRequest,
        MessagesRequest,
        CountTokensRequest,
        CreateSession,
        SetReward,
        FinishSession,
    ]
    _, defs = models_json_schema(
        [(m, "validation") for m in bodies], ref_template="#/components/schemas/{model}"
    )
    if model_names:
        for body in (ChatCompletionRequest, CompletionRequest, MessagesRequest, CountTokensRequest):
            defs["$defs"][body.__name__]["properties"]["model"] = {
                "type": "string",
                "enum": list(model_names),
            }
    paths: dict[str, Any] = {
        "/sessions": {"post": _op("Open a session for a task", CreateSession, [])},
        "/sessions/{session_id}": {"get": _op("A session's recorded samples", None, [SESSION_PARAM])},
        "/sessions/{session_id}/reward": {
            "post": _op("Set the session's reward", SetReward, [SESSION_PARAM])
        },
        "/sessions/{session_id}/finish": {"post": _op("Finish the session", FinishSession, [SESSION_PARAM])},
        "/health": {"get": _op("Liveness", None, [])},
        "/stats": {"get": _op("Load and counters", None, [])},
    }
    for base, params in (("", []), ("/sessions/{session_id}", [SESSION_PARAM])):
        paths[base + "/v1/chat/completions"] = {
            "post": _op("OpenAI chat completions", ChatCompletionRequest, params)
        }
        paths[base + "/v1/completions"] = {"post": _op("OpenAI completions", CompletionRequest, params)}
        paths[base + "/v1/messages"] = {"post": _op("Anthropic messages", MessagesRequest, params)}
        paths[base + "/v1/messages/count_tokens"] = {
            "post": _op("Anthropic token count", CountTokensRequest, params)
        }
        paths[base + "/v1/models"] = {"get": _op("OpenAI models", None, params)}
        model_schema = {"type": "string", "enum": list(model_names)} if model_names else {"type": "string"}
        model_param = {"name": "model", "in": "path", "required": True, "schema": model_schema}
        paths[base + "/v1/models/{model}"] = {"get": _op("One model", None, [*params, model_param])}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Forge gateway", "version": "1"},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }
