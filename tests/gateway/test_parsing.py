"""Reasoning / content / tool-call splitting of completion text (gateway.parsing)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.parsing import parse_call, parse_reply, render_call


def test_think_then_content() -> None:
    p = parse_reply("<think>\nplan it\n</think>\n\nHello there")
    assert p.reasoning == "plan it"
    assert p.content == "Hello there"
    assert p.tool_calls == []


def test_closing_tag_only_when_the_prompt_opened_thinking() -> None:
    p = parse_reply("still thinking\n</think>\n\nDone.")
    assert (p.reasoning, p.content) == ("still thinking", "Done.")


def test_unterminated_think_is_all_reasoning() -> None:
    p = parse_reply("<think>\nI was cut off mid")
    assert (p.reasoning, p.content) == ("I was cut off mid", "")


def test_no_think_parser_keeps_tags_as_content() -> None:
    p = parse_reply("<think>x</think>y", reasoning=False)
    assert p.reasoning == "" and p.content == "<think>x</think>y"


def test_tool_calls_are_extracted_with_content_around() -> None:
    text = (
        "Let me check.\n<tool_call>\n"
        '{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
        '<tool_call>{"name": "mul", "arguments": "{\\"x\\": 3}"}</tool_call>'
    )
    p = parse_reply(text)
    assert [(c.name, json.loads(c.arguments)) for c in p.tool_calls] == [
        ("add", {"a": 1, "b": 2}),
        ("mul", {"x": 3}),
    ]
    assert p.content == "Let me check."


def test_invalid_tool_call_stays_in_content() -> None:
    text = "<tool_call>\n{not json}\n</tool_call>"
    p = parse_reply(text)
    assert p.tool_calls == [] and p.content == text
    assert parse_reply('<tool_call>{"arguments": {}}</tool_call>').tool_calls == []  # no name
    assert parse_reply('<tool_call>{"name": "f", "arguments": [1]}</tool_call>').tool_calls == []
    assert parse_reply('<tool_call>{"name": "f"').tool_calls == []  # unterminated


def test_tool_parsing_off() -> None:
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    assert parse_reply(text, tools=False).content == text


def test_render_call_round_trips() -> None:
    text = render_call("f", '{"q": "x <y>"}')
    p = parse_reply(text)
    assert [(c.name, json.loads(c.arguments)) for c in p.tool_calls] == [("f", {"q": "x <y>"})]
    assert parse_call('{"name": "f", "parameters": {"k": 1}}') == ("f", '{"k": 1}')


PARTS = ["a", " ", "\n", "<think>", "</think>", "<tool_call>", "</tool_call>", "{", '"name"', ":", '"f"', ","]
PARTS += ['"arguments"', "{}", "}", '{"name": "f", "arguments": {}}']


@given(st.lists(st.sampled_from(PARTS), max_size=30).map("".join))
def test_spans_always_reassemble_reasoning_and_content(text: str) -> None:
    """Whatever the text, reasoning and content are exactly the spans the stream sends."""
    p = parse_reply(text)
    spans = sorted(
        ([p.reasoning_span] if p.reasoning_span else []) + p.content_spans + [c.span for c in p.tool_calls]
    )
    for (_, b), (c, _) in zip(spans, spans[1:], strict=False):
        assert b <= c  # no overlaps
    assert p.content == "".join(text[a:b] for a, b in p.content_spans)
    for c in p.tool_calls:
        assert json.loads(c.arguments) is not None
