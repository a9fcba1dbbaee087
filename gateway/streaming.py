"""Server-sent events, and a finished choice replayed as a stream of reasoning / content pieces.

The engine protocol answers a generation whole (the built-in engine does not stream), so a
streamed answer is the finished completion sent token by token, in the real APIs' event shapes:
one delta per token, split by the parser's spans into reasoning and content (tool-call text is
sent as structured tool calls after it, as the APIs do).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from gateway.service import Choice

SSE_HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"}


def sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


async def open_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(
        status=200, headers={"Content-Type": "text/event-stream; charset=utf-8", **SSE_HEADERS}
    )
    await resp.prepare(request)
    return resp


def _overlap(a: int, b: int, span: tuple[int, int]) -> tuple[int, int] | None:
    lo, hi = max(a, span[0]), min(b, span[1])
    return (lo, hi) if hi > lo else None


def pieces(choice: Choice) -> Iterator[tuple[int | None, str, str]]:
    """(token index or None for the prefill, reasoning text, content text) per completion token,
    in order; tokens inside tool calls (or cut off after a stop string) give empty texts."""
    parsed = choice.parsed
    text = choice.text
    chunks: list[tuple[int | None, str]] = []
    if choice.prefill:
        chunks.append((None, choice.prefill))
    for i, p in enumerate(choice.pieces or []):
        chunks.append((i, p))
    pos = 0
    for index, piece in chunks:
        a, b = pos, pos + len(piece)
        pos = b
        if parsed is None:
            yield index, "", text[a:b]
            continue
        reasoning = ""
        if parsed.reasoning_span is not None and (o := _overlap(a, b, parsed.reasoning_span)):
            reasoning = text[o[0] : o[1]]
        content = "".join(text[o[0] : o[1]] for span in parsed.content_spans if (o := _overlap(a, b, span)))
        yield index, reasoning, content


def logprob_entry(piece: str, logprob: float) -> dict[str, Any]:
    return {"token": piece, "logprob": logprob, "bytes": list(piece.encode("utf-8")), "top_logprobs": []}
