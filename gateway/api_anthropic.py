"""Anthropic Messages API: /v1/messages (and /v1/messages/count_tokens) — requests in, responses out.

Supported: system (string or text blocks), user text and tool_result blocks, assistant text,
thinking and tool_use blocks, tools (custom tools with input_schema), tool_choice (auto, any,
tool, none), thinking (enabled/disabled: passed to the chat template as `enable_thinking`),
stop_sequences, temperature, top_p, top_k, stream (the real event sequence: message_start,
ping, content_block_start / _delta / _stop per block, message_delta, message_stop).

The model's `<think>` text comes back as a thinking block whenever the model produced one (with
an opaque signature); a client may send it back or drop it: the gateway keeps the exact tokens
either way. Images, documents and server tools are refused (400): the models served are text-only.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

from gateway.errors import APIError
from gateway.messages import Conversation, Message, ToolCall, ToolChoice
from gateway.schemas import (
    AImageBlock,
    ARedactedThinkingBlock,
    ATextBlock,
    AThinkingBlock,
    AThinkingDisabled,
    AToolChoiceAny,
    AToolChoiceNone,
    AToolChoiceTool,
    AToolResultBlock,
    AToolUseBlock,
    CountTokensRequest,
    MessagesRequest,
)
from gateway.service import CallResult, Choice, Sampling
from gateway.streaming import open_stream, pieces, sse


def _refuse(block: Any, where: str) -> APIError:
    return APIError(400, f"{where}: content blocks of type '{block.type}' are not supported by this model")


def _tool_result_text(block: AToolResultBlock, where: str) -> str:
    if block.content is None:
        return ""
    if isinstance(block.content, str):
        return block.content
    texts = []
    for j, part in enumerate(block.content):
        if isinstance(part, AImageBlock):
            raise _refuse(part, f"{where}.content.{j}")
        texts.append(part.text)
    return "\n".join(texts)


def to_messages(req: MessagesRequest | CountTokensRequest) -> list[Message]:
    out: list[Message] = []
    if req.system:
        system = req.system if isinstance(req.system, str) else "\n".join(b.text for b in req.system)
        out.append(Message("system", system))
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            out.append(Message(m.role, m.content))
            continue
        if m.role == "system":
            blocks = [b for b in m.content if not isinstance(b, ATextBlock)]
            if blocks:
                raise _refuse(blocks[0], f"messages.{i}.content")
            out.append(Message("system", "\n".join(b.text for b in m.content)))  # type: ignore[union-attr]
        elif m.role == "user":
            texts: list[str] = []
            for j, b in enumerate(m.content):
                where = f"messages.{i}.content.{j}"
                if isinstance(b, ATextBlock):
                    texts.append(b.text)
                elif isinstance(b, AToolResultBlock):
                    if texts:
                        out.append(Message("user", "\n".join(texts)))
                        texts = []
                    out.append(Message("tool", _tool_result_text(b, where), tool_call_id=b.tool_use_id))
                else:
                    raise _refuse(b, where)
            if texts:
                out.append(Message("user", "\n".join(texts)))
        else:
            texts, thinking, calls = [], [], []
            for j, b in enumerate(m.content):
                where = f"messages.{i}.content.{j}"
                if isinstance(b, ATextBlock):
                    texts.append(b.text)
                elif isinstance(b, AThinkingBlock):
                    thinking.append(b.thinking)
                elif isinstance(b, ARedactedThinkingBlock):
                    continue
                elif isinstance(b, AToolUseBlock):
                    calls.append(ToolCall(b.id, b.name, json.dumps(b.input, ensure_ascii=False)))
                else:
                    raise _refuse(b, where)
            out.append(Message("assistant", "\n".join(texts), "\n".join(thinking), tuple(calls)))
    return out


def conversation(req: MessagesRequest | CountTokensRequest) -> Conversation:
    if req.messages[-1].role == "assistant":
        raise APIError(
            400,
            "This model does not support assistant message prefill. The conversation must end with a user message.",
        )
    tools = [
        {
            "type": "function",
            "function": {
                k: v
                for k, v in {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.input_schema,
                }.items()
                if v is not None
            },
        }
        for t in req.tools or []
    ]
    choice = ToolChoice("auto" if tools else "none")
    tc = req.tool_choice
    if isinstance(tc, AToolChoiceAny):
        choice = ToolChoice("required")
    elif isinstance(tc, AToolChoiceTool):
        choice = ToolChoice("function", tc.name)
    elif isinstance(tc, AToolChoiceNone):
        choice = ToolChoice("none")
    kwargs: dict[str, Any] = {}
    if req.thinking is not None:
        kwargs["enable_thinking"] = not isinstance(req.thinking, AThinkingDisabled)
    return Conversation(to_messages(req), tools, choice, kwargs)


def sampling(req: MessagesRequest) -> Sampling:
    if req.container is not None:
        raise APIError(400, "container: code-execution containers are not supported by this gateway")
    if req.output_config is not None and req.output_config.format is not None:
        raise APIError(
            400, "output_config.format: structured outputs are not supported (no constrained decoding)"
        )
    stops = list(req.stop_sequences or [])
    if any(not s for s in stops):
        raise APIError(400, "stop_sequences: each stop sequence must be a non-empty string")
    return Sampling(
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k or None,
        stop=stops,
    )


def signature(thinking: str) -> str:
    return "forge-" + hashlib.sha256(thinking.encode("utf-8")).hexdigest()


def stop_reason(c: Choice) -> tuple[str, str | None]:
    if c.message is not None and c.message.tool_calls:
        return "tool_use", None
    if c.finish == "length":
        return "max_tokens", None
    if isinstance(c.matched, str):
        return "stop_sequence", c.matched
    return "end_turn", None


def _usage(result: CallResult) -> dict[str, Any]:
    return {
        "input_tokens": len(result.prompt_ids),
        "output_tokens": result.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": result.cached_tokens,
        "service_tier": "standard",
    }


def _blocks(m: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if m.reasoning:
        blocks.append({"type": "thinking", "thinking": m.reasoning, "signature": signature(m.reasoning)})
    if m.content or not (m.reasoning or m.tool_calls):
        blocks.append({"type": "text", "text": m.content})
    for tc in m.tool_calls:
        args = tc.parsed_arguments()
        blocks.append(
            {
                "type": "tool_use",
                "id": tc.id,
                "name": tc.name,
                "input": args if isinstance(args, dict) else {},
            }
        )
    return blocks


def message_response(result: CallResult) -> dict[str, Any]:
    c = result.choices[0]
    assert c.message is not None
    reason, seq = stop_reason(c)
    return {
        "id": f"msg_{result.id}",
        "type": "message",
        "role": "assistant",
        "model": result.model,
        "content": _blocks(c.message),
        "stop_reason": reason,
        "stop_sequence": seq,
        "usage": _usage(result),
    }


async def message_stream(request: web.Request, result: CallResult) -> web.StreamResponse:
    resp = await open_stream(request)
    c = result.choices[0]
    m = c.message
    assert m is not None
    start = {
        "id": f"msg_{result.id}",
        "type": "message",
        "role": "assistant",
        "model": result.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**_usage(result), "output_tokens": 1},
    }

    async def event(name: str, data: dict[str, Any]) -> None:
        await resp.write(sse({"type": name, **data}, event=name))

    await event("message_start", {"message": start})
    await event("ping", {})
    steps = list(pieces(c))
    index = 0
    if m.reasoning:
        await event(
            "content_block_start",
            {"index": index, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        )
        for _, reasoning, _ in steps:
            if reasoning:
                await event(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "thinking_delta", "thinking": reasoning}},
                )
        await event(
            "content_block_delta",
            {"index": index, "delta": {"type": "signature_delta", "signature": signature(m.reasoning)}},
        )
        await event("content_block_stop", {"index": index})
        index += 1
    if m.content or not (m.reasoning or m.tool_calls):
        await event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
        for _, _, content in steps:
            if content:
                await event(
                    "content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": content}}
                )
        await event("content_block_stop", {"index": index})
        index += 1
    for tc in m.tool_calls:
        block = {"type": "tool_use", "id": tc.id, "name": tc.name, "input": {}}
        await event("content_block_start", {"index": index, "content_block": block})
        await event(
            "content_block_delta",
            {"index": index, "delta": {"type": "input_json_delta", "partial_json": tc.arguments}},
        )
        await event("content_block_stop", {"index": index})
        index += 1
    reason, seq = stop_reason(c)
    await event(
        "message_delta",
        {
            "delta": {"stop_reason": reason, "stop_sequence": seq},
            "usage": {"output_tokens": result.completion_tokens},
        },
    )
    await event("message_stop", {})
    await resp.write_eof()
    return resp
