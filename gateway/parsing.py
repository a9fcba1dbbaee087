"""Splitting a completion's text into reasoning, content and tool calls.

Reasoning: `<think>…</think>` (the opening tag may be in the prompt, as Qwen3-style templates put
it in the generation prompt). Tool calls: Hermes/Qwen style, `<tool_call>{"name": …,
"arguments": {…}}</tool_call>`, any number, whitespace around the JSON allowed. A block whose JSON
does not parse, or that lacks a string `name` or object `arguments`, stays in the content (as vLLM
does), so nothing the model wrote is lost. An unterminated `<think>` is all reasoning (the
completion was cut off while thinking).

The result also carries character spans into the text, so a stream can send exactly the pieces
that make up the final reasoning and content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
Span = tuple[int, int]


@dataclass
class ParsedCall:
    name: str
    arguments: str  # JSON text
    span: Span


@dataclass
class ParsedReply:
    text: str
    reasoning_span: Span | None = None
    content_spans: list[Span] = field(default_factory=list)
    tool_calls: list[ParsedCall] = field(default_factory=list)

    @property
    def reasoning(self) -> str:
        if self.reasoning_span is None:
            return ""
        return self.text[self.reasoning_span[0] : self.reasoning_span[1]]

    @property
    def content(self) -> str:
        return "".join(self.text[a:b] for a, b in self.content_spans)


def _strip_span(text: str, span: Span, chars: str = "\n") -> Span:
    a, b = span
    while a < b and text[a] in chars:
        a += 1
    while b > a and text[b - 1] in chars:
        b -= 1
    return a, b


def _trim_spans(text: str, spans: list[Span], left: bool, right: bool) -> list[Span]:
    """Drop leading (left) / trailing (right) whitespace across a list of spans."""
    out = [s for s in spans if s[1] > s[0]]
    if left:
        while out:
            a, b = out[0]
            while a < b and text[a].isspace():
                a += 1
            if a < b:
                out[0] = (a, b)
                break
            out.pop(0)
    if right:
        while out:
            a, b = out[-1]
            while b > a and text[b - 1].isspace():
                b -= 1
            if b > a:
                out[-1] = (a, b)
                break
            out.pop()
    return out


def parse_call(raw: str) -> tuple[str, str] | None:
    """The (name, arguments JSON) of one tool call's JSON text, or None if it is not one."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return obj["name"], json.dumps(args, ensure_ascii=False)


def _find_calls(text: str, start: int, end: int) -> tuple[list[ParsedCall], list[Span]]:
    calls: list[ParsedCall] = []
    outside: list[Span] = []
    pos = start
    while True:
        i = text.find(CALL_OPEN, pos, end)
        if i < 0:
            break
        j = text.find(CALL_CLOSE, i + len(CALL_OPEN), end)
        if j < 0:
            break
        parsed = parse_call(text[i + len(CALL_OPEN) : j].strip())
        if parsed is None:  # not a call: leave it in the content, look further
            outside.append((pos, j + len(CALL_CLOSE)))
        else:
            outside.append((pos, i))
            calls.append(ParsedCall(parsed[0], parsed[1], (i, j + len(CALL_CLOSE))))
        pos = j + len(CALL_CLOSE)
    outside.append((pos, end))
    return calls, outside


def parse_reply(text: str, reasoning: bool = True, tools: bool = True) -> ParsedReply:
    """Split `text` into reasoning, content spans and tool calls (see the module docstring)."""
    out = ParsedReply(text)
    rest = 0
    if reasoning:
        close = text.find(THINK_CLOSE)
        opened = text.lstrip().startswith(THINK_OPEN)
        if close >= 0 or opened:
            start = text.find(THINK_OPEN) + len(THINK_OPEN) if opened else 0
            if opened and close >= 0 and close < start:  # "</think>" before the "<think>"
                start = 0
            stop = close if close >= 0 else len(text)
            out.reasoning_span = _strip_span(text, (start, stop))
            rest = close + len(THINK_CLOSE) if close >= 0 else len(text)
    if tools:
        calls, spans = _find_calls(text, rest, len(text))
    else:
        calls, spans = [], [(rest, len(text))]
    out.tool_calls = calls
    out.content_spans = _trim_spans(text, spans, left=rest > 0 or bool(calls), right=bool(calls))
    return out


def render_call(name: str, arguments: str) -> str:
    """A tool call in the Hermes format the parser reads (the fallback template writes the same)."""
    try:
        args = json.loads(arguments)
    except ValueError:
        args = arguments
    return f"{CALL_OPEN}\n{json.dumps({'name': name, 'arguments': args}, ensure_ascii=False)}\n{CALL_CLOSE}"
