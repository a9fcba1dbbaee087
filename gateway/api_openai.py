"""OpenAI API: /v1/chat/completions, /v1/completions, /v1/models — requests in, responses out.

Shapes follow the OpenAI API reference (and what the official SDK parses). Supported: messages
(system, developer, user text, assistant with tool calls, tool), tools, tool_choice (none, auto,
required, a named function), stream (SSE, with stream_options.include_usage), n, temperature,
top_p, max_tokens / max_completion_tokens, stop, logprobs (the sampled token's; top_logprobs 0),
seed; extensions top_k, min_p, chat_template_kwargs. The reply's reasoning is returned as
`message.reasoning_content` (the DeepSeek / vLLM convention) and accepted back as
`reasoning_content` or `reasoning`. Fields of the real API the gateway does not implement are
accepted at their neutral value and refused (400) otherwise; unknown fields are refused.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.errors import APIError
from gateway.messages import Conversation, Message, ToolCall, ToolChoice
from gateway.schemas import (
    AssistantMessage,
    ChatCompletionRequest,
    CompletionRequest,
    DeveloperMessage,
    FunctionMessage,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
)
from gateway.service import CallResult, Choice, Gateway, Sampling
from gateway.streaming import logprob_entry, open_stream, pieces, sse

FINGERPRINT = "fp_forge"
RESERVED_TEMPLATE_KWARGS = {"messages", "tools", "documents", "add_generation_prompt"}


def _neutral(req: Any, names: dict[str, Any]) -> None:
    for name, ok in names.items():
        value = getattr(req, name)
        if value is not None and not ok(value):
            raise APIError(
                400, f"'{name}' = {json.dumps(value)} is not supported by this gateway.", param=name
            )


NEUTRAL = {
    "frequency_penalty": lambda v: v == 0,
    "presence_penalty": lambda v: v == 0,
    "logit_bias": lambda v: not v,
}


def _text(content: str | list[Any] | None, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    out = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            out.append(part.text)
        elif getattr(part, "type", "") == "refusal":
            out.append(part.refusal)
        else:
            raise APIError(
                400,
                f"Invalid content type at '{where}[{j}]': this model accepts text only, not '{part.type}'.",
                param=f"{where}[{j}]",
            )
    return "\n".join(out)


def to_messages(raw: list[Any]) -> list[Message]:
    out: list[Message] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}].content"
        if isinstance(m, SystemMessage | DeveloperMessage):
            out.append(Message("system", _text(m.content, where)))
        elif isinstance(m, UserMessage):
            out.append(Message("user", _text(m.content, where), name=m.name or ""))
        elif isinstance(m, AssistantMessage):
            if m.function_call is not None:
                raise APIError(
                    400, f"'messages[{i}].function_call' is deprecated and not supported; use tool_calls."
                )
            if m.audio is not None:
                raise APIError(400, f"'messages[{i}].audio' is not supported by this model.")
            calls = tuple(
                ToolCall(tc.id, tc.function.name, tc.function.arguments) for tc in m.tool_calls or []
            )
            reasoning = m.reasoning_content or m.reasoning or ""
            out.append(Message("assistant", _text(m.content, where), reasoning, calls, name=m.name or ""))
        elif isinstance(m, ToolMessage):
            out.append(Message("tool", _text(m.content, where), tool_call_id=m.tool_call_id))
        elif isinstance(m, FunctionMessage):
            raise APIError(
                400, f"Role 'function' (messages[{i}]) is deprecated and not supported; use 'tool'."
            )
    return out


def _stop(stop: str | list[str] | None, limit: int | None = 4) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if limit is not None and len(stops) > limit:
        raise APIError(400, f"Invalid 'stop': at most {limit} stop sequences are allowed.", param="stop")
    if any(not s for s in stops):
        raise APIError(400, "Invalid 'stop': stop sequences must be non-empty strings.", param="stop")
    return stops


def _sampling(req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None) -> Sampling:
    return Sampling(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        stop=_stop(req.stop),
        seed=req.seed,
        n=req.n or 1,
    )


def chat_conversation(req: ChatCompletionRequest) -> tuple[Conversation, Sampling]:
    _neutral(req, NEUTRAL)
    if req.top_logprobs:
        raise APIError(
            400,
            "'top_logprobs' > 0 is not supported by this gateway (only the sampled token's).",
            param="top_logprobs",
        )
    if req.response_format is not None and req.response_format.get("type", "text") != "text":
        raise APIError(
            400,
            "'response_format' other than text is not supported (no constrained decoding).",
            param="response_format",
        )
    if req.modalities is not None and any(m != "text" for m in req.modalities):
        raise APIError(400, "Only the 'text' modality is supported.", param="modalities")
    kwargs = dict(req.chat_template_kwargs or {})
    if RESERVED_TEMPLATE_KWARGS & set(kwargs):
        raise APIError(
            400, f"'chat_template_kwargs' may not set {sorted(RESERVED_TEMPLATE_KWARGS & set(kwargs))}."
        )
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
    choice = ToolChoice("auto" if tools else "none")
    if isinstance(req.tool_choice, str):
        choice = ToolChoice(req.tool_choice)
    elif req.tool_choice is not None:
        choice = ToolChoice("function", req.tool_choice.function.name)
    conv = Conversation(to_messages(req.messages), tools, choice, kwargs)
    return conv, _sampling(req, req.max_completion_tokens or req.max_tokens)


# ------------------------------------------------------------------------------------ responses
def _usage(result: CallResult, reasoning_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": len(result.prompt_ids),
        "completion_tokens": result.completion_tokens,
        "total_tokens": len(result.prompt_ids) + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _reasoning_tokens(gw: Gateway, result: CallResult) -> int:
    total = 0
    for c in result.choices:
        if c.parsed is not None and c.parsed.reasoning:
            total += len(gw.renderer.encode_raw(c.parsed.reasoning))
    return total


def _finish(c: Choice) -> str:
    if c.message is not None and c.message.tool_calls:
        return "tool_calls"
    return c.finish


def _logprob_entries(c: Choice) -> list[dict[str, Any]]:
    n = len(c.ids) - (1 if c.ended else 0)
    ps = c.pieces or [""] * len(c.ids)
    return [logprob_entry(ps[i], c.logprobs[i]) for i in range(n)]


def _tool_calls(m: Message) -> list[dict[str, Any]]:
    return [
        {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": tc.arguments}}
        for tc in m.tool_calls
    ]


def chat_response(gw: Gateway, result: CallResult, logprobs: bool) -> dict[str, Any]:
    choices = []
    for c in result.choices:
        m = c.message
        assert m is not None
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if (m.tool_calls and not m.content) else m.content,
            "refusal": None,
            "annotations": [],
        }
        if m.tool_calls:
            message["tool_calls"] = _tool_calls(m)
        if m.reasoning:
            message["reasoning_content"] = m.reasoning
        choices.append(
            {
                "index": c.index,
                "message": message,
                "logprobs": {"content": _logprob_entries(c), "refusal": None} if logprobs else None,
                "finish_reason": _finish(c),
            }
        )
    return {
        "id": f"chatcmpl-{result.id}",
        "object": "chat.completion",
        "created": result.created,
        "model": result.model,
        "choices": choices,
        "usage": _usage(result, _reasoning_tokens(gw, result)),
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }


async def chat_stream(
    request: web.Request, gw: Gateway, result: CallResult, logprobs: bool, include_usage: bool
) -> web.StreamResponse:
    resp = await open_stream(request)
    base = {
        "id": f"chatcmpl-{result.id}",
        "object": "chat.completion.chunk",
        "created": result.created,
        "model": result.model,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    if include_usage:
        base["usage"] = None

    def chunk(index: int, delta: dict[str, Any], lp: Any = None, finish: str | None = None) -> bytes:
        return sse(
            {**base, "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}]}
        )

    for c in result.choices:
        m = c.message
        assert m is not None
        await resp.write(chunk(c.index, {"role": "assistant", "content": "", "refusal": None}))
        last_token = len(c.ids) - (1 if c.ended else 0)
        for i, reasoning, content in pieces(c):
            delta: dict[str, Any] = {}
            if reasoning:
                delta["reasoning_content"] = reasoning
            if content:
                delta["content"] = content
            lp = None
            if logprobs and i is not None and i < last_token and (c.pieces is not None):
                lp = {"content": [logprob_entry(c.pieces[i], c.logprobs[i])], "refusal": None}
            if delta or lp:
                await resp.write(chunk(c.index, delta, lp))
        for k, tc in enumerate(m.tool_calls):
            head = {
                "index": k,
                "id": tc.id,
                "type": "function",
                "function": {"name": tc.name, "arguments": ""},
            }
            await resp.write(chunk(c.index, {"tool_calls": [head]}))
            await resp.write(
                chunk(c.index, {"tool_calls": [{"index": k, "function": {"arguments": tc.arguments}}]})
            )
        await resp.write(chunk(c.index, {}, None, _finish(c)))
    if include_usage:
        await resp.write(sse({**base, "choices": [], "usage": _usage(result, _reasoning_tokens(gw, result))}))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


# ------------------------------------------------------------------------------------ completions
def completion_prompts(req: CompletionRequest) -> list[str | list[int]]:
    p = req.prompt
    if isinstance(p, str):
        return [p]
    if not p:
        raise APIError(400, "Invalid 'prompt': the prompt is empty.", param="prompt")
    if all(isinstance(x, str) for x in p):
        return list(p)  # type: ignore[arg-type]
    if all(isinstance(x, int) for x in p):
        return [list(p)]  # type: ignore[list-item]
    return [list(x) for x in p]  # type: ignore[union-attr]


def completion_sampling(req: CompletionRequest) -> Sampling:
    _neutral(req, NEUTRAL)
    if req.echo:
        raise APIError(400, "'echo' is not supported by this gateway.", param="echo")
    if req.suffix:
        raise APIError(400, "'suffix' is not supported by this model.", param="suffix")
    if req.best_of is not None and req.best_of != (req.n or 1):
        raise APIError(400, "'best_of' must equal 'n' (no server-side ranking).", param="best_of")
    if req.logprobs:
        raise APIError(
            400, "'logprobs' > 0 is not supported (only the sampled token's: logprobs=0).", param="logprobs"
        )
    return _sampling(req, req.max_tokens)


def _completion_logprobs(c: Choice) -> dict[str, Any]:
    ps = c.pieces or [""] * len(c.ids)
    offsets, pos = [], 0
    for p in ps:
        offsets.append(pos)
        pos += len(p)
    return {"tokens": ps, "token_logprobs": list(c.logprobs), "top_logprobs": None, "text_offset": offsets}


def completion_choices(results: list[CallResult], logprobs: bool) -> list[tuple[int, Choice, Any]]:
    out = []
    n = len(results[0].choices)
    for p, r in enumerate(results):
        for c in r.choices:
            out.append((p * n + c.index, c, _completion_logprobs(c) if logprobs else None))
    return out


def _completion_usage(results: list[CallResult]) -> dict[str, Any]:
    prompt = sum(len(r.prompt_ids) for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_response(results: list[CallResult], logprobs: bool) -> dict[str, Any]:
    first = results[0]
    return {
        "id": f"cmpl-{first.id}",
        "object": "text_completion",
        "created": first.created,
        "model": first.model,
        "choices": [
            {"text": c.text, "index": idx, "logprobs": lp, "finish_reason": c.finish}
            for idx, c, lp in completion_choices(results, logprobs)
        ],
        "usage": _completion_usage(results),
        "system_fingerprint": FINGERPRINT,
    }


async def completion_stream(
    request: web.Request, results: list[CallResult], logprobs: bool, include_usage: bool
) -> web.StreamResponse:
    resp = await open_stream(request)
    first = results[0]
    base = {
        "id": f"cmpl-{first.id}",
        "object": "text_completion",
        "created": first.created,
        "model": first.model,
        "system_fingerprint": FINGERPRINT,
    }
    for idx, c, _ in completion_choices(results, False):
        ps = c.pieces or []
        pos = 0
        for i, p in enumerate(ps):
            piece = c.text[pos : pos + len(p)]
            pos += len(p)
            lp = None
            if logprobs:
                lp = {
                    "tokens": [p],
                    "token_logprobs": [c.logprobs[i]],
                    "top_logprobs": None,
                    "text_offset": [pos - len(p)],
                }
            if piece or lp:
                choice = {"text": piece, "index": idx, "logprobs": lp, "finish_reason": None}
                await resp.write(sse({**base, "choices": [choice]}))
        choice = {"text": "", "index": idx, "logprobs": None, "finish_reason": c.finish}
        await resp.write(sse({**base, "choices": [choice]}))
    if include_usage:
        await resp.write(sse({**base, "choices": [], "usage": _completion_usage(results)}))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def models_list(gw: Gateway) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(gw, n) for n in gw.model_names]}


def model_card(gw: Gateway, name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": gw.created, "owned_by": "forge"}
